//! Subcommand implementations: each turns parsed flags into a library call and prints the result.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use sd3lab::calib::listing::Listing;
use sd3lab::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter};
use sd3lab::model::config::ModelDtype;
use sd3lab::model::{Preset, StreamKind, mmdit_linear_layers};
use sd3lab::runtime::{DoctorOptions, run_doctor};

#[derive(Args)]
pub struct DoctorArgs {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds spent in the GEMM micro-benchmark.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Matrix side of the GEMM micro-benchmark.
    #[arg(long, default_value_t = 2048)]
    gemm_size: i32,
}

pub fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    anyhow::ensure!(
        (16..=16384).contains(&args.gemm_size),
        "--gemm-size must be in 16..=16384"
    );
    let opts = DoctorOptions {
        bench_time: Duration::from_secs_f64(args.seconds),
        gemm_size: args.gemm_size,
    };
    let report = run_doctor(&opts).context("MLX does not work on this machine")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sd3lab` without a subcommand: the desktop app; where there is no display (or the window
/// cannot open), the same workflow headless through the CLI on the tiny model.
pub fn default_action() -> anyhow::Result<ExitCode> {
    if sd3lab::app::display_available() {
        match sd3lab::app::run_gui(sd3lab::app::GuiOptions::default()) {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) => eprintln!(
                "sd3lab: the window could not open ({e}); running the headless demo instead."
            ),
        }
    } else {
        eprintln!(
            "sd3lab: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set), so the desktop app cannot open; running the same work headless on the built-in tiny model instead."
        );
    }
    headless_demo()
}

/// The app's workflow through the library, on the tiny model, into `sd3lab-demo/`.
fn headless_demo() -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the sd3lab executable")?;
    let out = PathBuf::from("sd3lab-demo");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let s = |p: &std::path::Path| p.display().to_string();
    let calib = out.join("calibration_data");
    let sens = out.join("sensitivity");
    let steps: Vec<(&str, Vec<String>)> = vec![
        (
            "self-check",
            vec!["doctor".into(), "--seconds".into(), "0.3".into()],
        ),
        (
            "one image",
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "a red fox in snow",
                "--seed",
                "1",
                "--num-steps",
                "4",
                "--output",
            ]
            .iter()
            .map(|x| x.to_string())
            .chain([s(&out.join("fox.png"))])
            .collect(),
        ),
        (
            "calibration data",
            [
                "calibrate",
                "--model",
                "tiny",
                "--num-images",
                "2",
                "--num-steps",
                "6",
                "--height",
                "128",
                "--width",
                "128",
                "--calib-dir",
            ]
            .iter()
            .map(|x| x.to_string())
            .chain([s(&calib)])
            .collect(),
        ),
        (
            "browse",
            vec![
                "samples".into(),
                "--calib-dir".into(),
                s(&calib),
                "--step-stride".into(),
                "3".into(),
            ],
        ),
        (
            "sensitivity sweep",
            [
                "sensitivity",
                "--model",
                "tiny",
                "--bits",
                "2,4,8",
                "--calib-dir",
            ]
            .iter()
            .map(|x| x.to_string())
            .chain([s(&calib), "--output-dir".into(), s(&sens)])
            .collect(),
        ),
        (
            "plan",
            vec![
                "plan".into(),
                "--sensitivity".into(),
                s(&sens.join("sensitivity.json")),
                "--target-bits".into(),
                "5".into(),
                "--output".into(),
                s(&out.join("plan.json")),
            ],
        ),
        (
            "report",
            vec![
                "report".into(),
                "sensitivity".into(),
                s(&sens),
                "--plan-target-bits".into(),
                "5".into(),
                "--output".into(),
                s(&out.join("report.html")),
            ],
        ),
    ];
    for (what, args) in steps {
        eprintln!("\n== {what}: sd3lab {}", args.join(" "));
        let status = std::process::Command::new(&exe)
            .args(&args)
            .status()
            .with_context(|| format!("running sd3lab {}", args.join(" ")))?;
        if !status.success() {
            eprintln!("sd3lab: the demo step '{what}' failed");
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!(
        "\nDone: see {} (image, calibration data, sensitivity.json, plan.json, report.html).",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct GuiArgs {
    /// Open this calibration folder in the Samples tab.
    #[arg(long)]
    calib_dir: Option<PathBuf>,
    /// Model for every tab (tiny, sd3-medium, a folder).
    #[arg(long)]
    model: Option<String>,
    /// Open this sensitivity.json in the Sensitivity tab.
    #[arg(long)]
    sensitivity: Option<PathBuf>,
    /// The tab to show.
    #[arg(long, value_enum)]
    tab: Option<sd3lab::app::Tab>,
    /// Render, save the window as this PNG and exit (used for the README's screenshots).
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Window size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800")]
    size: String,
    /// Log every frame's UI time to this CSV on exit and print the percentiles.
    #[arg(long)]
    frame_stats: Option<PathBuf>,
    /// Start the tab's job at launch (a calibration run on the Generate tab).
    #[arg(long)]
    start_job: bool,
    /// Quit when no job is running (after the one --start-job started).
    #[arg(long)]
    exit_when_idle: bool,
    /// Neither load nor save the persisted state.
    #[arg(long)]
    no_persist: bool,
}

/// `sd3lab gui`.
pub fn gui(args: &GuiArgs) -> anyhow::Result<ExitCode> {
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<f32>().ok()?, h.parse::<f32>().ok()?)))
        .filter(|(w, h)| (200.0..=8192.0).contains(w) && (200.0..=8192.0).contains(h))
        .ok_or_else(|| {
            anyhow::anyhow!("--size {}: expected WIDTHxHEIGHT, e.g. 1280x800", args.size)
        })?;
    anyhow::ensure!(
        sd3lab::app::display_available(),
        "no display found (neither DISPLAY nor WAYLAND_DISPLAY is set); run it in a desktop session, or under `xvfb-run -a`"
    );
    let options = sd3lab::app::GuiOptions {
        calib_dir: args.calib_dir.clone(),
        model: args.model.clone(),
        sensitivity: args.sensitivity.clone(),
        tab: args.tab,
        screenshot: args.screenshot.clone(),
        size: [w, h],
        frame_stats: args.frame_stats.clone(),
        start_job: args.start_job,
        exit_when_idle: args.exit_when_idle,
        persist: !args.no_persist && args.screenshot.is_none(),
    };
    let screenshot = options.screenshot.clone();
    sd3lab::app::run_gui(options).map_err(|e| anyhow::anyhow!("the window could not open: {e}"))?;
    if let Some(p) = screenshot {
        anyhow::ensure!(p.is_file(), "no screenshot was saved to {}", p.display());
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// Plots and a report of a sensitivity run (HTML with the figures inline, or Markdown with
    /// PNGs beside it), with the data as CSV/JSON beside it.
    Sensitivity(ReportSensitivityArgs),
    /// A calibration folder's samples: summary, per-bucket counts, timestep schedule, tensors,
    /// problems; the selected samples as CSV/JSON beside it (the Samples tab's report).
    Samples(ReportSamplesArgs),
    /// A calibration run: its settings and images with prompts (the Generate tab's report).
    Calibration(ReportCalibrationArgs),
}

#[derive(Args)]
pub struct ReportSamplesArgs {
    /// Calibration folder.
    calib_dir: PathBuf,
    /// report.html or report.md.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    filter: SampleFilterArgs,
}

/// Which samples of a calibration folder (`samples`, `report samples`).
#[derive(Args)]
pub struct SampleFilterArgs {
    /// Only the first N images.
    #[arg(long)]
    max_images: Option<usize>,
    /// Every k-th step of each image, starting at step 0.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    step_stride: Option<u64>,
    /// Only samples of this step bucket (early, mid, late).
    #[arg(long)]
    bucket: Option<Bucket>,
}

impl SampleFilterArgs {
    fn filter(&self) -> SampleFilter {
        SampleFilter {
            max_images: self.max_images,
            step_stride: self.step_stride.map(|k| k as usize),
            bucket: self.bucket,
        }
    }
}

#[derive(Args)]
pub struct ReportCalibrationArgs {
    /// Calibration folder (with its manifest.json).
    calib_dir: PathBuf,
    /// report.html or report.md.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct ReportSensitivityArgs {
    /// A sensitivity output directory or its sensitivity.json.
    input: PathBuf,
    /// report.html or report.md.
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "sqnr")]
    metric: sd3lab::report::Metric,
    /// Bucket of the bits plot and the ranking (all, early, mid, late).
    #[arg(long, default_value = "all")]
    bucket: String,
    /// Bit width of the heatmap and the ranking (default: the lowest measured).
    #[arg(long)]
    bits: Option<i32>,
    /// How many layers the bits plot and the ranking show.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Add the optimal plan at this average and the Pareto front.
    #[arg(long)]
    plan_target_bits: Option<f64>,
    /// Also write every figure as SVG and PNG into this folder.
    #[arg(long)]
    figures: Option<PathBuf>,
}

/// `sd3lab report …`.
pub fn report(cmd: &ReportCommand) -> anyhow::Result<ExitCode> {
    let written = match cmd {
        ReportCommand::Sensitivity(args) => return report_sensitivity(args),
        ReportCommand::Samples(args) => {
            let set = CalibrationSet::open(&args.calib_dir, &OpenOptions::default())?;
            sd3lab::report::write_samples_report(&set, &args.filter.filter(), &args.output)?
        }
        ReportCommand::Calibration(args) => {
            sd3lab::report::write_calibration_report(&args.calib_dir, &args.output)?
        }
    };
    for p in &written {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn report_sensitivity(args: &ReportSensitivityArgs) -> anyhow::Result<ExitCode> {
    let json = if args.input.is_dir() {
        args.input.join("sensitivity.json")
    } else {
        args.input.clone()
    };
    anyhow::ensure!(
        ["all", "early", "mid", "late"].contains(&args.bucket.as_str()),
        "--bucket {}: expected all, early, mid or late",
        args.bucket
    );
    let report = sd3lab::quant::sensitivity::read_report(&json)?;
    let opts = sd3lab::report::SensitivityReportOptions {
        metric: args.metric,
        bucket: args.bucket.clone(),
        bits: args.bits,
        layers: Vec::new(),
        top: args.top,
        plan_target_bits: args.plan_target_bits,
        ..Default::default()
    };
    let written = sd3lab::report::write_sensitivity_report(&report, &args.output, &opts)?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    if let Some(dir) = &args.figures {
        let figs = sd3lab::report::sensitivity_figures(&report, &opts)?;
        for p in sd3lab::report::export_figures(&figs, dir, (900, 520))? {
            println!("wrote {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SamplesArgs {
    /// Calibration directory.
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    #[command(flatten)]
    filter: SampleFilterArgs,
    /// Print one JSON document (schema `sd3lab.samples/1`, see the README).
    #[arg(long)]
    json: bool,
    /// Fail on the first bad file instead of skipping it.
    #[arg(long)]
    strict: bool,
}

pub fn samples(args: &SamplesArgs) -> anyhow::Result<ExitCode> {
    let options = OpenOptions {
        strict: args.strict,
        ..OpenOptions::default()
    };
    let set = CalibrationSet::open(&args.calib_dir, &options)?;
    let filter = args.filter.filter();
    let selected = set.select(&filter);
    let listing = Listing::new(&set, &filter, &selected);
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &listing)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let summary = &listing.summary;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>6} {:>5} {:<6} {:>10} {:>10}  file",
        "image", "step", "bucket", "timestep", "sigma"
    )?;
    for s in &selected {
        writeln!(
            out,
            "{:>6} {:>5} {:<6} {:>10.4} {:>10.6}  {}",
            s.image, s.step, s.bucket, s.timestep, s.sigma, s.file
        )?;
    }
    writeln!(out)?;
    writeln!(out, "directory   {}", set.dir().display())?;
    let manifest = match set.manifest() {
        Some(m) => {
            let show = |v: Option<u64>| v.map_or("absent".to_owned(), |n| n.to_string());
            format!(
                "manifest.json (n_completed {}, num_steps {})",
                show(m.n_completed),
                show(m.num_steps)
            )
        }
        None => "no manifest.json (steps and images inferred from the files)".to_owned(),
    };
    writeln!(out, "manifest    {manifest}")?;
    writeln!(
        out,
        "set         {} images × {} steps, {} samples",
        set.num_images(),
        set.num_steps(),
        set.samples().len()
    )?;
    for (key, t) in set.reference_tensors() {
        writeln!(out, "  {:<20} {:?} {}", key.name(), t.shape, t.dtype)?;
    }
    let buckets: Vec<String> = summary
        .buckets
        .iter()
        .map(|(b, n)| format!("{b} {n}"))
        .collect();
    writeln!(
        out,
        "selected    {} samples of {} images ({}), {:.1} MB",
        summary.samples,
        summary.images,
        buckets.join(", "),
        summary.bytes as f64 / 1e6
    )?;
    writeln!(out, "problems    {}", set.problems().len())?;
    drop(out);
    for p in set.problems() {
        eprintln!("problem: {p}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// List the MMDiT's quantizable Linear layers (name, block, kind, shape, parameters).
    Layers(LayersArgs),
    /// Write a deterministic random checkpoint in the published file layout.
    Synth(SynthArgs),
    /// Load a model completely and report load time and memory (for benchmarks).
    Load(LoadArgs),
}

#[derive(Args)]
pub struct LoadArgs {
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long)]
    json: bool,
}

fn load(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let files = resolve_model(&args.model)?;
    let dtype = args
        .dtype
        .unwrap_or_else(ModelDtype::default_for_backend)
        .mlx();
    let pipe = sd3lab::model::pipeline::Pipeline::load(&files, dtype)
        .with_context(|| format!("loading model '{}'", files.name))?;
    let [l, g, m, v] = pipe.weight_bytes();
    let checkpoint_bytes: u64 = [
        &files.checkpoint,
        &files.clip_l.join("model.fp16.safetensors"),
        &files.clip_g.join("model.fp16.safetensors"),
    ]
    .iter()
    .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
    .sum();
    let rss = sd3lab::runtime::doctor::process_peak_rss().unwrap_or(0);
    let doc = serde_json::json!({
        "schema": "sd3lab.load/1",
        "model": files.name,
        "config": pipe.config,
        "dtype": format!("{dtype:?}"),
        "load_seconds": pipe.load_seconds,
        "checkpoint_bytes": checkpoint_bytes,
        "weight_bytes": {"clip_l": l, "clip_g": g, "mmdit": m, "vae": v, "total": l + g + m + v},
        "peak_rss_bytes": rss,
        "mlx_active_bytes": mlx_rs::memory::active_memory().unwrap_or(0),
        "mlx_peak_bytes": mlx_rs::memory::peak_memory().unwrap_or(0),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "loaded '{}' ({dtype:?}) in {:.2} s: weights {:.2} GB (files {:.2} GB), peak RSS {:.2} GB",
            files.name,
            pipe.load_seconds,
            (l + g + m + v) as f64 / 1e9,
            checkpoint_bytes as f64 / 1e9,
            rss as f64 / 1e9
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory (created; existing files of the layout are replaced).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Override the number of joint blocks.
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn synth(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    let config = args.preset.config(args.depth);
    config.mmdit.validate().map_err(anyhow::Error::msg)?;
    let start = std::time::Instant::now();
    sd3lab::model::source::write_model_dir(&args.output, &config, args.seed)
        .with_context(|| format!("writing the checkpoint into {}", args.output.display()))?;
    let bytes = dir_size(&args.output);
    println!(
        "wrote a {:?} checkpoint (depth {}, width {}, seed {}) to {}: {:.1} MB in {:.1} s",
        args.preset,
        config.mmdit.depth,
        config.mmdit.hidden_size,
        args.seed,
        args.output.display(),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[derive(Args)]
pub struct GenerateArgs {
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    #[arg(long, default_value_t = 50)]
    num_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    cfg_weight: f32,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Weights and activations (default: float32 on CPU, float16 on GPU).
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    /// Output PNG.
    #[arg(long)]
    output: PathBuf,
    /// Also save the final latent (the VAE decoder's input, (1, h, w, 16) float32) as .npy.
    #[arg(long)]
    latent_out: Option<PathBuf>,
    /// Quantize the MMDiT's Linears: none, wN (N in 2,3,4,5,6,8) or a plan JSON file.
    #[arg(long, default_value = "none")]
    quant: String,
    /// Group size for wN.
    #[arg(long, default_value_t = 64)]
    group_size: i32,
    /// real: MLX-packed weights and quantized_matmul (the memory a user gets); simulated:
    /// quantize→dequantize float weights (same numbers, fast on CPU).
    #[arg(long, value_enum, default_value = "real")]
    quant_mode: sd3lab::quant::QuantMode,
    /// Print one JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::model::pipeline::{Flow, GenerateConfig, Pipeline, write_png};
    let files = resolve_model(&args.model)?;
    let dtype = args.dtype.unwrap_or_else(ModelDtype::default_for_backend);
    let quant = sd3lab::quant::QuantConfig::parse(&args.quant, args.group_size)?;
    let mut pipe = Pipeline::load(&files, dtype.mlx())
        .with_context(|| format!("loading model '{}'", files.name))?;
    let quant_report = sd3lab::quant::apply_to_pipeline(&mut pipe, &quant, args.quant_mode)?;
    if quant != sd3lab::quant::QuantConfig::None && !args.json {
        println!(
            "quantized {} MMDiT Linears{} ({:?}); {} left float; MMDiT weights {:.1} MB → {:.1} MB",
            quant_report.quantized.len(),
            if quant.is_per_bucket() {
                " over the 3 step buckets"
            } else {
                ""
            },
            args.quant_mode,
            quant_report.skipped.len(),
            quant_report.bytes_before as f64 / 1e6,
            quant_report.bytes_after as f64 / 1e6
        );
        for (name, why) in &quant_report.skipped {
            println!("  left float: {name} ({why})");
        }
    }
    let cfg = GenerateConfig {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed: args.seed,
        num_steps: args.num_steps,
        cfg_weight: args.cfg_weight,
        height: args.height,
        width: args.width,
    };
    let bar = indicatif::ProgressBar::new(cfg.num_steps as u64);
    bar.set_style(bar_style(
        "{msg} [{bar:30}] step {pos}/{len} {per_sec} ETA {eta}",
    ));
    bar.set_message("denoising");
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (load_seconds, vae_cfg) = (pipe.load_seconds, pipe.config.vae.clone());
    // One image: each model is released once done with, as DiffusionKit's low-memory mode does.
    let result = pipe.generate_releasing(&cfg, &mut |s| {
        bar.set_position(s.step_index as u64);
        Flow::Continue
    });
    bar.finish_and_clear();
    let generated = result?.context("generation was cancelled")?;
    let (w, h, rgb) = &generated.image;
    write_png(&args.output, *w, *h, rgb)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if let Some(path) = &args.latent_out {
        let latent = generated
            .latent
            .divide(mlx_rs::Array::from_f32(vae_cfg.scaling_factor))?
            .add(mlx_rs::Array::from_f32(vae_cfg.shift_factor))?;
        let shape: Vec<usize> = latent.shape().iter().map(|&d| d as usize).collect();
        let values = sd3lab::model::nn::to_vec_f32(&latent)?;
        let array = sd3lab::calib::NpyArray::new(shape, sd3lab::calib::NpyData::Float32(values))?;
        let mut bytes = Vec::new();
        array.write_npy(&mut bytes)?;
        sd3lab::fsutil::write_atomic(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let peak_mlx = mlx_rs::memory::peak_memory().unwrap_or(0);
    let peak_rss = sd3lab::runtime::doctor::process_peak_rss().unwrap_or(0);
    let t = &generated.times;
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.generate/1",
            "model": files.name,
            "dtype": format!("{:?}", dtype.mlx()),
            "settings": cfg,
            "output": args.output,
            "latent_out": args.latent_out,
            "seconds": {"load": load_seconds, "text_encoding": t.text_encoding, "denoising": t.denoising, "per_step": t.per_step, "decoding": t.decoding},
            "peak_memory_bytes": {"mlx": peak_mlx, "process_rss": peak_rss},
            "quant": {"spec": args.quant, "mode": args.quant_mode, "quantized_layers": quant_report.quantized.len(), "skipped": quant_report.skipped, "mmdit_bytes_before": quant_report.bytes_before, "mmdit_bytes_after": quant_report.bytes_after},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mean_step = if t.per_step.is_empty() {
            0.0
        } else {
            t.per_step.iter().sum::<f64>() / t.per_step.len() as f64
        };
        println!(
            "wrote {} ({w}×{h}) with model '{}' ({:?})",
            args.output.display(),
            files.name,
            dtype.mlx()
        );
        println!(
            "load {:.2} s | text encoding {:.2} s | denoising {:.2} s ({} steps, {:.3} s/step) | decoding {:.2} s",
            load_seconds,
            t.text_encoding,
            t.denoising,
            t.per_step.len(),
            mean_step,
            t.decoding
        );
        println!(
            "peak memory: MLX {:.2} GB, process RSS {:.2} GB",
            peak_mlx as f64 / 1e9,
            peak_rss as f64 / 1e9
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct LayersArgs {
    /// Configuration preset (layers come from the configuration alone, no weights needed).
    #[arg(
        long,
        value_enum,
        default_value = "sd3-medium",
        conflicts_with = "model"
    )]
    preset: Preset,
    /// Read the configuration from a model's checkpoint instead (tiny, sd3-medium, auto, DIR).
    #[arg(long)]
    model: Option<String>,
    /// Override the number of joint blocks.
    #[arg(long)]
    depth: Option<usize>,
    /// Print one JSON document (schema `sd3lab.layers/1`).
    #[arg(long)]
    json: bool,
}

pub fn model(cmd: &ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Layers(args) => layers(args),
        ModelCommand::Synth(args) => synth(args),
        ModelCommand::Load(args) => load(args),
    }
}

fn layers(args: &LayersArgs) -> anyhow::Result<ExitCode> {
    let mut mmdit = match &args.model {
        Some(spec) => {
            let files = resolve_model(spec)?;
            sd3lab::model::source::infer_config(&files.checkpoint)?.0
        }
        None => args.preset.config(None).mmdit,
    };
    if let Some(depth) = args.depth {
        mmdit.depth = depth;
    }
    mmdit.validate().map_err(anyhow::Error::msg)?;
    let layers = mmdit_linear_layers(&mmdit);
    let total: usize = layers.iter().map(|l| l.params).sum();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.layers/1",
            "source": args.model.clone().unwrap_or_else(|| format!("preset:{:?}", args.preset)),
            "mmdit": mmdit,
            "count": layers.len(),
            "linear_params": total,
            "layers": layers,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<62} {:>5} {:<6} {:<9} {:>6} {:>6} {:>11}",
            "name", "block", "stream", "kind", "out", "in", "params"
        )?;
        for l in &layers {
            let block = l.block.map_or("-".to_owned(), |b| b.to_string());
            let stream = match l.stream {
                Some(StreamKind::Image) => "image",
                Some(StreamKind::Text) => "text",
                None => "-",
            };
            writeln!(
                out,
                "{:<62} {:>5} {:<6} {:<9} {:>6} {:>6} {:>11}",
                l.name,
                block,
                stream,
                l.kind.name(),
                l.out_features,
                l.in_features,
                l.params
            )?;
        }
        writeln!(out, "{} Linear layers, {} parameters", layers.len(), total)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// Images to generate (image i uses prompt i mod len(prompts) and seed --seed + i).
    #[arg(long)]
    num_images: usize,
    #[arg(long, default_value_t = 50)]
    num_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    cfg_weight: f32,
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    /// CSV with a `prompt` column (or one column); if the file does not exist the shipped
    /// prompt set is used.
    #[arg(long, default_value = "all_prompts.csv")]
    prompt_csv: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Start over in a directory that holds another run.
    #[arg(long)]
    overwrite: bool,
    /// Run even when the disk looks too small for the estimate.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn calibrate(args: &CalibrateArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::calibrate::{CalibrateConfig, CalibrateEvent, run_calibration};
    if args.model == "sd3-medium" {
        resolve_model(&args.model)?; // download with progress before the run
    }
    let config = CalibrateConfig {
        model: args.model.clone(),
        num_images: args.num_images,
        num_steps: args.num_steps,
        cfg_weight: args.cfg_weight,
        calib_dir: args.calib_dir.clone(),
        prompt_csv: Some(args.prompt_csv.clone()),
        seed: args.seed,
        height: args.height,
        width: args.width,
        dtype: args.dtype.unwrap_or_else(ModelDtype::default_for_backend),
        negative_prompt: args.negative_prompt.clone(),
        overwrite: args.overwrite,
        force: args.force,
    };
    let cancel = sd3lab::job::CancelToken::new();
    let on_signal = cancel.clone();
    // Ctrl-C: finish the current step, discard the unfinished image, keep the manifest consistent.
    let _ = ctrlc::set_handler(move || on_signal.cancel());
    let multi = indicatif::MultiProgress::new();
    if args.json {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let images = multi.add(indicatif::ProgressBar::new(args.num_images as u64));
    images.set_style(bar_style("images [{bar:30}] {pos}/{len} {msg} ETA {eta}"));
    let steps = multi.add(indicatif::ProgressBar::new(args.num_steps as u64));
    steps.set_style(bar_style("steps  [{bar:30}] {pos}/{len} {per_sec}"));
    let quiet = args.json;
    let mut on_event = |e: CalibrateEvent| match e {
        CalibrateEvent::Planned {
            start_image,
            estimate_bytes,
            notes,
            ..
        } => {
            multi.suspend(|| {
                for n in notes {
                    eprintln!("note: {n}");
                }
                if start_image > 0 {
                    eprintln!("resuming at image {start_image}");
                }
                eprintln!("will write about {:.1} MB", estimate_bytes as f64 / 1e6);
            });
            images.set_position(start_image as u64);
        }
        CalibrateEvent::ModelLoaded { seconds } => {
            multi.suspend(|| eprintln!("model loaded in {seconds:.1} s"));
        }
        CalibrateEvent::ImageStarted { .. } => steps.set_position(0),
        CalibrateEvent::Step { step, .. } => steps.set_position(step as u64),
        CalibrateEvent::ImageDone {
            image,
            seconds,
            peak_memory_bytes,
            ..
        } => {
            images.set_position(image as u64 + 1);
            images.set_message(format!(
                "{seconds:.2} s/img, peak {:.2} GB",
                peak_memory_bytes as f64 / 1e9
            ));
        }
    };
    let result = run_calibration(&config, &cancel, &mut on_event);
    steps.finish_and_clear();
    images.finish_and_clear();
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !quiet {
        println!(
            "{}: {} of {} images complete ({} written now, {:.1} MB, estimate {:.1} MB) in {:.1} s{}",
            summary.calib_dir.display(),
            summary.n_completed,
            summary.num_images,
            summary.images_written,
            summary.bytes_written as f64 / 1e6,
            summary.estimate_bytes as f64 / 1e6,
            summary.seconds,
            if summary.cancelled {
                " — cancelled; rerun the same command to resume"
            } else {
                ""
            }
        );
    }
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Args)]
pub struct SensitivityArgs {
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    /// Bit widths to try, comma-separated (2, 3, 4, 5, 6, 8).
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,8")]
    bits: Vec<i32>,
    #[arg(long, default_value_t = 64)]
    group_size: i32,
    #[arg(long)]
    max_images: Option<usize>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    step_stride: Option<u64>,
    /// Only layers whose name matches this regular expression.
    #[arg(long)]
    layers: Option<String>,
    /// Where the error is measured: the MMDiT's output (model), the output of the layer's own
    /// block (block) or of the layer itself (layer); block and layer are fast proxies.
    #[arg(long, value_enum, default_value = "model")]
    scope: sd3lab::quant::sensitivity::Scope,
    /// Calibration samples evaluated together in one forward.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch_size: u64,
    /// The naive oracle: a full forward per layer, bit width and sample.
    #[arg(long)]
    no_cache: bool,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long)]
    output_dir: PathBuf,
}

pub fn sensitivity(args: &SensitivityArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::quant::sensitivity::{SensitivityConfig, SensitivityEvent, run_sensitivity};
    if args.model == "sd3-medium" {
        resolve_model(&args.model)?; // download with progress before the run
    }
    let config = SensitivityConfig {
        model: args.model.clone(),
        calib_dir: args.calib_dir.clone(),
        bits: args.bits.clone(),
        group_size: args.group_size,
        max_images: args.max_images,
        step_stride: args.step_stride.map(|k| k as usize),
        layers: args.layers.clone(),
        output_dir: args.output_dir.clone(),
        use_cache: !args.no_cache,
        dtype: args.dtype.unwrap_or_else(ModelDtype::default_for_backend),
        scope: args.scope,
        batch_size: args.batch_size as usize,
    };
    let cancel = sd3lab::job::CancelToken::new();
    let on_signal = cancel.clone();
    let _ = ctrlc::set_handler(move || on_signal.cancel());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(bar_style("layers [{bar:30}] {pos}/{len} {msg} ETA {eta}"));
    let started = std::time::Instant::now();
    let mut sweep_started = None;
    let report = run_sensitivity(&config, &cancel, &mut |e| match e {
        SensitivityEvent::Preparing { samples } => {
            bar.suspend(|| {
                eprintln!("loading {samples} calibration samples and their float outputs")
            });
        }
        SensitivityEvent::Planned {
            layers,
            already_done,
            bits,
            samples,
        } => {
            sweep_started = Some(std::time::Instant::now());
            bar.set_length(layers as u64);
            bar.set_position(already_done as u64);
            bar.suspend(|| eprintln!("{layers} layers × {bits} bit widths on {samples} samples ({already_done} layers already done)"));
        }
        SensitivityEvent::LayerDone { name, seconds, .. } => {
            bar.inc(1);
            bar.set_message(format!("{name} ({seconds:.1} s)"));
        }
    });
    bar.finish_and_clear();
    let report = report?;
    let total = started.elapsed().as_secs_f64();
    let sweep = sweep_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "{} layers measured in {sweep:.1} s (after {:.1} s loading the model, the samples and their float outputs); wrote {} and {}",
        report.layers.len(),
        total - sweep,
        args.output_dir.join("sensitivity.json").display(),
        args.output_dir.join("sensitivity.csv").display()
    );
    Ok(if cancel.is_cancelled() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Args)]
pub struct PlanArgs {
    /// sensitivity.json from `sd3lab sensitivity`.
    #[arg(long)]
    sensitivity: PathBuf,
    /// Parameter-weighted average bits per weight, scales and biases included (bits + 32/group).
    #[arg(long)]
    target_bits: f64,
    /// Bit widths the plan may use (default: all measured).
    #[arg(long, value_delimiter = ',')]
    bits: Vec<i32>,
    #[arg(long, value_enum, default_value = "sqnr")]
    objective: sd3lab::quant::plan::Objective,
    /// Plan file to write; pareto.csv is written beside it.
    #[arg(long)]
    output: PathBuf,
    /// One plan per step bucket (early/mid/late), each optimal for its bucket's results and
    /// within the budget; `generate` switches between them.
    #[arg(long)]
    per_bucket: bool,
    /// Measure the plan's real full-model error on calibration samples the sensitivity run did
    /// not use, next to the additive prediction; stored in the plan under `validation`.
    #[arg(long)]
    validate: bool,
    /// At most this many held-out samples for --validate.
    #[arg(long)]
    validate_samples: Option<usize>,
}

/// How many layers get each bit width, e.g. `12×w4, 3×w8`.
fn bits_summary<'a>(layers: impl Iterator<Item = &'a sd3lab::quant::LayerQuant>) -> String {
    let mut histogram = std::collections::BTreeMap::<i32, usize>::new();
    for q in layers {
        *histogram.entry(q.bits).or_default() += 1;
    }
    histogram
        .iter()
        .map(|(b, n)| format!("{n}×w{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::quant::plan::{build_plan, build_plan_per_bucket};
    let report = sd3lab::quant::sensitivity::read_report(&args.sensitivity)?;
    let build = if args.per_bucket {
        build_plan_per_bucket
    } else {
        build_plan
    };
    let mut built = build(&report, args.target_bits, &args.bits, args.objective)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.sensitivity.display()))?;
    if args.validate {
        let validation = validate(&report, &built.plan, args.validate_samples)?;
        built
            .plan
            .extra
            .insert("validation".into(), serde_json::to_value(&validation)?);
    }
    let json = serde_json::to_string_pretty(&built.plan)?;
    sd3lab::fsutil::write_atomic(&args.output, json.as_bytes())
        .with_context(|| format!("writing {}", args.output.display()))?;
    let mut csv = format!(
        "average_bits,{}\n",
        match args.objective {
            sd3lab::quant::plan::Objective::Sqnr => "summed_sqnr_db",
            sd3lab::quant::plan::Objective::Mse => "summed_mse",
        }
    );
    for (b, e) in &built.pareto {
        csv.push_str(&format!("{b},{e}\n"));
    }
    let pareto = args.output.with_file_name("pareto.csv");
    sd3lab::fsutil::write_atomic(&pareto, csv.as_bytes())
        .with_context(|| format!("writing {}", pareto.display()))?;
    if !built.plan.buckets.is_empty() {
        println!(
            "per-bucket maps for {} (each within the budget; `layers` holds the all-steps plan):",
            built
                .plan
                .buckets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (bucket, layers) in &built.plan.buckets {
            let differ = layers
                .iter()
                .filter(|(n, q)| built.plan.layers.get(*n) != Some(q))
                .count();
            println!(
                "  {bucket}: {} ({differ} layers differ from the all-steps plan)",
                bits_summary(layers.values())
            );
        }
    }
    println!(
        "wrote {} ({} layers: {}; {} left float) — average {:.3} bits for a target of {}, predicted {} {:.4}, {:.1} MB of quantized weights; Pareto front in {}",
        args.output.display(),
        built.plan.layers.len(),
        bits_summary(built.plan.layers.values()),
        built.left_float.len(),
        built.average_bits,
        args.target_bits,
        if args.objective == sd3lab::quant::plan::Objective::Sqnr {
            "summed SQNR (dB)"
        } else {
            "summed MSE"
        },
        built.predicted_error,
        built.predicted_bytes as f64 / 1e6,
        pareto.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the plan validation with a progress bar and prints measured vs predicted errors.
fn validate(
    report: &sd3lab::quant::sensitivity::SensitivityReport,
    plan: &sd3lab::quant::QuantPlan,
    max_samples: Option<usize>,
) -> anyhow::Result<sd3lab::quant::validate::Validation> {
    let cancel = sd3lab::job::CancelToken::new();
    let on_signal = cancel.clone();
    let _ = ctrlc::set_handler(move || on_signal.cancel());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(bar_style(
        "validating [{bar:30}] {pos}/{len} samples ETA {eta}",
    ));
    let validation = sd3lab::quant::validate::validate_plan(
        report,
        &sd3lab::quant::QuantConfig::Plan(plan.clone()),
        max_samples,
        4,
        &cancel,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let validation = validation?;
    anyhow::ensure!(!cancel.is_cancelled(), "validation cancelled");
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".to_owned(), f);
    println!(
        "validation on {} held-out samples (the plan applied to the whole model, vs the sum of per-layer errors):",
        validation.samples.len()
    );
    println!(
        "{:<6} {:>7} {:>12} {:>14} {:>10} {:>14} {:>9}",
        "bucket", "samples", "mse", "predicted mse", "sqnr dB", "predicted dB", "cosine"
    );
    for r in &validation.rows {
        println!(
            "{:<6} {:>7} {:>12.4e} {:>14} {:>10.2} {:>14} {:>9.6}",
            r.bucket,
            r.n_samples,
            r.mse,
            opt(r.predicted_mse, &|v| format!("{v:.4e}")),
            r.sqnr_db,
            opt(r.predicted_sqnr_db, &|v| format!("{v:.2}")),
            r.cosine
        );
    }
    Ok(validation)
}

/// Resolves `--model` for a command, showing a progress bar while sd3-medium downloads.
fn resolve_model(spec: &str) -> anyhow::Result<sd3lab::model::source::ModelFiles> {
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(bar_style(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ));
    let mut current = String::new();
    let files = sd3lab::model::source::resolve_with_progress(
        spec,
        &mut |w| eprintln!("warning: {w}"),
        &mut |file, done, total| {
            if current != file {
                current = file.to_owned();
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_message(file.to_owned());
                bar.set_length(total.unwrap_or(0));
            }
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    Ok(files?)
}

/// An indicatif style from `template` (the default style if the template were invalid).
fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

#[derive(Args)]
pub struct RankAgreementArgs {
    /// The reference sensitivity.json (usually `--scope model`).
    reference: PathBuf,
    /// sensitivity.json files to compare with it (e.g. the block and layer scopes).
    #[arg(required = true)]
    proxies: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Spearman rank agreement of layer rankings between sensitivity runs, per bit width.
pub fn rank_agreement(args: &RankAgreementArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::quant::sensitivity::{rank_agreement, read_report};
    let reference = read_report(&args.reference)?;
    let mut rows = Vec::new();
    for p in &args.proxies {
        let proxy = read_report(p)?;
        for (bits, rho, layers) in rank_agreement(&reference, &proxy) {
            rows.push(serde_json::json!({
                "proxy": p.display().to_string(),
                "scope": proxy.settings.metric_scope,
                "bits": bits,
                "spearman": if rho.is_finite() { serde_json::json!(rho) } else { serde_json::Value::Null },
                "layers": layers,
            }));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "reference": args.reference.display().to_string(),
                "reference_scope": reference.settings.metric_scope,
                "agreement": rows,
            }))?
        );
    } else {
        println!(
            "{:<40} {:<6} {:>4} {:>9} {:>7}",
            "proxy", "scope", "bits", "spearman", "layers"
        );
        for r in &rows {
            println!(
                "{:<40} {:<6} {:>4} {:>9} {:>7}",
                r["proxy"].as_str().unwrap_or(""),
                r["scope"].as_str().unwrap_or(""),
                r["bits"],
                r["spearman"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.3}")),
                r["layers"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

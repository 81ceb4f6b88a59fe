//! Subcommand implementations: each turns parsed flags into a library call and prints the result.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use sd3lab::calib::listing::Listing;
use sd3lab::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter};
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

/// `sd3lab` without a subcommand. The desktop app is not built yet: run the self-check.
pub fn default_action() -> anyhow::Result<ExitCode> {
    eprintln!("sd3lab: the desktop app is not part of this build yet; running `sd3lab doctor`.");
    doctor(&DoctorArgs {
        json: false,
        seconds: 1.0,
        gemm_size: 2048,
    })
}

#[derive(Args)]
pub struct SamplesArgs {
    /// Calibration directory.
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    /// Only the first N images.
    #[arg(long)]
    max_images: Option<usize>,
    /// Every k-th step of each image, starting at step 0.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    step_stride: Option<u64>,
    /// Only samples of this step bucket (early, mid, late).
    #[arg(long)]
    bucket: Option<Bucket>,
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
    let filter = SampleFilter {
        max_images: args.max_images,
        step_stride: args.step_stride.map(|k| k as usize),
        bucket: args.bucket,
    };
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
}

#[derive(Args)]
pub struct LayersArgs {
    /// Configuration preset (layers come from the configuration alone, no weights needed).
    #[arg(long, value_enum, default_value = "sd3-medium")]
    preset: Preset,
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
    }
}

fn layers(args: &LayersArgs) -> anyhow::Result<ExitCode> {
    let config = args.preset.config(args.depth);
    config.mmdit.validate().map_err(anyhow::Error::msg)?;
    let layers = mmdit_linear_layers(&config.mmdit);
    let total: usize = layers.iter().map(|l| l.params).sum();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.layers/1",
            "preset": args.preset,
            "mmdit": config.mmdit,
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

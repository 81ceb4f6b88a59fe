//! `sd3lab benchmark`: configurations → images matched to a reference set, per-image latency
//! and peak memory; an outer bar per configuration and an inner bar per step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::bench::{
    BenchConfig, BenchError, BenchEvent, BenchSummary, RESULTS_ROOT, default_output_stem,
    run_benchmark_distributed,
};
use sd3lab::model::config::ModelDtype;

use super::{ModelEvents, bar_style, cancel_on_ctrl_c, source_error};

/// The seed's reference folder (`calibration_data_100/images`): used when it exists.
const DEFAULT_REFERENCE: &str = "calibration_data_100/images";

#[derive(Args)]
pub struct BenchmarkArgs {
    /// fp32, fp16, bf16, wN[:gG] (N in 2,3,4,5,6,8; G in 32,64,128) or a plan file; repeat for
    /// several configurations, run one after another.
    #[arg(long = "config", required = true)]
    configs: Vec<String>,
    #[arg(long, default_value_t = 150, value_parser = super::calibrate::parse_num_images)]
    num_images: usize,
    #[arg(long, default_value_t = 100, value_parser = super::calibrate::parse_num_steps)]
    num_steps: usize,
    #[arg(long, alias = "cfg-weight", default_value_t = 7.5)]
    cfg_scale: f32,
    /// Default: benchmark_results/<configurations joined by '_'>.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// The reference images: a `calibrate --images-only` folder (or its images/), or any folder
    /// of PNG/JPEG files. Default (without --skip-metrics): calibration_data_100/images when it
    /// exists.
    #[arg(long)]
    reference_dir: Option<PathBuf>,
    /// Only images, latency and memory: no image-quality metrics (and no reference needed).
    #[arg(long)]
    skip_metrics: bool,
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// The compute dtype of quantized configurations and the one the reference must have been
    /// made with (default: float32 on CPU, float16 on GPU).
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    /// Images per configuration generated first and left out of the latency statistics.
    #[arg(long, default_value_t = sd3lab::bench::DEFAULT_WARMUP)]
    warmup: usize,
    /// Seed of image 0 when the reference has no manifest (image i uses seed + i).
    #[arg(
        long,
        default_value_t = 0,
        value_parser = super::calibrate::parse_seed,
        allow_hyphen_values = true
    )]
    seed: u32,
    /// Prompts when the reference has no manifest (image i uses prompt i); the shipped set
    /// when the file does not exist.
    #[arg(long, default_value = "all_prompts.csv")]
    prompt_csv: PathBuf,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Group size of wN configurations given without :gG.
    #[arg(long, default_value_t = 64)]
    group_size: i32,
    /// Start over in a folder holding a benchmark with other settings.
    #[arg(long)]
    overwrite: bool,
    /// Generate only images R, R+N, … of every configuration (part R of N) into the output
    /// folder, without any network; running the same command without --shard afterwards
    /// finds every image done and writes the results and metrics. Under `mlx.launch` or
    /// `sd3lab launch` the ranks split the images by themselves and rank 0 writes them.
    #[arg(long, value_name = "R/N")]
    shard: Option<sd3lab::dist::Shard>,
    /// Run even though the reference was generated with other settings (recorded in
    /// results.json).
    #[arg(long)]
    allow_mismatch: bool,
    /// Inception weights for FID/IS/KID: torch-fidelity's .pth or its converted .safetensors
    /// (default: the user cache, filled by `sd3lab metrics weights --fetch`).
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// KID subset size (default: min(1000, --num-images), said when lowered).
    #[arg(long)]
    kid_subset_size: Option<usize>,
    /// Print results.json's content instead of the table.
    #[arg(long)]
    json: bool,
}

impl BenchmarkArgs {
    fn to_config(&self) -> BenchConfig {
        let default_reference = PathBuf::from(DEFAULT_REFERENCE);
        let reference_dir = self.reference_dir.clone().or_else(|| {
            // The default is only a default for a metrics run, and only where it exists (else
            // the run says how to make one); a --skip-metrics run without --reference-dir takes
            // its prompts from --prompt-csv and its seeds from --seed.
            (!self.skip_metrics && default_reference.is_dir()).then_some(default_reference)
        });
        let output_dir = self.output_dir.clone().unwrap_or_else(|| {
            PathBuf::from(RESULTS_ROOT).join(default_output_stem(&self.configs))
        });
        BenchConfig {
            configurations: self.configs.clone(),
            num_images: self.num_images,
            num_steps: self.num_steps,
            cfg_weight: self.cfg_scale,
            output_dir,
            reference_dir,
            skip_metrics: self.skip_metrics,
            model: self.model.clone(),
            height: self.height,
            width: self.width,
            dtype: self.dtype.unwrap_or_else(ModelDtype::default_for_backend),
            warmup: self.warmup,
            seed: self.seed,
            prompt_csv: Some(self.prompt_csv.clone()),
            negative_prompt: self.negative_prompt.clone(),
            group_size: self.group_size,
            overwrite: self.overwrite,
            allow_mismatch: self.allow_mismatch,
            inception_weights: self.inception_weights.clone(),
            kid_subset_size: self.kid_subset_size,
        }
    }
}

/// The library's refusal in this command's terms: which flag overrides it.
fn with_flag_hint(e: BenchError, args: &BenchmarkArgs) -> anyhow::Error {
    let e = match e {
        BenchError::Calibrate(c) => match *c {
            sd3lab::calibrate::CalibrateError::Source(source) => return source_error(*source),
            other => return other.into(),
        },
        other => other,
    };
    let hint = match &e {
        BenchError::NoImages => return anyhow::anyhow!("--num-images must be at least 1"),
        BenchError::Metrics(m)
            if matches!(
                **m,
                sd3lab::metrics::compute::MetricsError::Weights(
                    sd3lab::metrics::weights::WeightsError::Missing { .. }
                )
            ) =>
        {
            format!("{}, or pass --skip-metrics", super::metrics::INCEPTION_HINT)
        }
        BenchError::NeedsReference => {
            let dtype = args
                .dtype
                .unwrap_or_else(ModelDtype::default_for_backend)
                .name();
            format!(
                "make one with `sd3lab calibrate --images-only --calib-dir calibration_data_100 \
                 --model {} --num-images {} --num-steps {} --cfg-weight {} --height {} \
                 --width {} --dtype {dtype}{}` and pass --reference-dir \
                 calibration_data_100/images, or pass --skip-metrics",
                args.model,
                args.num_images,
                args.num_steps,
                args.cfg_scale,
                args.height,
                args.width,
                if args.negative_prompt.is_empty() {
                    String::new()
                } else {
                    format!(" --negative-prompt {:?}", args.negative_prompt)
                }
            )
        }
        BenchError::ReferenceDiffers { .. } => {
            "use the reference's settings, or pass --allow-mismatch to run anyway".into()
        }
        BenchError::RunDiffers { .. }
        | BenchError::ConfigurationDiffers { .. }
        | BenchError::ForeignData { .. } => "pass --overwrite to start over".into(),
        BenchError::TooFewReferenceImages { .. } => "lower --num-images".into(),
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}; {hint}")
}

/// `sd3lab benchmark`: exit 130 when cancelled (Ctrl-C stops after the current image).
pub fn run(args: &BenchmarkArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config();
    let split = super::Split::new(args.shard)?;
    let tag = split.tag();
    let cancel = cancel_on_ctrl_c();
    let multi = indicatif::MultiProgress::new();
    if args.json || split.is_part() {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let outer = multi.add(indicatif::ProgressBar::new(0));
    outer.set_style(bar_style(
        "{prefix:>10} [{bar:30}] {pos}/{len} images {msg} ETA {eta}",
    ));
    let steps = multi.add(indicatif::ProgressBar::new(args.num_steps as u64));
    steps.set_style(bar_style(
        "{prefix:>10} [{bar:30}] step {pos}/{len} {per_sec}",
    ));
    steps.set_prefix("denoising");
    let mut model_events = ModelEvents::new();
    let mut on_event = |e: BenchEvent| match e {
        BenchEvent::Model(event) => model_events.show(event),
        BenchEvent::Planned {
            configurations,
            done,
            notes,
            ..
        } => multi.suspend(|| {
            for n in notes {
                eprintln!("note: {n}");
            }
            for (name, d) in configurations.iter().zip(&done) {
                if *d > 0 {
                    eprintln!("{name}: {d} images already done, resuming");
                }
            }
        }),
        BenchEvent::ConfigStarted {
            configuration,
            index,
            count,
            done,
            num_images,
        } => {
            outer.set_prefix(configuration.clone());
            outer.set_length(num_images as u64);
            outer.reset();
            outer.set_position(done as u64);
            outer.set_message(String::new());
            multi.suspend(|| eprintln!("configuration {} of {count}: {configuration}", index + 1));
        }
        BenchEvent::ConfigLoaded {
            configuration,
            seconds,
            mmdit_weight_bytes,
        } => multi.suspend(|| {
            eprintln!(
                "{configuration}: loaded in {seconds:.1} s, MMDiT weights {:.1} MB",
                mmdit_weight_bytes as f64 / 1e6
            )
        }),
        BenchEvent::ImageStarted { throwaway, .. } => {
            steps.set_prefix(if throwaway { "warm-up" } else { "denoising" });
            steps.set_position(0);
        }
        BenchEvent::Step { step, .. } => steps.set_position(step as u64),
        BenchEvent::ImageDone {
            configuration,
            image,
            seconds,
            peak_mlx_bytes,
            ..
        } => {
            outer.inc(1);
            outer.set_message(format!(
                "{seconds:.2} s/img, MLX {:.2} GB",
                peak_mlx_bytes as f64 / 1e9
            ));
            if split.is_part() {
                eprintln!("{tag}{configuration}: image {image} done ({seconds:.2} s)");
            }
        }
        BenchEvent::JobProgress {
            configuration,
            done,
            num_images,
            ranks,
        } => {
            split.job_progress(format_args!(
                "{configuration}: {done}/{num_images} images over {ranks} ranks"
            ));
        }
        BenchEvent::ConfigDone { .. } => {}
        BenchEvent::Metrics {
            configuration,
            event,
        } => {
            use sd3lab::metrics::compute::MetricsEvent;
            outer.set_prefix(configuration);
            let (what, done, total) = match event {
                MetricsEvent::Features { input, done, total } => (
                    if input == 1 {
                        "Inception features"
                    } else {
                        "reference features"
                    },
                    done,
                    total,
                ),
                MetricsEvent::CachedFeatures { .. } => ("reference features (cached)", 1, 1),
                MetricsEvent::Kid { done, total } => ("KID subsets", done, total),
                MetricsEvent::Paired { done, total } => ("PSNR/SSIM/LPIPS", done, total),
            };
            steps.set_prefix("metrics");
            outer.set_message(what.to_owned());
            outer.set_length(total as u64);
            outer.set_position(done as u64);
        }
        BenchEvent::MetricsDone { configuration, .. } => {
            multi.suspend(|| eprintln!("{configuration}: metrics done"));
        }
    };
    let result = run_benchmark_distributed(&config, split.distribution(), &cancel, &mut on_event);
    model_events.finish();
    steps.finish_and_clear();
    outer.finish_and_clear();
    let summary = result.map_err(|e| with_flag_hint(e, args))?;
    if !split.writes_merged() {
        println!(
            "{tag}{} images generated in {:.1} s into {}{}",
            summary.images_generated,
            summary.seconds,
            summary.output_dir.display(),
            if split.needs_merge() && !summary.cancelled {
                "; once every part has finished, the same command without --shard writes the results"
            } else {
                ""
            }
        );
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.results)?);
    } else {
        print_summary(&summary);
    }
    if let Some(note) = &summary.collect_note {
        eprintln!("note: {note}");
    }
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(summary: &BenchSummary) {
    let scored: Vec<_> = summary
        .results
        .configurations
        .iter()
        .filter_map(|c| Some((c.info.identity.name.as_str(), c.metrics.as_ref()?)))
        .collect();
    if !scored.is_empty() {
        let num =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |x| format!("{x:.digits$}"));
        let pm = |v: Option<(f64, f64)>, digits: usize| {
            v.map_or("-".to_owned(), |(m, s)| {
                format!("{m:.digits$} ± {s:.digits$}")
            })
        };
        println!(
            "{:<16} {:>10} {:>20} {:>16} {:>9} {:>8} {:>8}",
            "configuration", "FID", "KID ± std", "IS ± std", "PSNR dB", "SSIM", "LPIPS"
        );
        for (name, m) in &scored {
            let psnr = match (m.psnr_mean, m.identical_pairs) {
                (None, Some(n)) if n > 0 => "inf".to_owned(),
                (v, _) => num(v, 2),
            };
            println!(
                "{:<16} {:>10} {:>20} {:>16} {:>9} {:>8} {:>8}",
                name,
                num(m.fid, 3),
                pm(m.kid.map(|k| (k.mean, k.std)), 5),
                pm(m.isc.map(|i| (i.mean, i.std)), 3),
                psnr,
                num(m.ssim_mean, 4),
                num(m.lpips_mean, 4),
            );
        }
        if let Some((_, m)) = scored.first() {
            println!(
                "reference IS {}",
                pm(m.isc_reference.map(|i| (i.mean, i.std)), 3)
            );
            if let Some(why) = &m.lpips_missing {
                println!("LPIPS left out: {why}; {}", super::metrics::LPIPS_HINT);
            }
            for n in &m.notes {
                println!("note: {n}");
            }
        }
        println!();
    }
    println!(
        "{:<16} {:>7} {:>11} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "configuration",
        "images",
        "MMDiT MB",
        "s/img",
        "s/step",
        "p90 s/img",
        "MLX peak GB",
        "RSS peak GB"
    );
    for c in &summary.results.configurations {
        let (per_image, per_step, p90) =
            c.latency
                .as_ref()
                .map_or(("-".to_owned(), "-".to_owned(), "-".to_owned()), |l| {
                    (
                        format!("{:.3}", l.total.mean),
                        format!("{:.4}", l.per_step.mean),
                        format!("{:.3}", l.total.p90),
                    )
                });
        println!(
            "{:<16} {:>7} {:>11.2} {:>10} {:>10} {:>10} {:>11.3} {:>11.3}",
            c.info.identity.name,
            c.images,
            c.info.mmdit_weight_bytes as f64 / 1e6,
            per_image,
            per_step,
            p90,
            c.peak_memory.mlx_bytes as f64 / 1e9,
            c.peak_memory.process_rss_bytes as f64 / 1e9
        );
    }
    if summary.generation_seconds > 0.0 {
        println!(
            "harness: {:.3} s around {:.3} s of generation ({:.2} %: peak resets, PNGs, records, summaries)",
            summary.harness_seconds,
            summary.generation_seconds,
            100.0 * summary.harness_seconds / summary.generation_seconds
        );
    }
    println!(
        "{} images generated in {:.1} s; results in {}{}",
        summary.images_generated,
        summary.seconds,
        summary.output_dir.display(),
        if summary.cancelled {
            " — cancelled; rerun the same command to resume"
        } else {
            ""
        }
    );
}

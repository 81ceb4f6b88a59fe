//! `sd3lab sensitivity`: the per-layer, per-bit sweep with a progress bar.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::model::config::ModelDtype;
use sd3lab::quant::sensitivity::{
    REPORT_CSV, REPORT_JSON, Scope, SensitivityConfig, SensitivityError, SensitivityEvent,
    run_sensitivity_distributed,
};

use super::{ModelEvents, bar_style, cancel_on_ctrl_c, source_error};

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
    /// Where the error is measured: the MMDiT's output (model), the same to first order from
    /// gradient probes, every layer at once (linearized), the output of the layer's own block
    /// (block) or of the layer itself (layer); block and layer are fast proxies.
    #[arg(long, value_enum, default_value = "model")]
    scope: Scope,
    /// Calibration samples evaluated together in one forward [default: 4; linearized: 1, the
    /// least noise for the work on a CPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch_size: Option<u64>,
    /// Linearized scope: random probes (forward/backward passes) per sample batch [default:
    /// enough for 16 passes in all].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    probes: Option<u64>,
    /// Linearized scope: the seed of the probes.
    #[arg(long, default_value_t = 0)]
    probe_seed: u64,
    /// The naive oracle: a full forward per layer, bit width and sample.
    #[arg(long)]
    no_cache: bool,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long)]
    output_dir: PathBuf,
    /// Start over in an output folder that holds a run with other settings or over other
    /// calibration data (otherwise refused, listing the differences).
    #[arg(long)]
    overwrite: bool,
    /// Measure only part R of N of the layers (chosen by a cost model, the same on every
    /// machine) into OUTPUT_DIR/shard-R-of-N/, without any network; `sd3lab merge
    /// OUTPUT_DIR` joins the finished parts. Under `mlx.launch` or `sd3lab launch` the ranks
    /// split the work by themselves and rank 0 writes the merged files.
    #[arg(long, value_name = "R/N")]
    shard: Option<sd3lab::dist::Shard>,
}

impl SensitivityArgs {
    fn to_config(&self) -> SensitivityConfig {
        SensitivityConfig {
            model: self.model.clone(),
            calib_dir: self.calib_dir.clone(),
            bits: self.bits.clone(),
            group_size: self.group_size,
            max_images: self.max_images,
            step_stride: self.step_stride.map(|k| k as usize),
            layers: self.layers.clone(),
            output_dir: self.output_dir.clone(),
            use_cache: !self.no_cache,
            dtype: self.dtype.unwrap_or_else(ModelDtype::default_for_backend),
            scope: self.scope,
            batch_size: self
                .batch_size
                .map_or(self.scope.default_batch_size(), |b| b as usize),
            overwrite: self.overwrite,
            probes: self.probes.map(|k| k as usize),
            probe_seed: self.probe_seed,
        }
    }
}

/// `sd3lab sensitivity`: exit 130 when cancelled (the layers measured so far are kept).
pub fn run(args: &SensitivityArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config();
    let split = super::Split::new(args.shard)?;
    let shard = split.shard();
    let plain = split.is_part();
    let tag = split.tag();
    let bits = sd3lab::quant::sensitivity::normalized_bits(&args.bits);
    if bits.len() < args.bits.len() {
        let list = |b: &[i32]| {
            b.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        eprintln!(
            "note: --bits {} repeats a bit width: measuring {} once each",
            list(&args.bits),
            list(&bits)
        );
    }
    let cancel = cancel_on_ctrl_c();
    // Shown once the sweep is planned; until then the model's download bar may be on screen.
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(bar_style("layers [{bar:30}] {pos}/{len} {msg} ETA {eta}"));
    let mut model_events = ModelEvents::new();
    let started = std::time::Instant::now();
    let mut sweep_started = None;
    let report = run_sensitivity_distributed(&config, split.distribution(), &cancel, &mut |e| {
        match e {
            SensitivityEvent::Model(e) => model_events.show(e),
            SensitivityEvent::Preparing { samples } => {
                model_events.finish();
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
                if !plain {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_length(layers as u64);
                bar.set_position(already_done as u64);
                bar.suspend(|| eprintln!("{tag}{layers} layers × {bits} bit widths on {samples} samples ({already_done} layers already done)"));
            }
            SensitivityEvent::LayerDone { name, seconds, .. } => {
                bar.inc(1);
                bar.set_message(format!("{name} ({seconds:.1} s)"));
                if plain {
                    eprintln!(
                        "{tag}{name} done ({seconds:.1} s; {} of {} here)",
                        bar.position(),
                        bar.length().unwrap_or(0)
                    );
                }
            }
            SensitivityEvent::JobProgress { done, total, ranks } => {
                split.job_progress(format_args!(
                    "{done}/{total} layers measured over {ranks} ranks"
                ));
            }
            SensitivityEvent::Probing {
                batches,
                already_done,
                probes,
            } => {
                bar.set_style(bar_style(
                    "sample batches [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                ));
                bar.set_length(batches as u64);
                bar.set_position(already_done as u64);
                bar.reset_eta();
                bar.suspend(|| eprintln!("every layer at once: {batches} sample batches × {probes} probes (forward + backward each; {already_done} batches already done)"));
            }
            SensitivityEvent::BatchDone { done, seconds, .. } => {
                bar.set_position(done as u64);
                bar.set_message(format!("({seconds:.1} s per batch)"));
            }
        }
    });
    model_events.finish();
    bar.finish_and_clear();
    let report = report.map_err(sensitivity_error)?;
    let total = started.elapsed().as_secs_f64();
    let sweep = sweep_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // A part without a group, and ranks other than 0, wrote only their part.
    let dir = if split.writes_merged() {
        args.output_dir.clone()
    } else {
        sd3lab::quant::shards::shard_dir(&args.output_dir, shard)
    };
    println!(
        "{tag}{} layers measured in {sweep:.1} s (after {:.1} s loading the model, the samples and their float outputs); wrote {} and {}",
        report.layers.len(),
        total - sweep,
        dir.join(REPORT_JSON).display(),
        dir.join(REPORT_CSV).display()
    );
    if split.needs_merge() && report.pending.is_empty() && !cancel.is_cancelled() {
        println!(
            "part {shard} finished; once every part has, `sd3lab merge {}` writes the merged report",
            args.output_dir.display()
        );
    }
    // The workflow's next step: the exact sweep on the layers that decide a plan.
    if report.settings.metric_scope == Scope::Linearized
        && report.pending.is_empty()
        && let Some(bits) = report.lowest_bits()
    {
        let top = sd3lab::quant::sensitivity::most_sensitive(
            &report,
            bits,
            sd3lab::quant::sensitivity::TOP_LAYERS,
        );
        if !top.is_empty() {
            println!(
                "to measure the {} most sensitive layers (at {bits} bits) exactly, then `plan --refine`: rerun with the same flags but --scope model --output-dir OTHER --layers '{}'",
                top.len(),
                sd3lab::quant::sensitivity::layers_pattern(&top)
            );
        }
    }
    Ok(if cancel.is_cancelled() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// A sensitivity error in the CLI's terms: the flags that change what the library refused.
pub(super) fn sensitivity_error(e: SensitivityError) -> anyhow::Error {
    match e {
        SensitivityError::ProbesNeedLinearized(scope) => anyhow::anyhow!(
            "--probes and --probe-seed are for --scope linearized, not --scope {scope}"
        ),
        SensitivityError::NaiveNeedsModelScope(scope) => anyhow::anyhow!(
            "the naive path (--no-cache) is the oracle of --scope model only, not of --scope {scope}"
        ),
        SensitivityError::BadLayerPattern { pattern, source } => {
            anyhow::anyhow!("--layers {pattern:?}: {source}")
        }
        SensitivityError::NoLayerMatches(pattern) => {
            anyhow::anyhow!("--layers {pattern:?} matches no layer of this model")
        }
        SensitivityError::NoSamples(_) => {
            anyhow::anyhow!("{e}; check --calib-dir, --max-images and --step-stride")
        }
        SensitivityError::NoHeldOutSamples(_) => anyhow::anyhow!(
            "{e} (run the sensitivity sweep with --max-images or --step-stride, or calibrate more images)"
        ),
        SensitivityError::Source(e) => source_error(*e),
        SensitivityError::SettingsDiffer { .. } | SensitivityError::UnreadablePrevious { .. } => {
            anyhow::anyhow!("{e}; pass --overwrite to start over, or choose another --output-dir")
        }
        SensitivityError::NonFiniteOutput { .. } => anyhow::anyhow!(
            "{e} (with --layers or --bits), or measure in float32 (--dtype float32)"
        ),
        other => other.into(),
    }
}

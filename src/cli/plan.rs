//! `sd3lab plan`: a mixed-precision plan from a sensitivity run, optionally validated.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::sensitivity::sensitivity_error;
use super::{ModelEvents, bar_style, cancel_on_ctrl_c};

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
    /// An exact `--scope model` sweep of some layers, over the same data and settings as a
    /// `--scope linearized` --sensitivity report: its measurements replace those layers'
    /// estimates before planning.
    #[arg(long)]
    refine: Option<PathBuf>,
    /// Plan from a sweep that did not finish (cancelled, killed or failed): its unmeasured
    /// layers stay float. Without it such a sweep is refused, naming the missing layers.
    #[arg(long)]
    allow_incomplete: bool,
}

/// How many layers get each bit width, e.g. `12×w4, 3×w8`.
fn bits_summary<'a>(layers: impl Iterator<Item = &'a sd3lab::quant::LayerQuant>) -> String {
    sd3lab::quant::bits_histogram(layers)
        .iter()
        .map(|(b, n)| format!("{n}×w{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sd3lab plan`: writes the plan and pareto.csv beside it.
pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::quant::plan::{build_plan, build_plan_per_bucket};
    // Before any work: where the plan goes, and that it is not the sweep it is made from.
    let pareto = sd3lab::quant::plan::pareto_file_beside(&args.output);
    sd3lab::quant::plan::check_plan_outputs(&args.sensitivity, &args.output, &pareto)
        .map_err(|e| anyhow::anyhow!("--output: {e}"))?;
    let mut report =
        sd3lab::quant::sensitivity::read_report(&args.sensitivity).map_err(sensitivity_error)?;
    if let Some(exact_path) = &args.refine {
        sd3lab::quant::plan::check_plan_outputs(exact_path, &args.output, &pareto)
            .map_err(|e| anyhow::anyhow!("--output: {e}"))?;
        let exact =
            sd3lab::quant::sensitivity::read_report(exact_path).map_err(sensitivity_error)?;
        let n = sd3lab::quant::linearized::refine(&mut report, &exact).map_err(|e| {
            anyhow::anyhow!(
                "--refine {} into {}: {e}",
                exact_path.display(),
                args.sensitivity.display()
            )
        })?;
        eprintln!("{n} layers' estimates replaced by the exact sweep's measurements");
    }
    if let Err(e) = sd3lab::quant::plan::require_complete(&report) {
        if !args.allow_incomplete {
            anyhow::bail!(
                "{}: {e}; resume the sweep (the same `sd3lab sensitivity` command), or pass --allow-incomplete to plan from the measured layers only (the others stay float)",
                args.sensitivity.display()
            );
        }
        eprintln!(
            "warning: {}: {e}; planning from the measured layers only (the others stay float)",
            args.sensitivity.display()
        );
    }
    let build = if args.per_bucket {
        build_plan_per_bucket
    } else {
        build_plan
    };
    let mut built = build(&report, args.target_bits, &args.bits, args.objective).map_err(|e| {
        // The library states the problem; the flag that fixes it is this command's to name.
        // Rounded up, so that the suggested target is reachable.
        let hint = e.lowest_target().map_or(String::new(), |lowest| {
            let lowest = (lowest * 1000.0).ceil() / 1000.0;
            format!("; pass a --target-bits of at least {lowest}")
        });
        anyhow::anyhow!("{}: {e}{hint}", args.sensitivity.display())
    })?;
    if args.validate {
        let validation = validate(&report, &built.plan, args.validate_samples)?;
        built
            .plan
            .extra
            .insert("validation".into(), serde_json::to_value(&validation)?);
    }
    sd3lab::quant::plan::write_plan_files(&args.output, &pareto, &built, args.objective)?;
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
    use sd3lab::quant::validate::ValidationEvent;
    let cancel = cancel_on_ctrl_c();
    // Shown from the first measured batch; until then the model's download bar may be.
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(bar_style(
        "validating [{bar:30}] {pos}/{len} samples ETA {eta}",
    ));
    let mut model_events = ModelEvents::new();
    let mut shown = false;
    let validation = sd3lab::quant::validate::validate_plan(
        report,
        &sd3lab::quant::QuantConfig::Plan(plan.clone()),
        max_samples,
        4,
        &cancel,
        &mut |e| match e {
            ValidationEvent::Model(e) => model_events.show(e),
            ValidationEvent::Measured { done, total } => {
                if !shown {
                    shown = true;
                    model_events.finish();
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        },
    );
    model_events.finish();
    bar.finish_and_clear();
    let validation = validation.map_err(sensitivity_error)?;
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

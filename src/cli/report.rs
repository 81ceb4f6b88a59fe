//! `sd3lab report …`: plots and reports (HTML/Markdown, PNG/SVG) from results files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::calib::{CalibrationSet, OpenOptions};

use super::samples::SampleFilterArgs;

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
    /// A benchmark folder: its settings, the configurations' summary table, quality against
    /// weight bytes, latency and memory plots, and each configuration's worst prompts as
    /// reference / configuration / difference thumbnails (the Compare tab's report), with
    /// results.json and the summary as CSV beside it.
    Benchmark(ReportBenchmarkArgs),
}

#[derive(Args)]
pub struct ReportBenchmarkArgs {
    /// Benchmark folder (`sd3lab benchmark`'s output, with its results.json).
    bench_dir: PathBuf,
    /// report.html or report.md.
    #[arg(long)]
    output: PathBuf,
    /// How many of each configuration's prompts furthest from the reference to show (at
    /// least 1).
    #[arg(long, default_value_t = 10)]
    worst: usize,
    /// The per-image metric that picks and orders those prompts.
    #[arg(long, value_enum, default_value = "psnr")]
    metric: sd3lab::bench::PairedMetric,
    /// The quality axis of the trade-off plot (default: FID when the run has it, else PSNR).
    #[arg(long, value_enum)]
    quality: Option<sd3lab::report::benchmark::QualityMetric>,
    /// Only this configuration (repeat for several; default: all); a name the folder does not
    /// have is refused.
    #[arg(long = "configuration")]
    configurations: Vec<String>,
    /// Also write every figure as SVG and PNG into this folder.
    #[arg(long)]
    figures: Option<PathBuf>,
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
    bucket: sd3lab::calib::Bucket,
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

impl ReportSensitivityArgs {
    fn to_config(&self) -> anyhow::Result<sd3lab::report::SensitivityReportOptions> {
        Ok(sd3lab::report::SensitivityReportOptions {
            metric: self.metric,
            bucket: self.bucket,
            bits: self.bits,
            layers: Vec::new(),
            top: self.top,
            plan_target_bits: self.plan_target_bits,
            ..Default::default()
        })
    }

    /// The sensitivity.json to read: the input itself, or the one in the input folder.
    fn json_path(&self) -> PathBuf {
        if self.input.is_dir() {
            self.input.join(sd3lab::quant::sensitivity::REPORT_JSON)
        } else {
            self.input.clone()
        }
    }
}

/// `sd3lab report …`.
pub fn run(cmd: &ReportCommand) -> anyhow::Result<ExitCode> {
    let written = match cmd {
        ReportCommand::Sensitivity(args) => return sensitivity(args),
        ReportCommand::Benchmark(args) => return benchmark(args),
        ReportCommand::Samples(args) => {
            let set = CalibrationSet::open(&args.calib_dir, &OpenOptions::default())?;
            sd3lab::report::write_samples_report(&set, &args.filter.to_filter(), &args.output)?
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

/// The report and its figures are rendered and checked in full before the first file is
/// written: a request that fails writes nothing.
fn sensitivity(args: &ReportSensitivityArgs) -> anyhow::Result<ExitCode> {
    let opts = args.to_config()?;
    let json = args.json_path();
    let report = sd3lab::quant::sensitivity::read_report(&json)?;
    let mut staged = sd3lab::report::sensitivity_report_files(&report, &args.output, &opts)
        .map_err(|e| match e {
            sd3lab::report::ReportError::NoSuchBits { .. } => {
                anyhow::anyhow!("{}: --bits: {e}", json.display())
            }
            other => other.into(),
        })?;
    staged.input(&json);
    if let Some(dir) = &args.figures {
        let figs = sd3lab::report::sensitivity_figures(&report, &opts)?;
        sd3lab::report::stage_figures(&figs, dir, (900, 520), &mut staged)?;
    }
    for p in staged.commit()? {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn benchmark(args: &ReportBenchmarkArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::report::benchmark::{
        BENCHMARK_FIGURE_SIZE, BenchmarkReportOptions, benchmark_report_files, figures_for,
    };
    let folder = sd3lab::bench::BenchFolder::open(&args.bench_dir)?;
    let opts = BenchmarkReportOptions {
        worst: args.worst,
        metric: args.metric,
        quality: args.quality,
        configurations: args.configurations.clone(),
    };
    // Rendered and checked in full before the first file is written.
    let mut staged = benchmark_report_files(&folder, &args.output, &opts)?;
    if let Some(dir) = &args.figures {
        let (figs, note) = figures_for(&folder, &opts)?;
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        sd3lab::report::stage_figures(&figs, dir, BENCHMARK_FIGURE_SIZE, &mut staged)?;
    }
    for p in staged.commit()? {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

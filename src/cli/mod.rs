//! The `sd3lab` command line: one file per command, each with its flags (`…Args`), their
//! conversion into the library's validated configuration (`to_config`), the run and the printing.
//! This file holds the command enum, the dispatch and what several commands share.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod benchmark;
mod calibrate;
mod demo;
mod doctor;
mod generate;
mod gui;
mod launch;
mod merge;
mod metrics;
mod model;
mod plan;
mod rank_agreement;
mod report;
mod ring_check;
mod samples;
mod sensitivity;
mod shapes;

#[derive(Parser)]
#[command(
    name = "sd3lab",
    version,
    about = "Post-training quantization lab for Stable Diffusion 3 medium on MLX"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check MLX, the backend, the CPU BLAS and memory; benchmark an f32 GEMM.
    Doctor(doctor::DoctorArgs),
    /// List the samples of a calibration directory with a summary.
    Samples(samples::SamplesArgs),
    /// Generate one image from a prompt (SD3 without T5, as DiffusionKit runs it).
    Generate(generate::GenerateArgs),
    /// Generate calibration data: one .npz per (image, step), final images, manifest; resumable.
    Calibrate(calibrate::CalibrateArgs),
    /// Benchmark configurations (fp16, wN, plans) against a reference set: images, per-image
    /// latency, peak memory; resumable.
    Benchmark(benchmark::BenchmarkArgs),
    /// FID / IS / KID between two image folders as torch-fidelity computes them, and paired
    /// PSNR / SSIM / LPIPS; `metrics weights --fetch` gets the networks' weights.
    Metrics(metrics::MetricsArgs),
    /// Per-layer, per-bit sensitivity of the MMDiT on calibration samples, by step bucket.
    Sensitivity(sensitivity::SensitivityArgs),
    /// A mixed-precision plan from a sensitivity run, optimal under an average-bits budget.
    Plan(plan::PlanArgs),
    /// Start the ranks of a distributed run (MLX's ring backend), locally or over ssh:
    /// `sd3lab launch --local 2 -- sd3lab sensitivity …`.
    Launch(launch::LaunchArgs),
    /// Join the finished parts of a calibration run or sensitivity sweep split with --shard R/N.
    Merge(merge::MergeArgs),
    /// Under `sd3lab launch` / `mlx.launch`: check that the ranks reach each other and time
    /// the collectives (barrier, sum, gather).
    RingCheck(ring_check::RingCheckArgs),
    /// Spearman rank agreement between sensitivity runs' layer rankings, per bit width.
    RankAgreement(rank_agreement::RankAgreementArgs),
    /// Open the desktop app (also what `sd3lab` alone does when a display is available).
    Gui(gui::GuiArgs),
    /// Export plots and reports (HTML/Markdown, PNG/SVG) from results files.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Model tools: list the quantizable layers, write synthetic checkpoints.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

impl Cli {
    /// Runs the command; the exit code for a finished run, an error for a failed one.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Some(Command::Doctor(args)) => doctor::run(&args),
            Some(Command::Samples(args)) => samples::run(&args),
            Some(Command::Model(cmd)) => model::run(&cmd),
            Some(Command::Generate(args)) => generate::run(&args),
            Some(Command::Calibrate(args)) => calibrate::run(&args),
            Some(Command::Benchmark(args)) => benchmark::run(&args),
            Some(Command::Metrics(args)) => metrics::run(&args),
            Some(Command::Sensitivity(args)) => sensitivity::run(&args),
            Some(Command::Plan(args)) => plan::run(&args),
            Some(Command::Launch(args)) => launch::run(&args),
            Some(Command::Merge(args)) => merge::run(&args),
            Some(Command::RingCheck(args)) => ring_check::run(&args),
            Some(Command::RankAgreement(args)) => rank_agreement::run(&args),
            Some(Command::Gui(args)) => gui::run(&args),
            Some(Command::Report(cmd)) => report::run(&cmd),
            None => demo::default_action(),
        }
    }
}

/// The part of a job this process runs: the whole job, a `--shard R/N` part, or a rank of the
/// ring group `mlx.launch` / `sd3lab launch` started it in (joined here, before any work).
pub(super) struct Split {
    group: Option<sd3lab::dist::RingGroup>,
    shard: sd3lab::dist::Shard,
}

impl Split {
    pub(super) fn new(shard: Option<sd3lab::dist::Shard>) -> anyhow::Result<Self> {
        let group = sd3lab::dist::RingGroup::from_env()?;
        let shard = match (&group, shard) {
            (Some(_), Some(_)) => anyhow::bail!(
                "--shard is for runs without a launcher; under mlx.launch or sd3lab launch the ranks split the work themselves"
            ),
            (Some(g), None) => sd3lab::dist::Distribution::of_group(g).shard,
            (None, Some(s)) => s,
            (None, None) => sd3lab::dist::Shard::WHOLE,
        };
        Ok(Self { group, shard })
    }

    pub(super) fn distribution(&self) -> sd3lab::dist::Distribution<'_> {
        sd3lab::dist::Distribution {
            shard: self.shard,
            group: self
                .group
                .as_ref()
                .map(|g| g as &dyn sd3lab::dist::Collective),
        }
    }

    pub(super) fn shard(&self) -> sd3lab::dist::Shard {
        self.shard
    }

    /// A part's output goes to logs and launchers' pipes: plain lines, no bars.
    pub(super) fn is_part(&self) -> bool {
        self.shard.is_part()
    }

    /// `[rank R/N] ` before a part's lines.
    pub(super) fn tag(&self) -> String {
        if self.is_part() {
            format!("[rank {}] ", self.shard)
        } else {
            String::new()
        }
    }

    /// Whether this process writes the job's merged files (a whole run, or rank 0 of a group).
    pub(super) fn writes_merged(&self) -> bool {
        self.distribution().writes_merged()
    }

    /// Prints the whole job's progress, `job: {what}` (rank 0 only: the line `sd3lab launch`
    /// shows and turns into its progress bar).
    pub(super) fn job_progress(&self, what: std::fmt::Arguments) {
        if self.shard.rank == 0 {
            eprintln!("job: {what}");
        }
    }

    /// A `--shard` part (no group): its files wait for `sd3lab merge`.
    pub(super) fn needs_merge(&self) -> bool {
        self.is_part() && self.group.is_none()
    }
}

/// Whether `err` is a collective that failed because another rank did.
pub fn is_lost_peer(err: &anyhow::Error) -> bool {
    use sd3lab::dist::DistError;
    err.chain().any(|e| {
        let dist = e
            .downcast_ref::<DistError>()
            .or_else(|| e.downcast_ref::<Box<DistError>>().map(|b| &**b));
        matches!(dist, Some(DistError::Collective { .. }))
    })
}

/// Resolves `--model` for a command: warnings on stderr, a bytes bar while sd3-medium
/// downloads; Ctrl-C cancels the download.
fn resolve_model(spec: &str) -> anyhow::Result<sd3lab::model::source::ModelFiles> {
    let cancel = cancel_on_ctrl_c();
    let mut events = ModelEvents::new();
    let files = sd3lab::model::source::resolve(spec, &cancel, &mut |e| events.show(e));
    events.finish();
    files.map_err(source_error)
}

/// Prints what resolving a model reports, in the CLI's terms: warnings as `warning: …` lines
/// with the flag that helps, download progress as a bytes bar.
pub(super) struct ModelEvents {
    bar: indicatif::ProgressBar,
    file: String,
}

impl ModelEvents {
    pub(super) fn new() -> Self {
        // Hidden until a download starts: most resolutions print nothing.
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(bar_style(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ));
        Self {
            bar,
            file: String::new(),
        }
    }

    pub(super) fn show(&mut self, event: sd3lab::model::source::SourceEvent) {
        use sd3lab::model::source::SourceEvent;
        match event {
            SourceEvent::FellBackToTiny => self.bar.suspend(|| {
                eprintln!(
                    "warning: {event}. Pass --model sd3-medium or --model DIR for the real model."
                )
            }),
            SourceEvent::DownloadStarting => self
                .bar
                .suspend(|| eprintln!("warning: {event} (Ctrl-C cancels)")),
            SourceEvent::Downloading { file, done, total } => {
                if self.file != file {
                    self.bar
                        .set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    self.bar.set_message(file.clone());
                    self.bar.set_length(total.unwrap_or(0));
                    self.bar.reset();
                    self.file = file;
                }
                self.bar.set_position(done);
            }
        }
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A model error in the CLI's terms: where the library says "use a model directory", the CLI
/// names its flag.
pub(super) fn source_error(e: sd3lab::model::source::SourceError) -> anyhow::Error {
    use sd3lab::model::source::SourceError;
    match e {
        SourceError::NotCached { .. } | SourceError::Unreachable { .. } => {
            anyhow::anyhow!("{e} (--model DIR)")
        }
        SourceError::Cancelled => {
            anyhow::anyhow!("{e} (Ctrl-C); nothing of the unfinished file was kept")
        }
        other => other.into(),
    }
}

/// The process's cancel token, which Ctrl-C trips: long jobs stop at their next checkpoint and
/// leave their files consistent, rather than dying mid-write. One token for the whole process
/// (a signal handler can be installed once): a download before a run and the run share it.
fn cancel_on_ctrl_c() -> sd3lab::job::CancelToken {
    static CANCEL: std::sync::OnceLock<sd3lab::job::CancelToken> = std::sync::OnceLock::new();
    CANCEL
        .get_or_init(|| {
            let cancel = sd3lab::job::CancelToken::new();
            let on_signal = cancel.clone();
            // Fails only if another handler is installed, which this binary never does.
            let _ = ctrlc::set_handler(move || on_signal.cancel());
            cancel
        })
        .clone()
}

/// An indicatif style from `template` (the default style if the template were invalid).
fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// An error as the CLI prints it: the messages of its chain joined by `: `, each cause left out
/// when its text is already in what is printed (a library error whose message includes its
/// source's, as `"{path}: {source}"` does, would otherwise print the OS error twice), and
/// control characters escaped (a file name can hold terminal escape sequences).
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        // A cause an error already shows ends its message ("{path}: {source}"); one that only
        // appears somewhere inside it (a short word) is still printed.
        if text.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    sd3lab::text::escape_control(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct WithSource {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let os_text = io.to_string();
        let err = anyhow::Error::new(WithSource {
            path: "/m/vocab.json".into(),
            source: io,
        })
        .context("loading model 'm'");
        let text = error_text(&err);
        assert_eq!(text, format!("loading model 'm': /m/vocab.json: {os_text}"));
        // A cause whose text is new is kept.
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&err), "outer: inner");
    }
}

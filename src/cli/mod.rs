//! The `sd3lab` command line: one file per command, each with its flags (`…Args`), their
//! conversion into the library's validated configuration (`to_config`), the run and the printing.
//! This file holds the command enum, the dispatch and what several commands share.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod calibrate;
mod demo;
mod doctor;
mod generate;
mod gui;
mod model;
mod plan;
mod rank_agreement;
mod report;
mod samples;
mod sensitivity;

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
    /// Per-layer, per-bit sensitivity of the MMDiT on calibration samples, by step bucket.
    Sensitivity(sensitivity::SensitivityArgs),
    /// A mixed-precision plan from a sensitivity run, optimal under an average-bits budget.
    Plan(plan::PlanArgs),
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
            Some(Command::Sensitivity(args)) => sensitivity::run(&args),
            Some(Command::Plan(args)) => plan::run(&args),
            Some(Command::RankAgreement(args)) => rank_agreement::run(&args),
            Some(Command::Gui(args)) => gui::run(&args),
            Some(Command::Report(cmd)) => report::run(&cmd),
            None => demo::default_action(),
        }
    }
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

/// A cancel token that Ctrl-C trips: long jobs stop at their next checkpoint and leave their
/// files consistent, rather than dying mid-write.
fn cancel_on_ctrl_c() -> sd3lab::job::CancelToken {
    let cancel = sd3lab::job::CancelToken::new();
    let on_signal = cancel.clone();
    // A second handler cannot be installed (one per process): the first one stays in charge.
    let _ = ctrlc::set_handler(move || on_signal.cancel());
    cancel
}

/// An indicatif style from `template` (the default style if the template were invalid).
fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

//! The `sd3lab` command line: parses flags, builds validated configs, calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "sd3lab",
    version,
    about = "Post-training quantization lab for Stable Diffusion 3 medium on MLX"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check MLX, the backend, the CPU BLAS and memory; benchmark an f32 GEMM.
    Doctor(cli::DoctorArgs),
    /// List the samples of a calibration directory with a summary.
    Samples(cli::SamplesArgs),
    /// Generate one image from a prompt (SD3 without T5, as DiffusionKit runs it).
    Generate(cli::GenerateArgs),
    /// Generate calibration data: one .npz per (image, step), final images, manifest; resumable.
    Calibrate(cli::CalibrateArgs),
    /// Per-layer, per-bit sensitivity of the MMDiT on calibration samples, by step bucket.
    Sensitivity(cli::SensitivityArgs),
    /// A mixed-precision plan from a sensitivity run, optimal under an average-bits budget.
    Plan(cli::PlanArgs),
    /// Spearman rank agreement between sensitivity runs' layer rankings, per bit width.
    RankAgreement(cli::RankAgreementArgs),
    /// Open the desktop app (also what `sd3lab` alone does when a display is available).
    Gui(cli::GuiArgs),
    /// Export plots and reports (HTML/Markdown, PNG/SVG) from results files.
    #[command(subcommand)]
    Report(cli::ReportCommand),
    /// Model tools: list the quantizable layers, write synthetic checkpoints.
    #[command(subcommand)]
    Model(cli::ModelCommand),
}

fn main() -> ExitCode {
    // Must run before anything else: it may restart the process with faster BLAS kernels.
    sd3lab::runtime::blas::select_cpu_kernels();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Doctor(args)) => cli::doctor(&args),
        Some(Command::Samples(args)) => cli::samples(&args),
        Some(Command::Model(cmd)) => cli::model(&cmd),
        Some(Command::Generate(args)) => cli::generate(&args),
        Some(Command::Calibrate(args)) => cli::calibrate(&args),
        Some(Command::Sensitivity(args)) => cli::sensitivity(&args),
        Some(Command::Plan(args)) => cli::plan(&args),
        Some(Command::RankAgreement(args)) => cli::rank_agreement(&args),
        Some(Command::Gui(args)) => cli::gui(&args),
        Some(Command::Report(cmd)) => cli::report(&cmd),
        None => cli::default_action(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

//! Subcommand implementations: each turns parsed flags into a library call and prints the result.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

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
pub struct SamplesArgs {}

pub fn samples(_args: &SamplesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

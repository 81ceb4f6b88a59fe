//! `sd3lab doctor`: the MLX self-check.

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

impl DoctorArgs {
    fn to_config(&self) -> anyhow::Result<DoctorOptions> {
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds <= 600.0,
            "--seconds must be in (0, 600]"
        );
        anyhow::ensure!(
            (16..=16384).contains(&self.gemm_size),
            "--gemm-size must be in 16..=16384"
        );
        Ok(DoctorOptions {
            bench_time: Duration::from_secs_f64(self.seconds),
            gemm_size: self.gemm_size,
        })
    }
}

/// Fails (exit 1) when the self-check found problems, after printing them.
pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let opts = args.to_config()?;
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

//! `sd3lab merge`: joins the finished parts of a run split with `--shard R/N`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::quant::sensitivity::{REPORT_CSV, REPORT_JSON};

#[derive(Args)]
pub struct MergeArgs {
    /// The output folder the parts ran with (it holds their shard-R-of-N folders; copy the
    /// parts from other machines into it first).
    dir: PathBuf,
}

pub fn run(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let report = sd3lab::quant::shards::merge_shard_folders(&args.dir)
        .map_err(super::sensitivity::sensitivity_error)?;
    println!(
        "merged {} layers; wrote {} and {}",
        report.layers.len(),
        args.dir.join(REPORT_JSON).display(),
        args.dir.join(REPORT_CSV).display()
    );
    Ok(ExitCode::SUCCESS)
}

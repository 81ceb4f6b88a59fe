//! `sd3lab merge`: joins the finished parts of a run split with `--shard R/N` (a calibration
//! run or a sensitivity sweep, told apart by what their shard folders hold).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use sd3lab::calibrate::parts::{PART_FILE, merge_part_folders};
use sd3lab::dist::shard::part_folders;
use sd3lab::quant::sensitivity::{REPORT_CSV, REPORT_JSON};

#[derive(Args)]
pub struct MergeArgs {
    /// The folder the parts ran with (--calib-dir or --output-dir): it holds their
    /// shard-R-of-N folders. Copy the parts from other machines into it first.
    dir: PathBuf,
}

/// Whether any shard folder in `dir` holds `file`.
fn has_parts_with(dir: &Path, file: &str) -> bool {
    part_folders(dir)
        .unwrap_or_default()
        .iter()
        .any(|(_, folder)| folder.join(file).is_file())
}

pub fn run(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    if has_parts_with(&args.dir, PART_FILE) {
        let merged = merge_part_folders(&args.dir)?;
        println!(
            "merged {} of {} images; wrote {}",
            merged.n_completed,
            merged.num_images,
            args.dir.join("manifest.json").display()
        );
        if let Some(note) = merged.note() {
            println!("note: {note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
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

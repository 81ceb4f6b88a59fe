//! `sd3lab model shapes` (the demo model's captioned pictures, written out to look at) and
//! `sd3lab model judge` (the pixel judge's score of a benchmark's pictures of demo captions).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use sd3lab::bench::folder::BenchFolder;
use sd3lab::demo::Split;
use sd3lab::demo::judge::{IOU_PASS, judge_benchmark};
use sd3lab::demo::shapes::{CAPTIONS_JSONL, PROMPTS_CSV, write_pictures};

#[derive(Args)]
pub struct ShapesArgs {
    /// Folder for the pictures (`000000.png`…), `captions.jsonl` and `prompts.csv` (created).
    #[arg(long)]
    output: PathBuf,
    /// How many pictures.
    #[arg(long, default_value_t = 16)]
    count: usize,
    /// The set's seed: the same seed draws the same pictures.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// The pictures' side in pixels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(16..=1024))]
    side: u16,
    /// Draw from the held-out combinations (the evaluation prompts) instead of training's.
    #[arg(long)]
    held_out: bool,
}

pub fn shapes(args: &ShapesArgs) -> anyhow::Result<ExitCode> {
    let split = if args.held_out {
        Split::HeldOut
    } else {
        Split::Train
    };
    let _lock = sd3lab::fsutil::FolderLock::acquire(&args.output)?;
    let bar = indicatif::ProgressBar::new(args.count as u64);
    bar.set_style(super::bar_style(
        "pictures [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
    ));
    let scenes = write_pictures(
        &args.output,
        args.seed,
        args.count,
        args.side as usize,
        split,
        |n| bar.set_position(n as u64),
    )
    .with_context(|| format!("writing pictures into {}", args.output.display()))?;
    bar.finish_and_clear();
    let distinct: std::collections::HashSet<_> = scenes.iter().collect();
    println!(
        "wrote {} pictures ({} distinct captions, {}×{} px, seed {}), {} and {} to {}",
        scenes.len(),
        distinct.len(),
        args.side,
        args.side,
        args.seed,
        CAPTIONS_JSONL,
        PROMPTS_CSV,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct JudgeArgs {
    /// A benchmark's folder whose prompts are demo captions.
    dir: PathBuf,
    /// Print one JSON document (schema `sd3lab.judge/1`) with every picture's verdict.
    #[arg(long)]
    json: bool,
}

pub fn judge(args: &JudgeArgs) -> anyhow::Result<ExitCode> {
    let folder = BenchFolder::open(&args.dir)?;
    let scores = judge_benchmark(&folder)
        .with_context(|| format!("judging the pictures of {}", args.dir.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.judge/1",
            "benchmark": args.dir,
            "iou_pass": IOU_PASS,
            "configurations": scores,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<24} {:>8} {:>7} {:>7} {:>9}",
            "configuration", "pictures", "passed", "rate", "mean IoU"
        )?;
        for c in &scores {
            writeln!(
                out,
                "{:<24} {:>8} {:>7} {:>6.0}% {:>9.3}",
                c.name,
                c.score.pictures,
                c.score.passed,
                c.score.pass_rate() * 100.0,
                c.score.mean_iou
            )?;
        }
        writeln!(
            out,
            "a picture passes when its background and shapes read as the caption's colours and \
             the shapes' pixels overlap the caption's place and size with IoU ≥ {IOU_PASS}"
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

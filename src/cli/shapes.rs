//! `sd3lab model shapes` (the demo model's captioned pictures, written out to look at),
//! `sd3lab model judge` (the pixel judge's score of a benchmark's pictures of demo captions),
//! `sd3lab model judge-vae` (its score of a model's VAE reconstructions) and
//! `sd3lab model train-demo` (the demo model trained on them).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use sd3lab::bench::folder::BenchFolder;
use sd3lab::demo::Split;
use sd3lab::demo::job::{TrainDemoConfig, TrainEvent, run_train_demo};
use sd3lab::demo::judge::{
    ConfigurationScore, IOU_PASS, Verdict, judge as judge_pixels, judge_benchmark,
};
use sd3lab::demo::shapes::{CAPTIONS_JSONL, PROMPTS_CSV, held_out_scenes, write_pictures};
use sd3lab::demo::train::reconstruct_pictures;

#[derive(Args)]
pub struct ShapesArgs {
    /// Folder for the pictures (`000000.png`…), `captions.jsonl` and `prompts.csv` (created).
    #[arg(long)]
    output: PathBuf,
    /// How many pictures (1 to 100000).
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
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
    print_scores(&args.dir.display().to_string(), &scores, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The judge's scores as its table (one row per configuration) or as one JSON document
/// (schema `sd3lab.judge/1`) with every picture's verdict; `source` names what was judged.
fn print_scores(source: &str, scores: &[ConfigurationScore], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        let doc = serde_json::json!({
            "schema": "sd3lab.judge/1",
            "benchmark": source,
            "iou_pass": IOU_PASS,
            "configurations": scores,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<24} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9}",
            "configuration", "pictures", "placed", "rate", "passed", "rate", "mean IoU"
        )?;
        for c in scores {
            writeln!(
                out,
                "{:<24} {:>8} {:>7} {:>6.0}% {:>7} {:>6.0}% {:>9.3}",
                c.name,
                c.score.pictures,
                c.score.placed,
                c.score.placed_rate() * 100.0,
                c.score.passed,
                c.score.pass_rate() * 100.0,
                c.score.mean_iou
            )?;
        }
        writeln!(
            out,
            "placed: the background and the shapes read as the caption's colours and the shapes' \
             pixels overlap the caption's place and size with IoU ≥ {IOU_PASS}; passed: placed, \
             and no other shape there overlaps them better than the caption's"
        )?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Args)]
pub struct JudgeVaeArgs {
    /// tiny, or a directory in the published layout whose checkpoint has the VAE encoder.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// How many held-out pictures (distinct captions; at most as many as there are).
    #[arg(long, default_value_t = 40, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    count: usize,
    /// The held-out set's seed (`model shapes --held-out --seed`).
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// The pictures' side in pixels (a multiple of 16).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(16..=256))]
    side: u16,
    /// Print one JSON document (schema `sd3lab.judge/1`) with every picture's verdict.
    #[arg(long)]
    json: bool,
}

/// `sd3lab model judge-vae`: held-out pictures drawn exactly, encoded and decoded by the
/// model's VAE, judged against their captions.
pub fn judge_vae(args: &JudgeVaeArgs) -> anyhow::Result<ExitCode> {
    let side = args.side as usize;
    if !side.is_multiple_of(16) {
        anyhow::bail!("--side {side}: the VAE needs a multiple of 16");
    }
    let files = super::resolve_model(&args.model)?;
    let scenes = held_out_scenes(args.seed, args.count);
    let pictures: Vec<Vec<u8>> = scenes.iter().map(|s| s.draw(side)).collect();
    let decoded = reconstruct_pictures(&files.checkpoint, &pictures, side)
        .with_context(|| format!("reconstructing pictures with the VAE of '{}'", files.name))?;
    let verdicts: Vec<(usize, Verdict)> = scenes
        .iter()
        .zip(&decoded)
        .map(|(scene, rgb)| judge_pixels(scene, rgb, side))
        .enumerate()
        .collect();
    let scores = [ConfigurationScore::new("VAE reconstructions", verdicts)];
    print_scores(&format!("model {}", files.name), &scores, args.json)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TrainDemoArgs {
    /// Folder for the trained model (`model/`, the published layout) and the training state;
    /// a rerun continues from the last checkpoint.
    #[arg(long)]
    output: PathBuf,
    /// Steps of the VAE phase (encoder and decoder).
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).vae_steps)]
    vae_steps: usize,
    /// Steps of the MMDiT phase (rectified flow on the VAE's latents).
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).mmdit_steps)]
    mmdit_steps: usize,
    /// Seed of the initial weights and of the pictures.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Pictures per VAE step.
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).vae_batch)]
    vae_batch: usize,
    /// Pictures per MMDiT step.
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).batch)]
    batch: usize,
    /// The pictures' side in pixels (a multiple of 16, 16 to 256).
    #[arg(long, default_value_t = 64)]
    side: usize,
    /// Training pictures the frozen VAE encodes once for the MMDiT phase (its batches are drawn
    /// from them).
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).latent_pool)]
    latent_pool: usize,
    /// Shift of the MMDiT's training noise levels, as SD3's sampler shifts its schedule:
    /// σ = k·s/(1 + (k − 1)·s) with s logit-normal (1: no shift).
    #[arg(long, default_value_t = TrainDemoConfig::new(PathBuf::new()).sigma_shift)]
    sigma_shift: f32,
    /// Steps between checkpoints (and one at each phase's end).
    #[arg(
        long,
        default_value_t = TrainDemoConfig::new(PathBuf::new()).checkpoint_every,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    checkpoint_every: usize,
}

/// `sd3lab model train-demo`: exit 130 when cancelled (Ctrl-C), after saving a checkpoint.
pub fn train_demo(args: &TrainDemoArgs) -> anyhow::Result<ExitCode> {
    let config = TrainDemoConfig {
        seed: args.seed,
        vae_steps: args.vae_steps,
        mmdit_steps: args.mmdit_steps,
        vae_batch: args.vae_batch,
        batch: args.batch,
        side: args.side,
        latent_pool: args.latent_pool,
        sigma_shift: args.sigma_shift,
        checkpoint_every: args.checkpoint_every,
        ..TrainDemoConfig::new(args.output.clone())
    };
    keep_freed_memory();
    let cancel = super::cancel_on_ctrl_c();
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(super::bar_style(
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
    ));
    // A line above the bar, or on its own where the bar is not drawn (output to a file).
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    // A new stage (the pool's encoding, a phase): the bar starts over, drawn from now on.
    let restart_bar =
        |prefix: &'static str, length: usize, position: usize, message: &'static str| {
            bar.finish_and_clear();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.reset();
            bar.set_prefix(prefix);
            bar.set_message(message);
            bar.set_length(length as u64);
            bar.set_position(position as u64);
        };
    // Losses since the last checkpoint, for a line at each.
    let since_saved = std::cell::Cell::new((0.0f64, 0usize));
    let mut on_event = |e: TrainEvent| match e {
        TrainEvent::Encoded { done: 0, total } => {
            restart_bar("latents", total, 0, "encoding the MMDiT's pictures");
            say(format!(
                "encoding {total} pictures with the trained VAE for the MMDiT phase"
            ));
        }
        TrainEvent::Encoded { done, .. } => bar.set_position(done as u64),
        TrainEvent::Phase { phase, steps, done } => restart_bar(phase.name(), steps, done, ""),
        TrainEvent::Step { done, loss, .. } => {
            let (sum, n) = since_saved.get();
            since_saved.set((sum + loss as f64, n + 1));
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4}"));
        }
        TrainEvent::LatentScale { factor } => say(format!(
            "VAE latents rescaled by {factor:.4} to unit variance for the MMDiT"
        )),
        TrainEvent::Saved { phase, done } => {
            let (sum, n) = since_saved.replace((0.0, 0));
            if n > 0 {
                say(format!(
                    "{} step {done}: mean loss {:.4} over the last {n} steps",
                    phase.name(),
                    sum / n as f64
                ));
            }
        }
    };
    let summary = run_train_demo(&config, &cancel, &mut on_event)
        .with_context(|| format!("training the demo model in {}", args.output.display()))?;
    bar.finish_and_clear();
    let loss = |l: Option<f32>| l.map_or("-".to_owned(), |l| format!("{l:.4}"));
    println!(
        "{}: VAE {}/{} steps (loss {}), MMDiT {}/{} steps (loss {}); the model is in {}",
        if summary.cancelled {
            "cancelled"
        } else {
            "trained"
        },
        summary.vae_done,
        config.vae_steps,
        loss(summary.vae_loss),
        summary.mmdit_done,
        config.mmdit_steps,
        loss(summary.mmdit_loss),
        summary.model_dir.display()
    );
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every training step allocates and frees the same large buffers; glibc would hand those above
/// its mmap threshold back to the system and fault them in again at the next step (a quarter of
/// the run's time on the development machine: docs/FIGURES.md). Keep them in the heap instead.
/// `SD3LAB_NO_MALLOC_TUNING=1` leaves glibc's defaults (for `scripts/bench-train-demo.sh`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if std::env::var_os("SD3LAB_NO_MALLOC_TUNING").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: mallopt only changes the allocator's tuning; it is called before the job's
    // threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

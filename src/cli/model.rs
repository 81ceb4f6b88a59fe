//! `sd3lab model …`: the quantizable layers, synthetic checkpoints, a timed load.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use sd3lab::model::config::ModelDtype;
use sd3lab::model::{Preset, mmdit_linear_layers};

use super::resolve_model;

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// List the MMDiT's quantizable Linear layers (name, block, kind, shape, parameters).
    Layers(LayersArgs),
    /// Write a deterministic random checkpoint in the published file layout.
    Synth(SynthArgs),
    /// Load a model completely and report load time and memory (for benchmarks).
    Load(LoadArgs),
    /// Write the demo model's captioned pictures of shapes (its training or held-out data).
    Shapes(super::shapes::ShapesArgs),
    /// Score a benchmark's pictures of demo captions with the pixel judge.
    Judge(super::shapes::JudgeArgs),
    /// Judge a model's VAE alone: held-out demo pictures encoded and decoded (the best the
    /// model's pictures can score).
    JudgeVae(super::shapes::JudgeVaeArgs),
    /// Train the demo model (VAE, then MMDiT) on the shapes pictures; resumable.
    TrainDemo(super::shapes::TrainDemoArgs),
}

#[derive(Args)]
pub struct LoadArgs {
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long)]
    json: bool,
}

fn load(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let files = resolve_model(&args.model)?;
    let dtype = args
        .dtype
        .unwrap_or_else(ModelDtype::default_for_backend)
        .mlx();
    let pipe = sd3lab::model::pipeline::Pipeline::load(&files, dtype)
        .with_context(|| format!("loading model '{}'", files.name))?;
    let [l, g, m, v] = pipe.weight_bytes();
    let checkpoint_bytes = files.weight_file_bytes();
    let rss = sd3lab::runtime::doctor::process_peak_rss().unwrap_or(0);
    let doc = serde_json::json!({
        "schema": "sd3lab.load/1",
        "model": files.name,
        "config": pipe.config,
        "dtype": format!("{dtype:?}"),
        "load_seconds": pipe.load_seconds,
        "checkpoint_bytes": checkpoint_bytes,
        "weight_bytes": {"clip_l": l, "clip_g": g, "mmdit": m, "vae": v, "total": l + g + m + v},
        "peak_rss_bytes": rss,
        "mlx_active_bytes": mlx_rs::memory::active_memory().unwrap_or(0),
        "mlx_peak_bytes": mlx_rs::memory::peak_memory().unwrap_or(0),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "loaded '{}' ({dtype:?}) in {:.2} s: weights {:.2} GB (files {:.2} GB), peak RSS {:.2} GB",
            files.name,
            pipe.load_seconds,
            (l + g + m + v) as f64 / 1e9,
            checkpoint_bytes as f64 / 1e9,
            rss as f64 / 1e9
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory (created; existing files of the layout are replaced).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Override the number of joint blocks.
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SynthArgs {
    fn to_config(&self) -> anyhow::Result<sd3lab::model::Sd3Config> {
        let config = self.preset.config(self.depth);
        config.mmdit.validate()?;
        Ok(config)
    }
}

fn synth(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config()?;
    // One writer per folder; a file in the way is refused before anything is written.
    let _lock = sd3lab::fsutil::FolderLock::acquire(&args.output)?;
    let start = std::time::Instant::now();
    sd3lab::model::source::write_model_dir(&args.output, &config, args.seed)
        .with_context(|| format!("writing the checkpoint into {}", args.output.display()))?;
    let bytes = dir_size(&args.output);
    println!(
        "wrote a {:?} checkpoint (depth {}, width {}, seed {}) to {}: {:.1} MB in {:.1} s",
        args.preset,
        config.mmdit.depth,
        config.mmdit.hidden_size,
        args.seed,
        args.output.display(),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Bytes of the files under `dir` (unreadable entries count as 0: it is only printed).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[derive(Args)]
pub struct LayersArgs {
    /// Configuration preset (layers come from the configuration alone, no weights needed).
    #[arg(
        long,
        value_enum,
        default_value = "sd3-medium",
        conflicts_with = "model"
    )]
    preset: Preset,
    /// Read the configuration from a model's checkpoint instead (tiny, sd3-medium, auto, DIR).
    #[arg(long)]
    model: Option<String>,
    /// Override the number of joint blocks.
    #[arg(long)]
    depth: Option<usize>,
    /// Print one JSON document (schema `sd3lab.layers/1`).
    #[arg(long)]
    json: bool,
}

/// `sd3lab model …`.
pub fn run(cmd: &ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Layers(args) => layers(args),
        ModelCommand::Synth(args) => synth(args),
        ModelCommand::Load(args) => load(args),
        ModelCommand::Shapes(args) => super::shapes::shapes(args),
        ModelCommand::Judge(args) => super::shapes::judge(args),
        ModelCommand::JudgeVae(args) => super::shapes::judge_vae(args),
        ModelCommand::TrainDemo(args) => super::shapes::train_demo(args),
    }
}

impl LayersArgs {
    /// The MMDiT configuration: the preset's, or the one a checkpoint's shapes imply.
    fn to_config(&self) -> anyhow::Result<sd3lab::model::MmditConfig> {
        let mut mmdit = match &self.model {
            Some(spec) => {
                let files = resolve_model(spec)?;
                sd3lab::model::source::infer_config(&files.checkpoint)?.0
            }
            None => self.preset.config(None).mmdit,
        };
        if let Some(depth) = self.depth {
            mmdit.depth = depth;
        }
        mmdit.validate()?;
        Ok(mmdit)
    }
}

fn layers(args: &LayersArgs) -> anyhow::Result<ExitCode> {
    let mmdit = args.to_config()?;
    let layers = mmdit_linear_layers(&mmdit);
    let total: usize = layers.iter().map(|l| l.params).sum();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.layers/1",
            "source": args.model.clone().unwrap_or_else(|| format!("preset:{:?}", args.preset)),
            "mmdit": mmdit,
            "count": layers.len(),
            "linear_params": total,
            "layers": layers,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<62} {:>5} {:<6} {:<9} {:>6} {:>6} {:>11}",
            "name", "block", "stream", "kind", "out", "in", "params"
        )?;
        for l in &layers {
            let block = l.block.map_or("-".to_owned(), |b| b.to_string());
            let stream = match l.stream {
                Some(stream) => stream.name(),
                None => "-",
            };
            writeln!(
                out,
                "{:<62} {:>5} {:<6} {:<9} {:>6} {:>6} {:>11}",
                l.name,
                block,
                stream,
                l.kind.name(),
                l.out_features,
                l.in_features,
                l.params
            )?;
        }
        writeln!(out, "{} Linear layers, {} parameters", layers.len(), total)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

//! `sd3lab generate`: one image from a prompt, optionally quantized, with timings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use sd3lab::calibrate::all_finite;
use sd3lab::model::config::ModelDtype;
use sd3lab::model::pipeline::{Flow, GenerateConfig, Pipeline};
use sd3lab::quant::QuantConfig;

use super::{bar_style, resolve_model};

#[derive(Args)]
pub struct GenerateArgs {
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// 0 to 4294967295 (numpy's seeds).
    #[arg(
        long,
        default_value_t = 0,
        value_parser = super::calibrate::parse_seed,
        allow_hyphen_values = true
    )]
    seed: u32,
    #[arg(long, default_value_t = 50, value_parser = super::calibrate::parse_num_steps)]
    num_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    cfg_weight: f32,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Weights and activations (default: float32 on CPU, float16 on GPU).
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    /// Output PNG.
    #[arg(long)]
    output: PathBuf,
    /// Also save the final latent (the VAE decoder's input, (1, h, w, 16) float32) as .npy.
    #[arg(long)]
    latent_out: Option<PathBuf>,
    /// Quantize the MMDiT's Linears: none, wN (N in 2,3,4,5,6,8) or a plan JSON file.
    #[arg(long, default_value = "none")]
    quant: String,
    /// Group size for wN.
    #[arg(long, default_value_t = 64)]
    group_size: i32,
    /// real: MLX-packed weights and quantized_matmul (the memory a user gets); simulated:
    /// quantize→dequantize float weights (same numbers, fast on CPU).
    #[arg(long, value_enum, default_value = "real")]
    quant_mode: sd3lab::quant::QuantMode,
    /// Print one JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// What a `generate` run does, in the library's terms.
struct GenerateJob {
    request: GenerateConfig,
    dtype: ModelDtype,
    quant: QuantConfig,
}

impl GenerateArgs {
    fn to_config(&self) -> anyhow::Result<GenerateJob> {
        self.check_destinations()?;
        Ok(GenerateJob {
            request: GenerateConfig {
                prompt: self.prompt.clone(),
                negative_prompt: self.negative_prompt.clone(),
                seed: self.seed,
                num_steps: self.num_steps,
                cfg_weight: self.cfg_weight,
                height: self.height,
                width: self.width,
            },
            dtype: self.dtype.unwrap_or_else(ModelDtype::default_for_backend),
            quant: QuantConfig::parse(&self.quant, self.group_size)?,
        })
    }
}

impl GenerateArgs {
    /// The image and latent destinations, checked before the model is resolved: a folder, FIFO
    /// or device is refused, and the latent may not replace the image.
    fn check_destinations(&self) -> anyhow::Result<()> {
        let outputs = [
            ("--output", Some(&self.output)),
            ("--latent-out", self.latent_out.as_ref()),
        ];
        for (flag, path) in outputs {
            if let Some(path) = path {
                sd3lab::fsutil::destination(path)
                    .with_context(|| format!("{flag} {}", path.display()))?;
            }
        }
        if let Some(latent) = &self.latent_out
            && sd3lab::fsutil::same_file(latent, &self.output)
        {
            anyhow::bail!(
                "--latent-out {} is the same file as --output; give the latent another name",
                latent.display()
            );
        }
        Ok(())
    }
}

/// `sd3lab generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    // Flags first: a bad --quant is reported before the model is resolved (or downloaded).
    let GenerateJob {
        request: cfg,
        dtype,
        quant,
    } = args.to_config()?;
    let files = resolve_model(&args.model)?;
    let mut pipe = Pipeline::load(&files, dtype.mlx())
        .with_context(|| format!("loading model '{}'", files.name))?;
    let quant_report = sd3lab::quant::apply_to_pipeline(&mut pipe, &quant, args.quant_mode)?;
    if quant != QuantConfig::None && !args.json {
        println!(
            "quantized {} MMDiT Linears{} ({:?}); {} left float; MMDiT weights {:.1} MB → {:.1} MB",
            quant_report.quantized.len(),
            if quant.is_per_bucket() {
                " over the 3 step buckets"
            } else {
                ""
            },
            args.quant_mode,
            quant_report.skipped.len(),
            quant_report.bytes_before as f64 / 1e6,
            quant_report.bytes_after as f64 / 1e6
        );
        for (name, why) in &quant_report.skipped {
            println!("  left float: {name} ({why})");
        }
    }
    let bar = indicatif::ProgressBar::new(cfg.num_steps as u64);
    bar.set_style(bar_style(
        "{msg} [{bar:30}] step {pos}/{len} {per_sec} ETA {eta}",
    ));
    bar.set_message("denoising");
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (load_seconds, vae_cfg) = (pipe.load_seconds, pipe.config.vae.clone());
    // One image: each model is released once done with, as DiffusionKit's low-memory mode does.
    // The first step whose latent is not finite (float16 overflows with a large CFG weight).
    let mut non_finite_step: Option<usize> = None;
    let mut check_failed = None;
    let result = pipe.generate_releasing(&cfg, &mut |s| {
        bar.set_position(s.step_index as u64);
        if non_finite_step.is_none() {
            match all_finite(s.x) {
                Ok(true) => {}
                Ok(false) => non_finite_step = Some(s.step_index),
                Err(e) => {
                    check_failed = Some(e);
                    return Flow::Cancel;
                }
            }
        }
        Flow::Continue
    });
    bar.finish_and_clear();
    if let Some(e) = check_failed {
        return Err(e.into());
    }
    let generated = result?.context("generation was cancelled")?;
    if non_finite_step.is_none() && !all_finite(&generated.latent)? {
        non_finite_step = Some(cfg.num_steps);
    }
    let warnings: Vec<String> = non_finite_step
        .map(|step| {
            format!(
                "the latent is not finite (NaN or infinity) from step index {step} on: the image \
                 holds no usable pixels (a lower --cfg-weight or --dtype float32 avoids the \
                 overflow)"
            )
        })
        .into_iter()
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let (w, h, rgb) = &generated.image;
    sd3lab::image::write_png(&args.output, *w, *h, sd3lab::image::PixelFormat::Rgb, rgb)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if let Some(path) = &args.latent_out {
        generated.write_decoder_latent(path, &vae_cfg)?;
    }
    let peak_mlx = mlx_rs::memory::peak_memory().unwrap_or(0);
    let peak_rss = sd3lab::runtime::doctor::process_peak_rss().unwrap_or(0);
    let t = &generated.times;
    if args.json {
        let doc = serde_json::json!({
            "schema": "sd3lab.generate/1",
            "model": files.name,
            "dtype": format!("{:?}", dtype.mlx()),
            "settings": cfg,
            "output": args.output,
            "latent_out": args.latent_out,
            "seconds": {"load": load_seconds, "text_encoding": t.text_encoding, "denoising": t.denoising, "per_step": t.per_step, "decoding": t.decoding},
            "peak_memory_bytes": {"mlx": peak_mlx, "process_rss": peak_rss},
            "warnings": warnings,
            "quant": {"spec": args.quant, "mode": args.quant_mode, "quantized_layers": quant_report.quantized.len(), "skipped": quant_report.skipped, "mmdit_bytes_before": quant_report.bytes_before, "mmdit_bytes_after": quant_report.bytes_after},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mean_step = if t.per_step.is_empty() {
            0.0
        } else {
            t.per_step.iter().sum::<f64>() / t.per_step.len() as f64
        };
        println!(
            "wrote {} ({w}×{h}) with model '{}' ({:?})",
            args.output.display(),
            files.name,
            dtype.mlx()
        );
        println!(
            "load {:.2} s | text encoding {:.2} s | denoising {:.2} s ({} steps, {:.3} s/step) | decoding {:.2} s",
            load_seconds,
            t.text_encoding,
            t.denoising,
            t.per_step.len(),
            mean_step,
            t.decoding
        );
        println!(
            "peak memory: MLX {:.2} GB, process RSS {:.2} GB",
            peak_mlx as f64 / 1e9,
            peak_rss as f64 / 1e9
        );
    }
    Ok(ExitCode::SUCCESS)
}

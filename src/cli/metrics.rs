//! `sd3lab metrics`: FID / IS / KID between two image folders as torch-fidelity's `fidelity`
//! command computes them, and paired PSNR / SSIM / LPIPS; `sd3lab metrics weights` shows or
//! fetches the networks' weights.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use sd3lab::metrics::compute::{Input, MetricsConfig, MetricsError, MetricsEvent, MetricsResult};
use sd3lab::metrics::fidelity::{DEFAULT_IS_SPLITS, DEFAULT_KID_SUBSETS};
use sd3lab::metrics::images::list_images;
use sd3lab::metrics::weights::{
    ALEXNET, FetchEvent, INCEPTION, LPIPS_ALEX_LIN, WeightsError, converted_path,
    fetch_inception_weights, fetch_lpips_weights,
};

use super::{bar_style, cancel_on_ctrl_c};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetricsArgs {
    #[command(subcommand)]
    command: Option<MetricsCommand>,
    /// The generated images (a folder of PNG/JPEG files, listed as torch-fidelity does).
    #[arg(long)]
    input1: Option<PathBuf>,
    /// The reference images; its Inception features are cached beside them.
    #[arg(long)]
    input2: Option<PathBuf>,
    /// Fréchet Inception Distance (needs --input2).
    #[arg(long)]
    fid: bool,
    /// Inception Score of each input.
    #[arg(long)]
    isc: bool,
    /// Kernel Inception Distance (needs --input2).
    #[arg(long)]
    kid: bool,
    /// PSNR, SSIM and (with its weights) LPIPS of image i of input1 against image i of input2.
    #[arg(long)]
    paired: bool,
    #[arg(long, default_value_t = DEFAULT_IS_SPLITS)]
    isc_splits: usize,
    #[arg(long, default_value_t = DEFAULT_KID_SUBSETS)]
    kid_subsets: usize,
    /// Default: min(1000, the smaller input's size), said when lowered.
    #[arg(long)]
    kid_subset_size: Option<usize>,
    /// torch-fidelity's weights-inception-2015-12-05-6726825d.pth or its converted .safetensors
    /// (default: the user cache, filled by `sd3lab metrics weights --fetch`).
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// Images per Inception batch (default: 4 on the CPU, 16 on the GPU).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Do not read or write the feature cache beside input2.
    #[arg(long)]
    no_cache: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum MetricsCommand {
    /// Where the Inception and LPIPS weights are; `--fetch` downloads, checks and converts them.
    Weights(WeightsArgs),
}

#[derive(Args)]
struct WeightsArgs {
    /// Download what is missing (Inception 95.6 MB; LPIPS: AlexNet 244 MB, of which 10 MB are
    /// kept, and 6 KB of heads), check sizes and SHA-256, convert to safetensors.
    #[arg(long)]
    fetch: bool,
    /// With --fetch: only the Inception weights.
    #[arg(long)]
    no_lpips: bool,
    /// Write synthetic Inception weights (the test suite's: random convolutions, BatchNorm
    /// statistics from synthetic images) to this .safetensors file, to try the metrics where the
    /// real file cannot be had. Their numbers mean nothing about image quality.
    #[arg(long, value_name = "OUT")]
    synthetic: Option<PathBuf>,
}

/// How to get the Inception weights, after "no Inception weights in …".
pub(super) const INCEPTION_HINT: &str = "run `sd3lab metrics weights --fetch` once to download \
    them (95.6 MB, torch-fidelity's release), or pass --inception-weights PATH (a .pth or \
    converted .safetensors)";

/// How to get the LPIPS weights.
pub(super) const LPIPS_HINT: &str = "`sd3lab metrics weights --fetch` downloads them (AlexNet \
    244 MB, of which 10 MB are kept, and the LPIPS v0.1 heads)";

/// The BatchNorm statistics and seed of the synthetic weights the tests compare with
/// torch-fidelity (`tests/py/fidelity_fixtures.py`).
const SYNTHETIC_STATS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/metrics/inception_bn_stats.npz"
));
const SYNTHETIC_SEED: u32 = 20240611;

/// `sd3lab metrics …`.
pub fn run(args: &MetricsArgs) -> anyhow::Result<ExitCode> {
    if let Some(MetricsCommand::Weights(w)) = &args.command {
        return weights(w);
    }
    let input1 = args
        .input1
        .as_ref()
        .context("--input1 is required (or `sd3lab metrics weights`)")?;
    let none_chosen = !(args.fid || args.isc || args.kid || args.paired);
    let two = args.input2.is_some();
    let config = MetricsConfig {
        // Nothing chosen: everything that applies to the inputs given.
        fid: args.fid || (none_chosen && two),
        isc: args.isc || none_chosen,
        kid: args.kid || (none_chosen && two),
        // Paired metrics need two folders of twins (same count, same size): only on request.
        paired: args.paired,
        isc_splits: args.isc_splits,
        kid_subsets: args.kid_subsets,
        kid_subset_size: args.kid_subset_size,
        inception_weights: args.inception_weights.clone(),
        cache_dir: sd3lab::model::source::cache_dir(),
        batch_size: args.batch_size,
        cache_second: !args.no_cache,
    };
    if (config.fid || config.kid || config.paired) && !two {
        anyhow::bail!("--fid, --kid and --paired compare two folders: pass --input2");
    }
    let files1 = list_images(input1)?;
    let files2 = args.input2.as_deref().map(list_images).transpose()?;
    let cancel = cancel_on_ctrl_c();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(bar_style(
        "{msg:>22} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
    ));
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut on_event = |e: MetricsEvent| match e {
        MetricsEvent::Features { input, done, total } => {
            bar.set_message(format!("features of input{input}"));
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        MetricsEvent::CachedFeatures { dir } => {
            bar.suspend(|| eprintln!("input2: features from the cache in {}", dir.display()))
        }
        MetricsEvent::Kid { done, total } => {
            bar.set_message("KID subsets");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        MetricsEvent::Paired { done, total } => {
            bar.set_message("paired metrics");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let second = files2.as_ref().map(|files| Input {
        files,
        cache_dir: args.input2.as_deref(),
    });
    let first = Input {
        files: &files1,
        cache_dir: None,
    };
    let result =
        sd3lab::metrics::compute::compute_metrics(&config, first, second, &cancel, &mut on_event);
    bar.finish_and_clear();
    let result = match result {
        Err(e) if e.is_cancelled() => {
            eprintln!("cancelled");
            return Ok(ExitCode::from(130));
        }
        Err(e @ MetricsError::Weights(WeightsError::Missing { .. })) => {
            anyhow::bail!("{e}; {INCEPTION_HINT}");
        }
        other => other?,
    };
    for n in &result.notes {
        eprintln!("note: {n}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fidelity_json(&result))?);
    } else {
        print_result(&result);
    }
    Ok(ExitCode::SUCCESS)
}

/// torch-fidelity's key names for its metrics, then SD3 Lab's additions.
pub(super) fn fidelity_json(r: &MetricsResult) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_owned(), v);
    };
    if let Some(is) = &r.isc1 {
        put("inception_score_mean", is.mean.into());
        put("inception_score_std", is.std.into());
    }
    if let Some(fid) = r.fid {
        put("frechet_inception_distance", fid.into());
    }
    if let Some(kid) = &r.kid {
        put("kernel_inception_distance_mean", kid.mean.into());
        put("kernel_inception_distance_std", kid.std.into());
        put("kid_subset_size", kid.subset_size.into());
    }
    if let Some(is) = &r.isc2 {
        put("inception_score_mean_input2", is.mean.into());
        put("inception_score_std_input2", is.std.into());
    }
    if let Some(p) = &r.paired {
        put("paired", serde_json::to_value(p).unwrap_or_default());
    }
    put("images_input1", r.images1.into());
    put("images_input2", r.images2.into());
    put("notes", r.notes.clone().into());
    put(
        "seconds",
        serde_json::to_value(&r.seconds).unwrap_or_default(),
    );
    serde_json::Value::Object(m)
}

fn print_result(r: &MetricsResult) {
    if let Some(is) = &r.isc1 {
        println!("inception_score_mean: {}", is.mean);
        println!("inception_score_std: {}", is.std);
    }
    if let Some(fid) = r.fid {
        println!("frechet_inception_distance: {fid}");
    }
    if let Some(kid) = &r.kid {
        println!("kernel_inception_distance_mean: {}", kid.mean);
        println!("kernel_inception_distance_std: {}", kid.std);
    }
    if let Some(is) = &r.isc2 {
        println!("inception_score_mean (input2): {}", is.mean);
        println!("inception_score_std (input2): {}", is.std);
    }
    if let Some(p) = &r.paired {
        match p.psnr_mean {
            Some(v) => println!("psnr_mean: {v:.4} dB ({} identical pairs)", p.identical),
            None => println!("psnr_mean: inf (every pair identical)"),
        }
        println!("ssim_mean: {:.6}", p.ssim_mean);
        match (p.lpips_mean, &p.lpips_missing) {
            (Some(v), _) => println!("lpips_mean: {v:.6}"),
            (None, Some(why)) => println!("lpips: left out ({why}; {LPIPS_HINT})"),
            (None, None) => {}
        }
    }
}

/// `sd3lab metrics weights [--fetch]`.
fn weights(args: &WeightsArgs) -> anyhow::Result<ExitCode> {
    let cache = sd3lab::model::source::cache_dir();
    if let Some(out) = &args.synthetic {
        let stats =
            tempfile::NamedTempFile::new().context("a temporary file for the statistics")?;
        std::fs::write(stats.path(), SYNTHETIC_STATS)
            .with_context(|| format!("writing {}", stats.path().display()))?;
        sd3lab::metrics::inception::synthetic_weights(SYNTHETIC_SEED, stats.path(), out)?;
        println!(
            "wrote synthetic Inception weights to {} (for trying the pipeline: not torch-fidelity's \
             weights, so the numbers say nothing about image quality)",
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.fetch {
        let cancel = cancel_on_ctrl_c();
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(bar_style(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ));
        let mut on_progress = |e: FetchEvent| match e {
            FetchEvent::Downloading { file, done, total } => {
                bar.set_message(file);
                bar.set_length(total.unwrap_or(0));
                bar.set_position(done);
            }
            other => bar.suspend(|| eprintln!("{other}")),
        };
        let fetched = fetch_inception_weights(&cache, &cancel, &mut on_progress).and_then(|p| {
            if !args.no_lpips {
                fetch_lpips_weights(&cache, &cancel, &mut on_progress)?;
            }
            Ok(p)
        });
        bar.finish_and_clear();
        match fetched {
            Err(WeightsError::Cancelled) => {
                eprintln!("cancelled: nothing of the unfinished file was kept");
                return Ok(ExitCode::from(130));
            }
            other => {
                other?;
            }
        }
    }
    for source in [&INCEPTION, &ALEXNET, &LPIPS_ALEX_LIN] {
        let path = converted_path(&cache, source);
        println!(
            "{:<34} {}",
            source.file_name,
            if path.is_file() {
                path.display().to_string()
            } else {
                "missing (sd3lab metrics weights --fetch)".to_owned()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `sd3lab calibrate`: the calibration data generator with progress bars.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::calibrate::{
    CalibrateConfig, CalibrateError, CalibrateEvent, MAX_NUM_IMAGES, MAX_NUM_STEPS,
    parts::run_calibration_distributed,
};
use sd3lab::model::config::ModelDtype;

use super::{ModelEvents, bar_style, cancel_on_ctrl_c, source_error};

#[derive(Args)]
pub struct CalibrateArgs {
    /// Images to generate (image i uses prompt i mod len(prompts) and seed --seed + i).
    #[arg(long, value_parser = parse_num_images)]
    num_images: usize,
    #[arg(long, default_value_t = 50, value_parser = parse_num_steps)]
    num_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    cfg_weight: f32,
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    /// CSV with a `prompt` column (or one column); if the file does not exist the shipped
    /// prompt set is used.
    #[arg(long, default_value = "all_prompts.csv")]
    prompt_csv: PathBuf,
    /// Seed of image 0 (0 to 4294967295, as numpy's; image i uses seed + i).
    #[arg(long, default_value_t = 0, value_parser = parse_seed, allow_hyphen_values = true)]
    seed: u32,
    /// tiny, sd3-medium, auto, or a directory in the published layout.
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, value_enum)]
    dtype: Option<ModelDtype>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Start over in a directory that holds another run.
    #[arg(long)]
    overwrite: bool,
    /// Run even when the disk looks too small for the estimate.
    #[arg(long)]
    force: bool,
    /// Only the final images and the manifest (prompt and seed of every image), no per-step
    /// samples: a reference set for `sd3lab benchmark --reference-dir DIR/images`.
    #[arg(long)]
    images_only: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Generate only images R, R+N, R+2N, … (part R of N) into this folder, without any
    /// network; its record goes to CALIB_DIR/shard-R-of-N/ and `sd3lab merge CALIB_DIR` writes
    /// the manifest once every part has finished. Under `mlx.launch` or `sd3lab launch` the
    /// ranks split the images by themselves and rank 0 writes the manifest.
    #[arg(long, value_name = "R/N")]
    shard: Option<sd3lab::dist::Shard>,
}

impl CalibrateArgs {
    fn to_config(&self) -> CalibrateConfig {
        CalibrateConfig {
            model: self.model.clone(),
            num_images: self.num_images,
            num_steps: self.num_steps,
            cfg_weight: self.cfg_weight,
            calib_dir: self.calib_dir.clone(),
            prompt_csv: Some(self.prompt_csv.clone()),
            seed: self.seed,
            height: self.height,
            width: self.width,
            dtype: self.dtype.unwrap_or_else(ModelDtype::default_for_backend),
            negative_prompt: self.negative_prompt.clone(),
            overwrite: self.overwrite,
            force: self.force,
            images_only: self.images_only,
        }
    }
}

/// `--num-steps`: 1 to [`MAX_NUM_STEPS`], refused as typed before anything is allocated.
pub(super) fn parse_num_steps(s: &str) -> Result<usize, String> {
    parse_count(s, MAX_NUM_STEPS, "steps")
}

/// `--num-images`: 1 to [`MAX_NUM_IMAGES`].
pub(super) fn parse_num_images(s: &str) -> Result<usize, String> {
    parse_count(s, MAX_NUM_IMAGES, "images")
}

/// A count from 1 to `max`; any integer, however large or negative, gets the range in words.
fn parse_count(s: &str, max: usize, what: &str) -> Result<usize, String> {
    let n: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of {what}"))?;
    match usize::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{n} is out of range: 1 to {max} {what}")),
    }
}

/// `--seed`: numpy's seeds, 0 to 2³²−1; `-1` is a value out of range, not an unknown flag.
pub(super) fn parse_seed(s: &str) -> Result<u32, String> {
    let n: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    u32::try_from(n).map_err(|_| {
        format!(
            "{n} is out of range: seeds are 0 to {} (as numpy's)",
            u32::MAX
        )
    })
}

/// The library's refusal in this command's terms: which flag overrides it.
fn with_flag_hint(e: CalibrateError) -> anyhow::Error {
    let e = match e {
        CalibrateError::Source(source) => return source_error(*source),
        other => other,
    };
    let hint = match &e {
        CalibrateError::NoImages => return anyhow::anyhow!("--num-images must be at least 1"),
        CalibrateError::SettingsDiffer { .. } | CalibrateError::ForeignData { .. } => {
            "pass --overwrite to start over"
        }
        CalibrateError::Disk { .. } => "pass --force to try anyway",
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}; {hint}")
}

/// `sd3lab calibrate`: exit 130 when cancelled (Ctrl-C), after keeping the finished images.
pub fn run(args: &CalibrateArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config();
    let split = super::Split::new(args.shard)?;
    let tag = split.tag();
    // Ctrl-C: finish the current step, discard the unfinished image, keep the manifest consistent.
    let cancel = cancel_on_ctrl_c();
    let multi = indicatif::MultiProgress::new();
    if args.json || split.is_part() {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let images = multi.add(indicatif::ProgressBar::new(args.num_images as u64));
    images.set_style(bar_style("images [{bar:30}] {pos}/{len} {msg} ETA {eta}"));
    let steps = multi.add(indicatif::ProgressBar::new(args.num_steps as u64));
    steps.set_style(bar_style("steps  [{bar:30}] {pos}/{len} {per_sec}"));
    // The model's fallback warning and a download's bytes bar, before the run's own bars.
    let mut model_events = ModelEvents::new();
    let mut on_event = |e: CalibrateEvent| match e {
        CalibrateEvent::Model(event) => model_events.show(event),
        CalibrateEvent::Planned {
            start_image,
            estimate_bytes,
            notes,
            ..
        } => {
            multi.suspend(|| {
                for n in notes {
                    eprintln!("note: {n}");
                }
                if split.is_part() {
                    eprintln!("{tag}{start_image} of this part's images already done");
                } else if start_image > 0 {
                    eprintln!("resuming at image {start_image}");
                }
                eprintln!("will write about {:.1} MB", estimate_bytes as f64 / 1e6);
            });
            images.set_position(start_image as u64);
        }
        CalibrateEvent::ModelLoaded { seconds } => {
            multi.suspend(|| eprintln!("model loaded in {seconds:.1} s"));
        }
        CalibrateEvent::ImageStarted { .. } => steps.set_position(0),
        CalibrateEvent::Step { step, .. } => steps.set_position(step as u64),
        CalibrateEvent::ImageDone {
            image,
            seconds,
            peak_memory_bytes,
            non_finite,
            ..
        } => {
            if let Some(warning) = non_finite {
                multi.suspend(|| eprintln!("warning: {warning}"));
            }
            images.set_position(image as u64 + 1);
            images.set_message(format!(
                "{seconds:.2} s/img, peak {:.2} GB",
                peak_memory_bytes as f64 / 1e9
            ));
            if split.is_part() {
                eprintln!("{tag}image {image} done ({seconds:.2} s)");
            }
        }
        CalibrateEvent::JobProgress { done, total, ranks } => {
            split.job_progress(format_args!(
                "{done}/{total} images generated over {ranks} ranks"
            ));
        }
    };
    let result = run_calibration_distributed(&config, split.distribution(), &cancel, &mut on_event);
    model_events.finish();
    steps.finish_and_clear();
    images.finish_and_clear();
    if let Err(CalibrateError::Source(source)) = &result
        && matches!(**source, sd3lab::model::source::SourceError::Cancelled)
    {
        eprintln!("cancelled: the model download stopped; nothing was written");
        return Ok(ExitCode::from(130));
    }
    let summary = result.map_err(with_flag_hint)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} of {} images complete ({} written now, {:.1} MB, estimate {:.1} MB) in {:.1} s{}",
            summary.calib_dir.display(),
            summary.n_completed,
            summary.num_images,
            summary.images_written,
            summary.bytes_written as f64 / 1e6,
            summary.estimate_bytes as f64 / 1e6,
            summary.seconds,
            if summary.cancelled {
                " — cancelled; rerun the same command to resume"
            } else {
                ""
            }
        );
        if split.needs_merge() && !summary.cancelled {
            println!(
                "{tag}part finished; once every part has, `sd3lab merge {}` writes the manifest",
                args.calib_dir.display()
            );
        }
        if let Some(note) = &summary.collect_note {
            println!("note: {note}");
        }
        if !summary.warnings.is_empty() {
            eprintln!(
                "warning: {} image(s) hold non-finite numbers (see above); `sd3lab samples \
                 --check-values` lists the files",
                summary.warnings.len()
            );
        }
    }
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

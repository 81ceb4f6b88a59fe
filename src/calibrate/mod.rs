//! The calibration data generator: runs the SD3 pipeline over a prompt list and records, for
//! every (image, step), exactly what the denoiser receives, in the seed's layout
//! (`samples/NNNNNN_SSS.npz`, `images/NNNNNN.png`, `manifest.json`).
//!
//! Image `i` uses prompt `i mod len(prompts)` and seed `seed + i`, so every image can be
//! regenerated alone. The manifest is replaced atomically after each finished image and holds
//! the generation settings; a rerun continues at `n_completed`, refuses different settings
//! (unless told to start over), and replaces whatever an interrupted image left behind.
//!
//! A run is four steps, each usable alone: [`CalibrateConfig::validate`] (settings, prompts and
//! model resolved, nothing written), [`ResumePlan::from_existing`] (where the folder's previous
//! run ended, or why it cannot be continued), the disk check ([`check_disk`] over
//! [`free_bytes`]), then [`capture_image`] per image and [`ResumePlan::finish_image`] after it.

mod capture;
mod disk;
pub mod parts;
mod resume;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::calib::Manifest;
use crate::fsutil::FolderLock;
use crate::job::CancelToken;
use crate::model::config::{ModelDtype, Sd3Config};
use crate::model::pipeline::Pipeline;

pub use capture::{CaptureOutcome, CapturedImage, SampleWriter, all_finite, capture_image};
pub use disk::{check_disk, estimate_bytes_per_image, free_bytes};
pub use resume::{ResumePlan, differences as setting_differences};
pub use validate::ValidatedCalibration;

pub use crate::calib::manifest::MAX_NUM_STEPS;

/// The most images a run may ask for (COCO-30k and 50k-image FID sets fit). Every image's
/// prompt and seed are held and recorded in the manifest, so the count bounds memory too.
pub const MAX_NUM_IMAGES: usize = 100_000;

/// Settings of a calibration run (`sd3lab calibrate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrateConfig {
    pub model: String,
    pub num_images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub calib_dir: PathBuf,
    /// `None`: the shipped prompt set.
    pub prompt_csv: Option<PathBuf>,
    pub seed: u32,
    pub height: usize,
    pub width: usize,
    pub dtype: ModelDtype,
    pub negative_prompt: String,
    /// Start over in a non-empty directory.
    pub overwrite: bool,
    /// Run even if the disk looks too small.
    pub force: bool,
    /// Write the final images and the manifest only, no per-step samples: a reference set for
    /// `sd3lab benchmark` (a 150-image, 100-step set at 512² would otherwise write 40–80 GB).
    #[serde(default)]
    pub images_only: bool,
}

/// What the manifest records about how the samples were generated (key `generation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSettings {
    pub tool: String,
    pub tool_version: String,
    pub model: ModelIdentity,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub height: usize,
    pub width: usize,
    pub dtype: ModelDtype,
    pub negative_prompt: String,
    pub seed: u32,
    pub prompt_source: String,
    /// No per-step samples were written (`--images-only`: a benchmark reference set).
    #[serde(default)]
    pub images_only: bool,
    /// Prompt and seed of each image written so far.
    pub prompts: Vec<String>,
    pub seeds: Vec<u32>,
}

impl GenerationSettings {
    /// The manifest key holding a run's settings.
    const MANIFEST_KEY: &'static str = "generation";

    /// The settings recorded in `manifest`: `None` when it holds none (no run of ours, e.g. the
    /// seed's layout), `Some(Err)` when the key is there but does not hold settings.
    pub fn from_manifest(manifest: &Manifest) -> Option<Result<Self, serde_json::Error>> {
        manifest
            .extra
            .get(Self::MANIFEST_KEY)
            .map(Self::deserialize)
    }

    /// Records these settings in `manifest`, replacing any recorded before.
    pub fn record_in(&self, manifest: &mut Manifest) -> Result<(), serde_json::Error> {
        manifest
            .extra
            .insert(Self::MANIFEST_KEY.into(), serde_json::to_value(self)?);
        Ok(())
    }
}

/// Enough to tell whether two runs used the same model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub config: Sd3Config,
    pub checkpoint_bytes: u64,
}

/// Progress of a run, in order.
#[derive(Debug, Clone)]
pub enum CalibrateEvent {
    /// Prompts, resume point and disk estimate are known; the model loads next.
    Planned {
        start_image: usize,
        num_images: usize,
        num_steps: usize,
        estimate_bytes: u64,
        notes: Vec<String>,
    },
    /// What resolving the model reported (the fallback to tiny, a download's progress),
    /// before `Planned`.
    Model(crate::model::source::SourceEvent),
    ModelLoaded {
        seconds: f64,
    },
    ImageStarted {
        image: usize,
        prompt: String,
    },
    Step {
        image: usize,
        step: usize,
        num_steps: usize,
    },
    ImageDone {
        image: usize,
        seconds: f64,
        eta_seconds: f64,
        peak_memory_bytes: u64,
        /// Set when the latent went non-finite (NaN or infinity) during this image: what to
        /// tell the user (the image is kept, but its samples and PNG hold garbage).
        non_finite: Option<String>,
    },
    /// A distributed run (a ring group): `done` of the job's `total` images are finished over
    /// all `ranks` (counted after every round of one image per rank).
    JobProgress {
        done: usize,
        total: usize,
        ranks: usize,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrateSummary {
    pub calib_dir: PathBuf,
    pub images_written: usize,
    pub n_completed: usize,
    pub num_images: usize,
    pub cancelled: bool,
    pub estimate_bytes: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// Seconds per finished image (text encoding, denoising with capture, decoding, PNG, manifest).
    pub image_seconds: Vec<f64>,
    /// Seconds spent denoising (MMDiT steps, without capture) and capturing (writing samples).
    pub denoising_seconds: f64,
    pub capture_seconds: f64,
    pub notes: Vec<String>,
    /// What went wrong without stopping the run: images whose latent went non-finite.
    pub warnings: Vec<String>,
    /// A distributed run whose parts ran on other machines: which files to copy here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_note: Option<String>,
}

impl CalibrateSummary {
    /// A run's summary before its first image: `n_completed` of `num_images` already finished.
    fn starting(
        dir: &Path,
        n_completed: usize,
        num_images: usize,
        estimate_bytes: u64,
        notes: Vec<String>,
    ) -> Self {
        Self {
            calib_dir: dir.to_owned(),
            images_written: 0,
            n_completed,
            num_images,
            cancelled: false,
            estimate_bytes,
            bytes_written: 0,
            seconds: 0.0,
            image_seconds: Vec::new(),
            denoising_seconds: 0.0,
            capture_seconds: 0.0,
            notes,
            warnings: Vec::new(),
            collect_note: None,
        }
    }

    /// Counts finished image `image` (`seconds` from its start to its record written; `left`
    /// images still to go for the ETA) and returns the event that reports it.
    fn add_image(
        &mut self,
        image: usize,
        captured: &CapturedImage,
        seconds: f64,
        left: usize,
    ) -> CalibrateEvent {
        self.images_written += 1;
        self.bytes_written += captured.bytes;
        self.capture_seconds += captured.capture_seconds;
        self.denoising_seconds += captured.denoising_seconds;
        self.image_seconds.push(seconds);
        let mean = self.image_seconds.iter().sum::<f64>() / self.image_seconds.len() as f64;
        let non_finite = captured.non_finite_step.map(|step| {
            format!(
                "image {image}: the latent is not finite (NaN or infinity) from step index {step} \
                 on; its samples and PNG hold no usable numbers (a lower CFG weight or float32 \
                 avoids the overflow)"
            )
        });
        self.warnings.extend(non_finite.clone());
        CalibrateEvent::ImageDone {
            image,
            seconds,
            eta_seconds: mean * left as f64,
            peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
            non_finite,
        }
    }
}

/// Why a run could not start or finish. The refusals say what is wrong, not how to override
/// it: the CLI and the app each add that in their own terms (a flag, a checkbox).
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("the number of images must be at least 1")]
    NoImages,
    #[error("{num_images} images is more than the {max} a run may hold")]
    TooManyImages { num_images: usize, max: usize },
    #[error("{num_steps} steps is more than the {max} a run may take")]
    TooManySteps { num_steps: usize, max: usize },
    #[error(
        "seed {seed} with {num_images} images needs seeds up to {last}, past the largest seed \
         {max} (seeds are 0..=4294967295, image i uses seed + i)",
        last = *seed as u64 + *num_images as u64 - 1,
        max = u32::MAX
    )]
    SeedRange { seed: u32, num_images: usize },
    #[error(transparent)]
    Lock(#[from] crate::fsutil::LockError),
    #[error(transparent)]
    Settings(#[from] crate::model::pipeline::GenerateConfigError),
    #[error("{dir} already holds a calibration run with different settings ({differences})")]
    SettingsDiffer { dir: PathBuf, differences: String },
    #[error("{dir} holds sample files but no manifest.json from a run")]
    ForeignData { dir: PathBuf },
    #[error("{dir}: the run needs about {needed} bytes but only {available} are free")]
    Disk {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("recording the generation settings in the manifest: {0}")]
    Record(#[from] serde_json::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Prompts(Box<crate::calib::prompts::PromptError>),
    #[error(transparent)]
    Source(Box<crate::model::source::SourceError>),
    #[error(transparent)]
    Pipeline(Box<crate::model::pipeline::PipelineError>),
    #[error(transparent)]
    Calib(Box<crate::calib::CalibError>),
    #[error(transparent)]
    Npz(Box<crate::calib::npz::NpzError>),
    #[error(transparent)]
    Npy(Box<crate::calib::npy::NpyError>),
    #[error(transparent)]
    TensorIo(Box<crate::model::tensor_io::TensorIoError>),
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{path}: not a calibration part's record: {problem}")]
    BadPart { path: PathBuf, problem: String },
    #[error("part {rank} ran with other settings than part 0 ({differences})")]
    PartsDiffer { rank: usize, differences: String },
    #[error(
        "{dir}: part {rank} has {left} image(s) left to generate: rerun it (it resumes), then merge"
    )]
    PartUnfinished {
        dir: PathBuf,
        rank: usize,
        left: usize,
    },
    /// Kept as the source (not transparent), so that the CLI can tell a lost peer.
    #[error("{0}")]
    Dist(#[from] Box<crate::dist::DistError>),
    #[error(transparent)]
    Parts(#[from] Box<crate::dist::shard::PartsError>),
}

/// Boxes the large error types of the layers below (errors are rare; the happy path stays small).
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {
        $(impl From<$ty> for CalibrateError {
            fn from(e: $ty) -> Self {
                Self::$variant(Box::new(e))
            }
        })*
    };
}
boxed_from!(
    Prompts: crate::calib::prompts::PromptError,
    Source: crate::model::source::SourceError,
    Pipeline: crate::model::pipeline::PipelineError,
    Calib: crate::calib::CalibError,
    Npz: crate::calib::npz::NpzError,
    Npy: crate::calib::npy::NpyError,
    TensorIo: crate::model::tensor_io::TensorIoError
);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CalibrateError + '_ {
    move |source| CalibrateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// File name of step `step` of image `image`: zero-padded so lexical order is image-major.
pub fn sample_file_name(image: usize, step: usize, num_steps: usize) -> String {
    let width = num_steps.saturating_sub(1).to_string().len().max(3);
    format!("samples/{image:06}_{step:0width$}.npz")
}

/// File name of the final image of `image`.
pub fn image_file_name(image: usize) -> String {
    format!("images/{image:06}.png")
}

/// Runs (or resumes) a calibration run. `on_event` sees progress; `cancel` stops it after the
/// current step, discarding the unfinished image.
pub fn run_calibration(
    cfg: &CalibrateConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(CalibrateEvent),
) -> Result<CalibrateSummary, CalibrateError> {
    let started = Instant::now();
    // A folder being written, or a file in its place, is refused before the model is resolved.
    FolderLock::check(&cfg.calib_dir)?;
    let run = cfg.validate_with(cancel, &mut |e| on_event(CalibrateEvent::Model(e)))?;
    let dir = &cfg.calib_dir;
    // One writer per folder for the whole run: two runs into one folder would otherwise mix
    // their images under one manifest. Released by the OS however the process ends.
    let _lock = FolderLock::acquire(dir)?;
    // Parts of a split run still writing into the folder would lose their images.
    crate::dist::shard::check_parts_idle(dir)?;
    let mut plan = ResumePlan::from_existing(dir, &run.settings, cfg.overwrite)?;
    plan.prepare(dir)?;
    let start = plan.start;
    let remaining = cfg.num_images.saturating_sub(start) as u64;
    let estimate = estimate_bytes_per_image(cfg, &run.model_config) * remaining;
    check_disk(dir, estimate, free_bytes(dir), cfg.force)?;
    on_event(CalibrateEvent::Planned {
        start_image: start,
        num_images: cfg.num_images,
        num_steps: cfg.num_steps,
        estimate_bytes: estimate,
        notes: run.notes.clone(),
    });
    let mut summary =
        CalibrateSummary::starting(dir, start, cfg.num_images, estimate, run.notes.clone());
    if start >= cfg.num_images {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // The settings are on disk before the first step: a run killed during its first image
    // leaves a folder the rerun continues (and `samples` reads), not anonymous step files.
    plan.begin(dir, &run.settings)?;
    let t = Instant::now();
    let pipe = Pipeline::load(&run.files, cfg.dtype.mlx())?;
    on_event(CalibrateEvent::ModelLoaded {
        seconds: t.elapsed().as_secs_f64(),
    });
    for image in start..cfg.num_images {
        if cancel.is_cancelled() {
            summary.cancelled = true;
            break;
        }
        let t_image = Instant::now();
        let captured = match capture_image(&pipe, &run, image, cancel, on_event)? {
            CaptureOutcome::Done(c) => c,
            CaptureOutcome::Cancelled => {
                summary.cancelled = true;
                break;
            }
        };
        plan.finish_image(dir, &run.settings, image, captured.sample_files.clone())?;
        summary.n_completed = image + 1;
        let left = cfg.num_images - image - 1;
        on_event(summary.add_image(image, &captured, t_image.elapsed().as_secs_f64(), left));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// A small float32 run (3 images × 4 steps, 64×64) of `model` into `dir`, for unit tests.
#[cfg(test)]
pub(crate) fn test_config(model: &str, dir: &Path) -> CalibrateConfig {
    CalibrateConfig {
        model: model.to_owned(),
        num_images: 3,
        num_steps: 4,
        cfg_weight: 7.5,
        calib_dir: dir.to_owned(),
        prompt_csv: None,
        seed: 0,
        height: 64,
        width: 64,
        dtype: ModelDtype::Float32,
        negative_prompt: String::new(),
        overwrite: false,
        force: false,
        images_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_image_major() {
        assert_eq!(sample_file_name(3, 7, 50), "samples/000003_007.npz");
        assert_eq!(sample_file_name(0, 1234, 2000), "samples/000000_1234.npz");
        let mut names: Vec<String> = (0..3)
            .flat_map(|i| (0..12).map(move |s| sample_file_name(i, s, 12)))
            .collect();
        let expected = names.clone();
        names.sort();
        assert_eq!(names, expected);
    }
}

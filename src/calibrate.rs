//! The calibration data generator: runs the SD3 pipeline over a prompt list and records, for
//! every (image, step), exactly what the denoiser receives, in the seed's layout
//! (`samples/NNNNNN_SSS.npz`, `images/NNNNNN.png`, `manifest.json`).
//!
//! Image `i` uses prompt `i mod len(prompts)` and seed `seed + i`, so every image can be
//! regenerated alone. The manifest is replaced atomically after each finished image and holds
//! the generation settings; a rerun continues at `n_completed`, refuses different settings
//! (unless told to start over), and replaces whatever an interrupted image left behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::{Array, Dtype};
use serde::{Deserialize, Serialize};

use crate::calib::manifest::Manifest;
use crate::calib::npy::{NpyArray, NpyData};
use crate::calib::npz::NpzWriter;
use crate::calib::prompts::{builtin_prompts, read_prompts};
use crate::job::CancelToken;
use crate::model::config::{ModelDtype, Sd3Config};
use crate::model::pipeline::{Flow, GenerateConfig, Pipeline, StepInputs, write_png};
use crate::model::source::{ModelFiles, resolve};

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
    /// Prompt and seed of each image written so far.
    pub prompts: Vec<String>,
    pub seeds: Vec<u32>,
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
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{0}")]
    Config(String),
    #[error(
        "{dir} already holds a calibration run with different settings ({differences}); use --overwrite to start over"
    )]
    SettingsDiffer { dir: PathBuf, differences: String },
    #[error(
        "{dir} holds sample files but no manifest.json from a run; use --overwrite to start over"
    )]
    ForeignData { dir: PathBuf },
    #[error(
        "{dir}: the run needs about {needed} bytes but only {available} are free (use --force to try anyway)"
    )]
    Disk {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
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
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
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
    Npy: crate::calib::npy::NpyError
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

/// An MLX array as an `.npy` array, in the dtype it has (bfloat16 is written as float32).
pub fn to_npy(a: &Array) -> Result<NpyArray, CalibrateError> {
    let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
    let flat = a.reshape(&[-1])?;
    flat.eval()?;
    let slice_err =
        |e: mlx_rs::error::AsSliceError| CalibrateError::Config(format!("reading an array: {e}"));
    let data = match a.dtype() {
        Dtype::Float32 => NpyData::Float32(flat.try_as_slice::<f32>().map_err(slice_err)?.to_vec()),
        Dtype::Float16 => NpyData::Float16(
            flat.try_as_slice::<half::f16>()
                .map_err(slice_err)?
                .to_vec(),
        ),
        Dtype::Bfloat16 => NpyData::Bfloat16(
            flat.try_as_slice::<half::bf16>()
                .map_err(slice_err)?
                .to_vec(),
        ),
        Dtype::Int32 => NpyData::Int32(flat.try_as_slice::<i32>().map_err(slice_err)?.to_vec()),
        Dtype::Int64 => NpyData::Int64(flat.try_as_slice::<i64>().map_err(slice_err)?.to_vec()),
        other => {
            return Err(CalibrateError::Config(format!(
                "cannot store dtype {other:?}"
            )));
        }
    };
    Ok(NpyArray::new(shape, data)?)
}

fn npy_bytes(a: &NpyArray) -> Vec<u8> {
    let mut v = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = a.write_npy(&mut v);
    v
}

/// Bytes one sample file takes (headers included) and one image, for the disk estimate.
pub fn estimate_bytes_per_image(cfg: &CalibrateConfig, model: &Sd3Config) -> u64 {
    let (h, w) = ((cfg.height / 8) as u64, (cfg.width / 8) as u64);
    let c = model.mmdit.latent_channels as u64;
    let act = cfg.dtype.size().max(if cfg.dtype == ModelDtype::Bfloat16 {
        4
    } else {
        0
    }) as u64;
    let x = h * w * c * 4;
    let cond = 2 * 154 * model.mmdit.context_dim as u64 * act;
    let pooled = 2 * model.mmdit.pooled_dim as u64 * act;
    let per_sample = x + cond + pooled + 6 * (128 + 100) + 3 * 8 + 200;
    per_sample * cfg.num_steps as u64 + (cfg.height * cfg.width * 3) as u64
}

/// Free bytes on the file system holding `dir` (or its nearest existing parent).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
        if p.as_os_str().is_empty() {
            p = PathBuf::from(".");
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs fills `st` for a valid NUL-terminated path.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Refuses a run whose estimate exceeds the free space, unless forced.
pub fn check_disk(
    dir: &Path,
    estimate: u64,
    free: Option<u64>,
    force: bool,
) -> Result<(), CalibrateError> {
    match free {
        Some(available) if estimate > available && !force => Err(CalibrateError::Disk {
            dir: dir.to_owned(),
            needed: estimate,
            available,
        }),
        _ => Ok(()),
    }
}

fn differences(old: &GenerationSettings, new: &GenerationSettings) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{name}: {a} → {b}"));
        }
    };
    cmp(
        "num_steps",
        old.num_steps.to_string(),
        new.num_steps.to_string(),
    );
    cmp(
        "cfg_weight",
        old.cfg_weight.to_string(),
        new.cfg_weight.to_string(),
    );
    cmp(
        "size",
        format!("{}x{}", old.width, old.height),
        format!("{}x{}", new.width, new.height),
    );
    cmp("dtype", old.dtype.name().into(), new.dtype.name().into());
    cmp(
        "negative_prompt",
        format!("{:?}", old.negative_prompt),
        format!("{:?}", new.negative_prompt),
    );
    cmp("seed", old.seed.to_string(), new.seed.to_string());
    if old.model != new.model {
        d.push(format!("model: {} → {}", old.model.name, new.model.name));
    }
    let n = old.prompts.len().min(new.prompts.len());
    if let Some(i) = (0..n).find(|&i| old.prompts[i] != new.prompts[i]) {
        d.push(format!(
            "prompt of image {i}: {:?} → {:?}",
            old.prompts[i], new.prompts[i]
        ));
    }
    d
}

/// Removes temporary files and the files of images `>= from` (an interrupted image).
fn clean_leftovers(dir: &Path, from: usize) -> Result<(), CalibrateError> {
    for sub in ["samples", "images"] {
        let d = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let image = name
                .split(['_', '.'])
                .next()
                .and_then(|s| s.parse::<usize>().ok());
            if name.starts_with(".sd3lab-") || image.is_some_and(|i| i >= from) {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
    }
    Ok(())
}

/// Runs (or resumes) a calibration run. `on_event` sees progress; `cancel` stops it after the
/// current step, discarding the unfinished image.
pub fn run_calibration(
    cfg: &CalibrateConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(CalibrateEvent),
) -> Result<CalibrateSummary, CalibrateError> {
    let started = Instant::now();
    if cfg.num_images == 0 {
        return Err(CalibrateError::Config(
            "--num-images must be at least 1".into(),
        ));
    }
    let mut notes = Vec::new();
    let (prompts, prompt_source) = match &cfg.prompt_csv {
        Some(p) if p.is_file() => (read_prompts(p)?, p.display().to_string()),
        Some(p) => {
            notes.push(format!(
                "{} does not exist: using the {} prompts shipped in assets/prompts.csv",
                p.display(),
                builtin_prompts().len()
            ));
            (
                builtin_prompts(),
                "assets/prompts.csv (built in)".to_owned(),
            )
        }
        None => (
            builtin_prompts(),
            "assets/prompts.csv (built in)".to_owned(),
        ),
    };
    if cfg.num_images > prompts.len() {
        notes.push(format!(
            "{} images from {} prompts: prompts are reused in order",
            cfg.num_images,
            prompts.len()
        ));
    }
    let files: ModelFiles = resolve(&cfg.model, &mut |w| notes.push(w.to_owned()))?;
    let (mmdit_cfg, vae_cfg) = crate::model::source::infer_config(&files.checkpoint)
        .map_err(crate::model::pipeline::PipelineError::from)?;
    let gen_probe = GenerateConfig {
        num_steps: cfg.num_steps,
        cfg_weight: cfg.cfg_weight,
        height: cfg.height,
        width: cfg.width,
        ..GenerateConfig::default()
    };
    gen_probe
        .validate(mmdit_cfg.max_latent_resolution)
        .map_err(CalibrateError::Config)?;
    let clip_cfg = |d: &Path| {
        crate::model::clip::read_clip_config(d).map_err(crate::model::pipeline::PipelineError::from)
    };
    let model_config = Sd3Config {
        mmdit: mmdit_cfg,
        clip_l: clip_cfg(&files.clip_l)?,
        clip_g: clip_cfg(&files.clip_g)?,
        vae: vae_cfg,
    };
    let identity = ModelIdentity {
        name: files.name.clone(),
        config: model_config.clone(),
        checkpoint_bytes: std::fs::metadata(&files.checkpoint)
            .map(|m| m.len())
            .unwrap_or(0),
    };
    let mut settings = GenerationSettings {
        tool: "sd3lab".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model: identity,
        num_steps: cfg.num_steps,
        cfg_weight: cfg.cfg_weight,
        height: cfg.height,
        width: cfg.width,
        dtype: cfg.dtype,
        negative_prompt: cfg.negative_prompt.clone(),
        seed: cfg.seed,
        prompt_source,
        prompts: (0..cfg.num_images)
            .map(|i| prompts[i % prompts.len()].clone())
            .collect(),
        seeds: (0..cfg.num_images)
            .map(|i| cfg.seed.wrapping_add(i as u32))
            .collect(),
    };

    // Where to start: a fresh directory, a resumable run, or a refusal.
    let dir = &cfg.calib_dir;
    std::fs::create_dir_all(dir.join("samples")).map_err(io_err(dir))?;
    std::fs::create_dir_all(dir.join("images")).map_err(io_err(dir))?;
    let mut manifest = Manifest::read(dir)?.unwrap_or_default();
    let previous: Option<GenerationSettings> = manifest
        .extra
        .get("generation")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let has_samples = std::fs::read_dir(dir.join("samples"))
        .map(|mut r| r.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".npz"))))
        .unwrap_or(false);
    let mut start = 0usize;
    if cfg.overwrite {
        clean_leftovers(dir, 0)?;
        manifest = Manifest::default();
    } else if let Some(prev) = &previous {
        let diff = differences(prev, &settings);
        if !diff.is_empty() {
            return Err(CalibrateError::SettingsDiffer {
                dir: dir.clone(),
                differences: diff.join("; "),
            });
        }
        start = manifest.n_completed.unwrap_or(0) as usize;
    } else if has_samples || manifest.n_completed.is_some() {
        return Err(CalibrateError::ForeignData { dir: dir.clone() });
    }
    clean_leftovers(dir, start)?;
    let mut sample_files: Vec<String> = manifest.sample_files.clone().unwrap_or_default();
    sample_files.retain(|f| {
        let image = Path::new(f)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').next())
            .and_then(|s| s.parse::<usize>().ok());
        image.is_some_and(|i| i < start)
    });

    let per_image = estimate_bytes_per_image(cfg, &model_config);
    let remaining = cfg.num_images.saturating_sub(start) as u64;
    let estimate = per_image * remaining;
    if let Some(free) = free_bytes(dir)
        && estimate > free
        && !cfg.force
    {
        return Err(CalibrateError::Disk {
            dir: dir.clone(),
            needed: estimate,
            available: free,
        });
    }
    on_event(CalibrateEvent::Planned {
        start_image: start,
        num_images: cfg.num_images,
        num_steps: cfg.num_steps,
        estimate_bytes: estimate,
        notes: notes.clone(),
    });
    let mut summary = CalibrateSummary {
        calib_dir: dir.clone(),
        images_written: 0,
        n_completed: start,
        num_images: cfg.num_images,
        cancelled: false,
        estimate_bytes: estimate,
        bytes_written: 0,
        seconds: 0.0,
        image_seconds: Vec::new(),
        denoising_seconds: 0.0,
        capture_seconds: 0.0,
        notes,
    };
    if start >= cfg.num_images {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    let t = Instant::now();
    let pipe = Pipeline::load(&files, cfg.dtype.mlx())?;
    on_event(CalibrateEvent::ModelLoaded {
        seconds: t.elapsed().as_secs_f64(),
    });
    let mut image_seconds: Vec<f64> = Vec::new();
    for image in start..cfg.num_images {
        if cancel.is_cancelled() {
            summary.cancelled = true;
            break;
        }
        let t_image = Instant::now();
        let prompt = settings.prompts[image].clone();
        on_event(CalibrateEvent::ImageStarted {
            image,
            prompt: prompt.clone(),
        });
        let request = GenerateConfig {
            prompt,
            negative_prompt: cfg.negative_prompt.clone(),
            seed: settings.seeds[image],
            num_steps: cfg.num_steps,
            cfg_weight: cfg.cfg_weight,
            height: cfg.height,
            width: cfg.width,
        };
        let mut written: Vec<String> = Vec::with_capacity(cfg.num_steps);
        let mut bytes = 0u64;
        let mut failure: Option<CalibrateError> = None;
        // The conditioning is the same at every step of an image: serialise it once.
        let mut shared: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut capture = 0.0f64;
        let mut record = |s: &StepInputs| -> Result<(), CalibrateError> {
            let t_capture = Instant::now();
            if shared.is_none() {
                shared = Some((
                    npy_bytes(&to_npy(s.conditioning)?),
                    npy_bytes(&to_npy(s.pooled)?),
                ));
            }
            let (cond, pooled) = shared
                .as_ref()
                .map(|(c, p)| (c.as_slice(), p.as_slice()))
                .unwrap_or_default();
            let rel = sample_file_name(image, s.step_index, s.num_steps);
            let path = dir.join(&rel);
            let mut w = NpzWriter::create(&path, false)?;
            w.add("x", &to_npy(s.x)?)?;
            w.add("timestep", &to_npy(s.timestep)?)?;
            w.add("sigma", &to_npy(s.sigma)?)?;
            w.add_npy_bytes("conditioning", cond)?;
            w.add_npy_bytes("pooled_conditioning", pooled)?;
            w.add(
                "step_index",
                &NpyArray::scalar(NpyData::Int64(vec![s.step_index as i64]))?,
            )?;
            w.finish()?;
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            written.push(rel);
            capture += t_capture.elapsed().as_secs_f64();
            Ok(())
        };
        let result = pipe.generate(&request, &mut |s| {
            if let Err(e) = record(s) {
                failure = Some(e);
                return Flow::Cancel;
            }
            on_event(CalibrateEvent::Step {
                image,
                step: s.step_index + 1,
                num_steps: s.num_steps,
            });
            if cancel.is_cancelled() {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        })?;
        if let Some(e) = failure {
            clean_leftovers(dir, image)?;
            return Err(e);
        }
        let Some(generated) = result else {
            // Cancelled mid-image: discard it; the next run redoes it.
            clean_leftovers(dir, image)?;
            summary.cancelled = true;
            break;
        };
        summary.capture_seconds += capture;
        // The pipeline times each step including the capture callback.
        summary.denoising_seconds += generated.times.per_step.iter().sum::<f64>() - capture;
        let (w, h, rgb) = &generated.image;
        let png = dir.join(image_file_name(image));
        write_png(&png, *w, *h, rgb).map_err(io_err(&png))?;
        bytes += std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);

        sample_files.extend(written);
        manifest.n_completed = Some(image as u64 + 1);
        manifest.num_steps = Some(cfg.num_steps as u64);
        manifest.sample_files = Some(sample_files.clone());
        settings.prompts.truncate(cfg.num_images);
        let mut recorded = settings.clone();
        recorded.prompts.truncate(image + 1);
        recorded.seeds.truncate(image + 1);
        manifest.extra.insert(
            "generation".into(),
            serde_json::to_value(&recorded).map_err(|e| CalibrateError::Config(e.to_string()))?,
        );
        manifest.write(dir)?;

        summary.images_written += 1;
        summary.n_completed = image + 1;
        summary.bytes_written += bytes;
        image_seconds.push(t_image.elapsed().as_secs_f64());
        summary.image_seconds.push(t_image.elapsed().as_secs_f64());
        let mean = image_seconds.iter().sum::<f64>() / image_seconds.len() as f64;
        on_event(CalibrateEvent::ImageDone {
            image,
            seconds: *image_seconds.last().unwrap_or(&0.0),
            eta_seconds: mean * (cfg.num_images - image - 1) as f64,
            peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_check_refuses_unless_forced() {
        let dir = Path::new("/data/calib");
        let err = check_disk(dir, 2_000, Some(1_000), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/data/calib")
                && err.contains("2000")
                && err.contains("1000")
                && err.contains("--force"),
            "{err}"
        );
        assert!(check_disk(dir, 2_000, Some(1_000), true).is_ok());
        assert!(check_disk(dir, 999, Some(1_000), false).is_ok());
        assert!(check_disk(dir, 999, None, false).is_ok());
        assert!(
            free_bytes(Path::new("/definitely/not/here/sub")).is_some_and(|b| b > 0),
            "falls back to an existing parent"
        );
    }

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

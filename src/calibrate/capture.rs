//! The capture step: one image generated with every step's denoiser inputs written as a
//! sample file, then its PNG.

use std::path::Path;
use std::time::Instant;

use super::resume::clean_leftovers;
use super::sample_file_name;
use super::{CalibrateError, CalibrateEvent, ValidatedCalibration, image_file_name, io_err};
use crate::calib::npy::{NpyArray, NpyData};
use crate::calib::npz::NpzWriter;
use crate::image::{PixelFormat, write_png};
use crate::job::CancelToken;
use crate::model::pipeline::{Flow, GenerateConfig, Pipeline, StepInputs};
use crate::model::tensor_io::to_npy;

/// Writes one image's steps into `samples/` as `NNNNNN_SSS.npz` with the keys the seed layout
/// uses (`x`, `timestep`, `sigma`, `conditioning`, `pooled_conditioning`, `step_index`).
pub struct SampleWriter<'a> {
    dir: &'a Path,
    image: usize,
    /// The conditioning is the same at every step of an image: serialised once.
    shared: Option<(Vec<u8>, Vec<u8>)>,
    /// Files written so far, relative to the folder, in step order.
    pub written: Vec<String>,
    pub bytes: u64,
    /// Time spent converting and writing.
    pub seconds: f64,
}

impl<'a> SampleWriter<'a> {
    pub fn new(dir: &'a Path, image: usize) -> Self {
        Self {
            dir,
            image,
            shared: None,
            written: Vec::new(),
            bytes: 0,
            seconds: 0.0,
        }
    }

    /// Writes step `s.step_index` (atomically: a killed run leaves a temporary file at most).
    pub fn record(&mut self, s: &StepInputs) -> Result<(), CalibrateError> {
        let t = Instant::now();
        if self.shared.is_none() {
            self.shared = Some((
                to_npy(s.conditioning)?.to_npy_bytes(),
                to_npy(s.pooled)?.to_npy_bytes(),
            ));
        }
        let (cond, pooled) = self
            .shared
            .as_ref()
            .map(|(c, p)| (c.as_slice(), p.as_slice()))
            .unwrap_or_default();
        let rel = sample_file_name(self.image, s.step_index, s.num_steps);
        let path = self.dir.join(&rel);
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
        // Only for the summary's byte count: an unreadable size counts as 0.
        self.bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.written.push(rel);
        self.seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// One captured image.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedImage {
    /// Sample files, relative to the folder, in step order.
    pub sample_files: Vec<String>,
    /// Bytes of the sample files and the PNG.
    pub bytes: u64,
    /// Seconds spent writing samples, and denoising without that.
    pub capture_seconds: f64,
    pub denoising_seconds: f64,
    /// The first step index whose latent was not finite (`num_steps`: only the final latent).
    pub non_finite_step: Option<usize>,
}

/// How capturing an image ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureOutcome {
    Done(CapturedImage),
    /// Cancelled mid-image: its files are removed; the next run redoes it.
    Cancelled,
}

/// Generates image `image` of `run` with `pipe`, writing each step's denoiser inputs (unless
/// the run is images-only) and the final PNG into the folder. `cancel` stops after the current step; a cancelled image, or one
/// whose samples could not be written, leaves no files behind.
pub fn capture_image(
    pipe: &Pipeline,
    run: &ValidatedCalibration,
    image: usize,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(CalibrateEvent),
) -> Result<CaptureOutcome, CalibrateError> {
    let cfg = &run.config;
    let dir = cfg.calib_dir.as_path();
    let prompt = run.settings.prompts[image].clone();
    on_event(CalibrateEvent::ImageStarted {
        image,
        prompt: prompt.clone(),
    });
    let request = GenerateConfig {
        prompt,
        negative_prompt: cfg.negative_prompt.clone(),
        seed: run.settings.seeds[image],
        num_steps: cfg.num_steps,
        cfg_weight: cfg.cfg_weight,
        height: cfg.height,
        width: cfg.width,
    };
    let mut writer = SampleWriter::new(dir, image);
    let mut failure: Option<CalibrateError> = None;
    let mut non_finite_step = None;
    let result = pipe.generate(&request, &mut |s| {
        if non_finite_step.is_none() {
            match all_finite(s.x) {
                Ok(true) => {}
                Ok(false) => non_finite_step = Some(s.step_index),
                Err(e) => {
                    failure = Some(e.into());
                    return Flow::Cancel;
                }
            }
        }
        if !cfg.images_only
            && let Err(e) = writer.record(s)
        {
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
        clean_leftovers(dir, image)?;
        return Ok(CaptureOutcome::Cancelled);
    };
    if non_finite_step.is_none() && !all_finite(&generated.latent)? {
        non_finite_step = Some(cfg.num_steps);
    }
    let (w, h, rgb) = &generated.image;
    let png = dir.join(image_file_name(image));
    write_png(&png, *w, *h, PixelFormat::Rgb, rgb).map_err(io_err(&png))?;
    let png_bytes = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    Ok(CaptureOutcome::Done(CapturedImage {
        bytes: writer.bytes + png_bytes,
        capture_seconds: writer.seconds,
        // The pipeline times each step including the capture callback.
        denoising_seconds: generated.times.per_step.iter().sum::<f64>() - writer.seconds,
        sample_files: writer.written,
        non_finite_step,
    }))
}

/// Whether every element of `a` is finite (no NaN, no infinity): a float16 run with a large
/// CFG weight overflows, and its samples would poison every statistic computed from them.
pub fn all_finite(a: &mlx_rs::Array) -> Result<bool, mlx_rs::error::Exception> {
    let finite = a.is_finite()?.all(None)?;
    finite.eval()?;
    // A bool reduction always holds one bool; anything else would be MLX's bug, said as such.
    match finite.try_as_slice::<bool>() {
        Ok([value]) => Ok(*value),
        _ => Err(mlx_rs::error::Exception::from(
            "is_finite().all() did not give one bool",
        )),
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::Array;

    use super::*;
    use crate::calib::npz::NpzReader;

    #[test]
    fn a_step_is_one_npz_with_the_seed_keys_and_the_conditioning_shared() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("samples")).unwrap();
        let x = Array::from_slice(&[0.5f32, -1.0, 2.0, 4.0], &[1, 2, 2, 1]);
        let timestep = Array::from_f32(750.0);
        let sigma = Array::from_f32(0.75);
        let cond = Array::from_slice(&[1.0f32; 12], &[2, 3, 2]);
        let pooled = Array::from_slice(&[2.0f32; 4], &[2, 2]);
        let mut writer = SampleWriter::new(dir.path(), 7);
        for step in 0..2 {
            writer
                .record(&StepInputs {
                    step_index: step,
                    num_steps: 2,
                    x: &x,
                    timestep: &timestep,
                    sigma: &sigma,
                    conditioning: &cond,
                    pooled: &pooled,
                })
                .unwrap();
        }
        assert_eq!(
            writer.written,
            ["samples/000007_000.npz", "samples/000007_001.npz"]
        );
        let path = dir.path().join(&writer.written[1]);
        assert_eq!(writer.bytes, 2 * std::fs::metadata(&path).unwrap().len());
        let mut npz = NpzReader::open(&path).unwrap();
        let mut keys = npz.names();
        keys.sort();
        assert_eq!(
            keys,
            [
                "conditioning",
                "pooled_conditioning",
                "sigma",
                "step_index",
                "timestep",
                "x"
            ]
        );
        let x_back = npz.read("x").unwrap();
        assert_eq!(x_back.shape, vec![1, 2, 2, 1]);
        assert_eq!(x_back.data, NpyData::Float32(vec![0.5, -1.0, 2.0, 4.0]));
        assert_eq!(npz.read("step_index").unwrap().first_f64(), Some(1.0));
        assert_eq!(npz.read("conditioning").unwrap().shape, vec![2, 3, 2]);
        assert_eq!(npz.read("timestep").unwrap().first_f64(), Some(750.0));
    }
}

//! A run's settings checked and resolved before anything is written: the prompts, the model
//! (files and configuration), the image size against that model, and what the manifest records.

use std::path::Path;

use super::{
    CalibrateConfig, CalibrateError, GenerationSettings, MAX_NUM_IMAGES, MAX_NUM_STEPS,
    ModelIdentity,
};
use crate::calib::prompts::{builtin_prompts_for, read_prompts};
use crate::model::config::Sd3Config;
use crate::model::pipeline::{GenerateConfig, PipelineError};
use crate::model::source::{ModelFiles, infer_config, resolve};

/// A [`CalibrateConfig`] that passed every check, with what the checks resolved.
#[derive(Debug, Clone)]
pub struct ValidatedCalibration {
    pub config: CalibrateConfig,
    pub files: ModelFiles,
    pub model_config: Sd3Config,
    /// What the manifest records, with the prompt and seed of every image of the run.
    pub settings: GenerationSettings,
    /// What the user should know (shipped prompts used, prompts reused, model warnings).
    pub notes: Vec<String>,
}

impl CalibrateConfig {
    /// [`CalibrateConfig::validate_with`] for callers that need no model events (tests, probes):
    /// the fallback to tiny and a download's progress are dropped.
    pub fn validate(&self) -> Result<ValidatedCalibration, CalibrateError> {
        self.validate_with(&crate::job::CancelToken::new(), &mut |_| {})
    }

    /// Checks the settings, reads the prompts, resolves the model (the built-in tiny model is
    /// written to the user's cache on first use, sd3-medium downloaded when not cached, with
    /// what resolving reports going to `on_model` and `cancel` stopping a download) and checks
    /// the image size and step count against it. Writes nothing into the calibration folder.
    pub fn validate_with(
        &self,
        cancel: &crate::job::CancelToken,
        on_model: &mut dyn FnMut(crate::model::source::SourceEvent),
    ) -> Result<ValidatedCalibration, CalibrateError> {
        // The counts first, before anything is allocated per image or per step.
        if self.num_images == 0 {
            return Err(CalibrateError::NoImages);
        }
        if self.num_images > MAX_NUM_IMAGES {
            return Err(CalibrateError::TooManyImages {
                num_images: self.num_images,
                max: MAX_NUM_IMAGES,
            });
        }
        if self.num_steps > MAX_NUM_STEPS {
            return Err(CalibrateError::TooManySteps {
                num_steps: self.num_steps,
                max: MAX_NUM_STEPS,
            });
        }
        // Image i uses seed + i: the last seed must not wrap around to 0.
        if self.seed as u64 + self.num_images as u64 - 1 > u32::MAX as u64 {
            return Err(CalibrateError::SeedRange {
                seed: self.seed,
                num_images: self.num_images,
            });
        }
        let mut notes = Vec::new();
        let files = resolve(&self.model, cancel, on_model)?;
        // The shipped prompts are the model's: the demo captions for the built-in tiny
        // model (`auto` may have fallen back to it).
        let (prompts, prompt_source) = match &self.prompt_csv {
            // Anything there (a folder, a FIFO, a file) is read or refused by read_prompts;
            // only a path with nothing behind it falls back to the shipped prompts.
            Some(p) if std::fs::metadata(p).is_ok() => {
                let read = read_prompts(p, self.num_images)?;
                notes.extend(read.notes);
                (read.prompts, p.display().to_string())
            }
            Some(p) => {
                let (prompts, file) = builtin_prompts_for(&files.name);
                notes.push(format!(
                    "{} does not exist: using the {} prompts shipped in {file}",
                    p.display(),
                    prompts.len()
                ));
                (prompts, format!("{file} (built in)"))
            }
            None => {
                let (prompts, file) = builtin_prompts_for(&files.name);
                (prompts, format!("{file} (built in)"))
            }
        };
        if self.num_images > prompts.len() {
            notes.push(format!(
                "{} images from {} prompts: prompts are reused in order",
                self.num_images,
                prompts.len()
            ));
        }
        let (mmdit_cfg, vae_cfg) = infer_config(&files.checkpoint).map_err(PipelineError::from)?;
        let probe = GenerateConfig {
            num_steps: self.num_steps,
            cfg_weight: self.cfg_weight,
            height: self.height,
            width: self.width,
            ..GenerateConfig::default()
        };
        probe.validate(mmdit_cfg.max_latent_resolution)?;
        let clip_cfg =
            |d: &Path| crate::model::clip::read_clip_config(d).map_err(PipelineError::from);
        let model_config = Sd3Config {
            mmdit: mmdit_cfg,
            clip_l: clip_cfg(&files.clip_l)?,
            clip_g: clip_cfg(&files.clip_g)?,
            vae: vae_cfg,
        };
        let identity = ModelIdentity {
            name: files.name.clone(),
            config: model_config.clone(),
            // Only compared between runs: an unreadable size is the same 0 each time.
            checkpoint_bytes: std::fs::metadata(&files.checkpoint)
                .map(|m| m.len())
                .unwrap_or(0),
        };
        let settings = GenerationSettings {
            tool: "sd3lab".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            model: identity,
            num_steps: self.num_steps,
            cfg_weight: self.cfg_weight,
            height: self.height,
            width: self.width,
            dtype: self.dtype,
            negative_prompt: self.negative_prompt.clone(),
            seed: self.seed,
            prompt_source,
            images_only: self.images_only,
            prompts: (0..self.num_images)
                .map(|i| prompts[i % prompts.len()].clone())
                .collect(),
            // In range: checked above.
            seeds: (0..self.num_images).map(|i| self.seed + i as u32).collect(),
        };
        Ok(ValidatedCalibration {
            config: self.clone(),
            files,
            model_config,
            settings,
            notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(model: &Path, dir: &Path) -> CalibrateConfig {
        CalibrateConfig {
            // The last seeds there are: image 2 uses the largest.
            seed: u32::MAX - 2,
            ..crate::calibrate::test_config(&model.display().to_string(), dir)
        }
    }

    /// A tiny model directory of the test's own (no shared cache).
    fn model_dir(root: &Path) -> PathBuf {
        let dir = root.join("model");
        crate::model::source::write_model_dir(&dir, &crate::model::Preset::Tiny.config(None), 1)
            .unwrap();
        dir
    }

    #[test]
    fn resolves_prompts_seeds_and_model_without_touching_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let model = model_dir(root.path());
        let calib = root.path().join("calib");
        let mut cfg = config(&model, &calib);
        let csv = root.path().join("prompts.csv");
        std::fs::write(&csv, "prompt\na fox\na cat\n").unwrap();
        cfg.prompt_csv = Some(csv.clone());
        let run = cfg.validate().unwrap();
        assert_eq!(run.settings.prompts, ["a fox", "a cat", "a fox"]);
        assert_eq!(run.settings.seeds, [u32::MAX - 2, u32::MAX - 1, u32::MAX]);
        assert_eq!(run.settings.prompt_source, csv.display().to_string());
        assert!(
            run.notes.iter().any(|n| n.contains("prompts are reused")),
            "{:?}",
            run.notes
        );
        assert!(run.files.checkpoint.starts_with(&model));
        assert_eq!(run.settings.model.config, run.model_config);
        assert!(!calib.exists(), "validation writes nothing");

        cfg.prompt_csv = Some(root.path().join("missing.csv"));
        let run = cfg.validate().unwrap();
        assert_eq!(run.settings.prompt_source, "assets/prompts.csv (built in)");
        assert!(run.notes[0].contains("missing.csv does not exist"));
        assert_eq!(
            run.settings.prompts[0],
            crate::calib::prompts::builtin_prompts()[0]
        );
    }

    #[test]
    fn the_built_in_tiny_model_gets_the_demo_captions() {
        let (prompts, file) = crate::calib::prompts::builtin_prompts_for("tiny");
        assert_eq!(file, "assets/demo-prompts.csv");
        assert_eq!(prompts.len(), 40);
        for p in &prompts {
            let scene = crate::demo::shapes::Scene::parse(p).unwrap();
            assert!(
                crate::demo::shapes::is_held_out(scene.shape, scene.colour, scene.background),
                "{p}"
            );
        }
        let (general, _) = crate::calib::prompts::builtin_prompts_for("sd3-medium");
        assert_eq!(general, crate::calib::prompts::builtin_prompts());
    }

    #[test]
    fn refuses_bad_settings_with_the_setting_named() {
        let root = tempfile::tempdir().unwrap();
        let model = model_dir(root.path());
        let calib = root.path().join("calib");
        let err = |f: &dyn Fn(&mut CalibrateConfig)| {
            let mut cfg = config(&model, &calib);
            f(&mut cfg);
            cfg.validate().unwrap_err().to_string()
        };
        assert!(err(&|c| c.num_images = 0).contains("the number of images must be at least 1"));
        let no_images = CalibrateConfig {
            num_images: 0,
            ..config(&model, &calib)
        };
        assert!(matches!(
            no_images.validate(),
            Err(CalibrateError::NoImages)
        ));
        assert!(err(&|c| c.num_steps = 0).contains("num_steps must be at least 1"));
        assert!(err(&|c| c.height = 100).contains("height 100 must be a positive multiple of 16"));
        assert!(err(&|c| c.width = 1 << 20).contains("above this model's maximum"));
        assert!(err(&|c| c.cfg_weight = f32::NAN).contains("cfg_weight must be a finite number"));
        let missing = err(&|c| c.model = root.path().join("nothing").display().to_string());
        assert!(missing.contains("nothing"), "{missing}");
    }

    #[test]
    fn counts_and_seeds_are_bounded_before_anything_is_allocated() {
        let root = tempfile::tempdir().unwrap();
        // No model at all: the bounds are checked before the model is resolved.
        let cfg = |f: &dyn Fn(&mut CalibrateConfig)| {
            let mut c = config(&root.path().join("no-model"), &root.path().join("calib"));
            f(&mut c);
            c.validate().unwrap_err()
        };
        let e = cfg(&|c| c.num_steps = 2_000_000);
        assert!(
            matches!(
                e,
                CalibrateError::TooManySteps {
                    num_steps: 2_000_000,
                    max: MAX_NUM_STEPS
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("2000000 steps is more than the 10000"),
            "{e}"
        );
        let e = cfg(&|c| c.num_images = 100_000_000);
        assert!(
            e.to_string()
                .contains("100000000 images is more than the 100000"),
            "{e}"
        );
        // Seed + i past 2^32 - 1 would silently wrap to seed 0.
        let e = cfg(&|c| {
            c.seed = u32::MAX - 1;
            c.num_images = 3;
        })
        .to_string();
        assert!(
            e.contains("seed 4294967294 with 3 images needs seeds up to 4294967296"),
            "{e}"
        );
    }

    #[test]
    fn a_prompt_csv_that_is_a_folder_or_fifo_is_refused_saying_so() {
        let root = tempfile::tempdir().unwrap();
        let model = model_dir(root.path());
        let mut cfg = config(&model, &root.path().join("calib"));
        cfg.prompt_csv = Some(root.path().to_owned());
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("is a folder, not a prompt file"), "{e}");
        assert!(!e.contains("does not exist"), "{e}");
    }
}

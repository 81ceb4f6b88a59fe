//! Where a run starts in its folder: from scratch, after the images a previous run with the
//! same settings finished, or not at all (different settings, someone else's data).

use std::path::Path;

use super::{CalibrateError, GenerationSettings, io_err};
use crate::calib::manifest::Manifest;

/// A run's starting point in its calibration folder and the manifest it continues.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePlan {
    /// The first image to generate: the previous run's `n_completed`, 0 when starting afresh.
    pub start: usize,
    /// The manifest to continue (its unknown keys kept), or an empty one when starting afresh.
    pub manifest: Manifest,
    /// The sample files of the images before `start`, as the manifest lists them.
    pub sample_files: Vec<String>,
}

impl ResumePlan {
    /// Reads `dir` (writing nothing) and decides where a run with `settings` starts. With
    /// `overwrite` it starts afresh whatever the folder holds; otherwise a previous run with
    /// other settings, or sample files without a manifest from a run, are refused.
    pub fn from_existing(
        dir: &Path,
        settings: &GenerationSettings,
        overwrite: bool,
    ) -> Result<Self, CalibrateError> {
        let manifest = Manifest::read(dir)?.unwrap_or_default();
        if overwrite {
            return Ok(Self::fresh());
        }
        // Settings that do not parse are not a run of ours: refused below like a foreign run.
        let previous = GenerationSettings::from_manifest(&manifest).and_then(Result::ok);
        let Some(previous) = previous else {
            if has_sample_files(dir) || manifest.n_completed.is_some() {
                return Err(CalibrateError::ForeignData {
                    dir: dir.to_owned(),
                });
            }
            // No run yet; a manifest holding only other tools' keys keeps them.
            return Ok(Self {
                manifest,
                ..Self::fresh()
            });
        };
        let diff = differences(&previous, settings);
        if !diff.is_empty() {
            return Err(CalibrateError::SettingsDiffer {
                dir: dir.to_owned(),
                differences: diff.join("; "),
            });
        }
        let start = manifest.n_completed.unwrap_or(0) as usize;
        let mut sample_files = manifest.sample_files.clone().unwrap_or_default();
        sample_files.retain(|f| {
            Path::new(f)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(image_of)
                .is_some_and(|i| i < start)
        });
        Ok(Self {
            start,
            manifest,
            sample_files,
        })
    }

    fn fresh() -> Self {
        Self {
            start: 0,
            manifest: Manifest::default(),
            sample_files: Vec::new(),
        }
    }

    /// Makes `dir` ready for the run: creates `samples/` and `images/` and removes temporary
    /// files and every file of the images from `start` on (an interrupted image's, or all of
    /// them when starting afresh), so a resumed run ends with exactly an uninterrupted run's
    /// files.
    pub fn prepare(&self, dir: &Path) -> Result<(), CalibrateError> {
        std::fs::create_dir_all(dir.join("samples")).map_err(io_err(dir))?;
        std::fs::create_dir_all(dir.join("images")).map_err(io_err(dir))?;
        clean_leftovers(dir, self.start)
    }

    /// Writes the manifest of the images before `start` with the run's settings, before the
    /// first step: a run killed during its first image leaves a manifest (`n_completed: 0`)
    /// that the rerun continues and readers understand, never step files without one.
    pub fn begin(
        &mut self,
        dir: &Path,
        settings: &GenerationSettings,
    ) -> Result<(), CalibrateError> {
        self.record(dir, settings, self.start)
    }

    /// Records finished image `image` (its sample files `written`) and rewrites the manifest
    /// atomically: a run killed at any point resumes after the last recorded image.
    pub fn finish_image(
        &mut self,
        dir: &Path,
        settings: &GenerationSettings,
        image: usize,
        written: Vec<String>,
    ) -> Result<(), CalibrateError> {
        self.sample_files.extend(written);
        self.record(dir, settings, image + 1)
    }

    /// Rewrites the manifest atomically with `completed` images finished.
    pub(super) fn record(
        &mut self,
        dir: &Path,
        settings: &GenerationSettings,
        completed: usize,
    ) -> Result<(), CalibrateError> {
        self.manifest.n_completed = Some(completed as u64);
        self.manifest.num_steps = Some(settings.num_steps as u64);
        self.manifest.sample_files = Some(self.sample_files.clone());
        let mut recorded = settings.clone();
        recorded.prompts.truncate(completed);
        recorded.seeds.truncate(completed);
        recorded.record_in(&mut self.manifest)?;
        self.manifest.write(dir)?;
        Ok(())
    }
}

/// The image a sample or image file name belongs to (`000012_007.npz`, `000012.png` → 12).
pub(super) fn image_of(file_name: &str) -> Option<usize> {
    file_name.split(['_', '.']).next()?.parse().ok()
}

fn has_sample_files(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("samples"))
        .map(|mut r| r.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".npz"))))
        .unwrap_or(false)
}

/// What differs between two runs' settings, one `name: old → new` each (empty: same run).
pub fn differences(old: &GenerationSettings, new: &GenerationSettings) -> Vec<String> {
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
    cmp(
        "images_only",
        old.images_only.to_string(),
        new.images_only.to_string(),
    );
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

/// Removes temporary files and the files of images `>= from` (an interrupted image). Called
/// under the folder's lock only: another writer's temporary files would be live ones.
pub(super) fn clean_leftovers(dir: &Path, from: usize) -> Result<(), CalibrateError> {
    // The manifest's temporary files lie in the folder itself.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if crate::fsutil::is_temporary_name(&e.file_name().to_string_lossy())
                && e.path().is_file()
            {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
    }
    remove_image_files(dir, |name| {
        crate::fsutil::is_temporary_name(name) || image_of(name).is_some_and(|i| i >= from)
    })
}

/// Removes the files in `samples/` and `images/` whose name `remove` picks.
pub(super) fn remove_image_files(
    dir: &Path,
    remove: impl Fn(&str) -> bool,
) -> Result<(), CalibrateError> {
    for sub in ["samples", "images"] {
        let d = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if remove(&e.file_name().to_string_lossy()) {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::{ModelIdentity, image_file_name, sample_file_name};
    use crate::model::config::ModelDtype;

    fn settings(images: usize) -> GenerationSettings {
        GenerationSettings {
            tool: "sd3lab".into(),
            tool_version: "test".into(),
            model: ModelIdentity {
                name: "tiny".into(),
                config: crate::model::Preset::Tiny.config(None),
                checkpoint_bytes: 123,
            },
            num_steps: 3,
            cfg_weight: 7.5,
            height: 64,
            width: 64,
            dtype: ModelDtype::Float32,
            negative_prompt: String::new(),
            seed: 5,
            prompt_source: "test".into(),
            images_only: false,
            prompts: (0..images).map(|i| format!("prompt {i}")).collect(),
            seeds: (0..images as u32).map(|i| 5 + i).collect(),
        }
    }

    /// The files of images `0..images` (3 steps each), as a run writes them.
    fn touch_images(dir: &Path, images: usize) {
        for i in 0..images {
            for s in 0..3 {
                let p = dir.join(sample_file_name(i, s, 3));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b"npz").unwrap();
            }
            let p = dir.join(image_file_name(i));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"png").unwrap();
        }
    }

    fn names(dir: &Path, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_missing_or_empty_folder_starts_afresh() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new");
        let plan = ResumePlan::from_existing(&dir, &settings(2), false).unwrap();
        assert_eq!(plan, ResumePlan::fresh());
        assert!(!dir.exists(), "reading writes nothing");
        plan.prepare(&dir).unwrap();
        assert!(dir.join("samples").is_dir() && dir.join("images").is_dir());
    }

    #[test]
    fn a_partial_run_resumes_after_its_recorded_images_and_drops_the_interrupted_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let s = settings(4);
        // Images 0 and 1 recorded; image 2 was interrupted after some of its files.
        let mut plan = ResumePlan::fresh();
        plan.prepare(dir).unwrap();
        for i in 0..2 {
            let written = (0..3).map(|k| sample_file_name(i, k, 3)).collect();
            plan.finish_image(dir, &s, i, written).unwrap();
        }
        touch_images(dir, 3);
        std::fs::write(dir.join("samples/.sd3lab-tmp123.tmp"), b"partial").unwrap();
        std::fs::write(dir.join(".sd3lab-manifest1.tmp"), b"partial").unwrap();
        // A key written by another tool survives the resume.
        let mut m = Manifest::read(dir).unwrap().unwrap();
        m.extra.insert("note".into(), serde_json::json!("kept"));
        m.write(dir).unwrap();

        let plan = ResumePlan::from_existing(dir, &s, false).unwrap();
        assert_eq!(plan.start, 2);
        assert_eq!(plan.sample_files.len(), 6);
        assert!(plan.sample_files.iter().all(|f| !f.contains("000002_")));
        assert_eq!(plan.manifest.extra["note"], "kept");
        // The recorded settings hold the finished images' prompts only.
        let recorded = GenerationSettings::from_manifest(&plan.manifest)
            .unwrap()
            .unwrap();
        assert_eq!(recorded.prompts, ["prompt 0", "prompt 1"]);
        plan.prepare(dir).unwrap();
        assert_eq!(
            names(dir, "samples"),
            [
                "000000_000.npz",
                "000000_001.npz",
                "000000_002.npz",
                "000001_000.npz",
                "000001_001.npz",
                "000001_002.npz"
            ]
        );
        assert_eq!(names(dir, "images"), ["000000.png", "000001.png"]);
        assert!(
            !dir.join(".sd3lab-manifest1.tmp").exists(),
            "a killed run's temporary manifest is removed too"
        );
    }

    #[test]
    fn a_run_killed_in_its_first_image_resumes_from_its_early_manifest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let s = settings(2);
        let mut plan = ResumePlan::fresh();
        plan.prepare(dir).unwrap();
        plan.begin(dir, &s).unwrap();
        let m = Manifest::read(dir).unwrap().unwrap();
        assert_eq!((m.n_completed, m.num_steps), (Some(0), Some(3)));
        // Killed after two steps of image 0: its files are there, no image is finished.
        for k in 0..2 {
            let p = dir.join(sample_file_name(0, k, 3));
            std::fs::write(p, b"npz").unwrap();
        }
        let plan = ResumePlan::from_existing(dir, &s, false).unwrap();
        assert_eq!(plan.start, 0);
        plan.prepare(dir).unwrap();
        assert!(names(dir, "samples").is_empty());
    }

    #[test]
    fn other_settings_are_refused_with_what_differs_unless_overwriting() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut plan = ResumePlan::fresh();
        plan.prepare(dir).unwrap();
        plan.finish_image(dir, &settings(2), 0, vec![sample_file_name(0, 0, 3)])
            .unwrap();
        let mut other = settings(2);
        other.num_steps = 4;
        other.prompts[0] = "something else".into();
        let err = ResumePlan::from_existing(dir, &other, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_steps: 3 → 4")
                && err.contains("prompt of image 0")
                && !err.contains("--"),
            "{err}"
        );
        // More images with the same settings: the same run, extended.
        assert_eq!(
            ResumePlan::from_existing(dir, &settings(5), false)
                .unwrap()
                .start,
            1
        );
        touch_images(dir, 1);
        let plan = ResumePlan::from_existing(dir, &other, true).unwrap();
        assert_eq!(plan, ResumePlan::fresh());
        plan.prepare(dir).unwrap();
        assert!(names(dir, "samples").is_empty() && names(dir, "images").is_empty());
    }

    #[test]
    fn a_manifest_of_other_tools_keys_only_is_continued_with_its_keys() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut m = Manifest::default();
        m.extra.insert("dataset".into(), serde_json::json!("mine"));
        m.write(dir).unwrap();
        let plan = ResumePlan::from_existing(dir, &settings(1), false).unwrap();
        assert_eq!((plan.start, &plan.manifest), (0, &m));
    }

    #[test]
    fn sample_files_without_a_run_manifest_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        touch_images(dir, 1);
        let err = ResumePlan::from_existing(dir, &settings(1), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no manifest.json"), "{err}");
        // A seed-layout manifest without our settings is someone else's run too.
        std::fs::remove_dir_all(dir.join("samples")).unwrap();
        Manifest {
            n_completed: Some(1),
            ..Manifest::default()
        }
        .write(dir)
        .unwrap();
        assert!(matches!(
            ResumePlan::from_existing(dir, &settings(1), false),
            Err(CalibrateError::ForeignData { .. })
        ));
    }
}

//! A calibration run split across ranks. Part R of N generates images R, R+N, R+2N, … (each
//! from its own prompt and seed, so its files are those a whole run writes) straight into the
//! calibration folder's `samples/` and `images/` (the names of different parts never meet),
//! and records every finished image in `shard-R-of-N/part.json` (atomically), its resume
//! point. The merge writes the `manifest.json` of a whole run from the parts' records; with a
//! ring group rank 0 does it at the end, otherwise `sd3lab merge` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::resume::{ResumePlan, image_of, remove_image_files};
use super::{
    CalibrateConfig, CalibrateError, CalibrateEvent, CalibrateSummary, CaptureOutcome,
    GenerationSettings, capture_image, check_disk, estimate_bytes_per_image, free_bytes, io_err,
    run_calibration, setting_differences,
};
use crate::calib::Manifest;
use crate::dist::{Distribution, Shard};
use crate::fsutil::FolderLock;
use crate::job::CancelToken;
use crate::model::pipeline::Pipeline;

/// A part's record, in its shard folder.
pub const PART_FILE: &str = "part.json";
/// The schema name of [`PART_FILE`].
pub const PART_SCHEMA: &str = "sd3lab.calibration-part/1";

/// What a part has finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub schema: String,
    pub shard: Shard,
    /// The whole run's settings (every image's prompt and seed).
    pub settings: GenerationSettings,
    /// Finished images of this part and their sample files (relative to the calibration
    /// folder, in step order).
    pub images: BTreeMap<usize, Vec<String>>,
}

impl PartRecord {
    /// The images this part owns.
    pub fn owned(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.settings.prompts.len()).filter(|&i| self.shard.takes(i))
    }

    /// How many of its images are still to generate.
    pub fn left(&self) -> usize {
        self.owned()
            .filter(|i| !self.images.contains_key(i))
            .count()
    }
}

/// Reads a part's record, which must be `expected`'s.
fn read_part(path: &Path, expected: Shard) -> Result<Option<PartRecord>, CalibrateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let part: PartRecord = serde_json::from_str(&text).map_err(|e| CalibrateError::BadPart {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    if part.schema != PART_SCHEMA {
        return Err(CalibrateError::BadPart {
            path: path.to_owned(),
            problem: format!("schema {:?}, expected {PART_SCHEMA:?}", part.schema),
        });
    }
    check_part(&part, expected).map_err(|problem| CalibrateError::BadPart {
        path: path.to_owned(),
        problem,
    })?;
    Ok(Some(part))
}

/// A record is `expected`'s part and holds only images it owns.
fn check_part(part: &PartRecord, expected: Shard) -> Result<(), String> {
    if part.shard != expected {
        return Err(format!(
            "it records part {}/{}, not {expected}",
            part.shard.rank, part.shard.size
        ));
    }
    let num_images = part.settings.prompts.len();
    if let Some(i) = part
        .images
        .keys()
        .find(|&&i| i >= num_images || !expected.takes(i))
    {
        return Err(format!("image {i} is not one of part {expected}'s"));
    }
    Ok(())
}

fn write_part(path: &Path, part: &PartRecord) -> Result<(), CalibrateError> {
    let text = serde_json::to_string_pretty(part)?;
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(io_err(path))
}

/// The images (and their sample files) a whole or merged run of these settings finished in
/// `dir`: none when its manifest holds no run, an error when it holds another run.
fn finished_in_manifest(
    dir: &Path,
    settings: &GenerationSettings,
) -> Result<BTreeMap<usize, Vec<String>>, CalibrateError> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let Some(manifest) = Manifest::read(dir)? else {
        return Ok(out);
    };
    let Some(Ok(previous)) = GenerationSettings::from_manifest(&manifest) else {
        return Ok(out);
    };
    let d = setting_differences(&previous, settings);
    if !d.is_empty() {
        return Err(CalibrateError::SettingsDiffer {
            dir: dir.to_owned(),
            differences: d.join("; "),
        });
    }
    let n = (manifest.n_completed.unwrap_or(0) as usize).min(settings.prompts.len());
    // Every image before `n_completed` is finished (with no samples in a reference set).
    out.extend((0..n).map(|i| (i, Vec::new())));
    for f in manifest.sample_files.unwrap_or_default() {
        let image = Path::new(&f)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(image_of);
        if let Some(files) = image.and_then(|i| out.get_mut(&i)) {
            files.push(f);
        }
    }
    Ok(out)
}

/// Removes the files of this part's images that are not finished (an interrupted image's).
/// Other parts' files, live or not, are left alone.
fn clean_part_leftovers(dir: &Path, part: &PartRecord) -> Result<(), CalibrateError> {
    remove_image_files(dir, |name| {
        image_of(name).is_some_and(|i| part.shard.takes(i) && !part.images.contains_key(&i))
    })
}

/// [`run_calibration`] for one part of a split run (the whole run when `dist` is whole).
pub fn run_calibration_distributed(
    cfg: &CalibrateConfig,
    dist: Distribution,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(CalibrateEvent),
) -> Result<CalibrateSummary, CalibrateError> {
    let shard = dist.shard;
    if !shard.is_part() {
        return run_calibration(cfg, cancel, on_event);
    }
    let started = Instant::now();
    let dir = &cfg.calib_dir;
    let part_dir = dir.join(shard.folder_name());
    let part_path = part_dir.join(PART_FILE);
    let run = cfg.validate_with(cancel, &mut |e| on_event(CalibrateEvent::Model(e)))?;
    // Rank 0 of a group writes the manifest; the parts share the folder, each its own files.
    let _merged_lock = if dist.writes_merged() {
        Some(FolderLock::acquire(dir)?)
    } else {
        None
    };
    let _lock = FolderLock::acquire(&part_dir)?;
    let fresh = || PartRecord {
        schema: PART_SCHEMA.into(),
        shard,
        settings: run.settings.clone(),
        images: BTreeMap::new(),
    };
    let mut part = match read_part(&part_path, shard)? {
        Some(_) if cfg.overwrite => fresh(),
        Some(previous) => {
            let d = setting_differences(&previous.settings, &run.settings);
            if !d.is_empty() {
                return Err(CalibrateError::SettingsDiffer {
                    dir: part_dir,
                    differences: d.join("; "),
                });
            }
            PartRecord {
                settings: run.settings.clone(),
                ..previous
            }
        }
        None => fresh(),
    };
    if !cfg.overwrite {
        // Images a whole (or earlier merged) run of the same settings finished count as done.
        for (i, files) in finished_in_manifest(dir, &run.settings)? {
            if shard.takes(i) {
                part.images.entry(i).or_insert(files);
            }
        }
    }
    for sub in ["samples", "images"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io_err(dir))?;
    }
    clean_part_leftovers(dir, &part)?;
    let todo: Vec<usize> = part
        .owned()
        .filter(|i| !part.images.contains_key(i))
        .collect();
    let estimate = estimate_bytes_per_image(cfg, &run.model_config) * todo.len() as u64;
    check_disk(dir, estimate, free_bytes(dir), cfg.force)?;
    let owned = part.owned().count();
    on_event(CalibrateEvent::Planned {
        start_image: owned - todo.len(),
        num_images: owned,
        num_steps: cfg.num_steps,
        estimate_bytes: estimate,
        notes: run.notes.clone(),
    });
    write_part(&part_path, &part)?;
    let mut summary =
        CalibrateSummary::starting(dir, part.images.len(), owned, estimate, run.notes.clone());
    let pipe = if todo.is_empty() {
        None
    } else {
        let t = Instant::now();
        let pipe = Pipeline::load(&run.files, cfg.dtype.mlx())?;
        on_event(CalibrateEvent::ModelLoaded {
            seconds: t.elapsed().as_secs_f64(),
        });
        Some(pipe)
    };
    let mut committed = 0;
    // Rounds of one image per rank: the ranks report progress to each other after each.
    for round in 0..cfg.num_images.div_ceil(shard.size) {
        let image = round * shard.size + shard.rank;
        if cancel.is_cancelled() {
            summary.cancelled = true;
            // A rank that stops leaves the group: the others fail at their next collective.
            summary.seconds = started.elapsed().as_secs_f64();
            return Ok(summary);
        }
        if let Some(pipe) = &pipe
            && image < cfg.num_images
            && !part.images.contains_key(&image)
        {
            let t_image = Instant::now();
            let captured = match capture_image(pipe, &run, image, cancel, on_event)? {
                CaptureOutcome::Done(c) => c,
                CaptureOutcome::Cancelled => {
                    summary.cancelled = true;
                    summary.seconds = started.elapsed().as_secs_f64();
                    return Ok(summary);
                }
            };
            part.images.insert(image, captured.sample_files.clone());
            write_part(&part_path, &part)?;
            summary.n_completed = part.images.len();
            let seconds = t_image.elapsed().as_secs_f64();
            on_event(summary.add_image(image, &captured, seconds, part.left()));
            committed += 1;
            crate::dist::group::test_fault_point(shard.rank, committed);
        }
        if let Some(g) = dist.group {
            let done = g
                .count("the progress count", part.images.len())
                .map_err(Box::new)?;
            on_event(CalibrateEvent::JobProgress {
                done,
                total: cfg.num_images,
                ranks: g.size(),
            });
        }
    }
    if let Some(g) = dist.group
        && let Some(parts) = crate::dist::gather_json(g, "the merge of the image records", &part)
            .map_err(Box::new)?
    {
        for (rank, part) in parts.iter().enumerate() {
            let sender = Shard {
                rank,
                size: shard.size,
            };
            check_part(part, sender).map_err(|problem| CalibrateError::BadPart {
                path: PathBuf::from(format!("rank {rank}'s record")),
                problem,
            })?;
        }
        // Every rank has sent its record, so none writes any more: the temporary files
        // killed parts left can go.
        crate::fsutil::remove_temporary_files(dir, 2).map_err(|(path, e)| io_err(&path)(e))?;
        let merged = merge_parts(dir, parts)?;
        summary.n_completed = merged.n_completed;
        summary.num_images = merged.num_images;
        summary.collect_note = merged.note();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedCalibration {
    pub n_completed: usize,
    pub num_images: usize,
    /// Files the manifest lists that are not in the folder (other machines' parts, to copy).
    pub missing_files: usize,
}

impl MergedCalibration {
    /// What a person should know about the merged folder.
    pub fn note(&self) -> Option<String> {
        (self.missing_files > 0).then(|| {
            format!(
                "{} files the manifest lists are on the other machines: copy their samples/ and images/ here (e.g. rsync -a HOST:DIR/ DIR/)",
                self.missing_files
            )
        })
    }
}

/// Writes the manifest of a whole run from the parts' records (by rank): the images from 0 on
/// that every part finished, with their files in image order.
pub fn merge_parts(
    dir: &Path,
    parts: Vec<PartRecord>,
) -> Result<MergedCalibration, CalibrateError> {
    let Some(first) = parts.first() else {
        return Err(CalibrateError::BadPart {
            path: dir.to_owned(),
            problem: "no parts to merge".into(),
        });
    };
    let settings = first.settings.clone();
    let mut images: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (rank, part) in parts.into_iter().enumerate() {
        let d = setting_differences(&settings, &part.settings);
        if !d.is_empty() {
            return Err(CalibrateError::PartsDiffer {
                rank,
                differences: d.join("; "),
            });
        }
        images.extend(part.images);
    }
    let num_images = settings.prompts.len();
    let n_completed = (0..num_images)
        .find(|i| !images.contains_key(i))
        .unwrap_or(num_images);
    let files: Vec<String> = images
        .range(..n_completed)
        .flat_map(|(_, f)| f.iter().cloned())
        .collect();
    let missing_files = files
        .iter()
        .cloned()
        .chain((0..n_completed).map(super::image_file_name))
        .filter(|f| !dir.join(f).is_file())
        .count();
    // A manifest of this run (or of no run) keeps its other keys, as a whole run's would.
    let manifest = match Manifest::read(dir)? {
        Some(m) => match GenerationSettings::from_manifest(&m) {
            Some(Ok(previous)) if !setting_differences(&previous, &settings).is_empty() => {
                Manifest::default()
            }
            _ => m,
        },
        None => Manifest::default(),
    };
    let mut plan = ResumePlan {
        start: 0,
        manifest,
        sample_files: files,
    };
    plan.record(dir, &settings, n_completed)?;
    Ok(MergedCalibration {
        n_completed,
        num_images,
        missing_files,
    })
}

/// `sd3lab merge` for calibration: the finished parts in `dir`'s `shard-R-of-N` folders (all N
/// of one split) merged into `dir/manifest.json`.
pub fn merge_part_folders(dir: &Path) -> Result<MergedCalibration, CalibrateError> {
    let paths = crate::dist::shard::find_parts(dir, PART_FILE).map_err(Box::new)?;
    let size = paths.len();
    let mut parts = Vec::new();
    for (rank, path) in paths.iter().enumerate() {
        let part = read_part(path, Shard { rank, size })?
            .ok_or_else(|| io_err(path)(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        let left = part.left();
        if left > 0 {
            return Err(CalibrateError::PartUnfinished {
                dir: dir.to_owned(),
                rank,
                left,
            });
        }
        parts.push(part);
    }
    crate::dist::shard::check_parts_idle(dir)?;
    let _lock = FolderLock::acquire(dir)?;
    crate::fsutil::remove_temporary_files(dir, 2).map_err(|(path, e)| io_err(&path)(e))?;
    merge_parts(dir, parts)
}

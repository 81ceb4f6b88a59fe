//! The `samples` listing as one serialisable document (schema `sd3lab.samples/1`, documented in
//! docs/FORMATS.md), shared by `sd3lab samples --json` and anything else that exports an index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CalibrationSet, SampleFilter, SampleKey, SampleMeta, Summary, TensorInfo};

/// Schema identifier written into every listing.
pub const SCHEMA: &str = "sd3lab.samples/1";

#[derive(Debug, Serialize)]
pub struct ManifestFacts {
    pub n_completed: Option<u64>,
    pub num_steps: Option<u64>,
    pub has_sample_files: bool,
}

#[derive(Debug, Serialize)]
pub struct ProblemEntry {
    pub file: Option<PathBuf>,
    pub message: String,
}

/// A selection of a calibration set, ready to serialise.
#[derive(Debug, Serialize)]
pub struct Listing<'a> {
    pub schema: &'static str,
    pub calib_dir: &'a Path,
    pub manifest: Option<ManifestFacts>,
    pub num_images: usize,
    pub num_steps: usize,
    pub total_samples: usize,
    pub tensors: &'a BTreeMap<SampleKey, TensorInfo>,
    pub filter: &'a SampleFilter,
    pub summary: Summary,
    pub samples: &'a [&'a SampleMeta],
    pub problems: Vec<ProblemEntry>,
}

impl<'a> Listing<'a> {
    pub fn new(
        set: &'a CalibrationSet,
        filter: &'a SampleFilter,
        selected: &'a [&'a SampleMeta],
    ) -> Self {
        Self {
            schema: SCHEMA,
            calib_dir: set.dir(),
            manifest: set.manifest().map(|m| ManifestFacts {
                n_completed: m.n_completed,
                num_steps: m.num_steps,
                has_sample_files: m.sample_files.is_some(),
            }),
            num_images: set.num_images(),
            num_steps: set.num_steps(),
            total_samples: set.samples().len(),
            tensors: set.reference_tensors(),
            filter,
            summary: CalibrationSet::summarize(selected),
            samples: selected,
            problems: set
                .problems()
                .iter()
                .map(|p| ProblemEntry {
                    file: p.file.clone(),
                    message: p.to_string(),
                })
                .collect(),
        }
    }
}

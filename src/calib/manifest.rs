//! `manifest.json` of a calibration directory: the seed's keys, typed, plus every other key
//! kept as it was (and written back) so that tools sharing the file lose nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CalibError;

/// The most denoising steps a run may take (`sd3lab calibrate` refuses more); a manifest
/// saying more is damaged. SD3 uses 28–50 steps and the benchmark 100; a schedule of millions
/// of steps allocates gigabytes of per-step arrays before the first step runs.
pub const MAX_NUM_STEPS: usize = 10_000;

/// File name of the manifest inside a calibration directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Images whose every step has been written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_completed: Option<u64>,
    /// Denoising steps per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_steps: Option<u64>,
    /// Sample files relative to the directory, image-major.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_files: Option<Vec<String>>,
    /// Every other key, preserved in order.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Reads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, CalibError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CalibError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CalibError::Manifest {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes `dir/manifest.json` atomically (temporary file + rename).
    pub fn write(&self, dir: &Path) -> Result<(), CalibError> {
        let path = Self::path(dir);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| CalibError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        crate::fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|source| CalibError::Io { path, source })
    }
}

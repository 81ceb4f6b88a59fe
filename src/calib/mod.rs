//! Calibration data: the seed project's layout (`manifest.json`, `samples/*.npz`, `images/`),
//! read and written exactly, and indexed without touching the ML runtime.
//!
//! - [`npy`] / [`npz`]: the NumPy file formats (own parser over the `zip` crate).
//! - [`sample`]: one sample file: key aliases, step buckets, metadata.
//! - [`manifest`]: `manifest.json`, typed keys plus preserved unknown ones, atomic writes.
//! - [`CalibrationSet`]: a whole directory: file discovery, image/step assignment, checks,
//!   filters, and lazy loading of each tensor.

pub mod listing;
pub mod manifest;
pub mod npy;
pub mod npz;
pub mod prompts;
pub mod sample;
mod set;

use std::path::PathBuf;

pub use manifest::Manifest;
pub use npy::{DType, NpyArray, NpyData};
pub use sample::{Bucket, SampleKey, TensorInfo};
pub use set::{CalibrationSet, OpenOptions, Problem, SampleFilter, SampleMeta, Summary};

/// Errors of the calibration data layer; each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: no calibration samples found (looked for samples/*.npz, then *.npz)")]
    NoSamples { path: PathBuf },
    #[error(transparent)]
    Npz(#[from] npz::NpzError),
    #[error(transparent)]
    Sample(#[from] sample::SampleError),
    #[error("{count} problem(s) in {dir} (strict mode); first: {first}")]
    Strict {
        dir: PathBuf,
        count: usize,
        first: String,
    },
}

//! SD3 Lab: post-training quantization research on Stable Diffusion 3 medium with MLX.
//!
//! Every job is a library function with a typed configuration; the `sd3lab` binary (CLI) and
//! the desktop app (`app`) are thin shells over these modules. See `ARCHITECTURE.md`.

pub mod app;
pub mod bench;
pub mod calib;
pub mod calibrate;
pub mod demo;
pub mod dist;
pub mod download;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod job;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod text;

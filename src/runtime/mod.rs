//! The MLX runtime as SD3 Lab uses it: which MLX library and backend were linked, which CPU
//! BLAS kernels run the GEMMs (and choosing fast ones safely on Linux), and `doctor`, the
//! self-check that proves all of it on the user's machine.

pub mod blas;
pub mod doctor;
pub mod mlx_info;

pub use doctor::{DoctorOptions, DoctorReport, run_doctor};

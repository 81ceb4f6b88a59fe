//! Raw bindings to mlx-c 0.7.0, built against the official prebuilt MLX 0.32.2 library.
//!
//! This crate stands in for the crates.io `mlx-sys` 0.7.0 (through `[patch.crates-io]`), so the
//! unmodified `mlx-rs` 0.33 builds on Linux as well as on macOS. See `build.rs` for how the
//! native parts are found and compiled, and the project's `ARCHITECTURE.md` for the build chain.
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

// mlx-c only defines `float16_t`/`bfloat16_t` on Arm. Elsewhere the forced compatibility header
// (`compat/mlx_compat.h`) declares them as 16-bit storage types, and the Rust side gets the
// shapes mlx-rs expects from the Arm build: `float16_t(u16)` and `bfloat16_t = u16`.
#[cfg(not(target_arch = "aarch64"))]
#[repr(transparent)]
#[derive(Debug, Default, Copy, Clone, PartialEq, Eq, Hash)]
pub struct float16_t(pub u16);

#[cfg(not(target_arch = "aarch64"))]
pub type bfloat16_t = u16;

/// The MLX version this crate was built against (from the wheel's CMake package).
pub const MLX_VERSION: &str = env!("MLX_SYS_MLX_VERSION");
/// Which prebuilt MLX flavour was linked: `cpu`, `metal`, `cuda12` or `cuda13`.
pub const MLX_BACKEND: &str = env!("MLX_SYS_BACKEND");
/// The folder holding the `libmlx` that the build linked (and the binary's rpath points at).
pub const MLX_LIB_DIR: &str = env!("MLX_SYS_LIB_DIR");
/// Whether Debian's OpenBLAS was linked ahead of the wheel's reference BLAS.
pub const OPENBLAS_LINKED: bool = cfg!(mlx_sys_openblas);

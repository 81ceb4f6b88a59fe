//! Final-link settings that a dependency's build script cannot give (its `rustc-link-arg`
//! never reaches the binary), from what `crates/mlx-sys` publishes:
//! - an rpath to the folder of the `libmlx` it linked, so `sd3lab` runs without
//!   `LD_LIBRARY_PATH`/`DYLD_LIBRARY_PATH`;
//! - on Linux, Debian's OpenBLAS as a direct dependency (`--no-as-needed`), so MLX's CPU GEMM
//!   resolves to it instead of the wheel's reference BLAS (see `src/runtime/blas.rs`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DEP_MLX_OPENBLAS");
    let lib_dir = std::env::var("DEP_MLX_LIB_DIR").expect("mlx-sys publishes DEP_MLX_LIB_DIR");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if let Ok(openblas) = std::env::var("DEP_MLX_OPENBLAS") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg={openblas}");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

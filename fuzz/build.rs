//! The product's final-link settings (see ../build.rs) for the fuzz targets: an rpath to the
//! `libmlx` that `crates/mlx-sys` linked, and OpenBLAS as a direct dependency on Linux.

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

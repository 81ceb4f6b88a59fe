//! Builds mlx-c 0.7.0 (vendored, unmodified) against a prebuilt MLX 0.32.2 from the official
//! wheels, generates the Rust bindings, and tells dependents where `libmlx` lives.
//!
//! Where MLX comes from: `MLX_DIST_DIR` if set, else `<repo>/.deps/mlx-0.32.2-<backend>`, the
//! folder `scripts/setup.sh` unpacks the pinned, hash-checked wheel into. The backend is
//! `SD3LAB_MLX_BACKEND` (`cpu`, `cuda12`, `cuda13`, `metal`), by default `metal` on macOS and
//! `cpu` elsewhere.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const MLX_VERSION: &str = "0.32.2";

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    for var in ["MLX_DIST_DIR", "SD3LAB_MLX_BACKEND", "SD3LAB_NO_OPENBLAS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=compat");
    println!("cargo::rustc-check-cfg=cfg(mlx_sys_openblas)");

    let backend = env::var("SD3LAB_MLX_BACKEND")
        .unwrap_or_else(|_| if target_os == "macos" { "metal" } else { "cpu" }.to_owned());
    if !["cpu", "cuda12", "cuda13", "metal"].contains(&backend.as_str()) {
        panic!("SD3LAB_MLX_BACKEND={backend}: expected cpu, cuda12, cuda13 or metal");
    }
    let dist = env::var_os("MLX_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest
                .join("../../.deps")
                .join(format!("mlx-{MLX_VERSION}-{backend}"))
        });
    let dist = check_dist(&dist, &target_os);
    let lib_dir = dist.join("mlx/lib");
    println!("cargo:rerun-if-changed={}", lib_dir.display());

    let compat_header = manifest.join("compat/mlx_compat.h");
    let mlx_c_root = manifest.join("vendor/mlx-c");
    build_mlx_c(&mlx_c_root, &dist, &compat_header, &target_os);

    if target_os != "macos" {
        // mlx-rs seeds RandomState::new() with a macOS-only symbol.
        cc::Build::new()
            .file(manifest.join("compat/mach_time.c"))
            .compile("sd3lab_mach_time");
    }

    // OpenBLAS must be a direct dependency of the final binary: the dynamic linker then
    // searches it before libmlx's own dependencies (the wheel's reference BLAS), so libmlx's
    // cblas_* calls land in OpenBLAS. No Rust code calls it, and rustc links with
    // --as-needed, so the top-level build script adds it with --no-as-needed from the path
    // published here (DEP_MLX_OPENBLAS).
    if target_os == "linux" && backend == "cpu" && env::var_os("SD3LAB_NO_OPENBLAS").is_none() {
        let openblas = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        ]
        .iter()
        .map(Path::new)
        .find(|dir| dir.join("libopenblas.so.0").exists());
        match openblas {
            Some(dir) => {
                println!("cargo::metadata=openblas={}", dir.join("libopenblas.so.0").display());
                println!("cargo:rustc-cfg=mlx_sys_openblas");
            }
            None => println!(
                "cargo:warning=libopenblas.so.0 not found (Debian: apt-get install libopenblas0-pthread); \
                 MLX will use the wheel's reference BLAS, about 40x slower"
            ),
        }
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if target_os == "macos" {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }

    // A dependency's rustc-link-arg does not reach the final binary: publish the library
    // folder (DEP_MLX_LIB_DIR) so the top-level build script can set the rpath.
    println!("cargo::metadata=lib_dir={}", lib_dir.display());
    println!("cargo::metadata=backend={backend}");
    println!("cargo::metadata=version={MLX_VERSION}");
    println!("cargo:rustc-env=MLX_SYS_LIB_DIR={}", lib_dir.display());
    println!("cargo:rustc-env=MLX_SYS_BACKEND={backend}");
    println!("cargo:rustc-env=MLX_SYS_MLX_VERSION={MLX_VERSION}");

    generate_bindings(&mlx_c_root, &compat_header, &target_arch);
}

/// Checks that `dist` holds an unpacked MLX wheel of the pinned version; returns it canonical.
fn check_dist(dist: &Path, target_os: &str) -> PathBuf {
    let lib_name = if target_os == "macos" {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    };
    let lib = dist.join("mlx/lib").join(lib_name);
    if !lib.exists() {
        panic!(
            "\n\nMLX {MLX_VERSION} not found: {} does not exist.\n\
             Run `make setup` (or `scripts/setup.sh`) first: it fetches the pinned, hash-checked \
             MLX wheel into .deps/. Or point MLX_DIST_DIR at an unpacked wheel.\n\n",
            lib.display()
        );
    }
    let version_file = dist.join("mlx/share/cmake/MLX/MLXConfigVersion.cmake");
    let version_text = fs::read_to_string(&version_file).unwrap_or_default();
    if !version_text.contains(&format!("\"{MLX_VERSION}\"")) {
        panic!(
            "{} does not declare MLX {MLX_VERSION}: mlx-c 0.7.0 compiles only against MLX {MLX_VERSION} \
             (0.32.4 changed gather_qmm). Rerun `make setup`.",
            version_file.display()
        );
    }
    dist.canonicalize().expect("canonical MLX dist path")
}

fn build_mlx_c(mlx_c_root: &Path, dist: &Path, compat_header: &Path, target_os: &str) {
    let mut config = cmake::Config::new(mlx_c_root);
    config
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", dist.join("mlx/share/cmake/MLX"))
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        // mlx-c is a thin wrapper: a debug build buys nothing and costs start-up speed.
        .profile("Release")
        .cxxflag(format!("-include {}", compat_header.display()));
    if target_os == "macos" {
        config.define("CMAKE_OSX_DEPLOYMENT_TARGET", "14.0");
    }
    let dst = config.build();
    println!("cargo:rustc-link-search=native={}/lib", dst.display());
    println!("cargo:rustc-link-search=native={}/lib64", dst.display());
    println!("cargo:rustc-link-lib=static=mlxc");
}

fn generate_bindings(mlx_c_root: &Path, compat_header: &Path, target_arch: &str) {
    let header_dir = mlx_c_root.join("mlx/c");
    let mut headers: Vec<PathBuf> = fs::read_dir(&header_dir)
        .expect("vendored mlx-c headers")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("rust target"))
        .clang_arg(format!("-I{}", mlx_c_root.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    if target_arch != "aarch64" {
        // Declared by hand in src/lib.rs with the shapes mlx-rs expects.
        builder = builder
            .clang_arg(format!("-include{}", compat_header.display()))
            .blocklist_type("float16_t")
            .blocklist_type("bfloat16_t");
    }
    for header in &headers {
        println!("cargo:rerun-if-changed={}", header.display());
        builder = builder.header(header.to_string_lossy());
    }
    let bindings = builder
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen could not parse the mlx-c headers (is libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}

//! Facts about the MLX library this process runs on: version, backend, devices, and where the
//! shared library (and, on macOS, its `mlx.metallib`) was found.

use std::ffi::CStr;
use std::path::PathBuf;

/// MLX's own version string (`mlx_version()`), e.g. `0.32.2`.
pub fn mlx_version() -> String {
    // SAFETY: mlx_string_new returns an empty owned string; mlx_version fills it; we free it.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let rc = mlx_sys::mlx_version(&mut s);
        let out = if rc == 0 && !mlx_sys::mlx_string_data(s).is_null() {
            CStr::from_ptr(mlx_sys::mlx_string_data(s))
                .to_string_lossy()
                .into_owned()
        } else {
            String::from("unknown")
        };
        mlx_sys::mlx_string_free(s);
        out
    }
}

/// Whether MLX's Metal backend is usable in this process.
pub fn metal_available() -> bool {
    let mut ok = false;
    // SAFETY: writes one bool.
    let rc = unsafe { mlx_sys::mlx_metal_is_available(&mut ok) };
    rc == 0 && ok
}

/// Whether MLX's CUDA backend is usable in this process.
pub fn cuda_available() -> bool {
    let mut ok = false;
    // SAFETY: writes one bool.
    let rc = unsafe { mlx_sys::mlx_cuda_is_available(&mut ok) };
    rc == 0 && ok
}

/// Paths of the shared objects loaded in this process whose file name contains `needle`.
pub fn loaded_libraries(needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    #[cfg(target_os = "linux")]
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            if let Some(path) = line.split_whitespace().nth(5)
                && path.rsplit('/').next().is_some_and(|f| f.contains(needle))
            {
                let path = PathBuf::from(path);
                if !found.contains(&path) {
                    found.push(path);
                }
            }
        }
    }
    #[cfg(target_os = "macos")]
    {
        unsafe extern "C" {
            fn _dyld_image_count() -> u32;
            fn _dyld_get_image_name(index: u32) -> *const std::ffi::c_char;
        }
        // SAFETY: dyld's image list is valid for the life of the process.
        unsafe {
            for i in 0.._dyld_image_count() {
                let name = _dyld_get_image_name(i);
                if !name.is_null() {
                    let path = PathBuf::from(CStr::from_ptr(name).to_string_lossy().into_owned());
                    if path
                        .file_name()
                        .is_some_and(|f| f.to_string_lossy().contains(needle))
                    {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

/// The libmlx this process loaded.
pub fn libmlx_path() -> Option<PathBuf> {
    loaded_libraries("libmlx").into_iter().next()
}

/// `mlx.metallib` next to the loaded libmlx (where MLX looks for it first), if present.
pub fn metallib_path() -> Option<PathBuf> {
    let lib = libmlx_path().unwrap_or_else(|| PathBuf::from(mlx_sys::MLX_LIB_DIR).join("libmlx"));
    let candidate = lib.parent()?.join("mlx.metallib");
    candidate.exists().then_some(candidate)
}

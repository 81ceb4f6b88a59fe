//! The disk estimate and the free-space check a run makes before it writes anything.

use std::path::{Path, PathBuf};

use super::{CalibrateConfig, CalibrateError};
use crate::model::config::{ModelDtype, Sd3Config};

/// Bytes one image's sample files (headers included) and its PNG take, for the disk estimate.
pub fn estimate_bytes_per_image(cfg: &CalibrateConfig, model: &Sd3Config) -> u64 {
    let (h, w) = ((cfg.height / 8) as u64, (cfg.width / 8) as u64);
    let c = model.mmdit.latent_channels as u64;
    // bfloat16 is stored as float32 (NumPy has no bfloat16).
    let act = cfg.dtype.size().max(if cfg.dtype == ModelDtype::Bfloat16 {
        4
    } else {
        0
    }) as u64;
    let x = h * w * c * 4;
    let cond = 2 * 154 * model.mmdit.context_dim as u64 * act;
    let pooled = 2 * model.mmdit.pooled_dim as u64 * act;
    let per_sample = x + cond + pooled + 6 * (128 + 100) + 3 * 8 + 200;
    let png = (cfg.height * cfg.width * 3) as u64;
    if cfg.images_only {
        return png;
    }
    per_sample * cfg.num_steps as u64 + png
}

/// Free bytes on the file system holding `dir` (or its nearest existing parent); `None` where
/// it cannot be known.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
        if p.as_os_str().is_empty() {
            p = PathBuf::from(".");
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        // SAFETY: `statvfs` is a plain C struct of integers, for which all-zero bytes are a
        // valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs fills `st` for a valid NUL-terminated path.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Refuses a run whose estimate exceeds the free space (`free`, from [`free_bytes`]), unless
/// forced; an unknown free space never refuses.
pub fn check_disk(
    dir: &Path,
    estimate: u64,
    free: Option<u64>,
    force: bool,
) -> Result<(), CalibrateError> {
    match free {
        Some(available) if estimate > available && !force => Err(CalibrateError::Disk {
            dir: dir.to_owned(),
            needed: estimate,
            available,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_check_refuses_unless_forced() {
        let dir = Path::new("/data/calib");
        let err = check_disk(dir, 2_000, Some(1_000), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/data/calib")
                && err.contains("2000")
                && err.contains("1000")
                && !err.contains("--"),
            "{err}"
        );
        assert!(check_disk(dir, 2_000, Some(1_000), true).is_ok());
        assert!(check_disk(dir, 999, Some(1_000), false).is_ok());
        assert!(check_disk(dir, 999, None, false).is_ok());
        assert!(
            free_bytes(Path::new("/definitely/not/here/sub")).is_some_and(|b| b > 0),
            "falls back to an existing parent"
        );
    }

    #[test]
    fn the_estimate_grows_with_steps_and_size_and_stores_bfloat16_as_float32() {
        let model = crate::model::Preset::Tiny.config(None);
        let cfg = |steps: usize, size: usize, dtype: ModelDtype| CalibrateConfig {
            num_steps: steps,
            height: size,
            width: size,
            dtype,
            ..crate::calibrate::test_config("tiny", Path::new("c"))
        };
        let base = estimate_bytes_per_image(&cfg(4, 64, ModelDtype::Float32), &model);
        let png = 64 * 64 * 3;
        // Steps scale the sample part only; the PNG is written once per image.
        assert_eq!(
            estimate_bytes_per_image(&cfg(8, 64, ModelDtype::Float32), &model) - png,
            2 * (base - png)
        );
        assert!(estimate_bytes_per_image(&cfg(4, 128, ModelDtype::Float32), &model) > base);
        assert_eq!(
            estimate_bytes_per_image(&cfg(4, 64, ModelDtype::Bfloat16), &model),
            base
        );
        assert!(estimate_bytes_per_image(&cfg(4, 64, ModelDtype::Float16), &model) < base);
    }
}

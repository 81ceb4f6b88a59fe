//! Helpers shared by the integration tests: the project's Python test environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python with the test oracles (`.deps/venv`, made by `scripts/setup.sh`), or
/// `SD3LAB_TEST_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("SD3LAB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/python"))
}

/// Runs `tests/py/<script> args...`; panics with its stderr when it fails.
pub fn run_oracle(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (run scripts/setup.sh): {e}",
                python().display()
            )
        });
    assert!(
        out.status.success(),
        "oracle {script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a `.npy` file written by numpy.
pub fn read_npy(path: &Path) -> sd3lab::calib::NpyArray {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sd3lab::calib::npy::read_npy(&mut f, u64::MAX)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `sd3lab args…` with its own model cache and no Hugging Face cache (never the user's).
pub fn sd3lab_command(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd3lab"));
    c.args(args)
        .env("SD3LAB_CACHE_DIR", cache)
        .env("HF_HUB_CACHE", cache.join("no-hub"));
    c
}

/// A tiny model (seed 5) in `root/model` and its calibration data in `root/calib`
/// (`num_images` × `num_steps` at 64×64, float32): the model path and the folder.
pub fn tiny_model_and_calibration(
    root: &Path,
    num_images: usize,
    num_steps: usize,
) -> (String, PathBuf) {
    use sd3lab::calibrate::{CalibrateConfig, run_calibration};
    let model = root.join("model");
    sd3lab::model::source::write_model_dir(&model, &sd3lab::model::Preset::Tiny.config(None), 5)
        .unwrap();
    let calib = root.join("calib");
    let cfg = CalibrateConfig {
        model: model.display().to_string(),
        num_images,
        num_steps,
        cfg_weight: 5.0,
        calib_dir: calib.clone(),
        prompt_csv: None,
        seed: 0,
        height: 64,
        width: 64,
        dtype: sd3lab::model::config::ModelDtype::Float32,
        negative_prompt: String::new(),
        overwrite: false,
        force: false,
        images_only: false,
    };
    run_calibration(&cfg, &sd3lab::job::CancelToken::new(), &mut |_| {}).unwrap();
    (model.display().to_string(), calib)
}

/// The standard output of a command that must have succeeded (else: panics with its status
/// and standard error).
pub fn stdout_of_success(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

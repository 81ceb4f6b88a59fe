//! Helpers shared by the app's kittests (`tests/app_*.rs`): the harness, waiting for the
//! worker and helper threads, the tiny model as a folder, calibration sets and the sweep
//! fixture.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use sd3lab::app::{GuiOptions, SdApp};
use sd3lab::calibrate::{CalibrateConfig, run_calibration};
use sd3lab::job::CancelToken;
use sd3lab::model::config::ModelDtype;

/// The app in a window of `size` (width, height). Path links are clicked by the tests: no
/// file browser is started.
pub fn harness_sized(options: GuiOptions, size: [f32; 2]) -> Harness<'static, SdApp> {
    sd3lab::app::widgets::start_file_browsers(false);
    Harness::builder()
        .with_size(egui::vec2(size[0], size[1]))
        .build_eframe(move |cc| SdApp::new(cc, options))
}

/// The app in the default 1280×800 window.
pub fn harness(options: GuiOptions) -> Harness<'static, SdApp> {
    harness_sized(options, [1280.0, 800.0])
}

/// Steps the app until `done` holds (the worker and helper threads run meanwhile).
pub fn wait_until(
    h: &mut Harness<'static, SdApp>,
    what: &str,
    mut done: impl FnMut(&SdApp) -> bool,
) {
    let start = Instant::now();
    h.step(); // let the UI see the latest changes first
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
    h.step();
}

/// A small calibration run's configuration on the tiny model (64×64, cfg 5).
pub fn calib_config(dir: &Path, images: usize, steps: usize) -> CalibrateConfig {
    CalibrateConfig {
        model: tiny_model(),
        num_images: images,
        num_steps: steps,
        cfg_weight: 5.0,
        calib_dir: dir.to_owned(),
        prompt_csv: None,
        seed: 0,
        height: 64,
        width: 64,
        dtype: ModelDtype::Float32,
        negative_prompt: String::new(),
        overwrite: false,
        force: false,
        images_only: false,
    }
}

/// Writes a calibration set into `dir`.
pub fn calibration(dir: &Path, images: usize, steps: usize) {
    run_calibration(
        &calib_config(dir, images, steps),
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap();
}

/// The random tiny model's files (`model synth --preset tiny` with the seed the parity tests use), in a
/// folder the tests pass as the model: never the user's cache, and no environment changes
/// while other test threads run. The folder's path is the same in every checkout (the
/// Samples tab shows it, and a path of another length would move the snapshot's layout).
pub fn tiny_model() -> String {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use sd3lab::model::source::{ModelFiles, TINY_SEED, write_model_dir};
        let root = std::env::temp_dir();
        // Renamed when the random model's recipe changes (same length: the layout stays).
        let dir = root.join("sd3lab-app-gui-tiny-v4");
        if ModelFiles::in_dir(&dir, "tiny").is_err() {
            // Built beside it and renamed, so an interrupted run never leaves half a model.
            let tmp = tempfile::tempdir_in(&root).unwrap();
            write_model_dir(
                tmp.path(),
                &sd3lab::model::Preset::Tiny.config(None),
                TINY_SEED,
            )
            .unwrap();
            let staged = tmp.keep();
            if std::fs::rename(&staged, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&staged);
            }
        }
        dir
    })
    .display()
    .to_string()
}

/// The fixture sweep (`tests/fixtures/sensitivity-tiny.json`) as `<root>/sens/sensitivity.json`,
/// with its first `layers` layers (None: all).
pub fn sweep_fixture(root: &Path, layers: Option<usize>) -> PathBuf {
    let p = root.join("sens/sensitivity.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sensitivity-tiny.json"),
    )
    .unwrap();
    match layers {
        None => std::fs::write(&p, text).unwrap(),
        Some(n) => {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["layers"].as_array_mut().unwrap().truncate(n);
            std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        }
    }
    p
}

/// Synthetic Inception weights (the suite's, as `sd3lab metrics weights --synthetic` writes
/// them) at `<root>/inception.safetensors`.
pub fn synthetic_inception(root: &Path) -> PathBuf {
    let out = root.join("inception.safetensors");
    if !out.is_file() {
        let stats = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/metrics/inception_bn_stats.npz");
        sd3lab::metrics::inception::synthetic_weights(20240611, &stats, &out).unwrap();
    }
    out
}

/// The benchmark settings of the fixture run: `images` tiny 64×64 images of 2 steps per
/// configuration, against the reference set `reference`, into `out`.
pub fn bench_config(
    reference: &Path,
    out: &Path,
    configurations: &[&str],
    images: usize,
) -> sd3lab::bench::BenchConfig {
    sd3lab::bench::BenchConfig {
        configurations: configurations.iter().map(|s| s.to_string()).collect(),
        num_images: images,
        num_steps: 2,
        cfg_weight: 5.0,
        output_dir: out.to_owned(),
        reference_dir: Some(reference.to_owned()),
        skip_metrics: false,
        model: tiny_model(),
        height: 64,
        width: 64,
        dtype: ModelDtype::Float32,
        warmup: 0,
        seed: 0,
        prompt_csv: None,
        negative_prompt: String::new(),
        group_size: 64,
        overwrite: false,
        allow_mismatch: false,
        inception_weights: Some(synthetic_inception(out.parent().unwrap())),
        kid_subset_size: None,
    }
}

/// A reference set: `calibrate --images-only` of `images` tiny images (2 steps) into `dir`.
pub fn reference_set(dir: &Path, images: usize) {
    let mut cfg = calib_config(dir, images, 2);
    cfg.images_only = true;
    run_calibration(&cfg, &CancelToken::new(), &mut |_| {}).unwrap();
}

/// A finished benchmark of fp32, w8 and w4 (named fp32, w8g64, w4g64; 4 images each, with metrics) at
/// `<root>/bench`, against the reference `<root>/reference`: fp32's images equal their
/// reference twins, the quantized ones differ.
pub fn benchmark_fixture(root: &Path) -> PathBuf {
    let reference = root.join("reference");
    reference_set(&reference, 4);
    let out = root.join("bench");
    sd3lab::bench::run_benchmark(
        &bench_config(&reference, &out, &["fp32", "w8", "w4"], 4),
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap();
    out
}

//! The calibration generator: the seed layout read back by SD3 Lab and numpy, recorded inputs
//! that are exactly what the denoiser received, resume after SIGKILL giving the same files as an
//! uninterrupted run, cancellation, and refusals.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sd3lab::calib::{CalibrationSet, NpyData, OpenOptions, SampleKey};
use sd3lab::calibrate::{
    CalibrateConfig, CalibrateEvent, estimate_bytes_per_image, run_calibration,
};
use sd3lab::job::CancelToken;
use sd3lab::model::config::ModelDtype;

fn config(dir: &Path, images: usize, steps: usize, size: usize) -> CalibrateConfig {
    CalibrateConfig {
        model: "tiny".into(),
        num_images: images,
        num_steps: steps,
        cfg_weight: 7.5,
        calib_dir: dir.to_owned(),
        prompt_csv: None,
        seed: 10,
        height: size,
        width: size,
        dtype: ModelDtype::Float32,
        negative_prompt: String::new(),
        overwrite: false,
        force: false,
        images_only: false,
    }
}

fn cli(cache: &Path, args: &[&str]) -> Command {
    common::sd3lab_command(cache, args)
}

/// One sample's arrays: (key, shape, values).
type SampleArrays = Vec<(SampleKey, Vec<usize>, Vec<f32>)>;

/// Every sample's arrays, for value-for-value comparisons.
fn contents(dir: &Path) -> Vec<(String, SampleArrays)> {
    let set = CalibrationSet::open(
        dir,
        &OpenOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    set.samples()
        .iter()
        .map(|s| {
            let arrays = SampleKey::ALL
                .iter()
                .map(|&k| {
                    let a = set.load(s, k).unwrap();
                    (k, a.shape.clone(), a.data.to_f32_vec())
                })
                .collect();
            (s.file.clone(), arrays)
        })
        .collect()
}

#[test]
fn writes_the_seed_layout_that_sd3lab_and_numpy_read() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("calib");
    let out = cli(
        cache.path(),
        &[
            "calibrate",
            "--model",
            "tiny",
            "--num-images",
            "3",
            "--num-steps",
            "8",
            "--height",
            "128",
            "--width",
            "128",
            "--seed",
            "10",
            "--calib-dir",
            dir.to_str().unwrap(),
            "--json",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("all_prompts.csv does not exist"),
        "says the shipped prompts are used: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["n_completed"], 3);

    let set = CalibrationSet::open(
        &dir,
        &OpenOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (set.num_images(), set.num_steps(), set.samples().len()),
        (3, 8, 24)
    );
    assert!(set.problems().is_empty());
    for i in 0..3 {
        assert!(set.image_png(i).is_some(), "image {i}");
    }
    // Step 0 receives the initial noise itself (sigma 1): numpy's randn for seed 10 + image.
    let s0 = set
        .samples()
        .iter()
        .find(|s| s.image == 2 && s.step == 0)
        .unwrap();
    let x = set.load(s0, SampleKey::X).unwrap();
    let mut noise = sd3lab::rng::NumpyRandomState::new(12).randn(16 * 16 * 16);
    // NCHW draw, NHWC storage.
    let nhwc: Vec<f32> = (0..16 * 16 * 16)
        .map(|k| {
            let (h, w, c) = (k / (16 * 16), (k / 16) % 16, k % 16);
            noise[c * 256 + h * 16 + w] as f32
        })
        .collect();
    noise.clear();
    assert!(
        x.data == NpyData::Float32(nhwc),
        "step 0 of image 2 must hold numpy's randn for seed 12, NCHW→NHWC"
    );
    let t = set
        .load(s0, SampleKey::Timestep)
        .unwrap()
        .first_f64()
        .unwrap();
    assert_eq!((t, s0.sigma), (1000.0, 1.0));
    let last = set
        .samples()
        .iter()
        .find(|s| s.image == 0 && s.step == 7)
        .unwrap();
    assert!(
        last.sigma > 0.0 && last.sigma < 0.1 && (last.timestep - last.sigma * 1000.0).abs() < 1e-3
    );

    let listing = cli(
        cache.path(),
        &["samples", "--calib-dir", dir.to_str().unwrap(), "--json"],
    )
    .output()
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(doc["total_samples"], 24);

    // Refusals write nothing; the CLI names the flag that overrides them (the library's message
    // names none).
    let refused = |extra: &[&str]| {
        let mut a = vec![
            "calibrate",
            "--model",
            "tiny",
            "--num-steps",
            "5",
            "--height",
            "128",
            "--width",
            "128",
            "--calib-dir",
            dir.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        let o = cli(cache.path(), &a).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = refused(&["--num-images", "3"]);
    assert!(
        err.contains("num_steps: 8 → 5") && err.contains("; pass --overwrite to start over"),
        "{err}"
    );
    let err = refused(&["--num-images", "0"]);
    assert!(
        err.contains("0 is out of range: 1 to 100000 images"),
        "{err}"
    );
    // `auto` without sd3-medium in the (empty) Hugging Face cache: the run's model event is
    // printed as a warning with the CLI's hint, before the refusal.
    let o = cli(
        cache.path(),
        &[
            "calibrate",
            "--model",
            "auto",
            "--num-images",
            "3",
            "--calib-dir",
            dir.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(
            "warning: sd3-medium is not in the Hugging Face cache: using the built-in tiny demo model"
        ) && err.contains("Pass --model sd3-medium or --model DIR for the real model")
            && err.contains("pass --overwrite to start over"),
        "{err}"
    );

    let np: serde_json::Value =
        serde_json::from_str(&common::run_oracle("calib_check.py", &[dir.as_os_str()])).unwrap();
    assert_eq!(np["n_completed"], 3);
    assert_eq!(np["files"].as_array().unwrap().len(), 24);
    let f = &np["files"][9];
    assert_eq!(
        f["keys"],
        serde_json::json!([
            "conditioning",
            "pooled_conditioning",
            "sigma",
            "step_index",
            "timestep",
            "x"
        ])
    );
    assert_eq!(f["x"], serde_json::json!([[1, 16, 16, 16], "float32"]));
    assert_eq!(
        f["conditioning"],
        serde_json::json!([[2, 154, 4096], "float32"])
    );
    assert_eq!(f["pooled"], serde_json::json!([[2, 80], "float32"]));
    assert_eq!(f["step_index"], 1);
    assert_eq!(
        np["images"],
        serde_json::json!(["000000.png", "000001.png", "000002.png"])
    );
    assert_eq!(np["generation"]["seeds"], serde_json::json!([10, 11, 12]));
    assert_eq!(np["generation"]["prompts"].as_array().unwrap().len(), 3);

    // The estimate is close to what was written.
    let written: u64 = set.samples().iter().map(|s| s.file_size).sum::<u64>()
        + (0..3)
            .map(|i| std::fs::metadata(set.image_png(i).unwrap()).unwrap().len())
            .sum::<u64>();
    let mut cfg = config(&dir, 3, 8, 128);
    cfg.num_images = 3;
    let model = sd3lab::model::Preset::Tiny.config(None);
    let estimate = 3 * estimate_bytes_per_image(&cfg, &model);
    let ratio = estimate as f64 / written as f64;
    assert!(
        (0.95..1.10).contains(&ratio),
        "estimate {estimate} vs written {written}"
    );
}

#[test]
fn sigkill_mid_run_then_resume_gives_the_uninterrupted_result() {
    let cache = tempfile::tempdir().unwrap();
    let args = |dir: &Path| -> Vec<String> {
        [
            "calibrate",
            "--model",
            "tiny",
            "--num-images",
            "3",
            "--num-steps",
            "8",
            "--height",
            "192",
            "--width",
            "192",
            "--calib-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect()
    };
    // Warm the tiny model cache first so the runs only generate.
    let reference = cache.path().join("reference");
    let a: Vec<String> = args(&reference);
    let st = cli(
        cache.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let victim = cache.path().join("victim");
    let a = args(&victim);
    let mut child = cli(
        cache.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Kill once image 1 has started (its first step file exists) and before it is finished.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if victim.join("samples/000001_002.npz").exists() {
            break;
        }
        assert!(Instant::now() < deadline, "the run never reached image 1");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(victim.join("manifest.json")).unwrap())
            .unwrap();
    assert!(
        manifest["n_completed"].as_u64().unwrap() < 3,
        "killed mid-run"
    );

    let rerun = cli(
        cache.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("resuming at image"));

    assert_eq!(contents(&victim), contents(&reference), "value for value");
    let listing = |d: &Path| {
        let mut v: Vec<String> = walk(d)
            .into_iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listing(&victim),
        listing(&reference),
        "file for file (no leftovers)"
    );
    for i in 0..3 {
        let png = format!("images/{i:06}.png");
        assert_eq!(
            std::fs::read(victim.join(&png)).unwrap(),
            std::fs::read(reference.join(&png)).unwrap()
        );
    }
    let m1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(victim.join("manifest.json")).unwrap())
            .unwrap();
    let m2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m1, m2);
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn cancel_discards_the_current_image_and_resume_completes() {
    let cache = tempfile::tempdir().unwrap();
    // A model directory of its own (no shared cache, no environment changes).
    let model = cache.path().join("model");
    sd3lab::model::source::write_model_dir(&model, &sd3lab::model::Preset::Tiny.config(None), 3)
        .unwrap();
    let dir = cache.path().join("c");
    let mut cfg = config(&dir, 3, 4, 64);
    cfg.model = model.display().to_string();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let mut events = Vec::new();
    let summary = run_calibration(&cfg, &cancel, &mut |e| {
        if let CalibrateEvent::Step {
            image: 1, step: 2, ..
        } = e
        {
            c2.cancel();
        }
        events.push(format!("{e:?}"));
    })
    .unwrap();
    assert!(summary.cancelled);
    assert_eq!(summary.n_completed, 1);
    let files: Vec<_> = walk(&dir.join("samples"));
    assert_eq!(files.len(), 4, "only image 0's steps remain: {files:?}");
    let summary = run_calibration(&cfg, &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(
        (
            summary.n_completed,
            summary.images_written,
            summary.cancelled
        ),
        (3, 2, false)
    );
    assert!(events.iter().any(|e| e.starts_with("Planned")));

    // Different settings are refused with what differs (the library names no CLI flag; the
    // CLI's hint is checked in `writes_the_seed_layout_that_sd3lab_and_numpy_read`);
    // `overwrite` starts over.
    let mut other = cfg.clone();
    other.num_steps = 5;
    other.cfg_weight = 4.0;
    let err = run_calibration(&other, &CancelToken::new(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("num_steps: 4 → 5")
            && err.contains("cfg_weight: 7.5 → 4")
            && !err.contains("--"),
        "{err}"
    );
    other.overwrite = true;
    other.num_images = 1;
    let s = run_calibration(&other, &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(s.n_completed, 1);
    assert_eq!(walk(&dir.join("samples")).len(), 5);

    // A directory of someone else's samples is not overwritten silently.
    let foreign = cache.path().join("foreign");
    std::fs::create_dir_all(foreign.join("samples")).unwrap();
    std::fs::write(foreign.join("samples/x.npz"), b"x").unwrap();
    let err = run_calibration(
        &config(&foreign, 1, 2, 64),
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}

/// `calibrate` on the tiny model, 64², with `extra` arguments; its output.
fn calibrate_cli(cache: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    let d = dir.display().to_string();
    let mut args = vec![
        "calibrate",
        "--model",
        "tiny",
        "--height",
        "64",
        "--width",
        "64",
        "--calib-dir",
        &d,
    ];
    args.extend_from_slice(extra);
    cli(cache, &args).output().unwrap()
}

#[test]
fn numeric_options_are_bounded_as_users_write_them() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("calib");
    let refused = |command: &str, extra: &[&str], needle: &str| {
        let mut args = vec![command, "--model", "tiny"];
        if command == "generate" {
            args.extend(["--prompt", "a cat", "--output", "x.png"]);
        }
        if command == "benchmark" {
            args.extend(["--config", "fp32", "--skip-metrics"]);
        }
        if command == "calibrate" {
            args.extend(["--calib-dir", dir.to_str().unwrap()]);
        }
        if !extra.contains(&"--num-images") && command == "calibrate" {
            args.extend(["--num-images", "1"]);
        }
        args.extend_from_slice(extra);
        let t = Instant::now();
        let o = cli(cache.path(), &args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{command} {extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{command} {extra:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("unexpected argument"),
            "{stderr}"
        );
        // Refused while parsing: no model loaded, no schedule allocated.
        assert!(t.elapsed() < Duration::from_secs(5), "{command} {extra:?}");
    };
    for command in ["calibrate", "generate", "benchmark"] {
        refused(
            command,
            &["--num-steps", "4294967296"],
            "4294967296 is out of range: 1 to 10000 steps",
        );
        refused(
            command,
            &["--num-steps", "2000000"],
            "2000000 is out of range: 1 to 10000 steps",
        );
        refused(
            command,
            &["--seed", "-1"],
            "-1 is out of range: seeds are 0 to 4294967295",
        );
        refused(
            command,
            &["--seed", "4294967296"],
            "4294967296 is out of range: seeds are 0",
        );
    }
    for command in ["calibrate", "benchmark"] {
        refused(
            command,
            &["--num-images", "100000000"],
            "100000000 is out of range: 1 to 100000 images",
        );
    }
    // Image i uses seed + i: the last seed must fit (the library says so, the app included).
    refused(
        "calibrate",
        &["--seed", "4294967295", "--num-images", "2"],
        "needs seeds up to 4294967296",
    );
    assert!(!dir.join("samples").exists(), "nothing written");
}

#[test]
fn a_prompt_csv_that_is_a_folder_or_fifo_says_what_it_is() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("calib");
    let folder = cache.path().display().to_string();
    let o = calibrate_cli(
        cache.path(),
        &dir,
        &["--num-images", "1", "--prompt-csv", &folder],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("is a folder, not a prompt file") && !stderr.contains("does not exist"),
        "{stderr}"
    );
    let fifo = cache.path().join("prompts.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = calibrate_cli(
        cache.path(),
        &dir,
        &["--num-images", "1", "--prompt-csv", fifo.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("is a FIFO (named pipe)"), "{stderr}");
}

/// Runs `cmd` and returns its output and its peak resident set in bytes (wait4's rusage).
// The child is reaped by wait4 (which `Child::wait` cannot do with its rusage).
#[allow(clippy::zombie_processes)]
fn output_and_peak_rss(mut cmd: Command) -> (std::process::ExitStatus, u64) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain integers; wait4 on our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    use std::os::unix::process::ExitStatusExt;
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64 * 1024,
    )
}

#[test]
fn a_ten_megabyte_prompt_costs_kilobytes_not_gigabytes() {
    let cache = tempfile::tempdir().unwrap();
    let csv = cache.path().join("big.csv");
    // One 10 MB piece without whitespace: the tokenizer's slowest and hungriest input (1.3 GB
    // and half a minute when it reached the tokenizer whole).
    std::fs::write(&csv, format!("prompt\n{}\n", "!".repeat(10_000_000))).unwrap();
    let dir = cache.path().join("calib");
    let d = dir.display().to_string();
    let args = [
        "calibrate",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--height",
        "64",
        "--width",
        "64",
        "--num-images",
        "2",
        "--num-steps",
        "1",
        "--images-only",
        "--calib-dir",
        &d,
        "--prompt-csv",
        csv.to_str().unwrap(),
    ];
    let (status, rss) = output_and_peak_rss(cli(cache.path(), &args));
    assert!(status.success());
    assert!(rss < 600 << 20, "peak RSS {} MB", rss >> 20);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    // The prompt used (and recorded) is the cut one.
    let prompt = m["generation"]["prompts"][0].as_str().unwrap();
    assert_eq!(prompt.len(), sd3lab::calib::prompts::MAX_PROMPT_CHARS);
}

#[test]
fn non_finite_latents_are_warned_and_found_by_check_values() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("calib");
    // float16 with a huge CFG weight overflows on the tiny model.
    let o = calibrate_cli(
        cache.path(),
        &dir,
        &[
            "--num-images",
            "1",
            "--num-steps",
            "3",
            "--dtype",
            "float16",
            "--cfg-weight",
            "100000",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: image 0: the latent is not finite"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        summary["warnings"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    let d = dir.display().to_string();
    let o = cli(
        cache.path(),
        &["samples", "--calib-dir", &d, "--check-values", "--json"],
    )
    .output()
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = doc["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| {
            let m = p["message"].as_str().unwrap();
            m.contains("samples/000000_") && m.contains("'x' holds")
        }),
        "{doc}"
    );
    // The same settings in float32 stay finite: no warning.
    let o = cli(
        cache.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a cat",
            "--num-steps",
            "3",
            "--height",
            "64",
            "--width",
            "64",
            "--dtype",
            "float16",
            "--cfg-weight",
            "100000",
            "--output",
        ],
    )
    .arg(cache.path().join("g.png"))
    .arg("--json")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the latent is not finite"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1);
}

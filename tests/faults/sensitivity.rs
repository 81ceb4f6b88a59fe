//! Fault tests: sensitivity, plan and reports. One writer per output folder; SIGKILL at random
//! points followed by a rerun equal to an uninterrupted run byte for byte; a rerun with other
//! settings or over regenerated data refused, never mixed; non-finite samples refused; outputs
//! that are inputs refused; reports that fail write nothing.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// A small calibration folder (tiny model, 2 images × 3 steps, 64 px) made by the CLI.
fn calibrate(root: &Path, dir: &str, seed: u32, extra: &[&str]) -> PathBuf {
    let calib = root.join(dir);
    let out = cli(
        root,
        &[
            "calibrate",
            "--model",
            "tiny",
            "--num-images",
            "2",
            "--num-steps",
            "3",
            "--height",
            "64",
            "--width",
            "64",
            "--seed",
            &seed.to_string(),
            "--calib-dir",
            calib.to_str().unwrap(),
        ],
        extra,
    );
    ok(out);
    calib
}

fn cli(root: &Path, args: &[&str], extra: &[&str]) -> Output {
    common::sd3lab_command(&root.join("cache"), args)
        .args(extra)
        .current_dir(root)
        .output()
        .unwrap()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn failed(o: Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded but should not have: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `sensitivity` arguments over `calib` into `out`.
fn sweep_args<'a>(calib: &'a str, out: &'a str, bits: &'a str) -> Vec<&'a str> {
    vec![
        "sensitivity",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--bits",
        bits,
        "--calib-dir",
        calib,
        "--output-dir",
        out,
    ]
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_second_sensitivity_writer_is_refused_at_once_naming_the_folder_and_pid() {
    let root = tempfile::tempdir().unwrap();
    let calib = calibrate(root.path(), "cal", 0, &[]);
    let out = root.path().join("out");
    let (c, o) = (calib.to_str().unwrap(), out.to_str().unwrap());
    // A real concurrent writer: the first sweep holds the lock while it runs (every bit width,
    // so that it runs for seconds, long after the second has been refused).
    let all_bits = "2,3,4,5,6,8";
    let mut first = common::sd3lab_command(&root.path().join("cache"), &sweep_args(c, o, all_bits))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id().to_string();
    let lock = out.join(".sd3lab.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock).ok().as_deref() != Some(pid.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the first sweep never took the lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stderr = failed(cli(root.path(), &sweep_args(c, o, all_bits), &[]));
    // Refused at once: the first writer was still running (a lock that waited would have
    // returned only after it).
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first sweep had finished"
    );
    assert!(
        stderr.contains(&format!(
            "{o} is being written by another sd3lab process (pid {pid})"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loading"),
        "refused before any work: {stderr}"
    );
    assert!(first.wait().unwrap().success());

    // The library refuses too (the app's job), while this process holds the lock.
    let held = sd3lab::fsutil::FolderLock::acquire(&out).unwrap();
    let cfg = sd3lab::quant::sensitivity::SensitivityConfig {
        model: "tiny".into(),
        calib_dir: calib.clone(),
        bits: vec![2],
        group_size: 64,
        max_images: None,
        step_stride: None,
        layers: None,
        output_dir: out.clone(),
        use_cache: true,
        dtype: sd3lab::model::config::ModelDtype::Float32,
        scope: Default::default(),
        batch_size: 4,
        overwrite: false,
        probes: None,
        probe_seed: 0,
    };
    let e = sd3lab::quant::sensitivity::run_sensitivity(
        &cfg,
        &sd3lab::job::CancelToken::new(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            sd3lab::quant::sensitivity::SensitivityError::Lock(
                sd3lab::fsutil::LockError::Held { .. }
            )
        ),
        "{e:?}"
    );
    drop(held);
}

#[test]
fn an_output_folder_that_is_a_file_fails_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let calib = calibrate(root.path(), "cal", 0, &[]);
    let file = root.path().join("taken");
    std::fs::write(&file, b"mine").unwrap();
    let stderr = failed(cli(
        root.path(),
        &sweep_args(calib.to_str().unwrap(), file.to_str().unwrap(), "2"),
        &[],
    ));
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert!(!stderr.contains("loading"), "{stderr}");
    assert_eq!(read(&file), b"mine");
    // A sensitivity.json that is a folder: refused before the first layer too.
    let out = root.path().join("out");
    std::fs::create_dir_all(out.join("sensitivity.json")).unwrap();
    let stderr = failed(cli(
        root.path(),
        &sweep_args(calib.to_str().unwrap(), out.to_str().unwrap(), "2"),
        &[],
    ));
    assert!(stderr.contains("is a folder"), "{stderr}");
    assert!(!stderr.contains("loading"), "{stderr}");
}

/// A deterministic pseudo-random sequence in [0, 1) (the kill points are reproducible).
fn uniform(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(unix)]
#[test]
fn sigkill_at_random_points_then_rerun_equals_an_uninterrupted_sweep_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let calib = calibrate(root.path(), "cal", 0, &[]);
    let c = calib.to_str().unwrap();
    let reference = root.path().join("reference");
    let started = Instant::now();
    ok(cli(
        root.path(),
        &sweep_args(c, reference.to_str().unwrap(), "2,4"),
        &[],
    ));
    let full = started.elapsed().as_secs_f64();
    let expected_json = read(&reference.join("sensitivity.json"));
    let expected_csv = read(&reference.join("sensitivity.csv"));
    // A rerun over the finished sweep leaves it as it is, byte for byte (floats read back
    // exactly).
    ok(cli(
        root.path(),
        &sweep_args(c, reference.to_str().unwrap(), "2,4"),
        &[],
    ));
    assert!(read(&reference.join("sensitivity.json")) == expected_json);

    let mut seed = 17u64;
    let mut interrupted = 0;
    for round in 0..4 {
        let out = root.path().join(format!("killed-{round}"));
        let o = out.to_str().unwrap();
        // Up to two kills per round, anywhere in the run (model loading included).
        for _ in 0..2 {
            let delay = Duration::from_secs_f64(uniform(&mut seed) * full);
            let mut child =
                common::sd3lab_command(&root.path().join("cache"), &sweep_args(c, o, "2,4"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
            std::thread::sleep(delay);
            let killed = child.try_wait().unwrap().is_none();
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            if killed {
                interrupted += 1;
            }
            eprintln!("round {round}: killed after {delay:?} (still running: {killed})");
        }
        ok(cli(root.path(), &sweep_args(c, o, "2,4"), &[]));
        assert!(
            read(&out.join("sensitivity.json")) == expected_json,
            "round {round}: the resumed sensitivity.json differs from the uninterrupted one"
        );
        assert!(read(&out.join("sensitivity.csv")) == expected_csv);
        // What a killed write left behind is removed by the rerun.
        let temps: Vec<String> = listing(&out)
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(temps.is_empty(), "{temps:?}");
    }
    assert!(interrupted > 0, "no run was killed before it finished");
}

#[test]
fn other_settings_are_refused_with_their_differences_and_equal_ones_resume() {
    let root = tempfile::tempdir().unwrap();
    calibrate(root.path(), "cal", 0, &[]);
    let run = |calib: &str, bits: &str, extra: &[&str]| {
        cli(
            root.path(),
            &sweep_args(calib, "out", bits),
            &[&["--layers", "^final_layer"], extra].concat(),
        )
    };
    ok(run("cal", "2,4", &[]));
    let json = root.path().join("out/sensitivity.json");
    let first = read(&json);
    // The same run written otherwise: `./cal` is `cal`, `4,2,4` is `2,4`.
    let o = ok(run("./cal", "4,2,4", &[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("(2 layers already done)"), "{stderr}");
    assert!(
        stderr.contains("note: --bits 4,2,4 repeats a bit width: measuring 2,4 once each"),
        "{stderr}"
    );
    assert!(read(&json) == first);
    // Other settings: refused, with what differs, and the earlier run left as it was.
    let stderr = failed(run("cal", "2,8", &[]));
    assert!(
        stderr.contains("already holds a sensitivity run with different settings")
            && stderr.contains("bits: [2, 4] → [2, 8]")
            && stderr.contains("--overwrite"),
        "{stderr}"
    );
    let stderr = failed(run("cal", "2,4", &["--group-size", "32"]));
    assert!(stderr.contains("group size: 64 → 32"), "{stderr}");
    assert!(read(&json) == first);
    // --overwrite starts over.
    ok(run("cal", "2,8", &["--overwrite"]));
    let report = sd3lab::quant::sensitivity::read_report(&json).unwrap();
    assert_eq!(report.settings.bits, [2, 8]);
    // A file that is not a sensitivity report is not discarded silently.
    std::fs::write(&json, b"{\"not\": \"a report\"}").unwrap();
    let stderr = failed(run("cal", "2,8", &[]));
    assert!(stderr.contains("exists but cannot be resumed"), "{stderr}");
    assert_eq!(read(&json), b"{\"not\": \"a report\"}");
}

#[test]
fn duplicate_bit_widths_are_measured_once() {
    let root = tempfile::tempdir().unwrap();
    calibrate(root.path(), "cal", 0, &[]);
    let o = ok(cli(
        root.path(),
        &sweep_args("cal", "out", "2,2,2"),
        &["--layers", "^final_layer.linear"],
    ));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("measuring 2 once each"), "{stderr}");
    assert!(stderr.contains("× 1 bit widths"), "{stderr}");
    let report =
        sd3lab::quant::sensitivity::read_report(&root.path().join("out/sensitivity.json")).unwrap();
    assert_eq!(report.settings.bits, [2]);
    let layer = &report.layers[0];
    let all: Vec<_> = layer
        .results
        .iter()
        .filter(|r| r.bucket == sd3lab::calib::Bucket::All)
        .collect();
    assert_eq!(all.len(), 1, "{:?}", layer.results);
}

#[test]
fn a_resume_over_regenerated_calibration_data_is_refused_not_mixed() {
    let root = tempfile::tempdir().unwrap();
    calibrate(root.path(), "cal", 0, &[]);
    let layers = ["--layers", "^final_layer"];
    ok(cli(root.path(), &sweep_args("cal", "out", "2,4"), &layers));
    let json = root.path().join("out/sensitivity.json");
    let first = read(&json);
    // The same file names, new contents: another seed.
    calibrate(root.path(), "cal", 7, &["--overwrite"]);
    let stderr = failed(cli(root.path(), &sweep_args("cal", "out", "2,4"), &layers));
    assert!(
        stderr.contains("calibration data: generated again with other settings"),
        "{stderr}"
    );
    assert!(
        read(&json) == first,
        "the earlier results were kept as they were"
    );
    // Regenerated with the very same settings (same record, rewritten files).
    calibrate(root.path(), "cal", 0, &["--overwrite"]);
    let stderr = failed(cli(root.path(), &sweep_args("cal", "out", "2,4"), &layers));
    assert!(
        stderr.contains("sample file(s) rewritten since"),
        "{stderr}"
    );
    assert!(read(&json) == first);
    // Starting over measures the new data only.
    ok(cli(
        root.path(),
        &sweep_args("cal", "out", "2,4"),
        &[&layers[..], &["--overwrite"]].concat(),
    ));
    assert!(read(&json) != first);
}

/// Rewrites `x` of a sample file through `change` (with the project's npz writer).
fn rewrite_x(sample: &Path, change: &dyn Fn(&mut sd3lab::calib::NpyData)) {
    use sd3lab::calib::npz::{NpzReader, write_npz};
    let mut npz = NpzReader::open(sample).unwrap();
    let names: Vec<String> = npz.names();
    let mut arrays = Vec::new();
    for n in &names {
        let key = n.trim_end_matches(".npy").to_owned();
        let mut a = npz.read(n).unwrap();
        if key == "x" {
            change(&mut a.data);
        }
        arrays.push((key, a));
    }
    let refs: Vec<(&str, &sd3lab::calib::NpyArray)> =
        arrays.iter().map(|(k, a)| (k.as_str(), a)).collect();
    write_npz(sample, &refs, false).unwrap();
}

#[test]
fn non_finite_calibration_samples_are_refused_naming_the_file_and_key() {
    let root = tempfile::tempdir().unwrap();
    let calib = calibrate(root.path(), "cal", 0, &[]);
    let sample = calib.join("samples/000001_001.npz");
    // One NaN and one infinity.
    rewrite_x(&sample, &|data| match data {
        sd3lab::calib::NpyData::Float32(v) => {
            v[3] = f32::NAN;
            v[10] = f32::INFINITY;
        }
        sd3lab::calib::NpyData::Float16(v) => {
            v[3] = half::f16::NAN;
            v[10] = half::f16::INFINITY;
        }
        other => panic!("x is {:?}", other.dtype()),
    });
    let stderr = failed(cli(
        root.path(),
        &sweep_args("cal", "out", "2,4"),
        &["--layers", "^final_layer"],
    ));
    assert!(
        stderr.contains(
            "000001_001.npz: x holds 2 non-finite value(s) (NaN or infinity), first at index 3"
        ),
        "{stderr}"
    );
    // Nothing measured, so nothing written: no result with a null or a capped SQNR.
    assert!(!root.path().join("out/sensitivity.json").exists());

    // Finite inputs the float model overflows on (as float16 does with a huge CFG weight):
    // refused too, naming the sample, rather than measured against NaN.
    let calib = calibrate(root.path(), "cal-huge", 0, &[]);
    rewrite_x(&calib.join("samples/000000_002.npz"), &|data| match data {
        sd3lab::calib::NpyData::Float32(v) => v.iter_mut().for_each(|x| *x = 3e38),
        sd3lab::calib::NpyData::Float16(v) => v.iter_mut().for_each(|x| *x = half::f16::MAX),
        other => panic!("x is {:?}", other.dtype()),
    });
    let stderr = failed(cli(
        root.path(),
        &sweep_args("cal-huge", "out-huge", "2,4"),
        &["--layers", "^final_layer"],
    ));
    assert!(
        stderr.contains("000000_002.npz: the float model's output on this sample is not finite"),
        "{stderr}"
    );
    assert!(!root.path().join("out-huge/sensitivity.json").exists());
}

#[test]
fn plan_refuses_its_own_input_and_an_unfinished_sweep_unless_allowed() {
    use sd3lab::quant::sensitivity::{SensitivityConfig, SensitivityEvent, run_sensitivity};
    let root = tempfile::tempdir().unwrap();
    let calib = calibrate(root.path(), "cal", 0, &[]);
    let out = root.path().join("sweep");
    // The tiny model the CLI made in the test's cache, by path (so the library run does not
    // touch the user's cache, and the CLI's resume below names the same model).
    let models = root.path().join("cache/models");
    let model = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    let model_s = model.to_str().unwrap().to_owned();
    // A sweep cancelled after its fourth layer (as Ctrl-C or the app's Cancel leave it).
    let cancel = sd3lab::job::CancelToken::new();
    let mut done = 0;
    let cfg = SensitivityConfig {
        model: model_s.clone(),
        calib_dir: calib.clone(),
        bits: vec![2, 4],
        group_size: 64,
        max_images: None,
        step_stride: None,
        layers: None,
        output_dir: out.clone(),
        use_cache: true,
        dtype: sd3lab::model::config::ModelDtype::Float32,
        scope: Default::default(),
        batch_size: 4,
        overwrite: false,
        probes: None,
        probe_seed: 0,
    };
    let report = run_sensitivity(&cfg, &cancel, &mut |e| {
        if let SensitivityEvent::LayerDone { .. } = e {
            done += 1;
            if done == 4 {
                cancel.cancel();
            }
        }
    })
    .unwrap();
    assert_eq!(report.layers.len(), 4);
    let json = out.join("sensitivity.json");
    let json_s = json.to_str().unwrap();
    let plan = |output: &str, extra: &[&str]| {
        cli(
            root.path(),
            &[
                "plan",
                "--sensitivity",
                json_s,
                "--target-bits",
                "5",
                "--output",
                output,
            ],
            extra,
        )
    };
    let stderr = failed(plan("plan.json", &[]));
    assert!(
        stderr.contains("the sensitivity run did not finish: 28 layer(s) not measured (of 32): context_embedder, multimodal_transformer_blocks.0")
            && stderr.contains("--allow-incomplete"),
        "{stderr}"
    );
    assert!(!root.path().join("plan.json").exists());
    let o = ok(plan("plan.json", &["--allow-incomplete"]));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("warning:"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(root.path().join("plan.json").is_file());

    // Resumed to the end, the sweep plans without the flag.
    let mut args = sweep_args("cal", "sweep", "2,4");
    args[2] = &model_s;
    let o = ok(cli(root.path(), &args, &[]));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("(4 layers already done)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let before = read(&json);
    ok(plan("plan.json", &[]));
    // Its own input as the output, however it is spelt: refused before any work.
    for spelt in [
        json_s.to_owned(),
        "sweep/sensitivity.json".to_owned(),
        "./sweep/../sweep/sensitivity.json".to_owned(),
    ] {
        let stderr = failed(plan(&spelt, &[]));
        assert!(stderr.contains("is the plan's input"), "{spelt}: {stderr}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&json, root.path().join("link.json")).unwrap();
        let stderr = failed(plan("link.json", &[]));
        assert!(stderr.contains("is the plan's input"), "{stderr}");
    }
    // The Pareto front beside the plan is an output too: a sweep file named pareto.csv.
    std::fs::copy(&json, root.path().join("pareto.csv")).unwrap();
    let stderr = failed(cli(
        root.path(),
        &[
            "plan",
            "--sensitivity",
            "pareto.csv",
            "--target-bits",
            "5",
            "--output",
            "p.json",
        ],
        &[],
    ));
    assert!(stderr.contains("is the plan's input"), "{stderr}");
    assert!(read(&json) == before);
}

#[test]
fn a_sensitivity_report_that_fails_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    calibrate(root.path(), "cal", 0, &[]);
    ok(cli(
        root.path(),
        &sweep_args("cal", "sweep", "2,4"),
        &["--layers", "^final_layer|blocks.0.image"],
    ));
    std::fs::create_dir(root.path().join("reports")).unwrap();
    let report = |args: &[&str]| {
        cli(
            root.path(),
            &[&["report", "sensitivity"], args].concat(),
            &[],
        )
    };
    // A bit width the sweep did not measure (it used to panic halfway through writing).
    let stderr = failed(report(&[
        "sweep",
        "--bits",
        "8",
        "--output",
        "reports/r.md",
    ]));
    assert!(
        stderr.contains("--bits: the sensitivity run has no 8-bit results (it measured 2, 4)"),
        "{stderr}"
    );
    assert!(listing(&root.path().join("reports")).is_empty());
    let stderr = failed(report(&[
        "sweep",
        "--bits",
        "8",
        "--output",
        "reports/r.html",
    ]));
    assert!(stderr.contains("no 8-bit results"), "{stderr}");
    assert!(listing(&root.path().join("reports")).is_empty());
    // A figures folder that is a file: refused before the report is written.
    std::fs::write(root.path().join("reports/figs"), b"").unwrap();
    let stderr = failed(report(&[
        "sweep",
        "--output",
        "reports/r.md",
        "--figures",
        "reports/figs",
    ]));
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert_eq!(listing(&root.path().join("reports")), ["figs"]);
    // An output that is the report's input: `x.html` writes `x_data.json` beside it.
    std::fs::copy(
        root.path().join("sweep/sensitivity.json"),
        root.path().join("reports/x_data.json"),
    )
    .unwrap();
    let input = read(&root.path().join("reports/x_data.json"));
    let stderr = failed(report(&[
        "reports/x_data.json",
        "--output",
        "reports/x.html",
    ]));
    assert!(
        stderr.contains("is one of this report's inputs"),
        "{stderr}"
    );
    assert_eq!(
        listing(&root.path().join("reports")),
        ["figs", "x_data.json"]
    );
    assert!(read(&root.path().join("reports/x_data.json")) == input);
    // Another extension than .html/.md.
    let stderr = failed(report(&["sweep", "--output", "reports/r.txt"]));
    assert!(
        stderr.contains("a report is written as .html or .md"),
        "{stderr}"
    );
    assert_eq!(
        listing(&root.path().join("reports")),
        ["figs", "x_data.json"]
    );
    // And a good request writes the report, its data and figures.
    ok(report(&[
        "sweep",
        "--bits",
        "4",
        "--output",
        "reports/r.md",
        "--figures",
        "reports/f",
    ]));
    assert!(root.path().join("reports/r.md").is_file());
    assert!(root.path().join("reports/f/heatmap.svg").is_file());
}

//! Fault tests: calibrate and benchmark. One writer per folder (the second refused at once
//! naming the folder and the holder's pid, readers never blocked), SIGKILL at random points
//! (the first image included) then a rerun equal to an uninterrupted run byte for byte, and a
//! full disk (`RLIMIT_FSIZE`) failing cleanly with a rerun that completes the same files.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;

/// The lock file every writer holds in its folder: its content is the writer's pid, so it is
/// the one file that legitimately differs between runs.
const LOCK_FILE: &str = ".sd3lab.lock";

/// A small, fast run: 2 images × 4 steps at 64² on the tiny model, float32.
fn calibrate_args(dir: &Path, seed: u32) -> Vec<String> {
    [
        "calibrate",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--num-images",
        "2",
        "--num-steps",
        "4",
        "--height",
        "64",
        "--width",
        "64",
        "--seed",
        &seed.to_string(),
        "--calib-dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn bench_args(dir: &Path) -> Vec<String> {
    [
        "benchmark",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--num-images",
        "2",
        "--num-steps",
        "3",
        "--height",
        "64",
        "--width",
        "64",
        "--config",
        "fp32",
        "--config",
        "w8",
        "--skip-metrics",
        "--output-dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A shared model cache (the tiny model written once), and in it the uninterrupted runs every
/// test compares against: (cache, calibrate reference, benchmark reference, calibrate seconds).
struct Shared {
    cache: PathBuf,
    calibrate: PathBuf,
    benchmark: PathBuf,
    calibrate_seconds: f64,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cache = tempfile::tempdir().unwrap().keep();
        let calibrate = cache.join("reference-calibrate");
        // The first run writes the tiny model into the cache; the timed one only generates.
        ok(run(&cache, &calibrate_args(&cache.join("warm-up"), 10)));
        let t = Instant::now();
        ok(run(&cache, &calibrate_args(&calibrate, 10)));
        let calibrate_seconds = t.elapsed().as_secs_f64();
        let benchmark = cache.join("reference-benchmark");
        ok(run(&cache, &bench_args(&benchmark)));
        Shared {
            cache,
            calibrate,
            benchmark,
            calibrate_seconds,
        }
    })
}

fn command(cache: &Path, args: &[String]) -> Command {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    common::sd3lab_command(cache, &a)
}

fn run(cache: &Path, args: &[String]) -> Output {
    command(cache, args).output().unwrap()
}

fn spawn(cache: &Path, args: &[String]) -> Child {
    command(cache, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every file under `dir` but the lock file, relative to it, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.strip_prefix(dir).unwrap() != Path::new(LOCK_FILE) {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Asserts that `dir` holds exactly `reference`'s files with the same bytes (the lock aside).
fn assert_same_files(dir: &Path, reference: &Path, context: &str) {
    let (got, want) = (files(dir), files(reference));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{context}: file list"
    );
    for (rel, bytes) in &want {
        assert!(got[rel] == *bytes, "{context}: {} differs", rel.display());
    }
}

/// Waits until `path` exists while `child` runs; false if the child ended first.
fn wait_for(child: &mut Child, path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// xorshift64*: the kill points, reproducible from the seed printed on failure
/// (`SD3LAB_FAULT_SEED` replays one).
struct Rng(u64);

impl Rng {
    fn from_env() -> (Self, u64) {
        let seed = std::env::var("SD3LAB_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5d31_ab17);
        (Self(seed.max(1)), seed)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_second_calibrate_into_a_folder_being_written_is_refused_and_readers_are_not() {
    let s = shared();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    let mut first = spawn(&s.cache, &calibrate_args(&dir, 10));
    // The manifest is written under the lock before the first step: hold the writer there.
    assert!(
        wait_for(&mut first, &dir.join("manifest.json")),
        "the first run ended before its manifest"
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(first.id() as i32, libc::SIGSTOP) };
    // A failed assertion below must not leave the writer stopped forever.
    let mut stopped = Stopped(Some(first.id()));

    let t = Instant::now();
    let second = run(&s.cache, &calibrate_args(&dir, 101));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second writer ran: {stderr}");
    assert!(
        stderr.contains(&dir.display().to_string())
            && stderr.contains(&format!("pid {}", first.id())),
        "names the folder and the holder's pid: {stderr}"
    );
    // Refused at once, not after waiting for the lock (the model load dominates).
    assert!(t.elapsed() < Duration::from_secs(30));
    // A reader does not wait for the writer (stopped while holding the lock).
    let reader = run(
        &s.cache,
        &[
            "samples".into(),
            "--calib-dir".into(),
            dir.display().to_string(),
        ],
    );
    assert!(
        reader.status.code().is_some(),
        "the reader finished while the writer holds the lock"
    );

    // SAFETY: as above.
    unsafe { libc::kill(first.id() as i32, libc::SIGCONT) };
    stopped.0 = None;
    assert!(first.wait().unwrap().success());
    // Only the first writer's run is in the folder, exactly as if it had run alone.
    assert_same_files(&dir, &s.calibrate, "after the refused second writer");
}

/// A child stopped with SIGSTOP: continued and killed if the test fails before continuing it.
struct Stopped(Option<u32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: signalling our own (not yet reaped) child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGCONT);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn calibrate_killed_at_random_points_reruns_to_the_uninterrupted_files() {
    let s = shared();
    let (mut rng, seed) = Rng::from_env();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    let args = calibrate_args(&dir, 10);
    let mut landed = 0;
    // Kill point 0: as soon as the first step file of the first image exists (the hardest
    // case: no image finished). Then three delays drawn over an uninterrupted run's length.
    // Round 0 is tried again (from scratch) while the kill lands after the first image
    // finished: on a busy machine the 1 ms poll can miss that short window.
    let mut first_image_attempts = 1;
    let mut round = 0;
    while round < 4 {
        let context = format!("seed {seed}, round {round}");
        let mut child = spawn(&s.cache, &args);
        let killed_mid_run = if round == 0 {
            // The first sample file, or its temporary file: whichever shows first.
            let samples = dir.join("samples");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let any = std::fs::read_dir(&samples)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(false);
                if any || child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{context}: no sample file");
                std::thread::sleep(Duration::from_millis(1));
            }
            child.try_wait().unwrap().is_none()
        } else {
            let delay = rng.next() * s.calibrate_seconds * 1.2;
            std::thread::sleep(Duration::from_secs_f64(delay));
            child.try_wait().unwrap().is_none()
        };
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if killed_mid_run {
            landed += 1;
        }
        if round == 0 {
            assert!(killed_mid_run, "{context}: the kill missed the first image");
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
                    .unwrap_or_else(|e| panic!("{context}: manifest before the first step: {e}"));
            if m["n_completed"] != 0 && first_image_attempts < 5 {
                first_image_attempts += 1;
                std::fs::remove_dir_all(&dir).unwrap();
                continue;
            }
            assert_eq!(m["n_completed"], 0, "{context}");
        }
        let rerun = ok(run(&s.cache, &args));
        assert!(rerun.status.success(), "{context}");
        assert_same_files(&dir, &s.calibrate, &context);
        // Start the next round from scratch.
        std::fs::remove_dir_all(&dir).unwrap();
        round += 1;
    }
    assert!(landed >= 1, "seed {seed}: no kill landed mid-run");
}

/// A benchmark file's content without what legitimately differs between two runs of the same
/// images: the records' timings and peaks, results.json's latency and peak-memory statistics,
/// per_image.csv's timing and peak columns. Every other byte is compared as it is.
fn comparable(rel: &Path, bytes: &[u8]) -> Vec<u8> {
    let name = rel.to_string_lossy();
    if name.contains("records/") {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let o = v.as_object_mut().unwrap();
        for key in ["seconds", "peak_mlx_bytes", "peak_rss_bytes"] {
            assert!(o.remove(key).is_some(), "{name} has {key}");
        }
        return serde_json::to_vec(&v).unwrap();
    }
    if name == "results.json" {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        for c in v["configurations"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            assert!(c.remove("latency").is_some() && c.remove("peak_memory").is_some());
        }
        return serde_json::to_vec(&v).unwrap();
    }
    if name == "per_image.csv" {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let timing = |h: &str| h.ends_with("_s") || h.starts_with("peak_");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert!(header.iter().any(|h| timing(h)), "{header:?}");
        // The test's prompts hold no commas: a plain split is exact.
        let keep = |line: &str| -> String {
            line.split(',')
                .zip(&header)
                .filter(|(_, h)| !timing(h))
                .map(|(v, _)| v)
                .collect::<Vec<_>>()
                .join(",")
        };
        return std::iter::once(keep(&header.join(",")))
            .chain(lines.map(keep))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes();
    }
    bytes.to_vec()
}

#[test]
fn benchmark_killed_at_random_points_reruns_to_the_uninterrupted_files() {
    let s = shared();
    let (mut rng, seed) = Rng::from_env();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("bench");
    let args = bench_args(&dir);
    let want: BTreeMap<PathBuf, Vec<u8>> = files(&s.benchmark)
        .into_iter()
        .map(|(rel, b)| {
            let c = comparable(&rel, &b);
            (rel, c)
        })
        .collect();
    for round in 0..3 {
        let context = format!("seed {seed}, round {round}");
        let mut child = spawn(&s.cache, &args);
        if round == 0 {
            // The first image's PNG, most likely before its record.
            wait_for(&mut child, &dir.join("fp32/images/000000.png"));
        } else {
            // Over the benchmark's length (model loads dominate; a few seconds on the tiny one).
            std::thread::sleep(Duration::from_secs_f64(rng.next() * 4.0));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        ok(run(&s.cache, &args));
        let got: BTreeMap<PathBuf, Vec<u8>> = files(&dir)
            .into_iter()
            .map(|(rel, b)| {
                let c = comparable(&rel, &b);
                (rel, c)
            })
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{context}: file list"
        );
        for (rel, bytes) in &want {
            assert!(got[rel] == *bytes, "{context}: {} differs", rel.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_full_disk_fails_naming_the_file_leaves_no_partial_file_and_the_rerun_completes() {
    let s = shared();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    let args = calibrate_args(&dir, 10);
    // Files may grow to 1 MB: the manifest and PNGs fit, a 5 MB sample file does not. SIGXFSZ
    // ignored, so the write fails with EFBIG as on a full disk instead of killing the process.
    let limit: libc::rlim_t = 1 << 20;
    let mut c = command(&s.cache, &args);
    // SAFETY: setrlimit and signal are async-signal-safe; the closure allocates nothing.
    unsafe {
        c.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("000000_000.npz") && stderr.contains("too large"),
        "names the file and the problem: {stderr}"
    );
    // No half-written file: no sample file, finished or temporary, is left.
    let left: Vec<PathBuf> = files(&dir)
        .into_keys()
        .filter(|p| p.starts_with("samples") || p.to_string_lossy().contains(".sd3lab-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    ok(run(&s.cache, &args));
    assert_same_files(&dir, &s.calibrate, "rerun after the full disk");
}

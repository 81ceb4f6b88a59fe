//! Runs split across processes (loopback only, 2 ranks): `sd3lab launch --local 2`,
//! `mlx.launch --backend ring -n 2` and `--shard R/N` + `sd3lab merge` give the same files, byte
//! for byte, as one process; a rank that exits makes the job fail within seconds, a stuck rank
//! trips the other's watchdog, and a rerun resumes to the same files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{sd3lab_command, tiny_model_and_calibration};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: String,
    calib: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let (model, calib) = tiny_model_and_calibration(&root, 2, 3);
        Self {
            _dir: dir,
            root,
            model,
            calib,
        }
    }

    fn sensitivity_args(&self, out: &Path) -> Vec<String> {
        strings(&[
            "sensitivity",
            "--model",
            &self.model,
            "--calib-dir",
            &self.calib.display().to_string(),
            "--bits",
            "2,4",
            "--output-dir",
            &out.display().to_string(),
        ])
    }

    fn run(&self, args: &[String], env: &[(&str, &str)]) -> (Output, Duration) {
        let t = Instant::now();
        let out = sd3lab_command(&self.root.join("cache"), &strs(args))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out, t.elapsed())
    }

    /// `sd3lab launch --local 2 --log-dir LOGS [extra] -- sd3lab COMMAND…`
    fn launch(
        &self,
        logs: &str,
        extra: &[&str],
        command: &[String],
        env: &[(&str, &str)],
    ) -> (Output, Duration) {
        let mut args = strings(&["launch", "--local", "2", "--log-dir"]);
        args.push(self.root.join(logs).display().to_string());
        args.extend(strings(extra));
        args.push("--".into());
        args.push("sd3lab".into());
        args.extend(command.iter().cloned());
        self.run(&args, env)
    }

    /// The single-process run's files, the reference of every split run.
    fn whole_run(&self) -> PathBuf {
        let one = self.root.join("one");
        let (out, _) = self.run(&self.sensitivity_args(&one), &[]);
        assert_ok(&out);
        one
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_same_files<P: AsRef<Path>>(a: &Path, b: &Path, names: &[P]) {
    for name in names {
        let name = name.as_ref();
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        assert!(
            x == y,
            "{} and {} differ",
            a.join(name).display(),
            b.join(name).display()
        );
    }
}

/// Owned arguments.
fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const SENSITIVITY_FILES: [&str; 2] = ["sensitivity.json", "sensitivity.csv"];

#[test]
fn sensitivity_split_two_ways_equals_one_process() {
    let f = Fixture::new();
    let one = f.whole_run();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("sensitivity.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap().len();
    assert!(layers > 20, "{layers} layers");

    // sd3lab launch: rank 0 writes the merged files, each rank its part.
    let two = f.root.join("two");
    let (out, _) = f.launch("logs", &[], &f.sensitivity_args(&two), &[]);
    assert_ok(&out);
    assert_same_files(&one, &two, &SENSITIVITY_FILES);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "job: {layers}/{layers} layers measured over 2 ranks"
        )),
        "{err}"
    );
    assert!(err.contains("all 2 ranks finished"), "{err}");
    let mut per_part = 0;
    for rank in 0..2 {
        let part: serde_json::Value = serde_json::from_slice(
            &std::fs::read(two.join(format!("shard-{rank}-of-2/sensitivity.json"))).unwrap(),
        )
        .unwrap();
        let n = part["layers"].as_array().unwrap().len();
        assert!(n > 0 && n < layers, "rank {rank}: {n} of {layers}");
        per_part += n;
        let log = std::fs::read_to_string(f.root.join(format!("logs/rank-{rank}.log"))).unwrap();
        assert!(log.contains(&format!("[rank {rank}/2]")), "{log}");
    }
    assert_eq!(per_part, layers);

    // MLX's own launcher.
    let mlx_launch = common::python().with_file_name("mlx.launch");
    let three = f.root.join("three");
    let out = std::process::Command::new(&mlx_launch)
        .args(["--backend", "ring", "-n", "2", "--"])
        .arg(env!("CARGO_BIN_EXE_sd3lab"))
        .args(f.sensitivity_args(&three))
        .env("SD3LAB_CACHE_DIR", f.root.join("cache"))
        .env("HF_HUB_CACHE", f.root.join("cache/no-hub"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (scripts/setup.sh installs it): {e}",
                mlx_launch.display()
            )
        });
    assert_ok(&out);
    assert_same_files(&one, &three, &SENSITIVITY_FILES);

    // --shard parts without any network, then merge.
    let four = f.root.join("four");
    let mut part0 = f.sensitivity_args(&four);
    part0.extend(["--shard".into(), "0/2".into()]);
    assert_ok(&f.run(&part0, &[]).0);
    assert!(!four.join("sensitivity.json").exists());
    let merge = ["merge".to_string(), four.display().to_string()];
    let (out, _) = f.run(&merge, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("parts 1 of 2 are missing"),
        "{}",
        stderr(&out)
    );
    let mut part1 = f.sensitivity_args(&four);
    part1.extend(["--shard".into(), "1/2".into()]);
    let (out, _) = f.run(&part1, &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sd3lab merge"));
    assert_ok(&f.run(&merge, &[]).0);
    assert_same_files(&one, &four, &SENSITIVITY_FILES);

    // A part of a run split another way cannot be merged with these.
    let mut other = f.sensitivity_args(&four);
    other.extend(["--shard".into(), "2/3".into()]);
    assert_ok(&f.run(&other, &[]).0);
    let (out, _) = f.run(&merge, &[]);
    assert!(
        stderr(&out).contains("split 2 and 3 ways"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_rank_that_exits_fails_the_job_fast_and_a_rerun_resumes() {
    let f = Fixture::new();
    let one = f.whole_run();
    let two = f.root.join("two");
    let args = f.sensitivity_args(&two);
    let (out, took) = f.launch("logs", &[], &args, &[("SD3LAB_TEST_FAULT", "exit-after:3")]);
    // The launch reports the rank that failed first, with its status, not the survivor.
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("last lines of rank 1's log") && err.contains("test fault"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The survivor failed at its next collective, with the peer named as the cause.
    let log0 = std::fs::read_to_string(f.root.join("logs/rank-0.log")).unwrap();
    assert!(log0.contains("another rank failed"), "{log0}");
    assert!(!two.join("sensitivity.json").exists());
    let part1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.join("shard-1-of-2/sensitivity.json")).unwrap())
            .unwrap();
    assert_eq!(part1["layers"].as_array().unwrap().len(), 3);

    // The rerun measures only what is missing and ends with the same files.
    let (out, _) = f.launch("logs", &[], &args, &[]);
    assert_ok(&out);
    let log1 = std::fs::read_to_string(f.root.join("logs/rank-1.log")).unwrap();
    assert!(log1.contains("(3 layers already done)"), "{log1}");
    assert_same_files(&one, &two, &SENSITIVITY_FILES);
}

#[test]
fn a_stuck_rank_trips_the_watchdog() {
    let f = Fixture::new();
    let two = f.root.join("two");
    let (out, took) = f.launch(
        "logs",
        &["--collective-timeout", "3"],
        &f.sensitivity_args(&two),
        &[("SD3LAB_TEST_FAULT", "stall-after:2")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("waited 3 s for the other ranks"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn bad_launch_environments_are_refused_clearly() {
    let f = Fixture::new();
    let out_dir = f.root.join("x");
    let args = f.sensitivity_args(&out_dir);
    let (out, _) = f.run(&args, &[("MLX_RANK", "0")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("MLX_RANK is set but MLX_HOSTFILE is not"),
        "{}",
        stderr(&out)
    );
    let hostfile = f.root.join("hosts.json");
    std::fs::write(&hostfile, "[[\"127.0.0.1\"]]").unwrap();
    let (out, _) = f.run(
        &args,
        &[
            ("MLX_RANK", "0"),
            ("MLX_HOSTFILE", hostfile.to_str().unwrap()),
        ],
    );
    assert!(
        stderr(&out).contains("hosts.json") && stderr(&out).contains("not ip:port"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&hostfile, "[[\"127.0.0.1:1\"],[\"127.0.0.1:2\"]]").unwrap();
    let (out, _) = f.run(
        &args,
        &[
            ("MLX_RANK", "2"),
            ("MLX_HOSTFILE", hostfile.to_str().unwrap()),
        ],
    );
    assert!(
        stderr(&out).contains("MLX_RANK=2 but the hostfile"),
        "{}",
        stderr(&out)
    );
    // A peer that never starts: the join itself is under the watchdog.
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    std::fs::write(
        &hostfile,
        format!(
            "[[\"127.0.0.1:{}\"],[\"127.0.0.1:{}\"]]",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let t = Instant::now();
    let (out, _) = f.run(
        &args,
        &[
            ("MLX_RANK", "0"),
            ("MLX_HOSTFILE", hostfile.to_str().unwrap()),
            ("SD3LAB_COLLECTIVE_TIMEOUT", "2"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("joining the ring"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    // The linearized scope is not split by layer; a bad --shard is a usage error.
    let mut lin = args.clone();
    lin.extend([
        "--scope".into(),
        "linearized".into(),
        "--shard".into(),
        "0/2".into(),
    ]);
    let (out, _) = f.run(&lin, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("run it whole"), "{}", stderr(&out));
    let mut bad = args;
    bad.extend(["--shard".into(), "2/2".into()]);
    let (out, _) = f.run(&bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RANK/RANKS"), "{}", stderr(&out));
    assert!(!out_dir.join("sensitivity.json").exists());
}

/// Every file under `dir` (relative paths, sorted) except the lock and the parts' own folders.
fn run_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".sd3lab.lock" || name.starts_with("shard-") {
                continue;
            }
            if e.path().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn calibrate_args(f: &Fixture, dir: &Path, images: usize) -> Vec<String> {
    let images = images.to_string();
    strings(&[
        "calibrate",
        "--model",
        &f.model,
        "--num-images",
        &images,
        "--num-steps",
        "3",
        "--height",
        "64",
        "--width",
        "64",
        "--dtype",
        "float32",
        "--calib-dir",
        &dir.display().to_string(),
    ])
}

#[test]
fn calibration_split_two_ways_equals_one_process() {
    let f = Fixture::new();
    let one = f.root.join("c-one");
    assert_ok(&f.run(&calibrate_args(&f, &one, 4), &[]).0);
    let files = run_files(&one);
    assert_eq!(files.len(), 4 * 3 + 4 + 1, "{files:?}");

    let two = f.root.join("c-two");
    let (out, _) = f.launch("logs", &[], &calibrate_args(&f, &two, 4), &[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("job: 4/4 images generated over 2 ranks"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run_files(&two), files);
    assert_same_files(&one, &two, &files);

    // A part killed after its first image: the job fails, the rerun generates only the rest.
    let three = f.root.join("c-three");
    let args = calibrate_args(&f, &three, 4);
    let (out, _) = f.launch("logs", &[], &args, &[("SD3LAB_TEST_FAULT", "exit-after:1")]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(!three.join("manifest.json").exists());
    let (out, _) = f.launch("logs", &[], &args, &[]);
    assert_ok(&out);
    let log1 = std::fs::read_to_string(f.root.join("logs/rank-1.log")).unwrap();
    assert!(
        log1.contains("image 3 done") && !log1.contains("image 1 done"),
        "{log1}"
    );
    assert_eq!(run_files(&three), files);
    assert_same_files(&one, &three, &files);

    // --shard parts, then merge; a whole rerun then has nothing left to do.
    let four = f.root.join("c-four");
    for part in ["1/2", "0/2"] {
        let mut a = calibrate_args(&f, &four, 4);
        a.extend(["--shard".into(), part.into()]);
        assert_ok(&f.run(&a, &[]).0);
    }
    assert!(!four.join("manifest.json").exists());
    let (out, _) = f.run(&["merge".into(), four.display().to_string()], &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged 4 of 4 images"));
    assert_same_files(&one, &four, &files);
    let (out, _) = f.run(&calibrate_args(&f, &four, 4), &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 of 4 images complete (0 written now"));
}

/// `results.json` without what is measured (latency, memory): what must not depend on how the
/// run was split.
fn deterministic_results(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    for c in v["configurations"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        assert!(c.remove("latency").is_some() && c.remove("peak_memory").is_some());
    }
    v
}

#[test]
fn benchmark_split_two_ways_matches_one_process() {
    let f = Fixture::new();
    let reference = f.root.join("ref");
    let mut r = calibrate_args(&f, &reference, 3);
    r.push("--images-only".into());
    assert_ok(&f.run(&r, &[]).0);
    let weights = f.root.join("inception.safetensors").display().to_string();
    assert_ok(
        &f.run(
            &[
                "metrics".into(),
                "weights".into(),
                "--synthetic".into(),
                weights.clone(),
            ],
            &[],
        )
        .0,
    );
    let bench = |out: &Path| -> Vec<String> {
        strings(&[
            "benchmark",
            "--model",
            &f.model,
            "--dtype",
            "float32",
            "--height",
            "64",
            "--width",
            "64",
            "--num-images",
            "3",
            "--num-steps",
            "3",
            "--config",
            "fp32",
            "--config",
            "w4",
            "--reference-dir",
            &reference.join("images").display().to_string(),
            "--inception-weights",
            &weights,
            "--output-dir",
            &out.display().to_string(),
        ])
    };
    let one = f.root.join("b-one");
    assert_ok(&f.run(&bench(&one), &[]).0);
    let expected = deterministic_results(&one);
    assert!(
        expected["configurations"][1]["metrics"]["fid"]
            .as_f64()
            .is_some(),
        "{expected}"
    );
    let pngs: Vec<String> = run_files(&one)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(pngs.len(), 6);

    let two = f.root.join("b-two");
    let (out, _) = f.launch("logs", &[], &bench(&two), &[]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("job: w4g64: 3/3 images over 2 ranks"), "{err}");
    assert_same_files(&one, &two, &pngs);
    assert_eq!(deterministic_results(&two), expected);
    let log1 = std::fs::read_to_string(f.root.join("logs/rank-1.log")).unwrap();
    assert!(
        log1.contains("fp32: image 1 done") && !log1.contains("image 0 done"),
        "{log1}"
    );

    // --shard parts write no summaries; the whole command afterwards only scores and writes.
    let three = f.root.join("b-three");
    for part in ["0/2", "1/2"] {
        let mut a = bench(&three);
        a.extend(["--shard".into(), part.into()]);
        assert_ok(&f.run(&a, &[]).0);
    }
    assert!(!three.join("results.json").exists());
    let (out, _) = f.run(&bench(&three), &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 images generated"));
    assert_same_files(&one, &three, &pngs);
    assert_eq!(deterministic_results(&three), expected);
}

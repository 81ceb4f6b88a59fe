//! `sd3lab benchmark` on the tiny model: a reference made with `calibrate --images-only`, the
//! fp32 images equal to it byte for byte (the pairing is right), quantized ones not; SIGINT and
//! SIGKILL mid-run then a rerun give the files of an uninterrupted run; refusals name what is
//! wrong; numpy-side tooling (Python's json and csv) reads what it writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SIZE: &str = "64";

fn cli(cache: &Path, args: &[&str]) -> Command {
    common::sd3lab_command(cache, args)
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed ({:?}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn fails(o: Output) -> String {
    assert!(!o.status.success(), "expected a failure, got success");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `calibrate --images-only` of `n` tiny images with `steps` steps into `dir`.
fn reference(cache: &Path, dir: &Path, n: usize, steps: usize) {
    let (n, steps) = (n.to_string(), steps.to_string());
    let dir = dir.display().to_string();
    ok(cli(
        cache,
        &[
            "calibrate",
            "--images-only",
            "--model",
            "tiny",
            "--dtype",
            "float32",
            "--num-images",
            &n,
            "--num-steps",
            &steps,
            "--height",
            SIZE,
            "--width",
            SIZE,
            "--calib-dir",
            &dir,
        ],
    )
    .output()
    .unwrap());
}

/// `benchmark` arguments on the tiny model at the test size.
fn bench_args(out: &Path, n: usize, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "benchmark",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--height",
        SIZE,
        "--width",
        SIZE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "--num-images".into(),
        n.to_string(),
        "--num-steps".into(),
        steps.to_string(),
        "--output-dir".into(),
        out.display().to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_bench(cache: &Path, args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(cache, &a).output().unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn matched_run_pairs_images_with_the_reference_and_python_reads_the_results() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let refdir = root.join("ref");
    reference(root, &refdir, 3, 3);
    // No per-step samples, and a manifest recording every image's prompt and seed.
    let npz: Vec<_> = files_under(&refdir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    assert!(npz.is_empty(), "images-only wrote samples: {npz:?}");
    let manifest = json(&refdir.join("manifest.json"));
    assert_eq!(manifest["generation"]["images_only"], true);
    assert_eq!(manifest["generation"]["seeds"].as_array().unwrap().len(), 3);

    // A per-bucket plan: early steps quantize two layers, late steps one other.
    let plan = root.join("mixed.json");
    std::fs::write(
        &plan,
        serde_json::json!({
            "schema": "sd3lab.plan/1",
            "layers": {"context_embedder": {"bits": 4}},
            "buckets": {
                "early": {
                    "multimodal_transformer_blocks.0.image_transformer_block.attn.q_proj": {"bits": 2},
                    "multimodal_transformer_blocks.0.image_transformer_block.mlp.fc1": {"bits": 3}
                },
                "late": {"multimodal_transformer_blocks.1.image_transformer_block.mlp.fc2": {"bits": 8}}
            }
        })
        .to_string(),
    )
    .unwrap();
    let out = root.join("out");
    let refimages = refdir.join("images").display().to_string();
    let plan_arg = plan.display().to_string();
    let o = ok(run_bench(
        root,
        &bench_args(
            &out,
            3,
            3,
            &[
                "--config",
                "fp32",
                "--config",
                "w4",
                "--config",
                &plan_arg,
                "--reference-dir",
                &refimages,
                "--skip-metrics",
            ],
        ),
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("w4g64") && stdout.contains("mixed"),
        "{stdout}"
    );

    for i in 0..3 {
        let name = format!("{i:06}.png");
        let reference = std::fs::read(refdir.join("images").join(&name)).unwrap();
        let fp32 = std::fs::read(out.join("fp32/images").join(&name)).unwrap();
        assert!(
            fp32 == reference,
            "fp32 image {i} differs from its reference twin"
        );
        for config in ["w4g64", "mixed"] {
            let q = std::fs::read(out.join(config).join("images").join(&name)).unwrap();
            assert!(q != reference, "{config} image {i} equals the float image");
        }
    }

    let results = json(&out.join("results.json"));
    assert_eq!(results["schema"], "sd3lab.benchmark/1");
    let configs = results["configurations"].as_array().unwrap();
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fp32", "w4g64", "mixed"]);
    assert_eq!(configs[2]["quantization"]["per_bucket"], true);
    assert_eq!(results["settings"]["reference"]["verified"], true);
    let check = common::run_oracle("bench_check.py", &[out.as_os_str()]);
    assert_eq!(check.trim(), "ok 9 rows, 3 configurations");
}

#[test]
fn interrupted_runs_resume_to_the_files_of_an_uninterrupted_run() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let refdir = root.join("ref");
    reference(root, &refdir, 4, 6);
    let refimages = refdir.join("images").display().to_string();
    let extra = [
        "--config",
        "fp32",
        "--config",
        "w8",
        "--reference-dir",
        &refimages,
        "--skip-metrics",
    ];
    let whole = root.join("whole");
    ok(run_bench(root, &bench_args(&whole, 4, 6, &extra)));

    let victim = root.join("victim");
    let args = bench_args(&victim, 4, 6, &extra);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // Wait until `record` exists, then send `signal`; returns the exit status.
    let interrupt = |record: &str, signal: i32| {
        let mut child = cli(root, &a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !victim.join(record).exists() {
            assert!(Instant::now() < deadline, "the run never wrote {record}");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run finished before it could be interrupted"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    };
    // Ctrl-C stops after the current image with exit 130 …
    let status = interrupt("fp32/records/000000.json", libc::SIGINT);
    assert_eq!(status.code(), Some(130), "SIGINT exit status");
    let done = files_under(&victim.join("fp32/records")).len();
    assert!((1..4).contains(&done), "{done} fp32 images after SIGINT");
    // … SIGKILL wherever it lands: here as soon as the second configuration's first PNG exists,
    // most likely before its record.
    let status = interrupt("w8g64/images/000000.png", libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    let o = ok(run_bench(root, &args));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already done, resuming"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Every image, and every field that is not a time or a memory figure, as uninterrupted.
    let listing = |d: &Path| -> Vec<PathBuf> {
        files_under(d)
            .into_iter()
            .map(|p| p.strip_prefix(d).unwrap().to_owned())
            .filter(|p| !p.to_string_lossy().contains(".sd3lab"))
            .collect()
    };
    assert_eq!(listing(&victim), listing(&whole));
    for rel in listing(&whole) {
        if rel.extension().is_some_and(|e| e == "png") {
            assert!(
                std::fs::read(victim.join(&rel)).unwrap()
                    == std::fs::read(whole.join(&rel)).unwrap(),
                "{} differs",
                rel.display()
            );
        }
    }
    let strip = |mut v: serde_json::Value| {
        for c in v["configurations"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            assert!(c.remove("latency").is_some_and(|l| !l.is_null()));
            assert!(c.remove("peak_memory").is_some());
        }
        v
    };
    assert_eq!(
        strip(json(&victim.join("results.json"))),
        strip(json(&whole.join("results.json")))
    );
    let csv_rows = |d: &Path| -> Vec<Vec<String>> {
        let mut r = csv::Reader::from_path(d.join("per_image.csv")).unwrap();
        let h = r.headers().unwrap().clone();
        let keep = ["configuration", "index", "prompt", "seed", "warmup", "file"];
        r.records()
            .map(|row| {
                let row = row.unwrap();
                h.iter()
                    .zip(row.iter())
                    .filter(|(k, _)| keep.contains(k))
                    .map(|(_, v)| v.to_owned())
                    .collect()
            })
            .collect()
    };
    assert_eq!(csv_rows(&victim), csv_rows(&whole));
    assert_eq!(csv_rows(&whole).len(), 8);
}

#[test]
fn refusals_name_the_problem_and_the_flag() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let refdir = root.join("ref");
    reference(root, &refdir, 3, 3);
    let refimages = refdir.join("images").display().to_string();
    let out = root.join("out");
    let with_ref = |n: usize, steps: usize, extra: &[&str]| {
        let mut e = vec!["--reference-dir", refimages.as_str(), "--skip-metrics"];
        e.extend_from_slice(extra);
        bench_args(&out, n, steps, &e)
    };

    // Settings that differ from the reference's: refused with the difference, or run anyway.
    let err = fails(run_bench(root, &with_ref(2, 4, &["--config", "fp32"])));
    assert!(err.contains("num_steps: 3 → 4"), "{err}");
    assert!(err.contains("--allow-mismatch"), "{err}");
    assert!(
        !out.join("results.json").exists(),
        "a refused run writes nothing"
    );
    ok(run_bench(
        root,
        &with_ref(
            2,
            4,
            &["--config", "fp32", "--allow-mismatch", "--warmup", "0"],
        ),
    ));
    let results = json(&out.join("results.json"));
    assert_eq!(results["settings"]["reference"]["allow_mismatch"], true);
    assert!(
        results["settings"]["reference"]["differences"][0]
            .as_str()
            .unwrap()
            .contains("num_steps")
    );

    // The same folder with other settings, then --overwrite.
    let err = fails(run_bench(root, &with_ref(2, 3, &["--config", "fp32"])));
    assert!(
        err.contains("already holds a benchmark with different settings"),
        "{err}"
    );
    assert!(err.contains("--overwrite"), "{err}");
    ok(run_bench(
        root,
        &with_ref(2, 3, &["--config", "fp32", "--overwrite"]),
    ));
    assert_eq!(
        json(&out.join("results.json"))["settings"]["generation"]["num_steps"],
        3
    );

    // Another process writing the folder.
    {
        let _lock = sd3lab::fsutil::FolderLock::acquire(&out).unwrap();
        let err = fails(run_bench(root, &with_ref(2, 3, &["--config", "fp32"])));
        let pid = std::process::id();
        assert!(
            err.contains(&format!(
                "is being written by another sd3lab process (pid {pid})"
            )),
            "{err}"
        );
    }

    // Configurations that cannot be run.
    let err = fails(run_bench(root, &with_ref(2, 3, &["--config", "int4"])));
    assert!(err.contains("'int4' is not a configuration"), "{err}");
    let err = fails(run_bench(root, &with_ref(2, 3, &["--config", "w7"])));
    assert!(err.contains("7 bits is not supported"), "{err}");
    let bad_plan = root.join("broken.json");
    std::fs::write(&bad_plan, "{\"layers\": {\"nope\": {\"bits\": 4}}").unwrap();
    let bad = bad_plan.display().to_string();
    let err = fails(run_bench(root, &with_ref(2, 3, &["--config", &bad])));
    assert!(err.contains("broken.json"), "{err}");
    std::fs::write(&bad_plan, r#"{"layers": {"no.such.layer": {"bits": 4}}}"#).unwrap();
    let err = fails(run_bench(root, &with_ref(2, 3, &["--config", &bad])));
    assert!(err.contains("no.such.layer"), "{err}");

    // Reference sets that cannot be used.
    let err = fails(run_bench(root, &with_ref(5, 3, &["--config", "fp32"])));
    assert!(err.contains("has only 3"), "{err}");
    let missing = root.join("missing").display().to_string();
    let err = fails(run_bench(
        root,
        &bench_args(
            &out,
            2,
            3,
            &["--config", "fp32", "--reference-dir", &missing],
        ),
    ));
    assert!(err.contains("missing does not exist"), "{err}");
    let err = fails(
        cli(
            root,
            &bench_args(&out, 2, 3, &["--config", "fp32"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .current_dir(root)
        .output()
        .unwrap(),
    );
    assert!(err.contains("need a reference set"), "{err}");
    assert!(err.contains("calibrate --images-only"), "{err}");

    // A folder of images from another tool: paired by sorted name, seeds --seed + i, and a
    // warning; the images of the same prompts and seeds are the same.
    let plain = root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        std::fs::copy(refdir.join(format!("images/{i:06}.png")), plain.join(name)).unwrap();
    }
    let plain_arg = plain.display().to_string();
    let plain_out = root.join("plain-out");
    let o = ok(run_bench(
        root,
        &bench_args(
            &plain_out,
            3,
            3,
            &[
                "--config",
                "fp32",
                "--reference-dir",
                &plain_arg,
                "--skip-metrics",
            ],
        ),
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be verified"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        assert!(
            std::fs::read(plain.join(name)).unwrap()
                == std::fs::read(plain_out.join(format!("fp32/images/{i:06}.png"))).unwrap()
        );
    }
    sd3lab::image::write_png(
        &plain.join("d.png"),
        32,
        32,
        sd3lab::image::PixelFormat::Rgb,
        &[0; 32 * 32 * 3],
    )
    .unwrap();
    let err = fails(run_bench(
        root,
        &bench_args(
            &root.join("plain-out-2"),
            4,
            3,
            &[
                "--config",
                "fp32",
                "--reference-dir",
                &plain_arg,
                "--skip-metrics",
            ],
        ),
    ));
    assert!(
        err.contains("d.png is 32×32, but the benchmark generates 64×64"),
        "{err}"
    );
}

#[test]
fn metrics_are_recorded_per_configuration_against_the_reference_twins() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let refdir = root.join("ref");
    reference(root, &refdir, 4, 3);
    let refimages = refdir.join("images").display().to_string();
    let out = root.join("out");

    // No weights: refused before anything is generated, saying what to run.
    let err = fails(run_bench(
        root,
        &bench_args(
            &out,
            4,
            3,
            &["--config", "fp32", "--reference-dir", &refimages],
        ),
    ));
    assert!(err.contains("sd3lab metrics weights --fetch"), "{err}");
    assert!(err.contains("--skip-metrics"), "{err}");
    assert!(!out.join("results.json").exists());

    let weights = root.join("inception.safetensors");
    let w = weights.display().to_string();
    ok(cli(root, &["metrics", "weights", "--synthetic", &w])
        .output()
        .unwrap());
    let o = ok(run_bench(
        root,
        &bench_args(
            &out,
            4,
            3,
            &[
                "--config",
                "fp32",
                "--config",
                "w4",
                "--reference-dir",
                &refimages,
                "--inception-weights",
                &w,
            ],
        ),
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("FID") && stdout.contains("SSIM"),
        "{stdout}"
    );
    let results = json(&out.join("results.json"));
    let configs = results["configurations"].as_array().unwrap();
    let (fp32, w4) = (&configs[0]["metrics"], &configs[1]["metrics"]);
    // The float images are their twins: FID 0 up to rounding — the square root of a rank-3
    // covariance product in 2048 dimensions, whose error grows with the features' scale (here
    // a few 1e-2 against a w4 FID of about 250) — and every pair identical.
    let (fid_fp32, fid_w4) = (fp32["fid"].as_f64().unwrap(), w4["fid"].as_f64().unwrap());
    assert!(
        fid_w4 > 1.0 && fid_fp32.abs() < 1e-3 * fid_w4,
        "fp32 FID {fid_fp32}, w4 FID {fid_w4}"
    );
    assert_eq!(fp32["identical_pairs"], 4);
    assert_eq!(fp32["ssim_mean"], 1.0);
    assert!(fp32["psnr_mean"].is_null());
    // Quantized images differ from theirs.
    assert_eq!(w4["identical_pairs"], 0);
    assert!(w4["ssim_mean"].as_f64().unwrap() < 1.0);
    assert!(w4["psnr_mean"].as_f64().unwrap().is_finite());
    assert_eq!(w4["isc_reference"], fp32["isc_reference"]);
    assert_eq!(w4["kid"]["subset_size"], 4);
    assert_eq!(w4["kid"]["lowered_from"], 1000);
    assert!(
        w4["lpips_missing"].as_str().is_some(),
        "no LPIPS weights in the test cache"
    );
    // Per image in the CSV, beside the timings.
    let mut r = csv::Reader::from_path(out.join("per_image.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|k| k == name).unwrap();
    let (config, psnr, ssim) = (col("configuration"), col("psnr_db"), col("ssim"));
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 8);
    for row in &rows {
        if &row[config] == "fp32" {
            assert_eq!(&row[psnr], "inf");
            assert_eq!(row[ssim].parse::<f64>().unwrap(), 1.0);
        } else {
            assert!(row[psnr].parse::<f64>().unwrap().is_finite());
        }
    }
    // The reference's features were cached beside it.
    assert!(
        refdir
            .join("images/.inception-features.sd3lab.npz")
            .is_file()
    );
}

//! The demo model's data and judge through the CLI: `model shapes` writes pictures and the
//! prompt list a benchmark takes; `model judge` scores a benchmark's pictures against their
//! captions (a random tiny model's noise fails, the captions' own drawings as the reference
//! set pass) and refuses a benchmark whose prompts are not demo captions, naming the image.

mod common;

use std::path::Path;
use std::process::Output;

fn run(cache: &Path, args: &[&str]) -> Output {
    common::sd3lab_command(cache, args).output().unwrap()
}

use common::stdout_of_success as ok;

/// A 3-image, 2-step fp32 benchmark of the random tiny model (`model synth --preset tiny`,
/// written into `cache` once) on `prompts`, with `reference` (a folder of pictures) as its
/// reference set when given.
fn benchmark(cache: &Path, prompts: &Path, reference: Option<&Path>, out: &Path) -> Output {
    let model = cache.join("random-tiny");
    if !model.exists() {
        ok(run(
            cache,
            &["model", "synth", "--output", &model.display().to_string()],
        ));
    }
    let model = model.display().to_string();
    let reference = reference.map(|r| r.display().to_string());
    let (prompts, out) = (prompts.display().to_string(), out.display().to_string());
    let mut args = vec![
        "benchmark",
        "--model",
        &model,
        "--dtype",
        "float32",
        "--height",
        "64",
        "--width",
        "64",
        "--num-images",
        "3",
        "--num-steps",
        "2",
        "--warmup",
        "0",
        "--skip-metrics",
        "--prompt-csv",
        &prompts,
        "--config",
        "fp32",
        "--output-dir",
        &out,
    ];
    if let Some(r) = &reference {
        args.extend(["--reference-dir", r]);
    }
    run(cache, &args)
}

fn judge_json(cache: &Path, bench: &Path) -> serde_json::Value {
    let out = ok(run(
        cache,
        &["model", "judge", &bench.display().to_string(), "--json"],
    ));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_benchmark_of_demo_captions_is_judged_from_its_pixels() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let eval = root.path().join("eval");
    let said = ok(run(
        &cache,
        &[
            "model",
            "shapes",
            "--held-out",
            "--count",
            "3",
            "--seed",
            "9",
            "--output",
            &eval.display().to_string(),
        ],
    ));
    assert!(said.contains("wrote 3 pictures"), "{said}");
    for f in ["000000.png", "000002.png", "captions.jsonl", "prompts.csv"] {
        assert!(eval.join(f).is_file(), "{f}");
    }

    let bench = root.path().join("bench");
    ok(benchmark(
        &cache,
        &eval.join("prompts.csv"),
        Some(&eval),
        &bench,
    ));
    let doc = judge_json(&cache, &bench);
    assert_eq!(doc["schema"], "sd3lab.judge/1");
    let fp32 = &doc["configurations"][0];
    assert_eq!(fp32["name"], "fp32");
    assert_eq!(fp32["score"]["pictures"], 3);
    // The random tiny model draws coloured noise: nothing passes.
    assert_eq!(fp32["score"]["passed"], 0, "{fp32}");
    assert_eq!(fp32["score"]["placed"], 0, "{fp32}");

    // The reference set is the captions' own drawings: every one passes.
    let reference = &doc["configurations"][1];
    assert_eq!(reference["name"], "reference");
    assert_eq!(reference["score"]["passed"], 3, "{reference}");
    assert_eq!(reference["score"]["placed"], 3, "{reference}");
    assert!(reference["score"]["mean_iou"].as_f64().unwrap() > 0.99);
    assert_eq!(reference["verdicts"][2][0], 2);
    let table = ok(run(
        &cache,
        &["model", "judge", &bench.display().to_string()],
    ));
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(row("fp32").contains("  0%"), "{table}");
    assert!(row("reference").contains("100%"), "{table}");
}

#[test]
fn prompts_that_are_not_demo_captions_are_refused_naming_the_image() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let prompts = root.path().join("prompts.csv");
    std::fs::write(
        &prompts,
        "prompt\na small red star in the centre on a blue background\na photo of a cat\n\
         two large white rings on a black background\n",
    )
    .unwrap();
    let bench = root.path().join("bench");
    ok(benchmark(&cache, &prompts, None, &bench));
    let o = run(&cache, &["model", "judge", &bench.display().to_string()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("image 1's prompt")
            && err.contains("\"a photo of a cat\" is not a demo caption"),
        "{err}"
    );
}

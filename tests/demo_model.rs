//! The built-in `tiny` model is the trained demo model, and it draws: on held-out captions
//! (combinations of shape, colour and background it never saw) at 28 steps and CFG 4, the
//! pixel judge finds the colours, place and size right in at least 80 % of its pictures
//! (issue 20's criterion); 8-bit weights keep that score, 2-bit weights lose it; its VAE alone
//! reconstructs held-out pictures the judge recognises, a random one does not. Everything goes
//! through the CLI a user runs (`model shapes`, `benchmark`, `model judge`, `model judge-vae`).

mod common;

use std::path::Path;

use common::stdout_of_success as ok;

/// Held-out prompts the test generates.
const PROMPTS: usize = 10;
/// Classifier-free guidance of the README's demo walkthrough.
const CFG: &str = "4";

fn run(cache: &Path, args: &[&str]) -> String {
    ok(common::sd3lab_command(cache, args).output().unwrap())
}

#[test]
fn the_built_in_tiny_model_is_the_shipped_demo_model() {
    let root = tempfile::tempdir().unwrap();
    let files = sd3lab::model::source::tiny_model_in(root.path()).unwrap();
    let bytes = std::fs::read(&files.checkpoint).unwrap();
    assert!(bytes == sd3lab::model::source::DEMO_CHECKPOINT);
    // The demo architecture (the tiny MMDiT, a 64-channel VAE), as the loader reads it from
    // the tensor shapes.
    let (mmdit, vae) = sd3lab::model::source::infer_config(&files.checkpoint).unwrap();
    let demo = sd3lab::model::Preset::Demo.config(None);
    assert_eq!(mmdit, demo.mmdit);
    assert_eq!(vae, demo.vae);
    assert_eq!(vae.block_out_channels, [64; 4]);
    // OpenAI CLIP's tokenizer: caption words are single tokens.
    let t = sd3lab::model::tokenizer::ClipTokenizer::load(
        &files.tokenizer_l,
        sd3lab::model::tokenizer::Padding::Eos,
    )
    .unwrap();
    assert_eq!(t.tokenize("a photo of a cat")[1..3], [320, 1125]);
}

#[test]
fn the_demo_model_draws_held_out_captions_that_the_judge_recognises() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let eval = root.path().join("eval");
    let count = PROMPTS.to_string();
    let eval_s = eval.display().to_string();
    run(
        &cache,
        &[
            "model",
            "shapes",
            "--held-out",
            "--count",
            &count,
            "--seed",
            "0",
            "--output",
            &eval_s,
        ],
    );
    let bench = root.path().join("bench");
    let (prompts, bench_s) = (
        eval.join("prompts.csv").display().to_string(),
        bench.display().to_string(),
    );
    run(
        &cache,
        &[
            "benchmark",
            "--model",
            "tiny",
            "--height",
            "64",
            "--width",
            "64",
            "--num-images",
            &count,
            "--num-steps",
            "28",
            "--cfg-scale",
            CFG,
            "--warmup",
            "0",
            "--skip-metrics",
            "--prompt-csv",
            &prompts,
            "--config",
            "fp32",
            "--config",
            "w8",
            "--config",
            "w2",
            "--output-dir",
            &bench_s,
        ],
    );
    let doc: serde_json::Value =
        serde_json::from_str(&run(&cache, &["model", "judge", &bench_s, "--json"])).unwrap();
    // Pictures whose colours, place and size the judge finds right (issue 20's criterion;
    // the demo model's shapes are rounder than asked, so few also pass the shape check).
    let placed = |i: usize| {
        let c = &doc["configurations"][i];
        eprintln!("{}: {}", c["name"], c["score"]);
        c["score"]["placed"].as_u64().unwrap() as usize
    };
    let (fp32, w8, w2) = (placed(0), placed(1), placed(2));
    assert_eq!(doc["configurations"][0]["name"], "fp32");
    assert_eq!(doc["configurations"][2]["name"], "w2g64");
    // The first 10 of `assets/demo-prompts.csv`. Measured: fp32 10 of these 10 (35 of all
    // 40, 88 %), w8 9, w2 1.
    assert!(fp32 >= 8, "fp32: {fp32} of {PROMPTS} placed");
    assert!(
        w8 + 1 >= fp32,
        "w8 ({w8}) should keep fp32's score ({fp32})"
    );
    assert!(
        w2 + 4 <= fp32,
        "w2 ({w2}) should lose most of fp32's score ({fp32})"
    );
}

#[test]
fn the_demo_models_vae_reconstructs_what_a_random_one_cannot() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let placed = |model: &str| {
        let doc: serde_json::Value = serde_json::from_str(&run(
            &cache,
            &[
                "model",
                "judge-vae",
                "--model",
                model,
                "--count",
                "40",
                "--json",
            ],
        ))
        .unwrap();
        let c = &doc["configurations"][0];
        eprintln!("{model}: {}", c["score"]);
        assert_eq!(c["score"]["pictures"], 40);
        c["score"]["placed"].as_u64().unwrap()
    };
    // A random model of the demo architecture.
    let random = root.path().join("random");
    run(
        &cache,
        &[
            "model",
            "synth",
            "--preset",
            "demo",
            "--output",
            &random.display().to_string(),
        ],
    );
    let (trained, untrained) = (placed("tiny"), placed(&random.display().to_string()));
    // Measured: 38 of 40 for the shipped VAE (35 for the model's own pictures).
    assert!(trained >= 36, "the demo VAE placed {trained} of 40");
    assert!(untrained <= 2, "a random VAE placed {untrained} of 40");
}

//! `sd3lab model train-demo` on a few steps: a run stopped at checkpoints and continued (once
//! with the JSON older than the tensors, as a crash between the two leaves it) writes the same
//! files, byte for byte, as one uninterrupted run; the trained folder is a model `generate`
//! loads; other settings, fewer steps than done, more VAE steps after the MMDiT phase started
//! and a side the MMDiT cannot patch are refused.

mod common;

use std::path::Path;
use std::process::Output;

fn train(cache: &Path, out: &Path, vae: usize, mmdit: usize, batch: usize) -> Output {
    let (vae, mmdit, batch) = (vae.to_string(), mmdit.to_string(), batch.to_string());
    common::sd3lab_command(
        cache,
        &[
            "model",
            "train-demo",
            "--output",
            &out.display().to_string(),
            "--vae-steps",
            &vae,
            "--mmdit-steps",
            &mmdit,
            "--batch",
            &batch,
            "--side",
            "32",
            "--checkpoint-every",
            "2",
        ],
    )
    .output()
    .unwrap()
}

use common::stdout_of_success as ok;

#[test]
fn a_continued_run_equals_an_uninterrupted_one_and_its_model_generates() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let (whole, parts) = (root.path().join("whole"), root.path().join("parts"));
    let said = ok(train(&cache, &whole, 4, 4, 2));
    assert!(
        said.contains("VAE 4/4 steps") && said.contains("MMDiT 4/4 steps"),
        "{said}"
    );
    ok(train(&cache, &parts, 2, 0, 2));
    let older_json = std::fs::read(parts.join("train-state.json")).unwrap();
    let said = ok(train(&cache, &parts, 4, 2, 2));
    assert!(
        said.contains("VAE 4/4") && said.contains("MMDiT 2/2"),
        "{said}"
    );
    // A crash after the tensors were written, before the JSON: the tensors' own counters
    // say where they are.
    std::fs::write(parts.join("train-state.json"), older_json).unwrap();
    ok(train(&cache, &parts, 4, 4, 2));
    for f in [
        "model/sd3_medium.safetensors",
        "train-state.safetensors",
        "train-state.json",
    ] {
        let (a, b) = (
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(parts.join(f)).unwrap(),
        );
        assert!(
            a == b,
            "{f} differs between the whole and the continued run"
        );
    }
    // The trained weights moved away from the initial ones.
    let init = root.path().join("init");
    ok(common::sd3lab_command(
        &cache,
        &[
            "model",
            "synth",
            "--preset",
            "tiny",
            "--output",
            &init.display().to_string(),
        ],
    )
    .output()
    .unwrap());
    assert_ne!(
        std::fs::read(init.join("sd3_medium.safetensors")).unwrap(),
        std::fs::read(whole.join("model/sd3_medium.safetensors")).unwrap()
    );

    let png = root.path().join("out.png");
    ok(common::sd3lab_command(
        &cache,
        &[
            "generate",
            "--model",
            &whole.join("model").display().to_string(),
            "--prompt",
            "a small red star at the top left on a blue background",
            "--height",
            "32",
            "--width",
            "32",
            "--num-steps",
            "3",
            "--output",
            &png.display().to_string(),
        ],
    )
    .output()
    .unwrap());
    assert!(png.is_file());

    let refused = |vae, mmdit, batch| {
        let o = train(&cache, &whole, vae, mmdit, batch);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = refused(4, 4, 3);
    assert!(
        err.contains("train-state.json") && err.contains("other settings"),
        "{err}"
    );
    let err = refused(3, 4, 2);
    assert!(
        err.contains("4 VAE steps done") && err.contains("--vae-steps"),
        "{err}"
    );
    let err = refused(6, 6, 2);
    assert!(err.contains("once the MMDiT phase has started"), "{err}");
    // A side whose latent cannot be cut into 2×2 patches is refused before any training.
    let o = common::sd3lab_command(
        &cache,
        &[
            "model",
            "train-demo",
            "--output",
            &root.path().join("odd").display().to_string(),
            "--side",
            "24",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("side 24"), "{err}");
    assert!(!root.path().join("odd/model").exists());
}

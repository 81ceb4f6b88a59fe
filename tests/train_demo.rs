//! `sd3lab model train-demo` on a few steps: a run stopped by Ctrl-C in each phase and continued
//! (once with the JSON older than the tensors, as a crash between the two leaves it) writes the same
//! files, byte for byte, as one uninterrupted run; the trained folder is a model `generate`
//! loads; other settings (batches, latent pool, noise-level shift), a folder of the previous
//! recipe's schema, fewer steps than done, more VAE steps after the MMDiT phase started, another
//! length for a started phase, a side the MMDiT cannot patch and a noise-level shift not above 0
//! are refused.

mod common;

use std::path::Path;
use std::process::Output;

/// `model train-demo` into `out` at 32×32 with a checkpoint every 2 steps, not yet run.
fn train_command(
    cache: &Path,
    out: &Path,
    vae: usize,
    mmdit: usize,
    batch: usize,
) -> std::process::Command {
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
            "--vae-batch",
            &batch,
            "--batch",
            &batch,
            "--side",
            "32",
            "--checkpoint-every",
            "2",
            "--latent-pool",
            "24",
        ],
    )
}

fn train(cache: &Path, out: &Path, vae: usize, mmdit: usize, batch: usize) -> Output {
    train_command(cache, out, vae, mmdit, batch)
        .output()
        .unwrap()
}

use common::stdout_of_success as ok;

/// Steps of each phase in the runs compared (enough for the learning rate to warm up, hold and
/// decay).
const STEPS: usize = 8;

/// A run of [`STEPS`] per phase, stopped as Ctrl-C stops it (SIGINT) once its output shows
/// `line`; the stopped run must exit 130. Returns what it printed.
fn train_until_interrupted(cache: &Path, out: &Path, line: &str) -> String {
    use std::io::BufRead;
    let mut child = train_command(cache, out, STEPS, STEPS, 2)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut said = String::new();
    let mut sent = false;
    for l in std::io::BufReader::new(stderr).lines() {
        let l = l.unwrap();
        if !sent && l.contains(line) {
            let pid = child.id().to_string();
            let kill = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
            assert!(kill.unwrap().success());
            sent = true;
        }
        said.push_str(&l);
        said.push('\n');
    }
    let o = child.wait_with_output().unwrap();
    said.push_str(&String::from_utf8_lossy(&o.stdout));
    assert!(sent, "{line:?} never came: {said}");
    assert_eq!(o.status.code(), Some(130), "{said}");
    said
}

#[test]
fn a_continued_run_equals_an_uninterrupted_one_and_its_model_generates() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let (whole, parts) = (root.path().join("whole"), root.path().join("parts"));
    let said = ok(train(&cache, &whole, STEPS, STEPS, 2));
    assert!(
        said.contains("VAE 8/8 steps") && said.contains("MMDiT 8/8 steps"),
        "{said}"
    );
    // Ctrl-C in the VAE phase, then in the MMDiT phase: each saves where it stopped.
    let said = train_until_interrupted(&cache, &parts, "VAE step 2:");
    assert!(said.contains("cancelled: VAE"), "{said}");
    let older_json = std::fs::read(parts.join("train-state.json")).unwrap();
    let said = train_until_interrupted(&cache, &parts, "MMDiT step 2:");
    assert!(said.contains("VAE 8/8"), "{said}");
    // A crash after the tensors were written, before the JSON: the tensors' own counters
    // say where they are.
    std::fs::write(parts.join("train-state.json"), older_json).unwrap();
    ok(train(&cache, &parts, STEPS, STEPS, 2));
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
    // The trained weights moved away from the initial ones: the VAE starts as `model synth`'s
    // checkpoint of the same preset and seed, and its decoder's last convolution moved by far
    // more than float16 rounding; the MMDiT starts as adaLN-Zero, whose final Linear is zero.
    let init = root.path().join("init");
    ok(common::sd3lab_command(
        &cache,
        &[
            "model",
            "synth",
            "--preset",
            "demo",
            "--seed",
            "0",
            "--output",
            &init.display().to_string(),
        ],
    )
    .output()
    .unwrap());
    let load = |path: &Path| sd3lab::model::weights::load_safetensors(path).unwrap();
    let values = |tensors: &std::collections::HashMap<String, mlx_rs::Array>, key: &str| {
        let t = tensors[key].as_dtype(mlx_rs::Dtype::Float32).unwrap();
        t.eval().unwrap();
        t.as_slice::<f32>().to_vec()
    };
    let (initial, trained) = (
        load(&init.join("sd3_medium.safetensors")),
        load(&whole.join("model/sd3_medium.safetensors")),
    );
    let conv_out = "first_stage_model.decoder.conv_out.weight";
    let (before, after) = (values(&initial, conv_out), values(&trained, conv_out));
    let moved = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the VAE decoder moved by at most {moved}");
    let final_linear = format!(
        "{}final_layer.linear.weight",
        sd3lab::model::weights::MMDIT_PREFIX
    );
    assert!(
        values(&trained, &final_linear).iter().any(|v| *v != 0.0),
        "the MMDiT's final Linear is still zero"
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
    let err = refused(8, 8, 3);
    assert!(
        err.contains("train-state.json") && err.contains("other settings"),
        "{err}"
    );
    // Every setting of the run is part of it: another latent pool, VAE batch or noise-level
    // shift is refused as well, naming the run's own.
    for (flag, value, theirs) in [
        ("--latent-pool", "25", "latent pool 24"),
        ("--vae-batch", "3", "VAE batch 2"),
        ("--sigma-shift", "2", "sigma shift 3"),
    ] {
        let base = train_command(&cache, &whole, 8, 8, 2);
        let mut args: Vec<String> = base
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.into(),
            None => args.extend([flag.into(), value.into()]),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::sd3lab_command(&cache, &args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("other settings") && err.contains(theirs),
            "{flag} {value}: {err}"
        );
    }
    // A folder of another recipe's schema is refused by its schema (its settings differ).
    let old = root.path().join("old-recipe");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("train-state.json"),
        r#"{"schema": "sd3lab.train-demo/1", "settings": {"seed": 0, "vae_steps": 8,
            "mmdit_steps": 8, "batch": 2, "side": 32, "vae_learning_rate": 0.001,
            "mmdit_learning_rate": 0.0005}, "vae_done": 8, "mmdit_done": 8}"#,
    )
    .unwrap();
    let o = train(&cache, &old, 8, 8, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("schema sd3lab.train-demo/1 is not"),
        "{err}"
    );
    let err = refused(7, 8, 2);
    assert!(
        err.contains("8 VAE steps done") && err.contains("--vae-steps"),
        "{err}"
    );
    let err = refused(10, 10, 2);
    assert!(err.contains("once the MMDiT phase has started"), "{err}");
    // A started phase keeps its length (its learning rate's schedule follows it).
    let err = refused(8, 12, 2);
    assert!(
        err.contains("MMDiT phase was started with --mmdit-steps 8"),
        "{err}"
    );
    // Settings the trainer cannot use are refused before any training, naming the value: a
    // side whose latent cannot be cut into 2×2 patches, a noise-level shift not above 0.
    for (folder, flag, value, named) in [
        ("odd", "--side", "24", "side 24"),
        ("unshiftable", "--sigma-shift", "0", "sigma shift 0"),
    ] {
        let out = root.path().join(folder);
        let o = common::sd3lab_command(
            &cache,
            &[
                "model",
                "train-demo",
                "--output",
                &out.display().to_string(),
                flag,
                value,
            ],
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(named), "{err}");
        assert!(!out.join("model").exists(), "{folder}");
    }
}

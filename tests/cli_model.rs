//! The model commands end to end: `generate` on the built-in tiny model (the README's example),
//! `model layers`, `model synth`, and clear errors for broken model folders.

mod common;

use std::path::Path;
use std::process::Output;

fn sd3lab(cache: &Path, args: &[&str]) -> Output {
    common::sd3lab_command(cache, args)
        .output()
        .expect("run sd3lab")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_with_the_tiny_model_writes_a_png_and_a_latent() {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("fox.png");
    let latent_path = dir.path().join("final_latent.npy");
    let o = sd3lab(
        dir.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a red fox in snow",
            "--seed",
            "1",
            "--num-steps",
            "4",
            "--height",
            "256",
            "--width",
            "192",
            "--output",
            png_path.to_str().unwrap(),
            "--latent-out",
            latent_path.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], "sd3lab.generate/1");
    assert_eq!(doc["seconds"]["per_step"].as_array().unwrap().len(), 4);
    assert!(doc["peak_memory_bytes"]["mlx"].as_u64().unwrap() > 0);
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!(
        (info.width, info.height, info.color_type),
        (192, 256, png::ColorType::Rgb)
    );
    let mut f = std::fs::File::open(&latent_path).unwrap();
    let latent = sd3lab::calib::npy::read_npy(&mut f, u64::MAX).unwrap();
    assert_eq!(latent.shape, vec![1, 32, 24, 16]);

    // Same seed, same image; another seed, another image.
    let again = dir.path().join("again.png");
    let other = dir.path().join("other.png");
    for (path, seed) in [(&again, "1"), (&other, "2")] {
        let o = sd3lab(
            dir.path(),
            &[
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "a red fox in snow",
                "--seed",
                seed,
                "--num-steps",
                "4",
                "--height",
                "256",
                "--width",
                "192",
                "--output",
                path.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&png_path), bytes(&again));
    assert_ne!(bytes(&png_path), bytes(&other));
}

#[test]
fn layers_lists_340_for_sd3_medium_and_reads_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let o = sd3lab(
        dir.path(),
        &["model", "layers", "--preset", "sd3-medium", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["count"], 340);
    assert_eq!(doc["layers"][0]["name"], "y_embedder.mlp.layers.0");

    let model = dir.path().join("m");
    let o = sd3lab(
        dir.path(),
        &[
            "model",
            "synth",
            "--output",
            model.to_str().unwrap(),
            "--preset",
            "tiny",
            "--depth",
            "3",
            "--seed",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sd3lab(
        dir.path(),
        &[
            "model",
            "layers",
            "--model",
            model.to_str().unwrap(),
            "--json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["mmdit"]["depth"], 3);
    assert_eq!(doc["count"], 5 + 14 * 2 + 11 + 2);
}

#[test]
fn broken_model_folders_fail_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let o = sd3lab(
        dir.path(),
        &[
            "model",
            "synth",
            "--output",
            model.to_str().unwrap(),
            "--preset",
            "tiny",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = || {
        sd3lab(
            dir.path(),
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "x",
                "--num-steps",
                "1",
                "--height",
                "64",
                "--width",
                "64",
                "--output",
                dir.path().join("x.png").to_str().unwrap(),
            ],
        )
    };
    assert!(run().status.success(), "{}", stderr(&run()));

    // A missing part of the layout.
    std::fs::remove_file(model.join("clip_g/config.json")).unwrap();
    let o = run();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("clip_g/config.json"), "{}", stderr(&o));
    let o2 = sd3lab(
        dir.path(),
        &[
            "model",
            "synth",
            "--output",
            model.to_str().unwrap(),
            "--preset",
            "tiny",
        ],
    );
    assert!(o2.status.success());

    // A truncated checkpoint.
    let ckpt = model.join("sd3_medium.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 3]).unwrap();
    let o = run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("sd3_medium.safetensors"),
        "{}",
        stderr(&o)
    );

    // A checkpoint with a tensor too many and one with a wrong shape.
    let mut specs =
        sd3lab::model::synth::mmdit_specs(&sd3lab::model::Preset::Tiny.config(None).mmdit);
    specs.extend(sd3lab::model::synth::vae_decoder_specs(
        &sd3lab::model::Preset::Tiny.config(None).vae,
    ));
    let mut extra = specs.clone();
    extra.push(sd3lab::model::synth::TensorSpec::new(
        "model.diffusion_model.surprise.weight",
        &[2, 2],
        sd3lab::model::synth::Init::Small,
    ));
    sd3lab::model::synth::write_safetensors(&ckpt, &extra, 0).unwrap();
    let o = run();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("surprise.weight"), "{}", stderr(&o));
    let mut wrong = specs.clone();
    let at = wrong
        .iter()
        .position(|s| s.name.ends_with("final_layer.linear.weight"))
        .unwrap();
    wrong[at].shape = vec![64, 64];
    sd3lab::model::synth::write_safetensors(&ckpt, &wrong, 0).unwrap();
    let o = run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("final_layer.linear.weight") && stderr(&o).contains("shape"),
        "{}",
        stderr(&o)
    );

    // Unknown model names.
    let o = sd3lab(
        dir.path(),
        &[
            "generate", "--model", "nonsense", "--prompt", "x", "--output", "x.png",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown model 'nonsense'"),
        "{}",
        stderr(&o)
    );
    let o = sd3lab(
        dir.path(),
        &[
            "generate",
            "--model",
            "sd3-medium",
            "--prompt",
            "x",
            "--output",
            "x.png",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not in the Hugging Face cache"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_with_real_w4_quantization_reports_the_weight_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.png");
    let o = sd3lab(
        dir.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a red fox in snow",
            "--num-steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--quant",
            "w4",
            "--output",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = &doc["quant"];
    assert_eq!(q["mode"], "real");
    assert_eq!(q["quantized_layers"], 31);
    assert!(
        q["mmdit_bytes_after"].as_u64().unwrap() * 2 < q["mmdit_bytes_before"].as_u64().unwrap(),
        "{q}"
    );
    assert!(out.is_file());
    let o = sd3lab(
        dir.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "x",
            "--quant",
            "w7",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("7 bits is not supported"),
        "{}",
        stderr(&o)
    );
}

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

/// `generate` on `model` (64×64, one step), expected to fail cleanly: exit status 1 (not a
/// panic's 101, not a signal such as SIGSEGV or SIGABRT), no panic message, and every `expect`
/// text in its error.
fn refused_cleanly(cache: &Path, model: &Path, what: &str, expect: &[&str]) {
    let out = cache.join("hostile.png");
    let o = sd3lab(
        cache,
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red fox",
            "--num-steps",
            "1",
            "--height",
            "64",
            "--width",
            "64",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{what}: {:?}\n{err}", o.status);
    assert!(!err.contains("panicked"), "{what}: {err}");
    for e in expect {
        assert!(err.contains(e), "{what}: expected {e:?} in\n{err}");
    }
    assert!(!out.exists(), "{what}: an image was written");
}

/// A fresh tiny model directory with its checkpoint's tensors edited by `edit`.
fn with_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<sd3lab::model::synth::TensorSpec>)) {
    use sd3lab::model::synth;
    let config = sd3lab::model::Preset::Tiny.config(None);
    sd3lab::model::source::write_model_dir(dir, &config, 3).unwrap();
    let mut specs = synth::mmdit_specs(&config.mmdit);
    specs.extend(synth::vae_decoder_specs(&config.vae));
    edit(&mut specs);
    synth::write_safetensors(&dir.join("sd3_medium.safetensors"), &specs, 3).unwrap();
}

fn set_shape(specs: &mut [sd3lab::model::synth::TensorSpec], key: &str, shape: &[usize]) {
    let at = specs
        .iter()
        .position(|s| s.name == key)
        .unwrap_or_else(|| panic!("no {key}"));
    specs[at].shape = shape.to_vec();
}

/// Issue 17 item 7: hostile checkpoints (a tensor of the wrong rank, a zero width, a block
/// numbered 10⁹, a zero patch) are refused naming the file and the key, never with a panic or
/// an abort.
#[test]
fn hostile_checkpoints_are_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let m = |k: &str| format!("model.diffusion_model.{k}");
    let d = |k: &str| format!("first_stage_model.decoder.{k}");
    type Edit = Box<dyn Fn(&mut Vec<sd3lab::model::synth::TensorSpec>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "patch embedding of rank 1",
            Box::new(move |s| set_shape(s, &m("x_embedder.proj.weight"), &[128])),
            m("x_embedder.proj.weight"),
        ),
        (
            "zero hidden size",
            Box::new(move |s| set_shape(s, &m("x_embedder.proj.weight"), &[0, 16, 2, 2])),
            m("x_embedder.proj.weight"),
        ),
        (
            "zero patch size",
            Box::new(move |s| set_shape(s, &m("x_embedder.proj.weight"), &[128, 16, 0, 0])),
            m("x_embedder.proj.weight"),
        ),
        (
            "position table of rank 1",
            Box::new(move |s| set_shape(s, &m("pos_embed"), &[4096 * 128])),
            m("pos_embed"),
        ),
        (
            "position table of rank 0",
            Box::new(move |s| set_shape(s, &m("pos_embed"), &[])),
            m("pos_embed"),
        ),
        (
            "MLP of rank 1",
            Box::new(move |s| set_shape(s, &m("joint_blocks.0.x_block.mlp.fc1.weight"), &[512])),
            m("joint_blocks.0.x_block.mlp.fc1.weight"),
        ),
        (
            "a joint block numbered 10⁹",
            Box::new(move |s| {
                s.push(sd3lab::model::synth::TensorSpec::new(
                    m("joint_blocks.1000000000.x_block.attn.qkv.weight"),
                    &[6, 2],
                    sd3lab::model::synth::Init::Small,
                ))
            }),
            m("joint_blocks.1000000000"),
        ),
        (
            "VAE input convolution of rank 1",
            Box::new(move |s| set_shape(s, &d("conv_in.weight"), &[32])),
            d("conv_in.weight"),
        ),
        (
            "VAE output convolution of rank 0",
            Box::new(move |s| set_shape(s, &d("conv_out.weight"), &[])),
            d("conv_out.weight"),
        ),
        (
            "VAE shortcut of rank 1",
            Box::new(move |s| {
                s.push(sd3lab::model::synth::TensorSpec::new(
                    d("up.0.block.0.nin_shortcut.weight"),
                    &[32],
                    sd3lab::model::synth::Init::Small,
                ))
            }),
            d("up.0.block.0.nin_shortcut.weight"),
        ),
    ];
    for (i, (what, edit, key)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("m{i}"));
        with_checkpoint(&model, |s| edit(s));
        refused_cleanly(
            dir.path(),
            &model,
            what,
            &["sd3_medium.safetensors", key.as_str()],
        );
    }
}

/// Issue 17 item 7: hostile CLIP `config.json` files (10⁹ layers, no heads, heads that do not
/// divide the width, a zero width, too few positions for 77 tokens, sizes past 32 bits) are
/// refused naming the file and the key, before anything is allocated for them.
#[test]
fn hostile_clip_configs_are_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value); 7] = [
        ("num_hidden_layers", 1_000_000_000u64.into()),
        ("num_attention_heads", 0.into()),
        ("num_attention_heads", 5.into()),
        ("hidden_size", 0.into()),
        ("max_position_embeddings", 10.into()),
        ("vocab_size", 0.into()),
        ("hidden_size", (1u64 << 40).into()),
    ];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        let model = dir.path().join(format!("m{i}"));
        sd3lab::model::source::write_model_dir(
            &model,
            &sd3lab::model::Preset::Tiny.config(None),
            3,
        )
        .unwrap();
        let path = model.join("clip_g/config.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json[key] = value.clone();
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        refused_cleanly(
            dir.path(),
            &model,
            &format!("{key} = {value}"),
            &["clip_g/config.json", key],
        );
    }
}

/// Issue 17 item 7: a token id past the text encoder's embedding table (read out of bounds
/// before: a crash, or for small overshoots an image from whatever memory followed) is refused
/// naming the vocabulary file, the token and the table.
#[test]
fn token_ids_past_the_embedding_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = sd3lab::model::Preset::Tiny.config(None);
    // A small overshoot (a few rows) and a huge one (past i32: a negative index once cast).
    for (i, id) in [config.clip_l.vocab_size as u64 + 3, u32::MAX as u64]
        .into_iter()
        .enumerate()
    {
        let model = dir.path().join(format!("m{i}"));
        sd3lab::model::source::write_model_dir(&model, &config, 3).unwrap();
        let path = model.join("tokenizer_l/vocab.json");
        let mut vocab: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        vocab.insert("red</w>".into(), id.into());
        std::fs::write(&path, serde_json::to_vec(&vocab).unwrap()).unwrap();
        refused_cleanly(
            dir.path(),
            &model,
            &format!("id {id}"),
            &["tokenizer_l/vocab.json", "red</w>", &id.to_string()],
        );
    }
    // The embedding table itself smaller than the vocabulary (config and weights agreeing).
    let model = dir.path().join("small-table");
    sd3lab::model::source::write_model_dir(&model, &config, 3).unwrap();
    let small = sd3lab::model::ClipConfig {
        vocab_size: 300,
        ..config.clip_g.clone()
    };
    sd3lab::model::synth::write_clip(&model.join("clip_g"), &small, 5).unwrap();
    refused_cleanly(
        dir.path(),
        &model,
        "a 300-row embedding table",
        &["tokenizer_g/vocab.json", "300", "clip_g"],
    );
}

/// Issue 17 item 10: an OS error is printed once, not once in its context's message and again
/// as that message's cause (anyhow's `{:#}` chain prints both).
#[test]
fn an_os_error_appears_once_in_the_printed_error() {
    let dir = tempfile::tempdir().unwrap();
    // The cache folder is a file: creating the tiny model's folder in it fails.
    let cache = dir.path().join("cache-is-a-file");
    std::fs::write(&cache, b"not a folder").unwrap();
    let o = sd3lab(
        &cache,
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "x",
            "--output",
            dir.path().join("x.png").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cache-is-a-file"), "{err}");
    let os = "(os error ";
    assert_eq!(err.matches(os).count(), 1, "{err}");
}

/// Issue 17 item 10: control bytes in a file name (here an ANSI colour sequence) are escaped
/// in the printed error, not sent to the terminal.
#[test]
fn control_bytes_in_names_are_escaped_in_the_printed_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = sd3lab(
        dir.path(),
        &[
            "generate",
            "--model",
            "model\x1b[31mred\u{9b}2J",
            "--prompt",
            "x",
            "--output",
            dir.path().join("x.png").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(r"model\x1b[31mred\u{9b}2J"), "{err}");
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
}

/// Issue 17 item 7: a depth of 10⁹ blocks (which would be allocated block by block until the
/// memory ran out) is refused at once by `model synth` and `model layers`; `model synth` into
/// a file is refused before anything is written.
#[test]
fn model_commands_refuse_absurd_depths_and_a_file_as_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    for args in [
        vec!["model", "layers", "--depth", "1000000000"],
        vec![
            "model",
            "synth",
            "--depth",
            "1000000000",
            "--output",
            out.to_str().unwrap(),
        ],
    ] {
        let o = sd3lab(dir.path(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("depth is 1000000000"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(!out.exists());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let o = sd3lab(
        dir.path(),
        &["model", "synth", "--output", file.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is a file, not a folder"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

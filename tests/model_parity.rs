//! Parity with DiffusionKit's MLX pipeline on synthetic checkpoints of two shapes, float32:
//! the same published-layout file is loaded by both, the same inputs go in, the outputs must
//! agree to a relative error of 1e-4 (max abs difference over max abs value).

mod common;

use std::path::Path;

use mlx_rs::{Array, Dtype};
use sd3lab::calib::NpyArray;
use sd3lab::model::MmditConfig;
use sd3lab::model::mmdit::load_mmdit;
use sd3lab::model::synth::{mmdit_specs, write_safetensors};

const TOLERANCE: f64 = 1e-4;

fn to_mlx(a: &NpyArray) -> Array {
    let shape: Vec<i32> = a.shape.iter().map(|&d| d as i32).collect();
    Array::from_slice(&a.data.to_f32_vec(), &shape)
}

fn relative_error(ours: &Array, want: &NpyArray) -> f64 {
    assert_eq!(
        ours.shape().iter().map(|&d| d as usize).collect::<Vec<_>>(),
        want.shape,
        "shapes differ"
    );
    let a = sd3lab::model::nn::to_vec_f32(ours).unwrap();
    let b = want.data.to_f32_vec();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    assert!(scale > 0.0 && a.iter().all(|x| x.is_finite()));
    diff / scale
}

fn shapes() -> Vec<(&'static str, MmditConfig)> {
    let tiny = sd3lab::model::Preset::Tiny.config(None).mmdit;
    let other = MmditConfig {
        depth: 3,
        hidden_size: 192,
        num_heads: 3,
        max_latent_resolution: 16,
        pooled_dim: 96,
        ..tiny.clone()
    };
    vec![("tiny", tiny), ("depth3-width192", other)]
}

fn check_mmdit(name: &str, cfg: &MmditConfig, dir: &Path) {
    let ckpt = dir.join("sd3_medium.safetensors");
    write_safetensors(&ckpt, &mmdit_specs(cfg), 7).unwrap();
    let cfg_file = dir.join("config.json");
    std::fs::write(&cfg_file, serde_json::to_string(cfg).unwrap()).unwrap();
    common::run_oracle(
        "dk_oracle.py",
        &[
            "mmdit".as_ref(),
            ckpt.as_os_str(),
            cfg_file.as_os_str(),
            dir.as_os_str(),
        ],
    );
    let model = load_mmdit(&ckpt, cfg, Dtype::Float32).unwrap();
    for batch in [2, 1] {
        let read = |what: &str| common::read_npy(&dir.join(format!("b{batch}_{what}.npy")));
        let x = to_mlx(&read("x"));
        let ctx = to_mlx(&read("ctx"));
        let pooled = to_mlx(&read("pooled"));
        let t = to_mlx(&read("t"));
        let m = model.modulation(&pooled, &t).unwrap();
        let out = model.forward(&x, &ctx, &m).unwrap();
        let err = relative_error(&out, &read("out"));
        eprintln!("{name} batch {batch}: MMDiT relative error {err:.2e}");
        assert!(
            err <= TOLERANCE,
            "{name} batch {batch}: MMDiT relative error {err:.2e}"
        );
    }
}

#[test]
fn mmdit_forward_matches_diffusionkit() {
    for (name, cfg) in shapes() {
        let dir = tempfile::tempdir().unwrap();
        check_mmdit(name, &cfg, dir.path());
    }
}

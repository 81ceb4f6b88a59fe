//! Quantization of the MMDiT's Linears: real (packed weights, quantized_matmul) and simulated
//! (quantize→dequantize, float matmul) agree; fewer bits move the output further; layers that
//! cannot be quantized are reported; plans are validated.

use mlx_rs::{Array, Dtype};
use sd3lab::model::mmdit::{Mmdit, load_mmdit};
use sd3lab::model::nn::to_vec_f32;
use sd3lab::model::synth::{mmdit_specs, write_safetensors};
use sd3lab::quant::{LayerQuant, QuantConfig, QuantMode, apply};

fn tiny() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    sd3lab::model::MmditConfig,
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sd3lab::model::Preset::Tiny.config(None).mmdit;
    let ckpt = dir.path().join("sd3_medium.safetensors");
    write_safetensors(&ckpt, &mmdit_specs(&cfg), 21).unwrap();
    (dir, ckpt, cfg)
}

fn run(m: &Mmdit) -> Vec<f32> {
    let key = mlx_rs::random::key(3).unwrap();
    let x = mlx_rs::random::normal::<f32>(&[2, 8, 8, 16][..], None, None, &key).unwrap();
    let ctx = mlx_rs::random::normal::<f32>(&[2, 154, 4096][..], None, None, &key)
        .unwrap()
        .multiply(Array::from_f32(0.1))
        .unwrap();
    let pooled =
        mlx_rs::random::normal::<f32>(&[2, m.config.pooled_dim as i32][..], None, None, &key)
            .unwrap();
    let modulation = m.modulation(&pooled, &Array::from_f32(500.0)).unwrap();
    to_vec_f32(&m.forward(&x, &ctx, &modulation).unwrap()).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn layer_names_follow_the_registry() {
    let (_d, ckpt, cfg) = tiny();
    let mut m = load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap();
    let names: Vec<String> = m.linears_mut().into_iter().map(|(n, _)| n).collect();
    let registry: Vec<String> = sd3lab::model::mmdit_linear_layers(&cfg)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, registry);
}

#[test]
fn real_and_simulated_quantization_agree_and_bits_order_the_error() {
    let (_d, ckpt, cfg) = tiny();
    let float = run(&load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap());
    let mut previous = f64::INFINITY;
    for (bits, group) in [(2, 64), (3, 128), (4, 64), (8, 32)] {
        let q = QuantConfig::Uniform(LayerQuant {
            bits,
            group_size: group,
        });
        let mut real = load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap();
        let report = apply(&mut real, &q, QuantMode::Real).unwrap();
        let mut sim = load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap();
        let sim_report = apply(&mut sim, &q, QuantMode::Simulated).unwrap();
        assert_eq!(report.quantized.len(), sim_report.quantized.len());
        // The pooled-text input (80 wide) cannot be split into groups of 32/64/128.
        assert!(
            report
                .skipped
                .iter()
                .any(|(n, why)| n == "y_embedder.mlp.layers.0" && why.contains("not a multiple")),
            "{:?}",
            report.skipped
        );
        assert_eq!(report.quantized.len() + report.skipped.len(), 32);
        assert!(
            report.bytes_after < report.bytes_before,
            "real quantization saves memory"
        );
        assert_eq!(
            sim_report.bytes_after, sim_report.bytes_before,
            "simulation keeps float weights"
        );
        let (r, s) = (run(&real), run(&sim));
        let agree = rel(&r, &s);
        assert!(
            agree < 1e-6,
            "w{bits} g{group}: real vs simulated {agree:.2e}"
        );
        let err = rel(&s, &float);
        eprintln!(
            "w{bits} g{group}: error vs float {err:.3e}, real vs simulated {agree:.1e}, bytes {} → {}",
            report.bytes_before, report.bytes_after
        );
        assert!(err < previous, "w{bits}: error {err} not below {previous}");
        assert!(err > 0.0);
        previous = err;
    }
}

#[test]
fn plans_quantize_only_their_layers_and_are_validated() {
    let (dir, ckpt, cfg) = tiny();
    let plan_path = dir.path().join("plan.json");
    std::fs::write(
        &plan_path,
        r#"{"schema": "sd3lab.plan/1", "layers": {"multimodal_transformer_blocks.0.image_transformer_block.mlp.fc1": {"bits": 4},
             "final_layer.adaLN_modulation.layers.1": {"bits": 8, "group_size": 32}}, "target_bits": 6.0}"#,
    )
    .unwrap();
    let plan = QuantConfig::parse(plan_path.to_str().unwrap(), 64).unwrap();
    let mut m = load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap();
    let report = apply(&mut m, &plan, QuantMode::Real).unwrap();
    assert_eq!(report.quantized.len(), 2);
    assert_eq!(
        report.quantized[1].1,
        LayerQuant {
            bits: 8,
            group_size: 32
        }
    );

    std::fs::write(&plan_path, r#"{"layers": {"no.such.layer": {"bits": 4}}}"#).unwrap();
    let plan = QuantConfig::parse(plan_path.to_str().unwrap(), 64).unwrap();
    let err = apply(
        &mut load_mmdit(&ckpt, &cfg, Dtype::Float32).unwrap(),
        &plan,
        QuantMode::Real,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no.such.layer"), "{err}");
    std::fs::write(
        &plan_path,
        r#"{"layers": {"context_embedder": {"bits": 7}}}"#,
    )
    .unwrap();
    let err = QuantConfig::parse(plan_path.to_str().unwrap(), 64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("7 bits is not supported") && err.contains("context_embedder"),
        "{err}"
    );
    assert!(
        QuantConfig::parse("w7", 64)
            .unwrap_err()
            .to_string()
            .contains("not supported")
    );
    assert!(
        QuantConfig::parse("w4", 48)
            .unwrap_err()
            .to_string()
            .contains("group size 48")
    );
    assert!(
        QuantConfig::parse("nonsense", 64)
            .unwrap_err()
            .to_string()
            .contains("neither")
    );
}

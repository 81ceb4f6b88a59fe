//! The foundation works: MLX arrays cross the FFI boundary intact, GEMM and quantization are
//! numerically right, MLX runs from a second thread, and the binary starts without
//! LD_LIBRARY_PATH with OpenBLAS in charge of the CPU GEMM.

use half::{bf16, f16};
use mlx_rs::Array;

#[test]
fn f32_round_trip_through_item_and_as_slice() {
    let data = [1.5f32, -2.25, 3.0e-8, 65504.0, f32::MIN_POSITIVE, -0.0];
    let a = Array::from_slice(&data, &[2, 3]);
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.as_slice::<f32>(), &data);
    let scalar = Array::from_f32(-7.125);
    assert_eq!(scalar.item_exact::<f32>(), -7.125);
}

#[test]
fn f16_and_bf16_round_trip_bit_exact() {
    let halves: Vec<f16> = [0.0f32, 1.0, -2.5, 0.099_975_586, 65504.0, -6.1035156e-5]
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let a = Array::from_slice(&halves, &[6]);
    assert_eq!(a.dtype(), mlx_rs::Dtype::Float16);
    let back = a.as_slice::<f16>();
    assert_eq!(
        back.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
        halves.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        Array::from_slice(&halves[2..3], &[])
            .item_exact::<f16>()
            .to_bits(),
        halves[2].to_bits()
    );

    let brains: Vec<bf16> = [0.0f32, 1.0, -3.140625, 1.0e30, -1.0e-30]
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let b = Array::from_slice(&brains, &[5]);
    assert_eq!(b.dtype(), mlx_rs::Dtype::Bfloat16);
    assert_eq!(
        b.as_slice::<bf16>()
            .iter()
            .map(|h| h.to_bits())
            .collect::<Vec<_>>(),
        brains.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        Array::from_slice(&brains[2..3], &[])
            .item_exact::<bf16>()
            .to_bits(),
        brains[2].to_bits()
    );

    // Conversions computed by MLX agree with the `half` crate's rounding.
    let f = Array::from_slice(&[0.1f32, 1.0e-3, 3.3333], &[3])
        .as_type::<f16>()
        .unwrap();
    let expected: Vec<u16> = [0.1f32, 1.0e-3, 3.3333]
        .iter()
        .map(|&v| f16::from_f32(v).to_bits())
        .collect();
    assert_eq!(
        f.as_slice::<f16>()
            .iter()
            .map(|h| h.to_bits())
            .collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn matmul_matches_hand_computation() {
    // [[1,2,3],[4,5,6]] · [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = Array::from_slice(&[1f32, 2., 3., 4., 5., 6.], &[2, 3]);
    let b = Array::from_slice(&[7f32, 8., 9., 10., 11., 12.], &[3, 2]);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[2, 2]);
    assert_eq!(c.as_slice::<f32>(), &[58., 64., 139., 154.]);

    // A size that goes through the BLAS path, against a float64 reference.
    let (m, n, k) = (65usize, 33usize, 257usize);
    let av: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let bv: Vec<f32> = (0..k * n)
        .map(|i| ((i * 11 % 61) as f32 - 30.0) / 15.0)
        .collect();
    let c = Array::from_slice(&av, &[m as i32, k as i32])
        .matmul(Array::from_slice(&bv, &[k as i32, n as i32]))
        .unwrap();
    let err = sd3lab::runtime::blas::max_relative_error(&av, &bv, c.as_slice::<f32>(), m, n, k);
    assert!(err < 1e-5, "relative error {err}");
}

#[test]
fn quantize_dequantize_error_is_bounded_by_half_a_step() {
    let (rows, cols, group) = (16i32, 256i32, 64i32);
    let key = mlx_rs::random::key(7).unwrap();
    let w = mlx_rs::random::normal::<f32>(&[rows, cols][..], None, None, &key).unwrap();
    let wv = w.as_slice::<f32>().to_vec();
    let mut previous_mse = f64::INFINITY;
    for bits in [2, 3, 4, 6, 8] {
        let (q, scales, biases) = mlx_rs::ops::quantize(&w, group, bits).unwrap();
        let deq = mlx_rs::ops::dequantize(&q, &scales, &biases, group, bits).unwrap();
        let dv = deq.as_slice::<f32>();
        let sv = scales.as_slice::<f32>();
        let bv = biases.as_slice::<f32>();
        assert_eq!(sv.len(), (rows * cols / group) as usize);
        let levels = (1u32 << bits) - 1;
        let mut mse = 0f64;
        for (g, chunk) in wv.chunks(group as usize).enumerate() {
            let lo = chunk.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = chunk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let ideal_step = (hi - lo) / levels as f32;
            let step = sv[g].abs();
            assert!(
                step <= ideal_step * 1.5 + 1e-6,
                "bits {bits} group {g}: step {step} vs range step {ideal_step}"
            );
            // The grid MLX chose: bias + q·scale for q in 0..=levels (scale may be negative).
            let (bias, scale) = (bv[g], sv[g]);
            let (grid_lo, grid_hi) = {
                let (a, b) = (bias, bias + levels as f32 * scale);
                (a.min(b), a.max(b))
            };
            let mut distinct: Vec<u32> = Vec::new();
            for (i, &x) in chunk.iter().enumerate() {
                let y = dv[g * group as usize + i];
                let err = (x - y).abs();
                // Inside the grid: round to nearest, so at most half a step. Outside (the far
                // end, after MLX snaps the near edge onto the grid): clipped to the end.
                let outside = (grid_lo - x).max(x - grid_hi).max(0.0);
                let bound = step * 0.5 * (1.0 + 1e-3) + outside + 1e-6;
                assert!(err <= bound, "bits {bits}: |{x} - {y}| = {err} > {bound}");
                // And clipping never costs more than one range step.
                assert!(
                    err <= ideal_step * 1.01 + 1e-6,
                    "bits {bits}: error {err} vs range step {ideal_step}"
                );
                mse += (err as f64).powi(2);
                if !distinct.contains(&y.to_bits()) {
                    distinct.push(y.to_bits());
                }
            }
            assert!(
                distinct.len() as u32 <= levels + 1,
                "bits {bits}: {} levels",
                distinct.len()
            );
        }
        mse /= wv.len() as f64;
        assert!(
            mse < previous_mse,
            "bits {bits}: mse {mse} did not drop below {previous_mse}"
        );
        previous_mse = mse;
    }
    // 8 bits on N(0,1) weights: step ≈ 5/255, so the MSE is about step²/12 ≈ 3e-5.
    assert!(previous_mse < 1e-4, "8-bit mse {previous_mse}");
}

#[test]
fn mlx_works_on_a_second_thread() {
    let handle = std::thread::spawn(|| {
        let a = Array::from_slice(&[1f32, 2., 3., 4.], &[2, 2]);
        let b = a.matmul(&a).unwrap();
        b.as_slice::<f32>().to_vec()
    });
    assert_eq!(handle.join().unwrap(), vec![7., 10., 15., 22.]);
}

#[test]
fn binary_runs_without_library_path_and_reports_mlx() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
        .args(["doctor", "--json", "--seconds", "0.2", "--gemm-size", "256"])
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("DYLD_LIBRARY_PATH")
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove(sd3lab::runtime::blas::CHOICE_VAR)
        .output()
        .expect("run sd3lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "doctor failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    assert_eq!(report["mlx_version"], "0.32.2");
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    assert!(report["gemm"]["gflops"].as_f64().unwrap() > 0.0);
    assert!(report["gemm"]["check_error"].as_f64().unwrap() < 1e-5);
    assert!(report["libmlx"].as_str().unwrap().contains("libmlx"));
    if cfg!(target_os = "linux") && mlx_sys::OPENBLAS_LINKED {
        assert_eq!(report["blas"]["implementation"], "openblas", "{report:#}");
        let core = report["blas"]["openblas_core"].as_str().unwrap();
        // On a CPU with AVX-512, the kernels are never OpenBLAS's generic fallback.
        if sd3lab::runtime::blas::best_core_for_cpu() == Some("SkylakeX") {
            assert_ne!(core.to_ascii_lowercase(), "prescott", "{report:#}");
        }
    }
}

#[test]
fn forced_generic_kernels_are_respected() {
    if !(cfg!(target_os = "linux") && mlx_sys::OPENBLAS_LINKED) {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
        .args(["doctor", "--json", "--seconds", "0.1", "--gemm-size", "128"])
        .env("OPENBLAS_CORETYPE", "Prescott")
        .output()
        .expect("run sd3lab");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blas"]["openblas_core"], "Prescott");
    assert_eq!(report["blas"]["choice"]["kind"], "from_environment");
}

/// The OpenBLAS core types this CPU can run that sd3lab may force: SkylakeX (AVX-512) and
/// Haswell (AVX2 + FMA), the two `best_core_for_cpu` chooses between.
fn forcible_cores() -> Vec<&'static str> {
    match sd3lab::runtime::blas::best_core_for_cpu() {
        Some("SkylakeX") => vec!["SkylakeX", "Haswell"],
        Some(core) => vec![core],
        None => Vec::new(),
    }
}

#[test]
fn a_core_forced_by_sd3lab_is_verified_and_reported() {
    if !(cfg!(target_os = "linux") && mlx_sys::OPENBLAS_LINKED) {
        return;
    }
    let cores = forcible_cores();
    // Every x86-64 machine this project builds on (development, CI) has at least AVX2.
    if cfg!(target_arch = "x86_64") {
        assert!(
            !cores.is_empty(),
            "this x86-64 CPU has neither AVX-512 nor AVX2+FMA"
        );
    }
    for core in cores {
        // The state a parent process leaves when it restarts itself with `core` kernels.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
            .args(["doctor", "--json", "--seconds", "0.1", "--gemm-size", "128"])
            .env("OPENBLAS_CORETYPE", core)
            .env(sd3lab::runtime::blas::CHOICE_VAR, format!("forced:{core}"))
            .output()
            .expect("run sd3lab");
        assert!(
            out.status.success(),
            "{core}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["blas"]["openblas_core"], core, "{report:#}");
        assert_eq!(
            report["blas"]["choice"]["kind"], "forced_verified",
            "{core}: {report:#}"
        );
        assert!(report["blas"]["sgemm_check_error"].as_f64().unwrap() < 1e-4);
    }
}

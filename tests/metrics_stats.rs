//! FID, IS and KID against torch-fidelity 0.4.0's own metric functions, and PSNR / SSIM
//! against scikit-image 0.26, on features and images this test generates (the oracles:
//! tests/py/fidelity_oracle.py, tests/py/paired_oracle.py).

mod common;

use std::path::Path;

use sd3lab::calib::{NpyArray, NpyData};
use sd3lab::metrics::fidelity::{self, Features, FidelityError, KidOptions};
use sd3lab::metrics::paired::{self, PairedError, RgbView};
use sd3lab::rng::NumpyRandomState;
use serde_json::Value;

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
}

/// Pool-feature-like rows: non-negative, correlated through a low-rank latent, with a
/// per-set shift so that two sets differ.
fn pool_like(rows: usize, dim: usize, rank: usize, shift: f32, seed: u32) -> Features {
    let mut r = NumpyRandomState::new(seed);
    let mut basis = NumpyRandomState::new(7); // shared by every set: same feature geometry
    let w: Vec<f64> = basis.randn(rank * dim);
    let mut data = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let z = r.randn(rank);
        let noise = r.randn(dim);
        for j in 0..dim {
            let mut v = 0.3 * noise[j];
            for k in 0..rank {
                v += z[k] * w[k * dim + j] / (rank as f64).sqrt();
            }
            data.push(((v as f32) + shift).max(0.0) * 0.7);
        }
    }
    Features::new(rows, dim, data).expect("finite generated features")
}

/// Inception-logit-like rows: a few confident classes per row, the rest near zero.
fn logits_like(rows: usize, classes: usize, spread: f64, seed: u32) -> Features {
    let mut r = NumpyRandomState::new(seed);
    let mut data = Vec::with_capacity(rows * classes);
    for i in 0..rows {
        let noise = r.randn(classes);
        let top = (i * 37) % classes;
        for (j, n) in noise.iter().enumerate() {
            let bump = if j == top || j == (top + 5) % classes {
                spread
            } else {
                0.0
            };
            data.push((n * 2.0 + bump) as f32);
        }
    }
    Features::new(rows, classes, data).expect("finite generated logits")
}

fn save(dir: &Path, name: &str, f: &Features) -> String {
    let a = NpyArray::new(
        vec![f.rows(), f.dim()],
        NpyData::Float32(f.as_slice().to_vec()),
    );
    a.unwrap().write_npy_file(&dir.join(name)).unwrap();
    name.to_string()
}

/// An RGB image as numpy's `h × w × 3` uint8 array.
fn save_image(path: &Path, w: usize, h: usize, pixels: &[u8]) {
    let a = NpyArray::new(vec![h, w, 3], NpyData::Uint8(pixels.to_vec()));
    a.unwrap().write_npy_file(path).unwrap();
}

fn oracle(script: &str, dir: &Path, jobs: &Value) -> Vec<Value> {
    std::fs::write(dir.join("jobs.json"), jobs.to_string()).unwrap();
    let out = common::run_oracle(script, &[dir.as_os_str()]);
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn fid_equals_torch_fidelity_including_fewer_rows_than_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    // (rows a, rows b, dim, rank, shift b)
    let cases = [
        (60, 80, 16, 4, 0.1),
        (300, 250, 64, 8, 0.05),
        (40, 70, 128, 6, 0.2),    // N < dim: singular covariances
        (150, 150, 512, 16, 0.0), // the seed's benchmark size, N < dim
        (20, 20, 64, 3, 0.5),
        (150, 160, 2048, 32, 0.05), // the real feature size, at the seed's benchmark size
    ];
    let mut jobs = Vec::new();
    let mut sets = Vec::new();
    for (i, &(na, nb, dim, rank, shift)) in cases.iter().enumerate() {
        let a = pool_like(na, dim, rank, 0.0, 100 + i as u32);
        let b = pool_like(nb, dim, rank, shift, 200 + i as u32);
        jobs.push(serde_json::json!({
            "metric": "fid",
            "a": save(dir.path(), &format!("fa{i}.npy"), &a),
            "b": save(dir.path(), &format!("fb{i}.npy"), &b),
        }));
        sets.push((a, b));
    }
    let want = oracle("fidelity_oracle.py", dir.path(), &Value::Array(jobs));
    for ((a, b), w) in sets.iter().zip(&want) {
        let w = w["frechet_inception_distance"].as_f64().unwrap();
        let got = fidelity::fid(a, b).unwrap();
        eprintln!(
            "FID {}x{} vs {}: ours {got} torch-fidelity {w} rel {:e}",
            a.rows(),
            a.dim(),
            b.rows(),
            rel(got, w)
        );
        assert!(rel(got, w) < 1e-6, "FID {got} vs torch-fidelity {w}");
    }
}

#[test]
fn inception_score_equals_torch_fidelity() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (100, 1008, 10, 8.0),
        (37, 1008, 10, 12.0),
        (64, 50, 3, 5.0),
        (25, 1008, 1, 20.0),
    ];
    let mut jobs = Vec::new();
    let mut sets = Vec::new();
    for (i, &(n, c, splits, spread)) in cases.iter().enumerate() {
        let l = logits_like(n, c, spread, 300 + i as u32);
        jobs.push(serde_json::json!({
            "metric": "isc",
            "logits": save(dir.path(), &format!("l{i}.npy"), &l),
            "splits": splits,
        }));
        sets.push((l, splits));
    }
    let want = oracle("fidelity_oracle.py", dir.path(), &Value::Array(jobs));
    for ((l, splits), w) in sets.iter().zip(&want) {
        let got = fidelity::inception_score(l, *splits).unwrap();
        let (wm, ws) = (
            w["inception_score_mean"].as_f64().unwrap(),
            w["inception_score_std"].as_f64().unwrap(),
        );
        eprintln!(
            "IS {}x{} splits {splits}: ours {got:?} torch-fidelity {wm} ± {ws}",
            l.rows(),
            l.dim()
        );
        assert!(rel(got.mean, wm) < 1e-9, "IS mean {} vs {wm}", got.mean);
        if *splits == 1 {
            assert_eq!(ws, 0.0);
            assert_eq!(got.std, 0.0);
        } else {
            assert!(rel(got.std, ws) < 1e-9, "IS std {} vs {ws}", got.std);
        }
    }
}

#[test]
fn kid_equals_torch_fidelity_with_and_without_a_lowered_subset_size() {
    let dir = tempfile::tempdir().unwrap();
    // (rows a, rows b, dim, options, the subset size torch-fidelity is given)
    let cases = [
        // The seed's 150-image benchmark: 1000 is lowered to 150 (torch-fidelity would refuse 1000).
        (150, 160, 2048, KidOptions::default(), 150, Some(1000)),
        (
            90,
            80,
            64,
            KidOptions {
                subsets: 20,
                subset_size: Some(50),
            },
            50,
            None,
        ),
        (
            30,
            45,
            256,
            KidOptions {
                subsets: 100,
                subset_size: Some(40),
            },
            30,
            Some(40),
        ),
    ];
    let mut jobs = Vec::new();
    let mut sets = Vec::new();
    for (i, &(na, nb, dim, opts, tf_size, lowered)) in cases.iter().enumerate() {
        let a = pool_like(na, dim, 8, 0.0, 400 + i as u32);
        let b = pool_like(nb, dim, 8, 0.1, 500 + i as u32);
        jobs.push(serde_json::json!({
            "metric": "kid",
            "a": save(dir.path(), &format!("ka{i}.npy"), &a),
            "b": save(dir.path(), &format!("kb{i}.npy"), &b),
            "subsets": opts.subsets,
            "subset_size": tf_size,
        }));
        sets.push((a, b, opts, tf_size, lowered));
    }
    let want = oracle("fidelity_oracle.py", dir.path(), &Value::Array(jobs));
    for ((a, b, opts, tf_size, lowered), w) in sets.iter().zip(&want) {
        let got = fidelity::kid(a, b, *opts).unwrap();
        let (wm, ws) = (
            w["kernel_inception_distance_mean"].as_f64().unwrap(),
            w["kernel_inception_distance_std"].as_f64().unwrap(),
        );
        eprintln!(
            "KID {}/{}x{}: ours {got:?} torch-fidelity {wm} ± {ws} rel {:e} {:e}",
            a.rows(),
            b.rows(),
            a.dim(),
            rel(got.mean, wm),
            rel(got.std, ws)
        );
        assert_eq!((got.subset_size, got.lowered_from), (*tf_size, *lowered));
        // Each subset's MMD² is a float32 difference of sums of kernel values near 2, as in
        // torch-fidelity; its GEMM (OpenBLAS sgemm) and ours (faer) round the kernel entries
        // differently, which moves a subset's result by up to an ulp of those sums (≈2e-7),
        // i.e. ~1e-5 of a KID of 0.002. The tolerance, 1e-4, holds with room.
        assert!(rel(got.mean, wm) < 1e-4, "KID mean {} vs {wm}", got.mean);
        assert!(rel(got.std, ws) < 1e-4, "KID std {} vs {ws}", got.std);
    }
}

#[test]
fn kid_subsets_are_numpys_choice_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = serde_json::json!([
        {"metric": "subsets", "n1": 150, "n2": 120, "m": 100, "count": 3},
        {"metric": "subsets", "n1": 10, "n2": 150, "m": 5, "count": 2},
    ]);
    let want = oracle("fidelity_oracle.py", dir.path(), &jobs);
    for (spec, w) in jobs.as_array().unwrap().iter().zip(&want) {
        let n = |k: &str| spec[k].as_u64().unwrap() as usize;
        let mut rng = NumpyRandomState::new(fidelity::RNG_SEED);
        let mut got = Vec::new();
        for _ in 0..n("count") {
            got.push(rng.choice_without_replacement(n("n1"), n("m")));
            got.push(rng.choice_without_replacement(n("n2"), n("m")));
        }
        let want: Vec<Vec<usize>> = serde_json::from_value(w.clone()).unwrap();
        assert_eq!(got, want);
    }
    // The check values of the metrics notes (numpy 2.x, RandomState(2020)).
    let mut r = NumpyRandomState::new(2020);
    assert_eq!(r.permutation(10), [2, 4, 9, 1, 5, 7, 6, 3, 8, 0]);
    let mut r = NumpyRandomState::new(2020);
    assert_eq!(r.choice_without_replacement(150, 5), [104, 8, 61, 54, 78]);
    assert_eq!(r.choice_without_replacement(150, 5), [32, 147, 47, 50, 82]);
}

#[test]
fn fidelity_errors_are_typed_and_say_what_is_wrong() {
    let a = pool_like(10, 8, 2, 0.0, 1);
    let one = pool_like(1, 8, 2, 0.0, 2);
    let e = fidelity::fid(&a, &one).unwrap_err();
    assert_eq!(
        e,
        FidelityError::TooFewRows {
            metric: "FID",
            needed: 2,
            got: 1
        }
    );
    assert_eq!(e.to_string(), "FID needs at least 2 feature rows, got 1");
    let e = fidelity::fid(&a, &pool_like(10, 9, 2, 0.0, 3)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "FID: the two feature sets have different dimensions (8 and 9)"
    );
    assert!(fidelity::kid(&a, &pool_like(10, 9, 2, 0.0, 3), KidOptions::default()).is_err());
    let e = fidelity::inception_score(&a, 11).unwrap_err();
    assert_eq!(e.to_string(), "IS needs at least 11 feature rows, got 10");
    let e = Features::new(2, 2, vec![0.0, 1.0, f32::INFINITY, 0.0]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "features: row 1, column 0 is not finite (inf)"
    );
    let e = Features::new(2, 2, vec![0.0; 3]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "features: 3 values cannot be 2 rows × 2 columns"
    );
}

// ---------------------------------------------------------------------------------------------
// Paired metrics
// ---------------------------------------------------------------------------------------------

/// A structured image: gradients, blocks and a little noise.
fn structured(w: usize, h: usize, seed: u32) -> Vec<u8> {
    let mut r = NumpyRandomState::new(seed);
    let mut p = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let grad = (x * 255 / w.max(1)) as f64 * (c as f64 + 1.0) / 3.0;
                let block = if (x / 8 + y / 8 + c) % 2 == 0 {
                    60.0
                } else {
                    0.0
                };
                let v = grad + block + 10.0 * r.next_gauss() + (y % 13) as f64;
                p.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    p
}

/// `img` with noise of amplitude `amp` added (a "quantized" twin).
fn perturbed(img: &[u8], amp: f64, seed: u32) -> Vec<u8> {
    let mut r = NumpyRandomState::new(seed);
    img.iter()
        .map(|&v| (v as f64 + amp * r.next_gauss()).round().clamp(0.0, 255.0) as u8)
        .collect()
}

fn noise(w: usize, h: usize, seed: u32) -> Vec<u8> {
    let mut r = NumpyRandomState::new(seed);
    (0..w * h * 3).map(|_| (r.next_u32() >> 24) as u8).collect()
}

#[test]
fn psnr_and_ssim_equal_scikit_image() {
    let dir = tempfile::tempdir().unwrap();
    let s = |w, h, seed| structured(w, h, seed);
    let mut pairs: Vec<(usize, usize, Vec<u8>, Vec<u8>)> = Vec::new();
    for &(w, h) in &[(11, 11), (64, 48), (37, 100), (256, 256)] {
        let a = s(w, h, 1);
        pairs.push((w, h, a.clone(), perturbed(&a, 6.0, 2)));
        pairs.push((w, h, noise(w, h, 3), noise(w, h, 4)));
        pairs.push((w, h, a.clone(), s(w, h, 5)));
    }
    let same = s(30, 20, 9);
    pairs.push((30, 20, same.clone(), same));
    pairs.push((10, 20, s(10, 20, 1), s(10, 20, 2))); // narrower than the 11-tap window
    let mut jobs = Vec::new();
    for (i, (w, h, a, b)) in pairs.iter().enumerate() {
        save_image(&dir.path().join(format!("a{i}.npy")), *w, *h, a);
        save_image(&dir.path().join(format!("b{i}.npy")), *w, *h, b);
        jobs.push(serde_json::json!({"a": format!("a{i}.npy"), "b": format!("b{i}.npy")}));
    }
    let want = oracle("paired_oracle.py", dir.path(), &Value::Array(jobs));
    for ((w, h, a, b), want) in pairs.iter().zip(&want) {
        let va = RgbView::new(*w as u32, *h as u32, a).unwrap();
        let vb = RgbView::new(*w as u32, *h as u32, b).unwrap();
        let p = paired::psnr(&va, &vb).unwrap();
        match &want["psnr"] {
            Value::String(s) if s == "inf" => assert_eq!(p, f64::INFINITY),
            v => {
                let v = v.as_f64().unwrap();
                assert!(rel(p, v) < 1e-12, "{w}×{h} PSNR {p} vs skimage {v}");
            }
        }
        match (paired::ssim(&va, &vb), want.get("ssim")) {
            (Ok(got), Some(v)) => {
                let v = v.as_f64().unwrap();
                eprintln!("SSIM {w}x{h}: ours {got} skimage {v} diff {:e}", got - v);
                assert!((got - v).abs() < 1e-12, "{w}×{h} SSIM {got} vs skimage {v}");
            }
            (Err(PairedError::TooSmallForSsim { .. }), None) => {
                let msg = want["ssim_error"].as_str().unwrap();
                assert!(msg.contains("win_size exceeds image extent"), "{msg}");
            }
            (got, _) => panic!("{w}×{h}: ours {got:?}, skimage {want}"),
        }
    }
}

#[test]
fn paired_errors_name_both_sizes() {
    let a = structured(32, 16, 1);
    let b = structured(16, 32, 1);
    let va = RgbView::new(32, 16, &a).unwrap();
    let vb = RgbView::new(16, 32, &b).unwrap();
    let e = paired::ssim(&va, &vb).unwrap_err();
    assert_eq!(e.to_string(), "the images differ in size: 32×16 and 16×32");
    assert_eq!(paired::psnr(&va, &vb).unwrap_err(), e);
    let e = RgbView::new(4, 4, &a[..47]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "47 bytes cannot be a 4×4 RGB image (48 bytes)"
    );
}

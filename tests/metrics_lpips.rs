//! LPIPS (AlexNet, v0.1 heads) on MLX against the `lpips` package's distances for the same image
//! pairs and weights (tests/py/make_lpips_fixtures.py: the real v0.1 heads, a deterministic
//! synthetic AlexNet backbone reproduced here bit for bit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use sd3lab::metrics::lpips::{Lpips, LpipsError};
use sd3lab::metrics::pth::{self, Dtype, Tensor};
use sd3lab::metrics::weights::{self, LpipsWeights};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// torchvision AlexNet features: (index, in, out, kernel).
const CONVS: [(usize, usize, usize, usize); 5] = [
    (0, 3, 64, 11),
    (3, 64, 192, 5),
    (6, 192, 384, 3),
    (8, 384, 256, 3),
    (10, 256, 256, 3),
];

/// `synth` of make_lpips_fixtures.py: the same integer hash, the same float32 operations.
fn synth(n: usize, stream: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let m = 0xffff_ffffu64;
            let mut x = (i.wrapping_mul(2_654_435_761) + stream * 40_503) & m;
            x ^= x >> 15;
            x = (x * 2_246_822_519) & m;
            x ^= x >> 13;
            let u = (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0;
            u * scale
        })
        .collect()
}

fn synth_alexnet() -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (layer, &(i, cin, cout, k)) in CONVS.iter().enumerate() {
        let fan_in = (cin * k * k) as f64;
        let scale = (6.0 / fan_in).sqrt() as f32;
        let w = synth(cout * cin * k * k, 2 * layer as u64 + 1, scale);
        let b = synth(cout, 2 * layer as u64 + 2, 0.05);
        for (name, shape, v) in [
            ("weight", vec![cout, cin, k, k], w),
            ("bias", vec![cout], b),
        ] {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let t = Tensor::from_bytes(Dtype::F32, shape, bytes).unwrap();
            out.push((format!("features.{i}.{name}"), t));
        }
    }
    out
}

fn arrays<'a>(tensors: impl Iterator<Item = (&'a str, &'a Tensor)>) -> HashMap<String, Array> {
    tensors
        .map(|(n, t)| {
            let shape: Vec<i32> = t.shape().iter().map(|&d| d as i32).collect();
            (n.to_owned(), Array::from_slice(&t.to_f32_vec(), &shape))
        })
        .collect()
}

fn model() -> Lpips {
    let alex = synth_alexnet();
    let lin = pth::read_pth(&fixture("pth/lpips_v0.1_alex.pth")).unwrap();
    Lpips::from_tensors(
        Path::new("synthetic"),
        &arrays(alex.iter().map(|(n, t)| (n.as_str(), t))),
        Path::new("alex.pth"),
        &arrays(lin.iter()),
    )
    .unwrap()
}

fn rgb(path: &Path) -> (Vec<u8>, usize, usize) {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture("lpips/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn distances_equal_the_lpips_package() {
    let lpips = model();
    for (name, want) in expected() {
        let want: f64 = want.as_str().unwrap().parse().unwrap();
        let (a, w, h) = rgb(&fixture(&format!("lpips/{name}_a.png")));
        let (b, ..) = rgb(&fixture(&format!("lpips/{name}_b.png")));
        let got = lpips.distance_rgb8(&a, &b, w, h).unwrap() as f64;
        // float32 convolutions in another order than PyTorch's: agreement to ~1e-6 relative.
        let tol = 1e-5 * want.abs() + 1e-7;
        eprintln!("{name}: mlx {got:e} lpips {want:e} diff {:e}", got - want);
        assert!((got - want).abs() <= tol, "{name}: {got} vs lpips {want}");
    }
}

#[test]
fn a_batch_gives_each_pairs_distance_and_loading_from_files_gives_the_same_network() {
    let dir = tempfile::tempdir().unwrap();
    let alex = synth_alexnet();
    let alex_path = dir.path().join("alex.safetensors");
    let refs: Vec<(&str, &Tensor)> = alex.iter().map(|(n, t)| (n.as_str(), t)).collect();
    weights::write_safetensors(&alex_path, &refs, &[]).unwrap();
    let lin_path = dir.path().join("lin.safetensors");
    weights::convert_pth(&fixture("pth/lpips_v0.1_alex.pth"), &lin_path, None, &[]).unwrap();
    let lpips = Lpips::load(&LpipsWeights {
        alexnet: alex_path,
        lin: lin_path,
    })
    .unwrap();

    let names: Vec<String> = expected().keys().cloned().collect();
    let mut xa = Vec::new();
    let mut xb = Vec::new();
    let mut single = Vec::new();
    let (mut w, mut h) = (0, 0);
    for name in &names {
        let (a, wi, hi) = rgb(&fixture(&format!("lpips/{name}_a.png")));
        let (b, ..) = rgb(&fixture(&format!("lpips/{name}_b.png")));
        (w, h) = (wi, hi);
        single.push(lpips.distance_rgb8(&a, &b, w, h).unwrap());
        xa.extend(a.iter().map(|&p| p as f32 / 127.5 - 1.0));
        xb.extend(b.iter().map(|&p| p as f32 / 127.5 - 1.0));
    }
    let shape = [names.len() as i32, h as i32, w as i32, 3];
    let d = lpips
        .distance(
            &Array::from_slice(&xa, &shape),
            &Array::from_slice(&xb, &shape),
        )
        .unwrap();
    d.eval().unwrap();
    let batch = d.as_slice::<f32>();
    for (i, name) in names.iter().enumerate() {
        assert!(
            (batch[i] - single[i]).abs() <= 1e-6 * single[i].abs() + 1e-8,
            "{name}: batch {} vs single {}",
            batch[i],
            single[i]
        );
    }
}

#[test]
fn wrong_sizes_and_missing_or_misshapen_weights_are_named() {
    let lpips = model();
    let e = lpips.distance_rgb8(&[0; 12], &[0; 12], 2, 2).unwrap_err();
    assert!(matches!(e, LpipsError::Size { .. }), "{e}");
    let e = lpips
        .distance_rgb8(&[0; 64 * 64 * 3], &[0; 64 * 63 * 3], 64, 64)
        .unwrap_err();
    assert!(e.to_string().contains("64×64"), "{e}");

    let lin = pth::read_pth(&fixture("pth/lpips_v0.1_alex.pth")).unwrap();
    let mut alex = arrays(synth_alexnet().iter().map(|(n, t)| (n.as_str(), t)));
    alex.remove("features.8.bias");
    let e = Lpips::from_tensors(Path::new("a"), &alex, Path::new("l"), &arrays(lin.iter()))
        .unwrap_err();
    assert!(
        e.to_string().contains("missing tensor 'features.8.bias'"),
        "{e}"
    );
    let mut alex = arrays(synth_alexnet().iter().map(|(n, t)| (n.as_str(), t)));
    alex.insert(
        "features.0.bias".into(),
        Array::from_slice(&[0f32; 3], &[3]),
    );
    let e = Lpips::from_tensors(Path::new("a"), &alex, Path::new("l"), &arrays(lin.iter()))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("'features.0.bias' has shape [3], expected [64]"),
        "{e}"
    );
}

//! The Inception-v3 feature extractor against torch-fidelity 0.4.0: fixtures computed by
//! `tests/py/fidelity_fixtures.py` (regenerate with `scripts/metrics-fixtures.sh`; CI does not
//! run it) with synthetic weights that `synthetic_weights` rebuilds bit for bit here.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sd3lab::calib::NpyData;
use sd3lab::calib::npz::NpzReader;
use sd3lab::job::CancelToken;
use sd3lab::metrics::images::{
    ImagesError, Rgb8Image, list_images, load_batch, load_rgb, resize_tf1,
};
use sd3lab::metrics::inception::{
    FEATURES_DIM, InceptionError, InceptionV3, LOGITS_DIM, extract_features, state_dict_keys,
    synthetic_weights,
};
use sd3lab::model::weights::WeightsError;

mod common;

/// Features and logits agree with torch-fidelity's per image to `|ours − theirs| ≤ SCALED_TOL ·
/// max|theirs|` element-wise and a relative L2 difference ≤ L2_TOL. Measured: at most 6.3e-5
/// and 2.4e-5 on the x86 CPU kernels, 3.7e-5 and 2.4e-5 with MLX's operations. torch-fidelity's own float32 result is 4.3e-5 (relative L2) from its float64
/// one, and ours 4.2e-5: the differences are float32 rounding in another summation order.
const SCALED_TOL: f32 = 1e-4;
const L2_TOL: f64 = 5e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn fixture_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("fidelity.json")).expect("fidelity.json");
    serde_json::from_str(&text).expect("fidelity.json is JSON")
}

/// The synthetic weights, written once per test process into Cargo's scratch folder.
fn weights_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let seed = fixture_json()["seed"].as_u64().expect("seed") as u32;
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("synthetic-inception.safetensors");
        synthetic_weights(seed, &fixtures().join("inception_bn_stats.npz"), &path)
            .expect("synthetic weights");
        path
    })
}

fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = common::read_npy(path);
    match a.data {
        NpyData::Float32(v) => (a.shape, v),
        other => panic!(
            "{}: expected float32, got {:?}",
            path.display(),
            other.dtype()
        ),
    }
}

/// Per image (`cols` values each): the largest `max|diff| / max|theirs|` and the largest
/// relative L2 difference.
fn compare(ours: &[f32], theirs: &[f32], cols: usize) -> (f32, f64) {
    assert_eq!(ours.len(), theirs.len());
    let (mut scaled, mut l2) = (0.0f32, 0.0f64);
    for (a, b) in ours.chunks(cols).zip(theirs.chunks(cols)) {
        assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        scaled = scaled.max(diff / scale);
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        l2 = l2.max((num / den).sqrt());
    }
    (scaled, l2)
}

#[test]
fn synthetic_weights_equal_the_fixture_scripts_weights() {
    let sums = fixture_json()["tensor_sums"].clone();
    let tensors = sd3lab::model::weights::load_safetensors(weights_path()).expect("load");
    let keys = state_dict_keys();
    assert_eq!(keys.len(), 566);
    assert_eq!(tensors.len(), 566);
    let mut checked = 0;
    for (key, shape) in keys {
        let a = &tensors[&key];
        let expected: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        assert_eq!(a.shape(), expected.as_slice(), "{key}");
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let want = sums[&key]
            .as_f64()
            .unwrap_or_else(|| panic!("no sum for {key}"));
        let values = a.as_slice::<f32>();
        let got: f64 = values.iter().map(|&v| v as f64).sum();
        // The same float32 values summed in float64 in another order: equal to ~1e-12.
        assert!(
            (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
            "{key}: sum {got}, the fixture script's {want}"
        );
        checked += 1;
    }
    assert_eq!(checked, 94 * 5 + 2);
}

#[test]
fn listing_matches_torch_fidelity() {
    let json = fixture_json();
    for folder in ["a", "b"] {
        let files = list_images(&fixtures().join("images").join(folder)).expect("list");
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let expected: Vec<String> = json["listing"][folder]
            .as_array()
            .expect("listing")
            .iter()
            .map(|v| v.as_str().expect("name").to_owned())
            .collect();
        assert_eq!(names, expected, "folder {folder}");
    }
}

#[test]
fn listing_rules_by_hand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for name in [
        "b.png",
        "a.JPEG",
        "C.jpg",
        "_x.Png",
        "y.png.bak",
        "notes.txt",
        "noext",
    ] {
        std::fs::write(d.join(name), b"x").expect("write");
    }
    std::fs::create_dir(d.join("sub.png")).expect("mkdir");
    std::fs::write(d.join("sub.png").join("inner.png"), b"x").expect("write");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("target.png"), b"x").expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink(outside.path().join("target.png"), d.join("link.png"))
        .expect("symlink");
    let files = list_images(d).expect("list");
    let real = std::fs::canonicalize(d).expect("canonical");
    let mut expected: Vec<PathBuf> = ["C.jpg", "_x.Png", "a.JPEG", "b.png"]
        .iter()
        .map(|n| real.join(n))
        .collect();
    // A link is listed as its target's real path, sorted by that path.
    #[cfg(unix)]
    {
        expected.push(std::fs::canonicalize(outside.path().join("target.png")).expect("c"));
        expected.sort_by(|a, b| {
            a.as_os_str()
                .as_encoded_bytes()
                .cmp(b.as_os_str().as_encoded_bytes())
        });
    }
    assert_eq!(files, expected);

    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(empty.path().join("a.gif"), b"x").expect("write");
    assert!(matches!(
        list_images(empty.path()),
        Err(ImagesError::Empty { .. })
    ));
    assert!(matches!(
        list_images(&d.join("missing")),
        Err(ImagesError::List { .. })
    ));
}

/// Must match `resize_source` in tests/py/fidelity_fixtures.py.
fn resize_source(h: usize, w: usize) -> Rgb8Image {
    let mut data = Vec::with_capacity(h * w * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for c in 0..3i64 {
                data.push(((x * x * 3 + y * 5 + c * 101 + x * y * 7) % 256) as u8);
            }
        }
    }
    Rgb8Image {
        width: w as u32,
        height: h as u32,
        data,
    }
}

#[test]
fn resize_equals_torch_fidelitys_tf1_interpolation() {
    let json = fixture_json();
    let step = json["resize_step"].as_u64().expect("step") as usize;
    let mut npz = NpzReader::open(&fixtures().join("resize.npz")).expect("resize.npz");
    let cases = json["resize_cases"].as_array().expect("cases");
    assert!(cases.len() >= 4);
    for case in cases {
        let c: Vec<usize> = case
            .as_array()
            .expect("case")
            .iter()
            .map(|v| v.as_u64().expect("size") as usize)
            .collect();
        let (h, w, oh, ow) = (c[0], c[1], c[2], c[3]);
        let ours = resize_tf1(&resize_source(h, w), oh, ow);
        let name = format!("{h}x{w}_to_{oh}x{ow}");
        let theirs = npz.read(&name).expect("case array");
        let NpyData::Float32(theirs) = theirs.data else {
            panic!("{name}: not float32")
        };
        let st = if oh == 299 { step } else { 1 };
        let mut kept = Vec::new();
        for y in (0..oh).step_by(st) {
            for x in (0..ow).step_by(st) {
                kept.extend_from_slice(&ours[(y * ow + x) * 3..(y * ow + x) * 3 + 3]);
            }
        }
        // torch-fidelity's "slow" method is bit-exact on the CPU, and so is this.
        assert_eq!(kept.len(), theirs.len(), "{name}");
        let differ = kept.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{name}: {differ} values differ from torch-fidelity's"
        );
    }
}

#[test]
fn features_and_logits_equal_torch_fidelitys() {
    let model = InceptionV3::load(weights_path()).expect("load the synthetic weights");
    // On x86 the network runs on the CPU kernels (`metrics::inception_cpu`), checked on both
    // folders; MLX's own operations, which Metal runs, are checked too.
    let runs: &[(&str, &str)] = if cfg!(target_arch = "x86_64") {
        &[("CPU kernels", "a"), ("CPU kernels", "b"), ("MLX", "a")]
    } else {
        &[("MLX", "a"), ("MLX", "b")]
    };
    for &(path, folder) in runs {
        let cpu = path == "CPU kernels";
        let _plain = (!cpu).then(sd3lab::model::cpu_kernels::PlainMlx::enter);
        if cpu {
            assert!(
                sd3lab::model::cpu_kernels::active() && sd3lab::metrics::inception_cpu::available(),
                "the CPU kernels are on (is SD3LAB_CPU_KERNELS=0 set?)"
            );
        }
        let files = list_images(&fixtures().join("images").join(folder)).expect("list");
        let mut progress = Vec::new();
        let got = extract_features(&files, &model, 7, &CancelToken::new(), &mut |d, t| {
            progress.push((d, t))
        })
        .expect("extract");
        let n = files.len();
        assert_eq!(got.n, n);
        assert_eq!(progress.last(), Some(&(n, n)));
        assert_eq!(progress.len(), n.div_ceil(7));
        let (shape, features) = read_f32_npy(&fixtures().join(format!("features_{folder}.npy")));
        assert_eq!(shape, vec![n, FEATURES_DIM]);
        let (shape, logits) = read_f32_npy(&fixtures().join(format!("logits_{folder}.npy")));
        assert_eq!(shape, vec![n, LOGITS_DIM]);
        // For investigating a failure in numpy: SD3LAB_DUMP_FEATURES=DIR writes our outputs.
        if let Some(dir) = std::env::var_os("SD3LAB_DUMP_FEATURES") {
            let dir = PathBuf::from(dir);
            let f32s = |v: &[f32], cols: usize| {
                sd3lab::calib::NpyArray::new(vec![n, cols], NpyData::Float32(v.to_vec())).unwrap()
            };
            f32s(&got.features, FEATURES_DIM)
                .write_npy_file(&dir.join(format!("features_{folder}.npy")))
                .unwrap();
            f32s(&got.logits, LOGITS_DIM)
                .write_npy_file(&dir.join(format!("logits_{folder}.npy")))
                .unwrap();
        }
        for (what, ours, theirs, cols) in [
            ("features", &got.features, &features, FEATURES_DIM),
            ("logits", &got.logits, &logits, LOGITS_DIM),
        ] {
            let (scaled, l2) = compare(ours, theirs, cols);
            eprintln!(
                "{path}, folder {folder} {what}: max|diff|/max|value| {scaled:e}, relative L2 \
                 {l2:e}"
            );
            assert!(
                scaled <= SCALED_TOL,
                "{path}, {folder} {what}: max|diff|/max|value| {scaled}"
            );
            assert!(l2 <= L2_TOL, "{path}, {folder} {what}: relative L2 {l2}");
        }
    }
}

#[test]
fn cancellation_stops_before_the_next_batch() {
    let model = InceptionV3::load(weights_path()).expect("load");
    let files = list_images(&fixtures().join("images/b")).expect("list");
    let cancel = CancelToken::new();
    cancel.cancel();
    let r = extract_features(&files, &model, 4, &cancel, &mut |_, _| {});
    assert!(matches!(r, Err(InceptionError::Cancelled)));
    // Cancelled after the first batch, while the helper thread is decoding (or waiting to hand
    // over) the next ones: the job stops there and returns.
    let cancel = CancelToken::new();
    let mut calls = Vec::new();
    let r = extract_features(&files[..5], &model, 1, &cancel, &mut |done, total| {
        calls.push((done, total));
        cancel.cancel();
    });
    assert!(matches!(r, Err(InceptionError::Cancelled)));
    assert_eq!(calls, [(1, 5)]);
}

fn synthetic_tensors() -> std::collections::HashMap<String, mlx_rs::Array> {
    sd3lab::model::weights::load_safetensors(weights_path()).expect("load")
}

#[test]
fn weights_errors_name_the_key() {
    let path = weights_path();
    let mut t = synthetic_tensors();
    t.remove("Mixed_6c.branch7x7dbl_3.bn.running_var");
    match InceptionV3::from_tensors(path, t) {
        Err(WeightsError::Missing { key, path: p }) => {
            assert_eq!(key, "Mixed_6c.branch7x7dbl_3.bn.running_var");
            assert_eq!(p, path);
        }
        other => panic!("expected a missing key, got {:?}", other.err()),
    }

    let mut t = synthetic_tensors();
    t.insert(
        "Mixed_7b.branch3x3_2a.conv.weight".into(),
        mlx_rs::Array::zeros::<f32>(&[384, 384, 3, 1]).expect("zeros"),
    );
    match InceptionV3::from_tensors(path, t) {
        Err(WeightsError::Shape {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "Mixed_7b.branch3x3_2a.conv.weight");
            assert_eq!(expected, vec![384, 384, 1, 3]);
            assert_eq!(found, vec![384, 384, 3, 1]);
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }

    let mut t = synthetic_tensors();
    t.insert("AuxLogits.fc.weight".into(), mlx_rs::Array::from_f32(1.0));
    let err = InceptionV3::from_tensors(path, t).expect_err("an unexpected key");
    assert!(
        matches!(&err, WeightsError::Unexpected { keys, .. } if keys.contains("AuxLogits.fc.weight")),
        "{err}"
    );

    // Without num_batches_tracked (as some converters drop it) the weights still load.
    let mut t = synthetic_tensors();
    t.retain(|k, _| !k.ends_with("num_batches_tracked"));
    assert_eq!(t.len(), 472);
    InceptionV3::from_tensors(path, t).expect("loads without num_batches_tracked");

    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-weights.safetensors");
    assert!(matches!(
        InceptionV3::load(&missing),
        Err(InceptionError::Weights(WeightsError::Read { .. }))
    ));
}

#[test]
fn digest_tells_weights_apart() {
    let path = weights_path();
    let a = InceptionV3::from_tensors(path, synthetic_tensors()).expect("load");
    let b = InceptionV3::from_tensors(path, synthetic_tensors()).expect("load");
    assert_eq!(a.digest(), b.digest());
    let mut t = synthetic_tensors();
    let key = "Conv2d_1a_3x3.bn.bias".to_owned();
    let changed = t[&key].add(mlx_rs::Array::from_f32(1e-3)).expect("add");
    t.insert(key, changed);
    let c = InceptionV3::from_tensors(path, t).expect("load");
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn image_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    match load_rgb(&bad) {
        Err(e @ ImagesError::Decode { .. }) => {
            assert!(e.to_string().contains("broken.png"), "{e}")
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let a = fixtures().join("images/a/img_00.png");
    let b = fixtures().join("images/b/b00.png");
    match load_batch(&[a.clone(), a.clone(), b.clone()]) {
        Err(ImagesError::MixedSizes {
            path,
            width,
            height,
            first,
            first_width,
            first_height,
        }) => {
            assert_eq!(path, b);
            assert_eq!((width, height), (80, 48));
            assert_eq!(first, a);
            assert_eq!((first_width, first_height), (64, 64));
        }
        other => panic!("expected mixed sizes, got {other:?}"),
    }
    // The job reports the same errors.
    let model = InceptionV3::load(weights_path()).expect("load");
    let r = extract_features(
        &[a.clone(), bad.clone()],
        &model,
        4,
        &CancelToken::new(),
        &mut |_, _| {},
    );
    match r {
        Err(InceptionError::Images(ImagesError::Decode { path, .. })) => assert_eq!(path, bad),
        other => panic!("expected a decode error, got {:?}", other.err()),
    }
    // A broken file in a later batch: the batches before it run, then its error ends the job.
    let good = fixtures().join("images/a/img_01.png");
    let mut progress = Vec::new();
    let r = extract_features(
        &[a.clone(), good.clone(), good, bad.clone(), a],
        &model,
        1,
        &CancelToken::new(),
        &mut |done, _| progress.push(done),
    );
    match r {
        Err(InceptionError::Images(ImagesError::Decode { path, .. })) => assert_eq!(path, bad),
        other => panic!("expected a decode error, got {:?}", other.err()),
    }
    assert_eq!(progress, [1, 2, 3]);
}

#[test]
fn alpha_grey_and_palette_images_decode_like_pil() {
    // The fixture folder holds an RGBA (img_03), a grey (img_05) and a paletted (img_07) PNG;
    // their features matching torch-fidelity's already covers PIL's convert("RGB"). Here: the
    // decoded pixels themselves for the alpha and grey cases.
    let rgba = load_rgb(&fixtures().join("images/a/img_03.png")).expect("rgba");
    assert_eq!(rgba.data.len(), 64 * 64 * 3);
    let raw = ::image::open(fixtures().join("images/a/img_03.png"))
        .expect("open")
        .into_rgba8();
    for (px, rgb) in raw.pixels().zip(rgba.data.chunks(3)) {
        assert_eq!(&px.0[..3], rgb, "alpha is dropped, colour kept");
    }
    let grey = load_rgb(&fixtures().join("images/a/img_05.png")).expect("grey");
    assert!(grey.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn synthetic_weights_refuse_bad_statistics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("w.safetensors");
    let missing = dir.path().join("none.npz");
    assert!(matches!(
        synthetic_weights(1, &missing, &out),
        Err(InceptionError::Statistics { .. })
    ));
    assert!(!out.exists(), "nothing is written on failure");
}

#[test]
fn feature_cache_is_reused_until_a_file_or_the_weights_change() {
    use sd3lab::metrics::inception::{CACHE_FILE, CacheOutcome, extract_features_cached};
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["img_00.png", "img_01.png"] {
        std::fs::copy(
            fixtures().join("images/a").join(name),
            dir.path().join(name),
        )
        .expect("copy");
    }
    let model = InceptionV3::load(weights_path()).expect("load");
    let run = |model: &InceptionV3| {
        let files = list_images(dir.path()).expect("list");
        extract_features_cached(
            dir.path(),
            &files,
            model,
            4,
            &CancelToken::new(),
            &mut |_, _| {},
        )
        .expect("extract")
    };
    let (first, outcome) = run(&model);
    assert!(matches!(outcome, CacheOutcome::Written), "{outcome:?}");
    assert!(dir.path().join(CACHE_FILE).is_file());
    // The cache is not an image: the listing still has two files.
    assert_eq!(list_images(dir.path()).expect("list").len(), 2);
    let (again, outcome) = run(&model);
    assert!(matches!(outcome, CacheOutcome::Hit), "{outcome:?}");
    assert_eq!(again, first);

    // A changed modification time invalidates it.
    let f = std::fs::File::options()
        .write(true)
        .open(dir.path().join("img_01.png"))
        .expect("open");
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .expect("set mtime");
    drop(f);
    let (recomputed, outcome) = run(&model);
    assert!(matches!(outcome, CacheOutcome::Written), "{outcome:?}");
    assert_eq!(recomputed, first, "same pixels, same features");
    assert!(matches!(run(&model).1, CacheOutcome::Hit));

    // Other weights invalidate it.
    let mut t = synthetic_tensors();
    let key = "fc.weight".to_owned();
    let changed = t[&key]
        .multiply(mlx_rs::Array::from_f32(2.0))
        .expect("scale");
    t.insert(key, changed);
    let other = InceptionV3::from_tensors(weights_path(), t).expect("load");
    let (doubled, outcome) = run(&other);
    assert!(matches!(outcome, CacheOutcome::Written), "{outcome:?}");
    assert_eq!(doubled.features, first.features);
    assert_ne!(doubled.logits, first.logits);
    // A damaged cache is a miss, not an error.
    std::fs::write(dir.path().join(CACHE_FILE), b"garbage").expect("write");
    assert!(matches!(run(&model).1, CacheOutcome::Written));
}

//! Interop with real numpy: numpy writes every layout variant and SD3 Lab reads the same
//! values; SD3 Lab writes and `np.load` reads back identical arrays and dtypes.
//! numpy comes from the project's test environment (`.deps/venv`, made by `scripts/setup.sh`).

mod common;

use std::path::Path;

use sd3lab::calib::npz::{NpzReader, write_npz};
use sd3lab::calib::{
    Bucket, CalibrationSet, Manifest, NpyArray, NpyData, OpenOptions, SampleFilter, SampleKey,
};

const DTYPES: [&str; 8] = [
    "float16", "float32", "float64", "int32", "int64", "bool", "int8", "uint8",
];
const SHAPES: [&[usize]; 5] = [&[], &[1], &[3], &[2, 3], &[2, 3, 4]];

fn oracle(cmd: &str, dir: &Path) {
    common::run_oracle(
        "npz_oracle.py",
        &[std::ffi::OsStr::new(cmd), dir.as_os_str()],
    );
}

/// The values `expected()` in npz_oracle.py gives.
fn expected(dtype: &str, shape: &[usize]) -> NpyArray {
    let n: usize = shape.iter().product();
    let f = |i: usize| i as f64 * 0.25 - 1.0;
    let data = match dtype {
        "float16" => NpyData::Float16((0..n).map(|i| half::f16::from_f64(f(i))).collect()),
        "float32" => NpyData::Float32((0..n).map(|i| f(i) as f32).collect()),
        "float64" => NpyData::Float64((0..n).map(f).collect()),
        "bfloat16" => NpyData::Bfloat16((0..n).map(|i| half::bf16::from_f64(f(i))).collect()),
        "int32" => NpyData::Int32((0..n).map(|i| i as i32 - 5).collect()),
        "int64" => NpyData::Int64((0..n).map(|i| i as i64 - 5).collect()),
        "int8" => NpyData::Int8((0..n).map(|i| i as i8 - 5).collect()),
        "uint8" => NpyData::Uint8((0..n).map(|i| i as u8 + 7).collect()),
        "bool" => NpyData::Bool((0..n).map(|i| i % 3 == 0).collect()),
        other => panic!("no dtype {other}"),
    };
    NpyArray::new(shape.to_vec(), data).unwrap()
}

fn shape_name(shape: &[usize]) -> String {
    if shape.is_empty() {
        "scalar".into()
    } else {
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }
}

#[test]
fn numpy_written_arrays_read_identically() {
    let dir = tempfile::tempdir().unwrap();
    oracle("write-variants", dir.path());
    for file in ["dtypes.npz", "dtypes_compressed.npz"] {
        let mut npz = NpzReader::open(&dir.path().join(file)).unwrap();
        for dtype in DTYPES {
            for shape in SHAPES {
                let name = format!("{dtype}_{}", shape_name(shape));
                let got = npz.read(&name).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got, expected(dtype, shape), "{file}:{name}");
                let info = npz.info(&name).unwrap();
                assert_eq!(info.header.shape, shape.to_vec());
            }
        }
        assert_eq!(
            npz.read("float64_fortran").unwrap(),
            expected("float64", &[2, 3, 4]),
            "{file}: Fortran order"
        );
        assert!(npz.info("float64_fortran").unwrap().header.fortran_order);
        assert_eq!(
            npz.read("float32_bigendian").unwrap(),
            expected("float32", &[2, 3]),
            "{file}: big endian"
        );
        let zero_d = npz.read("int64_zero_d").unwrap();
        assert_eq!((zero_d.shape.len(), zero_d.first_f64()), (0, Some(42.0)));
    }
    let single = sd3lab::calib::npy::read_npy(
        &mut std::fs::File::open(dir.path().join("single.npy")).unwrap(),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(single, expected("float32", &[2, 3, 4]));
}

#[test]
fn every_numpy_layout_variant_indexes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    oracle("write-variants", dir.path());
    for kind in [
        "named",
        "positional",
        "compressed",
        "latent",
        "root",
        "manifest-files",
    ] {
        let set = CalibrationSet::open(&dir.path().join(kind), &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        // Without a manifest the step count is inferred, and said to be (the only problem).
        let problems: Vec<String> = set.problems().iter().map(|p| p.to_string()).collect();
        if ["positional", "latent", "root"].contains(&kind) {
            assert!(
                problems.len() == 1 && problems[0].contains("no manifest"),
                "{kind}: {problems:?}"
            );
        } else {
            assert!(problems.is_empty(), "{kind}: {problems:?}");
        }
        assert_eq!(
            (set.num_images(), set.num_steps(), set.samples().len()),
            (2, 4, 8),
            "{kind}"
        );
        for s in set.samples() {
            assert_eq!(
                s.step,
                s.file
                    .trim_end_matches(".npz")
                    .rsplit('_')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            );
            assert_eq!(s.timestep, 1000.0 - s.step as f64 * 250.0, "{kind}");
            assert_eq!(s.sigma, 1.0 - s.step as f64 / 4.0, "{kind}");
            assert_eq!(s.bucket, Bucket::of(s.step, 4));
            let x = set.load(s, SampleKey::X).unwrap();
            assert_eq!(x.shape, vec![1, 4, 4, 16]);
            let xs = x.data.to_f32_vec();
            assert_eq!(xs[0], -1.5);
            assert!(
                xs[1..]
                    .iter()
                    .all(|&v| v == (s.image * 100 + s.step) as f32),
                "{kind}: image/step assignment"
            );
            let cond = set.load(s, SampleKey::Conditioning).unwrap();
            assert_eq!(
                (cond.shape.clone(), cond.dtype()),
                (vec![2, 154, 64], sd3lab::calib::DType::Float16)
            );
            assert_eq!(
                cond.data.get_f64(0),
                Some(s.image as f64 + s.step as f64 / 8.0)
            );
        }
        let picked = set.select(&SampleFilter {
            max_images: Some(1),
            step_stride: Some(2),
            bucket: None,
        });
        assert_eq!(
            picked.iter().map(|s| (s.image, s.step)).collect::<Vec<_>>(),
            vec![(0, 0), (0, 2)],
            "{kind}"
        );
    }
}

#[test]
fn rust_written_files_load_in_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = serde_json::Map::new();
    for (file, compressed) in [("rust_stored.npz", false), ("rust_deflated.npz", true)] {
        let mut arrays = Vec::new();
        let mut members = serde_json::Map::new();
        for dtype in DTYPES.iter().chain(&["bfloat16"]) {
            for shape in SHAPES {
                let name = format!("{dtype}_{}", shape_name(shape));
                members.insert(name.clone(), serde_json::json!([dtype, shape]));
                arrays.push((name, expected(dtype, shape)));
            }
        }
        let refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(n, a)| (n.as_str(), a)).collect();
        write_npz(&dir.path().join(file), &refs, compressed).unwrap();
        spec.insert(file.into(), members.into());
    }
    std::fs::write(
        dir.path().join("written.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();

    // The manifest writer keeps unknown keys.
    let calib = dir.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    std::fs::write(
        calib.join("manifest.json"),
        r#"{"n_completed": 1, "num_steps": 4, "seed_note": {"k": [1, 2]}, "cfg_weight": 7.5}"#,
    )
    .unwrap();
    let mut m = Manifest::read(&calib).unwrap().unwrap();
    m.n_completed = Some(3);
    m.write(&calib).unwrap();
    oracle("check-rust", dir.path());
}

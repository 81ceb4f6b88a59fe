//! Bad calibration data gets a clear error naming the file and the problem; the good samples
//! stay usable, or `strict` fails the whole open.

use std::io::Write;
use std::path::Path;

use sd3lab::calib::npz::{NpzReader, write_npz};
use sd3lab::calib::{CalibError, CalibrationSet, NpyArray, NpyData, OpenOptions};

fn f32s(shape: &[usize], v: f32) -> NpyArray {
    NpyArray::new(
        shape.to_vec(),
        NpyData::Float32(vec![v; shape.iter().product()]),
    )
    .unwrap()
}

/// Writes one good record for (image, step) at `path`.
fn record(path: &Path, step: i64, latent: &[usize]) {
    let x = f32s(latent, step as f32);
    let t = NpyArray::scalar(NpyData::Float32(vec![1000.0 - step as f32])).unwrap();
    let s = NpyArray::new(vec![1], NpyData::Float32(vec![1.0])).unwrap();
    let c = f32s(&[2, 10, 8], 0.5);
    let p = f32s(&[2, 4], 0.25);
    let k = NpyArray::scalar(NpyData::Int64(vec![step])).unwrap();
    let arrays = [
        ("x", &x),
        ("timestep", &t),
        ("sigma", &s),
        ("conditioning", &c),
        ("pooled_conditioning", &p),
        ("step_index", &k),
    ];
    write_npz(path, &arrays, false).unwrap();
}

/// Writes a record whose `x.npy` member holds `raw` bytes (the other five are valid).
fn record_with_raw_x(path: &Path, raw: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("x.npy", opts).unwrap();
    zip.write_all(raw).unwrap();
    let t = NpyArray::scalar(NpyData::Float32(vec![1000.0])).unwrap();
    let k = NpyArray::scalar(NpyData::Int64(vec![1])).unwrap();
    let others = [
        ("timestep", &t),
        ("sigma", &t),
        ("conditioning", &t),
        ("pooled_conditioning", &t),
        ("step_index", &k),
    ];
    for (name, a) in others {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        a.write_npy(&mut zip).unwrap();
    }
    zip.finish().unwrap();
}

/// A directory with `images` × `steps` good records in samples/.
fn good_set(images: usize, steps: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("samples")).unwrap();
    for i in 0..images {
        for s in 0..steps {
            record(
                &dir.path().join(format!("samples/{i:06}_{s:03}.npz")),
                s as i64,
                &[1, 2, 2, 4],
            );
        }
    }
    dir
}

fn open(dir: &Path) -> CalibrationSet {
    CalibrationSet::open(dir, &OpenOptions::default()).unwrap()
}

fn strict(dir: &Path) -> String {
    match CalibrationSet::open(
        dir,
        &OpenOptions {
            strict: true,
            ..Default::default()
        },
    ) {
        Ok(_) => panic!("strict open of {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The problem every set without a manifest has (its own test below).
const NO_MANIFEST: &str = "missing: the sample files have no manifest";

/// Asserts exactly one problem besides a missing manifest, about `file`, whose message
/// contains `needle`.
fn one_problem(set: &CalibrationSet, file: &str, needle: &str) {
    let problems: Vec<_> = set
        .problems()
        .iter()
        .filter(|p| !p.message.starts_with(NO_MANIFEST))
        .collect();
    assert_eq!(problems.len(), 1, "{:#?}", set.problems());
    let msg = problems[0].to_string();
    assert!(msg.contains(file), "problem should name {file}: {msg}");
    assert!(msg.contains(needle), "problem should say '{needle}': {msg}");
}

#[test]
fn truncated_zip_is_skipped_with_its_path() {
    let dir = good_set(2, 3);
    let victim = dir.path().join("samples/000001_001.npz");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let set = open(dir.path());
    one_problem(&set, "000001_001.npz", "not a valid .npz");
    assert_eq!(set.samples().len(), 5);
    assert!(strict(dir.path()).contains("000001_001.npz"));
}

#[test]
fn corrupt_member_data_is_detected() {
    let dir = good_set(1, 3);
    let victim = dir.path().join("samples/000000_002.npz");
    let mut bytes = std::fs::read(&victim).unwrap();
    // Flip bytes inside the stored `x` data: the CRC check must catch it when x is read.
    let at = bytes.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 130;
    bytes[at] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let set = open(dir.path());
    let sample = set
        .samples()
        .iter()
        .find(|s| s.file.ends_with("000000_002.npz"))
        .unwrap();
    let err = set
        .load(sample, sd3lab::calib::SampleKey::X)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("000000_002.npz") && err.contains("'x.npy'"),
        "{err}"
    );
}

#[test]
fn garbage_file_and_invalid_npy_member_are_reported() {
    let dir = good_set(1, 2);
    std::fs::write(
        dir.path().join("samples/000000_002.npz"),
        b"this is not a zip file at all",
    )
    .unwrap();
    // A real zip whose x.npy is not an array.
    record_with_raw_x(
        &dir.path().join("samples/000000_003.npz"),
        b"garbage that is not npy",
    );
    let set = open(dir.path());
    assert_eq!(set.samples().len(), 2);
    let msgs: Vec<String> = set.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("000000_002.npz") && m.contains("not a valid .npz")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("000000_003.npz")
            && m.contains("x.npy")
            && m.contains("bad magic")),
        "{msgs:#?}"
    );
}

#[test]
fn pickled_object_arrays_are_refused_not_executed() {
    let dir = good_set(1, 1);
    let marker = dir.path().join("pwned");
    let dict = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }";
    let mut raw = b"\x93NUMPY\x01\x00".to_vec();
    raw.extend((dict.len() as u16).to_le_bytes());
    raw.extend(dict.as_bytes());
    // A pickle that would run `touch pwned` if anyone unpickled it.
    raw.extend(format!("cos\nsystem\n(S'touch {}'\ntR.", marker.display()).as_bytes());
    record_with_raw_x(&dir.path().join("samples/000000_001.npz"), &raw);
    let set = open(dir.path());
    one_problem(&set, "000000_001.npz", "object arrays");
    assert!(!marker.exists());
}

#[test]
fn missing_keys_are_named() {
    let dir = good_set(1, 2);
    let x = f32s(&[1, 2, 2, 4], 0.0);
    write_npz(
        &dir.path().join("samples/000000_002.npz"),
        &[("x", &x)],
        false,
    )
    .unwrap();
    let set = open(dir.path());
    one_problem(&set, "000000_002.npz", "missing array 'timestep'");
}

#[test]
fn shape_disagreements_are_reported() {
    let dir = good_set(1, 4);
    record(&dir.path().join("samples/000000_002.npz"), 2, &[1, 4, 4, 4]);
    let set = open(dir.path());
    one_problem(
        &set,
        "000000_002.npz",
        "'x' has shape [1, 4, 4, 4], the other samples [1, 2, 2, 4]",
    );
    assert_eq!(set.samples().len(), 3);
}

#[test]
fn step_index_out_of_range_of_the_manifest() {
    let dir = good_set(1, 3);
    record(&dir.path().join("samples/000000_003.npz"), 7, &[1, 2, 2, 4]);
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 1, "num_steps": 3}"#,
    )
    .unwrap();
    let set = open(dir.path());
    one_problem(&set, "000000_003.npz", "step_index 7 is out of range");
    assert_eq!((set.num_images(), set.num_steps()), (1, 3));
}

#[test]
fn manifest_disagreeing_with_the_files_is_reported() {
    // More images on disk than n_completed: the extra one is an unfinished run, set aside.
    let dir = good_set(3, 2);
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 2, "num_steps": 2}"#,
    )
    .unwrap();
    let set = open(dir.path());
    assert_eq!((set.num_images(), set.samples().len()), (2, 4));
    assert!(
        set.problems()[0]
            .message
            .contains("n_completed = 2 but the files hold 3 images"),
        "{:?}",
        set.problems()
    );
    // Fewer images than n_completed, and a num_steps that the images do not have.
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 5, "num_steps": 3}"#,
    )
    .unwrap();
    let set = open(dir.path());
    let msgs: Vec<String> = set.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("n_completed = 5 but the files hold only 3 images")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("image 0 has 2 step files, manifest.json says num_steps = 3")),
        "{msgs:#?}"
    );
    assert!(strict(dir.path()).contains("problem"));
}

#[test]
fn unreadable_manifest_is_an_error_naming_it() {
    let dir = good_set(1, 1);
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": "two"}"#,
    )
    .unwrap();
    let err = CalibrationSet::open(dir.path(), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, CalibError::Manifest { .. }));
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn sample_files_escaping_the_directory_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    record(&outside.path().join("secret.npz"), 0, &[1, 2, 2, 4]);
    let dir = good_set(1, 2);
    std::os::unix::fs::symlink(
        outside.path().join("secret.npz"),
        dir.path().join("samples/link.npz"),
    )
    .unwrap();
    let abs = outside.path().join("secret.npz").display().to_string();
    let manifest = serde_json::json!({
        "n_completed": 1,
        "num_steps": 2,
        "sample_files": ["samples/000000_000.npz", "samples/000000_001.npz", abs, "../secret.npz", "samples/link.npz"],
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let set = open(dir.path());
    assert_eq!(set.samples().len(), 2);
    let msgs: Vec<String> = set.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(msgs[0].contains("is absolute"), "{msgs:#?}");
    assert!(msgs[1].contains("contains '..'"), "{msgs:#?}");
    assert!(msgs[2].contains("symbolic link"), "{msgs:#?}");
    assert!(
        msgs.iter().all(|m| m.contains("manifest.json")),
        "{msgs:#?}"
    );
}

#[test]
fn zip_bombs_cannot_exhaust_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 256 MiB of zeros deflates to a few hundred KB.
    let big = NpyArray::new(vec![256 << 20], NpyData::Uint8(vec![0; 256 << 20])).unwrap();
    let path = dir.path().join("bomb.npz");
    write_npz(&path, &[("x", &big)], true).unwrap();
    drop(big);
    assert!(std::fs::metadata(&path).unwrap().len() < 2 << 20);
    let mut npz = NpzReader::open(&path)
        .unwrap()
        .with_max_array_bytes(16 << 20);
    let err = npz.read("x").unwrap_err().to_string();
    assert!(
        err.contains("bomb.npz") && err.contains("above the limit"),
        "{err}"
    );

    // A header that claims an absurd shape is refused before anything is allocated.
    let path = dir.path().join("absurd.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("x.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    let dict =
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }";
    zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
    zip.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
    zip.write_all(dict.as_bytes()).unwrap();
    zip.finish().unwrap();
    let err = NpzReader::open(&path)
        .unwrap()
        .read("x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absurd.npz") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
fn metadata_reads_do_not_inflate_large_members() {
    // A compressed record whose x is corrupt deep inside: indexing (headers + small arrays)
    // succeeds because it never inflates x's data; loading x then fails.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("samples")).unwrap();
    let path = dir.path().join("samples/000000_000.npz");
    let x = NpyArray::new(
        vec![1, 64, 64, 16],
        NpyData::Float32((0..65536).map(|i| (i as f32).sin()).collect()),
    )
    .unwrap();
    let t = NpyArray::scalar(NpyData::Float32(vec![1000.0])).unwrap();
    let one = NpyArray::new(vec![1], NpyData::Float32(vec![1.0])).unwrap();
    let k = NpyArray::scalar(NpyData::Int64(vec![0])).unwrap();
    let arrays = [
        ("x", &x),
        ("timestep", &t),
        ("sigma", &one),
        ("conditioning", &one),
        ("pooled_conditioning", &one),
        ("step_index", &k),
    ];
    write_npz(&path, &arrays, true).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // x is the first member; damage the middle of its deflate stream.
    for b in &mut bytes[len / 4..len / 4 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 1, "num_steps": 1}"#,
    )
    .unwrap();
    let set = CalibrationSet::open(
        dir.path(),
        &OpenOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        set.samples()[0].tensors[&sd3lab::calib::SampleKey::X].shape,
        vec![1, 64, 64, 16]
    );
    assert!(
        set.load(&set.samples()[0], sd3lab::calib::SampleKey::X)
            .is_err()
    );
}

#[test]
fn empty_or_missing_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = CalibrationSet::open(dir.path(), &OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no calibration samples found"), "{err}");
    let err = CalibrationSet::open(&dir.path().join("nope"), &OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn samples_command_reports_and_exits_by_strictness() {
    let dir = good_set(2, 3);
    std::fs::write(dir.path().join("samples/000001_002.npz"), b"junk").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
            .args(["samples", "--calib-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schema"], "sd3lab.samples/1");
    assert_eq!(doc["total_samples"], 5);
    assert_eq!(doc["num_images"], 2);
    assert_eq!(doc["summary"]["buckets"]["early"], 2);
    assert_eq!(doc["samples"][3]["image"], 1);
    assert!(
        doc["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("000001_002.npz")
    );
    let out = run(&["--json", "--bucket", "late", "--max-images", "1"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["summary"]["samples"], 1);
    assert_eq!(doc["samples"][0]["step"], 2);
    let out = run(&["--strict"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("000001_002.npz"), "{stderr}");
}

/// `sd3lab samples --calib-dir DIR extra…`.
fn samples_cli(dir: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
        .args(["samples", "--calib-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn sample_files_without_a_manifest_are_a_problem_and_fail_strict() {
    // What a run killed during its first image left before runs wrote their manifest first:
    // 2 of 4 steps, which read as a complete one-image set of 2 steps.
    let dir = good_set(1, 2);
    let set = open(dir.path());
    assert_eq!(set.problems().len(), 1, "{:#?}", set.problems());
    let msg = set.problems()[0].to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("step count (2)") && msg.contains("inferred"),
        "{msg}"
    );
    assert!(strict(dir.path()).contains("no manifest"));
    let out = samples_cli(dir.path(), &["--strict"]);
    assert!(!out.status.success());
    // With the manifest a run writes, the same files are no problem.
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 1, "num_steps": 2}"#,
    )
    .unwrap();
    assert!(open(dir.path()).problems().is_empty());
}

#[test]
fn sample_files_the_manifest_does_not_list_are_reported() {
    let dir = good_set(2, 2);
    // The manifest of a run with image 0 finished; image 1's files are an unfinished image.
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 1, "num_steps": 2, "sample_files": ["samples/000000_000.npz", "./samples/000000_001.npz"]}"#,
    )
    .unwrap();
    let set = open(dir.path());
    assert_eq!(set.samples().len(), 2);
    one_problem(&set, "samples", "2 sample file(s) are not listed");
    assert!(set.problems()[0].message.contains("000001_000.npz"));
}

#[test]
fn an_absurd_manifest_step_count_is_flagged_and_not_used() {
    let dir = good_set(2, 3);
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 2, "num_steps": 1000000000000000}"#,
    )
    .unwrap();
    let set = open(dir.path());
    one_problem(
        &set,
        "manifest.json",
        "num_steps = 1000000000000000 is not a step count",
    );
    // Inferred from the files instead: the buckets are the right ones.
    assert_eq!(set.num_steps(), 3);
    let late = set
        .samples()
        .iter()
        .filter(|s| s.bucket == sd3lab::calib::Bucket::Late);
    assert_eq!(late.count(), 2);
    assert!(strict(dir.path()).contains("not a step count"));
}

#[test]
fn check_values_reports_non_finite_tensors_by_file_and_key() {
    let dir = good_set(2, 2);
    std::fs::write(
        dir.path().join("manifest.json"),
        r#"{"n_completed": 2, "num_steps": 2}"#,
    )
    .unwrap();
    // Image 1, step 0: a latent with one NaN and one infinity, the rest as a run writes it.
    let path = dir.path().join("samples/000001_000.npz");
    let mut x = vec![0.5f32; 16];
    x[3] = f32::NAN;
    x[9] = f32::INFINITY;
    let x = NpyArray::new(vec![1, 2, 2, 4], NpyData::Float32(x)).unwrap();
    let t = NpyArray::scalar(NpyData::Float32(vec![1000.0])).unwrap();
    let s = NpyArray::new(vec![1], NpyData::Float32(vec![1.0])).unwrap();
    let c = f32s(&[2, 10, 8], 0.5);
    let p = f32s(&[2, 4], 0.25);
    let k = NpyArray::scalar(NpyData::Int64(vec![0])).unwrap();
    let arrays = [
        ("x", &x),
        ("timestep", &t),
        ("sigma", &s),
        ("conditioning", &c),
        ("pooled_conditioning", &p),
        ("step_index", &k),
    ];
    write_npz(&path, &arrays, false).unwrap();
    // Indexing reads headers only: no problem without the check.
    let out = samples_cli(dir.path(), &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["problems"].as_array().unwrap().len(), 0, "{doc}");
    let out = samples_cli(dir.path(), &["--json", "--check-values"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = doc["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{doc}");
    let msg = problems[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("000001_000.npz") && msg.contains("'x' holds 2 non-finite"),
        "{msg}"
    );
    let out = samples_cli(dir.path(), &["--check-values", "--strict"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("000001_000.npz"));
}

#[test]
fn control_characters_in_file_names_are_escaped_on_the_terminal() {
    let dir = good_set(1, 2);
    // A good record and a junk one, both named with an escape sequence and a bell.
    let evil = "000000_001\u{1b}]0;pwned\u{7}.npz";
    std::fs::rename(
        dir.path().join("samples/000000_001.npz"),
        dir.path().join("samples").join(evil),
    )
    .unwrap();
    std::fs::write(dir.path().join("samples/000000_002\u{1b}[2J.npz"), b"junk").unwrap();
    let out = samples_cli(dir.path(), &[]);
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "raw control bytes: {text:?}"
        );
    }
    assert!(
        stdout.contains(r"000000_001\u{1b}]0;pwned\u{7}.npz"),
        "{stdout}"
    );
    assert!(stderr.contains(r"000000_002\u{1b}[2J.npz"), "{stderr}");
    let out = samples_cli(dir.path(), &["--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
}

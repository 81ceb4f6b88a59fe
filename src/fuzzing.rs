//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for their replay on
//! stable (`tests/fuzz_replay.rs`): one function per parser of outside data, each feeding the
//! bytes to the real parser the way the product does and then using what it returns the way
//! the product does. An `Err` is a correct answer to a hostile file; only a panic, an abort, a
//! crash, a hang or an unbounded allocation is a finding. Not part of the public API.
//!
//! Parsers that take an in-memory reader get one; those that take a path (or a folder of
//! files) get a file in a per-process temporary folder, rewritten for every input.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::calib::{npy, npz};

/// A fuzz target: feeds one input to a parser.
pub type Target = fn(&[u8]);

/// Every target, by name: the folder names under `fuzz/corpus/` and `fuzz/artifacts/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("npy", npy),
    ("npz", npz),
    ("manifest", manifest),
    ("prompts", prompts),
    ("safetensors_config", safetensors_config),
    ("tokenizer", tokenizer),
    ("clip_config", clip_config),
    ("plan", plan),
    ("sensitivity", sensitivity),
    ("pth", pth),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A folder private to this process, removed by the OS's temp cleaning only: fuzzing runs
/// millions of inputs and must not create a folder per input.
fn scratch() -> PathBuf {
    // One folder per thread (the stable replay runs targets on parallel test threads), removed
    // when the thread ends.
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::Builder::new()
            .prefix("sd3lab-fuzz-")
            .tempdir()
            .expect("a temporary folder for the fuzz inputs");
    }
    DIR.with(|dir| dir.path().to_owned())
}

/// Writes `data` to `name` in the scratch folder (plain write: the readers are under test,
/// not the writer) and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("write a fuzz input to the scratch folder");
    path
}

/// Splits `data` into two files' contents at the first `0xFF` byte (never valid UTF-8, so it
/// cannot be part of a valid text file): what lets one target fuzz a pair of files.
fn split_pair(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A `.npy` stream (header and data), as the `.npz` reader reads each member, with the
/// default array limit.
pub fn npy(data: &[u8]) {
    if let Ok(a) = npy::read_npy(&mut Cursor::new(data), npz::DEFAULT_MAX_ARRAY_BYTES) {
        let _ = (a.dtype(), a.first_f64(), a.to_npy_bytes());
        let _ = a.data.to_f32_vec();
    }
}

/// An `.npz` archive: its directory, every member's header, every member whole.
pub fn npz(data: &[u8]) {
    let path = scratch_file("sample.npz", data);
    let Ok(mut reader) = npz::NpzReader::open(&path) else {
        return;
    };
    for name in reader.names() {
        let _ = reader.info(&name);
        if let Ok(a) = reader.read(&name) {
            let _ = a.first_f64();
        }
    }
}

/// A calibration folder's `manifest.json`.
pub fn manifest(data: &[u8]) {
    let dir = scratch().join("manifest");
    std::fs::create_dir_all(&dir).expect("create the manifest folder");
    std::fs::write(crate::calib::manifest::Manifest::path(&dir), data).expect("write the manifest");
    if let Ok(Some(m)) = crate::calib::manifest::Manifest::read(&dir) {
        let _ = serde_json::to_string_pretty(&m);
    }
}

/// A prompt CSV file.
pub fn prompts(data: &[u8]) {
    let path = scratch_file("prompts.csv", data);
    // A small limit, as a run of a few images reads: the rows past it are still checked.
    let _ = crate::calib::prompts::read_prompts(&path, 4);
}

/// A checkpoint's safetensors header (MLX parses it) and the MMDiT/VAE configuration inferred
/// from its tensor shapes, then that configuration's validation.
pub fn safetensors_config(data: &[u8]) {
    let path = scratch_file("checkpoint.safetensors", data);
    if let Ok((mmdit, _vae)) = crate::model::source::infer_config(&path) {
        let _ = mmdit.validate();
    }
}

/// A tokenizer folder: `vocab.json` and `merges.txt` (the input split at its first `0xFF`),
/// then a prompt (the merges file's first line) tokenized with the result.
pub fn tokenizer(data: &[u8]) {
    use crate::model::tokenizer::{ClipTokenizer, Padding};
    let (vocab, merges) = split_pair(data);
    let dir = scratch().join("tokenizer");
    std::fs::create_dir_all(&dir).expect("create the tokenizer folder");
    std::fs::write(dir.join("vocab.json"), vocab).expect("write vocab.json");
    std::fs::write(dir.join("merges.txt"), merges).expect("write merges.txt");
    if let Ok(t) = ClipTokenizer::load(&dir, Padding::Eos) {
        let prompt = String::from_utf8_lossy(merges);
        let prompt = prompt.lines().next().unwrap_or("a photo of a cat");
        let _ = t.batch(prompt, Some("blurry"));
    }
}

/// A CLIP text encoder's `config.json`.
pub fn clip_config(data: &[u8]) {
    let dir = scratch().join("clip");
    std::fs::create_dir_all(&dir).expect("create the clip folder");
    std::fs::write(dir.join("config.json"), data).expect("write config.json");
    if let Ok(c) = crate::model::clip::read_clip_config(&dir) {
        let _ = crate::model::clip::clip_config_to_hf(&c);
    }
}

/// A quantization plan file, as `--quant PATH` reads it, then its per-bucket and per-layer
/// lookups.
pub fn plan(data: &[u8]) {
    use crate::quant::QuantConfig;
    let path = scratch_file("plan.json", data);
    let Some(spec) = path.to_str() else {
        return;
    };
    if let Ok(q) = QuantConfig::parse(spec, 64) {
        for bucket in crate::calib::Bucket::STEPS {
            let _ = q
                .for_bucket(bucket)
                .for_layer("joint_blocks.0.x_block.attn.qkv");
        }
    }
}

/// A `sensitivity.json`, then the plans `plan` builds from it (both objectives, all steps and
/// per bucket) at a mid target with the bit widths the file lists.
pub fn sensitivity(data: &[u8]) {
    use crate::quant::plan::{Objective, build_plan, build_plan_per_bucket};
    let path = scratch_file("sensitivity.json", data);
    let Ok(report) = crate::quant::sensitivity::read_report(&path) else {
        return;
    };
    let _ = report.lowest_bits();
    let _ = crate::quant::sensitivity::report_csv(&report);
    let bits = report.settings.bits.clone();
    for objective in [Objective::Sqnr, Objective::Mse] {
        for target in [3.0, 6.0] {
            if let Ok(b) = build_plan(&report, target, &bits, objective) {
                let _ = serde_json::to_string(&b.plan);
            }
            let _ = build_plan_per_bucket(&report, target, &bits, objective);
        }
    }
}

/// A PyTorch `.pth` file (zip or legacy format) from memory, with the default byte limit.
pub fn pth(data: &[u8]) {
    let origin = Path::new("fuzz.pth");
    if let Ok(dict) = crate::metrics::pth::read_pth_from(
        origin,
        Cursor::new(data),
        crate::metrics::pth::MAX_TOTAL_BYTES,
    ) {
        for (_, t) in dict.iter() {
            let _ = (t.numel(), t.to_i64_vec());
            let _ = t.to_f32_vec();
        }
    }
}

//! Replays every saved fuzz input on stable: each file of `fuzz/corpus/<target>/` (the seeds
//! and what coverage-guided fuzzing kept) and `fuzz/artifacts/<target>/` (crashes found, kept
//! as regression inputs once fixed) goes through the same `sd3lab::fuzzing::<target>` function
//! the nightly fuzz target calls. A parser may refuse an input; it must not panic on it (an
//! abort or a crash ends this test binary, which fails the test as well).

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir/<target>/` for every target folder in `dir`, checking that each folder
/// names a target (a misspelt folder would otherwise be skipped in silence).
fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries {
        let folder = entry.expect("list a fuzz folder").path();
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            sd3lab::fuzzing::target(&name).is_some(),
            "{}: no fuzz target of that name (targets: {:?})",
            folder.display(),
            sd3lab::fuzzing::TARGETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
        );
        for file in std::fs::read_dir(&folder).expect("list a target's inputs") {
            let path = file.expect("list a target's inputs").path();
            if path.is_file() {
                found.push((name.clone(), path));
            }
        }
    }
    found.sort();
    found
}

/// Runs every input through its target; returns the files that panicked.
fn replay(inputs: &[(String, PathBuf)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (target, path) in inputs {
        let run = sd3lab::fuzzing::target(target).expect("checked by inputs()");
        let data = std::fs::read(path).expect("read a fuzz input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    failed
}

#[test]
fn every_corpus_file_goes_through_its_parser_without_panicking() {
    let inputs = inputs(&fuzz_dir().join("corpus"));
    for (target, _) in sd3lab::fuzzing::TARGETS {
        assert!(
            inputs.iter().any(|(t, _)| t == target),
            "fuzz/corpus/{target}/ holds no input: every target keeps its seeds"
        );
    }
    let failed = replay(&inputs);
    assert!(failed.is_empty(), "panicked on: {failed:#?}");
}

#[test]
fn every_saved_crash_is_fixed() {
    let failed = replay(&inputs(&fuzz_dir().join("artifacts")));
    assert!(failed.is_empty(), "panicked on: {failed:#?}");
}

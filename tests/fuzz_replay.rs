//! Replays every saved fuzz input on stable: each file of `fuzz/corpus/<target>/` (the seeds
//! and what coverage-guided fuzzing kept) and `fuzz/artifacts/<target>/` (crashes found, kept
//! as regression inputs once fixed) goes through the same `sd3lab::fuzzing::<target>` function
//! the nightly fuzz target calls. A parser may refuse an input; it must not panic on it (an
//! abort or a crash ends this test binary, which fails the test as well). As under libFuzzer's
//! `-malloc_limit_mb=1024`, an input may not make the process reserve much memory: the address
//! space is limited to what it holds at the start plus [`HEADROOM`], so an allocation sized by
//! a hostile header fails (and aborts) here even where the OS would overcommit it.

use std::path::{Path, PathBuf};

/// What the replay may add to the address space the process holds when it starts.
const HEADROOM: u64 = 2 << 30;

/// Limits the address space to its current size plus [`HEADROOM`] (once per process).
fn limit_address_space() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmSize in /proc/self/status");
        let limit = vm_kib * 1024 + HEADROOM;
        let rlim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads a valid rlimit struct; it only lowers this process's soft limit.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlim) };
        assert_eq!(
            rc,
            0,
            "setrlimit(RLIMIT_AS): {}",
            std::io::Error::last_os_error()
        );
    });
}

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
    limit_address_space();
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

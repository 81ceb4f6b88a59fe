//! Fault tests: destinations (issue 17 item 5). An output that is a symbolic link is written
//! through to its target (the link stays a link); a FIFO, a device or a folder is refused with a
//! message that says what it is, a non-zero exit and without blocking on the FIFO, and the
//! special file is left as it was.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// Runs `cmd`, failing the test if it has not finished within `limit` (a writer blocked
/// opening a FIFO never would).
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sd3lab");
    let start = Instant::now();
    while child.try_wait().expect("wait for sd3lab").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("collect sd3lab");
            panic!(
                "sd3lab did not finish in {limit:?} (blocked?):\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect sd3lab")
}

/// `generate` on the built-in tiny model (64×64, one step) with `--output output`, its model
/// cache in `cache`.
fn generate(cache: &Path, output: &Path) -> Output {
    let mut cmd = common::sd3lab_command(
        cache,
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a red fox",
            "--num-steps",
            "1",
            "--height",
            "64",
            "--width",
            "64",
        ],
    );
    cmd.arg("--output").arg(output);
    output_within(cmd, Duration::from_secs(300))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn generate_writes_through_a_symbolic_link_to_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let (link, target) = (dir.path().join("out.png"), dir.path().join("real.png"));
    std::fs::write(&target, b"old contents").unwrap();
    std::os::unix::fs::symlink("real.png", &link).unwrap();
    let o = generate(dir.path(), &link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced by a file"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.png"));
    assert!(is_png(&target), "the target does not hold the image");

    // A dangling link names the file to create.
    let (link, target) = (dir.path().join("new.png"), dir.path().join("made.png"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = generate(dir.path(), &link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(is_png(&target));
}

/// Makes a FIFO at `path` with mkfifo(1) (the crate has no libc binding of its own).
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// A character device to use as a destination: one made in `dir` (a copy of /dev/null's
/// numbers) where this process may (root, as in CI), so that a regression could never replace
/// the machine's own /dev/null; otherwise /dev/null itself, which a non-root process cannot
/// replace anyway.
fn device(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("device.png");
    let made = Command::new("mknod")
        .arg(&path)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        path
    } else {
        Path::new("/dev/null").to_owned()
    }
}

#[test]
fn generate_refuses_a_fifo_a_device_and_a_folder_without_blocking() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    mkfifo(&fifo);
    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    let via_link = dir.path().join("null.png");
    let device = device(dir.path());
    std::os::unix::fs::symlink(&device, &via_link).unwrap();
    for (output, what) in [
        (fifo.as_path(), "a FIFO"),
        (device.as_path(), "a device"),
        (via_link.as_path(), "a device"),
        (folder.as_path(), "a folder"),
    ] {
        let o = generate(dir.path(), output);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", output.display());
        assert!(
            err.contains(&output.display().to_string()) && err.contains(what),
            "{}: {err}",
            output.display()
        );
    }
    // Nothing was replaced.
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::metadata(&device)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(std::fs::symlink_metadata(&via_link).unwrap().is_symlink());
    assert!(folder.is_dir() && std::fs::read_dir(&folder).unwrap().next().is_none());
}

/// A bad destination fails before any work: the model is not even resolved (the built-in tiny
/// model, written into the cache on first use, is not written).
#[test]
fn generate_refuses_a_bad_destination_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    mkfifo(&fifo);
    let cache = dir.path().join("cache");
    let o = generate(&cache, &fifo);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        !cache.join("models").exists(),
        "the model was resolved before the destination was checked"
    );
}

/// `--latent-out` naming the image's own file (directly or through a link) is refused before
/// any work, and the image already there is kept.
#[test]
fn generate_refuses_a_latent_that_would_replace_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("out.png");
    std::fs::write(&image, b"earlier image").unwrap();
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink("out.png", &link).unwrap();
    for latent in [&image, &link] {
        let cache = dir.path().join("cache");
        let mut cmd = common::sd3lab_command(&cache, &["generate", "--model", "tiny"]);
        cmd.args(["--prompt", "x", "--num-steps", "1", "--output"])
            .arg(&image)
            .arg("--latent-out")
            .arg(latent);
        let o = output_within(cmd, Duration::from_secs(60));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("same file as --output"), "{err}");
        assert!(!cache.join("models").exists(), "work began: {err}");
        assert_eq!(std::fs::read(&image).unwrap(), b"earlier image");
    }
}

/// The app's files written on exit (`gui --screenshot`, `--frame-stats`) are checked before
/// the window opens (here there is no display: the destination is refused first).
#[test]
fn gui_refuses_a_fifo_screenshot_before_opening_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("shot.png");
    mkfifo(&fifo);
    for flag in ["--screenshot", "--frame-stats"] {
        let mut cmd = common::sd3lab_command(dir.path(), &["gui", flag]);
        cmd.arg(&fifo)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        let o = output_within(cmd, Duration::from_secs(60));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flag}: {err}");
        assert!(
            err.contains(flag) && err.contains("a FIFO") && !err.contains("no display"),
            "{flag}: {err}"
        );
    }
}

/// `calibrate` and `benchmark` refuse a file where their output folder should be, before any work: the
/// model is not resolved (the tiny model is not even written into the cache) and the file is
/// kept as it was.
#[test]
fn folder_writers_refuse_a_file_as_their_output_folder_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"kept").unwrap();
    let file_arg = file.display().to_string();
    let common_args = ["--model", "tiny", "--num-images", "1", "--num-steps", "1"];
    // (`sensitivity`'s own test is in faults::sensitivity: it needs a calibration set.)
    let cases: [(&str, Vec<&str>); 2] = [
        ("calibrate", vec!["--calib-dir", &file_arg]),
        (
            "benchmark",
            vec![
                "--config",
                "fp32",
                "--skip-metrics",
                "--output-dir",
                &file_arg,
            ],
        ),
    ];
    for (command, args) in cases {
        let cache = dir.path().join(format!("cache-{command}"));
        let mut cmd = common::sd3lab_command(&cache, &[command]);
        cmd.args(common_args).args(&args);
        let o = output_within(cmd, Duration::from_secs(120));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("is a file, not a folder") && err.contains("not-a-folder"),
            "{command}: {err}"
        );
        assert!(
            !cache.join("models").exists(),
            "{command} resolved the model first: {err}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"kept", "{command}");
    }
}

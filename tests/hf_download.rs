//! `--model sd3-medium` downloads the published files into the Hugging Face cache layout when
//! they are not there (here from a local server standing in for the hub via `HF_ENDPOINT`),
//! sends the token, and says what to do when access is refused. Through the library: the
//! download reports its progress as events, and a cancelled download leaves nothing behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The revision the test server says it serves (a commit id: 40 hexadecimal digits).
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `root/<repo>/resolve/main/<file>` from `files[repo]` with [`COMMIT`] as its
/// revision; requires `token` if given.
fn serve(
    files: Vec<(String, PathBuf)>,
    token: Option<String>,
    seen_auth: Arc<Mutex<Vec<String>>>,
) -> String {
    serve_commit(files, token, seen_auth, Some(COMMIT.to_owned()))
}

/// [`serve`] with `commit` as the `x-repo-commit` header (`None`: no such header).
fn serve_commit(
    files: Vec<(String, PathBuf)>,
    token: Option<String>,
    seen_auth: Arc<Mutex<Vec<String>>>,
    commit: Option<String>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    auth = line[14..].trim().to_owned();
                }
            }
            seen_auth.lock().unwrap().push(auth.clone());
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let allowed = token.as_ref().is_none_or(|t| auth == format!("Bearer {t}"));
            let found = files
                .iter()
                .find(|(url, _)| *url == path)
                .map(|(_, p)| p.clone());
            let (status, body) = match (allowed, found) {
                (false, _) => ("401 Unauthorized", Vec::new()),
                (true, Some(p)) => ("200 OK", std::fs::read(p).unwrap()),
                (true, None) => ("404 Not Found", Vec::new()),
            };
            let commit_header = commit
                .as_ref()
                .map(|c| format!("x-repo-commit: {c}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{commit_header}connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    format!("http://{addr}")
}

fn published(model: &Path) -> Vec<(String, PathBuf)> {
    sd3lab::model::source::sd3_medium_files()
        .into_iter()
        .map(|(repo, file)| (format!("/{repo}/resolve/main/{file}"), model.join(file)))
        .collect()
}

#[test]
fn downloads_into_the_hub_cache_then_generates() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    sd3lab::model::source::write_model_dir(&model, &sd3lab::model::Preset::Tiny.config(None), 8)
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let endpoint = serve(published(&model), Some("secret".into()), seen.clone());
    let hub = root.path().join("hub");
    let run = |token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sd3lab"))
            .args([
                "generate",
                "--model",
                "sd3-medium",
                "--prompt",
                "a fox",
                "--num-steps",
                "1",
                "--height",
                "64",
                "--width",
                "64",
                "--output",
            ])
            .arg(root.path().join("out.png"))
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HUB_CACHE", &hub)
            .env("HF_HOME", root.path().join("hf-home"))
            .env("HF_TOKEN", token)
            .output()
            .unwrap()
    };
    let refused = run("wrong");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("HF_TOKEN"),
        "{err}"
    );

    let ok = run("secret");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(root.path().join("out.png").is_file());
    let snapshot = hub
        .join("models--argmaxinc--mlx-stable-diffusion-3-medium/snapshots")
        .join(COMMIT)
        .join("sd3_medium.safetensors");
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        std::fs::read(model.join("sd3_medium.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(hub.join("models--argmaxinc--stable-diffusion/refs/main")).unwrap(),
        COMMIT
    );
    assert!(seen.lock().unwrap().iter().any(|a| a == "Bearer secret"));

    // Now cached: no request is made.
    let before = seen.lock().unwrap().len();
    let again = run("secret");
    assert!(again.status.success());
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// Every regular file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn resolve_reports_download_progress_and_a_cancelled_download_leaves_no_file() {
    use sd3lab::job::CancelToken;
    use sd3lab::model::source::{ModelLocations, SourceError, SourceEvent, resolve_in};

    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    sd3lab::model::source::write_model_dir(&model, &sd3lab::model::Preset::Tiny.config(None), 8)
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let at = ModelLocations {
        hub_cache: root.path().join("hub"),
        cache_dir: root.path().join("sd3lab"),
        endpoint: serve(published(&model), Some("secret".into()), seen),
        token: Some("secret".into()),
    };

    // Cancelled after the first chunk of the first file (the checkpoint, several chunks long).
    let cancel = CancelToken::new();
    let mut events = Vec::new();
    let err = resolve_in("sd3-medium", &at, &cancel, &mut |e| {
        if matches!(e, SourceEvent::Downloading { .. }) {
            cancel.cancel();
        }
        events.push(e);
    })
    .unwrap_err();
    assert!(matches!(err, SourceError::Cancelled), "{err:?}");
    assert_eq!(events[0], SourceEvent::DownloadStarting);
    let checkpoint_len = std::fs::metadata(model.join("sd3_medium.safetensors"))
        .unwrap()
        .len();
    match &events[1..] {
        [SourceEvent::Downloading { file, done, total }] => {
            assert_eq!(file, "sd3_medium.safetensors");
            assert_eq!(*total, Some(checkpoint_len));
            assert!(
                *done > 0 && *done < checkpoint_len,
                "cancelled mid-file: {done}"
            );
        }
        other => panic!("one progress event, then the stop: {other:?}"),
    }
    assert_eq!(
        files_under(&at.hub_cache),
        Vec::<PathBuf>::new(),
        "no partial file"
    );

    // Not cancelled: every file's progress, in order, up to its size; then the cached model.
    let mut events = Vec::new();
    let files = resolve_in("sd3-medium", &at, &CancelToken::new(), &mut |e| {
        events.push(e)
    })
    .unwrap();
    assert_eq!(events[0], SourceEvent::DownloadStarting);
    let mut last: Option<(String, u64)> = None;
    let mut finished = Vec::new();
    for e in &events[1..] {
        let SourceEvent::Downloading { file, done, total } = e else {
            panic!("only progress after the start: {e:?}");
        };
        let size = std::fs::metadata(model.join(file)).unwrap().len();
        assert_eq!(*total, Some(size), "{file}");
        if let Some((f, d)) = &last
            && f == file
        {
            assert!(done > d, "{file}: progress grows");
        }
        if *done == size {
            finished.push(file.clone());
        }
        last = Some((file.clone(), *done));
    }
    let expected: Vec<String> = sd3lab::model::source::sd3_medium_files()
        .into_iter()
        .map(|(_, f)| f.to_owned())
        .collect();
    assert_eq!(
        finished, expected,
        "each file downloaded to its end, in order"
    );
    assert!(files.checkpoint.starts_with(&at.hub_cache));
    assert_eq!(
        std::fs::read(&files.checkpoint).unwrap(),
        std::fs::read(model.join("sd3_medium.safetensors")).unwrap()
    );
    // Cached now: nothing to report.
    let mut again = Vec::new();
    resolve_in("sd3-medium", &at, &CancelToken::new(), &mut |e| {
        again.push(e)
    })
    .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// Issue 17 item 6: the server's revision header becomes a folder name in the cache, so it must
/// be a commit id (40 hexadecimal digits). A hostile one (`../../../escaped`, an absolute path,
/// a nested path, an empty or missing one) is refused naming the header, and nothing is written
/// anywhere, inside the cache or out.
#[test]
fn a_hostile_revision_header_is_refused_and_nothing_is_written() {
    use sd3lab::job::CancelToken;
    use sd3lab::model::source::{ModelLocations, SourceError, resolve_in};

    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    sd3lab::model::source::write_model_dir(&model, &sd3lab::model::Preset::Tiny.config(None), 8)
        .unwrap();
    let model_files = files_under(&model);
    for commit in [
        Some("../../../escaped"),
        Some("../../../escaped/0123456789abcdef0123456789abcdef0123"),
        Some("/tmp/sd3lab-absolute-revision"),
        Some("0123456789abcdef0123456789abcdef0123456/"),
        Some("0123456789ABCDEFG123456789abcdef01234567"),
        Some("abc"),
        Some(""),
        None,
    ] {
        let at = ModelLocations {
            hub_cache: root.path().join("hub"),
            cache_dir: root.path().join("sd3lab"),
            endpoint: serve_commit(
                published(&model),
                None,
                Arc::new(Mutex::new(Vec::new())),
                commit.map(str::to_owned),
            ),
            token: None,
        };
        let err = resolve_in("sd3-medium", &at, &CancelToken::new(), &mut |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, SourceError::Download { .. }) && text.contains("x-repo-commit"),
            "{commit:?}: {text}"
        );
        if let Some(c) = commit.filter(|c| !c.is_empty()) {
            assert!(text.contains(c), "{commit:?}: {text}");
        }
        let mut written = files_under(root.path());
        written.retain(|p| !model_files.contains(p));
        assert_eq!(written, Vec::<PathBuf>::new(), "{commit:?}");
        assert!(!Path::new("/tmp/sd3lab-absolute-revision").exists());
    }
}

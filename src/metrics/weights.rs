//! Where the metrics' network weights come from: the published `.pth` files (torch-fidelity's
//! Inception-v3, torchvision's AlexNet and LPIPS v0.1's linear heads), downloaded once into the
//! user cache, checked against their published size and SHA-256, and converted to
//! `.safetensors` (which MLX loads) with [`super::pth`], which never runs pickle code.
//!
//! Layout of the cache: `<cache_dir>/metrics/<name>.safetensors`, one file per source, written
//! atomically; the downloaded `.pth` is kept beside it only until the conversion succeeded.
//! A user may also point the tool at a local copy (`.pth` or converted `.safetensors`): a `.pth`
//! is converted into the same cache folder, named after its own SHA-256, so it is converted once.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::pth::{self, PthError};
use crate::job::CancelToken;

/// A published weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsSource {
    /// Short name: the converted file is `<name>.safetensors`.
    pub name: &'static str,
    /// The file's name where it is published (its hash prefix is part of it).
    pub file_name: &'static str,
    pub url: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: &'static str,
    /// Only tensors whose names start with this are kept (AlexNet: `features.`, the part
    /// LPIPS uses, 10 MB of the 244 MB file).
    pub keep_prefix: Option<&'static str>,
}

/// torch-fidelity's Inception-v3 (the TF 2015-12-05 graph converted to a PyTorch state dict;
/// `URL_INCEPTION_V3` of torch_fidelity/feature_extractor_inceptionv3.py). The name's hash
/// prefix `6726825d` is what torch.hub's `check_hash` checks; the full SHA-256 and size were
/// taken from independent records of the same file (it is also pytorch-fid's
/// `pt_inception-2015-12-05-6726825d.pth`).
pub const INCEPTION: WeightsSource = WeightsSource {
    name: "inception-2015-12-05",
    file_name: "weights-inception-2015-12-05-6726825d.pth",
    url: "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    size: 95_628_359,
    sha256: "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    keep_prefix: None,
};

/// torchvision's ImageNet AlexNet (`AlexNet_Weights.IMAGENET1K_V1`), whose `features` LPIPS
/// uses as its backbone.
pub const ALEXNET: WeightsSource = WeightsSource {
    name: "alexnet-owt-7be5be79-features",
    file_name: "alexnet-owt-7be5be79.pth",
    url: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    size: 244_408_911,
    sha256: "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
    keep_prefix: Some("features."),
};

/// LPIPS v0.1's linear heads for AlexNet (`lpips/weights/v0.1/alex.pth` of
/// richzhang/PerceptualSimilarity, the file the `lpips` 0.1.4 package ships; size and hash
/// measured on that package's copy).
pub const LPIPS_ALEX_LIN: WeightsSource = WeightsSource {
    name: "lpips-v0.1-alex-lin",
    file_name: "alex.pth",
    url: "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
    size: 6_009,
    sha256: "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    keep_prefix: None,
};

/// What fetching reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// `done` bytes of `file` downloaded so far, of `total` when known.
    Downloading {
        file: String,
        done: u64,
        total: Option<u64>,
    },
    /// `file` is being converted to safetensors.
    Converting { file: String },
    /// `file` was already in the cache.
    Cached { file: PathBuf },
}

impl std::fmt::Display for FetchEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Downloading { file, done, total } => match total {
                Some(t) => write!(f, "downloading {file}: {done} of {t} bytes"),
                None => write!(f, "downloading {file}: {done} bytes"),
            },
            Self::Converting { file } => write!(f, "converting {file} to safetensors"),
            Self::Cached { file } => write!(f, "{} is already in the cache", file.display()),
        }
    }
}

/// Why weights could not be fetched, converted or found.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Not fetched yet: the front ends say how to get them in their own terms.
    #[error("no {what} weights in {cache}")]
    Missing { what: &'static str, cache: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pth(#[from] PthError),
    #[error("downloading {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "{what} is {actual_size} bytes with SHA-256 {actual}, but the published file is {size} bytes with SHA-256 {expected}"
    )]
    Mismatch {
        what: String,
        size: u64,
        expected: &'static str,
        actual_size: u64,
        actual: String,
    },
    #[error("{path}: neither a .pth nor a .safetensors file")]
    UnknownKind { path: PathBuf },
    #[error("{path}: no tensor names start with '{prefix}'")]
    NothingKept { path: PathBuf, prefix: &'static str },
    #[error("download cancelled")]
    Cancelled,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The folder of converted metric weights in `cache_dir`.
pub fn weights_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("metrics")
}

/// Where `source`'s converted weights live in `cache_dir`.
pub fn converted_path(cache_dir: &Path, source: &WeightsSource) -> PathBuf {
    weights_dir(cache_dir).join(format!("{}.safetensors", source.name))
}

/// Downloads torch-fidelity's Inception weights into `cache_dir` (once), checks them and
/// converts them; returns the `.safetensors` path.
pub fn fetch_inception_weights(
    cache_dir: &Path,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, WeightsError> {
    fetch(&INCEPTION, cache_dir, cancel, on_progress)
}

/// LPIPS (AlexNet, v0.1) weights: the backbone's `features.*` and the linear heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpipsWeights {
    pub alexnet: PathBuf,
    pub lin: PathBuf,
}

/// Downloads, checks and converts the LPIPS weights into `cache_dir` (once each).
pub fn fetch_lpips_weights(
    cache_dir: &Path,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(FetchEvent),
) -> Result<LpipsWeights, WeightsError> {
    Ok(LpipsWeights {
        alexnet: fetch(&ALEXNET, cache_dir, cancel, on_progress)?,
        lin: fetch(&LPIPS_ALEX_LIN, cache_dir, cancel, on_progress)?,
    })
}

/// Fetches `source` from its URL into `cache_dir` unless its converted file is there already.
pub fn fetch(
    source: &WeightsSource,
    cache_dir: &Path,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, WeightsError> {
    fetch_from(source, source.url, cache_dir, cancel, on_progress)
}

/// [`fetch`] from another URL (a mirror, or a test server); the file must still be the
/// published one (size and SHA-256).
pub fn fetch_from(
    source: &WeightsSource,
    url: &str,
    cache_dir: &Path,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, WeightsError> {
    let out = converted_path(cache_dir, source);
    if out.is_file() {
        on_progress(FetchEvent::Cached { file: out.clone() });
        return Ok(out);
    }
    let dir = weights_dir(cache_dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let pth_path = dir.join(source.file_name);
    // A complete download from an earlier run that stopped before converting is reused.
    let have = match std::fs::metadata(&pth_path) {
        Ok(m) if m.len() == source.size => {
            let (size, sha) = hash_file(&pth_path)?;
            size == source.size && sha == source.sha256
        }
        _ => false,
    };
    if !have {
        download_checked(source, url, &pth_path, cancel, on_progress)?;
    }
    on_progress(FetchEvent::Converting {
        file: source.file_name.to_owned(),
    });
    let metadata = [
        ("source", source.url),
        ("source_sha256", source.sha256),
        ("converter", "sd3lab metrics::weights"),
    ];
    convert_pth(&pth_path, &out, source.keep_prefix, &metadata)?;
    // The converted file is all that is used from now on.
    std::fs::remove_file(&pth_path).map_err(io(&pth_path))?;
    Ok(out)
}

/// Downloads `url` to `target` through a temporary file, hashing it on the way; the file is
/// renamed into place only when its size and SHA-256 are the published ones.
fn download_checked(
    source: &WeightsSource,
    url: &str,
    target: &Path,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(FetchEvent),
) -> Result<(), WeightsError> {
    let failed = |reason: String| WeightsError::Download {
        url: url.to_owned(),
        reason,
    };
    let response = crate::download::agent()
        .get(url)
        .call()
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(failed(format!("HTTP {status}")));
    }
    let total = crate::download::content_length(&response);
    if let Some(t) = total
        && t != source.size
    {
        return Err(failed(format!(
            "the server sends {t} bytes, but the published file is {} bytes",
            source.size
        )));
    }
    // Reading stops one byte past the published size: a longer body is wrong either way.
    let mut body = response
        .into_body()
        .into_reader()
        .take(source.size.saturating_add(1));
    let mut hasher = Sha256::new();
    let (tmp, done) =
        crate::download::stream_to_temp(&mut body, target, cancel, &mut |chunk, done| {
            hasher.update(chunk);
            on_progress(FetchEvent::Downloading {
                file: source.file_name.to_owned(),
                done,
                total,
            });
        })
        .map_err(|e| match e {
            crate::download::StreamError::Read(e) => failed(e.to_string()),
            crate::download::StreamError::Write(e) => io(target)(e),
            crate::download::StreamError::Cancelled => WeightsError::Cancelled,
        })?;
    let sha = hex(&hasher.finalize());
    if done != source.size || sha != source.sha256 {
        return Err(WeightsError::Mismatch {
            what: format!("the file downloaded from {url}"),
            size: source.size,
            expected: source.sha256,
            actual_size: done,
            actual: sha,
        });
    }
    tmp.as_file().sync_all().map_err(io(target))?;
    crate::fsutil::persist(tmp, target).map_err(|source| WeightsError::Io {
        path: target.to_owned(),
        source,
    })?;
    Ok(())
}

/// Size and SHA-256 (lowercase hex) of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), WeightsError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `path` is `source`'s published file (size and SHA-256).
pub fn verify(source: &WeightsSource, path: &Path) -> Result<(), WeightsError> {
    let (size, sha) = hash_file(path)?;
    if size != source.size || sha != source.sha256 {
        return Err(WeightsError::Mismatch {
            what: path.display().to_string(),
            size: source.size,
            expected: source.sha256,
            actual_size: size,
            actual: sha,
        });
    }
    Ok(())
}

/// Reads `pth` (never running pickle code) and writes its tensors (those starting with
/// `keep_prefix`, if given) to `out` as `.safetensors`, atomically, with `metadata` in the
/// header's `__metadata__`. Every dtype is kept as is except float64, which MLX's safetensors
/// loader does not accept: it is rounded to float32 (the networks run in float32 anyway).
pub fn convert_pth(
    pth: &Path,
    out: &Path,
    keep_prefix: Option<&'static str>,
    metadata: &[(&str, &str)],
) -> Result<(), WeightsError> {
    let sd = pth::read_pth(pth)?;
    let narrowed: Vec<(&str, std::borrow::Cow<'_, pth::Tensor>)> = sd
        .iter()
        .filter(|(n, _)| keep_prefix.is_none_or(|p| n.starts_with(p)))
        .map(|(n, t)| (n, mlx_loadable(t)))
        .collect();
    let kept: Vec<(&str, &pth::Tensor)> = narrowed.iter().map(|(n, t)| (*n, &**t)).collect();
    if let Some(prefix) = keep_prefix
        && kept.is_empty()
    {
        return Err(WeightsError::NothingKept {
            path: pth.to_owned(),
            prefix,
        });
    }
    write_safetensors(out, &kept, metadata).map_err(io(out))
}

/// `t`, or its float32 rounding when it is float64.
fn mlx_loadable(t: &pth::Tensor) -> std::borrow::Cow<'_, pth::Tensor> {
    if t.dtype() != pth::Dtype::F64 {
        return std::borrow::Cow::Borrowed(t);
    }
    let bytes = t
        .to_f32_vec()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::borrow::Cow::Owned(
        pth::Tensor::from_bytes(pth::Dtype::F32, t.shape().to_vec(), bytes)
            .expect("same shape, 4 bytes per element"),
    )
}

/// Writes tensors as a `.safetensors` file (each in its own dtype, names in the given order),
/// atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &pth::Tensor)],
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.bytes().len();
        header.insert(
            (*name).to_owned(),
            serde_json::json!({
                "dtype": t.dtype().safetensors_name(),
                "shape": t.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    crate::model::synth::write_safetensors_with(path, &header, |w| {
        for (_, t) in tensors {
            w.write_all(t.bytes())?;
        }
        Ok(())
    })
}

/// The Inception weights to use: `explicit` (a `.safetensors` as is, a `.pth` converted once
/// into the user cache), else the ones `--fetch` put in the user cache
/// ([`crate::model::source::cache_dir`]).
pub fn resolve_inception_weights(explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    resolve_inception_weights_in(&crate::model::source::cache_dir(), explicit)
}

/// [`resolve_inception_weights`] with the cache folder given.
pub fn resolve_inception_weights_in(
    cache_dir: &Path,
    explicit: Option<&Path>,
) -> Result<PathBuf, WeightsError> {
    match explicit {
        Some(p) => resolve_explicit(cache_dir, p, None),
        None => cached(cache_dir, &INCEPTION, "Inception"),
    }
}

/// The LPIPS weights in `cache_dir`, or an error saying how to get them.
pub fn resolve_lpips_weights_in(cache_dir: &Path) -> Result<LpipsWeights, WeightsError> {
    Ok(LpipsWeights {
        alexnet: cached(cache_dir, &ALEXNET, "LPIPS (AlexNet)")?,
        lin: cached(cache_dir, &LPIPS_ALEX_LIN, "LPIPS (v0.1 heads)")?,
    })
}

/// [`resolve_lpips_weights_in`] in the user cache.
pub fn resolve_lpips_weights() -> Result<LpipsWeights, WeightsError> {
    resolve_lpips_weights_in(&crate::model::source::cache_dir())
}

fn cached(
    cache_dir: &Path,
    source: &WeightsSource,
    what: &'static str,
) -> Result<PathBuf, WeightsError> {
    let p = converted_path(cache_dir, source);
    if p.is_file() {
        Ok(p)
    } else {
        Err(WeightsError::Missing {
            what,
            cache: weights_dir(cache_dir),
        })
    }
}

/// A user's weights file: a `.safetensors` is used as is; a `.pth` is converted into
/// `<cache>/metrics/local-<sha256 prefix>.safetensors` (once: the name is its content's hash).
pub fn resolve_explicit(
    cache_dir: &Path,
    path: &Path,
    keep_prefix: Option<&'static str>,
) -> Result<PathBuf, WeightsError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("safetensors") => {
            std::fs::metadata(path).map_err(io(path))?;
            Ok(path.to_owned())
        }
        Some("pth") | Some("pt") => {
            let (_, sha) = hash_file(path)?;
            let dir = weights_dir(cache_dir);
            let out = dir.join(format!("local-{}.safetensors", &sha[..16]));
            if out.is_file() {
                return Ok(out);
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let source = path.display().to_string();
            let metadata = [
                ("source", source.as_str()),
                ("source_sha256", sha.as_str()),
                ("converter", "sd3lab metrics::weights"),
            ];
            convert_pth(path, &out, keep_prefix, &metadata)?;
            Ok(out)
        }
        _ => Err(WeightsError::UnknownKind {
            path: path.to_owned(),
        }),
    }
}

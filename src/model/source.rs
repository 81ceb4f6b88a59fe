//! Where a model comes from (`--model`): a directory in the published layout, `sd3-medium`
//! from the Hugging Face cache, `tiny` (the built-in demo model, generated on first use into the
//! user's cache), or `auto`. Also writes whole synthetic checkpoints (`sd3lab model synth`) and
//! infers a checkpoint's configuration from its tensor shapes.
//!
//! The published layout, as the two Hugging Face repositories put their files side by side:
//! `sd3_medium.safetensors` (MMDiT `model.diffusion_model.*` + VAE `first_stage_model.*`),
//! `clip_l/{config.json, model.fp16.safetensors}`, `clip_g/…`,
//! `tokenizer_l/{vocab.json, merges.txt}`, `tokenizer_g/…`.

use std::path::{Path, PathBuf};

use super::clip::{CONFIG_FILE as CLIP_CONFIG_FILE, WEIGHTS_FILE as CLIP_WEIGHTS_FILE};
use super::config::{MmditConfig, Preset, Sd3Config, VaeDecoderConfig};
use super::tokenizer::{MERGES_FILE, VOCAB_FILE};
use super::weights::{MMDIT_PREFIX, VAE_DECODER_PREFIX, WeightsError};

/// The checkpoint file inside a model directory.
pub const CHECKPOINT_FILE: &str = "sd3_medium.safetensors";
/// Hugging Face repositories of the real model.
pub const HF_MMDIT_REPO: &str = "argmaxinc/mlx-stable-diffusion-3-medium";
pub const HF_TEXT_REPO: &str = "argmaxinc/stable-diffusion";
/// Version of the built-in tiny model (bump when it changes): the demo model trained by
/// `sd3lab model train-demo` with its default settings.
pub const TINY_VERSION: &str = "tiny-demo-2";
/// Seed of the random tiny model the app's tests use.
pub const TINY_SEED: u64 = 20_240_612;
/// The trained demo model's checkpoint (MMDiT and VAE encoder and decoder, float16, the
/// published layout), shipped in the binary; `scripts/train-demo-model.sh` reproduces it.
pub const DEMO_CHECKPOINT: &[u8] = include_bytes!("../../assets/demo-model/sd3_medium.safetensors");
/// The seed the demo model was trained with: its frozen random CLIP encoders are regenerated
/// from it (they are never trained, so they need not be shipped).
pub const DEMO_SEED: u64 = 0;

/// Why a model could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: not a model directory: missing {missing}")]
    Incomplete { path: PathBuf, missing: String },
    #[error(
        "sd3-medium is not in the Hugging Face cache ({cache}); download it with \
         `huggingface-cli download {HF_MMDIT_REPO}` and `huggingface-cli download {HF_TEXT_REPO} --include 'clip_*/*' 'tokenizer_*/*'` \
         (a token may be needed: HF_TOKEN), or use a model directory in the published layout"
    )]
    NotCached { cache: PathBuf },
    #[error("downloading {url}: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "sd3-medium is not in the Hugging Face cache ({cache}) and {url} could not be reached ({reason}); \
         download it where there is a network with `huggingface-cli download {HF_MMDIT_REPO}` and \
         `huggingface-cli download {HF_TEXT_REPO} --include 'clip_*/*' 'tokenizer_*/*'`, or use a model directory in the published layout"
    )]
    Unreachable {
        cache: PathBuf,
        url: String,
        reason: String,
    },
    #[error("the download was cancelled")]
    Cancelled,
    #[error("unknown model '{0}': use tiny, sd3-medium, auto or a directory")]
    Unknown(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// A resolved model: the files of the published layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// What the user asked for (`tiny`, `sd3-medium`, a path).
    pub name: String,
    pub checkpoint: PathBuf,
    pub clip_l: PathBuf,
    pub clip_g: PathBuf,
    pub tokenizer_l: PathBuf,
    pub tokenizer_g: PathBuf,
}

impl ModelFiles {
    /// The files of a directory in the published layout (checked to exist).
    pub fn in_dir(dir: &Path, name: &str) -> Result<Self, SourceError> {
        let files = Self {
            name: name.to_owned(),
            checkpoint: dir.join(CHECKPOINT_FILE),
            clip_l: dir.join("clip_l"),
            clip_g: dir.join("clip_g"),
            tokenizer_l: dir.join("tokenizer_l"),
            tokenizer_g: dir.join("tokenizer_g"),
        };
        files.check()?;
        Ok(files)
    }

    /// The weight files: the checkpoint (MMDiT + VAE), then CLIP-L's and CLIP-G's.
    pub fn weight_files(&self) -> [PathBuf; 3] {
        [
            self.checkpoint.clone(),
            self.clip_l.join(CLIP_WEIGHTS_FILE),
            self.clip_g.join(CLIP_WEIGHTS_FILE),
        ]
    }

    /// Bytes of the weight files on disk (a file that cannot be read counts as 0: the figure
    /// is reported next to load times, never used to decide anything).
    pub fn weight_file_bytes(&self) -> u64 {
        self.weight_files()
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn check(&self) -> Result<(), SourceError> {
        let needed = [
            self.checkpoint.clone(),
            self.clip_l.join(CLIP_CONFIG_FILE),
            self.clip_l.join(CLIP_WEIGHTS_FILE),
            self.clip_g.join(CLIP_CONFIG_FILE),
            self.clip_g.join(CLIP_WEIGHTS_FILE),
            self.tokenizer_l.join(VOCAB_FILE),
            self.tokenizer_l.join(MERGES_FILE),
            self.tokenizer_g.join(VOCAB_FILE),
            self.tokenizer_g.join(MERGES_FILE),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            let root = self
                .checkpoint
                .parent()
                .unwrap_or(Path::new("."))
                .to_owned();
            Err(SourceError::Incomplete {
                path: root,
                missing: missing.join(", "),
            })
        }
    }
}

/// The user's cache folder for SD3 Lab (`$XDG_CACHE_HOME/sd3lab` or `~/.cache/sd3lab`;
/// `~/Library/Caches/sd3lab` on macOS).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SD3LAB_CACHE_DIR") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    if cfg!(target_os = "macos") {
        return home.join("Library/Caches/sd3lab");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("sd3lab")
}

/// The Hugging Face hub cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/huggingface/hub")
}

/// Where models are looked for, written and downloaded from. [`ModelLocations::from_env`] is
/// what every command uses; a caller that must not depend on the process environment (a test,
/// an app started with its own folders) builds one itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocations {
    /// The Hugging Face hub cache that holds (and receives) sd3-medium.
    pub hub_cache: PathBuf,
    /// SD3 Lab's own cache, where the built-in tiny model is written on first use.
    pub cache_dir: PathBuf,
    /// The Hugging Face endpoint downloads come from.
    pub endpoint: String,
    /// The token sent with downloads.
    pub token: Option<String>,
}

impl ModelLocations {
    /// The folders and endpoint the environment names ([`hf_hub_cache`], [`cache_dir`],
    /// `HF_ENDPOINT`, [`hf_token`]).
    pub fn from_env() -> Self {
        Self {
            hub_cache: hf_hub_cache(),
            cache_dir: cache_dir(),
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            token: hf_token(),
        }
    }
}

/// Whether `rev` is a Git commit id as the hub names snapshots: 40 lower-case hexadecimal
/// digits. A revision from outside (the server's `x-repo-commit` header, a `refs/main` file)
/// becomes a folder name in the cache only if it is one, so it can never name another folder.
pub fn is_commit_id(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The snapshot folder of `repo` in the hub cache (the revision `refs/main` points to); none
/// when `refs/main` holds no commit id (such a cache is treated as not holding the model).
fn hf_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(dir.join("refs/main")).ok()?;
    let rev = rev.trim();
    if !is_commit_id(rev) {
        return None;
    }
    let snap = dir.join("snapshots").join(rev);
    snap.is_dir().then_some(snap)
}

/// sd3-medium's files from the hub cache `cache`, if both repositories are there.
pub fn sd3_medium_in(cache: &Path) -> Result<ModelFiles, SourceError> {
    let cache = cache.to_owned();
    let (Some(mmdit), Some(text)) = (
        hf_snapshot(&cache, HF_MMDIT_REPO),
        hf_snapshot(&cache, HF_TEXT_REPO),
    ) else {
        return Err(SourceError::NotCached { cache });
    };
    let files = ModelFiles {
        name: "sd3-medium".into(),
        checkpoint: mmdit.join(CHECKPOINT_FILE),
        clip_l: text.join("clip_l"),
        clip_g: text.join("clip_g"),
        tokenizer_l: text.join("tokenizer_l"),
        tokenizer_g: text.join("tokenizer_g"),
    };
    files
        .check()
        .map_err(|_| SourceError::NotCached { cache })?;
    Ok(files)
}

/// The built-in tiny model (the trained demo model) in SD3 Lab's cache folder `cache`, written
/// there on first use.
pub fn tiny_model_in(cache: &Path) -> Result<ModelFiles, SourceError> {
    let dir = cache.join("models").join(TINY_VERSION);
    if let Ok(files) = ModelFiles::in_dir(&dir, "tiny") {
        return Ok(files);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| SourceError::Io {
        path: parent.to_owned(),
        source,
    })?;
    // Build beside the final folder, then rename: a crash never leaves half a model.
    let tmp = tempfile::Builder::new()
        .prefix(".tiny-")
        .tempdir_in(parent)
        .map_err(|source| SourceError::Io {
            path: parent.to_owned(),
            source,
        })?;
    write_demo_model_dir(tmp.path()).map_err(|source| SourceError::Io {
        path: tmp.path().to_owned(),
        source,
    })?;
    let staged = tmp.keep();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
    }
    if std::fs::rename(&staged, &dir).is_err() {
        // Another process won the race; use its copy.
        let _ = std::fs::remove_dir_all(&staged);
    }
    ModelFiles::in_dir(&dir, "tiny")
}

/// What resolving a model reports while it works; plain data, so a job forwards it as an event
/// (the CLI prints it, the app shows it with a cancel button).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// `auto` found no sd3-medium in the Hugging Face cache and uses the built-in tiny demo
    /// model instead.
    FellBackToTiny,
    /// sd3-medium is not in the Hugging Face cache and is being downloaded (about 6 GB).
    DownloadStarting,
    /// `done` bytes of `file` downloaded so far, of `total` when the server said.
    Downloading {
        file: String,
        done: u64,
        total: Option<u64>,
    },
}

impl std::fmt::Display for SourceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FellBackToTiny => f.write_str(
                "sd3-medium is not in the Hugging Face cache: using the built-in tiny demo model (it draws captions of flat shapes at 64x64)",
            ),
            Self::DownloadStarting => {
                f.write_str("sd3-medium is not in the Hugging Face cache: downloading it (about 6 GB)")
            }
            Self::Downloading { file, done, total } => match total {
                Some(t) => write!(f, "downloading {file}: {done} of {t} bytes"),
                None => write!(f, "downloading {file}: {done} bytes"),
            },
        }
    }
}

/// Resolves a model name: `tiny`, `sd3-medium` (downloaded when not cached), `auto` (sd3-medium
/// if cached, else tiny), or a directory. What happens on the way (the fallback, download
/// progress) goes to `on_event`; a download stops with [`SourceError::Cancelled`] once `cancel`
/// is set (the partial file is removed, the cache is left as it was).
pub fn resolve(
    spec: &str,
    cancel: &crate::job::CancelToken,
    on_event: &mut dyn FnMut(SourceEvent),
) -> Result<ModelFiles, SourceError> {
    resolve_in(spec, &ModelLocations::from_env(), cancel, on_event)
}

/// [`resolve`] with the folders and endpoint of `at` instead of the environment's.
pub fn resolve_in(
    spec: &str,
    at: &ModelLocations,
    cancel: &crate::job::CancelToken,
    on_event: &mut dyn FnMut(SourceEvent),
) -> Result<ModelFiles, SourceError> {
    match spec {
        "tiny" => tiny_model_in(&at.cache_dir),
        "sd3-medium" => match sd3_medium_in(&at.hub_cache) {
            Ok(f) => Ok(f),
            Err(_) => {
                on_event(SourceEvent::DownloadStarting);
                download_sd3_medium_into(at, cancel, on_event)
            }
        },
        "auto" => match sd3_medium_in(&at.hub_cache) {
            Ok(f) => Ok(f),
            Err(_) => {
                on_event(SourceEvent::FellBackToTiny);
                tiny_model_in(&at.cache_dir)
            }
        },
        other => {
            let path = Path::new(other);
            if path.is_dir() {
                ModelFiles::in_dir(path, other)
            } else {
                Err(SourceError::Unknown(other.to_owned()))
            }
        }
    }
}

/// Writes a complete synthetic model directory in the published layout.
pub fn write_model_dir(dir: &Path, config: &Sd3Config, seed: u64) -> std::io::Result<()> {
    write_model_dir_with(dir, config, seed, &super::synth::synthetic_merges())
}

/// [`write_model_dir`] with tokenizers of the given `merges` (the demo model's training
/// starts from OpenAI CLIP's).
pub fn write_model_dir_with(
    dir: &Path,
    config: &Sd3Config,
    seed: u64,
    merges: &[(String, String)],
) -> std::io::Result<()> {
    use super::synth::*;
    std::fs::create_dir_all(dir)?;
    let mut specs = mmdit_specs(&config.mmdit);
    specs.extend(vae_decoder_specs(&config.vae));
    // The published file holds the encoder too (used here only to train the demo model).
    specs.extend(vae_encoder_specs(
        &super::vae::VaeEncoderConfig::for_decoder(&config.vae),
    ));
    write_safetensors(&dir.join(CHECKPOINT_FILE), &specs, seed)?;
    write_text_side(dir, config, seed, merges)?;
    let readme = format!(
        "Synthetic SD3 checkpoint written by sd3lab (seed {seed}): random weights in the published file layout.\n\
         MMDiT depth {}, width {}; not a trained model.\n",
        config.mmdit.depth, config.mmdit.hidden_size
    );
    crate::fsutil::write_atomic(&dir.join("README.txt"), readme.as_bytes())
}

/// Writes the random CLIP-L and CLIP-G encoders drawn from `seed` (as [`write_model_dir`]
/// draws them) and both tokenizers with `merges`.
pub fn write_text_side(
    dir: &Path,
    config: &Sd3Config,
    seed: u64,
    merges: &[(String, String)],
) -> std::io::Result<()> {
    use super::synth::{write_clip, write_tokenizer};
    write_clip(&dir.join("clip_l"), &config.clip_l, seed ^ 0x11)?;
    write_clip(&dir.join("clip_g"), &config.clip_g, seed ^ 0x22)?;
    write_tokenizer(&dir.join("tokenizer_l"), merges)?;
    write_tokenizer(&dir.join("tokenizer_g"), merges)
}

/// Writes the trained demo model to `dir`: the shipped checkpoint, the frozen random CLIP
/// encoders of its training seed and OpenAI CLIP's tokenizer.
pub fn write_demo_model_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = Preset::Demo.config(None);
    write_text_side(dir, &config, DEMO_SEED, &super::tokenizer::clip_merges())?;
    crate::fsutil::write_atomic(&dir.join(CHECKPOINT_FILE), DEMO_CHECKPOINT)?;
    crate::fsutil::write_atomic(
        &dir.join("README.txt"),
        b"SD3 Lab's built-in demo model: the demo SD3 architecture (the tiny preset with a \
          64-channel VAE) trained by `sd3lab model train-demo` (default settings, seed 0) on \
          captioned 64x64 pictures of shapes; CLIP-L/G are frozen random encoders behind OpenAI \
          CLIP's tokenizer.\n",
    )
}

/// Infers the MMDiT and VAE configuration from a checkpoint's tensor shapes (SD3 conventions:
/// 64-wide attention heads, 32 normalisation groups, 3 output channels).
pub fn infer_config(checkpoint: &Path) -> Result<(MmditConfig, VaeDecoderConfig), WeightsError> {
    infer_config_from(checkpoint, &super::weights::load_safetensors(checkpoint)?)
}

/// [`infer_config`] on a checkpoint's already loaded (lazy) tensors. Every shape read is
/// checked for its rank first, and the configuration is validated (sizes in bounds, heads that
/// divide the width, blocks numbered 0 to depth − 1) before anything is built from it; errors
/// name the checkpoint and the tensor the offending size came from.
pub fn infer_config_from(
    checkpoint: &Path,
    raw: &std::collections::HashMap<String, mlx_rs::Array>,
) -> Result<(MmditConfig, VaeDecoderConfig), WeightsError> {
    // The shape of `key`, which must have rank `rank`, as sizes (a negative MLX dimension,
    // which no valid file has, reads as 0 and is refused by the validation).
    let shape = |key: &str, rank: usize| -> Result<Vec<usize>, WeightsError> {
        let a = raw.get(key).ok_or_else(|| WeightsError::Missing {
            path: checkpoint.to_owned(),
            key: key.to_owned(),
        })?;
        let dims = super::weights::shape_of_rank(checkpoint, key, a, rank)?;
        Ok(dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect())
    };
    let m = |k: &str| format!("{MMDIT_PREFIX}{k}");
    let (x_key, pos_key, fc1_key) = (
        m("x_embedder.proj.weight"),
        m("pos_embed"),
        m("joint_blocks.0.x_block.mlp.fc1.weight"),
    );
    let (y_key, context_key, t_key) = (
        m("y_embedder.mlp.0.weight"),
        m("context_embedder.weight"),
        m("t_embedder.mlp.0.weight"),
    );
    let x = shape(&x_key, 4)?;
    let pos = shape(&pos_key, 3)?;
    let depth = block_count(checkpoint, raw, &m("joint_blocks."))?;
    let hidden = x[0];
    let inferred = |key: &str, source| WeightsError::Inferred {
        path: checkpoint.to_owned(),
        key: key.to_owned(),
        source,
    };
    // Divisions below need a width; its bounds are checked with the rest.
    if hidden == 0 {
        return Err(inferred(
            &x_key,
            super::config::ConfigError::ZeroSize {
                depth,
                hidden_size: 0,
                num_heads: 0,
            },
        ));
    }
    let max = (pos[1] as f64).sqrt().round() as usize;
    if max.checked_mul(max) != Some(pos[1]) {
        return Err(WeightsError::Invalid {
            path: checkpoint.to_owned(),
            reason: format!(
                "tensor '{pos_key}' has {} positions, not a square number",
                pos[1]
            ),
        });
    }
    let fc1 = shape(&fc1_key, 2)?;
    let mmdit = MmditConfig {
        depth,
        hidden_size: hidden,
        num_heads: (hidden / 64).max(1),
        mlp_ratio: fc1[0] / hidden,
        patch_size: x[2],
        latent_channels: x[1],
        max_latent_resolution: max,
        pooled_dim: shape(&y_key, 2)?[1],
        context_dim: shape(&context_key, 2)?[1],
        frequency_dim: shape(&t_key, 2)?[1],
        layer_norm_eps: 1e-6,
    };
    let first_block = m("joint_blocks.0");
    mmdit.validate().map_err(|e| {
        let key = match e.field() {
            "max_latent_resolution" => &pos_key,
            "mlp_ratio" => &fc1_key,
            "pooled_dim" => &y_key,
            "context_dim" => &context_key,
            "frequency_dim" => &t_key,
            "depth" => &first_block,
            // The width, the heads (derived from it), the patch and the latent channels.
            _ => &x_key,
        }
        .clone();
        inferred(&key, e)
    })?;
    let d = |k: &str| format!("{VAE_DECODER_PREFIX}{k}");
    let up_key = |i: usize| d(&format!("up.{i}.block.0.conv2.weight"));
    let mut block_out_channels = Vec::new();
    while raw.contains_key(&up_key(block_out_channels.len())) {
        block_out_channels.push(shape(&up_key(block_out_channels.len()), 4)?[0]);
    }
    let layers_per_block = (0..)
        .take_while(|j| raw.contains_key(&d(&format!("up.0.block.{j}.conv1.weight"))))
        .count();
    let (conv_in_key, conv_out_key) = (d("conv_in.weight"), d("conv_out.weight"));
    let vae = VaeDecoderConfig {
        latent_channels: shape(&conv_in_key, 4)?[1],
        out_channels: shape(&conv_out_key, 4)?[0],
        block_out_channels,
        layers_per_block,
        ..VaeDecoderConfig::sd3()
    };
    vae.validate().map_err(|e| {
        let key = match e.field() {
            "latent_channels" => conv_in_key.clone(),
            "out_channels" => conv_out_key.clone(),
            "layers_per_block" => d("up.0.block.0.conv1.weight"),
            _ => up_key(0),
        };
        inferred(&key, e)
    })?;
    if vae.latent_channels != mmdit.latent_channels {
        return Err(WeightsError::Invalid {
            path: checkpoint.to_owned(),
            reason: format!(
                "tensor '{conv_in_key}' takes {} latent channels, but '{x_key}' gives {}",
                vae.latent_channels, mmdit.latent_channels
            ),
        });
    }
    Ok((mmdit, vae))
}

/// The number of blocks `prefix<i>.…` in `raw`, which must be numbered 0 to n − 1 (so a key
/// numbered 10⁹ cannot make the model allocate 10⁹ blocks: it is refused, named).
fn block_count(
    path: &Path,
    raw: &std::collections::HashMap<String, mlx_rs::Array>,
    prefix: &str,
) -> Result<usize, WeightsError> {
    let mut seen = std::collections::BTreeMap::new();
    for key in raw.keys() {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let index = rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
        match index {
            Some(i) => {
                seen.entry(i).or_insert(key);
            }
            None => {
                return Err(WeightsError::Invalid {
                    path: path.to_owned(),
                    reason: format!("tensor '{key}' has no block number after '{prefix}'"),
                });
            }
        }
    }
    let Some((&last, &last_key)) = seen.iter().next_back() else {
        return Err(WeightsError::Missing {
            path: path.to_owned(),
            key: format!("{prefix}0.…"),
        });
    };
    if let Some(gap) = (0..=last).find(|i| !seen.contains_key(i)) {
        return Err(WeightsError::Invalid {
            path: path.to_owned(),
            reason: format!(
                "tensor '{last_key}' is of block {last}, but there is no block {gap}: blocks must be numbered from 0 without gaps"
            ),
        });
    }
    Ok(last + 1)
}

/// Files of the two repositories, as `(repository, path in the repository)`.
pub fn sd3_medium_files() -> Vec<(&'static str, String)> {
    let mut v = vec![(HF_MMDIT_REPO, CHECKPOINT_FILE.to_owned())];
    for (folder, files) in [
        ("clip_l", [CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE]),
        ("clip_g", [CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE]),
        ("tokenizer_l", [VOCAB_FILE, MERGES_FILE]),
        ("tokenizer_g", [VOCAB_FILE, MERGES_FILE]),
    ] {
        v.extend(files.map(|f| (HF_TEXT_REPO, format!("{folder}/{f}"))));
    }
    v
}

/// The Hugging Face token: `HF_TOKEN`, else the cached login (`$HF_HOME/token`).
pub fn hf_token() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_owned());
    }
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
    })?;
    std::fs::read_to_string(home.join("token"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Downloads sd3-medium's files from `at.endpoint` into the hub cache `at.hub_cache`, each
/// through a temporary file renamed into place, then records the revision in `refs/main`.
/// Checks `cancel` between chunks.
pub fn download_sd3_medium_into(
    at: &ModelLocations,
    cancel: &crate::job::CancelToken,
    on_event: &mut dyn FnMut(SourceEvent),
) -> Result<ModelFiles, SourceError> {
    use crate::download::StreamError;
    let cache = at.hub_cache.clone();
    let endpoint = &at.endpoint;
    let token = &at.token;
    let agent = crate::download::agent();
    let mut revisions: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    for (repo, file) in sd3_medium_files() {
        let url = format!(
            "{}/{repo}/resolve/main/{file}",
            endpoint.trim_end_matches('/')
        );
        let mut req = agent.get(&url);
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let response = req.call().map_err(|e| SourceError::Unreachable {
            cache: cache.clone(),
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(SourceError::Download {
                url,
                reason: format!(
                    "HTTP {status}: the repository needs a Hugging Face token with access (set HF_TOKEN or run `huggingface-cli login`, and accept the model's licence on its page)"
                ),
            });
        }
        if status != 200 {
            return Err(SourceError::Download {
                url,
                reason: format!("HTTP {status}"),
            });
        }
        // The revision names the snapshot folder: checked before anything is created.
        let commit = match response.headers().get("x-repo-commit") {
            None => {
                return Err(SourceError::Download {
                    url,
                    reason: "the server sent no x-repo-commit header (the file's revision), \
                             so this is not a Hugging Face endpoint"
                        .into(),
                });
            }
            Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        };
        if !is_commit_id(&commit) {
            return Err(SourceError::Download {
                url,
                reason: format!(
                    "the server's x-repo-commit header {commit:?} is not a commit id \
                     (40 hexadecimal digits); it is not used as a folder name"
                ),
            });
        }
        if let Some(earlier) = revisions.get(repo)
            && *earlier != commit
        {
            return Err(SourceError::Download {
                url,
                reason: format!(
                    "the server's x-repo-commit header says revision {commit}, but {repo}'s \
                     earlier files came from {earlier}: the repository changed during the download; \
                     run it again"
                ),
            });
        }
        // The published names are constants; checked anyway, as every name joined to a
        // folder here is.
        if let Some(bad) = file
            .split('/')
            .find(|part| crate::fsutil::single_component(part).is_err())
        {
            return Err(SourceError::Download {
                url,
                reason: format!("{file:?}: {bad:?} is not a single file name"),
            });
        }
        let total = crate::download::content_length(&response);
        let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let target = repo_dir.join("snapshots").join(&commit).join(&file);
        let parent = target.parent().unwrap_or(&repo_dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let mut body = response.into_body().into_reader();
        let (tmp, done) =
            crate::download::stream_to_temp(&mut body, &target, cancel, &mut |_, done| {
                on_event(SourceEvent::Downloading {
                    file: file.to_owned(),
                    done,
                    total,
                })
            })
            .map_err(|e| match e {
                StreamError::Read(e) => SourceError::Download {
                    url: url.clone(),
                    reason: e.to_string(),
                },
                StreamError::Write(e) => io(&target)(e),
                StreamError::Cancelled => SourceError::Cancelled,
            })?;
        if let Some(t) = total
            && t != done
        {
            return Err(SourceError::Download {
                url,
                reason: format!("connection closed after {done} of {t} bytes"),
            });
        }
        tmp.as_file().sync_all().map_err(io(&target))?;
        crate::fsutil::persist(tmp, &target).map_err(|source| SourceError::Io {
            path: target.clone(),
            source,
        })?;
        revisions.insert(repo, commit);
    }
    for (repo, commit) in revisions {
        let refs = cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("refs");
        std::fs::create_dir_all(&refs).map_err(io(&refs))?;
        crate::fsutil::write_atomic(&refs.join("main"), commit.as_bytes()).map_err(io(&refs))?;
    }
    sd3_medium_in(&cache)
}

/// The MMDiT alone from a checkpoint, its configuration inferred from the tensor shapes.
pub fn load_mmdit_inferred(
    checkpoint: &Path,
    dtype: mlx_rs::Dtype,
) -> Result<super::mmdit::Mmdit, WeightsError> {
    let raw = super::weights::load_safetensors(checkpoint)?;
    let (config, _) = infer_config_from(checkpoint, &raw)?;
    super::mmdit::mmdit_from_tensors(checkpoint, &raw, &config, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::CancelToken;

    /// Locations in `root` only: an empty hub cache, an own tiny-model cache, and an endpoint
    /// nothing listens on (port 9 is discard; a refused connection fails at once).
    fn isolated(root: &Path) -> ModelLocations {
        ModelLocations {
            hub_cache: root.join("hub"),
            cache_dir: root.join("sd3lab"),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
        }
    }

    #[test]
    fn auto_without_sd3_medium_reports_the_fallback_and_uses_tiny() {
        let root = tempfile::tempdir().unwrap();
        let at = isolated(root.path());
        let mut events = Vec::new();
        let files = resolve_in("auto", &at, &CancelToken::new(), &mut |e| events.push(e)).unwrap();
        assert_eq!(events, [SourceEvent::FellBackToTiny]);
        assert_eq!(files.name, "tiny");
        assert!(files.checkpoint.starts_with(&at.cache_dir), "{files:?}");
        // `tiny` itself is no fallback: nothing to report.
        events.clear();
        resolve_in("tiny", &at, &CancelToken::new(), &mut |e| events.push(e)).unwrap();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn sd3_medium_not_cached_announces_the_download_before_failing_to_reach_the_hub() {
        let root = tempfile::tempdir().unwrap();
        let at = isolated(root.path());
        let mut events = Vec::new();
        let err = resolve_in("sd3-medium", &at, &CancelToken::new(), &mut |e| {
            events.push(e)
        })
        .unwrap_err();
        assert_eq!(events, [SourceEvent::DownloadStarting]);
        assert!(
            matches!(&err, SourceError::Unreachable { cache, .. } if *cache == at.hub_cache),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            !text.contains("--model"),
            "no flag of ours in a library message: {text}"
        );
    }

    #[test]
    fn a_refs_main_that_is_no_commit_id_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("hub");
        // A complete model outside the cache, both repositories' refs/main leading to it.
        let outside = root.path().join("outside");
        write_model_dir(&outside, &Preset::Tiny.config(None), 1).unwrap();
        let refs = |repo: &str| {
            cache
                .join(format!("models--{}", repo.replace('/', "--")))
                .join("refs")
        };
        for repo in [HF_MMDIT_REPO, HF_TEXT_REPO] {
            std::fs::create_dir_all(refs(repo)).unwrap();
            std::fs::create_dir_all(refs(repo).with_file_name("snapshots")).unwrap();
            std::fs::write(refs(repo).join("main"), "../../../outside\n").unwrap();
        }
        assert!(
            matches!(sd3_medium_in(&cache), Err(SourceError::NotCached { .. })),
            "a revision with '..' was followed out of the cache"
        );
        // The same files under a commit id are the cached model.
        let commit = "89abcdef".repeat(5);
        for repo in [HF_MMDIT_REPO, HF_TEXT_REPO] {
            let snap = refs(repo).with_file_name("snapshots").join(&commit);
            write_model_dir(&snap, &Preset::Tiny.config(None), 1).unwrap();
            std::fs::write(refs(repo).join("main"), format!("{commit}\n")).unwrap();
        }
        let files = sd3_medium_in(&cache).unwrap();
        assert!(files.checkpoint.starts_with(&cache), "{files:?}");
        assert!(is_commit_id(&commit));
        for bad in [
            "",
            "main",
            &commit[1..],
            &commit.to_uppercase(),
            &format!("{commit}/"),
        ] {
            assert!(!is_commit_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn weight_file_bytes_counts_the_checkpoint_and_both_clip_weight_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files = ModelFiles {
            name: "test".into(),
            checkpoint: d.join(CHECKPOINT_FILE),
            clip_l: d.join("clip_l"),
            clip_g: d.join("clip_g"),
            tokenizer_l: d.join("tokenizer_l"),
            tokenizer_g: d.join("tokenizer_g"),
        };
        for (path, len) in [
            (files.checkpoint.clone(), 10),
            (files.clip_l.join(CLIP_WEIGHTS_FILE), 20),
            (files.clip_l.join(CLIP_CONFIG_FILE), 300),
            (files.clip_g.join(CLIP_WEIGHTS_FILE), 40),
        ] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; len]).unwrap();
        }
        assert_eq!(files.weight_file_bytes(), 70, "configs are not weights");
        std::fs::remove_file(files.clip_g.join(CLIP_WEIGHTS_FILE)).unwrap();
        assert_eq!(files.weight_file_bytes(), 30, "a missing file counts as 0");
    }
}

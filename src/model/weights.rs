//! Checkpoint tensors: loading `.safetensors` through MLX (lazily: each tensor is read when it
//! is first evaluated), DiffusionKit's key remapping for the published SD3 layout, and strict
//! consumption: every expected key must exist with the expected shape, and no key may be left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: cannot read the checkpoint: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: missing tensor '{key}'")]
    Missing { path: PathBuf, key: String },
    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        expected: Vec<i32>,
        found: Vec<i32>,
    },
    #[error("{path}: unexpected tensor(s) for this configuration: {keys}")]
    Unexpected { path: PathBuf, keys: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        source: super::config::ConfigError,
    },
    #[error("{path}: {source}")]
    ClipConfig {
        path: PathBuf,
        source: super::clip::ClipConfigError,
    },
    #[error("{path}: tensor '{key}' has rank {found} (shape {shape:?}), expected rank {expected}")]
    Rank {
        path: PathBuf,
        key: String,
        expected: usize,
        found: usize,
        shape: Vec<i32>,
    },
    /// A size inferred from a tensor's shape that no working model has.
    #[error("{path}: tensor '{key}': {source}")]
    Inferred {
        path: PathBuf,
        key: String,
        source: super::config::ConfigError,
    },
    #[error("MLX error while preparing '{key}': {source}")]
    Mlx {
        key: String,
        source: mlx_rs::error::Exception,
    },
    /// An MLX error on a tensor of a checkpoint (named with its file).
    #[error("{path}: MLX error while preparing '{key}': {source}")]
    MlxTensor {
        path: PathBuf,
        key: String,
        source: mlx_rs::error::Exception,
    },
}

/// `a`'s shape if it has rank `rank`, else the error naming the file and the key.
pub fn shape_of_rank<'a>(
    path: &Path,
    key: &str,
    a: &'a Array,
    rank: usize,
) -> Result<&'a [i32], WeightsError> {
    let shape = a.shape();
    if shape.len() == rank {
        Ok(shape)
    } else {
        Err(WeightsError::Rank {
            path: path.to_owned(),
            key: key.to_owned(),
            expected: rank,
            found: shape.len(),
            shape: shape.to_vec(),
        })
    }
}

/// Loads every tensor of a `.safetensors` file (lazily).
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Array>, WeightsError> {
    if !path.is_file() {
        return Err(WeightsError::Read {
            path: path.to_owned(),
            reason: "no such file".into(),
        });
    }
    Array::load_safetensors(path).map_err(|e| WeightsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Named tensors being consumed by a model constructor.
pub struct TensorStore {
    path: PathBuf,
    tensors: HashMap<String, Array>,
    dtype: Dtype,
}

impl TensorStore {
    /// `dtype`: what floating-point tensors are converted to as they are taken.
    pub fn new(path: &Path, tensors: HashMap<String, Array>, dtype: Dtype) -> Self {
        Self {
            path: path.to_owned(),
            tensors,
            dtype,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes `key`, checking its shape, converted to the store's dtype.
    pub fn take(&mut self, key: &str, shape: &[i32]) -> Result<Array, WeightsError> {
        let a = self
            .tensors
            .remove(key)
            .ok_or_else(|| WeightsError::Missing {
                path: self.path.clone(),
                key: key.to_owned(),
            })?;
        if a.shape() != shape {
            return Err(WeightsError::Shape {
                path: self.path.clone(),
                key: key.to_owned(),
                expected: shape.to_vec(),
                found: a.shape().to_vec(),
            });
        }
        if a.dtype() == self.dtype {
            Ok(a)
        } else {
            a.as_dtype(self.dtype)
                .map_err(|source| WeightsError::MlxTensor {
                    path: self.path.clone(),
                    key: key.to_owned(),
                    source,
                })
        }
    }

    /// A Linear `(out, in)` with a bias.
    pub fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<super::nn::Linear, WeightsError> {
        Ok(super::nn::Linear::new(
            self.take(&format!("{prefix}.weight"), &[out as i32, inp as i32])?,
            Some(self.take(&format!("{prefix}.bias"), &[out as i32])?),
        ))
    }

    /// A Linear `(out, in)` without a bias.
    pub fn linear_no_bias(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<super::nn::Linear, WeightsError> {
        Ok(super::nn::Linear::new(
            self.take(&format!("{prefix}.weight"), &[out as i32, inp as i32])?,
            None,
        ))
    }

    /// Fails if any tensor was not consumed.
    pub fn finish(self) -> Result<(), WeightsError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        let shown: Vec<&str> = keys.iter().take(8).map(|k| k.as_str()).collect();
        let more = if keys.len() > 8 {
            format!(" and {} more", keys.len() - 8)
        } else {
            String::new()
        };
        Err(WeightsError::Unexpected {
            path: self.path,
            keys: format!("{}{more}", shown.join(", ")),
        })
    }
}

/// Prefix of the MMDiT's tensors in `sd3_medium.safetensors`.
pub const MMDIT_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE decoder's tensors in `sd3_medium.safetensors`.
pub const VAE_DECODER_PREFIX: &str = "first_stage_model.decoder.";

/// DiffusionKit's `mmdit_state_dict_adjustments`, with a real prefix strip: renames the
/// Stability layout to DiffusionKit's module names, splits `attn.qkv` into q/k/v (dropping the
/// k bias, to which softmax is invariant), takes `pos_embed[0]`, and moves the patch
/// convolution's weight from OIHW to OHWI. Tensors outside the MMDiT are left out. `path`
/// (the checkpoint) names the file in errors: a tensor of a rank these steps cannot take.
pub fn remap_mmdit(
    path: &Path,
    raw: &HashMap<String, Array>,
) -> Result<HashMap<String, Array>, WeightsError> {
    let mut out = HashMap::with_capacity(raw.len());
    for (key, value) in raw {
        let value = value.clone();
        let Some(k) = key.strip_prefix(MMDIT_PREFIX) else {
            continue;
        };
        let mlx = |source| WeightsError::MlxTensor {
            path: path.to_owned(),
            key: key.clone(),
            source,
        };
        if k.contains("teacher_model.") {
            continue;
        }
        let k = k
            .replace("y_embedder.mlp.", "y_embedder.mlp.layers.")
            .replace("t_embedder.mlp.", "t_embedder.mlp.layers.")
            .replace("adaLN_modulation.", "adaLN_modulation.layers.")
            .replace("joint_blocks", "multimodal_transformer_blocks")
            .replace("context_block", "text_transformer_block")
            .replace("x_block", "image_transformer_block")
            .replace(".attn.ln_q.", ".qk_norm.q_norm.")
            .replace(".attn.ln_k.", ".qk_norm.k_norm.");
        if k.contains("attn.qkv") {
            // Split in three along the first axis; the registry checks the parts' shapes.
            if value.ndim() == 0 || value.shape()[0] % 3 != 0 {
                return Err(WeightsError::Invalid {
                    path: path.to_owned(),
                    reason: format!(
                        "tensor '{key}' has shape {:?}; its first axis must hold q, k and v (a multiple of 3)",
                        value.shape()
                    ),
                });
            }
            let parts = value.split_equal(3, 0).map_err(mlx)?;
            for (name, part) in ["q", "k", "v"].iter().zip(parts) {
                let nk = k.replace("attn.qkv", &format!("attn.{name}_proj"));
                if nk.contains("k_proj.bias") {
                    continue;
                }
                out.insert(nk, part);
            }
            continue;
        }
        let k = k.replace("attn.proj", "attn.o_proj");
        if k == "pos_embed" {
            // `(1, positions, hidden)`: the table is its only entry.
            let shape = shape_of_rank(path, key, &value, 3)?.to_vec();
            let table = value.reshape(&shape[1..]).map_err(mlx)?;
            out.insert("x_pos_embedder.pos_embed.weight".to_owned(), table);
            continue;
        }
        if k == "x_embedder.proj.weight" {
            shape_of_rank(path, key, &value, 4)?;
            out.insert(k, value.transpose_axes(&[0, 2, 3, 1]).map_err(mlx)?);
            continue;
        }
        out.insert(k, value);
    }
    Ok(out)
}

/// Prefix of the VAE encoder's tensors (published with the checkpoint; generating does not use
/// them, training the demo model does).
pub const VAE_ENCODER_PREFIX: &str = "first_stage_model.encoder.";

/// Fails when `sd3_medium.safetensors` holds tensors of no known part (MMDiT, VAE decoder or
/// encoder): a file of another model, or a corrupted one.
pub fn check_checkpoint_keys(
    path: &Path,
    raw: &HashMap<String, Array>,
) -> Result<(), WeightsError> {
    let mut foreign: Vec<&String> = raw
        .keys()
        .filter(|k| {
            ![MMDIT_PREFIX, VAE_DECODER_PREFIX, VAE_ENCODER_PREFIX]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown: Vec<&str> = foreign.iter().take(8).map(|k| k.as_str()).collect();
    Err(WeightsError::Unexpected {
        path: path.to_owned(),
        keys: shown.join(", "),
    })
}

//! CLIP text encoders (CLIP-L/14 and OpenCLIP bigG/14 as SD3 uses them), computed as
//! DiffusionKit's `CLIPTextModel`: token + position embeddings, pre-LN transformer layers with
//! a causal additive mask (−1e9 in float32, −6e4 in half precision), final LayerNorm, pooled
//! output at the first EOS (`argmax` of the ids), optional text projection.

use mlx_rs::{Array, Dtype};

use super::config::ClipConfig;
use super::nn::{LayerNorm, Linear, MlxResult, gelu, quick_gelu};
use super::weights::{TensorStore, WeightsError};

/// The files of a CLIP encoder folder (`clip_l/`, `clip_g/`), named as Hugging Face publishes
/// them: the configuration and the float16 weights.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.fp16.safetensors";

/// One pre-LN transformer layer.
#[derive(Debug, Clone)]
pub struct ClipLayer {
    pub layer_norm1: LayerNorm,
    pub query_proj: Linear,
    pub key_proj: Linear,
    pub value_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub linear1: Linear,
    pub linear2: Linear,
}

/// What SD3 takes from a CLIP encoder.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// The penultimate layer's output (no final LayerNorm): `(B, N, width)`.
    pub penultimate: Array,
    /// Final-LN output at the first EOS, projected if the model has a projection: `(B, dim)`.
    pub pooled: Array,
}

/// A CLIP text encoder.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub config: ClipConfig,
    pub token_embedding: Array,
    pub position_embedding: Array,
    pub layers: Vec<ClipLayer>,
    pub final_layer_norm: LayerNorm,
    pub text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// Drops the weights (all but the final norm's); the model is unusable afterwards.
    pub fn release(&mut self) {
        self.layers = Vec::new();
        self.text_projection = None;
        self.token_embedding = super::nn::released();
        self.position_embedding = super::nn::released();
    }

    /// Builds the model from tensors named as DiffusionKit maps them (see [`remap_clip_key`]).
    pub fn from_store(config: &ClipConfig, store: &mut TensorStore) -> Result<Self, WeightsError> {
        config
            .validate()
            .map_err(|source| WeightsError::ClipConfig {
                path: store.path().to_owned(),
                source,
            })?;
        let w = config.width;
        let eps = config.layer_norm_eps;
        let ln = |store: &mut TensorStore, name: &str| -> Result<LayerNorm, WeightsError> {
            Ok(LayerNorm {
                weight: Some(store.take(&format!("{name}.weight"), &[w as i32])?),
                bias: Some(store.take(&format!("{name}.bias"), &[w as i32])?),
                eps,
            })
        };
        let token_embedding = store.take(
            "token_embedding.weight",
            &[config.vocab_size as i32, w as i32],
        )?;
        let position_embedding = store.take(
            "position_embedding.weight",
            &[config.max_length as i32, w as i32],
        )?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("layers.{i}");
            layers.push(ClipLayer {
                layer_norm1: ln(store, &format!("{p}.layer_norm1"))?,
                query_proj: store.linear(&format!("{p}.attention.query_proj"), w, w)?,
                key_proj: store.linear(&format!("{p}.attention.key_proj"), w, w)?,
                value_proj: store.linear(&format!("{p}.attention.value_proj"), w, w)?,
                out_proj: store.linear(&format!("{p}.attention.out_proj"), w, w)?,
                layer_norm2: ln(store, &format!("{p}.layer_norm2"))?,
                linear1: store.linear(&format!("{p}.linear1"), config.mlp_dim, w)?,
                linear2: store.linear(&format!("{p}.linear2"), w, config.mlp_dim)?,
            });
        }
        let final_layer_norm = ln(store, "final_layer_norm")?;
        let text_projection = match config.projection_dim {
            Some(d) => Some(store.linear_no_bias("text_projection", d, w)?),
            None => None,
        };
        Ok(Self {
            config: config.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
        })
    }

    fn causal_mask(&self, n: usize, dtype: Dtype) -> MlxResult<Array> {
        let big = if matches!(dtype, Dtype::Float16 | Dtype::Bfloat16) {
            -6e4f32
        } else {
            -1e9f32
        };
        let values: Vec<f32> = (0..n * n)
            .map(|k| if k % n > k / n { big } else { 0.0 })
            .collect();
        Array::from_slice(&values, &[n as i32, n as i32]).as_dtype(dtype)
    }

    fn attention(&self, l: &ClipLayer, x: &Array, mask: &Array) -> MlxResult<Array> {
        let shape = x.shape();
        let (b, n) = (shape[0], shape[1]);
        let heads = self.config.num_heads as i32;
        let split = |a: Array| -> MlxResult<Array> {
            a.reshape(&[b, n, heads, -1])?.transpose_axes(&[0, 2, 1, 3])
        };
        let q = split(l.query_proj.forward(x)?)?;
        let k = split(l.key_proj.forward(x)?)?;
        let v = split(l.value_proj.forward(x)?)?;
        let dh = (self.config.width / self.config.num_heads) as f64;
        let scale = (1.0 / dh).sqrt() as f32;
        let out = mlx_rs::fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, n, -1])?;
        l.out_proj.forward(&out)
    }

    fn activation(&self, x: &Array) -> MlxResult<Array> {
        if self.config.hidden_act == "gelu" {
            gelu(x)
        } else {
            quick_gelu(x)
        }
    }

    /// Encodes a batch of token ids `(B, N)` (int32).
    pub fn forward(&self, ids: &Array) -> MlxResult<ClipOutput> {
        let n = ids.shape()[1];
        let dtype = self.token_embedding.dtype();
        let pos = super::nn::narrow(&self.position_embedding, 0, 0, n)?;
        let mut x = self.token_embedding.take_axis(ids, 0)?.add(&pos)?;
        let mask = self.causal_mask(n as usize, dtype)?;
        let mut penultimate = None;
        let count = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            let y = self.attention(l, &l.layer_norm1.forward(&x)?, &mask)?;
            x = y.add(&x)?;
            let y = l
                .linear2
                .forward(&self.activation(&l.linear1.forward(&l.layer_norm2.forward(&x)?)?)?)?;
            x = y.add(&x)?;
            if i + 2 == count {
                penultimate = Some(x.clone());
            }
        }
        let last = self.final_layer_norm.forward(&x)?;
        let eos = mlx_rs::ops::indexing::argmax_axis(ids, -1, None)?.reshape(&[-1, 1, 1])?;
        let pooled = mlx_rs::ops::indexing::take_along_axis(&last, &eos, 1)?.squeeze_axes(&[1])?;
        let pooled = match &self.text_projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        // A one-layer model has no penultimate layer; DiffusionKit would index hidden_states[-2]
        // and fail. Use the embeddings' layer instead of panicking.
        Ok(ClipOutput {
            penultimate: penultimate.unwrap_or(x),
            pooled,
        })
    }
}

/// DiffusionKit's `map_clip_text_encoder_weights`: Hugging Face names → its module names.
pub fn remap_clip_key(key: &str) -> String {
    let mut k = key;
    for prefix in ["text_model.", "embeddings.", "encoder."] {
        k = k.strip_prefix(prefix).unwrap_or(k);
    }
    k.replace("self_attn.", "attention.")
        .replace("q_proj.", "query_proj.")
        .replace("k_proj.", "key_proj.")
        .replace("v_proj.", "value_proj.")
        .replace("mlp.fc1", "linear1")
        .replace("mlp.fc2", "linear2")
}

pub use super::config::ClipConfigError;

/// Reads a Hugging Face `CLIPTextConfig` (`config.json`) as DiffusionKit does: the MLP is
/// 4 × width, the projection exists for `*WithProjection` architectures.
pub fn clip_config_from_hf(json: &serde_json::Value) -> Result<ClipConfig, ClipConfigError> {
    let int = |key: &'static str| {
        json.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or(ClipConfigError::MissingInteger { key })
    };
    let with_projection = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .is_some_and(|a| a.contains("WithProjection"));
    let width = int("hidden_size")?;
    let config = ClipConfig {
        num_layers: int("num_hidden_layers")?,
        width,
        num_heads: int("num_attention_heads")?,
        // Saturating: an absurd width is refused by `validate` (naming it), not overflowed.
        mlp_dim: width.saturating_mul(4),
        vocab_size: int("vocab_size")?,
        max_length: int("max_position_embeddings")?,
        hidden_act: json
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("quick_gelu")
            .to_owned(),
        projection_dim: if with_projection {
            Some(int("projection_dim")?)
        } else {
            None
        },
        layer_norm_eps: json
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32,
    };
    // Checked here, before any caller allocates per layer or divides by the heads.
    config.validate()?;
    Ok(config)
}

/// The Hugging Face `config.json` for a configuration (what the synthetic writer emits).
pub fn clip_config_to_hf(c: &ClipConfig) -> serde_json::Value {
    let arch = if c.projection_dim.is_some() {
        "CLIPTextModelWithProjection"
    } else {
        "CLIPTextModel"
    };
    serde_json::json!({
        "architectures": [arch],
        "model_type": "clip_text_model",
        "hidden_size": c.width,
        "intermediate_size": c.mlp_dim,
        "num_attention_heads": c.num_heads,
        "num_hidden_layers": c.num_layers,
        "max_position_embeddings": c.max_length,
        "vocab_size": c.vocab_size,
        "hidden_act": c.hidden_act,
        "projection_dim": c.projection_dim.unwrap_or(c.width),
        "layer_norm_eps": c.layer_norm_eps,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "torch_dtype": "float16",
    })
}

/// Reads `dir/config.json` (a Hugging Face `CLIPTextConfig`) as DiffusionKit does.
pub fn read_clip_config(dir: &std::path::Path) -> Result<ClipConfig, WeightsError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| WeightsError::Read {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| WeightsError::Invalid {
            path: cfg_path.clone(),
            reason: e.to_string(),
        })?;
    clip_config_from_hf(&json).map_err(|source| WeightsError::ClipConfig {
        path: cfg_path,
        source,
    })
}

/// Loads `dir/config.json` + `dir/model.fp16.safetensors` (the published `clip_l/`, `clip_g/`).
pub fn load_clip(dir: &std::path::Path, dtype: Dtype) -> Result<ClipTextModel, WeightsError> {
    let config = read_clip_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let raw = super::weights::load_safetensors(&path)?;
    // Hugging Face files may carry the `position_ids` buffer; it is not a weight.
    let tensors = raw
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, v)| (remap_clip_key(&k), v))
        .collect();
    let mut store = TensorStore::new(&path, tensors, dtype);
    let model = ClipTextModel::from_store(&config, &mut store)?;
    store.finish()?;
    Ok(model)
}

impl ClipTextModel {
    /// Every parameter array.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.token_embedding, &self.position_embedding];
        for l in &self.layers {
            v.extend(l.layer_norm1.arrays());
            v.extend(l.layer_norm2.arrays());
            for p in [
                &l.query_proj,
                &l.key_proj,
                &l.value_proj,
                &l.out_proj,
                &l.linear1,
                &l.linear2,
            ] {
                v.extend(p.arrays());
            }
        }
        v.extend(self.final_layer_norm.arrays());
        if let Some(p) = &self.text_projection {
            v.extend(p.arrays());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_round_trips_and_a_missing_field_is_named() {
        let g = ClipConfig::clip_g();
        assert_eq!(clip_config_from_hf(&clip_config_to_hf(&g)), Ok(g.clone()));
        let mut json = clip_config_to_hf(&g);
        json.as_object_mut().unwrap().remove("num_attention_heads");
        assert_eq!(
            clip_config_from_hf(&json),
            Err(ClipConfigError::MissingInteger {
                key: "num_attention_heads"
            })
        );
    }
}

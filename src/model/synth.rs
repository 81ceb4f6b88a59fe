//! Synthetic checkpoints in exactly the published file layout and key names, filled with
//! deterministic random values: what tests, the built-in demo model and the benchmarks load
//! through the real loading code (real weights cannot be downloaded on the development machines).
//!
//! Values: each tensor gets its own stream (SplitMix64 seeded from the seed and the key), so a
//! tensor's values do not depend on which other tensors exist. Weights are uniform with standard
//! deviation `1/√fan_in`, biases ±0.02, normalisation weights 1 ± 0.05, the position table ±0.02.
//! Files are written as float16 (the published dtype), streamed, to a temporary file that is
//! renamed into place.

use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;

use super::config::MmditConfig;
use super::weights::MMDIT_PREFIX;

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform, standard deviation `1/√fan_in`.
    Weight { fan_in: usize },
    /// Uniform in ±`0.02`.
    Small,
    /// `1 ±` uniform `0.05` (normalisation scales).
    One,
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_signed(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Writes a `.safetensors` file at `path` atomically: `header` (tensor entries with their
/// offsets, and `__metadata__`) padded with spaces so the data starts 8-byte aligned, then the
/// bytes `write_data` writes in the header's offset order. The one safetensors writer: synthetic
/// checkpoints and converted metric weights both go through it.
pub fn write_safetensors_with(
    path: &Path,
    header: &serde_json::Map<String, serde_json::Value>,
    write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(header)?;
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let tmp = crate::fsutil::temp_file_beside(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    write_data(&mut w)?;
    let tmp = w.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    crate::fsutil::persist(tmp, path)
}

/// Writes `specs` as a float16 `.safetensors` file at `path` (atomically).
pub fn write_safetensors(path: &Path, specs: &[TensorSpec], seed: u64) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for s in specs {
        let bytes = s.len() * 2;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "F16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "sd3lab model synth"}),
    );
    write_safetensors_with(path, &header, |w| {
        let mut chunk = Vec::with_capacity(1 << 16);
        for s in specs {
            let mut rng = SplitMix64(stream_seed(seed, &s.name));
            let (scale, offset) = match s.init {
                Init::Weight { fan_in } => ((3.0 / fan_in.max(1) as f32).sqrt(), 0.0),
                Init::Small => (0.02, 0.0),
                Init::One => (0.05, 1.0),
            };
            let mut left = s.len();
            while left > 0 {
                let n = left.min(1 << 15);
                chunk.clear();
                for _ in 0..n {
                    let v = offset + scale * rng.next_signed();
                    chunk.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
                }
                w.write_all(&chunk)?;
                left -= n;
            }
        }
        Ok(())
    })
}

/// The MMDiT's tensors in Stability's layout (`model.diffusion_model.*`).
pub fn mmdit_specs(cfg: &MmditConfig) -> Vec<TensorSpec> {
    let h = cfg.hidden_size;
    let p = cfg.patch_size;
    let c = cfg.latent_channels;
    let k = |name: &str| format!("{MMDIT_PREFIX}{name}");
    let mut v = Vec::new();
    let linear = |v: &mut Vec<TensorSpec>, name: String, out: usize, inp: usize| {
        v.push(TensorSpec::new(
            format!("{name}.weight"),
            &[out, inp],
            Init::Weight { fan_in: inp },
        ));
        v.push(TensorSpec::new(format!("{name}.bias"), &[out], Init::Small));
    };
    v.push(TensorSpec::new(
        k("x_embedder.proj.weight"),
        &[h, c, p, p],
        Init::Weight { fan_in: c * p * p },
    ));
    v.push(TensorSpec::new(
        k("x_embedder.proj.bias"),
        &[h],
        Init::Small,
    ));
    let max = cfg.max_latent_resolution;
    v.push(TensorSpec::new(
        k("pos_embed"),
        &[1, max * max, h],
        Init::Small,
    ));
    linear(&mut v, k("t_embedder.mlp.0"), h, cfg.frequency_dim);
    linear(&mut v, k("t_embedder.mlp.2"), h, h);
    linear(&mut v, k("y_embedder.mlp.0"), h, cfg.pooled_dim);
    linear(&mut v, k("y_embedder.mlp.2"), h, h);
    linear(&mut v, k("context_embedder"), h, cfg.context_dim);
    for i in 0..cfg.depth {
        for stream in ["x_block", "context_block"] {
            let skip = i + 1 == cfg.depth && stream == "context_block";
            let pre = k(&format!("joint_blocks.{i}.{stream}"));
            linear(
                &mut v,
                format!("{pre}.adaLN_modulation.1"),
                if skip { 2 } else { 6 } * h,
                h,
            );
            linear(&mut v, format!("{pre}.attn.qkv"), 3 * h, h);
            if !skip {
                linear(&mut v, format!("{pre}.attn.proj"), h, h);
                linear(&mut v, format!("{pre}.mlp.fc1"), cfg.mlp_hidden(), h);
                linear(&mut v, format!("{pre}.mlp.fc2"), h, cfg.mlp_hidden());
            }
        }
    }
    linear(&mut v, k("final_layer.adaLN_modulation.1"), 2 * h, h);
    linear(&mut v, k("final_layer.linear"), p * p * c, h);
    v
}

/// A CLIP text encoder's tensors in Hugging Face's layout (`model.fp16.safetensors`).
pub fn clip_specs(cfg: &super::config::ClipConfig) -> Vec<TensorSpec> {
    let w = cfg.width;
    let mut v = vec![
        TensorSpec::new(
            "text_model.embeddings.token_embedding.weight",
            &[cfg.vocab_size, w],
            Init::Weight { fan_in: w },
        ),
        TensorSpec::new(
            "text_model.embeddings.position_embedding.weight",
            &[cfg.max_length, w],
            Init::Weight { fan_in: w },
        ),
    ];
    let linear = |v: &mut Vec<TensorSpec>, name: String, out: usize, inp: usize| {
        v.push(TensorSpec::new(
            format!("{name}.weight"),
            &[out, inp],
            Init::Weight { fan_in: inp },
        ));
        v.push(TensorSpec::new(format!("{name}.bias"), &[out], Init::Small));
    };
    let norm = |v: &mut Vec<TensorSpec>, name: String| {
        v.push(TensorSpec::new(format!("{name}.weight"), &[w], Init::One));
        v.push(TensorSpec::new(format!("{name}.bias"), &[w], Init::Small));
    };
    for i in 0..cfg.num_layers {
        let p = format!("text_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut v, format!("{p}.self_attn.{proj}"), w, w);
        }
        norm(&mut v, format!("{p}.layer_norm1"));
        linear(&mut v, format!("{p}.mlp.fc1"), cfg.mlp_dim, w);
        linear(&mut v, format!("{p}.mlp.fc2"), w, cfg.mlp_dim);
        norm(&mut v, format!("{p}.layer_norm2"));
    }
    norm(&mut v, "text_model.final_layer_norm".into());
    if let Some(d) = cfg.projection_dim {
        v.push(TensorSpec::new(
            "text_projection.weight",
            &[d, w],
            Init::Weight { fan_in: w },
        ));
    }
    v
}

/// 48,894 deterministic BPE merges over CLIP's byte symbols (letters first, so that words merge
/// into pairs), giving the standard 49,408-entry vocabulary shape. Synthetic: real text
/// tokenizes into plausible but meaningless pieces.
pub fn synthetic_merges() -> Vec<(String, String)> {
    let table = super::tokenizer::bytes_to_unicode();
    let mut alphabet: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    alphabet.extend(
        table
            .iter()
            .filter(|c| !c.is_ascii_lowercase() && !c.is_ascii_digit()),
    );
    let mut merges = Vec::with_capacity(super::tokenizer::MAX_MERGES);
    'outer: for a in &alphabet {
        for b in &alphabet {
            for end in [true, false] {
                let right = if end {
                    format!("{b}</w>")
                } else {
                    b.to_string()
                };
                merges.push((a.to_string(), right));
                if merges.len() == super::tokenizer::MAX_MERGES {
                    break 'outer;
                }
            }
        }
    }
    merges
}

/// Writes `vocab.json` and `merges.txt` (the published `tokenizer_*/` layout) to `dir`.
pub fn write_tokenizer(dir: &Path, merges: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = super::tokenizer::vocab_from_merges(merges);
    let mut entries: Vec<(&String, &u32)> = vocab.iter().collect();
    entries.sort_by_key(|(_, id)| **id);
    let map: serde_json::Map<String, serde_json::Value> = entries
        .into_iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    crate::fsutil::write_atomic(
        &dir.join(super::tokenizer::VOCAB_FILE),
        serde_json::to_string(&map)?.as_bytes(),
    )?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in merges {
        text.push_str(a);
        text.push(' ');
        text.push_str(b);
        text.push('\n');
    }
    crate::fsutil::write_atomic(&dir.join(super::tokenizer::MERGES_FILE), text.as_bytes())
}

/// Writes `dir/config.json` and `dir/model.fp16.safetensors` for a CLIP encoder.
pub fn write_clip(dir: &Path, cfg: &super::config::ClipConfig, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&super::clip::clip_config_to_hf(cfg))?;
    crate::fsutil::write_atomic(&dir.join(super::clip::CONFIG_FILE), json.as_bytes())?;
    write_safetensors(&dir.join(super::clip::WEIGHTS_FILE), &clip_specs(cfg), seed)
}

/// The VAE's tensors under one prefix, by Stability's names.
struct VaeSpecs {
    prefix: &'static str,
    v: Vec<TensorSpec>,
}

impl VaeSpecs {
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize) {
        let p = self.prefix;
        self.v.push(TensorSpec::new(
            format!("{p}{name}.weight"),
            &[cout, cin, k, k],
            Init::Weight {
                fan_in: cin * k * k,
            },
        ));
        self.v.push(TensorSpec::new(
            format!("{p}{name}.bias"),
            &[cout],
            Init::Small,
        ));
    }

    fn norm(&mut self, name: &str, c: usize) {
        let p = self.prefix;
        self.v.push(TensorSpec::new(
            format!("{p}{name}.weight"),
            &[c],
            Init::One,
        ));
        self.v.push(TensorSpec::new(
            format!("{p}{name}.bias"),
            &[c],
            Init::Small,
        ));
    }

    fn resnet(&mut self, name: &str, cin: usize, cout: usize) {
        self.norm(&format!("{name}.norm1"), cin);
        self.conv(&format!("{name}.conv1"), cin, cout, 3);
        self.norm(&format!("{name}.norm2"), cout);
        self.conv(&format!("{name}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{name}.nin_shortcut"), cin, cout, 1);
        }
    }

    fn mid(&mut self, c: usize) {
        self.resnet("mid.block_1", c, c);
        self.norm("mid.attn_1.norm", c);
        for proj in ["q", "k", "v", "proj_out"] {
            self.conv(&format!("mid.attn_1.{proj}"), c, c, 1);
        }
        self.resnet("mid.block_2", c, c);
    }
}

/// The VAE decoder's tensors in Stability's layout (`first_stage_model.decoder.*`).
pub fn vae_decoder_specs(cfg: &super::config::VaeDecoderConfig) -> Vec<TensorSpec> {
    let mut s = VaeSpecs {
        prefix: super::weights::VAE_DECODER_PREFIX,
        v: Vec::new(),
    };
    let chans = &cfg.block_out_channels;
    let top = *chans.last().unwrap_or(&1);
    s.conv("conv_in", cfg.latent_channels, top, 3);
    s.mid(top);
    for (i, &cout) in chans.iter().enumerate() {
        let cin = chans.get(i + 1).copied().unwrap_or(top);
        for j in 0..cfg.layers_per_block {
            s.resnet(
                &format!("up.{i}.block.{j}"),
                if j == 0 { cin } else { cout },
                cout,
            );
        }
        if i > 0 {
            s.conv(&format!("up.{i}.upsample.conv"), cout, cout, 3);
        }
    }
    s.norm("norm_out", chans[0]);
    s.conv("conv_out", chans[0], cfg.out_channels, 3);
    s.v
}

/// The VAE encoder's tensors in Stability's layout (`first_stage_model.encoder.*`).
pub fn vae_encoder_specs(cfg: &super::vae::VaeEncoderConfig) -> Vec<TensorSpec> {
    let mut s = VaeSpecs {
        prefix: super::weights::VAE_ENCODER_PREFIX,
        v: Vec::new(),
    };
    let chans = &cfg.block_out_channels;
    let (first, top) = (*chans.first().unwrap_or(&1), *chans.last().unwrap_or(&1));
    s.conv("conv_in", 3, first, 3);
    for (i, &cout) in chans.iter().enumerate() {
        let cin = if i == 0 { first } else { chans[i - 1] };
        for j in 0..cfg.layers_per_block {
            s.resnet(
                &format!("down.{i}.block.{j}"),
                if j == 0 { cin } else { cout },
                cout,
            );
        }
        if i + 1 < chans.len() {
            s.conv(&format!("down.{i}.downsample.conv"), cout, cout, 3);
        }
    }
    s.mid(top);
    s.norm("norm_out", top);
    s.conv("conv_out", top, 2 * cfg.latent_channels, 3);
    s.v
}

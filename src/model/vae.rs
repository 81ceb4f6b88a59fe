//! SD3's VAE as DiffusionKit computes it. The decoder (16 latent channels → RGB, DiffusionKit's
//! `VAEDecoder`): conv_in, mid (resnet, single-head attention, resnet), up blocks from the
//! lowest resolution with nearest ×2 upsampling, GroupNorm (PyTorch-compatible, 32 groups,
//! eps 1e-5) + SiLU + conv_out; images come out as `clip(x/2 + 0.5, 0, 1) · 255` truncated to
//! u8. The encoder (RGB in [-1, 1] → the latent's mean and log-variance, `VAEEncoder`):
//! conv_in, down blocks each halving the resolution with a stride-2 convolution after padding
//! one row and column at the bottom and right, the same mid block, conv_out.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};

use super::config::VaeDecoderConfig;
use super::nn::{Conv2d, Linear, MlxResult, scalar, silu};
use super::weights::{TensorStore, WeightsError};

/// PyTorch-compatible GroupNorm over NHWC with affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub groups: i32,
    pub weight: Array,
    pub bias: Array,
    pub eps: f32,
}

impl GroupNorm {
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let shape = x.shape().to_vec();
        let (b, c) = (shape[0], shape[shape.len() - 1]);
        let g = self.groups;
        let gs = c / g;
        let y = x
            .reshape(&[b, -1, g, gs])?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, g, -1])?;
        let y = mlx_rs::fast::layer_norm(&y, None, None, self.eps)?;
        let y = y
            .reshape(&[b, g, -1, gs])?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&shape)?;
        self.weight.multiply(&y)?.add(&self.bias)
    }
}

#[derive(Debug, Clone)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1×1 projection when the channel count changes.
    pub conv_shortcut: Option<Linear>,
}

impl ResnetBlock {
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let y = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let y = self.conv2.forward(&silu(&self.norm2.forward(&y)?)?)?;
        match &self.conv_shortcut {
            Some(s) => y.add(s.forward(x)?),
            None => y.add(x),
        }
    }
}

/// Single-head attention over all pixels.
#[derive(Debug, Clone)]
pub struct VaeAttention {
    pub group_norm: GroupNorm,
    pub query_proj: Linear,
    pub key_proj: Linear,
    pub value_proj: Linear,
    pub out_proj: Linear,
}

impl VaeAttention {
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let s = x.shape().to_vec();
        let (b, h, w, c) = (s[0], s[1], s[2], s[3]);
        let y = self.group_norm.forward(x)?;
        let q = self.query_proj.forward(&y)?.reshape(&[b, h * w, c])?;
        let k = self.key_proj.forward(&y)?.reshape(&[b, h * w, c])?;
        let v = self.value_proj.forward(&y)?.reshape(&[b, h * w, c])?;
        let scale = (1.0 / (c as f64).sqrt()) as f32;
        let scores = q
            .multiply(scalar(scale))?
            .matmul(k.transpose_axes(&[0, 2, 1])?)?;
        // SAFETY: `scores` was just created here and is shared with nothing.
        let attn = unsafe { super::cpu_kernels::softmax_last_axis_owned(scores, false)? };
        let y = attn.matmul(&v)?.reshape(&[b, h, w, c])?;
        x.add(self.out_proj.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    pub upsample: Option<Conv2d>,
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct VaeDecoder {
    pub config: VaeDecoderConfig,
    pub conv_in: Conv2d,
    pub mid: (ResnetBlock, VaeAttention, ResnetBlock),
    /// Indexed like the checkpoint (`up.0` is the full-resolution block); run from the last.
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

fn upsample_nearest(x: &Array) -> MlxResult<Array> {
    let s = x.shape().to_vec();
    let (b, h, w, c) = (s[0], s[1], s[2], s[3]);
    let y = x.reshape(&[b, h, 1, w, 1, c])?;
    mlx_rs::ops::broadcast_to(&y, &[b, h, 2, w, 2, c])?.reshape(&[b, h * 2, w * 2, c])
}

impl VaeDecoder {
    /// Builds the decoder from tensors named as DiffusionKit maps them (see [`remap_vae_decoder`]).
    pub fn from_store(
        config: &VaeDecoderConfig,
        store: &mut TensorStore,
    ) -> Result<Self, WeightsError> {
        config.validate().map_err(|source| WeightsError::Config {
            path: store.path().to_owned(),
            source,
        })?;
        let b = Builder {
            groups: config.norm_groups as i32,
        };
        let chans = &config.block_out_channels;
        let top = top_channels(store, chans)?;
        let conv_in = b.conv(store, "conv_in", config.latent_channels, top, 1, 1)?;
        let mid = b.mid(store, top)?;
        let mut up_blocks = Vec::with_capacity(chans.len());
        for (i, &cout) in chans.iter().enumerate() {
            // up.i receives the output of up.(i+1) (or of the mid block for the last one).
            let cin = chans.get(i + 1).copied().unwrap_or(top);
            let resnets = b.resnets(
                store,
                &format!("up_blocks.{i}"),
                config.layers_per_block,
                cin,
                cout,
            )?;
            let upsample = if i > 0 {
                Some(b.conv(store, &format!("up_blocks.{i}.upsample"), cout, cout, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsample });
        }
        let conv_norm_out = b.group_norm(store, "conv_norm_out", chans[0])?;
        let conv_out = b.conv(store, "conv_out", chans[0], config.out_channels, 1, 1)?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            mid,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Decodes an already unscaled latent (`z / 1.5305 + 0.0609`), NHWC → NHWC in about [-1, 1].
    pub fn forward(&self, z: &Array) -> MlxResult<Array> {
        let mut x = self.conv_in.forward(z)?;
        x = self.mid.0.forward(&x)?;
        x = self.mid.1.forward(&x)?;
        x = self.mid.2.forward(&x)?;
        for block in self.up_blocks.iter().rev() {
            for r in &block.resnets {
                x = r.forward(&x)?;
            }
            if let Some(up) = &block.upsample {
                x = up.forward(&upsample_nearest(&x)?)?;
            }
            x.eval()?;
        }
        self.conv_out
            .forward(&silu(&self.conv_norm_out.forward(&x)?)?)
    }

    /// Sampler latent → image in [0, 1]: unscale, decode, `clip(x/2 + 0.5, 0, 1)`.
    pub fn decode_latent(&self, latent: &Array) -> MlxResult<Array> {
        let z = unscale_latent(latent, &self.config)?;
        let x = self.forward(&super::nn::cast(&z, self.conv_in.weight.dtype())?)?;
        mlx_rs::ops::clip(
            x.divide(scalar(2.0))?.add(scalar(0.5))?,
            (scalar(0.0), scalar(1.0)),
        )
    }
}

/// The VAE's layers read from a [`TensorStore`] by their DiffusionKit names.
struct Builder {
    groups: i32,
}

impl Builder {
    fn group_norm(
        &self,
        store: &mut TensorStore,
        name: &str,
        c: usize,
    ) -> Result<GroupNorm, WeightsError> {
        Ok(GroupNorm {
            groups: self.groups,
            weight: store.take(&format!("{name}.weight"), &[c as i32])?,
            bias: store.take(&format!("{name}.bias"), &[c as i32])?,
            eps: 1e-5,
        })
    }

    /// A 3×3 convolution.
    fn conv(
        &self,
        store: &mut TensorStore,
        name: &str,
        cin: usize,
        cout: usize,
        stride: i32,
        padding: i32,
    ) -> Result<Conv2d, WeightsError> {
        Ok(Conv2d {
            weight: store.take(&format!("{name}.weight"), &[cout as i32, 3, 3, cin as i32])?,
            bias: Some(store.take(&format!("{name}.bias"), &[cout as i32])?),
            stride,
            padding,
        })
    }

    fn resnet(
        &self,
        store: &mut TensorStore,
        name: &str,
        cin: usize,
        cout: usize,
    ) -> Result<ResnetBlock, WeightsError> {
        Ok(ResnetBlock {
            norm1: self.group_norm(store, &format!("{name}.norm1"), cin)?,
            conv1: self.conv(store, &format!("{name}.conv1"), cin, cout, 1, 1)?,
            norm2: self.group_norm(store, &format!("{name}.norm2"), cout)?,
            conv2: self.conv(store, &format!("{name}.conv2"), cout, cout, 1, 1)?,
            conv_shortcut: if cin != cout {
                Some(store.linear(&format!("{name}.conv_shortcut"), cout, cin)?)
            } else {
                None
            },
        })
    }

    /// A block's `n` resnets (`{block}.resnets.{j}`), the first from `cin` channels.
    fn resnets(
        &self,
        store: &mut TensorStore,
        block: &str,
        n: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Vec<ResnetBlock>, WeightsError> {
        (0..n)
            .map(|j| {
                let cin = if j == 0 { cin } else { cout };
                self.resnet(store, &format!("{block}.resnets.{j}"), cin, cout)
            })
            .collect()
    }

    /// The mid block (resnet, attention, resnet) at `c` channels.
    fn mid(
        &self,
        store: &mut TensorStore,
        c: usize,
    ) -> Result<(ResnetBlock, VaeAttention, ResnetBlock), WeightsError> {
        let attention = VaeAttention {
            group_norm: self.group_norm(store, "mid_blocks.1.group_norm", c)?,
            query_proj: store.linear("mid_blocks.1.query_proj", c, c)?,
            key_proj: store.linear("mid_blocks.1.key_proj", c, c)?,
            value_proj: store.linear("mid_blocks.1.value_proj", c, c)?,
            out_proj: store.linear("mid_blocks.1.out_proj", c, c)?,
        };
        Ok((
            self.resnet(store, "mid_blocks.0", c, c)?,
            attention,
            self.resnet(store, "mid_blocks.2", c, c)?,
        ))
    }
}

/// The last (widest) block's channels.
fn top_channels(store: &TensorStore, chans: &[usize]) -> Result<usize, WeightsError> {
    chans.last().copied().ok_or_else(|| WeightsError::Invalid {
        path: store.path().to_owned(),
        reason: "the VAE needs at least one block".into(),
    })
}

/// The encoder's sizes. Not part of [`super::Sd3Config`]: generating never runs the encoder,
/// only training the demo model does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VaeEncoderConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_groups: usize,
    /// Latent channels: the encoder outputs twice as many (mean and log-variance).
    pub latent_channels: usize,
}

impl VaeEncoderConfig {
    /// The encoder published with a decoder: the same channels and groups, one resnet fewer per
    /// block (SD3: 3 in the decoder, 2 in the encoder), at least one.
    pub fn for_decoder(decoder: &VaeDecoderConfig) -> Self {
        Self {
            block_out_channels: decoder.block_out_channels.clone(),
            layers_per_block: decoder.layers_per_block.saturating_sub(1).max(1),
            norm_groups: decoder.norm_groups,
            latent_channels: decoder.latent_channels,
        }
    }

    /// As a decoder configuration (for its checks of the shared sizes).
    fn as_decoder(&self) -> VaeDecoderConfig {
        VaeDecoderConfig {
            latent_channels: self.latent_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            norm_groups: self.norm_groups,
            ..VaeDecoderConfig::sd3()
        }
    }
}

#[derive(Debug, Clone)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    /// Stride 2, no padding; the input gets one row and column of zeros at the bottom and right.
    pub downsample: Option<Conv2d>,
}

/// The encoder.
#[derive(Debug, Clone)]
pub struct VaeEncoder {
    pub config: VaeEncoderConfig,
    pub conv_in: Conv2d,
    /// From full resolution down.
    pub down_blocks: Vec<DownBlock>,
    pub mid: (ResnetBlock, VaeAttention, ResnetBlock),
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl VaeEncoder {
    /// Builds the encoder from tensors named as DiffusionKit maps them (see [`remap_vae_encoder`]).
    pub fn from_store(
        config: &VaeEncoderConfig,
        store: &mut TensorStore,
    ) -> Result<Self, WeightsError> {
        config
            .as_decoder()
            .validate()
            .map_err(|source| WeightsError::Config {
                path: store.path().to_owned(),
                source,
            })?;
        let b = Builder {
            groups: config.norm_groups as i32,
        };
        let chans = &config.block_out_channels;
        let top = top_channels(store, chans)?;
        let conv_in = b.conv(store, "conv_in", 3, chans[0], 1, 1)?;
        let mut down_blocks = Vec::with_capacity(chans.len());
        for (i, &cout) in chans.iter().enumerate() {
            let cin = if i == 0 { chans[0] } else { chans[i - 1] };
            let resnets = b.resnets(
                store,
                &format!("down_blocks.{i}"),
                config.layers_per_block,
                cin,
                cout,
            )?;
            let downsample = if i + 1 < chans.len() {
                Some(b.conv(
                    store,
                    &format!("down_blocks.{i}.downsample"),
                    cout,
                    cout,
                    2,
                    0,
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                downsample,
            });
        }
        let mid = b.mid(store, top)?;
        let conv_norm_out = b.group_norm(store, "conv_norm_out", top)?;
        let conv_out = b.conv(store, "conv_out", top, 2 * config.latent_channels, 1, 1)?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            down_blocks,
            mid,
            conv_norm_out,
            conv_out,
        })
    }

    /// Image (NHWC, about [-1, 1]) → the latent's mean and log-variance concatenated on the
    /// channel axis (`2 · latent_channels`), as DiffusionKit's `VAEEncoder` returns them.
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let mut x = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            for r in &block.resnets {
                x = r.forward(&x)?;
            }
            if let Some(down) = &block.downsample {
                let widths = [(0, 0), (0, 1), (0, 1), (0, 0)];
                x = down.forward(&mlx_rs::ops::pad(&x, &widths[..], scalar(0.0), None)?)?;
            }
        }
        x = self.mid.0.forward(&x)?;
        x = self.mid.1.forward(&x)?;
        x = self.mid.2.forward(&x)?;
        self.conv_out
            .forward(&silu(&self.conv_norm_out.forward(&x)?)?)
    }

    /// The latent's mean and its log-variance clipped to [-30, 20], as DiffusionKit's
    /// `encode_image_to_latents` splits them.
    pub fn moments(&self, x: &Array) -> MlxResult<(Array, Array)> {
        let h = self.forward(x)?;
        let c = self.config.latent_channels as i32;
        let mean = h.index((.., .., .., ..c));
        let logvar = mlx_rs::ops::clip(h.index((.., .., .., c..)), (scalar(-30.0), scalar(20.0)))?;
        Ok((mean, logvar))
    }

    /// Every parameter array.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.conv_in.arrays();
        for b in &self.down_blocks {
            for r in &b.resnets {
                v.extend(r.arrays());
            }
            if let Some(d) = &b.downsample {
                v.extend(d.arrays());
            }
        }
        v.extend(mid_arrays(&self.mid));
        v.extend(self.conv_norm_out.arrays());
        v.extend(self.conv_out.arrays());
        v
    }
}

fn mid_arrays(mid: &(ResnetBlock, VaeAttention, ResnetBlock)) -> Vec<&Array> {
    let mut v = mid.0.arrays();
    let a = &mid.1;
    v.extend(a.group_norm.arrays());
    for l in [&a.query_proj, &a.key_proj, &a.value_proj, &a.out_proj] {
        v.extend(l.arrays());
    }
    v.extend(mid.2.arrays());
    v
}

/// The sampler's latent of an encoder mean: `(z - shift_factor) · scaling_factor`
/// (DiffusionKit's `SD3LatentFormat.process_in`), the inverse of [`unscale_latent`].
pub fn scale_latent(z: &Array, config: &VaeDecoderConfig) -> MlxResult<Array> {
    z.subtract(scalar(config.shift_factor))?
        .multiply(scalar(config.scaling_factor))
}

/// The sampler's latent as the decoder receives it: `latent / scaling_factor + shift_factor`.
pub fn unscale_latent(latent: &Array, config: &VaeDecoderConfig) -> MlxResult<Array> {
    latent
        .divide(scalar(config.scaling_factor))?
        .add(scalar(config.shift_factor))
}

/// `(x · 255)` truncated to u8, as DiffusionKit converts (`astype(uint8)`): HWC bytes per image.
pub fn to_u8_images(x: &Array) -> MlxResult<Vec<(u32, u32, Vec<u8>)>> {
    let s = x.shape().to_vec();
    let (b, h, w) = (s[0], s[1] as u32, s[2] as u32);
    let bytes = x
        .multiply(scalar(255.0))?
        .as_dtype(Dtype::Uint8)?
        .reshape(&[b, -1])?;
    bytes.eval()?;
    let all: &[u8] = bytes
        .try_as_slice::<u8>()
        .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
    let per = all.len() / b.max(1) as usize;
    Ok(all.chunks(per.max(1)).map(|c| (w, h, c.to_vec())).collect())
}

/// DiffusionKit's `vae_decoder_state_dict_adjustments` for keys under
/// `first_stage_model.decoder.`: renames to its module names, moves conv weights from OIHW to
/// OHWI and squeezes the 1×1 shortcut and attention weights.
pub fn remap_vae_decoder(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
) -> Result<std::collections::HashMap<String, Array>, WeightsError> {
    remap_vae(path, raw, super::weights::VAE_DECODER_PREFIX, |k| {
        k.replace("up", "up_blocks")
            .replace(".up_blockssample.conv.", ".upsample.")
    })
}

/// DiffusionKit's `vae_encoder_state_dict_adjustments` for keys under
/// `first_stage_model.encoder.`: as the decoder's, with `down.i` blocks and their
/// `downsample.conv`.
pub fn remap_vae_encoder(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
) -> Result<std::collections::HashMap<String, Array>, WeightsError> {
    remap_vae(path, raw, super::weights::VAE_ENCODER_PREFIX, |k| {
        k.replace("down.", "down_blocks.")
            .replace(".downsample.conv.", ".downsample.")
    })
}

/// The renames both halves share after their own (`blocks`), and the weight layouts.
fn remap_vae(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
    prefix: &str,
    blocks: impl Fn(&str) -> String,
) -> Result<std::collections::HashMap<String, Array>, WeightsError> {
    let mut out = std::collections::HashMap::new();
    for (key, v) in raw {
        let v = v.clone();
        let Some(k) = key.strip_prefix(prefix) else {
            continue;
        };
        let mlx = |source| WeightsError::MlxTensor {
            path: path.to_owned(),
            key: key.clone(),
            source,
        };
        let k = blocks(k)
            .replace("mid", "mid_blocks")
            .replace("mid_blocks.block_1", "mid_blocks.0")
            .replace("mid_blocks.block_2", "mid_blocks.2")
            .replace("mid_blocks.attn_1", "mid_blocks.1")
            .replace(".norm.", ".group_norm.")
            .replace(".q", ".query_proj")
            .replace(".k", ".key_proj")
            .replace(".v", ".value_proj")
            .replace(".proj_out", ".out_proj")
            .replace(".block.", ".resnets.")
            .replace(".nin_shortcut.", ".conv_shortcut.")
            .replace("norm_out", "conv_norm_out");
        // 1×1 convolutions (shortcut, attention projections) become Linear weights.
        let v = if k.contains("conv_shortcut.weight") || k.contains("proj.weight") {
            // `(out, in, 1, 1)`; the store checks the `(out, in)` it becomes.
            let shape = super::weights::shape_of_rank(path, key, &v, 4)?;
            let (o, i) = (shape[0], shape[1]);
            v.reshape(&[o, i]).map_err(mlx)?
        } else if k.ends_with("weight") && v.ndim() == 4 {
            v.transpose_axes(&[0, 2, 3, 1]).map_err(mlx)?
        } else {
            v
        };
        out.insert(k, v);
    }
    Ok(out)
}

/// Loads the VAE decoder from `sd3_medium.safetensors` (Stability's layout) in `dtype`.
pub fn load_vae_decoder(
    path: &std::path::Path,
    config: &VaeDecoderConfig,
    dtype: Dtype,
) -> Result<VaeDecoder, WeightsError> {
    vae_decoder_from_tensors(
        path,
        &super::weights::load_safetensors(path)?,
        config,
        dtype,
    )
}

/// Builds the VAE decoder from a checkpoint's already loaded (lazy) tensors.
pub fn vae_decoder_from_tensors(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
    config: &VaeDecoderConfig,
    dtype: Dtype,
) -> Result<VaeDecoder, WeightsError> {
    let tensors = remap_vae_decoder(path, raw)?;
    let mut store = TensorStore::new(path, tensors, dtype);
    let model = VaeDecoder::from_store(config, &mut store)?;
    store.finish()?;
    Ok(model)
}

/// Builds the VAE encoder from a checkpoint's already loaded (lazy) tensors.
pub fn vae_encoder_from_tensors(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
    config: &VaeEncoderConfig,
    dtype: Dtype,
) -> Result<VaeEncoder, WeightsError> {
    let tensors = remap_vae_encoder(path, raw)?;
    let mut store = TensorStore::new(path, tensors, dtype);
    let model = VaeEncoder::from_store(config, &mut store)?;
    store.finish()?;
    Ok(model)
}

impl GroupNorm {
    pub fn arrays(&self) -> Vec<&Array> {
        vec![&self.weight, &self.bias]
    }
}

impl ResnetBlock {
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.norm1.arrays();
        v.extend(self.conv1.arrays());
        v.extend(self.norm2.arrays());
        v.extend(self.conv2.arrays());
        if let Some(s) = &self.conv_shortcut {
            v.extend(s.arrays());
        }
        v
    }
}

impl VaeDecoder {
    /// Every parameter array.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.conv_in.arrays();
        v.extend(mid_arrays(&self.mid));
        for b in &self.up_blocks {
            for r in &b.resnets {
                v.extend(r.arrays());
            }
            if let Some(u) = &b.upsample {
                v.extend(u.arrays());
            }
        }
        v.extend(self.conv_norm_out.arrays());
        v.extend(self.conv_out.arrays());
        v
    }
}

//! Model configurations: SD3 medium as published, and the synthetic presets (`tiny`,
//! `medium-shaped`) used for tests, demos and benchmarks. Field names follow DiffusionKit's
//! `MMDiTConfig`, `CLIPTextModelConfig` and `VAEDecoderConfig`.

use serde::{Deserialize, Serialize};

/// The MMDiT (SD3's denoiser).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmditConfig {
    /// Joint (multimodal) transformer blocks: 24 for SD3 medium.
    pub depth: usize,
    /// Model width: 1536 for SD3 medium (64 × depth by SD3's convention).
    pub hidden_size: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
    pub patch_size: usize,
    /// VAE latent channels (16).
    pub latent_channels: usize,
    /// Side of the learned position table, in patches (192 → 36,864 positions).
    pub max_latent_resolution: usize,
    /// Width of the pooled text embedding (CLIP-L 768 + CLIP-G 1280).
    pub pooled_dim: usize,
    /// Width of the token-level text embedding (4096, the T5 width).
    pub context_dim: usize,
    /// Sinusoidal timestep embedding width (256).
    pub frequency_dim: usize,
    pub layer_norm_eps: f32,
}

impl MmditConfig {
    /// SD3 medium ("SD3_2b").
    pub fn sd3_medium() -> Self {
        Self {
            depth: 24,
            hidden_size: 1536,
            num_heads: 24,
            mlp_ratio: 4,
            patch_size: 2,
            latent_channels: 16,
            max_latent_resolution: 192,
            pooled_dim: 2048,
            context_dim: 4096,
            frequency_dim: 256,
            layer_norm_eps: 1e-6,
        }
    }

    /// SD3-medium widths with `depth` joint blocks.
    pub fn medium_shaped(depth: usize) -> Self {
        Self {
            depth,
            ..Self::sd3_medium()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        self.hidden_size * self.mlp_ratio
    }

    /// Checks the relations the architecture needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.depth == 0 || self.hidden_size == 0 || self.num_heads == 0 {
            return Err(ConfigError::ZeroSize {
                depth: self.depth,
                hidden_size: self.hidden_size,
                num_heads: self.num_heads,
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(ConfigError::HeadsDoNotDivide {
                hidden_size: self.hidden_size,
                num_heads: self.num_heads,
            });
        }
        if !self.frequency_dim.is_multiple_of(2) {
            return Err(ConfigError::OddFrequencyDim {
                frequency_dim: self.frequency_dim,
            });
        }
        // Every size becomes an MLX (32-bit) dimension, some multiplied together: bounded so
        // that none overflows, and far above any published model.
        in_range("hidden_size", self.hidden_size, 1, MAX_WIDTH)?;
        in_range("num_heads", self.num_heads, 1, MAX_WIDTH)?;
        in_range("mlp_ratio", self.mlp_ratio, 1, 64)?;
        // Image sides are multiples of 16, so latent sides are even: a patch of 1 or 2 divides
        // them (SD3's is 2).
        in_range("patch_size", self.patch_size, 1, 2)?;
        in_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)?;
        in_range("max_latent_resolution", self.max_latent_resolution, 1, 4096)?;
        in_range("pooled_dim", self.pooled_dim, 1, MAX_WIDTH)?;
        in_range("context_dim", self.context_dim, 1, MAX_WIDTH)?;
        in_range("frequency_dim", self.frequency_dim, 2, MAX_WIDTH)?;
        in_range("depth", self.depth, 1, MAX_LAYERS)?;
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ConfigError::Epsilon {
                value: self.layer_norm_eps.to_string(),
            });
        }
        Ok(())
    }
}

/// The widest layer any configuration may have (SD3 medium's widest is 4096; 2¹⁸ keeps every
/// dimension the code forms from sizes, such as the MLP's or the adaLN's width, within MLX's
/// 32-bit dimensions).
pub const MAX_WIDTH: usize = 1 << 18;
/// The most channels of a latent or an image.
pub const MAX_CHANNELS: usize = 1024;
/// The most layers (blocks) of a part; a bound on what is allocated per layer before the
/// tensors themselves are checked.
pub const MAX_LAYERS: usize = 1024;

fn in_range(field: &'static str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// Why an MMDiT configuration cannot describe a working model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "depth, hidden_size and num_heads must be positive (they are {depth}, {hidden_size} and {num_heads})"
    )]
    ZeroSize {
        depth: usize,
        hidden_size: usize,
        num_heads: usize,
    },
    #[error("hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")]
    HeadsDoNotDivide {
        hidden_size: usize,
        num_heads: usize,
    },
    #[error("frequency_dim {frequency_dim} must be even")]
    OddFrequencyDim { frequency_dim: usize },
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("layer_norm_eps is {value}; it must be a positive finite number")]
    Epsilon { value: String },
    #[error("{field} is {value}; it must be a multiple of norm_groups {groups}")]
    NotGroupMultiple {
        field: &'static str,
        value: usize,
        groups: usize,
    },
    #[error("out_channels is {value}; the decoder must give RGB images (3)")]
    NotRgb { value: usize },
}

impl ConfigError {
    /// The configuration field the problem is about (to name where its value came from).
    pub fn field(&self) -> &'static str {
        match self {
            Self::ZeroSize {
                depth, hidden_size, ..
            } => {
                if *depth == 0 {
                    "depth"
                } else if *hidden_size == 0 {
                    "hidden_size"
                } else {
                    "num_heads"
                }
            }
            Self::HeadsDoNotDivide { .. } => "num_heads",
            Self::OddFrequencyDim { .. } => "frequency_dim",
            Self::OutOfRange { field, .. } | Self::NotGroupMultiple { field, .. } => field,
            Self::Epsilon { .. } => "layer_norm_eps",
            Self::NotRgb { .. } => "out_channels",
        }
    }
}

/// A CLIP text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub num_layers: usize,
    pub width: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub vocab_size: usize,
    pub max_length: usize,
    /// `quick_gelu` (CLIP-L) or `gelu` (CLIP-G, exact).
    pub hidden_act: String,
    /// Width of the text projection (CLIP-G only; `None`: no projection).
    pub projection_dim: Option<usize>,
    pub layer_norm_eps: f32,
}

impl ClipConfig {
    pub fn clip_l() -> Self {
        Self {
            num_layers: 12,
            width: 768,
            num_heads: 12,
            mlp_dim: 3072,
            vocab_size: 49408,
            max_length: 77,
            hidden_act: "quick_gelu".into(),
            projection_dim: None,
            layer_norm_eps: 1e-5,
        }
    }

    pub fn clip_g() -> Self {
        Self {
            num_layers: 32,
            width: 1280,
            num_heads: 20,
            mlp_dim: 5120,
            vocab_size: 49408,
            max_length: 77,
            hidden_act: "gelu".into(),
            projection_dim: Some(1280),
            layer_norm_eps: 1e-5,
        }
    }

    /// Width of the pooled output.
    pub fn pooled_dim(&self) -> usize {
        self.projection_dim.unwrap_or(self.width)
    }

    /// Checks every size against the bounds the encoder needs, before anything is allocated
    /// for it: positive widths within [`MAX_WIDTH`], at most [`MAX_LAYERS`] layers, heads that
    /// divide the width, positions for the tokenizer's 77 tokens, a known activation. Errors
    /// name the Hugging Face `config.json` key.
    pub fn validate(&self) -> Result<(), ClipConfigError> {
        let range = |key: &'static str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ClipConfigError::OutOfRange {
                    key,
                    value,
                    min,
                    max,
                })
            }
        };
        range("num_hidden_layers", self.num_layers, 1, MAX_LAYERS)?;
        range("hidden_size", self.width, 1, MAX_WIDTH)?;
        range("num_attention_heads", self.num_heads, 1, self.width)?;
        if !self.width.is_multiple_of(self.num_heads) {
            return Err(ClipConfigError::HeadsDoNotDivide {
                width: self.width,
                num_heads: self.num_heads,
            });
        }
        range("intermediate_size", self.mlp_dim, 1, 4 * MAX_WIDTH)?;
        // The table's rows, times the width, must fit MLX's 32-bit sizes.
        range(
            "vocab_size",
            self.vocab_size,
            1,
            (i32::MAX as usize) / self.width,
        )?;
        range(
            "max_position_embeddings",
            self.max_length,
            CLIP_TOKENS,
            1 << 16,
        )?;
        if let Some(d) = self.projection_dim {
            range("projection_dim", d, 1, MAX_WIDTH)?;
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "quick_gelu") {
            return Err(ClipConfigError::Activation {
                value: self.hidden_act.clone(),
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ClipConfigError::Epsilon {
                value: self.layer_norm_eps.to_string(),
            });
        }
        Ok(())
    }
}

/// Tokens per prompt the CLIP encoders receive (BOS, 75 tokens, EOS).
pub const CLIP_TOKENS: usize = 77;

/// Why a CLIP configuration (`config.json`) does not describe a usable text encoder; each
/// names the Hugging Face key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClipConfigError {
    #[error("missing integer '{key}'")]
    MissingInteger { key: &'static str },
    #[error("'{key}' is {value}; it must be between {min} and {max}")]
    OutOfRange {
        key: &'static str,
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("'hidden_size' {width} is not a multiple of 'num_attention_heads' {num_heads}")]
    HeadsDoNotDivide { width: usize, num_heads: usize },
    #[error("'hidden_act' is {value:?}; it must be \"gelu\" or \"quick_gelu\"")]
    Activation { value: String },
    #[error("'layer_norm_eps' is {value}; it must be a positive finite number")]
    Epsilon { value: String },
}

/// The VAE decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeDecoderConfig {
    pub latent_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_groups: usize,
    pub scaling_factor: f32,
    pub shift_factor: f32,
}

impl VaeDecoderConfig {
    /// Checks the sizes the decoder needs: 1 to 8 blocks whose channels are positive multiples
    /// of the normalisation groups, at least one layer per block, RGB output.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("norm_groups", self.norm_groups, 1, MAX_CHANNELS)?;
        in_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)?;
        in_range("block_out_channels", self.block_out_channels.len(), 1, 8)?;
        for &c in &self.block_out_channels {
            in_range("block_out_channels", c, 1, 16 * MAX_CHANNELS)?;
            if !c.is_multiple_of(self.norm_groups) {
                return Err(ConfigError::NotGroupMultiple {
                    field: "block_out_channels",
                    value: c,
                    groups: self.norm_groups,
                });
            }
        }
        in_range("layers_per_block", self.layers_per_block, 1, 64)?;
        if self.out_channels != 3 {
            return Err(ConfigError::NotRgb {
                value: self.out_channels,
            });
        }
        Ok(())
    }

    pub fn sd3() -> Self {
        Self {
            latent_channels: 16,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 3,
            norm_groups: 32,
            scaling_factor: 1.5305,
            shift_factor: 0.0609,
        }
    }
}

/// The whole text-to-image model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sd3Config {
    pub mmdit: MmditConfig,
    pub clip_l: ClipConfig,
    pub clip_g: ClipConfig,
    pub vae: VaeDecoderConfig,
}

/// Named configurations (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// A few MB, runs in seconds: for tests (random weights).
    Tiny,
    /// The built-in demo model's architecture: the tiny preset with a VAE of 64 channels at
    /// every level. GroupNorm's 32 groups over the tiny preset's 32 channels normalise each
    /// channel on its own, which erases a flat region's colour (each channel's mean) before the
    /// decoder's last convolution; with two channels a group, their difference carries it, and
    /// the VAE learns the demo's flat pictures several times faster.
    Demo,
    /// SD3-medium widths, reduced depth (default 4): for benchmarks.
    MediumShaped,
    /// SD3 medium as published (24 blocks, 2B MMDiT parameters).
    Sd3Medium,
}

impl Preset {
    /// The configuration; `depth` overrides the MMDiT depth.
    pub fn config(self, depth: Option<usize>) -> Sd3Config {
        let mut config = match self {
            Self::Demo => {
                let mut config = Self::Tiny.config(None);
                config.vae.block_out_channels = vec![64; 4];
                config
            }
            Self::Sd3Medium => Sd3Config {
                mmdit: MmditConfig::sd3_medium(),
                clip_l: ClipConfig::clip_l(),
                clip_g: ClipConfig::clip_g(),
                vae: VaeDecoderConfig::sd3(),
            },
            Self::MediumShaped => Sd3Config {
                mmdit: MmditConfig::medium_shaped(4),
                clip_l: ClipConfig::clip_l(),
                clip_g: ClipConfig::clip_g(),
                vae: VaeDecoderConfig::sd3(),
            },
            Self::Tiny => {
                let clip_l = ClipConfig {
                    num_layers: 2,
                    width: 32,
                    num_heads: 2,
                    mlp_dim: 128,
                    vocab_size: 49408,
                    max_length: 77,
                    hidden_act: "quick_gelu".into(),
                    projection_dim: None,
                    layer_norm_eps: 1e-5,
                };
                let clip_g = ClipConfig {
                    num_layers: 3,
                    width: 48,
                    num_heads: 3,
                    mlp_dim: 192,
                    hidden_act: "gelu".into(),
                    projection_dim: Some(48),
                    ..clip_l.clone()
                };
                Sd3Config {
                    mmdit: MmditConfig {
                        depth: 2,
                        hidden_size: 128,
                        num_heads: 2,
                        max_latent_resolution: 64,
                        pooled_dim: clip_l.pooled_dim() + clip_g.pooled_dim(),
                        ..MmditConfig::sd3_medium()
                    },
                    clip_l,
                    clip_g,
                    vae: VaeDecoderConfig {
                        block_out_channels: vec![32, 32, 32, 32],
                        layers_per_block: 1,
                        ..VaeDecoderConfig::sd3()
                    },
                }
            }
        };
        if let Some(depth) = depth {
            config.mmdit.depth = depth;
        }
        config
    }
}

/// Weight and activation precision (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    Float32,
    Float16,
    Bfloat16,
}

impl ModelDtype {
    pub fn mlx(self) -> mlx_rs::Dtype {
        match self {
            Self::Float32 => mlx_rs::Dtype::Float32,
            Self::Float16 => mlx_rs::Dtype::Float16,
            Self::Bfloat16 => mlx_rs::Dtype::Bfloat16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::Bfloat16 => "bfloat16",
        }
    }

    /// float32 on the CPU backend (MLX's CPU half-precision GEMM is ~15× slower), float16 on GPUs.
    pub fn default_for_backend() -> Self {
        if mlx_sys::MLX_BACKEND == "cpu" {
            Self::Float32
        } else {
            Self::Float16
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        if self == Self::Float32 { 4 } else { 2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for preset in [
            Preset::Tiny,
            Preset::Demo,
            Preset::MediumShaped,
            Preset::Sd3Medium,
        ] {
            let c = preset.config(None);
            assert_eq!(c.mmdit.validate(), Ok(()), "{preset:?}");
            assert_eq!(c.vae.validate(), Ok(()), "{preset:?}");
            assert_eq!(c.clip_l.validate(), Ok(()), "{preset:?}");
            assert_eq!(c.clip_g.validate(), Ok(()), "{preset:?}");
        }
    }

    #[test]
    fn clip_sizes_out_of_bounds_are_named_by_their_config_key() {
        let bad = |f: fn(&mut ClipConfig)| {
            let mut c = ClipConfig::clip_g();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let key = |e: ClipConfigError| match e {
            ClipConfigError::OutOfRange { key, .. } => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key(bad(|c| c.num_layers = 1_000_000_000)),
            "num_hidden_layers"
        );
        assert_eq!(key(bad(|c| c.num_heads = 0)), "num_attention_heads");
        assert_eq!(key(bad(|c| c.width = 0)), "hidden_size");
        assert_eq!(key(bad(|c| c.max_length = 76)), "max_position_embeddings");
        assert_eq!(key(bad(|c| c.vocab_size = 0)), "vocab_size");
        assert_eq!(key(bad(|c| c.projection_dim = Some(0))), "projection_dim");
        assert_eq!(
            bad(|c| c.num_heads = 7),
            ClipConfigError::HeadsDoNotDivide {
                width: 1280,
                num_heads: 7
            }
        );
        assert!(matches!(
            bad(|c| c.hidden_act = "relu".into()),
            ClipConfigError::Activation { .. }
        ));
        assert!(matches!(
            bad(|c| c.layer_norm_eps = f32::NAN),
            ClipConfigError::Epsilon { .. }
        ));
    }

    #[test]
    fn vae_sizes_out_of_bounds_are_refused() {
        let bad = |f: fn(&mut VaeDecoderConfig)| {
            let mut c = VaeDecoderConfig::sd3();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.block_out_channels.clear()).field(),
            "block_out_channels"
        );
        assert_eq!(
            bad(|c| c.block_out_channels[1] = 100),
            ConfigError::NotGroupMultiple {
                field: "block_out_channels",
                value: 100,
                groups: 32
            }
        );
        assert_eq!(bad(|c| c.layers_per_block = 0).field(), "layers_per_block");
        assert_eq!(
            bad(|c| c.out_channels = 4),
            ConfigError::NotRgb { value: 4 }
        );
        assert_eq!(bad(|c| c.latent_channels = 0).field(), "latent_channels");
    }

    #[test]
    fn validate_names_the_broken_relation_with_its_numbers() {
        assert_eq!(MmditConfig::sd3_medium().validate(), Ok(()));
        let bad = |f: fn(&mut MmditConfig)| {
            let mut c = MmditConfig::sd3_medium();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.num_heads = 0),
            ConfigError::ZeroSize {
                depth: 24,
                hidden_size: 1536,
                num_heads: 0
            }
        );
        let err = bad(|c| c.num_heads = 7);
        assert_eq!(
            err,
            ConfigError::HeadsDoNotDivide {
                hidden_size: 1536,
                num_heads: 7
            }
        );
        assert_eq!(
            err.to_string(),
            "hidden_size 1536 is not a multiple of num_heads 7"
        );
        assert_eq!(
            bad(|c| c.frequency_dim = 255),
            ConfigError::OddFrequencyDim { frequency_dim: 255 }
        );
        for (f, field) in [
            (
                (|c: &mut MmditConfig| c.depth = 1_000_000_000) as fn(&mut MmditConfig),
                "depth",
            ),
            (|c| c.patch_size = 0, "patch_size"),
            (|c| c.patch_size = 3, "patch_size"),
            (|c| c.mlp_ratio = 0, "mlp_ratio"),
            (|c| c.latent_channels = 0, "latent_channels"),
            (
                |c| c.max_latent_resolution = 1 << 20,
                "max_latent_resolution",
            ),
            (|c| c.context_dim = 0, "context_dim"),
            (|c| c.pooled_dim = 0, "pooled_dim"),
            (|c| c.frequency_dim = 0, "frequency_dim"),
        ] {
            assert_eq!(bad(f).field(), field);
        }
        assert_eq!(bad(|c| c.layer_norm_eps = -1.0).field(), "layer_norm_eps");
    }
}

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
        Ok(())
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
    /// A few MB, runs in seconds: for tests and the built-in demo.
    Tiny,
    /// SD3-medium widths, reduced depth (default 4): for benchmarks.
    MediumShaped,
    /// SD3 medium as published (24 blocks, 2B MMDiT parameters).
    Sd3Medium,
}

impl Preset {
    /// The configuration; `depth` overrides the MMDiT depth.
    pub fn config(self, depth: Option<usize>) -> Sd3Config {
        let mut config = match self {
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
    }
}

//! SD3 medium on MLX, as DiffusionKit runs it: configurations, the layer registry, and (as they
//! land) the tokenizer, the CLIP encoders, the MMDiT, the VAE decoder, the sampler and weights.

pub mod clip;
pub mod config;
pub mod cpu_kernels;
pub mod mmdit;
pub mod nn;
pub mod pipeline;
pub mod registry;
pub mod sampler;
pub mod source;
pub mod synth;
pub mod tensor_io;
pub mod tokenizer;
pub mod vae;
pub mod weights;

pub use config::{ClipConfig, MmditConfig, Preset, Sd3Config, VaeDecoderConfig};
pub use registry::{LayerId, LayerKind, LinearLayer, Stream, mmdit_layer_ids, mmdit_linear_layers};

//! Prompt → image, as DiffusionKit's `DiffusionPipeline` runs SD3 without T5: tokenize for both
//! CLIPs (CFG batch: prompt, then negative), encode, build the 154-token conditioning and the
//! pooled vector, seed the noise, cache the modulation per timestep, sample with Euler + CFG,
//! decode, convert to u8. Each denoising step can be observed (the calibration generator records
//! exactly what the denoiser receives) and cancelled.

use std::time::Instant;

use mlx_rs::{Array, Dtype};

use super::clip::{ClipTextModel, load_clip};
use super::config::Sd3Config;
use super::mmdit::{Mmdit, mmdit_from_tensors};
use super::nn::MlxResult;
use super::sampler;
use super::source::{ModelFiles, infer_config_from};
use super::tokenizer::{ClipTokenizer, Padding, TokenizerError};
use super::vae::{VaeDecoder, to_u8_images, vae_decoder_from_tensors};
use super::weights::WeightsError;

/// Why a pipeline could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Config(#[from] GenerateConfigError),
    #[error(
        "{checkpoint}: the CLIP encoders pool {pooled} features but the MMDiT expects {expected}"
    )]
    PooledWidth {
        checkpoint: std::path::PathBuf,
        pooled: usize,
        expected: usize,
    },
    #[error(
        "{checkpoint}: the CLIP encoders are {width} features wide together, wider than the MMDiT's context of {context}"
    )]
    ContextWidth {
        checkpoint: std::path::PathBuf,
        width: usize,
        context: usize,
    },
    #[error(
        "{vocab}: token {token:?} has id {id}, past the {rows} rows of the embedding table ('token_embedding.weight') in {weights}"
    )]
    TokenPastTable {
        vocab: std::path::PathBuf,
        token: String,
        id: u32,
        rows: usize,
        weights: std::path::PathBuf,
    },
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Fails when `tokenizer` can produce an id past `clip`'s embedding table: looking it up would
/// read outside the table (a crash, or an image from whatever memory follows it).
fn check_token_ids(
    tokenizer: &ClipTokenizer,
    tokenizer_dir: &std::path::Path,
    clip: &ClipTextModel,
    clip_dir: &std::path::Path,
) -> Result<(), PipelineError> {
    let (token, id) = tokenizer.largest_id();
    let rows = clip.config.vocab_size;
    if (id as usize) < rows {
        return Ok(());
    }
    Err(PipelineError::TokenPastTable {
        vocab: tokenizer_dir.join(super::tokenizer::VOCAB_FILE),
        token: token.to_owned(),
        id,
        rows,
        weights: clip_dir.join(super::clip::WEIGHTS_FILE),
    })
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateConfig {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u32,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub height: usize,
    pub width: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 0,
            num_steps: 50,
            cfg_weight: 7.5,
            height: 512,
            width: 512,
        }
    }
}

/// Which side of the image a size error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSide {
    Height,
    Width,
}

impl std::fmt::Display for ImageSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Height => "height",
            Self::Width => "width",
        })
    }
}

/// Why a [`GenerateConfig`] cannot run on a model (named by the configuration's field names).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateConfigError {
    #[error("num_steps must be at least 1")]
    NoSteps,
    #[error("num_steps {value} is above the maximum of {max}")]
    TooManySteps { value: usize, max: usize },
    #[error("{side} {value} must be a positive multiple of 16")]
    SizeNotMultiple { side: ImageSide, value: usize },
    #[error("{side} {value} is above this model's maximum of {max_pixels} pixels")]
    SizeTooLarge {
        side: ImageSide,
        value: usize,
        max_pixels: usize,
    },
    #[error("cfg_weight must be a finite number (it is {value})")]
    CfgWeight { value: f32 },
}

impl GenerateConfig {
    /// Checks sizes and counts; the latent is 1/8 of the image and must split into 2×2 patches.
    pub fn validate(&self, max_latent: usize) -> Result<(), GenerateConfigError> {
        if self.num_steps == 0 {
            return Err(GenerateConfigError::NoSteps);
        }
        // The sampler allocates its schedule up front: bounded before anything is built.
        let max = crate::calib::manifest::MAX_NUM_STEPS;
        if self.num_steps > max {
            return Err(GenerateConfigError::TooManySteps {
                value: self.num_steps,
                max,
            });
        }
        for (side, value) in [
            (ImageSide::Height, self.height),
            (ImageSide::Width, self.width),
        ] {
            if value == 0 || !value.is_multiple_of(16) {
                return Err(GenerateConfigError::SizeNotMultiple { side, value });
            }
            if value / 8 > max_latent {
                return Err(GenerateConfigError::SizeTooLarge {
                    side,
                    value,
                    max_pixels: max_latent * 8,
                });
            }
        }
        if !self.cfg_weight.is_finite() {
            return Err(GenerateConfigError::CfgWeight {
                value: self.cfg_weight,
            });
        }
        Ok(())
    }
}

/// What the denoiser receives at one step (a calibration record holds exactly this).
pub struct StepInputs<'a> {
    pub step_index: usize,
    pub num_steps: usize,
    /// The latent before CFG duplication, `(1, h, w, 16)` float32.
    pub x: &'a Array,
    /// Model timestep `1000·sigma` (scalar, activation dtype).
    pub timestep: &'a Array,
    /// Scalar float32.
    pub sigma: &'a Array,
    /// `(2, 154, 4096)`: prompt, negative.
    pub conditioning: &'a Array,
    /// `(2, pooled_dim)`.
    pub pooled: &'a Array,
}

/// Whether to go on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimes {
    pub text_encoding: f64,
    pub denoising: f64,
    pub per_step: Vec<f64>,
    pub decoding: f64,
}

/// A finished generation.
pub struct Generated {
    /// `(width, height, RGB bytes)`.
    pub image: (u32, u32, Vec<u8>),
    /// The final latent from the sampler, `(1, h, w, 16)` float32 (before unscaling).
    pub latent: Array,
    pub times: StageTimes,
}

impl Generated {
    /// Writes the final latent as the VAE decoder receives it (unscaled, `(1, h, w, 16)`
    /// float32) as a `.npy` file, atomically (`sd3lab generate --latent-out`).
    pub fn write_decoder_latent(
        &self,
        path: &std::path::Path,
        vae: &super::config::VaeDecoderConfig,
    ) -> Result<(), super::tensor_io::TensorIoError> {
        let z = super::vae::unscale_latent(&self.latent, vae)?.as_dtype(Dtype::Float32)?;
        super::tensor_io::write_npy(path, &z)
    }
}

/// A loaded SD3 pipeline. Owns MLX arrays: keep it on one thread (the MLX worker).
pub struct Pipeline {
    pub files: ModelFiles,
    pub config: Sd3Config,
    pub dtype: Dtype,
    pub tokenizer_l: ClipTokenizer,
    pub tokenizer_g: ClipTokenizer,
    pub clip_l: ClipTextModel,
    pub clip_g: ClipTextModel,
    pub mmdit: Mmdit,
    /// Per step bucket (early, mid, late) MMDiTs, when a plan quantizes buckets differently;
    /// they share every array they have in common.
    pub bucket_mmdits: Option<Vec<Mmdit>>,
    pub vae: VaeDecoder,
    pub load_seconds: f64,
}

impl Pipeline {
    /// Loads every part in `dtype`, strictly (any missing, unexpected or misshapen tensor is an
    /// error naming it).
    pub fn load(files: &ModelFiles, dtype: Dtype) -> Result<Self, PipelineError> {
        let start = Instant::now();
        // One (lazy) read of the checkpoint serves the configuration, the MMDiT and the VAE.
        let raw = super::weights::load_safetensors(&files.checkpoint)?;
        super::weights::check_checkpoint_keys(&files.checkpoint, &raw)?;
        let (mmdit_cfg, vae_cfg) = infer_config_from(&files.checkpoint, &raw)?;
        let tokenizer_l = ClipTokenizer::load(&files.tokenizer_l, Padding::Eos)?;
        let tokenizer_g = ClipTokenizer::load(&files.tokenizer_g, Padding::Zero)?;
        let clip_l = load_clip(&files.clip_l, dtype)?;
        let clip_g = load_clip(&files.clip_g, dtype)?;
        check_token_ids(&tokenizer_l, &files.tokenizer_l, &clip_l, &files.clip_l)?;
        check_token_ids(&tokenizer_g, &files.tokenizer_g, &clip_g, &files.clip_g)?;
        let pooled = clip_l.config.pooled_dim() + clip_g.config.pooled_dim();
        if pooled != mmdit_cfg.pooled_dim {
            return Err(PipelineError::PooledWidth {
                checkpoint: files.checkpoint.clone(),
                pooled,
                expected: mmdit_cfg.pooled_dim,
            });
        }
        let width = clip_l.config.width + clip_g.config.width;
        if width > mmdit_cfg.context_dim {
            return Err(PipelineError::ContextWidth {
                checkpoint: files.checkpoint.clone(),
                width,
                context: mmdit_cfg.context_dim,
            });
        }
        let mmdit = mmdit_from_tensors(&files.checkpoint, &raw, &mmdit_cfg, dtype)?;
        let vae = vae_decoder_from_tensors(&files.checkpoint, &raw, &vae_cfg, dtype)?;
        drop(raw);
        let config = Sd3Config {
            mmdit: mmdit_cfg,
            clip_l: clip_l.config.clone(),
            clip_g: clip_g.config.clone(),
            vae: vae_cfg,
        };
        let pipeline = Self {
            files: files.clone(),
            config,
            dtype,
            tokenizer_l,
            tokenizer_g,
            clip_l,
            clip_g,
            mmdit,
            bucket_mmdits: None,
            vae,
            load_seconds: 0.0,
        };
        // Read every tensor now (MLX loads lazily), so that load time is load time and the
        // first step is not slowed down by disk reads. One part at a time bounds the peak.
        for part in [
            pipeline.clip_l.arrays(),
            pipeline.clip_g.arrays(),
            pipeline.mmdit.arrays(),
            pipeline.vae.arrays(),
        ] {
            mlx_rs::transforms::eval(part)?;
        }
        Ok(Self {
            load_seconds: start.elapsed().as_secs_f64(),
            ..pipeline
        })
    }

    /// Bytes held by the parameters, per part: (clip_l, clip_g, mmdit, vae).
    pub fn weight_bytes(&self) -> [usize; 4] {
        let sum = |v: Vec<&Array>| v.iter().map(|a| a.nbytes()).sum();
        [
            sum(self.clip_l.arrays()),
            sum(self.clip_g.arrays()),
            sum(self.mmdit.arrays()),
            sum(self.vae.arrays()),
        ]
    }

    fn ids(tok: &ClipTokenizer, prompt: &str, negative: &str) -> Array {
        let rows = tok.batch(prompt, Some(negative));
        let flat: Vec<i32> = rows.iter().flatten().map(|&t| t as i32).collect();
        Array::from_slice(&flat, &[rows.len() as i32, rows[0].len() as i32])
    }

    /// `(conditioning (2, 154, 4096), pooled (2, L+G))` for [prompt, negative].
    pub fn encode_text(&self, prompt: &str, negative: &str) -> MlxResult<(Array, Array)> {
        let l = self
            .clip_l
            .forward(&Self::ids(&self.tokenizer_l, prompt, negative))?;
        let g = self
            .clip_g
            .forward(&Self::ids(&self.tokenizer_g, prompt, negative))?;
        let cond = mlx_rs::ops::concatenate(&[&l.penultimate, &g.penultimate], -1)?;
        let s = cond.shape().to_vec();
        let pad = self.config.mmdit.context_dim as i32 - s[2];
        let zeros = mlx_rs::ops::zeros::<f32>(&[s[0], s[1], pad])?;
        let cond = mlx_rs::ops::concatenate(&[cond.clone(), zeros], -1)?;
        // The 77 all-zero "T5" tokens of the no-T5 variant.
        let t5 = mlx_rs::ops::zeros_like(&cond)?;
        let cond = mlx_rs::ops::concatenate(&[cond, t5], 1)?;
        let pooled = mlx_rs::ops::concatenate(&[&l.pooled, &g.pooled], -1)?;
        Ok((cond.as_dtype(self.dtype)?, pooled.as_dtype(self.dtype)?))
    }

    /// Euler sampling with CFG. Returns the final latent, or `None` when `on_step` cancelled.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        conditioning: &Array,
        pooled: &Array,
        seed: u32,
        num_steps: usize,
        cfg_weight: f32,
        latent_hw: (usize, usize),
        times: &mut Vec<f64>,
        on_step: &mut dyn FnMut(&StepInputs) -> Flow,
    ) -> MlxResult<Option<Array>> {
        let c = self.config.mmdit.latent_channels;
        let noise = sampler::initial_noise(seed, latent_hw.0, latent_hw.1, c)?;
        let sigmas = sampler::sigmas(num_steps)?;
        sigmas.eval()?;
        let sig: Vec<Array> = sigmas
            .split_equal(num_steps as i32 + 1, 0)?
            .into_iter()
            .map(|s| s.reshape(&[]))
            .collect::<MlxResult<_>>()?;
        let ts = sampler::timesteps(&sigmas, self.dtype)?;
        let ts: Vec<Array> = ts
            .split_equal(num_steps as i32 + 1, 0)?
            .into_iter()
            .map(|s| s.reshape(&[]))
            .collect::<MlxResult<_>>()?;
        let mut x = sampler::noise_scaling(&sig[0], &noise)?;
        for i in 0..num_steps {
            let start = Instant::now();
            x.eval()?;
            if on_step(&StepInputs {
                step_index: i,
                num_steps,
                x: &x,
                timestep: &ts[i],
                sigma: &sig[i],
                conditioning,
                pooled,
            }) == Flow::Cancel
            {
                return Ok(None);
            }
            let mmdit = self.mmdit_for_step(i, num_steps);
            let m = mmdit.modulation(pooled, &ts[i])?;
            let x_batch = mlx_rs::ops::concatenate(&[&x, &x], 0)?.as_dtype(self.dtype)?;
            let out = mmdit.forward(&x_batch, conditioning, &m)?;
            let denoised = sampler::guided_denoised(&x_batch, &out, &sig[i], cfg_weight)?;
            x = sampler::euler_step(&x, &denoised, &sig[i], &sig[i + 1])?;
            x.eval()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(Some(x))
    }

    /// The MMDiT that denoises step `step` of `num_steps` (per-bucket plans switch models).
    pub fn mmdit_for_step(&self, step: usize, num_steps: usize) -> &Mmdit {
        let bucket = crate::calib::Bucket::of(step, num_steps) as usize;
        self.bucket_mmdits
            .as_ref()
            .and_then(|v| v.get(bucket))
            .unwrap_or(&self.mmdit)
    }

    /// Sampler latent → image in [0, 1], `(1, H, W, 3)`.
    pub fn decode(&self, latent: &Array) -> MlxResult<Array> {
        self.vae.decode_latent(&latent.as_dtype(self.dtype)?)
    }

    /// The whole pipeline. `None` when cancelled.
    pub fn generate(
        &self,
        cfg: &GenerateConfig,
        on_step: &mut dyn FnMut(&StepInputs) -> Flow,
    ) -> Result<Option<Generated>, PipelineError> {
        run_generation(Held::Shared(self), cfg, on_step)
    }

    /// One image, releasing each model once it is no longer needed, as DiffusionKit's
    /// `generate_image` does in its default `low_memory_mode`: the text encoders after the
    /// prompt is encoded, the MMDiT(s) after denoising (and MLX's buffer cache with them, so the
    /// memory really goes back). The decoder's peak then no longer stacks on every weight.
    /// Consumes the pipeline: for one-shot use (`sd3lab generate`).
    pub fn generate_releasing(
        self,
        cfg: &GenerateConfig,
        on_step: &mut dyn FnMut(&StepInputs) -> Flow,
    ) -> Result<Option<Generated>, PipelineError> {
        run_generation(Held::Owned(Box::new(self)), cfg, on_step)
    }
}

/// A pipeline borrowed (kept whole) or owned (its models released as generation goes on).
enum Held<'a> {
    Shared(&'a Pipeline),
    Owned(Box<Pipeline>),
}

impl Held<'_> {
    fn pipe(&self) -> &Pipeline {
        match self {
            Held::Shared(p) => p,
            Held::Owned(p) => p,
        }
    }

    /// Drops the text encoders (owned pipelines only) and returns MLX's cached buffers.
    fn release_text_encoders(&mut self) -> MlxResult<()> {
        if let Held::Owned(p) = self {
            p.clip_l.release();
            p.clip_g.release();
            mlx_rs::memory::clear_cache()?;
        }
        Ok(())
    }

    /// Drops the MMDiT(s) (owned pipelines only) and returns MLX's cached buffers.
    fn release_mmdit(&mut self) -> MlxResult<()> {
        if let Held::Owned(p) = self {
            p.mmdit.release();
            p.bucket_mmdits = None;
            mlx_rs::memory::clear_cache()?;
        }
        Ok(())
    }
}

/// Prompt → image: text encoding, denoising, decoding, each timed.
fn run_generation(
    mut held: Held<'_>,
    cfg: &GenerateConfig,
    on_step: &mut dyn FnMut(&StepInputs) -> Flow,
) -> Result<Option<Generated>, PipelineError> {
    cfg.validate(held.pipe().config.mmdit.max_latent_resolution)?;
    let mut times = StageTimes::default();
    let t0 = Instant::now();
    let (cond, pooled) = held.pipe().encode_text(&cfg.prompt, &cfg.negative_prompt)?;
    mlx_rs::transforms::eval([&cond, &pooled])?;
    held.release_text_encoders()?;
    times.text_encoding = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let latent_hw = (cfg.height / 8, cfg.width / 8);
    let Some(latent) = held.pipe().denoise(
        &cond,
        &pooled,
        cfg.seed,
        cfg.num_steps,
        cfg.cfg_weight,
        latent_hw,
        &mut times.per_step,
        on_step,
    )?
    else {
        return Ok(None);
    };
    times.denoising = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    drop((cond, pooled));
    held.release_mmdit()?;
    let image = held.pipe().decode(&latent)?;
    let mut images = to_u8_images(&image)?;
    times.decoding = t2.elapsed().as_secs_f64();
    Ok(Some(Generated {
        image: images.remove(0),
        latent,
        times,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_returns_the_typed_problem() {
        let cfg = |f: fn(&mut GenerateConfig)| {
            let mut c = GenerateConfig::default();
            f(&mut c);
            c.validate(64)
        };
        assert_eq!(cfg(|_| {}), Ok(()));
        assert_eq!(cfg(|c| c.num_steps = 0), Err(GenerateConfigError::NoSteps));
        assert_eq!(
            cfg(|c| c.num_steps = 10_001),
            Err(GenerateConfigError::TooManySteps {
                value: 10_001,
                max: 10_000
            })
        );
        assert_eq!(cfg(|c| c.num_steps = 10_000), Ok(()));
        let err = cfg(|c| c.height = 17).unwrap_err();
        assert_eq!(
            err,
            GenerateConfigError::SizeNotMultiple {
                side: ImageSide::Height,
                value: 17
            }
        );
        assert_eq!(
            err.to_string(),
            "height 17 must be a positive multiple of 16"
        );
        assert_eq!(
            cfg(|c| c.width = 528),
            Err(GenerateConfigError::SizeTooLarge {
                side: ImageSide::Width,
                value: 528,
                max_pixels: 512
            })
        );
        assert!(matches!(
            cfg(|c| c.cfg_weight = f32::INFINITY),
            Err(GenerateConfigError::CfgWeight { .. })
        ));
    }
}

//! Training the demo model with MLX: a model's parameters as one list of named arrays (the
//! model is rebuilt from them inside the traced function, so MLX differentiates the very code
//! that generates), Adam, batches of the shapes data, and the VAE's objective (reconstruction
//! plus a small KL term towards a unit Gaussian latent).

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};

use super::shapes::{Split, item};
use crate::model::config::{MmditConfig, VaeDecoderConfig};
use crate::model::cpu_kernels::PlainMlx;
use crate::model::mmdit::{Mmdit, mmdit_from_tensors};
use crate::model::nn::{MlxResult, scalar};
use crate::model::vae::{
    VaeDecoder, VaeEncoder, VaeEncoderConfig, vae_decoder_from_tensors, vae_encoder_from_tensors,
};
use crate::model::weights::{MMDIT_PREFIX, VAE_DECODER_PREFIX, VAE_ENCODER_PREFIX, WeightsError};

/// A model's parameters, by the names its loader takes, in name order.
#[derive(Debug, Clone)]
pub struct Params {
    pub names: Vec<String>,
    pub arrays: Vec<Array>,
}

impl Params {
    pub fn from_map(map: HashMap<String, Array>) -> Self {
        let mut pairs: Vec<(String, Array)> = map.into_iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, arrays) = pairs.into_iter().unzip();
        Self { names, arrays }
    }

    /// The tensors of `raw` under any of `prefixes`, as float32 parameters.
    pub fn from_tensors(
        path: &Path,
        raw: &HashMap<String, Array>,
        prefixes: &[&str],
    ) -> Result<Self, WeightsError> {
        let mut map = HashMap::new();
        for (k, v) in raw
            .iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        {
            let v = v
                .as_dtype(Dtype::Float32)
                .map_err(|source| WeightsError::MlxTensor {
                    path: path.to_owned(),
                    key: k.clone(),
                    source,
                })?;
            map.insert(k.clone(), v);
        }
        Ok(Self::from_map(map))
    }

    /// These parameters' names with `arrays` (their values, or a transform's tracers), for a
    /// checkpoint loader.
    pub fn with(&self, arrays: &[Array]) -> HashMap<String, Array> {
        self.names
            .iter()
            .cloned()
            .zip(arrays.iter().cloned())
            .collect()
    }

    /// Parameters counted.
    pub fn count(&self) -> usize {
        self.arrays.iter().map(|a| a.size()).sum()
    }
}

/// The value of a scalar `loss` of the parameters and its gradient with respect to each.
pub fn loss_and_gradients(
    loss: impl FnMut(&[Array]) -> MlxResult<Array>,
    params: &[Array],
) -> MlxResult<(f32, Vec<Array>)> {
    // The project's CPU kernels evaluate their input and have no gradient.
    let _plain = PlainMlx::enter();
    let mut loss = loss;
    let f = move |p: &[Array]| -> MlxResult<Vec<Array>> { Ok(vec![loss(p)?]) };
    let (value, grads) = mlx_rs::transforms::fallible_vjp(f, params, &[scalar(1.0)])?;
    value[0].eval()?;
    Ok((value[0].item_exact::<f32>(), grads))
}

/// Adam (Kingma & Ba) with bias correction.
pub struct Adam {
    pub learning_rate: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// The largest global gradient norm an update uses (larger ones are scaled down to it).
    pub max_grad_norm: f32,
    m: Vec<Array>,
    v: Vec<Array>,
    steps: i32,
}

impl Adam {
    pub fn new(learning_rate: f32, params: &[Array]) -> MlxResult<Self> {
        let zeros = |p: &Array| mlx_rs::ops::zeros_like(p);
        Ok(Self {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            m: params.iter().map(zeros).collect::<MlxResult<_>>()?,
            v: params.iter().map(zeros).collect::<MlxResult<_>>()?,
            steps: 0,
        })
    }

    /// The first and second moments, in the parameters' order.
    pub fn moments(&self) -> (&[Array], &[Array]) {
        (&self.m, &self.v)
    }

    /// Continues from saved moments after `steps` updates.
    pub fn set_moments(&mut self, m: Vec<Array>, v: Vec<Array>, steps: i32) {
        self.m = m;
        self.v = v;
        self.steps = steps;
    }

    /// One update of `params` along `grads` (evaluated, so the graph does not grow).
    pub fn update(&mut self, params: &mut [Array], grads: &[Array]) -> MlxResult<()> {
        // Gradients whose global norm exceeds `max_grad_norm` are scaled down to it: one
        // unlucky batch cannot throw a run off course.
        let mut squares = scalar(0.0);
        for g in grads {
            squares = squares.add(g.square()?.sum(None)?)?;
        }
        squares.eval()?;
        let norm = squares.item_exact::<f32>().sqrt();
        let clip = if norm > self.max_grad_norm {
            self.max_grad_norm / norm
        } else {
            1.0
        };
        let clipped: Vec<Array>;
        let grads = if clip < 1.0 {
            clipped = grads
                .iter()
                .map(|g| g.multiply(scalar(clip)))
                .collect::<MlxResult<_>>()?;
            &clipped[..]
        } else {
            grads
        };
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.steps);
        let c2 = 1.0 - b2.powi(self.steps);
        let step = self.learning_rate * c2.sqrt() / c1;
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = m.multiply(scalar(b1))?.add(g.multiply(scalar(1.0 - b1))?)?;
            *v = v
                .multiply(scalar(b2))?
                .add(g.square()?.multiply(scalar(1.0 - b2))?)?;
            let delta = m.divide(v.sqrt()?.add(scalar(self.eps))?)?;
            *p = p.subtract(delta.multiply(scalar(step))?)?;
        }
        let mut all: Vec<&Array> = params.iter().collect();
        all.extend(self.m.iter());
        all.extend(self.v.iter());
        mlx_rs::transforms::eval(all)
    }
}

/// Items `start..start + n` of the training pictures drawn with `seed`, as an NHWC float32
/// batch in [-1, 1] (the VAE's input), with their captions.
pub fn picture_batch(seed: u32, start: u64, n: usize, side: usize) -> (Array, Vec<String>) {
    let mut data = Vec::with_capacity(n * side * side * 3);
    let mut captions = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (scene, placements) = item(seed, start + i, Split::Train);
        data.extend(scene.draw_at(&placements, side).into_iter().map(vae_input));
        captions.push(scene.caption());
    }
    let shape = [n as i32, side as i32, side as i32, 3];
    (Array::from_slice(&data, &shape), captions)
}

/// A pixel byte as the VAE takes it, in [-1, 1].
fn vae_input(byte: u8) -> f32 {
    byte as f32 / 127.5 - 1.0
}

/// Each `side`×`side` RGB picture (row-major, `u8`) encoded to its posterior mean by the VAE
/// of `checkpoint` (a published-layout file with the encoder) and decoded again, as the
/// pipeline decodes: the best any picture of the model can look, since every one goes through
/// this decoder.
pub fn reconstruct_pictures(
    checkpoint: &Path,
    pictures: &[Vec<u8>],
    side: usize,
) -> Result<Vec<Vec<u8>>, WeightsError> {
    let raw = crate::model::weights::load_safetensors(checkpoint)?;
    let (_, decoder) = crate::model::source::infer_config_from(checkpoint, &raw)?;
    let encoder = VaeEncoderConfig::for_decoder(&decoder);
    let encoder = vae_encoder_from_tensors(checkpoint, &raw, &encoder, Dtype::Float32)?;
    let decoder = vae_decoder_from_tensors(checkpoint, &raw, &decoder, Dtype::Float32)?;
    let mlx = |source| WeightsError::MlxTensor {
        path: checkpoint.to_owned(),
        key: "the VAE's reconstruction".into(),
        source,
    };
    let mut out = Vec::with_capacity(pictures.len());
    for picture in pictures {
        if picture.len() != side * side * 3 {
            return Err(WeightsError::Invalid {
                path: checkpoint.to_owned(),
                reason: format!(
                    "a picture of {} bytes is not {side}×{side} RGB",
                    picture.len()
                ),
            });
        }
        let x: Vec<f32> = picture.iter().copied().map(vae_input).collect();
        let x = Array::from_slice(&x, &[1, side as i32, side as i32, 3]);
        let images = encoder
            .moments(&x)
            .and_then(|(mean, _)| crate::model::vae::scale_latent(&mean, &decoder.config))
            .and_then(|latent| decoder.decode_latent(&latent))
            .and_then(|image| crate::model::vae::to_u8_images(&image))
            .map_err(mlx)?;
        out.extend(images.into_iter().map(|(_, _, bytes)| bytes));
    }
    Ok(out)
}

/// The VAE being trained: its two halves' sizes and their parameters under the checkpoint's
/// own names (`first_stage_model.encoder.*`, `first_stage_model.decoder.*`), so the trained
/// tensors are written back as they are and the published loading code builds the model.
pub struct VaeTrainer {
    pub encoder: VaeEncoderConfig,
    pub decoder: VaeDecoderConfig,
    pub params: Params,
    /// Weight of the KL term against the per-pixel squared error.
    pub kl_weight: f32,
}

impl VaeTrainer {
    /// Starts from a checkpoint's VAE tensors (the synthetic random initialisation, or a
    /// run's last checkpoint); other tensors are left out.
    pub fn from_tensors(
        path: &Path,
        raw: &HashMap<String, Array>,
        decoder: &VaeDecoderConfig,
    ) -> Result<Self, WeightsError> {
        let trainer = Self {
            encoder: VaeEncoderConfig::for_decoder(decoder),
            decoder: decoder.clone(),
            params: Params::from_tensors(path, raw, &[VAE_ENCODER_PREFIX, VAE_DECODER_PREFIX])?,
            kl_weight: 1e-4,
        };
        // Every tensor must be one the two halves take, of the right shape.
        trainer.halves(path, &trainer.params.arrays)?;
        Ok(trainer)
    }

    /// The two halves built from `arrays` (values or tracers) by the checkpoint loaders.
    fn halves(
        &self,
        path: &Path,
        arrays: &[Array],
    ) -> Result<(VaeEncoder, VaeDecoder), WeightsError> {
        let map = self.params.with(arrays);
        Ok((
            vae_encoder_from_tensors(path, &map, &self.encoder, Dtype::Float32)?,
            vae_decoder_from_tensors(path, &map, &self.decoder, Dtype::Float32)?,
        ))
    }

    /// The encoder with the current parameters.
    pub fn encoder_model(&self) -> Result<VaeEncoder, WeightsError> {
        Ok(self
            .halves(Path::new("the VAE being trained"), &self.params.arrays)?
            .0)
    }

    /// The objective on a batch: mean squared reconstruction error of the decoded posterior
    /// sample (`noise` supplies the sample) plus `kl_weight` × the mean KL divergence per latent
    /// value from N(0, 1).
    pub fn loss(&self, arrays: &[Array], images: &Array, noise: &Array) -> MlxResult<Array> {
        let (encoder, decoder) = self
            .halves(Path::new("the VAE being trained"), arrays)
            .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
        let (mean, logvar) = encoder.moments(images)?;
        let z = mean.add(logvar.multiply(scalar(0.5))?.exp()?.multiply(noise)?)?;
        let recon = decoder.forward(&z)?;
        let mse = recon.subtract(images)?.square()?.mean(None)?;
        // KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²).
        let kl = mean
            .square()?
            .add(logvar.exp()?)?
            .subtract(scalar(1.0))?
            .subtract(&logvar)?
            .multiply(scalar(0.5))?
            .mean(None)?;
        mse.add(kl.multiply(scalar(self.kl_weight))?)
    }

    /// Rescales the latent space so that the sampler's latents of `images`
    /// (`(mean − shift) · scaling_factor`) have unit standard deviation, as SD3's constants
    /// give for its own VAE: the encoder's mean channels are multiplied by `a`, its log-variance
    /// channels shifted by `2 ln a` and the decoder's first convolution divided by `a`, which
    /// leaves every reconstruction as it was. Returns `a`.
    pub fn normalise_latents(&mut self, images: &Array) -> Result<f32, WeightsError> {
        let mlx = |source| WeightsError::MlxTensor {
            path: "the VAE being trained".into(),
            key: "latent scale".into(),
            source,
        };
        let encoder = self.encoder_model()?;
        let (mean, _) = encoder.moments(images).map_err(mlx)?;
        let scaled = crate::model::vae::scale_latent(&mean, &self.decoder).map_err(mlx)?;
        let std = scaled
            .subtract(scaled.mean(None).map_err(mlx)?)
            .and_then(|d| d.square())
            .and_then(|d| d.mean(None))
            .and_then(|v| v.sqrt())
            .map_err(mlx)?;
        std.eval().map_err(mlx)?;
        let a = 1.0 / std.item_exact::<f32>();
        let position = |name: &str| {
            self.params
                .names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| WeightsError::Missing {
                    path: "the VAE being trained".into(),
                    key: name.to_owned(),
                })
        };
        // Per output channel of the encoder: the mean's ×a, the log-variance's +2 ln a.
        let c = self.encoder.latent_channels;
        let mul: Vec<f32> = [vec![a; c], vec![1.0; c]].concat();
        let add: Vec<f32> = [vec![0.0; c], vec![2.0 * a.ln(); c]].concat();
        let (mul, add) = (
            Array::from_slice(&mul, &[2 * c as i32]),
            Array::from_slice(&add, &[2 * c as i32]),
        );
        let w = position(&format!("{VAE_ENCODER_PREFIX}conv_out.weight"))?;
        let b = position(&format!("{VAE_ENCODER_PREFIX}conv_out.bias"))?;
        let d = position(&format!("{VAE_DECODER_PREFIX}conv_in.weight"))?;
        let arrays = &mut self.params.arrays;
        arrays[w] = (arrays[w].multiply(mul.reshape(&[-1, 1, 1, 1]).map_err(mlx)?)).map_err(mlx)?;
        arrays[b] = arrays[b]
            .multiply(&mul)
            .and_then(|x| x.add(&add))
            .map_err(mlx)?;
        arrays[d] = arrays[d].multiply(scalar(1.0 / a)).map_err(mlx)?;
        mlx_rs::transforms::eval([&arrays[w], &arrays[b], &arrays[d]]).map_err(mlx)?;
        Ok(a)
    }

    /// One optimisation step on `images`; returns the loss before it.
    pub fn step(&mut self, adam: &mut Adam, images: &Array, noise_seed: u64) -> MlxResult<f32> {
        let s = images.shape();
        let levels = self.encoder.block_out_channels.len() as u32 - 1;
        let (h, w) = (s[1] >> levels, s[2] >> levels);
        let noise = mlx_rs::random::normal::<f32>(
            &[s[0], h, w, self.encoder.latent_channels as i32],
            None,
            None,
            &mlx_rs::random::key(noise_seed)?,
        )?;
        let (value, grads) =
            loss_and_gradients(|p| self.loss(p, images, &noise), &self.params.arrays)?;
        adam.update(&mut self.params.arrays, &grads)?;
        Ok(value)
    }
}

/// The MMDiT being trained with SD3's rectified-flow objective, its parameters under the
/// checkpoint's names (`model.diffusion_model.*`).
pub struct MmditTrainer {
    pub config: MmditConfig,
    pub params: Params,
}

/// One batch of the rectified-flow objective: clean latents `x0` `(B, h, w, 16)` as the sampler
/// sees them (scaled), their text `context` `(B, T, L+G)` (the pipeline's context without its
/// zero channels: the CLIP-L and CLIP-G features, zero for the "T5" tokens) and `pooled` `(B, P)`, the noise
/// levels `sigma` `(B,)` in (0, 1] and the noise `(B, h, w, 16)`.
pub struct FlowBatch {
    pub x0: Array,
    pub context: Array,
    pub pooled: Array,
    pub sigma: Array,
    pub noise: Array,
}

impl MmditTrainer {
    /// Starts from a checkpoint's MMDiT tensors; other tensors are left out.
    pub fn from_tensors(
        path: &Path,
        raw: &HashMap<String, Array>,
        config: &MmditConfig,
    ) -> Result<Self, WeightsError> {
        let trainer = Self {
            config: config.clone(),
            params: Params::from_tensors(path, raw, &[MMDIT_PREFIX])?,
        };
        trainer.model(path, &trainer.params.arrays)?;
        Ok(trainer)
    }

    /// The MMDiT built from `arrays` (values or tracers) by the checkpoint loader.
    fn model(&self, path: &Path, arrays: &[Array]) -> Result<Mmdit, WeightsError> {
        mmdit_from_tensors(
            path,
            &self.params.with(arrays),
            &self.config,
            Dtype::Float32,
        )
    }

    /// SD3's objective: the model at `x = σ·noise + (1 − σ)·x0` and timestep `1000·σ` predicts
    /// the velocity `noise − x0` (the sampler's `denoised = x − out·σ` then gives `x0`); the
    /// mean squared error of that prediction.
    pub fn loss(&self, arrays: &[Array], b: &FlowBatch) -> MlxResult<Array> {
        let model = self
            .model(Path::new("the MMDiT being trained"), arrays)
            .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
        let sigma = b.sigma.reshape(&[-1, 1, 1, 1])?;
        let x = sigma
            .multiply(&b.noise)?
            .add(scalar(1.0).subtract(&sigma)?.multiply(&b.x0)?)?;
        // The pipeline's context is the CLIP channels then zeros up to 4096; the zeros meet
        // the embedder's other columns in products of zero and give them no gradient, so the
        // embedder's first columns alone make the same text tokens (the cost of the full
        // product would be half the step's).
        let width = b.context.shape()[2];
        let embedder = &model.context_embedder;
        let mut txt = b
            .context
            .matmul(embedder.weight.index((.., ..width)).transpose()?)?;
        if let Some(bias) = &embedder.bias {
            txt = txt.add(bias)?;
        }
        let modulation = model.modulation(&b.pooled, &b.sigma.multiply(scalar(1000.0))?)?;
        let out = model.forward_from(
            0,
            model.embed_image(&x)?,
            txt.expand_dims(2)?,
            &modulation,
            (x.shape()[1], x.shape()[2]),
        )?;
        out.subtract(b.noise.subtract(&b.x0)?)?.square()?.mean(None)
    }

    /// One optimisation step on a batch; returns the loss before it.
    pub fn step(&mut self, adam: &mut Adam, batch: &FlowBatch) -> MlxResult<f32> {
        let (value, grads) = loss_and_gradients(|p| self.loss(p, batch), &self.params.arrays)?;
        adam.update(&mut self.params.arrays, &grads)?;
        Ok(value)
    }
}

/// The MMDiT's starting point for training, from the synthetic random checkpoint `raw`: DiT's
/// adaLN-Zero (every modulation Linear and the final Linear zero, so each block starts as the
/// identity and the model as the zero velocity, which trains faster and steadier than random
/// gates) and a 2-D sine-cosine position table (the construction SD3 and MAE use), so the tokens know their place
/// from the first step.
pub fn init_mmdit_for_training(
    raw: &mut HashMap<String, Array>,
    config: &MmditConfig,
) -> MlxResult<()> {
    for (name, value) in raw.iter_mut() {
        let Some(key) = name.strip_prefix(MMDIT_PREFIX) else {
            continue;
        };
        if key.contains("adaLN_modulation") || key.starts_with("final_layer.linear") {
            *value = mlx_rs::ops::zeros_like(&*value)?;
        }
    }
    let pos = format!("{MMDIT_PREFIX}pos_embed");
    if let Some(table) = raw.get_mut(&pos) {
        let max = config.max_latent_resolution;
        let shape = table.shape().to_vec();
        *table = Array::from_slice(&sincos_table(max, config.hidden_size), &shape);
    }
    Ok(())
}

/// The 2-D sine-cosine position table `(max², hidden)`, row-major over the `max × max` grid:
/// the first half of each vector encodes the row, the second the column, each as
/// `[sin(p·ω_k), cos(p·ω_k)]` with `ω_k = 10000^(−k/(d/4))` (MAE's construction, rows first).
pub fn sincos_table(max: usize, hidden: usize) -> Vec<f32> {
    let quarter = hidden / 4;
    let mut out = Vec::with_capacity(max * max * hidden);
    for row in 0..max {
        for col in 0..max {
            for p in [row, col] {
                for f in [f64::sin, f64::cos] {
                    for k in 0..quarter {
                        let omega = 10000f64.powf(-(k as f64) / quarter as f64);
                        out.push(f(p as f64 * omega) as f32);
                    }
                }
            }
            out.resize(out.len() + hidden - 4 * quarter, 0.0);
        }
    }
    out
}

/// The learning rate at step `done` of `total`: a linear warm-up over the first 5 % (at most
/// 200 steps), then `base` until the last quarter, which decays linearly to a tenth.
pub fn learning_rate(base: f32, done: usize, total: usize) -> f32 {
    let warm = (total / 20).clamp(1, 200);
    let ramp = ((done + 1) as f32 / warm as f32).min(1.0);
    let decay_from = total - total / 4;
    let decay = if done < decay_from || total == decay_from {
        1.0
    } else {
        1.0 - 0.9 * (done - decay_from) as f32 / (total - decay_from) as f32
    };
    base * ramp * decay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_vae() -> VaeTrainer {
        let dir = tempfile::tempdir().unwrap();
        let decoder = crate::model::Preset::Tiny.config(None).vae;
        let mut specs = crate::model::synth::vae_decoder_specs(&decoder);
        specs.extend(crate::model::synth::vae_encoder_specs(
            &VaeEncoderConfig::for_decoder(&decoder),
        ));
        let path = dir.path().join("vae.safetensors");
        crate::model::synth::write_safetensors(&path, &specs, 1).unwrap();
        let raw = crate::model::weights::load_safetensors(&path).unwrap();
        VaeTrainer::from_tensors(&path, &raw, &decoder).unwrap()
    }

    #[test]
    fn adam_follows_the_gradient_of_a_quadratic() {
        // f(p) = Σ (p − 3)²: Adam's steps have about the learning rate's size and go to 3.
        let mut params = vec![Array::from_slice(&[0.0f32, 10.0], &[2])];
        let mut adam = Adam::new(0.5, &params).unwrap();
        let mut first = None;
        for _ in 0..200 {
            let (value, grads) =
                loss_and_gradients(|p| p[0].subtract(scalar(3.0))?.square()?.sum(None), &params)
                    .unwrap();
            first.get_or_insert(value);
            adam.update(&mut params, &grads).unwrap();
        }
        assert_eq!(first, Some(9.0 + 49.0));
        let p: Vec<f32> = params[0].as_slice().to_vec();
        assert!(p.iter().all(|v| (v - 3.0).abs() < 0.05), "{p:?}");
    }

    #[test]
    fn the_vae_learns_to_reconstruct_the_pictures() {
        let mut vae = tiny_vae();
        assert!(vae.params.count() > 10_000);
        let mut adam = Adam::new(2e-3, &vae.params.arrays).unwrap();
        let (images, captions) = picture_batch(3, 0, 8, 32);
        assert_eq!(captions.len(), 8);
        let mut losses = Vec::new();
        for step in 0..60 {
            losses.push(vae.step(&mut adam, &images, step).unwrap());
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("VAE loss over 60 steps: {first:.4} → {last:.4}");
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(last < 0.5 * first, "{first} → {last}: {losses:?}");
    }

    /// The tiny preset's random MMDiT tensors.
    fn tiny_mmdit_tensors() -> (MmditConfig, HashMap<String, Array>) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::model::Preset::Tiny.config(None).mmdit;
        let path = dir.path().join("mmdit.safetensors");
        crate::model::synth::write_safetensors(
            &path,
            &crate::model::synth::mmdit_specs(&config),
            2,
        )
        .unwrap();
        (
            config,
            crate::model::weights::load_safetensors(&path).unwrap(),
        )
    }

    #[test]
    fn the_trainers_loss_is_the_pipelines_denoiser_on_the_padded_context() {
        let (config, raw) = tiny_mmdit_tensors();
        let path = Path::new("mmdit");
        let mmdit = MmditTrainer::from_tensors(path, &raw, &config).unwrap();
        let key = |k| mlx_rs::random::key(k).unwrap();
        let normal =
            |shape: &[i32], k| mlx_rs::random::normal::<f32>(shape, None, None, &key(k)).unwrap();
        let b = 2;
        let clip = normal(&[b, 77, 80], 2);
        let batch = FlowBatch {
            x0: normal(&[b, 8, 8, 16], 1),
            context: mlx_rs::ops::concatenate(
                &[&clip, &mlx_rs::ops::zeros_like(&clip).unwrap()],
                1,
            )
            .unwrap(),
            pooled: normal(&[b, config.pooled_dim as i32], 3),
            sigma: Array::from_slice(&[0.3f32, 0.8], &[b]),
            noise: normal(&[b, 8, 8, 16], 4),
        };
        let loss = mmdit.loss(&mmdit.params.arrays, &batch).unwrap();
        // The same objective through the sampler's own call on the pipeline's (B, 154, 4096).
        let padded = mlx_rs::ops::concatenate(
            &[
                &batch.context,
                &mlx_rs::ops::zeros::<f32>(&[b, 154, 4096 - 80]).unwrap(),
            ],
            -1,
        )
        .unwrap();
        let model = mmdit_from_tensors(path, &raw, &config, Dtype::Float32).unwrap();
        let sigma = batch.sigma.reshape(&[-1, 1, 1, 1]).unwrap();
        let x = sigma
            .multiply(&batch.noise)
            .unwrap()
            .add(
                scalar(1.0)
                    .subtract(&sigma)
                    .unwrap()
                    .multiply(&batch.x0)
                    .unwrap(),
            )
            .unwrap();
        let t = batch.sigma.multiply(scalar(1000.0)).unwrap();
        let out = model.denoise(&x, &padded, &batch.pooled, &t).unwrap();
        let expected = out
            .subtract(batch.noise.subtract(&batch.x0).unwrap())
            .unwrap()
            .square()
            .unwrap()
            .mean(None)
            .unwrap();
        let (loss, expected) = (loss.item_exact::<f32>(), expected.item_exact::<f32>());
        assert!(
            (loss - expected).abs() <= 1e-5 * expected,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn a_model_initialised_for_training_predicts_zero_and_knows_places() {
        let (config, mut raw) = tiny_mmdit_tensors();
        init_mmdit_for_training(&mut raw, &config).unwrap();
        let model = mmdit_from_tensors(Path::new("mmdit"), &raw, &config, Dtype::Float32).unwrap();
        let key = |k| mlx_rs::random::key(k).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[1, 8, 8, 16], None, None, &key(1)).unwrap();
        let context = mlx_rs::ops::zeros::<f32>(&[1, 154, 4096]).unwrap();
        let pooled =
            mlx_rs::random::normal::<f32>(&[1, config.pooled_dim as i32], None, None, &key(2))
                .unwrap();
        let out = model
            .denoise(&x, &context, &pooled, &Array::from_slice(&[500.0f32], &[1]))
            .unwrap();
        assert_eq!(out.shape(), &[1, 8, 8, 16]);
        assert_eq!(
            out.abs().unwrap().max(None).unwrap().item_exact::<f32>(),
            0.0
        );
        // The position table: row 0, column 0 is sin 0 = 0 and cos 0 = 1 in each half; rows
        // and columns differ from each other.
        let (max, h) = (config.max_latent_resolution, config.hidden_size);
        let table = sincos_table(max, h);
        assert_eq!(table.len(), max * max * h);
        let q = h / 4;
        assert!(table[..q].iter().all(|v| *v == 0.0));
        assert!(table[q..2 * q].iter().all(|v| *v == 1.0));
        let at = |row: usize, col: usize| &table[(row * max + col) * h..(row * max + col + 1) * h];
        assert_ne!(at(0, 1), at(1, 0));
        assert_eq!(at(0, 1)[..2 * q], at(0, 5)[..2 * q]); // same row, same first half
        assert_ne!(at(0, 1)[2 * q..], at(0, 5)[2 * q..]);
    }

    #[test]
    fn the_learning_rate_warms_up_holds_and_decays_to_a_tenth() {
        let lr = |done| learning_rate(1.0, done, 4000);
        assert!(lr(0) < 0.01);
        assert!(lr(100) < lr(150));
        assert_eq!(lr(199), 1.0);
        assert_eq!(lr(2999), 1.0);
        assert!(lr(3500) < lr(3100) && lr(3100) < 1.0);
        assert!((lr(3999) - 0.1).abs() < 1e-3, "{}", lr(3999));
        // A run of one step is not a division by zero.
        assert!(learning_rate(1.0, 0, 1).is_finite());
    }

    #[test]
    fn normalising_the_latents_keeps_the_reconstructions() {
        let mut vae = tiny_vae();
        let (images, _) = picture_batch(5, 0, 4, 32);
        let path = Path::new("vae");
        let recon = |vae: &VaeTrainer| {
            let (encoder, decoder) = vae.halves(path, &vae.params.arrays).unwrap();
            let (mean, logvar) = encoder.moments(&images).unwrap();
            let out = decoder.forward(&mean).unwrap();
            (out, mean, logvar)
        };
        let (before, mean_before, logvar_before) = recon(&vae);
        let a = vae.normalise_latents(&images).unwrap();
        assert!(a.is_finite() && a > 0.0 && a != 1.0, "{a}");
        let (after, mean_after, logvar_after) = recon(&vae);
        let close = |x: &Array, y: &Array, tol: f32| {
            let d = x.subtract(y).unwrap().abs().unwrap().max(None).unwrap();
            let m = y.abs().unwrap().max(None).unwrap();
            assert!(
                d.item_exact::<f32>() <= tol * m.item_exact::<f32>().max(1.0),
                "{d:?}"
            );
        };
        close(&after, &before, 1e-4);
        close(&mean_after, &mean_before.multiply(scalar(a)).unwrap(), 1e-5);
        close(
            &logvar_after,
            &logvar_before.add(scalar(2.0 * a.ln())).unwrap(),
            1e-5,
        );
        let scaled = crate::model::vae::scale_latent(&mean_after, &vae.decoder).unwrap();
        let centred = scaled.subtract(scaled.mean(None).unwrap()).unwrap();
        let std = centred
            .square()
            .unwrap()
            .mean(None)
            .unwrap()
            .sqrt()
            .unwrap();
        assert!((std.item_exact::<f32>() - 1.0).abs() < 1e-3, "{std:?}");
    }

    #[test]
    fn the_mmdit_learns_the_velocity_of_a_batch() {
        let (config, raw) = tiny_mmdit_tensors();
        let path = Path::new("mmdit");
        let mut mmdit = MmditTrainer::from_tensors(path, &raw, &config).unwrap();
        let key = |k| mlx_rs::random::key(k).unwrap();
        let normal =
            |shape: &[i32], k| mlx_rs::random::normal::<f32>(shape, None, None, &key(k)).unwrap();
        let b = 4;
        let batch = FlowBatch {
            x0: normal(&[b, 8, 8, 16], 1),
            context: normal(&[b, 154, 80], 2),
            pooled: normal(&[b, config.pooled_dim as i32], 3),
            sigma: Array::from_slice(&[0.2f32, 0.4, 0.6, 0.9], &[b]),
            noise: normal(&[b, 8, 8, 16], 4),
        };
        let mut adam = Adam::new(1e-3, &mmdit.params.arrays).unwrap();
        let losses: Vec<f32> = (0..40)
            .map(|_| mmdit.step(&mut adam, &batch).unwrap())
            .collect();
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("MMDiT loss over 40 steps: {first:.4} → {last:.4}");
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(last < 0.6 * first, "{first} → {last}: {losses:?}");
    }
}

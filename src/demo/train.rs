//! Training the demo model with MLX: a model's parameters as one list of named arrays (the
//! model is rebuilt from them inside the traced function, so MLX differentiates the very code
//! that generates), Adam, batches of the shapes data, and the VAE's objective (reconstruction
//! plus a small KL term towards a unit Gaussian latent).

use std::collections::HashMap;
use std::path::Path;

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
        data.extend(
            scene
                .draw_at(&placements, side)
                .into_iter()
                .map(|b| b as f32 / 127.5 - 1.0),
        );
        captions.push(scene.caption());
    }
    let shape = [n as i32, side as i32, side as i32, 3];
    (Array::from_slice(&data, &shape), captions)
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
/// sees them (scaled), their text `context` `(B, T, 4096)` and `pooled` `(B, P)`, the noise
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
        let out = model.denoise(
            &x,
            &b.context,
            &b.pooled,
            &b.sigma.multiply(scalar(1000.0))?,
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

    #[test]
    fn the_mmdit_learns_the_velocity_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::model::Preset::Tiny.config(None).mmdit;
        let path = dir.path().join("mmdit.safetensors");
        crate::model::synth::write_safetensors(
            &path,
            &crate::model::synth::mmdit_specs(&config),
            2,
        )
        .unwrap();
        let raw = crate::model::weights::load_safetensors(&path).unwrap();
        let mut mmdit = MmditTrainer::from_tensors(&path, &raw, &config).unwrap();
        let key = |k| mlx_rs::random::key(k).unwrap();
        let normal =
            |shape: &[i32], k| mlx_rs::random::normal::<f32>(shape, None, None, &key(k)).unwrap();
        let b = 4;
        let batch = FlowBatch {
            x0: normal(&[b, 8, 8, 16], 1),
            context: normal(&[b, 154, config.context_dim as i32], 2),
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

//! `train-demo`: the demo model trained end to end, a job like the others (typed config,
//! events, cancel, resume). The output folder holds the model in the published layout
//! (`model/`: the checkpoint, frozen random CLIP-L/G and their tokenizers) and the training
//! state (`train-state.json` and `train-state.safetensors`: every parameter and Adam's moments,
//! float32), both rewritten atomically at each checkpoint, so a rerun continues from the last
//! one and reaches the weights of an uninterrupted run.
//!
//! Two phases: the VAE (encoder and decoder) learns to reconstruct the pictures; then, with the
//! VAE frozen, the MMDiT learns SD3's rectified flow on the latents of a pool of pictures the
//! VAE encodes once, conditioned on the captions through the frozen CLIP encoders (random: a
//! fixed, distinct embedding per caption is all the MMDiT needs to tell captions apart, and it
//! trains in a fraction of the time). One caption in ten is replaced by the empty prompt, so
//! classifier-free guidance has an unconditional model to push against. The noise levels
//! are shifted towards 1 as SD3's sampler shifts its schedule, so the first sampling steps,
//! where only the caption can say what the picture is, are trained as often as they matter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};
use serde::{Deserialize, Serialize};

use super::train::{
    Adam, FlowBatch, MmditTrainer, VaeTrainer, init_mmdit_for_training, learning_rate,
    picture_batch,
};
use crate::job::CancelToken;
use crate::model::Preset;
use crate::model::nn::MlxResult;
use crate::model::pipeline::Pipeline;
use crate::model::source::{CHECKPOINT_FILE, ModelFiles, write_model_dir_with};
use crate::model::vae::scale_latent;
use crate::model::weights::{WeightsError, load_safetensors};

/// The state's settings and progress.
pub const STATE_JSON: &str = "train-state.json";
/// The state's tensors: parameters and Adam's moments (`adam.m.NAME`, `adam.v.NAME`).
pub const STATE_TENSORS: &str = "train-state.safetensors";
/// The step counters stored with the tensors (float32 scalars `[1]`).
const VAE_DONE: &str = "state.vae_done";
const MMDIT_DONE: &str = "state.mmdit_done";

/// Where in the training pictures' sequence the pictures that set the latent scale start
/// (apart from the VAE's and the MMDiT's batches).
const LATENT_SCALE_PICTURES: u64 = 1 << 41;
/// Where the MMDiT phase's latent pool starts in the pictures' sequence (after the VAE's).
const POOL_PICTURES: u64 = 1 << 40;
/// The largest latent pool (256 MB of latents at 64×64, 4 GB at 256×256).
const MAX_LATENT_POOL: usize = 1 << 16;

/// The trained model's folder inside the output.
pub const MODEL_DIR: &str = "model";

/// What to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainDemoConfig {
    #[serde(skip)]
    pub output: PathBuf,
    /// Seed of the initial weights and of the pictures.
    pub seed: u32,
    pub vae_steps: usize,
    pub mmdit_steps: usize,
    /// Pictures per VAE step.
    pub vae_batch: usize,
    /// Pictures per MMDiT step.
    pub batch: usize,
    /// The pictures' side in pixels (the latents' is an eighth of it).
    pub side: usize,
    pub vae_learning_rate: f32,
    pub mmdit_learning_rate: f32,
    /// Training pictures the frozen VAE encodes once for the MMDiT phase, which draws its
    /// batches from them.
    pub latent_pool: usize,
    /// The shift `k` of the MMDiT's training noise levels: σ = k·s/(1 + (k − 1)·s), `s`
    /// logit-normal, as SD3's sampler shifts its schedule (k = 3). Unshifted, σ near 1 (the
    /// sampler's first steps, where only the caption can say what the background is) is
    /// almost never trained, and the MMDiT learns to read a picture's background from the
    /// noise instead.
    pub sigma_shift: f32,
    /// Steps between checkpoints (there is one at each phase's end too; 0: only there).
    #[serde(skip)]
    pub checkpoint_every: usize,
}

impl TrainDemoConfig {
    /// The settings the shipped model was trained with.
    pub fn new(output: PathBuf) -> Self {
        Self {
            output,
            seed: 0,
            vae_steps: 900,
            mmdit_steps: 8000,
            vae_batch: 8,
            batch: 16,
            side: 64,
            vae_learning_rate: 1e-3,
            mmdit_learning_rate: 5e-4,
            latent_pool: 16384,
            sigma_shift: crate::model::sampler::SHIFT,
            checkpoint_every: 200,
        }
    }

    /// The settings that must match to resume (not the step counts: a run can be extended).
    fn same_run(&self, other: &Self) -> bool {
        let key = |c: &Self| (c.seed, c.vae_batch, c.batch, c.side, c.latent_pool);
        key(self) == key(other)
            && self.vae_learning_rate == other.vae_learning_rate
            && self.mmdit_learning_rate == other.mmdit_learning_rate
            && self.sigma_shift == other.sigma_shift
    }
}

/// Progress.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// `done` of the `total` pictures of the MMDiT phase's pool are encoded (before its steps).
    Encoded { done: usize, total: usize },
    /// A phase starts (or resumes) at `done` of `steps`.
    Phase {
        phase: Phase,
        steps: usize,
        done: usize,
    },
    Step {
        phase: Phase,
        done: usize,
        loss: f32,
        seconds: f64,
    },
    /// The VAE's latents were rescaled by `factor` to unit variance (at the MMDiT phase's
    /// start).
    LatentScale { factor: f32 },
    /// The state and the model were written after `done` steps of `phase`.
    Saved { phase: Phase, done: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Vae,
    Mmdit,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vae => "VAE",
            Self::Mmdit => "MMDiT",
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub model_dir: PathBuf,
    pub vae_done: usize,
    pub mmdit_done: usize,
    /// Mean loss of the last (up to) 50 steps run now, per phase.
    pub vae_loss: Option<f32>,
    pub mmdit_loss: Option<f32>,
    pub cancelled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::fsutil::LockError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Pipeline(#[from] crate::model::pipeline::PipelineError),
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{path} holds a training run with other settings ({theirs}); use another folder")]
    OtherRun { path: PathBuf, theirs: String },
    #[error("training: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error(
        "batch {batch}, VAE batch {vae_batch}, side {side}, latent pool {pool}, sigma shift \
         {shift}: the batches must be at least 1, the pool from 1 to 65,536, the side a multiple \
         of 16 from 16 to 256 (the latent, an eighth of it, is cut into 2×2 patches) and the \
         shift a number above 0"
    )]
    Settings {
        batch: usize,
        vae_batch: usize,
        side: usize,
        pool: usize,
        shift: f32,
    },
    #[error("{path} has {done} {phase} steps done; --{flag} must be at least that")]
    Shrink {
        path: PathBuf,
        done: usize,
        phase: &'static str,
        flag: &'static str,
    },
    #[error(
        "{path}: its {phase} phase was started with --{flag} {steps}, and the learning rate's \
         schedule follows that length; continue with --{flag} {steps}, or use another folder"
    )]
    Length {
        path: PathBuf,
        phase: &'static str,
        flag: &'static str,
        steps: usize,
    },
    #[error(
        "{path} has {done} VAE steps done; --vae-steps must be at least that and no more once \
         the MMDiT phase has started (its latents come from that VAE)"
    )]
    VaeAfterMmdit { path: PathBuf, done: usize },
}

/// Progress saved in [`STATE_JSON`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    schema: String,
    settings: TrainDemoConfig,
    vae_done: usize,
    mmdit_done: usize,
}

const STATE_SCHEMA: &str = "sd3lab.train-demo/2";

/// Trains (or continues training) the demo model into `config.output`.
pub fn run_train_demo(
    config: &TrainDemoConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let usable = config.batch > 0
        && config.vae_batch > 0
        && (1..=MAX_LATENT_POOL).contains(&config.latent_pool)
        && config.side.is_multiple_of(16)
        && (16..=256).contains(&config.side)
        && config.sigma_shift.is_finite()
        && config.sigma_shift > 0.0;
    if !usable {
        return Err(TrainError::Settings {
            batch: config.batch,
            vae_batch: config.vae_batch,
            side: config.side,
            pool: config.latent_pool,
            shift: config.sigma_shift,
        });
    }
    let out = &config.output;
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.clone(),
        source,
    })?;
    let _lock = crate::fsutil::FolderLock::acquire(out)?;
    let model_dir = out.join(MODEL_DIR);
    let checkpoint = model_dir.join(CHECKPOINT_FILE);
    let mut state = read_state(out, config)?;
    let preset = Preset::Demo.config(None);
    if state.is_none() {
        // The initial weights: the demo preset's random checkpoint and CLIPs, with tokenizers
        // that read text as CLIP does (OpenAI's merges: each caption word is one token).
        let merges = crate::model::tokenizer::clip_merges();
        write_model_dir_with(&model_dir, &preset, config.seed as u64, &merges).map_err(
            |source| TrainError::Io {
                path: model_dir.clone(),
                source,
            },
        )?;
    }
    let state_tensors = out.join(STATE_TENSORS);
    let (raw, loaded) = match &state {
        Some(_) => (load_safetensors(&state_tensors)?, state_tensors.clone()),
        None => {
            let mut raw = load_safetensors(&checkpoint)?;
            init_mmdit_for_training(&mut raw, &preset.mmdit)?;
            (raw, checkpoint.clone())
        }
    };
    let mut state = state.take().unwrap_or(State {
        schema: STATE_SCHEMA.into(),
        settings: config.clone(),
        vae_done: 0,
        mmdit_done: 0,
    });
    if loaded == state_tensors {
        // The tensors are written before the JSON: after a crash between the two, their own
        // counters say which step they are from.
        state.vae_done = counter(&raw, &state_tensors, VAE_DONE)?;
        state.mmdit_done = counter(&raw, &state_tensors, MMDIT_DONE)?;
    }
    let json = out.join(STATE_JSON);
    if config.vae_steps < state.vae_done || config.mmdit_steps < state.mmdit_done {
        let vae = config.vae_steps < state.vae_done;
        return Err(TrainError::Shrink {
            path: json,
            done: if vae {
                state.vae_done
            } else {
                state.mmdit_done
            },
            phase: if vae { "VAE" } else { "MMDiT" },
            flag: if vae { "vae-steps" } else { "mmdit-steps" },
        });
    }
    if state.mmdit_done > 0 && config.vae_steps > state.vae_done {
        // The MMDiT learnt the latents of the VAE as it was: training the VAE further would
        // give weights no uninterrupted run gives.
        return Err(TrainError::VaeAfterMmdit {
            path: json,
            done: state.vae_done,
        });
    }
    // The learning rate's schedule follows each phase's length: a started phase keeps it
    // (the VAE's once the MMDiT phase has started is settled above).
    let before = &state.settings;
    let length = |phase, flag, steps| TrainError::Length {
        path: json.clone(),
        phase,
        flag,
        steps,
    };
    if state.vae_done > 0 && state.mmdit_done == 0 && config.vae_steps != before.vae_steps {
        return Err(length("VAE", "vae-steps", before.vae_steps));
    }
    if state.mmdit_done > 0 && config.mmdit_steps != before.mmdit_steps {
        return Err(length("MMDiT", "mmdit-steps", before.mmdit_steps));
    }
    state.settings = config.clone();
    let mut vae = VaeTrainer::from_tensors(&loaded, &raw, &preset.vae)?;
    let mut mmdit = MmditTrainer::from_tensors(&loaded, &raw, &preset.mmdit)?;
    let mut vae_adam = Adam::new(config.vae_learning_rate, &vae.params.arrays)?;
    let mut mmdit_adam = Adam::new(config.mmdit_learning_rate, &mmdit.params.arrays)?;
    if state.vae_done > 0 {
        vae_adam.restore(&raw, &loaded, "vae", &vae.params, state.vae_done)?;
    }
    if state.mmdit_done > 0 {
        mmdit_adam.restore(&raw, &loaded, "mmdit", &mmdit.params, state.mmdit_done)?;
    }
    let mut saver = Saver {
        out,
        model_dir: &model_dir,
        saved: (state.vae_done, state.mmdit_done),
    };

    let mut summary = TrainSummary {
        model_dir: model_dir.clone(),
        vae_done: state.vae_done,
        mmdit_done: state.mmdit_done,
        vae_loss: None,
        mmdit_loss: None,
        cancelled: false,
    };
    // Phase 1: the VAE.
    let mut losses = Vec::new();
    if state.vae_done < config.vae_steps {
        on_event(TrainEvent::Phase {
            phase: Phase::Vae,
            steps: config.vae_steps,
            done: state.vae_done,
        });
    }
    while state.vae_done < config.vae_steps {
        if cancel.is_cancelled() {
            summary.cancelled = true;
            break;
        }
        let start = Instant::now();
        let step = state.vae_done as u64;
        vae_adam.learning_rate =
            learning_rate(config.vae_learning_rate, state.vae_done, config.vae_steps);
        let (images, _) = picture_batch(
            config.seed,
            step * config.vae_batch as u64,
            config.vae_batch,
            config.side,
        );
        let loss = vae.step(&mut vae_adam, &images, (config.seed as u64) << 32 | step)?;
        state.vae_done += 1;
        losses.push(loss);
        let (trainers, adams) = ((&vae, &mmdit), [&vae_adam, &mmdit_adam]);
        saver.stepped(&state, Phase::Vae, loss, start, trainers, adams, on_event)?;
    }
    summary.vae_loss = tail_mean(&losses);
    summary.vae_done = state.vae_done;
    if summary.cancelled || (cancel.is_cancelled() && state.mmdit_done < config.mmdit_steps) {
        summary.cancelled = true;
        saver.save(
            &state,
            Phase::Vae,
            (&vae, &mmdit),
            [&vae_adam, &mmdit_adam],
            on_event,
        )?;
        return Ok(summary);
    }

    // Phase 2: the MMDiT on the frozen VAE's latents and the frozen CLIPs' embeddings.
    let mut losses = Vec::new();
    if state.mmdit_done < config.mmdit_steps {
        let files = ModelFiles::in_dir(&model_dir, "demo").map_err(|e| TrainError::State {
            path: model_dir.clone(),
            reason: e.to_string(),
        })?;
        if state.mmdit_done == 0 {
            // The trained VAE's latents to unit variance before the MMDiT learns them (a
            // resumed run that had not reached an MMDiT checkpoint does this again from the
            // same saved VAE, with the same result).
            let (images, _) = picture_batch(config.seed, LATENT_SCALE_PICTURES, 64, config.side);
            let factor = vae.normalise_latents(&images)?;
            on_event(TrainEvent::LatentScale { factor });
        }
        let text = Pipeline::load(&files, Dtype::Float32)?;
        let mut captions = CaptionCache::new();
        let encoder = vae.encoder_model()?;
        let pool = LatentPool::encode(config, &encoder, &preset.vae, cancel, on_event)?;
        if pool.is_none() {
            summary.cancelled = true;
        } else {
            on_event(TrainEvent::Phase {
                phase: Phase::Mmdit,
                steps: config.mmdit_steps,
                done: state.mmdit_done,
            });
        }
        while let Some(pool) = pool
            .as_ref()
            .filter(|_| state.mmdit_done < config.mmdit_steps)
        {
            if cancel.is_cancelled() {
                summary.cancelled = true;
                break;
            }
            let start = Instant::now();
            let step = state.mmdit_done as u64;
            mmdit_adam.learning_rate = learning_rate(
                config.mmdit_learning_rate,
                state.mmdit_done,
                config.mmdit_steps,
            );
            let batch = flow_batch(config, step, pool, &mut captions, &text)?;
            let loss = mmdit.step(&mut mmdit_adam, &batch)?;
            state.mmdit_done += 1;
            losses.push(loss);
            let (trainers, adams) = ((&vae, &mmdit), [&vae_adam, &mmdit_adam]);
            saver.stepped(&state, Phase::Mmdit, loss, start, trainers, adams, on_event)?;
        }
        if summary.cancelled {
            saver.save(
                &state,
                Phase::Mmdit,
                (&vae, &mmdit),
                [&vae_adam, &mmdit_adam],
                on_event,
            )?;
        }
    }
    summary.mmdit_loss = tail_mean(&losses);
    summary.mmdit_done = state.mmdit_done;
    Ok(summary)
}

/// Writes checkpoints, skipping one that would repeat the last (a cancel right after one).
struct Saver<'a> {
    out: &'a Path,
    model_dir: &'a Path,
    /// The (VAE, MMDiT) steps of the last checkpoint written or resumed from.
    saved: (usize, usize),
}

/// The VAE and MMDiT trainers, in that order.
type Trainers<'a> = (&'a VaeTrainer, &'a MmditTrainer);

impl Saver<'_> {
    /// After a step of `phase`: its event, then a checkpoint when one is due.
    #[allow(clippy::too_many_arguments)]
    fn stepped(
        &mut self,
        state: &State,
        phase: Phase,
        loss: f32,
        start: Instant,
        trainers: Trainers<'_>,
        adams: [&Adam; 2],
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let (done, total) = match phase {
            Phase::Vae => (state.vae_done, state.settings.vae_steps),
            Phase::Mmdit => (state.mmdit_done, state.settings.mmdit_steps),
        };
        on_event(TrainEvent::Step {
            phase,
            done,
            loss,
            seconds: start.elapsed().as_secs_f64(),
        });
        if done.is_multiple_of(state.settings.checkpoint_every) || done == total {
            self.save(state, phase, trainers, adams, on_event)?;
        }
        Ok(())
    }

    fn save(
        &mut self,
        state: &State,
        phase: Phase,
        (vae, mmdit): Trainers<'_>,
        adams: [&Adam; 2],
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let now = (state.vae_done, state.mmdit_done);
        if now == self.saved {
            return Ok(());
        }
        save_state(
            self.out,
            self.model_dir,
            state,
            vae,
            mmdit,
            adams[0],
            adams[1],
        )?;
        self.saved = now;
        on_event(TrainEvent::Saved {
            phase,
            done: match phase {
                Phase::Vae => state.vae_done,
                Phase::Mmdit => state.mmdit_done,
            },
        });
        Ok(())
    }
}

fn tail_mean(losses: &[f32]) -> Option<f32> {
    let tail = &losses[losses.len().saturating_sub(50)..];
    (!tail.is_empty()).then(|| tail.iter().sum::<f32>() / tail.len() as f32)
}

/// The MMDiT phase's pictures, encoded once by the frozen VAE: the posterior means of
/// [`TrainDemoConfig::latent_pool`] training pictures (from their own offset in the pictures'
/// sequence), scaled as the sampler sees them, and their captions. Encoding each step's
/// pictures instead would run the 64-channel encoder on every step (as long again as the
/// MMDiT's step); the pool, rebuilt identically on a resume, runs it once per run.
struct LatentPool {
    latents: Array,
    captions: Vec<String>,
}

impl LatentPool {
    /// Pictures encoded at a time.
    const CHUNK: usize = 64;

    /// Encodes the pool; `None` when cancelled on the way.
    fn encode(
        config: &TrainDemoConfig,
        encoder: &crate::model::vae::VaeEncoder,
        vae: &crate::model::config::VaeDecoderConfig,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> MlxResult<Option<Self>> {
        let total = config.latent_pool;
        let (mut parts, mut captions) = (Vec::new(), Vec::with_capacity(total));
        on_event(TrainEvent::Encoded { done: 0, total });
        for start in (0..total).step_by(Self::CHUNK) {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let n = Self::CHUNK.min(total - start);
            let (images, names) =
                picture_batch(config.seed, POOL_PICTURES + start as u64, n, config.side);
            let (mean, _) = encoder.moments(&images)?;
            let x0 = scale_latent(&mean, vae)?;
            x0.eval()?;
            parts.push(x0);
            captions.extend(names);
            on_event(TrainEvent::Encoded {
                done: start + n,
                total,
            });
        }
        let latents = mlx_rs::ops::concatenate(&parts, 0)?;
        latents.eval()?;
        Ok(Some(Self { latents, captions }))
    }
}

/// Step `step`'s batch for the MMDiT: pictures drawn from the pool, their captions'
/// embeddings (one in ten the empty prompt's), noise levels from a logit-normal distribution
/// shifted by [`TrainDemoConfig::sigma_shift`] and the noise, all drawn from the step alone.
fn flow_batch(
    config: &TrainDemoConfig,
    step: u64,
    pool: &LatentPool,
    captions: &mut CaptionCache,
    text: &Pipeline,
) -> MlxResult<FlowBatch> {
    let n = config.batch;
    let mut rng = crate::rng::NumpyRandomState::new(
        (config.seed as u64 ^ step.wrapping_mul(0x9E37_79B9)) as u32,
    );
    let picks: Vec<usize> = (0..n)
        .map(|_| (rng.next_f64() * pool.captions.len() as f64) as usize % pool.captions.len())
        .collect();
    let index: Vec<u32> = picks.iter().map(|&i| i as u32).collect();
    let x0 = pool
        .latents
        .take_axis(Array::from_slice(&index, &[n as i32]), 0)?;
    let names: Vec<&str> = picks.iter().map(|&i| pool.captions[i].as_str()).collect();
    let base = ((config.seed as u64) << 32) ^ (step * 3 + 1);
    let k = |i: u64| mlx_rs::random::key(base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let drop = mlx_rs::random::uniform::<f32, f32>(0.0, 1.0, &[n as i32], &k(0)?)?;
    drop.eval()?;
    let dropped: Vec<bool> = drop.as_slice::<f32>().iter().map(|u| *u < 0.1).collect();
    let (mut contexts, mut pooled) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (caption, empty) in names.iter().zip(dropped) {
        let (c, p) = captions.get(if empty { "" } else { caption }, text)?;
        contexts.push(c);
        pooled.push(p);
    }
    let context = CaptionCache::full_context(&mlx_rs::ops::stack(&contexts, 0)?)?;
    let pooled = mlx_rs::ops::stack(&pooled, 0)?;
    let u = mlx_rs::random::normal::<f32>(&[n as i32], None, None, &k(1)?)?;
    let sigma =
        crate::model::sampler::shift_sigmas(&mlx_rs::ops::sigmoid(&u)?, config.sigma_shift)?;
    let noise = mlx_rs::random::normal::<f32>(x0.shape(), None, None, &k(2)?)?;
    Ok(FlowBatch {
        x0,
        context,
        pooled,
        sigma,
        noise,
    })
}

/// The frozen CLIPs' embeddings of each caption, computed once: the CLIP tokens' features
/// (77 × L+G, without the pipeline's zero padding to 4096 channels, which the trainer does not
/// need) and the pooled vector.
struct CaptionCache {
    by_caption: HashMap<String, (Array, Array)>,
}

impl CaptionCache {
    fn new() -> Self {
        Self {
            by_caption: HashMap::new(),
        }
    }

    fn get(&mut self, caption: &str, text: &Pipeline) -> MlxResult<(Array, Array)> {
        if let Some(v) = self.by_caption.get(caption) {
            return Ok(v.clone());
        }
        let (cond, pooled) = text.encode_text(caption, "")?;
        let width = text.config.clip_l.width + text.config.clip_g.width;
        let clip = cond.index((0, ..77, ..width as i32));
        let pooled = pooled.index(0);
        mlx_rs::transforms::eval([&clip, &pooled])?;
        self.by_caption
            .insert(caption.to_owned(), (clip.clone(), pooled.clone()));
        Ok((clip, pooled))
    }

    /// `(B, 77, L+G)` → `(B, 154, L+G)`: the 77 zero "T5" tokens the pipeline appends.
    fn full_context(clip: &Array) -> MlxResult<Array> {
        let t5 = mlx_rs::ops::zeros_like(clip)?;
        mlx_rs::ops::concatenate(&[clip, &t5], 1)
    }
}

/// A step counter saved with the tensors.
fn counter(raw: &HashMap<String, Array>, path: &Path, name: &str) -> Result<usize, TrainError> {
    let fail = |reason: String| TrainError::State {
        path: path.to_owned(),
        reason,
    };
    let a = raw
        .get(name)
        .ok_or_else(|| fail(format!("missing tensor '{name}'")))?;
    let v = a.as_dtype(Dtype::Float32)?;
    v.eval()?;
    match v.as_slice::<f32>() {
        [n] if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as usize),
        other => Err(fail(format!("'{name}' is {other:?}, not a step count"))),
    }
}

fn read_state(out: &Path, config: &TrainDemoConfig) -> Result<Option<State>, TrainError> {
    let path = out.join(STATE_JSON);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TrainError::Io { path, source }),
    };
    let not_a_state = |e: serde_json::Error| TrainError::State {
        path: path.clone(),
        reason: format!("not a training state: {e}"),
    };
    // The schema first: another schema's settings have other fields.
    #[derive(Deserialize)]
    struct Schema {
        schema: String,
    }
    let Schema { schema } = serde_json::from_str(&text).map_err(not_a_state)?;
    if schema != STATE_SCHEMA {
        return Err(TrainError::State {
            path,
            reason: format!(
                "schema {schema} is not {STATE_SCHEMA} (a run of another sd3lab version's recipe)"
            ),
        });
    }
    let state: State = serde_json::from_str(&text).map_err(not_a_state)?;
    if !state.settings.same_run(config) {
        let s = &state.settings;
        return Err(TrainError::OtherRun {
            path,
            theirs: format!(
                "seed {}, VAE batch {}, batch {}, side {}, learning rates {} and {}, latent pool \
                 {}, sigma shift {}",
                s.seed,
                s.vae_batch,
                s.batch,
                s.side,
                s.vae_learning_rate,
                s.mmdit_learning_rate,
                s.latent_pool,
                s.sigma_shift
            ),
        });
    }
    Ok(Some(state))
}

/// Writes the state's tensors (with their step counters), the model's checkpoint (float16, the
/// published layout), its README and the state's JSON last, each atomically. A crash between
/// them leaves tensors newer than the JSON, which carry their own counters: the rerun resumes
/// from them exactly.
fn save_state(
    out: &Path,
    model_dir: &Path,
    state: &State,
    vae: &VaeTrainer,
    mmdit: &MmditTrainer,
    vae_adam: &Adam,
    mmdit_adam: &Adam,
) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, &Array)> = Vec::new();
    for p in [&vae.params, &mmdit.params] {
        tensors.extend(p.names.iter().cloned().zip(p.arrays.iter()));
    }
    // The context embedder's columns past the CLIP channels only ever meet the pipeline's
    // zero padding (they never change in training): zero in the model, so that they set no
    // quantization group's scale and change no output.
    let embedder = format!(
        "{}context_embedder.weight",
        crate::model::weights::MMDIT_PREFIX
    );
    let demo = Preset::Demo.config(None);
    let clip_width = (demo.clip_l.width + demo.clip_g.width) as i32;
    let mut trimmed = None;
    if let Some((_, w)) = tensors.iter().find(|(n, _)| *n == embedder) {
        let columns = w.shape()[1];
        let keep: Vec<f32> = (0..columns)
            .map(|c| if c < clip_width { 1.0 } else { 0.0 })
            .collect();
        let keep = Array::from_slice(&keep, &[columns]);
        trimmed = Some(w.multiply(&keep)?);
    }
    let model: Vec<(String, &Array)> = tensors
        .iter()
        .map(|(n, a)| match (&trimmed, *n == embedder) {
            (Some(t), true) => (n.clone(), t),
            _ => (n.clone(), *a),
        })
        .collect();
    let counters = [
        Array::from_slice(&[state.vae_done as f32], &[1]),
        Array::from_slice(&[state.mmdit_done as f32], &[1]),
    ];
    tensors.push((VAE_DONE.into(), &counters[0]));
    tensors.push((MMDIT_DONE.into(), &counters[1]));
    tensors.extend(vae_adam.named_moments("vae", &vae.params.names));
    tensors.extend(mmdit_adam.named_moments("mmdit", &mmdit.params.names));
    let io = |path: PathBuf| move |source| TrainError::Io { path, source };
    let state_tensors = out.join(STATE_TENSORS);
    write_arrays(&state_tensors, &tensors, Dtype::Float32).map_err(io(state_tensors.clone()))?;
    let checkpoint = model_dir.join(CHECKPOINT_FILE);
    write_arrays(&checkpoint, &model, Dtype::Float16).map_err(io(checkpoint.clone()))?;
    let readme = model_dir.join("README.txt");
    let text = format!(
        "SD3 Lab's demo model: the demo SD3 architecture (the tiny preset with a 64-channel VAE) \
         trained by `sd3lab model train-demo` (seed {}, VAE {} steps of {} pictures, MMDiT {} \
         steps of {} with noise levels shifted by {}, {}x{} pictures) on captioned pictures of \
         shapes; CLIP-L/G are frozen random encoders behind OpenAI CLIP's own tokenizer.\n",
        state.settings.seed,
        state.vae_done,
        state.settings.vae_batch,
        state.mmdit_done,
        state.settings.batch,
        state.settings.sigma_shift,
        state.settings.side,
        state.settings.side
    );
    crate::fsutil::write_atomic(&readme, text.as_bytes()).map_err(io(readme.clone()))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::State {
        path: out.join(STATE_JSON),
        reason: e.to_string(),
    })?;
    let path = out.join(STATE_JSON);
    crate::fsutil::write_atomic(&path, json.as_bytes()).map_err(io(path.clone()))
}

/// Writes named arrays as a `.safetensors` file in `dtype` (float32 or float16), atomically,
/// through the project's one writer of named tensors.
fn write_arrays(path: &Path, tensors: &[(String, &Array)], dtype: Dtype) -> std::io::Result<()> {
    use crate::metrics::pth::{Dtype as Stored, Tensor};
    let stored = |a: &Array| -> std::io::Result<Tensor> {
        let c = a.as_dtype(dtype).map_err(std::io::Error::other)?;
        c.eval().map_err(std::io::Error::other)?;
        let (kind, bytes): (Stored, Vec<u8>) = match dtype {
            Dtype::Float16 => (
                Stored::F16,
                c.as_slice::<half::f16>()
                    .iter()
                    .flat_map(|v| v.to_bits().to_le_bytes())
                    .collect(),
            ),
            _ => (
                Stored::F32,
                c.as_slice::<f32>()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        };
        let shape = a.shape().iter().map(|&d| d as usize).collect();
        Tensor::from_bytes(kind, shape, bytes)
            .ok_or_else(|| std::io::Error::other("an array's bytes do not match its shape"))
    };
    let converted = tensors
        .iter()
        .map(|(name, a)| Ok((name.as_str(), stored(a)?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let named: Vec<(&str, &Tensor)> = converted.iter().map(|(n, t)| (*n, t)).collect();
    crate::metrics::weights::write_safetensors(
        path,
        &named,
        &[("format", "pt"), ("generator", "sd3lab model train-demo")],
    )
}

impl Adam {
    /// The moments under `adam.m.{what}.NAME` and `adam.v.{what}.NAME`.
    fn named_moments<'a>(&'a self, what: &str, names: &[String]) -> Vec<(String, &'a Array)> {
        let (m, v) = self.moments();
        let mut out = Vec::with_capacity(2 * names.len());
        for (n, a) in names.iter().zip(m) {
            out.push((format!("adam.m.{what}.{n}"), a));
        }
        for (n, a) in names.iter().zip(v) {
            out.push((format!("adam.v.{what}.{n}"), a));
        }
        out
    }

    /// Takes back the moments [`Adam::named_moments`] saved after `steps` updates, each of
    /// its parameter's shape.
    fn restore(
        &mut self,
        raw: &HashMap<String, Array>,
        path: &Path,
        what: &str,
        params: &super::train::Params,
        steps: usize,
    ) -> Result<(), TrainError> {
        let take = |kind: &str| -> Result<Vec<Array>, TrainError> {
            params
                .names
                .iter()
                .zip(&params.arrays)
                .map(|(n, p)| {
                    let key = format!("adam.{kind}.{what}.{n}");
                    let fail = |reason: String| TrainError::State {
                        path: path.to_owned(),
                        reason,
                    };
                    let a = raw
                        .get(&key)
                        .ok_or_else(|| fail(format!("missing tensor '{key}'")))?;
                    if a.shape() != p.shape() {
                        return Err(fail(format!(
                            "'{key}' is {:?}, its parameter {:?}",
                            a.shape(),
                            p.shape()
                        )));
                    }
                    Ok(a.as_dtype(Dtype::Float32)?)
                })
                .collect()
        };
        self.set_moments(take("m")?, take("v")?, steps as i32);
        Ok(())
    }
}

//! The one long-lived MLX worker thread. It owns every MLX object (models, arrays); the UI
//! sends it [`Command`]s and drains [`Event`]s each frame. Only plain Rust data crosses the
//! channels. Jobs run one at a time, in order; each carries a [`CancelToken`] the UI keeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::bench::{BenchConfig, BenchError, BenchEvent, BenchSummary, run_benchmark};
use crate::calibrate::{
    CalibrateConfig, CalibrateError, CalibrateEvent, CalibrateSummary, run_calibration,
};
use crate::job::CancelToken;
use crate::model::source::{ModelLocations, SourceError, SourceEvent};
use crate::model::weights::WeightsError;
use crate::quant::sensitivity::{
    SensitivityConfig, SensitivityError, SensitivityEvent, run_sensitivity,
};

/// An RGB picture made on the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// What the UI asks for.
#[derive(Debug, Clone)]
pub enum Command {
    Calibrate {
        id: u64,
        config: CalibrateConfig,
        /// One prompt for every image: written as the run's prompt CSV first (here, off the
        /// UI thread), replacing `config.prompt_csv`.
        single_prompt: Option<String>,
        cancel: CancelToken,
    },
    Sensitivity {
        id: u64,
        config: SensitivityConfig,
        cancel: CancelToken,
    },
    /// Run (or resume) a benchmark: the Compare tab's job.
    Benchmark {
        id: u64,
        config: BenchConfig,
        cancel: CancelToken,
    },
    /// Decode a calibration sample's latent `x` through `model`'s VAE (resolving the model may
    /// download sd3-medium: `cancel` stops that).
    DecodeLatent {
        id: u64,
        key: String,
        model: String,
        latent: Vec<f32>,
        /// `(h, w, c)` of the NHWC latent.
        shape: (usize, usize, usize),
        cancel: CancelToken,
    },
    Shutdown,
}

/// What the worker reports. Errors stay typed: each tab words them with its own controls.
#[derive(Debug)]
pub enum Event {
    /// Backend and device, once at start.
    Ready {
        backend: String,
        device: String,
    },
    /// The worker took job `id` off its queue (jobs sent while another runs wait their turn).
    Started {
        id: u64,
    },
    Calibrate {
        id: u64,
        event: CalibrateEvent,
    },
    /// A sweep's progress; resolving its model reports through [`SensitivityEvent::Model`].
    Sensitivity {
        id: u64,
        event: SensitivityEvent,
    },
    /// A benchmark's progress; resolving its model reports through [`BenchEvent::Model`].
    Benchmark {
        id: u64,
        event: BenchEvent,
    },
    /// Resolving the model of job `id` (a calibration run's, before the run; a VAE decode's)
    /// reported this: the fallback to tiny, or download progress.
    Model {
        id: u64,
        event: SourceEvent,
    },
    /// A job ended (`cancelled` also when it ended early with its partial results kept).
    Finished {
        id: u64,
        cancelled: bool,
        result: Result<JobSummary, JobError>,
    },
    Decoded {
        id: u64,
        key: String,
        result: Result<RgbImage, DecodeError>,
    },
    /// MLX memory in use and its peak, bytes.
    Memory {
        active: u64,
        peak: u64,
    },
}

/// What a finished job did.
#[derive(Debug, Clone)]
pub enum JobSummary {
    Calibration(CalibrateSummary),
    Sensitivity {
        /// Layers in the report (measured now or before).
        layers: usize,
        report: PathBuf,
    },
    Benchmark(Box<BenchSummary>),
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the temporary CSV file of the single prompt: {0}")]
    PromptFile(#[source] std::io::Error),
    #[error(transparent)]
    Calibrate(CalibrateError),
    #[error(transparent)]
    Sensitivity(SensitivityError),
    #[error(transparent)]
    Benchmark(BenchError),
}

impl JobError {
    /// The model error behind this one, if resolving the model failed.
    pub fn source_error(&self) -> Option<&SourceError> {
        match self {
            Self::Calibrate(CalibrateError::Source(e)) => Some(e),
            Self::Sensitivity(SensitivityError::Source(e)) => Some(e),
            Self::Benchmark(BenchError::Calibrate(e)) => match e.as_ref() {
                CalibrateError::Source(e) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Why a latent could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Model(SourceError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("the latent has {latent} channels; this model's VAE takes {model}")]
    Channels { latent: usize, model: usize },
    #[error("the VAE returned no image")]
    NoImage,
}

/// The UI's handle on the worker.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread. `wake` is called after every event (the UI requests a repaint).
    /// `locations`: where the VAE decode finds models.
    pub fn spawn(locations: ModelLocations, wake: impl Fn() + Send + 'static) -> Self {
        let (commands, command_rx) = crossbeam_channel::unbounded::<Command>();
        let (event_tx, events) = crossbeam_channel::unbounded::<Event>();
        let thread = std::thread::Builder::new()
            .name("mlx-worker".into())
            .spawn(move || worker_loop(command_rx, event_tx, &locations, wake))
            .ok();
        Self {
            commands,
            events,
            thread,
        }
    }

    /// Queues a command; false when the worker is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The next event, if any (never blocks).
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn memory() -> Event {
    Event::Memory {
        active: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
        peak: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
    }
}

fn worker_loop(
    commands: Receiver<Command>,
    events: Sender<Event>,
    locations: &ModelLocations,
    wake: impl Fn(),
) {
    let send = |e: Event| {
        let _ = events.send(e);
        wake();
    };
    let device = if crate::runtime::mlx_info::metal_available() {
        "gpu (Metal)"
    } else {
        "cpu"
    };
    send(Event::Ready {
        backend: format!("MLX {}", crate::runtime::mlx_info::mlx_version()),
        device: device.into(),
    });
    let mut vaes: HashMap<String, crate::model::vae::VaeDecoder> = HashMap::new();
    while let Ok(command) = commands.recv() {
        match command {
            Command::Shutdown => break,
            Command::Calibrate {
                id,
                config,
                single_prompt,
                cancel,
            } => {
                send(Event::Started { id });
                let result = calibrate(id, config, single_prompt, &cancel, &send);
                finish(id, result, &cancel, &send);
            }
            Command::Sensitivity { id, config, cancel } => {
                send(Event::Started { id });
                let result = run_sensitivity(&config, &cancel, &mut |event| {
                    send(Event::Sensitivity { id, event });
                });
                let result = result
                    .map(|r| JobSummary::Sensitivity {
                        layers: r.layers.len(),
                        report: config
                            .output_dir
                            .join(crate::quant::sensitivity::REPORT_JSON),
                    })
                    .map_err(JobError::Sensitivity);
                finish(id, result, &cancel, &send);
            }
            Command::Benchmark { id, config, cancel } => {
                send(Event::Started { id });
                let result = run_benchmark(&config, &cancel, &mut |event| {
                    let image_done = matches!(event, BenchEvent::ImageDone { .. });
                    send(Event::Benchmark { id, event });
                    if image_done {
                        send(memory());
                    }
                });
                let result = result
                    .map(|s| JobSummary::Benchmark(Box::new(s)))
                    .map_err(JobError::Benchmark);
                finish(id, result, &cancel, &send);
            }
            Command::DecodeLatent {
                id,
                key,
                model,
                latent,
                shape,
                cancel,
            } => {
                send(Event::Started { id });
                let result = decode(
                    &mut vaes,
                    locations,
                    &model,
                    &latent,
                    shape,
                    &cancel,
                    &mut |event| send(Event::Model { id, event }),
                );
                send(Event::Decoded { id, key, result });
                send(memory());
            }
        }
    }
}

/// Reports a job's end, and the memory after it. Cancelled: the job says so in its summary
/// (a calibration or a benchmark stops between images and keeps them; a sweep, between layers,
/// when its token was cancelled), or a download of its model was stopped.
fn finish(
    id: u64,
    result: Result<JobSummary, JobError>,
    cancel: &CancelToken,
    send: &dyn Fn(Event),
) {
    let cancelled = match &result {
        Ok(JobSummary::Calibration(s)) => s.cancelled,
        Ok(JobSummary::Benchmark(s)) => s.cancelled,
        Ok(JobSummary::Sensitivity { .. }) => cancel.is_cancelled(),
        Err(e) => matches!(e.source_error(), Some(SourceError::Cancelled)),
    };
    send(Event::Finished {
        id,
        cancelled,
        result,
    });
    send(memory());
}

/// Writes a one-prompt CSV for the calibration job (on the worker: it touches the disk).
fn single_prompt_csv(prompt: &str) -> std::io::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("sd3lab-prompt-{}.csv", std::process::id()));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["prompt"]).map_err(std::io::Error::other)?;
    w.write_record([prompt]).map_err(std::io::Error::other)?;
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // In the shared temporary folder under a predictable name: a link planted there by another
    // user is replaced, never followed.
    crate::fsutil::write_atomic_replacing_link(&path, &bytes)?;
    Ok(path)
}

/// A calibration run. What resolving its model reports (the fallback to tiny, a download of
/// sd3-medium, which the run's cancel token stops) reaches the tab as [`Event::Model`].
fn calibrate(
    id: u64,
    mut config: CalibrateConfig,
    single_prompt: Option<String>,
    cancel: &CancelToken,
    send: &dyn Fn(Event),
) -> Result<JobSummary, JobError> {
    if let Some(prompt) = single_prompt {
        let csv = single_prompt_csv(&prompt).map_err(JobError::PromptFile)?;
        config.prompt_csv = Some(csv);
    }
    let summary = run_calibration(&config, cancel, &mut |event| match event {
        CalibrateEvent::Model(event) => send(Event::Model { id, event }),
        event => {
            let image_done = matches!(event, CalibrateEvent::ImageDone { .. });
            send(Event::Calibrate { id, event });
            if image_done {
                send(memory());
            }
        }
    })
    .map_err(JobError::Calibrate)?;
    Ok(JobSummary::Calibration(summary))
}

fn decode(
    vaes: &mut HashMap<String, crate::model::vae::VaeDecoder>,
    locations: &ModelLocations,
    model: &str,
    latent: &[f32],
    (h, w, c): (usize, usize, usize),
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(SourceEvent),
) -> Result<RgbImage, DecodeError> {
    if !vaes.contains_key(model) {
        let files = crate::model::source::resolve_in(model, locations, cancel, on_event)
            .map_err(DecodeError::Model)?;
        let (_, cfg) = crate::model::source::infer_config(&files.checkpoint)?;
        let vae =
            crate::model::vae::load_vae_decoder(&files.checkpoint, &cfg, mlx_rs::Dtype::Float32)?;
        vaes.insert(model.to_owned(), vae);
    }
    let vae = &vaes[model];
    if c != vae.config.latent_channels {
        return Err(DecodeError::Channels {
            latent: c,
            model: vae.config.latent_channels,
        });
    }
    let z = mlx_rs::Array::from_slice(latent, &[1, h as i32, w as i32, c as i32]);
    let image = vae.decode_latent(&z)?;
    let mut images = crate::model::vae::to_u8_images(&image)?;
    let (width, height, pixels) = images.pop().ok_or(DecodeError::NoImage)?;
    Ok(RgbImage {
        width: width as usize,
        height: height as usize,
        pixels,
    })
}

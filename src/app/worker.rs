//! The one long-lived MLX worker thread. It owns every MLX object (models, arrays); the UI
//! sends it [`Command`]s and drains [`Event`]s each frame. Only plain Rust data crosses the
//! channels. Jobs run one at a time, in order; each carries a [`CancelToken`] the UI keeps.

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::calibrate::{CalibrateConfig, CalibrateEvent, run_calibration};
use crate::job::CancelToken;
use crate::quant::sensitivity::{SensitivityConfig, SensitivityEvent, run_sensitivity};

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
    /// Decode a calibration sample's latent `x` through `model`'s VAE.
    DecodeLatent {
        key: String,
        model: String,
        latent: Vec<f32>,
        /// `(h, w, c)` of the NHWC latent.
        shape: (usize, usize, usize),
    },
    Shutdown,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// Backend and device, once at start.
    Ready {
        backend: String,
        device: String,
    },
    Calibrate {
        id: u64,
        event: CalibrateEvent,
    },
    Sensitivity {
        id: u64,
        event: SensitivityEvent,
    },
    /// A job ended: `Ok(summary line)` (also when cancelled), or the error.
    Finished {
        id: u64,
        cancelled: bool,
        result: Result<String, String>,
    },
    Decoded {
        key: String,
        result: Result<RgbImage, String>,
    },
    /// MLX memory in use and its peak, bytes.
    Memory {
        active: u64,
        peak: u64,
    },
}

/// The UI's handle on the worker.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread. `wake` is called after every event (the UI requests a repaint).
    pub fn spawn(wake: impl Fn() + Send + 'static) -> Self {
        let (commands, command_rx) = crossbeam_channel::unbounded::<Command>();
        let (event_tx, events) = crossbeam_channel::unbounded::<Event>();
        let thread = std::thread::Builder::new()
            .name("mlx-worker".into())
            .spawn(move || worker_loop(command_rx, event_tx, wake))
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

fn worker_loop(commands: Receiver<Command>, events: Sender<Event>, wake: impl Fn()) {
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
                mut config,
                single_prompt,
                cancel,
            } => {
                if let Some(prompt) = single_prompt {
                    match super::generate_tab::single_prompt_csv(&prompt) {
                        Ok(csv) => config.prompt_csv = Some(csv),
                        Err(e) => {
                            send(Event::Finished {
                                id,
                                cancelled: false,
                                result: Err(format!("writing the prompt file: {e}")),
                            });
                            continue;
                        }
                    }
                }
                let result = run_calibration(&config, &cancel, &mut |event| {
                    let image_done = matches!(event, CalibrateEvent::ImageDone { .. });
                    send(Event::Calibrate { id, event });
                    if image_done {
                        send(memory());
                    }
                });
                let (cancelled, result) = match result {
                    Ok(s) => (
                        s.cancelled,
                        Ok(format!(
                            "{} of {} images in {} ({:.1} s)",
                            s.n_completed,
                            s.num_images,
                            s.calib_dir.display(),
                            s.seconds
                        )),
                    ),
                    // Refusals name the Generate tab's controls, not the CLI's flags.
                    Err(e) => (false, Err(super::generate_tab::error_message(&e))),
                };
                send(Event::Finished {
                    id,
                    cancelled,
                    result,
                });
                send(memory());
            }
            Command::Sensitivity { id, config, cancel } => {
                let result = run_sensitivity(&config, &cancel, &mut |event| {
                    send(Event::Sensitivity { id, event });
                });
                let result = result.map(|r| {
                    format!(
                        "{} layers measured; {}",
                        r.layers.len(),
                        config.output_dir.join("sensitivity.json").display()
                    )
                });
                send(Event::Finished {
                    id,
                    cancelled: cancel.is_cancelled(),
                    result: result.map_err(|e| e.to_string()),
                });
                send(memory());
            }
            Command::DecodeLatent {
                key,
                model,
                latent,
                shape,
            } => {
                let result = decode(&mut vaes, &model, &latent, shape);
                send(Event::Decoded { key, result });
                send(memory());
            }
        }
    }
}

fn decode(
    vaes: &mut HashMap<String, crate::model::vae::VaeDecoder>,
    model: &str,
    latent: &[f32],
    (h, w, c): (usize, usize, usize),
) -> Result<RgbImage, String> {
    if !vaes.contains_key(model) {
        let files = crate::model::source::resolve(model, &mut |_| {}).map_err(|e| e.to_string())?;
        let (_, cfg) =
            crate::model::source::infer_config(&files.checkpoint).map_err(|e| e.to_string())?;
        let vae =
            crate::model::vae::load_vae_decoder(&files.checkpoint, &cfg, mlx_rs::Dtype::Float32)
                .map_err(|e| e.to_string())?;
        vaes.insert(model.to_owned(), vae);
    }
    let vae = &vaes[model];
    if c != vae.config.latent_channels {
        return Err(format!(
            "the latent has {c} channels; this model's VAE takes {}",
            vae.config.latent_channels
        ));
    }
    let z = mlx_rs::Array::from_slice(latent, &[1, h as i32, w as i32, c as i32]);
    let image = vae.decode_latent(&z).map_err(|e| e.to_string())?;
    let mut images = crate::model::vae::to_u8_images(&image).map_err(|e| e.to_string())?;
    let (width, height, pixels) = images.pop().ok_or("the VAE returned no image")?;
    Ok(RgbImage {
        width: width as usize,
        height: height as usize,
        pixels,
    })
}

//! The Generate tab: a calibration run (`sd3lab calibrate` options) started, cancelled and
//! resumed from the UI, with nested progress, a live preview of each finished image, the run's
//! gallery with prompts, and the disk estimate before starting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::worker::{Command, Event};
use super::{PickKind, Picker, Shared, human_bytes, labelled};
use crate::calibrate::{CalibrateConfig, CalibrateEvent, estimate_bytes_per_image, free_bytes};
use crate::job::CancelToken;
use crate::model::Preset;
use crate::model::config::ModelDtype;

/// A decoded PNG (None when unreadable), from a helper thread.
type Decoded = (PathBuf, Option<egui::ColorImage>);
type DecodedTx = crossbeam_channel::Sender<Decoded>;
type DecodedRx = crossbeam_channel::Receiver<Decoded>;

/// Where the prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PromptSource {
    /// The shipped prompt set, or a CSV file.
    #[default]
    Csv,
    /// One prompt for every image.
    Single,
}

/// The calibration options (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    pub model: String,
    pub prompt_source: PromptSource,
    /// Empty: the shipped prompt set.
    pub prompt_csv: String,
    pub prompt: String,
    pub num_images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub seed: u32,
    pub height: usize,
    pub width: usize,
    pub calib_dir: String,
    pub negative_prompt: String,
    pub overwrite: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model: "tiny".into(),
            prompt_source: PromptSource::Csv,
            prompt_csv: String::new(),
            prompt: "a red fox in snow".into(),
            num_images: 4,
            num_steps: 10,
            cfg_weight: 7.5,
            seed: 0,
            height: 256,
            width: 256,
            calib_dir: "calibration_data".into(),
            negative_prompt: String::new(),
            overwrite: false,
        }
    }
}

/// A finished image of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryItem {
    pub image: usize,
    pub prompt: String,
    pub path: PathBuf,
}

/// Progress of the running job.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub start_image: usize,
    pub num_images: usize,
    pub num_steps: usize,
    pub image: usize,
    pub step: usize,
    pub prompt: String,
    pub seconds_per_image: f64,
    pub eta_seconds: f64,
    pub estimate_bytes: u64,
    pub images_done: usize,
}

/// The tab's state.
#[derive(Default)]
pub struct GenerateTab {
    job: Option<(u64, CancelToken)>,
    pub progress: Progress,
    pub gallery: Vec<GalleryItem>,
    /// The image shown large.
    pub selected: Option<usize>,
    pub message: Option<Result<String, String>>,
    picker: Picker,
    picking: Option<&'static str>,
    pending_pick: Option<PathBuf>,
    scanned: Option<PathBuf>,
    /// PNGs being decoded on helper threads.
    decoding: std::collections::HashSet<PathBuf>,
    decoded: Option<(DecodedTx, DecodedRx)>,
    /// The disk estimate and whether the folder holds a run to resume, for these options.
    status: Option<(Options, String, bool)>,
}

impl GenerateTab {
    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// Starts (or resumes: the calibration job continues a run with the same settings).
    pub fn start(&mut self, o: &Options, shared: &mut Shared) {
        if self.job.is_some() {
            return;
        }
        let prompt_csv = match o.prompt_source {
            PromptSource::Csv if o.prompt_csv.trim().is_empty() => None,
            PromptSource::Csv => Some(PathBuf::from(o.prompt_csv.trim())),
            PromptSource::Single => match single_prompt_csv(&o.prompt) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.message = Some(Err(format!("writing the prompt file: {e}")));
                    return;
                }
            },
        };
        let config = CalibrateConfig {
            model: o.model.clone(),
            num_images: o.num_images,
            num_steps: o.num_steps,
            cfg_weight: o.cfg_weight,
            calib_dir: PathBuf::from(&o.calib_dir),
            prompt_csv,
            seed: o.seed,
            height: o.height,
            width: o.width,
            dtype: ModelDtype::default_for_backend(),
            negative_prompt: o.negative_prompt.clone(),
            overwrite: o.overwrite,
            force: false,
        };
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        if shared.worker.send(Command::Calibrate {
            id,
            config,
            cancel: cancel.clone(),
        }) {
            self.job = Some((id, cancel));
            self.progress = Progress::default();
            self.message = None;
            self.gallery = scan_gallery(Path::new(&o.calib_dir));
            shared.running = Some(("calibration".into(), 0.0));
        } else {
            self.message = Some(Err("the MLX worker has stopped".into()));
        }
    }

    pub fn cancel(&mut self) {
        if let Some((_, c)) = &self.job {
            c.cancel();
        }
    }

    /// Applies a worker event that belongs to this tab's job.
    pub fn handle(&mut self, event: &Event, shared: &mut Shared) {
        let Some((id, _)) = &self.job else { return };
        let id = *id;
        match event {
            Event::Calibrate { id: i, event } if *i == id => {
                let p = &mut self.progress;
                match event {
                    CalibrateEvent::Planned {
                        start_image,
                        num_images,
                        num_steps,
                        estimate_bytes,
                        ..
                    } => {
                        p.start_image = *start_image;
                        p.num_images = *num_images;
                        p.num_steps = *num_steps;
                        p.estimate_bytes = *estimate_bytes;
                        p.images_done = *start_image;
                    }
                    CalibrateEvent::ModelLoaded { .. } => {}
                    CalibrateEvent::ImageStarted { image, prompt } => {
                        p.image = *image;
                        p.step = 0;
                        p.prompt = prompt.clone();
                    }
                    CalibrateEvent::Step { step, .. } => p.step = *step,
                    CalibrateEvent::ImageDone {
                        image,
                        seconds,
                        eta_seconds,
                        ..
                    } => {
                        p.seconds_per_image = *seconds;
                        p.eta_seconds = *eta_seconds;
                        p.images_done = image + 1;
                        self.gallery.retain(|g| g.image != *image);
                        self.gallery.push(GalleryItem {
                            image: *image,
                            prompt: p.prompt.clone(),
                            path: PathBuf::new(), // filled by poll from the calibration dir
                        });
                        self.selected = Some(*image);
                    }
                }
                let total = (p.num_images.max(1) * p.num_steps.max(1)) as f32;
                let done = (p.images_done * p.num_steps
                    + if p.images_done > p.image { 0 } else { p.step })
                    as f32;
                shared.running = Some(("calibration".into(), (done / total).clamp(0.0, 1.0)));
            }
            Event::Finished {
                id: i,
                cancelled,
                result,
            } if *i == id => {
                self.job = None;
                shared.running = None;
                self.status = None;
                self.message = Some(super::job_outcome(*cancelled, result));
            }
            _ => {}
        }
    }

    /// Fills in image paths and picks up dialog results.
    pub fn poll(&mut self, ctx: &egui::Context, shared: &mut Shared) {
        if let Some(p) = self.picker.poll() {
            self.pending_pick = Some(p);
        }
        if let Some((_, rx)) = &self.decoded {
            while let Ok((path, image)) = rx.try_recv() {
                self.decoding.remove(&path);
                let image =
                    image.unwrap_or_else(|| egui::ColorImage::filled([1, 1], egui::Color32::GRAY));
                let _ = shared.textures.get_or_insert(
                    ctx,
                    &png_key(&path),
                    egui::TextureOptions::LINEAR,
                    || image,
                );
            }
        }
    }

    /// A PNG from disk as a texture once a helper thread has decoded it (None until then).
    fn png_texture(
        &mut self,
        ctx: &egui::Context,
        shared: &mut Shared,
        path: &Path,
    ) -> Option<egui::TextureHandle> {
        let key = png_key(path);
        if shared.textures.contains(&key) {
            return Some(shared.textures.get_or_insert(
                ctx,
                &key,
                egui::TextureOptions::LINEAR,
                || egui::ColorImage::filled([1, 1], egui::Color32::GRAY),
            ));
        }
        if self.decoding.insert(path.to_owned()) {
            let (tx, _) = self
                .decoded
                .get_or_insert_with(crossbeam_channel::unbounded);
            let tx = tx.clone();
            let path = path.to_owned();
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                let image = super::preview::read_png(&path);
                let _ = tx.send((path, image));
                ctx.request_repaint();
            });
        }
        None
    }

    /// True while gallery images are still being decoded.
    pub fn is_loading(&self) -> bool {
        !self.decoding.is_empty()
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        if let Some(p) = self.pending_pick.take() {
            match self.picking.take() {
                Some("model") => o.model = p.display().to_string(),
                Some("csv") => o.prompt_csv = p.display().to_string(),
                Some("dir") => o.calib_dir = p.display().to_string(),
                _ => {}
            }
        }
        let dir = PathBuf::from(&o.calib_dir);
        if self.scanned.as_ref() != Some(&dir) && self.job.is_none() {
            self.gallery = scan_gallery(&dir);
            self.scanned = Some(dir.clone());
            self.selected = self.gallery.last().map(|g| g.image);
        }
        for g in &mut self.gallery {
            if g.path.as_os_str().is_empty() {
                g.path = dir.join(crate::calibrate::image_file_name(g.image));
            }
        }
        egui::Panel::left("generate-options")
            .default_size(330.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.options_ui(ui, o, shared));
            });
        egui::CentralPanel::default_margins().show(ui, |ui| self.results_ui(ui, shared));
    }

    fn options_ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        let running = self.job.is_some();
        ui.heading("Calibration data");
        ui.add_enabled_ui(!running, |ui| {
            ui.horizontal(|ui| {
                ui.label("Model");
                ui.selectable_value(&mut o.model, "tiny".into(), "tiny (built-in)");
                ui.selectable_value(&mut o.model, "sd3-medium".into(), "sd3-medium");
            });
            ui.horizontal(|ui| {
                labelled(ui, "Model (name or folder)", |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(150.0))
                });
                if ui.button("Folder...").clicked() {
                    self.picking = Some("model");
                    self.picker.open(PickKind::Folder);
                }
            });
            ui.horizontal(|ui| {
                ui.radio_value(&mut o.prompt_source, PromptSource::Csv, "Prompt CSV");
                ui.radio_value(&mut o.prompt_source, PromptSource::Single, "Single prompt");
            });
            match o.prompt_source {
                PromptSource::Csv => {
                    ui.horizontal(|ui| {
                        labelled(ui, "CSV (empty: built-in set)", |ui| {
                            ui.add(
                                egui::TextEdit::singleline(&mut o.prompt_csv).desired_width(120.0),
                            )
                        });
                        if ui.button("Browse...").clicked() {
                            self.picking = Some("csv");
                            self.picker.open(PickKind::File {
                                filter: ("CSV", &["csv"]),
                            });
                        }
                    });
                }
                PromptSource::Single => {
                    labelled(ui, "Prompt", |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.prompt).desired_width(220.0))
                    });
                }
            }
            labelled(ui, "Negative prompt", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.negative_prompt).desired_width(170.0))
            });
            labelled(ui, "Images", |ui| {
                ui.add(egui::DragValue::new(&mut o.num_images).range(1..=100_000))
            });
            labelled(ui, "Steps", |ui| {
                ui.add(egui::DragValue::new(&mut o.num_steps).range(1..=1000))
            });
            labelled(ui, "CFG weight", |ui| {
                ui.add(
                    egui::DragValue::new(&mut o.cfg_weight)
                        .range(0.0..=30.0)
                        .speed(0.1),
                )
            });
            labelled(ui, "Seed", |ui| ui.add(egui::DragValue::new(&mut o.seed)));
            labelled(ui, "Height", |ui| {
                ui.add(
                    egui::DragValue::new(&mut o.height)
                        .range(16..=2048)
                        .speed(16),
                )
            });
            labelled(ui, "Width", |ui| {
                ui.add(
                    egui::DragValue::new(&mut o.width)
                        .range(16..=2048)
                        .speed(16),
                )
            });
            ui.horizontal(|ui| {
                labelled(ui, "Output folder", |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(140.0))
                });
                if ui.button("Choose...").clicked() {
                    self.picking = Some("dir");
                    self.picker.open(PickKind::Folder);
                }
            });
            ui.checkbox(&mut o.overwrite, "Overwrite a different run in this folder");
        });
        ui.separator();
        // Disk figures and the manifest are read when the options change, not every frame.
        if self.status.as_ref().is_none_or(|(k, _, _)| k != o) {
            let resumable = manifest_images(Path::new(&o.calib_dir)).is_some_and(|n| n > 0);
            self.status = Some((o.clone(), disk_estimate(o), resumable));
        }
        let (estimate, resumable) = self
            .status
            .as_ref()
            .map(|(_, e, r)| (e.clone(), *r))
            .unwrap_or_default();
        ui.label(estimate);
        ui.horizontal(|ui| {
            let resumable = !running && resumable;
            let start_label = if resumable { "Start / Resume" } else { "Start" };
            if ui
                .add_enabled(!running, egui::Button::new(start_label))
                .clicked()
            {
                self.start(o, shared);
            }
            if ui
                .add_enabled(running, egui::Button::new("Cancel"))
                .clicked()
            {
                self.cancel();
            }
        });
        ui.horizontal(|ui| {
            let dir = Path::new(&o.calib_dir);
            if let Some(m) = super::report_buttons(ui, dir, "calibration", |out| {
                crate::report::write_calibration_report(dir, out)
            }) {
                self.message = Some(m);
            }
        });
        super::message_ui(ui, &self.message);
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let p = &self.progress;
        if self.job.is_some() {
            let total = p.num_images.max(1);
            ui.label(format!(
                "image {} of {}{}",
                (p.images_done + 1).min(total),
                total,
                if p.seconds_per_image > 0.0 {
                    format!(
                        " | {:.1} s/img | ETA {:.0} s",
                        p.seconds_per_image, p.eta_seconds
                    )
                } else {
                    String::new()
                }
            ));
            ui.add(egui::ProgressBar::new(p.images_done as f32 / total as f32).show_percentage());
            ui.label(format!("step {} of {}: {}", p.step, p.num_steps, p.prompt));
            ui.add(egui::ProgressBar::new(
                p.step as f32 / p.num_steps.max(1) as f32,
            ));
            ui.separator();
        }
        let ctx = ui.ctx().clone();
        if let Some(sel) = self
            .selected
            .and_then(|s| self.gallery.iter().find(|g| g.image == s))
            .cloned()
        {
            ui.label(format!("image {}: {}", sel.image, sel.prompt));
            if let Some(tex) = self.png_texture(&ctx, shared, &sel.path) {
                let size = fit(
                    tex.size_vec2(),
                    egui::vec2(ui.available_width().min(512.0), 320.0),
                );
                ui.image((tex.id(), size));
            }
            ui.separator();
        }
        ui.label(format!("gallery: {} images", self.gallery.len()));
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                let items = self.gallery.clone();
                for g in items.iter().rev().take(60) {
                    ui.vertical(|ui| {
                        if let Some(tex) = self.png_texture(&ctx, shared, &g.path) {
                            let r = ui.add(
                                egui::Image::new((
                                    tex.id(),
                                    fit(tex.size_vec2(), egui::vec2(96.0, 96.0)),
                                ))
                                .sense(egui::Sense::click()),
                            );
                            if r.clicked() {
                                self.selected = Some(g.image);
                            }
                        }
                        ui.add(
                            egui::Label::new(format!("#{} {}", g.image, shorten(&g.prompt, 18)))
                                .truncate(),
                        );
                    });
                }
            });
        });
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn fit(size: egui::Vec2, max: egui::Vec2) -> egui::Vec2 {
    let s = (max.x / size.x).min(max.y / size.y).min(4.0);
    size * s
}

fn png_key(path: &Path) -> String {
    format!("png:{}", path.display())
}

/// Images already in a calibration folder, with prompts from its manifest.
pub fn scan_gallery(dir: &Path) -> Vec<GalleryItem> {
    let prompts: Vec<String> = std::fs::read_to_string(dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["generation"]["prompts"].as_array().map(|a| {
                a.iter()
                    .map(|p| p.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
        })
        .unwrap_or_default();
    let mut items: Vec<GalleryItem> = std::fs::read_dir(dir.join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let image: usize = name.strip_suffix(".png")?.parse().ok()?;
            Some(GalleryItem {
                image,
                prompt: prompts.get(image).cloned().unwrap_or_default(),
                path: e.path(),
            })
        })
        .collect();
    items.sort_by_key(|g| g.image);
    items
}

fn manifest_images(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["n_completed"].as_u64()
}

/// "about X on disk, Y free" for the options.
pub fn disk_estimate(o: &Options) -> String {
    let preset = if o.model == "tiny" {
        Preset::Tiny
    } else {
        Preset::Sd3Medium
    };
    let cfg = CalibrateConfig {
        model: o.model.clone(),
        num_images: o.num_images,
        num_steps: o.num_steps,
        cfg_weight: o.cfg_weight,
        calib_dir: PathBuf::from(&o.calib_dir),
        prompt_csv: None,
        seed: o.seed,
        height: o.height,
        width: o.width,
        dtype: ModelDtype::default_for_backend(),
        negative_prompt: String::new(),
        overwrite: false,
        force: false,
    };
    let bytes = estimate_bytes_per_image(&cfg, &preset.config(None)) * o.num_images as u64;
    let free = free_bytes(Path::new(&o.calib_dir)).map_or("free space unknown".to_owned(), |f| {
        format!("{} free", human_bytes(f))
    });
    format!(
        "Disk: about {} for {} images x {} steps ({free})",
        human_bytes(bytes),
        o.num_images,
        o.num_steps
    )
}

/// Writes a one-prompt CSV for the calibration job.
fn single_prompt_csv(prompt: &str) -> std::io::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("sd3lab-prompt-{}.csv", std::process::id()));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["prompt"]).map_err(std::io::Error::other)?;
    w.write_record([prompt]).map_err(std::io::Error::other)?;
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::fsutil::write_atomic(&path, &bytes)?;
    Ok(path)
}

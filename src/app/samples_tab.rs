//! The Samples tab: open a calibration folder (indexed on a helper thread: metadata only),
//! a summary with counts per bucket and the problems found, browsing by bucket, image and step
//! with the CLI's filters and the keyboard (Up/Down sample, PgUp/PgDn image), and for a sample
//! its metadata and previews: the latent's channels as a grid with a colour bar, the latent
//! decoded through the VAE (a job on the MLX worker, on the job board; cached), the
//! conditioning as a heatmap of either CFG half with a colour bar and axes, a histogram.
//! Errors go to the app's error model as well as the tab; images and steps are shown numbered
//! from 1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::feedback::{self, Place};
use super::preview::{self, CfgHalf, LatentLayout};
use super::worker::{Command, DecodeError, Event, RgbImage};
use super::{
    PickKind, Picker, Shared, Tab, Task, count, human_bytes, labelled, resolve_path as resolve,
    widgets,
};
use crate::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleKey, SampleMeta};
use crate::job::CancelToken;

/// The field naming the model whose VAE decodes latents; warnings and errors name it.
pub const MODEL_LABEL: &str = "VAE of model";

/// The job board's name for a decode.
pub const DECODE_JOB: &str = "VAE preview decode";

/// Where this tab's errors are filed in the app's error model.
pub const OPEN: Place = Place::new(Tab::Samples, "open");
pub const LOAD: Place = Place::new(Tab::Samples, "load sample");
pub const DECODE: Place = Place::new(Tab::Samples, "decode");
pub const EXPORT: Place = Place::new(Tab::Samples, "export");

/// The largest sizes of the latent grid and the decoded image (points); both shrink to the
/// width there is.
const GRID_WIDTH: f32 = 300.0;
const VAE_SIZE: f32 = 256.0;
/// Below this fraction of their sizes the previews move under the metadata instead.
const MIN_PREVIEW_SCALE: f32 = 0.7;

/// Browsing options (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    pub calib_dir: String,
    /// 0: all images.
    pub max_images: usize,
    pub step_stride: usize,
    pub bucket: Option<Bucket>,
    /// One colour scale for all channels instead of one per channel.
    pub shared_scale: bool,
    /// The model whose VAE decodes latents.
    pub model: String,
    /// The half of the CFG batch the conditioning heatmap shows.
    pub cfg_half: CfgHalf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            calib_dir: String::new(),
            max_images: 0,
            step_stride: 1,
            bucket: None,
            shared_scale: false,
            model: "tiny".into(),
            cfg_half: CfgHalf::Prompt,
        }
    }
}

impl Options {
    pub fn filter(&self) -> SampleFilter {
        SampleFilter {
            max_images: (self.max_images > 0).then_some(self.max_images),
            step_stride: (self.step_stride > 1).then_some(self.step_stride),
            bucket: self.bucket,
        }
    }
}

/// A sample's tensors, loaded on demand.
#[derive(Debug, Clone)]
pub struct SampleTensors {
    pub file: String,
    pub x: Vec<f32>,
    pub x_shape: Vec<usize>,
    pub conditioning: Vec<f32>,
    pub conditioning_shape: Vec<usize>,
}

/// A written report: its file and how many files came with it.
pub type Written = (PathBuf, usize);

/// The tab's state.
#[derive(Default)]
pub struct SamplesTab {
    opening: Option<Receiver<(Result<CalibrationSet, String>, f64)>>,
    /// How long indexing the folder took on its helper thread (seconds).
    pub index_seconds: Option<f64>,
    pub set: Option<Arc<CalibrationSet>>,
    /// The folder being opened or last opened (resolved against the base folder).
    pub opened_dir: Option<PathBuf>,
    /// Counts the folders opened, so cached previews of a sample of an earlier folder (whose
    /// file has the same name) are never shown for this one.
    generation: u64,
    pub error: Option<String>,
    /// Index into the filtered list.
    pub selected: Option<usize>,
    tensors: Option<SampleTensors>,
    loading: Option<(String, Receiver<Result<SampleTensors, String>>)>,
    /// Decoded latents by sample file, or the error worded for this tab.
    decoded: HashMap<String, Result<RgbImage, String>>,
    decode_pending: Option<String>,
    /// The pending decode's job id and cancel token (resolving its model may download).
    decode_job: Option<(u64, CancelToken)>,
    /// The decode model's warning and download progress, and that model (the worker keeps a
    /// model's VAE loaded, so its warning comes once: it stays until the model changes).
    pub model_notice: super::ModelNotice,
    notice_model: String,
    /// The selected sample's file, as of the last frame.
    wanted: Option<String>,
    /// The last report written (file, files with it), or the error.
    pub report_message: Option<Result<Written, String>>,
    /// The folder's report being written on a helper thread.
    report_task: Task<Result<Written, String>>,
    /// The heatmap shown: its texture key and how to read it.
    heat: Option<(String, preview::Heatmap)>,
    picker: Picker<()>,
}

/// Indexes a folder (on a helper thread): a folder that is missing or a file is named as such
/// before the calibration layer looks inside.
fn open_folder(dir: &Path) -> Result<CalibrationSet, String> {
    if let Some(problem) = feedback::folder_problem(dir) {
        return Err(problem);
    }
    CalibrationSet::open(dir, &OpenOptions::default()).map_err(|e| feedback::error_sentence(&e))
}

impl SamplesTab {
    /// Indexes `o.calib_dir` (resolved against the base folder) on a helper thread. The
    /// previous folder's messages go: they are about another folder.
    pub fn open(&mut self, o: &Options) {
        let dir = resolve(&o.calib_dir);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.opening = Some(rx);
        self.opened_dir = Some(dir.clone());
        self.error = None;
        self.report_message = None;
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let r = open_folder(&dir);
            let _ = tx.send((r, start.elapsed().as_secs_f64()));
        });
    }

    /// True while the folder is being indexed or its report written.
    pub fn is_loading(&self) -> bool {
        self.opening.is_some() || self.report_task.is_running()
    }

    /// True while the selected sample's previews are still coming.
    pub fn waiting_for_previews(&self) -> bool {
        let held = self.tensors.as_ref().map(|t| &t.file);
        self.loading.is_some()
            || self.decode_pending.is_some()
            || (self.wanted.is_some() && self.wanted.as_ref() != held)
    }

    pub fn handle(&mut self, event: &Event, shared: &mut Shared) {
        // Every decode is this tab's; one that was overtaken (another folder opened) still
        // leaves the board.
        if let Event::Decoded { id, .. } = event {
            shared.jobs.finished(*id);
        }
        let Some((job, _)) = &self.decode_job else {
            return;
        };
        match event {
            Event::Model { id, event } if id == job => {
                self.model_notice.apply(event, MODEL_LABEL);
                if let Some(running) = self.model_notice.running() {
                    shared.running = Some(running);
                }
            }
            Event::Decoded { id, key, result } if id == job => {
                if self.model_notice.download.is_some() {
                    shared.running = None;
                }
                self.model_notice.job_ended();
                self.decode_job = None;
                if self.decode_pending.as_deref() == Some(key.as_str()) {
                    let result = match result {
                        Ok(img) => Ok(img.clone()),
                        Err(e) => Err(decode_error_message(e)),
                    };
                    shared.errors.record(DECODE, &result);
                    self.decoded.insert(key.clone(), result);
                    self.decode_pending = None;
                }
            }
            _ => {}
        }
    }

    /// The decoded latent of a sample file, or the error as the tab words it (None while
    /// coming or never asked for).
    pub fn decoded(&self, file: &str) -> Option<&Result<RgbImage, String>> {
        self.decoded.get(file)
    }

    /// The pending decode's job id.
    pub fn decode_job(&self) -> Option<u64> {
        self.decode_job.as_ref().map(|(id, _)| *id)
    }

    /// Stops the pending decode's model download, if one runs.
    pub fn cancel_download(&mut self) {
        if let Some((_, c)) = &self.decode_job {
            c.cancel();
        }
    }

    /// Collects finished loads; starts loading the selected sample's tensors and decoding.
    pub fn poll(&mut self, _ctx: &egui::Context, shared: &mut Shared, o: &Options) {
        if let Some(rx) = &self.opening
            && let Ok((r, seconds)) = rx.try_recv()
        {
            self.opening = None;
            self.index_seconds = Some(seconds);
            shared
                .errors
                .record(OPEN, &r.as_ref().map(|_| ()).map_err(Clone::clone));
            match r {
                Ok(set) => {
                    self.set = Some(Arc::new(set));
                    self.generation += 1;
                    self.selected = Some(0);
                    self.tensors = None;
                    self.loading = None;
                    self.decoded.clear();
                    self.decode_pending = None;
                    self.heat = None;
                }
                Err(e) => {
                    self.set = None;
                    self.error = Some(e);
                }
            }
        }
        if let Some((_, rx)) = &self.loading
            && let Ok(r) = rx.try_recv()
        {
            self.loading = None;
            shared
                .errors
                .record(LOAD, &r.as_ref().map(|_| ()).map_err(Clone::clone));
            match r {
                Ok(t) => {
                    if !self.decoded.contains_key(&t.file)
                        && self.decode_pending.is_none()
                        && let Some(l) = LatentLayout::from_shape(&t.x_shape)
                    {
                        if self.notice_model != o.model {
                            self.model_notice = super::ModelNotice::default();
                            self.notice_model = o.model.clone();
                        }
                        let id = shared.next_job_id();
                        let cancel = CancelToken::new();
                        if shared.worker.send(Command::DecodeLatent {
                            id,
                            key: t.file.clone(),
                            model: o.model.clone(),
                            latent: l.to_nhwc(&t.x),
                            shape: (l.height, l.width, l.channels),
                            cancel: cancel.clone(),
                        }) {
                            shared.jobs.submit(id, Tab::Samples, DECODE_JOB);
                            self.decode_pending = Some(t.file.clone());
                            self.decode_job = Some((id, cancel));
                        }
                    }
                    self.tensors = Some(t);
                }
                Err(e) => self.error = Some(e),
            }
        }
        // Load the selection's tensors when they are not the ones held.
        let Some(set) = self.set.clone() else { return };
        let metas = set.select(&o.filter());
        let Some(meta) = self.selected.and_then(|i| metas.get(i)) else {
            return;
        };
        let held = self.tensors.as_ref().is_some_and(|t| t.file == meta.file);
        let coming = self.loading.as_ref().is_some_and(|(f, _)| f == &meta.file);
        if !held && !coming {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let meta = (*meta).clone();
            let set2 = set.clone();
            self.loading = Some((meta.file.clone(), rx));
            std::thread::spawn(move || {
                let _ = tx.send(load_tensors(&set2, &meta));
            });
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        if let Some(((), p)) = self.picker.poll() {
            o.calib_dir = p.display().to_string();
            self.open(o);
        }
        if let Some(m) = self.report_task.poll() {
            shared.errors.record(EXPORT, &m);
            self.report_message = Some(m);
        }
        self.folder_row(ui, o, shared);
        let before = o.filter();
        ui.horizontal_wrapped(|ui| {
            widgets::number_field(
                ui,
                "Max images (0 = all)",
                "Browse only the first N images of the folder (0: every image)",
                &mut o.max_images,
                0..=1_000_000,
            );
            widgets::number_field(
                ui,
                "Step stride",
                "Keep every Nth sampling step of each image (1: every step)",
                &mut o.step_stride,
                1..=1000,
            );
            ui.label("Bucket").on_hover_text(
                "Which third of the sampling schedule a step falls in: early (noisy), mid, late",
            );
            ui.selectable_value(&mut o.bucket, None, "all")
                .on_hover_text("Steps of every bucket");
            for b in Bucket::STEPS {
                ui.selectable_value(&mut o.bucket, Some(b), b.name())
                    .on_hover_text(format!("Only the steps of the {} bucket", b.name()));
            }
            ui.checkbox(&mut o.shared_scale, "Shared colour scale")
                .on_hover_text(
                    "Colour all latent channels on one scale (min to max over all channels) instead of one scale per channel",
                );
            labelled(ui, MODEL_LABEL, |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(90.0))
                    .on_hover_text(
                        "The model whose VAE decodes the latent for the preview: tiny, sd3-medium, auto or a model folder",
                    )
            });
        });
        if o.filter() != before {
            self.selected = Some(0);
        }
        if let Some(e) = &self.error {
            super::error_label(ui, &format!("error: {e}"));
        }
        if super::model_notice_ui(ui, &self.model_notice) {
            self.cancel_download();
        }
        let Some(set) = self.set.clone() else {
            ui.label("Open a calibration folder to browse its samples.");
            return;
        };
        let metas = set.select(&o.filter());
        summary_ui(ui, &set, &metas);
        if let Some(t) = self.index_seconds {
            ui.label(format!(
                "indexed {} in {t:.2} s",
                count(set.samples().len(), "file")
            ));
        }
        self.report_row(ui, &set, o, shared);
        ui.separator();
        self.keyboard(ui, &metas);
        egui::Panel::left("sample-list")
            .default_size(300.0)
            .min_size(220.0)
            .show(ui, |ui| {
                let row_h = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
                // One line per row (the list's rows have one height); the tooltip has it all.
                ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
                egui::ScrollArea::vertical().show_rows(ui, row_h, metas.len(), |ui, range| {
                    for i in range {
                        let m = metas[i];
                        let text = format!(
                            "img {:>4} step {:>3} {:<5} t={:.0}",
                            m.image + 1,
                            m.step + 1,
                            m.bucket.name(),
                            m.timestep
                        );
                        if ui
                            .selectable_label(self.selected == Some(i), text)
                            .on_hover_text(format!(
                                "image {} of {}, step {} of {} ({} bucket), timestep t = {:.1}; file {}\nUp/Down: previous/next sample, PgUp/PgDn: previous/next image",
                                m.image + 1,
                                set.num_images(),
                                m.step + 1,
                                set.num_steps(),
                                m.bucket.name(),
                                m.timestep,
                                m.file
                            ))
                            .clicked()
                        {
                            self.selected = Some(i);
                        }
                    }
                });
            });
        egui::CentralPanel::default_margins().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    if let Some(meta) = self.selected.and_then(|i| metas.get(i)) {
                        self.sample_ui(ui, &set, meta, o, shared);
                    }
                });
        });
        self.wanted = self
            .selected
            .and_then(|i| metas.get(i))
            .map(|m| m.file.clone());
    }

    /// The folder field (Enter opens it), Open, Choose..., the base folder of relative paths
    /// and the offer of the set the Generate tab just wrote.
    fn folder_row(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        ui.horizontal(|ui| {
            let field = labelled(ui, "Calibration folder", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(260.0))
                    .on_hover_text(format!(
                        "A folder written by a calibration run (Generate tab or `sd3lab calibrate`); Enter opens it.\n{}",
                        o.calib_dir
                    ))
            });
            let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui
                .button("Open")
                .on_hover_text("Index the folder's samples")
                .clicked()
                || entered
            {
                self.open(o);
            }
            if ui
                .button("Choose...")
                .on_hover_text("Pick the folder in a dialog")
                .clicked()
            {
                self.picker.open((), PickKind::Folder);
            }
            if self.opening.is_some() {
                ui.spinner();
            }
        });
        super::picker_unavailable_ui(ui, &mut self.picker);
        let typed = PathBuf::from(o.calib_dir.trim());
        if !typed.is_absolute() {
            widgets::base_folder_note(ui);
        }
        if let Some(fresh) = shared.fresh_calibration.clone()
            && self.opened_dir.as_deref() != Some(fresh.as_path())
        {
            let text = format!("Open the set just generated: {}", fresh.display());
            if ui
                .button(text)
                .on_hover_text(format!(
                    "The calibration folder the Generate tab just finished writing:\n{}",
                    fresh.display()
                ))
                .clicked()
            {
                o.calib_dir = fresh.display().to_string();
                self.open(o);
            }
        }
    }

    /// Export buttons and the last report's link (or error).
    fn report_row(
        &mut self,
        ui: &mut egui::Ui,
        set: &Arc<CalibrationSet>,
        o: &Options,
        shared: &mut Shared,
    ) {
        ui.horizontal_wrapped(|ui| {
            let busy = self.report_task.is_running();
            if let Some(asked) = super::report_buttons(ui, set.dir(), "samples", busy) {
                let (set, filter) = (set.clone(), o.filter());
                self.report_message = None;
                self.report_task.spawn(ui.ctx(), move || {
                    let out = super::numbered_report(&asked);
                    crate::report::write_samples_report(&set, &filter, &out)
                        .map(|files| (out, files.len().saturating_sub(1)))
                        .map_err(|e| feedback::error_sentence(&e))
                });
            }
            match &self.report_message {
                Some(Ok((file, more))) => {
                    ui.label("wrote");
                    if let Some(e) = widgets::path_link(ui, file) {
                        shared.errors.report(EXPORT, e);
                    }
                    if *more > 0 {
                        ui.label(format!("(+{})", count(*more, "file")))
                            .on_hover_text("The report's data and figures, beside it");
                    }
                }
                Some(Err(e)) => {
                    super::error_label(ui, &format!("error: {e}"));
                }
                None => {}
            }
        });
    }

    fn keyboard(&mut self, ui: &egui::Ui, metas: &[&SampleMeta]) {
        if metas.is_empty() || ui.ctx().memory(|m| m.focused().is_some()) {
            return;
        }
        let (down, up, next_img, prev_img) = ui.input(|i| {
            (
                i.key_pressed(egui::Key::ArrowDown),
                i.key_pressed(egui::Key::ArrowUp),
                i.key_pressed(egui::Key::PageDown),
                i.key_pressed(egui::Key::PageUp),
            )
        });
        let cur = self.selected.unwrap_or(0).min(metas.len() - 1);
        let new = if down {
            (cur + 1).min(metas.len() - 1)
        } else if up {
            cur.saturating_sub(1)
        } else if next_img {
            let img = metas[cur].image;
            metas.iter().position(|m| m.image > img).unwrap_or(cur)
        } else if prev_img {
            let img = metas[cur].image;
            let prev = metas[..cur]
                .iter()
                .rev()
                .find(|m| m.image < img)
                .map(|m| m.image);
            prev.and_then(|p| metas.iter().position(|m| m.image == p))
                .unwrap_or(cur)
        } else {
            cur
        };
        self.selected = Some(new);
    }

    fn sample_ui(
        &mut self,
        ui: &mut egui::Ui,
        set: &CalibrationSet,
        meta: &SampleMeta,
        o: &mut Options,
        shared: &mut Shared,
    ) {
        let (image, step) = (
            format!("{} of {}", meta.image + 1, set.num_images()),
            format!("{} of {}", meta.step + 1, set.num_steps()),
        );
        ui.heading(format!("Sample: image {image}, step {step}"));
        let ctx = ui.ctx().clone();
        let tensors = self.tensors.clone().filter(|t| t.file == meta.file);
        let layout = tensors
            .as_ref()
            .and_then(|t| LatentLayout::from_shape(&t.x_shape));
        // The previews go beside the metadata, shrunk to the width left (down to
        // MIN_PREVIEW_SCALE), else below it: never cut.
        let gap = 3.0 * ui.spacing().item_spacing.x;
        let scale_for = |width: f32| ((width - gap) / (GRID_WIDTH + VAE_SIZE)).min(1.0);
        let beside = ui
            .horizontal_top(|ui| {
                ui.vertical(|ui| meta_grid(ui, set, meta, image, step));
                let (Some(t), Some(layout)) = (&tensors, layout) else {
                    return true;
                };
                let k = scale_for(ui.available_width());
                if k < MIN_PREVIEW_SCALE {
                    return false;
                }
                self.latent_previews(ui, t, layout, k, o, shared);
                true
            })
            .inner;
        if !beside && let (Some(t), Some(layout)) = (&tensors, layout) {
            let k = scale_for(ui.available_width());
            if k >= MIN_PREVIEW_SCALE {
                ui.horizontal_top(|ui| self.latent_previews(ui, t, layout, k, o, shared));
            } else {
                // One above the other, each as wide as there is room.
                let k = (ui.available_width() / GRID_WIDTH).min(1.0);
                self.latent_previews(ui, t, layout, k, o, shared);
            }
        }
        ui.separator();
        let Some(t) = tensors else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading tensors...");
            });
            return;
        };
        if layout.is_none() {
            ui.label(format!("x has an unexpected shape {:?}", t.x_shape));
            return;
        }
        self.tensor_plots(ui, &ctx, &t, o, shared);
    }

    fn latent_previews(
        &mut self,
        ui: &mut egui::Ui,
        t: &SampleTensors,
        layout: LatentLayout,
        scale: f32,
        o: &Options,
        shared: &mut Shared,
    ) {
        let generation = self.generation;
        let ctx = &ui.ctx().clone();
        ui.vertical(|ui| {
            let width = (GRID_WIDTH * scale).min(ui.available_width());
            // Captions wrap to the picture's width rather than widen the column.
            ui.set_max_width(width);
            ui.label(format!(
                "latent x: {} channels of {}x{} ({} scale)",
                layout.channels,
                layout.height,
                layout.width,
                if o.shared_scale {
                    "shared"
                } else {
                    "per-channel"
                }
            ))
            .on_hover_text(
                "x: the noisy latent the denoiser receives at this step, one small image per channel (4 per row)",
            );
            let ranges = preview::channel_ranges(&t.x, &layout, o.shared_scale);
            let key = format!("grid:{generation}:{}:{}", t.file, o.shared_scale);
            let tex = shared
                .textures
                .get_or_insert(ctx, &key, egui::TextureOptions::NEAREST, || {
                    preview::latent_grid(&t.x, &layout, &ranges, 4).to_color_image()
                });
            let zoom = width / tex.size_vec2().x;
            ui.add(egui::Image::new((tex.id(), tex.size_vec2() * zoom)).alt_text("latent channels"));
            let bar = shared.textures.get_or_insert(
                ctx,
                "bar:viridis",
                egui::TextureOptions::LINEAR,
                || preview::colour_bar(preview::viridis, 256, false).to_color_image(),
            );
            ui.image((bar.id(), egui::vec2(width, 12.0)));
            if o.shared_scale {
                let (lo, hi) = ranges.first().copied().unwrap_or((0.0, 0.0));
                ui.label(format!("{lo:.3} ... {hi:.3}"));
            } else {
                ui.label("each channel scaled from its min (left) to its max (right)");
            }
        });
        ui.vertical(|ui| {
            let size = (VAE_SIZE * scale).min(ui.available_width());
            ui.set_max_width(size);
            ui.label(format!("decoded through the VAE of '{}'", o.model))
                .on_hover_text(format!(
                    "The latent x decoded to pixels by the VAE of {} (what the image would look like if sampling stopped here)",
                    o.model
                ));
            match self.decoded.get(&t.file) {
                Some(Ok(img)) => {
                    let key = format!("vae:{generation}:{}:{}", o.model, t.file);
                    let tex = shared.textures.get_or_insert(
                        ctx,
                        &key,
                        egui::TextureOptions::LINEAR,
                        || egui::ColorImage::from_rgb([img.width, img.height], &img.pixels),
                    );
                    let s = size / tex.size_vec2().x.max(tex.size_vec2().y);
                    ui.add(
                        egui::Image::new((tex.id(), tex.size_vec2() * s))
                            .alt_text("VAE preview"),
                    );
                }
                Some(Err(e)) => {
                    super::error_label(ui, e);
                }
                None => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        let waiting = self
                            .decode_job()
                            .and_then(|id| shared.jobs.waiting_behind(id));
                        ui.label(waiting.unwrap_or_else(|| "decoding...".into()));
                    });
                }
            }
        });
    }

    fn tensor_plots(
        &mut self,
        ui: &mut egui::Ui,
        ctx: &egui::Context,
        t: &SampleTensors,
        o: &mut Options,
        shared: &mut Shared,
    ) {
        ui.horizontal(|ui| {
            let label = ui.label("Conditioning half").on_hover_text(
                "With classifier-free guidance the text conditioning is a batch of two: the prompt's and the negative prompt's",
            );
            egui::ComboBox::from_id_salt("cfg-half")
                .selected_text(o.cfg_half.label())
                .show_ui(ui, |ui| {
                    for h in CfgHalf::ALL {
                        ui.selectable_value(&mut o.cfg_half, h, h.label());
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("Which half of the CFG batch the heatmap shows");
        });
        let key = format!("cond:{}:{}:{:?}", self.generation, t.file, o.cfg_half);
        if self.heat.as_ref().is_none_or(|(k, _)| *k != key) {
            let h = preview::conditioning_heatmap(
                &t.conditioning,
                &t.conditioning_shape,
                o.cfg_half.row(),
                512,
            );
            self.heat = Some((key.clone(), h));
        }
        let Some((_, heat)) = &self.heat else { return };
        let tex = shared
            .textures
            .get_or_insert(ctx, &key, egui::TextureOptions::NEAREST, || {
                heat.picture.to_color_image()
            });
        let shown = if heat.rows == 2 {
            CfgHalf::ALL[heat.row].label().to_string()
        } else {
            format!("batch row {} of {}", heat.row + 1, heat.rows)
        };
        let per_column = if heat.per_column > 1 {
            format!(
                " ({} features per column, each column showing its value of largest magnitude)",
                heat.per_column
            )
        } else {
            String::new()
        };
        let mut left_out = Vec::new();
        if heat.tokens_shown < heat.tokens {
            left_out.push(format!("tokens {}-{}", heat.tokens_shown + 1, heat.tokens));
        }
        if heat.features_shown < heat.features {
            left_out.push(format!(
                "features {}-{}",
                heat.features_shown + 1,
                heat.features
            ));
        }
        let left_out = if left_out.is_empty() {
            String::new()
        } else {
            format!(
                "; {} are all zero in this half and not drawn",
                left_out.join(" and ")
            )
        };
        ui.label(format!(
            "conditioning {:?}, showing the {shown}: tokens down, features across{per_column}{left_out}",
            t.conditioning_shape,
        ))
        .on_hover_text(
            "SD3 text conditioning: tokens 1-77 are CLIP-L and CLIP-G (features 1-2048; 2049-4096 are zero padding), tokens 78-154 the T5 tokens (all zero when T5 is not used)",
        );
        let bar = shared.textures.get_or_insert(
            ctx,
            "bar:diverging",
            egui::TextureOptions::LINEAR,
            || preview::colour_bar(preview::diverging, 256, true).to_color_image(),
        );
        heatmap_ui(ui, &tex, &bar, heat);
        ui.separator();
        let (bins, (lo, hi)) = preview::histogram(&t.x, 64);
        ui.label(format!(
            "histogram of x ({} values, {lo:.3} ... {hi:.3})",
            t.x.len()
        ));
        let width = ((hi - lo) / 64.0).max(1e-6) as f64;
        let bars: Vec<egui_plot::Bar> = bins
            .iter()
            .map(|(c, n)| egui_plot::Bar::new(*c, *n as f64).width(width))
            .collect();
        egui_plot::Plot::new("x-histogram")
            .height(160.0)
            .allow_scroll(false)
            .show(ui, |p| p.bar_chart(egui_plot::BarChart::new("x", bars)));
    }
}

/// The heatmap with its axes (token and feature ticks, numbered from 1) and its colour bar
/// with the scale's range; hovering a cell names its token and features.
fn heatmap_ui(
    ui: &mut egui::Ui,
    tex: &egui::TextureHandle,
    bar: &egui::TextureHandle,
    heat: &preview::Heatmap,
) {
    let font = egui::FontId::proportional(11.0);
    let colour = ui.visuals().text_color();
    let stroke = egui::Stroke::new(1.0, colour);
    // Room for the token ticks on the left, the axis titles above and below, and the last
    // feature tick's number on the right.
    let (axis, top, bottom, right) = (44.0, 16.0, 32.0, 24.0);
    let width = (ui.available_width() - axis - right).clamp(100.0, 512.0);
    let tokens = heat.tokens_shown.max(1);
    let features = heat.features_shown.max(1);
    let height = (tokens as f32 * 2.5).clamp(60.0, 300.0);
    let (rect, response) = ui.allocate_exact_size(
        egui::vec2(axis + width + right, top + height + bottom),
        egui::Sense::hover(),
    );
    let map =
        egui::Rect::from_min_size(rect.min + egui::vec2(axis, top), egui::vec2(width, height));
    let painter = ui.painter_at(rect);
    painter.image(
        tex.id(),
        map,
        egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
        egui::Color32::WHITE,
    );
    painter.rect_stroke(map, 0.0, stroke, egui::StrokeKind::Outside);
    // Ticks at the first, the middle and the last token and feature, numbered from 1.
    let ticks = |n: usize| {
        let mut t = vec![1, n.div_ceil(2), n];
        t.dedup();
        t
    };
    for t in ticks(tokens) {
        let y = map.top() + (t as f32 - 0.5) / tokens as f32 * height;
        painter.line_segment(
            [egui::pos2(map.left() - 4.0, y), egui::pos2(map.left(), y)],
            stroke,
        );
        painter.text(
            egui::pos2(map.left() - 6.0, y),
            egui::Align2::RIGHT_CENTER,
            t.to_string(),
            font.clone(),
            colour,
        );
    }
    for f in ticks(features) {
        let x = map.left() + (f as f32 - 0.5) / features as f32 * width;
        painter.line_segment(
            [
                egui::pos2(x, map.bottom()),
                egui::pos2(x, map.bottom() + 4.0),
            ],
            stroke,
        );
        painter.text(
            egui::pos2(x, map.bottom() + 5.0),
            egui::Align2::CENTER_TOP,
            f.to_string(),
            font.clone(),
            colour,
        );
    }
    painter.text(
        egui::pos2(map.center().x, map.bottom() + 18.0),
        egui::Align2::CENTER_TOP,
        "feature",
        font.clone(),
        colour,
    );
    painter.text(
        egui::pos2(rect.left(), rect.top()),
        egui::Align2::LEFT_TOP,
        "token",
        font,
        colour,
    );
    if let Some(p) = response.hover_pos()
        && map.contains(p)
    {
        let t = (((p.y - map.top()) / height * tokens as f32) as usize).min(tokens - 1);
        let c = (((p.x - map.left()) / width * heat.picture.width as f32) as usize)
            .min(heat.picture.width.saturating_sub(1));
        let first = c * heat.per_column;
        let last = ((c + 1) * heat.per_column).min(features);
        let features = if last > first + 1 {
            format!("features {}-{last}", first + 1)
        } else {
            format!("feature {last}")
        };
        response.on_hover_text_at_pointer(format!("token {}, {features}", t + 1));
    }
    // The colour bar and its range.
    ui.horizontal(|ui| {
        ui.add_space(axis);
        ui.vertical(|ui| {
            ui.image((bar.id(), egui::vec2(width, 12.0)));
            let s = heat.scale;
            let (labels, _) =
                ui.allocate_exact_size(egui::vec2(width, 14.0), egui::Sense::hover());
            let font = egui::FontId::proportional(12.0);
            let colour = ui.visuals().text_color();
            for (x, align, text) in [
                (labels.left(), egui::Align2::LEFT_TOP, format!("{:.3}", -s)),
                (labels.center().x, egui::Align2::CENTER_TOP, "0".to_string()),
                (labels.right(), egui::Align2::RIGHT_TOP, format!("+{s:.3}")),
            ] {
                ui.painter().text(
                    egui::pos2(x, labels.top()),
                    align,
                    text,
                    font.clone(),
                    colour,
                );
            }
            ui.label(format!(
                "colour scale symmetric at +-{s:.3}: the {:.0}th percentile of the non-zero values' magnitudes; larger values (up to {:.3}) are drawn at the ends; white is 0",
                preview::HEATMAP_PERCENTILE * 100.0,
                heat.max_abs
            ));
        });
    });
}

/// The sample's metadata, with what the technical names mean on hover.
fn meta_grid(
    ui: &mut egui::Ui,
    set: &CalibrationSet,
    meta: &SampleMeta,
    image: String,
    step: String,
) {
    egui::Grid::new("sample-meta").striped(true).show(ui, |ui| {
        let row = |ui: &mut egui::Ui, k: &str, v: String, tip: &str| {
            ui.label(k).on_hover_text(tip);
            ui.label(v).on_hover_text(tip);
            ui.end_row();
        };
        let path = set.dir().join(&meta.file);
        row(ui, "file", meta.file.clone(), &path.display().to_string());
        row(
            ui,
            "image",
            image,
            "Numbered from 1; the file name counts from 0",
        );
        row(
            ui,
            "step",
            step,
            "Sampling step, numbered from 1; the file name counts from 0",
        );
        row(
            ui,
            "bucket",
            meta.bucket.name().to_owned(),
            "Which third of the sampling schedule the step falls in: early (noisy), mid, late",
        );
        row(
            ui,
            "timestep",
            format!("{:.4}", meta.timestep),
            "The denoiser's timestep input: sigma x 1000 (1000 is pure noise)",
        );
        row(
            ui,
            "sigma",
            format!("{:.6}", meta.sigma),
            "The noise level of this step: x = (1 - sigma) image + sigma noise",
        );
        row(
            ui,
            "size",
            human_bytes(meta.file_size),
            "The sample file's size",
        );
        for (k, t) in &meta.tensors {
            let tip = match k.name() {
                "x" => "x: the noisy latent the denoiser receives (batch, height, width, channels)",
                "conditioning" => {
                    "The text tokens' embeddings: (CFG half: prompt, negative; tokens; features)"
                }
                "pooled_conditioning" => "The pooled CLIP embedding of each CFG half",
                "timestep" => "The denoiser's timestep input",
                "sigma" => "The step's noise level",
                _ => "A tensor stored in the sample file",
            };
            row(ui, k.name(), format!("{:?} {:?}", t.shape, t.dtype), tip);
        }
    });
}

fn summary_ui(ui: &mut egui::Ui, set: &CalibrationSet, metas: &[&SampleMeta]) {
    let s = CalibrationSet::summarize(metas);
    let per_bucket: Vec<String> = s
        .buckets
        .iter()
        .map(|(b, n)| format!("{} {n}", b.name()))
        .collect();
    ui.label(format!(
        "{} x {}; {} selected ({}); {}",
        count(set.num_images(), "image"),
        count(set.num_steps(), "step"),
        count(s.samples, "sample"),
        per_bucket.join(", "),
        human_bytes(s.bytes)
    ));
    let problems = set.problems();
    if problems.is_empty() {
        ui.label("no problems found");
    } else {
        egui::CollapsingHeader::new(format!("{} found", count(problems.len(), "problem"))).show(
            ui,
            |ui| {
                for p in problems.iter().take(200) {
                    let file = p
                        .file
                        .as_ref()
                        .map_or(String::new(), |f| format!("{}: ", f.display()));
                    ui.label(format!("{file}{}", p.message));
                }
            },
        );
    }
}

fn load_tensors(set: &CalibrationSet, meta: &SampleMeta) -> Result<SampleTensors, String> {
    let x = set
        .load(meta, SampleKey::X)
        .map_err(|e| feedback::error_sentence(&e))?;
    let c = set
        .load(meta, SampleKey::Conditioning)
        .map_err(|e| feedback::error_sentence(&e))?;
    Ok(SampleTensors {
        file: meta.file.clone(),
        x: x.data.to_f32_vec(),
        x_shape: x.shape.clone(),
        conditioning: c.data.to_f32_vec(),
        conditioning_shape: c.shape.clone(),
    })
}

/// A decode error in this tab's terms.
fn decode_error_message(e: &DecodeError) -> String {
    match e {
        DecodeError::Model(e) => super::model_error_message(e, MODEL_LABEL),
        other => other.to_string(),
    }
}

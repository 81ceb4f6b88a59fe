//! The Samples tab: open a calibration folder (indexed on a helper thread: metadata only),
//! a summary with counts per bucket and the problems found, browsing by bucket, image and step
//! with the CLI's filters and the keyboard (↑/↓ sample, PgUp/PgDn image), and for a sample its
//! metadata and previews: the latent's channels as a grid with a colour bar, the latent decoded
//! through the VAE (on the MLX worker, cached), the conditioning as a heatmap, a histogram.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::preview::{self, LatentLayout};
use super::worker::{Command, DecodeError, Event, RgbImage};
use super::{PickKind, Picker, Shared, Task, human_bytes, labelled};
use crate::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleKey, SampleMeta};
use crate::job::CancelToken;

/// The field naming the model whose VAE decodes latents; warnings and errors name it.
pub const MODEL_LABEL: &str = "VAE of model";

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

/// The tab's state.
#[derive(Default)]
pub struct SamplesTab {
    opening: Option<Receiver<(Result<CalibrationSet, String>, f64)>>,
    /// How long indexing the folder took on its helper thread (seconds).
    pub index_seconds: Option<f64>,
    pub set: Option<Arc<CalibrationSet>>,
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
    pub report_message: Option<Result<String, String>>,
    /// The folder's report being written on a helper thread.
    report_task: Task<Result<String, String>>,
    picker: Picker<()>,
}

impl SamplesTab {
    /// Indexes `o.calib_dir` on a helper thread.
    pub fn open(&mut self, o: &Options) {
        let dir = PathBuf::from(&o.calib_dir);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.opening = Some(rx);
        self.error = None;
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let r = CalibrationSet::open(&dir, &OpenOptions::default()).map_err(|e| e.to_string());
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
            match r {
                Ok(set) => {
                    self.set = Some(Arc::new(set));
                    self.selected = Some(0);
                    self.tensors = None;
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
            self.report_message = Some(m);
        }
        ui.horizontal(|ui| {
            labelled(ui, "Calibration folder", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(260.0))
            });
            if ui.button("Open").clicked() {
                self.open(o);
            }
            if ui.button("Choose...").clicked() {
                self.picker.open((), PickKind::Folder);
            }
            if self.opening.is_some() {
                ui.spinner();
            }
        });
        let before = o.filter();
        ui.horizontal(|ui| {
            labelled(ui, "Max images (0 = all)", |ui| {
                ui.add(egui::DragValue::new(&mut o.max_images).range(0..=1_000_000))
            });
            labelled(ui, "Step stride", |ui| {
                ui.add(egui::DragValue::new(&mut o.step_stride).range(1..=1000))
            });
            ui.label("Bucket");
            ui.selectable_value(&mut o.bucket, None, "all");
            for b in Bucket::STEPS {
                ui.selectable_value(&mut o.bucket, Some(b), b.name());
            }
            ui.checkbox(&mut o.shared_scale, "Shared colour scale");
            labelled(ui, MODEL_LABEL, |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(90.0))
            });
        });
        if o.filter() != before {
            self.selected = Some(0);
        }
        if let Some(e) = &self.error {
            ui.colored_label(egui::Color32::from_rgb(200, 40, 40), format!("error: {e}"));
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
            ui.label(format!("indexed {} files in {t:.2} s", set.samples().len()));
        }
        ui.horizontal(|ui| {
            let busy = self.report_task.is_running();
            if let Some(out) = super::report_buttons(ui, set.dir(), "samples", busy) {
                let (set, filter) = (set.clone(), o.filter());
                self.report_message = None;
                self.report_task.spawn(ui.ctx(), move || {
                    let out = super::numbered_report(&out);
                    super::report_outcome(
                        &out,
                        crate::report::write_samples_report(&set, &filter, &out),
                    )
                });
            }
            super::message_ui(ui, &self.report_message);
        });
        ui.separator();
        self.keyboard(ui, &metas);
        egui::Panel::left("sample-list")
            .default_size(300.0)
            .show(ui, |ui| {
                let row_h = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
                egui::ScrollArea::vertical().show_rows(ui, row_h, metas.len(), |ui, range| {
                    for i in range {
                        let m = metas[i];
                        let text = format!(
                            "img {:>4} step {:>3} {:<5} t={:.0}",
                            m.image,
                            m.step,
                            m.bucket.name(),
                            m.timestep
                        );
                        if ui
                            .selectable_label(self.selected == Some(i), text)
                            .clicked()
                        {
                            self.selected = Some(i);
                        }
                    }
                });
            });
        egui::CentralPanel::default_margins().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                if let Some(meta) = self.selected.and_then(|i| metas.get(i)) {
                    self.sample_ui(ui, meta, o, shared);
                }
            });
        });
        self.wanted = self
            .selected
            .and_then(|i| metas.get(i))
            .map(|m| m.file.clone());
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
        meta: &SampleMeta,
        o: &Options,
        shared: &mut Shared,
    ) {
        ui.heading(format!("Sample: image {} step {}", meta.image, meta.step));
        let ctx = ui.ctx().clone();
        let tensors = self.tensors.clone().filter(|t| t.file == meta.file);
        let layout = tensors
            .as_ref()
            .and_then(|t| LatentLayout::from_shape(&t.x_shape));
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                egui::Grid::new("sample-meta").striped(true).show(ui, |ui| {
                    let row = |ui: &mut egui::Ui, k: &str, v: String| {
                        ui.label(k);
                        ui.label(v);
                        ui.end_row();
                    };
                    row(ui, "file", meta.file.clone());
                    row(ui, "image", meta.image.to_string());
                    row(ui, "step", meta.step.to_string());
                    row(ui, "bucket", meta.bucket.name().to_owned());
                    row(ui, "timestep", format!("{:.4}", meta.timestep));
                    row(ui, "sigma", format!("{:.6}", meta.sigma));
                    row(ui, "size", human_bytes(meta.file_size));
                    for (k, t) in &meta.tensors {
                        row(ui, k.name(), format!("{:?} {:?}", t.shape, t.dtype));
                    }
                });
            });
            if let (Some(t), Some(layout)) = (&tensors, layout) {
                self.latent_previews(ui, &ctx, t, layout, o, shared);
            }
        });
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
        self.tensor_plots(ui, &ctx, &t, shared);
    }

    fn latent_previews(
        &mut self,
        ui: &mut egui::Ui,
        ctx: &egui::Context,
        t: &SampleTensors,
        layout: LatentLayout,
        o: &Options,
        shared: &mut Shared,
    ) {
        {
            ui.vertical(|ui| {
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
                ));
                let ranges = preview::channel_ranges(&t.x, &layout, o.shared_scale);
                let key = format!("grid:{}:{}", t.file, o.shared_scale);
                let tex =
                    shared
                        .textures
                        .get_or_insert(ctx, &key, egui::TextureOptions::NEAREST, || {
                            preview::latent_grid(&t.x, &layout, &ranges, 4).to_color_image()
                        });
                let scale = (300.0 / tex.size_vec2().x).max(1.0);
                ui.image((tex.id(), tex.size_vec2() * scale));
                let bar = shared.textures.get_or_insert(
                    ctx,
                    "bar:viridis",
                    egui::TextureOptions::LINEAR,
                    || preview::colour_bar(preview::viridis, 256, false).to_color_image(),
                );
                ui.image((bar.id(), egui::vec2(300.0, 12.0)));
                if o.shared_scale {
                    let (lo, hi) = ranges.first().copied().unwrap_or((0.0, 0.0));
                    ui.label(format!("{lo:.3} ... {hi:.3}"));
                } else {
                    ui.label("each channel scaled from its min (left) to its max (right)");
                }
            });
            ui.vertical(|ui| {
                ui.label(format!("decoded through the VAE of '{}'", o.model));
                match self.decoded.get(&t.file) {
                    Some(Ok(img)) => {
                        let key = format!("vae:{}:{}", o.model, t.file);
                        let tex = shared.textures.get_or_insert(
                            ctx,
                            &key,
                            egui::TextureOptions::LINEAR,
                            || egui::ColorImage::from_rgb([img.width, img.height], &img.pixels),
                        );
                        let s = 256.0 / tex.size_vec2().x.max(tex.size_vec2().y);
                        ui.image((tex.id(), tex.size_vec2() * s));
                    }
                    Some(Err(e)) => {
                        ui.colored_label(egui::Color32::from_rgb(200, 40, 40), e);
                    }
                    None => {
                        ui.spinner();
                    }
                }
            });
        }
    }

    fn tensor_plots(
        &mut self,
        ui: &mut egui::Ui,
        ctx: &egui::Context,
        t: &SampleTensors,
        shared: &mut Shared,
    ) {
        let (heat, scale) = {
            let key = format!("cond:{}", t.file);
            let mut scale = 0.0;
            let tex =
                shared
                    .textures
                    .get_or_insert(ctx, &key, egui::TextureOptions::NEAREST, || {
                        let (p, s) = preview::conditioning_heatmap(
                            &t.conditioning,
                            &t.conditioning_shape,
                            512,
                        );
                        scale = s;
                        p.to_color_image()
                    });
            (tex, scale)
        };
        ui.label(format!(
            "conditioning {:?}: tokens (down) x features (across, averaged to {} columns); tokens 77.. are the zero T5 half{}",
            t.conditioning_shape,
            heat.size()[0],
            if scale > 0.0 { format!("; colour scale +-{scale:.3}") } else { String::new() }
        ));
        ui.image((heat.id(), egui::vec2(512.0, 231.0)));
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

fn summary_ui(ui: &mut egui::Ui, set: &CalibrationSet, metas: &[&SampleMeta]) {
    let s = CalibrationSet::summarize(metas);
    let per_bucket: Vec<String> = s
        .buckets
        .iter()
        .map(|(b, n)| format!("{} {n}", b.name()))
        .collect();
    ui.label(format!(
        "{} images x {} steps; {} samples selected ({}); {}",
        set.num_images(),
        set.num_steps(),
        s.samples,
        per_bucket.join(", "),
        human_bytes(s.bytes)
    ));
    let problems = set.problems();
    if problems.is_empty() {
        ui.label("no problems found");
    } else {
        egui::CollapsingHeader::new(format!("{} problems found", problems.len())).show(ui, |ui| {
            for p in problems.iter().take(200) {
                let file = p
                    .file
                    .as_ref()
                    .map_or(String::new(), |f| format!("{}: ", f.display()));
                ui.label(format!("{file}{}", p.message));
            }
        });
    }
}

fn load_tensors(set: &CalibrationSet, meta: &SampleMeta) -> Result<SampleTensors, String> {
    let x = set.load(meta, SampleKey::X).map_err(|e| e.to_string())?;
    let c = set
        .load(meta, SampleKey::Conditioning)
        .map_err(|e| e.to_string())?;
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

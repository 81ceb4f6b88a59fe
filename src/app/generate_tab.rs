//! The Generate tab: a calibration run (`sd3lab calibrate` options) started, cancelled and
//! resumed from the UI, with nested progress, a live preview of each finished image, the run's
//! gallery with prompts, and the disk estimate before starting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::feedback::{JobState, Place, error_sentence, folder_problem};
use super::widgets::{number_field, path_link};
use super::worker::{Command, Event};
use super::{PickKind, Picker, Shared, Tab, Task, count, human_bytes, labelled};
use crate::calib::Manifest;
use crate::calibrate::{
    CalibrateConfig, CalibrateError, CalibrateEvent, GenerationSettings, estimate_bytes_per_image,
    free_bytes,
};
use crate::job::CancelToken;
use crate::model::Preset;
use crate::model::config::ModelDtype;

/// A decoded PNG (None when unreadable), from a helper thread.
type Decoded = (PathBuf, Option<egui::ColorImage>);
type DecodedTx = crossbeam_channel::Sender<Decoded>;
type DecodedRx = crossbeam_channel::Receiver<Decoded>;

/// The control that lets a run replace a different run (or foreign files) in its folder.
pub const START_OVER_LABEL: &str = "Start over (delete existing data)";
/// The control that lets a run start although the disk looks too small.
pub const FORCE_LABEL: &str = "Start even if the disk looks too small";
/// The model field, which model warnings and errors name.
pub const MODEL_LABEL: &str = "Model (name or folder)";
/// What the job board and the status bar call this tab's job.
pub const JOB_LABEL: &str = "calibration run";
/// Shown from the click on Cancel until the run has stopped.
pub const CANCELLING: &str =
    "cancelling... (the run stops after its current step; finished images are kept)";
/// Where the tab's own (non-job) errors are filed in the app's error model.
const REPORT_PLACE: Place = Place::new(Tab::Generate, "report");
const FOLDER_PLACE: Place = Place::new(Tab::Generate, "output folder");
const OPEN_PLACE: Place = Place::new(Tab::Generate, "open folder");

/// What a file dialog of the tab is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Model,
    PromptCsv,
    OutputFolder,
}

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
    /// Delete a different run (or foreign files) in the folder and start over. Not persisted:
    /// a restart never deletes data on its own.
    #[serde(skip)]
    pub overwrite: bool,
    /// Start even when the disk estimate exceeds the free space (not persisted either).
    #[serde(skip)]
    pub force: bool,
    /// Final images and the manifest only, no per-step samples: a benchmark reference set.
    pub images_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            // The built-in demo model at its own size and settings; its prompts (the CSV
            // left empty) are the shipped demo captions.
            model: "tiny".into(),
            prompt_source: PromptSource::Csv,
            prompt_csv: String::new(),
            prompt: crate::demo::DEMO_PROMPT.into(),
            num_images: 4,
            num_steps: crate::demo::DEMO_STEPS,
            cfg_weight: crate::demo::DEMO_CFG,
            seed: 0,
            height: crate::demo::DEMO_SIDE,
            width: crate::demo::DEMO_SIDE,
            calib_dir: "calibration_data".into(),
            negative_prompt: String::new(),
            overwrite: false,
            force: false,
            images_only: false,
        }
    }
}

/// The disk estimate and whether the folder holds a run to resume, for a set of options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskStatus {
    /// "Disk: about X for N images x M steps (Y free)".
    pub estimate: String,
    pub resumable: bool,
    /// Why the output folder cannot take a run (it is a file...); a folder that does not exist
    /// yet is fine: the run creates it.
    pub folder_problem: Option<String>,
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

/// The tab's job: its id on the worker and the job board, its cancel token, and the folder it
/// writes (absolute).
struct Job {
    id: u64,
    cancel: CancelToken,
    dir: PathBuf,
}

/// The tab's state.
#[derive(Default)]
pub struct GenerateTab {
    job: Option<Job>,
    pub progress: Progress,
    pub gallery: Vec<GalleryItem>,
    /// The image shown large.
    pub selected: Option<usize>,
    pub message: Option<Result<String, String>>,
    /// The model's warning and download progress for the current (or last) run.
    pub model_notice: super::ModelNotice,
    /// The run's notes (shipped prompts used, prompts reused), as of its plan.
    pub notes: Vec<String>,
    picker: Picker<Pick>,
    /// The folder whose gallery is shown (or being scanned).
    scanned: Option<PathBuf>,
    /// The gallery's folder scan, on a helper thread.
    gallery_task: Task<(PathBuf, Vec<GalleryItem>)>,
    /// PNGs being decoded on helper threads.
    decoding: std::collections::HashSet<PathBuf>,
    decoded: Option<(DecodedTx, DecodedRx)>,
    /// The disk status for these options, and its computation (free space, manifest) on a
    /// helper thread.
    status: Option<(Options, DiskStatus)>,
    status_task: Task<(Options, DiskStatus)>,
    /// The run's report being written on a helper thread: the file written, or the error.
    report_task: Task<Result<PathBuf, String>>,
    /// The last report written (or why not), for the folder now shown.
    pub report: Option<Result<PathBuf, String>>,
    /// The output folder field has the keyboard focus: what is typed is applied (the gallery
    /// scanned, stale messages cleared) on Enter or when the focus leaves.
    editing_dir: bool,
}

impl GenerateTab {
    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// The job's id on the worker and the job board, while it has one.
    pub fn job_id(&self) -> Option<u64> {
        self.job.as_ref().map(|j| j.id)
    }

    /// Starts (or resumes: the calibration job continues a run with the same settings).
    pub fn start(&mut self, ctx: &egui::Context, o: &Options, shared: &mut Shared) {
        if self.job.is_some() {
            return;
        }
        // A single prompt becomes a one-line CSV, which the worker writes (not this thread).
        let (prompt_csv, single_prompt) = match o.prompt_source {
            PromptSource::Csv if o.prompt_csv.trim().is_empty() => (None, None),
            PromptSource::Csv => (Some(PathBuf::from(o.prompt_csv.trim())), None),
            PromptSource::Single => (None, Some(o.prompt.clone())),
        };
        // The run writes the folder as typed, resolved against the working directory shown
        // under the fields; the other tabs are offered it by this absolute name.
        let dir = super::resolve_path(&o.calib_dir);
        let config = CalibrateConfig {
            model: o.model.clone(),
            num_images: o.num_images,
            num_steps: o.num_steps,
            cfg_weight: o.cfg_weight,
            calib_dir: dir.clone(),
            prompt_csv,
            seed: o.seed,
            height: o.height,
            width: o.width,
            dtype: ModelDtype::default_for_backend(),
            negative_prompt: o.negative_prompt.clone(),
            overwrite: o.overwrite,
            force: o.force,
            images_only: o.images_only,
        };
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        if shared.worker.send(Command::Calibrate {
            id,
            config,
            single_prompt,
            cancel: cancel.clone(),
        }) {
            shared.jobs.submit(id, Tab::Generate, JOB_LABEL);
            self.job = Some(Job { id, cancel, dir });
            self.progress = Progress::default();
            self.message = None;
            self.model_notice = super::ModelNotice::default();
            self.notes.clear();
            self.scan(ctx, PathBuf::from(&o.calib_dir));
        } else {
            let e = "the MLX worker has stopped; restart the app".to_owned();
            shared
                .errors
                .report(Place::new(Tab::Generate, "job"), e.clone());
            self.message = Some(Err(e));
        }
    }

    /// Stops the run at its next step (on exit: no board to tell).
    pub fn cancel(&mut self) {
        if let Some(j) = &self.job {
            j.cancel.cancel();
        }
    }

    /// Cancel was clicked: the run stops at its next step, and the tab and the status bar say
    /// "cancelling" from now on.
    pub fn cancel_job(&mut self, shared: &mut Shared) {
        if let Some(j) = &self.job {
            j.cancel.cancel();
            shared.jobs.cancelling(j.id);
        }
    }

    /// The job's state on the board (None when no job).
    fn job_state(&self, shared: &Shared) -> Option<JobState> {
        let j = self.job.as_ref()?;
        Some(shared.jobs.get(j.id).map_or(JobState::Running, |e| e.state))
    }

    /// Applies a worker event that belongs to this tab's job.
    pub fn handle(&mut self, event: &Event, shared: &mut Shared) {
        let Some(id) = self.job_id() else { return };
        match event {
            Event::Calibrate { id: i, event } if *i == id => {
                let p = &mut self.progress;
                match event {
                    CalibrateEvent::Planned {
                        start_image,
                        num_images,
                        num_steps,
                        estimate_bytes,
                        notes,
                    } => {
                        self.notes = notes.clone();
                        p.start_image = *start_image;
                        p.num_images = *num_images;
                        p.num_steps = *num_steps;
                        p.estimate_bytes = *estimate_bytes;
                        p.images_done = *start_image;
                    }
                    // The worker forwards these as `Event::Model` (the tab's model notice).
                    // The app runs calibration whole: distributed runs are the CLI's.
                    CalibrateEvent::Model(_)
                    | CalibrateEvent::ModelLoaded { .. }
                    | CalibrateEvent::JobProgress { .. } => {}
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
                shared.jobs.progress(id, done / total);
            }
            Event::Model { id: i, event } if *i == id => {
                self.model_notice.apply(event, MODEL_LABEL);
                if let Some((_, fraction)) = self.model_notice.running() {
                    shared.jobs.progress(id, fraction);
                }
            }
            Event::Finished {
                id: i,
                cancelled,
                result,
            } if *i == id => {
                if let (Some(job), false, Ok(_)) = (self.job.take(), *cancelled, result) {
                    // A complete set: the Samples and Sensitivity tabs offer to open it.
                    shared.fresh_calibration = Some(job.dir);
                }
                self.status = None;
                self.model_notice.job_ended();
                self.message = Some(super::job_outcome(*cancelled, result));
            }
            _ => {}
        }
    }

    /// Lists the images already in `dir` (with prompts from its manifest) on a helper thread.
    fn scan(&mut self, ctx: &egui::Context, dir: PathBuf) {
        self.scanned = Some(dir.clone());
        self.gallery_task
            .spawn(ctx, move || (dir.clone(), scan_gallery(&dir)));
    }

    /// Picks up finished scans, decodes and reports.
    pub fn poll(&mut self, ctx: &egui::Context, shared: &mut Shared) {
        if let Some((dir, items)) = self.gallery_task.poll()
            && self.scanned.as_ref() == Some(&dir)
        {
            // Images the running job reported meanwhile stay (with their current prompts).
            let mut gallery = std::mem::take(&mut self.gallery);
            for item in items {
                if !gallery.iter().any(|g| g.image == item.image) {
                    gallery.push(item);
                }
            }
            gallery.sort_by_key(|g| g.image);
            self.gallery = gallery;
            if self.selected.is_none() || self.job.is_none() {
                self.selected = self.gallery.last().map(|g| g.image);
            }
        }
        if let Some(status) = self.status_task.poll() {
            let before = self
                .status
                .as_ref()
                .and_then(|s| s.1.folder_problem.as_ref());
            match &status.1.folder_problem {
                // Reported once: other options changing re-check the folder, and a dismissed
                // error about the same folder does not come back.
                Some(p) if before != Some(p) => shared.errors.report(FOLDER_PLACE, p.clone()),
                Some(_) => {}
                None => shared.errors.succeeded(FOLDER_PLACE),
            }
            self.status = Some(status);
        }
        if let Some(r) = self.report_task.poll() {
            match &r {
                Ok(_) => shared.errors.succeeded(REPORT_PLACE),
                Err(e) => shared.errors.report(REPORT_PLACE, e.clone()),
            }
            self.report = Some(r);
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

    /// True while gallery images are being decoded or the folder scanned, the disk status
    /// computed or the report written.
    pub fn is_loading(&self) -> bool {
        !self.decoding.is_empty()
            || self.gallery_task.is_running()
            || self.status_task.is_running()
            || self.report_task.is_running()
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        if let Some((pick, p)) = self.picker.poll() {
            let p = p.display().to_string();
            match pick {
                Pick::Model => o.model = p,
                Pick::PromptCsv => o.prompt_csv = p,
                Pick::OutputFolder => o.calib_dir = p,
            }
        }
        let dir = PathBuf::from(&o.calib_dir);
        if self.scanned.as_ref() != Some(&dir) && self.job.is_none() && !self.editing_dir {
            if self.scanned.is_some() {
                // Another folder: what was said about the last one no longer holds.
                self.message = None;
                self.report = None;
                shared.errors.succeeded(REPORT_PLACE);
                shared.errors.succeeded(Place::new(Tab::Generate, "job"));
            }
            self.gallery.clear();
            self.selected = None;
            self.scan(ui.ctx(), dir.clone());
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
                ui.selectable_value(&mut o.model, "tiny".into(), "tiny (built-in)")
                    .on_hover_text(
                        "The built-in demo model: trained on captioned pictures of flat shapes, \
                         it draws the demo captions at 64x64; no download",
                    );
                ui.selectable_value(&mut o.model, "sd3-medium".into(), "sd3-medium")
                    .on_hover_text(
                        "Stable Diffusion 3 medium from the Hugging Face cache (downloaded when \
                         missing, about 5 GB)",
                    );
            });
            ui.horizontal(|ui| {
                labelled(ui, MODEL_LABEL, |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(150.0))
                        .on_hover_text("tiny, sd3-medium, or the folder of a model's files")
                });
                if ui
                    .button("Folder...")
                    .on_hover_text("Choose a model folder")
                    .clicked()
                {
                    self.picker.open(Pick::Model, PickKind::Folder);
                }
            });
            ui.horizontal(|ui| {
                ui.radio_value(&mut o.prompt_source, PromptSource::Csv, "Prompt CSV")
                    .on_hover_text(
                        "Prompts from a CSV file (column \"prompt\"), or the built-in set",
                    );
                ui.radio_value(&mut o.prompt_source, PromptSource::Single, "Single prompt")
                    .on_hover_text("The same prompt for every image (the seeds differ)");
            });
            match o.prompt_source {
                PromptSource::Csv => {
                    ui.horizontal(|ui| {
                        labelled(ui, "CSV (empty: built-in set)", |ui| {
                            ui.add(
                                egui::TextEdit::singleline(&mut o.prompt_csv).desired_width(120.0),
                            )
                            .on_hover_text(
                                "A CSV file with a \"prompt\" column; empty uses the built-in \
                                 prompt set (for the tiny model, the 40 demo captions of \
                                 assets/demo-prompts.csv; else the 206 of assets/prompts.csv). \
                                 A relative path starts in the base folder below.",
                            )
                        });
                        if ui
                            .button("Browse...")
                            .on_hover_text("Choose a prompt CSV file")
                            .clicked()
                        {
                            self.picker.open(
                                Pick::PromptCsv,
                                PickKind::File {
                                    filter: ("CSV", &["csv"]),
                                },
                            );
                        }
                    });
                }
                PromptSource::Single => {
                    labelled(ui, "Prompt", |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.prompt).desired_width(220.0))
                            .on_hover_text("the prompt of every image (each with its own seed)")
                    });
                }
            }
            labelled(ui, "Negative prompt", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.negative_prompt).desired_width(170.0))
                    .on_hover_text(
                        "What the images should not show: the unconditional half of the CFG \
                         batch (empty: no negative prompt)",
                    )
            });
            number_field(
                ui,
                "Images",
                "How many images to generate (one prompt and seed each)",
                &mut o.num_images,
                1..=100_000,
            );
            number_field(
                ui,
                "Steps",
                "Denoising steps per image; every step's transformer input is saved as a \
                 calibration sample",
                &mut o.num_steps,
                1..=1000,
            );
            number_field(
                ui,
                "CFG weight",
                "Classifier-free guidance weight: how strongly the image follows the prompt \
                 (SD3 uses about 5 to 7.5)",
                &mut o.cfg_weight,
                0.0..=30.0,
            );
            number_field(
                ui,
                "Seed",
                "The first image's random seed; image i uses seed + i, so a run can be repeated",
                &mut o.seed,
                0..=u32::MAX,
            );
            number_field(
                ui,
                "Height",
                "Image height in pixels (a multiple of 16 is best)",
                &mut o.height,
                16..=2048,
            );
            number_field(
                ui,
                "Width",
                "Image width in pixels (a multiple of 16 is best)",
                &mut o.width,
                16..=2048,
            );
            ui.horizontal(|ui| {
                let r = labelled(ui, "Output folder", |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(140.0))
                        .on_hover_text(
                            "Where the run writes its samples, images and manifest; a relative \
                             path starts in the base folder below. Enter shows the folder's \
                             images.",
                        )
                });
                self.editing_dir = r.has_focus();
                if ui
                    .button("Choose...")
                    .on_hover_text("Choose the output folder")
                    .clicked()
                {
                    self.picker.open(Pick::OutputFolder, PickKind::Folder);
                }
            });
            super::widgets::base_folder_note(ui);
            super::picker_unavailable_ui(ui, &mut self.picker);
            ui.checkbox(&mut o.overwrite, START_OVER_LABEL)
                .on_hover_text(
                    "A folder holding a run with other settings (or other files) is refused; \
                 this deletes its samples and images and starts a new run.",
                );
            ui.checkbox(&mut o.force, FORCE_LABEL)
                .on_hover_text("Skips the free-space check before the run.");
            ui.checkbox(
                &mut o.images_only,
                "Images only (a benchmark reference set)",
            )
            .on_hover_text(
                "Writes the final images and the manifest (prompt and seed of every image) \
                 without the per-step samples: the reference set `sd3lab benchmark` compares \
                 against.",
            );
        });
        ui.separator();
        // Free space and the manifest are read on a helper thread when the options change,
        // not every frame and never on this one.
        if self.status.as_ref().is_none_or(|(k, _)| k != o) && !self.status_task.is_running() {
            let options = o.clone();
            self.status_task.spawn(ui.ctx(), move || {
                let status = disk_status(&options);
                (options, status)
            });
        }
        match &self.status {
            Some((_, s)) => {
                ui.label(&s.estimate).on_hover_text(
                    "What the run will write (the per-step samples take most of it), and the \
                     free space on the output folder's disk",
                );
                if let Some(p) = &s.folder_problem {
                    super::error_label(ui, &format!("error: {p}"));
                }
            }
            None => {
                ui.label("Disk: estimating...");
            }
        }
        let resumable = self.status.as_ref().is_some_and(|(_, s)| s.resumable);
        let state = self.job_state(shared);
        ui.horizontal(|ui| {
            let resumable = !running && resumable;
            let start_label = if resumable { "Start / Resume" } else { "Start" };
            if ui
                .add_enabled(!running, egui::Button::new(start_label))
                .on_hover_text(if resumable {
                    "Continue the run in this folder where it stopped (same settings), or start it"
                } else {
                    "Generate the images and save every step's samples"
                })
                .on_disabled_hover_text("A run of this tab is under way")
                .clicked()
            {
                self.start(ui.ctx(), o, shared);
            }
            let can_cancel = matches!(state, Some(JobState::Running | JobState::Queued));
            if ui
                .add_enabled(can_cancel, egui::Button::new("Cancel"))
                .on_hover_text("Stop the run after its current step; Start resumes it later")
                .on_disabled_hover_text(if state == Some(JobState::Cancelling) {
                    "Cancelling: the run stops after its current step"
                } else {
                    "No run to cancel"
                })
                .clicked()
            {
                self.cancel_job(shared);
            }
            if state == Some(JobState::Cancelling) {
                ui.spinner();
                ui.label("cancelling...");
            }
        });
        if super::model_notice_ui(ui, &self.model_notice) {
            self.cancel_job(shared);
        }
        for n in &self.notes {
            ui.label(format!("note: {n}"));
        }
        ui.horizontal_wrapped(|ui| {
            let dir = PathBuf::from(&o.calib_dir);
            let busy = self.report_task.is_running();
            if let Some(wanted) = super::report_buttons(ui, &dir, "calibration", busy) {
                self.report = None;
                self.report_task
                    .spawn(ui.ctx(), move || write_report(&dir, &wanted));
            }
        });
        match &self.report {
            Some(Ok(path)) => {
                let path = path.clone();
                ui.horizontal_wrapped(|ui| {
                    ui.label("wrote");
                    if let Some(e) = path_link(ui, &path) {
                        shared.errors.report(OPEN_PLACE, e);
                    }
                });
            }
            Some(Err(e)) => {
                super::error_label(ui, &format!("error: {e}"));
            }
            None => {}
        }
        super::message_ui(ui, &self.message);
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let p = &self.progress;
        match (self.job.as_ref(), self.job_state(shared)) {
            (Some(job), Some(JobState::Queued)) => {
                let waiting = shared
                    .jobs
                    .waiting_behind(job.id)
                    .unwrap_or_else(|| "queued: waiting for the MLX worker".into());
                ui.label(waiting);
                ui.separator();
            }
            (Some(job), Some(JobState::Cancelling))
                if !shared.jobs.get(job.id).is_some_and(|j| j.started) =>
            {
                // Cancelled while it waited: it ends as soon as the worker takes it, with no
                // image to show progress for.
                ui.label(format!("{CANCELLING} (it had not started)"));
                ui.separator();
            }
            (Some(_), state) => {
                if state == Some(JobState::Cancelling) {
                    ui.label(CANCELLING);
                }
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
                ui.add(
                    egui::ProgressBar::new(p.images_done as f32 / total as f32).show_percentage(),
                );
                ui.label(format!("step {} of {}: {}", p.step, p.num_steps, p.prompt));
                ui.add(egui::ProgressBar::new(
                    p.step as f32 / p.num_steps.max(1) as f32,
                ));
                ui.separator();
            }
            (None, _) => {}
        }
        let ctx = ui.ctx().clone();
        if let Some(sel) = self
            .selected
            .and_then(|s| self.gallery.iter().find(|g| g.image == s))
            .cloned()
        {
            // Numbered from 1, as the progress line counts them.
            ui.add(egui::Label::new(format!("image {}: {}", sel.image + 1, sel.prompt)).truncate())
                .on_hover_text(&sel.prompt);
            if let Some(tex) = self.png_texture(&ctx, shared, &sel.path) {
                let size = fit(
                    tex.size_vec2(),
                    egui::vec2(ui.available_width().min(512.0), 320.0),
                );
                ui.image((tex.id(), size));
            }
            ui.separator();
        }
        ui.label(format!("gallery: {}", count(self.gallery.len(), "image")));
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
                            if r.on_hover_text("Show it large").clicked() {
                                self.selected = Some(g.image);
                            }
                        }
                        ui.add(
                            egui::Label::new(format!(
                                "#{} {}",
                                g.image + 1,
                                shorten(&g.prompt, 18)
                            ))
                            .truncate(),
                        )
                        .on_hover_text(format!(
                            "image {}: {}",
                            g.image + 1,
                            g.prompt
                        ));
                    });
                }
            });
        });
    }
}

/// Writes the run's report for `dir` under `wanted`'s name, numbered when taken (on a helper
/// thread): the file written, or why not, as a sentence.
pub fn write_report(dir: &Path, wanted: &Path) -> Result<PathBuf, String> {
    if let Some(p) = folder_problem(dir) {
        return Err(format!("no report: {p}"));
    }
    let out = super::numbered_report(wanted);
    crate::report::write_calibration_report(dir, &out)
        .map(|_| out)
        .map_err(|e| error_sentence(&e))
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

/// What the tab needs from a calibration folder's manifest: images completed and the prompt of
/// each (the run's `generation` settings). None without a readable manifest.
fn read_manifest(dir: &Path) -> Option<(u64, Vec<String>)> {
    // A missing or unreadable manifest means "no run to resume, no prompts": the calibration
    // job itself reports what is wrong with the folder when it starts.
    let manifest = Manifest::read(dir).ok().flatten()?;
    let prompts = GenerationSettings::from_manifest(&manifest)
        .and_then(Result::ok)
        .map(|g| g.prompts)
        .unwrap_or_default();
    Some((manifest.n_completed.unwrap_or(0), prompts))
}

/// Images already in a calibration folder, with prompts from its manifest (reads the disk:
/// call it on a helper thread).
pub fn scan_gallery(dir: &Path) -> Vec<GalleryItem> {
    let prompts = read_manifest(dir).map(|(_, p)| p).unwrap_or_default();
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

/// The disk estimate with the free space, and whether the folder holds a run to resume (reads
/// the disk: call it on a helper thread).
pub fn disk_status(o: &Options) -> DiskStatus {
    let dir = Path::new(&o.calib_dir);
    // A folder not there yet is what a new run makes; only a path that cannot become one is
    // a problem.
    let folder_problem = folder_problem(dir).filter(|_| dir.exists() || dir.as_os_str().is_empty());
    DiskStatus {
        estimate: disk_estimate(o),
        resumable: read_manifest(dir).is_some_and(|(n, _)| n > 0),
        folder_problem,
    }
}

/// "about X on disk, Y free" for the options (queries the free space).
pub fn disk_estimate(o: &Options) -> String {
    let preset = if o.model == "tiny" {
        Preset::Demo
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
        images_only: o.images_only,
    };
    let bytes = estimate_bytes_per_image(&cfg, &preset.config(None)) * o.num_images as u64;
    let free = free_bytes(Path::new(&o.calib_dir)).map_or("free space unknown".to_owned(), |f| {
        format!("{} free", human_bytes(f))
    });
    format!(
        "Disk: about {} for {} x {} ({free})",
        human_bytes(bytes),
        count(o.num_images, "image"),
        count(o.num_steps, "step")
    )
}

/// The message for a calibration job's error. The refusals name the tab's controls that
/// override them, not the CLI's flags.
pub fn error_message(e: &CalibrateError) -> String {
    match e {
        CalibrateError::SettingsDiffer { dir, differences } => format!(
            "{} already holds a calibration run with different settings ({}); tick \"{START_OVER_LABEL}\" to replace it, or choose another output folder",
            dir.display(),
            // The app's font has no arrow glyph.
            differences.replace('→', "->")
        ),
        CalibrateError::ForeignData { dir } => format!(
            "{} holds sample files but no manifest.json from a run; tick \"{START_OVER_LABEL}\" to replace them, or choose another output folder",
            dir.display()
        ),
        CalibrateError::Disk {
            dir,
            needed,
            available,
        } => format!(
            "{}: the run needs about {} but only {} are free; tick \"{FORCE_LABEL}\" to try anyway",
            dir.display(),
            human_bytes(*needed),
            human_bytes(*available)
        ),
        CalibrateError::Source(e) => super::model_error_message(e, MODEL_LABEL),
        // Raw OS texts ("Is a directory (os error 21)") become sentences.
        other => error_sentence(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_tab_controls_not_cli_flags() {
        let differ = error_message(&CalibrateError::SettingsDiffer {
            dir: "runs/a".into(),
            differences: "seed: 0 → 7".into(),
        });
        assert!(differ.contains(START_OVER_LABEL) && differ.contains("seed: 0 -> 7"));
        let foreign = error_message(&CalibrateError::ForeignData {
            dir: "runs/a".into(),
        });
        assert!(foreign.contains(START_OVER_LABEL));
        let disk = error_message(&CalibrateError::Disk {
            dir: "runs/a".into(),
            needed: 5_000_000_000,
            available: 1_000_000_000,
        });
        assert!(
            disk.contains(FORCE_LABEL) && disk.contains("5.00 GB"),
            "{disk}"
        );
        for m in [differ, foreign, disk] {
            assert!(!m.contains("--"), "{m}");
        }
    }
}

//! The desktop app (eframe/egui): a tab bar (Generate · Samples · Sensitivity · Compare), a
//! status bar,
//! state persisted between runs, and one long-lived MLX worker thread ([`worker`]) that runs
//! every MLX job. The UI thread only sends commands and drains events each frame within a
//! time budget; it never waits on MLX, nor on disk: reading, scanning, free-space queries and
//! every export run on helper threads ([`Task`]) and are polled. Also: the screenshot mode
//! (render a tab, save a PNG, exit) and frame-time statistics.

pub mod compare_tab;
pub mod compare_view;
pub mod feedback;
pub mod generate_tab;
pub mod preview;
pub mod samples_tab;
pub mod sensitivity_tab;
pub mod widgets;
pub mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::preview::TextureCache;
use self::worker::{Event, JobError, JobSummary, Worker};
use crate::model::source::{ModelLocations, SourceError, SourceEvent};

/// The smallest window the app allows: every tab's toolbar and status bar fit in it (the
/// `app_shell` tests render each tab at this size).
pub const MIN_WINDOW_SIZE: [f32; 2] = [1000.0, 650.0];

/// Where a report on `input` (a folder, or a file) goes first: beside it, named after it,
/// `<parent>/<input name>-<stem>-report.<ext>`, so the reports of different folders never
/// share a name. A relative `input` is taken from the base folder. The writer numbers it
/// ([`numbered_report`]) when that name is taken.
pub fn report_path(input: &std::path::Path, stem: &str, ext: &str) -> PathBuf {
    // Joining an absolute path replaces the base.
    let input = base_folder().join(input);
    let name = input
        .file_name()
        .map_or_else(|| "sd3lab".to_owned(), |n| n.to_string_lossy().into_owned());
    let parent = input
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    parent.join(format!("{name}-{stem}-report.{ext}"))
}

/// `wanted`, or when it or a file beside it of the same report exists the first free
/// `NAME-2.ext`, `NAME-3.ext`… ([`crate::report::numbered_report_path`]): a report never
/// replaces any file of an earlier one. Reads the disk: call it on the thread that writes.
pub fn numbered_report(wanted: &std::path::Path) -> PathBuf {
    let dir = wanted
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let stem = wanted
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = wanted
        .extension()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    crate::report::numbered_report_path(dir, &stem, &ext)
}

/// The tabs, in the bar's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tab {
    #[default]
    Generate,
    Samples,
    Sensitivity,
    Compare,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Generate, Tab::Samples, Tab::Sensitivity, Tab::Compare];

    pub fn label(self) -> &'static str {
        match self {
            Self::Generate => "Generate",
            Self::Samples => "Samples",
            Self::Sensitivity => "Sensitivity",
            Self::Compare => "Compare",
        }
    }
}

/// What survives a restart. Every field has a default, so older or newer files load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub tab: Tab,
    pub generate: generate_tab::Options,
    pub samples: samples_tab::Options,
    pub sensitivity: sensitivity_tab::Options,
    pub compare: compare_tab::Options,
}

/// How the app was started (`sd3lab gui …`).
#[derive(Debug, Clone)]
pub struct GuiOptions {
    pub calib_dir: Option<PathBuf>,
    pub model: Option<String>,
    pub sensitivity: Option<PathBuf>,
    /// Open this benchmark folder in the Compare tab.
    pub benchmark: Option<PathBuf>,
    /// The Compare tab's image view at start.
    pub compare_view: Option<compare_view::ViewMode>,
    pub tab: Option<Tab>,
    /// Render, save this PNG, exit.
    pub screenshot: Option<PathBuf>,
    pub size: [f32; 2],
    /// Write every frame's UI time (ms) here on exit and print the percentiles.
    pub frame_stats: Option<PathBuf>,
    /// Start the tab's job (a calibration run on the Generate tab) at launch.
    pub start_job: bool,
    /// Quit once no job is running (with `start_job`: after it).
    pub exit_when_idle: bool,
    /// Load and save the persisted state.
    pub persist: bool,
    /// Where the Samples tab's VAE decode finds models (None: the environment's folders, as
    /// the CLI's). Calibration and sensitivity jobs resolve their model from the environment.
    pub model_locations: Option<ModelLocations>,
}

impl Default for GuiOptions {
    fn default() -> Self {
        Self {
            calib_dir: None,
            model: None,
            sensitivity: None,
            benchmark: None,
            compare_view: None,
            tab: None,
            screenshot: None,
            size: [1280.0, 800.0],
            frame_stats: None,
            start_job: false,
            exit_when_idle: false,
            persist: true,
            model_locations: None,
        }
    }
}

/// What the tabs share: the worker and job ids, the texture cache, the job board and the
/// app's one error model.
pub struct Shared {
    pub worker: Worker,
    next_id: u64,
    pub textures: TextureCache,
    /// Label and progress (0..1) of work outside the worker's job order (a model download),
    /// for the status bar; the worker's jobs are on `jobs`.
    pub running: Option<(String, f32)>,
    /// The worker's jobs: running, being cancelled, queued.
    pub jobs: feedback::JobBoard,
    /// The latest error of any tab (the status bar shows it).
    pub errors: feedback::ErrorLog,
    /// The calibration folder the Generate tab last finished writing (absolute), which the
    /// Samples and Sensitivity tabs offer to open.
    pub fresh_calibration: Option<PathBuf>,
}

impl Shared {
    pub fn next_job_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Frame times of the UI thread.
#[derive(Default)]
pub struct FrameStats {
    /// Time in `App::ui` (building the UI, draining events), ms.
    pub frames_ms: Vec<f64>,
    /// eframe's CPU time for the whole frame (UI, tessellation, painting), ms, as reported
    /// one frame later.
    pub full_frames_ms: Vec<f64>,
}

impl FrameStats {
    /// `(p50, p99, max)` in ms of `frames_ms`.
    pub fn percentiles(&self) -> (f64, f64, f64) {
        Self::percentiles_of(&self.frames_ms)
    }

    /// `(p50, p99, max)` of any series.
    pub fn percentiles_of(v: &[f64]) -> (f64, f64, f64) {
        let mut v = v.to_vec();
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), v[v.len() - 1])
    }
}

/// The app.
pub struct SdApp {
    pub persisted: Persisted,
    pub shared: Shared,
    pub generate: generate_tab::GenerateTab,
    pub samples: samples_tab::SamplesTab,
    pub sensitivity: sensitivity_tab::SensitivityTab,
    pub compare: compare_tab::CompareTab,
    backend: String,
    device: String,
    memory: (u64, u64),
    options: GuiOptions,
    frames: u64,
    pub stats: FrameStats,
    screenshot_state: Arc<Mutex<ScreenshotState>>,
    started_job: bool,
}

#[derive(Default, PartialEq, Eq)]
enum ScreenshotState {
    #[default]
    Waiting,
    Requested,
    Saved,
}

impl SdApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: GuiOptions) -> Self {
        let mut persisted: Persisted = if options.persist {
            cc.storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default()
        } else {
            Persisted::default()
        };
        if let Some(tab) = options.tab {
            persisted.tab = tab;
        }
        if let Some(m) = &options.model {
            persisted.generate.model = m.clone();
            persisted.samples.model = m.clone();
            persisted.sensitivity.model = m.clone();
            persisted.compare.model = m.clone();
        }
        if let Some(d) = &options.calib_dir {
            persisted.samples.calib_dir = d.display().to_string();
            persisted.generate.calib_dir = d.display().to_string();
            persisted.sensitivity.calib_dir = d.display().to_string();
        }
        let ctx = cc.egui_ctx.clone();
        let locations = options
            .model_locations
            .clone()
            .unwrap_or_else(ModelLocations::from_env);
        let worker = Worker::spawn(locations, move || ctx.request_repaint());
        let mut app = Self {
            shared: Shared {
                worker,
                next_id: 0,
                textures: TextureCache::new(256 << 20),
                running: None,
                jobs: feedback::JobBoard::default(),
                errors: feedback::ErrorLog::default(),
                fresh_calibration: None,
            },
            generate: generate_tab::GenerateTab::default(),
            samples: samples_tab::SamplesTab::default(),
            sensitivity: sensitivity_tab::SensitivityTab::default(),
            compare: compare_tab::CompareTab::default(),
            persisted,
            backend: "MLX (starting)".into(),
            device: String::new(),
            memory: (0, 0),
            frames: 0,
            stats: FrameStats::default(),
            screenshot_state: Arc::default(),
            started_job: false,
            options,
        };
        if options_calib_given(&app.options) || !app.persisted.samples.calib_dir.is_empty() {
            app.samples.open(&app.persisted.samples);
        }
        if let Some(f) = app.options.sensitivity.clone() {
            app.persisted.sensitivity.report_path = f.display().to_string();
        }
        if !app.persisted.sensitivity.report_path.is_empty() {
            app.sensitivity.open(&app.persisted.sensitivity.report_path);
        }
        if let Some(view) = app.options.compare_view {
            app.persisted.compare.view.mode = view;
        }
        if let Some(d) = app.options.benchmark.clone() {
            app.persisted.compare.benchmark_dir = d.display().to_string();
        }
        if !app.persisted.compare.benchmark_dir.is_empty() {
            app.compare
                .open(&cc.egui_ctx, &app.persisted.compare.benchmark_dir);
        }
        app
    }

    /// Routes worker events for at most `budget`; true when some are left.
    fn drain_events(&mut self, ctx: &egui::Context, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let Some(event) = self.shared.worker.try_recv() else {
                return false;
            };
            match event {
                Event::Ready { backend, device } => {
                    self.backend = backend;
                    self.device = device;
                }
                Event::Memory { active, peak } => self.memory = (active, peak),
                Event::Started { id } => self.shared.jobs.started(id),
                other => {
                    let finished = match &other {
                        Event::Finished {
                            id,
                            cancelled,
                            result,
                        } => Some((*id, job_outcome(*cancelled, result))),
                        _ => None,
                    };
                    let tab = finished
                        .as_ref()
                        .and_then(|(id, _)| self.shared.jobs.get(*id))
                        .map(|j| j.tab);
                    self.generate.handle(&other, &mut self.shared);
                    self.sensitivity.handle(&other, &mut self.shared);
                    self.samples.handle(&other, &mut self.shared);
                    self.compare.handle(ctx, &other, &mut self.shared);
                    if let Some((id, outcome)) = finished {
                        self.shared.jobs.finished(id);
                        if let Some(tab) = tab {
                            self.shared
                                .errors
                                .record(feedback::Place::new(tab, "job"), &outcome);
                        }
                    }
                }
            }
        }
        true
    }

    /// True while any tab waits for a job or a load.
    pub fn busy(&self) -> bool {
        self.generate.is_running()
            || self.generate.is_loading()
            || self.sensitivity.is_running()
            || self.samples.is_loading()
            || self.sensitivity.is_loading()
            || self.compare.is_running()
            || self.compare.is_loading()
    }

    fn tab_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("SD3 Lab");
            ui.separator();
            for tab in Tab::ALL {
                ui.selectable_value(&mut self.persisted.tab, tab, tab.label());
            }
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        // The latest error on a row of its own, Dismiss first, so a long text never pushes
        // the button out of the window (the text is cut; its tooltip holds all of it).
        if let Some(e) = self.shared.errors.latest() {
            let headline = e.headline();
            ui.horizontal(|ui| {
                if ui
                    .small_button("Dismiss")
                    .on_hover_text("Hide this error (it is also shown in its tab)")
                    .clicked()
                {
                    self.shared.errors.dismiss();
                }
                ui.add(
                    egui::Label::new(
                        egui::RichText::new(format!("error ({headline})"))
                            .color(egui::Color32::from_rgb(200, 40, 40)),
                    )
                    .truncate(),
                )
                .on_hover_text(&headline);
            });
        }
        ui.horizontal(|ui| {
            let model = match self.persisted.tab {
                Tab::Generate => &self.persisted.generate.model,
                Tab::Samples => &self.persisted.samples.model,
                Tab::Sensitivity => &self.persisted.sensitivity.model,
                Tab::Compare => &self.persisted.compare.model,
            };
            let shown = if model.chars().count() > 40 {
                format!("model: ...{}", tail_chars(model, 37))
            } else {
                format!("model: {model}")
            };
            ui.label(shown).on_hover_text(format!("model: {model}"));
            ui.separator();
            ui.label(format!("{} on {}", self.backend, self.device));
            ui.separator();
            ui.label(format!(
                "MLX memory {} (peak {})",
                human_bytes(self.memory.0),
                human_bytes(self.memory.1)
            ))
            .on_hover_text("Memory MLX holds now, and the most it held since the app started");
            ui.separator();
            let current = self.shared.jobs.current().map(|j| {
                let verb = match j.state {
                    feedback::JobState::Cancelling => "cancelling",
                    _ => "running",
                };
                (
                    format!("{verb}: {} ({} tab)", j.label, j.tab.label()),
                    j.progress,
                )
            });
            match current.or_else(|| self.shared.running.clone()) {
                Some((label, progress)) => {
                    ui.label(label);
                    ui.add(egui::ProgressBar::new(progress).desired_width(120.0));
                }
                None => {
                    ui.label("idle");
                }
            }
            let queued = self.shared.jobs.queued().count();
            if queued > 0 {
                ui.label(format!("{queued} queued")).on_hover_text(
                    "Jobs run one at a time on the MLX worker, in the order they were started",
                );
            }
        });
    }

    fn automation(&mut self, ctx: &egui::Context) {
        if self.options.start_job && !self.started_job && self.frames > 2 {
            self.started_job = true;
            match self.persisted.tab {
                Tab::Generate => {
                    self.generate
                        .start(ctx, &self.persisted.generate, &mut self.shared)
                }
                Tab::Sensitivity => self
                    .sensitivity
                    .start(&self.persisted.sensitivity, &mut self.shared),
                Tab::Compare => self
                    .compare
                    .start(ctx, &self.persisted.compare, &mut self.shared),
                Tab::Samples => {}
            }
        }
        if self.options.exit_when_idle
            && self.frames > 5
            && (!self.options.start_job || self.started_job)
            && !self.busy()
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if let Some(path) = self.options.screenshot.clone() {
            let state = &self.screenshot_state;
            let ready = self.frames > 8
                && !self.busy()
                && !self.samples.waiting_for_previews()
                && !self.compare.waiting_for_images();
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if *s == ScreenshotState::Waiting && ready {
                *s = ScreenshotState::Requested;
                let shared = state.clone();
                let ctx2 = ctx.clone();
                ctx.request_screenshot(move |image| {
                    if let Err(e) = save_rgba_png(&path, &image) {
                        eprintln!("error: {}: {e}", path.display());
                    }
                    *shared.lock().unwrap_or_else(|p| p.into_inner()) = ScreenshotState::Saved;
                    ctx2.request_repaint();
                });
            } else if *s == ScreenshotState::Saved {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            if *s != ScreenshotState::Saved {
                ctx.request_repaint_after(Duration::from_millis(50));
            }
        }
    }
}

fn options_calib_given(o: &GuiOptions) -> bool {
    o.calib_dir.is_some()
}

impl eframe::App for SdApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let start = Instant::now();
        if self.options.frame_stats.is_some()
            && let Some(cpu) = frame.info().cpu_usage
        {
            self.stats.full_frames_ms.push(cpu as f64 * 1e3);
        }
        let ctx = ui.ctx().clone();
        let more = self.drain_events(&ctx, Duration::from_millis(8));
        self.generate.poll(&ctx, &mut self.shared);
        self.samples
            .poll(&ctx, &mut self.shared, &self.persisted.samples);
        self.sensitivity.poll(&mut self.shared);
        self.compare.poll(&ctx, &mut self.shared);
        egui::Panel::top("tabs").show(ui, |ui| self.tab_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| match self.persisted.tab {
            Tab::Generate => self
                .generate
                .ui(ui, &mut self.persisted.generate, &mut self.shared),
            Tab::Samples => self
                .samples
                .ui(ui, &mut self.persisted.samples, &mut self.shared),
            Tab::Sensitivity => {
                self.sensitivity
                    .ui(ui, &mut self.persisted.sensitivity, &mut self.shared)
            }
            Tab::Compare => self
                .compare
                .ui(ui, &mut self.persisted.compare, &mut self.shared),
        });
        self.automation(&ctx);
        if more {
            ctx.request_repaint();
        } else if self.busy() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
        self.frames += 1;
        if self.options.frame_stats.is_some() {
            self.stats
                .frames_ms
                .push(start.elapsed().as_secs_f64() * 1e3);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.options.persist {
            eframe::set_value(storage, eframe::APP_KEY, &self.persisted);
        }
    }

    fn on_exit(&mut self) {
        // Running jobs stop at their next step or layer, so the worker can be joined.
        self.generate.cancel();
        self.sensitivity.cancel();
        self.compare.cancel();
        self.samples.cancel_download();
        if let Some(path) = &self.options.frame_stats {
            let (p50, p99, max) = self.stats.percentiles();
            let (f50, f99, fmax) = FrameStats::percentiles_of(&self.stats.full_frames_ms);
            let mut text = String::from("frame,ui_ms,full_frame_ms\n");
            for (i, ms) in self.stats.frames_ms.iter().enumerate() {
                let full = self
                    .stats
                    .full_frames_ms
                    .get(i)
                    .map_or(String::new(), |f| format!("{f:.3}"));
                text.push_str(&format!("{i},{ms:.3},{full}\n"));
            }
            if let Err(e) = crate::fsutil::write_atomic(path, text.as_bytes()) {
                eprintln!("error: {}: {e}", path.display());
            }
            if let Some(t) = self.samples.index_seconds {
                println!("samples folder indexed in {t:.2} s");
            }
            println!(
                "frames: {}; UI time per frame p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; whole frame (eframe CPU time: UI + tessellation + painting) p50 {f50:.2} ms, p99 {f99:.2} ms, max {fmax:.2} ms",
                self.stats.frames_ms.len()
            );
        }
    }
}

/// The folder relative paths typed into any tab are taken from: the working directory the
/// app was started in (read once; the app never changes it), shown under the path fields.
pub fn base_folder() -> &'static std::path::Path {
    static BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
}

/// A path typed into a tab: a relative one is taken from [`base_folder`] (shown under the
/// tabs' path fields); an empty one stays empty, so the caller can say that nothing was given.
pub fn resolve_path(typed: &str) -> PathBuf {
    resolve_against(typed, base_folder())
}

fn resolve_against(typed: &str, base: &std::path::Path) -> PathBuf {
    let p = PathBuf::from(typed.trim());
    if p.is_absolute() || p.as_os_str().is_empty() {
        p
    } else {
        base.join(p)
    }
}

/// "1 image", "2 images": a count with its noun in the right number.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> &str {
    let skip = s.chars().count().saturating_sub(n);
    s.char_indices().nth(skip).map_or(s, |(i, _)| &s[i..])
}

/// Bytes as KB/MB/GB (the reports' formatter).
pub use crate::report::human_bytes;

fn save_rgba_png(path: &std::path::Path, image: &egui::ColorImage) -> std::io::Result<()> {
    let [w, h] = image.size;
    let mut rgba = Vec::with_capacity(w * h * 4);
    for p in &image.pixels {
        rgba.extend_from_slice(&p.to_array());
    }
    crate::image::write_png(
        path,
        w as u32,
        h as u32,
        crate::image::PixelFormat::Rgba,
        &rgba,
    )
}

/// Whether a window can be opened (a display server on Linux; always on macOS/Windows).
pub fn display_available() -> bool {
    if cfg!(target_os = "linux") {
        std::env::var_os("DISPLAY").is_some_and(|v| !v.is_empty())
            || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|v| !v.is_empty())
    } else {
        true
    }
}

/// The window icon (`assets/icon.png`, also the macOS bundle's).
fn app_icon() -> Option<egui::IconData> {
    let image = preview::decode_png(include_bytes!("../../assets/icon.png"))?;
    Some(egui::IconData {
        rgba: image.pixels.iter().flat_map(|p| p.to_array()).collect(),
        width: image.size[0] as u32,
        height: image.size[1] as u32,
    })
}

/// Opens the app window and runs until it closes.
pub fn run_gui(options: GuiOptions) -> Result<(), String> {
    let size = options.size;
    let persist = options.persist && options.screenshot.is_none();
    let mut viewport = egui::ViewportBuilder::default()
        .with_inner_size(size)
        .with_min_inner_size(MIN_WINDOW_SIZE)
        .with_title("SD3 Lab");
    if let Some(icon) = app_icon() {
        viewport = viewport.with_icon(icon);
    }
    let native = eframe::NativeOptions {
        viewport,
        persist_window: persist,
        ..Default::default()
    };
    let options = GuiOptions { persist, ..options };
    eframe::run_native(
        "SD3 Lab",
        native,
        Box::new(move |cc| Ok(Box::new(SdApp::new(cc, options)))),
    )
    .map_err(|e| e.to_string())
}

/// The message for a finished job: what it did, or the error in the terms of the tab that
/// started it (its controls, not the CLI's flags). A download stopped by Cancel is no error.
pub fn job_outcome(
    cancelled: bool,
    result: &Result<JobSummary, JobError>,
) -> Result<String, String> {
    match result {
        Ok(s) => {
            let s = summary_text(s);
            Ok(if cancelled {
                format!("cancelled: {s}; Start resumes the run")
            } else {
                format!("done: {s}")
            })
        }
        Err(e) if matches!(e.source_error(), Some(SourceError::Cancelled)) => {
            Ok("cancelled while downloading the model; nothing of the unfinished file was kept, Start downloads it again".into())
        }
        Err(JobError::Calibrate(e)) => Err(generate_tab::error_message(e)),
        Err(JobError::Sensitivity(e)) => Err(sensitivity_tab::error_message(e)),
        Err(JobError::Benchmark(e)) => Err(compare_tab::error_message(e)),
        Err(e @ JobError::PromptFile(_)) => Err(feedback::error_sentence(e)),
    }
}

fn summary_text(s: &JobSummary) -> String {
    match s {
        JobSummary::Calibration(s) => format!(
            "{} of {} in {} ({:.1} s)",
            s.n_completed,
            count(s.num_images, "image"),
            s.calib_dir.display(),
            s.seconds
        ),
        JobSummary::Sensitivity { layers, report } => {
            format!("{} measured; {}", count(*layers, "layer"), report.display())
        }
        JobSummary::Benchmark(s) => format!(
            "{} generated; {} ({:.1} s)",
            count(s.images_generated, "image"),
            s.output_dir.display(),
            s.seconds
        ),
    }
}

/// A model error in the app's terms: where the library says "use a model directory", the app
/// names the tab's model field (`field`, its label).
pub fn model_error_message(e: &SourceError, field: &str) -> String {
    match e {
        SourceError::NotCached { .. } | SourceError::Unreachable { .. } => {
            format!("{e} (type its folder into \"{field}\")")
        }
        SourceError::Cancelled => {
            "the model download was cancelled; nothing of the unfinished file was kept".into()
        }
        other => other.to_string(),
    }
}

/// What resolving a job's model reported, as its tab shows it: a warning (the fallback to the
/// tiny model, a download starting) and the download's progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelNotice {
    /// The warning, worded with the tab's model field.
    pub warning: Option<String>,
    /// `(file, bytes so far, total)` while a download runs.
    pub download: Option<(String, u64, Option<u64>)>,
}

impl ModelNotice {
    /// Takes in an event; `field` is the label of the tab's model field, which hints name.
    pub fn apply(&mut self, event: &SourceEvent, field: &str) {
        match event {
            SourceEvent::FellBackToTiny => {
                self.warning = Some(format!(
                    "{event}. Type sd3-medium or a model folder into \"{field}\" for the real model."
                ));
            }
            SourceEvent::DownloadStarting => {
                self.warning = Some(format!("{event}; Cancel download stops it"));
                self.download = Some((String::new(), 0, None));
            }
            SourceEvent::Downloading { file, done, total } => {
                self.download = Some((file.clone(), *done, *total));
            }
        }
    }

    /// The job ended: no download runs any more (the warning stays).
    pub fn job_ended(&mut self) {
        self.download = None;
    }

    /// The status bar's label and progress while downloading.
    pub fn running(&self) -> Option<(String, f32)> {
        let (file, done, total) = self.download.as_ref()?;
        let fraction = total.map_or(0.0, |t| *done as f32 / t.max(1) as f32);
        Some((format!("downloading sd3-medium {file}"), fraction))
    }
}

/// Shows a tab's model notice: the warning, and while downloading a bytes bar with a Cancel
/// button. True when Cancel download was clicked.
pub fn model_notice_ui(ui: &mut egui::Ui, notice: &ModelNotice) -> bool {
    if let Some(w) = &notice.warning {
        ui.colored_label(
            egui::Color32::from_rgb(190, 120, 0),
            crate::text::escape_control(&format!("warning: {w}")),
        );
    }
    let Some((file, done, total)) = &notice.download else {
        return false;
    };
    let mut cancel = false;
    ui.horizontal(|ui| {
        let (fraction, text) = match total {
            Some(t) => (
                *done as f32 / (*t).max(1) as f32,
                format!("{file}: {} of {}", human_bytes(*done), human_bytes(*t)),
            ),
            None => (0.0, format!("{file}: {}", human_bytes(*done))),
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .desired_width(260.0)
                .text(text),
        );
        cancel = ui.button("Cancel download").clicked();
    });
    cancel
}

/// A save's or an export's outcome in a tab: the file or folder written (the tab shows it as
/// a link) and the message, or the error; filed in the error log under `place`.
pub fn show_written(
    outcome: Result<(PathBuf, String), String>,
    place: feedback::Place,
    written: &mut Option<PathBuf>,
    message: &mut Option<Result<String, String>>,
    errors: &mut feedback::ErrorLog,
) {
    errors.record(place, &outcome);
    *message = Some(outcome.map(|(path, text)| {
        *written = Some(path);
        text
    }));
}

/// What a tab's running job shows before its own progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// No job, or it is queued or downloading its model: nothing more to show.
    Done,
    /// *Cancel download* was clicked: the tab cancels its job.
    CancelClicked,
    /// The job is running: the tab shows its progress.
    ShowProgress,
}

/// The first lines of a tab's job, the same in every tab: the model's notice (warning,
/// download bar with *Cancel download*), "cancelling... the `what` stops after `after`", or what
/// it is queued behind.
pub fn job_status_ui(
    ui: &mut egui::Ui,
    notice: &ModelNotice,
    job: Option<u64>,
    cancelling: bool,
    (what, after): (&str, &str),
    shared: &Shared,
) -> JobStatus {
    if model_notice_ui(ui, notice) {
        return JobStatus::CancelClicked;
    }
    let Some(id) = job else {
        return JobStatus::Done;
    };
    if cancelling {
        ui.label(format!("cancelling... the {what} stops after {after}"));
    }
    if let Some(waiting) = shared.jobs.waiting_behind(id) {
        ui.label(waiting);
        return JobStatus::Done;
    }
    if notice.download.is_some() {
        JobStatus::Done
    } else {
        JobStatus::ShowProgress
    }
}

/// The "Export: Report (HTML) / Report (Markdown)" buttons of a tab (disabled while `busy`):
/// the report file a click asks for, `<calib folder>-<stem>-report.html|.md` beside
/// `calib_dir` ([`report_path`]). The tab writes it on a helper thread ([`Task`]), under the
/// name [`numbered_report`] gives there.
pub fn report_buttons(
    ui: &mut egui::Ui,
    calib_dir: &std::path::Path,
    stem: &str,
    busy: bool,
) -> Option<PathBuf> {
    ui.label("Export");
    let mut wanted = None;
    for (label, ext, what) in [
        (
            "Report (HTML)",
            "html",
            "an HTML page with its figures and images embedded",
        ),
        (
            "Report (Markdown)",
            "md",
            "a Markdown file with its figures beside it",
        ),
    ] {
        let target = report_path(calib_dir, stem, ext);
        let hint = format!(
            "Writes {what}: {} (numbered -2, -3... when that name is taken; nothing is overwritten)",
            target.display()
        );
        if ui
            .add_enabled(!busy, egui::Button::new(label))
            .on_hover_text(&hint)
            .on_disabled_hover_text(&hint)
            .clicked()
        {
            wanted = Some(target);
        }
    }
    if busy {
        ui.spinner();
    }
    wanted
}

/// Disk work (reading, writing, scanning) on a helper thread, so a frame never waits on it;
/// polled each frame. One at a time: a second `spawn` while one runs replaces the first's
/// result (it still finishes, unobserved).
pub struct Task<T> {
    pending: Option<crossbeam_channel::Receiver<T>>,
}

impl<T> Default for Task<T> {
    fn default() -> Self {
        Self { pending: None }
    }
}

impl<T: Send + 'static> Task<T> {
    /// Runs `work` on a new thread; the UI is woken when it is done.
    pub fn spawn(&mut self, ctx: &egui::Context, work: impl FnOnce() -> T + Send + 'static) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending = Some(rx);
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(work());
            ctx.request_repaint();
        });
    }

    /// The result, once (None while running or when idle).
    pub fn poll(&mut self) -> Option<T> {
        let rx = self.pending.as_ref()?;
        match rx.try_recv() {
            Ok(v) => {
                self.pending = None;
                Some(v)
            }
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                // The thread panicked: nothing will come.
                self.pending = None;
                None
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.pending.is_some()
    }
}

/// A job's or an action's outcome: the message, or the error in red (control characters
/// escaped in both: they quote file names).
pub fn message_ui(ui: &mut egui::Ui, message: &Option<Result<String, String>>) {
    match message {
        Some(Ok(m)) => {
            ui.label(crate::text::escape_control(m));
        }
        Some(Err(e)) => {
            error_label(ui, &format!("error: {e}"));
        }
        None => {}
    }
}

/// An error in red, its control characters escaped: every error the app draws goes through
/// here (or through the error log, which escapes too), so a file name holding an escape
/// sequence or a bidirectional override is shown as `\x1b`, `\u{202e}`, never raw.
pub fn error_label(ui: &mut egui::Ui, text: &str) -> egui::Response {
    ui.colored_label(
        egui::Color32::from_rgb(200, 40, 40),
        crate::text::escape_control(text),
    )
}

/// A labelled input: the label is tied to the widget for screen readers (and kittest).
pub fn labelled(
    ui: &mut egui::Ui,
    label: &str,
    add: impl FnOnce(&mut egui::Ui) -> egui::Response,
) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        add(ui).labelled_by(l.id)
    })
    .inner
}

/// What a tab shows when no file dialog can open, so the user types the path instead.
pub const NO_DIALOG: &str =
    "No file dialog is available on this system (no desktop portal); type the path into the field";

/// A dialog that answers "nothing" sooner than this was never shown: nobody closes a dialog
/// that fast, but a missing desktop portal answers at once.
const QUICK_DISMISS: Duration = Duration::from_millis(300);

/// What a dialog's thread reports.
enum Picked {
    Path(PathBuf),
    /// Shown and closed without a choice.
    Dismissed,
    /// No dialog could be shown.
    Unavailable,
}

/// On Linux rfd asks the xdg desktop portal over the D-Bus session bus: without
/// `DBUS_SESSION_BUS_ADDRESS` and without the default socket (`$XDG_RUNTIME_DIR/bus`, which
/// zbus falls back to) no dialog can open. `env` reads a variable. (Looks at the disk: call it
/// on a helper thread.)
fn missing_dialog_service(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<&'static str> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if set("DBUS_SESSION_BUS_ADDRESS").is_some() {
        return None;
    }
    let socket = set("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("bus"));
    match socket {
        Some(s) if s.exists() => None,
        _ => Some(NO_DIALOG),
    }
}

/// Runs a dialog and tells a dismissal from a dialog that could not open by how soon it
/// answered ([`QUICK_DISMISS`]).
fn timed_dialog(dialog: impl FnOnce() -> Option<PathBuf>) -> Picked {
    let start = Instant::now();
    match dialog() {
        Some(p) => Picked::Path(p),
        None if start.elapsed() < QUICK_DISMISS => Picked::Unavailable,
        None => Picked::Dismissed,
    }
}

/// A file or folder dialog running off the UI thread (rfd's async dialog driven by a tiny
/// executor on a helper thread), polled each frame. `P` says what the chosen path is for.
/// Where no dialog can open (no desktop portal), [`Picker::unavailable`] says so, and the tab
/// shows it beside its path fields.
pub struct Picker<P> {
    pending: Option<(P, crossbeam_channel::Receiver<Picked>)>,
    unavailable: Option<&'static str>,
}

impl<P> Default for Picker<P> {
    fn default() -> Self {
        Self {
            pending: None,
            unavailable: None,
        }
    }
}

/// What to ask for.
#[derive(Debug, Clone)]
pub enum PickKind {
    Folder,
    File {
        filter: (&'static str, &'static [&'static str]),
    },
    Save {
        name: String,
        filter: (&'static str, &'static [&'static str]),
    },
}

impl<P: Copy> Picker<P> {
    /// Opens a dialog for `purpose` (ignored while one is open).
    pub fn open(&mut self, purpose: P, kind: PickKind) {
        self.spawn_dialog(purpose, move || {
            if missing_dialog_service(|k| std::env::var_os(k)).is_some() {
                return Picked::Unavailable;
            }
            timed_dialog(|| {
                let dialog = rfd::AsyncFileDialog::new();
                let picked = match kind {
                    PickKind::Folder => block_on(dialog.pick_folder()),
                    PickKind::File { filter } => {
                        block_on(dialog.add_filter(filter.0, filter.1).pick_file())
                    }
                    PickKind::Save { name, filter } => block_on(
                        dialog
                            .add_filter(filter.0, filter.1)
                            .set_file_name(name)
                            .save_file(),
                    ),
                };
                picked.map(|h| h.path().to_path_buf())
            })
        });
    }

    /// Runs `dialog` on a helper thread for `purpose` (ignored while one is open).
    fn spawn_dialog(&mut self, purpose: P, dialog: impl FnOnce() -> Picked + Send + 'static) {
        if self.pending.is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending = Some((purpose, rx));
        std::thread::spawn(move || {
            let _ = tx.send(dialog());
        });
    }

    /// The chosen path with its purpose, once (None while open, when dismissed, or when no
    /// dialog could open: then [`Picker::unavailable`] says so).
    pub fn poll(&mut self) -> Option<(P, PathBuf)> {
        let (purpose, rx) = self.pending.as_ref()?;
        let purpose = *purpose;
        match rx.try_recv() {
            Ok(picked) => {
                self.pending = None;
                self.unavailable = None;
                match picked {
                    Picked::Path(p) => Some((purpose, p)),
                    Picked::Dismissed => None,
                    Picked::Unavailable => {
                        self.unavailable = Some(NO_DIALOG);
                        None
                    }
                }
            }
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                self.pending = None;
                None
            }
        }
    }

    /// True while a dialog is open (or being opened).
    pub fn is_open(&self) -> bool {
        self.pending.is_some()
    }

    /// Why the last dialog could not open ([`NO_DIALOG`]), until one opens.
    pub fn unavailable(&self) -> Option<&'static str> {
        self.unavailable
    }

    /// The user read the message: hide it.
    pub fn dismiss_unavailable(&mut self) {
        self.unavailable = None;
    }
}

/// Shows a picker's "no file dialog" message (with a button to hide it), and keeps frames
/// coming while its dialog is open; call it every frame beside the tab's path fields.
pub fn picker_unavailable_ui<P: Copy>(ui: &mut egui::Ui, picker: &mut Picker<P>) {
    if picker.is_open() {
        // The dialog's thread cannot wake the UI: look again soon for the path it picks (or
        // for its failing to open).
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(100));
    }
    if let Some(text) = picker.unavailable() {
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(egui::Color32::from_rgb(190, 120, 0), text);
            if ui
                .small_button("OK")
                .on_hover_text("Hide this message")
                .clicked()
            {
                picker.dismiss_unavailable();
            }
        });
    }
}

/// Runs a future to completion on the current (helper) thread.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::CalibrateError;

    #[test]
    fn persisted_state_tolerates_missing_and_unknown_fields() {
        let p: Persisted = serde_json::from_str(
            r#"{"tab": "samples", "from_a_newer_version": 1,
                "samples": {"calib_dir": "runs/a", "future_field": true},
                "sensitivity": {"bits": [4, 8]}}"#,
        )
        .unwrap();
        assert_eq!(p.tab, Tab::Samples);
        assert_eq!(p.samples.calib_dir, "runs/a");
        assert_eq!(
            p.samples.step_stride, 1,
            "missing fields take their defaults"
        );
        assert_eq!(p.sensitivity.bits, vec![4, 8]);
        assert_eq!(p.generate, generate_tab::Options::default());
        let empty: Persisted = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.tab, Tab::Generate);
    }

    #[test]
    fn model_events_and_errors_are_worded_with_the_tab_fields() {
        use crate::quant::sensitivity::SensitivityError;
        let mut notice = ModelNotice::default();
        notice.apply(&SourceEvent::FellBackToTiny, "Model");
        let warning = notice.warning.clone().unwrap();
        assert!(
            warning.starts_with("sd3-medium is not in the Hugging Face cache")
                && warning.contains("into \"Model\""),
            "{warning}"
        );
        notice.apply(&SourceEvent::DownloadStarting, "Model");
        notice.apply(
            &SourceEvent::Downloading {
                file: "sd3_medium.safetensors".into(),
                done: 25,
                total: Some(100),
            },
            "Model",
        );
        let (label, fraction) = notice.running().unwrap();
        assert!(
            label.contains("sd3_medium.safetensors") && fraction == 0.25,
            "{label}"
        );
        notice.job_ended();
        assert_eq!(notice.running(), None);

        // A download stopped by Cancel is a cancelled job, not an error.
        let cancelled = Err(JobError::Sensitivity(SensitivityError::Source(Box::new(
            SourceError::Cancelled,
        ))));
        assert!(
            job_outcome(true, &cancelled)
                .unwrap()
                .starts_with("cancelled")
        );
        let refused = [
            Err(JobError::Sensitivity(SensitivityError::NoLayerMatches(
                "^x$".into(),
            ))),
            Err(JobError::Sensitivity(SensitivityError::NoBits)),
            Err(JobError::Calibrate(CalibrateError::Source(Box::new(
                SourceError::NotCached {
                    cache: "hub".into(),
                },
            )))),
        ];
        for r in &refused {
            let m = job_outcome(false, r).unwrap_err();
            let flag = ["--model", "--layers", "--bits"]
                .into_iter()
                .any(|f| m.contains(f));
            assert!(
                m.contains('"') && !flag,
                "names a field, no flag of ours: {m}"
            );
        }
    }

    #[test]
    fn a_job_error_from_the_os_reads_as_a_sentence() {
        let e = Err(JobError::PromptFile(std::io::Error::from_raw_os_error(28)));
        let m = job_outcome(false, &e).unwrap_err();
        assert!(
            m.ends_with("the disk is full") && !m.contains("os error"),
            "{m}"
        );
    }

    #[test]
    fn percentiles_and_reports_folder() {
        let s = FrameStats {
            frames_ms: (1..=100).map(f64::from).collect(),
            full_frames_ms: Vec::new(),
        };
        assert_eq!(s.percentiles(), (51.0, 99.0, 100.0));
        assert_eq!(
            report_path(std::path::Path::new("/work/calib_a"), "calibration", "html"),
            PathBuf::from("/work/calib_a-calibration-report.html")
        );
        // A relative folder is named from the working directory, not left as `./reports`.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            report_path(std::path::Path::new("calib_b"), "samples", "md"),
            cwd.join("calib_b-samples-report.md")
        );
        let dir = tempfile::tempdir().unwrap();
        let wanted = report_path(&dir.path().join("run"), "calibration", "html");
        assert_eq!(numbered_report(&wanted), wanted);
        std::fs::write(&wanted, b"x").unwrap();
        assert_eq!(
            numbered_report(&wanted),
            dir.path().join("run-calibration-report-2.html")
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_base_and_counts_take_their_plural() {
        let base = std::path::Path::new("/work/base");
        assert_eq!(
            resolve_against("runs/a", base),
            PathBuf::from("/work/base/runs/a")
        );
        assert_eq!(resolve_against(" /abs/b ", base), PathBuf::from("/abs/b"));
        assert_eq!(resolve_against("", base), PathBuf::new());
        assert_eq!(count(1, "sample"), "1 sample");
        assert_eq!(count(0, "sample"), "0 samples");
        assert_eq!(count(2, "layer"), "2 layers");
    }

    #[test]
    fn no_dialog_service_without_a_session_bus() {
        let env = |vars: Vec<(&'static str, String)>| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().display().to_string();
        let linux = cfg!(target_os = "linux");
        // Neither the variable nor the default bus socket: no portal can answer.
        assert_eq!(
            missing_dialog_service(env(vec![("XDG_RUNTIME_DIR", runtime.clone())])).is_some(),
            linux
        );
        assert_eq!(missing_dialog_service(env(vec![])).is_some(), linux);
        assert_eq!(
            missing_dialog_service(env(vec![(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/x".into()
            )])),
            None
        );
        std::fs::write(dir.path().join("bus"), b"").unwrap();
        assert_eq!(
            missing_dialog_service(env(vec![("XDG_RUNTIME_DIR", runtime)])),
            None,
            "the bus socket zbus falls back to"
        );
    }

    /// Polls until the dialog's thread has answered.
    fn poll_picker(p: &mut Picker<u8>) -> Option<(u8, PathBuf)> {
        let start = Instant::now();
        while p.is_open() && start.elapsed() < Duration::from_secs(10) {
            if let Some(r) = p.poll() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn a_dialog_that_cannot_open_says_to_type_the_path() {
        let mut p = Picker::<u8>::default();
        // A dialog that answers "nothing" at once never showed a window: no dialog service.
        p.spawn_dialog(1, || timed_dialog(|| None));
        assert_eq!(poll_picker(&mut p), None);
        assert_eq!(p.unavailable(), Some(NO_DIALOG));
        assert!(NO_DIALOG.contains("type the path into the field"));
        // A dialog that was shown and closed without a choice is no error.
        p.spawn_dialog(2, || {
            timed_dialog(|| {
                std::thread::sleep(QUICK_DISMISS + Duration::from_millis(100));
                None
            })
        });
        assert_eq!(poll_picker(&mut p), None);
        assert_eq!(p.unavailable(), None);
        // A choice comes back with its purpose.
        p.spawn_dialog(3, || timed_dialog(|| Some(PathBuf::from("/x"))));
        assert_eq!(poll_picker(&mut p), Some((3, PathBuf::from("/x"))));
        assert_eq!(p.unavailable(), None);
        // No session bus: reported without trying a dialog.
        p.spawn_dialog(4, || Picked::Unavailable);
        assert_eq!(poll_picker(&mut p), None);
        assert_eq!(p.unavailable(), Some(NO_DIALOG));
    }
}

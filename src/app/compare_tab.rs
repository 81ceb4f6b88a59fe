//! The Compare tab: open a benchmark folder (or pick one under `benchmark_results/`), or run a
//! benchmark with the options of `sd3lab benchmark` (progress, cancel, resume; results appear
//! as images land); compare its images with the reference set ([`super::compare_view`]); a
//! summary table of the configurations with plots of quality against weight bytes, latency and
//! peak memory; export of the plots and of a report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::compare_view::{CompareView, ViewOptions};
use super::feedback::{Place, error_sentence};
use super::sensitivity_tab::eta_text;
use super::worker::{Command, Event};
use super::{PickKind, Picker, Shared, Tab, Task, count, labelled, resolve_path, widgets};
use crate::bench::{
    BenchConfig, BenchError, BenchEvent, BenchFolder, DEFAULT_WARMUP, RESULTS_ROOT, SummaryRow,
    default_output_stem,
};
use crate::calibrate::CalibrateError;
use crate::job::CancelToken;
use crate::metrics::compute::{MetricsError, MetricsEvent};
use crate::metrics::weights::WeightsError;
use crate::model::config::ModelDtype;
use crate::report::benchmark::{
    BenchmarkReportOptions, QualityMetric, benchmark_figures, quality_note, write_benchmark_report,
};
use crate::report::{self, Figure};

/// Options (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// The benchmark folder shown.
    pub benchmark_dir: String,
    /// Where a run from the tab writes; empty: a new numbered folder under
    /// `benchmark_results/`, named after the configurations (set when the run starts, so
    /// that starting again resumes it).
    pub output_dir: String,
    pub model: String,
    /// The reference set (a `calibrate --images-only` folder, or any image folder).
    pub reference_dir: String,
    /// `fp32`, `fp16`, `bf16`, `wN` presets and plan files, in run order (presets in the
    /// order of [`presets`], then plan files as added).
    pub configurations: Vec<String>,
    /// Group size of the `wN` presets.
    pub group_size: i32,
    pub num_images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub size: usize,
    /// `None`: the backend's default (float32 on CPU, float16 on GPU).
    pub dtype: Option<ModelDtype>,
    /// Images per configuration left out of the latency statistics (generated first).
    pub warmup: usize,
    pub skip_metrics: bool,
    /// Inception weights for FID/KID/IS (a torch-fidelity .pth or converted .safetensors);
    /// empty: the user cache (`sd3lab metrics weights --fetch`).
    pub inception_weights: String,
    /// The quality the trade-off plot shows against weight bytes; `None`: FID when measured,
    /// else PSNR ([`QualityMetric::default_for`]).
    pub quality: Option<QualityMetric>,
    /// What the area above the image views shows.
    pub sections: Sections,
    pub view: ViewOptions,
}

/// What the area between the run controls and the image views shows: one at a time, so the
/// image views keep most of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sections {
    #[default]
    Table,
    Plots,
    /// Nothing: all the room to the image views.
    Hidden,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            benchmark_dir: String::new(),
            output_dir: String::new(),
            model: "tiny".into(),
            reference_dir: "calibration_data".into(),
            configurations: vec!["fp32".into(), "w8".into(), "w4".into()],
            group_size: 64,
            num_images: 10,
            num_steps: 28,
            cfg_weight: 5.0,
            size: 512,
            dtype: None,
            warmup: DEFAULT_WARMUP,
            skip_metrics: false,
            inception_weights: String::new(),
            quality: None,
            sections: Sections::Table,
            view: ViewOptions::default(),
        }
    }
}

/// The labels of the run's fields, which errors name.
pub const MODEL_LABEL: &str = "Model";
pub const REFERENCE_LABEL: &str = "Reference folder";
pub const OUTPUT_LABEL: &str = "Output folder";
pub const CONFIGURATIONS_LABEL: &str = "Configurations";
pub const IMAGES_LABEL: &str = "Images";
pub const STEPS_LABEL: &str = "Steps";
pub const CFG_LABEL: &str = "CFG";
pub const SIZE_LABEL: &str = "Size (px)";
pub const DTYPE_LABEL: &str = "Dtype";
pub const WARMUP_LABEL: &str = "Warmup";
pub const SKIP_METRICS_LABEL: &str = "Skip metrics";
pub const INCEPTION_LABEL: &str = "Inception weights";
pub const START_LABEL: &str = "Start benchmark";
pub const CANCEL_LABEL: &str = "Cancel benchmark";

/// The configuration presets the tab offers, in run order: the float precisions, then the
/// uniform widths MLX supports (`bench::Configuration` takes each), widest first.
pub fn presets() -> Vec<String> {
    let mut bits = crate::quant::SUPPORTED_BITS.to_vec();
    bits.sort_by(|a, b| b.cmp(a));
    ["fp32", "fp16", "bf16"]
        .into_iter()
        .map(str::to_owned)
        .chain(bits.into_iter().map(|b| format!("w{b}")))
        .collect()
}

/// Puts `configurations` in run order: presets as [`presets`] lists them, then plan files in
/// the order they were added.
fn run_order(configurations: &mut [String]) {
    let presets = presets();
    configurations.sort_by_key(|c| presets.iter().position(|p| p == c).unwrap_or(presets.len()));
}

/// What a file dialog of the tab is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Benchmark,
    Reference,
    Output,
    Plan,
    Inception,
}

/// A run's progress, from its events: configuration k of n, image i of m, step s of S.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Checking the settings, resolving the model (before `Planned`).
    pub preparing: bool,
    pub configurations: Vec<String>,
    pub num_images: usize,
    pub num_steps: usize,
    /// The configuration running: its index and name.
    pub config_index: usize,
    pub configuration: String,
    /// Loading (and quantizing) the configuration's model.
    pub loading: bool,
    /// The image being generated and its step; `throwaway`: a resumed configuration's
    /// warm-up image, not saved.
    pub image: Option<usize>,
    pub step: usize,
    pub throwaway: bool,
    /// Images finished over every configuration, and of those, the ones finished before
    /// this run started (a resumed run skips them).
    pub images_done: usize,
    pub done_before: usize,
    /// Seconds left for the running configuration at this run's pace (the library's).
    pub config_eta: Option<f64>,
    /// When this run's first image started, for the overall ETA.
    pub since: Option<Instant>,
    /// The metrics step: which configuration and what it does.
    pub metrics: Option<String>,
    /// The run's notes (a reference without a manifest, a mismatch allowed...).
    pub notes: Vec<String>,
}

impl Progress {
    pub fn total_images(&self) -> usize {
        self.configurations.len() * self.num_images
    }

    /// The images part done, counting the running image's steps.
    pub fn fraction(&self) -> f32 {
        let total = self.total_images().max(1) as f32;
        let partial = match self.image {
            Some(_) if !self.throwaway && self.num_steps > 0 => {
                self.step as f32 / self.num_steps as f32
            }
            _ => 0.0,
        };
        ((self.images_done as f32 + partial) / total).min(1.0)
    }

    /// "configuration 2 of 3 (w8g64): image 4 of 10, step 12 of 28".
    pub fn text(&self) -> String {
        let mut text = format!(
            "configuration {} of {} ({})",
            self.config_index + 1,
            self.configurations.len(),
            self.configuration
        );
        if self.loading {
            text.push_str(": loading the model");
        } else if let Some(i) = self.image {
            if self.throwaway {
                text.push_str(&format!(": warm-up image (not saved), step {}", self.step));
            } else {
                text.push_str(&format!(
                    ": image {} of {}, step {} of {}",
                    i + 1,
                    self.num_images,
                    self.step,
                    self.num_steps
                ));
            }
        }
        text
    }

    /// The time left: for the running configuration (the library's estimate) and for every
    /// image left at this run's pace (metrics come after and are not counted).
    pub fn eta(&self) -> Option<String> {
        let this_run = self.images_done.saturating_sub(self.done_before);
        let left = self.total_images().saturating_sub(self.images_done);
        let all = self
            .since
            .and_then(|since| eta_text(this_run, left, since.elapsed()));
        // eta_text of one unit taking `eta` seconds, one left: the same wording for seconds.
        let config = self
            .config_eta
            .filter(|s| *s > 0.5)
            .and_then(|s| eta_text(1, 1, Duration::from_secs_f64(s)));
        match (config, all) {
            (Some(c), Some(a)) if left > self.num_images => Some(format!(
                "{c} in this configuration, {a} in all (then metrics)"
            )),
            (_, Some(a)) => Some(format!("{a} (then metrics)")),
            (Some(c), None) => Some(c),
            (None, None) => None,
        }
    }
}

/// What an export did: the file or folder written with the message, or the error.
type Written = Result<(PathBuf, String), String>;

/// Which folder read ([`CompareTab::generation`]: a re-read is another) and quality figures
/// were made for.
type FiguresKey = (u64, QualityMetric);

/// A benchmark's figures by file stem, and why the quality plot leaves configurations out.
struct Figures {
    figures: Vec<(String, Figure)>,
    note: Option<String>,
}

/// A folder read: the folder, whether it is the run's own read (a run's folder without
/// results.json yet is no error), and the folder or the error (`None`: a run's folder with
/// nothing to show yet).
type Read = (PathBuf, bool, Result<BenchFolder, Option<String>>);

const OPEN: Place = Place::new(Tab::Compare, "open");
const MATCH: Place = Place::new(Tab::Compare, "match the reference");

/// What a reference set's manifest says it was made with: the run settings that must match
/// for its images to be twins of the benchmark's.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSettings {
    pub model: String,
    pub dtype: ModelDtype,
    pub images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub size: usize,
}

impl ReferenceSettings {
    /// Reads `dir`'s manifest (touches the disk: call it off the UI thread).
    pub fn read(dir: &Path) -> Result<Self, String> {
        let set = crate::bench::ReferenceSet::open(dir)
            .map_err(|e| super::feedback::error_sentence(&e))?;
        let Some(g) = set.settings else {
            return Err(format!(
                "{} has no manifest with generation settings (a plain image folder): set Model, Steps, CFG and Size to what made its images",
                dir.display()
            ));
        };
        if g.height != g.width {
            return Err(format!(
                "{}: its images are {}x{}, but this tab runs square images only ({SIZE_LABEL} sets both sides): choose a reference set of square images",
                dir.display(),
                g.width,
                g.height
            ));
        }
        Ok(Self {
            model: g.model.name.clone(),
            dtype: g.dtype,
            images: set.images.len(),
            num_steps: g.num_steps,
            cfg_weight: g.cfg_weight,
            size: g.width,
        })
    }

    /// Sets the run's fields to these settings.
    pub fn apply(&self, o: &mut Options) {
        o.model = self.model.clone();
        o.dtype = Some(self.dtype);
        o.num_images = self.images;
        o.num_steps = self.num_steps;
        o.cfg_weight = self.cfg_weight;
        o.size = self.size;
    }
}
const EXPORT: Place = Place::new(Tab::Compare, "export");
const FOLDER_LINK: Place = Place::new(Tab::Compare, "open folder");

/// The tab's state.
#[derive(Default)]
pub struct CompareTab {
    /// The benchmark shown.
    pub folder: Option<Arc<BenchFolder>>,
    /// Bumped at each folder read that succeeds: what the figures cache is keyed on (an
    /// `Arc`'s address can come back after it is freed).
    generation: u64,
    loading: Task<Read>,
    /// A folder to read once the read in flight is done (and whether it is a run's own read,
    /// see [`Read`]): reads never overlap (the results of a run are re-read after every
    /// image), and only the latest request waits.
    pending_open: Option<(PathBuf, bool)>,
    /// The running benchmark: its id, cancel token and folder.
    job: Option<(u64, CancelToken, PathBuf)>,
    /// A run without an output folder, before it is sent: its new numbered folder is chosen
    /// on a helper thread (the UI thread never touches the disk).
    starting: Task<BenchConfig>,
    /// The folder shown is the running benchmark's (from Start until the user opens
    /// another): only then is it re-read as images land.
    following_run: bool,
    /// A run's folder, for the fields to show at the next frame (`start` and `poll` have no
    /// options).
    show_run: Option<PathBuf>,
    /// Cancel was clicked for the running benchmark.
    cancelling: bool,
    pub progress: Progress,
    pub message: Option<Result<String, String>>,
    /// The model's warning and download progress for the current (or last) run.
    pub model_notice: super::ModelNotice,
    /// The benchmarks under `benchmark_results/` (scanned on a helper thread).
    pub runs: Vec<PathBuf>,
    scanning: Task<Vec<PathBuf>>,
    scanned: bool,
    picker: Picker<Pick>,
    /// Exports, on a helper thread.
    writing: Task<Written>,
    /// The file or folder the last export wrote, shown as a link.
    pub written: Option<PathBuf>,
    /// The reference set's recorded settings, read on a helper thread for *Match the
    /// reference*.
    matching: Task<Result<ReferenceSettings, String>>,
    /// The figures of the folder shown for a quality, with the plot's note: made again only
    /// when either changes.
    figures: Option<(FiguresKey, Arc<Figures>)>,
    pub view: CompareView,
}

impl CompareTab {
    /// Reads a benchmark folder on a helper thread (relative paths from the base folder);
    /// while a read is in flight, the folder is read after it (the latest request only).
    /// The user's choice: the running benchmark's folder follows the run again, another
    /// stops following it.
    pub fn open(&mut self, ctx: &egui::Context, path: &str) {
        self.user_open(ctx, resolve_path(path));
    }

    fn user_open(&mut self, ctx: &egui::Context, dir: PathBuf) {
        self.following_run = self.job.as_ref().is_some_and(|(_, _, d)| *d == dir);
        self.open_dir(ctx, dir, false);
    }

    /// Reads `dir`; `for_run`: the running (or just ended) benchmark's own read, for which a
    /// folder without results.json yet is nothing to show rather than an error.
    fn open_dir(&mut self, ctx: &egui::Context, dir: PathBuf, for_run: bool) {
        if self.loading.is_running() {
            self.pending_open = Some((dir, for_run));
            return;
        }
        self.loading.spawn(ctx, move || {
            let r = match BenchFolder::open(&dir) {
                Ok(f) => Ok(f),
                Err(BenchError::NotABenchmark { .. }) if for_run => Err(None),
                Err(e) => Err(Some(error_sentence(&e))),
            };
            (dir, for_run, r)
        });
    }

    /// True while a folder is being read or an export written.
    pub fn is_loading(&self) -> bool {
        self.loading.is_running() || self.pending_open.is_some() || self.writing.is_running()
    }

    /// True from Start (while its folder is chosen) to the run's end.
    pub fn is_running(&self) -> bool {
        self.job.is_some() || self.starting.is_running()
    }

    /// True while the images shown are being decoded.
    pub fn waiting_for_images(&self) -> bool {
        self.view.waiting_for_images()
    }

    /// Asks the running benchmark to stop after its current image.
    pub fn cancel(&mut self) {
        // A run not sent yet is not sent.
        self.starting = Task::default();
        if let Some((_, c, _)) = &self.job {
            c.cancel();
            self.cancelling = true;
        }
    }

    /// Cancel clicked: the run stops after its current image; the board says so at once.
    fn cancel_job(&mut self, shared: &mut Shared) {
        if let Some((id, _, _)) = &self.job {
            shared.jobs.cancelling(*id);
        }
        self.cancel();
    }

    fn scan_runs(&mut self, ctx: &egui::Context) {
        self.scanned = true;
        self.scanning.spawn(ctx, || {
            crate::bench::list_benchmarks(&resolve_path(RESULTS_ROOT))
        });
    }

    pub fn poll(&mut self, ctx: &egui::Context, shared: &mut Shared) {
        if let Some(config) = self.starting.poll() {
            self.launch(config, shared);
        }
        if let Some(runs) = self.scanning.poll() {
            self.runs = runs;
        }
        if let Some(outcome) = self.writing.poll() {
            super::show_written(
                outcome,
                EXPORT,
                &mut self.written,
                &mut self.message,
                &mut shared.errors,
            );
        }
        if let Some((_, _, r)) = self.loading.poll() {
            match r {
                Ok(folder) => {
                    if self.folder.as_ref().is_none_or(|f| f.dir != folder.dir) {
                        // Another benchmark: what was exported was about the last one.
                        self.written = None;
                    }
                    self.folder = Some(Arc::new(folder));
                    self.generation += 1;
                    shared.errors.succeeded(OPEN);
                }
                // The run's folder before its first image: nothing to show yet.
                Err(None) => {}
                Err(Some(e)) => {
                    self.folder = None;
                    self.message = Some(Err(e.clone()));
                    shared.errors.report(OPEN, e);
                }
            }
        }
        // Also when the read's thread died without a result: the waiting read still goes.
        if !self.loading.is_running()
            && let Some((next, for_run)) = self.pending_open.take()
        {
            self.open_dir(ctx, next, for_run);
        }
    }

    /// The library's settings for a run from the tab into `output_dir`.
    pub fn bench_config(o: &Options, output_dir: PathBuf) -> BenchConfig {
        BenchConfig {
            configurations: o.configurations.clone(),
            num_images: o.num_images,
            num_steps: o.num_steps,
            cfg_weight: o.cfg_weight,
            output_dir,
            reference_dir: (!o.reference_dir.trim().is_empty())
                .then(|| resolve_path(&o.reference_dir)),
            skip_metrics: o.skip_metrics,
            model: o.model.clone(),
            height: o.size,
            width: o.size,
            dtype: o.dtype.unwrap_or_else(ModelDtype::default_for_backend),
            warmup: o.warmup,
            seed: 0,
            prompt_csv: None,
            negative_prompt: String::new(),
            group_size: o.group_size,
            overwrite: false,
            allow_mismatch: false,
            inception_weights: (!o.inception_weights.trim().is_empty())
                .then(|| resolve_path(&o.inception_weights)),
            kid_subset_size: None,
        }
    }

    /// Starts a run (queued behind the worker's current job). Into the output folder typed,
    /// where a run with the same settings resumes; without one, into a new numbered folder
    /// under `benchmark_results/` (chosen on a helper thread), which the field then shows so
    /// that starting again resumes.
    pub fn start(&mut self, ctx: &egui::Context, o: &Options, shared: &mut Shared) {
        if self.is_running() {
            return;
        }
        if !o.output_dir.trim().is_empty() {
            let config = Self::bench_config(o, resolve_path(&o.output_dir));
            self.launch(config, shared);
            return;
        }
        let mut config = Self::bench_config(o, PathBuf::new());
        let stem = default_output_stem(&o.configurations);
        self.message = None;
        self.starting.spawn(ctx, move || {
            // One existence check per name tried, once per click.
            config.output_dir = crate::fsutil::numbered_folder(&resolve_path(RESULTS_ROOT), &stem);
            config
        });
    }

    /// Sends a run to the worker; the tab shows its folder and follows it.
    fn launch(&mut self, config: BenchConfig, shared: &mut Shared) {
        let output_dir = config.output_dir.clone();
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        if shared.worker.send(Command::Benchmark {
            id,
            config,
            cancel: cancel.clone(),
        }) {
            shared.jobs.submit(id, Tab::Compare, "benchmark");
            if self.folder.as_ref().is_some_and(|f| f.dir != output_dir) {
                // Another benchmark is shown: until this one's first image lands, the tab
                // shows its empty state.
                self.folder = None;
                self.written = None;
            }
            self.show_run = Some(output_dir.clone());
            self.following_run = true;
            self.job = Some((id, cancel, output_dir));
            self.cancelling = false;
            self.progress = Progress {
                preparing: true,
                ..Progress::default()
            };
            self.message = None;
            self.model_notice = super::ModelNotice::default();
        }
    }

    pub fn handle(&mut self, ctx: &egui::Context, event: &Event, shared: &mut Shared) {
        let Some((id, _, dir)) = &self.job else {
            return;
        };
        let (id, dir) = (*id, dir.clone());
        match event {
            Event::Benchmark { id: i, event } if *i == id => {
                let p = &mut self.progress;
                match event {
                    BenchEvent::Model(e) => {
                        self.model_notice.apply(e, MODEL_LABEL);
                        // A download is work outside the worker's order: the status bar
                        // shows its bytes.
                        shared.running = self.model_notice.running();
                    }
                    BenchEvent::Planned {
                        configurations,
                        num_images,
                        num_steps,
                        done,
                        notes,
                    } => {
                        self.model_notice.job_ended();
                        shared.running = None;
                        p.preparing = false;
                        p.configurations = configurations.clone();
                        p.num_images = *num_images;
                        p.num_steps = *num_steps;
                        p.images_done = done.iter().sum();
                        p.done_before = p.images_done;
                        p.notes = notes.clone();
                    }
                    BenchEvent::ConfigStarted {
                        configuration,
                        index,
                        ..
                    } => {
                        p.config_index = *index;
                        p.configuration = configuration.clone();
                        p.loading = true;
                        p.image = None;
                        p.config_eta = None;
                    }
                    BenchEvent::ConfigLoaded { .. } => p.loading = false,
                    BenchEvent::ImageStarted {
                        image, throwaway, ..
                    } => {
                        p.loading = false;
                        p.image = Some(*image);
                        p.step = 0;
                        p.throwaway = *throwaway;
                        if !throwaway && p.since.is_none() {
                            p.since = Some(Instant::now());
                        }
                    }
                    BenchEvent::Step { step, .. } => p.step = *step,
                    BenchEvent::ImageDone { eta_seconds, .. } => {
                        p.images_done += 1;
                        p.image = None;
                        p.config_eta = Some(*eta_seconds);
                        // Show the results as they come, unless another benchmark is shown.
                        if self.following_run {
                            self.open_dir(ctx, dir, true);
                        }
                    }
                    BenchEvent::ConfigDone { .. } => p.image = None,
                    // The app runs benchmarks whole: distributed runs are the CLI's.
                    BenchEvent::JobProgress { .. } => {}
                    BenchEvent::Metrics {
                        configuration,
                        event,
                    } => p.metrics = Some(metrics_text(configuration, event)),
                    BenchEvent::MetricsDone { .. } => {
                        p.metrics = None;
                        if self.following_run {
                            self.open_dir(ctx, dir, true);
                        }
                    }
                }
                let f = self.progress.fraction();
                shared.jobs.progress(id, f);
            }
            Event::Finished {
                id: i,
                cancelled,
                result,
            } if *i == id => {
                self.job = None;
                self.cancelling = false;
                shared.running = None;
                self.model_notice.job_ended();
                self.message = Some(super::job_outcome(*cancelled, result));
                // A cancelled or failed run kept the images it finished: show them too.
                if self.following_run {
                    self.open_dir(ctx, dir, true);
                }
                self.scan_runs(ctx);
            }
            _ => {}
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        if !self.scanned {
            self.scan_runs(ui.ctx());
        }
        // A run just sent: the fields show its folder (once; the user may change them).
        if let Some(dir) = self.show_run.take() {
            let dir = dir.display().to_string();
            o.benchmark_dir = dir.clone();
            if o.output_dir.trim().is_empty() {
                o.output_dir = dir;
            }
        }
        // Here rather than in the run panel, which may be folded.
        if let Some(r) = self.matching.poll() {
            shared.errors.record(MATCH, &r);
            match r {
                Ok(settings) => {
                    settings.apply(o);
                    self.message = Some(Ok(format!(
                        "settings of the reference: model {}, {}, {}, {} steps, cfg {}, {}x{}",
                        settings.model,
                        settings.dtype.name(),
                        super::count(settings.images, "image"),
                        settings.num_steps,
                        settings.cfg_weight,
                        settings.size,
                        settings.size
                    )));
                }
                Err(e) => self.message = Some(Err(e)),
            }
        }
        if let Some((pick, p)) = self.picker.poll() {
            let text = p.display().to_string();
            match pick {
                Pick::Benchmark => {
                    o.benchmark_dir = text.clone();
                    self.message = None;
                    self.open(ui.ctx(), &text);
                }
                Pick::Inception => o.inception_weights = text,
                Pick::Reference => o.reference_dir = text,
                Pick::Output => o.output_dir = text,
                Pick::Plan => {
                    if !o.configurations.contains(&text) {
                        o.configurations.push(text);
                        run_order(&mut o.configurations);
                    }
                }
            }
        }
        self.toolbar_ui(ui, o);
        let run_height = (ui.available_height() * 0.45).max(120.0);
        egui::CollapsingHeader::new("Run a benchmark")
            .default_open(o.benchmark_dir.is_empty())
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt("compare-run")
                    .max_height(run_height)
                    .show(ui, |ui| self.run_ui(ui, o, shared));
            });
        self.progress_ui(ui, shared);
        if self.message.is_some() || self.written.is_some() {
            ui.horizontal_wrapped(|ui| {
                super::message_ui(ui, &self.message);
                if let Some(path) = self.written.clone()
                    && let Some(e) = widgets::path_link(ui, &path)
                {
                    shared.errors.report(FOLDER_LINK, e);
                }
            });
        }
        let Some(folder) = self.folder.clone() else {
            ui.separator();
            if self.job.is_some() {
                ui.weak("no results yet: they appear as each image is generated");
            } else if self.loading.is_running() {
                ui.spinner();
            } else {
                ui.label(
                    "Open a benchmark folder (sd3lab benchmark's output), pick one under benchmark_results/, or run a benchmark.",
                );
            }
            return;
        };
        let rows = folder.summary();
        let quality = o
            .quality
            .unwrap_or_else(|| QualityMetric::default_for(&rows));
        let figures = self.figures_of(&folder, quality);
        // The sections scroll within at most this height: the image views keep the rest.
        let sections_height = (ui.available_height() * 0.5).max(100.0);
        ui.horizontal_wrapped(|ui| {
            for (s, label, tip) in [
                (
                    Sections::Table,
                    "Summary table",
                    "the configurations' metrics, weight bytes, latency and memory",
                ),
                (
                    Sections::Plots,
                    "Plots",
                    "quality against weight bytes, latency and peak memory",
                ),
                (Sections::Hidden, "Hide", "all the room to the images below"),
            ] {
                ui.selectable_value(&mut o.sections, s, label)
                    .on_hover_text(tip);
            }
            ui.separator();
            self.export_ui(ui, o, &folder, quality, &figures);
        });
        match o.sections {
            Sections::Table => {
                egui::ScrollArea::both()
                    .id_salt("compare-summary")
                    .max_height(sections_height)
                    .show(ui, |ui| self.summary_ui(ui, &folder, &rows));
            }
            Sections::Plots => {
                egui::ScrollArea::vertical()
                    .id_salt("compare-plots")
                    .max_height(sections_height)
                    .show(ui, |ui| plots_ui(ui, o, &rows, quality, &figures));
            }
            Sections::Hidden => {}
        }
        ui.separator();
        self.view.ui(ui, &folder, &mut o.view, shared);
    }

    /// Opening a benchmark: a typed path, Browse..., or a run under `benchmark_results/`.
    fn toolbar_ui(&mut self, ui: &mut egui::Ui, o: &mut Options) {
        ui.horizontal_wrapped(|ui| {
            let field = labelled(ui, "Benchmark folder", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.benchmark_dir).desired_width(260.0))
                    .on_hover_text(
                        "a benchmark's output folder (with results.json); Enter opens it (relative paths are taken from the base folder)",
                    )
            });
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui
                .button("Open")
                .on_hover_text("read the benchmark folder")
                .clicked()
                || enter
            {
                self.message = None;
                self.open(ui.ctx(), &o.benchmark_dir.clone());
            }
            if ui
                .button("Browse...")
                .on_hover_text("pick a benchmark folder")
                .clicked()
            {
                self.picker.open(Pick::Benchmark, PickKind::Folder);
            }
            let l = ui.label("Runs").on_hover_text(format!(
                "the benchmarks under {}",
                resolve_path(RESULTS_ROOT).display()
            ));
            let shown = resolve_path(&o.benchmark_dir);
            let selected = self
                .runs
                .iter()
                .find(|r| **r == shown)
                .map_or_else(|| "pick a run".to_owned(), |r| run_name(r));
            let mut chosen = None;
            egui::ComboBox::from_id_salt("compare-runs")
                .selected_text(selected)
                .show_ui(ui, |ui| {
                    if self.runs.is_empty() {
                        ui.weak(format!("no benchmark in {RESULTS_ROOT}/ yet"));
                    }
                    for r in &self.runs {
                        if ui
                            .selectable_label(*r == shown, run_name(r))
                            .on_hover_text(r.display().to_string())
                            .clicked()
                        {
                            chosen = Some(r.clone());
                        }
                    }
                })
                .response
                .labelled_by(l.id);
            if let Some(r) = chosen {
                o.benchmark_dir = r.display().to_string();
                self.message = None;
                self.user_open(ui.ctx(), r);
            }
            if ui
                .small_button("Refresh")
                .on_hover_text(format!("look again for benchmarks in {RESULTS_ROOT}/"))
                .clicked()
            {
                self.scan_runs(ui.ctx());
            }
        });
        widgets::base_folder_note(ui);
        super::picker_unavailable_ui(ui, &mut self.picker);
    }

    /// The options of `sd3lab benchmark`, and Start / Cancel.
    fn run_ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        let running = self.is_running();
        ui.add_enabled_ui(!running, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label(CONFIGURATIONS_LABEL).on_hover_text(
                    "what to benchmark, run in this order: float precisions, uniform quantization at N bits (wN), and plan files",
                );
                for p in presets() {
                    let mut on = o.configurations.contains(&p);
                    let tip = match p.as_str() {
                        "fp32" => "float32 weights and activations: the baseline".to_owned(),
                        "fp16" => "float16 weights and activations".to_owned(),
                        "bf16" => "bfloat16 weights and activations".to_owned(),
                        w => format!(
                            "every linear layer's weights quantized to {} bits (group size below)",
                            &w[1..]
                        ),
                    };
                    if ui.checkbox(&mut on, &p).on_hover_text(tip).changed() {
                        if on {
                            o.configurations.push(p.clone());
                            run_order(&mut o.configurations);
                        } else {
                            o.configurations.retain(|c| *c != p);
                        }
                    }
                }
            });
            ui.horizontal_wrapped(|ui| {
                widgets::group_size_field(
                    ui,
                    &mut o.group_size,
                    "weights of the wN presets sharing one scale and bias (plan files carry their own)",
                );
                ui.separator();
                if ui
                    .button("Add plan file...")
                    .on_hover_text("a mixed-precision plan (sd3lab plan's or the Sensitivity tab's plan-*.json) as one more configuration")
                    .clicked()
                {
                    self.picker.open(
                        Pick::Plan,
                        PickKind::File {
                            filter: ("plan", &["json"]),
                        },
                    );
                }
            });
            let presets = presets();
            let plans: Vec<String> = o
                .configurations
                .iter()
                .filter(|c| !presets.contains(c))
                .cloned()
                .collect();
            for plan in plans {
                ui.horizontal(|ui| {
                    if ui
                        .small_button("Remove")
                        .on_hover_text("leave this plan out of the run")
                        .clicked()
                    {
                        o.configurations.retain(|c| *c != plan);
                    }
                    ui.label(format!("plan: {plan}"));
                });
            }
            ui.horizontal_wrapped(|ui| {
                labelled(ui, REFERENCE_LABEL, |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.reference_dir).desired_width(220.0))
                        .on_hover_text(
                            "the reference images (a calibrate --images-only folder, or any folder of PNG/JPEG): image i of each configuration uses reference image i's prompt and seed; empty: the shipped prompts (and no metrics)",
                        )
                });
                if ui.button("Browse...").on_hover_text("pick the reference folder").clicked() {
                    self.picker.open(Pick::Reference, PickKind::Folder);
                }
                if ui
                    .add_enabled(
                        !self.matching.is_running() && !o.reference_dir.trim().is_empty(),
                        egui::Button::new("Match the reference"),
                    )
                    .on_hover_text(format!(
                        "set {MODEL_LABEL}, {DTYPE_LABEL}, {IMAGES_LABEL}, {STEPS_LABEL}, {CFG_LABEL} and {SIZE_LABEL} to what the reference set's manifest says made its images, so each configuration's image i is the twin of reference image i"
                    ))
                    .clicked()
                {
                    let dir = resolve_path(&o.reference_dir);
                    self.matching
                        .spawn(ui.ctx(), move || ReferenceSettings::read(&dir));
                }
            });
            if let Some(fresh) = &shared.fresh_calibration
                && resolve_path(&o.reference_dir) != *fresh
            {
                let text = format!("Use the set just generated: {}", fresh.display());
                if ui
                    .button(text)
                    .on_hover_text("the folder the Generate tab just wrote")
                    .clicked()
                {
                    o.reference_dir = fresh.display().to_string();
                }
            }
            ui.horizontal_wrapped(|ui| {
                labelled(ui, OUTPUT_LABEL, |ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut o.output_dir)
                            .desired_width(220.0)
                            .hint_text(format!("new folder in {RESULTS_ROOT}/")),
                    )
                    .on_hover_text(format!(
                        "where images and results.json go; empty: a new folder in {RESULTS_ROOT}/ named after the configurations. Starting again into a folder holding a run with the same settings resumes it"
                    ))
                });
                if ui.button("Browse...").on_hover_text("pick the output folder").clicked() {
                    self.picker.open(Pick::Output, PickKind::Folder);
                }
                if !o.output_dir.is_empty()
                    && ui
                        .small_button("New folder")
                        .on_hover_text(format!(
                            "empty the field: the next run goes to a new folder in {RESULTS_ROOT}/"
                        ))
                        .clicked()
                {
                    o.output_dir.clear();
                }
            });
            ui.horizontal_wrapped(|ui| {
                labelled(ui, MODEL_LABEL, |ui| {
                    ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(120.0))
                        .on_hover_text("tiny, sd3-medium, or a model folder")
                });
                let l = ui.label(DTYPE_LABEL).on_hover_text(
                    "what quantized configurations compute in; the reference must have been made with it",
                );
                let name = |d: Option<ModelDtype>| match d {
                    None => format!("default ({})", ModelDtype::default_for_backend().name()),
                    Some(d) => d.name().to_owned(),
                };
                egui::ComboBox::from_id_salt("compare-dtype")
                    .selected_text(name(o.dtype))
                    .show_ui(ui, |ui| {
                        for d in [
                            None,
                            Some(ModelDtype::Float32),
                            Some(ModelDtype::Float16),
                            Some(ModelDtype::Bfloat16),
                        ] {
                            ui.selectable_value(&mut o.dtype, d, name(d));
                        }
                    })
                    .response
                    .labelled_by(l.id);
            });
            ui.horizontal_wrapped(|ui| {
                widgets::number_field(
                    ui,
                    IMAGES_LABEL,
                    "images per configuration (the reference's first ones)",
                    &mut o.num_images,
                    1..=100_000,
                );
                widgets::number_field(
                    ui,
                    STEPS_LABEL,
                    "denoising steps per image",
                    &mut o.num_steps,
                    1..=1000,
                );
                widgets::number_field(
                    ui,
                    CFG_LABEL,
                    "classifier-free guidance weight",
                    &mut o.cfg_weight,
                    0.0..=50.0,
                );
                widgets::number_field(
                    ui,
                    SIZE_LABEL,
                    "image width and height in pixels (a multiple of 16)",
                    &mut o.size,
                    16..=2048,
                );
                widgets::number_field(
                    ui,
                    WARMUP_LABEL,
                    "the first N images of each configuration are left out of the latency statistics (they are kept and scored)",
                    &mut o.warmup,
                    0..=100_000,
                );
            });
            ui.horizontal_wrapped(|ui| {
                ui.checkbox(&mut o.skip_metrics, SKIP_METRICS_LABEL).on_hover_text(
                    "only images, latency and memory: no FID/KID/IS/PSNR/SSIM/LPIPS (and no reference needed)",
                );
                ui.add_enabled_ui(!o.skip_metrics, |ui| {
                    labelled(ui, INCEPTION_LABEL, |ui| {
                        ui.add(
                            egui::TextEdit::singleline(&mut o.inception_weights)
                                .desired_width(220.0)
                                .hint_text("the user cache"),
                        )
                        .on_hover_text(
                            "the Inception network's weights for FID/KID/IS: torch-fidelity's .pth or its converted .safetensors; empty: the user cache, filled by `sd3lab metrics weights --fetch`",
                        )
                    });
                    if ui
                        .button("Browse...")
                        .on_hover_text("pick the Inception weights file")
                        .clicked()
                    {
                        self.picker.open(
                            Pick::Inception,
                            PickKind::File {
                                filter: ("Inception weights", &["pth", "safetensors"]),
                            },
                        );
                    }
                });
            });
        });
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(
                    !running && !o.configurations.is_empty(),
                    egui::Button::new(START_LABEL),
                )
                .on_hover_text(
                    "run every configuration; into a folder holding a run with the same settings, it resumes: the images already there are kept and only the rest are generated",
                )
                .on_disabled_hover_text(if running {
                    "a benchmark is running"
                } else {
                    "tick at least one configuration"
                })
                .clicked()
            {
                self.start(ui.ctx(), o, shared);
            }
            let label = if self.cancelling {
                "cancelling..."
            } else {
                CANCEL_LABEL
            };
            if ui
                .add_enabled(running && !self.cancelling, egui::Button::new(label))
                .on_hover_text("stop after the current image; the images finished are kept, and Start resumes")
                .clicked()
            {
                self.cancel_job(shared);
            }
        });
    }

    /// The running benchmark's progress (outside the run panel, which may be folded).
    fn progress_ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        match super::job_status_ui(
            ui,
            &self.model_notice,
            self.job.as_ref().map(|j| j.0),
            self.cancelling,
            ("benchmark", "the current image"),
            shared,
        ) {
            super::JobStatus::CancelClicked => return self.cancel_job(shared),
            super::JobStatus::Done => return,
            super::JobStatus::ShowProgress => {}
        }
        let p = &self.progress;
        if p.preparing {
            ui.label("checking the settings and the reference set, loading the model...");
            return;
        }
        let mut text = format!(
            "{} of {} done",
            p.images_done,
            count(p.total_images(), "image")
        );
        if let Some(eta) = p.eta() {
            text.push_str(&format!(", {eta}"));
        }
        ui.add(egui::ProgressBar::new(p.fraction()).text(text));
        match &p.metrics {
            Some(m) => ui.label(m),
            None => ui.label(p.text()),
        };
        for n in &p.notes {
            ui.weak(format!("note: {n}"));
        }
    }

    /// The figures of `folder` for `quality`, made once per folder read and quality.
    fn figures_of(&mut self, folder: &Arc<BenchFolder>, quality: QualityMetric) -> Arc<Figures> {
        let key = (self.generation, quality);
        match &self.figures {
            Some((k, f)) if *k == key => f.clone(),
            _ => {
                let f = Arc::new(Figures {
                    figures: benchmark_figures(folder, quality),
                    note: quality_note(folder, quality),
                });
                self.figures = Some((key, f.clone()));
                f
            }
        }
    }

    /// The export buttons (in a row the caller lays out): the report (HTML or Markdown,
    /// beside the benchmark, numbered) and the plots (PNG + SVG, into a numbered folder
    /// beside the benchmark), written on a helper thread.
    fn export_ui(
        &mut self,
        ui: &mut egui::Ui,
        o: &Options,
        folder: &Arc<BenchFolder>,
        quality: QualityMetric,
        figures: &Arc<Figures>,
    ) {
        let busy = self.writing.is_running();
        let beside = folder
            .dir
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let stem = format!("{}-figures-{}", run_name(&folder.dir), quality.name());
        {
            if let Some(wanted) = super::report_buttons(ui, &folder.dir, "benchmark", busy) {
                let folder = folder.clone();
                let opts = BenchmarkReportOptions {
                    quality: Some(quality),
                    // The prompts furthest from the reference by the metric the list is
                    // sorted by.
                    metric: o.view.sort.unwrap_or_default(),
                    ..BenchmarkReportOptions::default()
                };
                self.message = None;
                self.writing.spawn(ui.ctx(), move || {
                    let out = super::numbered_report(&wanted);
                    write_benchmark_report(&folder, &out, &opts)
                        .map(|f| {
                            let text = format!(
                                "wrote {} (+{})",
                                out.display(),
                                count(f.len().saturating_sub(1), "file")
                            );
                            (out.clone(), text)
                        })
                        .map_err(|e| error_sentence(&e))
                });
            }
            let no_figures = figures.figures.is_empty();
            if ui
                .add_enabled(!busy && !no_figures, egui::Button::new("Plots (PNG + SVG)"))
                .on_hover_text(format!(
                    "the plots as shown, into the folder {stem}/ in {} (numbered when it exists)",
                    beside.display()
                ))
                .on_disabled_hover_text(if no_figures {
                    "nothing was measured to plot yet"
                } else {
                    "an export is being written"
                })
                .clicked()
            {
                let (figures, beside, stem) = (figures.clone(), beside.clone(), stem.clone());
                self.message = None;
                self.writing.spawn(ui.ctx(), move || {
                    let dir = crate::fsutil::numbered_folder(&beside, &stem);
                    report::export_figures(
                        &figures.figures,
                        &dir,
                        crate::report::benchmark::BENCHMARK_FIGURE_SIZE,
                    )
                    .map(|f| {
                        let text = format!("wrote {} in {}", count(f.len(), "file"), dir.display());
                        (dir.clone(), text)
                    })
                    .map_err(|e| error_sentence(&e))
                });
            }
        }
    }

    /// The configurations' table, with notes on what was not measured.
    fn summary_ui(&mut self, ui: &mut egui::Ui, folder: &BenchFolder, rows: &[SummaryRow]) {
        let s = &folder.results.settings.generation;
        ui.label(format!(
            "{}, {} of {} steps, {}x{}, {} | model {}",
            count(rows.len(), "configuration"),
            count(folder.prompts.len(), "image"),
            s.num_steps,
            s.width,
            s.height,
            s.dtype.name(),
            s.model.name
        ))
        .on_hover_text(folder.dir.display().to_string());
        let running = self.job.as_ref().is_some_and(|(_, _, d)| *d == folder.dir);
        for note in summary_notes(folder, running) {
            ui.colored_label(egui::Color32::from_rgb(190, 120, 0), note);
        }
        egui::Grid::new("compare-summary-table")
            .striped(true)
            .show(ui, |ui| {
                for c in SummaryRow::COLUMNS {
                    ui.strong(c).on_hover_text(column_tip(c));
                }
                ui.end_row();
                for row in rows {
                    for cell in row.cells() {
                        ui.label(cell);
                    }
                    ui.end_row();
                }
            });
    }
}

/// The height of the plots, in points.
const PLOT_HEIGHT: f32 = 180.0;

/// The quality selector and the figures side by side: quality against weight bytes, latency,
/// peak memory.
fn plots_ui(
    ui: &mut egui::Ui,
    o: &mut Options,
    rows: &[SummaryRow],
    quality: QualityMetric,
    figures: &Figures,
) {
    ui.horizontal_wrapped(|ui| {
        ui.label("Quality")
            .on_hover_text("what the first plot shows against the MMDiT's weight bytes");
        for q in QualityMetric::ALL {
            let measured = rows.iter().any(|r| q.of(r).is_some());
            let mut tip = quality_tip(q).to_owned();
            if !measured {
                tip.push_str(" (not measured in this run)");
            }
            if ui
                .selectable_label(q == quality, q.label())
                .on_hover_text(tip)
                .clicked()
            {
                o.quality = Some(q);
            }
        }
    });
    if let Some(note) = &figures.note {
        ui.weak(note);
    }
    if figures.figures.is_empty() {
        ui.weak("nothing measured to plot yet");
        return;
    }
    let n = figures.figures.len();
    ui.columns(n, |cols| {
        for (col, (stem, fig)) in cols.iter_mut().zip(&figures.figures) {
            col.label(fig.title());
            let id = format!("compare-{stem}");
            match fig {
                Figure::Lines { .. } => scatter_plot(col, &id, fig),
                Figure::Bars { .. } => bars_plot(col, &id, fig),
                Figure::Heatmap { .. } => {}
            }
        }
    });
}

/// What a quality metric means, for tooltips.
fn quality_tip(q: QualityMetric) -> &'static str {
    column_tip(quality_column(q))
}

/// The summary column of a quality metric.
fn quality_column(q: QualityMetric) -> &'static str {
    match q {
        QualityMetric::Fid => "FID",
        QualityMetric::Kid => "KID",
        QualityMetric::Psnr => "PSNR (dB)",
        QualityMetric::Ssim => "SSIM",
        QualityMetric::Lpips => "LPIPS",
    }
}

fn colour(i: usize) -> egui::Color32 {
    let (r, g, b) = report::palette(i);
    egui::Color32::from_rgb(r, g, b)
}

/// A line figure as a scatter: each marker a point labelled with its name (the
/// configurations), each series a line through its points (the trade-off frontier).
fn scatter_plot(ui: &mut egui::Ui, id: &str, fig: &Figure) {
    let Figure::Lines {
        series,
        markers,
        x_label,
        y_label,
        ..
    } = fig
    else {
        return;
    };
    // Room right of the rightmost point for its label.
    let xs = markers.iter().map(|(_, (x, _))| *x);
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let room = if hi > lo {
        (hi - lo) * 0.25
    } else {
        hi.abs() * 0.25 + 1.0
    };
    egui_plot::Plot::new(id.to_owned())
        .height(PLOT_HEIGHT)
        .include_x(if hi.is_finite() { hi + room } else { 0.0 })
        .x_axis_label(x_label.clone())
        .y_axis_label(y_label.clone())
        .allow_scroll(false)
        .show(ui, |p| {
            for s in series {
                let pts: Vec<[f64; 2]> = s.points.iter().map(|&(x, y)| [x, y]).collect();
                p.line(
                    egui_plot::Line::new(s.name.clone(), pts)
                        .color(egui::Color32::GRAY)
                        .style(egui_plot::LineStyle::dashed_loose()),
                );
            }
            for (i, (label, (x, y))) in markers.iter().enumerate() {
                p.points(
                    egui_plot::Points::new(label.clone(), vec![[*x, *y]])
                        .radius(5.0)
                        .color(colour(i)),
                );
                p.text(
                    egui_plot::Text::new(
                        label.clone(),
                        egui_plot::PlotPoint::new(*x, *y),
                        format!("  {label}"),
                    )
                    .anchor(egui::Align2::LEFT_CENTER)
                    .color(colour(i)),
                );
            }
        });
}

/// A bar figure as horizontal bars, the first label on top, each bar's label on its axis.
fn bars_plot(ui: &mut egui::Ui, id: &str, fig: &Figure) {
    let Figure::Bars {
        labels,
        values,
        value_label,
        ..
    } = fig
    else {
        return;
    };
    let n = labels.len();
    // The first label on top: bar i at height n - 1 - i.
    let bars: Vec<egui_plot::Bar> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            egui_plot::Bar::new((n - 1 - i) as f64, *v)
                .name(labels[i].clone())
                .fill(colour(i))
        })
        .collect();
    let names = labels.clone();
    let max = values.iter().copied().fold(0.0, f64::max);
    egui_plot::Plot::new(id.to_owned())
        .height(PLOT_HEIGHT)
        .x_axis_label(value_label.clone())
        .include_x(0.0)
        // Room for the values written after the bars.
        .include_x(max * 1.25)
        .y_grid_spacer(move |_| {
            (0..n)
                .map(|i| egui_plot::GridMark {
                    value: i as f64,
                    // Labelled whatever their spacing (egui_plot hides labels of marks
                    // closer than their step size allows).
                    step_size: 10.0,
                })
                .collect()
        })
        .y_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() > 1e-6 || i < 0.0 || i as usize >= n {
                return String::new();
            }
            names[n - 1 - i as usize].clone()
        })
        .allow_scroll(false)
        .allow_drag(false)
        .show(ui, |p| {
            p.bar_chart(
                egui_plot::BarChart::new(value_label.clone(), bars)
                    .width(0.7)
                    .horizontal(),
            );
            // Each bar's value after it: the axis alone is too coarse to read them.
            for (i, v) in values.iter().enumerate() {
                p.text(
                    egui_plot::Text::new(
                        labels[i].clone(),
                        egui_plot::PlotPoint::new(*v, (n - 1 - i) as f64),
                        format!(" {}", three_digits(*v)),
                    )
                    .anchor(egui::Align2::LEFT_CENTER),
                );
            }
        });
}

/// `v` with three significant digits (at most four decimals): a bar's value beside it.
fn three_digits(v: f64) -> String {
    let decimals = if v == 0.0 || !v.is_finite() {
        0
    } else {
        (2.0 - v.abs().log10().floor()).clamp(0.0, 4.0) as usize
    };
    format!("{v:.decimals$}")
}

/// What each column of [`SummaryRow::COLUMNS`] means, by its name.
const COLUMN_TIPS: [(&str, &str); 12] = [
    (
        "configuration",
        "the configuration: a float precision, wNgG (N bits, groups of G weights) or a plan file's name",
    ),
    (
        "FID",
        "Fréchet Inception Distance to the reference set: how far the images' Inception feature statistics are from the reference's; lower is better (unreliable with few images)",
    ),
    (
        "KID",
        "Kernel Inception Distance (mean ± std over subsets): like FID, unbiased with few images; lower is better",
    ),
    (
        "IS",
        "Inception Score of the configuration's images (mean ± std over splits): higher means more confident, more varied classes",
    ),
    (
        "PSNR (dB)",
        "peak signal-to-noise ratio against each image's reference twin, in dB, over the pairs that differ; higher is better (identical pairs are counted apart)",
    ),
    (
        "SSIM",
        "structural similarity against the reference twin (1 = identical); higher is better",
    ),
    (
        "LPIPS",
        "learned perceptual distance (LPIPS) against the reference twin; lower is better",
    ),
    (
        "MMDiT weights",
        "bytes of the MMDiT's weights (quantized weights with their scales and biases)",
    ),
    (
        "vs fp32",
        "compression ratio: the float32 MMDiT's bytes over this configuration's",
    ),
    (
        "vs fp16",
        "compression ratio: the float16 MMDiT's bytes over this configuration's",
    ),
    (
        "s/img",
        "mean seconds per image (text encoding, denoising, decoding)",
    ),
    (
        "peak MLX memory",
        "the most memory MLX held while generating",
    ),
];

/// What the summary's column `name` means (empty for a column without a tip).
fn column_tip(name: &str) -> &'static str {
    COLUMN_TIPS
        .iter()
        .find(|(c, _)| *c == name)
        .map_or("", |(_, tip)| tip)
}

/// Why some of the table's cells are empty: metrics skipped or not computed yet (`running`:
/// the benchmark is running now), LPIPS weights missing, the reference gone.
pub fn summary_notes(folder: &BenchFolder, running: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let results = &folder.results;
    let missing: Vec<&str> = results
        .configurations
        .iter()
        .filter(|c| c.metrics.is_none())
        .map(|c| c.info.identity.name.as_str())
        .collect();
    if running && !missing.is_empty() {
        notes.push(format!(
            "no metrics yet for {}: they are computed after every configuration's images",
            missing.join(", ")
        ));
    } else if missing.len() == results.configurations.len() && !missing.is_empty() {
        notes.push(
            "no image-quality metrics in this run (run with \"Skip metrics\", or stopped before its metrics step): only latency and memory"
                .to_owned(),
        );
    } else if !missing.is_empty() {
        notes.push(format!(
            "no metrics for {} (the run stopped before its metrics step; Start with its settings computes them)",
            missing.join(", ")
        ));
    }
    let lpips: std::collections::BTreeSet<&str> = results
        .configurations
        .iter()
        .filter_map(|c| c.metrics.as_ref()?.lpips_missing.as_deref())
        .collect();
    for why in lpips {
        notes.push(format!("LPIPS not measured: {why}"));
    }
    if let Some(p) = &folder.reference_problem {
        notes.push(format!("reference images: {p}"));
    }
    notes
}

/// A run's folder name, for the runs list.
fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What the metrics step is doing.
fn metrics_text(configuration: &str, event: &MetricsEvent) -> String {
    let what = match event {
        MetricsEvent::Features { input, done, total } => {
            let of = if *input == 1 { "images" } else { "reference" };
            format!("Inception features of the {of}, {done} of {total}")
        }
        MetricsEvent::CachedFeatures { .. } => "reference features from the cache".to_owned(),
        MetricsEvent::Kid { done, total } => format!("KID subsets, {done} of {total}"),
        MetricsEvent::Paired { done, total } => {
            format!("PSNR/SSIM/LPIPS per image, {done} of {total}")
        }
    };
    format!("metrics of {configuration}: {what}")
}

/// A benchmark error in the tab's terms: what to change among its fields.
pub fn error_message(e: &BenchError) -> String {
    // The app's font has no arrow glyph.
    let plain = |s: &str| s.replace('→', "->");
    match e {
        BenchError::NoConfigurations => format!(
            "no configuration to benchmark: tick at least one of \"{CONFIGURATIONS_LABEL}\" or add a plan file"
        ),
        BenchError::NoImages => format!("\"{IMAGES_LABEL}\" must be at least 1"),
        BenchError::NeedsReference => format!(
            "{e}: choose a \"{REFERENCE_LABEL}\" (a set the Generate tab made with \"Images only\", or any image folder), or tick \"{SKIP_METRICS_LABEL}\""
        ),
        BenchError::TooFewImagesForMetrics { .. } => {
            format!("{e}: raise \"{IMAGES_LABEL}\" to 2 or more, or tick \"{SKIP_METRICS_LABEL}\"")
        }
        BenchError::TooFewReferenceImages { .. } => {
            format!("{e}: lower \"{IMAGES_LABEL}\", or choose a larger \"{REFERENCE_LABEL}\"")
        }
        BenchError::ReferenceDiffers { .. } => format!(
            "{}: set \"{MODEL_LABEL}\", \"{STEPS_LABEL}\", \"{CFG_LABEL}\", \"{SIZE_LABEL}\" and \"{DTYPE_LABEL}\" to the reference's, or choose another \"{REFERENCE_LABEL}\"",
            plain(&e.to_string())
        ),
        BenchError::RunDiffers { .. } => format!(
            "{}: to resume it, set the fields back to its settings; to start a new run, choose another \"{OUTPUT_LABEL}\" (empty: a new folder in {RESULTS_ROOT}/)",
            plain(&e.to_string())
        ),
        BenchError::ConfigurationDiffers { .. } | BenchError::ForeignData { .. } => format!(
            "{}: choose another \"{OUTPUT_LABEL}\" (empty: a new folder in {RESULTS_ROOT}/)",
            plain(&e.to_string())
        ),
        BenchError::Lock(_) => format!(
            "{}: another benchmark is writing there; wait for it, or choose another \"{OUTPUT_LABEL}\"",
            error_sentence(e)
        ),
        BenchError::Metrics(m) => match m.as_ref() {
            MetricsError::Weights(WeightsError::Missing { cache, .. }) => format!(
                "{}: choose a weights file in \"{INCEPTION_LABEL}\" (torch-fidelity's .pth or a converted .safetensors), or fetch them once with `sd3lab metrics weights --fetch`, which puts them in {}; or tick \"{SKIP_METRICS_LABEL}\"",
                error_sentence(e),
                cache.display()
            ),
            _ => error_sentence(e),
        },
        BenchError::Calibrate(c) => match c.as_ref() {
            CalibrateError::Source(s) => super::model_error_message(s, MODEL_LABEL),
            CalibrateError::Settings(_) => format!(
                "{}: check \"{SIZE_LABEL}\", \"{STEPS_LABEL}\" and \"{CFG_LABEL}\"",
                error_sentence(c.as_ref())
            ),
            CalibrateError::Disk {
                dir,
                needed,
                available,
            } => format!(
                "{}: the run needs about {} but only {} are free; choose another \"{OUTPUT_LABEL}\"",
                dir.display(),
                report::human_bytes(*needed),
                report::human_bytes(*available)
            ),
            other => error_sentence(other),
        },
        e => error_sentence(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_values_keep_three_significant_digits() {
        assert_eq!(three_digits(61.28), "61.3");
        assert_eq!(three_digits(0.2134), "0.213");
        assert_eq!(three_digits(1.7068), "1.71");
        assert_eq!(three_digits(1234.5), "1234");
        assert_eq!(three_digits(0.0), "0");
    }

    #[test]
    fn every_summary_column_and_quality_has_its_tip() {
        let named: Vec<&str> = COLUMN_TIPS.iter().map(|(c, _)| *c).collect();
        assert_eq!(named, SummaryRow::COLUMNS);
        for q in QualityMetric::ALL {
            assert!(
                SummaryRow::COLUMNS.contains(&quality_column(q)),
                "{q:?}: {}",
                quality_column(q)
            );
            assert!(!quality_tip(q).is_empty(), "{q:?}");
        }
        assert!(quality_tip(QualityMetric::Kid).starts_with("Kernel Inception Distance"));
        assert!(quality_tip(QualityMetric::Lpips).contains("LPIPS"));
    }

    #[test]
    fn a_missing_inception_weights_refusal_names_the_field_and_the_cache() {
        let m = error_message(&BenchError::Metrics(Box::new(MetricsError::Weights(
            WeightsError::Missing {
                what: "Inception",
                cache: "/cache/metrics".into(),
            },
        ))));
        assert!(m.contains(INCEPTION_LABEL), "{m}");
        assert!(
            m.contains("sd3lab metrics weights --fetch") && m.contains("/cache/metrics"),
            "{m}"
        );
        assert!(m.contains(SKIP_METRICS_LABEL), "{m}");
    }

    #[test]
    fn presets_are_configurations_the_benchmark_accepts() {
        for p in presets() {
            crate::bench::Configuration::parse(&p, ModelDtype::Float32, 64)
                .unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn configurations_keep_preset_order_then_plans_as_added() {
        let mut c: Vec<String> = ["w4", "b.json", "fp32", "a.json", "w8"]
            .map(String::from)
            .to_vec();
        run_order(&mut c);
        assert_eq!(c, ["fp32", "w8", "w4", "b.json", "a.json"]);
        assert_eq!(
            default_output_stem(&["fp32".into(), "w4:g32".into(), "plans/p.json".into()]),
            "fp32_w4g32_p"
        );
    }

    #[test]
    fn refusals_name_the_tabs_fields_not_cli_flags_or_other_tabs() {
        let messages = [
            error_message(&BenchError::RunDiffers {
                dir: "b".into(),
                differences: "num_steps: 2 → 3".into(),
            }),
            error_message(&BenchError::ReferenceDiffers {
                dir: "r".into(),
                differences: "cfg_weight: 5 → 7".into(),
            }),
            error_message(&BenchError::NeedsReference),
            error_message(&BenchError::ForeignData { dir: "b".into() }),
            error_message(&BenchError::Calibrate(Box::new(CalibrateError::Disk {
                dir: "b".into(),
                needed: 5_000_000_000,
                available: 1_000_000_000,
            }))),
        ];
        for m in &messages {
            assert!(!m.contains("--") && !m.contains('→'), "{m}");
            assert!(!m.contains("Start over") && !m.contains("Force"), "{m}");
        }
        assert!(messages[0].contains(OUTPUT_LABEL) && messages[0].contains("2 -> 3"));
        assert!(messages[1].contains(STEPS_LABEL) && messages[1].contains(REFERENCE_LABEL));
        assert!(messages[2].contains(SKIP_METRICS_LABEL));
        assert!(messages[4].contains("5.00 GB") && messages[4].contains(OUTPUT_LABEL));
    }
}

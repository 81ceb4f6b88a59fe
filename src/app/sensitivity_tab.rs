//! The Sensitivity tab: run a sweep with the options of `sd3lab sensitivity` (progress, cancel,
//! resume) or open a `sensitivity.json`; plots of SQNR/MSE vs bits per layer (filter by block
//! and kind), a layer × bucket heatmap at one bit width, a ranking of the most sensitive
//! layers; a plan builder (target bits → the optimal plan and the Pareto front with the chosen
//! point; save the plan); export of the plots (PNG/SVG) and of a report (HTML/Markdown).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::feedback::Place;
use super::worker::{Command, Event, JobError};
use super::{PickKind, Picker, Shared, Tab, Task, count, labelled, resolve_path, widgets};
use crate::calib::Bucket;
use crate::job::CancelToken;
use crate::model::config::ModelDtype;
use crate::model::registry::LayerKind;
use crate::quant::plan::{
    BuiltPlan, Objective, PlanError, build_plan, check_plan_outputs, numbered_plan_path,
    pareto_file_named_after, require_complete, write_plan_files,
};
use crate::quant::sensitivity::{
    REPORT_JSON, Scope, SensitivityConfig, SensitivityError, SensitivityEvent, SensitivityReport,
    read_report,
};
use crate::report::{self, Metric};

/// Options (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    pub model: String,
    pub calib_dir: String,
    pub bits: Vec<i32>,
    pub group_size: i32,
    pub max_images: usize,
    pub step_stride: usize,
    pub layers: String,
    pub scope: Scope,
    pub output_dir: String,
    /// The report shown.
    pub report_path: String,
    pub metric: Metric,
    pub bucket: Bucket,
    /// Bit width of the heatmap and ranking (0: the lowest measured).
    pub plot_bits: i32,
    pub block: Option<usize>,
    pub kind: Option<LayerKind>,
    pub target_bits: f64,
    pub objective: Objective,
    pub view: View,
    /// Layers picked for the bits plot (empty: the most sensitive of the filter).
    pub pinned: Vec<String>,
}

/// What the results area shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum View {
    #[default]
    Plots,
    Heatmap,
    Plan,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model: "tiny".into(),
            calib_dir: "calibration_data".into(),
            bits: vec![2, 4, 8],
            group_size: 64,
            max_images: 0,
            step_stride: 1,
            layers: String::new(),
            scope: Scope::Model,
            output_dir: "sensitivity".into(),
            report_path: String::new(),
            metric: Metric::Sqnr,
            bucket: Bucket::All,
            plot_bits: 0,
            block: None,
            kind: None,
            target_bits: 4.5,
            objective: Objective::Sqnr,
            view: View::Plots,
            pinned: Vec::new(),
        }
    }
}

/// What a file dialog of the tab is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Report,
    Plan,
}

/// The labels of the sweep's fields, which errors and warnings name.
pub const MODEL_LABEL: &str = "Model";
pub const LAYERS_LABEL: &str = "Layers (regex)";
pub const CALIB_LABEL: &str = "Calibration folder";
pub const MAX_IMAGES_LABEL: &str = "Max images (0 = all)";
pub const STEP_STRIDE_LABEL: &str = "Step stride";
/// The button a refused sweep offers (a folder holding another run, or an unreadable one).
pub const START_OVER_LABEL: &str = "Start over (replace the earlier sweep)";
/// The choice that lets a plan from a sweep that did not finish be saved.
pub const INCOMPLETE_PLAN_LABEL: &str =
    "Plan from the measured layers only (the missing ones stay at full precision)";

/// Rows of the heatmap view (and of its export): the most sensitive filtered layers.
const HEATMAP_ROWS: usize = 40;
/// Rows of the ranking table (and of the exported ranking).
const RANKING_ROWS: usize = 15;

/// Sweep progress.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Layers to measure (for a linearized sweep: batches to probe, every layer at once).
    pub layers: usize,
    /// Whether the work is counted in probed batches (linearized) rather than layers.
    pub batches: bool,
    pub done: usize,
    /// Layers already measured when this run started (a resumed sweep skips them).
    pub done_before: usize,
    /// The last measured layer's short name.
    pub last: String,
    pub seconds: f64,
    pub preparing: bool,
    /// When the layers started being measured (after loading), for the ETA.
    pub measuring_since: Option<Instant>,
}

impl Progress {
    /// "about 3 min 20 s left": the time per layer of this run so far times the layers left.
    pub fn eta(&self) -> Option<String> {
        let since = self.measuring_since?;
        eta_text(
            self.done.saturating_sub(self.done_before),
            self.layers.saturating_sub(self.done),
            since.elapsed(),
        )
    }
}

/// The time left when `measured` layers took `elapsed` and `left` remain; None before the
/// first layer (nothing to extrapolate from) or when none remain.
pub fn eta_text(measured: usize, left: usize, elapsed: Duration) -> Option<String> {
    if measured == 0 || left == 0 {
        return None;
    }
    let secs = (elapsed.as_secs_f64() / measured as f64 * left as f64).round() as u64;
    Some(if secs >= 3600 {
        format!("about {} h {} min left", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("about {} min {} s left", secs / 60, secs % 60)
    } else {
        format!("about {secs} s left")
    })
}

/// The tab's state.
#[derive(Default)]
pub struct SensitivityTab {
    pub report: Option<SensitivityReport>,
    /// The `sensitivity.json` the shown report was read from (absolute).
    pub report_file: Option<PathBuf>,
    loading: Option<Receiver<(PathBuf, Result<SensitivityReport, String>)>>,
    job: Option<(u64, CancelToken, PathBuf)>,
    /// The submitted sweep's report, for the Report field to show at the next frame even when
    /// the sweep has already ended by then (a quick failure).
    show_in_field: Option<PathBuf>,
    /// Cancel was clicked for the running sweep.
    cancelling: bool,
    pub progress: Progress,
    pub message: Option<Result<String, String>>,
    /// The report path the message is about: a message about another one is stale.
    message_context: String,
    /// The file or folder the last save or export wrote, shown as a link.
    pub written: Option<PathBuf>,
    /// The model's warning and download progress for the current (or last) sweep.
    pub model_notice: super::ModelNotice,
    plan: Option<ShownPlan>,
    /// "Plan from the measured layers only" was ticked for the shown report (cleared when
    /// another report is shown): a plan from a sweep that did not finish is saved only then.
    incomplete_ok: bool,
    /// The sweep the output folder's earlier run refused (other settings or data, or an
    /// unreadable report there), which *Start over* runs again replacing that run. Offered
    /// only while the options still give these settings.
    refused: Option<SensitivityConfig>,
    /// The settings of the sweep sent to the worker (for `refused`).
    running_config: Option<SensitivityConfig>,
    picker: Picker<Pick>,
    /// Saving the plan, exporting figures or a report, on a helper thread: the place, the
    /// file or folder written, or the error.
    writing: Task<Written>,
}

/// The plan built for the plan builder's budget and objective (the key, in millionths of a
/// bit), and why the report's sweep is unfinished ([`require_complete`]'s refusal), if it is.
struct ShownPlan {
    key: (u64, Objective),
    built: Result<BuiltPlan, PlanError>,
    incomplete: Option<PlanError>,
}

/// What a save or an export did: where (the error log's place), and the file or folder
/// written with the message, or the error.
type Written = (Place, Result<(PathBuf, String), String>);

const OPEN: Place = Place::new(Tab::Sensitivity, "open");
const EXPORT: Place = Place::new(Tab::Sensitivity, "export");
const SAVE_PLAN: Place = Place::new(Tab::Sensitivity, "plan save");
const FOLDER_LINK: Place = Place::new(Tab::Sensitivity, "open folder");

/// The report file to read for what was typed or picked: a sweep's folder means its
/// `sensitivity.json` (as `sd3lab report sensitivity` takes either). Touches the disk.
pub fn report_json(path: &Path) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("no report given: type a sweep's folder or its sensitivity.json".into());
    }
    if path.is_dir() {
        let json = path.join(REPORT_JSON);
        if json.is_file() {
            Ok(json)
        } else {
            Err(format!(
                "{} has no {REPORT_JSON}: it is not a sweep's output folder",
                path.display()
            ))
        }
    } else {
        Ok(path.to_path_buf())
    }
}

/// The file stem of a saved plan: what it optimises and its budget ("plan-sqnr-4.50bits").
pub fn plan_stem(objective: Objective, target_bits: f64) -> String {
    let objective = match objective {
        Objective::Sqnr => "sqnr",
        Objective::Mse => "mse",
    };
    format!("plan-{objective}-{target_bits:.2}bits")
}

/// The sweep the options describe, as the worker runs it: relative folders taken from the
/// base folder, never replacing an earlier run of other settings (see *Start over*).
pub fn sweep_config(o: &Options) -> SensitivityConfig {
    SensitivityConfig {
        model: o.model.clone(),
        calib_dir: resolve_path(&o.calib_dir),
        bits: o.bits.clone(),
        group_size: o.group_size,
        max_images: (o.max_images > 0).then_some(o.max_images),
        step_stride: (o.step_stride > 1).then_some(o.step_stride),
        layers: (!o.layers.trim().is_empty()).then(|| o.layers.trim().to_owned()),
        output_dir: resolve_path(&o.output_dir),
        use_cache: true,
        dtype: ModelDtype::default_for_backend(),
        scope: o.scope,
        batch_size: o.scope.default_batch_size(),
        overwrite: false,
        probes: None,
        probe_seed: 0,
    }
}

impl SensitivityTab {
    /// Reads a report (a `sensitivity.json`, or a sweep's folder) on a helper thread; a
    /// relative path is taken from the base folder.
    pub fn open(&mut self, path: &str) {
        let path = resolve_path(path);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.loading = Some(rx);
        std::thread::spawn(move || {
            let outcome = report_json(&path).and_then(|json| {
                read_report(&json)
                    .map(|r| (json, r))
                    .map_err(|e| super::feedback::error_sentence(&e))
            });
            let _ = tx.send(match outcome {
                Ok((json, r)) => (json, Ok(r)),
                Err(e) => (path, Err(e)),
            });
        });
    }

    /// True while a report is being read or a file written.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some() || self.writing.is_running()
    }

    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// Asks the running sweep to stop after its current layer.
    pub fn cancel(&mut self) {
        if let Some((_, c, _)) = &self.job {
            c.cancel();
            self.cancelling = true;
        }
    }

    /// Cancel clicked: the sweep stops after its current layer; the board says so at once.
    fn cancel_job(&mut self, shared: &mut Shared) {
        if let Some((id, _, _)) = &self.job {
            shared.jobs.cancelling(*id);
        }
        self.cancel();
    }

    fn set_message(&mut self, message: Result<String, String>, context: &str) {
        self.message = Some(message);
        self.message_context = context.to_owned();
    }

    pub fn poll(&mut self, shared: &mut Shared) {
        if let Some((place, outcome)) = self.writing.poll() {
            super::show_written(
                outcome,
                place,
                &mut self.written,
                &mut self.message,
                &mut shared.errors,
            );
        }
        if let Some(rx) = &self.loading
            && let Ok((path, r)) = rx.try_recv()
        {
            self.loading = None;
            match r {
                Ok(report) => {
                    // Another report: the plan, and what was written for the last one, are
                    // about that one.
                    if self.report_file.as_ref() != Some(&path) {
                        self.written = None;
                        self.incomplete_ok = false;
                    }
                    self.report = Some(report);
                    self.report_file = Some(path);
                    self.plan = None;
                    shared.errors.succeeded(OPEN);
                }
                Err(e) => {
                    self.message = Some(Err(e.clone()));
                    shared.errors.report(OPEN, e);
                }
            }
        }
    }

    /// Starts (or resumes) the sweep of the options: a folder holding another run is refused
    /// by the library, and the tab then offers *Start over*.
    pub fn start(&mut self, o: &Options, shared: &mut Shared) {
        self.submit(sweep_config(o), shared);
    }

    /// *Start over* clicked: the refused sweep again, replacing the folder's earlier run.
    fn start_over(&mut self, shared: &mut Shared) {
        if let Some(refused) = self.refused.clone() {
            self.submit(
                SensitivityConfig {
                    overwrite: true,
                    ..refused
                },
                shared,
            );
        }
    }

    fn submit(&mut self, config: SensitivityConfig, shared: &mut Shared) {
        if self.job.is_some() {
            return;
        }
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        let json = config.output_dir.join(REPORT_JSON);
        let config_sent = config.clone();
        if shared.worker.send(Command::Sensitivity {
            id,
            config,
            cancel: cancel.clone(),
        }) {
            shared
                .jobs
                .submit(id, Tab::Sensitivity, "sensitivity sweep");
            if self.report_file.as_ref() != Some(&json) {
                // The shown report is another sweep's: until this one's first layer lands, the
                // tab shows its empty state, and saves and exports cannot go beside the old one.
                self.report = None;
                self.report_file = None;
                self.plan = None;
                self.incomplete_ok = false;
            }
            self.refused = None;
            self.running_config = Some(config_sent);
            self.show_in_field = Some(json.clone());
            self.job = Some((id, cancel, json));
            self.cancelling = false;
            self.progress = Progress {
                preparing: true,
                ..Progress::default()
            };
            self.message = None;
            self.written = None;
            self.model_notice = super::ModelNotice::default();
        }
    }

    pub fn handle(&mut self, event: &Event, shared: &mut Shared) {
        let Some((id, _, json)) = &self.job else {
            return;
        };
        let (id, json) = (*id, json.clone());
        match event {
            Event::Sensitivity { id: i, event } if *i == id => {
                match event {
                    SensitivityEvent::Model(e) => {
                        self.model_notice.apply(e, MODEL_LABEL);
                        // A download is work outside the worker's order: the status bar
                        // shows its bytes.
                        shared.running = self.model_notice.running();
                    }
                    SensitivityEvent::Preparing { .. } => {
                        self.model_notice.job_ended();
                        shared.running = None;
                        self.progress.preparing = true;
                    }
                    SensitivityEvent::Planned {
                        layers,
                        already_done,
                        ..
                    } => {
                        self.progress.preparing = false;
                        self.progress.layers = *layers;
                        self.progress.done = *already_done;
                        self.progress.done_before = *already_done;
                        self.progress.measuring_since = Some(Instant::now());
                    }
                    SensitivityEvent::LayerDone { id, seconds, .. } => {
                        self.progress.done += 1;
                        self.progress.last = id.short_name();
                        self.progress.seconds = *seconds;
                        // Show the results as they come.
                        self.open(&json.display().to_string());
                    }
                    SensitivityEvent::Probing {
                        batches,
                        already_done,
                        ..
                    } => {
                        self.progress.batches = true;
                        self.progress.layers = *batches;
                        self.progress.done = *already_done;
                        self.progress.done_before = *already_done;
                        self.progress.measuring_since = Some(Instant::now());
                    }
                    SensitivityEvent::BatchDone {
                        done,
                        batches,
                        seconds,
                    } => {
                        self.progress.done = *done;
                        self.progress.last = format!("batch {done} of {batches}");
                        self.progress.seconds = *seconds;
                    }
                    // The app runs sweeps whole: distributed runs are the CLI's.
                    SensitivityEvent::JobProgress { .. } => {}
                }
                let f = self.progress.done as f32 / self.progress.layers.max(1) as f32;
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
                let context = json.display().to_string();
                self.set_message(super::job_outcome(*cancelled, result), &context);
                // The folder holds another run (or one that cannot be read): the settings
                // refused, for Start over to replace it with, never on its own.
                self.refused = match result {
                    Err(JobError::Sensitivity(
                        SensitivityError::SettingsDiffer { .. }
                        | SensitivityError::UnreadablePrevious { .. },
                    )) => self.running_config.take(),
                    _ => None,
                };
                self.running_config = None;
                // A cancelled sweep kept the layers it measured: show them too.
                if result.is_ok() {
                    self.open(&context);
                }
            }
            _ => {}
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        if let Some((pick, p)) = self.picker.poll() {
            let p = p.display().to_string();
            match pick {
                Pick::Report => {
                    o.report_path = p.clone();
                    self.open(&p);
                }
                // A second write while one runs would drop the first's outcome: wait.
                Pick::Plan if self.writing.is_running() => {
                    self.message = Some(Err(
                        "an export is still being written; save the plan when it is done".into(),
                    ));
                }
                Pick::Plan => self.save_plan(ui.ctx(), o, Some(PathBuf::from(p))),
            }
        }
        // While a sweep runs (and at the frame after one is submitted) the field shows its report.
        let shown = self.job.as_ref().map(|(_, _, json)| json);
        if let Some(json) = shown.or(self.show_in_field.as_ref())
            && o.report_path != json.display().to_string()
        {
            o.report_path = json.display().to_string();
        }
        self.show_in_field = None;
        // A message about another report (the outcome of an earlier sweep or open) is stale.
        if self.message.is_some()
            && !self.message_context.is_empty()
            && self.message_context != o.report_path
        {
            self.message = None;
            self.message_context.clear();
        }
        egui::Panel::left("sensitivity-options")
            .default_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.options_ui(ui, o, shared));
            });
        egui::CentralPanel::default_margins().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.results_ui(ui, o));
        });
    }

    fn options_ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        ui.heading("Sensitivity");
        ui.horizontal_wrapped(|ui| {
            let field = labelled(ui, "Report", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.report_path).desired_width(150.0))
                    .on_hover_text(
                        "a sweep's folder or its sensitivity.json; Enter opens it (relative paths are taken from the base folder)",
                    )
            });
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if field.changed() {
                self.message = None;
            }
            if ui
                .button("Open")
                .on_hover_text("read the report (a sweep's folder or its sensitivity.json)")
                .clicked()
                || enter
            {
                self.message = None;
                self.message_context = o.report_path.clone();
                self.open(&o.report_path);
            }
            if ui
                .button("Browse...")
                .on_hover_text("pick a sensitivity.json")
                .clicked()
            {
                self.picker.open(
                    Pick::Report,
                    PickKind::File {
                        filter: (REPORT_JSON, &["json"]),
                    },
                );
            }
        });
        widgets::base_folder_note(ui);
        super::picker_unavailable_ui(ui, &mut self.picker);
        ui.separator();
        egui::CollapsingHeader::new("Run a sweep")
            .default_open(true)
            .show(ui, |ui| self.sweep_ui(ui, o, shared));
        super::message_ui(ui, &self.message);
        self.start_over_ui(ui, o, shared);
        if let Some(path) = self.written.clone()
            && let Some(e) = widgets::path_link(ui, &path)
        {
            shared.errors.report(FOLDER_LINK, e);
        }
    }

    /// Beside the refusal of a sweep over a folder holding another run: *Start over*, which
    /// runs the refused settings again replacing that run. One deliberate click, offered only
    /// while the error is shown and the options still give the settings refused (other
    /// settings are checked against the folder again by Start).
    fn start_over_ui(&mut self, ui: &mut egui::Ui, o: &Options, shared: &mut Shared) {
        let Some(refused) = &self.refused else {
            return;
        };
        if self.job.is_some()
            || !matches!(self.message, Some(Err(_)))
            || sweep_config(o) != *refused
        {
            return;
        }
        let dir = refused.output_dir.display().to_string();
        if ui
            .button(START_OVER_LABEL)
            .on_hover_text(format!(
                "Measure these settings from the first layer, replacing {REPORT_JSON} and {} in {}: the earlier sweep's results there are lost. To keep them, choose another \"Output folder\" instead.",
                crate::quant::sensitivity::REPORT_CSV,
                crate::text::escape_control(&dir)
            ))
            .clicked()
        {
            self.start_over(shared);
        }
    }

    fn sweep_ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        let running = self.job.is_some();
        ui.add_enabled_ui(!running, |ui| {
            labelled(ui, MODEL_LABEL, |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(150.0))
                    .on_hover_text("tiny, sd3-medium, or a model folder")
            });
            labelled(ui, CALIB_LABEL, |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(130.0))
                    .on_hover_text(format!(
                        "the calibration set the sweep measures on; a relative path is taken from {}",
                        super::base_folder().display()
                    ))
            });
            if let Some(fresh) = &shared.fresh_calibration
                && resolve_path(&o.calib_dir) != *fresh
            {
                let text = format!("Use the set just generated: {}", fresh.display());
                if ui
                    .button(text)
                    .on_hover_text("the calibration folder the Generate tab just wrote")
                    .clicked()
                {
                    o.calib_dir = fresh.display().to_string();
                }
            }
            ui.horizontal_wrapped(|ui| {
                ui.label("Bits").on_hover_text(
                    "bit widths to measure each layer at (weights quantized per group)",
                );
                for b in crate::quant::SUPPORTED_BITS {
                    let mut on = o.bits.contains(&b);
                    if ui
                        .checkbox(&mut on, b.to_string())
                        .on_hover_text(format!("measure at {b} bits"))
                        .changed()
                    {
                        if on {
                            o.bits.push(b);
                            o.bits.sort();
                        } else {
                            o.bits.retain(|x| *x != b);
                        }
                    }
                }
            });
            ui.horizontal_wrapped(|ui| {
                widgets::group_size_field(
                    ui,
                    &mut o.group_size,
                    "weights sharing one scale and bias; a layer whose input width it does not divide stays float",
                );
            });
            widgets::number_field(
                ui,
                MAX_IMAGES_LABEL,
                "measure on the samples of at most this many images (0: all)",
                &mut o.max_images,
                0..=100_000,
            );
            widgets::number_field(
                ui,
                STEP_STRIDE_LABEL,
                "use every n-th denoising step's sample (1: every step)",
                &mut o.step_stride,
                1..=1000,
            );
            labelled(ui, LAYERS_LABEL, |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.layers).desired_width(140.0))
                    .on_hover_text(
                        "a regular expression over layer names; empty: every layer (a sweep of fewer layers reads as incomplete later)",
                    )
            });
            ui.horizontal_wrapped(|ui| {
                ui.label("Scope").on_hover_text(
                    "where the error is measured: the model's output, the block's output, or the layer's own output",
                );
                for s in [Scope::Model, Scope::Linearized, Scope::Block, Scope::Layer] {
                    let tip = match s {
                        Scope::Model => "the error of the whole model's output (what an image sees)",
                        Scope::Linearized => "the model output's error to first order, every layer at once from a few gradient probes per sample (ranks like model at a fraction of its time; estimates with a standard error)",
                        Scope::Block => "the error of the layer's transformer block's output (faster)",
                        Scope::Layer => "the error of the layer's own output (fastest, least faithful)",
                    };
                    ui.selectable_value(&mut o.scope, s, s.name())
                        .on_hover_text(tip);
                }
            });
            labelled(ui, "Output folder", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.output_dir).desired_width(140.0))
                    .on_hover_text(
                        "where sensitivity.json and .csv go; a sweep there with the same settings resumes",
                    )
            });
        });
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(
                    !running && !o.bits.is_empty(),
                    egui::Button::new("Start / Resume sweep"),
                )
                .on_hover_text("measure the layers not yet in the output folder's report")
                .clicked()
            {
                self.start(o, shared);
            }
            let label = if self.cancelling {
                "cancelling..."
            } else {
                "Cancel sweep"
            };
            if ui
                .add_enabled(running && !self.cancelling, egui::Button::new(label))
                .on_hover_text("stop after the current layer; the layers measured are kept")
                .clicked()
            {
                self.cancel_job(shared);
            }
        });
        match super::job_status_ui(
            ui,
            &self.model_notice,
            self.job.as_ref().map(|j| j.0),
            self.cancelling,
            ("sweep", "the current layer"),
            shared,
        ) {
            super::JobStatus::CancelClicked => self.cancel_job(shared),
            super::JobStatus::Done => {}
            super::JobStatus::ShowProgress => {
                let p = &self.progress;
                if p.preparing {
                    ui.label("loading the model, the samples and their float outputs...");
                } else {
                    let mut text = if p.batches {
                        format!(
                            "{} of {} probed (every layer at once)",
                            p.done,
                            count(p.layers, "sample batch")
                        )
                    } else {
                        format!("{} of {} measured", p.done, count(p.layers, "layer"))
                    };
                    if let Some(eta) = p.eta() {
                        text.push_str(&format!(", {eta}"));
                    }
                    ui.add(
                        egui::ProgressBar::new(p.done as f32 / p.layers.max(1) as f32).text(text),
                    );
                }
                if !p.last.is_empty() {
                    ui.label(format!("last: {} ({:.1} s)", p.last, p.seconds));
                }
            }
        }
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, o: &mut Options) {
        // Borrowed out and put back: no copy of the report per frame.
        let Some(report) = self.report.take() else {
            if self.job.is_some() {
                ui.weak("no results yet: they appear as each layer is measured");
            } else if self.loading.is_some() {
                ui.spinner();
            } else {
                ui.label("Open a sweep's folder or its sensitivity.json, or run a sweep.");
            }
            return;
        };
        self.report_ui(ui, o, &report);
        if self.report.is_none() {
            self.report = Some(report);
        }
    }

    fn report_ui(&mut self, ui: &mut egui::Ui, o: &mut Options, report: &SensitivityReport) {
        let s = &report.settings;
        let cover = report::coverage(report);
        let summary = format!(
            "{} | scope {} | bits {:?} | group {} | {} | model {}",
            count(report.layers.len(), "layer"),
            s.metric_scope.name(),
            s.bits,
            s.group_size,
            count(s.samples.len(), "sample"),
            s.model
        );
        ui.label(summary)
            .on_hover_text(format!("calibration folder: {}", s.calib_dir.display()));
        if !cover.is_complete() {
            let text = if self.job.is_some() {
                format!(
                    "{} of the model's {} measured so far",
                    cover.measured,
                    count(cover.model_layers, "layer")
                )
            } else {
                format!(
                    "incomplete: {} of {} measured (the sweep was cancelled or stopped, or limited by a layer pattern); Start / Resume sweep with its settings measures the rest",
                    cover.measured,
                    count(cover.model_layers, "layer")
                )
            };
            ui.colored_label(egui::Color32::from_rgb(190, 120, 0), text);
        }
        // A report without bit widths (a hand-made file: the sweep refuses to run without)
        // has nothing to plot; said in the report module's words.
        let Some(lowest_bits) = report.lowest_bits() else {
            ui.label(report::ReportError::NoBitWidths.to_string());
            return;
        };
        let bits_list = s.bits.clone();
        if !bits_list.contains(&o.plot_bits) {
            o.plot_bits = lowest_bits;
        }
        ui.horizontal_wrapped(|ui| {
            ui.label("View");
            for (v, label, tip) in [
                (
                    View::Plots,
                    "Plots and ranking",
                    "the metric vs bits per layer, and the most sensitive layers",
                ),
                (
                    View::Heatmap,
                    "Layer x bucket heatmap",
                    "each layer's metric per group of denoising steps",
                ),
                (
                    View::Plan,
                    "Plan builder",
                    "bit widths per layer for an average budget",
                ),
            ] {
                ui.selectable_value(&mut o.view, v, label)
                    .on_hover_text(tip);
            }
        });
        // The plan builder uses every layer at every bit width: the metric, bucket and
        // filters below do not apply to it.
        if o.view != View::Plan {
            filters_ui(ui, o, report, &bits_list);
        }
        // Filtered layers, most sensitive first (as the exports rank them).
        let filter = report::LayerFilter {
            block: o.block,
            kind: o.kind,
        };
        let ranked = report::ranking(report, o.plot_bits, o.bucket, o.metric, &filter);
        let filtered: Vec<String> = ranked.iter().map(|(n, _)| n.clone()).collect();
        o.pinned
            .retain(|p| report.layers.iter().any(|l| &l.name == p));
        let shown: Vec<String> = if o.pinned.is_empty() {
            filtered.iter().take(10).cloned().collect()
        } else {
            o.pinned.clone()
        };
        let export = report::SensitivityReportOptions {
            metric: o.metric,
            bucket: o.bucket,
            bits: Some(o.plot_bits),
            // The bits plot's layers as shown: the picks, or the filter's most sensitive.
            layers: shown.clone(),
            top: RANKING_ROWS,
            plan_target_bits: Some(o.target_bits),
            plan_objective: o.objective,
            filter,
            heatmap_rows: Some(HEATMAP_ROWS),
        };
        self.export_ui(ui, o, report, export);
        ui.separator();
        // Layers that cannot be grouped have no results: say why the counts differ.
        let why_fewer = if cover.ungrouped.is_empty() {
            String::new()
        } else {
            format!(
                "; {} of the {} measured cannot be grouped by {} (input width) and stay float",
                count(cover.ungrouped.len(), "layer"),
                report.layers.len(),
                s.group_size
            )
        };
        match o.view {
            View::Plots => {
                if filtered.is_empty() {
                    ui.weak(format!(
                        "no results at {} bits ({}) for these filters yet",
                        o.plot_bits, o.bucket
                    ));
                    return;
                }
                if o.pinned.is_empty() {
                    ui.label(format!(
                        "{} vs bits, the {} most sensitive of {} (tick layers below to pick others)",
                        o.metric.label(),
                        shown.len(),
                        count(filtered.len(), "filtered layer"),
                    ))
                    .on_hover_text(format!("{}{why_fewer}", count(filtered.len(), "layer")));
                } else {
                    ui.horizontal(|ui| {
                        ui.label(format!(
                            "{} vs bits, {}",
                            o.metric.label(),
                            count(shown.len(), "picked layer")
                        ));
                        if ui
                            .button("Clear picks")
                            .on_hover_text("untick every layer picked in the table below")
                            .clicked()
                        {
                            o.pinned.clear();
                        }
                    });
                }
                if !why_fewer.is_empty() {
                    ui.weak(why_fewer.trim_start_matches("; ").to_owned());
                }
                let fig = report::bits_figure(report, &shown, o.bucket, o.metric);
                lines_plot(ui, "bits-plot", &fig, 300.0);
                ui.separator();
                ui.label(format!(
                    "most sensitive layers at {} bits ({})",
                    o.plot_bits, o.bucket
                ));
                // Estimates (linearized sweeps) carry a standard error.
                let stderr = |name: &str| {
                    report
                        .layers
                        .iter()
                        .find(|l| l.name == name)
                        .and_then(|l| {
                            l.results
                                .iter()
                                .find(|r| r.bits == o.plot_bits && r.bucket == o.bucket)
                        })
                        .and_then(|r| o.metric.stderr_of(r))
                };
                let estimated = ranked
                    .iter()
                    .take(RANKING_ROWS)
                    .any(|(name, _)| stderr(name).is_some());
                egui::Grid::new("ranking").striped(true).show(ui, |ui| {
                    ui.label("#");
                    ui.label("layer");
                    ui.label(o.metric.label())
                        .on_hover_text(metric_tip(o.metric));
                    if estimated {
                        ui.label("±").on_hover_text(
                            "the estimate's standard error (linearized sweep): layers closer than this are ordered by chance",
                        );
                    }
                    ui.label("plot");
                    ui.end_row();
                    for (i, (name, v)) in ranked.iter().take(RANKING_ROWS).enumerate() {
                        ui.label((i + 1).to_string());
                        let label = ui.label(name);
                        ui.label(format!("{v:.4}"));
                        if estimated {
                            ui.label(stderr(name).map_or(String::new(), |e| match o.metric {
                                Metric::Mse => format!("{e:.2e}"),
                                Metric::Sqnr => format!("{e:.2}"),
                            }));
                        }
                        let mut on = o.pinned.contains(name);
                        if ui
                            .checkbox(&mut on, "")
                            .labelled_by(label.id)
                            .on_hover_text("plot this layer")
                            .changed()
                        {
                            if on {
                                o.pinned.push(name.clone());
                            } else {
                                o.pinned.retain(|p| p != name);
                            }
                        }
                        ui.end_row();
                    }
                });
            }
            View::Heatmap => {
                if filtered.is_empty() {
                    ui.weak(format!(
                        "no results at {} bits for these filters yet",
                        o.plot_bits
                    ));
                    return;
                }
                ui.label(format!(
                    "layer x bucket at {} bits ({}), the {} most sensitive filtered layers; blank: no effect",
                    o.plot_bits,
                    o.metric.label(),
                    filtered.len().min(HEATMAP_ROWS)
                ))
                .on_hover_text(format!("hover a cell for its value{why_fewer}"));
                let heat = report::bucket_heatmap(
                    report,
                    &filtered
                        .iter()
                        .take(HEATMAP_ROWS)
                        .cloned()
                        .collect::<Vec<_>>(),
                    o.plot_bits,
                    o.metric,
                );
                heatmap(ui, &heat);
            }
            View::Plan => self.plan_ui(ui, o, report, lowest_bits),
        }
    }

    /// `lowest_bits`: the report's lowest measured bit width (one exists: checked by the caller).
    fn plan_ui(
        &mut self,
        ui: &mut egui::Ui,
        o: &mut Options,
        report: &SensitivityReport,
        lowest_bits: i32,
    ) {
        ui.heading("Plan builder");
        let overhead = crate::quant::scale_overhead_bits(report.settings.group_size);
        let highest_bits = report.settings.bits.iter().max().copied();
        let min_bits = lowest_bits as f64 + overhead;
        let max_bits = highest_bits.unwrap_or(lowest_bits) as f64 + overhead;
        ui.horizontal_wrapped(|ui| {
            ui.add(
                egui::Slider::new(&mut o.target_bits, min_bits..=max_bits)
                    .text("budget: average bits")
                    .fixed_decimals(2),
            )
            .on_hover_text(format!(
                "the average bits per weight the plan may use, scales included ({overhead:.2} bits per weight at group size {})",
                report.settings.group_size
            ));
            ui.label("Objective").on_hover_text("what the plan optimises, summed over the layers");
            ui.selectable_value(&mut o.objective, Objective::Sqnr, "max SQNR")
                .on_hover_text(metric_tip(Metric::Sqnr));
            ui.selectable_value(&mut o.objective, Objective::Mse, "min MSE")
                .on_hover_text(metric_tip(Metric::Mse));
        });
        let key = ((o.target_bits * 1e6).round() as u64, o.objective);
        if self.plan.as_ref().is_none_or(|p| p.key != key) {
            self.plan = Some(ShownPlan {
                key,
                built: build_plan(report, o.target_bits, &[], o.objective),
                incomplete: require_complete(report).err(),
            });
        }
        let Some(ShownPlan {
            built, incomplete, ..
        }) = &self.plan
        else {
            return;
        };
        // A sweep that did not finish (cancelled, killed, failed, or still running): its
        // missing layers stay float in any plan from it, outside the budget. Said here, and
        // a plan from it is saved only by a deliberate choice (as `sd3lab plan` wants
        // --allow-incomplete).
        if let Some(PlanError::Incomplete {
            missing,
            measured,
            first,
        }) = incomplete
        {
            let running = self.job.as_ref().map(|j| &j.2) == self.report_file.as_ref();
            let state = if running {
                "This sweep is still running"
            } else {
                "This sweep did not finish"
            };
            let more = if *missing > first.len() { ", ..." } else { "" };
            ui.colored_label(
                egui::Color32::from_rgb(190, 120, 0),
                format!(
                    "{state}: {missing} of {} are missing; a plan leaves them at full precision (float), outside its budget. Start / Resume sweep with its settings measures them.",
                    count(missing + measured, "layer")
                ),
            )
            .on_hover_text(format!("missing: {}{more}", first.join(", ")));
            ui.checkbox(&mut self.incomplete_ok, INCOMPLETE_PLAN_LABEL)
                .on_hover_text(
                    "Save plans from the layers measured so far; the missing layers are left out of the plan and stay at full precision",
                );
        }
        let saveable = incomplete.is_none() || self.incomplete_ok;
        match built {
            Ok(b) => {
                let hist = crate::quant::bits_histogram(b.plan.layers.values());
                ui.label(format!(
                    "{}, average {:.3} bits, predicted {} {:.3}, {} of quantized weights",
                    count(b.plan.layers.len(), "layer"),
                    b.average_bits,
                    if o.objective == Objective::Sqnr {
                        "summed SQNR"
                    } else {
                        "summed MSE"
                    },
                    b.predicted_error,
                    report::human_bytes(b.predicted_bytes)
                ));
                ui.columns(2, |cols| {
                    cols[0].label("layers per bit width");
                    bits_histogram_plot(&mut cols[0], &hist);
                    cols[1].label("optimal plans (the step is the Pareto front)");
                    let fig = report::pareto_figure(b, o.objective);
                    lines_plot(&mut cols[1], "pareto-plot", &fig, 220.0);
                });
            }
            // No layer has results yet (a sweep's first layer): an empty state, not an error.
            Err(PlanError::NoResults { .. }) => {
                ui.weak("no results to plan with yet");
            }
            Err(e) => {
                super::error_label(ui, &e.to_string());
            }
        }
        let folder = self
            .report_file
            .as_ref()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf);
        ui.horizontal_wrapped(|ui| {
            let busy = self.writing.is_running() || !saveable;
            let stem = plan_stem(o.objective, o.target_bits);
            // Why the save buttons are greyed out for a sweep that did not finish.
            let unfinished = |r: egui::Response| {
                if saveable {
                    r
                } else {
                    r.on_disabled_hover_text(format!(
                        "this sweep did not finish: tick \"{INCOMPLETE_PLAN_LABEL}\" to save a plan from it"
                    ))
                }
            };
            let save = ui
                .add_enabled(!busy && folder.is_some(), egui::Button::new("Save plan"))
                .on_hover_text(format!(
                    "write {stem}.json (numbered if it exists) and its Pareto front {stem}.pareto.csv beside the report{}",
                    folder
                        .as_ref()
                        .map_or(String::new(), |f| format!(", in {}", f.display()))
                ));
            if unfinished(save).clicked() {
                self.save_plan(ui.ctx(), o, None);
            }
            let save_as = ui
                .add_enabled(!busy, egui::Button::new("Save as..."))
                .on_hover_text(
                    "choose where the plan goes (its Pareto front goes beside it, NAME.pareto.csv)",
                );
            if unfinished(save_as).clicked() {
                self.picker.open(
                    Pick::Plan,
                    PickKind::Save {
                        name: format!("{stem}.json"),
                        filter: ("plan", &["json"]),
                    },
                );
            }
        });
    }

    /// Writes the plan and its Pareto front (`NAME.pareto.csv` beside it), the files `sd3lab
    /// plan` writes, on a helper thread: to `chosen` (a Save as), else beside the report as
    /// `plan-<objective>-<budget>.json`, numbered rather than overwriting.
    fn save_plan(&mut self, ctx: &egui::Context, o: &Options, chosen: Option<PathBuf>) {
        let Some(ShownPlan {
            built: Ok(b),
            incomplete,
            ..
        }) = &self.plan
        else {
            self.message = Some(Err("no plan to save".into()));
            return;
        };
        // A sweep that did not finish: saved only by the choice the plan builder offers.
        let missing = match incomplete {
            Some(PlanError::Incomplete { missing, .. }) if self.incomplete_ok => Some(*missing),
            Some(e) => {
                self.message = Some(Err(format!(
                    "{e}; tick \"{INCOMPLETE_PLAN_LABEL}\" to save a plan from the measured layers, or resume the sweep"
                )));
                return;
            }
            None => None,
        };
        let folder = self
            .report_file
            .as_ref()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf);
        let Some(folder) = chosen.is_none().then_some(folder).flatten().or_else(|| {
            chosen
                .as_ref()
                .and_then(|c| c.parent().map(Path::to_path_buf))
        }) else {
            self.message = Some(Err("open a report first: the plan goes beside it".into()));
            return;
        };
        let (built, objective) = (b.clone(), o.objective);
        let input = self.report_file.clone();
        let stem = plan_stem(o.objective, o.target_bits);
        self.message = None;
        self.message_context = o.report_path.clone();
        self.writing.spawn(ctx, move || {
            let path = chosen.unwrap_or_else(|| numbered_plan_path(&folder, &stem));
            let csv = pareto_file_named_after(&path);
            // A chosen name may be the sweep the plan comes from: refused, as `plan` refuses it.
            let checked = input
                .as_deref()
                .map_or(Ok(()), |input| check_plan_outputs(input, &path, &csv));
            let outcome = checked
                .and_then(|()| write_plan_files(&path, &csv, &built, objective))
                .map(|()| {
                    let mut text = format!("saved {} and {}", path.display(), csv.display());
                    if let Some(n) = missing {
                        text.push_str(&format!(
                            "; from a sweep that did not finish: the {} not measured stay at full precision",
                            count(n, "layer")
                        ));
                    }
                    (path.clone(), text)
                })
                .map_err(|e| super::feedback::error_sentence(&e));
            (SAVE_PLAN, outcome)
        });
    }

    /// The export buttons: what the tab shows (`opts`: its metric, bucket, bit width,
    /// filters and picked layers), written beside the report on a helper thread, under names
    /// that say what they show, numbered rather than overwriting.
    fn export_ui(
        &mut self,
        ui: &mut egui::Ui,
        o: &Options,
        report: &SensitivityReport,
        opts: report::SensitivityReportOptions,
    ) {
        let Some(base) = self
            .report_file
            .as_ref()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf)
        else {
            return;
        };
        let busy = self.writing.is_running();
        let metric = match o.metric {
            Metric::Sqnr => "sqnr",
            Metric::Mse => "mse",
        };
        let stem_of = |what: &str| format!("{what}-{metric}-{}bit", o.plot_bits);
        ui.horizontal_wrapped(|ui| {
            ui.label("Export").on_hover_text(format!(
                "written beside the report, in {}; an existing file is never replaced (a number is added)",
                base.display()
            ));
            let stem = stem_of("figures");
            if ui
                .add_enabled(!busy, egui::Button::new("Export plots (PNG + SVG)"))
                .on_hover_text(format!(
                    "the figures as shown, into the folder {stem}/"
                ))
                .clicked()
            {
                let (report, opts, base) = (report.clone(), opts.clone(), base.clone());
                self.message = None;
                self.message_context = o.report_path.clone();
                self.writing.spawn(ui.ctx(), move || {
                    let dir = crate::fsutil::numbered_folder(&base, &stem);
                    let outcome = report::sensitivity_figures(&report, &opts)
                        .and_then(|f| report::export_figures(&f, &dir, (900, 520)))
                        .map(|f| {
                            let text = format!("wrote {} in {}", count(f.len(), "file"), dir.display());
                            (dir.clone(), text)
                        })
                        .map_err(|e| super::feedback::error_sentence(&e));
                    (EXPORT, outcome)
                });
            }
            for (label, ext) in [("Report (HTML)", "html"), ("Report (Markdown)", "md")] {
                let stem = stem_of("report");
                if ui
                    .add_enabled(!busy, egui::Button::new(label))
                    .on_hover_text(format!(
                        "{stem}.{ext} with its figures, and its data as CSV and JSON beside it"
                    ))
                    .clicked()
                {
                    let (report, opts, base) = (report.clone(), opts.clone(), base.clone());
                    self.message = None;
                    self.message_context = o.report_path.clone();
                    self.writing.spawn(ui.ctx(), move || {
                        let out = report::numbered_report_path(&base, &stem, ext);
                        let outcome = report::write_sensitivity_report(&report, &out, &opts)
                            .map(|f| {
                                let text = format!(
                                    "wrote {} (+{})",
                                    out.display(),
                                    count(f.len().saturating_sub(1), "file")
                                );
                                (out.clone(), text)
                            })
                            .map_err(|e| super::feedback::error_sentence(&e));
                        (EXPORT, outcome)
                    });
                }
            }
            if busy {
                ui.spinner();
            }
        });
    }
}

/// What a metric means, for tooltips.
fn metric_tip(metric: Metric) -> &'static str {
    match metric {
        Metric::Sqnr => {
            "SQNR: signal-to-quantization-noise ratio of the output, in dB; lower means more sensitive"
        }
        Metric::Mse => {
            "MSE: mean squared error of the output against float; higher means more sensitive (log scale)"
        }
    }
}

/// The metric, bucket, bit width and layer filters of the plots and the heatmap.
fn filters_ui(ui: &mut egui::Ui, o: &mut Options, report: &SensitivityReport, bits_list: &[i32]) {
    ui.horizontal_wrapped(|ui| {
        ui.label("Metric")
            .on_hover_text("what the plots and the ranking show");
        for m in [Metric::Sqnr, Metric::Mse] {
            let name = if m == Metric::Sqnr { "SQNR" } else { "MSE" };
            ui.selectable_value(&mut o.metric, m, name)
                .on_hover_text(metric_tip(m));
        }
        ui.separator();
        ui.label("Bucket")
            .on_hover_text("which denoising steps: all, or the early (noisy), mid or late third");
        for b in std::iter::once(Bucket::All).chain(Bucket::STEPS) {
            ui.selectable_value(&mut o.bucket, b, b.name())
                .on_hover_text(format!("results over the {} steps", b.name()));
        }
        ui.separator();
        ui.label("Bits (heatmap, ranking)")
            .on_hover_text("the bit width the heatmap and the ranking show");
        for b in bits_list {
            ui.selectable_value(&mut o.plot_bits, *b, b.to_string())
                .on_hover_text(format!("results at {b} bits"));
        }
    });
    let blocks: std::collections::BTreeSet<usize> =
        report.layers.iter().filter_map(|l| l.block).collect();
    let kinds: std::collections::BTreeSet<LayerKind> =
        report.layers.iter().map(|l| l.kind).collect();
    ui.horizontal_wrapped(|ui| {
        // Each label before its box.
        let l = ui
            .label("Block")
            .on_hover_text("only the layers of one transformer block");
        egui::ComboBox::from_id_salt("sensitivity-block")
            .selected_text(o.block.map_or("all".into(), |b| b.to_string()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut o.block, None, "all");
                for b in &blocks {
                    ui.selectable_value(&mut o.block, Some(*b), b.to_string());
                }
            })
            .response
            .labelled_by(l.id);
        let l = ui
            .label("Kind")
            .on_hover_text("only one kind of layer (attention projections, MLP, adaLN...)");
        egui::ComboBox::from_id_salt("sensitivity-kind")
            .selected_text(o.kind.map_or("all", LayerKind::name))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut o.kind, None, "all");
                for k in &kinds {
                    ui.selectable_value(&mut o.kind, Some(*k), k.name());
                }
            })
            .response
            .labelled_by(l.id);
    });
}

/// The plan's layers per bit width as bars.
fn bits_histogram_plot(ui: &mut egui::Ui, hist: &std::collections::BTreeMap<i32, usize>) {
    let bars: Vec<egui_plot::Bar> = hist
        .iter()
        .map(|(bits, n)| egui_plot::Bar::new(*bits as f64, *n as f64).name(format!("w{bits}")))
        .collect();
    let widths: Vec<f64> = hist.keys().map(|b| f64::from(*b)).collect();
    egui_plot::Plot::new("plan-bits-histogram")
        .height(220.0)
        .x_axis_label("bits")
        // One tick per bit width with a bar, labelled with the width: a count per width, not
        // a continuous axis.
        .x_grid_spacer(move |_| {
            widths
                .iter()
                .map(|&value| egui_plot::GridMark {
                    value,
                    // egui_plot hides labels of marks closer than 60 px by their step size;
                    // these few marks are labelled whatever their spacing.
                    step_size: 10.0,
                })
                .collect()
        })
        .x_axis_formatter(|mark, _| format!("{}", mark.value.round()))
        .include_y(0.0)
        .y_axis_label("layers")
        .allow_scroll(false)
        .allow_drag(false)
        .show(ui, |p| {
            p.bar_chart(egui_plot::BarChart::new("layers", bars).width(0.8));
        });
}

/// The message for a sweep's error: what the library refused, in terms of the tab's fields.
pub fn error_message(e: &SensitivityError) -> String {
    match e {
        SensitivityError::NoBits => "no bit widths given: tick at least one of \"Bits\"".into(),
        SensitivityError::BadLayerPattern { pattern, source } => {
            format!("\"{LAYERS_LABEL}\" {pattern:?}: {source}")
        }
        SensitivityError::NoLayerMatches(pattern) => {
            format!("\"{LAYERS_LABEL}\" {pattern:?} matches no layer of this model")
        }
        SensitivityError::NoSamples(_) => format!(
            "{e}; check \"{CALIB_LABEL}\", \"{MAX_IMAGES_LABEL}\" and \"{STEP_STRIDE_LABEL}\""
        ),
        SensitivityError::Source(e) => super::model_error_message(e, MODEL_LABEL),
        SensitivityError::SettingsDiffer { dir, differences } => format!(
            "{} already holds a sensitivity sweep with other settings or over other data ({}); click \"{START_OVER_LABEL}\" to replace it, or choose another \"Output folder\" to keep it",
            dir.display(),
            // The app's font has no arrow glyph.
            differences.replace('→', "->")
        ),
        SensitivityError::UnreadablePrevious { .. } => format!(
            "{e}; click \"{START_OVER_LABEL}\" to replace it, or choose another \"Output folder\""
        ),
        // Raw OS texts ("Is a directory (os error 21)") become sentences.
        other => super::feedback::error_sentence(other),
    }
}

/// Where egui_plot puts a figure's legend: a corner free of data, for a legend of egui's
/// 14-point text (about 7.5 points a character, 18 a row) in a plot of `size` points; None
/// when every corner holds data (the legend then goes beside the plot).
fn legend_corner(
    series: &[report::Series],
    markers: &[(String, (f64, f64))],
    size: egui::Vec2,
) -> Option<egui_plot::Corner> {
    let longest = report::longest_legend_entry(series, markers);
    let fraction = report::legend_fraction(
        series.len() + markers.len(),
        longest,
        (7.5, 18.0, 40.0),
        // Less the axes' labels.
        ((size.x - 60.0) as f64, (size.y - 30.0) as f64),
    );
    Some(match report::legend_corner(series, markers, fraction)? {
        report::Corner::LeftTop => egui_plot::Corner::LeftTop,
        report::Corner::RightTop => egui_plot::Corner::RightTop,
        report::Corner::LeftBottom => egui_plot::Corner::LeftBottom,
        report::Corner::RightBottom => egui_plot::Corner::RightBottom,
    })
}

/// Draws a line figure with egui_plot (the same data the exports draw with plotters: a log
/// axis as `log10` of the values with the values as tick labels, the legend where the data
/// is not, or beside the plot).
pub fn lines_plot(ui: &mut egui::Ui, id: &str, fig: &report::Figure, height: f32) {
    let report::Figure::Lines {
        series,
        markers,
        x_label,
        y_label,
        log_y,
        ..
    } = fig
    else {
        return;
    };
    let log_y = *log_y;
    let series = report::plotted_series(series, log_y);
    let markers: Vec<(String, (f64, f64))> = markers
        .iter()
        .filter_map(|(l, (x, y))| report::plotted_y(*y, log_y).map(|y| (l.clone(), (*x, y))))
        .collect();
    let corner = legend_corner(&series, &markers, egui::vec2(ui.available_width(), height));
    let colour = |i: usize| {
        let (r, g, b) = report::palette(i);
        egui::Color32::from_rgb(r, g, b)
    };
    let longest = series.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let legend_w = if corner.is_none() {
        (longest as f32 * 7.5 + 40.0).min(ui.available_width() / 3.0)
    } else {
        0.0
    };
    ui.horizontal_top(|ui| {
        let mut plot = egui_plot::Plot::new(id)
            .height(height)
            .width(ui.available_width() - legend_w)
            .x_axis_label(x_label.clone())
            .y_axis_label(if log_y {
                format!("{y_label} (log scale)")
            } else {
                y_label.clone()
            })
            .allow_scroll(false);
        if let Some(corner) = corner {
            plot = plot.legend(egui_plot::Legend::default().position(corner));
        }
        if log_y {
            plot = plot.y_axis_formatter(|mark, _| report::log_tick_label(mark.value));
        }
        plot.show(ui, |p| {
            for (i, s) in series.iter().enumerate() {
                let pts: Vec<[f64; 2]> = s.points.iter().map(|&(x, y)| [x, y]).collect();
                p.line(egui_plot::Line::new(s.name.clone(), pts.clone()).color(colour(i)));
                if pts.len() < 40 {
                    p.points(
                        egui_plot::Points::new(s.name.clone(), pts)
                            .radius(3.0)
                            .color(colour(i)),
                    );
                }
            }
            for (label, (x, y)) in &markers {
                p.points(
                    egui_plot::Points::new(label.clone(), vec![[*x, *y]])
                        .radius(6.0)
                        .color(egui::Color32::RED),
                );
            }
        });
        if corner.is_none() {
            // The legend beside the plot: no corner of it is free of data.
            ui.vertical(|ui| {
                for (i, s) in series.iter().enumerate() {
                    ui.horizontal(|ui| {
                        ui.colored_label(colour(i), "--");
                        ui.label(&s.name);
                    });
                }
                for (label, _) in &markers {
                    ui.horizontal(|ui| {
                        ui.colored_label(egui::Color32::RED, "o");
                        ui.label(label);
                    });
                }
            });
        }
    });
}

/// The heatmap's cell sizes in points: row label width, cell width, cell height.
const HEAT_LABEL_W: f32 = 220.0;
const HEAT_CELL_W: f32 = 70.0;
const HEAT_CELL_H: f32 = 14.0;

/// The cell (row, column) under `offset` from the heatmap's top left corner (the first row
/// is the column header); None outside the cells.
pub fn heatmap_cell_at(offset: egui::Vec2, rows: usize, cols: usize) -> Option<(usize, usize)> {
    let x = offset.x - HEAT_LABEL_W;
    let y = offset.y - HEAT_CELL_H;
    if x < 0.0 || y < 0.0 {
        return None;
    }
    let (r, c) = ((y / HEAT_CELL_H) as usize, (x / HEAT_CELL_W) as usize);
    (r < rows && c < cols).then_some((r, c))
}

/// What hovering a heatmap cell says.
pub fn heatmap_cell_text(row: &str, col: &str, value: f64, unit: &str) -> String {
    if value.is_finite() {
        format!("{row}, {col}: {value:.4} {unit}")
    } else {
        format!("{row}, {col}: no effect (blank)")
    }
}

/// Draws a heatmap figure with the painter, with a colour bar; a hovered cell shows its value.
fn heatmap(ui: &mut egui::Ui, fig: &report::Figure) {
    let report::Figure::Heatmap {
        rows,
        cols,
        values,
        value_label,
        ..
    } = fig
    else {
        return;
    };
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (label_w, cell_w, cell_h) = (HEAT_LABEL_W, HEAT_CELL_W, HEAT_CELL_H);
    let cells_w = label_w + cell_w * cols.len() as f32;
    // The colour bar: a gradient column with its ends and middle labelled, then the unit.
    let (bar_gap, bar_w, bar_labels_w) = (16.0, 14.0, 110.0);
    let height = (cell_h * (rows.len() + 1) as f32).max(120.0);
    let size = egui::vec2(cells_w + bar_gap + bar_w + bar_labels_w, height);
    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let font = egui::FontId::proportional(11.0);
    let text_color = ui.visuals().text_color();
    for (c, name) in cols.iter().enumerate() {
        let pos = rect.min + egui::vec2(label_w + cell_w * (c as f32 + 0.5), cell_h * 0.5);
        painter.text(
            pos,
            egui::Align2::CENTER_CENTER,
            name,
            font.clone(),
            text_color,
        );
    }
    let t_of = |v: f64| {
        if hi > lo {
            ((v - lo) / (hi - lo)) as f32
        } else {
            0.5
        }
    };
    for (r, name) in rows.iter().enumerate() {
        let y = cell_h * (r as f32 + 1.0);
        painter.text(
            rect.min + egui::vec2(0.0, y + cell_h * 0.5),
            egui::Align2::LEFT_CENTER,
            name,
            font.clone(),
            text_color,
        );
        for (c, v) in values[r].iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let [cr, cg, cb] = report::colormap::viridis(t_of(*v));
            let cell = egui::Rect::from_min_size(
                rect.min + egui::vec2(label_w + cell_w * c as f32, y),
                egui::vec2(cell_w - 1.0, cell_h - 1.0),
            );
            painter.rect_filled(cell, 0.0, egui::Color32::from_rgb(cr, cg, cb));
        }
    }
    if lo <= hi {
        let bar = egui::Rect::from_min_size(
            rect.min + egui::vec2(cells_w + bar_gap, cell_h),
            egui::vec2(bar_w, height - cell_h * 2.0),
        );
        const STEPS: usize = 64;
        let step_h = bar.height() / STEPS as f32;
        for i in 0..STEPS {
            // Bright (high) at the top, as the exported colour bar.
            let t = 1.0 - (i as f32 + 0.5) / STEPS as f32;
            let [cr, cg, cb] = report::colormap::viridis(t);
            let band = egui::Rect::from_min_size(
                bar.min + egui::vec2(0.0, step_h * i as f32),
                egui::vec2(bar_w, step_h + 0.5),
            );
            painter.rect_filled(band, 0.0, egui::Color32::from_rgb(cr, cg, cb));
        }
        let labels_x = bar.right() + 4.0;
        for (v, y) in [
            (hi, bar.top()),
            ((lo + hi) / 2.0, bar.center().y),
            (lo, bar.bottom()),
        ] {
            painter.text(
                egui::pos2(labels_x, y),
                egui::Align2::LEFT_CENTER,
                report::bar_label(v, lo, hi),
                font.clone(),
                text_color,
            );
        }
        painter.text(
            egui::pos2(bar.left(), bar.bottom() + 2.0),
            egui::Align2::LEFT_TOP,
            value_label,
            font.clone(),
            text_color,
        );
    }
    if let Some(pos) = response.hover_pos()
        && let Some((r, c)) = heatmap_cell_at(pos - rect.min, rows.len(), cols.len())
    {
        let text = heatmap_cell_text(&rows[r], &cols[c], values[r][c], value_label);
        response.on_hover_text_at_pointer(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_over_another_run_names_the_tabs_controls_not_cli_flags() {
        let differ = error_message(&SensitivityError::SettingsDiffer {
            dir: "runs/s".into(),
            differences: "bits: [2] → [4]".into(),
        });
        assert!(
            differ.contains(START_OVER_LABEL) && differ.contains("bits: [2] -> [4]"),
            "{differ}"
        );
        let unreadable = error_message(&SensitivityError::UnreadablePrevious {
            path: "runs/s/sensitivity.json".into(),
            reason: "not JSON".into(),
        });
        assert!(unreadable.contains(START_OVER_LABEL), "{unreadable}");
        for m in [differ, unreadable] {
            assert!(!m.contains("--") && !m.contains('→'), "{m}");
        }
    }
}

//! The Sensitivity tab: run a sweep with the options of `sd3lab sensitivity` (progress, cancel,
//! resume) or open a `sensitivity.json`; plots of SQNR/MSE vs bits per layer (filter by block
//! and kind), a layer × bucket heatmap at one bit width, a ranking of the most sensitive
//! layers; a plan builder (target bits → the optimal plan and the Pareto front with the chosen
//! point; save the plan); export of the plots (PNG/SVG) and of a report (HTML/Markdown).

use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::worker::{Command, Event};
use super::{PickKind, Picker, Shared, Task, labelled};
use crate::calib::Bucket;
use crate::job::CancelToken;
use crate::model::config::ModelDtype;
use crate::model::registry::LayerKind;
use crate::quant::plan::{BuiltPlan, Objective, build_plan, write_plan_files};
use crate::quant::sensitivity::{
    Scope, SensitivityConfig, SensitivityError, SensitivityEvent, SensitivityReport, read_report,
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
    /// Where Save plan writes; a relative path is taken from the open report's folder.
    pub plan_path: String,
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
            plan_path: "plan.json".into(),
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

/// Rows of the heatmap view (and of its export): the most sensitive filtered layers.
const HEATMAP_ROWS: usize = 40;
/// Rows of the ranking table (and of the exported ranking).
const RANKING_ROWS: usize = 15;

/// Sweep progress.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub layers: usize,
    pub done: usize,
    /// The last measured layer's short name.
    pub last: String,
    pub seconds: f64,
    pub preparing: bool,
}

/// The tab's state.
#[derive(Default)]
pub struct SensitivityTab {
    pub report: Option<SensitivityReport>,
    loading: Option<Receiver<Result<SensitivityReport, String>>>,
    job: Option<(u64, CancelToken, PathBuf)>,
    pub progress: Progress,
    pub message: Option<Result<String, String>>,
    /// The model's warning and download progress for the current (or last) sweep.
    pub model_notice: super::ModelNotice,
    plan: Option<((u64, Objective), Result<BuiltPlan, String>)>,
    picker: Picker<Pick>,
    /// Saving the plan, exporting figures or a report, on a helper thread: the outcome.
    writing: Task<Result<String, String>>,
}

impl SensitivityTab {
    /// Reads a report on a helper thread.
    pub fn open(&mut self, path: &str) {
        let path = PathBuf::from(path);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.loading = Some(rx);
        std::thread::spawn(move || {
            let _ = tx.send(read_report(&path).map_err(|e| e.to_string()));
        });
    }

    /// True while a report is being read or a file written.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some() || self.writing.is_running()
    }

    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    pub fn cancel(&mut self) {
        if let Some((_, c, _)) = &self.job {
            c.cancel();
        }
    }

    pub fn poll(&mut self) {
        if let Some(m) = self.writing.poll() {
            self.message = Some(m);
        }
        if let Some(rx) = &self.loading
            && let Ok(r) = rx.try_recv()
        {
            self.loading = None;
            match r {
                Ok(report) => {
                    self.report = Some(report);
                    self.plan = None;
                }
                Err(e) => self.message = Some(Err(e)),
            }
        }
    }

    pub fn start(&mut self, o: &Options, shared: &mut Shared) {
        if self.job.is_some() {
            return;
        }
        let config = SensitivityConfig {
            model: o.model.clone(),
            calib_dir: PathBuf::from(&o.calib_dir),
            bits: o.bits.clone(),
            group_size: o.group_size,
            max_images: (o.max_images > 0).then_some(o.max_images),
            step_stride: (o.step_stride > 1).then_some(o.step_stride),
            layers: (!o.layers.trim().is_empty()).then(|| o.layers.trim().to_owned()),
            output_dir: PathBuf::from(&o.output_dir),
            use_cache: true,
            dtype: ModelDtype::default_for_backend(),
            scope: o.scope,
            batch_size: 4,
        };
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        let json = config
            .output_dir
            .join(crate::quant::sensitivity::REPORT_JSON);
        if shared.worker.send(Command::Sensitivity {
            id,
            config,
            cancel: cancel.clone(),
        }) {
            self.job = Some((id, cancel, json));
            self.progress = Progress {
                preparing: true,
                ..Progress::default()
            };
            self.message = None;
            self.model_notice = super::ModelNotice::default();
            shared.running = Some(("sensitivity sweep".into(), 0.0));
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
                        if let Some(running) = self.model_notice.running() {
                            shared.running = Some(running);
                            return;
                        }
                    }
                    SensitivityEvent::Preparing { .. } => {
                        self.model_notice.job_ended();
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
                    }
                    SensitivityEvent::LayerDone { id, seconds, .. } => {
                        self.progress.done += 1;
                        self.progress.last = id.short_name();
                        self.progress.seconds = *seconds;
                        // Show the results as they come.
                        self.open(&json.display().to_string());
                    }
                }
                let f = self.progress.done as f32 / self.progress.layers.max(1) as f32;
                shared.running = Some(("sensitivity sweep".into(), f));
            }
            Event::Finished {
                id: i,
                cancelled,
                result,
            } if *i == id => {
                self.job = None;
                shared.running = None;
                self.model_notice.job_ended();
                self.message = Some(super::job_outcome(*cancelled, result));
                if result.is_ok() {
                    self.open(&json.display().to_string());
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
                Pick::Plan => {
                    o.plan_path = p;
                    self.save_plan(ui.ctx(), o);
                }
            }
        }
        if let Some((_, _, json)) = &self.job
            && o.report_path != json.display().to_string()
        {
            o.report_path = json.display().to_string();
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
        ui.horizontal(|ui| {
            labelled(ui, "Report", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.report_path).desired_width(150.0))
            });
            if ui.button("Open").clicked() {
                self.open(&o.report_path);
            }
            if ui.button("Browse...").clicked() {
                self.picker.open(
                    Pick::Report,
                    PickKind::File {
                        filter: (crate::quant::sensitivity::REPORT_JSON, &["json"]),
                    },
                );
            }
        });
        ui.separator();
        egui::CollapsingHeader::new("Run a sweep")
            .default_open(true)
            .show(ui, |ui| {
                let running = self.job.is_some();
                ui.add_enabled_ui(!running, |ui| {
                    labelled(ui, MODEL_LABEL, |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.model).desired_width(150.0))
                    });
                    labelled(ui, CALIB_LABEL, |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.calib_dir).desired_width(130.0))
                    });
                    ui.horizontal(|ui| {
                        ui.label("Bits");
                        for b in crate::quant::SUPPORTED_BITS {
                            let mut on = o.bits.contains(&b);
                            if ui.checkbox(&mut on, b.to_string()).changed() {
                                if on {
                                    o.bits.push(b);
                                    o.bits.sort();
                                } else {
                                    o.bits.retain(|x| *x != b);
                                }
                            }
                        }
                    });
                    ui.horizontal(|ui| {
                        ui.label("Group size");
                        for g in crate::quant::SUPPORTED_GROUPS {
                            ui.selectable_value(&mut o.group_size, g, g.to_string());
                        }
                    });
                    labelled(ui, MAX_IMAGES_LABEL, |ui| {
                        ui.add(egui::DragValue::new(&mut o.max_images).range(0..=100_000))
                    });
                    labelled(ui, STEP_STRIDE_LABEL, |ui| {
                        ui.add(egui::DragValue::new(&mut o.step_stride).range(1..=1000))
                    });
                    labelled(ui, LAYERS_LABEL, |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.layers).desired_width(140.0))
                    });
                    ui.horizontal(|ui| {
                        ui.label("Scope");
                        for s in [Scope::Model, Scope::Block, Scope::Layer] {
                            ui.selectable_value(&mut o.scope, s, s.name());
                        }
                    });
                    labelled(ui, "Output folder", |ui| {
                        ui.add(egui::TextEdit::singleline(&mut o.output_dir).desired_width(140.0))
                    });
                });
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(
                            !running && !o.bits.is_empty(),
                            egui::Button::new("Start / Resume sweep"),
                        )
                        .clicked()
                    {
                        self.start(o, shared);
                    }
                    if ui
                        .add_enabled(running, egui::Button::new("Cancel sweep"))
                        .clicked()
                    {
                        self.cancel();
                    }
                });
                if super::model_notice_ui(ui, &self.model_notice) {
                    self.cancel();
                }
                if running && self.model_notice.download.is_none() {
                    let p = &self.progress;
                    if p.preparing {
                        ui.label("loading samples and float outputs...");
                    }
                    ui.add(
                        egui::ProgressBar::new(p.done as f32 / p.layers.max(1) as f32)
                            .text(format!("{} / {} layers", p.done, p.layers)),
                    );
                    if !p.last.is_empty() {
                        ui.label(format!("{} ({:.1} s)", p.last, p.seconds));
                    }
                }
            });
        super::message_ui(ui, &self.message);
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, o: &mut Options) {
        // Borrowed out and put back: no copy of the report per frame.
        let Some(report) = self.report.take() else {
            if self.loading.is_some() {
                ui.spinner();
            } else {
                ui.label("Open a sensitivity.json or run a sweep.");
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
        ui.label(format!(
            "{} layers | scope {} | bits {:?} | group {} | {} samples | model {}",
            report.layers.len(),
            s.metric_scope.name(),
            s.bits,
            s.group_size,
            s.samples.len(),
            s.model
        ));
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
        ui.horizontal(|ui| {
            ui.label("Metric");
            ui.selectable_value(&mut o.metric, Metric::Sqnr, "SQNR");
            ui.selectable_value(&mut o.metric, Metric::Mse, "MSE");
            ui.separator();
            ui.label("Bucket");
            for b in std::iter::once(Bucket::All).chain(Bucket::STEPS) {
                ui.selectable_value(&mut o.bucket, b, b.name());
            }
            ui.separator();
            ui.label("Bits (heatmap, ranking)");
            for b in &bits_list {
                ui.selectable_value(&mut o.plot_bits, *b, b.to_string());
            }
        });
        let blocks: std::collections::BTreeSet<usize> =
            report.layers.iter().filter_map(|l| l.block).collect();
        let kinds: std::collections::BTreeSet<LayerKind> =
            report.layers.iter().map(|l| l.kind).collect();
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("Block")
                .selected_text(o.block.map_or("all".into(), |b| b.to_string()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut o.block, None, "all");
                    for b in &blocks {
                        ui.selectable_value(&mut o.block, Some(*b), b.to_string());
                    }
                });
            egui::ComboBox::from_label("Kind")
                .selected_text(o.kind.map_or("all", LayerKind::name))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut o.kind, None, "all");
                    for k in &kinds {
                        ui.selectable_value(&mut o.kind, Some(*k), k.name());
                    }
                });
        });
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
        ui.horizontal(|ui| {
            ui.label("View");
            for (v, label) in [
                (View::Plots, "Plots and ranking"),
                (View::Heatmap, "Layer x bucket heatmap"),
                (View::Plan, "Plan builder"),
            ] {
                ui.selectable_value(&mut o.view, v, label);
            }
        });
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
        match o.view {
            View::Plots => {
                if o.pinned.is_empty() {
                    ui.label(format!(
                        "{} vs bits, the {} most sensitive of {} filtered layers (tick layers below to pick others)",
                        o.metric.label(),
                        shown.len(),
                        filtered.len()
                    ));
                } else {
                    ui.horizontal(|ui| {
                        ui.label(format!(
                            "{} vs bits, {} picked layers",
                            o.metric.label(),
                            shown.len()
                        ));
                        if ui.button("Clear picks").clicked() {
                            o.pinned.clear();
                        }
                    });
                }
                let fig = report::bits_figure(report, &shown, o.bucket, o.metric);
                lines_plot(ui, "bits-plot", &fig, 300.0);
                ui.separator();
                ui.label(format!(
                    "most sensitive layers at {} bits ({})",
                    o.plot_bits, o.bucket
                ));
                egui::Grid::new("ranking").striped(true).show(ui, |ui| {
                    ui.label("#");
                    ui.label("layer");
                    ui.label(o.metric.label());
                    ui.label("plot");
                    ui.end_row();
                    for (i, (name, v)) in ranked.iter().take(RANKING_ROWS).enumerate() {
                        ui.label((i + 1).to_string());
                        let label = ui.label(name);
                        ui.label(format!("{v:.4}"));
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
                ui.label(format!(
                    "layer x bucket at {} bits ({}), the {} most sensitive filtered layers; blank: no effect",
                    o.plot_bits,
                    o.metric.label(),
                    filtered.len().min(HEATMAP_ROWS)
                ));
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
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut o.target_bits, min_bits..=max_bits)
                    .text("target average bits")
                    .fixed_decimals(2),
            );
            ui.selectable_value(&mut o.objective, Objective::Sqnr, "max SQNR");
            ui.selectable_value(&mut o.objective, Objective::Mse, "min MSE");
        });
        let key = ((o.target_bits * 1e6).round() as u64, o.objective);
        if self.plan.as_ref().is_none_or(|(k, _)| *k != key) {
            let built = build_plan(report, o.target_bits, &[], o.objective);
            self.plan = Some((key, built.map_err(|e| e.to_string())));
        }
        let Some((_, built)) = &self.plan else { return };
        match built {
            Ok(b) => {
                let hist = crate::quant::bits_histogram(b.plan.layers.values());
                ui.label(format!(
                    "{} layers ({}), average {:.3} bits, predicted {} {:.3}, {:.1} MB of quantized weights",
                    b.plan.layers.len(),
                    hist.iter().map(|(b, n)| format!("{n} x w{b}")).collect::<Vec<_>>().join(", "),
                    b.average_bits,
                    if o.objective == Objective::Sqnr { "summed SQNR" } else { "summed MSE" },
                    b.predicted_error,
                    b.predicted_bytes as f64 / 1e6
                ));
                let fig = report::pareto_figure(b, o.objective);
                lines_plot(ui, "pareto-plot", &fig, 220.0);
            }
            Err(e) => {
                ui.colored_label(egui::Color32::from_rgb(200, 40, 40), e);
            }
        }
        ui.horizontal(|ui| {
            labelled(ui, "Plan file", |ui| {
                ui.add(egui::TextEdit::singleline(&mut o.plan_path).desired_width(200.0))
                    .on_hover_text("relative to the report's folder; pareto.csv goes beside it")
            });
            let busy = self.writing.is_running();
            if ui
                .add_enabled(!busy, egui::Button::new("Save plan"))
                .clicked()
            {
                self.save_plan(ui.ctx(), o);
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Save as..."))
                .clicked()
            {
                self.picker.open(
                    Pick::Plan,
                    PickKind::Save {
                        name: "plan.json".into(),
                        filter: ("plan", &["json"]),
                    },
                );
            }
        });
    }

    /// Writes the plan and its Pareto front (`pareto.csv` beside it), the files `sd3lab plan`
    /// writes, on a helper thread.
    fn save_plan(&mut self, ctx: &egui::Context, o: &Options) {
        let Some((_, Ok(b))) = &self.plan else {
            self.message = Some(Err("no plan to save".into()));
            return;
        };
        let (built, objective, path) = (b.clone(), o.objective, plan_file(o));
        self.message = None;
        self.writing.spawn(ctx, move || {
            write_plan_files(&path, &built, objective)
                .map(|csv| format!("saved {} and {}", path.display(), csv.display()))
                .map_err(|e| e.to_string())
        });
    }

    /// The export buttons: what the tab shows (`opts`: its metric, bucket, bit width,
    /// filters and picked layers), written beside the report on a helper thread.
    fn export_ui(
        &mut self,
        ui: &mut egui::Ui,
        o: &Options,
        report: &SensitivityReport,
        opts: report::SensitivityReportOptions,
    ) {
        let base = report_dir(o);
        let busy = self.writing.is_running();
        ui.horizontal(|ui| {
            ui.label("Export");
            if ui
                .add_enabled(!busy, egui::Button::new("Export plots (PNG + SVG)"))
                .clicked()
            {
                let dir = base.join("figures");
                let (report, opts) = (report.clone(), opts.clone());
                self.message = None;
                self.writing.spawn(ui.ctx(), move || {
                    report::sensitivity_figures(&report, &opts)
                        .and_then(|f| report::export_figures(&f, &dir, (900, 520)))
                        .map(|f| format!("wrote {} files in {}", f.len(), dir.display()))
                        .map_err(|e| e.to_string())
                });
            }
            for (label, name) in [
                ("Report (HTML)", "report.html"),
                ("Report (Markdown)", "report.md"),
            ] {
                if ui.add_enabled(!busy, egui::Button::new(label)).clicked() {
                    let out = base.join(name);
                    let (report, opts) = (report.clone(), opts.clone());
                    self.message = None;
                    self.writing.spawn(ui.ctx(), move || {
                        super::report_outcome(
                            &out,
                            report::write_sensitivity_report(&report, &out, &opts),
                        )
                    });
                }
            }
            if busy {
                ui.spinner();
            }
        });
    }
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
        other => other.to_string(),
    }
}

/// The folder of the open report, where exports and a relative plan file go.
fn report_dir(o: &Options) -> PathBuf {
    Path::new(&o.report_path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where Save plan writes: the plan file field, taken from the report's folder when relative.
pub fn plan_file(o: &Options) -> PathBuf {
    report_dir(o).join(&o.plan_path)
}

/// Draws a line figure with egui_plot (the same data the exports draw with plotters).
pub fn lines_plot(ui: &mut egui::Ui, id: &str, fig: &report::Figure, height: f32) {
    let report::Figure::Lines {
        series,
        markers,
        x_label,
        y_label,
        ..
    } = fig
    else {
        return;
    };
    egui_plot::Plot::new(id)
        .height(height)
        .legend(egui_plot::Legend::default())
        .x_axis_label(x_label.clone())
        .y_axis_label(y_label.clone())
        .allow_scroll(false)
        .show(ui, |p| {
            for (i, s) in series.iter().enumerate() {
                let (r, g, b) = report::palette(i);
                let pts: Vec<[f64; 2]> = s.points.iter().map(|&(x, y)| [x, y]).collect();
                p.line(
                    egui_plot::Line::new(s.name.clone(), pts.clone())
                        .color(egui::Color32::from_rgb(r, g, b)),
                );
                if pts.len() < 40 {
                    p.points(
                        egui_plot::Points::new(s.name.clone(), pts)
                            .radius(3.0)
                            .color(egui::Color32::from_rgb(r, g, b)),
                    );
                }
            }
            for (label, (x, y)) in markers {
                p.points(
                    egui_plot::Points::new(label.clone(), vec![[*x, *y]])
                        .radius(6.0)
                        .color(egui::Color32::RED),
                );
            }
        });
}

/// Draws a heatmap figure with the painter.
fn heatmap(ui: &mut egui::Ui, fig: &report::Figure) {
    let report::Figure::Heatmap {
        rows, cols, values, ..
    } = fig
    else {
        return;
    };
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (label_w, cell_w, cell_h) = (220.0, 70.0, 14.0);
    let size = egui::vec2(
        label_w + cell_w * cols.len() as f32,
        cell_h * (rows.len() + 1) as f32,
    );
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
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
            let t = if hi > lo {
                ((v - lo) / (hi - lo)) as f32
            } else {
                0.5
            };
            let [cr, cg, cb] = report::colormap::viridis(t);
            let cell = egui::Rect::from_min_size(
                rect.min + egui::vec2(label_w + cell_w * c as f32, y),
                egui::vec2(cell_w - 1.0, cell_h - 1.0),
            );
            painter.rect_filled(cell, 0.0, egui::Color32::from_rgb(cr, cg, cb));
        }
    }
    if lo <= hi {
        ui.label(format!("colour: {lo:.3} (dark) ... {hi:.3} (bright)"));
    }
}

//! The Compare tab: open a benchmark folder (or pick one under `benchmark_results/`), or run a
//! benchmark with the options of `sd3lab benchmark` (progress, cancel, resume; results appear
//! as images land); compare its images with the reference set ([`super::compare_view`]); a
//! summary table of the configurations with plots of quality against weight bytes, latency and
//! peak memory; export of the plots and of a report.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compare_view::{CompareView, ViewOptions};
use super::feedback::Place;
use super::worker::{Command, Event};
use super::{Shared, Tab, Task, resolve_path};
use crate::bench::{BenchConfig, BenchEvent, BenchFolder};
use crate::job::CancelToken;
use crate::model::config::ModelDtype;

/// Options (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// The benchmark folder shown.
    pub benchmark_dir: String,
    /// Where a run from the tab writes (a folder under `benchmark_results/`).
    pub output_dir: String,
    pub model: String,
    /// The reference set (a `calibrate --images-only` folder, or any image folder).
    pub reference_dir: String,
    /// `fp32`, `fp16`, `bf16`, `wN[:gG]` or plan files, in run order.
    pub configurations: Vec<String>,
    pub num_images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub size: usize,
    pub skip_metrics: bool,
    pub view: ViewOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            benchmark_dir: String::new(),
            output_dir: "benchmark_results/run".into(),
            model: "tiny".into(),
            reference_dir: "calibration_data".into(),
            configurations: vec!["fp32".into(), "w8".into(), "w4".into()],
            num_images: 10,
            num_steps: 28,
            cfg_weight: 5.0,
            size: 512,
            skip_metrics: false,
            view: ViewOptions::default(),
        }
    }
}

const OPEN: Place = Place::new(Tab::Compare, "open");

/// The tab's state.
#[derive(Default)]
pub struct CompareTab {
    /// The benchmark shown.
    pub folder: Option<Arc<BenchFolder>>,
    loading: Task<(PathBuf, Result<BenchFolder, String>)>,
    /// The running benchmark: its id, cancel token and folder.
    job: Option<(u64, CancelToken, PathBuf)>,
    pub message: Option<Result<String, String>>,
    pub view: CompareView,
}

impl CompareTab {
    /// Reads a benchmark folder on a helper thread (relative paths from the base folder).
    pub fn open(&mut self, ctx: &egui::Context, path: &str) {
        let dir = resolve_path(path);
        self.loading.spawn(ctx, move || {
            let r = BenchFolder::open(&dir).map_err(|e| super::feedback::error_sentence(&e));
            (dir, r)
        });
    }

    pub fn is_loading(&self) -> bool {
        self.loading.is_running()
    }

    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// True while the images shown are being decoded.
    pub fn waiting_for_images(&self) -> bool {
        self.view.waiting_for_images()
    }

    /// Asks the running benchmark to stop after its current image.
    pub fn cancel(&mut self) {
        if let Some((_, c, _)) = &self.job {
            c.cancel();
        }
    }

    pub fn poll(&mut self, _ctx: &egui::Context, shared: &mut Shared) {
        if let Some((_dir, r)) = self.loading.poll() {
            match r {
                Ok(folder) => {
                    self.folder = Some(Arc::new(folder));
                    shared.errors.succeeded(OPEN);
                }
                Err(e) => {
                    self.message = Some(Err(e.clone()));
                    shared.errors.report(OPEN, e);
                }
            }
        }
    }

    /// The library's settings for a run from the tab.
    pub fn bench_config(o: &Options) -> BenchConfig {
        BenchConfig {
            configurations: o.configurations.clone(),
            num_images: o.num_images,
            num_steps: o.num_steps,
            cfg_weight: o.cfg_weight,
            output_dir: resolve_path(&o.output_dir),
            reference_dir: (!o.reference_dir.trim().is_empty())
                .then(|| resolve_path(&o.reference_dir)),
            skip_metrics: o.skip_metrics,
            model: o.model.clone(),
            height: o.size,
            width: o.size,
            dtype: ModelDtype::default_for_backend(),
            warmup: 0,
            seed: 0,
            prompt_csv: None,
            negative_prompt: String::new(),
            group_size: 64,
            overwrite: false,
            allow_mismatch: false,
            inception_weights: None,
            kid_subset_size: None,
        }
    }

    pub fn start(&mut self, o: &Options, shared: &mut Shared) {
        if self.job.is_some() {
            return;
        }
        let config = Self::bench_config(o);
        let dir = config.output_dir.clone();
        let id = shared.next_job_id();
        let cancel = CancelToken::new();
        if shared.worker.send(Command::Benchmark {
            id,
            config,
            cancel: cancel.clone(),
        }) {
            shared.jobs.submit(id, Tab::Compare, "benchmark");
            self.job = Some((id, cancel, dir));
            self.message = None;
        }
    }

    pub fn handle(&mut self, ctx: &egui::Context, event: &Event, shared: &mut Shared) {
        let Some((id, _, dir)) = &self.job else {
            return;
        };
        let (id, dir) = (*id, dir.clone());
        match event {
            Event::Benchmark { id: i, event } if *i == id => {
                if let BenchEvent::ImageDone { .. } | BenchEvent::MetricsDone { .. } = event {
                    self.open(ctx, &dir.display().to_string());
                }
            }
            Event::Finished {
                id: i,
                cancelled,
                result,
            } if *i == id => {
                self.job = None;
                let _ = shared;
                self.message = Some(super::job_outcome(*cancelled, result));
                self.open(ctx, &dir.display().to_string());
            }
            _ => {}
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, o: &mut Options, shared: &mut Shared) {
        ui.horizontal(|ui| {
            ui.label("Benchmark folder");
            ui.text_edit_singleline(&mut o.benchmark_dir);
            if ui.button("Open").clicked() {
                self.open(ui.ctx(), &o.benchmark_dir.clone());
            }
            if self.job.is_none() && ui.button("Run benchmark").clicked() {
                self.start(o, shared);
            }
            if self.job.is_some() && ui.button("Cancel").clicked() {
                self.cancel();
            }
        });
        super::message_ui(ui, &self.message);
        if let Some(folder) = self.folder.clone() {
            self.view.ui(ui, &folder, &mut o.view, shared);
        }
    }
}

/// A benchmark error in the tab's terms.
pub fn error_message(e: &crate::bench::BenchError) -> String {
    match e {
        crate::bench::BenchError::Calibrate(c) => super::generate_tab::error_message(c),
        e => super::feedback::error_sentence(e),
    }
}

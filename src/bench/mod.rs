//! Benchmark runs (`sd3lab benchmark`): images of every configuration (float precisions,
//! uniform `wN`, mixed plans) for the prompts and seeds of a reference set, with per-image
//! latency by stage and peak memory, so that image quality can be compared image by image
//! against the reference twin (same prompt, same seed).
//!
//! Configurations run one after another in one process; each is loaded, quantized (the real
//! path: MLX-packed weights and `quantized_matmul`), run and released before the next, so each
//! peak is its own. Every image is committed as its PNG then its record (both atomic); the
//! summaries (`results.json`, `per_image.csv`) are rebuilt from the records after every image,
//! so a run killed at any point resumes where it stopped and ends with the files of an
//! uninterrupted run. The output folder is locked for the run's duration.
//!
//! `configuration`: what a `--config` value is. `reference`: the reference set and its
//! provenance. `results`: records, statistics and the files written.

pub mod configuration;
pub mod folder;
pub mod reference;
pub mod results;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::calibrate::{CalibrateConfig, setting_differences};
use crate::dist::{Collective, Distribution};
use crate::fsutil::FolderLock;
use crate::image::{PixelFormat, write_png};
use crate::job::CancelToken;
use crate::metrics::compute::{Input, MetricsConfig, MetricsError, MetricsEvent, Scorer};
use crate::model::config::ModelDtype;
use crate::model::pipeline::{Flow, GenerateConfig, Pipeline};
use crate::quant::QuantMode;

pub use configuration::{Configuration, ConfigurationError, ConfigurationIdentity};
pub use folder::{
    BenchFolder, ConfigurationImages, PairedMetric, PromptRow, SummaryRow, list_benchmarks,
};
pub use reference::{ReferenceError, ReferenceKind, ReferenceSet};
pub use results::{
    BenchResults, BenchSettings, CONFIGURATION_JSON, ConfigurationInfo, ConfigurationMetrics,
    ConfigurationResult, ImageRecord, ImageSeconds, METRICS_JSON, MetricsSummary, PER_IMAGE_CSV,
    PairedValues, RESULTS_JSON, RESULTS_SCHEMA, Records, ReferenceProvenance,
};

/// Images per configuration generated first and left out of the latency statistics, unless
/// told otherwise (`sd3lab benchmark --warmup` and the Compare tab's default).
pub const DEFAULT_WARMUP: usize = 1;

/// Where benchmarks go by default (under the base folder), and where the Compare tab lists
/// them.
pub const RESULTS_ROOT: &str = "benchmark_results";

/// The name a run's default output folder (under [`RESULTS_ROOT`]) starts from: the
/// configurations' names joined by `_`, a plan file by its stem, `:` left out (`w4:g32` ->
/// `w4g32`); `run` without configurations.
pub fn default_output_stem(configurations: &[String]) -> String {
    let names: Vec<String> = configurations
        .iter()
        .map(|c| {
            Path::new(c)
                .file_stem()
                .map_or_else(|| c.clone(), |s| s.to_string_lossy().into_owned())
                .replace(':', "")
        })
        .collect();
    if names.is_empty() {
        "run".into()
    } else {
        names.join("_")
    }
}

/// Settings of a benchmark run (`sd3lab benchmark`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// `fp32`, `fp16`, `bf16`, `wN[:gG]` or plan files, run in this order.
    pub configurations: Vec<String>,
    pub num_images: usize,
    pub num_steps: usize,
    pub cfg_weight: f32,
    pub output_dir: PathBuf,
    /// The reference images (a `calibrate` folder or its `images/`, or any image folder).
    /// Needed for metrics; without it prompts come from `prompt_csv` and seeds from `seed`.
    pub reference_dir: Option<PathBuf>,
    pub skip_metrics: bool,
    pub model: String,
    pub height: usize,
    pub width: usize,
    /// The run's dtype: quantized configurations compute in it, and a reference made with
    /// another dtype is a mismatch. `fp32`/`fp16`/`bf16` configurations use their own.
    pub dtype: ModelDtype,
    /// The first `warmup` images of each configuration are left out of the latency statistics.
    pub warmup: usize,
    pub seed: u32,
    /// `None`: the shipped prompt set.
    pub prompt_csv: Option<PathBuf>,
    pub negative_prompt: String,
    /// Group size of `wN` configurations without `:gG`.
    pub group_size: i32,
    /// Start over in a folder holding a benchmark with other settings.
    pub overwrite: bool,
    /// Run even when the reference was made with other settings (recorded in the results).
    pub allow_mismatch: bool,
    /// Inception weights for FID/IS/KID (a `.pth` or converted `.safetensors`); `None`: the
    /// user cache.
    #[serde(default)]
    pub inception_weights: Option<PathBuf>,
    /// KID subset size; `None`: min(1000, images).
    #[serde(default)]
    pub kid_subset_size: Option<usize>,
}

/// Progress of a run, in order.
#[derive(Debug, Clone)]
pub enum BenchEvent {
    /// What resolving the model reported (fallback to tiny, a download's progress).
    Model(crate::model::source::SourceEvent),
    /// Everything is checked; `done[k]` images of configuration `k` are already finished.
    Planned {
        configurations: Vec<String>,
        num_images: usize,
        num_steps: usize,
        done: Vec<usize>,
        notes: Vec<String>,
    },
    ConfigStarted {
        configuration: String,
        index: usize,
        count: usize,
        done: usize,
        num_images: usize,
    },
    ConfigLoaded {
        configuration: String,
        seconds: f64,
        mmdit_weight_bytes: u64,
    },
    /// `throwaway`: a warm-up generation of a resumed configuration, not saved.
    ImageStarted {
        configuration: String,
        image: usize,
        prompt: String,
        throwaway: bool,
    },
    Step {
        configuration: String,
        image: usize,
        step: usize,
        num_steps: usize,
    },
    ImageDone {
        configuration: String,
        image: usize,
        seconds: f64,
        /// Seconds left for this configuration at this run's pace.
        eta_seconds: f64,
        peak_mlx_bytes: u64,
        peak_rss_bytes: u64,
    },
    ConfigDone {
        result: Box<ConfigurationResult>,
    },
    /// The metrics step of one configuration (after every configuration's images).
    Metrics {
        configuration: String,
        event: MetricsEvent,
    },
    MetricsDone {
        configuration: String,
        metrics: Box<ConfigurationMetrics>,
    },
    /// A distributed run (a ring group): `done` of configuration `configuration`'s
    /// `num_images` images are finished over all `ranks`.
    JobProgress {
        configuration: String,
        done: usize,
        num_images: usize,
        ranks: usize,
    },
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct BenchSummary {
    pub output_dir: PathBuf,
    pub results: BenchResults,
    pub images_generated: usize,
    pub cancelled: bool,
    pub notes: Vec<String>,
    pub seconds: f64,
    /// Seconds generating this run's images (text encoding, denoising, decoding), and seconds
    /// the harness spent around them (peak resets, PNGs, records, summaries): the overhead.
    pub generation_seconds: f64,
    pub harness_seconds: f64,
    /// A distributed run whose parts ran on other machines: which files to copy here.
    pub collect_note: Option<String>,
}

/// What one configuration's run did.
#[derive(Debug, Clone, Copy, Default)]
struct ConfigurationRun {
    images: usize,
    generation_seconds: f64,
    harness_seconds: f64,
}

/// Why a run could not start or finish. Refusals say what is wrong; the front ends add how to
/// override it in their own terms.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("no configuration to benchmark")]
    NoConfigurations,
    #[error(
        "a part of a split run cannot start the folder over: remove its files, or start over with a whole run"
    )]
    OverwriteWhole,
    /// Kept as the source (not transparent), so that the CLI can tell a lost peer.
    #[error("{0}")]
    Dist(#[from] Box<crate::dist::DistError>),
    #[error("the number of images must be at least 1")]
    NoImages,
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image-quality metrics need a reference set, and none was given")]
    NeedsReference,
    #[error(
        "image-quality metrics need at least 2 images per configuration ({num_images} asked for)"
    )]
    TooFewImagesForMetrics { num_images: usize },
    #[error("the KID subset size must be at least 2 (got {size})")]
    KidSubsetSize { size: usize },
    #[error("{num_images} images were asked for, but the reference set {dir} has only {available}")]
    TooFewReferenceImages {
        dir: PathBuf,
        available: usize,
        num_images: usize,
    },
    #[error("the reference set {dir} was generated with other settings ({differences})")]
    ReferenceDiffers { dir: PathBuf, differences: String },
    #[error("{dir} already holds a benchmark with different settings ({differences})")]
    RunDiffers { dir: PathBuf, differences: String },
    #[error("{dir}: configuration '{name}' was run before as something else ({before} → {now})")]
    ConfigurationDiffers {
        dir: PathBuf,
        name: String,
        before: String,
        now: String,
    },
    #[error("{dir} is not a benchmark folder: it has no {RESULTS_JSON}")]
    NotABenchmark { dir: PathBuf },
    #[error("{dir} holds benchmark images but no {RESULTS_JSON}")]
    ForeignData { dir: PathBuf },
    #[error(transparent)]
    Lock(#[from] crate::fsutil::LockError),
    #[error(transparent)]
    Calibrate(Box<crate::calibrate::CalibrateError>),
    #[error(transparent)]
    Pipeline(Box<crate::model::pipeline::PipelineError>),
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Metrics(Box<MetricsError>),
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl From<crate::calibrate::CalibrateError> for BenchError {
    fn from(e: crate::calibrate::CalibrateError) -> Self {
        Self::Calibrate(Box::new(e))
    }
}

impl From<MetricsError> for BenchError {
    fn from(e: MetricsError) -> Self {
        Self::Metrics(Box::new(e))
    }
}

impl From<crate::model::pipeline::PipelineError> for BenchError {
    fn from(e: crate::model::pipeline::PipelineError) -> Self {
        Self::Pipeline(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A configuration's PNG of image `image`, relative to the benchmark folder: the calibration
/// layout's `images/NNNNNN.png` inside the configuration's folder.
pub fn image_file_name(configuration: &str, image: usize) -> String {
    format!(
        "{configuration}/{}",
        crate::calibrate::image_file_name(image)
    )
}

fn record_path(dir: &Path, configuration: &str, image: usize) -> PathBuf {
    dir.join(configuration)
        .join("records")
        .join(format!("{image:06}.json"))
}

/// Everything checked before the first image: configurations, reference, model, settings.
#[derive(Debug, Clone)]
pub struct ValidatedBench {
    pub config: BenchConfig,
    pub configurations: Vec<Configuration>,
    pub files: crate::model::source::ModelFiles,
    pub settings: BenchSettings,
    pub reference: Option<ReferenceSet>,
    /// What the metrics step computes (`None` with `skip_metrics`).
    pub metrics: Option<MetricsConfig>,
    pub notes: Vec<String>,
}

impl BenchConfig {
    /// Checks the configurations, the reference (count, sizes, settings) and the model without
    /// writing anything. `on_model` sees what resolving the model reports.
    pub fn validate_with(
        &self,
        cancel: &CancelToken,
        on_model: &mut dyn FnMut(crate::model::source::SourceEvent),
    ) -> Result<ValidatedBench, BenchError> {
        if self.configurations.is_empty() {
            return Err(BenchError::NoConfigurations);
        }
        if self.num_images == 0 {
            return Err(BenchError::NoImages);
        }
        let configurations =
            Configuration::parse_all(&self.configurations, self.dtype, self.group_size)?;
        let reference = match &self.reference_dir {
            Some(dir) => Some(ReferenceSet::open(dir)?),
            None if !self.skip_metrics => return Err(BenchError::NeedsReference),
            None => None,
        };
        if let Some(r) = &reference
            && r.images.len() < self.num_images
        {
            return Err(BenchError::TooFewReferenceImages {
                dir: r.dir.clone(),
                available: r.images.len(),
                num_images: self.num_images,
            });
        }
        // The generator's own validation resolves prompts, seeds and the model identity.
        let probe = CalibrateConfig {
            model: self.model.clone(),
            num_images: self.num_images,
            num_steps: self.num_steps,
            cfg_weight: self.cfg_weight,
            calib_dir: self.output_dir.clone(),
            prompt_csv: self.prompt_csv.clone(),
            seed: self.seed,
            height: self.height,
            width: self.width,
            dtype: self.dtype,
            negative_prompt: self.negative_prompt.clone(),
            overwrite: false,
            force: false,
            images_only: true,
        };
        let run = probe.validate_with(cancel, on_model)?;
        for c in &configurations {
            c.check_layers(&run.model_config.mmdit)?;
        }
        let mut generation = run.settings;
        let mut notes = Vec::new();
        let mut provenance = None;
        if let Some(r) = &reference {
            r.check_sizes(self.num_images, self.width, self.height)?;
            let mut differences = Vec::new();
            match &r.settings {
                Some(recorded) => {
                    // Image i is the twin of reference image i: its prompt and seed.
                    let n = self.num_images;
                    generation.prompts = recorded.prompts[..n].to_vec();
                    generation.seeds = recorded.seeds[..n].to_vec();
                    generation.seed = recorded.seed;
                    generation.prompt_source = recorded.prompt_source.clone();
                    generation.images_only = recorded.images_only;
                    differences = setting_differences(recorded, &generation);
                    if !differences.is_empty() && !self.allow_mismatch {
                        return Err(BenchError::ReferenceDiffers {
                            dir: r.dir.clone(),
                            differences: differences.join("; "),
                        });
                    }
                    if !differences.is_empty() {
                        notes.push(format!(
                            "the reference was generated with other settings ({}): running anyway",
                            differences.join("; ")
                        ));
                    }
                }
                None => {
                    notes.extend(run.notes.iter().cloned());
                    notes.push(format!(
                        "{} has no manifest: images are paired by sorted file name with prompt i \
                         and seed {} + i, and the settings they were made with cannot be verified",
                        r.dir.display(),
                        self.seed
                    ));
                }
            }
            provenance = Some(ReferenceProvenance {
                dir: r.dir.clone(),
                kind: r.kind,
                images: r.images.len(),
                verified: r.settings.is_some(),
                differences,
                allow_mismatch: self.allow_mismatch,
            });
        } else {
            notes.extend(run.notes.iter().cloned());
        }
        if !crate::runtime::doctor::reset_peak_rss() {
            notes.push(
                "this OS cannot reset a process's peak RSS: each image's peak_rss_bytes is the \
                 process's peak so far (MLX's peak is reset per image)"
                    .to_owned(),
            );
        }
        let metrics = if self.skip_metrics {
            None
        } else {
            let cache_dir = crate::model::source::cache_dir();
            // Missing weights are said now, not after hours of generation.
            let weights = crate::metrics::weights::resolve_inception_weights_in(
                &cache_dir,
                self.inception_weights.as_deref(),
            )
            .map_err(MetricsError::from)?;
            // A file that is there but not Inception weights is said now too. Checked by loading
            // and dropping: the scoring step loads it again after generation, so that the
            // network's memory does not count in the configurations' peaks.
            crate::metrics::inception::InceptionV3::load(&weights).map_err(MetricsError::from)?;
            if self.num_images < 2 {
                return Err(BenchError::TooFewImagesForMetrics {
                    num_images: self.num_images,
                });
            }
            if let Some(size) = self.kid_subset_size
                && size < 2
            {
                return Err(BenchError::KidSubsetSize { size });
            }
            // torch-fidelity's 10 splits need 10 images; fewer give NaN there.
            let isc_splits = crate::metrics::fidelity::DEFAULT_IS_SPLITS.min(self.num_images);
            if isc_splits < crate::metrics::fidelity::DEFAULT_IS_SPLITS {
                notes.push(format!(
                    "Inception Score over {isc_splits} splits (one per image; torch-fidelity's \
                     default 10 needs at least 10 images)"
                ));
            }
            Some(MetricsConfig {
                isc_splits,
                kid_subset_size: self.kid_subset_size,
                inception_weights: Some(weights),
                cache_dir,
                ..MetricsConfig::default()
            })
        };
        Ok(ValidatedBench {
            config: self.clone(),
            configurations,
            files: run.files,
            reference,
            metrics,
            settings: BenchSettings {
                generation,
                warmup: self.warmup,
                reference: provenance,
            },
            notes,
        })
    }
}

/// What differs between a folder's recorded run and this one (empty: the same run; more
/// images than before is the same run, extended).
fn run_differences(old: &BenchSettings, new: &BenchSettings) -> Vec<String> {
    let mut d = setting_differences(&old.generation, &new.generation);
    let n = old.generation.seeds.len().min(new.generation.seeds.len());
    if let Some(i) = (0..n).find(|&i| old.generation.seeds[i] != new.generation.seeds[i]) {
        d.push(format!(
            "seed of image {i}: {} → {}",
            old.generation.seeds[i], new.generation.seeds[i]
        ));
    }
    if old.warmup != new.warmup {
        d.push(format!("warmup: {} → {}", old.warmup, new.warmup));
    }
    // Metrics recorded in the folder were computed against its reference.
    let reference = |s: &BenchSettings| {
        s.reference.as_ref().map_or("none".to_owned(), |r| {
            let dir = r.dir.canonicalize().unwrap_or_else(|_| r.dir.clone());
            format!("{} ({:?})", dir.display(), r.kind)
        })
    };
    let (a, b) = (reference(old), reference(new));
    if a != b {
        d.push(format!("reference: {a} → {b}"));
    }
    d
}

/// The configuration folders of a benchmark folder: name → its recorded info.
pub(crate) fn configuration_folders(
    dir: &Path,
) -> Result<BTreeMap<String, ConfigurationInfo>, BenchError> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let path = e.path().join(CONFIGURATION_JSON);
        if path.is_file() {
            let info: ConfigurationInfo = results::read_json(&path)?;
            // A folder renamed or copied by hand is not one of the run's configurations.
            if e.file_name().to_str() == Some(info.identity.name.as_str()) {
                out.insert(info.identity.name.clone(), info);
            }
        }
    }
    Ok(out)
}

/// The finished images of configuration `name`: records whose PNG is there with its size.
pub(crate) fn read_records(
    dir: &Path,
    name: &str,
) -> Result<BTreeMap<usize, ImageRecord>, BenchError> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(name).join("records")) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let record: ImageRecord = results::read_json(&path)?;
        // The PNG's path is rebuilt, never taken from the file: a record names only its own
        // configuration's image of its own index.
        let expected = record_path(dir, name, record.index);
        if expected != path
            || record.configuration != name
            || record.file != image_file_name(name, record.index)
        {
            continue;
        }
        let png = std::fs::metadata(dir.join(image_file_name(name, record.index))).map(|m| m.len());
        if png.is_ok_and(|len| len == record.png_bytes) {
            out.insert(record.index, record);
        }
    }
    Ok(out)
}

/// Removes a previous benchmark's files from `dir` (only files this module writes).
fn remove_previous(dir: &Path) -> Result<(), BenchError> {
    for name in configuration_folders(dir)?.keys() {
        let sub = dir.join(name);
        std::fs::remove_dir_all(&sub).map_err(io_err(&sub))?;
    }
    for file in [RESULTS_JSON, PER_IMAGE_CSV] {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(&path)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The folder's state while a run goes on: every configuration's info and records.
struct Folder {
    dir: PathBuf,
    settings: BenchSettings,
    /// This run's configurations first, in order, then any others the folder holds.
    order: Vec<String>,
    infos: BTreeMap<String, ConfigurationInfo>,
    records: Records,
    /// Each configuration's last metrics (`<config>/metrics.json`).
    metrics: BTreeMap<String, ConfigurationMetrics>,
    /// Whether this process writes `results.json` and `per_image.csv` (not a part of a split
    /// run other than rank 0).
    writes_summaries: bool,
}

impl Folder {
    fn results(&self) -> BenchResults {
        let configurations = self
            .order
            .iter()
            .filter_map(|name| {
                let info = self.infos.get(name)?.clone();
                let records: Vec<&ImageRecord> = self
                    .records
                    .get(name)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .collect();
                let mut result = ConfigurationResult::from_records(info, &records);
                // Metrics of exactly these images only (not of a run since extended, nor of
                // images generated again since).
                result.metrics = self
                    .metrics
                    .get(name)
                    .filter(|m| m.describes(&records))
                    .map(|m| m.summary.clone());
                Some(result)
            })
            .collect();
        BenchResults {
            schema: RESULTS_SCHEMA.to_owned(),
            settings: self.settings.clone(),
            configurations,
        }
    }

    /// Rewrites `results.json` and `per_image.csv` from the records (atomically).
    fn write_summaries(&self) -> Result<BenchResults, BenchError> {
        let results = self.results();
        if !self.writes_summaries {
            return Ok(results);
        }
        results::write_per_image_csv(
            &self.dir.join(PER_IMAGE_CSV),
            &self.order,
            &self.records,
            &self.metrics,
        )?;
        results::write_json(&self.dir.join(RESULTS_JSON), &results)?;
        Ok(results)
    }
}

/// Runs (or resumes) a benchmark. `cancel` stops it after the current image.
pub fn run_benchmark(
    cfg: &BenchConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<BenchSummary, BenchError> {
    run_benchmark_distributed(cfg, Distribution::whole(), cancel, on_event)
}

/// Runs (or resumes) part of a benchmark split across ranks: part R of N generates images R,
/// R+N, … of every configuration into the shared output folder (the image and record files of
/// different parts never meet; each image is computed from its prompt and seed alone, so its
/// PNG is the one a whole run writes). With a group, the ranks start every configuration
/// together (a barrier, so timed work overlaps as it would on separate machines), report
/// progress after each, and rank 0 gathers every rank's records, scores the metrics when
/// every image is in its folder, and writes `results.json`/`per_image.csv`. A `--shard` part
/// writes no summaries: the same `sd3lab benchmark` command run whole afterwards finds every
/// image done and writes them (and the metrics).
pub fn run_benchmark_distributed(
    cfg: &BenchConfig,
    dist: Distribution,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<BenchSummary, BenchError> {
    let started = Instant::now();
    let shard = dist.shard;
    if shard.is_part() && cfg.overwrite {
        return Err(BenchError::OverwriteWhole);
    }
    // A folder being written, or a file in its place, is refused before the model is resolved
    // (parts share the folder; rank 0 of a group holds its lock).
    if !shard.is_part() {
        FolderLock::check(&cfg.output_dir)?;
    }
    let run = cfg.validate_with(cancel, &mut |e| on_event(BenchEvent::Model(e)))?;
    let dir = cfg.output_dir.clone();
    let writes_summaries = dist.writes_merged();
    let _lock = if writes_summaries {
        Some(FolderLock::acquire(&dir)?)
    } else {
        None
    };
    let _part_lock = if shard.is_part() {
        Some(FolderLock::acquire(&dir.join(shard.folder_name()))?)
    } else {
        None
    };
    if !shard.is_part() {
        // Parts of a split run still writing into the folder would be overrun.
        crate::dist::shard::check_parts_idle(&dir)?;
        // Under the lock, so no live writer's: the temporary files a killed run left.
        // `<config>/records/` is two levels down.
        crate::fsutil::remove_temporary_files(&dir, 3).map_err(|(path, e)| io_err(&path)(e))?;
    }
    if cfg.overwrite {
        remove_previous(&dir)?;
    }
    let existing = configuration_folders(&dir)?;
    // The settings of the run the folder holds: its summaries', or its parts' (parts of a
    // split run write no summaries).
    let previous = match BenchResults::read(&dir)? {
        Some(previous) => Some(previous.settings),
        None => part_settings(&dir)?,
    };
    match previous {
        Some(previous) => {
            let d = run_differences(&previous, &run.settings);
            if !d.is_empty() {
                return Err(BenchError::RunDiffers {
                    dir,
                    differences: d.join("; "),
                });
            }
        }
        // Parts create the configuration folders before anyone writes the summaries.
        None if !existing.is_empty() && !shard.is_part() => {
            return Err(BenchError::ForeignData { dir });
        }
        None => {}
    }
    if shard.is_part() {
        results::write_json(
            &dir.join(shard.folder_name()).join(PART_RUN_JSON),
            &run.settings,
        )?;
    }
    for c in &run.configurations {
        if let Some(info) = existing.get(&c.name)
            && info.identity != c.identity()
        {
            return Err(BenchError::ConfigurationDiffers {
                dir,
                name: c.name.clone(),
                before: info.identity.quantization.to_string(),
                now: c.identity().quantization.to_string(),
            });
        }
    }
    let mut order: Vec<String> = run.configurations.iter().map(|c| c.name.clone()).collect();
    let others: Vec<String> = existing
        .keys()
        .filter(|k| !order.contains(k))
        .cloned()
        .collect();
    order.extend(others);
    let mut folder = Folder {
        dir: dir.clone(),
        settings: run.settings.clone(),
        records: order
            .iter()
            .map(|name| Ok((name.clone(), read_records(&dir, name)?)))
            .collect::<Result<_, BenchError>>()?,
        metrics: order
            .iter()
            .filter_map(|name| {
                let path = dir.join(name).join(METRICS_JSON);
                path.is_file()
                    .then(|| results::read_json(&path).map(|m| (name.clone(), m)))
            })
            .collect::<Result<_, BenchError>>()?,
        order,
        infos: existing,
        writes_summaries,
    };
    let n = cfg.num_images;
    let done: Vec<usize> = run
        .configurations
        .iter()
        .map(|c| folder.records[&c.name].range(..n).count())
        .collect();
    folder.write_summaries()?;
    on_event(BenchEvent::Planned {
        configurations: run.configurations.iter().map(|c| c.name.clone()).collect(),
        num_images: n,
        num_steps: cfg.num_steps,
        done: done.clone(),
        notes: run.notes.clone(),
    });

    let mut summary = BenchSummary {
        output_dir: dir.clone(),
        results: folder.results(),
        images_generated: 0,
        cancelled: false,
        notes: run.notes.clone(),
        seconds: 0.0,
        generation_seconds: 0.0,
        harness_seconds: 0.0,
        collect_note: None,
    };
    for (k, c) in run.configurations.iter().enumerate() {
        if cancel.is_cancelled() {
            // A rank that stops leaves the group: the others fail at their next collective.
            summary.cancelled = true;
            break;
        }
        if let Some(g) = dist.group {
            g.barrier(&format!("the start of {}", c.name))
                .map_err(Box::new)?;
        }
        let todo: Vec<usize> = (0..n)
            .filter(|&i| shard.takes(i) && !folder.records[&c.name].contains_key(&i))
            .collect();
        on_event(BenchEvent::ConfigStarted {
            configuration: c.name.clone(),
            index: k,
            count: run.configurations.len(),
            done: done[k],
            num_images: n,
        });
        // A group reports progress after every round of one image per rank, so that no rank
        // waits for another longer than one image.
        let rounds = dist.group.map(|group| Rounds {
            group,
            shard,
            num_images: n,
        });
        if !todo.is_empty() {
            let done = run_configuration(
                &run,
                c,
                &todo,
                rounds.as_ref(),
                &mut folder,
                cancel,
                on_event,
            )?;
            summary.images_generated += done.images;
            summary.generation_seconds += done.generation_seconds;
            summary.harness_seconds += done.harness_seconds;
        } else if let Some(r) = &rounds {
            r.sync_until(r.count(), &mut 0, &folder, &c.name, on_event)?;
        }
        if let Some(result) = folder
            .results()
            .configurations
            .into_iter()
            .find(|r| r.info.identity.name == c.name)
        {
            on_event(BenchEvent::ConfigDone {
                result: Box::new(result),
            });
        }
    }
    summary.cancelled |= cancel.is_cancelled();
    if summary.cancelled && dist.group.is_some() {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    if let Some(g) = dist.group {
        gather_records(g, shard, &run, &mut folder)?;
        if g.rank() == 0 {
            // Every rank has sent its records, so none writes any more: the temporary files
            // killed parts left can go.
            crate::fsutil::remove_temporary_files(&dir, 3).map_err(|(path, e)| io_err(&path)(e))?;
        }
    }
    if !writes_summaries {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    // Images generated on other machines: their records are here, their PNGs not yet.
    let elsewhere: usize = folder
        .records
        .values()
        .flat_map(|m| m.values())
        .filter(|r| !dir.join(&r.file).is_file())
        .count();
    if elsewhere > 0 {
        summary.collect_note = Some(format!(
            "{elsewhere} images were generated on the other machines: copy their configuration folders here (e.g. rsync -a HOST:DIR/ DIR/) and run the same command again to score the metrics"
        ));
    }
    if let (Some(metrics), Some(reference)) = (&run.metrics, &run.reference)
        && !summary.cancelled
        && elsewhere == 0
    {
        summary.cancelled =
            !score_configurations(&run, metrics, reference, &mut folder, cancel, on_event)?;
    }
    summary.results = folder.write_summaries()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What each part of a split run records in its shard folder: the run's settings.
pub const PART_RUN_JSON: &str = "run.json";

/// The settings the parts of a split run in `dir` recorded (the first found; `None`: no
/// parts). Parts of another run are told apart by their settings like a previous run.
fn part_settings(dir: &Path) -> Result<Option<BenchSettings>, BenchError> {
    let found = crate::dist::shard::part_folders(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, folder)| folder.join(PART_RUN_JSON))
        .find(|p| p.is_file());
    match found {
        Some(path) => Ok(Some(results::read_json(&path)?)),
        None => Ok(None),
    }
}

/// The end of a group run: every rank sends the records of its images of this run's
/// configurations; rank 0 adds those it does not hold (other machines' images).
fn gather_records(
    group: &dyn Collective,
    shard: crate::dist::Shard,
    run: &ValidatedBench,
    folder: &mut Folder,
) -> Result<(), BenchError> {
    let mine: Vec<&ImageRecord> = run
        .configurations
        .iter()
        .filter_map(|c| folder.records.get(&c.name))
        .flat_map(|m| m.values())
        .filter(|r| shard.takes(r.index))
        .collect();
    let Some(all) = crate::dist::gather_json::<_, Vec<ImageRecord>>(
        group,
        "the merge of the image records",
        &mine,
    )
    .map_err(Box::new)?
    else {
        return Ok(());
    };
    for (rank, records) in all.into_iter().enumerate() {
        for r in records {
            // Only images of this run's configurations, at the index the rank owns.
            if run.configurations.iter().any(|c| c.name == r.configuration)
                && r.index % shard.size == rank
                && r.file == image_file_name(&r.configuration, r.index)
            {
                folder
                    .records
                    .entry(r.configuration.clone())
                    .or_default()
                    .entry(r.index)
                    .or_insert(r);
            }
        }
    }
    Ok(())
}

/// The metrics step: each of this run's configurations with all its images against the
/// reference twins (FID, KID, IS of both, PSNR/SSIM/LPIPS per pair), written to
/// `<config>/metrics.json`. One `Scorer` for every configuration: the networks are loaded and
/// the reference's Inception features read from their cache (or computed) once.
/// Returns `false` when cancelled.
fn score_configurations(
    run: &ValidatedBench,
    metrics: &MetricsConfig,
    reference: &ReferenceSet,
    folder: &mut Folder,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<bool, BenchError> {
    let n = run.config.num_images;
    let twins: Vec<PathBuf> = reference.images[..n]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    let mut scorer: Option<Scorer> = None;
    for c in &run.configurations {
        let Some(records) = folder.records.get(&c.name) else {
            continue;
        };
        if records.range(..n).count() < n {
            continue;
        }
        let scorer = match &mut scorer {
            Some(s) => s,
            None => scorer.insert(Scorer::load(metrics)?),
        };
        let files: Vec<PathBuf> = records
            .range(..n)
            .map(|(_, r)| folder.dir.join(&r.file))
            .collect();
        let result = scorer.compute(
            Input {
                files: &files,
                cache_dir: None,
            },
            Some(Input {
                files: &twins,
                cache_dir: Some(&reference.dir),
            }),
            cancel,
            &mut |event| {
                on_event(BenchEvent::Metrics {
                    configuration: c.name.clone(),
                    event,
                })
            },
        );
        let result = match result {
            Err(e) if e.is_cancelled() => return Ok(false),
            other => other?,
        };
        let png_bytes = records.range(..n).map(|(_, r)| r.png_bytes).collect();
        let scored = ConfigurationMetrics::from_result(png_bytes, &result);
        results::write_json(&folder.dir.join(&c.name).join(METRICS_JSON), &scored)?;
        folder.metrics.insert(c.name.clone(), scored.clone());
        folder.write_summaries()?;
        on_event(BenchEvent::MetricsDone {
            configuration: c.name.clone(),
            metrics: Box::new(scored),
        });
    }
    Ok(true)
}

/// The progress rounds of a group run: round k holds image k·N + R of each rank R; every rank
/// takes part in every round's sum, whether it had an image to generate in it or not.
struct Rounds<'a> {
    group: &'a dyn Collective,
    shard: crate::dist::Shard,
    num_images: usize,
}

impl Rounds<'_> {
    fn count(&self) -> usize {
        self.num_images.div_ceil(self.shard.size)
    }

    /// Runs the progress sums of rounds `*synced..end` (reporting the job's progress of
    /// configuration `name`) and moves `synced` on.
    fn sync_until(
        &self,
        end: usize,
        synced: &mut usize,
        folder: &Folder,
        name: &str,
        on_event: &mut dyn FnMut(BenchEvent),
    ) -> Result<(), BenchError> {
        while *synced < end.min(self.count()) {
            let mine = folder.records.get(name).map_or(0, |m| {
                m.range(..self.num_images)
                    .filter(|(i, _)| self.shard.takes(**i))
                    .count()
            });
            let done = self
                .group
                .count(&format!("the progress count of {name}"), mine)
                .map_err(Box::new)?;
            on_event(BenchEvent::JobProgress {
                configuration: name.to_owned(),
                done,
                num_images: self.num_images,
                ranks: self.group.size(),
            });
            *synced += 1;
        }
        Ok(())
    }
}

/// Loads configuration `c`, generates images `todo` (a resumed configuration first runs
/// `warmup` throwaway generations so its first timed image is warm), then releases it. With
/// `rounds`, takes part in every progress round of the configuration.
fn run_configuration(
    run: &ValidatedBench,
    c: &Configuration,
    todo: &[usize],
    rounds: Option<&Rounds>,
    folder: &mut Folder,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<ConfigurationRun, BenchError> {
    let cfg = &run.config;
    let dir = folder.dir.clone();
    // Each configuration's peak is its own: nothing of the previous one stays cached.
    mlx_rs::memory::clear_cache()?;
    let t = Instant::now();
    let mut pipe = Pipeline::load(&run.files, c.dtype.mlx())?;
    let quant = crate::quant::apply_to_pipeline(&mut pipe, &c.quant, QuantMode::Real)?;
    let size = c.dtype.size() as u64;
    let info = ConfigurationInfo {
        identity: c.identity(),
        spec: c.spec.clone(),
        mmdit_weight_bytes: quant.bytes_after as u64,
        mmdit_weight_bytes_float32: quant.bytes_before as u64 * 4 / size,
        mmdit_weight_bytes_float16: quant.bytes_before as u64 * 2 / size,
        quantized_layers: quant.quantized.len(),
        float_layers: quant.skipped.clone(),
    };
    let sub = dir.join(&c.name);
    for d in [sub.join("images"), sub.join("records")] {
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    results::write_json(&sub.join(CONFIGURATION_JSON), &info)?;
    folder.infos.insert(c.name.clone(), info.clone());
    on_event(BenchEvent::ConfigLoaded {
        configuration: c.name.clone(),
        seconds: t.elapsed().as_secs_f64(),
        mmdit_weight_bytes: info.mmdit_weight_bytes,
    });

    let request = |i: usize| GenerateConfig {
        prompt: run.settings.generation.prompts[i].clone(),
        negative_prompt: cfg.negative_prompt.clone(),
        seed: run.settings.generation.seeds[i],
        num_steps: cfg.num_steps,
        cfg_weight: cfg.cfg_weight,
        height: cfg.height,
        width: cfg.width,
    };
    let first = todo[0];
    let throwaways = if first >= cfg.warmup { cfg.warmup } else { 0 };
    for _ in 0..throwaways {
        if cancel.is_cancelled() {
            return Ok(ConfigurationRun::default());
        }
        on_event(BenchEvent::ImageStarted {
            configuration: c.name.clone(),
            image: first,
            prompt: run.settings.generation.prompts[first].clone(),
            throwaway: true,
        });
        pipe.generate(&request(first), &mut |_| Flow::Continue)?;
    }

    let mut seconds_this_run = Vec::new();
    let mut harness_seconds = 0.0;
    let mut synced = 0;
    for (done, &i) in todo.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        if let Some(r) = rounds {
            // The rounds before this image's, in which this rank had nothing left to do.
            r.sync_until(i / r.shard.size, &mut synced, folder, &c.name, on_event)?;
        }
        let req = request(i);
        on_event(BenchEvent::ImageStarted {
            configuration: c.name.clone(),
            image: i,
            prompt: req.prompt.clone(),
            throwaway: false,
        });
        let t_loop = Instant::now();
        mlx_rs::memory::reset_peak_memory()?;
        crate::runtime::doctor::reset_peak_rss();
        let t_image = Instant::now();
        let generated = pipe.generate(&req, &mut |s| {
            on_event(BenchEvent::Step {
                configuration: c.name.clone(),
                image: i,
                step: s.step_index + 1,
                num_steps: s.num_steps,
            });
            // Cancelling stops after the current image, never inside it.
            Flow::Continue
        })?;
        let total = t_image.elapsed().as_secs_f64();
        let Some(generated) = generated else {
            break;
        };
        let peak_mlx_bytes = mlx_rs::memory::peak_memory()? as u64;
        let peak_rss_bytes = crate::runtime::doctor::process_peak_rss().unwrap_or(0);
        let file = image_file_name(&c.name, i);
        let png = dir.join(&file);
        let (w, h, rgb) = &generated.image;
        write_png(&png, *w, *h, PixelFormat::Rgb, rgb).map_err(io_err(&png))?;
        let png_bytes = std::fs::metadata(&png).map_err(io_err(&png))?.len();
        let times = &generated.times;
        let record = ImageRecord {
            configuration: c.name.clone(),
            index: i,
            prompt: req.prompt.clone(),
            seed: req.seed,
            warmup: i < cfg.warmup,
            seconds: ImageSeconds {
                text_encoding: times.text_encoding,
                denoising: times.denoising,
                per_step: times.per_step.clone(),
                decoding: times.decoding,
                total,
            },
            peak_mlx_bytes,
            peak_rss_bytes,
            file,
            png_bytes,
        };
        results::write_json(&record_path(&dir, &c.name, i), &record)?;
        folder
            .records
            .entry(c.name.clone())
            .or_default()
            .insert(i, record);
        folder.write_summaries()?;
        harness_seconds += t_loop.elapsed().as_secs_f64() - total;
        seconds_this_run.push(total);
        let mean = seconds_this_run.iter().sum::<f64>() / seconds_this_run.len() as f64;
        on_event(BenchEvent::ImageDone {
            configuration: c.name.clone(),
            image: i,
            seconds: total,
            eta_seconds: mean * (todo.len() - done - 1) as f64,
            peak_mlx_bytes,
            peak_rss_bytes,
        });
        if let Some(r) = rounds {
            r.sync_until(i / r.shard.size + 1, &mut synced, folder, &c.name, on_event)?;
        }
    }
    if let Some(r) = rounds
        && !cancel.is_cancelled()
    {
        r.sync_until(r.count(), &mut synced, folder, &c.name, on_event)?;
    }
    drop(pipe);
    mlx_rs::memory::clear_cache()?;
    Ok(ConfigurationRun {
        images: seconds_this_run.len(),
        generation_seconds: seconds_this_run.iter().sum(),
        harness_seconds,
    })
}

//! Per-layer, per-bit sensitivity of the MMDiT on calibration samples, by step bucket.
//!
//! For each selected layer and bit width, that layer alone is quantized (simulated: the same
//! numbers as the real kernels, see `tests/quant.rs`) and an output computed from each
//! calibration record (the CFG batch of 2: x duplicated, `timestep`, `conditioning`,
//! `pooled_conditioning`) is compared with the float model's. Where it is measured is the
//! [`Scope`]: the MMDiT's output (`model`), the output of the layer's own block (`block`: the
//! joint block; the conditioning vector for the timestep/pooled embedders; the text embedding
//! for `context_embedder`; the model output for `final_layer.*`), or the layer's own output on
//! its float input (`layer`). Metrics over all elements of all samples of a group (`early`,
//! `mid`, `late`, `all`): `mse`, `sqnr_db` (10·log10(Σy²/Σ(y−ŷ)²)) and `cosine` (mean over
//! samples of the flattened outputs' cosine).
//!
//! Evaluation streams through the model by stage (embedders, block 0 … block d−1, final
//! layer): every sample holds only the float input of the current block; the layers of that
//! stage are measured (a layer in block k re-runs blocks k.. only; each (layer, bits) is
//! quantized once for all samples; samples of the same shape are batched), then the float
//! block runs once to move every sample to the next stage. `use_cache = false` is the naive
//! oracle (a full forward per layer, bit width and sample, one sample at a time); both give
//! the same numbers (exactly with `batch_size = 1`; to float rounding otherwise).
//!
//! Memory bound (float32): per sample, the current block's input and the float model output,
//! about 2 × (image + text tokens) × hidden × 4 bytes + the output (≈ 15 MB for SD3 medium at
//! 512 px), independent of depth; plus one batch's forward working set. `layer` scope also
//! holds the current block's Linear inputs (≈ 7 × that per sample).
//!
//! An output projection or MLP layer (after joint attention) changes one stream only: block
//! k's attention output and modulation are kept from the float pass, so only that stream's
//! post-attention part of block k is re-run, the other stream's output is the float one.
//!
//! Cost model of the cached path, in blocks of work per layer and bit width: a layer in block
//! k re-runs the part p of block k it changes (≈ 1 for q/k/v and adaLN, ≈ 0.3 for an image
//! output projection or MLP layer, ≈ 0.2 for a text one) and blocks k+1..d−1; naive runs all
//! d. With layers spread evenly that is about 2d / (d − 1 + 2p̄) times faster, before the one
//! float pass: below 2× whenever p̄ > ½ (docs/INTERNALS.md, how the sensitivity sweep runs). `block` scope runs one block
//! (or one stream's post-attention part) per evaluation and `layer` one matrix product.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use crate::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleKey, SampleMeta};
use crate::dist::Distribution;
use crate::job::CancelToken;
use crate::model::config::ModelDtype;
use crate::model::mmdit::{Mmdit, Modulation, PostAttention, PreAttention};
use crate::model::nn::{Linear, to_vec_f32};
use crate::model::registry::{LayerId, LayerKind, LinearLayer, Stream, mmdit_linear_layers};

use super::{LayerQuant, fake_quantize};

/// Where a quantized layer's effect is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The MMDiT's output.
    #[default]
    Model,
    /// The output of the layer's own block (a fast proxy).
    Block,
    /// The layer's own output on its float input (the fastest proxy).
    Layer,
    /// The MMDiT's output to first order, estimated for every layer and bit width at once
    /// from a few gradient probes per sample ([`super::linearized`]).
    Linearized,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Block => "block",
            Self::Layer => "layer",
            Self::Linearized => "linearized",
        }
    }

    /// Calibration records per forward when not chosen: 4 (batching helps a GPU), 1 for a
    /// linearized sweep (a pass over several records estimates their sum with the noise of
    /// one, and on a CPU costs as much as running them one by one).
    pub fn default_batch_size(self) -> usize {
        match self {
            Self::Linearized => 1,
            _ => 4,
        }
    }

    /// Whether the results are (estimates of) the error of the MMDiT's output, which add up
    /// over layers to first order.
    pub fn is_model_output(self) -> bool {
        matches!(self, Self::Model | Self::Linearized)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The files a sweep writes into its output folder.
pub const REPORT_JSON: &str = "sensitivity.json";
pub const REPORT_CSV: &str = "sensitivity.csv";

/// Settings of a sensitivity run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityConfig {
    pub model: String,
    pub calib_dir: PathBuf,
    pub bits: Vec<i32>,
    pub group_size: i32,
    pub max_images: Option<usize>,
    pub step_stride: Option<usize>,
    /// Regular expression over layer names.
    pub layers: Option<String>,
    pub output_dir: PathBuf,
    pub use_cache: bool,
    pub dtype: ModelDtype,
    pub scope: Scope,
    /// Calibration samples evaluated together in one forward (same shapes only).
    pub batch_size: usize,
    /// Start over in an output folder that holds a run with other settings or other data
    /// (otherwise refused, with the differences listed).
    pub overwrite: bool,
    /// `linearized` scope: random probes per forward/backward pass (`None`: enough for
    /// [`super::linearized::PROBE_BUDGET`] passes in all).
    pub probes: Option<usize>,
    /// `linearized` scope: the seed of the probes.
    pub probe_seed: u64,
}

/// `bits` sorted and without repeats: `4,2,2` measures 2 and 4 once each, in that order, and
/// counts as the same run as `2,4`.
pub fn normalized_bits(bits: &[i32]) -> Vec<i32> {
    let mut v = bits.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// SQNR reported when a quantized layer does not move the output at all (JSON has no infinity).
pub const MAX_SQNR_DB: f64 = 300.0;

/// `10·log10(energy / err)` in dB, [`MAX_SQNR_DB`] when the error is zero (or the ratio beyond).
pub(crate) fn sqnr_db(energy: f64, err: f64) -> f64 {
    if err > 0.0 {
        (10.0 * (energy / err).log10()).min(MAX_SQNR_DB)
    } else {
        MAX_SQNR_DB
    }
}

/// One row of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketResult {
    pub bits: i32,
    pub group_size: i32,
    pub bucket: Bucket,
    pub mse: f64,
    /// The standard error of `mse` when it is an estimate (`linearized` scope); absent when
    /// measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mse_stderr: Option<f64>,
    pub sqnr_db: f64,
    /// Mean over samples of the cosine between the float and quantized outputs; absent in
    /// `linearized` reports (the probes estimate the error's size, not its direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
    pub n_samples: usize,
}

/// A layer's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerResult {
    pub name: String,
    pub block: Option<usize>,
    pub kind: LayerKind,
    pub params: usize,
    pub results: Vec<BucketResult>,
}

/// `sensitivity.json` (schema `sd3lab.sensitivity/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityReport {
    pub schema: String,
    pub settings: RunSettings,
    pub layers: Vec<LayerResult>,
    /// Layers the last run was asked for and has not measured yet: a run that was cancelled,
    /// killed or failed leaves them here (empty, and absent from the file, once it finished).
    /// Files written before this field existed read as complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// A part of a split run (`OUTPUT/shard-R-of-N/`): every layer of the whole job, so that
    /// the merge can check the parts cover it (absent from whole and merged reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_layers: Option<Vec<String>>,
}

/// The schema name of `sensitivity.json`.
pub const REPORT_SCHEMA: &str = "sd3lab.sensitivity/1";

impl SensitivityReport {
    /// The lowest bit width the run measured: the default bit width of figures and rankings.
    pub fn lowest_bits(&self) -> Option<i32> {
        self.settings.bits.iter().min().copied()
    }
}

/// What the results depend on: a rerun with other settings, or over other data, is refused
/// (see [`settings_differences`]) unless it starts over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub model: String,
    pub model_config: crate::model::MmditConfig,
    pub calib_dir: PathBuf,
    pub bits: Vec<i32>,
    pub group_size: i32,
    pub max_images: Option<usize>,
    pub step_stride: Option<usize>,
    pub dtype: ModelDtype,
    pub samples: Vec<String>,
    pub metric_scope: Scope,
    /// What the inputs were, so that a resume over regenerated data (same file names, new
    /// contents) or another checkpoint is refused rather than mixed with earlier results.
    /// Absent from files written before it existed: such a run is not resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputIdentity>,
    /// The probes of a `linearized` run (absent for the other scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<super::linearized::ProbeSettings>,
}

/// The identity of a run's inputs: the calibration manifest's generation record and every
/// used file's size and modification time (cheap to check; a file rewritten since has a new
/// modification time even when its size is unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputIdentity {
    /// The calibration manifest's `generation` record (null when it has none).
    pub calibration: serde_json::Value,
    /// The MMDiT checkpoint.
    pub checkpoint: FileStamp,
    /// The selected sample files, in `samples` order.
    pub sample_files: Vec<FileStamp>,
}

/// A calibration manifest's `generation` record without what grows as the calibration run goes
/// on (every finished image's prompt and seed) or changes with the tool (`tool_version`):
/// extending or finishing a calibration run is not other data. The files actually read are
/// identified by their [`FileStamp`]s.
fn settings_of_generation(mut record: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = record.as_object_mut() {
        for key in ["prompts", "seeds", "tool_version"] {
            fields.remove(key);
        }
    }
    record
}

/// A file's size and modification time (nanoseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub file: String,
    pub bytes: u64,
    pub modified_ns: u64,
}

impl FileStamp {
    /// Reads `path`'s size and modification time; `file` is the name recorded.
    pub fn of(path: &Path, file: &str) -> Result<Self, SensitivityError> {
        let meta = std::fs::metadata(path).map_err(|source| SensitivityError::Io {
            path: path.to_owned(),
            source,
        })?;
        // A file system without modification times records 0: the size is still checked.
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Ok(Self {
            file: file.to_owned(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

/// What differs between a previous run's settings and this one's, one `name: old → new` each
/// (empty: the same run, which may be resumed). Settings are compared as what they mean:
/// calibration folders by canonical path, bit widths as sorted sets, a stride of 1 as none.
pub fn settings_differences(old: &RunSettings, new: &RunSettings) -> Vec<String> {
    fn cmp(d: &mut Vec<String>, name: &str, a: String, b: String) {
        if a != b {
            d.push(format!("{name}: {a} → {b}"));
        }
    }
    let mut d = Vec::new();
    let dir = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|_| p.to_owned())
            .display()
            .to_string()
    };
    let opt = |v: Option<usize>| v.map_or("all".to_owned(), |v| v.to_string());
    let stride = |v: Option<usize>| opt(v.filter(|&k| k > 1));
    cmp(&mut d, "model", old.model.clone(), new.model.clone());
    if old.model_config != new.model_config {
        d.push("model configuration: differs".into());
    }
    cmp(
        &mut d,
        "calibration folder",
        dir(&old.calib_dir),
        dir(&new.calib_dir),
    );
    cmp(
        &mut d,
        "bits",
        format!("{:?}", normalized_bits(&old.bits)),
        format!("{:?}", normalized_bits(&new.bits)),
    );
    cmp(
        &mut d,
        "group size",
        old.group_size.to_string(),
        new.group_size.to_string(),
    );
    cmp(
        &mut d,
        "step stride",
        stride(old.step_stride),
        stride(new.step_stride),
    );
    cmp(
        &mut d,
        "dtype",
        old.dtype.name().into(),
        new.dtype.name().into(),
    );
    cmp(
        &mut d,
        "scope",
        old.metric_scope.to_string(),
        new.metric_scope.to_string(),
    );
    if old.probes != new.probes {
        let show = |p: &Option<super::linearized::ProbeSettings>| {
            p.as_ref().map_or("none".to_owned(), |p| {
                format!(
                    "{} per pass, seed {}, batch size {}",
                    p.per_pass, p.seed, p.batch_size
                )
            })
        };
        d.push(format!(
            "probes: {} → {}",
            show(&old.probes),
            show(&new.probes)
        ));
    }
    if old.samples != new.samples {
        d.push(format!(
            "samples: {} → {} (max images: {} → {})",
            old.samples.len(),
            new.samples.len(),
            opt(old.max_images),
            opt(new.max_images)
        ));
    }
    match (&old.inputs, &new.inputs) {
        (Some(a), Some(b)) => {
            if a.calibration != b.calibration {
                d.push("calibration data: generated again with other settings (the manifest's generation record differs)".into());
            }
            if a.checkpoint != b.checkpoint {
                d.push(format!(
                    "checkpoint: {} changed (size or modification time)",
                    b.checkpoint.file
                ));
            }
            let changed: Vec<&str> = a
                .sample_files
                .iter()
                .zip(&b.sample_files)
                .filter(|(x, y)| x != y)
                .map(|(_, y)| y.file.as_str())
                .collect();
            if !changed.is_empty() {
                d.push(format!(
                    "calibration data: {} sample file(s) rewritten since (size or modification time), first {}",
                    changed.len(),
                    changed[0]
                ));
            }
        }
        (None, _) => d.push("inputs: not recorded (written by an earlier version)".into()),
        (Some(_), None) => d.push("inputs: not recorded".into()),
    }
    d
}

/// Progress of a run.
#[derive(Debug, Clone)]
pub enum SensitivityEvent {
    /// Resolving the model reported this (the fallback to tiny, download progress).
    Model(crate::model::source::SourceEvent),
    /// Samples are being loaded and their float outputs computed.
    Preparing { samples: usize },
    Planned {
        layers: usize,
        already_done: usize,
        bits: usize,
        samples: usize,
    },
    LayerDone {
        index: usize,
        id: LayerId,
        name: String,
        seconds: f64,
    },
    /// `linearized` scope: every layer is estimated from `batches` forward/backward passes of
    /// `probes` probes each; `already_done` of them were run before (resumed).
    Probing {
        batches: usize,
        already_done: usize,
        probes: usize,
    },
    /// `linearized` scope: batch `done` of `batches` probed (all layers at once).
    BatchDone {
        done: usize,
        batches: usize,
        seconds: f64,
    },
    /// A distributed run (a ring group): `done` of the job's `total` layers are finished over
    /// all `ranks` (counted at every stage of the sweep).
    JobProgress {
        done: usize,
        total: usize,
        ranks: usize,
    },
}

/// Why a run failed. The messages name no front end's controls: the CLI and the app add
/// what to do in their own terms.
#[derive(Debug, thiserror::Error)]
pub enum SensitivityError {
    #[error("no bit widths given")]
    NoBits,
    #[error(transparent)]
    Quant(#[from] super::QuantError),
    /// The naive oracle (a full forward per layer, bits and sample, no stage cache) measures
    /// the MMDiT's output only.
    #[error(
        "the naive path (without the stage cache) is the oracle of the model scope only, not of the {0} scope"
    )]
    NaiveNeedsModelScope(Scope),
    #[error(
        "{0} probes per batch: the linearized scope takes 1 to {max}",
        max = super::linearized::MAX_PROBES
    )]
    ProbesOutOfRange(usize),
    #[error("probes are for the linearized scope, not the {0} scope")]
    ProbesNeedLinearized(Scope),
    /// Refining a linearized report with an exact one (see `linearized::refine`).
    #[error("cannot refine: {0}")]
    CannotRefine(String),
    #[error("layer pattern {pattern:?}: {source}")]
    BadLayerPattern {
        pattern: String,
        source: Box<regex::Error>,
    },
    #[error("layer pattern {0:?} matches no layer of this model")]
    NoLayerMatches(String),
    #[error("no calibration samples selected in {0}")]
    NoSamples(PathBuf),
    #[error(
        "{path}: the calibration data does not fit this model (x {x:?}, conditioning {conditioning:?}, pooled {pooled:?}; the model takes {latent_channels} latent channels, {context_dim}-wide text, {pooled_dim}-wide pooled): it was made with another model"
    )]
    DataMismatch {
        path: PathBuf,
        x: Vec<i32>,
        conditioning: Vec<i32>,
        pooled: Vec<i32>,
        latent_channels: usize,
        context_dim: usize,
        pooled_dim: usize,
    },
    /// Plan validation: the sensitivity run used every sample of its calibration folder.
    #[error(
        "every calibration sample in {0} was used by the sensitivity run; validation needs held-out samples"
    )]
    NoHeldOutSamples(PathBuf),
    #[error("{path}: not a sensitivity report: {source}")]
    NotAReport {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not a sensitivity report (schema {schema:?}, expected {REPORT_SCHEMA:?})")]
    WrongSchema { path: PathBuf, schema: String },
    #[error(transparent)]
    Lock(#[from] crate::fsutil::LockError),
    #[error(
        "{dir} already holds a sensitivity run with different settings or data ({differences})"
    )]
    SettingsDiffer { dir: PathBuf, differences: String },
    /// The output folder's `sensitivity.json` cannot be read as a report: resuming would
    /// discard it.
    #[error("{path} exists but cannot be resumed: {reason}")]
    UnreadablePrevious { path: PathBuf, reason: String },
    #[error(
        "{path}: {key} holds {count} non-finite value(s) (NaN or infinity), first at index {first}; the sample cannot be measured"
    )]
    NonFiniteSample {
        path: PathBuf,
        key: String,
        count: usize,
        first: usize,
    },
    #[error(
        "{path}: the float model's output on this sample is not finite (NaN or infinity) in {dtype}; nothing can be measured against it"
    )]
    NonFiniteReference { path: PathBuf, dtype: String },
    #[error(
        "{layer} at {bits} bits: the quantized model's output on {path} is not finite (NaN or infinity); leave this layer or bit width out"
    )]
    NonFiniteOutput {
        layer: String,
        bits: i32,
        path: PathBuf,
    },
    #[error(
        "{layer} at {bits} bits: the output's gradient on {} is not finite (NaN or infinity), so its first-order error cannot be estimated; use float32 or leave this layer or bit width out",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NonFiniteGradient {
        layer: String,
        bits: i32,
        paths: Vec<PathBuf>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A broken invariant of the sweep itself (never the user's input): report it as a bug.
    #[error("bug in the sensitivity sweep: {0}; please report it")]
    Bug(String),
    #[error(transparent)]
    TensorIo(#[from] Box<crate::model::tensor_io::TensorIoError>),
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error(transparent)]
    Calib(#[from] Box<crate::calib::CalibError>),
    #[error(transparent)]
    Weights(#[from] Box<crate::model::weights::WeightsError>),
    #[error(transparent)]
    Source(#[from] Box<crate::model::source::SourceError>),
    /// Kept as the source (not transparent), so that the CLI can tell a lost peer.
    #[error("{0}")]
    Dist(#[from] Box<crate::dist::DistError>),
    /// Splitting or merging a run across ranks (see `quant::shards`).
    #[error(transparent)]
    Shards(#[from] super::shards::ShardsError),
}

fn boxed<E>(e: E) -> Box<E> {
    Box::new(e)
}

/// Calibration records of the same shapes, stacked along the batch axis (2 rows per record:
/// the CFG pair).
pub(crate) struct SampleBatch {
    pub(crate) buckets: Vec<Bucket>,
    /// Each record's sample file (for errors).
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) x: Array,
    pub(crate) context: Array,
    pub(crate) pooled: Array,
    /// One timestep per row.
    pub(crate) timestep: Array,
    pub(crate) latent_hw: (i32, i32),
    /// Float modulation.
    pub(crate) modulation: Modulation,
    /// Float model output, one vector per record.
    pub(crate) reference: Vec<Vec<f32>>,
    /// Float input of the current stage's block (image, text).
    state: Option<(Array, Array)>,
}

impl SampleBatch {
    fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Drops the block inputs kept for the staged sweep (not needed by a full forward).
    pub(crate) fn release_state(&mut self) {
        self.state = None;
    }
}

/// Splits outputs with 2·n leading rows into one flat vector per record.
pub(crate) fn per_record(outputs: &[Array], n: usize) -> Result<Vec<Vec<f32>>, SensitivityError> {
    let mut records = vec![Vec::new(); n];
    for a in outputs {
        let flat = to_vec_f32(a)?;
        let chunk = flat.len() / n;
        for (j, r) in records.iter_mut().enumerate() {
            r.extend_from_slice(&flat[j * chunk..(j + 1) * chunk]);
        }
    }
    Ok(records)
}

/// Accumulates the metrics of one group.
#[derive(Default, Clone)]
pub(crate) struct Acc {
    err: f64,
    reference: f64,
    elements: usize,
    cosine: f64,
    samples: usize,
}

impl Acc {
    pub(crate) fn add(&mut self, y: &[f32], q: &[f32]) {
        let (mut e, mut r, mut yq, mut qq) = (0f64, 0f64, 0f64, 0f64);
        for (a, b) in y.iter().zip(q) {
            let (a, b) = (*a as f64, *b as f64);
            e += (a - b) * (a - b);
            r += a * a;
            yq += a * b;
            qq += b * b;
        }
        self.err += e;
        self.reference += r;
        self.elements += y.len();
        self.cosine += if r > 0.0 && qq > 0.0 {
            yq / (r.sqrt() * qq.sqrt())
        } else {
            1.0
        };
        self.samples += 1;
    }

    pub(crate) fn result(&self, bits: i32, group_size: i32, bucket: Bucket) -> BucketResult {
        let mse = self.err / self.elements.max(1) as f64;
        let sqnr_db = sqnr_db(self.reference, self.err);
        BucketResult {
            bits,
            group_size,
            bucket,
            mse,
            mse_stderr: None,
            sqnr_db,
            cosine: Some(self.cosine / self.samples.max(1) as f64),
            n_samples: self.samples,
        }
    }
}

/// Per-bucket and overall accumulators.
#[derive(Default)]
pub(crate) struct Groups(BTreeMap<Bucket, Acc>);

impl Groups {
    /// Adds one record of step bucket `bucket` to its bucket and to `all`.
    pub(crate) fn add(&mut self, bucket: Bucket, y: &[f32], q: &[f32]) {
        self.0.entry(bucket).or_default().add(y, q);
        self.0.entry(Bucket::All).or_default().add(y, q);
    }

    pub(crate) fn results(&self, bits: i32, group_size: i32) -> Vec<BucketResult> {
        Bucket::GROUPS
            .into_iter()
            .filter_map(|b| self.0.get(&b).map(|acc| acc.result(bits, group_size, b)))
            .collect()
    }
}

/// The part of the model a layer sits in; evaluation streams through these in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Timestep/pooled embedders and the context embedder (block-0 inputs).
    Embed,
    Block(usize),
    /// `final_layer.*` (the last block's output).
    Final,
}

impl Stage {
    fn of(id: LayerId) -> Self {
        match id {
            LayerId::PooledEmbedder(_)
            | LayerId::TimestepEmbedder(_)
            | LayerId::ContextEmbedder => Self::Embed,
            LayerId::Block { block, .. } => Self::Block(block),
            LayerId::FinalLinear | LayerId::FinalAdaln => Self::Final,
        }
    }
}

/// A registry layer the model does not have: the registry is built from the model's own
/// configuration, so this is a bug.
fn no_layer(id: LayerId) -> SensitivityError {
    SensitivityError::Bug(format!("the model has no layer {}", id.name()))
}

/// Swaps a layer's float weight, returning the previous one.
fn swap_weight(m: &mut Mmdit, id: LayerId, w: Array) -> Result<Array, SensitivityError> {
    let l = m.linear_mut(id).ok_or_else(|| no_layer(id))?;
    Ok(std::mem::replace(&mut l.weight, w))
}

/// Loads records into batches of up to `batch_size` records of equal shapes (and, with
/// `split_buckets`, of one step bucket) and computes the float model outputs.
pub(crate) fn load_batches(
    m: &Mmdit,
    set: &CalibrationSet,
    metas: &[&SampleMeta],
    batch_size: usize,
    cancel: &CancelToken,
    split_buckets: bool,
) -> Result<Vec<SampleBatch>, SensitivityError> {
    let dtype = m.dtype();
    struct Record {
        bucket: Bucket,
        path: PathBuf,
        x: Array,
        context: Array,
        pooled: Array,
        timestep: f32,
    }
    let mut pending: Vec<Record> = Vec::new();
    let mut batches = Vec::new();
    let flush = |pending: &mut Vec<Record>| -> Result<Option<SampleBatch>, SensitivityError> {
        if pending.is_empty() {
            return Ok(None);
        }
        let records = std::mem::take(pending);
        let cat = |f: &dyn Fn(&Record) -> &Array| -> Result<Array, SensitivityError> {
            let parts: Vec<&Array> = records.iter().map(f).collect();
            Ok(mlx_rs::ops::concatenate(&parts, 0)?)
        };
        let x = cat(&|r| &r.x)?;
        let context = cat(&|r| &r.context)?;
        let pooled = cat(&|r| &r.pooled)?;
        let per_row: Vec<f32> = records
            .iter()
            .flat_map(|r| {
                let rows = r.context.shape()[0] as usize;
                std::iter::repeat_n(r.timestep, rows)
            })
            .collect();
        let timestep = Array::from_slice(&per_row, &[per_row.len() as i32]).as_dtype(dtype)?;
        let xs = x.shape();
        let latent_hw = (xs[1], xs[2]);
        let modulation = m.modulation(&pooled, &timestep)?;
        let img = m.embed_image(&x)?;
        let txt = m.embed_text(&context)?;
        mlx_rs::transforms::eval([&img, &txt])?;
        modulation.eval()?;
        let out = m.forward_from(0, img.clone(), txt.clone(), &modulation, latent_hw)?;
        let reference = per_record(&[out], records.len())?;
        // Every measurement compares with these: a non-finite one would give NaN metrics.
        if let Some(j) = reference
            .iter()
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(SensitivityError::NonFiniteReference {
                path: records[j].path.clone(),
                dtype: format!("{dtype:?}"),
            });
        }
        Ok(Some(SampleBatch {
            buckets: records.iter().map(|r| r.bucket).collect(),
            paths: records.iter().map(|r| r.path.clone()).collect(),
            x,
            context,
            pooled,
            timestep,
            latent_hw,
            modulation,
            reference,
            state: Some((img, txt)),
        }))
    };
    for meta in metas {
        if cancel.is_cancelled() {
            break;
        }
        let load = |k: SampleKey| -> Result<Array, SensitivityError> {
            let a = set.load(meta, k).map_err(boxed)?;
            check_finite(&a, &meta.path, k.name())?;
            Ok(crate::model::tensor_io::from_npy(&a, dtype).map_err(boxed)?)
        };
        if !meta.timestep.is_finite() {
            return Err(SensitivityError::NonFiniteSample {
                path: meta.path.clone(),
                key: "timestep".into(),
                count: 1,
                first: 0,
            });
        }
        let x = load(SampleKey::X)?;
        let context = load(SampleKey::Conditioning)?;
        let pooled = load(SampleKey::PooledConditioning)?;
        let cfg = &m.config;
        let xs = x.shape().to_vec();
        if xs.len() != 4
            || xs[3] as usize != cfg.latent_channels
            || context.shape().last() != Some(&(cfg.context_dim as i32))
            || pooled.shape().last() != Some(&(cfg.pooled_dim as i32))
        {
            return Err(SensitivityError::DataMismatch {
                path: meta.path.clone(),
                x: xs,
                conditioning: context.shape().to_vec(),
                pooled: pooled.shape().to_vec(),
                latent_channels: cfg.latent_channels,
                context_dim: cfg.context_dim,
                pooled_dim: cfg.pooled_dim,
            });
        }
        let rows = context.shape()[0];
        let x = if xs[0] == rows {
            x
        } else {
            mlx_rs::ops::concatenate(&vec![x; rows as usize], 0)?
        };
        let record = Record {
            bucket: meta.bucket,
            path: meta.path.clone(),
            x,
            context,
            pooled,
            timestep: meta.timestep as f32,
        };
        let fits = pending.first().is_none_or(|p| {
            p.x.shape() == record.x.shape()
                && p.context.shape() == record.context.shape()
                && (!split_buckets || p.bucket == record.bucket)
        });
        if !fits || pending.len() >= batch_size.max(1) {
            batches.extend(flush(&mut pending)?);
        }
        pending.push(record);
    }
    batches.extend(flush(&mut pending)?);
    Ok(batches)
}

/// Refuses an array with NaN or infinite values (`key` of sample file `path`).
fn check_finite(
    a: &crate::calib::NpyArray,
    path: &Path,
    key: &str,
) -> Result<(), SensitivityError> {
    use crate::calib::npy::NpyData;
    let bad: Vec<usize> = match &a.data {
        NpyData::Float32(v) => positions(v.iter().map(|x| x.is_finite())),
        NpyData::Float64(v) => positions(v.iter().map(|x| x.is_finite())),
        NpyData::Float16(v) => positions(v.iter().map(|x| x.is_finite())),
        NpyData::Bfloat16(v) => positions(v.iter().map(|x| x.is_finite())),
        // Integers and booleans are always finite.
        _ => Vec::new(),
    };
    match bad.first() {
        None => Ok(()),
        Some(&first) => Err(SensitivityError::NonFiniteSample {
            path: path.to_owned(),
            key: key.to_owned(),
            count: bad.len(),
            first,
        }),
    }
}

/// The indices where `finite` is false.
fn positions(finite: impl Iterator<Item = bool>) -> Vec<usize> {
    finite
        .enumerate()
        .filter_map(|(i, ok)| (!ok).then_some(i))
        .collect()
}

/// What one stage holds for every batch while its layers are measured.
#[derive(Default)]
struct StageData {
    /// Float inputs of the stage's measured Linears (layer scope), per batch.
    inputs: Vec<HashMap<LayerId, Array>>,
    /// Float references per batch and record, by what is measured.
    references: Vec<HashMap<Measured, Vec<Vec<f32>>>>,
    /// The float block outputs, when preparing already computed them.
    next: Vec<Option<(Array, Array)>>,
    /// What the block's post-attention parts start from (model and block scopes).
    parts: Vec<Option<AttentionState>>,
}

/// The float state a joint block's post-attention parts start from besides the block input:
/// joint attention's output and the modulation chunks, per stream (image, text).
struct AttentionState {
    attention: [Array; 2],
    chunks: [Vec<Array>; 2],
}

/// One float pass through joint block k, part by part.
struct BlockPass {
    pre: [PreAttention; 2],
    attention: [Array; 2],
    post: [Option<PostAttention>; 2],
}

impl BlockPass {
    fn run(
        m: &Mmdit,
        k: usize,
        img: &Array,
        txt: &Array,
        mo: &Modulation,
    ) -> Result<Self, SensitivityError> {
        let pre = [
            m.pre_attention(k, Stream::Image, img, mo)?,
            m.pre_attention(k, Stream::Text, txt, mo)?,
        ];
        let attention = m.joint_attention(&pre[0], &pre[1])?;
        let post = [
            m.post_attention(k, Stream::Image, img, &attention[0], &pre[0].chunks)?,
            m.post_attention(k, Stream::Text, txt, &attention[1], &pre[1].chunks)?,
        ];
        Ok(Self {
            pre,
            attention,
            post,
        })
    }

    /// The block's outputs (the text stream passes through after the last block).
    fn outputs(&self, txt: &Array) -> Result<(Array, Option<Array>, Array), SensitivityError> {
        let img = self.post[0]
            .as_ref()
            .map(|p| p.output.clone())
            .ok_or_else(|| {
                SensitivityError::Bug("an image stream without post-attention".into())
            })?;
        let t = self.post[1].as_ref().map(|p| p.output.clone());
        let next_txt = t.clone().unwrap_or_else(|| txt.clone());
        Ok((img, t, next_txt))
    }

    /// The float input of one of the block's Linears.
    fn input(&self, stream: Stream, kind: LayerKind, adaln_input: &Array) -> Option<Array> {
        let s = stream.index();
        match kind {
            LayerKind::AttnQ | LayerKind::AttnK | LayerKind::AttnV => {
                Some(self.pre[s].modulated.clone())
            }
            LayerKind::AttnO => Some(self.attention[s].clone()),
            LayerKind::MlpFc1 => self.post[s].as_ref().map(|p| p.mlp_input.clone()),
            LayerKind::MlpFc2 => self.post[s].as_ref().map(|p| p.mlp_hidden.clone()),
            LayerKind::Adaln => Some(adaln_input.clone()),
            LayerKind::Embedder | LayerKind::Final => None,
        }
    }
}

/// What a layer's measurement is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Measured {
    /// The MMDiT's output.
    Model,
    /// Joint block k's outputs.
    Block(usize),
    /// The text embedding (block scope of `context_embedder`).
    Context,
    /// The conditioning vector (block scope of the timestep/pooled embedders).
    Conditioning,
    /// The layer's own output.
    Layer(LayerId),
}

impl Measured {
    fn of(scope: Scope, id: LayerId) -> Self {
        match (scope, Stage::of(id)) {
            (Scope::Model | Scope::Linearized, _) | (Scope::Block, Stage::Final) => Self::Model,
            (Scope::Block, Stage::Block(k)) => Self::Block(k),
            (Scope::Block, Stage::Embed) if id == LayerId::ContextEmbedder => Self::Context,
            (Scope::Block, Stage::Embed) => Self::Conditioning,
            (Scope::Layer, _) => Self::Layer(id),
        }
    }
}

/// The measured outputs for one batch with the model's current weights (`linear`: the layer
/// being measured, with its current weight, for `layer` scope).
fn measure(
    m: &Mmdit,
    b: &SampleBatch,
    id: LayerId,
    scope: Scope,
    use_cache: bool,
    stage_data: Option<(&StageData, usize)>,
    linear: &Linear,
) -> Result<Vec<Array>, SensitivityError> {
    let stage = Stage::of(id);
    if !use_cache {
        let modulation = m.modulation(&b.pooled, &b.timestep)?;
        return Ok(vec![m.forward(&b.x, &b.context, &modulation)?]);
    }
    let state = b.state.as_ref();
    // A post-attention layer of block k: re-run only its stream's post-attention part from the
    // saved state; the other stream's output is the float one.
    if let (Stage::Block(k), Some((data, bi)), Some(stream), Some((img, txt))) =
        (stage, stage_data, id.stream(), state)
        && id.kind().is_post_attention()
        && let (Some(Some(parts)), Some(Some((fi, ft)))) = (data.parts.get(bi), data.next.get(bi))
    {
        let s = stream.index();
        let residual = [img, txt][s];
        let changed = m
            .post_attention(k, stream, residual, &parts.attention[s], &parts.chunks[s])?
            .ok_or_else(|| {
                SensitivityError::Bug(format!("{} has no post-attention part", id.name()))
            })?
            .output;
        let (img, txt) = match stream {
            Stream::Image => (changed, ft.clone()),
            Stream::Text => (fi.clone(), changed),
        };
        let last = k + 1 == m.blocks.len();
        return Ok(match scope {
            Scope::Block if last => vec![img],
            Scope::Block => vec![img, txt],
            _ => vec![m.forward_from(k + 1, img, txt, &b.modulation, b.latent_hw)?],
        });
    }
    if scope == Scope::Layer {
        let input = stage_data
            .and_then(|(d, i)| d.inputs.get(i))
            .and_then(|i| i.get(&id))
            .ok_or_else(|| SensitivityError::Bug(format!("no recorded input for {}", id.name())))?;
        return Ok(vec![linear.forward(input)?]);
    }
    let (img, txt) = state.ok_or_else(|| SensitivityError::Bug("no block state".into()))?;
    let fresh;
    let modulation = if id.moves_modulation() {
        fresh = m.modulation(&b.pooled, &b.timestep)?;
        &fresh
    } else {
        &b.modulation
    };
    let context = id == LayerId::ContextEmbedder;
    Ok(match (scope, stage) {
        (_, Stage::Final) => vec![m.final_layer(img, modulation, b.latent_hw)?],
        (Scope::Block, Stage::Embed) if context => vec![m.embed_text(&b.context)?],
        (Scope::Block, Stage::Embed) => vec![m.conditioning_vector(&b.pooled, &b.timestep)?],
        (Scope::Block, Stage::Block(k)) => {
            let (i, t) = m.joint_block(k, img, txt, modulation)?;
            let mut v = vec![i];
            v.extend(t);
            v
        }
        (_, Stage::Embed) if context => vec![m.forward_from(
            0,
            img.clone(),
            m.embed_text(&b.context)?,
            modulation,
            b.latent_hw,
        )?],
        (_, Stage::Embed) => {
            vec![m.forward_from(0, img.clone(), txt.clone(), modulation, b.latent_hw)?]
        }
        (_, Stage::Block(k)) => {
            vec![m.forward_from(k, img.clone(), txt.clone(), modulation, b.latent_hw)?]
        }
    })
}

/// The float input of a Linear outside the joint blocks (layer scope).
fn outer_input(
    m: &Mmdit,
    b: &SampleBatch,
    img: &Array,
    id: LayerId,
    cond: &crate::model::mmdit::Conditioning,
) -> Result<Option<Array>, SensitivityError> {
    Ok(match id {
        LayerId::PooledEmbedder(0) => Some(b.pooled.clone()),
        LayerId::PooledEmbedder(_) => Some(cond.pooled_hidden.clone()),
        LayerId::TimestepEmbedder(0) => Some(cond.timestep_features.clone()),
        LayerId::TimestepEmbedder(_) => Some(cond.timestep_hidden.clone()),
        LayerId::ContextEmbedder => Some(Mmdit::text_tokens(&b.context)?),
        LayerId::FinalLinear => Some(m.final_norm(img, &b.modulation)?),
        LayerId::FinalAdaln => Some(cond.adaln_input()?),
        LayerId::Block { .. } => None,
    })
}

/// Prepares a stage: records the float inputs of the stage's `layers` (layer scope) and the
/// block's float output and post-attention starting state (block and model scopes).
fn prepare_stage(
    m: &Mmdit,
    batches: &[SampleBatch],
    stage: Stage,
    scope: Scope,
    layers: &[LayerId],
) -> Result<StageData, SensitivityError> {
    let mut data = StageData::default();
    for b in batches {
        let mut inputs = HashMap::new();
        let mut refs = HashMap::new();
        refs.insert(Measured::Model, b.reference.clone());
        let mut next = None;
        let mut parts = None;
        let Some((img, txt)) = &b.state else {
            data.inputs.push(inputs);
            data.references.push(refs);
            data.next.push(None);
            data.parts.push(None);
            continue;
        };
        let pass = match stage {
            Stage::Block(k) => Some(BlockPass::run(m, k, img, txt, &b.modulation)?),
            _ => None,
        };
        if let (Some(pass), Stage::Block(k)) = (&pass, stage) {
            let (i, t, next_txt) = pass.outputs(txt)?;
            if scope != Scope::Layer {
                let state = AttentionState {
                    attention: pass.attention.clone(),
                    chunks: [pass.pre[0].chunks.clone(), pass.pre[1].chunks.clone()],
                };
                let mut all: Vec<&Array> = state.attention.iter().collect();
                all.extend(state.chunks.iter().flatten());
                mlx_rs::transforms::eval(all)?;
                parts = Some(state);
            }
            if scope == Scope::Block {
                let mut v = vec![i.clone()];
                v.extend(t);
                refs.insert(Measured::Block(k), per_record(&v, b.len())?);
            }
            next = Some((i, next_txt));
        }
        if scope == Scope::Layer {
            let cond = m.conditioning(&b.pooled, &b.timestep)?;
            let adaln_input = cond.adaln_input()?;
            for &id in layers {
                let input = match (&pass, id) {
                    (Some(pass), LayerId::Block { stream, kind, .. }) => {
                        pass.input(stream, kind, &adaln_input)
                    }
                    _ => outer_input(m, b, img, id, &cond)?,
                };
                let input = input
                    .ok_or_else(|| SensitivityError::Bug(format!("no input for {}", id.name())))?;
                inputs.insert(id, input);
            }
            mlx_rs::transforms::eval(inputs.values())?;
        }
        if scope == Scope::Block && stage == Stage::Embed {
            refs.insert(
                Measured::Context,
                per_record(std::slice::from_ref(txt), b.len())?,
            );
            refs.insert(
                Measured::Conditioning,
                per_record(&[m.conditioning_vector(&b.pooled, &b.timestep)?], b.len())?,
            );
        }
        if let Some((i, t)) = &next {
            mlx_rs::transforms::eval([i, t])?;
        }
        data.inputs.push(inputs);
        data.references.push(refs);
        data.next.push(next);
        data.parts.push(parts);
    }
    Ok(data)
}

/// Moves every batch's state through float block `k` (reusing outputs already computed).
fn advance(
    m: &Mmdit,
    batches: &mut [SampleBatch],
    k: usize,
    mut computed: Vec<Option<(Array, Array)>>,
) -> Result<(), SensitivityError> {
    computed.resize(batches.len(), None);
    for (b, done) in batches.iter_mut().zip(computed) {
        if let Some(next) = done {
            b.state = Some(next);
        } else if let Some((img, txt)) = b.state.take() {
            let (i, t) = m.joint_block(k, &img, &txt, &b.modulation)?;
            let t = t.unwrap_or(txt);
            mlx_rs::transforms::eval([&i, &t])?;
            b.state = Some((i, t));
        }
    }
    Ok(())
}

/// The rows of `sensitivity.csv`.
pub fn report_csv(report: &SensitivityReport) -> String {
    let mut csv = String::from(
        "name,block,kind,params,bits,group_size,bucket,mse,sqnr_db,cosine,n_samples,mse_stderr\n",
    );
    for l in &report.layers {
        for r in &l.results {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{:e},{},{},{},{}\n",
                l.name,
                l.block.map_or(String::new(), |b| b.to_string()),
                l.kind.name(),
                l.params,
                r.bits,
                r.group_size,
                r.bucket,
                r.mse,
                r.sqnr_db,
                r.cosine.map_or(String::new(), |c| c.to_string()),
                r.n_samples,
                r.mse_stderr.map_or(String::new(), |e| format!("{e:e}")),
            ));
        }
    }
    csv
}

/// Writes `sensitivity.json` and `sensitivity.csv` (atomically).
pub fn write_report(dir: &Path, report: &SensitivityReport) -> Result<(), SensitivityError> {
    std::fs::create_dir_all(dir).map_err(|source| SensitivityError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // JSON has no NaN or infinity (serde_json writes null, which no reader accepts): the
    // sweep refuses non-finite inputs and outputs before they reach a result.
    if let Some((l, r)) = report.layers.iter().find_map(|l| {
        l.results
            .iter()
            .find(|r| {
                !(r.mse.is_finite()
                    && r.sqnr_db.is_finite()
                    && r.cosine.is_none_or(f64::is_finite)
                    && r.mse_stderr.is_none_or(f64::is_finite))
            })
            .map(|r| (l, r))
    }) {
        return Err(SensitivityError::Bug(format!(
            "a non-finite result for {} at {} bits ({}): mse {}, sqnr {}, cosine {:?}, standard error {:?}",
            l.name, r.bits, r.bucket, r.mse, r.sqnr_db, r.cosine, r.mse_stderr
        )));
    }
    // Plain structs with string keys: serializing cannot fail.
    let json = serde_json::to_string_pretty(report)
        .expect("a sensitivity report serializes (plain structs, string map keys)");
    let path = dir.join(REPORT_JSON);
    crate::fsutil::write_atomic(&path, json.as_bytes())
        .map_err(|source| SensitivityError::Io { path, source })?;
    let csv = report_csv(report);
    let path = dir.join(REPORT_CSV);
    crate::fsutil::write_atomic(&path, csv.as_bytes())
        .map_err(|source| SensitivityError::Io { path, source })
}

/// Reads a `sensitivity.json`.
pub fn read_report(path: &Path) -> Result<SensitivityReport, SensitivityError> {
    let text = std::fs::read_to_string(path).map_err(|source| SensitivityError::Io {
        path: path.to_owned(),
        source,
    })?;
    let report: SensitivityReport =
        serde_json::from_str(&text).map_err(|source| SensitivityError::NotAReport {
            path: path.to_owned(),
            source,
        })?;
    if report.schema != REPORT_SCHEMA {
        return Err(SensitivityError::WrongSchema {
            path: path.to_owned(),
            schema: report.schema,
        });
    }
    Ok(report)
}

/// The model as recorded: a model folder by its canonical path (`./m` and `m` are one model),
/// a built-in name as is.
fn model_identity(name: &str) -> String {
    match name {
        "tiny" | "sd3-medium" | "auto" => name.to_owned(),
        path => Path::new(path)
            .canonicalize()
            .map_or_else(|_| path.to_owned(), |p| p.display().to_string()),
    }
}

/// The report a previous run left in the output folder: None when there is none; an error
/// when there is a file that is not one (resuming would discard it).
fn read_previous(path: &Path) -> Result<Option<SensitivityReport>, SensitivityError> {
    match std::fs::read_to_string(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SensitivityError::Io {
                path: path.to_owned(),
                source,
            });
        }
    }
    read_report(path).map(Some).map_err(|e| match e {
        SensitivityError::NotAReport { path, source } => SensitivityError::UnreadablePrevious {
            path,
            reason: format!("not a sensitivity report ({source})"),
        },
        SensitivityError::WrongSchema { path, schema } => SensitivityError::UnreadablePrevious {
            path,
            reason: format!("schema {schema:?}, not {REPORT_SCHEMA:?}"),
        },
        other => other,
    })
}

fn validate_config(cfg: &SensitivityConfig) -> Result<Option<regex::Regex>, SensitivityError> {
    if cfg.bits.is_empty() {
        return Err(SensitivityError::NoBits);
    }
    for &bits in &cfg.bits {
        LayerQuant {
            bits,
            group_size: cfg.group_size,
        }
        .validate()?;
    }
    if !cfg.use_cache && cfg.scope != Scope::Model {
        return Err(SensitivityError::NaiveNeedsModelScope(cfg.scope));
    }
    if let Some(k) = cfg.probes
        && !(1..=super::linearized::MAX_PROBES).contains(&k)
    {
        return Err(SensitivityError::ProbesOutOfRange(k));
    }
    if cfg.scope != Scope::Linearized && (cfg.probes.is_some() || cfg.probe_seed != 0) {
        return Err(SensitivityError::ProbesNeedLinearized(cfg.scope));
    }
    match &cfg.layers {
        Some(r) => {
            regex::Regex::new(r)
                .map(Some)
                .map_err(|source| SensitivityError::BadLayerPattern {
                    pattern: r.clone(),
                    source: Box::new(source),
                })
        }
        None => Ok(None),
    }
}

/// Runs (or resumes) a sensitivity sweep.
///
/// The output folder is locked for the whole run (a second writer is refused at once). A
/// folder holding a run with other settings or over other data is refused with the
/// differences listed, unless `overwrite`; a run with the same settings and data resumes
/// after its measured layers, and its file ends equal, byte for byte, to an uninterrupted
/// run's.
pub fn run_sensitivity(
    cfg: &SensitivityConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(SensitivityEvent),
) -> Result<SensitivityReport, SensitivityError> {
    run_sensitivity_distributed(cfg, Distribution::whole(), cancel, on_event)
}

/// Runs (or resumes) this process's part of a sweep split across ranks (see `quant::shards`):
/// the layers the cost model gives it, measured into `OUTPUT/shard-R-of-N/` exactly as a
/// whole run measures them. With a group, the ranks report progress to each other at every
/// stage and rank 0 writes the merged `sensitivity.json`/`.csv` into the output folder (and
/// returns the merged report); without one (`--shard R/N`), `merge_shard_folders` does that
/// once every part has finished. `Distribution::whole()` is [`run_sensitivity`].
pub fn run_sensitivity_distributed(
    cfg: &SensitivityConfig,
    dist: Distribution,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(SensitivityEvent),
) -> Result<SensitivityReport, SensitivityError> {
    let cfg = &SensitivityConfig {
        bits: normalized_bits(&cfg.bits),
        // A stride of 1 is every step.
        step_stride: cfg.step_stride.filter(|&k| k > 1),
        ..cfg.clone()
    };
    let regex = validate_config(cfg)?;
    let shard = dist.shard;
    if shard.is_part() && cfg.scope == Scope::Linearized {
        return Err(super::shards::ShardsError::LinearizedWhole.into());
    }
    // A part's results live in its own folder; rank 0 of a group also writes the merged files.
    let out_dir = super::shards::shard_dir(&cfg.output_dir, shard);
    let _merged_lock = if shard.is_part() && dist.writes_merged() {
        Some(crate::fsutil::FolderLock::acquire(&cfg.output_dir)?)
    } else {
        None
    };
    // Before any work: the output folder (a file there is refused) and its two files.
    let _lock = crate::fsutil::FolderLock::acquire(&out_dir)?;
    let json_path = out_dir.join(REPORT_JSON);
    for path in [&json_path, &out_dir.join(REPORT_CSV)] {
        crate::fsutil::destination(path).map_err(|source| SensitivityError::Io {
            path: path.clone(),
            source,
        })?;
    }
    crate::fsutil::remove_temporary_files(&out_dir, 1)
        .map_err(|(path, source)| SensitivityError::Io { path, source })?;
    let previous = if cfg.overwrite {
        // An unfinished linearized run's sums go with the run they belong to.
        super::linearized::remove_state(&out_dir)?;
        None
    } else {
        match read_previous(&json_path)? {
            // A part without results of its own starts from the merged (or whole) run's.
            None if shard.is_part() => read_previous(&cfg.output_dir.join(REPORT_JSON))?,
            p => p,
        }
    };
    let files = crate::model::source::resolve(&cfg.model, cancel, &mut |e| {
        on_event(SensitivityEvent::Model(e))
    })
    .map_err(boxed)?;
    let mut mmdit = crate::model::source::load_mmdit_inferred(&files.checkpoint, cfg.dtype.mlx())
        .map_err(boxed)?;
    let mmdit_cfg = mmdit.config.clone();
    let all_layers = mmdit_linear_layers(&mmdit_cfg);
    let order: HashMap<String, usize> = all_layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), i))
        .collect();
    let registry: Vec<LinearLayer> = all_layers
        .into_iter()
        .filter(|l| regex.as_ref().is_none_or(|r| r.is_match(&l.name)))
        .collect();
    if registry.is_empty() {
        return Err(SensitivityError::NoLayerMatches(
            cfg.layers.clone().unwrap_or_default(),
        ));
    }
    let job_layer_names: Vec<String> = registry.iter().map(|l| l.name.clone()).collect();
    let job_layers = registry.len();
    let registry = super::shards::layers_of_shard(registry, &mmdit_cfg, cfg, shard);
    let set = CalibrationSet::open(&cfg.calib_dir, &OpenOptions::default()).map_err(boxed)?;
    let filter = SampleFilter {
        max_images: cfg.max_images,
        step_stride: cfg.step_stride,
        bucket: None,
    };
    let metas = set.select(&filter);
    if metas.is_empty() {
        return Err(SensitivityError::NoSamples(set.dir().to_owned()));
    }
    let settings = RunSettings {
        model: model_identity(&files.name),
        model_config: mmdit_cfg.clone(),
        // `./cal` and `cal` are one folder.
        calib_dir: cfg
            .calib_dir
            .canonicalize()
            .unwrap_or_else(|_| cfg.calib_dir.clone()),
        bits: cfg.bits.clone(),
        group_size: cfg.group_size,
        // A limit at or above the folder's images selects them all.
        max_images: cfg.max_images.filter(|&n| n < set.num_images()),
        step_stride: cfg.step_stride,
        dtype: cfg.dtype,
        samples: metas.iter().map(|m| m.file.clone()).collect(),
        metric_scope: cfg.scope,
        inputs: Some(InputIdentity {
            calibration: set
                .manifest()
                .and_then(|m| m.extra.get("generation").cloned())
                .map(settings_of_generation)
                .unwrap_or(serde_json::Value::Null),
            checkpoint: FileStamp::of(&files.checkpoint, &files.checkpoint.display().to_string())?,
            sample_files: metas
                .iter()
                .map(|m| FileStamp::of(&m.path, &m.file))
                .collect::<Result<_, _>>()?,
        }),
        probes: (cfg.scope == Scope::Linearized).then(|| {
            let batch_size = cfg.batch_size.max(1);
            super::linearized::ProbeSettings {
                per_pass: cfg
                    .probes
                    .unwrap_or_else(|| super::linearized::auto_probes(metas.len(), batch_size)),
                seed: cfg.probe_seed,
                batch_size,
            }
        }),
    };
    let mut report = match previous {
        Some(previous) => {
            let d = settings_differences(&previous.settings, &settings);
            if !d.is_empty() {
                return Err(SensitivityError::SettingsDiffer {
                    dir: cfg.output_dir.clone(),
                    differences: d.join("; "),
                });
            }
            // The same run: keep its results (this part's, when split), under this run's
            // (equal) settings.
            let mut previous = previous;
            if shard.is_part() {
                let mine: Vec<&str> = registry.iter().map(|l| l.name.as_str()).collect();
                previous.layers.retain(|l| mine.contains(&l.name.as_str()));
                previous.pending.retain(|n| mine.contains(&n.as_str()));
            }
            SensitivityReport {
                settings,
                job_layers: shard.is_part().then(|| job_layer_names.clone()),
                ..previous
            }
        }
        None => SensitivityReport {
            schema: REPORT_SCHEMA.into(),
            settings,
            layers: Vec::new(),
            pending: Vec::new(),
            job_layers: shard.is_part().then(|| job_layer_names.clone()),
        },
    };
    if cfg.scope == Scope::Linearized {
        let inputs = super::linearized::SweepInputs {
            set: &set,
            metas: &metas,
            layers: &registry,
            cfg,
        };
        return super::linearized::sweep(&mmdit, inputs, report, cancel, on_event);
    }
    let done: Vec<String> = report.layers.iter().map(|l| l.name.clone()).collect();
    let todo: Vec<(usize, &LinearLayer)> = registry
        .iter()
        .enumerate()
        .filter(|(_, l)| !done.contains(&l.name))
        .collect();
    report.pending = todo.iter().map(|(_, l)| l.name.clone()).collect();
    on_event(SensitivityEvent::Preparing {
        samples: metas.len(),
    });
    // The naive oracle runs one record at a time (a full forward per layer, bits and sample).
    let batch_size = if cfg.use_cache { cfg.batch_size } else { 1 };
    let mut batches = load_batches(&mmdit, &set, &metas, batch_size, cancel, false)?;
    if !cfg.use_cache {
        for b in &mut batches {
            b.state = None;
        }
    }
    on_event(SensitivityEvent::Planned {
        layers: registry.len(),
        already_done: registry.len() - todo.len(),
        bits: cfg.bits.len(),
        samples: metas.len(),
    });
    let depth = mmdit_cfg.depth;
    let stages: Vec<Stage> = std::iter::once(Stage::Embed)
        .chain((0..depth).map(Stage::Block))
        .chain(std::iter::once(Stage::Final))
        .collect();
    let last_needed = todo.iter().map(|(_, l)| Stage::of(l.id)).max();
    let mut committed = 0;
    for stage in stages {
        if cancel.is_cancelled() {
            // A rank that stops leaves the group: the others fail at their next collective.
            return Ok(report);
        }
        if let Some(g) = dist.group {
            // Every rank reports at every stage, whatever its own work there.
            let done = g
                .count("the progress count", report.layers.len())
                .map_err(boxed)?;
            on_event(SensitivityEvent::JobProgress {
                done,
                total: job_layers,
                ranks: g.size(),
            });
        }
        if last_needed.is_none_or(|last| stage > last) {
            if dist.group.is_some() {
                continue;
            }
            break;
        }
        let here: Vec<&(usize, &LinearLayer)> = todo
            .iter()
            .filter(|(_, l)| Stage::of(l.id) == stage)
            .collect();
        let mut computed = Vec::new();
        if !here.is_empty() {
            let data = if cfg.use_cache {
                let ids: Vec<LayerId> = here.iter().map(|(_, l)| l.id).collect();
                prepare_stage(&mmdit, &batches, stage, cfg.scope, &ids)?
            } else {
                StageData::default()
            };
            for (index, layer) in here {
                if cancel.is_cancelled() {
                    break;
                }
                let t = Instant::now();
                let results = measure_layer(&mut mmdit, &batches, &data, layer, cfg)?;
                report.layers.push(LayerResult {
                    name: layer.name.clone(),
                    block: layer.block,
                    kind: layer.kind,
                    params: layer.params,
                    results,
                });
                report
                    .layers
                    .sort_by_key(|l| order.get(&l.name).copied().unwrap_or(usize::MAX));
                report.pending.retain(|n| n != &layer.name);
                write_report(&out_dir, &report)?;
                on_event(SensitivityEvent::LayerDone {
                    index: *index,
                    id: layer.id,
                    name: layer.name.clone(),
                    seconds: t.elapsed().as_secs_f64(),
                });
                committed += 1;
                crate::dist::group::test_fault_point(shard.rank, committed);
            }
            computed = data.next;
        }
        if let Stage::Block(k) = stage
            && cfg.use_cache
        {
            advance(&mmdit, &mut batches, k, computed)?;
        }
    }
    if cancel.is_cancelled() {
        return Ok(report);
    }
    if todo.is_empty() {
        write_report(&out_dir, &report)?;
    }
    match dist.group {
        Some(g) => {
            let merged = super::shards::merge_over_group(g, report, &cfg.output_dir)?;
            if g.rank() == 0 {
                on_event(SensitivityEvent::JobProgress {
                    done: merged.layers.len(),
                    total: job_layers,
                    ranks: g.size(),
                });
            }
            Ok(merged)
        }
        None => Ok(report),
    }
}

/// Measures one layer at every bit width.
fn measure_layer(
    mmdit: &mut Mmdit,
    batches: &[SampleBatch],
    data: &StageData,
    layer: &LinearLayer,
    cfg: &SensitivityConfig,
) -> Result<Vec<BucketResult>, SensitivityError> {
    let mut results = Vec::new();
    if !layer.in_features.is_multiple_of(cfg.group_size as usize) {
        return Ok(results); // left float: nothing to measure
    }
    let id = layer.id;
    let original = mmdit.linear_mut(id).ok_or_else(|| no_layer(id))?.clone();
    let key = Measured::of(cfg.scope, id);
    // Layer scope: the float outputs of the layer itself.
    let mut layer_refs: Vec<Vec<Vec<f32>>> = Vec::new();
    if cfg.scope == Scope::Layer && cfg.use_cache {
        for (bi, b) in batches.iter().enumerate() {
            let out = measure(mmdit, b, id, cfg.scope, true, Some((data, bi)), &original)?;
            layer_refs.push(per_record(&out, b.len())?);
        }
    }
    for &bits in &cfg.bits {
        let q = fake_quantize(
            &original.weight,
            LayerQuant {
                bits,
                group_size: cfg.group_size,
            },
        )?;
        q.eval()?;
        let quantized = Linear {
            weight: q.clone(),
            ..original.clone()
        };
        swap_weight(mmdit, id, q)?;
        let mut groups = Groups::default();
        let mut outcome = Ok(());
        for (bi, b) in batches.iter().enumerate() {
            let reference = if cfg.scope == Scope::Layer && cfg.use_cache {
                layer_refs.get(bi)
            } else if cfg.use_cache {
                data.references.get(bi).and_then(|r| r.get(&key))
            } else {
                Some(&b.reference)
            };
            let Some(reference) = reference else {
                outcome = Err(SensitivityError::Bug(format!(
                    "no reference {key:?} for {}",
                    layer.name
                )));
                break;
            };
            let out = measure(
                mmdit,
                b,
                id,
                cfg.scope,
                cfg.use_cache,
                Some((data, bi)),
                &quantized,
            )
            .and_then(|o| per_record(&o, b.len()));
            match out {
                Ok(out) => {
                    // A NaN or infinite output has no MSE or SQNR (JSON would hold null).
                    if let Some(j) = out.iter().position(|q| q.iter().any(|v| !v.is_finite())) {
                        outcome = Err(SensitivityError::NonFiniteOutput {
                            layer: layer.name.clone(),
                            bits,
                            path: b.paths[j].clone(),
                        });
                        break;
                    }
                    for (j, q) in out.iter().enumerate() {
                        groups.add(b.buckets[j], &reference[j], q);
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        swap_weight(mmdit, id, original.weight.clone())?;
        outcome?;
        results.extend(groups.results(bits, cfg.group_size));
    }
    Ok(results)
}

/// How two sweeps rank layers at one bit width (the `all` bucket's SQNR, over the layers both
/// measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    pub bits: i32,
    /// Spearman's rho of the two rankings.
    pub spearman: f64,
    pub layers: usize,
    /// How many of the reference's [`TOP_LAYERS`] most sensitive layers (lowest SQNR) are
    /// among the other's (out of `min(TOP_LAYERS, layers)`): the layers a plan keeps wide.
    pub top_overlap: usize,
}

/// Each layer's `all`-bucket SQNR at `bits` (layers without that result left out).
fn all_bucket_sqnr(report: &SensitivityReport, bits: i32) -> Vec<(&str, f64)> {
    report
        .layers
        .iter()
        .filter_map(|l| {
            l.results
                .iter()
                .find(|r| r.bits == bits && r.bucket == Bucket::All)
                .map(|r| (l.name.as_str(), r.sqnr_db))
        })
        .collect()
}

/// The `n` layers with the lowest `all`-bucket SQNR at `bits`, most sensitive first (ties by
/// name).
pub fn most_sensitive(report: &SensitivityReport, bits: i32, n: usize) -> Vec<String> {
    let mut rows = all_bucket_sqnr(report, bits);
    rows.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    rows.into_iter()
        .take(n)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// A `--layers` pattern that selects exactly `names`.
pub fn layers_pattern(names: &[String]) -> String {
    let alternatives: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
    format!("^({})$", alternatives.join("|"))
}

/// The size of the most-sensitive set [`Agreement::top_overlap`] compares.
pub const TOP_LAYERS: usize = 10;

/// The rank agreement between two sensitivity reports, per bit width both measured.
pub fn rank_agreement(reference: &SensitivityReport, proxy: &SensitivityReport) -> Vec<Agreement> {
    let sqnr = |r: &SensitivityReport, bits: i32| -> HashMap<String, f64> {
        all_bucket_sqnr(r, bits)
            .into_iter()
            .map(|(name, v)| (name.to_owned(), v))
            .collect()
    };
    let mut out = Vec::new();
    for &bits in &reference.settings.bits {
        if !proxy.settings.bits.contains(&bits) {
            continue;
        }
        let (a, b) = (sqnr(reference, bits), sqnr(proxy, bits));
        let mut names: Vec<&String> = a.keys().filter(|n| b.contains_key(*n)).collect();
        names.sort();
        let xs: Vec<f64> = names.iter().map(|n| a[*n]).collect();
        let ys: Vec<f64> = names.iter().map(|n| b[*n]).collect();
        let top = |v: &[f64]| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]).then(i.cmp(&j)));
            idx.truncate(TOP_LAYERS);
            idx
        };
        let (ta, tb) = (top(&xs), top(&ys));
        out.push(Agreement {
            bits,
            spearman: spearman(&xs, &ys),
            layers: names.len(),
            top_overlap: ta.iter().filter(|i| tb.contains(i)).count(),
        });
    }
    out
}

/// Ranks with ties given their average rank (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rho: the Pearson correlation of the ranks (NaN with fewer than 2 points or a
/// constant side).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let (rx, ry) = (ranks(&x[..n]), ranks(&y[..n]));
    let mean = (n as f64 + 1.0) / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (rx[i] - mean, ry[i] - mean);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    sxy / (sxx * syy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_and_tied_data() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&x, &[10.0, 20.0, 25.0, 80.0, 90.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties: ranks of [1,3,2,2,5] are [1,4,2.5,2.5,5]; centred, Σxy = 6.5, Σx² = 10,
        // Σy² = 9.5, so rho = 6.5/√95 (scipy.stats.spearmanr's definition).
        let rho = spearman(&x, &[1.0, 3.0, 2.0, 2.0, 5.0]);
        assert!((rho - 6.5 / 95f64.sqrt()).abs() < 1e-12, "{rho}");
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert!(spearman(&[1.0], &[2.0]).is_nan());
    }

    #[test]
    fn stages_follow_the_model_order() {
        let depth = 3;
        let stages: Vec<Stage> = crate::model::registry::mmdit_layer_ids(depth)
            .into_iter()
            .map(Stage::of)
            .collect();
        assert!(stages.windows(2).all(|w| w[0] <= w[1]), "{stages:?}");
        assert_eq!(Stage::of(LayerId::ContextEmbedder), Stage::Embed);
        assert_eq!(
            Stage::of(LayerId::Block {
                block: 2,
                stream: Stream::Text,
                kind: LayerKind::MlpFc2
            }),
            Stage::Block(2)
        );
        assert_eq!(Stage::of(LayerId::FinalAdaln), Stage::Final);
        assert!(Stage::Embed < Stage::Block(0) && Stage::Block(23) < Stage::Final);
    }

    #[test]
    fn groups_report_each_bucket_and_all_in_order() {
        let mut g = Groups::default();
        g.add(Bucket::Late, &[1.0, 2.0], &[1.0, 1.0]);
        g.add(Bucket::Early, &[1.0, 0.0], &[1.0, 0.0]);
        let rows = g.results(4, 64);
        let buckets: Vec<Bucket> = rows.iter().map(|r| r.bucket).collect();
        assert_eq!(buckets, [Bucket::Early, Bucket::Late, Bucket::All]);
        // late: error 1 over 2 elements; all: error 1 over 4 elements, reference energy 6.
        assert_eq!(rows[1].mse, 0.5);
        assert_eq!(rows[2].mse, 0.25);
        assert!((rows[2].sqnr_db - 10.0 * 6f64.log10()).abs() < 1e-12);
        assert_eq!((rows[0].sqnr_db, rows[0].cosine), (MAX_SQNR_DB, Some(1.0)));
        assert_eq!(rows[2].n_samples, 2);
    }

    fn fixture() -> SensitivityReport {
        serde_json::from_str(include_str!("../../tests/fixtures/sensitivity-tiny.json")).unwrap()
    }

    #[test]
    fn a_non_finite_result_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = fixture();
        let layer = report
            .layers
            .iter_mut()
            .find(|l| !l.results.is_empty())
            .unwrap();
        layer.results[0].mse = f64::NAN;
        let e = write_report(dir.path(), &report).unwrap_err();
        assert!(e.to_string().contains("non-finite result"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn settings_are_compared_by_meaning() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("cal")).unwrap();
        let mut a = fixture().settings;
        a.calib_dir = root.path().join("cal");
        a.bits = vec![4, 2];
        a.step_stride = Some(1);
        a.inputs = Some(InputIdentity {
            calibration: serde_json::json!({"seed": 0}),
            checkpoint: FileStamp {
                file: "m.safetensors".into(),
                bytes: 1,
                modified_ns: 1,
            },
            sample_files: vec![FileStamp {
                file: "samples/000000_000.npz".into(),
                bytes: 10,
                modified_ns: 5,
            }],
        });
        let mut b = a.clone();
        b.calib_dir = root.path().join("cal/../cal/.");
        b.bits = vec![2, 4, 2];
        b.step_stride = None;
        assert_eq!(settings_differences(&a, &b), Vec::<String>::new());
        b.bits = vec![2, 8];
        b.inputs.as_mut().unwrap().sample_files[0].modified_ns = 6;
        let d = settings_differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0], "bits: [2, 4] → [2, 8]");
        assert!(d[1].contains("1 sample file(s) rewritten since"), "{d:?}");
        b.inputs = None;
        assert!(
            settings_differences(&a, &b)
                .iter()
                .any(|d| d.starts_with("inputs: not recorded"))
        );
        assert_eq!(normalized_bits(&[8, 2, 2, 4]), [2, 4, 8]);
    }

    #[test]
    fn typed_fields_keep_the_file_format() {
        let text = include_str!("../../tests/fixtures/sensitivity-tiny.json");
        let report: SensitivityReport = serde_json::from_str(text).unwrap();
        let original: serde_json::Value = serde_json::from_str(text).unwrap();
        // (The model configuration's float32 epsilon does not round-trip through f64 text.)
        assert_eq!(
            serde_json::to_value(&report.layers).unwrap(),
            original["layers"]
        );
        assert_eq!(
            serde_json::to_value(report.settings.metric_scope).unwrap(),
            original["settings"]["metric_scope"]
        );
        assert_eq!(report.settings.metric_scope, Scope::Model);
        let fc1 = report
            .layers
            .iter()
            .find(|l| l.kind == LayerKind::MlpFc1)
            .unwrap();
        assert_eq!(fc1.results.last().unwrap().bucket, Bucket::All);
        let csv = report_csv(&report);
        let row = csv.lines().find(|l| l.starts_with(&fc1.name)).unwrap();
        assert!(
            row.contains(",mlp_fc1,") && row.contains(",early,"),
            "{row}"
        );
    }
}

//! Per-layer, per-bit sensitivity of the MMDiT on calibration samples, by step bucket.
//!
//! For each selected layer and bit width, that layer alone is quantized (simulated: the same
//! numbers as the real kernels, see `tests/quant.rs`) and the MMDiT's output for each
//! calibration record (the CFG batch of 2: x duplicated, `timestep`, `conditioning`,
//! `pooled_conditioning`) is compared with the float model's output. Metrics over all elements
//! of all samples of a group (`early`, `mid`, `late`, `all`): `mse`, `sqnr_db`
//! (10·log10(Σy²/Σ(y−ŷ)²)) and `cosine` (mean over samples of the flattened outputs' cosine).
//!
//! Cached evaluation: the float model's block inputs are computed once per sample; a layer in
//! block k re-runs blocks k.. only (embedders re-run every block, the final layer none), and each
//! (layer, bits) is quantized once for all samples. `use_cache = false` is the naive oracle (a
//! full forward per layer, bit width and sample); both give the same numbers.
//! Memory bound of the cache: samples × (depth + 1) × (image + text tokens) × hidden × 2 (CFG)
//! × 4 bytes (about 150 MB per sample for SD3 medium at 512 px).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use crate::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleKey};
use crate::job::CancelToken;
use crate::model::config::ModelDtype;
use crate::model::mmdit::{Mmdit, Modulation};
use crate::model::registry::mmdit_linear_layers;

use super::{LayerQuant, SUPPORTED_BITS, SUPPORTED_GROUPS, fake_quantize};

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
}

/// SQNR reported when a quantized layer does not move the output at all (JSON has no infinity).
pub const MAX_SQNR_DB: f64 = 300.0;

/// One row of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketResult {
    pub bits: i32,
    pub group_size: i32,
    pub bucket: String,
    pub mse: f64,
    pub sqnr_db: f64,
    pub cosine: f64,
    pub n_samples: usize,
}

/// A layer's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerResult {
    pub name: String,
    pub block: Option<usize>,
    pub kind: String,
    pub params: usize,
    pub results: Vec<BucketResult>,
}

/// `sensitivity.json` (schema `sd3lab.sensitivity/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityReport {
    pub schema: String,
    pub settings: RunSettings,
    pub layers: Vec<LayerResult>,
}

/// What the results depend on (a rerun with other settings starts over).
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
    pub metric_scope: String,
}

/// Progress of a run.
#[derive(Debug, Clone)]
pub enum SensitivityEvent {
    Planned {
        layers: usize,
        already_done: usize,
        bits: usize,
        samples: usize,
    },
    LayerDone {
        index: usize,
        name: String,
        seconds: f64,
    },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SensitivityError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error(transparent)]
    Calib(#[from] Box<crate::calib::CalibError>),
    #[error(transparent)]
    Weights(#[from] Box<crate::model::weights::WeightsError>),
    #[error(transparent)]
    Source(#[from] Box<crate::model::source::SourceError>),
}

/// One calibration record ready for the MMDiT.
struct Sample {
    bucket: Bucket,
    x: Array,
    context: Array,
    modulation: Modulation,
    pooled: Array,
    timestep: Array,
    latent_hw: (i32, i32),
    reference: Vec<f32>,
    /// Float block inputs (image, text) for blocks 0..=depth.
    cache: Vec<(Array, Array)>,
}

/// Accumulates the metrics of one group.
#[derive(Default, Clone)]
struct Acc {
    err: f64,
    reference: f64,
    elements: usize,
    cosine: f64,
    samples: usize,
}

impl Acc {
    fn add(&mut self, y: &[f32], q: &[f32]) {
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

    fn result(&self, bits: i32, group_size: i32, bucket: &str) -> BucketResult {
        let mse = self.err / self.elements.max(1) as f64;
        let sqnr_db = if self.err > 0.0 {
            (10.0 * (self.reference / self.err).log10()).min(MAX_SQNR_DB)
        } else {
            MAX_SQNR_DB
        };
        BucketResult {
            bits,
            group_size,
            bucket: bucket.to_owned(),
            mse,
            sqnr_db,
            cosine: self.cosine / self.samples.max(1) as f64,
            n_samples: self.samples,
        }
    }
}

fn boxed<E>(e: E) -> Box<E> {
    Box::new(e)
}

/// Where a layer's effect starts: `None` = the whole model from the embeddings.
fn start_block(name: &str) -> Option<usize> {
    name.strip_prefix("multimodal_transformer_blocks.")
        .and_then(|r| r.split('.').next())
        .and_then(|b| b.parse().ok())
}

/// Swaps a layer's float weight, returning the previous one.
fn swap_weight(m: &mut Mmdit, name: &str, w: Array) -> Result<Array, SensitivityError> {
    let mut layers = m.linears_mut();
    let (_, l) = layers
        .iter_mut()
        .find(|(n, _)| n == name)
        .ok_or_else(|| SensitivityError::Config(format!("no layer {name}")))?;
    Ok(std::mem::replace(&mut l.weight, w))
}

fn layer_weight(m: &mut Mmdit, name: &str) -> Option<Array> {
    m.linears_mut()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, l)| l.weight.clone())
}

/// The MMDiT's output for a sample with the current weights.
fn evaluate(
    m: &Mmdit,
    s: &Sample,
    layer: &str,
    use_cache: bool,
) -> Result<Vec<f32>, SensitivityError> {
    let out = if !use_cache {
        let modulation = m.modulation(&s.pooled, &s.timestep)?;
        m.forward(&s.x, &s.context, &modulation)?
    } else if layer.starts_with("final_layer.linear") {
        let (img, _) = &s.cache[m.blocks.len()];
        m.final_layer(img, &s.modulation, s.latent_hw)?
    } else if layer.contains("adaLN")
        || layer.starts_with("y_embedder")
        || layer.starts_with("t_embedder")
    {
        let modulation = m.modulation(&s.pooled, &s.timestep)?;
        let from = if layer.starts_with("final_layer") {
            m.blocks.len()
        } else {
            start_block(layer).unwrap_or(0)
        };
        if from == m.blocks.len() {
            let (img, _) = &s.cache[from];
            m.final_layer(img, &modulation, s.latent_hw)?
        } else {
            let (img, txt) = &s.cache[from];
            m.forward_from(
                from,
                img.clone(),
                txt.clone(),
                &modulation,
                s.latent_hw,
                None,
            )?
        }
    } else if layer == "context_embedder" {
        let (img, _) = &s.cache[0];
        m.forward_from(
            0,
            img.clone(),
            m.embed_text(&s.context)?,
            &s.modulation,
            s.latent_hw,
            None,
        )?
    } else {
        let from = start_block(layer).unwrap_or(0);
        let (img, txt) = &s.cache[from];
        m.forward_from(
            from,
            img.clone(),
            txt.clone(),
            &s.modulation,
            s.latent_hw,
            None,
        )?
    };
    Ok(crate::model::nn::to_vec_f32(&out)?)
}

/// Loads the selected records and computes the float references (and the block cache).
fn load_samples(
    m: &Mmdit,
    set: &CalibrationSet,
    filter: &SampleFilter,
    use_cache: bool,
) -> Result<(Vec<Sample>, Vec<String>), SensitivityError> {
    let dtype = m.dtype();
    let mut samples = Vec::new();
    let mut names = Vec::new();
    for meta in set.select(filter) {
        let load = |k: SampleKey| -> Result<Array, SensitivityError> {
            let a = set.load(meta, k).map_err(boxed)?;
            let shape: Vec<i32> = a.shape.iter().map(|&d| d as i32).collect();
            Ok(Array::from_slice(&a.data.to_f32_vec(), &shape).as_dtype(dtype)?)
        };
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
            return Err(SensitivityError::Config(format!(
                "{}: the calibration data does not fit this model (x {:?}, conditioning {:?}, pooled {:?}; the model takes {} latent channels, {}-wide text, {}-wide pooled): it was made with another model",
                meta.path.display(),
                xs,
                context.shape(),
                pooled.shape(),
                cfg.latent_channels,
                cfg.context_dim,
                cfg.pooled_dim
            )));
        }
        let batch = context.shape()[0];
        let x = if xs[0] == batch {
            x
        } else {
            mlx_rs::ops::concatenate(&vec![x; batch as usize], 0)?
        };
        let timestep = Array::from_f32(meta.timestep as f32).as_dtype(dtype)?;
        let modulation = m.modulation(&pooled, &timestep)?;
        let latent_hw = (xs[1], xs[2]);
        let mut cache = Vec::new();
        let out = if use_cache {
            m.forward_from(
                0,
                m.embed_image(&x)?,
                m.embed_text(&context)?,
                &modulation,
                latent_hw,
                Some(&mut cache),
            )?
        } else {
            m.forward(&x, &context, &modulation)?
        };
        let reference = crate::model::nn::to_vec_f32(&out)?;
        for (a, b) in &cache {
            mlx_rs::transforms::eval([a, b])?;
        }
        modulation.eval()?;
        names.push(meta.file.clone());
        samples.push(Sample {
            bucket: meta.bucket,
            x,
            context,
            modulation,
            pooled,
            timestep,
            latent_hw,
            reference,
            cache,
        });
    }
    if samples.is_empty() {
        return Err(SensitivityError::Config(format!(
            "no calibration samples selected in {}",
            set.dir().display()
        )));
    }
    Ok((samples, names))
}

/// Writes `sensitivity.json` and `sensitivity.csv` (atomically).
pub fn write_report(dir: &Path, report: &SensitivityReport) -> Result<(), SensitivityError> {
    std::fs::create_dir_all(dir).map_err(|source| SensitivityError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| SensitivityError::Config(e.to_string()))?;
    let path = dir.join("sensitivity.json");
    crate::fsutil::write_atomic(&path, json.as_bytes())
        .map_err(|source| SensitivityError::Io { path, source })?;
    let mut csv = String::from(
        "name,block,kind,params,bits,group_size,bucket,mse,sqnr_db,cosine,n_samples\n",
    );
    for l in &report.layers {
        for r in &l.results {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{:e},{},{},{}\n",
                l.name,
                l.block.map_or(String::new(), |b| b.to_string()),
                l.kind,
                l.params,
                r.bits,
                r.group_size,
                r.bucket,
                r.mse,
                r.sqnr_db,
                r.cosine,
                r.n_samples
            ));
        }
    }
    let path = dir.join("sensitivity.csv");
    crate::fsutil::write_atomic(&path, csv.as_bytes())
        .map_err(|source| SensitivityError::Io { path, source })
}

/// Runs (or resumes) a sensitivity sweep.
pub fn run_sensitivity(
    cfg: &SensitivityConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(SensitivityEvent),
) -> Result<SensitivityReport, SensitivityError> {
    if cfg.bits.is_empty() {
        return Err(SensitivityError::Config("no bit widths given".into()));
    }
    for b in &cfg.bits {
        if !SUPPORTED_BITS.contains(b) {
            return Err(SensitivityError::Config(format!(
                "{b} bits is not supported (MLX: 2, 3, 4, 5, 6, 8)"
            )));
        }
    }
    if !SUPPORTED_GROUPS.contains(&cfg.group_size) {
        return Err(SensitivityError::Config(format!(
            "group size {} is not supported (MLX: 32, 64, 128)",
            cfg.group_size
        )));
    }
    let regex = match &cfg.layers {
        Some(r) => Some(
            regex::Regex::new(r)
                .map_err(|e| SensitivityError::Config(format!("--layers {r:?}: {e}")))?,
        ),
        None => None,
    };
    let files = crate::model::source::resolve(&cfg.model, &mut |_| {}).map_err(boxed)?;
    let mut mmdit = crate::model::source::load_mmdit_inferred(&files.checkpoint, cfg.dtype.mlx())
        .map_err(boxed)?;
    let mmdit_cfg = mmdit.config.clone();
    let registry: Vec<_> = mmdit_linear_layers(&mmdit_cfg)
        .into_iter()
        .filter(|l| regex.as_ref().is_none_or(|r| r.is_match(&l.name)))
        .collect();
    if registry.is_empty() {
        return Err(SensitivityError::Config(format!(
            "--layers {:?} matches no layer of this model",
            cfg.layers.as_deref().unwrap_or("")
        )));
    }
    let set = CalibrationSet::open(&cfg.calib_dir, &OpenOptions::default()).map_err(boxed)?;
    let filter = SampleFilter {
        max_images: cfg.max_images,
        step_stride: cfg.step_stride,
        bucket: None,
    };
    let (samples, sample_names) = load_samples(&mmdit, &set, &filter, cfg.use_cache)?;
    let settings = RunSettings {
        model: files.name.clone(),
        model_config: mmdit_cfg.clone(),
        calib_dir: cfg.calib_dir.clone(),
        bits: cfg.bits.clone(),
        group_size: cfg.group_size,
        max_images: cfg.max_images,
        step_stride: cfg.step_stride,
        dtype: cfg.dtype,
        samples: sample_names,
        metric_scope: "model".into(),
    };
    let json_path = cfg.output_dir.join("sensitivity.json");
    let mut report = match std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str::<SensitivityReport>(&t).ok())
    {
        Some(previous) if previous.settings == settings => previous,
        _ => SensitivityReport {
            schema: "sd3lab.sensitivity/1".into(),
            settings,
            layers: Vec::new(),
        },
    };
    let done: Vec<String> = report.layers.iter().map(|l| l.name.clone()).collect();
    on_event(SensitivityEvent::Planned {
        layers: registry.len(),
        already_done: done.len(),
        bits: cfg.bits.len(),
        samples: samples.len(),
    });
    for (index, layer) in registry.iter().enumerate() {
        if done.contains(&layer.name) {
            continue;
        }
        if cancel.is_cancelled() {
            break;
        }
        let t = Instant::now();
        let mut results = Vec::new();
        let skip = layer.in_features % cfg.group_size as usize != 0;
        if !skip {
            let original = layer_weight(&mut mmdit, &layer.name)
                .ok_or_else(|| SensitivityError::Config(format!("no layer {}", layer.name)))?;
            for &bits in &cfg.bits {
                let q = fake_quantize(
                    &original,
                    LayerQuant {
                        bits,
                        group_size: cfg.group_size,
                    },
                )?;
                q.eval()?;
                swap_weight(&mut mmdit, &layer.name, q)?;
                let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
                for s in &samples {
                    let out = evaluate(&mmdit, s, &layer.name, cfg.use_cache);
                    let out = match out {
                        Ok(o) => o,
                        Err(e) => {
                            swap_weight(&mut mmdit, &layer.name, original.clone())?;
                            return Err(e);
                        }
                    };
                    groups
                        .entry(s.bucket.name().to_owned())
                        .or_default()
                        .add(&s.reference, &out);
                    groups
                        .entry("all".to_owned())
                        .or_default()
                        .add(&s.reference, &out);
                }
                swap_weight(&mut mmdit, &layer.name, original.clone())?;
                for bucket in ["early", "mid", "late", "all"] {
                    if let Some(acc) = groups.get(bucket) {
                        results.push(acc.result(bits, cfg.group_size, bucket));
                    }
                }
            }
        }
        report.layers.push(LayerResult {
            name: layer.name.clone(),
            block: layer.block,
            kind: layer.kind.name().to_owned(),
            params: layer.params,
            results,
        });
        write_report(&cfg.output_dir, &report)?;
        on_event(SensitivityEvent::LayerDone {
            index,
            name: layer.name.clone(),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(report)
}

//! What a benchmark writes: one record per image (committed atomically after its PNG, the
//! unit of resumption), and the two summaries rebuilt from the records after every image:
//! `per_image.csv` and `results.json` (schema `sd3lab.benchmark/1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::configuration::ConfigurationIdentity;
use crate::calibrate::GenerationSettings;
use crate::fsutil::write_atomic;
use crate::metrics::fidelity::{IsResult, KidResult};

/// The `results.json` schema.
pub const RESULTS_SCHEMA: &str = "sd3lab.benchmark/1";
pub const RESULTS_JSON: &str = "results.json";
pub const PER_IMAGE_CSV: &str = "per_image.csv";
/// Inside each configuration's folder: what the configuration is.
pub const CONFIGURATION_JSON: &str = "configuration.json";
/// Inside each configuration's folder: its last metrics against the reference.
pub const METRICS_JSON: &str = "metrics.json";

/// Paired metrics of one image against its reference twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedValues {
    pub index: usize,
    /// `None` (JSON `null`) for an image identical to its twin: PSNR is infinite.
    pub psnr: Option<f64>,
    pub ssim: f64,
    pub lpips: Option<f64>,
}

/// A configuration's image quality against the reference twins (its `metrics` in
/// `results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    /// Images 0..images were scored.
    pub images: usize,
    pub fid: Option<f64>,
    pub kid: Option<KidResult>,
    /// IS of the configuration's images and of the reference's.
    pub isc: Option<IsResult>,
    pub isc_reference: Option<IsResult>,
    /// Mean PSNR over the pairs that differ (`None` when every pair is identical).
    pub psnr_mean: Option<f64>,
    /// Pairs identical to their twin (infinite PSNR).
    pub identical_pairs: Option<usize>,
    pub ssim_mean: Option<f64>,
    pub lpips_mean: Option<f64>,
    /// Why LPIPS is missing, when it is.
    pub lpips_missing: Option<String>,
    pub inception_weights: Option<PathBuf>,
    pub notes: Vec<String>,
}

/// A configuration's metrics (`<config>/metrics.json`): the summary that `results.json` shows
/// and the paired values per image that `per_image.csv` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationMetrics {
    /// How many images (0..images) were scored, and their PNGs' sizes: the metrics describe
    /// the configuration's images while these match.
    pub images: usize,
    pub png_bytes: Vec<u64>,
    pub summary: MetricsSummary,
    pub per_image: Vec<PairedValues>,
}

impl ConfigurationMetrics {
    /// Whether these metrics describe images 0..images of `records` (a configuration's, by
    /// index): the same images, not generated again since. (A folder may hold more images than
    /// a later, shorter run scored; its summary says how many it covers.)
    pub fn describes(&self, records: &[&ImageRecord]) -> bool {
        records.len() >= self.images
            && records
                .iter()
                .zip(&self.png_bytes)
                .enumerate()
                .all(|(i, (r, &bytes))| r.index == i && r.png_bytes == bytes)
    }

    /// From the metrics job's result over images `0..png_bytes.len()` (in order).
    pub fn from_result(png_bytes: Vec<u64>, r: &crate::metrics::compute::MetricsResult) -> Self {
        let images = png_bytes.len();
        let paired = r.paired.as_ref();
        let summary = MetricsSummary {
            images,
            fid: r.fid,
            kid: r.kid,
            isc: r.isc1,
            isc_reference: r.isc2,
            psnr_mean: paired.and_then(|p| p.psnr_mean),
            identical_pairs: paired.map(|p| p.identical),
            ssim_mean: paired.map(|p| p.ssim_mean),
            lpips_mean: paired.and_then(|p| p.lpips_mean),
            lpips_missing: paired.and_then(|p| p.lpips_missing.clone()),
            inception_weights: r.inception_weights.clone(),
            notes: r.notes.clone(),
        };
        let per_image = paired
            .map(|p| {
                p.per_image
                    .iter()
                    .enumerate()
                    .map(|(index, v)| PairedValues {
                        index,
                        psnr: v.psnr.is_finite().then_some(v.psnr),
                        ssim: v.ssim,
                        lpips: v.lpips,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            images,
            png_bytes,
            summary,
            per_image,
        }
    }
}

/// Seconds one image took, by stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSeconds {
    pub text_encoding: f64,
    pub denoising: f64,
    pub per_step: Vec<f64>,
    pub decoding: f64,
    /// Text encoding, denoising and decoding together (the PNG write is not included).
    pub total: f64,
}

/// One generated image (`<config>/records/NNNNNN.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub configuration: String,
    pub index: usize,
    pub prompt: String,
    pub seed: u32,
    /// Generated to warm up, left out of the latency statistics.
    pub warmup: bool,
    pub seconds: ImageSeconds,
    /// MLX's peak memory during this image (reset before it).
    pub peak_mlx_bytes: u64,
    /// The process's peak resident set during this image (Linux: reset before it; macOS: the
    /// process's peak so far, which the OS cannot reset).
    pub peak_rss_bytes: u64,
    /// The PNG, relative to the benchmark folder, and its size (a record whose PNG is missing or
    /// of another size is not a finished image).
    pub file: String,
    pub png_bytes: u64,
}

/// A configuration's folder record (`<config>/configuration.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationInfo {
    #[serde(flatten)]
    pub identity: ConfigurationIdentity,
    pub spec: String,
    /// Bytes of the MMDiT's weights as run (packed weights, scales and biases when quantized).
    pub mmdit_weight_bytes: u64,
    /// The same MMDiT in float32 and float16, for compression ratios.
    pub mmdit_weight_bytes_float32: u64,
    pub mmdit_weight_bytes_float16: u64,
    pub quantized_layers: usize,
    /// Layers left float (e.g. an input size that is not a multiple of the group size), why.
    pub float_layers: Vec<(String, String)>,
}

/// Mean, median, 90th percentile and standard deviation (population, as numpy's default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub std: f64,
}

impl Stat {
    /// `None` for no values. Percentiles interpolate linearly, as `numpy.percentile`.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let pct = |q: f64| {
            let pos = q * (n - 1.0);
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Some(Self {
            mean,
            median: pct(0.5),
            p90: pct(0.9),
            std: var.sqrt(),
        })
    }
}

/// Latency per stage over the timed (non-warmup) images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub text_encoding: Stat,
    pub denoising: Stat,
    /// Over every step of every timed image.
    pub per_step: Stat,
    pub decoding: Stat,
    pub total: Stat,
}

/// Peak memory over a configuration's images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeakMemory {
    pub mlx_bytes: u64,
    pub process_rss_bytes: u64,
}

/// One configuration in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationResult {
    #[serde(flatten)]
    pub info: ConfigurationInfo,
    pub images: usize,
    pub timed_images: usize,
    /// `None` until an image outside the warmup is done.
    pub latency: Option<Latency>,
    pub peak_memory: PeakMemory,
    /// Image-quality metrics against the reference (`None`: not computed).
    pub metrics: Option<MetricsSummary>,
}

impl ConfigurationResult {
    /// Statistics of `records` (this configuration's, any order).
    pub fn from_records(info: ConfigurationInfo, records: &[&ImageRecord]) -> Self {
        let timed: Vec<&&ImageRecord> = records.iter().filter(|r| !r.warmup).collect();
        let stage = |f: &dyn Fn(&ImageSeconds) -> f64| {
            Stat::of(&timed.iter().map(|r| f(&r.seconds)).collect::<Vec<_>>())
        };
        let steps: Vec<f64> = timed
            .iter()
            .flat_map(|r| r.seconds.per_step.iter().copied())
            .collect();
        let latency = (|| {
            Some(Latency {
                text_encoding: stage(&|s| s.text_encoding)?,
                denoising: stage(&|s| s.denoising)?,
                per_step: Stat::of(&steps)?,
                decoding: stage(&|s| s.decoding)?,
                total: stage(&|s| s.total)?,
            })
        })();
        Self {
            info,
            images: records.len(),
            timed_images: timed.len(),
            latency,
            peak_memory: PeakMemory {
                mlx_bytes: records.iter().map(|r| r.peak_mlx_bytes).max().unwrap_or(0),
                process_rss_bytes: records.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
            },
            metrics: None,
        }
    }
}

/// Where the reference came from and whether its settings were checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceProvenance {
    pub dir: PathBuf,
    pub kind: super::reference::ReferenceKind,
    pub images: usize,
    /// The manifest recorded the settings and they were compared with the run's.
    pub verified: bool,
    /// Settings that differ from the reference's (only with `allow_mismatch`).
    pub differences: Vec<String>,
    pub allow_mismatch: bool,
}

/// The settings a benchmark folder is tied to: a rerun with other settings is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
    /// Model, steps, CFG, size, dtype, negative prompt; the prompt and seed of every image.
    pub generation: GenerationSettings,
    pub warmup: usize,
    pub reference: Option<ReferenceProvenance>,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResults {
    pub schema: String,
    pub settings: BenchSettings,
    pub configurations: Vec<ConfigurationResult>,
}

impl BenchResults {
    /// Reads `dir/results.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, BenchError> {
        let path = dir.join(RESULTS_JSON);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BenchError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| BenchError::Json { path, source })
    }
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BenchError> {
    // Plain structs with string keys: serializing cannot fail.
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    write_atomic(path, text.as_bytes()).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a JSON file that the benchmark itself wrote.
pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BenchError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The records of every configuration, by configuration then index.
pub type Records = BTreeMap<String, BTreeMap<usize, ImageRecord>>;

/// `per_image.csv`: one row per image, configurations in `order`.
pub(super) fn write_per_image_csv(
    path: &Path,
    order: &[String],
    records: &Records,
    metrics: &BTreeMap<String, ConfigurationMetrics>,
) -> Result<(), BenchError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "configuration",
        "index",
        "prompt",
        "seed",
        "warmup",
        "text_encoding_s",
        "denoising_s",
        "mean_step_s",
        "decoding_s",
        "total_s",
        "peak_mlx_bytes",
        "peak_rss_bytes",
        "file",
        "psnr_db",
        "ssim",
        "lpips",
    ];
    let csv_err = |e: csv::Error| BenchError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    };
    w.write_record(header).map_err(csv_err)?;
    for name in order {
        let mine: Vec<&ImageRecord> = records
            .get(name)
            .into_iter()
            .flat_map(|m| m.values())
            .collect();
        // Paired values of exactly these images only.
        let paired = metrics.get(name).filter(|m| m.describes(&mine));
        for r in records.get(name).into_iter().flat_map(|m| m.values()) {
            let p = paired.and_then(|m| m.per_image.get(r.index));
            let (psnr, ssim, lpips) = match p {
                Some(p) => (
                    p.psnr.map_or("inf".to_owned(), |v| format!("{v:.6}")),
                    format!("{:.8}", p.ssim),
                    p.lpips.map_or(String::new(), |v| format!("{v:.8}")),
                ),
                None => (String::new(), String::new(), String::new()),
            };
            let s = &r.seconds;
            let mean_step = if s.per_step.is_empty() {
                0.0
            } else {
                s.per_step.iter().sum::<f64>() / s.per_step.len() as f64
            };
            w.write_record([
                r.configuration.clone(),
                r.index.to_string(),
                r.prompt.clone(),
                r.seed.to_string(),
                r.warmup.to_string(),
                format!("{:.6}", s.text_encoding),
                format!("{:.6}", s.denoising),
                format!("{mean_step:.6}"),
                format!("{:.6}", s.decoding),
                format!("{:.6}", s.total),
                r.peak_mlx_bytes.to_string(),
                r.peak_rss_bytes.to_string(),
                r.file.clone(),
                psnr,
                ssim,
                lpips,
            ])
            .map_err(csv_err)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| BenchError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(path, &bytes).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_follow_numpy_definitions() {
        let s = Stat::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.median, 2.5);
        // numpy.percentile([1, 2, 3, 4], 90) = 3.7; numpy.std = sqrt(1.25).
        assert!((s.p90 - 3.7).abs() < 1e-12);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[]), None);
        let one = Stat::of(&[2.0]).unwrap();
        assert_eq!((one.median, one.p90, one.std), (2.0, 2.0, 0.0));
    }
}

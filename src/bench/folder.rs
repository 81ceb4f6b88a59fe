//! A benchmark folder as its readers see it (the Compare tab, `sd3lab report benchmark`):
//! `results.json`, every configuration's finished images (records whose PNG is there with its
//! size), their paired metrics when `metrics.json` describes exactly those images, and the
//! reference twin of each image. Read-only: a folder being written by a running benchmark
//! can be opened again after each image to see the images that landed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::results::{self, ConfigurationMetrics, ConfigurationResult, PairedValues};
use super::{
    BenchError, BenchResults, ImageRecord, METRICS_JSON, ReferenceSet, configuration_folders,
    read_records,
};

/// One prompt of the run: image `index` of every configuration and of the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub index: usize,
    pub prompt: String,
    pub seed: u32,
}

/// One configuration's images and their paired metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationImages {
    pub name: String,
    /// Its entry in `results.json` (latency, memory, weight bytes, summary metrics).
    pub result: ConfigurationResult,
    /// Finished images by index (absolute paths).
    pub images: BTreeMap<usize, PathBuf>,
    /// Paired metrics against the reference twin, by index (empty until scored).
    pub paired: BTreeMap<usize, PairedValues>,
}

/// A benchmark folder, read.
#[derive(Debug, Clone)]
pub struct BenchFolder {
    pub dir: PathBuf,
    pub results: BenchResults,
    /// Every image of the run, in index order (from the recorded settings).
    pub prompts: Vec<PromptRow>,
    /// In `results.json`'s order.
    pub configurations: Vec<ConfigurationImages>,
    /// The reference twin of each image by index (`None`: the run has no reference, or it is
    /// short).
    pub reference: Vec<Option<PathBuf>>,
    /// Why the reference images cannot be shown, when the run has one and it cannot be opened
    /// (moved or deleted since the run).
    pub reference_problem: Option<String>,
}

/// A per-image metric against the reference twin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PairedMetric {
    #[default]
    Psnr,
    Ssim,
    Lpips,
}

impl PairedMetric {
    pub const ALL: [PairedMetric; 3] = [Self::Psnr, Self::Ssim, Self::Lpips];

    pub fn label(self) -> &'static str {
        match self {
            Self::Psnr => "PSNR (dB)",
            Self::Ssim => "SSIM",
            Self::Lpips => "LPIPS",
        }
    }

    /// The short name (`psnr`, as on the command line and in the CSV's columns).
    pub fn name(self) -> &'static str {
        match self {
            Self::Psnr => "psnr",
            Self::Ssim => "ssim",
            Self::Lpips => "lpips",
        }
    }

    /// Higher values mean closer to the reference (PSNR, SSIM); LPIPS is a distance.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::Lpips)
    }

    /// The value of one pair: an identical pair's PSNR is `+inf`; `None` when not measured
    /// (LPIPS without its weights).
    pub fn of(self, v: &PairedValues) -> Option<f64> {
        match self {
            Self::Psnr => Some(v.psnr.unwrap_or(f64::INFINITY)),
            Self::Ssim => Some(v.ssim),
            Self::Lpips => v.lpips,
        }
    }

    /// How "bad" a value is: larger is worse, so sorting by it descending puts the worst first.
    pub fn badness(self, value: f64) -> f64 {
        if self.higher_is_better() {
            -value
        } else {
            value
        }
    }

    /// A value as the tables show it (`identical` for an infinite PSNR).
    pub fn format(self, value: f64) -> String {
        match self {
            Self::Psnr if value.is_infinite() => "identical".to_owned(),
            Self::Psnr => format!("{value:.2}"),
            Self::Ssim | Self::Lpips => format!("{value:.4}"),
        }
    }
}

impl BenchFolder {
    /// Reads `dir`. A folder without `results.json` is refused (it is not a benchmark, or a
    /// run that never got past its checks).
    pub fn open(dir: &Path) -> Result<Self, BenchError> {
        let results = BenchResults::read(dir)?.ok_or_else(|| BenchError::NotABenchmark {
            dir: dir.to_owned(),
        })?;
        let folders = configuration_folders(dir)?;
        let mut configurations = Vec::new();
        for result in &results.configurations {
            let name = result.info.identity.name.clone();
            if !folders.contains_key(&name) {
                continue;
            }
            let records = read_records(dir, &name)?;
            let mine: Vec<&ImageRecord> = records.values().collect();
            let path = dir.join(&name).join(METRICS_JSON);
            let paired = if path.is_file() {
                let m: ConfigurationMetrics = results::read_json(&path)?;
                // Paired values of exactly these images only (not of images generated since).
                if m.describes(&mine) {
                    m.per_image.into_iter().map(|p| (p.index, p)).collect()
                } else {
                    BTreeMap::new()
                }
            } else {
                BTreeMap::new()
            };
            configurations.push(ConfigurationImages {
                images: records
                    .keys()
                    .map(|&i| (i, dir.join(super::image_file_name(&name, i))))
                    .collect(),
                name,
                result: result.clone(),
                paired,
            });
        }
        let generation = &results.settings.generation;
        let prompts: Vec<PromptRow> = generation
            .prompts
            .iter()
            .zip(&generation.seeds)
            .enumerate()
            .map(|(index, (prompt, &seed))| PromptRow {
                index,
                prompt: prompt.clone(),
                seed,
            })
            .collect();
        let (reference, reference_problem) = match &results.settings.reference {
            None => (vec![None; prompts.len()], None),
            Some(provenance) => {
                // A relative reference path was given relative to where the run started,
                // usually the folder holding `benchmark_results/`: try it from there (the
                // current folder), then from the benchmark folder and each folder above it,
                // so a project moved as a whole, or an app started elsewhere, still finds it.
                let opened = if provenance.dir.is_absolute() {
                    ReferenceSet::open(&provenance.dir)
                } else {
                    std::iter::once(provenance.dir.clone())
                        .chain(dir.ancestors().map(|a| a.join(&provenance.dir)))
                        .map(|c| ReferenceSet::open(&c))
                        .find(|r| r.is_ok())
                        .unwrap_or_else(|| ReferenceSet::open(&provenance.dir))
                };
                match opened {
                    Ok(set) => {
                        let mut by_index = vec![None; prompts.len()];
                        for image in set.images {
                            if let Some(slot) = by_index.get_mut(image.index) {
                                *slot = Some(image.path);
                            }
                        }
                        (by_index, None)
                    }
                    Err(e) => (vec![None; prompts.len()], Some(e.to_string())),
                }
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            results,
            prompts,
            configurations,
            reference,
            reference_problem,
        })
    }

    /// The configuration named `name`.
    pub fn configuration(&self, name: &str) -> Option<&ConfigurationImages> {
        self.configurations.iter().find(|c| c.name == name)
    }

    /// The image indices that configuration `name` has scored with `metric`, worst first
    /// (ties by index). Images without a value are left out.
    pub fn worst_first(&self, name: &str, metric: PairedMetric) -> Vec<(usize, f64)> {
        self.configuration(name)
            .map(|c| worst_first_of(c.paired.values(), metric))
            .unwrap_or_default()
    }

    /// Whether any configuration has a paired value of `metric`.
    pub fn has_metric(&self, metric: PairedMetric) -> bool {
        self.configurations
            .iter()
            .any(|c| c.paired.values().any(|p| metric.of(p).is_some()))
    }
}

/// One configuration's line of the summary table (the Compare tab's table, the report's): the
/// numbers, unformatted; `cells` formats them under [`SummaryRow::COLUMNS`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub name: String,
    pub fid: Option<f64>,
    /// KID mean and standard deviation.
    pub kid: Option<(f64, f64)>,
    /// Inception Score mean and standard deviation.
    pub isc: Option<(f64, f64)>,
    /// Mean PSNR over the pairs that differ; `identical` pairs are left out of it.
    pub psnr: Option<f64>,
    pub identical: Option<usize>,
    pub ssim: Option<f64>,
    pub lpips: Option<f64>,
    pub weight_bytes: u64,
    /// The MMDiT's float32 and float16 bytes over this configuration's.
    pub ratio_fp32: f64,
    pub ratio_fp16: f64,
    /// Mean seconds per image (text encoding, denoising, decoding), over the timed images.
    pub seconds_per_image: Option<f64>,
    pub peak_mlx_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Images generated (and scored, when the metrics cover them).
    pub images: usize,
}

impl SummaryRow {
    /// The table's column headers, in `cells`' order.
    pub const COLUMNS: [&'static str; 12] = [
        "configuration",
        "FID",
        "KID",
        "IS",
        "PSNR (dB)",
        "SSIM",
        "LPIPS",
        "MMDiT weights",
        "vs fp32",
        "vs fp16",
        "s/img",
        "peak MLX memory",
    ];

    pub fn of(c: &ConfigurationImages) -> Self {
        let r = &c.result;
        let m = r.metrics.as_ref();
        let bytes = r.info.mmdit_weight_bytes;
        let ratio = |of: u64| {
            if bytes == 0 {
                0.0
            } else {
                of as f64 / bytes as f64
            }
        };
        Self {
            name: c.name.clone(),
            fid: m.and_then(|m| m.fid),
            kid: m.and_then(|m| m.kid).map(|k| (k.mean, k.std)),
            isc: m.and_then(|m| m.isc).map(|k| (k.mean, k.std)),
            psnr: m.and_then(|m| m.psnr_mean),
            identical: m.and_then(|m| m.identical_pairs),
            ssim: m.and_then(|m| m.ssim_mean),
            lpips: m.and_then(|m| m.lpips_mean),
            weight_bytes: bytes,
            ratio_fp32: ratio(r.info.mmdit_weight_bytes_float32),
            ratio_fp16: ratio(r.info.mmdit_weight_bytes_float16),
            seconds_per_image: r.latency.as_ref().map(|l| l.total.mean),
            peak_mlx_bytes: r.peak_memory.mlx_bytes,
            peak_rss_bytes: r.peak_memory.process_rss_bytes,
            images: r.images,
        }
    }

    /// The row as text, one cell per column ("-" where a value was not measured).
    pub fn cells(&self) -> Vec<String> {
        let dash = || "-".to_owned();
        let pm = |v: Option<(f64, f64)>, digits: usize| {
            v.map_or_else(dash, |(m, s)| format!("{m:.digits$} ± {s:.digits$}"))
        };
        let psnr = match (self.psnr, self.identical) {
            (Some(p), Some(0) | None) => format!("{p:.2}"),
            (Some(p), Some(n)) => format!("{p:.2} ({n} identical)"),
            (None, Some(n)) if n > 0 => "identical".to_owned(),
            _ => dash(),
        };
        vec![
            self.name.clone(),
            // A FID that rounds to zero may come out of the eigen step as -1e-13: "-0.00"
            // would read as a negative distance.
            self.fid.map_or_else(dash, |v| {
                format!("{:.2}", if v.abs() < 0.005 { 0.0 } else { v })
            }),
            pm(self.kid, 4),
            pm(self.isc, 3),
            psnr,
            self.ssim.map_or_else(dash, |v| format!("{v:.4}")),
            self.lpips.map_or_else(dash, |v| format!("{v:.4}")),
            crate::report::human_bytes(self.weight_bytes),
            // No recorded weight bytes (a folder of an older run): no ratio to show.
            if self.weight_bytes == 0 {
                dash()
            } else {
                format!("{:.2}x", self.ratio_fp32)
            },
            if self.weight_bytes == 0 {
                dash()
            } else {
                format!("{:.2}x", self.ratio_fp16)
            },
            self.seconds_per_image
                .map_or_else(dash, |v| format!("{v:.3}")),
            crate::report::human_bytes(self.peak_mlx_bytes),
        ]
    }
}

impl BenchFolder {
    /// The summary table, one row per configuration in the run's order.
    pub fn summary(&self) -> Vec<SummaryRow> {
        self.configurations.iter().map(SummaryRow::of).collect()
    }
}

/// `(index, value)` of `pairs` by `metric`, worst first in the metric's own direction, ties by
/// index; pairs without a value are left out.
pub fn worst_first_of<'a>(
    pairs: impl IntoIterator<Item = &'a PairedValues>,
    metric: PairedMetric,
) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = pairs
        .into_iter()
        .filter_map(|p| Some((p.index, metric.of(p)?)))
        .collect();
    v.sort_by(|a, b| {
        metric
            .badness(b.1)
            .total_cmp(&metric.badness(a.1))
            .then(a.0.cmp(&b.0))
    });
    v
}

/// The benchmark folders directly under `root` (those holding a `results.json`), sorted by
/// name: the runs a user can pick among in `benchmark_results/`.
pub fn list_benchmarks(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(results::RESULTS_JSON).is_file())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(index: usize, psnr: Option<f64>, ssim: f64, lpips: Option<f64>) -> PairedValues {
        PairedValues {
            index,
            psnr,
            ssim,
            lpips,
        }
    }

    #[test]
    fn metrics_order_worst_first_in_their_own_direction() {
        let values = [
            pair(0, Some(30.0), 0.9, Some(0.1)),
            pair(1, Some(20.0), 0.95, Some(0.3)),
            pair(2, None, 1.0, Some(0.0)),
        ];
        let order = |m: PairedMetric| {
            worst_first_of(&values, m)
                .into_iter()
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(PairedMetric::Psnr), [1, 0, 2]);
        assert_eq!(order(PairedMetric::Ssim), [0, 1, 2]);
        assert_eq!(order(PairedMetric::Lpips), [1, 0, 2]);
        // Equal values keep index order.
        let tied = [
            pair(5, Some(20.0), 0.5, None),
            pair(2, Some(20.0), 0.5, None),
            pair(7, Some(10.0), 0.9, None),
        ];
        let idx = |m| {
            worst_first_of(&tied, m)
                .into_iter()
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(idx(PairedMetric::Psnr), [7, 2, 5]);
        assert_eq!(idx(PairedMetric::Ssim), [2, 5, 7]);
        assert!(idx(PairedMetric::Lpips).is_empty(), "no LPIPS measured");
        assert_eq!(PairedMetric::Psnr.format(f64::INFINITY), "identical");
        assert_eq!(PairedMetric::Lpips.of(&pair(0, None, 1.0, None)), None);
    }

    #[test]
    fn a_folder_without_results_is_not_a_benchmark() {
        let dir = std::env::temp_dir().join(format!("sd3lab-folder-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = BenchFolder::open(&dir).unwrap_err();
        assert!(matches!(err, BenchError::NotABenchmark { .. }), "{err}");
        assert!(err.to_string().contains("results.json"), "{err}");
        assert!(list_benchmarks(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

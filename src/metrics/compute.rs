//! The metrics job: two lists of image files → FID, IS, KID (torch-fidelity's definitions, from
//! Inception-v3 features) and paired PSNR / SSIM / LPIPS (image i of one list against image i of
//! the other). `sd3lab metrics` lists two folders as torch-fidelity does; the benchmark passes
//! each configuration's images and their reference twins.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fidelity::{self, Features, IsResult, KidOptions, KidResult};
use super::images::{ImagesError, load_rgb};
use super::inception::{
    CacheOutcome, Extracted, FEATURES_DIM, InceptionError, InceptionV3, LOGITS_DIM,
    extract_features, extract_features_cached,
};
use super::lpips::{Lpips, LpipsError};
use super::paired::{PairedError, RgbView, psnr, ssim};
use super::weights::{WeightsError, resolve_inception_weights_in, resolve_lpips_weights_in};
use crate::job::CancelToken;

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub fid: bool,
    /// IS of each input.
    pub isc: bool,
    pub kid: bool,
    /// PSNR, SSIM and (with its weights) LPIPS per pair.
    pub paired: bool,
    pub isc_splits: usize,
    pub kid_subsets: usize,
    /// `None`: min(1000, N), said in the result when lowered.
    pub kid_subset_size: Option<usize>,
    /// A `.pth` or converted `.safetensors`; `None`: the user cache (`metrics weights --fetch`).
    pub inception_weights: Option<PathBuf>,
    /// Where fetched and converted weights live (`model::source::cache_dir()` for users).
    pub cache_dir: PathBuf,
    /// Images per Inception batch; `None`: [`super::inception::default_batch_size`] for the
    /// device the job runs on.
    pub batch_size: Option<usize>,
    /// Cache the second input's features beside it (a reference set computed once).
    pub cache_second: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            fid: true,
            isc: true,
            kid: true,
            paired: true,
            isc_splits: fidelity::DEFAULT_IS_SPLITS,
            kid_subsets: fidelity::DEFAULT_KID_SUBSETS,
            kid_subset_size: None,
            inception_weights: None,
            cache_dir: crate::model::source::cache_dir(),
            batch_size: None,
            cache_second: true,
        }
    }
}

impl MetricsConfig {
    fn needs_inception(&self) -> bool {
        self.fid || self.isc || self.kid
    }
}

/// One input: its files, and the folder its feature cache may go into.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub files: &'a [PathBuf],
    pub cache_dir: Option<&'a Path>,
}

/// Progress, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsEvent {
    /// Inception features of input 1 or 2: `done` of `total` images.
    Features {
        input: usize,
        done: usize,
        total: usize,
    },
    /// Input 2's features came from its cache.
    CachedFeatures {
        dir: PathBuf,
    },
    Kid {
        done: usize,
        total: usize,
    },
    Paired {
        done: usize,
        total: usize,
    },
}

/// Paired metrics of one image pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedImage {
    pub file1: PathBuf,
    pub file2: PathBuf,
    /// `inf` for identical images (written `null` in JSON).
    pub psnr: f64,
    pub ssim: f64,
    pub lpips: Option<f64>,
}

/// Paired metrics over all pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedSummary {
    /// Mean PSNR over the pairs that differ (identical pairs have no finite PSNR; they are
    /// counted in `identical`). `None` when every pair is identical.
    pub psnr_mean: Option<f64>,
    pub identical: usize,
    pub ssim_mean: f64,
    pub lpips_mean: Option<f64>,
    /// Why LPIPS is missing, when it is.
    pub lpips_missing: Option<String>,
    pub per_image: Vec<PairedImage>,
}

/// What was computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsResult {
    pub images1: usize,
    pub images2: usize,
    pub fid: Option<f64>,
    pub isc1: Option<IsResult>,
    pub isc2: Option<IsResult>,
    pub kid: Option<KidResult>,
    pub paired: Option<PairedSummary>,
    /// The Inception weights used.
    pub inception_weights: Option<PathBuf>,
    /// What the user should know (KID's subset size lowered, a cache not written…).
    pub notes: Vec<String>,
    /// Seconds per step: `paired`, `features1`, `features2`, `isc`, `fid`, `kid`.
    pub seconds: std::collections::BTreeMap<String, f64>,
}

/// Why metrics could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Inception(#[from] InceptionError),
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error(transparent)]
    Fidelity(#[from] fidelity::FidelityError),
    #[error("{first} and {second}: {source}")]
    Paired {
        first: PathBuf,
        second: PathBuf,
        source: PairedError,
    },
    #[error("paired metrics need as many images in each input ({first} and {second})")]
    PairCount { first: usize, second: usize },
    #[error("LPIPS: {0}")]
    Lpips(#[from] LpipsError),
    #[error("LPIPS of {first} and {second}: {source}")]
    LpipsPair {
        first: PathBuf,
        second: PathBuf,
        source: Box<LpipsError>,
    },
    #[error("cancelled")]
    Cancelled,
}

impl MetricsError {
    /// The job's cancel token stopped it (whichever step noticed).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            Self::Cancelled
                | Self::Inception(InceptionError::Cancelled)
                | Self::Fidelity(fidelity::FidelityError::Cancelled)
        )
    }
}

/// Computes what `cfg` asks for. IS needs ≥ `isc_splits` images per input; FID and KID two
/// inputs. Loads the networks for this one call; [`Scorer`] keeps them for several.
pub fn compute_metrics(
    cfg: &MetricsConfig,
    first: Input,
    second: Option<Input>,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(MetricsEvent),
) -> Result<MetricsResult, MetricsError> {
    Scorer::load(cfg)?.compute(first, second, cancel, on_event)
}

/// The networks a metrics run needs, loaded once, and the second input's features once
/// extracted: a benchmark scores every configuration against the same reference with one
/// `Scorer`, so the weights are read and the reference's features computed (or read from
/// their cache) once per run.
pub struct Scorer {
    cfg: MetricsConfig,
    /// Inception and the file its weights came from (when FID, IS or KID are asked for).
    inception: Option<(InceptionV3, PathBuf)>,
    /// LPIPS when paired metrics are asked for: the network, or why its weights are missing
    /// (LPIPS is then left out).
    lpips: Option<Result<Lpips, String>>,
    /// The second input's files and their (features, logits).
    second: Option<(Vec<PathBuf>, Features, Features)>,
}

impl Scorer {
    /// Loads what `cfg` needs: missing or unreadable Inception weights are said here, before
    /// anything long runs; missing LPIPS weights only leave LPIPS out.
    pub fn load(cfg: &MetricsConfig) -> Result<Self, MetricsError> {
        let inception = if cfg.needs_inception() {
            let weights =
                resolve_inception_weights_in(&cfg.cache_dir, cfg.inception_weights.as_deref())?;
            Some((InceptionV3::load(&weights)?, weights))
        } else {
            None
        };
        let lpips = if cfg.paired {
            match resolve_lpips_weights_in(&cfg.cache_dir) {
                Ok(w) => Some(Ok(Lpips::load(&w)?)),
                Err(e @ WeightsError::Missing { .. }) => Some(Err(e.to_string())),
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            inception,
            lpips,
            second: None,
        })
    }

    /// Scores `first` (against `second` where a metric compares two inputs).
    pub fn compute(
        &mut self,
        first: Input,
        second: Option<Input>,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(MetricsEvent),
    ) -> Result<MetricsResult, MetricsError> {
        let cfg = &self.cfg;
        let mut result = MetricsResult {
            images1: first.files.len(),
            images2: second.map_or(0, |s| s.files.len()),
            fid: None,
            isc1: None,
            isc2: None,
            kid: None,
            paired: None,
            inception_weights: self.inception.as_ref().map(|(_, w)| w.clone()),
            notes: Vec::new(),
            seconds: Default::default(),
        };
        let timed = |result: &mut MetricsResult, step: &str, t: std::time::Instant| {
            result
                .seconds
                .insert(step.to_owned(), t.elapsed().as_secs_f64());
        };
        if cfg.paired
            && let Some(second) = second
        {
            let t = std::time::Instant::now();
            result.paired = Some(paired_metrics(
                first.files,
                second.files,
                self.lpips.as_ref(),
                cancel,
                on_event,
            )?);
            timed(&mut result, "paired", t);
        }
        let Some((model, _)) = &self.inception else {
            return Ok(result);
        };
        let batch_size = cfg
            .batch_size
            .unwrap_or_else(super::inception::default_batch_size);
        let features = |input: usize,
                        inp: Input,
                        on_event: &mut dyn FnMut(MetricsEvent),
                        notes: &mut Vec<String>| {
            let mut progress =
                |done, total| on_event(MetricsEvent::Features { input, done, total });
            let extracted: Extracted = match (inp.cache_dir, cfg.cache_second && input == 2) {
                (Some(dir), true) => {
                    let (e, outcome) = extract_features_cached(
                        dir,
                        inp.files,
                        model,
                        batch_size,
                        cancel,
                        &mut progress,
                    )?;
                    match outcome {
                        CacheOutcome::Hit => on_event(MetricsEvent::CachedFeatures {
                            dir: dir.to_owned(),
                        }),
                        CacheOutcome::Written => {}
                        CacheOutcome::NotWritten(e) => notes.push(format!(
                            "the reference features could not be cached beside the images \
                             ({e}); they will be computed again next time"
                        )),
                    }
                    e
                }
                _ => extract_features(inp.files, model, batch_size, cancel, &mut progress)?,
            };
            Ok::<_, MetricsError>((
                Features::new(extracted.n, FEATURES_DIM, extracted.features)?,
                Features::new(extracted.n, LOGITS_DIM, extracted.logits)?,
            ))
        };
        let t = std::time::Instant::now();
        let (f1, l1) = features(1, first, on_event, &mut result.notes)?;
        timed(&mut result, "features1", t);
        if let Some(s) = second
            && (cfg.fid || cfg.kid || cfg.isc)
            && self
                .second
                .as_ref()
                .is_none_or(|(files, _, _)| files.as_slice() != s.files)
        {
            let t = std::time::Instant::now();
            let (f2, l2) = features(2, s, on_event, &mut result.notes)?;
            self.second = Some((s.files.to_vec(), f2, l2));
            timed(&mut result, "features2", t);
        }
        let second_features = second.and(self.second.as_ref()).map(|(_, f2, l2)| (f2, l2));
        if cfg.isc {
            let t = std::time::Instant::now();
            result.isc1 = Some(fidelity::inception_score(&l1, cfg.isc_splits)?);
            if let Some((_, l2)) = second_features {
                result.isc2 = Some(fidelity::inception_score(l2, cfg.isc_splits)?);
            }
            timed(&mut result, "isc", t);
        }
        if let Some((f2, _)) = second_features {
            if cfg.fid {
                let t = std::time::Instant::now();
                result.fid = Some(fidelity::fid(&f1, f2)?);
                timed(&mut result, "fid", t);
            }
            if cfg.kid {
                let t = std::time::Instant::now();
                let kid = fidelity::kid_with_progress(
                    &f1,
                    f2,
                    KidOptions {
                        subsets: cfg.kid_subsets,
                        subset_size: cfg.kid_subset_size,
                    },
                    cancel,
                    |done, total| on_event(MetricsEvent::Kid { done, total }),
                )?;
                if let Some(from) = kid.lowered_from {
                    result.notes.push(format!(
                        "KID subset size lowered from {from} to {} (the smaller input's size); \
                         torch-fidelity would stop with an error instead",
                        kid.subset_size
                    ));
                }
                result.kid = Some(kid);
                timed(&mut result, "kid", t);
            }
        }
        Ok(result)
    }
}

/// PSNR, SSIM and LPIPS (when its weights are in the cache) of every pair.
fn paired_metrics(
    first: &[PathBuf],
    second: &[PathBuf],
    lpips: Option<&Result<Lpips, String>>,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(MetricsEvent),
) -> Result<PairedSummary, MetricsError> {
    if first.len() != second.len() {
        return Err(MetricsError::PairCount {
            first: first.len(),
            second: second.len(),
        });
    }
    let (lpips, lpips_missing) = match lpips {
        Some(Ok(net)) => (Some(net), None),
        Some(Err(why)) => (None, Some(why.clone())),
        None => (None, None),
    };
    let mut per_image = Vec::with_capacity(first.len());
    for (i, (a, b)) in first.iter().zip(second).enumerate() {
        if cancel.is_cancelled() {
            return Err(MetricsError::Cancelled);
        }
        let (ia, ib) = (load_rgb(a)?, load_rgb(b)?);
        let err = |source| MetricsError::Paired {
            first: a.clone(),
            second: b.clone(),
            source,
        };
        let va = RgbView::new(ia.width, ia.height, &ia.data).map_err(err)?;
        let vb = RgbView::new(ib.width, ib.height, &ib.data).map_err(err)?;
        // PSNR and SSIM first: they check the pair's sizes and name both files.
        let (psnr, ssim) = (psnr(&va, &vb).map_err(err)?, ssim(&va, &vb).map_err(err)?);
        let lpips_value = match lpips {
            Some(net) => Some(f64::from(
                net.distance_rgb8(&ia.data, &ib.data, ia.width as usize, ia.height as usize)
                    .map_err(|source| MetricsError::LpipsPair {
                        first: a.clone(),
                        second: b.clone(),
                        source: Box::new(source),
                    })?,
            )),
            None => None,
        };
        per_image.push(PairedImage {
            file1: a.clone(),
            file2: b.clone(),
            psnr,
            ssim,
            lpips: lpips_value,
        });
        on_event(MetricsEvent::Paired {
            done: i + 1,
            total: first.len(),
        });
    }
    let n = per_image.len().max(1) as f64;
    let finite: Vec<f64> = per_image
        .iter()
        .map(|p| p.psnr)
        .filter(|p| p.is_finite())
        .collect();
    Ok(PairedSummary {
        psnr_mean: (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64),
        identical: per_image.len() - finite.len(),
        ssim_mean: per_image.iter().map(|p| p.ssim).sum::<f64>() / n,
        lpips_mean: lpips
            .is_some()
            .then(|| per_image.iter().filter_map(|p| p.lpips).sum::<f64>() / n),
        lpips_missing,
        per_image,
    })
}

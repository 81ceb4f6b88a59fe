//! Plan validation: the real full-model error of a mixed-precision plan on calibration samples
//! that the sensitivity run did not use, next to what the per-layer results predict if layer
//! errors add up (see [`super::plan::additive_prediction`]). The gap says how additive the
//! per-layer errors are, and so how far a plan built from them can be trusted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleMeta};
use crate::job::CancelToken;

use super::plan::additive_prediction;
use super::sensitivity::{Groups, SensitivityError, SensitivityReport, load_batches};
use super::{QuantConfig, QuantMode};

/// Measured and predicted error of one bucket (or `all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRow {
    pub bucket: Bucket,
    pub n_samples: usize,
    pub mse: f64,
    pub sqnr_db: f64,
    pub cosine: f64,
    /// Σ per-layer MSE (model-scope reports only).
    pub predicted_mse: Option<f64>,
    /// −10·log10 Σ 10^(−SQNRᵢ/10) (model-scope reports only).
    pub predicted_sqnr_db: Option<f64>,
}

/// Progress of [`validate_plan`].
#[derive(Debug, Clone)]
pub enum ValidationEvent {
    /// Resolving the model reported this (the fallback to tiny, download progress).
    Model(crate::model::source::SourceEvent),
    /// `done` of `total` held-out samples measured.
    Measured { done: usize, total: usize },
}

/// The outcome of [`validate_plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Held-out calibration files measured.
    pub samples: Vec<String>,
    pub rows: Vec<ValidationRow>,
}

/// Measures `plan` (applied simulated, per bucket when it has bucket maps) on up to
/// `max_samples` calibration samples of the report's calibration directory that the report
/// did not use. `cancel` also stops a download of the model.
pub fn validate_plan(
    report: &SensitivityReport,
    plan: &QuantConfig,
    max_samples: Option<usize>,
    batch_size: usize,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(ValidationEvent),
) -> Result<Validation, SensitivityError> {
    let settings = &report.settings;
    let boxed = |e| Box::new(e);
    let files = crate::model::source::resolve(&settings.model, cancel, &mut |e| {
        on_event(ValidationEvent::Model(e))
    })
    .map_err(boxed)?;
    let float = crate::model::source::load_mmdit_inferred(&files.checkpoint, settings.dtype.mlx())
        .map_err(Box::new)?;
    let set =
        CalibrationSet::open(&settings.calib_dir, &OpenOptions::default()).map_err(Box::new)?;
    let mut held_out: Vec<&SampleMeta> = set
        .select(&SampleFilter::default())
        .into_iter()
        .filter(|m| !settings.samples.contains(&m.file))
        .collect();
    if let Some(n) = max_samples {
        held_out.truncate(n);
    }
    if held_out.is_empty() {
        return Err(SensitivityError::NoHeldOutSamples(
            settings.calib_dir.clone(),
        ));
    }
    let total = held_out.len();
    let mut done = 0;
    let mut groups = Groups::default();
    for bucket in Bucket::STEPS {
        let metas: Vec<&SampleMeta> = held_out
            .iter()
            .copied()
            .filter(|m| m.bucket == bucket)
            .collect();
        if metas.is_empty() || cancel.is_cancelled() {
            continue;
        }
        let mut quantized = float.clone();
        super::apply(
            &mut quantized,
            &plan.for_bucket(bucket),
            QuantMode::Simulated,
        )?;
        for chunk in metas.chunks(batch_size.max(1)) {
            if cancel.is_cancelled() {
                break;
            }
            for b in load_batches(&float, &set, chunk, batch_size, cancel, false)? {
                let m = quantized.modulation(&b.pooled, &b.timestep)?;
                let out = quantized.forward(&b.x, &b.context, &m)?;
                let out = super::sensitivity::per_record(&[out], b.buckets.len())?;
                for (j, q) in out.iter().enumerate() {
                    groups.add(b.buckets[j], &b.reference[j], q);
                }
                done += b.buckets.len();
                on_event(ValidationEvent::Measured { done, total });
            }
        }
    }
    let measured = groups.results(0, 0);
    let mut rows = Vec::new();
    let mut weighted = (0.0, 0usize);
    for r in &measured {
        let layers = match plan {
            QuantConfig::Plan(p) => p.layers_for(r.bucket).clone(),
            _ => BTreeMap::new(),
        };
        let prediction = if r.bucket == Bucket::All && plan.is_per_bucket() {
            // Σ over buckets of their predicted MSE, weighted by the samples measured.
            (weighted.1 > 0).then(|| (weighted.0 / weighted.1 as f64, f64::NAN))
        } else {
            additive_prediction(report, &layers, r.bucket)
        };
        if r.bucket != Bucket::All
            && let Some((mse, _)) = prediction
        {
            weighted.0 += mse * r.n_samples as f64;
            weighted.1 += r.n_samples;
        }
        rows.push(ValidationRow {
            bucket: r.bucket,
            n_samples: r.n_samples,
            mse: r.mse,
            sqnr_db: r.sqnr_db,
            // Measured here (a real forward of the quantized model), never estimated.
            cosine: r.cosine.unwrap_or(f64::NAN),
            predicted_mse: prediction.map(|p| p.0),
            predicted_sqnr_db: prediction.map(|p| p.1).filter(|v| v.is_finite()),
        });
    }
    Ok(Validation {
        samples: held_out.iter().map(|m| m.file.clone()).collect(),
        rows,
    })
}

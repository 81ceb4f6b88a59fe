//! A sensitivity sweep split across ranks: which layers each part measures (a cost model
//! balanced longest-first, so parts finish together), where a part's results live
//! (`OUTPUT/shard-R-of-N/`, a sweep folder of its own: locked, resumable), and the merge of the
//! parts into the one `sensitivity.json`/`.csv` a whole run writes, byte for byte (each layer's
//! measurement depends only on the layer, the model and the samples).
//!
//! The linearized scope estimates every layer from the same gradient passes, so it is not split
//! by layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::dist::{Collective, Shard, balance_by_cost};
use crate::model::MmditConfig;
use crate::model::registry::{LayerId, LinearLayer, mmdit_linear_layers};

use super::sensitivity::{
    REPORT_JSON, Scope, SensitivityConfig, SensitivityError, SensitivityReport, read_report,
    settings_differences, write_report,
};

/// Why parts cannot be run or merged.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error(
        "the linearized scope estimates every layer from the same gradient passes: run it whole (a split by layer would repeat all of them on every rank)"
    )]
    LinearizedWhole,
    #[error(transparent)]
    Parts(#[from] crate::dist::shard::PartsError),
    #[error(
        "{dir}: part {rank} has {left} layer(s) left to measure: rerun it (it resumes), then merge"
    )]
    Unfinished {
        dir: PathBuf,
        rank: usize,
        left: usize,
    },
    #[error("part {rank} ran with other settings or data than part 0 ({differences})")]
    Differ { rank: usize, differences: String },
    #[error("layer {0} was measured by two parts")]
    Overlap(String),
    #[error("part {rank} sent a report that cannot be read: {problem}")]
    BadPayload { rank: usize, problem: String },
}

/// Where a part keeps its results: the output folder itself for a whole run.
pub fn shard_dir(output_dir: &Path, shard: Shard) -> PathBuf {
    if shard.is_part() {
        output_dir.join(shard.folder_name())
    } else {
        output_dir.to_owned()
    }
}

/// The relative work of measuring `id` in `scope`: for the output-level scopes, the blocks
/// between the layer and the output that every bit width and sample runs again (the stage
/// cache reuses everything before it); a full forward per layer without the cache; one block
/// for the block scope; the weights for the layer scope. Only ratios matter.
pub fn layer_cost(layer: &LinearLayer, depth: usize, scope: Scope, use_cache: bool) -> f64 {
    let downstream = match layer.id {
        LayerId::Block { block, .. } => (depth - block.min(depth)) as f64,
        LayerId::FinalLinear | LayerId::FinalAdaln => 0.0,
        _ => depth as f64,
    };
    match scope {
        Scope::Model | Scope::Linearized if !use_cache => 1.0,
        Scope::Model | Scope::Linearized => downstream + 0.05,
        Scope::Block => 1.0,
        Scope::Layer => layer.params as f64,
    }
}

/// The layers part `shard` measures, in `layers`' order: all of them for a whole run.
pub fn layers_of_shard(
    layers: Vec<LinearLayer>,
    model: &MmditConfig,
    cfg: &SensitivityConfig,
    shard: Shard,
) -> Vec<LinearLayer> {
    if !shard.is_part() {
        return layers;
    }
    let costs: Vec<f64> = layers
        .iter()
        .map(|l| layer_cost(l, model.depth, cfg.scope, cfg.use_cache))
        .collect();
    let owner = balance_by_cost(&costs, shard.size);
    layers
        .into_iter()
        .zip(owner)
        .filter(|(_, r)| *r == shard.rank)
        .map(|(l, _)| l)
        .collect()
}

/// One report from the parts' reports (by rank): equal settings required, layers in the
/// model's order, what is left to measure kept.
pub fn merge_reports(parts: Vec<SensitivityReport>) -> Result<SensitivityReport, SensitivityError> {
    let mut parts = parts.into_iter();
    let Some(mut merged) = parts.next() else {
        return Err(SensitivityError::Bug("a merge of no parts".into()));
    };
    let order: HashMap<String, usize> = mmdit_linear_layers(&merged.settings.model_config)
        .into_iter()
        .enumerate()
        .map(|(i, l)| (l.name, i))
        .collect();
    for (i, part) in parts.enumerate() {
        let d = settings_differences(&merged.settings, &part.settings);
        if !d.is_empty() {
            return Err(ShardsError::Differ {
                rank: i + 1,
                differences: d.join("; "),
            }
            .into());
        }
        for l in part.layers {
            if merged.layers.iter().any(|m| m.name == l.name) {
                return Err(ShardsError::Overlap(l.name).into());
            }
            merged.layers.push(l);
        }
        merged.pending.extend(part.pending);
    }
    let rank_of = |name: &str| order.get(name).copied().unwrap_or(usize::MAX);
    merged.layers.sort_by_key(|l| rank_of(&l.name));
    merged.pending.sort_by_key(|n| rank_of(n));
    Ok(merged)
}

/// The end of a group run: every rank sends its part's report; rank 0 merges them, writes the
/// merged files into `output_dir` and returns the merged report, the others their part's.
pub fn merge_over_group(
    group: &dyn Collective,
    part: SensitivityReport,
    output_dir: &Path,
) -> Result<SensitivityReport, SensitivityError> {
    let payload = serde_json::to_vec(&part).expect("a sensitivity report serializes");
    let all = group
        .gather("the merge of the layer results", &payload)
        .map_err(Box::new)?;
    if group.rank() != 0 {
        return Ok(part);
    }
    let parts = all
        .iter()
        .enumerate()
        .map(|(rank, bytes)| {
            serde_json::from_slice::<SensitivityReport>(bytes).map_err(|e| {
                SensitivityError::from(ShardsError::BadPayload {
                    rank,
                    problem: e.to_string(),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge_reports(parts)?;
    write_report(output_dir, &merged)?;
    Ok(merged)
}

/// `sd3lab merge` for sensitivity: the finished parts in `output_dir`'s `shard-R-of-N` folders
/// (all N of one split) merged into `output_dir/sensitivity.json` and `.csv`.
pub fn merge_shard_folders(output_dir: &Path) -> Result<SensitivityReport, SensitivityError> {
    let found =
        crate::dist::shard::find_parts(output_dir, REPORT_JSON).map_err(ShardsError::from)?;
    let mut parts = Vec::new();
    for (rank, json) in found.iter().enumerate() {
        let part = read_report(json)?;
        if !part.pending.is_empty() {
            return Err(ShardsError::Unfinished {
                dir: output_dir.to_owned(),
                rank,
                left: part.pending.len(),
            }
            .into());
        }
        parts.push(part);
    }
    let _lock = crate::fsutil::FolderLock::acquire(output_dir)?;
    let merged = merge_reports(parts)?;
    write_report(output_dir, &merged)?;
    Ok(merged)
}

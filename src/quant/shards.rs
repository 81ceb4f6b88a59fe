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
    REPORT_JSON, RunSettings, Scope, SensitivityConfig, SensitivityError, SensitivityReport,
    read_report, settings_differences, write_report,
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
    #[error(
        "part {rank} split another list of layers than part 0 (other --layers, --scope or --no-cache): run every part with the same flags"
    )]
    OtherLayers { rank: usize },
    #[error(
        "the parts do not cover the job: {missing} layer(s) missing, first {first} (parts run with other flags?)"
    )]
    Uncovered { missing: usize, first: String },
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

/// A part's settings as every machine sees them the same: without where the calibration
/// folder and the checkpoint are and when their files were written (each Mac has its own
/// paths, downloads and copies); names, sizes and every other setting still count.
fn portable(settings: &RunSettings) -> RunSettings {
    let base = |p: &str| {
        Path::new(p)
            .file_name()
            .map_or_else(|| p.to_owned(), |n| n.to_string_lossy().into_owned())
    };
    let mut s = settings.clone();
    s.calib_dir = PathBuf::new();
    s.model = base(&s.model);
    if let Some(inputs) = &mut s.inputs {
        inputs.checkpoint.file = base(&inputs.checkpoint.file);
        inputs.checkpoint.modified_ns = 0;
        for f in &mut inputs.sample_files {
            f.modified_ns = 0;
        }
    }
    s
}

/// One report from the parts' reports (by rank): the same settings (as [`portable`] compares
/// them: parts may come from several machines) and together exactly the job's layers, each
/// once; the layers in the model's order, what is left to measure kept. The merged report
/// carries part 0's settings.
pub fn merge_reports(parts: Vec<SensitivityReport>) -> Result<SensitivityReport, SensitivityError> {
    let job = parts.first().and_then(|p| p.job_layers.clone());
    let mut parts = parts.into_iter();
    let Some(mut merged) = parts.next() else {
        return Err(SensitivityError::Bug("a merge of no parts".into()));
    };
    let order: HashMap<String, usize> = mmdit_linear_layers(&merged.settings.model_config)
        .into_iter()
        .enumerate()
        .map(|(i, l)| (l.name, i))
        .collect();
    let reference = portable(&merged.settings);
    for (i, part) in parts.enumerate() {
        if part.job_layers != job {
            return Err(ShardsError::OtherLayers { rank: i + 1 }.into());
        }
        let d = settings_differences(&reference, &portable(&part.settings));
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
    // Every layer of the job is measured or pending in exactly one part.
    if let Some(job) = &job {
        let covered = merged.layers.len() + merged.pending.len();
        let missing: Vec<&String> = job
            .iter()
            .filter(|n| !merged.layers.iter().any(|l| &l.name == *n) && !merged.pending.contains(n))
            .collect();
        if covered != job.len() || !missing.is_empty() {
            return Err(ShardsError::Uncovered {
                missing: missing.len(),
                first: missing.first().map(|n| n.to_string()).unwrap_or_default(),
            }
            .into());
        }
    }
    let rank_of = |name: &str| order.get(name).copied().unwrap_or(usize::MAX);
    merged.layers.sort_by_key(|l| rank_of(&l.name));
    merged.pending.sort_by_key(|n| rank_of(n));
    merged.job_layers = None;
    Ok(merged)
}

/// The end of a group run: every rank sends its part's report; rank 0 merges them, writes the
/// merged files into `output_dir` and returns the merged report, the others their part's.
pub fn merge_over_group(
    group: &dyn Collective,
    part: SensitivityReport,
    output_dir: &Path,
) -> Result<SensitivityReport, SensitivityError> {
    let Some(parts) = crate::dist::gather_json(group, "the merge of the layer results", &part)
        .map_err(Box::new)?
    else {
        return Ok(part);
    };
    // Every rank has sent its results, so none writes any more: the temporary files killed
    // parts left can go.
    crate::fsutil::remove_temporary_files(output_dir, 2)
        .map_err(|(path, source)| SensitivityError::Io { path, source })?;
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
    crate::dist::shard::check_parts_idle(output_dir)?;
    let _lock = crate::fsutil::FolderLock::acquire(output_dir)?;
    crate::fsutil::remove_temporary_files(output_dir, 2)
        .map_err(|(path, source)| SensitivityError::Io { path, source })?;
    let merged = merge_reports(parts)?;
    write_report(output_dir, &merged)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::sensitivity::{FileStamp, InputIdentity};

    /// The fixture run split in two parts by alternate layers, as on two machines: each with
    /// its own paths and file times.
    fn parts() -> (SensitivityReport, Vec<SensitivityReport>) {
        let mut whole: SensitivityReport =
            serde_json::from_str(include_str!("../../tests/fixtures/sensitivity-tiny.json"))
                .unwrap();
        whole.settings.inputs = Some(InputIdentity {
            calibration: serde_json::Value::Null,
            checkpoint: FileStamp {
                file: "/Users/a/models/tiny/sd3_medium.safetensors".into(),
                bytes: 100,
                modified_ns: 1,
            },
            sample_files: vec![FileStamp {
                file: "000000_000.npz".into(),
                bytes: 10,
                modified_ns: 2,
            }],
        });
        let names: Vec<String> = whole.layers.iter().map(|l| l.name.clone()).collect();
        let parts = (0..2)
            .map(|r| {
                let mut p = whole.clone();
                p.layers = whole
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 2 == r)
                    .map(|(_, l)| l.clone())
                    .collect();
                p.job_layers = Some(names.clone());
                if r == 1 {
                    p.settings.calib_dir = "/Users/b/calib".into();
                    let inputs = p.settings.inputs.as_mut().unwrap();
                    inputs.checkpoint.file = "/Users/b/cache/tiny/sd3_medium.safetensors".into();
                    inputs.checkpoint.modified_ns = 7;
                    inputs.sample_files[0].modified_ns = 9;
                }
                p
            })
            .collect();
        (whole, parts)
    }

    #[test]
    fn parts_from_several_machines_merge_into_the_whole_run() {
        let (whole, parts) = parts();
        assert_eq!(merge_reports(parts).unwrap(), whole);
    }

    #[test]
    fn parts_of_other_runs_or_missing_layers_are_refused() {
        let (_, mut p) = parts();
        p[1].settings.bits = vec![2, 8];
        let e = merge_reports(p).unwrap_err().to_string();
        assert!(
            e.contains("part 1 ran with other settings") && e.contains("bits"),
            "{e}"
        );
        let (_, mut p) = parts();
        p[1].settings.inputs.as_mut().unwrap().sample_files[0].bytes = 11;
        assert!(merge_reports(p).is_err());
        let (_, mut p) = parts();
        p[1].layers.pop();
        let e = merge_reports(p).unwrap_err().to_string();
        assert!(e.contains("1 layer(s) missing"), "{e}");
        let (_, mut p) = parts();
        p[1].job_layers.as_mut().unwrap().pop();
        let e = merge_reports(p).unwrap_err().to_string();
        assert!(e.contains("another list of layers"), "{e}");
        let (_, mut p) = parts();
        let first = p[0].layers[0].clone();
        p[1].layers.push(first);
        let e = merge_reports(p).unwrap_err().to_string();
        assert!(e.contains("measured by two parts"), "{e}");
    }
}

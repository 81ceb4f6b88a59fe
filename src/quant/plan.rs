//! Mixed-precision plans from a sensitivity run: one bit width per layer minimising the summed
//! error (or maximising the summed SQNR) under a parameter-weighted average-bits budget that
//! counts scales and biases (`bits + 32/group`).
//!
//! Solved exactly as a multiple-choice knapsack by dynamic programming over Pareto frontiers:
//! layer by layer, every non-dominated (cost, error) pair is kept, with cost the exact integer
//! Σ params·bits. The last frontier is the whole budget/error trade-off (`pareto.csv`); the plan
//! for a target is its best point within budget, traced back to one choice per layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calib::Bucket;

use super::sensitivity::SensitivityReport;
use super::{LayerQuant, QuantPlan, scale_overhead_bits};

/// One option for one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub bits: i32,
    /// Σ-able integer cost: parameters × bits.
    pub cost: u64,
    /// What is minimised (mse, or −SQNR).
    pub error: f64,
}

/// One point of a frontier with its back-pointer.
#[derive(Debug, Clone, Copy)]
struct Node {
    cost: u64,
    error: f64,
    parent: usize,
    choice: usize,
}

/// The exact solver's state: one frontier per layer.
pub struct Frontiers {
    levels: Vec<Vec<Node>>,
}

impl Frontiers {
    /// Builds every frontier. Each layer needs at least one choice.
    pub fn solve(layers: &[Vec<Choice>]) -> Self {
        let mut levels: Vec<Vec<Node>> = Vec::with_capacity(layers.len());
        let mut prev = vec![Node {
            cost: 0,
            error: 0.0,
            parent: 0,
            choice: 0,
        }];
        for choices in layers {
            let mut cand: Vec<Node> = Vec::with_capacity(prev.len() * choices.len());
            for (pi, p) in prev.iter().enumerate() {
                for (ci, c) in choices.iter().enumerate() {
                    cand.push(Node {
                        cost: p.cost + c.cost,
                        error: p.error + c.error,
                        parent: pi,
                        choice: ci,
                    });
                }
            }
            cand.sort_by(|a, b| a.cost.cmp(&b.cost).then(a.error.total_cmp(&b.error)));
            let mut frontier: Vec<Node> = Vec::new();
            for n in cand {
                if frontier.last().is_none_or(|last| n.error < last.error) {
                    frontier.push(n);
                }
            }
            levels.push(frontier.clone());
            prev = frontier;
        }
        Self { levels }
    }

    /// `(cost, error)` of every non-dominated complete assignment, cheapest first.
    pub fn pareto(&self) -> Vec<(u64, f64)> {
        self.levels
            .last()
            .map(|l| l.iter().map(|n| (n.cost, n.error)).collect())
            .unwrap_or_default()
    }

    /// The best assignment with cost ≤ `budget`: choice index per layer, cost, error.
    pub fn best_within(&self, budget: u64) -> Option<(Vec<usize>, u64, f64)> {
        let last = self.levels.last()?;
        let (mut idx, best) = last
            .iter()
            .enumerate()
            .rev()
            .find(|(_, n)| n.cost <= budget)?;
        let (cost, error) = (best.cost, best.error);
        let mut picks = vec![0; self.levels.len()];
        for level in (0..self.levels.len()).rev() {
            let n = self.levels[level][idx];
            picks[level] = n.choice;
            idx = n.parent;
        }
        Some((picks, cost, error))
    }
}

/// What to optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    Sqnr,
    Mse,
}

/// A built plan and what it predicts.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltPlan {
    pub plan: QuantPlan,
    pub average_bits: f64,
    pub predicted_error: f64,
    pub predicted_bytes: u64,
    /// `(average bits, summed objective)` of every Pareto point.
    pub pareto: Vec<(f64, f64)>,
    pub left_float: Vec<String>,
}

/// Why no plan can be built from a sensitivity report.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the sensitivity report has no results for the bit widths {bits:?}")]
    NoResults {
        /// The bit widths asked for (empty: any).
        bits: Vec<i32>,
    },
    #[error("the sensitivity report has no per-bucket results")]
    NoBucketResults,
    #[error(
        "a target of {target_bits} bits per weight is below the {overhead} bits per weight that scales and biases take at group size {group_size}"
    )]
    BelowOverhead {
        target_bits: f64,
        overhead: f64,
        group_size: i32,
        /// The smallest average bits the report can reach.
        minimum: f64,
    },
    #[error(
        "a target of {target_bits} bits per weight is below the smallest reachable average of {minimum:.3} bits"
    )]
    BelowMinimum { target_bits: f64, minimum: f64 },
    #[error("bucket {bucket}: {source}")]
    Bucket {
        bucket: Bucket,
        source: Box<PlanError>,
    },
    #[error(
        "the sensitivity run did not finish: {missing} layer(s) not measured (of {}): {}{}",
        missing + measured,
        first.join(", "),
        if *missing > first.len() { ", …" } else { "" }
    )]
    Incomplete {
        missing: usize,
        measured: usize,
        first: Vec<String>,
    },
}

impl PlanError {
    /// The smallest average bits the report can reach, when the target was below it (for a
    /// front end's hint).
    pub fn lowest_target(&self) -> Option<f64> {
        match self {
            Self::BelowOverhead { minimum, .. } | Self::BelowMinimum { minimum, .. } => {
                Some(*minimum)
            }
            Self::Bucket { source, .. } => source.lowest_target(),
            Self::NoResults { .. } | Self::NoBucketResults | Self::Incomplete { .. } => None,
        }
    }
}

/// Builds the plan for `target_bits` from the `all` bucket of a sensitivity report.
pub fn build_plan(
    report: &SensitivityReport,
    target_bits: f64,
    bits: &[i32],
    objective: Objective,
) -> Result<BuiltPlan, PlanError> {
    build_plan_for(report, Bucket::All, target_bits, bits, objective)
}

/// Builds one plan per step bucket (each optimal for its bucket's results and within the
/// budget, so every step, and the average over steps, is too), with the `all` plan as the
/// default `layers` map. Bucket predictions are recorded under `buckets_predicted`.
pub fn build_plan_per_bucket(
    report: &SensitivityReport,
    target_bits: f64,
    bits: &[i32],
    objective: Objective,
) -> Result<BuiltPlan, PlanError> {
    let mut built = build_plan_for(report, Bucket::All, target_bits, bits, objective)?;
    let mut predicted = serde_json::Map::new();
    for bucket in Bucket::STEPS {
        let has_rows = report
            .layers
            .iter()
            .any(|l| l.results.iter().any(|r| r.bucket == bucket));
        if !has_rows {
            continue;
        }
        let b = build_plan_for(report, bucket, target_bits, bits, objective).map_err(|e| {
            PlanError::Bucket {
                bucket,
                source: Box::new(e),
            }
        })?;
        let mut entry = serde_json::Map::new();
        for key in [
            "average_bits",
            "predicted_error",
            "predicted_mse_additive",
            "predicted_sqnr_db_additive",
        ] {
            if let Some(v) = b.plan.extra.get(key) {
                entry.insert(key.into(), v.clone());
            }
        }
        predicted.insert(bucket.name().into(), entry.into());
        built
            .plan
            .buckets
            .insert(bucket.name().into(), b.plan.layers);
    }
    if built.plan.buckets.is_empty() {
        return Err(PlanError::NoBucketResults);
    }
    built
        .plan
        .extra
        .insert("buckets_predicted".into(), predicted.into());
    Ok(built)
}

/// The model-output error a layer map predicts if per-layer errors add up (independent
/// errors: MSEs add, and noise powers add, so SQNR = −10·log10 Σ 10^(−SQNRᵢ/10)); only for a
/// `model`-scope report or a `linearized` one (its estimate of the same). `(mse, sqnr_db)`.
pub fn additive_prediction(
    report: &SensitivityReport,
    layers: &BTreeMap<String, LayerQuant>,
    bucket: Bucket,
) -> Option<(f64, f64)> {
    if !report.settings.metric_scope.is_model_output() {
        return None;
    }
    let (mut mse, mut noise) = (0.0, 0.0);
    for (name, q) in layers {
        let row = report
            .layers
            .iter()
            .find(|l| &l.name == name)?
            .results
            .iter()
            .find(|r| r.bits == q.bits && r.group_size == q.group_size && r.bucket == bucket)?;
        mse += row.mse;
        noise += 10f64.powf(-row.sqnr_db / 10.0);
    }
    let sqnr = if noise > 0.0 {
        -10.0 * noise.log10()
    } else {
        super::sensitivity::MAX_SQNR_DB
    };
    Some((mse, sqnr.min(super::sensitivity::MAX_SQNR_DB)))
}

fn build_plan_for(
    report: &SensitivityReport,
    bucket: Bucket,
    target_bits: f64,
    bits: &[i32],
    objective: Objective,
) -> Result<BuiltPlan, PlanError> {
    let group = report.settings.group_size;
    let overhead = scale_overhead_bits(group);
    let mut names = Vec::new();
    let mut params = Vec::new();
    let mut layers: Vec<Vec<Choice>> = Vec::new();
    let mut left_float = Vec::new();
    for l in &report.layers {
        let choices: Vec<Choice> = l
            .results
            .iter()
            .filter(|r| r.bucket == bucket && (bits.is_empty() || bits.contains(&r.bits)))
            .map(|r| Choice {
                bits: r.bits,
                cost: l.params as u64 * r.bits as u64,
                error: match objective {
                    Objective::Mse => r.mse,
                    Objective::Sqnr => -r.sqnr_db,
                },
            })
            .collect();
        if choices.is_empty() {
            left_float.push(l.name.clone());
            continue;
        }
        names.push(l.name.clone());
        params.push(l.params as u64);
        layers.push(choices);
    }
    if layers.is_empty() {
        return Err(PlanError::NoResults {
            bits: bits.to_vec(),
        });
    }
    let total: u64 = params.iter().sum();
    let min_cost: u64 = layers
        .iter()
        .map(|c| c.iter().map(|x| x.cost).min().unwrap_or(0))
        .sum();
    let minimum = min_cost as f64 / total as f64 + overhead;
    let budget_bits = target_bits - overhead;
    if budget_bits <= 0.0 {
        return Err(PlanError::BelowOverhead {
            target_bits,
            overhead,
            group_size: group,
            minimum,
        });
    }
    let budget = (budget_bits * total as f64).floor() as u64;
    let frontiers = Frontiers::solve(&layers);
    let (picks, cost, error) = frontiers
        .best_within(budget)
        .ok_or(PlanError::BelowMinimum {
            target_bits,
            minimum,
        })?;
    let mut plan_layers = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        plan_layers.insert(
            name.clone(),
            LayerQuant {
                bits: layers[i][picks[i]].bits,
                group_size: group,
            },
        );
    }
    let average_bits = cost as f64 / total as f64 + overhead;
    let predicted_error = if objective == Objective::Sqnr {
        -error
    } else {
        error
    };
    let predicted_bytes = ((cost as f64 + overhead * total as f64) / 8.0).round() as u64;
    let pareto = frontiers
        .pareto()
        .into_iter()
        .map(|(c, e)| {
            (
                c as f64 / total as f64 + overhead,
                if objective == Objective::Sqnr { -e } else { e },
            )
        })
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("target_bits".into(), target_bits.into());
    extra.insert("average_bits".into(), average_bits.into());
    extra.insert(
        "objective".into(),
        serde_json::to_value(objective).unwrap_or_default(),
    );
    extra.insert("predicted_error".into(), predicted_error.into());
    extra.insert("predicted_quantized_bytes".into(), predicted_bytes.into());
    extra.insert(
        "left_float".into(),
        serde_json::to_value(&left_float).unwrap_or_default(),
    );
    if let Some((mse, sqnr)) = additive_prediction(report, &plan_layers, bucket) {
        extra.insert("predicted_mse_additive".into(), mse.into());
        extra.insert("predicted_sqnr_db_additive".into(), sqnr.into());
    }
    let plan = QuantPlan {
        schema: "sd3lab.plan/1".into(),
        layers: plan_layers,
        buckets: BTreeMap::new(),
        extra,
    };
    Ok(BuiltPlan {
        plan,
        average_bits,
        predicted_error,
        predicted_bytes,
        pareto,
        left_float,
    })
}

/// Why [`write_plan_files`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanFilesError {
    #[error("writing {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is the plan's input ({input}): writing there would replace it; choose another output"
    )]
    OutputIsInput {
        path: std::path::PathBuf,
        input: std::path::PathBuf,
    },
    #[error("the plan and its Pareto front would both be written to {0}")]
    SameOutputs(std::path::PathBuf),
}

/// Checks a plan's outputs before any work: each must be a file that can be replaced (not a
/// folder, FIFO or device), neither may be the sensitivity report read (`input`, resolved
/// through links and `.`/`..`), and they must differ.
pub fn check_plan_outputs(
    input: &std::path::Path,
    plan_file: &std::path::Path,
    pareto: &std::path::Path,
) -> Result<(), PlanFilesError> {
    for path in [plan_file, pareto] {
        crate::fsutil::destination(path).map_err(|source| PlanFilesError::Io {
            path: path.to_owned(),
            source,
        })?;
        if crate::fsutil::same_file(path, input) {
            return Err(PlanFilesError::OutputIsInput {
                path: path.to_owned(),
                input: input.to_owned(),
            });
        }
    }
    if crate::fsutil::same_file(plan_file, pareto) || plan_file == pareto {
        return Err(PlanFilesError::SameOutputs(plan_file.to_owned()));
    }
    Ok(())
}

/// Refuses a report whose last run did not finish (cancelled, killed or failed): a plan from
/// it would leave the layers it has not measured float, off the budget.
pub fn require_complete(report: &SensitivityReport) -> Result<(), PlanError> {
    if report.pending.is_empty() {
        return Ok(());
    }
    Err(PlanError::Incomplete {
        missing: report.pending.len(),
        measured: report.layers.len(),
        first: report.pending.iter().take(5).cloned().collect(),
    })
}

/// The Pareto file `sd3lab plan` writes beside its plan: `pareto.csv` in the plan's folder.
pub fn pareto_file_beside(plan_file: &std::path::Path) -> std::path::PathBuf {
    plan_file.with_file_name("pareto.csv")
}

/// What [`pareto_file_named_after`] puts after a plan's stem.
const PARETO_SUFFIX: &str = ".pareto.csv";

/// The Pareto file the app writes with a plan: named after it (`plan-x.json` →
/// `plan-x.pareto.csv`), so plans of other objectives saved in one folder keep their own.
pub fn pareto_file_named_after(plan_file: &std::path::Path) -> std::path::PathBuf {
    plan_file.with_extension(&PARETO_SUFFIX[1..])
}

/// `dir/<stem>.json`, or `dir/<stem>-2.json`…: the first plan name for which neither the plan
/// nor its [`pareto_file_named_after`] exists. Reads the disk.
pub fn numbered_plan_path(dir: &std::path::Path, stem: &str) -> std::path::PathBuf {
    dir.join(format!(
        "{}.json",
        crate::fsutil::free_stem(dir, stem, &[".json", PARETO_SUFFIX])
    ))
}

/// Writes a built plan's files, as `sd3lab plan` and the app's Save plan both do: `plan_file`
/// (the `sd3lab.plan/1` JSON that `--quant` reads) and `pareto` (`average_bits` and the summed
/// objective of every Pareto point; the CLI's [`pareto_file_beside`], the app's a name of its
/// own that never replaces an earlier one), each atomically.
pub fn write_plan_files(
    plan_file: &std::path::Path,
    pareto: &std::path::Path,
    built: &BuiltPlan,
    objective: Objective,
) -> Result<(), PlanFilesError> {
    // Plain structs and JSON values with string keys: serializing cannot fail.
    let json = serde_json::to_string_pretty(&built.plan)
        .expect("a plan serializes (plain structs, string map keys)");
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| PlanFilesError::Io { path, source }
    };
    crate::fsutil::write_atomic(plan_file, json.as_bytes()).map_err(io(plan_file))?;
    let mut csv = format!(
        "average_bits,{}\n",
        match objective {
            Objective::Sqnr => "summed_sqnr_db",
            Objective::Mse => "summed_mse",
        }
    );
    for (b, e) in &built.pareto {
        csv.push_str(&format!("{b},{e}\n"));
    }
    crate::fsutil::write_atomic(pareto, csv.as_bytes()).map_err(io(pareto))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic pseudo-random instance.
    fn instance(seed: u64, n: usize) -> Vec<Vec<Choice>> {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f64 / (1u64 << 31) as f64
        };
        (0..n)
            .map(|_| {
                let params = 10 + (next() * 90.0) as u64;
                [2, 4, 8]
                    .iter()
                    .map(|&b| Choice {
                        bits: b,
                        cost: params * b as u64,
                        error: next() * 10.0 / b as f64,
                    })
                    .collect()
            })
            .collect()
    }

    fn brute(layers: &[Vec<Choice>], budget: u64) -> Option<f64> {
        let n = layers.len();
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; n];
        loop {
            let cost: u64 = idx
                .iter()
                .enumerate()
                .map(|(i, &c)| layers[i][c].cost)
                .sum();
            let err: f64 = idx
                .iter()
                .enumerate()
                .map(|(i, &c)| layers[i][c].error)
                .sum();
            if cost <= budget && best.is_none_or(|b| err < b) {
                best = Some(err);
            }
            let mut k = 0;
            loop {
                if k == n {
                    return best;
                }
                idx[k] += 1;
                if idx[k] < layers[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
        }
    }

    #[test]
    fn dynamic_programming_matches_brute_force() {
        for seed in 0..20 {
            let layers = instance(seed, 7);
            let f = Frontiers::solve(&layers);
            let max: u64 = layers
                .iter()
                .map(|c| c.iter().map(|x| x.cost).max().unwrap())
                .sum();
            for budget in (0..=max).step_by((max / 23).max(1) as usize) {
                let dp = f.best_within(budget);
                let bf = brute(&layers, budget);
                match (dp, bf) {
                    (None, None) => {}
                    (Some((picks, cost, err)), Some(b)) => {
                        assert!(
                            (err - b).abs() < 1e-9,
                            "seed {seed} budget {budget}: {err} vs {b}"
                        );
                        assert!(cost <= budget);
                        let recomputed: f64 = picks
                            .iter()
                            .enumerate()
                            .map(|(i, &c)| layers[i][c].error)
                            .sum();
                        assert!((recomputed - err).abs() < 1e-9);
                    }
                    other => panic!("seed {seed} budget {budget}: {other:?}"),
                }
            }
            // The frontier is strictly better as the budget grows.
            let p = f.pareto();
            assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1));
        }
    }
}

#[cfg(test)]
mod plan_files_tests {
    use super::*;

    #[test]
    fn plan_files_are_the_plan_and_its_pareto_front() {
        let built = BuiltPlan {
            plan: QuantPlan {
                schema: "sd3lab.plan/1".into(),
                layers: BTreeMap::new(),
                buckets: BTreeMap::new(),
                extra: serde_json::Map::from_iter([("average_bits".into(), 4.5.into())]),
            },
            average_bits: 4.5,
            predicted_error: -30.0,
            predicted_bytes: 0,
            pareto: vec![(2.5, -10.0), (4.5, -30.25)],
            left_float: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let plan_file = dir.path().join("my-plan.json");
        let csv = pareto_file_beside(&plan_file);
        assert_eq!(csv, dir.path().join("pareto.csv"));
        write_plan_files(&plan_file, &csv, &built, Objective::Mse).unwrap();
        assert_eq!(
            std::fs::read_to_string(&csv).unwrap(),
            "average_bits,summed_mse\n2.5,-10\n4.5,-30.25\n"
        );
        let back: QuantPlan =
            serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
        assert_eq!(back, built.plan);
        let missing = dir.path().join("no/such/folder/plan.json");
        let e = write_plan_files(
            &missing,
            &pareto_file_beside(&missing),
            &built,
            Objective::Sqnr,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no/such/folder"), "{e}");
    }
}

#[cfg(test)]
mod plan_error_tests {
    use super::*;
    use crate::quant::sensitivity::{BucketResult, LayerResult, RunSettings};

    /// Two layers of 100 parameters measured at 2 and 4 bits, group size 64, in `buckets`.
    fn report(buckets: &[Bucket]) -> SensitivityReport {
        let layer = |name: &str| LayerResult {
            name: name.into(),
            block: None,
            kind: crate::model::registry::LayerKind::Embedder,
            params: 100,
            results: [2, 4]
                .iter()
                .flat_map(|&bits| {
                    buckets.iter().map(move |&bucket| BucketResult {
                        bits,
                        group_size: 64,
                        bucket,
                        mse: 1.0 / bits as f64,
                        mse_stderr: None,
                        sqnr_db: 6.0 * bits as f64,
                        cosine: Some(1.0),
                        n_samples: 1,
                    })
                })
                .collect(),
        };
        SensitivityReport {
            pending: Vec::new(),
            job_layers: None,
            schema: "sd3lab.sensitivity/1".into(),
            settings: RunSettings {
                model: "tiny".into(),
                model_config: crate::model::MmditConfig::sd3_medium(),
                calib_dir: "calib".into(),
                bits: vec![2, 4],
                group_size: 64,
                max_images: None,
                step_stride: None,
                dtype: crate::model::config::ModelDtype::Float32,
                samples: Vec::new(),
                metric_scope: crate::quant::sensitivity::Scope::Layer,
                inputs: None,
                probes: None,
            },
            layers: vec![layer("a"), layer("b")],
        }
    }

    #[test]
    fn impossible_targets_are_typed_with_the_lowest_reachable_one() {
        let r = report(&[Bucket::All]);
        assert!(build_plan(&r, 4.5, &[], Objective::Sqnr).is_ok());
        let err = build_plan(&r, 0.25, &[], Objective::Sqnr).unwrap_err();
        assert_eq!(
            err,
            PlanError::BelowOverhead {
                target_bits: 0.25,
                overhead: 0.5,
                group_size: 64,
                minimum: 2.5
            }
        );
        assert_eq!(err.lowest_target(), Some(2.5));
        let err = build_plan(&r, 2.1, &[], Objective::Sqnr).unwrap_err();
        assert_eq!(
            err,
            PlanError::BelowMinimum {
                target_bits: 2.1,
                minimum: 2.5
            }
        );
        assert_eq!(
            err.to_string(),
            "a target of 2.1 bits per weight is below the smallest reachable average of 2.500 bits"
        );
        assert_eq!(
            build_plan(&r, 4.5, &[8], Objective::Mse).unwrap_err(),
            PlanError::NoResults { bits: vec![8] }
        );
        assert_eq!(
            build_plan_per_bucket(&r, 4.5, &[], Objective::Sqnr).unwrap_err(),
            PlanError::NoBucketResults
        );
    }

    #[test]
    fn a_bucket_that_cannot_meet_the_target_is_named() {
        let mut r = report(&[Bucket::All, Bucket::Early]);
        // Early measured at 4 bits only: 2.5 bits is reachable overall but not in early.
        for l in &mut r.layers {
            l.results
                .retain(|x| !(x.bucket == Bucket::Early && x.bits == 2));
        }
        let err = build_plan_per_bucket(&r, 3.0, &[], Objective::Sqnr).unwrap_err();
        assert!(
            matches!(&err, PlanError::Bucket { bucket: Bucket::Early, source }
                if matches!(**source, PlanError::BelowMinimum { .. })),
            "{err:?}"
        );
        assert_eq!(err.lowest_target(), Some(4.5));
        assert!(
            err.to_string()
                .starts_with("bucket early: a target of 3 bits"),
            "{err}"
        );
    }
}

//! The `linearized` sensitivity scope: every layer's error at the MMDiT's output, to first
//! order, estimated from gradient probes (Hutchinson's estimator) for all layers and bit widths
//! at once.
//!
//! For a layer with weight W and quantization error ΔW_b = Q_b(W) − W, the output moves to
//! first order by J ΔW_b (J: the Jacobian of the output with respect to W). For a probe v of
//! independent standard normal values over the output and g_v = ∂(v·f)/∂W = Jᵀv, which one
//! backward pass gives for every layer at once, E[(g_v · ΔW_b)²] = ‖J ΔW_b‖². Each (layer, bits)
//! then costs one dot product. The sum over a group's samples divided by its output elements
//! estimates the `model` scope's `mse` (what a layer's error has grown to at the output, which
//! the `block` and `layer` proxies miss); `sqnr_db` follows from it and the float outputs'
//! energy; `cosine` is not estimated (the probes measure the error's size, not its direction).
//!
//! Noise: for Gaussian v, Var[(v·a)²] = 2‖a‖⁴, so the mean of K probes has a relative standard
//! error of √(2/K) per pass; a group's `mse_stderr` sums the passes' variances (estimated from
//! their own means). Accuracy follows the number of passes in all: by default each batch gets
//! enough probes for [`PROBE_BUDGET`] passes over the run.
//!
//! Batches: a pass over several records (of one step bucket) with independent probe values per
//! record estimates the sum of their squared errors (the cross terms vanish in expectation),
//! with the noise of one estimate of that sum. On a CPU, where a batch costs what its records
//! cost one at a time, batch size 1 gives the least noise for the work.
//!
//! Memory: a backward pass holds the activations of one batch's forward (the graph MLX builds),
//! one gradient per measured layer (the measured weights' size, in the model's dtype) and,
//! for the whole run, each layer's per-group scales and biases at every bit width (float32; two
//! sets for a float16 or bfloat16 model, see [`GroupQuant`]).
//!
//! Resume: after every batch the running sums are saved in [`STATE_FILE`] (atomically);
//! a rerun with the same settings continues after the last saved batch, and its
//! `sensitivity.json` equals an uninterrupted run's byte for byte (the probes depend only on
//! the seed, the batch and the probe index).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mlx_rs::{Array, Dtype};
use serde::{Deserialize, Serialize};

use crate::calib::{Bucket, CalibrationSet, SampleMeta};
use crate::job::CancelToken;
use crate::model::cpu_kernels::PlainMlx;
use crate::model::mmdit::Mmdit;
use crate::model::nn::{MlxResult, to_vec_f32};
use crate::model::registry::{LayerId, LinearLayer};
use crate::rng::NumpyRandomState;

use super::sensitivity::{
    BucketResult, LayerResult, RunSettings, SampleBatch, Scope, SensitivityConfig,
    SensitivityError, SensitivityEvent, SensitivityReport, load_batches, settings_differences,
    write_report,
};
use super::{LayerQuant, quantize_weight};

/// Forward/backward passes in all that the default number of probes aims at: about 16 gave a
/// Spearman ρ of 0.98 against the exact `model` ranking in the prototype measurements
/// (issue 18), and accuracy follows the total.
pub const PROBE_BUDGET: usize = 16;

/// The most probes per batch a run accepts.
pub const MAX_PROBES: usize = 4096;

/// The running sums of an unfinished `linearized` run, beside `sensitivity.json`.
pub const STATE_FILE: &str = "sensitivity.linearized-state.json";

const STATE_SCHEMA: &str = "sd3lab.linearized-state/1";

/// How a `linearized` run draws its probes (part of its settings: another value is another
/// run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// Probes (forward/backward passes) per batch.
    pub per_pass: usize,
    pub seed: u64,
    /// Calibration records per batch.
    pub batch_size: usize,
}

/// The default probes per batch: enough for [`PROBE_BUDGET`] passes over `records` records
/// in batches of `batch_size`, at least one.
pub fn auto_probes(records: usize, batch_size: usize) -> usize {
    let batches = records.div_ceil(batch_size.max(1)).max(1);
    PROBE_BUDGET.div_ceil(batches).max(1)
}

/// Probe `k` of batch `batch`: `len` standard normal values, as
/// `numpy.random.RandomState(s).randn(len)` gives them, where `s` is the low 32 bits of
/// splitmix64 over the run's seed, the batch and the probe index (reproducible anywhere).
pub fn probe_values(seed: u64, batch: usize, k: usize, len: usize) -> Vec<f32> {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let s = mix(mix(mix(seed) ^ batch as u64) ^ k as u64);
    NumpyRandomState::new(s as u32)
        .randn(len)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// The inputs of one denoiser call: latent `(B, h, w, C)`, text `(B, T, D)`, pooled text
/// `(B, P)` and one timestep per row.
#[derive(Clone, Copy)]
pub struct DenoiserInputs<'a> {
    pub x: &'a Array,
    pub context: &'a Array,
    pub pooled: &'a Array,
    pub timestep: &'a Array,
}

impl<'a> DenoiserInputs<'a> {
    fn of(b: &'a SampleBatch) -> Self {
        Self {
            x: &b.x,
            context: &b.context,
            pooled: &b.pooled,
            timestep: &b.timestep,
        }
    }
}

/// `∂(v·f)/∂W` for the weights `weights` of layers `ids` (the model's own, in that order),
/// where `f` is the denoiser's output on `inputs` and `v` is `cotangent` (same shape as the
/// output): one forward and one backward pass, with the adaLN modulation computed inside.
pub fn output_gradients(
    m: &Mmdit,
    ids: &[LayerId],
    weights: &[Array],
    inputs: DenoiserInputs<'_>,
    cotangent: &Array,
) -> MlxResult<Vec<Array>> {
    // The project's CPU kernels evaluate their input and have no gradient.
    let _plain = PlainMlx::enter();
    let f = |w: &[Array]| -> MlxResult<Vec<Array>> {
        Ok(vec![m.with_weights(ids, w)?.denoise(
            inputs.x,
            inputs.context,
            inputs.pooled,
            inputs.timestep,
        )?])
    };
    let (_, grads) = mlx_rs::transforms::fallible_vjp(f, weights, std::slice::from_ref(cotangent))?;
    Ok(grads)
}

/// One step bucket's totals over the probed records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    /// Σ y² of the float outputs.
    energy: f64,
    elements: usize,
    samples: usize,
}

/// A (layer, bits, bucket)'s running sums: the estimated squared error and its variance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Sums {
    err: f64,
    var: f64,
}

/// What [`STATE_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    schema: String,
    settings: RunSettings,
    /// The measured layers, in order.
    layers: Vec<String>,
    batches_done: usize,
    totals: BTreeMap<Bucket, Totals>,
    /// `[layer][bits]` sums by bucket.
    sums: Vec<Vec<BTreeMap<Bucket, Sums>>>,
}

impl State {
    fn new(settings: RunSettings, layers: Vec<String>, bits: usize) -> Self {
        let sums = vec![vec![BTreeMap::new(); bits]; layers.len()];
        Self {
            schema: STATE_SCHEMA.into(),
            settings,
            layers,
            batches_done: 0,
            totals: BTreeMap::new(),
            sums,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SensitivityError + '_ {
    move |source| SensitivityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The saved state of an earlier, unfinished run of the same settings; `None` when there is
/// none. A state file that cannot be read, or that belongs to other settings, is refused
/// (resuming would discard it; `--overwrite` starts over).
fn read_state(
    path: &Path,
    settings: &RunSettings,
    layers: &[String],
    bits: usize,
    dir: &Path,
) -> Result<Option<State>, SensitivityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let unreadable = |reason: String| SensitivityError::UnreadablePrevious {
        path: path.to_owned(),
        reason,
    };
    let state: State = serde_json::from_str(&text)
        .map_err(|e| unreadable(format!("not a linearized run's state ({e})")))?;
    if state.schema != STATE_SCHEMA {
        return Err(unreadable(format!(
            "schema {:?}, not {STATE_SCHEMA:?}",
            state.schema
        )));
    }
    let d = settings_differences(&state.settings, settings);
    if !d.is_empty() {
        return Err(SensitivityError::SettingsDiffer {
            dir: dir.to_owned(),
            differences: d.join("; "),
        });
    }
    if state.layers != layers
        || state.sums.len() != layers.len()
        || state.sums.iter().any(|s| s.len() != bits)
    {
        return Err(unreadable(
            "it measured other layers than these settings select".into(),
        ));
    }
    Ok(Some(state))
}

fn write_state(path: &Path, state: &State) -> Result<(), SensitivityError> {
    // Plain structs with string map keys: serializing cannot fail.
    let json = serde_json::to_string(state)
        .expect("a linearized state serializes (plain structs, string map keys)");
    crate::fsutil::write_atomic(path, json.as_bytes()).map_err(io_error(path))
}

/// Removes a state file left by an earlier run (starting over).
pub(crate) fn remove_state(dir: &Path) -> Result<(), SensitivityError> {
    let path = dir.join(STATE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Everything the sweep needs besides the model.
pub(crate) struct SweepInputs<'a> {
    pub set: &'a CalibrationSet,
    pub metas: &'a [&'a SampleMeta],
    pub layers: &'a [LinearLayer],
    pub cfg: &'a SensitivityConfig,
}

/// Runs (or resumes) a `linearized` sweep: `report` holds this run's settings (with
/// [`ProbeSettings`]) and, when an earlier run finished, its results.
pub(crate) fn sweep(
    mmdit: &Mmdit,
    inputs: SweepInputs<'_>,
    mut report: SensitivityReport,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(SensitivityEvent),
) -> Result<SensitivityReport, SensitivityError> {
    let SweepInputs {
        set,
        metas,
        layers,
        cfg,
    } = inputs;
    let dir = &cfg.output_dir;
    let probes =
        report.settings.probes.clone().ok_or_else(|| {
            SensitivityError::Bug("a linearized run without probe settings".into())
        })?;
    if report.pending.is_empty() && !report.layers.is_empty() {
        // Finished earlier: the same run, unless this selection has layers it did not
        // estimate (a linearized run cannot add layers without probing again).
        let missing: Vec<&str> = layers
            .iter()
            .filter(|l| !report.layers.iter().any(|r| r.name == l.name))
            .map(|l| l.name.as_str())
            .collect();
        if let Some(first) = missing.first() {
            return Err(SensitivityError::SettingsDiffer {
                dir: cfg.output_dir.clone(),
                differences: format!(
                    "layers: the finished linearized run estimated {} layers, not the {} more this selection has (first {first})",
                    report.layers.len(),
                    missing.len()
                ),
            });
        }
        remove_state(&cfg.output_dir)?;
        return Ok(report);
    }
    // Layers whose input is not a multiple of the group size stay float: nothing to measure.
    let measured: Vec<&LinearLayer> = layers
        .iter()
        .filter(|l| l.in_features.is_multiple_of(cfg.group_size as usize))
        .collect();
    let names: Vec<String> = measured.iter().map(|l| l.name.clone()).collect();
    let ids: Vec<LayerId> = measured.iter().map(|l| l.id).collect();
    let bits = &report.settings.bits;
    let state_path = dir.join(STATE_FILE);
    let mut state = match read_state(&state_path, &report.settings, &names, bits.len(), dir)? {
        Some(s) => s,
        None => State::new(report.settings.clone(), names.clone(), bits.len()),
    };
    // The folder says what it holds from the start: every layer pending.
    report.layers.clear();
    report.pending = layers.iter().map(|l| l.name.clone()).collect();
    write_report(dir, &report)?;

    on_event(SensitivityEvent::Preparing {
        samples: metas.len(),
    });
    // One step bucket per batch (its estimate is the batch's sum).
    let mut sorted = metas.to_vec();
    sorted.sort_by_key(|m| m.bucket);
    let mut batches = load_batches(mmdit, set, &sorted, probes.batch_size, cancel, true)?;
    for b in &mut batches {
        b.release_state();
    }
    if cancel.is_cancelled() {
        return Ok(report);
    }
    on_event(SensitivityEvent::Planned {
        layers: layers.len(),
        already_done: 0,
        bits: bits.len(),
        samples: metas.len(),
    });
    on_event(SensitivityEvent::Probing {
        batches: batches.len(),
        already_done: state.batches_done.min(batches.len()),
        probes: probes.per_pass,
    });
    let weights = mmdit.weights_of(&ids)?;
    let mut quantized: Vec<Vec<GroupQuant>> = Vec::with_capacity(weights.len());
    for w in &weights {
        let per_bits = bits
            .iter()
            .map(|&b| {
                GroupQuant::new(
                    w,
                    LayerQuant {
                        bits: b,
                        group_size: cfg.group_size,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        quantized.push(per_bits);
    }
    let dtype = mmdit.dtype();
    for (bi, b) in batches.iter().enumerate().skip(state.batches_done) {
        let t = Instant::now();
        let mut squares = vec![vec![0f64; bits.len()]; ids.len()];
        // Nothing to differentiate when every selected layer stays float.
        let passes = if ids.is_empty() { 0 } else { probes.per_pass };
        let shape = b.x.shape().to_vec();
        let len = shape.iter().map(|&d| d as usize).product();
        for k in 0..passes {
            if cancel.is_cancelled() {
                return Ok(report); // the state holds every finished batch
            }
            let v = Array::from_slice(&probe_values(probes.seed, bi, k, len), &shape)
                .as_dtype(dtype)?;
            let grads = output_gradients(mmdit, &ids, &weights, DenoiserInputs::of(b), &v)?;
            let dots = error_dots(grads, &weights, &quantized, cfg.group_size)?;
            if let Some(i) = dots.iter().position(|d| !d.is_finite()) {
                return Err(SensitivityError::NonFiniteGradient {
                    layer: names[i / bits.len()].clone(),
                    bits: bits[i % bits.len()],
                    paths: b.paths.clone(),
                });
            }
            for (i, d) in dots.iter().enumerate() {
                squares[i / bits.len()][i % bits.len()] += d * d;
            }
        }
        let kf = probes.per_pass as f64;
        let bucket = b.buckets[0];
        for (li, per_bits) in squares.iter().enumerate() {
            for (bj, &sq) in per_bits.iter().enumerate() {
                let mean = sq / kf;
                for g in [bucket, Bucket::All] {
                    let s = state.sums[li][bj].entry(g).or_default();
                    s.err += mean;
                    // Var[(v·a)²] = 2‖a‖⁴ for Gaussian v and E[mean²] = ‖a‖⁴(1 + 2/K):
                    // 2·mean²/(K + 2) estimates the mean's variance 2‖a‖⁴/K without bias.
                    s.var += 2.0 * mean * mean / (kf + 2.0);
                }
            }
        }
        for (j, reference) in b.reference.iter().enumerate() {
            let energy: f64 = reference.iter().map(|&y| (y as f64) * (y as f64)).sum();
            for g in [b.buckets[j], Bucket::All] {
                let t = state.totals.entry(g).or_default();
                t.energy += energy;
                t.elements += reference.len();
                t.samples += 1;
            }
        }
        state.batches_done = bi + 1;
        write_state(&state_path, &state)?;
        on_event(SensitivityEvent::BatchDone {
            done: bi + 1,
            batches: batches.len(),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    report.layers = layers
        .iter()
        .map(|l| LayerResult {
            name: l.name.clone(),
            block: l.block,
            kind: l.kind,
            params: l.params,
            results: names
                .iter()
                .position(|n| n == &l.name)
                .map(|li| results(&state, li, bits, cfg.group_size))
                .unwrap_or_default(),
        })
        .collect();
    report.pending.clear();
    write_report(dir, &report)?;
    remove_state(dir)?;
    Ok(report)
}

/// A weight's affine quantization at one bit width, as MLX computes it (`mx.quantize`): per
/// group of `group_size` consecutive inputs a scale and a bias (MLX's own, as float32);
/// `q = clamp(round((w − bias) / scale), 0, 2^bits − 1)` and `Q(w) = q · scale + bias`.
///
/// MLX picks the levels with the float32 scale and bias it computes, then stores them in the
/// weight's dtype and dequantizes with the stored ones in that dtype's arithmetic: for a float16
/// or bfloat16 weight the levels come from the float32 values (MLX's scales of the weight cast
/// to float32, which it represents exactly) and `Q(w)` from the rounded ones, rounded as MLX
/// rounds (checked against MLX in the tests below).
pub struct GroupQuant {
    bins: f32,
    /// The scales and biases the levels are chosen with.
    select: (Vec<f32>, Vec<f32>),
    /// The scales and biases `Q(w)` is computed with (the same for a float32 weight).
    dequantize: (Vec<f32>, Vec<f32>),
    /// Rounds to the weight's dtype: MLX dequantizes a float16 or bfloat16 weight in that
    /// dtype's arithmetic (`q · scale` rounded, then `+ bias` rounded).
    round: fn(f32) -> f32,
}

impl GroupQuant {
    /// MLX's scales and biases of `weight` at `q`.
    pub fn new(weight: &Array, q: LayerQuant) -> Result<Self, SensitivityError> {
        let read = |w: &Array| -> Result<(Vec<f32>, Vec<f32>), SensitivityError> {
            let packed = quantize_weight(w, q)?;
            Ok((to_vec_f32(&packed.scales)?, to_vec_f32(&packed.biases)?))
        };
        let dequantize = read(weight)?;
        let select = if weight.dtype() == Dtype::Float32 {
            dequantize.clone()
        } else {
            read(&weight.as_dtype(Dtype::Float32)?)?
        };
        let round: fn(f32) -> f32 = match weight.dtype() {
            Dtype::Float16 => |x| half::f16::from_f32(x).to_f32(),
            Dtype::Bfloat16 => |x| half::bf16::from_f32(x).to_f32(),
            _ => |x| x,
        };
        Ok(Self {
            bins: ((1u32 << q.bits) - 1) as f32,
            select,
            dequantize,
            round,
        })
    }
}

/// Whether `a` (evaluated) is column-contiguous: a transposed view of a row-contiguous buffer,
/// as MLX returns the gradient of `x · Wᵀ` with respect to W.
fn column_contiguous(a: &Array) -> bool {
    let mut cols = false;
    // SAFETY: `a` is a valid array and `cols` a valid out-pointer.
    let status = unsafe { mlx_sys::_mlx_array_is_col_contiguous(&mut cols, a.as_ptr()) };
    status == 0 && cols
}

/// `a` in `dtype`, evaluated and row-contiguous (copied when it is a strided view).
fn contiguous(a: &Array, dtype: Dtype) -> MlxResult<Array> {
    // MLX's `contiguous` shares the buffer of an array that already is one.
    let a = a.as_dtype(dtype)?.contiguous()?;
    a.eval()?;
    Ok(a)
}

/// `Σ g · (Q(w) − w)` over one quantization group, in eight lanes so that it is vectorised.
#[inline(always)]
fn group_error_dot<G, W>(gs: &[G], ws: &[W], q: &GroupQuant, group: usize) -> f64
where
    G: Copy + Into<f32>,
    W: Copy + Into<f32>,
{
    let (s, b, bins) = (q.select.0[group], q.select.1[group], q.bins);
    let (ds, db) = (q.dequantize.0[group], q.dequantize.1[group]);
    let mut lanes = [0f32; 8];
    let add = |lane: &mut f32, gi: G, wi: W| {
        let (gi, wi): (f32, f32) = (gi.into(), wi.into());
        let level = ((wi - b) / s).round_ties_even().clamp(0.0, bins);
        // In the weight's dtype, as MLX computes it: the product rounded, then the sum.
        *lane += gi * ((q.round)((q.round)(level * ds) + db) - wi);
    };
    let (gc, wc) = (gs.chunks_exact(8), ws.chunks_exact(8));
    let (gr, wr) = (gc.remainder(), wc.remainder());
    for (g8, w8) in gc.zip(wc) {
        for i in 0..8 {
            add(&mut lanes[i], g8[i], w8[i]);
        }
    }
    for (&gi, &wi) in gr.iter().zip(wr) {
        add(&mut lanes[0], gi, wi);
    }
    lanes.iter().map(|&l| l as f64).sum()
}

/// Sums `work(range)` (one value per bit width) over `0..items` split between the cores.
fn on_every_core(
    items: usize,
    outputs: usize,
    small: bool,
    work: impl Fn(std::ops::Range<usize>) -> Vec<f64> + Sync,
) -> Vec<f64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || small {
        return work(0..items);
    }
    let per = items.div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * per).min(items)..((t + 1) * per).min(items);
                scope.spawn(move || work(range))
            })
            .collect();
        let mut total = vec![0f64; outputs];
        for h in handles {
            // A panic in the loop is a bug: re-raise it here.
            let part = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (a, p) in total.iter_mut().zip(part) {
                *a += p;
            }
        }
        total
    })
}

/// `Σ g · (Q_b(w) − w)` over one weight for each bit width `b` in `quants`, both row-major, on
/// every core (the weight and gradient read once for all bit widths; MLX's CPU element-wise
/// operations run on one thread).
fn error_dots_of<T>(g: &[T], w: &[T], quants: &[GroupQuant], group_size: usize) -> Vec<f64>
where
    T: Copy + Into<f32> + Sync,
{
    let groups = w.len() / group_size.max(1);
    on_every_core(groups, quants.len(), w.len() < 1 << 16, |range| {
        crate::model::cpu_kernels::with_simd(
            #[inline(always)]
            || {
                let mut acc = vec![0f64; quants.len()];
                for group in range {
                    let span = group * group_size..(group + 1) * group_size;
                    for (a, q) in acc.iter_mut().zip(quants) {
                        *a += group_error_dot(&g[span.clone()], &w[span.clone()], q, group);
                    }
                }
                acc
            },
        )
    })
}

/// As [`error_dots_of`] for a float32 gradient stored column-major (`g[i][j]` at
/// `gt[j · rows + i]`, the transposed view MLX's matmul gradient is) and a row-major weight
/// `(rows, cols)`: eight rows at a time, each quantization group's gradient gathered into a
/// small row-major buffer, instead of a copy of the whole gradient (which took MLX longer than
/// the dot products).
fn error_dots_columns(
    gt: &[f32],
    w: &[f32],
    (rows, cols): (usize, usize),
    quants: &[GroupQuant],
    group_size: usize,
) -> Vec<f64> {
    const TILE: usize = 8;
    let per_row = cols / group_size.max(1);
    on_every_core(
        rows.div_ceil(TILE),
        quants.len(),
        w.len() < 1 << 16,
        |tiles| {
            crate::model::cpu_kernels::with_simd(
                #[inline(always)]
                || {
                    let mut acc = vec![0f64; quants.len()];
                    let mut buf = vec![0f32; TILE * group_size];
                    for tile in tiles {
                        let i0 = tile * TILE;
                        let n = TILE.min(rows - i0);
                        for gc in 0..per_row {
                            for jj in 0..group_size {
                                let base = (gc * group_size + jj) * rows + i0;
                                for (r, &v) in gt[base..base + n].iter().enumerate() {
                                    buf[r * group_size + jj] = v;
                                }
                            }
                            for r in 0..n {
                                let i = i0 + r;
                                let gs = &buf[r * group_size..(r + 1) * group_size];
                                let ws = &w[i * cols + gc * group_size..][..group_size];
                                for (a, q) in acc.iter_mut().zip(quants) {
                                    *a += group_error_dot(gs, ws, q, i * per_row + gc);
                                }
                            }
                        }
                    }
                    acc
                },
            )
        },
    )
}

/// The float32 data of a column-contiguous 2-D array (evaluated here), in column-major order.
fn column_major_f32(a: &Array) -> Option<&[f32]> {
    if a.dtype() != Dtype::Float32 || a.ndim() != 2 || a.eval().is_err() {
        return None;
    }
    if !column_contiguous(a) || a.size() == 0 {
        return None;
    }
    // SAFETY: `a` is evaluated float32, so MLX returns the start of its data (or null).
    let ptr = unsafe { mlx_sys::mlx_array_data_float32(a.as_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a column-contiguous array's `size` elements lie densely from its data pointer
    // (column-major), in a buffer `a` keeps alive for the returned borrow.
    Some(unsafe { std::slice::from_raw_parts(ptr, a.size()) })
}

/// `g · (Q_b(W) − W)` for every layer (gradient `g`, weight `W`) and bit width `b`, in
/// `[layer][bits]` order.
fn error_dots(
    grads: Vec<Array>,
    weights: &[Array],
    quantized: &[Vec<GroupQuant>],
    group_size: i32,
) -> Result<Vec<f64>, SensitivityError> {
    let mut dots = Vec::new();
    let group_size = group_size as usize;
    for ((g, w), quants) in grads.into_iter().zip(weights).zip(quantized) {
        let dtype = w.dtype();
        g.eval()?;
        if dtype == Dtype::Float32
            && let Some(gt) = column_major_f32(&g)
        {
            let w = contiguous(w, dtype)?;
            let ws = w
                .try_as_slice::<f32>()
                .map_err(|e| SensitivityError::Bug(format!("reading a weight: {e}")))?;
            let shape = (g.shape()[0] as usize, g.shape()[1] as usize);
            dots.extend(error_dots_columns(gt, ws, shape, quants, group_size));
            continue;
        }
        let dtype = match dtype {
            Dtype::Float16 | Dtype::Bfloat16 => dtype,
            _ => Dtype::Float32,
        };
        let (g, w) = (contiguous(&g, dtype)?, contiguous(w, dtype)?);
        let slices = |e| SensitivityError::Bug(format!("reading a gradient: {e}"));
        let d = match dtype {
            Dtype::Float16 => error_dots_of(
                g.try_as_slice::<half::f16>().map_err(slices)?,
                w.try_as_slice::<half::f16>().map_err(slices)?,
                quants,
                group_size,
            ),
            Dtype::Bfloat16 => error_dots_of(
                g.try_as_slice::<half::bf16>().map_err(slices)?,
                w.try_as_slice::<half::bf16>().map_err(slices)?,
                quants,
                group_size,
            ),
            _ => error_dots_of(
                g.try_as_slice::<f32>().map_err(slices)?,
                w.try_as_slice::<f32>().map_err(slices)?,
                quants,
                group_size,
            ),
        };
        dots.extend(d);
    }
    Ok(dots)
}

/// Replaces the estimates of the layers an exact `model` sweep of the same run measured with
/// its measurements (the workflow: rank every layer with the linearized sweep, measure exactly
/// the few that decide the plan, plan from both). Both estimate the same quantity, the model
/// output's MSE, so the merged report plans and predicts as one. Returns how many layers were
/// replaced.
pub fn refine(
    report: &mut SensitivityReport,
    exact: &SensitivityReport,
) -> Result<usize, SensitivityError> {
    let refuse = |reason: String| Err(SensitivityError::CannotRefine(reason));
    if report.settings.metric_scope != Scope::Linearized {
        return refuse(format!(
            "the report to refine is a {} sweep, not a linearized one",
            report.settings.metric_scope
        ));
    }
    if exact.settings.metric_scope != Scope::Model {
        return refuse(format!(
            "the refining report is a {} sweep, not an exact model one",
            exact.settings.metric_scope
        ));
    }
    let comparable = RunSettings {
        metric_scope: report.settings.metric_scope,
        probes: report.settings.probes.clone(),
        ..exact.settings.clone()
    };
    let d = settings_differences(&report.settings, &comparable);
    if !d.is_empty() {
        return refuse(format!(
            "the two sweeps are not over the same model, data and settings ({})",
            d.join("; ")
        ));
    }
    let mut replaced = 0;
    for measured in exact.layers.iter().filter(|l| !l.results.is_empty()) {
        if let Some(l) = report.layers.iter_mut().find(|l| l.name == measured.name) {
            l.results = measured.results.clone();
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// One layer's results from the sums: per bit width, each group the run saw.
fn results(state: &State, li: usize, bits: &[i32], group_size: i32) -> Vec<BucketResult> {
    let mut out = Vec::new();
    for (bj, &b) in bits.iter().enumerate() {
        for g in Bucket::GROUPS {
            let (Some(s), Some(t)) = (state.sums[li][bj].get(&g), state.totals.get(&g)) else {
                continue;
            };
            let n = t.elements.max(1) as f64;
            let sqnr_db = super::sensitivity::sqnr_db(t.energy, s.err);
            out.push(BucketResult {
                bits: b,
                group_size,
                bucket: g,
                mse: s.err / n,
                mse_stderr: Some(s.var.sqrt() / n),
                sqnr_db,
                cosine: None,
                n_samples: t.samples,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_reproducible_standard_normal_and_differ_by_batch_and_index() {
        let a = probe_values(7, 0, 0, 20_000);
        assert_eq!(a, probe_values(7, 0, 0, 20_000));
        assert_ne!(a, probe_values(7, 1, 0, 20_000));
        assert_ne!(a, probe_values(7, 0, 1, 20_000));
        assert_ne!(a, probe_values(8, 0, 0, 20_000));
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn the_quantization_error_is_mlx_s_and_both_gradient_layouts_agree() {
        // 301 rows (not a multiple of the 8-row tile), enough elements for every core.
        let (rows, cols) = (301usize, 256usize);
        let mut rng = NumpyRandomState::new(11);
        let wv: Vec<f32> = rng.randn(rows * cols).iter().map(|&v| v as f32).collect();
        let gv: Vec<f32> = rng.randn(rows * cols).iter().map(|&v| v as f32).collect();
        let w = Array::from_slice(&wv, &[rows as i32, cols as i32]);
        let gt: Vec<f32> = (0..rows * cols)
            .map(|k| gv[(k % rows) * cols + k / rows])
            .collect();
        // Σ g · (MLX's fake-quantized w − w), in float64.
        let mlx_dot = |w: &Array, lq: LayerQuant| -> f64 {
            let w32 = w.as_dtype(Dtype::Float32).unwrap();
            let q = crate::quant::fake_quantize(w, lq).unwrap();
            let error =
                to_vec_f32(&q.as_dtype(Dtype::Float32).unwrap().subtract(&w32).unwrap()).unwrap();
            gv.iter()
                .zip(&error)
                .map(|(&g, &e)| g as f64 * e as f64)
                .sum()
        };
        for bits in crate::quant::SUPPORTED_BITS {
            let lq = LayerQuant {
                bits,
                group_size: 64,
            };
            let q = GroupQuant::new(&w, lq).unwrap();
            let reference = mlx_dot(&w, lq);
            let rows_major = error_dots_of(&gv, &wv, std::slice::from_ref(&q), 64)[0];
            let columns =
                error_dots_columns(&gt, &wv, (rows, cols), std::slice::from_ref(&q), 64)[0];
            assert!(
                (rows_major - reference).abs() <= 1e-4 * reference.abs(),
                "{bits} bits: {rows_major} vs MLX's {reference}"
            );
            assert!(
                (columns - rows_major).abs() <= 1e-9 * rows_major.abs(),
                "{bits} bits: column-major {columns} vs row-major {rows_major}"
            );
        }
        // Half-precision weights: MLX chooses the levels with float32 scales and dequantizes
        // with the stored (rounded) ones; the dot products follow it.
        for (dtype, bits) in [
            (Dtype::Float16, 8),
            (Dtype::Bfloat16, 8),
            (Dtype::Bfloat16, 4),
        ] {
            let lq = LayerQuant {
                bits,
                group_size: 64,
            };
            let w = w.as_dtype(dtype).unwrap();
            let q = GroupQuant::new(&w, lq).unwrap();
            let reference = mlx_dot(&w, lq);
            let wh = to_vec_f32(&w).unwrap();
            let ours = error_dots_of(&gv, &wh, std::slice::from_ref(&q), 64)[0];
            assert!(
                (ours - reference).abs() <= 1e-3 * reference.abs(),
                "{dtype:?} {bits} bits: {ours} vs MLX's {reference}"
            );
        }
    }

    #[test]
    fn default_probes_spend_the_budget_over_the_batches() {
        assert_eq!(auto_probes(1, 1), PROBE_BUDGET);
        assert_eq!(auto_probes(8, 1), 2);
        assert_eq!(auto_probes(8, 4), 8);
        assert_eq!(auto_probes(5, 1), 4);
        assert_eq!(auto_probes(100, 1), 1);
        assert_eq!(auto_probes(0, 0), PROBE_BUDGET);
    }
}

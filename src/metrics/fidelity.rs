//! FID, IS and KID from feature matrices, computed as torch-fidelity 0.4.0 computes them
//! (`metric_fid.py`, `metric_isc.py`, `metric_kid.py`), including where it works in float32.
//!
//! The Inception network that produces the features lives in `metrics::inception`; this module
//! only sees plain `rows × dim` float32 matrices, so it is testable against torch-fidelity's own
//! metric functions on any features.
//!
//! Linear algebra: `faer` (pure Rust, maintained, SIMD and multithreaded GEMM, and a
//! LAPACK-style non-symmetric eigenvalue solver: blocked Hessenberg reduction + multishift QR,
//! like the `dgeev` behind numpy's `eigvals`). `nalgebra` also offers `Schur` /
//! `complex_eigenvalues`, but with unblocked, single-threaded Householder and double-shift QR
//! kernels written for small matrices (not measured here at 2048×2048). With faer, the
//! eigenvalues of the 2048×2048 product take 3.0–4.4 s in release mode on the 2-core
//! development machine (numpy's `eigvals`: 9.1 s there), and no system BLAS is needed.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::job::CancelToken;
use crate::rng::NumpyRandomState;

/// torch-fidelity's `rng_seed` default: the seed of the IS permutation and the KID subsets.
pub const RNG_SEED: u32 = 2020;
/// torch-fidelity's `isc_splits` default.
pub const DEFAULT_IS_SPLITS: usize = 10;
/// torch-fidelity's `kid_subsets` default.
pub const DEFAULT_KID_SUBSETS: usize = 100;
/// torch-fidelity's `kid_subset_size` default.
pub const DEFAULT_KID_SUBSET_SIZE: usize = 1000;

/// What can be wrong with features or metric options.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FidelityError {
    #[error("features: {len} values cannot be {rows} rows × {dim} columns")]
    DataLength { rows: usize, dim: usize, len: usize },
    #[error("features: the feature dimension is 0")]
    ZeroDim,
    #[error("features: row {row}, column {col} is not finite ({value})")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("{metric} needs at least {needed} feature rows, got {got}")]
    TooFewRows {
        metric: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{metric}: the two feature sets have different dimensions ({first} and {second})")]
    DimMismatch {
        metric: &'static str,
        first: usize,
        second: usize,
    },
    #[error("{metric}: {what} must be at least {min}, got {got}")]
    BadOption {
        metric: &'static str,
        what: &'static str,
        min: usize,
        got: usize,
    },
    #[error("FID: the eigenvalue computation of Σ1·Σ2 did not converge")]
    EigenNoConvergence,
    #[error("cancelled")]
    Cancelled,
}

/// A `rows × dim` float32 feature matrix, row-major (one row per image), all values finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    rows: usize,
    dim: usize,
    data: Vec<f32>,
}

impl Features {
    /// Checks that `data` holds `rows × dim` finite values (`dim > 0`; `rows` may be 0: each
    /// metric says how many rows it needs).
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Self, FidelityError> {
        if dim == 0 {
            return Err(FidelityError::ZeroDim);
        }
        if rows.checked_mul(dim) != Some(data.len()) {
            return Err(FidelityError::DataLength {
                rows,
                dim,
                len: data.len(),
            });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(FidelityError::NonFinite {
                row: i / dim,
                col: i % dim,
                value: data[i],
            });
        }
        Ok(Self { rows, dim, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn mat(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.dim)
    }

    /// The rows `idx` (in that order) as a new row-major buffer.
    fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            out.extend_from_slice(self.row(i));
        }
        out
    }
}

fn check_dims(metric: &'static str, a: &Features, b: &Features) -> Result<(), FidelityError> {
    if a.dim != b.dim {
        return Err(FidelityError::DimMismatch {
            metric,
            first: a.dim,
            second: b.dim,
        });
    }
    Ok(())
}

fn check_rows(metric: &'static str, f: &Features, needed: usize) -> Result<(), FidelityError> {
    if f.rows < needed {
        return Err(FidelityError::TooFewRows {
            metric,
            needed,
            got: f.rows,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// FID
// ---------------------------------------------------------------------------------------------

/// `fid_features_to_statistics`: the mean (float32, as `np.mean` of float32 features returns it)
/// and the covariance (float64, `np.cov(rowvar=False)`, divided by N − 1) of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct FidStatistics {
    pub dim: usize,
    pub mu: Vec<f32>,
    /// `dim × dim`, row-major (symmetric).
    pub sigma: Vec<f64>,
}

impl FidStatistics {
    /// Needs at least 2 rows (the covariance divides by N − 1).
    pub fn from_features(f: &Features) -> Result<Self, FidelityError> {
        check_rows("FID", f, 2)?;
        let (n, d) = (f.rows, f.dim);
        // np.mean over axis 0 of a C-order float32 matrix adds the rows one after the other in
        // float32 (no pairwise summation across rows), then divides by N in float32.
        let mut sum = vec![0f32; d];
        for i in 0..n {
            for (s, &v) in sum.iter_mut().zip(f.row(i)) {
                *s += v;
            }
        }
        let mu: Vec<f32> = sum.iter().map(|s| s / n as f32).collect();

        // np.cov converts to float64, subtracts its own float64 mean, X·Xᵀ, times 1/(N−1).
        let mut mean = vec![0f64; d];
        for i in 0..n {
            for (m, &v) in mean.iter_mut().zip(f.row(i)) {
                *m += v as f64;
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        let xc = Mat::<f64>::from_fn(n, d, |i, j| f.data[i * d + j] as f64 - mean[j]);
        let mut cov = Mat::<f64>::zeros(d, d);
        matmul(
            cov.as_mut(),
            Accum::Replace,
            xc.transpose(),
            xc.as_ref(),
            1.0 / (n - 1) as f64,
            Par::rayon(0),
        );
        // Store row-major; the matrix is symmetric up to rounding, keep it as computed.
        let sigma = (0..d * d).map(|k| cov[(k / d, k % d)]).collect();
        Ok(Self { dim: d, mu, sigma })
    }

    fn sigma_mat(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.sigma, self.dim, self.dim)
    }
}

/// The real part of the principal square root of `re + i·im`, as C99 `csqrt` (numpy's
/// `np.sqrt` on complex128) computes it: a negative real eigenvalue contributes 0.
fn csqrt_re(re: f64, im: f64) -> f64 {
    if re == 0.0 && im == 0.0 {
        return 0.0;
    }
    let t = ((re.abs() + re.hypot(im)) * 0.5).sqrt();
    if re >= 0.0 { t } else { im.abs() / (2.0 * t) }
}

/// `fid_statistics_to_metric`: `|μ1 − μ2|² + tr Σ1 + tr Σ2 − 2·Σ Re √eig(Σ1·Σ2)`.
///
/// `|μ1 − μ2|²` stays float32 as in torch-fidelity (`diff = mu1 − mu2` of float32 means, then
/// `diff.dot(diff)`, a float32 BLAS dot); we accumulate it in float64 and round once to
/// float32, which is within an ulp or two of the BLAS result. Everything else is float64.
pub fn fid_from_statistics(a: &FidStatistics, b: &FidStatistics) -> Result<f64, FidelityError> {
    if a.dim != b.dim {
        return Err(FidelityError::DimMismatch {
            metric: "FID",
            first: a.dim,
            second: b.dim,
        });
    }
    let d = a.dim;
    let diff_sq =
        a.mu.iter()
            .zip(&b.mu)
            .map(|(x, y)| {
                let t = (x - y) as f64;
                t * t
            })
            .sum::<f64>() as f32;
    let trace = |s: &FidStatistics| (0..d).map(|i| s.sigma[i * d + i]).sum::<f64>();
    let mut prod = Mat::<f64>::zeros(d, d);
    matmul(
        prod.as_mut(),
        Accum::Replace,
        a.sigma_mat(),
        b.sigma_mat(),
        1.0,
        Par::rayon(0),
    );
    let eig = prod
        .eigenvalues()
        .map_err(|_| FidelityError::EigenNoConvergence)?;
    let tr_covmean: f64 = eig.iter().map(|z| csqrt_re(z.re, z.im)).sum();
    Ok(diff_sq as f64 + trace(a) + trace(b) - 2.0 * tr_covmean)
}

/// FID between two feature sets (each needs at least 2 rows; same dimension).
pub fn fid(a: &Features, b: &Features) -> Result<f64, FidelityError> {
    check_dims("FID", a, b)?;
    fid_from_statistics(
        &FidStatistics::from_features(a)?,
        &FidStatistics::from_features(b)?,
    )
}

// ---------------------------------------------------------------------------------------------
// Inception Score
// ---------------------------------------------------------------------------------------------

/// Inception Score over the splits: mean and population standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IsResult {
    pub mean: f64,
    pub std: f64,
}

/// `isc_features_to_metric(logits, splits)`: rows permuted by `RandomState(2020).permutation`,
/// softmax in float64, per split `exp(mean_i KL(p_i ‖ mean_i p_i))` over rows
/// `[s·N/splits, (s+1)·N/splits)`, then mean and population std over splits.
///
/// Needs `splits ≥ 1` and at least `splits` rows (torch-fidelity returns NaN for an empty
/// split). Where a class probability underflows to 0 in every row of a split, torch-fidelity
/// computes `0 · (log 0 − log 0)` = NaN; we use the limit `0 · log 0 = 0` there instead.
pub fn inception_score(logits: &Features, splits: usize) -> Result<IsResult, FidelityError> {
    if splits == 0 {
        return Err(FidelityError::BadOption {
            metric: "IS",
            what: "the number of splits",
            min: 1,
            got: 0,
        });
    }
    check_rows("IS", logits, splits)?;
    let (n, c) = (logits.rows, logits.dim);
    let perm = NumpyRandomState::new(RNG_SEED).permutation(n);
    // p and log p per row, in permuted order, float64 (torch's softmax / log_softmax: subtract
    // the row maximum, exponentiate, normalise).
    let mut p = vec![0f64; n * c];
    let mut log_p = vec![0f64; n * c];
    for (r, &src) in perm.iter().enumerate() {
        let x = logits.row(src);
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_sum = sum.ln();
        for (k, &v) in x.iter().enumerate() {
            let shifted = v as f64 - max;
            p[r * c + k] = shifted.exp() / sum;
            log_p[r * c + k] = shifted - log_sum;
        }
    }
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits {
        let (lo, hi) = (s * n / splits, (s + 1) * n / splits);
        let rows = (hi - lo) as f64;
        let mut q = vec![0f64; c];
        for r in lo..hi {
            for (qk, pk) in q.iter_mut().zip(&p[r * c..(r + 1) * c]) {
                *qk += pk;
            }
        }
        let log_q: Vec<f64> = q.iter().map(|v| (v / rows).ln()).collect();
        let mut kl_sum = 0f64;
        for r in lo..hi {
            let pr = &p[r * c..(r + 1) * c];
            let lr = &log_p[r * c..(r + 1) * c];
            kl_sum += (0..c)
                .map(|k| {
                    if pr[k] == 0.0 {
                        0.0
                    } else {
                        pr[k] * (lr[k] - log_q[k])
                    }
                })
                .sum::<f64>();
        }
        scores.push((kl_sum / rows).exp());
    }
    let (mean, std) = mean_and_population_std(&scores);
    Ok(IsResult { mean, std })
}

fn mean_and_population_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

// ---------------------------------------------------------------------------------------------
// KID
// ---------------------------------------------------------------------------------------------

/// KID options (torch-fidelity's `kid_subsets`, `kid_subset_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KidOptions {
    /// Number of random subsets (default 100).
    pub subsets: usize,
    /// Rows per subset; `None` is torch-fidelity's default of 1000. Lowered to the smaller set's
    /// size when either set has fewer rows (torch-fidelity errors instead).
    pub subset_size: Option<usize>,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self {
            subsets: DEFAULT_KID_SUBSETS,
            subset_size: None,
        }
    }
}

/// KID mean and population standard deviation over the subsets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KidResult {
    pub mean: f64,
    pub std: f64,
    /// The subset size used.
    pub subset_size: usize,
    /// The subset size asked for, when it was lowered to `subset_size` because a set had fewer
    /// rows (torch-fidelity would refuse these inputs).
    pub lowered_from: Option<usize>,
}

/// KID with the default progress-free, uncancellable run (see [`kid_with_progress`]).
pub fn kid(a: &Features, b: &Features, opts: KidOptions) -> Result<KidResult, FidelityError> {
    kid_with_progress(a, b, opts, &CancelToken::new(), |_, _| {})
}

/// `kid_features_to_metric`: for each subset, `choice(n1, m, replace=False)` then
/// `choice(n2, m, replace=False)` from one `RandomState(2020)`, the polynomial kernel
/// `(x·yᵀ/d + 1)³` and the unbiased MMD² (`mmd2`), all in float32 as torch-fidelity computes
/// them (numpy's float32 reductions reproduced, see [`mmd2_f32`]); mean and population std of
/// the per-subset values in float64.
///
/// `progress(done, total)` is called after each subset; `cancel` is polled between subsets.
pub fn kid_with_progress(
    a: &Features,
    b: &Features,
    opts: KidOptions,
    cancel: &CancelToken,
    mut progress: impl FnMut(usize, usize),
) -> Result<KidResult, FidelityError> {
    check_dims("KID", a, b)?;
    if opts.subsets == 0 {
        return Err(FidelityError::BadOption {
            metric: "KID",
            what: "the number of subsets",
            min: 1,
            got: 0,
        });
    }
    let asked = opts.subset_size.unwrap_or(DEFAULT_KID_SUBSET_SIZE);
    if asked < 2 {
        return Err(FidelityError::BadOption {
            metric: "KID",
            what: "the subset size",
            min: 2,
            got: asked,
        });
    }
    check_rows("KID", a, 2)?;
    check_rows("KID", b, 2)?;
    let available = a.rows.min(b.rows);
    let (m, lowered_from) = if asked > available {
        (available, Some(asked))
    } else {
        (asked, None)
    };
    let mut rng = NumpyRandomState::new(RNG_SEED);
    let mut mmds = Vec::with_capacity(opts.subsets);
    for s in 0..opts.subsets {
        if cancel.is_cancelled() {
            return Err(FidelityError::Cancelled);
        }
        let i1 = rng.choice_without_replacement(a.rows, m);
        let i2 = rng.choice_without_replacement(b.rows, m);
        let f1 = Features {
            rows: m,
            dim: a.dim,
            data: a.gather(&i1),
        };
        let f2 = Features {
            rows: m,
            dim: b.dim,
            data: b.gather(&i2),
        };
        let gamma = 1.0 / a.dim as f64;
        let k11 = poly_kernel(&f1, &f1, gamma);
        let k22 = poly_kernel(&f2, &f2, gamma);
        let k12 = poly_kernel(&f1, &f2, gamma);
        mmds.push(mmd2_f32(&k11, &k12, &k22, m) as f64);
        progress(s + 1, opts.subsets);
    }
    let (mean, std) = mean_and_population_std(&mmds);
    Ok(KidResult {
        mean,
        std,
        subset_size: m,
        lowered_from,
    })
}

/// `kernel_poly`: `(X·Yᵀ · γ + 1)³` in float32 (γ = 1/d, cast to float32 as numpy does with a
/// Python float), as an `m × m` row-major buffer.
fn poly_kernel(x: &Features, y: &Features, gamma: f64) -> Vec<f32> {
    let m = x.rows;
    // Column-major Y·Xᵀ is row-major X·Yᵀ: column i holds x_i·y_j for all j.
    let mut k = Mat::<f32>::zeros(y.rows, m);
    matmul(
        k.as_mut(),
        Accum::Replace,
        y.mat(),
        x.mat().transpose(),
        1.0f32,
        Par::rayon(0),
    );
    let g = gamma as f32;
    let mut out = Vec::with_capacity(m * y.rows);
    for i in 0..m {
        for &v in k.col_as_slice(i) {
            let t = v * g + 1.0f32;
            // np.power(float32, 3): the correctly rounded cube (libm powf), not t*t*t.
            out.push((t as f64).powi(3) as f32);
        }
    }
    out
}

/// numpy's float32 `add.reduce` along a contiguous (or strided) axis: pairwise summation with
/// an 8-way unrolled base case of at most 128 elements (`pairwise_sum_FLOAT`).
fn pairwise_sum_f32(v: &[f32], stride: usize, n: usize) -> f32 {
    let at = |i: usize| v[i * stride];
    if n < 8 {
        let mut res = 0f32;
        for i in 0..n {
            res += at(i);
        }
        res
    } else if n <= 128 {
        let mut r = [0f32; 8];
        for (j, rj) in r.iter_mut().enumerate() {
            *rj = at(j);
        }
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += at(i + j);
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += at(i);
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum_f32(v, stride, n2) + pairwise_sum_f32(&v[n2 * stride..], stride, n - n2)
    }
}

/// torch-fidelity's `mmd2(K_XX, K_XY, K_YY)` (unbiased estimator) on float32 kernels with
/// numpy's float32 reduction order: row sums and 1-D sums pairwise, `K_XY.sum(axis=0)` row by
/// row, and the final arithmetic on float32 scalars (NumPy 2 keeps `float32 / int` in float32).
fn mmd2_f32(kxx: &[f32], kxy: &[f32], kyy: &[f32], m: usize) -> f32 {
    let offdiag_total = |k: &[f32]| {
        let diag: Vec<f32> = (0..m).map(|i| k[i * m + i]).collect();
        let row_sums: Vec<f32> = (0..m)
            .map(|i| pairwise_sum_f32(&k[i * m..(i + 1) * m], 1, m) - diag[i])
            .collect();
        pairwise_sum_f32(&row_sums, 1, m)
    };
    let kt_xx_sum = offdiag_total(kxx);
    let kt_yy_sum = offdiag_total(kyy);
    let mut col_sums = vec![0f32; m];
    for i in 0..m {
        for (c, &v) in col_sums.iter_mut().zip(&kxy[i * m..(i + 1) * m]) {
            *c += v;
        }
    }
    let k_xy_sum = pairwise_sum_f32(&col_sums, 1, m);
    let mut mmd2 = (kt_xx_sum + kt_yy_sum) / (m * (m - 1)) as f32;
    mmd2 -= 2.0f32 * k_xy_sum / (m * m) as f32;
    mmd2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(rows: usize, dim: usize, seed: u32) -> Features {
        let mut r = NumpyRandomState::new(seed);
        let data = r.randn(rows * dim).into_iter().map(|v| v as f32).collect();
        Features::new(rows, dim, data).expect("finite randn values")
    }

    #[test]
    fn features_constructor_checks_shape_and_values() {
        assert_eq!(
            Features::new(2, 3, vec![0.0; 5]),
            Err(FidelityError::DataLength {
                rows: 2,
                dim: 3,
                len: 5
            })
        );
        assert_eq!(Features::new(0, 0, vec![]), Err(FidelityError::ZeroDim));
        let mut v = vec![0.0; 6];
        v[4] = f32::NAN;
        assert!(matches!(
            Features::new(2, 3, v),
            Err(FidelityError::NonFinite { row: 1, col: 1, .. })
        ));
        let f = Features::new(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(f.row(1), &[4., 5., 6.]);
    }

    #[test]
    fn covariance_matches_the_definition() {
        let f = Features::new(3, 2, vec![1., 2., 3., 5., 8., 0.]).unwrap();
        let s = FidStatistics::from_features(&f).unwrap();
        let (mx, my) = (4.0, 7.0 / 3.0);
        let xs = [1., 3., 8.];
        let ys = [2., 5., 0.];
        let cov = |a: &[f64; 3], ma: f64, b: &[f64; 3], mb: f64| {
            (0..3).map(|i| (a[i] - ma) * (b[i] - mb)).sum::<f64>() / 2.0
        };
        let want = [
            cov(&xs, mx, &xs, mx),
            cov(&xs, mx, &ys, my),
            cov(&ys, my, &xs, mx),
            cov(&ys, my, &ys, my),
        ];
        for (g, w) in s.sigma.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        assert_eq!(s.mu, vec![4.0, 7.0f32 / 3.0]);
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_square() {
        let a = features(300, 16, 1);
        let self_fid = fid(&a, &a).unwrap();
        assert!(self_fid.abs() < 1e-9, "{self_fid}");
        // Shifting every feature by δ leaves Σ unchanged and moves μ: FID = d·δ².
        let shifted: Vec<f32> = a.as_slice().iter().map(|v| v + 0.5).collect();
        let b = Features::new(300, 16, shifted).unwrap();
        let f = fid(&a, &b).unwrap();
        assert!((f - 16.0 * 0.25).abs() < 1e-4, "{f}");
    }

    #[test]
    fn complex_sqrt_real_part_follows_csqrt() {
        assert_eq!(csqrt_re(4.0, 0.0), 2.0);
        assert_eq!(csqrt_re(-4.0, 0.0), 0.0);
        assert_eq!(csqrt_re(0.0, 0.0), 0.0);
        // √(3+4i) = 2+i ; √(−3+4i) = 1+2i
        assert!((csqrt_re(3.0, 4.0) - 2.0).abs() < 1e-15);
        assert!((csqrt_re(-3.0, 4.0) - 1.0).abs() < 1e-15);
        assert!((csqrt_re(-3.0, -4.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn fid_refuses_bad_inputs() {
        let a = features(10, 4, 1);
        assert_eq!(
            fid(&a, &features(1, 4, 2)),
            Err(FidelityError::TooFewRows {
                metric: "FID",
                needed: 2,
                got: 1
            })
        );
        assert_eq!(
            fid(&a, &features(10, 5, 2)),
            Err(FidelityError::DimMismatch {
                metric: "FID",
                first: 4,
                second: 5
            })
        );
    }

    #[test]
    fn inception_score_of_certain_distinct_classes_is_the_class_count() {
        // Each row puts (numerically) all its mass on its own class: KL(p_i‖q) = log C per row
        // when every class appears equally often in the split, so IS = C.
        let c = 4;
        let mut data = vec![0f32; 8 * c];
        for r in 0..8 {
            data[r * c + r % c] = 800.0; // p = 1 and exact zeros elsewhere (underflow)
        }
        let f = Features::new(8, c, data).unwrap();
        let r = inception_score(&f, 1).unwrap();
        assert!((r.mean - c as f64).abs() < 1e-12, "{r:?}");
        assert_eq!(r.std, 0.0);
        // Uniform logits: every p equals q, KL = 0, IS = 1.
        let u = Features::new(6, 3, vec![0.5; 18]).unwrap();
        let r = inception_score(&u, 3).unwrap();
        assert!((r.mean - 1.0).abs() < 1e-15 && r.std < 1e-15, "{r:?}");
        assert!(matches!(
            inception_score(&u, 7),
            Err(FidelityError::TooFewRows {
                needed: 7,
                got: 6,
                ..
            })
        ));
        assert!(matches!(
            inception_score(&u, 0),
            Err(FidelityError::BadOption { .. })
        ));
    }

    #[test]
    fn pairwise_sum_matches_numpy_structure() {
        // Exactly representable sums: the result is the exact total for any order.
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(pairwise_sum_f32(&v, 1, 1000), 499_500.0);
        assert_eq!(
            pairwise_sum_f32(&v, 3, 333),
            (0..333).map(|i| 3 * i).sum::<i32>() as f32
        );
        // A non-associative case: 1 + 2^24 + 1 … differs between sequential and pairwise sums;
        // with 8 lanes the two ones land in different lanes and survive.
        let mut w = vec![0f32; 16];
        w[0] = 16_777_216.0;
        w[1] = 1.0;
        w[9] = 1.0;
        assert_eq!(pairwise_sum_f32(&w, 1, 16), 16_777_218.0);
    }

    #[test]
    fn kid_separates_shifted_sets_and_reports_a_lowered_subset_size() {
        let a = features(40, 8, 3);
        let same = features(40, 8, 4);
        let near = kid(
            &a,
            &same,
            KidOptions {
                subsets: 5,
                subset_size: Some(50),
            },
        )
        .unwrap();
        assert_eq!(near.subset_size, 40);
        assert_eq!(near.lowered_from, Some(50));
        // Two draws of one distribution against one of them shifted by 1 in every feature:
        // the unbiased MMD² of the shifted pair must be far larger.
        let b: Vec<f32> = a.as_slice().iter().map(|v| v + 1.0).collect();
        let b = Features::new(40, 8, b).unwrap();
        let shifted = kid(&a, &b, KidOptions::default()).unwrap();
        assert!(
            shifted.mean > 10.0 * near.mean.abs(),
            "{shifted:?} vs {near:?}"
        );
        assert_eq!(shifted.lowered_from, Some(DEFAULT_KID_SUBSET_SIZE));
        let ok = kid(
            &a,
            &b,
            KidOptions {
                subsets: 3,
                subset_size: Some(10),
            },
        )
        .unwrap();
        assert_eq!((ok.subset_size, ok.lowered_from), (10, None));
        assert!(matches!(
            kid(
                &a,
                &b,
                KidOptions {
                    subsets: 3,
                    subset_size: Some(1)
                }
            ),
            Err(FidelityError::BadOption { .. })
        ));
    }

    #[test]
    fn mmd2_of_hand_made_kernels() {
        // m = 2: offdiagonal sums 2·0.5 and 2·0.25, K_XY all 1:
        // (1 + 0.5)/2 − 2·4/4 = −1.25 (exact in float32).
        let kxx = [9.0, 0.5, 0.5, 9.0];
        let kyy = [7.0, 0.25, 0.25, 7.0];
        let kxy = [1.0; 4];
        assert_eq!(mmd2_f32(&kxx, &kxy, &kyy, 2), -1.25);
    }

    #[test]
    fn kid_honours_cancel() {
        let a = features(10, 4, 1);
        let token = CancelToken::new();
        token.cancel();
        assert_eq!(
            kid_with_progress(&a, &a, KidOptions::default(), &token, |_, _| {}),
            Err(FidelityError::Cancelled)
        );
    }
}

//! Vectorised, multi-threaded CPU kernels for the element-wise work that dominates SD3 on MLX's
//! CPU backend: the attention softmax, exact GELU and SiLU.
//!
//! MLX's x86 CPU build has no SIMD implementation, so each `exp` and `erf` runs one float at a
//! time through a library `fmaf` call on one thread: a softmax over SD3-medium's attention
//! scores at 512 px takes longer than all the block's matrix products together. These kernels
//! compute *the same formulas in the same order* as MLX's (`mlx/backend/cpu/simd/math.h`:
//! Cephes-style `exp`, the PyTorch `erf`, `1/(1+exp(|x|))` sigmoid, a sequential softmax sum), so
//! results are bit-identical to MLX's (the tests in this module check that), but with fused
//! multiply-adds in vector registers and one thread per core.
//!
//! They are used only where the array lives on the CPU, is float32 and row-contiguous; anything
//! else (Metal, float16, views) takes MLX's own operation. Calling one evaluates its input, so
//! they must not be used inside `mlx::compile` or a transform: code traced by one holds a
//! [`PlainMlx`] guard, which switches them off on its thread.

use std::ffi::c_void;

use mlx_rs::{Array, Dtype};

use super::nn::MlxResult;

/// Below this many elements the work is done on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Whether these kernels apply to `x`: [`active`] on this thread, and `x` is float32.
pub fn applies(x: &Array) -> bool {
    active() && x.dtype() == Dtype::Float32
}

/// Whether the CPU kernels are on for this thread: an x86-64 machine whose default MLX device
/// is the CPU, they are not switched off with `SD3LAB_CPU_KERNELS=0` (for comparisons with plain
/// MLX), and no [`PlainMlx`] guard is alive.
pub fn active() -> bool {
    use std::sync::OnceLock;
    if PLAIN_MLX.with(|d| d.get() > 0) {
        return false;
    }
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    // The default device is set once at start-up and never changed after. On ARM, MLX's CPU
    // code is NEON-vectorised already (and sums in vector lanes, an order these kernels do not
    // reproduce), so they are for x86 only.
    *ACTIVE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::env::var("SD3LAB_CPU_KERNELS").map_or(true, |v| v != "0")
            && default_device_is_cpu()
    })
}

/// Whether MLX's default device is the CPU (set once at start-up).
pub fn default_device_is_cpu() -> bool {
    matches!(
        mlx_rs::Device::try_default().and_then(|d| d.get_type()),
        Ok(mlx_rs::DeviceType::Cpu)
    )
}

thread_local! {
    /// How many [`PlainMlx`] guards are alive on this thread.
    static PLAIN_MLX: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// While alive, these kernels are off on this thread and every operation is MLX's own: for
/// code traced by an MLX transform (`vjp`, `jvp`), since these kernels evaluate their input
/// and have no gradient.
#[must_use = "the kernels are off only while the guard lives"]
pub struct PlainMlx(std::marker::PhantomData<*const ()>);

impl PlainMlx {
    pub fn enter() -> Self {
        PLAIN_MLX.with(|d| d.set(d.get() + 1));
        Self(std::marker::PhantomData)
    }
}

impl Drop for PlainMlx {
    fn drop(&mut self) {
        PLAIN_MLX.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Softmax over the last axis, computed in place in `x`'s buffer when `x` is a fresh
/// row-contiguous float32 CPU array that nothing else refers to (the result of a matmul);
/// otherwise MLX's `softmax` (`precise` as there; float32 results are the same either way).
/// Returns the array holding the result.
///
/// # Safety
/// `x` must be an intermediate result that no other `Array` handle shares: MLX arrays are
/// reference counted (a Rust `clone` is another handle on the same buffer), and writing into a
/// shared buffer would change the other handle's values too.
pub unsafe fn softmax_last_axis_owned(x: Array, precise: bool) -> MlxResult<Array> {
    if !applies(&x) {
        return mlx_rs::ops::softmax_axis(&x, -1, precise);
    }
    let cols = match x.shape().last() {
        Some(&c) if c > 0 => c as usize,
        _ => return mlx_rs::ops::softmax_axis(&x, -1, precise),
    };
    let mut x = x;
    // SAFETY: the caller guarantees that no other handle shares `x`'s buffer.
    match unsafe { owned_f32_data_mut(&mut x) } {
        Some(data) => parallel_rows(data, cols, softmax_rows),
        None => return mlx_rs::ops::softmax_axis(&x, -1, precise),
    }
    Ok(x)
}

/// The evaluated float32 data of `x` as a mutable slice, or `None` when `x` is not a
/// row-contiguous float32 array with data (a view, a broadcast, another dtype, empty).
///
/// The pointer comes from MLX's own data accessor (`array::data<float>()`, which mlx-c returns
/// as `const float*` only by convention: the buffer is ordinary heap memory), never from a
/// shared Rust slice, so writing through it does not violate Rust's aliasing rules; the slice
/// borrows `x` mutably for its whole life, so no Rust reference to the data can coexist.
///
/// # Safety
/// No other `Array` handle may share `x`'s buffer (a Rust `clone`, or an MLX array the buffer
/// was donated from), since writes through the slice would change its values too.
unsafe fn owned_f32_data_mut(x: &mut Array) -> Option<&mut [f32]> {
    if x.dtype() != Dtype::Float32 || x.eval().is_err() {
        return None;
    }
    let mut row_contiguous = false;
    // SAFETY: `x` is a valid, evaluated array and `row_contiguous` a valid out-pointer.
    let status = unsafe { mlx_sys::_mlx_array_is_row_contiguous(&mut row_contiguous, x.as_ptr()) };
    if status != 0 || !row_contiguous {
        return None;
    }
    let len = x.size();
    // SAFETY: `x` is evaluated float32, so MLX returns the start of its buffer (or null).
    let ptr = unsafe { mlx_sys::mlx_array_data_float32(x.as_ptr()) } as *mut f32;
    if ptr.is_null() || len == 0 {
        return None;
    }
    // SAFETY: `ptr` points at `len` initialised, row-contiguous floats owned by `x`'s buffer,
    // which outlives the returned slice (it borrows `x` mutably); exclusivity is the caller's.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, as `mlx.nn.gelu` computes it; a new array.
pub fn gelu(x: &Array) -> MlxResult<Array> {
    map_elementwise(x, gelu_slice, super::nn::gelu_mlx)
}

/// SiLU, `x · sigmoid(x)`, as `mlx.nn.silu` computes it; a new array.
pub fn silu(x: &Array) -> MlxResult<Array> {
    map_elementwise(x, silu_slice, |x| mlx_rs::nn::silu(x))
}

fn map_elementwise(
    x: &Array,
    kernel: fn(&[f32], &mut [f32]),
    fallback: fn(&Array) -> MlxResult<Array>,
) -> MlxResult<Array> {
    if !applies(x) {
        return fallback(x);
    }
    let input = match x.try_as_slice::<f32>() {
        Ok(s) => s,
        Err(_) => return fallback(x),
    };
    // Zeroed through calloc: large blocks come as fresh zero pages, so this costs no pass.
    let mut out = vec![0.0f32; input.len()];
    parallel_chunks(input, &mut out, kernel);
    Ok(array_from_vec(out, x.shape()))
}

/// Wraps `data` as an MLX float32 array. MLX's CPU allocator cannot adopt a foreign buffer
/// (its `make_buffer` returns none), so MLX copies the values into a buffer of its own and
/// frees the vector at once through `drop_vec`; on Metal the buffer would be adopted.
fn array_from_vec(data: Vec<f32>, shape: &[i32]) -> Array {
    let mut boxed = Box::new(data);
    let ptr = boxed.as_mut_ptr() as *mut c_void;
    let payload = Box::into_raw(boxed) as *mut c_void;
    unsafe extern "C" fn drop_vec(payload: *mut c_void) {
        // SAFETY: `payload` is the `Box<Vec<f32>>` leaked above, released exactly once by MLX.
        drop(unsafe { Box::from_raw(payload as *mut Vec<f32>) });
    }
    // SAFETY: `ptr` points at `shape.iter().product()` floats owned by `payload`, which lives
    // until MLX calls `drop_vec`.
    unsafe {
        Array::from_ptr(mlx_sys::mlx_array_new_data_managed_payload(
            ptr,
            shape.as_ptr(),
            shape.len() as i32,
            mlx_sys::mlx_dtype__MLX_FLOAT32,
            payload,
            Some(drop_vec),
        ))
    }
}

/// How many pieces to split `len` elements into: one per core, or one below `PARALLEL_MIN`.
fn pieces_for(len: usize) -> usize {
    if len < PARALLEL_MIN {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` on every piece, the first on the calling thread and the others on their own.
fn run_pieces<T: Send>(pieces: impl Iterator<Item = T>, work: impl Fn(T) + Sync) {
    std::thread::scope(|s| {
        let mut pieces = pieces;
        let first = pieces.next();
        for piece in pieces {
            let work = &work;
            s.spawn(move || work(piece));
        }
        if let Some(piece) = first {
            work(piece);
        }
    });
}

/// Runs `kernel` over whole rows of `data`, split between the cores.
fn parallel_rows(data: &mut [f32], cols: usize, kernel: fn(&mut [f32], usize)) {
    parallel_row_blocks(data, cols, |_, rows| kernel(rows, cols));
}

/// Runs `work(first_row, rows)` over blocks of whole rows of `data` (`row_len` values each),
/// one block per core; `first_row` is the index of the block's first row in `data`.
pub(crate) fn parallel_row_blocks<T: Send>(
    data: &mut [T],
    row_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let row_len = row_len.max(1);
    let per = (data.len() / row_len)
        .div_ceil(pieces_for(data.len()))
        .max(1);
    run_pieces(data.chunks_mut(per * row_len).enumerate(), |(i, rows)| {
        work(i * per, rows)
    });
}

/// Runs `kernel` over matching chunks of `input` and `out`, split between the cores.
fn parallel_chunks(input: &[f32], out: &mut [f32], kernel: fn(&[f32], &mut [f32])) {
    let per = input
        .len()
        .div_ceil(pieces_for(input.len()))
        .next_multiple_of(64)
        .max(1);
    run_pieces(input.chunks(per).zip(out.chunks_mut(per)), |(i, o)| {
        kernel(i, o)
    });
}

// ---- the formulas, as MLX writes them ----------------------------------------------------------

/// MLX's `simd::exp` for float: 2^(x·log2 e) split into an integer power built from the exponent
/// bits and a degree-6 polynomial for the fraction.
#[inline(always)]
#[allow(clippy::excessive_precision, clippy::approx_constant)] // MLX's literals, verbatim.
fn exp_mlx(x0: f32) -> f32 {
    let x = x0 * 1.442695f32;
    let ipart = (x + 0.5).floor();
    let fpart = x - ipart;
    let mut p = 1.535336188319500e-4f32;
    p = p.mul_add(fpart, 1.339887440266574e-3);
    p = p.mul_add(fpart, 9.618437357674640e-3);
    p = p.mul_add(fpart, 5.550332471162809e-2);
    p = p.mul_add(fpart, 2.402264791363012e-1);
    p = p.mul_add(fpart, 6.931472028550421e-1);
    p = p.mul_add(fpart, 1.0);
    let epart = (ipart as i32).wrapping_add(127).wrapping_shl(23);
    let r = f32::from_bits(epart as u32) * p;
    if x0.is_nan() {
        x0
    } else if x0 > 88.0 {
        f32::INFINITY
    } else if x0 < -88.0 {
        0.0
    } else {
        r
    }
}

/// MLX's `simd::erf` (PyTorch's vectorised float erf).
#[inline(always)]
#[allow(clippy::excessive_precision)] // MLX's literals, kept verbatim.
fn erf_mlx(x: f32) -> f32 {
    let v = x;
    let t = 1.0 / 0.3275911f32.mul_add(v.abs(), 1.0);
    let mut r = 1.061405429f32.mul_add(t, -1.453152027);
    r = r.mul_add(t, 1.421413741);
    r = r.mul_add(t, -0.284496736);
    r = r.mul_add(t, 0.254829592);
    let e = -exp_mlx(-v * v);
    let result = (e * t).mul_add(r, 1.0);
    if x > 0.0 { result } else { -result }
}

/// √2 as `mlx.nn.gelu` divides by it: MLX's compiled kernels print their constants with six
/// significant digits, so it is 1.414214, not √2 rounded to float.
#[allow(clippy::approx_constant)]
pub(super) const SQRT_2_AS_MLX_COMPILES_IT: f32 = 1.414_214;

/// `mlx.nn.gelu`: `x * (1 + erf(x / sqrt(2))) / 2`, one operation at a time in float32.
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    x * (1.0 + erf_mlx(x / SQRT_2_AS_MLX_COMPILES_IT)) / 2.0
}

/// `mlx.nn.silu`: `x * sigmoid(x)`, with MLX's sigmoid `1/(1+exp(|x|))` mirrored for x ≥ 0.
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    let y = 1.0 / (1.0 + exp_mlx(x.abs()));
    x * if x < 0.0 { y } else { 1.0 - y }
}

/// Runs `f` compiled for AVX2 + FMA when the CPU has them (the formulas are inlined into it
/// and vectorised), else as plain code.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { avx2(f) };
    }
    f()
}

/// Softmax of each `cols`-long row of `data`, in place: maximum, `exp(x − max)` with a
/// sequential sum (MLX's order), then a multiply by the reciprocal of the sum.
fn softmax_rows(data: &mut [f32], cols: usize) {
    with_simd(
        #[inline(always)]
        || {
            for row in data.chunks_exact_mut(cols) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                for v in row.iter_mut() {
                    *v = exp_mlx(*v - max);
                }
                let mut sum = 0.0f32;
                for &v in row.iter() {
                    sum += v;
                }
                let inv = 1.0 / sum;
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
        },
    )
}

fn gelu_slice(input: &[f32], out: &mut [f32]) {
    with_simd(
        #[inline(always)]
        || map(input, out, gelu_one),
    )
}

fn silu_slice(input: &[f32], out: &mut [f32]) {
    with_simd(
        #[inline(always)]
        || map(input, out, silu_one),
    )
}

#[inline(always)]
fn map(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(input) {
        *o = f(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values spanning the ranges that matter: ordinary activations, large
    /// magnitudes (exp saturates beyond ±88), exact zeros and both signs.
    fn values(n: usize, spread: f32) -> Vec<f32> {
        let mut state = 0x9e37_79b9_u32;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let u = state as f32 / u32::MAX as f32 - 0.5;
                if i % 97 == 0 { 0.0 } else { u * spread }
            })
            .collect()
    }

    fn bits(a: &Array) -> Vec<u32> {
        let flat = a.reshape(&[-1]).unwrap();
        flat.as_slice::<f32>().iter().map(|v| v.to_bits()).collect()
    }

    fn assert_same(ours: &Array, mlx: &Array, what: &str) {
        assert_eq!(ours.shape(), mlx.shape(), "{what}: shape");
        let (a, b) = (bits(ours), bits(mlx));
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{what}: {differ} of {} values differ from MLX's",
            a.len()
        );
    }

    #[test]
    fn kernels_apply_to_float32_on_the_cpu_only() {
        let x = Array::from_slice(&[1.0f32, 2.0], &[2]);
        assert_eq!(applies(&x), cfg!(target_arch = "x86_64"));
        let h = x.as_dtype(Dtype::Float16).unwrap();
        assert!(!applies(&h));
    }

    #[test]
    fn softmax_is_bit_identical_to_mlx_on_one_and_several_threads() {
        for (rows, cols, spread) in [(3, 7, 4.0), (96, 1178, 30.0), (40, 4096, 300.0)] {
            let data = values(rows * cols, spread);
            let x = Array::from_slice(&data, &[rows as i32, cols as i32]);
            let expected = mlx_rs::ops::softmax_axis(&x, -1, true).unwrap();
            // SAFETY: a deep copy nothing else refers to.
            let ours = unsafe { softmax_last_axis_owned(x.deep_clone(), true) }.unwrap();
            assert_same(&ours, &expected, &format!("softmax {rows}x{cols}"));
            let sums: Vec<f32> = ours
                .as_slice::<f32>()
                .chunks(cols)
                .map(|r| r.iter().sum())
                .collect();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "rows sum to 1");
        }
    }

    #[test]
    fn gelu_and_silu_are_bit_identical_to_mlx() {
        for (n, spread) in [(1000, 8.0), (200_000, 40.0), (70_001, 400.0)] {
            let x = Array::from_slice(&values(n, spread), &[n as i32]);
            assert_same(&gelu(&x).unwrap(), &mlx_rs::nn::gelu(&x).unwrap(), "gelu");
            assert_same(&silu(&x).unwrap(), &mlx_rs::nn::silu(&x).unwrap(), "silu");
        }
    }

    #[test]
    fn non_contiguous_and_half_inputs_fall_back_to_mlx() {
        let x = Array::from_slice(&values(64, 6.0), &[8, 8]);
        let t = x.transpose().unwrap();
        assert_same(
            &gelu(&t).unwrap(),
            &mlx_rs::nn::gelu(&t).unwrap(),
            "gelu of a view",
        );
        assert_same(
            &super::super::nn::gelu_mlx(&x).unwrap(),
            &gelu(&x).unwrap(),
            "MLX ops",
        );
        let h = x.as_dtype(Dtype::Float16).unwrap();
        assert_eq!(gelu(&h).unwrap().dtype(), Dtype::Float16);
        // SAFETY: `h` is a fresh cast nothing else refers to.
        let s = unsafe { softmax_last_axis_owned(h, true) }.unwrap();
        assert_eq!(s.dtype(), Dtype::Float16);
    }

    #[test]
    fn attention_matches_mlx_fast_sdpa() {
        let (b, h, n, d) = (2, 3, 50, 16);
        let q = Array::from_slice(&values(b * h * n * d, 3.0), &[2, 3, 50, 16]);
        let k = q.multiply(super::super::nn::scalar(0.7)).unwrap();
        let v = q.add(super::super::nn::scalar(1.0)).unwrap();
        let ours = super::super::nn::attention(&q, &k, &v, 0.25).unwrap();
        let mlx = mlx_rs::fast::scaled_dot_product_attention(&q, &k, &v, 0.25, None, None).unwrap();
        let diff = ours
            .subtract(&mlx)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap();
        assert!(
            diff.item_exact::<f32>() < 1e-5,
            "max difference {}",
            diff.item_exact::<f32>()
        );
    }
}

//! The Inception network's layers as x86 CPU kernels: convolution + bias + ReLU, 3×3 max and
//! average pooling, channel concatenation and the spatial mean, on NHWC float32 [`Tensor`]s,
//! on every core.
//!
//! MLX's x86 CPU backend computes a convolution as an im2col copy (one thread, scalar, into
//! freshly mapped pages the kernel has to zero) followed by one `cblas_sgemm`, then the bias add,
//! the ReLU, the pooling reductions and the concatenations each as another single-threaded
//! pass. Measured on the development machine, that overhead took longer than the matrix
//! products themselves (docs/FIGURES.md, "Image-quality metrics"). Here the im2col is written by
//! all cores into one reused buffer, in tiles of at most [`TILE_FLOATS`] (so the buffer stays
//! bounded and its pages are mapped once), and multiplied by the same `cblas_sgemm` MLX's
//! convolution calls, with the same arguments (row major, the im2col's columns in MLX's
//! `(ky, kx, c)` order, the weight transposed); bias and ReLU are one pass over the result.
//! 1×1 convolutions multiply the input directly.
//!
//! Between layers the activations stay plain vectors rather than MLX arrays: MLX's CPU
//! allocator cannot adopt a foreign buffer, so wrapping each layer's output as an array would
//! copy it once more. The vectors come from a pool and go back to it when a [`Tensor`] is
//! dropped, so after the first batch no layer maps fresh pages; [`release_buffers`] frees them.
//! [`available`] says whether the kernels can run; `inception` decides per batch, and uses
//! MLX's own operations elsewhere (Metal, non-x86 CPUs,
//! [`crate::model::cpu_kernels::PlainMlx`], `SD3LAB_CPU_KERNELS=0`), which compute the same
//! values to float32 rounding (the tests compare them). NaN propagates as through MLX's
//! `maximum`: a NaN stays NaN through the ReLU and the max pooling.

use std::sync::Mutex;

use crate::model::cpu_kernels::{parallel_row_blocks, with_simd};
use crate::runtime::blas::CblasSgemm;

/// The largest im2col tile, in floats (16 MB): the buffer holding it is allocated once, and a
/// tile is multiplied soon after it is written.
pub const TILE_FLOATS: usize = 4 << 20;

/// At most this many floats wait in the pool (1 GB); buffers beyond it are freed.
const POOL_MAX_FLOATS: usize = 256 << 20;

/// The im2col buffer, reused by every convolution (grown to the largest tile once).
static SCRATCH: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// Buffers of dropped tensors, reused by the next tensors that fit.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is plain buffers: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the kernels can run in this process: x86-64, with a `cblas_sgemm` to call. (Whether
/// they are on for this thread, with MLX on the CPU, is
/// [`crate::model::cpu_kernels::active`]'s question.)
pub fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::runtime::blas::cblas_sgemm().is_some()
}

/// Frees the buffers the kernels keep between calls (the im2col tile and the pooled tensor
/// buffers): call when a run of the network is over.
pub fn release_buffers() {
    let scratch = std::mem::take(&mut *lock(&SCRATCH));
    let pool = std::mem::take(&mut *lock(&POOL));
    drop((scratch, pool));
}

/// An empty vector with room for `len` floats: the smallest pooled one that fits without being
/// more than twice as large (a small tensor does not keep a large buffer from its own size),
/// else a new one.
fn take_buffer(len: usize) -> Vec<f32> {
    let mut pool = lock(&POOL);
    let best = (pool.iter().enumerate())
        .filter(|(_, v)| (len..=len.saturating_mul(2).max(1)).contains(&v.capacity()))
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let mut v = pool.swap_remove(i);
            v.clear();
            v
        }
        None => Vec::with_capacity(len),
    }
}

/// An NHWC float32 tensor whose buffer returns to the pool when it is dropped.
#[derive(Debug)]
pub struct Tensor {
    data: Vec<f32>,
    dims: [usize; 4],
}

impl Tensor {
    /// A copy of `data`, `(N, H, W, C)` = `dims`.
    pub fn from_slice(data: &[f32], dims: [usize; 4]) -> Self {
        assert_eq!(
            data.len(),
            dims.iter().product::<usize>(),
            "data of {dims:?}"
        );
        let mut buf = take_buffer(data.len());
        buf.extend_from_slice(data);
        Self { data: buf, dims }
    }

    /// A tensor of `dims` whose values `fill` writes into the uninitialised buffer it is
    /// given, a pointer to room for all of them.
    ///
    /// # Safety
    /// `fill` must write every one of the `dims.iter().product()` floats.
    unsafe fn filled(dims: [usize; 4], fill: impl FnOnce(*mut f32)) -> Self {
        let len = dims.iter().product();
        let mut data = take_buffer(len);
        fill(data.spare_capacity_mut().as_mut_ptr() as *mut f32);
        // SAFETY: `fill` wrote all `len` floats of the buffer's capacity (the caller's promise).
        unsafe { data.set_len(len) };
        Self { data, dims }
    }

    /// A tensor of `dims` computed row by row on every core: `fill(first_row, rows)` writes
    /// every value of a block of whole rows of `row_len` floats, starting at row `first_row`.
    fn by_rows(dims: [usize; 4], row_len: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let len: usize = dims.iter().product();
        let mut data = take_buffer(len);
        // Zeroed first: the rows are handed out as initialised slices.
        data.resize(len, 0.0);
        parallel_row_blocks(&mut data, row_len, fill);
        Self { data, dims }
    }

    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        let mut pool = lock(&POOL);
        let held: usize = pool.iter().map(Vec::capacity).sum();
        if held + data.capacity() <= POOL_MAX_FLOATS {
            pool.push(data);
        }
    }
}

/// A convolution's shape: channels, kernel, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub cin: usize,
    pub cout: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: (usize, usize),
}

impl ConvGeometry {
    /// Channels in and out, kernel `(kh, kw)`, stride, padding `(ph, pw)`.
    pub const fn new(
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: (usize, usize),
    ) -> Self {
        Self {
            cin,
            cout,
            kernel,
            stride,
            padding,
        }
    }

    /// A 1×1 convolution with stride 1 and no padding: a plain matrix product.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == 1 && self.padding == (0, 0)
    }

    /// Output height and width for an input of `h × w`.
    fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (kh, kw) = self.kernel;
        let (ph, pw) = self.padding;
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        assert!(
            hp >= kh && wp >= kw && self.stride > 0,
            "a {kh}×{kw} kernel on a {h}×{w} input"
        );
        ((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1)
    }
}

/// `relu(conv2d(x, weight) + bias)`: `x` `(N, H, W, cin)`, `weight` `(cout, kh, kw, cin)`
/// row-major, `bias` `(cout)`; the result `(N, oh, ow, cout)`.
pub fn conv_bias_relu(x: &Tensor, weight: &[f32], bias: &[f32], g: &ConvGeometry) -> Tensor {
    let sgemm = crate::runtime::blas::cblas_sgemm()
        .expect("callers check `available()` before using the kernels");
    let [n, h, w, c] = x.dims;
    let (kh, kw) = g.kernel;
    let k = kh * kw * g.cin;
    assert!(
        c == g.cin && weight.len() == g.cout * k && bias.len() == g.cout,
        "a convolution {g:?} on {:?} with {} weights",
        x.dims,
        weight.len()
    );
    let (oh, ow) = g.output_size(h, w);
    let rows = n * oh * ow;
    let fill = |dst: *mut f32| {
        if g.is_pointwise() {
            // SAFETY: `x` holds `rows × cin` floats, `weight` `cout × cin`, `dst` has room for
            // `rows × cout`.
            unsafe { gemm_nt(sgemm, x.data.as_ptr(), rows, k, weight, g.cout, dst) };
            return;
        }
        let mut scratch = lock(&SCRATCH);
        let tile_rows = (TILE_FLOATS / k).clamp(1, rows.max(1));
        if scratch.len() < tile_rows * k {
            scratch.resize(tile_rows * k, 0.0);
        }
        let layout = Im2col {
            input: &x.data,
            dims: x.dims,
            out_hw: (oh, ow),
            geometry: *g,
        };
        for first in (0..rows).step_by(tile_rows) {
            let count = tile_rows.min(rows - first);
            let tile = &mut scratch[..count * k];
            parallel_row_blocks(tile, k, |row, part| layout.write_rows(first + row, part));
            // SAFETY: the tile holds `count × k` floats; rows `first..first + count` of `dst`
            // are within its `rows × cout` floats.
            unsafe {
                gemm_nt(
                    sgemm,
                    tile.as_ptr(),
                    count,
                    k,
                    weight,
                    g.cout,
                    dst.add(first * g.cout),
                )
            };
        }
    };
    // SAFETY: the GEMMs (beta 0) write every float of the `rows × cout` result.
    let mut out = unsafe { Tensor::filled([n, oh, ow, g.cout], fill) };
    parallel_row_blocks(&mut out.data, g.cout, |_, part| bias_relu(part, bias));
    out
}

/// `C = A · Wᵀ` with `A` `rows × k`, `W` `cout × k`, `C` `rows × cout`, all row-major: the
/// call MLX's CPU convolution makes. With beta 0 it writes every float of `C`.
///
/// # Safety
/// `a` must point at `rows × k` floats and `c` at room for `rows × cout`.
unsafe fn gemm_nt(
    sgemm: CblasSgemm,
    a: *const f32,
    rows: usize,
    k: usize,
    w: &[f32],
    cout: usize,
    c: *mut f32,
) {
    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;
    let int = |v: usize| i32::try_from(v).expect("Inception's matrices have fewer than 2³¹ rows");
    let (m, n, k) = (int(rows), int(cout), int(k));
    sgemm(
        ROW_MAJOR,
        NO_TRANS,
        TRANS,
        m,
        n,
        k,
        1.0,
        a,
        k,
        w.as_ptr(),
        k,
        0.0,
        c,
        n,
    );
}

/// The im2col matrix of one convolution: row `r` is output pixel `r` (NHWC order), its columns
/// the input values under the kernel in `(ky, kx, c)` order, zero outside the image.
struct Im2col<'a> {
    input: &'a [f32],
    dims: [usize; 4],
    out_hw: (usize, usize),
    geometry: ConvGeometry,
}

impl Im2col<'_> {
    /// Writes rows `first..` into `dst` (whole rows).
    fn write_rows(&self, first: usize, dst: &mut [f32]) {
        let [_, h, w, c] = self.dims;
        let (oh, ow) = self.out_hw;
        let ConvGeometry {
            kernel: (kh, kw),
            stride,
            padding: (ph, pw),
            ..
        } = self.geometry;
        let k = kh * kw * c;
        for (i, row) in dst.chunks_exact_mut(k).enumerate() {
            let r = first + i;
            let (n, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
            // In padded coordinates the kernel's taps start at column `x0`; those inside
            // `pw..pw + w` read the image, a contiguous run of it.
            let x0 = ox * stride;
            let lo = pw.saturating_sub(x0).min(kw);
            let hi = (pw + w).saturating_sub(x0).min(kw).max(lo);
            for ky in 0..kh {
                let seg = &mut row[ky * kw * c..(ky + 1) * kw * c];
                let yy = oy * stride + ky;
                if yy < ph || yy >= ph + h {
                    seg.fill(0.0);
                    continue;
                }
                seg[..lo * c].fill(0.0);
                seg[hi * c..].fill(0.0);
                if hi > lo {
                    let src = ((n * h + yy - ph) * w + x0 + lo - pw) * c;
                    seg[lo * c..hi * c].copy_from_slice(&self.input[src..src + (hi - lo) * c]);
                }
            }
        }
    }
}

/// `v ← max(v + bias, 0)` on whole rows of `bias.len()` values.
fn bias_relu(data: &mut [f32], bias: &[f32]) {
    with_simd(
        #[inline(always)]
        || {
            for row in data.chunks_exact_mut(bias.len()) {
                for (v, &b) in row.iter_mut().zip(bias) {
                    // As MLX's `maximum(y, 0)`: NaN stays NaN, −0 becomes +0.
                    let y = *v + b;
                    *v = if y <= 0.0 { 0.0 } else { y };
                }
            }
        },
    )
}

/// How a 3×3 pooling window combines its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// The maximum over the window's pixels inside the image (padding is −∞).
    Max,
    /// The mean over the window's pixels inside the image (`count_include_pad=False`).
    Mean,
}

/// `max_pool2d(kernel 3, stride, padding)`.
pub fn max_pool3(x: &Tensor, stride: usize, padding: usize) -> Tensor {
    pool3(x, stride, padding, Pool::Max)
}

/// `avg_pool2d(kernel 3, stride 1, padding 1, count_include_pad=False)`.
pub fn avg_pool3_same(x: &Tensor) -> Tensor {
    pool3(x, 1, 1, Pool::Mean)
}

fn pool3(x: &Tensor, stride: usize, pad: usize, pool: Pool) -> Tensor {
    let [n, h, w, c] = x.dims;
    // With at most one pixel of padding every window holds at least one real pixel (torch
    // requires padding ≤ kernel / 2 too).
    assert!(pad <= 1, "3×3 pooling with padding {pad}");
    let g = ConvGeometry::new(c, c, (3, 3), stride, (pad, pad));
    let (oh, ow) = g.output_size(h, w);
    // The window's rows (or columns) inside the image, for output row (or column) `o`.
    let inside = |o: usize, len: usize| {
        let start = o * stride;
        (start.max(pad) - pad, (start + 3).min(pad + len) - pad)
    };
    Tensor::by_rows([n, oh, ow, c], ow * c, |first, rows| {
        with_simd(
            #[inline(always)]
            || {
                for (i, orow) in rows.chunks_exact_mut(ow * c).enumerate() {
                    let (b, oy) = ((first + i) / oh, (first + i) % oh);
                    let (y0, y1) = inside(oy, h);
                    for (ox, opix) in orow.chunks_exact_mut(c).enumerate() {
                        let (x0, x1) = inside(ox, w);
                        pool_window(&x.data, (b, h, w, c), (y0, y1), (x0, x1), pool, opix);
                    }
                }
            },
        )
    })
}

/// One output pixel of a pooling: the window `ys × xs` of image `b` of `input`, combined.
#[inline(always)]
fn pool_window(
    input: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
    pool: Pool,
    out: &mut [f32],
) {
    let pixel = |iy: usize, ix: usize| {
        let at = ((b * h + iy) * w + ix) * c;
        &input[at..at + c]
    };
    out.copy_from_slice(pixel(y0, x0));
    for iy in y0..y1 {
        for ix in x0..x1 {
            if (iy, ix) == (y0, x0) {
                continue;
            }
            let v = pixel(iy, ix);
            match pool {
                // A NaN anywhere in the window wins, as in MLX.
                Pool::Max => {
                    for (o, &v) in out.iter_mut().zip(v) {
                        *o = if v > *o || v.is_nan() { v } else { *o };
                    }
                }
                Pool::Mean => {
                    for (o, &v) in out.iter_mut().zip(v) {
                        *o += v;
                    }
                }
            }
        }
    }
    if pool == Pool::Mean {
        let count = ((y1 - y0) * (x1 - x0)) as f32;
        for o in out.iter_mut() {
            *o /= count;
        }
    }
}

/// Tensors of the same `N, H, W` joined along the channels.
pub fn concat_channels(parts: &[Tensor]) -> Tensor {
    let [n, h, w, _] = parts.first().expect("at least one tensor to join").dims;
    assert!(
        parts.iter().all(|p| p.dims[..3] == [n, h, w]),
        "tensors of different sizes joined along the channels"
    );
    let total: usize = parts.iter().map(|p| p.dims[3]).sum();
    Tensor::by_rows([n, h, w, total], total, |first, pixels| {
        for (i, opix) in pixels.chunks_exact_mut(total).enumerate() {
            let p = first + i;
            let mut at = 0;
            for t in parts {
                let c = t.dims[3];
                opix[at..at + c].copy_from_slice(&t.data[p * c..(p + 1) * c]);
                at += c;
            }
        }
    })
}

/// The mean over height and width, `(N, C)` row-major: each channel's values summed in pixel
/// order, then divided by the pixel count.
pub fn spatial_mean(x: &Tensor) -> Vec<f32> {
    let [n, h, w, c] = x.dims;
    let mut out = vec![0.0f32; n * c];
    for (b, sums) in out.chunks_exact_mut(c).enumerate() {
        for pixel in x.data[b * h * w * c..(b + 1) * h * w * c].chunks_exact(c) {
            for (s, &v) in sums.iter_mut().zip(pixel) {
                *s += v;
            }
        }
        let count = (h * w) as f32;
        for s in sums.iter_mut() {
            *s /= count;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use mlx_rs::Array;

    use super::*;
    use crate::metrics::inception;
    use crate::model::nn::scalar;

    /// The tests share the kernels' buffer pool: one at a time, so a test can watch it.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        lock(&SERIAL)
    }

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The same values as a tensor and as an MLX array.
    fn both(dims: [usize; 4], seed: u64) -> (Tensor, Array) {
        let v = values(dims.iter().product(), seed);
        let shape = dims.map(|d| d as i32);
        (Tensor::from_slice(&v, dims), Array::from_slice(&v, &shape))
    }

    /// Same shape, and values within `tol` of each other relative to the largest magnitude.
    fn assert_close(ours: &Tensor, mlx: &Array, tol: f32, what: &str) {
        let shape: Vec<usize> = mlx.shape().iter().map(|&d| d as usize).collect();
        assert_eq!(&ours.dims()[..], &shape[..], "{what}: shape");
        let (a, b) = (ours.data(), mlx.as_slice::<f32>());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= tol * scale,
            "{what}: max difference {worst} (scale {scale})"
        );
    }

    /// A convolution's weights and bias, and its result by the kernel and by MLX's own
    /// `relu(conv2d(x, w) + b)`.
    fn conv_both(x: &(Tensor, Array), g: &ConvGeometry, seed: u64) -> (Tensor, Array) {
        let (kh, kw) = g.kernel;
        let w = values(g.cout * kh * kw * g.cin, seed);
        let b = values(g.cout, seed + 1);
        let ours = conv_bias_relu(&x.0, &w, &b, g);
        let wa = Array::from_slice(&w, &[g.cout as i32, kh as i32, kw as i32, g.cin as i32]);
        let ba = Array::from_slice(&b, &[g.cout as i32]);
        let (s, p) = (g.stride as i32, (g.padding.0 as i32, g.padding.1 as i32));
        let y = mlx_rs::ops::conv2d(&x.1, &wa, (s, s), p, None, None).unwrap();
        let mlx = mlx_rs::ops::maximum(y.add(&ba).unwrap(), scalar(0.0)).unwrap();
        (ours, mlx)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_kernels_are_available_here() {
        // The development machines and CI are x86-64 with OpenBLAS: the fast path is the one
        // the metrics take there, so it is the one these tests check.
        assert!(available());
    }

    #[test]
    fn convolutions_match_mlx_for_every_shape_inception_uses() {
        let _serial = serial();
        // (kernel, stride, padding) of the graph's layer kinds, on an odd-sized input.
        let kinds = [
            ((1, 1), 1, (0, 0)),
            ((3, 3), 2, (0, 0)),
            ((3, 3), 1, (0, 0)),
            ((3, 3), 1, (1, 1)),
            ((5, 5), 1, (2, 2)),
            ((1, 7), 1, (0, 3)),
            ((7, 1), 1, (3, 0)),
            ((1, 3), 1, (0, 1)),
            ((3, 1), 1, (1, 0)),
        ];
        for (i, (kernel, stride, padding)) in kinds.into_iter().enumerate() {
            let g = ConvGeometry::new(5, 7, kernel, stride, padding);
            let x = both([2, 11, 9, 5], 1 + i as u64);
            let (ours, mlx) = conv_both(&x, &g, 100 + 2 * i as u64);
            let what = format!("{kernel:?} stride {stride} padding {padding:?}");
            assert_close(&ours, &mlx, 1e-6, &what);
            // ReLU: some outputs clipped, some not.
            let y = ours.data();
            assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0), "{what}");
        }
    }

    #[test]
    fn a_convolution_larger_than_one_tile_matches_mlx() {
        let _serial = serial();
        // 100·100 rows × 3·3·64 columns: two im2col tiles.
        let g = ConvGeometry::new(64, 16, (3, 3), 1, (1, 1));
        const { assert!(100 * 100 * 9 * 64 > TILE_FLOATS) };
        let (ours, mlx) = conv_both(&both([1, 100, 100, 64], 7), &g, 8);
        assert_close(&ours, &mlx, 1e-6, "two tiles");
    }

    #[test]
    fn pooling_concatenation_and_mean_match_mlx() {
        let _serial = serial();
        let (x, xa) = both([2, 9, 8, 6], 3);
        assert_close(
            &max_pool3(&x, 2, 0),
            &inception::max_pool3(&xa, 2, 0).unwrap(),
            0.0,
            "max 3×3 stride 2",
        );
        assert_close(
            &max_pool3(&x, 1, 1),
            &inception::max_pool3(&xa, 1, 1).unwrap(),
            0.0,
            "max 3×3 stride 1 padding 1",
        );
        assert_close(
            &avg_pool3_same(&x),
            &inception::avg_pool3_same(&xa).unwrap(),
            1e-6,
            "average 3×3, count_include_pad=False",
        );
        let parts = [
            both([2, 3, 4, 5], 4),
            both([2, 3, 4, 1], 5),
            both([2, 3, 4, 7], 6),
        ];
        let (tensors, arrays): (Vec<Tensor>, Vec<Array>) = parts.into_iter().unzip();
        let joined = mlx_rs::ops::concatenate(&arrays, -1).unwrap();
        assert_close(&concat_channels(&tensors), &joined, 0.0, "concatenation");
        let mean = spatial_mean(&x);
        let mlx_mean = xa.mean_axes(&[1, 2], None).unwrap();
        let mean = Tensor::from_slice(&mean, [2, 1, 1, 6]);
        let mlx_mean = mlx_mean.reshape(&[2, 1, 1, 6]).unwrap();
        assert_close(&mean, &mlx_mean, 1e-6, "spatial mean");
    }

    #[test]
    fn nan_propagates_as_through_mlx() {
        let _serial = serial();
        let mut v = values(2 * 5 * 5 * 3, 21);
        v[3 * 5 * 3 + 2 * 3 + 1] = f32::NAN; // image 0, pixel (3, 2), channel 1
        let x = Tensor::from_slice(&v, [2, 5, 5, 3]);
        let xa = Array::from_slice(&v, &[2, 5, 5, 3]);
        let g = ConvGeometry::new(3, 2, (1, 1), 1, (0, 0));
        let ours = conv_bias_relu(&x, &values(6, 22), &values(2, 23), &g);
        let ours_pool = max_pool3(&x, 1, 1);
        let mlx = mlx_rs::ops::maximum(
            mlx_rs::ops::conv2d(
                &xa,
                Array::from_slice(&values(6, 22), &[2, 1, 1, 3]),
                (1, 1),
                (0, 0),
                None,
                None,
            )
            .unwrap()
            .add(Array::from_slice(&values(2, 23), &[2]))
            .unwrap(),
            scalar(0.0),
        )
        .unwrap();
        let mlx_pool = inception::max_pool3(&xa, 1, 1).unwrap();
        for (what, ours, mlx) in [
            ("conv + ReLU", &ours, &mlx),
            ("max pool", &ours_pool, &mlx_pool),
        ] {
            let nan_at =
                |d: &[f32]| -> Vec<usize> { (0..d.len()).filter(|&i| d[i].is_nan()).collect() };
            let theirs = nan_at(mlx.as_slice::<f32>());
            assert!(!theirs.is_empty(), "{what}: MLX propagates the NaN");
            assert_eq!(
                nan_at(ours.data()),
                theirs,
                "{what}: the same outputs are NaN"
            );
        }
    }

    #[test]
    fn tensor_buffers_return_to_the_pool_and_are_reused() {
        let _serial = serial();
        let (x, _) = both([1, 40, 40, 8], 11);
        let first = max_pool3(&x, 1, 1);
        let ptr = first.data().as_ptr();
        drop(first);
        assert!(
            lock(&POOL).iter().any(|v| v.as_ptr() == ptr),
            "a dropped tensor's buffer waits in the pool"
        );
        let again = max_pool3(&x, 1, 1);
        assert_eq!(
            again.data().as_ptr(),
            ptr,
            "the next tensor of that size reuses it"
        );
        drop((x, again));
        release_buffers();
        assert!(lock(&POOL).is_empty() && lock(&SCRATCH).capacity() == 0);
    }
}

//! torch-fidelity's `inception-v3-compat` feature extractor (the TensorFlow 2015-12-05
//! Inception-v3 graph as torch-fidelity 0.4.0 ports it) on MLX, in float32, NHWC: per image the
//! 2048 pool features (FID, KID) and the 1008 `logits_unbiased` (IS).
//!
//! Weights come as torch-fidelity's state dict (its key names, convolution weights OIHW):
//! [`InceptionV3::load`] reads a `.safetensors` file, [`InceptionV3::from_tensors`] takes
//! tensors already read (the `.pth` reader's). Every convolution is followed by BatchNorm
//! (running statistics, eps 1e-3) and ReLU; the BatchNorm is folded into the convolution at
//! load time (`w·α`, `β − mean·α` with `α = γ/√(var + eps)`, as torch's inference kernel forms
//! α and β), so each layer is one convolution (a plain matrix product for 1×1 convolutions),
//! one bias add and one ReLU.
//!
//! The graph is written once, over the `Ops` trait: [`InceptionV3::run_batch`] runs it on the
//! x86 CPU kernels of [`super::inception_cpu`] where they apply (MLX's x86 CPU backend is scalar
//! and single-threaded outside its GEMM), and on MLX's own operations elsewhere (Metal).
//!
//! [`extract_features`] is the job: files → batches → features, with progress and
//! cancellation; the next batch is decoded on a helper thread while the network runs.
//! [`synthetic_weights`] writes the deterministic test weights that the torch-fidelity fixtures
//! (`tests/py/fidelity_fixtures.py`) were computed with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

use super::images::{INCEPTION_SIZE, ImagesError, InputBatch, load_batch};
use super::inception_cpu::{self, ConvGeometry};
use crate::job::CancelToken;
use crate::model::nn::{MlxResult, scalar};
use crate::model::weights::{TensorStore, WeightsError};

/// Length of the pool features (`2048`).
pub const FEATURES_DIM: usize = 2048;
/// Length of `logits_unbiased` (1008 classes, as the TensorFlow graph has them).
pub const LOGITS_DIM: usize = 1008;
/// BatchNorm epsilon of every layer.
pub const BN_EPS: f32 = 1e-3;

/// Why the extractor could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error("{path}: {reason}")]
    Statistics { path: PathBuf, reason: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("MLX error in the Inception network: {0}")]
    Mlx(#[from] Exception),
    #[error("cancelled")]
    Cancelled,
}

// ---- the graph's layers, in the state dict's order ------------------------------------------

/// One `BasicConv2d` (convolution without bias, BatchNorm, ReLU) as torch-fidelity declares
/// it: its key prefix and its channels, kernel `(kh, kw)`, stride and padding `(ph, pw)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    pub name: String,
    pub geometry: ConvGeometry,
}

fn spec(
    name: String,
    cin: usize,
    cout: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: (usize, usize),
) -> ConvSpec {
    ConvSpec {
        name,
        geometry: ConvGeometry::new(cin, cout, kernel, stride, padding),
    }
}

fn pw(p: &str, branch: &str, cin: usize, cout: usize) -> ConvSpec {
    spec(format!("{p}.{branch}"), cin, cout, (1, 1), 1, (0, 0))
}

/// The 94 convolutions of the graph in the order of torch-fidelity's state dict (module
/// declaration order), which is also the order the synthetic weights are drawn in.
pub fn conv_specs() -> Vec<ConvSpec> {
    let s = |n: &str| n.to_owned();
    let mut v = vec![
        spec(s("Conv2d_1a_3x3"), 3, 32, (3, 3), 2, (0, 0)),
        spec(s("Conv2d_2a_3x3"), 32, 32, (3, 3), 1, (0, 0)),
        spec(s("Conv2d_2b_3x3"), 32, 64, (3, 3), 1, (1, 1)),
        spec(s("Conv2d_3b_1x1"), 64, 80, (1, 1), 1, (0, 0)),
        spec(s("Conv2d_4a_3x3"), 80, 192, (3, 3), 1, (0, 0)),
    ];
    let a = |v: &mut Vec<ConvSpec>, p: &str, cin: usize, pool: usize| {
        v.push(pw(p, "branch1x1", cin, 64));
        v.push(pw(p, "branch5x5_1", cin, 48));
        v.push(spec(format!("{p}.branch5x5_2"), 48, 64, (5, 5), 1, (2, 2)));
        v.push(pw(p, "branch3x3dbl_1", cin, 64));
        v.push(spec(
            format!("{p}.branch3x3dbl_2"),
            64,
            96,
            (3, 3),
            1,
            (1, 1),
        ));
        v.push(spec(
            format!("{p}.branch3x3dbl_3"),
            96,
            96,
            (3, 3),
            1,
            (1, 1),
        ));
        v.push(pw(p, "branch_pool", cin, pool));
    };
    a(&mut v, "Mixed_5b", 192, 32);
    a(&mut v, "Mixed_5c", 256, 64);
    a(&mut v, "Mixed_5d", 288, 64);
    let p = "Mixed_6a";
    v.push(spec(format!("{p}.branch3x3"), 288, 384, (3, 3), 2, (0, 0)));
    v.push(pw(p, "branch3x3dbl_1", 288, 64));
    v.push(spec(
        format!("{p}.branch3x3dbl_2"),
        64,
        96,
        (3, 3),
        1,
        (1, 1),
    ));
    v.push(spec(
        format!("{p}.branch3x3dbl_3"),
        96,
        96,
        (3, 3),
        2,
        (0, 0),
    ));
    let c = |v: &mut Vec<ConvSpec>, p: &str, c7: usize| {
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
        let sp = |n: &str, cin, cout, (k, pad): ((usize, usize), (usize, usize))| {
            spec(format!("{p}.{n}"), cin, cout, k, 1, pad)
        };
        v.push(pw(p, "branch1x1", 768, 192));
        v.push(pw(p, "branch7x7_1", 768, c7));
        v.push(sp("branch7x7_2", c7, c7, row));
        v.push(sp("branch7x7_3", c7, 192, col));
        v.push(pw(p, "branch7x7dbl_1", 768, c7));
        v.push(sp("branch7x7dbl_2", c7, c7, col));
        v.push(sp("branch7x7dbl_3", c7, c7, row));
        v.push(sp("branch7x7dbl_4", c7, c7, col));
        v.push(sp("branch7x7dbl_5", c7, 192, row));
        v.push(pw(p, "branch_pool", 768, 192));
    };
    c(&mut v, "Mixed_6b", 128);
    c(&mut v, "Mixed_6c", 160);
    c(&mut v, "Mixed_6d", 160);
    c(&mut v, "Mixed_6e", 192);
    let p = "Mixed_7a";
    v.push(pw(p, "branch3x3_1", 768, 192));
    v.push(spec(
        format!("{p}.branch3x3_2"),
        192,
        320,
        (3, 3),
        2,
        (0, 0),
    ));
    v.push(pw(p, "branch7x7x3_1", 768, 192));
    v.push(spec(
        format!("{p}.branch7x7x3_2"),
        192,
        192,
        (1, 7),
        1,
        (0, 3),
    ));
    v.push(spec(
        format!("{p}.branch7x7x3_3"),
        192,
        192,
        (7, 1),
        1,
        (3, 0),
    ));
    v.push(spec(
        format!("{p}.branch7x7x3_4"),
        192,
        192,
        (3, 3),
        2,
        (0, 0),
    ));
    let e = |v: &mut Vec<ConvSpec>, p: &str, cin: usize| {
        v.push(pw(p, "branch1x1", cin, 320));
        v.push(pw(p, "branch3x3_1", cin, 384));
        v.push(spec(
            format!("{p}.branch3x3_2a"),
            384,
            384,
            (1, 3),
            1,
            (0, 1),
        ));
        v.push(spec(
            format!("{p}.branch3x3_2b"),
            384,
            384,
            (3, 1),
            1,
            (1, 0),
        ));
        v.push(pw(p, "branch3x3dbl_1", cin, 448));
        v.push(spec(
            format!("{p}.branch3x3dbl_2"),
            448,
            384,
            (3, 3),
            1,
            (1, 1),
        ));
        v.push(spec(
            format!("{p}.branch3x3dbl_3a"),
            384,
            384,
            (1, 3),
            1,
            (0, 1),
        ));
        v.push(spec(
            format!("{p}.branch3x3dbl_3b"),
            384,
            384,
            (3, 1),
            1,
            (1, 0),
        ));
        v.push(pw(p, "branch_pool", cin, 192));
    };
    e(&mut v, "Mixed_7b", 1280);
    e(&mut v, "Mixed_7c", 2048);
    v
}

/// Every key of torch-fidelity's state dict with its shape (an empty shape is a scalar), in
/// the state dict's order: per convolution `conv.weight` (OIHW) and `bn.{weight, bias,
/// running_mean, running_var, num_batches_tracked}`, then `fc.weight` and `fc.bias`; 566 keys.
pub fn state_dict_keys() -> Vec<(String, Vec<usize>)> {
    let mut keys = Vec::new();
    for c in conv_specs() {
        let ConvGeometry {
            cin,
            cout,
            kernel: (kh, kw),
            ..
        } = c.geometry;
        keys.push((format!("{}.conv.weight", c.name), vec![cout, cin, kh, kw]));
        for t in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{}.bn.{t}", c.name), vec![cout]));
        }
        keys.push((format!("{}.bn.num_batches_tracked", c.name), vec![]));
    }
    keys.push(("fc.weight".into(), vec![LOGITS_DIM, FEATURES_DIM]));
    keys.push(("fc.bias".into(), vec![LOGITS_DIM]));
    keys
}

// ---- the network ----------------------------------------------------------------------------

/// A convolution with its BatchNorm folded in, followed by ReLU.
#[derive(Debug, Clone)]
struct BasicConv {
    /// `(cout, kh, kw, cin)`, row-major, scaled by the BatchNorm's α.
    weight: Array,
    /// For 1×1 stride-1 convolutions, the same weight as `(cin, cout)`, for one matrix product
    /// on MLX (with the bias added by the BLAS call).
    pointwise: Option<Array>,
    bias: Array,
    geometry: ConvGeometry,
}

impl BasicConv {
    /// The layer on MLX arrays.
    fn forward_mlx(&self, x: &Array) -> MlxResult<Array> {
        let g = &self.geometry;
        let y = match &self.pointwise {
            Some(w) => {
                let s = x.shape();
                let (n, h, wd, cin) = (s[0], s[1], s[2], s[3]);
                mlx_rs::ops::addmm(&self.bias, x.reshape(&[n * h * wd, cin])?, w, None, None)?
                    .reshape(&[n, h, wd, w.shape()[1]])?
            }
            None => mlx_rs::ops::conv2d(
                x,
                &self.weight,
                (g.stride as i32, g.stride as i32),
                (g.padding.0 as i32, g.padding.1 as i32),
                None,
                None,
            )?
            .add(&self.bias)?,
        };
        mlx_rs::ops::maximum(&y, scalar(0.0))
    }
}

/// Mixed_5* (`InceptionA`: a 1×1, a 5×5 chain of 2, a 3×3 chain of 3) and Mixed_6b–e
/// (`InceptionC`: a 1×1, a 7×7 chain of 3 and one of 5): four branches, the last a 1×1 on the
/// 3×3 average pool.
#[derive(Debug, Clone)]
struct PoolBranchBlock<const P: usize, const Q: usize> {
    b1: BasicConv,
    first: [BasicConv; P],
    second: [BasicConv; Q],
    pool: BasicConv,
}

type BlockA = PoolBranchBlock<2, 3>;
type BlockC = PoolBranchBlock<3, 5>;

#[derive(Debug, Clone)]
struct BlockB {
    b3: BasicConv,
    dbl: [BasicConv; 3],
}

#[derive(Debug, Clone)]
struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

#[derive(Debug, Clone)]
struct BlockE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2: [BasicConv; 2],
    dbl_1: [BasicConv; 2],
    dbl_3: [BasicConv; 2],
    pool: BasicConv,
    /// Mixed_7c pools with a 3×3 max pool (the TensorFlow graph's quirk), Mixed_7b averages.
    max_pool: bool,
}

/// The extractor: build it with [`InceptionV3::load`] or [`InceptionV3::from_tensors`].
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    stem: [BasicConv; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
    /// `fc.weight` transposed, `(2048, 1008)`.
    fc_t: Array,
    digest: u64,
}

/// `windows(x, k, s)`: the `k×k` windows of an NHWC array with stride `s`, as a view
/// `(N, oh, ow, k, k, C)` (as MLX's own pooling layers build it).
fn windows(x: &Array, k: i32, s: i32) -> MlxResult<Array> {
    let sh = x.shape();
    let (n, h, w, c) = (sh[0], sh[1], sh[2], sh[3]);
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let (sc, sw, shh, sn) = (1i64, c as i64, (w * c) as i64, (h * w * c) as i64);
    mlx_rs::ops::as_strided(
        x,
        &[n, oh, ow, k, k, c][..],
        &[sn, shh * s as i64, sw * s as i64, shh, sw, sc][..],
        None,
    )
}

/// `max_pool2d(kernel 3, stride s, padding p)`; padding is −∞ as in torch.
pub(crate) fn max_pool3(x: &Array, s: i32, p: i32) -> MlxResult<Array> {
    let x = if p > 0 {
        let widths = [(0, 0), (p, p), (p, p), (0, 0)];
        mlx_rs::ops::pad(x, &widths[..], scalar(f32::NEG_INFINITY), None)?
    } else {
        x.clone()
    };
    windows(&x, 3, s)?.max_axes(&[3, 4], None)
}

/// `avg_pool2d(kernel 3, stride 1, padding 1, count_include_pad=False)`: the window sum over
/// the zero-padded input divided by the number of real pixels in the window.
pub(crate) fn avg_pool3_same(x: &Array) -> MlxResult<Array> {
    let sh = x.shape();
    let (h, w) = (sh[1] as usize, sh[2] as usize);
    let widths = [(0, 0), (1, 1), (1, 1), (0, 0)];
    let padded = mlx_rs::ops::pad(x, &widths[..], scalar(0.0), None)?;
    let sum = windows(&padded, 3, 1)?.sum_axes(&[3, 4], None)?;
    let inside = |i: usize, n: usize| ((i + 1).min(n - 1) + 1 - i.saturating_sub(1)) as f32;
    let mut counts = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            counts.push(inside(i, h) * inside(j, w));
        }
    }
    sum.divide(Array::from_slice(&counts, &[1, h as i32, w as i32, 1]))
}

/// The operations the graph is made of, on one kind of tensor: MLX arrays (lazy, any device)
/// or the x86 CPU kernels' [`inception_cpu::Tensor`]s. The graph is written once, over this.
trait Ops {
    type T;
    fn conv(&self, layer: &BasicConv, x: &Self::T) -> MlxResult<Self::T>;
    fn max_pool3(&self, x: &Self::T, stride: usize, padding: usize) -> MlxResult<Self::T>;
    fn avg_pool3_same(&self, x: &Self::T) -> MlxResult<Self::T>;
    fn concat(&self, parts: Vec<Self::T>) -> MlxResult<Self::T>;
}

/// MLX's own operations.
struct MlxOps;

impl Ops for MlxOps {
    type T = Array;
    fn conv(&self, layer: &BasicConv, x: &Array) -> MlxResult<Array> {
        layer.forward_mlx(x)
    }
    fn max_pool3(&self, x: &Array, stride: usize, padding: usize) -> MlxResult<Array> {
        max_pool3(x, stride as i32, padding as i32)
    }
    fn avg_pool3_same(&self, x: &Array) -> MlxResult<Array> {
        avg_pool3_same(x)
    }
    fn concat(&self, parts: Vec<Array>) -> MlxResult<Array> {
        mlx_rs::ops::concatenate(&parts, -1)
    }
}

/// The x86 CPU kernels ([`inception_cpu`]), reading the weights from the layers' evaluated,
/// row-major MLX arrays.
struct CpuOps;

impl Ops for CpuOps {
    type T = inception_cpu::Tensor;
    fn conv(&self, layer: &BasicConv, x: &Self::T) -> MlxResult<Self::T> {
        let weight = layer.weight.try_as_slice::<f32>().map_err(slice_error)?;
        let bias = layer.bias.try_as_slice::<f32>().map_err(slice_error)?;
        Ok(inception_cpu::conv_bias_relu(
            x,
            weight,
            bias,
            &layer.geometry,
        ))
    }
    fn max_pool3(&self, x: &Self::T, stride: usize, padding: usize) -> MlxResult<Self::T> {
        Ok(inception_cpu::max_pool3(x, stride, padding))
    }
    fn avg_pool3_same(&self, x: &Self::T) -> MlxResult<Self::T> {
        Ok(inception_cpu::avg_pool3_same(x))
    }
    fn concat(&self, parts: Vec<Self::T>) -> MlxResult<Self::T> {
        Ok(inception_cpu::concat_channels(&parts))
    }
}

fn slice_error(e: mlx_rs::error::AsSliceError) -> Exception {
    Exception::custom(format!("reading an Inception weight: {e}"))
}

fn chain<O: Ops>(o: &O, x: &O::T, layers: &[BasicConv]) -> MlxResult<O::T> {
    let (first, rest) = layers.split_first().expect("a branch has layers");
    let mut y = o.conv(first, x)?;
    for l in rest {
        y = o.conv(l, &y)?;
    }
    Ok(y)
}

impl<const P: usize, const Q: usize> PoolBranchBlock<P, Q> {
    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> MlxResult<O::T> {
        let pooled = o.avg_pool3_same(x)?;
        o.concat(vec![
            o.conv(&self.b1, x)?,
            chain(o, x, &self.first)?,
            chain(o, x, &self.second)?,
            o.conv(&self.pool, &pooled)?,
        ])
    }
}

impl BlockB {
    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> MlxResult<O::T> {
        o.concat(vec![
            o.conv(&self.b3, x)?,
            chain(o, x, &self.dbl)?,
            o.max_pool3(x, 2, 0)?,
        ])
    }
}

impl BlockD {
    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> MlxResult<O::T> {
        o.concat(vec![
            chain(o, x, &self.b3)?,
            chain(o, x, &self.b7)?,
            o.max_pool3(x, 2, 0)?,
        ])
    }
}

impl BlockE {
    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> MlxResult<O::T> {
        let b3 = o.conv(&self.b3_1, x)?;
        let dbl = chain(o, x, &self.dbl_1)?;
        let pooled = if self.max_pool {
            o.max_pool3(x, 1, 1)?
        } else {
            o.avg_pool3_same(x)?
        };
        o.concat(vec![
            o.conv(&self.b1, x)?,
            o.conv(&self.b3_2[0], &b3)?,
            o.conv(&self.b3_2[1], &b3)?,
            o.conv(&self.dbl_3[0], &dbl)?,
            o.conv(&self.dbl_3[1], &dbl)?,
            o.conv(&self.pool, &pooled)?,
        ])
    }
}

/// Builds the layers from the store, one spec at a time, folding each BatchNorm.
struct Builder {
    store: TensorStore,
    specs: HashMap<String, ConvSpec>,
}

impl Builder {
    fn conv(&mut self, name: &str) -> Result<BasicConv, WeightsError> {
        let c = self
            .specs
            .remove(name)
            .expect("every layer the graph uses is one of conv_specs()");
        let geometry = c.geometry;
        let (kh, kw) = (geometry.kernel.0 as i32, geometry.kernel.1 as i32);
        let (cin, cout) = (geometry.cin as i32, geometry.cout as i32);
        let key = |t: &str| format!("{name}.{t}");
        let w = self.store.take(&key("conv.weight"), &[cout, cin, kh, kw])?;
        let gamma = self.store.take(&key("bn.weight"), &[cout])?;
        let beta = self.store.take(&key("bn.bias"), &[cout])?;
        let mean = self.store.take(&key("bn.running_mean"), &[cout])?;
        let var = self.store.take(&key("bn.running_var"), &[cout])?;
        let mlx = |source| WeightsError::Mlx {
            key: key("bn"),
            source,
        };
        let fold = || -> MlxResult<(Array, Array, Option<Array>)> {
            // torch's inference BatchNorm: invstd = 1/√(var + eps), α = invstd·γ, β' = β − mean·α.
            let invstd = scalar(1.0).divide(mlx_rs::ops::sqrt(var.add(scalar(BN_EPS))?)?)?;
            let alpha = invstd.multiply(&gamma)?;
            let bias = beta.subtract(mean.multiply(&alpha)?)?;
            let w = w
                .transpose_axes(&[0, 2, 3, 1])?
                .multiply(alpha.reshape(&[cout, 1, 1, 1])?)?;
            let pointwise = if geometry.is_pointwise() {
                let p = w.reshape(&[cout, cin])?.transpose()?;
                // A contiguous copy, so the product reads it in order.
                let p = p.contiguous()?;
                p.eval()?;
                Some(p)
            } else {
                None
            };
            // Row-major, as the CPU kernels read it.
            let w = w.contiguous()?;
            w.eval()?;
            bias.eval()?;
            Ok((w, bias, pointwise))
        };
        let (weight, bias, pointwise) = fold().map_err(mlx)?;
        Ok(BasicConv {
            weight,
            pointwise,
            bias,
            geometry,
        })
    }

    fn convs<const N: usize>(
        &mut self,
        p: &str,
        names: [&str; N],
    ) -> Result<[BasicConv; N], WeightsError> {
        let mut out = Vec::with_capacity(N);
        for n in names {
            out.push(self.conv(&format!("{p}.{n}"))?);
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_| unreachable!("N layers were pushed")))
    }

    fn block_a(&mut self, p: &str) -> Result<BlockA, WeightsError> {
        let [b1] = self.convs(p, ["branch1x1"])?;
        let b5 = self.convs(p, ["branch5x5_1", "branch5x5_2"])?;
        let b3 = self.convs(p, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"])?;
        let [pool] = self.convs(p, ["branch_pool"])?;
        Ok(BlockA {
            b1,
            first: b5,
            second: b3,
            pool,
        })
    }

    fn block_c(&mut self, p: &str) -> Result<BlockC, WeightsError> {
        let [b1] = self.convs(p, ["branch1x1"])?;
        let b7 = self.convs(p, ["branch7x7_1", "branch7x7_2", "branch7x7_3"])?;
        let dbl = self.convs(
            p,
            [
                "branch7x7dbl_1",
                "branch7x7dbl_2",
                "branch7x7dbl_3",
                "branch7x7dbl_4",
                "branch7x7dbl_5",
            ],
        )?;
        let [pool] = self.convs(p, ["branch_pool"])?;
        Ok(BlockC {
            b1,
            first: b7,
            second: dbl,
            pool,
        })
    }

    fn block_e(&mut self, p: &str, max_pool: bool) -> Result<BlockE, WeightsError> {
        let [b1, b3_1] = self.convs(p, ["branch1x1", "branch3x3_1"])?;
        let b3_2 = self.convs(p, ["branch3x3_2a", "branch3x3_2b"])?;
        let dbl_1 = self.convs(p, ["branch3x3dbl_1", "branch3x3dbl_2"])?;
        let dbl_3 = self.convs(p, ["branch3x3dbl_3a", "branch3x3dbl_3b"])?;
        let [pool] = self.convs(p, ["branch_pool"])?;
        Ok(BlockE {
            b1,
            b3_1,
            b3_2,
            dbl_1,
            dbl_3,
            pool,
            max_pool,
        })
    }
}

/// A 64-bit FNV-1a-style digest of the state dict's values (keys in state-dict order, shapes,
/// float32 bytes), the same for a `.pth` and its converted `.safetensors`: the feature cache's
/// key for "the same weights". Not cryptographic; it tells weight files apart.
fn digest_tensors(tensors: &HashMap<String, Array>) -> MlxResult<u64> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |v: u64| h = (h ^ v).wrapping_mul(PRIME);
    for (key, _) in state_dict_keys() {
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let Some(a) = tensors.get(&key) else {
            continue;
        };
        key.bytes().for_each(|b| mix(b as u64));
        a.shape().iter().for_each(|&d| mix(d as u64));
        let a = crate::model::nn::cast(a, Dtype::Float32)?;
        a.eval()?;
        let values = a
            .try_as_slice::<f32>()
            .map_err(|e| Exception::custom(format!("reading '{key}': {e}")))?;
        for pair in values.chunks(2) {
            let lo = pair[0].to_bits() as u64;
            let hi = pair.get(1).map_or(0, |v| v.to_bits() as u64);
            mix(lo | (hi << 32));
        }
    }
    Ok(h)
}

impl InceptionV3 {
    /// Loads torch-fidelity's state dict from a `.safetensors` file (key names and shapes as in
    /// the `.pth`; `num_batches_tracked` entries may be present and are ignored).
    pub fn load(path: &Path) -> Result<Self, InceptionError> {
        let tensors = crate::model::weights::load_safetensors(path)?;
        Ok(Self::from_tensors(path, tensors)?)
    }

    /// Builds the extractor from tensors named as torch-fidelity's state dict (OIHW convs).
    /// Every key must be present with its shape and none may be left over; `source` names the
    /// file in errors.
    pub fn from_tensors(
        source: &Path,
        mut tensors: HashMap<String, Array>,
    ) -> Result<Self, WeightsError> {
        tensors.retain(|k, _| !k.ends_with(".bn.num_batches_tracked"));
        let digest = digest_tensors(&tensors).map_err(|source| WeightsError::Mlx {
            key: "weights digest".into(),
            source,
        })?;
        let mut b = Builder {
            store: TensorStore::new(source, tensors, Dtype::Float32),
            specs: conv_specs()
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
        };
        let mut stem = Vec::with_capacity(5);
        for n in [
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
        ] {
            stem.push(b.conv(n)?);
        }
        let stem: [BasicConv; 5] = stem
            .try_into()
            .unwrap_or_else(|_| unreachable!("five layers were pushed"));
        let mixed_5 = [
            b.block_a("Mixed_5b")?,
            b.block_a("Mixed_5c")?,
            b.block_a("Mixed_5d")?,
        ];
        let [b3] = b.convs("Mixed_6a", ["branch3x3"])?;
        let dbl = b.convs(
            "Mixed_6a",
            ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
        )?;
        let mixed_6a = BlockB { b3, dbl };
        let mixed_6 = [
            b.block_c("Mixed_6b")?,
            b.block_c("Mixed_6c")?,
            b.block_c("Mixed_6d")?,
            b.block_c("Mixed_6e")?,
        ];
        let p = "Mixed_7a";
        let mixed_7a = BlockD {
            b3: b.convs(p, ["branch3x3_1", "branch3x3_2"])?,
            b7: b.convs(
                p,
                [
                    "branch7x7x3_1",
                    "branch7x7x3_2",
                    "branch7x7x3_3",
                    "branch7x7x3_4",
                ],
            )?,
        };
        let mixed_7 = [b.block_e("Mixed_7b", false)?, b.block_e("Mixed_7c", true)?];
        let fc = b
            .store
            .take("fc.weight", &[LOGITS_DIM as i32, FEATURES_DIM as i32])?;
        // The bias is part of the state dict but `logits_unbiased` does not use it.
        b.store.take("fc.bias", &[LOGITS_DIM as i32])?;
        let fc_t = (|| {
            let t = fc.transpose()?.contiguous()?;
            t.eval()?;
            Ok(t)
        })()
        .map_err(|source| WeightsError::Mlx {
            key: "fc.weight".into(),
            source,
        })?;
        b.store.finish()?;
        Ok(Self {
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7,
            fc_t,
            digest,
        })
    }

    /// A digest of the weights' values (see the feature cache); equal weights, equal digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The graph from the prepared input to the last block's output, `(N, 8, 8, 2048)`.
    fn trunk<O: Ops>(&self, o: &O, x: O::T) -> MlxResult<O::T> {
        let mut x = x;
        for (i, l) in self.stem.iter().enumerate() {
            x = o.conv(l, &x)?;
            // MaxPool_1 after Conv2d_2b, MaxPool_2 after Conv2d_4a.
            if i == 2 || i == 4 {
                x = o.max_pool3(&x, 2, 0)?;
            }
        }
        for b in &self.mixed_5 {
            x = b.forward(o, &x)?;
        }
        x = self.mixed_6a.forward(o, &x)?;
        for b in &self.mixed_6 {
            x = b.forward(o, &x)?;
        }
        x = self.mixed_7a.forward(o, &x)?;
        for b in &self.mixed_7 {
            x = b.forward(o, &x)?;
        }
        Ok(x)
    }

    /// The network on a batch of prepared inputs, `(N, 299, 299, 3)` float32 in [−1, 1]
    /// (see [`super::images::inception_input`]), with MLX's operations: `(features (N, 2048),
    /// logits_unbiased (N, 1008))`, lazy MLX arrays.
    pub fn forward(&self, x: &Array) -> MlxResult<(Array, Array)> {
        let features = self.trunk(&MlxOps, x.clone())?.mean_axes(&[1, 2], None)?;
        let logits = features.matmul(&self.fc_t)?;
        Ok((features, logits))
    }

    /// Features and logits of a prepared batch, as plain vectors (row-major, N×2048, N×1008):
    /// through the x86 CPU kernels where they apply, else [`Self::forward`]. The CPU kernels
    /// keep their buffers pooled for the next batch until [`inception_cpu::release_buffers`]
    /// ([`extract_features`] calls it when it ends).
    pub fn run_batch(&self, batch: &InputBatch) -> MlxResult<(Vec<f32>, Vec<f32>)> {
        let (n, s) = (batch.n, INCEPTION_SIZE);
        if crate::model::cpu_kernels::active() && inception_cpu::available() {
            let x = inception_cpu::Tensor::from_slice(&batch.data, [n, s, s, 3]);
            let features = inception_cpu::spatial_mean(&self.trunk(&CpuOps, x)?);
            let logits = Array::from_slice(&features, &[n as i32, FEATURES_DIM as i32])
                .matmul(&self.fc_t)?;
            return Ok((features, crate::model::nn::to_vec_f32(&logits)?));
        }
        let x = Array::from_slice(&batch.data, &[n as i32, s as i32, s as i32, 3]);
        let (f, l) = self.forward(&x)?;
        mlx_rs::transforms::eval([&f, &l])?;
        Ok((
            crate::model::nn::to_vec_f32(&f)?,
            crate::model::nn::to_vec_f32(&l)?,
        ))
    }
}

/// What [`extract_features`] returns: per image, in the order of the files.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub n: usize,
    /// `n × 2048`, row-major.
    pub features: Vec<f32>,
    /// `n × 1008` (`logits_unbiased`), row-major.
    pub logits: Vec<f32>,
}

/// Images per batch on the CPU unless told otherwise: with the CPU kernels on the development
/// machine, 16 took 5 % longer and 1.8× the memory (docs/FIGURES.md).
pub const CPU_BATCH_SIZE: usize = 4;
/// Images per batch on the GPU unless told otherwise (torch-fidelity's default is 64; 16 keeps
/// memory modest).
pub const GPU_BATCH_SIZE: usize = 16;

/// [`CPU_BATCH_SIZE`] or [`GPU_BATCH_SIZE`], for MLX's default device on this thread.
pub fn default_batch_size() -> usize {
    if crate::model::cpu_kernels::default_device_is_cpu() {
        CPU_BATCH_SIZE
    } else {
        GPU_BATCH_SIZE
    }
}

/// The job: `files` in batches of `batch_size` (each batch's images must share a size),
/// through the network; `on_progress(done, total)` after each batch; cancellation between
/// batches.
pub fn extract_features(
    files: &[PathBuf],
    model: &InceptionV3,
    batch_size: usize,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Extracted, InceptionError> {
    let batch_size = batch_size.max(1);
    /// Frees the CPU kernels' buffers however the run ends.
    struct ReleaseBuffers;
    impl Drop for ReleaseBuffers {
        fn drop(&mut self) {
            inception_cpu::release_buffers();
        }
    }
    let _release = ReleaseBuffers;
    let mut out = Extracted {
        n: 0,
        features: Vec::with_capacity(files.len() * FEATURES_DIM),
        logits: Vec::with_capacity(files.len() * LOGITS_DIM),
    };
    // The next batch is decoded on a helper thread (plain Rust, no MLX) while the network
    // runs on this one.
    std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        s.spawn(move || {
            for chunk in files.chunks(batch_size) {
                let batch = load_batch(chunk);
                let failed = batch.is_err();
                // A closed channel: the run ended (an error or a cancellation).
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        for batch in rx {
            if cancel.is_cancelled() {
                return Err(InceptionError::Cancelled);
            }
            let batch = batch?;
            let (f, l) = model.run_batch(&batch)?;
            out.features.extend(f);
            out.logits.extend(l);
            out.n += batch.n;
            on_progress(out.n, files.len());
        }
        Ok(out)
    })
}

// ---- synthetic weights ----------------------------------------------------------------------

/// Standard deviation of the synthetic `fc.weight` (larger logits make IS overflow, see the
/// metrics notes).
pub const SYNTHETIC_FC_STD: f64 = 0.1;
/// Standard deviation of the synthetic BatchNorm β and of `fc.bias`.
pub const SYNTHETIC_BETA_STD: f64 = 0.05;

/// Writes deterministic Inception weights to `out` (`.safetensors`, float32, torch-fidelity's
/// keys, OIHW, `num_batches_tracked` included), atomically.
///
/// Values come from NumPy's legacy `RandomState(seed)` in state-dict order, so that
/// `tests/py/fidelity_fixtures.py` draws the same bits: per convolution `randn · √(2/fan_in)`
/// (He), γ = `0.5 + rand`, β = `randn · 0.05`; then `fc.weight = randn · 0.1`, `fc.bias = randn
/// · 0.05`; each drawn in float64 and rounded to float32. The BatchNorm running statistics do
/// not come from the generator: random weights with (mean 0, var 1) give features that collapse
/// or explode, so torch computed them from data (train mode, cumulative average) and they are
/// read from `stats_npz` (`<layer>.bn.running_mean` / `running_var`, float32).
pub fn synthetic_weights(seed: u32, stats_npz: &Path, out: &Path) -> Result<(), InceptionError> {
    let stats_err = |reason: String| InceptionError::Statistics {
        path: stats_npz.to_owned(),
        reason,
    };
    let mut npz =
        crate::calib::npz::NpzReader::open(stats_npz).map_err(|e| stats_err(e.to_string()))?;
    let mut rng = crate::rng::NumpyRandomState::new(seed);
    let keys = state_dict_keys();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, shape) in &keys {
        let (dtype, size) = if shape.is_empty() {
            ("I64", 8)
        } else {
            ("F32", 4 * shape.iter().product::<usize>())
        };
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len() + offset);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    let push = |bytes: &mut Vec<u8>, values: &mut dyn Iterator<Item = f32>| {
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    };
    for (key, shape) in &keys {
        let n: usize = shape.iter().product();
        if shape.is_empty() {
            // num_batches_tracked, which nothing reads.
            bytes.extend_from_slice(&0i64.to_le_bytes());
        } else if key.ends_with("conv.weight") {
            let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
            let std = (2.0 / fan_in).sqrt();
            push(
                &mut bytes,
                &mut (0..n).map(|_| (rng.next_gauss() * std) as f32),
            );
        } else if key.ends_with("bn.weight") {
            push(
                &mut bytes,
                &mut (0..n).map(|_| (0.5 + rng.next_f64()) as f32),
            );
        } else if key.ends_with("bn.bias") || key == "fc.bias" {
            push(
                &mut bytes,
                &mut (0..n).map(|_| (rng.next_gauss() * SYNTHETIC_BETA_STD) as f32),
            );
        } else if key == "fc.weight" {
            push(
                &mut bytes,
                &mut (0..n).map(|_| (rng.next_gauss() * SYNTHETIC_FC_STD) as f32),
            );
        } else {
            let a = npz.read(key).map_err(|e| stats_err(e.to_string()))?;
            if a.shape != *shape {
                return Err(stats_err(format!(
                    "'{key}' has shape {:?}, expected {shape:?}",
                    a.shape
                )));
            }
            let crate::calib::NpyData::Float32(v) = a.data else {
                return Err(stats_err(format!("'{key}' is not float32")));
            };
            push(&mut bytes, &mut v.into_iter());
        }
    }
    debug_assert_eq!(bytes.len(), 8 + text.len() + offset);
    crate::fsutil::write_atomic(out, &bytes).map_err(|source| InceptionError::Write {
        path: out.to_owned(),
        source,
    })
}

// ---- feature cache --------------------------------------------------------------------------

/// Name of the feature cache written into a reference folder (not an image extension, so the
/// listing never picks it up).
pub const CACHE_FILE: &str = ".inception-features.sd3lab.npz";

/// Version of the cache's contents; a cache of another version is recomputed.
const CACHE_VERSION: u32 = 1;

/// What happened to the feature cache in [`extract_features_cached`].
#[derive(Debug)]
pub enum CacheOutcome {
    /// The cached features were valid and used.
    Hit,
    /// Computed and written to the cache.
    Written,
    /// Computed, but the cache could not be written (a read-only folder, a full disk): the
    /// features are still good, the next run computes them again.
    NotWritten(crate::calib::npz::NpzError),
}

/// The cache's key: per file its path, size and modification time (nanoseconds), the weights'
/// digest and the cache version, as JSON text. A file that changes, appears or disappears
/// changes the key.
fn cache_key(files: &[PathBuf], weights_digest: u64) -> Result<String, ImagesError> {
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| ImagesError::Decode {
            path: f.clone(),
            reason: e.to_string(),
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        entries.push(serde_json::json!([
            f.to_string_lossy(),
            meta.len(),
            mtime.to_string()
        ]));
    }
    Ok(serde_json::json!({
        "version": CACHE_VERSION,
        "extractor": "inception-v3-compat",
        "weights": format!("{weights_digest:016x}"),
        "files": entries,
    })
    .to_string())
}

/// The cached features if `path` holds a cache with exactly this key and consistent shapes.
/// Anything else (no file, another key, a damaged file) is a miss: the cache is only ever a
/// shortcut, never a source of errors.
fn read_cache(path: &Path, key: &str, n: usize) -> Option<Extracted> {
    use crate::calib::NpyData;
    let mut npz = crate::calib::npz::NpzReader::open(path).ok()?;
    let NpyData::Uint8(stored) = npz.read("key").ok()?.data else {
        return None;
    };
    if stored != key.as_bytes() {
        return None;
    }
    let mut take = |name: &str, cols: usize| -> Option<Vec<f32>> {
        let a = npz.read(name).ok()?;
        match a.data {
            NpyData::Float32(v) if a.shape == [n, cols] => Some(v),
            _ => None,
        }
    };
    Some(Extracted {
        n,
        features: take("features", FEATURES_DIM)?,
        logits: take("logits", LOGITS_DIM)?,
    })
}

fn write_cache(path: &Path, key: &str, e: &Extracted) -> Result<(), crate::calib::npz::NpzError> {
    use crate::calib::{NpyArray, NpyData};
    let array = |shape: Vec<usize>, data: NpyData| {
        NpyArray::new(shape, data).expect("shapes are built from the data's own length")
    };
    let key = array(vec![key.len()], NpyData::Uint8(key.as_bytes().to_vec()));
    let features = array(
        vec![e.n, FEATURES_DIM],
        NpyData::Float32(e.features.clone()),
    );
    let logits = array(vec![e.n, LOGITS_DIM], NpyData::Float32(e.logits.clone()));
    crate::calib::npz::write_npz(
        path,
        &[("key", &key), ("features", &features), ("logits", &logits)],
        false,
    )
}

/// [`extract_features`] for a reference folder, through a cache beside its images
/// (`dir/`[`CACHE_FILE`], written atomically): the features are reused while every listed
/// file keeps its size and modification time and the weights are the same.
pub fn extract_features_cached(
    dir: &Path,
    files: &[PathBuf],
    model: &InceptionV3,
    batch_size: usize,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<(Extracted, CacheOutcome), InceptionError> {
    let path = dir.join(CACHE_FILE);
    let key = cache_key(files, model.digest())?;
    if let Some(cached) = read_cache(&path, &key, files.len()) {
        on_progress(files.len(), files.len());
        return Ok((cached, CacheOutcome::Hit));
    }
    let extracted = extract_features(files, model, batch_size, cancel, on_progress)?;
    // The files may have changed while they were read: the key is taken again, and the cache
    // written only if it still holds.
    let outcome = match cache_key(files, model.digest()) {
        Ok(after) if after == key => match write_cache(&path, &key, &extracted) {
            Ok(()) => CacheOutcome::Written,
            Err(e) => CacheOutcome::NotWritten(e),
        },
        _ => CacheOutcome::NotWritten(crate::calib::npz::NpzError::Io {
            path,
            source: std::io::Error::other("the images changed while they were read"),
        }),
    };
    Ok((extracted, outcome))
}

//! Building blocks shared by the model parts, written to perform the same MLX operations in the
//! same order as MLX's Python `nn` layers that DiffusionKit uses, so results match to rounding.

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// Result of model computations.
pub type MlxResult<T> = Result<T, Exception>;

/// A Linear layer: `y = x · Wᵀ + b`, weight `(out, in)`; optionally with MLX-quantized
/// weights (then `weight` is an empty placeholder and `quantized` holds the packed weight).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Array,
    pub bias: Option<Array>,
    pub quantized: Option<QuantizedWeight>,
}

/// An affine-quantized weight as MLX packs it (`mx.quantize`).
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    pub packed: Array,
    pub scales: Array,
    pub biases: Array,
    pub bits: i32,
    pub group_size: i32,
    /// `(out, in)` of the float weight.
    pub shape: (i32, i32),
}

impl Linear {
    pub fn new(weight: Array, bias: Option<Array>) -> Self {
        Self {
            weight,
            bias,
            quantized: None,
        }
    }

    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        if let Some(q) = &self.quantized {
            let y = mlx_rs::ops::quantized_matmul(
                x,
                &q.packed,
                &q.scales,
                &q.biases,
                true,
                q.group_size,
                q.bits,
            )?;
            return match &self.bias {
                Some(b) => y.add(b),
                None => Ok(y),
            };
        }
        let wt = self.weight.transpose()?;
        match &self.bias {
            // mlx.nn.Linear: addmm(bias, x, W.T) with a bias, x @ W.T without.
            Some(b) => mlx_rs::ops::addmm(b, x, &wt, None, None),
            None => x.matmul(&wt),
        }
    }

    pub fn out_features(&self) -> i32 {
        self.quantized
            .as_ref()
            .map_or_else(|| self.weight.shape()[0], |q| q.shape.0)
    }

    pub fn in_features(&self) -> i32 {
        self.quantized
            .as_ref()
            .map_or_else(|| self.weight.shape()[1], |q| q.shape.1)
    }
}

/// A 2-D convolution in MLX layout: input NHWC, weight `(out, kh, kw, in)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Array,
    pub bias: Option<Array>,
    pub stride: i32,
    pub padding: i32,
}

impl Conv2d {
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let y = mlx_rs::ops::conv2d(
            x,
            &self.weight,
            (self.stride, self.stride),
            (self.padding, self.padding),
            None,
            None,
        )?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// A LayerNorm with optional affine parameters (over the last axis).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Option<Array>,
    pub bias: Option<Array>,
    pub eps: f32,
}

impl LayerNorm {
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        mlx_rs::fast::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

// MLX's Python activations are `mx.compile`d (one fused elementwise pass); these are too.

/// `x · sigmoid(x)` (mlx.nn.silu, compiled); on the CPU in float32, the same formula
/// vectorised ([`super::cpu_kernels`]).
pub fn silu(x: &Array) -> MlxResult<Array> {
    super::cpu_kernels::silu(x)
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2` (mlx.nn.gelu, compiled); on the CPU in float32,
/// the same formula vectorised ([`super::cpu_kernels`]).
pub fn gelu(x: &Array) -> MlxResult<Array> {
    super::cpu_kernels::gelu(x)
}

/// Exact GELU with MLX operations, in `x`'s dtype (mlx-rs's `nn::gelu` promotes float16 to
/// float32 through its float32 constants; Python's weakly typed scalars do not).
pub(super) fn gelu_mlx(x: &Array) -> MlxResult<Array> {
    let c = |v: f32| Array::from_f32(v).as_dtype(x.dtype());
    let erf = mlx_rs::ops::erf(x.divide(c(super::cpu_kernels::SQRT_2_AS_MLX_COMPILES_IT)?)?)?;
    x.multiply(c(1.0)?.add(&erf)?)?.divide(c(2.0)?)
}

/// `mx.fast.scaled_dot_product_attention(q, k, v, scale)` without a mask. On the CPU in
/// float32 this runs MLX's own fallback (`softmax((q·scale) kᵀ) v`) with the softmax done by
/// [`super::cpu_kernels`]; elsewhere MLX's fused kernel.
pub fn attention(q: &Array, k: &Array, v: &Array, scale: f32) -> MlxResult<Array> {
    if !super::cpu_kernels::applies(q) {
        return mlx_rs::fast::scaled_dot_product_attention(q, k, v, scale, None, None);
    }
    let scores = q.multiply(scalar(scale))?.matmul(&k.swap_axes(-1, -2)?)?;
    // SAFETY: `scores` was just created here and is shared with nothing.
    let weights = unsafe { super::cpu_kernels::softmax_last_axis_owned(scores, true)? };
    weights.matmul(v)
}

/// `x · sigmoid(1.702 · x)` (CLIP-L's quick_gelu, mlx.nn.gelu_fast_approx, compiled). mlx-rs's
/// own `gelu_fast_approximate` uses 1.773, so it is not used here.
pub fn quick_gelu(x: &Array) -> MlxResult<Array> {
    let f = |x: &Array| x.multiply(mlx_rs::ops::sigmoid(x.multiply(scalar(1.702))?)?);
    let mut compiled = mlx_rs::transforms::compile::compile(f, true);
    compiled(x)
}

/// An empty array standing in for released weights.
pub fn released() -> Array {
    Array::from_slice::<f32>(&[], &[0])
}

/// A float32 scalar that takes the other operand's dtype, like a Python float in MLX.
pub fn scalar(v: f32) -> Array {
    Array::from_f32(v)
}

/// Slices `[start, start + len)` along `axis`.
pub fn narrow(x: &Array, axis: i32, start: i32, len: i32) -> MlxResult<Array> {
    let parts = x.split_at_indices(&[start, start + len], axis)?;
    Ok(parts[1].clone())
}

/// Casts when the dtype differs.
pub fn cast(x: &Array, dtype: Dtype) -> MlxResult<Array> {
    if x.dtype() == dtype {
        Ok(x.clone())
    } else {
        x.as_dtype(dtype)
    }
}

/// The array's values as `f32`, in C order (a reshape materialises strided views).
pub fn to_vec_f32(x: &Array) -> MlxResult<Vec<f32>> {
    let flat = x.as_dtype(Dtype::Float32)?.reshape(&[-1])?;
    flat.eval()?;
    flat.try_as_slice::<f32>()
        .map(|s| s.to_vec())
        .map_err(|e| mlx_rs::error::Exception::custom(format!("reading array values: {e}")))
}

impl Linear {
    /// Weight (packed, scales and biases when quantized) and bias arrays.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = match &self.quantized {
            Some(q) => vec![&q.packed, &q.scales, &q.biases],
            None => vec![&self.weight],
        };
        v.extend(self.bias.as_ref());
        v
    }
}

impl Conv2d {
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.weight];
        v.extend(self.bias.as_ref());
        v
    }
}

impl LayerNorm {
    pub fn arrays(&self) -> Vec<&Array> {
        self.weight.iter().chain(self.bias.iter()).collect()
    }
}

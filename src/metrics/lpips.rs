//! LPIPS (Zhang et al. 2018), AlexNet variant with the v0.1 linear heads, on MLX, as the
//! `lpips` package (0.1.4) computes `LPIPS(net='alex', version='0.1')(x, y)`:
//! inputs in [-1, 1] (`u8 / 127.5 - 1`, the package's `im2tensor`), the scaling layer
//! `(x - shift) / scale`, torchvision AlexNet's `features` cut after relu1…relu5, each feature
//! map unit-normalised over channels (`x / (‖x‖₂ + 1e-10)`), squared difference, the 1×1 linear
//! head (no bias), spatial mean, summed over the five layers.
//!
//! Weights: the backbone's `features.*` (from torchvision's `alexnet-owt-7be5be79.pth`) and the
//! heads `lin{0..4}.model.1.weight` (LPIPS v0.1 `alex.pth`), both as converted by
//! [`super::weights`].

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::module::Module;
use mlx_rs::{Array, Dtype, error::Exception};

use crate::model::nn::Conv2d;
use crate::model::weights::{TensorStore, WeightsError, load_safetensors};

/// The scaling layer's constants (`lpips.ScalingLayer`).
pub const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
pub const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// `lpips.normalize_tensor`'s epsilon.
const EPS: f32 = 1e-10;

/// AlexNet's five convolutions: (state-dict index, in, out, kernel, stride, padding), and whether
/// a 3×3/2 max pool precedes it.
const CONVS: [(usize, i32, i32, i32, i32, i32, bool); 5] = [
    (0, 3, 64, 11, 4, 2, false),
    (3, 64, 192, 5, 1, 2, true),
    (6, 192, 384, 3, 1, 1, true),
    (8, 384, 256, 3, 1, 1, false),
    (10, 256, 256, 3, 1, 1, false),
];

/// Why LPIPS could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum LpipsError {
    /// Reading the weights: unreadable file, missing tensor, wrong shape (the model loader's
    /// own checks).
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(
        "LPIPS compares two RGB images of {width}×{height} ({expected} bytes each, at least 32×32 pixels); got {a} and {b} bytes"
    )]
    Size {
        width: usize,
        height: usize,
        expected: usize,
        a: usize,
        b: usize,
    },
    #[error("MLX: {0}")]
    Mlx(#[from] Exception),
}

/// The LPIPS network with its weights.
#[derive(Debug, Clone)]
pub struct Lpips {
    convs: Vec<Conv2d>,
    /// Per layer: the head's weights as `[1, 1, 1, C]` (to broadcast over NHWC).
    lins: Vec<Array>,
    shift: Array,
    scale: Array,
}

impl Lpips {
    /// Loads the converted AlexNet `features` and the v0.1 heads.
    pub fn load(weights: &super::weights::LpipsWeights) -> Result<Self, LpipsError> {
        Self::from_tensors(
            &weights.alexnet,
            &load_safetensors(&weights.alexnet)?,
            &weights.lin,
            &load_safetensors(&weights.lin)?,
        )
    }

    /// The network from tensors already loaded (`alexnet_path`, `lin_path` name them in errors).
    pub fn from_tensors(
        alexnet_path: &Path,
        alexnet: &HashMap<String, Array>,
        lin_path: &Path,
        lin: &HashMap<String, Array>,
    ) -> Result<Self, LpipsError> {
        // Arrays are shared, not copied: the stores take what they are given.
        let mut alexnet = TensorStore::new(alexnet_path, alexnet.clone(), Dtype::Float32);
        let mut lin = TensorStore::new(lin_path, lin.clone(), Dtype::Float32);
        let mut convs = Vec::with_capacity(5);
        let mut lins = Vec::with_capacity(5);
        for (layer, &(i, cin, cout, k, stride, padding, _)) in CONVS.iter().enumerate() {
            let w = alexnet.take(&format!("features.{i}.weight"), &[cout, cin, k, k])?;
            let b = alexnet.take(&format!("features.{i}.bias"), &[cout])?;
            convs.push(Conv2d {
                // PyTorch's (out, in, kh, kw) to MLX's (out, kh, kw, in).
                weight: w.transpose_axes(&[0, 2, 3, 1])?,
                bias: Some(b),
                stride,
                padding,
            });
            let l = lin.take(&format!("lin{layer}.model.1.weight"), &[1, cout, 1, 1])?;
            lins.push(l.reshape(&[1, 1, 1, cout])?);
        }
        Ok(Self {
            convs,
            lins,
            shift: Array::from_slice(&SHIFT, &[1, 1, 1, 3]),
            scale: Array::from_slice(&SCALE, &[1, 1, 1, 3]),
        })
    }

    /// The five layers' unit-normalised features of NHWC images in [-1, 1].
    fn features(&self, x: &Array) -> Result<Vec<Array>, Exception> {
        let mut h = x.subtract(&self.shift)?.divide(&self.scale)?;
        let mut pool = mlx_rs::nn::MaxPool2d::new(3, 2);
        let mut out = Vec::with_capacity(5);
        for (conv, &(.., pooled)) in self.convs.iter().zip(&CONVS) {
            if pooled {
                h = pool.forward(&h)?;
            }
            h = mlx_rs::ops::maximum(&conv.forward(&h)?, Array::from_f32(0.0))?;
            let norm = h.square()?.sum_axes(&[3], true)?.sqrt()?;
            out.push(h.divide(&norm.add(Array::from_f32(EPS))?)?);
        }
        Ok(out)
    }

    /// LPIPS between two batches of NHWC float32 images in [-1, 1] of one size: one distance
    /// per pair, shape `[N]`.
    pub fn distance(&self, a: &Array, b: &Array) -> Result<Array, Exception> {
        let fa = self.features(a)?;
        let fb = self.features(b)?;
        let mut total: Option<Array> = None;
        for ((x, y), lin) in fa.iter().zip(&fb).zip(&self.lins) {
            let d = x
                .subtract(y)?
                .square()?
                .multiply(lin)?
                .sum_axes(&[3], false)?;
            let d = d.mean_axes(&[1, 2], false)?;
            total = Some(match total {
                Some(t) => t.add(&d)?,
                None => d,
            });
        }
        Ok(total.expect("five layers"))
    }

    /// LPIPS between two RGB images (`width × height × 3` bytes, row-major).
    pub fn distance_rgb8(
        &self,
        a: &[u8],
        b: &[u8],
        width: usize,
        height: usize,
    ) -> Result<f32, LpipsError> {
        let n = width * height * 3;
        // AlexNet's first layers shrink the image 32-fold before the last feature map.
        if a.len() != n || b.len() != n || width < 32 || height < 32 {
            return Err(LpipsError::Size {
                width,
                height,
                expected: n,
                a: a.len(),
                b: b.len(),
            });
        }
        let to = |img: &[u8]| {
            let v: Vec<f32> = img.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
            Array::from_slice(&v, &[1, height as i32, width as i32, 3])
        };
        let d = self.distance(&to(a), &to(b))?;
        d.eval()?;
        Ok(d.as_slice::<f32>()[0])
    }
}

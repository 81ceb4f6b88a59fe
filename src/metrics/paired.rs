//! Paired image metrics of a benchmark image against its reference twin (same prompt and
//! seed): PSNR and SSIM on 8-bit RGB, computed as scikit-image computes them
//! (`peak_signal_noise_ratio(a, b, data_range=255)` and `structural_similarity(a, b,
//! channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//! data_range=255)`), in float64.

/// The SSIM Gaussian window's standard deviation (Wang et al. 2004).
pub const SSIM_SIGMA: f64 = 1.5;
/// skimage's `truncate` for `gaussian_weights=True`: radius `int(3.5·1.5 + 0.5)` = 5, 11 taps.
const SSIM_TRUNCATE: f64 = 3.5;
const SSIM_K1: f64 = 0.01;
const SSIM_K2: f64 = 0.03;
/// Peak value of 8-bit images (`data_range=255`).
const DATA_RANGE: f64 = 255.0;

/// The radius of the Gaussian window (`int(truncate·sigma + 0.5)`, as scipy.ndimage computes it).
fn ssim_radius() -> usize {
    (SSIM_TRUNCATE * SSIM_SIGMA + 0.5) as usize
}

/// The smallest width and height SSIM accepts: the window size, 11 (skimage refuses smaller
/// images with "win_size exceeds image extent").
pub fn ssim_min_side() -> u32 {
    (2 * ssim_radius() + 1) as u32
}

/// What can be wrong with an image pair.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PairedError {
    #[error("{len} bytes cannot be a {width}×{height} RGB image ({} bytes)", *width as u64 * *height as u64 * 3)]
    PixelLength { width: u32, height: u32, len: usize },
    #[error("the image is empty ({width}×{height})")]
    Empty { width: u32, height: u32 },
    #[error(
        "the images differ in size: {first_width}×{first_height} and {second_width}×{second_height}"
    )]
    SizeMismatch {
        first_width: u32,
        first_height: u32,
        second_width: u32,
        second_height: u32,
    },
    #[error(
        "SSIM needs images of at least {min}×{min} pixels (its Gaussian window), got {width}×{height}"
    )]
    TooSmallForSsim { width: u32, height: u32, min: u32 },
}

/// A borrowed 8-bit RGB image: `width × height` pixels, row-major, 3 bytes per pixel, no
/// padding (the layout of `image::RgbImage::as_raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RgbView<'a> {
    width: u32,
    height: u32,
    pixels: &'a [u8],
}

impl<'a> RgbView<'a> {
    /// Checks that `pixels` holds exactly `width × height × 3` bytes and is not empty.
    pub fn new(width: u32, height: u32, pixels: &'a [u8]) -> Result<Self, PairedError> {
        let want = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3));
        if want != Some(pixels.len()) {
            return Err(PairedError::PixelLength {
                width,
                height,
                len: pixels.len(),
            });
        }
        if pixels.is_empty() {
            return Err(PairedError::Empty { width, height });
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn pixels(&self) -> &'a [u8] {
        self.pixels
    }
}

fn check_same_size(a: &RgbView, b: &RgbView) -> Result<(), PairedError> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(PairedError::SizeMismatch {
            first_width: a.width,
            first_height: a.height,
            second_width: b.width,
            second_height: b.height,
        });
    }
    Ok(())
}

/// Per-pixel absolute difference: the largest |Δ| over R, G and B of each pixel (0..=255),
/// row-major, `width × height` values. The Compare tab's and the benchmark report's
/// difference view: a pixel counts as changed when any of its channels changed.
pub fn abs_difference(a: &RgbView, b: &RgbView) -> Result<Vec<u8>, PairedError> {
    check_same_size(a, b)?;
    Ok(a.pixels
        .chunks_exact(3)
        .zip(b.pixels.chunks_exact(3))
        .map(|(p, q)| {
            p.iter()
                .zip(q)
                .map(|(&x, &y)| x.abs_diff(y))
                .max()
                .unwrap_or(0)
        })
        .collect())
}

/// PSNR in dB with peak 255: `10·log10(255² / MSE)` over all pixels and channels.
///
/// Identical images have MSE 0 and PSNR `f64::INFINITY` (skimage returns `inf` too). Writers
/// must handle it: `serde_json` writes a non-finite f64 as `null`, Rust's `Display` and the
/// `csv` crate write `inf`; averages over images should say how many were identical rather
/// than average an infinity.
pub fn psnr(a: &RgbView, b: &RgbView) -> Result<f64, PairedError> {
    check_same_size(a, b)?;
    // Exact integer sum of squared differences (at most 65025 per byte: no overflow in u64
    // for any image that fits in memory), then one division, as `np.mean` in float64 would
    // give up to rounding.
    let sse: u64 = a
        .pixels
        .iter()
        .zip(b.pixels)
        .map(|(&x, &y)| {
            let d = x as i64 - y as i64;
            (d * d) as u64
        })
        .sum();
    let mse = sse as f64 / a.pixels.len() as f64;
    Ok(10.0 * (DATA_RANGE * DATA_RANGE / mse).log10())
}

/// scipy.ndimage's Gaussian weights: `exp(-0.5/σ² · x²)` for x in −r..=r, divided by their
/// (numpy pairwise) sum.
fn gaussian_weights() -> Vec<f64> {
    let r = ssim_radius() as i64;
    let s2 = SSIM_SIGMA * SSIM_SIGMA;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 / s2 * (x * x) as f64).exp())
        .collect();
    // numpy's pairwise sum for 8 ≤ n ≤ 128: eight lanes, combined as a tree, then the rest.
    let sum = if w.len() >= 8 {
        let lanes = ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7]));
        w[8..].iter().fold(lanes, |acc, v| acc + v)
    } else {
        w.iter().fold(0.0, |acc, v| acc + v)
    };
    w.iter().map(|v| v / sum).collect()
}

/// scipy's `mode='reflect'` (half-sample symmetric: `d c b a | a b c d | d c b a`) for an
/// offset of at most one length outside `0..n`.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i - 1
    } else if i >= n {
        2 * n - i - 1
    } else {
        i
    };
    j as usize
}

/// `scipy.ndimage.gaussian_filter(img, 1.5, mode='reflect', truncate=3.5)` on an `h × w`
/// float64 plane: the 1-D filter along axis 0 (rows of the result = columns of pixels), then
/// along axis 1, each as `correlate1d`'s symmetric loop
/// (`x[0]·w[0] + Σ_k (x[−k] + x[k])·w[k]`, k from the outermost tap inwards).
fn gaussian_filter(
    img: &[f64],
    h: usize,
    w: usize,
    weights: &[f64],
    tmp: &mut [f64],
    out: &mut [f64],
) {
    let r = weights.len() / 2;
    let center = weights[r];
    // Axis 0: for each output row y, combine rows y−k and y+k.
    for y in 0..h {
        let dst = &mut tmp[y * w..(y + 1) * w];
        let row = &img[y * w..(y + 1) * w];
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = v * center;
        }
        for k in (1..=r).rev() {
            let wk = weights[r - k];
            let up = &img[reflect(y as isize - k as isize, h) * w..][..w];
            let down = &img[reflect(y as isize + k as isize, h) * w..][..w];
            for ((d, &u), &v) in dst.iter_mut().zip(up).zip(down) {
                *d += (u + v) * wk;
            }
        }
    }
    // Axis 1: within each row, with the row padded by reflection.
    let mut line = vec![0f64; w + 2 * r];
    for y in 0..h {
        let src = &tmp[y * w..(y + 1) * w];
        for (p, slot) in line.iter_mut().enumerate() {
            *slot = src[reflect(p as isize - r as isize, w)];
        }
        let dst = &mut out[y * w..(y + 1) * w];
        for (x, d) in dst.iter_mut().enumerate() {
            let c = x + r;
            let mut acc = line[c] * center;
            for k in (1..=r).rev() {
                acc += (line[c - k] + line[c + k]) * weights[r - k];
            }
            *d = acc;
        }
    }
}

/// Mean SSIM over the three channels, each the mean of the SSIM map with a border of 5 pixels
/// (the window radius) cropped, as skimage computes it (population covariances, C1 =
/// (0.01·255)², C2 = (0.03·255)²). Both sides must be at least 11 pixels
/// ([`ssim_min_side`]); identical images give exactly 1.
pub fn ssim(a: &RgbView, b: &RgbView) -> Result<f64, PairedError> {
    check_same_size(a, b)?;
    let min = ssim_min_side();
    if a.width < min || a.height < min {
        return Err(PairedError::TooSmallForSsim {
            width: a.width,
            height: a.height,
            min,
        });
    }
    let (w, h) = (a.width as usize, a.height as usize);
    let weights = gaussian_weights();
    let pad = ssim_radius();
    let c1 = (SSIM_K1 * DATA_RANGE).powi(2);
    let c2 = (SSIM_K2 * DATA_RANGE).powi(2);
    let n = w * h;
    let mut x = vec![0f64; n];
    let mut y = vec![0f64; n];
    let mut prod = vec![0f64; n];
    let mut tmp = vec![0f64; n];
    let mut filtered: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0f64; n]);
    let mut total = 0f64;
    for ch in 0..3 {
        for (i, (xi, yi)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
            *xi = a.pixels[i * 3 + ch] as f64;
            *yi = b.pixels[i * 3 + ch] as f64;
        }
        let [ux, uy, uxx, uyy, uxy] = &mut filtered;
        gaussian_filter(&x, h, w, &weights, &mut tmp, ux);
        gaussian_filter(&y, h, w, &weights, &mut tmp, uy);
        for (p, &xi) in prod.iter_mut().zip(&x) {
            *p = xi * xi;
        }
        gaussian_filter(&prod, h, w, &weights, &mut tmp, uxx);
        for (p, &yi) in prod.iter_mut().zip(&y) {
            *p = yi * yi;
        }
        gaussian_filter(&prod, h, w, &weights, &mut tmp, uyy);
        for ((p, &xi), &yi) in prod.iter_mut().zip(&x).zip(&y) {
            *p = xi * yi;
        }
        gaussian_filter(&prod, h, w, &weights, &mut tmp, uxy);
        let mut sum = 0f64;
        for row in pad..h - pad {
            let mut row_sum = 0f64;
            for col in pad..w - pad {
                let i = row * w + col;
                let (mx, my) = (ux[i], uy[i]);
                let vx = uxx[i] - mx * mx;
                let vy = uyy[i] - my * my;
                let vxy = uxy[i] - mx * my;
                let a1 = 2.0 * mx * my + c1;
                let a2 = 2.0 * vxy + c2;
                let b1 = mx * mx + my * my + c1;
                let b2 = vx + vy + c2;
                row_sum += (a1 * a2) / (b1 * b2);
            }
            sum += row_sum;
        }
        total += sum / ((h - 2 * pad) * (w - 2 * pad)) as f64;
    }
    Ok(total / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32, seed: u32) -> Vec<u8> {
        let mut r = crate::rng::NumpyRandomState::new(seed);
        (0..w * h * 3).map(|_| r.next_u32() as u8).collect()
    }

    #[test]
    fn view_checks_its_length() {
        assert_eq!(
            RgbView::new(2, 2, &[0; 11]),
            Err(PairedError::PixelLength {
                width: 2,
                height: 2,
                len: 11
            })
        );
        assert_eq!(
            RgbView::new(0, 5, &[]),
            Err(PairedError::Empty {
                width: 0,
                height: 5
            })
        );
    }

    #[test]
    fn the_difference_map_takes_each_pixels_largest_channel_change() {
        let a = [10u8, 20, 30, 0, 0, 0];
        let b = [12u8, 15, 30, 255, 0, 1];
        let (va, vb) = (
            RgbView::new(2, 1, &a).unwrap(),
            RgbView::new(2, 1, &b).unwrap(),
        );
        assert_eq!(abs_difference(&va, &vb).unwrap(), [5, 255]);
        assert_eq!(abs_difference(&va, &va).unwrap(), [0, 0]);
        let c = RgbView::new(1, 2, &b).unwrap();
        assert!(abs_difference(&va, &c).is_err());
        let lut = crate::report::colormap::difference_rgb(&[0, 5, 255], 10.0);
        assert_eq!(&lut[..3], &crate::report::colormap::viridis(0.0));
        assert_eq!(&lut[3..6], &crate::report::colormap::viridis(50.0 / 255.0));
        assert_eq!(&lut[6..], &crate::report::colormap::viridis(1.0));
    }

    #[test]
    fn identical_images_give_infinite_psnr_and_ssim_one() {
        let p = noise(16, 12, 1);
        let a = RgbView::new(16, 12, &p).unwrap();
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        let s = ssim(&a, &a).unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn psnr_of_a_constant_offset() {
        // Every byte off by 5: MSE 25, PSNR = 10·log10(65025/25).
        let p: Vec<u8> = (0..300).map(|i| (i % 200) as u8).collect();
        let q: Vec<u8> = p.iter().map(|v| v + 5).collect();
        let a = RgbView::new(10, 10, &p).unwrap();
        let b = RgbView::new(10, 10, &q).unwrap();
        let want = 10.0 * (65025.0f64 / 25.0).log10();
        assert!((psnr(&a, &b).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn gaussian_weights_are_normalised_and_symmetric() {
        let w = gaussian_weights();
        assert_eq!(w.len(), 11);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        for k in 0..5 {
            assert_eq!(w[k], w[10 - k]);
        }
    }

    #[test]
    fn filter_keeps_a_constant_plane() {
        let (h, w) = (13, 17);
        let img = vec![42.0; h * w];
        let mut tmp = vec![0.0; h * w];
        let mut out = vec![0.0; h * w];
        gaussian_filter(&img, h, w, &gaussian_weights(), &mut tmp, &mut out);
        assert!(out.iter().all(|v| (v - 42.0).abs() < 1e-12));
    }

    #[test]
    fn size_errors_name_both_sizes() {
        let p = noise(12, 12, 1);
        let q = noise(12, 11, 1);
        let a = RgbView::new(12, 12, &p[..12 * 12 * 3]).unwrap();
        let b = RgbView::new(12, 11, &q).unwrap();
        let e = ssim(&a, &b).unwrap_err();
        assert_eq!(e.to_string(), "the images differ in size: 12×12 and 12×11");
        assert!(psnr(&a, &b).is_err());
        let small = noise(10, 20, 2);
        let s = RgbView::new(10, 20, &small).unwrap();
        assert_eq!(
            ssim(&s, &s),
            Err(PairedError::TooSmallForSsim {
                width: 10,
                height: 20,
                min: 11
            })
        );
    }
}

//! Flow-matching Euler sampling with classifier-free guidance, as DiffusionKit schedules it:
//! `sigma(t) = shift·(t/1000) / (1 + (shift−1)·t/1000)` with shift 3, timesteps
//! `linspace(1000·sigma_max, 1000·sigma_min, N)`, sigmas of those plus a final 0, model timestep
//! `1000·sigma`, `denoised = x − out·sigma`, CFG on the denoised batch, Euler in float32.
//! Every value is computed with the same MLX operations so that the schedule matches bit for bit.

use mlx_rs::{Array, Dtype};

use super::nn::{MlxResult, scalar};
use crate::rng::NumpyRandomState;

/// SD3's schedule shift.
pub const SHIFT: f32 = 3.0;

fn sigma_of(t: &Array) -> MlxResult<Array> {
    shift_sigmas(&t.divide(scalar(1000.0))?, SHIFT)
}

/// Noise levels `s` in [0, 1] shifted as SD3 shifts its schedule: `k·s / (1 + (k − 1)·s)`
/// (k = 1 leaves them; k > 1 moves them towards 1). The sampler's schedule with k = [`SHIFT`],
/// and the demo trainer's noise levels.
pub fn shift_sigmas(s: &Array, k: f32) -> MlxResult<Array> {
    scalar(k)
        .multiply(s)?
        .divide(scalar(1.0).add(scalar(k - 1.0).multiply(s)?)?)
}

/// The `num_steps + 1` sigmas (the last one 0), float32.
pub fn sigmas(num_steps: usize) -> MlxResult<Array> {
    let table = sigma_of(&mlx_rs::ops::arange::<i32, i32>(1, 1001, 1)?)?;
    table.eval()?;
    let values = table.as_slice::<f32>();
    let (sigma_min, sigma_max) = (values[0], values[values.len() - 1]);
    let start = Array::from_f32(sigma_max)
        .multiply(scalar(1000.0))?
        .item_exact::<f32>();
    let end = Array::from_f32(sigma_min)
        .multiply(scalar(1000.0))?
        .item_exact::<f32>();
    let ts = mlx_rs::ops::linspace::<f64, f32>(
        start as f64,
        end as f64,
        mlx_rs::ops::LinspaceOptions {
            count: num_steps as i32,
            endpoint: true,
        },
    )?;
    let s = sigma_of(&ts)?;
    mlx_rs::ops::concatenate(&[s, Array::from_slice(&[0.0f32], &[1])], 0)
}

/// Initial noise as DiffusionKit draws it: `np.random.seed(seed); np.random.randn(1, C, h, w)`
/// (NCHW, float64, rounded to float32) transposed to NHWC `(1, h, w, C)`.
pub fn initial_noise(
    seed: u32,
    latent_h: usize,
    latent_w: usize,
    channels: usize,
) -> MlxResult<Array> {
    let values: Vec<f32> = NumpyRandomState::new(seed)
        .randn(channels * latent_h * latent_w)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Array::from_slice(
        &values,
        &[1, channels as i32, latent_h as i32, latent_w as i32],
    )
    .transpose_axes(&[0, 2, 3, 1])
}

/// `sigma·noise + (1 − sigma)·x_T` with DiffusionKit's empty latent `x_T = 0.0609`.
pub fn noise_scaling(sigma0: &Array, noise: &Array) -> MlxResult<Array> {
    let shape = noise.shape().to_vec();
    let empty = mlx_rs::ops::ones::<f32>(&shape)?.multiply(scalar(0.0609))?;
    sigma0
        .multiply(noise)?
        .add(scalar(1.0).subtract(sigma0)?.multiply(&empty)?)
}

/// Model timesteps `1000·sigma` in the activation dtype.
pub fn timesteps(sigmas: &Array, dtype: Dtype) -> MlxResult<Array> {
    sigmas.multiply(scalar(1000.0))?.as_dtype(dtype)
}

/// `denoised = x − out·sigma`, split into the (prompt, negative) halves and guided:
/// `neg + cfg·(pos − neg)`.
pub fn guided_denoised(x_batch: &Array, out: &Array, sigma: &Array, cfg: f32) -> MlxResult<Array> {
    let denoised = x_batch.subtract(out.multiply(sigma.reshape(&[1, 1, 1])?)?)?;
    let halves = denoised.split_equal(2, 0)?;
    halves[1].add(scalar(cfg).multiply(halves[0].subtract(&halves[1])?)?)
}

/// One Euler step: `x + (x − denoised)/sigma_i · (sigma_{i+1} − sigma_i)`.
pub fn euler_step(
    x: &Array,
    denoised: &Array,
    sigma: &Array,
    sigma_next: &Array,
) -> MlxResult<Array> {
    let d = x.subtract(denoised)?.divide(sigma)?;
    x.add(d.multiply(sigma_next.subtract(sigma)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_reference_values() {
        let s = sigmas(50).unwrap();
        s.eval().unwrap();
        let v = s.as_slice::<f32>();
        assert_eq!(v.len(), 51);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[50], 0.0);
        assert!(
            (v[49] - 0.008_928_6).abs() < 1e-6,
            "last non-zero sigma {}",
            v[49]
        );
        assert!(v.windows(2).all(|w| w[1] < w[0]));
        // sigma_min = sigma(1) = 0.0029940…
        let table = sigma_of(&Array::from_f32(1.0)).unwrap().item_exact::<f32>();
        assert!((table - 0.002_994_0).abs() < 1e-7);
    }

    #[test]
    fn shifting_moves_noise_levels_towards_one_and_a_shift_of_one_keeps_them() {
        let s = Array::from_slice(&[0.0f32, 0.1, 0.5, 0.9, 1.0], &[5]);
        let same = shift_sigmas(&s, 1.0).unwrap();
        same.eval().unwrap();
        assert_eq!(same.as_slice::<f32>(), s.as_slice::<f32>());
        // SD3's shift 3: 0.1 → 0.25, 0.5 → 0.75, 0.9 → 27/28, the ends kept.
        let shifted = shift_sigmas(&s, SHIFT).unwrap();
        shifted.eval().unwrap();
        let want = [0.0f32, 0.25, 0.75, 27.0 / 28.0, 1.0];
        for (got, want) in shifted.as_slice::<f32>().iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}

//! Image-quality metrics: FID, IS and KID exactly as torch-fidelity 0.4.0 computes them
//! (Inception-v3 features on MLX), and paired PSNR / SSIM / LPIPS of benchmark images against
//! their reference twins.
//!
//! `images`: torch-fidelity's folder listing, decoding and TF1-compatible resize. `inception`:
//! the `inception-v3-compat` graph on MLX (`inception_cpu`: its layers as x86 CPU kernels,
//! where MLX's CPU backend is scalar and single-threaded). `pth`: a `.pth` reader that never
//! executes pickle code. `weights`: where the Inception weights come from (fetch, convert, cache). `fidelity`:
//! FID, IS, KID from features. `paired`: PSNR, SSIM (and LPIPS) per image pair. `lpips`: the LPIPS
//! network (AlexNet, v0.1 heads) on MLX.

pub mod compute;
pub mod fidelity;
pub mod images;
pub mod inception;
pub mod inception_cpu;
pub mod lpips;
pub mod paired;
pub mod pth;
pub mod weights;

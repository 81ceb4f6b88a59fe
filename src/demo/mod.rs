//! The built-in demo model: its world — procedurally drawn, captioned pictures of flat shapes
//! (`shapes`, pure Rust), the data it learns from and is evaluated on —, the pixel judge
//! (`judge`, pure Rust) that says whether a generated picture shows what its prompt asks for,
//! and its training with MLX (`train`: parameters, gradients, Adam, the two objectives; `job`:
//! `sd3lab model train-demo`).

pub mod job;
pub mod judge;
pub mod shapes;
pub mod train;

pub use judge::{IOU_PASS, Score, Verdict, judge};
pub use shapes::{Colour, Layout, Place, Placement, Scene, Shape, Size, Split};

/// The picture side the demo model was trained at, in pixels (its natural size).
pub const DEMO_SIDE: usize = 64;
/// Denoising steps for the demo model's pictures (the evaluation setting).
pub const DEMO_STEPS: usize = 28;
/// Classifier-free guidance for the demo model's pictures.
pub const DEMO_CFG: f32 = 4.0;
/// A caption to start with.
pub const DEMO_PROMPT: &str = "a large red circle in the centre on a blue background";

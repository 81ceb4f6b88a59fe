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

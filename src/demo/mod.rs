//! The built-in demo model's world: procedurally drawn, captioned pictures of flat shapes
//! (`shapes`), the data the demo model learns from and is evaluated on, and the pixel judge
//! (`judge`) that says whether a generated picture shows what its prompt asks for.

pub mod job;
pub mod judge;
pub mod shapes;
pub mod train;

pub use judge::{IOU_PASS, Score, Verdict, judge};
pub use shapes::{Colour, Layout, Place, Placement, Scene, Shape, Size, Split};

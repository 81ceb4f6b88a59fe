//! Past one process: a job's items split across ranks ([`shard`]), MLX's own distributed layer
//! (the ring backend) for the coordination between ranks ([`group`]), and `sd3lab launch`
//! ([`launch`]), which starts the ranks locally or over ssh as `mlx.launch` does.
//!
//! A rank computes each of its items from the item alone and commits it to its own shard
//! folder before any collective, so the merged result is the same for any number of ranks and
//! a rerun redoes only what is missing. Collectives carry only small values (progress counts,
//! the per-item results); large files stay where the rank wrote them.

pub mod group;
pub mod launch;
pub mod shard;

pub use group::{Collective, DistError, RingGroup};
pub use shard::{MAX_RANKS, Shard, ShardParseError, balance_by_cost};

/// How a job is split: which part this process runs, and the group it coordinates with (none
/// for a `--shard r/n` run, whose parts are merged afterwards by `sd3lab merge`).
#[derive(Clone, Copy, Default)]
pub struct Distribution<'a> {
    pub shard: Shard,
    pub group: Option<&'a dyn Collective>,
}

impl<'a> Distribution<'a> {
    /// The whole job in this process.
    pub fn whole() -> Self {
        Self::default()
    }

    /// Rank `group.rank()` of the group.
    pub fn of_group(group: &'a dyn Collective) -> Self {
        Self {
            shard: Shard {
                rank: group.rank(),
                size: group.size(),
            },
            group: Some(group),
        }
    }
}

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

use serde::Serialize;
use serde::de::DeserializeOwned;
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

    /// Whether this process writes the job's merged files: a whole run, or rank 0 of a group
    /// (a `--shard` part leaves them to `sd3lab merge` or the next whole run).
    pub fn writes_merged(&self) -> bool {
        !self.shard.is_part() || self.group.is_some_and(|g| g.rank() == 0)
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

/// Every rank's `value`, through [`Collective::gather`] as JSON: decoded (as `T`) on rank 0,
/// by rank; `None` on the other ranks.
pub fn gather_json<S: Serialize + ?Sized, T: DeserializeOwned>(
    group: &dyn Collective,
    what: &str,
    value: &S,
) -> Result<Option<Vec<T>>, DistError> {
    let local = |message: String| DistError::Local {
        rank: group.rank(),
        size: group.size(),
        what: what.to_owned(),
        message,
    };
    let payload = serde_json::to_vec(value).map_err(|e| local(e.to_string()))?;
    let all = group.gather(what, &payload)?;
    if group.rank() != 0 {
        return Ok(None);
    }
    all.iter()
        .enumerate()
        .map(|(rank, bytes)| {
            serde_json::from_slice(bytes).map_err(|e| DistError::BadPayload {
                rank,
                what: what.to_owned(),
                problem: e.to_string(),
            })
        })
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
}

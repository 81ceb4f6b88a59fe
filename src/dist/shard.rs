//! Which items a rank takes: `r/n` shards, round-robin for items of equal cost (images) and
//! longest-processing-time-first for items whose cost differs (layers), so that ranks finish
//! together. Both depend only on the item list and `n`: every rank computes the same split.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most ranks a job may be split into.
pub const MAX_RANKS: usize = 1024;

/// Rank `rank` of `size` (`0/1`: the whole job in one process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self::WHOLE
    }
}

/// A `--shard` value that is not `r/n` with `0 ≤ r < n ≤ MAX_RANKS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {0:?}: expected RANK/RANKS with 0 ≤ RANK < RANKS ≤ {MAX_RANKS}, e.g. 0/2")]
pub struct ShardParseError(pub String);

impl Shard {
    /// The whole job.
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };

    /// `rank` of `size`, checked.
    pub fn new(rank: usize, size: usize) -> Result<Self, ShardParseError> {
        if size == 0 || size > MAX_RANKS || rank >= size {
            return Err(ShardParseError(format!("{rank}/{size}")));
        }
        Ok(Self { rank, size })
    }

    /// Whether this is one part of a split job.
    pub fn is_part(&self) -> bool {
        self.size > 1
    }

    /// The folder a part's own results live in, inside the job's output folder.
    pub fn folder_name(&self) -> String {
        format!("shard-{}-of-{}", self.rank, self.size)
    }

    /// Parses a [`Shard::folder_name`].
    pub fn from_folder_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("shard-")?;
        let (rank, size) = rest.split_once("-of-")?;
        Self::new(rank.parse().ok()?, size.parse().ok()?).ok()
    }

    /// Round-robin: item `i` belongs to rank `i mod size`.
    pub fn takes(&self, item: usize) -> bool {
        item % self.size == self.rank
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.rank, self.size)
    }
}

impl std::str::FromStr for Shard {
    type Err = ShardParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ShardParseError(s.to_owned());
        let (r, n) = s.split_once('/').ok_or_else(bad)?;
        let rank = r.trim().parse().map_err(|_| bad())?;
        let size = n.trim().parse().map_err(|_| bad())?;
        Self::new(rank, size).map_err(|_| bad())
    }
}

/// Why the parts of a split run in a folder cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error("{dir} holds no shard folders (shard-R-of-N) with a {file}")]
    NoParts { dir: PathBuf, file: String },
    #[error(
        "{dir} holds parts of runs split {counts} ways: keep one run's shard folders (remove the others)"
    )]
    MixedCounts { dir: PathBuf, counts: String },
    #[error(
        "{dir}: parts {missing} of {size} are missing (run them with --shard R/{size}, or copy their shard folders here from the machines that ran them, then merge)"
    )]
    Missing {
        dir: PathBuf,
        missing: String,
        size: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The `shard-R-of-N` folders in `dir`, of any split, by number of ranks then rank.
pub fn part_folders(dir: &Path) -> std::io::Result<Vec<(Shard, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        // An entry that cannot be read is not a part; it hides no others.
        let Ok(entry) = entry else { continue };
        if let Some(shard) = entry.file_name().to_str().and_then(Shard::from_folder_name)
            && entry.path().is_dir()
        {
            found.push((shard, entry.path()));
        }
    }
    found.sort_by_key(|(s, _)| (s.size, s.rank));
    Ok(found)
}

/// The `file` of every part of the one split run in `dir` (its `shard-R-of-N` folders), by
/// rank: all N of them, or why not.
pub fn find_parts(dir: &Path, file: &str) -> Result<Vec<PathBuf>, PartsError> {
    let found: Vec<(Shard, PathBuf)> = part_folders(dir)
        .map_err(|source| PartsError::Io {
            path: dir.to_owned(),
            source,
        })?
        .into_iter()
        .map(|(shard, folder)| (shard, folder.join(file)))
        .filter(|(_, path)| path.is_file())
        .collect();
    let Some(size) = found.first().map(|(s, _)| s.size) else {
        return Err(PartsError::NoParts {
            dir: dir.to_owned(),
            file: file.to_owned(),
        });
    };
    let mut counts: Vec<usize> = found.iter().map(|(s, _)| s.size).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.len() > 1 {
        let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
        return Err(PartsError::MixedCounts {
            dir: dir.to_owned(),
            counts: counts.join(" and "),
        });
    }
    let missing: Vec<String> = (0..size)
        .filter(|r| !found.iter().any(|(s, _)| s.rank == *r))
        .map(|r| r.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(PartsError::Missing {
            dir: dir.to_owned(),
            missing: missing.join(", "),
            size,
        });
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Refuses while any part of a split run in `dir` (a `shard-R-of-N` folder) is being written:
/// a whole run or a merge must not remove its temporary files or redo its items.
pub fn check_parts_idle(dir: &Path) -> Result<(), crate::fsutil::LockError> {
    for (_, folder) in part_folders(dir).unwrap_or_default() {
        crate::fsutil::FolderLock::check(&folder)?;
    }
    Ok(())
}

/// The rank each item goes to, balancing the summed cost: items in decreasing cost (ties by
/// position) each go to the rank with the least cost so far (ties to the lowest rank). Costs
/// must be finite and non-negative (others count as zero).
pub fn balance_by_cost(costs: &[f64], ranks: usize) -> Vec<usize> {
    let ranks = ranks.max(1);
    let cost = |i: usize| {
        let c = costs[i];
        if c.is_finite() && c > 0.0 { c } else { 0.0 }
    };
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| cost(b).total_cmp(&cost(a)).then(a.cmp(&b)));
    let mut load = vec![0.0f64; ranks];
    let mut owner = vec![0; costs.len()];
    for i in order {
        let (rank, _) = load
            .iter()
            .enumerate()
            .min_by(|(ra, a), (rb, b)| a.total_cmp(b).then(ra.cmp(rb)))
            .unwrap_or((0, &0.0));
        owner[i] = rank;
        load[rank] += cost(i);
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { rank: 1, size: 3 }));
        assert_eq!(" 0 / 2 ".parse::<Shard>(), Ok(Shard { rank: 0, size: 2 }));
        for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "0/2000", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.to_string().contains("RANK/RANKS"), "{bad}: {e}");
        }
        let s = Shard::new(3, 4).unwrap();
        assert_eq!(s.folder_name(), "shard-3-of-4");
        assert_eq!(Shard::from_folder_name("shard-3-of-4"), Some(s));
        assert_eq!(Shard::from_folder_name("shard-4-of-4"), None);
        assert_eq!(Shard::from_folder_name("shard-x-of-4"), None);
        assert!(!Shard::WHOLE.is_part() && s.is_part());
    }

    #[test]
    fn round_robin_covers_every_item_once() {
        for n in 1..5 {
            for i in 0..20 {
                let owners: Vec<usize> = (0..n)
                    .filter(|&r| Shard::new(r, n).unwrap().takes(i))
                    .collect();
                assert_eq!(owners, vec![i % n]);
            }
        }
    }

    #[test]
    fn cost_balance_is_deterministic_and_even() {
        // Costs like the model scope's: many layers, cost falling with depth.
        let costs: Vec<f64> = (0..340).map(|i| 25.0 - (i / 14) as f64).collect();
        let total: f64 = costs.iter().sum();
        for n in [2, 3, 4, 7] {
            let owner = balance_by_cost(&costs, n);
            assert_eq!(owner, balance_by_cost(&costs, n));
            let mut load = vec![0.0; n];
            for (i, &r) in owner.iter().enumerate() {
                assert!(r < n);
                load[r] += costs[i];
            }
            let max = load.iter().cloned().fold(0.0, f64::max);
            // LPT: within the largest item of the ideal share.
            assert!(max <= total / n as f64 + 25.0, "{n}: {load:?}");
        }
        // One rank takes everything; more ranks than items leaves some idle.
        assert_eq!(balance_by_cost(&[1.0, 2.0], 1), vec![0, 0]);
        assert_eq!(balance_by_cost(&[1.0, 2.0], 3), vec![1, 0]);
        // Non-finite costs count as zero instead of breaking the order.
        assert_eq!(balance_by_cost(&[f64::NAN, 5.0, 1.0], 2), vec![1, 0, 1]);
    }
}

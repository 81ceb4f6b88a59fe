//! One calibration sample file: which member holds which array (named or positional keys),
//! and the metadata read from it without loading the large arrays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::npy::DType;
use super::npz::{NpzError, NpzReader};

/// The six arrays of a calibration record, in the seed's positional order (`arr_0`..`arr_5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKey {
    X,
    Timestep,
    Sigma,
    Conditioning,
    PooledConditioning,
    StepIndex,
}

impl SampleKey {
    pub const ALL: [SampleKey; 6] = [
        Self::X,
        Self::Timestep,
        Self::Sigma,
        Self::Conditioning,
        Self::PooledConditioning,
        Self::StepIndex,
    ];

    /// The canonical member name (what SD3 Lab writes).
    pub fn name(self) -> &'static str {
        match self {
            Self::X => "x",
            Self::Timestep => "timestep",
            Self::Sigma => "sigma",
            Self::Conditioning => "conditioning",
            Self::PooledConditioning => "pooled_conditioning",
            Self::StepIndex => "step_index",
        }
    }

    /// Member names accepted for this array, in order of preference.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::X => &["x", "latent", "arr_0"],
            Self::Timestep => &["timestep", "arr_1"],
            Self::Sigma => &["sigma", "arr_2"],
            Self::Conditioning => &["conditioning", "arr_3"],
            Self::PooledConditioning => &["pooled_conditioning", "arr_4"],
            Self::StepIndex => &["step_index", "arr_5"],
        }
    }

    /// `timestep`, `sigma` and `step_index`: read whole while indexing.
    pub fn is_small(self) -> bool {
        matches!(self, Self::Timestep | Self::Sigma | Self::StepIndex)
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for SampleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Step bucket: the first, middle or last third of the denoising steps, or all of them.
///
/// Rule (used everywhere): `bucket = floor(3 · step_index / num_steps)`, 0 = early, 1 = mid,
/// 2 = late. For 50 steps: early 0–16, mid 17–33, late 34–49. A sample's own bucket is never
/// `All`; `All` is the group of every step (results over all samples, a filter that keeps
/// everything). Written as `early`, `mid`, `late`, `all` in every file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Early,
    Mid,
    Late,
    All,
}

impl Bucket {
    /// The three step buckets a sample can be in.
    pub const STEPS: [Bucket; 3] = [Self::Early, Self::Mid, Self::Late];
    /// Every results group, in report order (the steps, then `all`).
    pub const GROUPS: [Bucket; 4] = [Self::Early, Self::Mid, Self::Late, Self::All];

    /// The bucket of `step_index` among `num_steps` steps (`step_index < num_steps`).
    pub fn of(step_index: usize, num_steps: usize) -> Bucket {
        match (3 * step_index) / num_steps.max(1) {
            0 => Self::Early,
            1 => Self::Mid,
            _ => Self::Late,
        }
    }

    /// Whether a sample in step bucket `step` belongs to this group.
    pub fn contains(self, step: Bucket) -> bool {
        self == Self::All || self == step
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Mid => "mid",
            Self::Late => "late",
            Self::All => "all",
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that width and alignment apply (table columns).
        f.pad(self.name())
    }
}

/// A bucket name that is none of early, mid, late or all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bucket '{0}' (expected early, mid, late or all)")]
pub struct UnknownBucket(pub String);

impl std::str::FromStr for Bucket {
    type Err = UnknownBucket;
    fn from_str(s: &str) -> Result<Self, UnknownBucket> {
        Self::GROUPS
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownBucket(s.to_owned()))
    }
}

/// Shape and dtype of one array of a sample, and the member it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub member: String,
    pub shape: Vec<usize>,
    /// The dtype as stored in the file.
    pub dtype: DType,
}

/// What a sample file holds, read from its headers and its three small arrays.
#[derive(Debug, Clone, Serialize)]
pub struct SampleFileInfo {
    pub path: PathBuf,
    pub file_size: u64,
    pub step_index: i64,
    pub timestep: f64,
    pub sigma: f64,
    pub tensors: BTreeMap<SampleKey, TensorInfo>,
}

/// Why a sample file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Npz(#[from] NpzError),
    #[error("{path}: missing array '{key}' (looked for {looked}; the file has: {available})")]
    MissingKey {
        path: PathBuf,
        key: SampleKey,
        looked: String,
        available: String,
    },
    #[error("{path}: '{key}' {reason}")]
    BadValue {
        path: PathBuf,
        key: SampleKey,
        reason: String,
    },
}

/// Largest `timestep` / `sigma` / `step_index` array accepted (bytes).
pub const SMALL_ARRAY_LIMIT: u64 = 64 * 1024;

/// Finds which member holds each array.
pub fn resolve_members(
    names: &[String],
    path: &Path,
) -> Result<BTreeMap<SampleKey, String>, SampleError> {
    let mut members = BTreeMap::new();
    for key in SampleKey::ALL {
        let found = key
            .aliases()
            .iter()
            .find(|alias| names.iter().any(|n| n == *alias));
        match found {
            Some(alias) => {
                members.insert(key, (*alias).to_owned());
            }
            None => {
                return Err(SampleError::MissingKey {
                    path: path.to_owned(),
                    key,
                    looked: key.aliases().join(", "),
                    available: names.join(", "),
                });
            }
        }
    }
    Ok(members)
}

/// Reads a sample file's metadata: every member's header, and the values of `step_index`,
/// `timestep` and `sigma` (the large arrays are not read).
pub fn read_sample_info(path: &Path, max_array_bytes: u64) -> Result<SampleFileInfo, SampleError> {
    let mut npz = NpzReader::open(path)?.with_max_array_bytes(max_array_bytes);
    let file_size = npz.file_len();
    let members = resolve_members(&npz.names(), path)?;
    let bad = |key, reason: String| SampleError::BadValue {
        path: path.to_owned(),
        key,
        reason,
    };
    let mut tensors = BTreeMap::new();
    let mut small_values = BTreeMap::new();
    for (key, member) in &members {
        let (shape, dtype) = if key.is_small() {
            // A scalar or a short 1-D array whose first element is the value: read it whole
            // (one pass over the member), refusing anything large.
            let a = npz.read_limited(member, SMALL_ARRAY_LIMIT)?;
            if a.shape.len() > 1 || a.data.is_empty() {
                return Err(bad(
                    *key,
                    format!(
                        "should be a scalar or a short 1-D array, has shape {:?}",
                        a.shape
                    ),
                ));
            }
            let facts = (a.shape.clone(), a.dtype());
            small_values.insert(*key, a);
            facts
        } else {
            let info = npz.info(member)?;
            (info.header.shape, info.header.dtype)
        };
        tensors.insert(
            *key,
            TensorInfo {
                member: member.clone(),
                shape,
                dtype,
            },
        );
    }
    let small = |key: SampleKey| -> Result<super::npy::NpyArray, SampleError> {
        small_values
            .get(&key)
            .cloned()
            .ok_or_else(|| bad(key, "was not read".into()))
    };
    let step = small(SampleKey::StepIndex)?;
    let step_dtype = step.dtype();
    if !matches!(
        step_dtype,
        DType::Int8
            | DType::Int16
            | DType::Int32
            | DType::Int64
            | DType::Uint8
            | DType::Uint16
            | DType::Uint32
            | DType::Uint64
    ) {
        return Err(bad(
            SampleKey::StepIndex,
            format!("should be an integer, is {step_dtype}"),
        ));
    }
    let step_index = step.first_f64().unwrap_or(-1.0) as i64;
    let timestep = small(SampleKey::Timestep)?.first_f64().unwrap_or(f64::NAN);
    let sigma = small(SampleKey::Sigma)?.first_f64().unwrap_or(f64::NAN);
    if !timestep.is_finite() {
        return Err(bad(
            SampleKey::Timestep,
            format!("is not a finite number ({timestep})"),
        ));
    }
    if !sigma.is_finite() {
        return Err(bad(
            SampleKey::Sigma,
            format!("is not a finite number ({sigma})"),
        ));
    }
    Ok(SampleFileInfo {
        path: path.to_owned(),
        file_size,
        step_index,
        timestep,
        sigma,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_steps_in_thirds() {
        let count = |n: usize, b: Bucket| (0..n).filter(|&s| Bucket::of(s, n) == b).count();
        assert_eq!(
            (
                count(50, Bucket::Early),
                count(50, Bucket::Mid),
                count(50, Bucket::Late)
            ),
            (17, 17, 16)
        );
        assert_eq!(Bucket::of(16, 50), Bucket::Early);
        assert_eq!(Bucket::of(17, 50), Bucket::Mid);
        assert_eq!(Bucket::of(34, 50), Bucket::Late);
        assert_eq!(
            (
                count(3, Bucket::Early),
                count(3, Bucket::Mid),
                count(3, Bucket::Late)
            ),
            (1, 1, 1)
        );
        assert_eq!(Bucket::of(0, 1), Bucket::Early);
        assert_eq!("MID".parse::<Bucket>(), Ok(Bucket::Mid));
        assert!("middle".parse::<Bucket>().is_err());
        assert_eq!("all".parse::<Bucket>(), Ok(Bucket::All));
        assert!(Bucket::All.contains(Bucket::Late) && !Bucket::Mid.contains(Bucket::Late));
        assert_eq!(serde_json::to_string(&Bucket::All).unwrap(), "\"all\"");
    }

    #[test]
    fn named_keys_win_over_positional_ones() {
        let names: Vec<String> = [
            "arr_0",
            "latent",
            "arr_1",
            "arr_2",
            "conditioning",
            "arr_4",
            "arr_5",
            "arr_3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = resolve_members(&names, Path::new("f.npz")).unwrap();
        assert_eq!(m[&SampleKey::X], "latent");
        assert_eq!(m[&SampleKey::Conditioning], "conditioning");
        assert_eq!(m[&SampleKey::StepIndex], "arr_5");
        let err = resolve_members(&names[..3], Path::new("f.npz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.npz") && err.contains("missing array 'sigma'"),
            "{err}"
        );
    }
}

//! MLX's distributed layer (the ring backend over TCP) as the commands use it: a [`RingGroup`]
//! made from the environment `mlx.launch` (or `sd3lab launch`) sets, collectives on plain Rust
//! values, and a watchdog that ends a collective stalled past a timeout.
//!
//! MLX's ring backend waits forever for a peer that never answers (a crashed peer is noticed:
//! the survivors get "connection to a peer was lost" at `eval`), so every collective here is
//! armed with [`Watchdog`]: past the timeout the process prints which collective stalled and
//! exits with [`EXIT_STALLED`]. Results are committed per item before any collective, so a
//! rerun with the same command resumes.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlx_rs::{Array, Stream};

/// Exit status of a rank whose collective stalled past the timeout.
pub const EXIT_STALLED: i32 = 3;

/// Exit status of a rank whose collective failed because a peer was lost (the cause is
/// elsewhere: `sd3lab launch` reports the rank that failed with another status first).
pub const EXIT_PEER_LOST: i32 = 4;

/// Environment variable: seconds a collective may wait for the other ranks (default
/// [`DEFAULT_TIMEOUT_S`]). It bounds how long ranks may drift apart between two collectives,
/// so it must exceed the slowest rank's lead of work between them.
pub const TIMEOUT_ENV: &str = "SD3LAB_COLLECTIVE_TIMEOUT";

/// Default of [`TIMEOUT_ENV`]: 30 minutes.
pub const DEFAULT_TIMEOUT_S: u64 = 1800;

/// The collectives a sharded job uses; [`RingGroup`] implements them over MLX.
pub trait Collective {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum of every rank's `values` (same length on every rank).
    fn sum(&self, what: &str, values: &[u32]) -> Result<Vec<u64>, DistError>;
    /// Every rank's bytes, by rank (lengths may differ: every rank's length is gathered first,
    /// then the bytes padded to the longest).
    fn gather(&self, what: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self, what: &str) -> Result<(), DistError> {
        self.sum(what, &[1]).map(|_| ())
    }
    /// The sum over the ranks of one count each (a job's progress).
    fn count(&self, what: &str, n: usize) -> Result<usize, DistError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(self.sum(what, &[n])?.first().copied().unwrap_or(0) as usize)
    }
}

/// What goes wrong in MLX's distributed layer or around it.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(
        "{0} is set but {1} is not: start ranks with `mlx.launch --backend ring` or `sd3lab launch`, which set both"
    )]
    HalfEnvironment(&'static str, &'static str),
    #[error("MLX_RANK={0:?} is not a rank number")]
    BadRank(String),
    #[error("the ring hostfile {path} (MLX_HOSTFILE): {problem}")]
    BadHostfile { path: PathBuf, problem: String },
    #[error("MLX_RANK={rank} but the hostfile {path} lists {hosts} ranks")]
    RankOutsideHostfile {
        rank: usize,
        hosts: usize,
        path: PathBuf,
    },
    #[error("{name}={value:?} is not a number of seconds ≥ 1")]
    BadTimeout { name: &'static str, value: String },
    #[error("this MLX build has no ring backend")]
    NoRingBackend,
    #[error("joining the ring as rank {rank} of {size} failed: {message}")]
    Init {
        rank: usize,
        size: usize,
        message: String,
    },
    #[error(
        "MLX formed a group of {got_size} with this process as rank {got_rank}, but the hostfile says rank {rank} of {size}"
    )]
    GroupMismatch {
        rank: usize,
        size: usize,
        got_rank: usize,
        got_size: usize,
    },
    #[error(
        "rank {rank} of {size}: {what} failed: {message} (another rank failed or was stopped; its log says why; rerun the same command to resume)"
    )]
    Collective {
        rank: usize,
        size: usize,
        what: String,
        message: String,
    },
    /// A collective this rank could not even start (not a peer's failure).
    #[error("rank {rank} of {size}: {what}: {message}")]
    Local {
        rank: usize,
        size: usize,
        what: String,
        message: String,
    },
    #[error("{what}: what rank {rank} sent cannot be read: {problem}")]
    BadPayload {
        rank: usize,
        what: String,
        problem: String,
    },
}

/// The ring group this process belongs to, its watchdog and its timeout. Lives on the thread
/// that runs MLX work (collectives run on MLX's CPU stream of that thread).
pub struct RingGroup {
    raw: mlx_sys::mlx_distributed_group,
    rank: usize,
    size: usize,
    watchdog: Watchdog,
}

/// The ring environment a launcher set: this process's rank and every rank's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEnvironment {
    pub rank: usize,
    pub hostfile: PathBuf,
    /// One list of `ip:port` addresses per rank.
    pub hosts: Vec<Vec<String>>,
    pub timeout: Duration,
}

impl RingEnvironment {
    /// Reads and checks `MLX_RANK`, `MLX_HOSTFILE` and [`TIMEOUT_ENV`]; `None` when this is not
    /// a distributed launch (neither variable set, or a one-rank hostfile, as `mlx.launch -n 1`
    /// writes).
    pub fn from_env() -> Result<Option<Self>, DistError> {
        let rank = std::env::var("MLX_RANK").ok();
        let hostfile = std::env::var_os("MLX_HOSTFILE").filter(|h| !h.is_empty());
        let (rank, hostfile) = match (rank, hostfile) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(DistError::HalfEnvironment("MLX_RANK", "MLX_HOSTFILE")),
            (None, Some(_)) => return Err(DistError::HalfEnvironment("MLX_HOSTFILE", "MLX_RANK")),
            (Some(r), Some(h)) => (r, PathBuf::from(h)),
        };
        let rank: usize = rank.trim().parse().map_err(|_| DistError::BadRank(rank))?;
        let bad = |problem: String| DistError::BadHostfile {
            path: hostfile.clone(),
            problem,
        };
        let text = std::fs::read_to_string(&hostfile).map_err(|e| bad(e.to_string()))?;
        let hosts = parse_ring_hostfile(&text).map_err(bad)?;
        let timeout = timeout_from_env()?;
        if hosts.len() <= 1 {
            return Ok(None);
        }
        if rank >= hosts.len() {
            return Err(DistError::RankOutsideHostfile {
                rank,
                hosts: hosts.len(),
                path: hostfile,
            });
        }
        Ok(Some(Self {
            rank,
            hostfile,
            hosts,
            timeout,
        }))
    }
}

/// [`TIMEOUT_ENV`] or its default.
pub fn timeout_from_env() -> Result<Duration, DistError> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s >= 1 => Ok(Duration::from_secs(s)),
            _ => Err(DistError::BadTimeout {
                name: TIMEOUT_ENV,
                value: v,
            }),
        },
    }
}

/// MLX's ring hostfile: a JSON list with one list of `ip:port` strings per rank (an empty file:
/// one rank).
pub fn parse_ring_hostfile(text: &str) -> Result<Vec<Vec<String>>, String> {
    if text.trim().is_empty() {
        return Ok(vec![Vec::new()]);
    }
    let hosts: Vec<Vec<String>> = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON list of lists of \"ip:port\" strings ({e})"))?;
    for (rank, addresses) in hosts.iter().enumerate() {
        if addresses.is_empty() {
            return Err(format!("rank {rank} has no address"));
        }
        for a in addresses {
            let port = a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
            if port.is_none() {
                return Err(format!("rank {rank}: {a:?} is not ip:port"));
            }
        }
    }
    Ok(hosts)
}

impl RingGroup {
    /// Joins the ring the environment describes (`None`: not a distributed launch). Blocks
    /// until every rank has joined, at most the timeout.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        match RingEnvironment::from_env()? {
            None => Ok(None),
            Some(env) => Self::join(&env).map(Some),
        }
    }

    /// Joins the ring `env` describes, in MLX's strict mode.
    pub fn join(env: &RingEnvironment) -> Result<Self, DistError> {
        let size = env.hosts.len();
        let rank = env.rank;
        // MLX's error handler must be in place before `mlx_distributed_init`: without it a
        // failure there ends the process. Any evaluated array installs mlx-rs's.
        let _ = Array::from_int(0).eval();
        let backend = CString::new("ring").expect("no NUL in a literal");
        // SAFETY: a plain query of the linked library.
        if !unsafe { mlx_sys::mlx_distributed_is_available(backend.as_ptr()) } {
            return Err(DistError::NoRingBackend);
        }
        let watchdog = Watchdog::start(rank, size, env.timeout);
        let raw = {
            let _armed = watchdog.arm("joining the ring (every rank must start)");
            // SAFETY: `group` is a fresh handle the call fills; the backend name outlives it.
            unsafe {
                let mut group = mlx_sys::mlx_distributed_group_new();
                let rc = mlx_sys::mlx_distributed_init(&mut group, true, backend.as_ptr());
                if rc != 0 || group.ctx.is_null() {
                    return Err(DistError::Init {
                        rank,
                        size,
                        message: format!(
                            "MLX refused (check the addresses in {})",
                            env.hostfile.display()
                        ),
                    });
                }
                group
            }
        };
        // SAFETY: `raw` is a valid group.
        let (got_rank, got_size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw) as usize,
                mlx_sys::mlx_distributed_group_size(raw) as usize,
            )
        };
        let group = Self {
            raw,
            rank,
            size,
            watchdog,
        };
        if (got_rank, got_size) != (rank, size) {
            return Err(DistError::GroupMismatch {
                rank,
                size,
                got_rank,
                got_size,
            });
        }
        Ok(group)
    }

    /// Runs one collective (`op` builds it on the CPU stream) and evaluates it under the
    /// watchdog.
    fn run(
        &self,
        what: &str,
        op: impl FnOnce(mlx_sys::mlx_distributed_group, &Stream) -> Result<Array, String>,
    ) -> Result<Array, DistError> {
        // Distributed operations have no GPU implementation: MLX's CPU stream.
        let stream = Stream::cpu();
        let _armed = self.watchdog.arm(what);
        let out = op(self.raw, &stream).map_err(|message| DistError::Local {
            rank: self.rank,
            size: self.size,
            what: what.to_owned(),
            message,
        })?;
        // Evaluating is where the ring talks to the peers: a failure here is theirs.
        out.eval().map_err(|e| DistError::Collective {
            rank: self.rank,
            size: self.size,
            what: what.to_owned(),
            message: e.what().to_owned(),
        })?;
        Ok(out)
    }
}

/// `f` fills a fresh array handle (an mlx-c operation); the array, or the failure.
///
/// # Safety
/// `f` must be an mlx-c call that writes a valid array into its argument when it returns 0.
unsafe fn raw_op(f: impl FnOnce(*mut mlx_sys::mlx_array) -> i32) -> Result<Array, String> {
    // SAFETY: per the function's contract.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        if f(&mut res) != 0 {
            mlx_sys::mlx_array_free(res);
            return Err("MLX refused the operation".into());
        }
        Ok(Array::from_ptr(res))
    }
}

impl Collective for RingGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum(&self, what: &str, values: &[u32]) -> Result<Vec<u64>, DistError> {
        // 64-bit integers: a sum of counts never overflows.
        let x = Array::from_slice(
            &values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
            &[values.len() as i32],
        );
        // SAFETY: `x`, the group and the stream outlive the call, which fills `res`.
        let out = self.run(what, |g, s| unsafe {
            raw_op(|res| mlx_sys::mlx_distributed_all_sum(res, x.as_ptr(), g, s.as_ptr()))
        })?;
        Ok(out
            .as_slice::<i64>()
            .iter()
            .map(|&v| v.max(0) as u64)
            .collect())
    }

    fn gather(&self, what: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        // all_gather needs one shape on every rank: agree on the longest, pad to it.
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let lengths = self
            .all_gather(
                &format!("{what} (lengths)"),
                &Array::from_slice(&[len], &[1]),
            )?
            .as_slice::<i64>()
            .to_vec();
        let max = lengths.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = bytes.to_vec();
        padded.resize(max, 0);
        let out = self.all_gather(what, &Array::from_slice(&padded, &[max as i32]))?;
        let all = out.as_slice::<u8>();
        if all.len() != max * self.size {
            return Err(DistError::Local {
                rank: self.rank,
                size: self.size,
                what: what.to_owned(),
                message: format!("{} bytes gathered, {} expected", all.len(), max * self.size),
            });
        }
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * max..r * max + (n.max(0) as usize).min(max)].to_vec())
            .collect())
    }
}

impl RingGroup {
    /// Every rank's `x` concatenated along the first axis, by rank (same shape on every rank).
    fn all_gather(&self, what: &str, x: &Array) -> Result<Array, DistError> {
        // SAFETY: `x`, the group and the stream outlive the call, which fills `res`.
        self.run(what, |g, s| unsafe {
            raw_op(|res| mlx_sys::mlx_distributed_all_gather(res, x.as_ptr(), g, s.as_ptr()))
        })
    }
}

impl Drop for RingGroup {
    fn drop(&mut self) {
        // SAFETY: the handle was made by `mlx_distributed_init` and is freed once.
        unsafe {
            mlx_sys::mlx_distributed_group_free(self.raw);
        }
    }
}

/// A thread that ends the process when an armed wait outlives the timeout.
pub struct Watchdog {
    tx: crossbeam_channel::Sender<Option<String>>,
}

/// Disarms the watchdog when dropped.
pub struct Armed<'a>(&'a Watchdog);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let _ = self.0.tx.send(None);
    }
}

impl Watchdog {
    /// Starts the thread; `rank`/`size` name this process in the message.
    pub fn start(rank: usize, size: usize, timeout: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Option<String>>();
        std::thread::Builder::new()
            .name("sd3lab-watchdog".into())
            .spawn(move || {
                let mut armed: Option<(String, Instant)> = None;
                loop {
                    let next = match &armed {
                        None => rx.recv().map_err(|_| ()),
                        Some((_, since)) => {
                            let left = timeout.saturating_sub(since.elapsed());
                            match rx.recv_timeout(left) {
                                Ok(m) => Ok(m),
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                    let what = armed.as_ref().map_or("", |(w, _)| w.as_str());
                                    eprintln!(
                                        "error: rank {rank} of {size}: {what} waited {} s for the other ranks (the timeout, {TIMEOUT_ENV}): a rank is stuck or gone; stopping. The items finished so far are kept: rerun the same command to resume.",
                                        timeout.as_secs()
                                    );
                                    std::process::exit(EXIT_STALLED);
                                }
                                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(()),
                            }
                        }
                    };
                    match next {
                        Ok(Some(what)) => armed = Some((what, Instant::now())),
                        Ok(None) => armed = None,
                        Err(()) => return,
                    }
                }
            })
            .expect("spawning a thread");
        Self { tx }
    }

    /// Starts timing `what` until the returned guard is dropped.
    pub fn arm(&self, what: &str) -> Armed<'_> {
        let _ = self.tx.send(Some(what.to_owned()));
        Armed(self)
    }
}

/// Test-only fault switch: with `SD3LAB_TEST_FAULT=exit-after:K` (or `stall-after:K`) and
/// `SD3LAB_TEST_FAULT_RANK=R` (default 1) in the environment, rank R exits with status 9 (or
/// sleeps forever) once it has committed K items. Lets the tests kill or freeze one rank at a
/// known point; nothing else sets these variables.
pub fn test_fault_point(rank: usize, items_done: usize) {
    let Ok(fault) = std::env::var("SD3LAB_TEST_FAULT") else {
        return;
    };
    let target = std::env::var("SD3LAB_TEST_FAULT_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1usize);
    if target != rank {
        return;
    }
    let (kind, k) = fault.split_once(':').unwrap_or((fault.as_str(), "0"));
    if k.parse::<usize>().ok() != Some(items_done) {
        return;
    }
    match kind {
        "exit-after" => {
            eprintln!("test fault: rank {rank} exits after {items_done} items");
            std::process::exit(9);
        }
        "stall-after" => {
            eprintln!("test fault: rank {rank} stalls after {items_done} items");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_hostfile() {
        let h = parse_ring_hostfile(r#"[["127.0.0.1:40100"],["10.0.0.2:5000","10.0.1.2:5001"]]"#)
            .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1][1], "10.0.1.2:5001");
        assert_eq!(parse_ring_hostfile("  \n").unwrap().len(), 1);
        for (bad, says) in [
            ("{}", "JSON list"),
            ("[[]]", "no address"),
            (r#"[["host"]]"#, "ip:port"),
            (r#"[["h:99999"]]"#, "ip:port"),
        ] {
            let e = parse_ring_hostfile(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

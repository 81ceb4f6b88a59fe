//! `sd3lab launch`: starts the ranks of a distributed job as `mlx.launch --backend ring` does
//! (a ring hostfile, `MLX_RANK`/`MLX_HOSTFILE` in each rank's environment; local processes or
//! ssh with the same binary path), keeps each rank's output in its own log file, streams rank
//! 0's (the whole job's progress) and every rank's errors, and stops the other ranks as soon as
//! one fails, so that the launch exits non-zero instead of waiting.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::job::CancelToken;

/// Where the ranks run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// N processes on this machine, over the loopback interface.
    Local(usize),
    /// One rank per entry of an `mlx.launch` hostfile.
    File(Vec<HostEntry>),
}

/// One host of an `mlx.launch` hostfile: how to reach it with ssh and the IPs its rank
/// listens on (the first is used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostEntry {
    pub ssh: String,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// Settings of a launch.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub hosts: Hosts,
    /// The command each rank runs; a first word `sd3lab` means this very binary.
    pub command: Vec<String>,
    /// One `rank-R.log` per rank, and the ring hostfile, go here.
    pub log_dir: PathBuf,
    /// Seconds a collective may wait for the other ranks (see [`super::group::TIMEOUT_ENV`]).
    pub collective_timeout: Option<u64>,
    /// First port of a hostfile launch (one port per rank, counting up).
    pub starting_port: u16,
    /// Extra `NAME=VALUE` environment for every rank.
    pub env: Vec<(String, String)>,
}

/// What a launch reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchEvent {
    Started {
        rank: usize,
        host: String,
        log: PathBuf,
    },
    /// One line of a rank's output (stdout or stderr).
    Line {
        rank: usize,
        line: String,
    },
    Exited {
        rank: usize,
        code: Option<i32>,
    },
    /// A rank failed: the others are being stopped.
    Stopping {
        failed_rank: usize,
    },
}

/// How every rank ended (`None`: killed by a signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOutcome {
    pub codes: Vec<Option<i32>>,
    pub logs: Vec<PathBuf>,
    /// The ranks that failed, in the order their failures were seen.
    pub failure_order: Vec<usize>,
    /// The ranks the launch itself stopped (after another's failure, or on cancel).
    pub stopped: Vec<bool>,
}

impl LaunchOutcome {
    /// The rank whose failure ended the job and its exit status, if any rank failed: the
    /// first seen to fail on its own, rather than because a peer was lost or stalled
    /// ([`super::group::EXIT_PEER_LOST`], [`super::group::EXIT_STALLED`]) or because the
    /// launch stopped it; a rank killed by someone else's signal (the OOM killer) failed on
    /// its own.
    pub fn failed(&self) -> Option<(usize, Option<i32>)> {
        use super::group::{EXIT_PEER_LOST, EXIT_STALLED};
        let own = |r: usize| match self.codes[r] {
            Some(c) => c != 0 && c != EXIT_PEER_LOST && c != EXIT_STALLED,
            None => !self.stopped[r],
        };
        self.failure_order
            .iter()
            .copied()
            .find(|&r| own(r))
            .or_else(|| self.failure_order.first().copied())
            .map(|r| (r, self.codes[r]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "no command to launch: put it after `--`, e.g. `sd3lab launch --local 2 -- sd3lab sensitivity …`"
    )]
    NoCommand,
    #[error("a launch needs 1 to {max} ranks, not {0}", max = super::MAX_RANKS)]
    BadRankCount(usize),
    #[error("hostfile {path}: {problem}")]
    Hostfile { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting rank {rank} ({program}): {source}")]
    Spawn {
        rank: usize,
        program: String,
        source: std::io::Error,
    },
}

/// Reads an `mlx.launch` hostfile: `{"hosts": [{"ssh": …, "ips": [...]}, …]}` or the bare list.
pub fn read_hostfile(path: &Path) -> Result<Vec<HostEntry>, LaunchError> {
    let bad = |problem: String| LaunchError::Hostfile {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum File {
        Object { hosts: Vec<HostEntry> },
        List(Vec<HostEntry>),
    }
    // A list of lists is the ring hostfile a launcher writes, not the one it reads.
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&text)
        && items.iter().any(|i| !i.is_object())
    {
        return Err(bad(
            "expected mlx.launch's format, {\"hosts\": [{\"ssh\": \"mac1\", \"ips\": [\"10.0.0.1\"]}, …]}, not a list of address lists (MLX's ring hostfile, which the launch writes itself)".into(),
        ));
    }
    let hosts = match serde_json::from_str::<File>(&text) {
        Ok(File::Object { hosts }) | Ok(File::List(hosts)) => hosts,
        Err(e) => {
            return Err(bad(format!(
                "expected mlx.launch's format, {{\"hosts\": [{{\"ssh\": \"mac1\", \"ips\": [\"10.0.0.1\"]}}, …]}} ({e})"
            )));
        }
    };
    if hosts.is_empty() || hosts.len() > super::MAX_RANKS {
        return Err(bad(format!("{} hosts listed", hosts.len())));
    }
    for (rank, h) in hosts.iter().enumerate() {
        if h.ips.is_empty() {
            return Err(bad(format!(
                "host {rank} ({}) has no \"ips\": the ring backend needs an IP address per host",
                h.ssh
            )));
        }
    }
    Ok(hosts)
}

/// Free TCP ports on the loopback interface (bound then released: another program could take
/// one in between, which the ring then reports as a failed join).
fn free_local_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Where the ranks of a launch run and listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingLayout {
    /// MLX's ring hostfile: one list of `ip:port` addresses per rank.
    pub ring: Vec<Vec<String>>,
    /// Per rank, the ssh host (`None`: run on this machine).
    pub ssh: Vec<Option<String>>,
}

/// The ring hostfile and how each rank is started.
pub fn ring_layout(hosts: &Hosts, starting_port: u16) -> Result<RingLayout, LaunchError> {
    match hosts {
        Hosts::Local(n) => {
            if *n == 0 || *n > super::MAX_RANKS {
                return Err(LaunchError::BadRankCount(*n));
            }
            let ports = free_local_ports(*n).map_err(|source| LaunchError::Io {
                path: "127.0.0.1".into(),
                source,
            })?;
            Ok(RingLayout {
                ring: ports
                    .iter()
                    .map(|p| vec![format!("127.0.0.1:{p}")])
                    .collect(),
                ssh: vec![None; *n],
            })
        }
        Hosts::File(entries) => {
            let ring = entries
                .iter()
                .enumerate()
                .map(|(rank, h)| vec![format!("{}:{}", h.ips[0], starting_port as usize + rank)])
                .collect();
            let ssh = entries
                .iter()
                .map(|h| (!is_this_machine(&h.ssh)).then(|| h.ssh.clone()))
                .collect();
            Ok(RingLayout { ring, ssh })
        }
    }
}

fn is_this_machine(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell script a remote rank runs through ssh: the ring hostfile written to a temporary
/// file, the environment, the same working directory (the rank fails when it does not exist
/// there: relative paths would land elsewhere), then the command.
pub fn remote_script(
    rank: usize,
    ring_json: &str,
    env: &[(String, String)],
    cwd: &Path,
    command: &[String],
) -> String {
    let mut s = String::from("f=$(mktemp) && printf '%s' ");
    s += &shell_quote(ring_json);
    s += " > \"$f\" && export MLX_HOSTFILE=\"$f\"";
    s += &format!(" MLX_RANK={rank}");
    for (k, v) in env {
        s += &format!(" {k}={}", shell_quote(v));
    }
    let dir = shell_quote(&cwd.display().to_string());
    s += &format!("; cd {dir} || exit 1; exec");
    for word in command {
        s.push(' ');
        s += &shell_quote(word);
    }
    s
}

struct RankProcess {
    child: Child,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Copies a pipe into the rank's log and, line by line, into the channel.
fn pump(
    mut pipe: impl Read + Send + 'static,
    rank: usize,
    log: Arc<Mutex<std::fs::File>>,
    tx: crossbeam_channel::Sender<(usize, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&buf[..n]);
            }
            for &b in &buf[..n] {
                if b == b'\n' || b == b'\r' {
                    if !line.is_empty() {
                        let _ = tx.send((rank, String::from_utf8_lossy(&line).into_owned()));
                        line.clear();
                    }
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            let _ = tx.send((rank, String::from_utf8_lossy(&line).into_owned()));
        }
    })
}

fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        // SAFETY: signalling a child we started and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
    }
}

/// How long the other ranks get to notice a failed rank themselves (their next collective
/// fails, and their logs say so) before they are stopped.
const FAILURE_GRACE: Duration = Duration::from_secs(3);
/// SIGTERM, then SIGKILL this much later.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// Starts every rank, streams their output, and waits for all of them. The first failure
/// stops the others ([`FAILURE_GRACE`], then SIGTERM, then SIGKILL); `cancel` stops all.
pub fn launch(
    cfg: &LaunchConfig,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(LaunchEvent),
) -> Result<LaunchOutcome, LaunchError> {
    let mut command = cfg.command.clone();
    if command.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    if command[0] == "sd3lab"
        && let Ok(me) = std::env::current_exe()
    {
        command[0] = me.display().to_string();
    }
    let RingLayout { ring, ssh } = ring_layout(&cfg.hosts, cfg.starting_port)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LaunchError::Io { path, source }
    };
    std::fs::create_dir_all(&cfg.log_dir).map_err(io(&cfg.log_dir))?;
    let ring_json = serde_json::to_string(&ring).expect("strings serialise");
    let hostfile = cfg.log_dir.join("ring-hosts.json");
    crate::fsutil::write_atomic(&hostfile, ring_json.as_bytes()).map_err(io(&hostfile))?;
    let hostfile = hostfile.canonicalize().map_err(io(&hostfile))?;
    let mut env = cfg.env.clone();
    if let Some(t) = cfg.collective_timeout {
        env.push((super::group::TIMEOUT_ENV.into(), t.to_string()));
    }
    let cwd = std::env::current_dir().map_err(io(Path::new(".")))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut ranks: Vec<RankProcess> = Vec::new();
    let mut logs = Vec::new();
    let stop_all = |ranks: &mut Vec<RankProcess>| {
        for r in ranks.iter_mut() {
            terminate(&mut r.child);
        }
    };
    for (rank, host) in ssh.iter().enumerate() {
        let log_path = cfg.log_dir.join(format!("rank-{rank}.log"));
        let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
        let mut cmd = match host {
            None => {
                let mut c = Command::new(&command[0]);
                c.args(&command[1..])
                    .env("MLX_RANK", rank.to_string())
                    .env("MLX_HOSTFILE", &hostfile)
                    .envs(env.iter().map(|(k, v)| (k, v)));
                c
            }
            Some(host) => {
                let mut c = Command::new("ssh");
                c.arg(host)
                    .arg(remote_script(rank, &ring_json, &env, &cwd, &command));
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                stop_all(&mut ranks);
                return Err(LaunchError::Spawn {
                    rank,
                    program: command[0].clone(),
                    source,
                });
            }
        };
        let log = Arc::new(Mutex::new(log));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, rank, log.clone(), tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, rank, log, tx.clone()));
        }
        on_event(LaunchEvent::Started {
            rank,
            host: host.clone().unwrap_or_else(|| "local".into()),
            log: log_path.clone(),
        });
        logs.push(log_path);
        ranks.push(RankProcess { child, readers });
    }
    drop(tx);
    let mut codes: Vec<Option<Option<i32>>> = vec![None; ranks.len()];
    let mut stopping_since: Option<Instant> = None;
    let mut terminated = false;
    let mut failure_order = Vec::new();
    let mut stopped = vec![false; ranks.len()];
    while codes.iter().any(|c| c.is_none()) {
        // Wait for output at most 100 ms, then take what is queued, at most a bounded number
        // of lines: a rank that never stops printing cannot keep the others' exits from being
        // seen.
        if let Ok(first) = rx.recv_timeout(Duration::from_millis(100)) {
            for (rank, line) in std::iter::once(first).chain(rx.try_iter().take(4096)) {
                on_event(LaunchEvent::Line { rank, line });
            }
        }
        for (rank, r) in ranks.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                codes[rank] = Some(status.code());
                if status.code() != Some(0) {
                    failure_order.push(rank);
                }
                on_event(LaunchEvent::Exited {
                    rank,
                    code: status.code(),
                });
                if status.code() != Some(0) && stopping_since.is_none() {
                    on_event(LaunchEvent::Stopping { failed_rank: rank });
                    stopping_since = Some(Instant::now());
                }
            }
        }
        if cancel.is_cancelled() && stopping_since.is_none() {
            // Ranks started locally got the Ctrl-C themselves: no grace period.
            stopping_since = Some(
                Instant::now()
                    .checked_sub(FAILURE_GRACE)
                    .unwrap_or_else(Instant::now),
            );
        }
        if let Some(since) = stopping_since
            && since.elapsed() >= FAILURE_GRACE
        {
            for (rank, r) in ranks.iter_mut().enumerate() {
                if codes[rank].is_none() {
                    stopped[rank] = true;
                    if since.elapsed() >= FAILURE_GRACE + KILL_AFTER {
                        let _ = r.child.kill();
                    } else if !terminated {
                        terminate(&mut r.child);
                    }
                }
            }
            terminated = true;
        }
    }
    for r in ranks {
        for h in r.readers {
            let _ = h.join();
        }
    }
    while let Ok((rank, line)) = rx.try_recv() {
        on_event(LaunchEvent::Line { rank, line });
    }
    Ok(LaunchOutcome {
        codes: codes.into_iter().map(|c| c.flatten()).collect(),
        logs,
        failure_order,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts.json");
        std::fs::write(
            &p,
            r#"{"backend": "ring", "hosts": [{"ssh": "mac1", "ips": ["10.0.0.1"]}, {"ssh": "localhost", "ips": ["127.0.0.1"]}]}"#,
        )
        .unwrap();
        let hosts = read_hostfile(&p).unwrap();
        assert_eq!(hosts.len(), 2);
        let RingLayout { ring, ssh } = ring_layout(&Hosts::File(hosts), 5000).unwrap();
        assert_eq!(ring, vec![vec!["10.0.0.1:5000"], vec!["127.0.0.1:5001"]]);
        assert_eq!(ssh, vec![Some("mac1".to_owned()), None]);
        std::fs::write(&p, r#"[{"ssh": "mac1"}]"#).unwrap();
        let e = read_hostfile(&p).unwrap_err().to_string();
        assert!(e.contains("no \"ips\"") && e.contains("hosts.json"), "{e}");
        std::fs::write(&p, r#"[["127.0.0.1:1"]]"#).unwrap();
        let e = read_hostfile(&p).unwrap_err().to_string();
        assert!(e.contains("mlx.launch's format"), "{e}");
    }

    #[test]
    fn local_layout_has_distinct_ports() {
        let RingLayout { ring, ssh } = ring_layout(&Hosts::Local(3), 0).unwrap();
        assert_eq!(ssh, vec![None, None, None]);
        let mut ports: Vec<&String> = ring.iter().map(|r| &r[0]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        assert!(ring_layout(&Hosts::Local(0), 0).is_err());
    }

    #[test]
    fn remote_script_quotes_everything() {
        let s = remote_script(
            1,
            r#"[["10.0.0.1:5000"],["10.0.0.2:5001"]]"#,
            &[("SD3LAB_COLLECTIVE_TIMEOUT".into(), "60".into())],
            Path::new("/Users/me/my lab"),
            &["/opt/sd3lab".into(), "--layers".into(), "it's (a|b)".into()],
        );
        assert_eq!(
            s,
            "f=$(mktemp) && printf '%s' '[[\"10.0.0.1:5000\"],[\"10.0.0.2:5001\"]]' > \"$f\" && export MLX_HOSTFILE=\"$f\" MLX_RANK=1 SD3LAB_COLLECTIVE_TIMEOUT=60; cd '/Users/me/my lab' || exit 1; exec /opt/sd3lab --layers 'it'\\''s (a|b)'"
        );
        // What a POSIX shell makes of it: the words come back unchanged.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' {}",
                shell_quote("it's (a|b) $HOME")
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's (a|b) $HOME\n");
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;
    use crate::dist::group::{EXIT_PEER_LOST, EXIT_STALLED};

    fn outcome(codes: Vec<Option<i32>>, order: Vec<usize>, stopped: Vec<bool>) -> LaunchOutcome {
        LaunchOutcome {
            logs: vec![PathBuf::new(); codes.len()],
            codes,
            failure_order: order,
            stopped,
        }
    }

    #[test]
    fn the_rank_that_failed_on_its_own_is_blamed() {
        // Rank 1 exits with 9, rank 0 then loses its peer: rank 1.
        let o = outcome(
            vec![Some(EXIT_PEER_LOST), Some(9)],
            vec![0, 1],
            vec![false, false],
        );
        assert_eq!(o.failed(), Some((1, Some(9))));
        // Killed by the OOM killer (a signal the launch did not send), the survivor stalls.
        let o = outcome(
            vec![Some(EXIT_STALLED), None],
            vec![0, 1],
            vec![false, false],
        );
        assert_eq!(o.failed(), Some((1, None)));
        // Stopped by the launch after rank 0's watchdog: rank 0.
        let o = outcome(
            vec![Some(EXIT_STALLED), None],
            vec![0, 1],
            vec![false, true],
        );
        assert_eq!(o.failed(), Some((0, Some(EXIT_STALLED))));
        let o = outcome(vec![Some(0), Some(0)], vec![], vec![false, false]);
        assert_eq!(o.failed(), None);
    }
}

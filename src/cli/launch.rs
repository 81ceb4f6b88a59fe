//! `sd3lab launch`: starts the ranks of a distributed run (locally or over ssh), one log file
//! per rank, rank 0's output (the whole job's progress) and every rank's errors on screen.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::dist::launch::{Hosts, LaunchConfig, LaunchEvent, launch, read_hostfile};

use super::cancel_on_ctrl_c;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["local", "hostfile"])))]
pub struct LaunchArgs {
    /// Run N ranks on this machine (loopback addresses, free ports).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    local: Option<u64>,
    /// One rank per host of an mlx.launch hostfile ({"hosts": [{"ssh": "mac1", "ips":
    /// ["10.0.0.1"]}, …]}); remote ranks are started with ssh and the same binary path.
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// Where each rank's log (rank-R.log) and the ring hostfile go.
    #[arg(long, default_value = "launch-logs")]
    log_dir: PathBuf,
    /// Seconds a rank waits for the others at a collective before it gives up [default: 1800].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    collective_timeout: Option<u64>,
    /// First port of a --hostfile ring (one per rank, counting up).
    #[arg(long, default_value_t = 32323)]
    starting_port: u16,
    /// The command every rank runs (`sd3lab` means this binary), after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(args: &LaunchArgs) -> anyhow::Result<ExitCode> {
    let hosts = match (&args.local, &args.hostfile) {
        (Some(n), _) => Hosts::Local(*n as usize),
        (None, Some(path)) => Hosts::File(read_hostfile(path)?),
        (None, None) => unreachable!("clap requires --local or --hostfile"),
    };
    let cfg = LaunchConfig {
        hosts,
        command: args.command.clone(),
        log_dir: args.log_dir.clone(),
        collective_timeout: args.collective_timeout,
        starting_port: args.starting_port,
        env: Vec::new(),
    };
    let cancel = cancel_on_ctrl_c();
    // The whole job's progress, from rank 0's `job: …` lines (hidden until the first).
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(super::bar_style("job [{bar:30}] {pos}/{len} ETA {eta}"));
    let outcome = launch(&cfg, &cancel, &mut |e| match e {
        LaunchEvent::Started { rank, host, log } => {
            bar.suspend(|| eprintln!("rank {rank} started ({host}), log {}", log.display()))
        }
        // Rank 0 reports the whole job; the others' errors and warnings are shown too.
        LaunchEvent::Line { rank: 0, line } => {
            if let Some((done, total)) = job_progress(&line) {
                if bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_length(total);
                bar.set_position(done);
            }
            bar.suspend(|| eprintln!("{line}"));
        }
        LaunchEvent::Line { rank, line } => {
            if line.starts_with("error") || line.starts_with("warning") {
                bar.suspend(|| eprintln!("[rank {rank}] {line}"));
            }
        }
        LaunchEvent::Exited { rank, code } if code != Some(0) => bar.suspend(|| {
            eprintln!(
                "rank {rank} {}",
                code.map_or("was killed by a signal".to_owned(), |c| format!(
                    "exited with status {c}"
                ))
            )
        }),
        LaunchEvent::Exited { .. } => {}
        LaunchEvent::Stopping { failed_rank } => {
            bar.suspend(|| eprintln!("rank {failed_rank} failed: stopping the other ranks"))
        }
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    match outcome.failed() {
        None => {
            eprintln!("all {} ranks finished", outcome.codes.len());
            Ok(ExitCode::SUCCESS)
        }
        Some((rank, code)) => {
            // The failed rank's last lines say why.
            let log = &outcome.logs[rank];
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            eprintln!("last lines of rank {rank}'s log ({}):", log.display());
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            eprintln!("rerun the same command to resume: finished items are kept");
            Ok(ExitCode::from(
                code.and_then(|c| u8::try_from(c).ok())
                    .filter(|&c| c != 0)
                    .unwrap_or(1),
            ))
        }
    }
}

/// `done/total` from a rank's `job: …` progress line (`job: 12/60 layers measured over 2
/// ranks`, `job: w4g64: 3/150 images over 4 ranks`).
fn job_progress(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("job: ")?;
    rest.split_whitespace().find_map(|word| {
        let (d, t) = word.split_once('/')?;
        Some((d.parse().ok()?, t.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_progress_lines() {
        use super::job_progress;
        assert_eq!(
            job_progress("job: 12/60 layers measured over 2 ranks"),
            Some((12, 60))
        );
        assert_eq!(
            job_progress("job: w4g64: 3/150 images over 4 ranks"),
            Some((3, 150))
        );
        assert_eq!(job_progress("[rank 0/2] layer done"), None);
        assert_eq!(job_progress("job: nothing"), None);
    }
}

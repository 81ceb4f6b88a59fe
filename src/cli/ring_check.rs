//! `sd3lab ring-check`: run under `sd3lab launch` or `mlx.launch` to check that the ranks reach
//! each other and to time the collectives a split job uses (a barrier, a progress sum, the
//! gather of one item's results).

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use sd3lab::dist::{Collective, RingGroup};

#[derive(Args)]
pub struct RingCheckArgs {
    /// Times each collective is run.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rounds: u64,
    /// Bytes each rank sends in a gather (a sensitivity layer's results are about 2 KB, an
    /// image record about 1 KB).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    bytes: u64,
}

pub fn run(args: &RingCheckArgs) -> anyhow::Result<ExitCode> {
    let Some(group) = RingGroup::from_env()? else {
        anyhow::bail!(
            "not started as a rank: run it as `sd3lab launch --local 2 -- sd3lab ring-check` (or with --hostfile, or under mlx.launch)"
        );
    };
    let (rank, size) = (group.rank(), group.size());
    let payload: Vec<u8> = (0..args.bytes).map(|i| (i as usize + rank) as u8).collect();
    let timed = |what: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        f()?; // the first one connects and warms up
        let t = Instant::now();
        for _ in 0..args.rounds {
            f()?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / args.rounds as f64;
        if rank == 0 {
            println!("{what:<34} {ms:>8.3} ms");
        }
        Ok(())
    };
    timed("barrier", &mut || Ok(group.barrier("a barrier")?))?;
    timed("progress sum (1 count)", &mut || {
        group.sum("a sum", &[1])?;
        Ok(())
    })?;
    let label = format!("gather of {} bytes per rank", args.bytes);
    timed(&label, &mut || {
        let all = group.gather("a gather", &payload)?;
        // Every rank's bytes arrive intact.
        for (r, bytes) in all.iter().enumerate() {
            let expected: Vec<u8> = (0..args.bytes).map(|i| (i as usize + r) as u8).collect();
            anyhow::ensure!(*bytes == expected, "rank {r}'s bytes arrived damaged");
        }
        Ok(())
    })?;
    if rank == 0 {
        println!("{size} ranks reach each other; {} rounds each", args.rounds);
    }
    Ok(ExitCode::SUCCESS)
}

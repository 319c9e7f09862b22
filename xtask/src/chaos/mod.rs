//! `cargo xtask chaos [--kills 100] [--seed N]`: restart under load: no failed connect, no
//! broken long-lived connection, nothing leaked.
//!
//! Two stock python clients connect continuously through two VIPs and a third holds
//! long-lived echo connections, while the agent is SIGKILLed at random moments and
//! restarted on the same pins. The run fails unless every connect succeeded, every
//! long-lived connection still echoes, every restart answered `GET /ready`, and `bpftool`
//! shows the very same sockmesh programs, maps and links before and after (none
//! left after cleanup). The scenario is the bpf-tests harness's
//! (`sockmesh_bpf_tests::chaos_run`), which `tests/chaos_restart.rs` runs with 20 kills.
//! How long each restart took to answer `/ready` is measured and printed (median, p90, max,
//! and how many missed the 1 s target), not asserted: a timing, like the bench's numbers.
//!
//! It runs in `<cgroup2>/sockmesh-test-<pid>-chaos` with pins in
//! `/sys/fs/bpf/sockmesh-test-<pid>-chaos`, on 127.0.0.0/8 only (VIPs 127.100.70.1-3, ports
//! 18700-18702), bounded in time (about 0.2 s per kill), and removes everything at the end,
//! on error and on Ctrl-C.

use std::fs;

use anyhow::{bail, Result};
use clap::Args;
use sockmesh_bpf_tests::chaos_run::{self, clock_seed, ChaosOptions};

use crate::{agent_build, attached_agent, interrupt, setup};

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// SIGKILLs, each followed by a restart on the same pins.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Seed of the kill moments (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Long-lived connections held across all kills.
    #[arg(long, default_value_t = 16)]
    long_lived: usize,
}

pub fn run(args: &ChaosArgs) -> Result<()> {
    if args.kills == 0 || args.kills > 1000 {
        bail!("--kills must be in 1..=1000");
    }
    if args.long_lived == 0 || args.long_lived > 200 {
        bail!("--long-lived must be in 1..=200");
    }
    interrupt::install();
    setup::run()?;
    let agent_bin = fs::canonicalize(agent_build::run()?)?;
    attached_agent::use_agent_bin(&agent_bin);
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!(
        "chaos: {} SIGKILLs of the agent under load, {} long-lived connections, seed {seed}",
        args.kills, args.long_lived
    );
    let mut opts = ChaosOptions::new("chaos", args.kills, seed);
    opts.long_lived = args.long_lived;
    let report = chaos_run::run(&opts, &interrupt::check)?;
    println!("{}", report.summary());
    let violations = report.violations();
    if !violations.is_empty() {
        bail!(
            "chaos: {} (replay with --seed {seed})",
            violations.join("\n")
        );
    }
    println!("chaos: ok");
    Ok(())
}

//! `cargo xtask demo`: the mesh at work on the embedded default config.
//!
//! Starts one counting backend per backend address of the default config, the agent (no
//! `--config`, so the embedded default) attached to a cgroup of the demo's own, and stock
//! python clients inside that cgroup dialing the service VIPs. Two parts:
//!
//! 1. Spread: a table refreshed every second shows where the kernel sent each connection
//!    (counted at the backends) against what the weights ask for.
//! 2. A backend dies ([`scene`]): it is banned, traffic moves to the others, and when it
//!    returns it is let back in after its ban and a passing probe.
//!
//! Everything is on 127.0.0.0/8 and bounded in time: about 40 s once the agent is built (the
//! first part is capped at 20 s, the scene at 30 s). Agent, pins, cgroup and processes are
//! removed at the end, on error and on Ctrl-C.

mod backends;
mod callers;
mod scene;
pub(crate) mod screen;
mod table;

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use sockmesh_model::MeshConfig;

use crate::attached_agent::{self, PinDir};
use crate::cgroup::ChildCgroup;
use crate::scratch::ScratchDir;
use crate::{agent_build, interrupt, setup};
use backends::DemoBackends;
use callers::Caller;
use screen::Screen;

/// Hard limit on the client load; the clients are paced to finish well before it.
const LOAD_LIMIT: Duration = Duration::from_secs(20);
/// How long the paced load is meant to take, so the split visibly builds up.
const LOAD_TARGET: Duration = Duration::from_secs(10);
/// A share further than this from its weight's share means routing is broken, not unlucky:
/// with 2,000 weighted-random connects one standard deviation is about 1 point.
const MAX_DEVIATION_PP: f64 = 10.0;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Connections per service.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Skip the second part, where a backend dies and returns.
    #[arg(long)]
    no_scene: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if args.connects == 0 || args.connects > 20_000 {
        bail!("--connects must be in 1..=20000");
    }
    interrupt::install();
    setup::run()?;
    let agent_bin = fs::canonicalize(agent_build::run()?)?;
    attached_agent::use_agent_bin(&agent_bin);
    let config = sockmesh_model::default_config();
    check_loopback_only(&config)?;
    let demo_started = Instant::now();

    // Declaration order is cleanup order, reversed: callers, agent (stop + cleanup), pins,
    // cgroup (kills stragglers), backends, scratch.
    let pid = std::process::id();
    let scratch = ScratchDir::create(&format!("sockmesh-demo-{pid}"))?;
    let addrs: Vec<SocketAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect();
    let mut backends = DemoBackends::start(&addrs)?;
    let listening: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    println!("demo: backends listening on {}", listening.join(", "));
    let cgroup = ChildCgroup::create(&format!("sockmesh-demo-{pid}"))?;
    let pins = PinDir::reserve(&format!("sockmesh-demo-{pid}"))?;
    let agent = attached_agent::start(None, cgroup.path(), &pins, scratch.path())?;
    print_status(&agent);

    let interval = LOAD_TARGET / u32::try_from(args.connects)?;
    let mut callers = config
        .services
        .iter()
        .map(|s| {
            let vip = SocketAddr::new(s.vip, s.port);
            Caller::start(&cgroup, &s.name, vip, args.connects, interval, LOAD_LIMIT)
        })
        .collect::<Result<Vec<_>>>()?;
    println!(
        "demo: {} python3 clients in cgroup {}, {} connects per service\n",
        callers.len(),
        cgroup.path().display(),
        args.connects
    );

    let started = Instant::now();
    let mut screen = Screen::new();
    loop {
        interrupt::sleep(Duration::from_secs(1))?;
        let mut all_done = true;
        for caller in &mut callers {
            all_done &= caller.poll_done();
        }
        let elapsed = started.elapsed();
        let header = format!(
            "live: {:>2} s (at most {} s)",
            elapsed.as_secs(),
            LOAD_LIMIT.as_secs()
        );
        screen.frame(&table::render(&config, &backends.accepts(), &header))?;
        if all_done || elapsed >= LOAD_LIMIT {
            break;
        }
    }
    screen.keep();
    for caller in &mut callers {
        caller.stop();
    }

    let accepts = backends.accepts();
    println!("{}", table::render(&config, &accepts, "final:"));
    let failed = print_callers(&callers);
    let deviation = table::worst_deviation(&config, &accepts);
    let skewed = match deviation {
        Some(pp) => {
            println!("largest share deviation from the weights: {pp:.1} percentage points");
            pp > MAX_DEVIATION_PP && args.connects >= 1000
        }
        None => {
            println!("some service received no connection at all");
            true
        }
    };
    drop(callers);
    let mut problems = Vec::new();
    if failed {
        problems.push("the spread part saw failed connects (see above)".to_string());
    }
    if skewed {
        problems.push(format!(
            "the split is off the weights by more than {MAX_DEVIATION_PP} points (see above)"
        ));
    }
    // The scene needs working routing: after a broken first part it would only add noise.
    if problems.is_empty() && !args.no_scene {
        problems.extend(scene::run(
            &config,
            &agent,
            &mut backends,
            &cgroup,
            scratch.path(),
            &mut screen,
        )?);
    }

    drop(agent);
    drop(pins);
    drop(cgroup);
    drop(backends);
    println!(
        "demo: agent stopped, programs detached, pins and cgroup removed ({:.0} s after the \
         build)",
        demo_started.elapsed().as_secs_f64()
    );
    match problems.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{}", many.join("; ")),
    }
}

/// One line per caller: connects, failures, and whether getpeername() showed the VIP (the
/// app sees what it dialed, not the backend). Returns whether anything failed.
fn print_callers(callers: &[Caller]) -> bool {
    let mut failed = false;
    for caller in callers {
        match caller.report() {
            Some(Ok(report)) => {
                let vip = caller.vip.to_string();
                let ok = report.results.iter().filter(|r| r.ok()).count();
                let saw_vip = report
                    .results
                    .iter()
                    .filter(|r| r.peer.as_deref() == Some(vip.as_str()))
                    .count();
                let failures = report.failures();
                println!(
                    "client {:<5} {ok}/{} connects ok, getpeername() = VIP {vip} on {saw_vip}",
                    caller.service,
                    report.results.len()
                );
                if let Some(first) = failures.first() {
                    println!("  first failure: {:?}", first.error);
                    failed = true;
                }
            }
            Some(Err(e)) => {
                println!("client {:<5} failed: {e:#}", caller.service);
                failed = true;
            }
            None => {
                println!("client {:<5} reported nothing", caller.service);
                failed = true;
            }
        }
    }
    failed
}

fn check_loopback_only(config: &MeshConfig) -> Result<()> {
    for service in &config.services {
        let backends = service.backends.iter().map(|b| b.addr.ip());
        for ip in std::iter::once(service.vip).chain(backends) {
            if !ip.is_loopback() {
                bail!("the demo only runs on 127.0.0.0/8; the default config has {ip}");
            }
        }
    }
    Ok(())
}

/// What the agent says it applied: a check that it runs the embedded default.
fn print_status(agent: &sockmesh_bpf_tests::Agent) {
    match agent.status() {
        Ok(status) => {
            let source = status["config"]["source"].as_str().unwrap_or("?");
            let services: Vec<String> = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{} {}:{} ({}, {} slots)",
                        s["name"].as_str().unwrap_or("?"),
                        s["vip"].as_str().unwrap_or("?"),
                        s["port"],
                        s["lb"].as_str().unwrap_or("?"),
                        s["slot_table_len"]
                    )
                })
                .collect();
            println!(
                "demo: agent ready, config {source}, services: {}",
                services.join("; ")
            );
        }
        Err(e) => println!("demo: agent ready (GET /status failed: {e:#})"),
    }
}

//! The demo's second part: a backend dies under steady load and the mesh routes around it.
//!
//! One python3 client in the demo cgroup connects to the `web` VIP every few milliseconds.
//! After a few seconds of steady load, backend 127.0.0.4:18081 is killed (its listener
//! closes, so connects to it are refused); the agent sees the failed connects in the kernel's
//! events and bans it, and the kernel sends every new connection to the other two. Some
//! seconds later the backend listens again, but the agent lets it back into the slot table
//! only once its ban is over and a TCP probe passes. A table refreshed every second shows,
//! per backend, the requests it answered in the last second, the agent's view (slots, failed
//! connects, ban state from `/v1/bans`) and the service's circuit from `/v1/circuits`.
//!
//! With the default policy (5 consecutive failures, 5 s first ban, doubling) and a restart
//! 8 s after the kill, the first ban ends while the backend is still down: its probe fails
//! and it is banned again for 10 s; after that the probe passes and traffic returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sockmesh_bpf_tests::Agent;
use sockmesh_model::{MeshConfig, ServiceSpec};

use super::backends::DemoBackends;
use super::callers::Caller;
use super::screen::Screen;
use crate::cgroup::ChildCgroup;
use crate::interrupt;

/// The service the scene plays on, and the backend that dies (the one with weight 2, so the
/// move of its half of the traffic is plain to see).
const SERVICE: &str = "web";
const VICTIM: &str = "127.0.0.4:18081";
/// Pause between the client's connects: about 150 connects/s with the python client.
const CLIENT_INTERVAL: Duration = Duration::from_millis(5);
/// Steady load before the kill.
const WARMUP: Duration = Duration::from_secs(3);
/// How long the backend stays down.
const DOWN_FOR: Duration = Duration::from_secs(8);
/// Load after the backend is back in the slot table.
const AFTER_RETURN: Duration = Duration::from_secs(3);
/// Hard bound on the scene; the steps above take about 21.5 s with the default policy.
const SCENE_LIMIT: Duration = Duration::from_secs(30);
/// How often the agent's bans are read (narration latency)...
const POLL: Duration = Duration::from_millis(100);
/// ... and between the kill and the ban, to time the ban closely.
const FAST_POLL: Duration = Duration::from_millis(5);
/// How often the table is redrawn.
const FRAME: Duration = Duration::from_secs(1);
/// How long the client may take to notice its stop file and report.
const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// What `/v1/bans` says about one backend.
#[derive(Debug, Clone, PartialEq)]
struct Ban {
    state: String,
    reason: String,
    streak: u64,
    remaining_s: f64,
}

impl Ban {
    fn label(&self) -> String {
        match self.state.as_str() {
            "banned" => format!("banned {:.0}s", self.remaining_s.ceil()),
            other => other.to_string(),
        }
    }
}

/// What `/v1/backends?service=` says about one backend.
#[derive(Debug, Clone, Copy, Default)]
struct AgentBackend {
    slots: u64,
    /// Connects that failed at the backend: refused, timed out or unreachable.
    failed: u64,
}

/// The agent's views of the scene's service at one moment.
struct AgentView {
    bans: BTreeMap<SocketAddr, Ban>,
    backends: BTreeMap<SocketAddr, AgentBackend>,
    circuit: String,
}

/// The scene's service and where its backends sit among the demo's backends.
struct Stage<'a> {
    service: &'a ServiceSpec,
    /// Index of the service's first backend in [`DemoBackends`]' order (config order).
    first: usize,
    victim: SocketAddr,
    victim_index: usize,
}

impl Stage<'_> {
    /// Requests answered by each of the service's backends so far, in config order.
    fn served(&self, backends: &DemoBackends) -> Vec<u64> {
        backends.served()[self.first..self.first + self.service.backends.len()].to_vec()
    }
}

/// When each step happened.
#[derive(Default)]
struct Timeline {
    killed: Option<Instant>,
    banned: Option<Instant>,
    restarted: Option<Instant>,
    back: Option<Instant>,
    /// The victim's failed connects as the agent counted them at the kill.
    failed_at_kill: u64,
    /// Highest ban streak seen, to notice a re-ban after a failed probe.
    streak: u64,
    failed_probes: u32,
    served_at_ban: Vec<u64>,
    served_at_restart: Vec<u64>,
    /// Served counts read just before the last `/v1/bans` that still listed the backend: as
    /// of then it had no slot (the agent publishes a view before it changes the table).
    served_while_out: Vec<u64>,
    served_at_back: Vec<u64>,
}

/// Plays the scene; returns the problems it found (empty when the mesh did its job). Errors
/// are for a scene that could not run (or was interrupted); callers clean up either way.
pub fn run(
    config: &MeshConfig,
    agent: &Agent,
    backends: &mut DemoBackends,
    cgroup: &ChildCgroup,
    scratch: &Path,
    screen: &mut Screen,
) -> Result<Vec<String>> {
    let stage = stage(config)?;
    let service = stage.service;
    let victim = stage.victim;
    let policy = &service.outlier;
    let vip = SocketAddr::new(service.vip, service.port);
    println!(
        "\n=== scene: a backend dies ===\n\
         one client connects to {SERVICE} ({vip}) every {} ms; {victim} is killed after {} s \
         and restarted {} s later.\npolicy: ban after {} consecutive failed connects, first \
         ban {:?} (doubling), TCP probe before a backend returns",
        CLIENT_INTERVAL.as_millis(),
        WARMUP.as_secs(),
        DOWN_FOR.as_secs(),
        policy.consecutive_failures,
        policy.base_ban.0,
    );
    println!(
        "table: conn/s = requests each backend answered in the last second; slots, failed \
         (connects since the scene began) and STATE (/v1/bans) are the agent's view\n"
    );

    let stop_file = scratch.join("scene-client-stop");
    let mut caller = Caller::start_until(
        cgroup,
        SERVICE,
        vip,
        CLIENT_INTERVAL,
        SCENE_LIMIT + CLIENT_GRACE,
        &stop_file,
    )?;
    let started = Instant::now();
    let mut t = Timeline::default();
    let mut last_served = stage.served(backends);
    let failed_at_start: BTreeMap<SocketAddr, u64> = agent_view(agent)?
        .backends
        .iter()
        .map(|(addr, b)| (*addr, b.failed))
        .collect();
    let mut next_frame = started + FRAME;
    let since = |at: Instant| at.elapsed().as_secs_f64();

    loop {
        let waiting_for_ban = t.killed.is_some() && t.banned.is_none();
        interrupt::sleep(if waiting_for_ban { FAST_POLL } else { POLL })?;
        if caller.poll_done() {
            bail!(
                "the scene's client exited early: {}",
                match caller.report() {
                    Some(Err(e)) => format!("{e:#}"),
                    _ => "it reported before being told to stop".to_string(),
                }
            );
        }
        let now = Instant::now();
        if now.duration_since(started) > SCENE_LIMIT {
            bail!(
                "the scene did not complete within {} s: {}",
                SCENE_LIMIT.as_secs(),
                missing_step(&t)
            );
        }
        let served_before = stage.served(backends);
        let bans = bans(agent)?;
        let ban = bans.get(&victim);
        if t.banned.is_some() && t.back.is_none() && ban.is_some() {
            t.served_while_out = served_before;
        }

        // Step 1: steady load, then the kill.
        if t.killed.is_none() && now.duration_since(started) >= WARMUP {
            screen.say(&format!(
                "[{:>4.1} s] killing {victim}: its listener closes, connects to it are refused",
                since(started)
            ))?;
            t.failed_at_kill = agent_view(agent)?
                .backends
                .get(&victim)
                .map_or(0, |b| b.failed);
            backends.kill(victim)?;
            t.killed = Some(Instant::now());
        }

        // Step 2: the ban, and re-bans after failed probes.
        if let (Some(killed), Some(ban)) = (t.killed, ban) {
            if t.banned.is_none() {
                t.banned = Some(now);
                t.streak = ban.streak;
                t.served_at_ban = stage.served(backends);
                let view = agent_view(agent)?;
                let failed = view
                    .backends
                    .get(&victim)
                    .map_or(0, |b| b.failed)
                    .saturating_sub(t.failed_at_kill);
                screen.say(&format!(
                    "[{:>4.1} s] banned after {failed} failed connects (reason {}), {} ms after \
                     the kill: out of the slot table for {:.0} s; traffic moves to the others",
                    since(started),
                    ban.reason,
                    now.duration_since(killed).as_millis(),
                    ban.remaining_s.ceil(),
                ))?;
            } else if t.back.is_some() && ban.streak > t.streak {
                t.streak = ban.streak;
                screen.say(&format!(
                    "[{:>4.1} s] banned again after its return (reason {})",
                    since(started),
                    ban.reason
                ))?;
            } else if ban.streak > t.streak {
                t.streak = ban.streak;
                t.failed_probes += 1;
                let why = if t.restarted.is_none() {
                    "the backend is still down"
                } else {
                    "no answer"
                };
                screen.say(&format!(
                    "[{:>4.1} s] ban over, probe failed ({why}): banned again for {:.0} s",
                    since(started),
                    ban.remaining_s.ceil(),
                ))?;
            }
        }
        if t.banned.is_some() && t.restarted.is_none() && ban.is_none() {
            bail!("{victim} left /v1/bans while it was still down: a probe cannot have passed");
        }

        // Step 3: the backend comes back up; the ban still holds.
        if let Some(killed) = t.killed {
            if t.restarted.is_none() && now.duration_since(killed) >= DOWN_FOR {
                if t.banned.is_none() {
                    bail!(
                        "{victim} was down for {} s and never banned (the agent saw {} failed \
                         connects to it)",
                        DOWN_FOR.as_secs(),
                        agent_view(agent)?
                            .backends
                            .get(&victim)
                            .map_or(0, |b| b.failed)
                            .saturating_sub(t.failed_at_kill)
                    );
                }
                backends.resume(victim)?;
                t.restarted = Some(Instant::now());
                t.served_at_restart = stage.served(backends);
                let state = ban.map_or_else(|| "routed".to_string(), Ban::label);
                screen.say(&format!(
                    "[{:>4.1} s] restarting {victim}: listening again, but {state}; it gets no \
                     traffic until the ban ends and a probe passes",
                    since(started)
                ))?;
            }
        }

        // Step 4: the probe passed; traffic returns.
        if let Some(restarted) = t.restarted {
            if t.back.is_none() && ban.is_none() {
                t.back = Some(now);
                t.served_at_back = stage.served(backends);
                let slots = agent_view(agent)?
                    .backends
                    .get(&victim)
                    .map_or(0, |b| b.slots);
                screen.say(&format!(
                    "[{:>4.1} s] probe passed: back in the slot table ({slots} slots), {:.1} s \
                     after the restart",
                    since(started),
                    now.duration_since(restarted).as_secs_f64(),
                ))?;
            }
        }

        if now >= next_frame {
            next_frame += FRAME;
            let view = agent_view(agent)?;
            let served = stage.served(backends);
            let per_second: Vec<u64> = served
                .iter()
                .zip(&last_served)
                .map(|(now, before)| now - before)
                .collect();
            last_served = served;
            let header = header(&t, started);
            screen.frame(&render(
                &stage,
                &header,
                &per_second,
                &view,
                &failed_at_start,
                backends.is_up(victim),
            ))?;
        }

        if t.back
            .is_some_and(|back| now.duration_since(back) >= AFTER_RETURN)
        {
            break;
        }
    }
    screen.keep();

    fs::write(&stop_file, b"").context("write the client's stop file")?;
    caller.finish(CLIENT_GRACE)?;
    let end_served = stage.served(backends);
    Ok(summary(&stage, &t, started, &end_served, &caller))
}

/// Prints what happened and returns the problems found.
fn summary(
    stage: &Stage,
    t: &Timeline,
    started: Instant,
    end_served: &[u64],
    caller: &Caller,
) -> Vec<String> {
    let mut problems = Vec::new();
    let victim = stage.victim;
    let at = |i: Option<Instant>| i.map_or(0.0, |i| i.duration_since(started).as_secs_f64());
    println!("scene summary ({SERVICE} via {}):", caller.vip);
    println!(
        "  {victim} killed at {:.1} s, banned {} ms later",
        at(t.killed),
        t.banned
            .zip(t.killed)
            .map_or(0, |(b, k)| b.duration_since(k).as_millis())
    );
    let out = delta(&t.served_while_out, &t.served_at_ban);
    let out_total: u64 = out.iter().sum();
    let shares: Vec<String> = stage
        .service
        .backends
        .iter()
        .zip(&out)
        .map(|(b, n)| format!("{} {n} ({:.1}%)", b.addr, percent(*n, out_total)))
        .collect();
    println!(
        "  while it was out ({:.1} s): {}",
        at(t.back) - at(t.banned),
        shares.join(", ")
    );
    let while_banned = out[stage.victim_index];
    let sneaked = delta(&t.served_while_out, &t.served_at_restart)[stage.victim_index];
    println!(
        "  restarted at {:.1} s, kept out {:.1} s more (until its ban ended and a probe \
         passed; {} probe(s) failed before), answering {sneaked} requests meanwhile",
        at(t.restarted),
        at(t.back) - at(t.restarted),
        t.failed_probes,
    );
    if while_banned > 0 {
        problems.push(format!(
            "{victim} answered {while_banned} requests while it was out of the slot table"
        ));
    }
    let after = delta(end_served, &t.served_at_back);
    let after_total: u64 = after.iter().sum();
    let back = after[stage.victim_index];
    let weight_total: u64 = stage
        .service
        .backends
        .iter()
        .map(|b| u64::from(b.weight))
        .sum();
    let expected = percent(
        u64::from(stage.service.backends[stage.victim_index].weight),
        weight_total,
    );
    println!(
        "  back at {:.1} s: it answered {back} of {after_total} requests since \
         ({:.1}%, weight share {expected:.1}%)",
        at(t.back),
        percent(back, after_total),
    );
    if back == 0 {
        problems.push(format!("{victim} got no traffic after it was let back in"));
    }
    let limit = u64::from(stage.service.outlier.consecutive_failures);
    match caller.report() {
        Some(Ok(report)) => {
            let failures = report.failures();
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for f in &failures {
                let kind = f
                    .error
                    .as_deref()
                    .and_then(|e| e.split_whitespace().next())
                    .unwrap_or("no answer")
                    .to_string();
                *kinds.entry(kind).or_default() += 1;
            }
            println!(
                "  client: {} connects through the VIP, {} failed (the policy bans after \
                 {limit} consecutive failed connects)",
                report.results.len(),
                failures.len(),
            );
            for (kind, n) in &kinds {
                let what = match kind.as_str() {
                    "ECONNREFUSED" => "connects refused by the dead backend before the ban",
                    "ECONNRESET" => "connections the kernel had queued when the listener closed",
                    _ => "",
                };
                println!("    {n:>3} {kind} {what}");
            }
            // A few more than the policy's N can slip through between the kernel's event
            // and the new slot table (a connection in the dying listener's queue is reset,
            // too); many more means the ban did not stop the traffic.
            if failures.len() as u64 > 2 * limit {
                problems.push(format!(
                    "the client saw {} failed connects; a ban after {limit} should stop them",
                    failures.len()
                ));
            }
        }
        Some(Err(e)) => problems.push(format!("the scene's client failed: {e:#}")),
        None => problems.push("the scene's client reported nothing".to_string()),
    }
    problems
}

/// The scene's service, its victim backend, and where they sit in the demo's backend order.
fn stage(config: &MeshConfig) -> Result<Stage<'_>> {
    let victim: SocketAddr = VICTIM.parse().expect("VICTIM is an address");
    let mut first = 0;
    for service in &config.services {
        if service.name == SERVICE {
            let Some(victim_index) = service.backends.iter().position(|b| b.addr == victim) else {
                bail!("the default config's {SERVICE} service has no backend {victim}");
            };
            if service.backends.len() < 2 {
                bail!("the scene needs {SERVICE} to have a backend besides {victim}");
            }
            return Ok(Stage {
                service,
                first,
                victim,
                victim_index,
            });
        }
        first += service.backends.len();
    }
    bail!("the default config has no service {SERVICE}")
}

mod view;
use view::*;

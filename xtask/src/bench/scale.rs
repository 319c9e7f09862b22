//! `cargo xtask bench --scale`: the control plane with the Kubernetes source against the fake
//! API server holding `--services` Services x `--backends` endpoints, and `--agents` real
//! agents following it, each in its own node of the cluster testbed (bpf-tests/src/cluster:
//! its own network namespace, cgroup subtree and pins). Prints:
//!
//! - initial sync: from the API objects being loaded to every agent's kernel tables holding
//!   them (the agents already run, as after an install);
//! - one EndpointSlice change (one endpoint's address replaced) to every agent's kernel
//!   tables, p50/p99/max over `--changes` changes;
//! - the bytes one change costs per agent (the delta each agent's watch is answered with;
//!   the whole snapshot beside it);
//! - agent RSS and CPU idle and during the churn, the control plane's too.
//!
//! Endpoints are addresses in 198.19.0.0/16 that nothing serves (no connect is made);
//! ClusterIPs in 127.100.0.0/16.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sockmesh_bpf_tests::cluster::{Cluster, ClusterOptions, NodeSpec};

use super::proc_stats;
use crate::{agent_build, interrupt, setup};

/// How long one change may take to reach every agent before the bench gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// What `--scale` was asked for.
#[derive(Debug, Clone, Copy)]
pub struct ScaleArgs {
    pub services: usize,
    pub backends: usize,
    pub agents: usize,
    pub changes: usize,
    /// Seconds between the initial sync and the idle measurement.
    pub idle_wait: u64,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 100, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Endpoint `e` of service `i`, generation `g` (a change bumps it): 198.19.x.y.
fn endpoint(i: usize, e: usize, g: usize) -> Ipv4Addr {
    let n = (i * 16 + e + g * 7) % (1 << 16);
    Ipv4Addr::new(198, 19, (n >> 8) as u8, (n & 0xff) as u8)
}

fn service(i: usize) -> serde_json::Value {
    json!({
        "metadata": {"name": format!("s{i}"), "namespace": "scale"},
        "spec": {"type": "ClusterIP", "clusterIP": vip(i).to_string(),
                 "clusterIPs": [vip(i).to_string()],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    })
}

fn slice(i: usize, backends: usize, generation: usize) -> serde_json::Value {
    let endpoints: Vec<_> = (0..backends)
        .map(|e| {
            let g = if e == 0 { generation } else { 0 };
            json!({"addresses": [endpoint(i, e, g).to_string()], "conditions": {"ready": true},
                   "nodeName": "node-1", "zone": "zone-a"})
        })
        .collect();
    json!({
        "metadata": {"name": format!("s{i}-slice"), "namespace": "scale",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// `field` (µs) of the last `last` log lines containing `line`, of every agent, in ms,
/// sorted.
fn logged_ms(bed: &mut Cluster, line: &str, field: &str, last: usize) -> Vec<f64> {
    let mut ms: Vec<f64> = (0..bed.node_count())
        .flat_map(|n| {
            let took: Vec<f64> = bed
                .agent(n)
                .log()
                .lines()
                .filter(|l| l.contains(line))
                .filter_map(|l| field_u64(l, field))
                .map(|us| us as f64 / 1000.0)
                .collect();
            let skip = took.len().saturating_sub(last);
            took.into_iter().skip(skip).collect::<Vec<f64>>()
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// The number in `name=N` of a log line, with or without colour escapes.
fn field_u64(line: &str, name: &str) -> Option<u64> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... m`
            for e in chars.by_ref() {
                if e == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let key = format!("{name}=");
    let rest = &plain[plain.find(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
#[test]
fn log_fields_read_with_or_without_colour() {
    let coloured = "\u{1b}[3mtook_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m1234 \u{1b}[3mx\u{1b}[0m=5";
    assert_eq!(field_u64(coloured, "took_us"), Some(1234));
    assert_eq!(field_u64("version=3 took_us=77 done", "took_us"), Some(77));
    assert_eq!(field_u64("version=3", "took_us"), None);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (RSS MiB, CPU seconds) of each pid.
fn usage(pids: &[u32]) -> Vec<(f64, f64)> {
    pids.iter()
        .map(|p| {
            let rss = proc_stats::memory(*p).map_or(0.0, |m| m.rss_kib as f64 / 1024.0);
            (rss, proc_stats::cpu_seconds(*p).unwrap_or(0.0))
        })
        .collect()
}

/// The control plane's head version (its small `/v1/status`).
fn head_version(bed: &mut Cluster) -> Result<u64> {
    let status = bed.control().status()?;
    status["version"]
        .as_u64()
        .with_context(|| format!("control status without a version: {status}"))
}

/// Waits until every agent has applied (and acked: the agent acks once its kernel tables
/// are written) version `version` or a later one. Reads `/v1/agents` only: small at any
/// scale, where each agent's `/status` lists every service.
fn wait_applied(bed: &mut Cluster, version: u64, started: Instant) -> Result<()> {
    let agents = bed.node_count();
    loop {
        interrupt::check()?;
        if started.elapsed() > CHANGE_TIMEOUT {
            bail!("agents did not apply version {version} within {CHANGE_TIMEOUT:?}");
        }
        let rows = bed.control().get_json("/v1/agents")?;
        let done = rows.as_array().map_or(0, |rows| {
            rows.iter()
                .filter(|r| r["applied_version"].as_u64().is_some_and(|v| v >= version))
                .count()
        });
        if done == agents {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(args: ScaleArgs) -> Result<()> {
    if !(1..=sockmesh_model::MAX_SERVICES.min(60_000)).contains(&args.services)
        || !(1..=16).contains(&args.backends)
        || !(1..=16).contains(&args.agents)
        || !(1..=1_000).contains(&args.changes)
        || args.idle_wait > 600
    {
        bail!(
            "--scale keeps to 1..=60000 services, 1..=16 backends, 1..=16 agents, 1..=1000 \
             changes, --idle-wait <= 600"
        );
    }
    interrupt::install();
    setup::run()?;
    let agent = std::fs::canonicalize(agent_build::run()?)?;
    std::env::set_var("SOCKMESH_AGENT_BIN", &agent);
    std::env::set_var("SOCKMESH_CONTROL_BIN", agent_build::control_bin());
    std::env::set_var("SOCKMESH_CLI_BIN", agent_build::cli_bin());
    let mut opts = ClusterOptions::new("bench-scale");
    opts.nodes = (0..args.agents)
        .map(|i| NodeSpec {
            name: format!("node-{}", i + 1),
            zone: "zone-a".to_owned(),
        })
        .collect();
    println!(
        "scale: {} agents (one per testbed node), control plane on the Kubernetes source",
        args.agents
    );
    let mut bed = Cluster::start(opts)?;
    bed.add_namespace("scale", true);

    let loading = Instant::now();
    for i in 0..args.services {
        bed.kube().apply("Service", service(i));
        bed.kube()
            .apply("EndpointSlice", slice(i, args.backends, 0));
    }
    let loaded = loading.elapsed();
    // The version holding every Service: checked on each new head (a snapshot is large, so
    // only when the version moves).
    let mut seen = 0;
    let full = loop {
        interrupt::check()?;
        if loading.elapsed() > CHANGE_TIMEOUT {
            bail!(
                "the control plane never served all {} Services",
                args.services
            );
        }
        let v = head_version(&mut bed)?;
        if v != seen {
            seen = v;
            let snapshot = bed.control().snapshot()?;
            let count = snapshot["config"]["services"]
                .as_array()
                .map_or(0, Vec::len);
            if count == args.services {
                break (v, snapshot.to_string().len());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (full_version, snapshot_bytes) = full;
    wait_applied(&mut bed, full_version, loading)?;
    let initial = loading.elapsed();
    let fp = format!("{full_version}");
    println!(
        "scale: {} Services x {} endpoints loaded into the API server in {:.2} s; every agent's \
         kernel tables hold them {:.2} s after the first write (version {fp}, {} bytes)",
        args.services,
        args.backends,
        loaded.as_secs_f64(),
        initial.as_secs_f64(),
        snapshot_bytes
    );

    let mut pids: Vec<u32> = (0..bed.node_count())
        .filter_map(|n| bed.agent(n).pid())
        .collect();
    pids.push(bed.control().pid().context("control plane not running")?);
    interrupt::sleep(Duration::from_secs(args.idle_wait))?;
    let idle_from = Instant::now();
    let before = usage(&pids);
    interrupt::sleep(Duration::from_secs(10))?;
    let idle = usage(&pids);
    let idle_secs = idle_from.elapsed().as_secs_f64();
    println!(
        "scale: idle measured over {idle_secs:.1} s, from {} s after the initial sync",
        args.idle_wait
    );

    let mut times = Vec::with_capacity(args.changes);
    // The same change split: API write -> the control plane's new version -> every agent.
    let mut to_version = Vec::with_capacity(args.changes);
    let mut to_agents = Vec::with_capacity(args.changes);
    let mut change_bytes = Vec::with_capacity(args.changes);
    let mut peak = idle.clone();
    let churn_from = Instant::now();
    // RSS once a tenth of the changes are done, against the end: growth over the churn.
    let mut early_rss: Option<Vec<(f64, f64)>> = None;
    for k in 0..args.changes {
        if k == args.changes / 10 {
            early_rss = Some(usage(&pids));
        }
        let i = (k * 7919) % args.services;
        let before = head_version(&mut bed)?;
        let written = Instant::now();
        bed.kube()
            .apply("EndpointSlice", slice(i, args.backends, k + 1));
        // One change, one new version (nothing else writes to the API meanwhile).
        let version = loop {
            interrupt::check()?;
            if written.elapsed() > CHANGE_TIMEOUT {
                bail!("change {k} never became a version within {CHANGE_TIMEOUT:?}");
            }
            let v = head_version(&mut bed)?;
            if v > before {
                break v;
            }
            for (p, now) in peak.iter_mut().zip(usage(&pids)) {
                p.0 = p.0.max(now.0);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let versioned = written.elapsed();
        wait_applied(&mut bed, version, written)?;
        for (p, now) in peak.iter_mut().zip(usage(&pids)) {
            p.0 = p.0.max(now.0);
        }
        let total = written.elapsed();
        times.push(total.as_secs_f64() * 1000.0);
        to_version.push(versioned.as_secs_f64() * 1000.0);
        to_agents.push((total - versioned).as_secs_f64() * 1000.0);
        // What an agent at the version before got: the same (cached) reply every agent's
        // watch was answered with.
        let update = bed.control().get_json(&format!(
            "/v1/watch?after={}&delta=1&timeout=1s",
            version - 1
        ))?;
        if update["kind"] != "delta" {
            bail!("change {k} (version {version}) was not served as a delta: {update}");
        }
        change_bytes.push(update.to_string().len() + 1);
    }
    let churn_secs = churn_from.elapsed().as_secs_f64();
    let after = usage(&pids);
    let early_rss = early_rss.unwrap_or_else(|| idle.clone());
    times.sort_by(f64::total_cmp);
    to_version.sort_by(f64::total_cmp);
    to_agents.sort_by(f64::total_cmp);

    println!();
    println!(
        "| measure at {} services x {} backends, {} agents | value |",
        args.services, args.backends, args.agents
    );
    println!("|---|---|");
    println!(
        "| initial sync, API objects -> every agent's kernel | {:.2} s |",
        initial.as_secs_f64()
    );
    println!(
        "| one EndpointSlice change -> every agent's kernel, p50 / p99 / max over {} | {:.0} / {:.0} / {:.0} ms |",
        args.changes,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
    println!(
        "| of which: API write -> control plane version, p50 / p99 | {:.0} / {:.0} ms |",
        percentile(&to_version, 0.5),
        percentile(&to_version, 0.99)
    );
    println!(
        "| of which: version -> every agent's kernel (acked), p50 / p99 | {:.0} / {:.0} ms |",
        percentile(&to_agents, 0.5),
        percentile(&to_agents, 0.99)
    );
    // Each agent's own account: from a version's reply arriving to it being live in the
    // kernel tables (the follower's `took_us`), and of that the plan and kernel writes (the
    // runtime's `tables_us`).
    for (line, field, what) in [
        (
            "following control: version applied",
            "took_us",
            "agent apply of a one-service delta (reply in -> live in the kernel)",
        ),
        ("config taken", "tables_us", "of which plan + kernel writes"),
    ] {
        let ms = logged_ms(&mut bed, line, field, args.changes);
        if !ms.is_empty() {
            println!(
                "| {what}, p50 / p99 | {:.1} / {:.1} ms |",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99)
            );
        }
    }
    change_bytes.sort_unstable();
    println!(
        "| bytes per change per agent (the delta), p50 / max; the whole snapshot | {} / {} B; {:.1} MiB |",
        change_bytes[change_bytes.len() / 2],
        change_bytes[change_bytes.len() - 1],
        snapshot_bytes as f64 / 1_048_576.0
    );
    let n = args.agents;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let agents_idle_rss: Vec<f64> = idle[..n].iter().map(|u| u.0).collect();
    let agents_peak_rss: Vec<f64> = peak[..n].iter().map(|u| u.0).collect();
    let agents_idle_cpu: Vec<f64> = (0..n)
        .map(|i| (idle[i].1 - before[i].1) / idle_secs * 100.0)
        .collect();
    let agents_churn_cpu: Vec<f64> = (0..n)
        .map(|i| (after[i].1 - idle[i].1) / churn_secs * 100.0)
        .collect();
    println!(
        "| agent RSS idle / peak during churn (mean of {n}) | {:.0} / {:.0} MiB |",
        mean(&agents_idle_rss),
        mean(&agents_peak_rss)
    );
    let early: Vec<f64> = early_rss[..n].iter().map(|u| u.0).collect();
    let end: Vec<f64> = after[..n].iter().map(|u| u.0).collect();
    println!(
        "| agent RSS after {} changes / after all {} (mean of {n}) | {:.0} / {:.0} MiB |",
        args.changes / 10,
        args.changes,
        mean(&early),
        mean(&end)
    );
    println!(
        "| agent CPU idle / during churn (mean of {n}, % of a core) | {:.1} / {:.1} % |",
        mean(&agents_idle_cpu),
        mean(&agents_churn_cpu)
    );
    println!(
        "| control plane RSS idle / peak, CPU idle / churn | {:.0} / {:.0} MiB, {:.1} / {:.1} % |",
        idle[n].0,
        peak[n].0,
        (idle[n].1 - before[n].1) / idle_secs * 100.0,
        (after[n].1 - idle[n].1) / churn_secs * 100.0
    );
    println!("scale: cleaning up");
    drop(bed);
    Ok(())
}

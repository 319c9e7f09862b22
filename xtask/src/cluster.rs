//! `cargo xtask cluster`: the bpf-tests' cluster testbed to watch (bpf-tests/src/cluster,
//! docs/cluster.md). N nodes in two zones, each a network namespace with its own agent
//! following one control plane on the Kubernetes source (against the fake API server); a
//! client pod and a web pod per node; the Service `shop/web` (VIP 127.100.105.1:80) spread
//! over every node. Every client connects at a steady rate for `--seconds`; a third of the way in,
//! every pod of the last node disappears at once, and the other nodes ban its backend.
//!
//! A table per node, refreshed every second: the agent's pid, RSS and CPU, the config
//! version it runs, connects ok and failed (its own metrics), and its bans. Everything
//! (agents and pins, control plane, namespaces, cgroups, processes) is removed at the end,
//! on error and on Ctrl-C.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, NodeSpec, PodSpec};
use sockmesh_bpf_tests::{sum_metric, BackendMode, ConnectClient, RunningClient};

use crate::bench::proc_stats;
use crate::demo::screen::Screen;
use crate::{agent_build, interrupt, setup};

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 105, 1);
const SERVICE: &str = "shop-web-80";

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Nodes (2 to 8); the first half is zone-a, the rest zone-b.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How long the clients run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Connects per second of each client.
    #[arg(long, default_value_t = 20)]
    rate: u32,
}

/// (RSS in MiB, CPU seconds) of a process; zeros once it is gone.
fn usage(pid: u32) -> (f64, f64) {
    let rss = proc_stats::memory(pid).map_or(0.0, |m| m.rss_kib as f64 / 1024.0);
    (rss, proc_stats::cpu_seconds(pid).unwrap_or(0.0))
}

pub fn run(args: &ClusterArgs) -> Result<()> {
    if !(2..=8).contains(&args.nodes) {
        bail!("--nodes must be in 2..=8");
    }
    if !(1..=600).contains(&args.seconds) || !(1..=200).contains(&args.rate) {
        bail!("--seconds must be in 1..=600 and --rate in 1..=200");
    }
    interrupt::install();
    setup::run()?;
    let agent = std::fs::canonicalize(agent_build::run()?)?;
    // The harness finds the binaries through these, as under `cargo xtask test`.
    std::env::set_var("SOCKMESH_AGENT_BIN", &agent);
    std::env::set_var("SOCKMESH_CONTROL_BIN", agent_build::control_bin());
    std::env::set_var("SOCKMESH_CLI_BIN", agent_build::cli_bin());

    let half = args.nodes.div_ceil(2);
    let mut opts = ClusterOptions::new("xtask-cluster");
    opts.nodes = (0..args.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{}", i + 1),
            zone: if i < half { "zone-a" } else { "zone-b" }.to_owned(),
        })
        .collect();
    println!("cluster: starting {} nodes ...", args.nodes);
    let mut bed = Cluster::start(opts)?;
    bed.add_namespace("shop", true);
    let mut clients = Vec::new();
    let mut web = Vec::new();
    for node in 0..args.nodes {
        let n = node + 1;
        clients.push(bed.add_pod(PodSpec::new(
            "shop",
            &format!("client-{n}"),
            node,
            &[("app", "client")],
        ))?);
        let w = bed.add_pod(PodSpec::new(
            "shop",
            &format!("web-{n}"),
            node,
            &[("app", "web")],
        ))?;
        bed.serve(&w, 8080, BackendMode::Identify)?;
        web.push(w);
    }
    // Bans after 3 failed connects, and no cap, so the dead node's backend is out at once.
    bed.apply_policy(
        "shop",
        "web",
        json!({"outlier": {"consecutive_failures": 3, "max_banned_percent": 100}}),
    );
    let refs: Vec<&str> = web.iter().map(String::as_str).collect();
    bed.apply_service("shop", "web", VIP, 80, 8080, &refs)?;
    bed.sync("shop/web on every node", |c| {
        service_backends(c, SERVICE).len() == refs.len()
            && c["workloads"]
                .as_array()
                .is_some_and(|w| w.len() == 2 * refs.len())
    })?;
    // Callers are routed once their node's agent has found their cgroup.
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "cluster: {} nodes up, control plane at {}, Service shop/web {VIP}:80 -> {}",
        args.nodes,
        bed.control().url(),
        web.iter()
            .map(|w| format!("{} ({})", bed.pod(w).ip, bed.node(bed.pod(w).node).name))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let stop = bed.dir().join("stop-clients");
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let total = Duration::from_secs(args.seconds);
    let running: Vec<RunningClient> = clients
        .iter()
        .map(|c| {
            let pod = bed.pod(c);
            ConnectClient::new(SocketAddr::from((VIP, 80)), 10_000_000)
                .interval(interval)
                .timeout(Duration::from_secs(1))
                .max_time(total + Duration::from_secs(5))
                .until_file(&stop)
                .spawn(Some(pod.cgroup()), Some(pod.netns()))
        })
        .collect::<Result<_>>()?;
    let pids: Vec<u32> = (0..args.nodes)
        .map(|n| bed.agent(n).pid().unwrap_or(0))
        .collect();
    let mut screen = Screen::new();
    let started = Instant::now();
    let mut killed = false;
    let mut gone: Vec<String> = Vec::new();
    let mut last_cpu: Vec<(Instant, f64)> =
        pids.iter().map(|p| (Instant::now(), usage(*p).1)).collect();
    while started.elapsed() < total {
        interrupt::sleep(Duration::from_secs(1))?;
        if !killed && started.elapsed() >= total / 3 {
            let last = args.nodes - 1;
            let dead: Vec<String> = clients
                .iter()
                .chain(&web)
                .filter(|k| bed.pod(k).node == last)
                .cloned()
                .collect();
            bed.kill_pods(&dead);
            gone = dead;
            killed = true;
            screen.say(&format!(
                "{:>3} s: every pod of {} is gone (namespaces deleted); the other nodes ban its \
                 backend after failed connects",
                started.elapsed().as_secs(),
                bed.node(last).name
            ))?;
        }
        let mut frame = format!(
            "cluster: {:>3} s of {} | Service {SERVICE} via {VIP}:80\n",
            started.elapsed().as_secs(),
            args.seconds
        );
        let _ = writeln!(
            frame,
            "{:<8} {:<7} {:>7} {:>8} {:>6} {:>8} {:>7} {:>6}  banned",
            "node", "zone", "pid", "RSS MiB", "CPU %", "applied", "ok", "failed"
        );
        for (n, pid) in pids.iter().enumerate() {
            let (rss, cpu) = usage(*pid);
            let (at, before) = last_cpu[n];
            let cpu_pct = (cpu - before) / at.elapsed().as_secs_f64().max(0.001) * 100.0;
            last_cpu[n] = (Instant::now(), cpu);
            let agent = bed.agent(n);
            let version = agent
                .status()
                .ok()
                .and_then(|s| s["config"]["applies"].as_u64())
                .map_or("-".to_owned(), |v| v.to_string());
            let (ok, failed) = agent.metrics_text().map_or((0.0, 0.0), |t| {
                let ok = sum_metric(&t, "sockmesh_connections_total", &[("result", "ok")]);
                let all = sum_metric(&t, "sockmesh_connections_total", &[]);
                let reset = sum_metric(&t, "sockmesh_connections_total", &[("result", "reset")]);
                (ok, all - ok - reset)
            });
            let bans = agent
                .get_json("/v1/bans")
                .ok()
                .and_then(|b| b.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|b| b["backend"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
                .join(", ");
            let spec = bed.node(n);
            let _ = writeln!(
                frame,
                "{:<8} {:<7} {:>7} {:>8.1} {:>6.1} {:>8} {:>7} {:>6}  {}",
                spec.name, spec.zone, pid, rss, cpu_pct, version, ok, failed, bans
            );
        }
        screen.frame(&frame)?;
    }
    screen.keep();
    std::fs::write(&stop, b"")?;
    println!();
    for (c, r) in clients.iter().zip(running) {
        if gone.contains(c) {
            let _ = r.wait();
            println!("cluster: {c}: its pod was deleted with its node");
            continue;
        }
        match r.wait() {
            Ok(report) => {
                let total = report.results.len();
                let failed = report.failures().len();
                println!(
                    "cluster: {c}: {total} connects, {failed} failed ({:.2} % ok)",
                    100.0 * (total - failed) as f64 / total.max(1) as f64
                );
            }
            Err(e) => println!("cluster: {c}: {e:#}"),
        }
    }
    println!("cluster: cleaning up (agents, pins, control plane, namespaces, cgroups)");
    drop(bed);
    Ok(())
}

//! How fast the testbed's cluster converges, and what its agents cost (src/cluster): 50
//! EndpointSlice changes, each timed from the API server's write to the moment every node's
//! agent runs the version that carries it (its `/status` fingerprint, set once the kernel
//! tables are written); plus each agent's RSS and CPU time over the run. Numbers are printed
//! for the record; the assertions are only that every change arrives, everywhere, within
//! generous bounds, and that an idle agent is not busy.
//!
//! VIP 127.100.104.1; backends on their pods' addresses.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::BackendMode;

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 104, 1);
const CHANGES: usize = 50;
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// (RSS in KiB, user+system CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    (rss, ticks / hz)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn an_endpointslice_change_reaches_every_nodes_kernel_tables() {
    let mut bed = Cluster::start(ClusterOptions::new("converge")).expect("testbed");
    bed.add_namespace("shop", true);
    let mut pods = Vec::new();
    for (i, node) in [0, 1, 2, 1, 2].iter().enumerate() {
        let key = bed
            .add_pod(PodSpec::new("shop", &format!("web-{i}"), *node, &[]))
            .unwrap();
        bed.serve(&key, 8080, BackendMode::Identify).unwrap();
        pods.push(key);
    }
    let all: Vec<&str> = pods.iter().map(String::as_str).collect();
    bed.apply_service("shop", "web", VIP, 80, 8080, &all)
        .unwrap();
    bed.sync("shop-web-80", |c| {
        service_backends(c, "shop-web-80").len() == all.len()
    })
    .unwrap();
    let pids: Vec<u32> = (0..bed.node_count())
        .map(|n| bed.agent(n).pid().unwrap())
        .collect();
    let before: Vec<(u64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let idle: Vec<(u64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let idle_secs = idle_from.elapsed().as_secs_f64();

    // Change k: endpoint k % 5 leaves (or comes back), alternately.
    let mut times = Vec::new();
    let churn_from = Instant::now();
    let mut out: Option<usize> = None;
    for k in 0..CHANGES {
        let members: Vec<&str> = match out {
            None => {
                let leave = k % all.len();
                out = Some(leave);
                all.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != leave)
                    .map(|(_, p)| *p)
                    .collect()
            }
            Some(_) => {
                out = None;
                all.clone()
            }
        };
        let want = members.len();
        let written = Instant::now();
        bed.set_endpoints("shop", "web", 8080, &members).unwrap();
        let snapshot = bed
            .control()
            .wait_snapshot("the change", CHANGE_TIMEOUT, |s| {
                service_backends(&s["config"], "shop-web-80").len() == want
            })
            .unwrap();
        let fingerprint = snapshot["fingerprint"].as_str().unwrap().to_owned();
        let mut pending: Vec<usize> = (0..bed.node_count()).collect();
        while !pending.is_empty() {
            assert!(
                written.elapsed() < CHANGE_TIMEOUT,
                "change {k}: nodes {pending:?} still not running {fingerprint} after \
                 {CHANGE_TIMEOUT:?}"
            );
            pending.retain(|n| {
                let s = bed.agent(*n).status().unwrap();
                s["config"]["fingerprint"].as_str() != Some(fingerprint.as_str())
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        times.push(written.elapsed().as_secs_f64() * 1000.0);
    }
    let churn_secs = churn_from.elapsed().as_secs_f64();
    let after: Vec<(u64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let control = bed.control().status().unwrap();

    times.sort_by(f64::total_cmp);
    println!(
        "EndpointSlice write -> all {} nodes' kernel tables, {CHANGES} changes: p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms (control plane debounce 50 ms; version {})",
        bed.node_count(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        control["version"]
    );
    for (n, pid) in pids.iter().enumerate() {
        let idle_cpu = (idle[n].1 - before[n].1) / idle_secs * 100.0;
        let churn_cpu = (after[n].1 - idle[n].1) / churn_secs * 100.0;
        println!(
            "node-{}: agent pid {pid} RSS {} KiB idle -> {} KiB after churn; CPU idle {:.2} % \
             of a core, during churn {:.2} %",
            n + 1,
            idle[n].0,
            after[n].0,
            idle_cpu,
            churn_cpu
        );
        assert!(
            idle_cpu < 20.0,
            "node-{}: an idle agent used {idle_cpu:.1} % of a core",
            n + 1
        );
    }
    assert_eq!(times.len(), CHANGES);
}

//! A rolling upgrade across a pin-layout change, node by node, the way Cilium rolls its agent
//! (src/cluster): each node's agent is stopped, its pins become another layout version's (what
//! a previous build leaves), and the new agent attaches its own set beside them and retires
//! the old one. Meanwhile pods on nodes 1 and 2 hold long-lived connections to echo backends
//! on other nodes and keep making new connects: none breaks, none fails.
//!
//! VIPs 127.100.103.x; backends on their pods' addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::cluster::hold::Holder;
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::{wait_gone, wait_workloads, BackendMode, ConnectClient, RunningClient};
use sockmesh_common::LAYOUT_VERSION;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 103, 1);
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 103, 2);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const HELD: usize = 8;

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn agents_upgraded_node_by_node_break_no_connection_and_fail_no_connect() {
    let mut bed = Cluster::start(ClusterOptions::new("upgrade")).expect("testbed");
    bed.add_namespace("shop", true);
    let clients: Vec<String> = [0, 1]
        .iter()
        .map(|n| {
            bed.add_pod(PodSpec::new(
                "shop",
                &format!("client-{}", n + 1),
                *n,
                &[("app", "client")],
            ))
            .unwrap()
        })
        .collect();
    let mut web = Vec::new();
    let mut echo = Vec::new();
    for node in [1, 2] {
        let w = bed
            .add_pod(PodSpec::new(
                "shop",
                &format!("web-{}", node + 1),
                node,
                &[],
            ))
            .unwrap();
        bed.serve(&w, TARGET, BackendMode::Identify).unwrap();
        web.push(w);
        let e = bed
            .add_pod(PodSpec::new(
                "shop",
                &format!("echo-{}", node + 1),
                node,
                &[],
            ))
            .unwrap();
        bed.serve(&e, TARGET, BackendMode::Echo).unwrap();
        echo.push(e);
    }
    bed.apply_service("shop", "web", WEB_VIP, PORT, TARGET, &refs(&web))
        .unwrap();
    bed.apply_service("shop", "echo", ECHO_VIP, PORT, TARGET, &refs(&echo))
        .unwrap();
    bed.sync("both services", |c| {
        service_backends(c, "shop-web-80").len() == 2
            && service_backends(c, "shop-echo-80").len() == 2
    })
    .unwrap();
    for key in &clients {
        let node = bed.pod(key).node;
        wait_workloads(
            bed.agent(node),
            &[&key.replace('/', "-")],
            Duration::from_secs(20),
        )
        .unwrap();
    }

    // Long-lived connections and a steady stream of new connects from both client pods.
    let mut holders = Vec::new();
    let mut steady: Vec<RunningClient> = Vec::new();
    let stop_steady = bed.dir().join("stop-steady");
    for (i, key) in clients.iter().enumerate() {
        let pod = bed.pod(key);
        holders.push(
            Holder::start(
                SocketAddr::from((ECHO_VIP, PORT)),
                HELD,
                Duration::from_millis(200),
                false,
                pod.cgroup(),
                pod.netns(),
                &bed.dir().join(format!("stop-hold-{i}")),
            )
            .unwrap(),
        );
        steady.push(
            ConnectClient::new(SocketAddr::from((WEB_VIP, PORT)), 1_000_000)
                .interval(Duration::from_millis(10))
                .timeout(Duration::from_secs(2))
                .max_time(Duration::from_secs(240))
                .until_file(&stop_steady)
                .spawn(Some(pod.cgroup()), Some(pod.netns()))
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    for node in 0..bed.node_count() {
        let started = Instant::now();
        bed.stop_agent(node).unwrap();
        let root = bed.node_bpffs(node).to_path_buf();
        let current = root.join(format!("v{LAYOUT_VERSION}"));
        let old = root.join(format!("v{}", LAYOUT_VERSION - 1));
        std::fs::rename(&current, &old).expect("renaming a pin directory on bpffs");
        std::thread::sleep(Duration::from_millis(500));
        bed.restart_agent(node).unwrap();
        let status = bed.agent(node).status().unwrap();
        assert_eq!(status["adopted"], false, "node {}: {status:#}", node + 1);
        wait_gone(&old, Duration::from_secs(20));
        bed.sync("the upgraded agent", |_| true).unwrap();
        println!(
            "node {} upgraded in {:.2} s",
            node + 1,
            started.elapsed().as_secs_f64()
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    std::fs::write(&stop_steady, b"").unwrap();
    for (key, client) in clients.iter().zip(steady) {
        let report = client.wait().unwrap();
        println!(
            "{key}: {} new connects across the upgrade, {} failed",
            report.results.len(),
            report.failures().len()
        );
        report.assert_all_ok(&format!("{key}: new connects across the upgrade"));
        assert!(report.results.len() >= 200, "{key}: too few connects");
    }
    for (key, holder) in clients.iter().zip(holders) {
        let report = holder.stop().unwrap();
        let exchanges: u64 = report.connections.iter().map(|c| c.exchanges).sum();
        println!(
            "{key}: {} long-lived connections, {} ended, {exchanges} exchanges over {:.1} s",
            report.connections.len(),
            report.ended().len(),
            report.elapsed_s
        );
        assert!(
            report.ended().is_empty(),
            "{key}: connections broke during the upgrade: {:#?}",
            report.ended()
        );
        assert_eq!(report.alive().len(), HELD);
        for c in report.alive() {
            assert!(
                c.backend.is_some() && c.exchanges > 10,
                "{key}: a held connection did not work: {c:?}"
            );
        }
    }
}

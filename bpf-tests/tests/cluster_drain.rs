//! Drain that reaches pods (src/cluster): connections held by sockets in a pod's own network
//! namespace, to a backend on another node, are closed after the drain grace when that
//! backend is banned, and when it is removed from its EndpointSlice; the pod's client
//! reconnects through the VIP to a healthy backend.
//!
//! The backends' listeners can stop while their accepted connections live on (new connects
//! are refused, held ones still echo), which is what gets one banned without touching what
//! the pod holds. VIPs 127.100.106.x; backends on their pods' addresses.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use sockmesh_bpf_tests::cluster::hold::{HoldReport, Holder};
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::health_admin::bans_of;
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::{sum_metric, wait_workloads, ConnectClient};

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 106, 1);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const SERVICE: &str = "shop-echo-80";
const GRACE: Duration = Duration::from_secs(2);
/// Far above the grace plus the agent's tick: only a drain that never comes fails the wait.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
const HELD: usize = 4;

fn by_backend(report: &HoldReport) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &report.connections {
        let e = out
            .entry(c.backend.clone().unwrap_or_else(|| "none".into()))
            .or_default();
        if c.error.is_some() {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    out
}

fn drained(bed: &mut Cluster, node: usize) -> f64 {
    bed.agent(node)
        .metrics_text()
        .map(|t| sum_metric(&t, "sockmesh_drained_connections_total", &[]))
        .unwrap_or(0.0)
}

fn wait_drained(bed: &mut Cluster, node: usize, at_least: f64) {
    let deadline = Instant::now() + DRAIN_WAIT;
    while drained(bed, node) < at_least {
        assert!(
            Instant::now() < deadline,
            "node {}: sockmesh_drained_connections_total still {} after {DRAIN_WAIT:?}, want >= \
             {at_least}\n{}",
            node + 1,
            drained(bed, node),
            bed.agent(node).log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn connections_pods_hold_are_drained_after_a_ban_and_after_a_removal() {
    let mut bed = Cluster::start(ClusterOptions::new("drain")).expect("testbed");
    bed.add_namespace("shop", true);
    let client = bed
        .add_pod(PodSpec::new("shop", "client", 0, &[("app", "client")]))
        .unwrap();
    let prober = bed
        .add_pod(PodSpec::new("shop", "prober", 0, &[("app", "prober")]))
        .unwrap();
    let mut backends = Vec::new();
    let mut addrs = Vec::new();
    for (name, node) in [("echo-2", 1), ("echo-3", 2), ("echo-3b", 2)] {
        let key = bed.add_pod(PodSpec::new("shop", name, node, &[])).unwrap();
        let addr = SocketAddr::from((bed.pod(&key).ip, TARGET));
        backends
            .push(SwitchBackends::start_in_netns(&bed.pod(&key).netns().path(), &[addr]).unwrap());
        addrs.push((key, addr.to_string()));
    }
    bed.apply_policy(
        "shop",
        "echo",
        json!({
            "lb": "round_robin",
            "drain_grace": "2s",
            "outlier": {"consecutive_failures": 3, "base_ban": "60s", "max_banned_percent": 100},
            "circuit": {"min_success_ratio": 0}
        }),
    );
    let keys: Vec<&str> = addrs.iter().map(|(k, _)| k.as_str()).collect();
    bed.apply_service("shop", "echo", VIP, PORT, TARGET, &keys)
        .unwrap();
    bed.sync("shop-echo-80 with its policy", |c| {
        service_backends(c, SERVICE).len() == 3 && c["services"][0]["drain_grace"] == "2s"
    })
    .unwrap();
    wait_workloads(
        bed.agent(0),
        &["shop-client", "shop-prober"],
        Duration::from_secs(20),
    )
    .unwrap();
    let (victim, victim_addr) = (&addrs[0].0, addrs[0].1.clone());

    // 1. Banned: echo-2 stops accepting (its held connections still echo); the prober's
    // refused connects get it banned on node 1; after the grace its held connections are
    // closed inside the client pod's namespace and reopened elsewhere.
    let pod = bed.pod(&client);
    let holder = Holder::start(
        SocketAddr::from((VIP, PORT)),
        HELD,
        Duration::from_millis(200),
        true,
        pod.cgroup(),
        pod.netns(),
        &bed.dir().join("stop-hold-1"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = drained(&mut bed, 0);
    backends[0].stop(0);
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let banned = bans_of(bed.agent(0), SERVICE)
            .unwrap()
            .iter()
            .any(|b| b["backend"] == victim_addr.as_str());
        if banned {
            break;
        }
        assert!(Instant::now() < deadline, "{victim} never banned on node 1");
        let p = bed.pod(&prober);
        // Echo backends never answer HTTP: the healthy ones time out here, which is fine;
        // the victim refuses, which is the point.
        let _ = ConnectClient::new(SocketAddr::from((VIP, PORT)), 6)
            .timeout(Duration::from_millis(300))
            .run(Some(p.cgroup()), Some(p.netns()));
    }
    let banned_at = Instant::now();
    wait_drained(&mut bed, 0, before + 1.0);
    let drained_after = banned_at.elapsed();
    // Time for the client to see the close and reconnect.
    std::thread::sleep(Duration::from_secs(2));
    let report = holder.stop().unwrap();
    let spread = by_backend(&report);
    println!(
        "ban: drained {:.1} s after the ban was seen (grace {GRACE:?}); held connections by \
         backend (alive, ended): {spread:?}",
        drained_after.as_secs_f64()
    );
    let ended = report.ended();
    assert!(!ended.is_empty(), "nothing was closed: {report:#?}");
    for c in &ended {
        assert_eq!(
            c.backend.as_deref(),
            Some(victim_addr.as_str()),
            "only connections to the banned backend may end: {c:?}"
        );
    }
    assert_eq!(report.alive().len(), HELD, "{report:#?}");
    for c in report.alive() {
        assert_ne!(c.backend.as_deref(), Some(victim_addr.as_str()), "{c:?}");
        assert!(c.exchanges > 0, "{c:?}");
    }

    // 2. Removed: echo-3b leaves the EndpointSlice; its held connections are closed after
    // the grace and reopened to echo-3 (echo-2 is still banned).
    let (gone, gone_addr) = (&addrs[2].0, addrs[2].1.clone());
    let pod = bed.pod(&client);
    let holder = Holder::start(
        SocketAddr::from((VIP, PORT)),
        HELD,
        Duration::from_millis(200),
        true,
        pod.cgroup(),
        pod.netns(),
        &bed.dir().join("stop-hold-2"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = drained(&mut bed, 0);
    bed.set_endpoints("shop", "echo", TARGET, &[&addrs[0].0, &addrs[1].0])
        .unwrap();
    bed.sync("echo-3b removed", |c| {
        !service_backends(c, SERVICE).contains(&gone_addr)
    })
    .unwrap();
    let removed_at = Instant::now();
    wait_drained(&mut bed, 0, before + 1.0);
    let drained_after = removed_at.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let report = holder.stop().unwrap();
    let spread = by_backend(&report);
    println!(
        "removal of {gone}: drained {:.1} s after every agent ran the removal (grace \
         {GRACE:?}); held connections by backend (alive, ended): {spread:?}",
        drained_after.as_secs_f64()
    );
    let ended = report.ended();
    assert!(!ended.is_empty(), "nothing was closed: {report:#?}");
    for c in &ended {
        assert_eq!(c.backend.as_deref(), Some(gone_addr.as_str()), "{c:?}");
    }
    assert_eq!(report.alive().len(), HELD, "{report:#?}");
    for c in report.alive() {
        assert_eq!(c.backend.as_deref(), Some(addrs[1].1.as_str()), "{c:?}");
    }
    drop(backends);
}

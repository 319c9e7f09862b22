//! Locality from the cluster (src/cluster): zones come from the Nodes'
//! `topology.kubernetes.io/zone` labels, pods inherit their node's, backends take theirs from
//! the EndpointSlice. A Service with `locality:` (set by its MeshPolicy) keeps callers in zone
//! a on zone-a backends while zone a is healthy, fails them over to zone b when zone a's
//! backends are banned, and brings them back when those return; callers in zone b stay on
//! zone b throughout. No `--zone` is passed to any agent, as in the DaemonSet.
//!
//! VIP 127.100.101.1; backends on their pods' addresses.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::health_admin::{bans_of, wait_until};
use sockmesh_bpf_tests::{wait_workloads, BackendMode, ClientReport, ConnectClient};

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 101, 1);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const SERVICE: &str = "shop-web-80";
const BAN_TIMEOUT: Duration = Duration::from_secs(60);

fn connects(bed: &Cluster, pod: &str, n: usize) -> ClientReport {
    let pod = bed.pod(pod);
    ConnectClient::new(SocketAddr::from((VIP, PORT)), n)
        .timeout(Duration::from_secs(1))
        .run(Some(pod.cgroup()), Some(pod.netns()))
        .unwrap()
}

fn answered(report: &ClientReport) -> BTreeSet<String> {
    report.backend_counts().into_keys().collect()
}

fn addr_of(bed: &Cluster, pod: &str) -> String {
    SocketAddr::from((bed.pod(pod).ip, TARGET)).to_string()
}

#[test]
fn callers_follow_their_nodes_zone_and_fail_over() {
    let mut bed = Cluster::start(ClusterOptions::new("locality")).expect("testbed");
    bed.add_namespace("shop", true);
    // node-1 and node-2 are zone-a, node-3 zone-b.
    let near = bed
        .add_pod(PodSpec::new("shop", "client-a", 0, &[("app", "client")]))
        .unwrap();
    let far = bed
        .add_pod(PodSpec::new("shop", "client-b", 2, &[("app", "client")]))
        .unwrap();
    let mut zone_a = Vec::new();
    let mut zone_b = Vec::new();
    for (name, node) in [("web-a1", 0), ("web-a2", 1), ("web-b1", 2), ("web-b2", 2)] {
        let key = bed
            .add_pod(PodSpec::new("shop", name, node, &[("app", "web")]))
            .unwrap();
        bed.serve(&key, TARGET, BackendMode::Identify).unwrap();
        if node < 2 {
            zone_a.push(key);
        } else {
            zone_b.push(key);
        }
    }
    let all: Vec<&str> = zone_a.iter().chain(&zone_b).map(String::as_str).collect();
    bed.apply_policy(
        "shop",
        "web",
        json!({
            "lb": "round_robin",
            "locality": {"prefer_zone": true, "min_healthy_percent": 50},
            "outlier": {"consecutive_failures": 5, "base_ban": "1s", "max_ban": "2s",
                        "max_banned_percent": 100}
        }),
    );
    bed.apply_service("shop", "web", VIP, PORT, TARGET, &all)
        .unwrap();
    bed.sync("shop-web-80 with its policy and both clients", |c| {
        service_backends(c, SERVICE).len() == 4
            && c["services"][0]["locality"].is_object()
            && c["workloads"].as_array().is_some_and(|w| w.len() == 6)
    })
    .unwrap();
    wait_workloads(bed.agent(0), &["shop-client-a"], Duration::from_secs(20)).unwrap();
    wait_workloads(bed.agent(2), &["shop-client-b"], Duration::from_secs(20)).unwrap();
    let a: BTreeSet<String> = zone_a.iter().map(|k| addr_of(&bed, k)).collect();
    let b: BTreeSet<String> = zone_b.iter().map(|k| addr_of(&bed, k)).collect();

    // All healthy: each caller stays in its node's zone.
    let r = connects(&bed, &near, 100);
    r.assert_all_ok("zone a caller, all healthy");
    assert_eq!(answered(&r), a, "zone a caller must stay in zone a");
    let r = connects(&bed, &far, 100);
    r.assert_all_ok("zone b caller, all healthy");
    assert_eq!(answered(&r), b, "zone b caller must stay in zone b");

    // Zone a's backends die: node-1's agent bans them (the refusals its caller sees), and
    // the caller fails over to zone b.
    for key in &zone_a {
        bed.stop_serving(key);
    }
    let mut failed_while_banning = 0;
    let deadline = std::time::Instant::now() + BAN_TIMEOUT;
    loop {
        let banned = bans_of(bed.agent(0), SERVICE).unwrap();
        let banned: BTreeSet<String> = banned
            .iter()
            .filter_map(|b| b["backend"].as_str().map(str::to_owned))
            .collect();
        if a.is_subset(&banned) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "zone a not banned on node-1 after {BAN_TIMEOUT:?}: bans {banned:?}"
        );
        failed_while_banning += connects(&bed, &near, 10).failures().len();
    }
    println!("zone a banned on node-1 after {failed_while_banning} refused connects");
    assert!(
        failed_while_banning <= 2 * 5,
        "two dead backends, consecutive_failures 5: at most 10 refusals, saw \
         {failed_while_banning}"
    );
    let r = connects(&bed, &near, 100);
    r.assert_all_ok("zone a caller, zone a banned");
    assert_eq!(answered(&r), b, "zone a caller must fail over to zone b");

    // Zone a returns: the probes pass, the bans end, the caller is back home.
    for key in &zone_a {
        bed.serve(key, TARGET, BackendMode::Identify).unwrap();
    }
    wait_until(
        bed.agent(0),
        "zone a unbanned on node-1",
        BAN_TIMEOUT,
        |agent| Ok(bans_of(agent, SERVICE)?.is_empty().then_some(())),
    )
    .unwrap();
    let r = connects(&bed, &near, 100);
    r.assert_all_ok("zone a caller, zone a back");
    assert_eq!(answered(&r), a, "zone a caller must return to zone a");
    // The zone b caller never left.
    let r = connects(&bed, &far, 100);
    r.assert_all_ok("zone b caller at the end");
    assert_eq!(answered(&r), b);
}

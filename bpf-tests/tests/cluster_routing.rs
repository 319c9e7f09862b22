//! The cluster testbed (src/cluster): three nodes in two zones, pods in network namespaces
//! of their own, one control plane on the Kubernetes source, an agent per node. A pod on
//! node 1 reaches a Service whose endpoints are on nodes 2 and 3, spread by weight, and
//! `getpeername()` inside the pod says the VIP.
//!
//! VIPs 127.100.100.x; backends listen on their pods' addresses (198.18.<node>.<10+k>).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::{
    assert_shares, binomial_tolerance, wait_workloads, BackendMode, ConnectClient,
};

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 100, 1);
const PORT: u16 = 80;
const TARGET: u16 = 8080;

#[test]
fn a_pod_reaches_endpoints_on_other_nodes_through_the_vip() {
    let mut bed = Cluster::start(ClusterOptions::new("routing")).expect("testbed");
    bed.add_namespace("shop", true);
    let client = bed
        .add_pod(PodSpec::new("shop", "client", 0, &[("app", "client")]))
        .unwrap();
    let mut web = Vec::new();
    for (name, node) in [("web-a", 1), ("web-b1", 2), ("web-b2", 2)] {
        let key = bed
            .add_pod(PodSpec::new("shop", name, node, &[("app", "web")]))
            .unwrap();
        bed.serve(&key, TARGET, BackendMode::Identify).unwrap();
        web.push(key);
    }
    let refs: Vec<&str> = web.iter().map(String::as_str).collect();
    bed.apply_service("shop", "web", VIP, PORT, TARGET, &refs)
        .unwrap();
    let snapshot = bed
        .sync("shop-web-80 with 3 backends and the client workload", |c| {
            service_backends(c, "shop-web-80").len() == 3
                && c["workloads"]
                    .as_array()
                    .is_some_and(|w| w.iter().any(|w| w["name"] == "shop-client"))
        })
        .unwrap();
    let config = &snapshot["config"];
    // The client's workload carries its node and the node's zone.
    let workload = config["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "shop-client")
        .unwrap();
    assert_eq!(workload["node"], "node-1", "{workload:#}");
    assert_eq!(workload["zone"], "zone-a", "{workload:#}");
    // Only node 1's agent resolves the client's cgroup: the pod is its.
    wait_workloads(bed.agent(0), &["shop-client"], Duration::from_secs(20)).unwrap();

    let pod = bed.pod(&client);
    let report = ConnectClient::new(SocketAddr::from((VIP, PORT)), 600)
        .run(Some(pod.cgroup()), Some(pod.netns()))
        .unwrap();
    report.assert_all_ok("pod on node 1 -> VIP");
    for r in &report.results {
        assert_eq!(r.peer.as_deref(), Some("127.100.100.1:80"), "{r:?}");
    }
    let counts = report.backend_counts();
    let by_backend: Vec<u64> = web
        .iter()
        .map(|k| {
            let addr = bed.pod(k).backends().unwrap().addrs()[0];
            counts.get(&addr.to_string()).copied().unwrap_or(0)
        })
        .collect();
    println!("600 connects from node 1: {by_backend:?} (web-a on node 2, web-b1/b2 on node 3)");
    // Weight 1 each (EndpointSlice endpoints): a third each, so node 3 gets two thirds.
    assert_shares(
        "cross-node spread",
        &by_backend,
        &[1, 1, 1],
        binomial_tolerance(600, 4.0),
    );
    // The kernel delivered them: the backends' own accept counters agree.
    let accepted: Vec<u64> = web
        .iter()
        .map(|k| bed.pod(k).backends().unwrap().total_accepts())
        .collect();
    assert_eq!(accepted, by_backend);
}

/// The same across nodes over IPv6: a dual-stack Service's IPv6 ClusterIP (here
/// `fd00:100::1`, routed nowhere in the testbed) is a mesh service of its own
/// (`shop-web6-80-ipv6`), its backends the pods' IPv6 endpoints.
#[test]
fn a_pod_reaches_endpoints_on_other_nodes_over_ipv6() {
    let vip6: std::net::Ipv6Addr = "fd00:100::1".parse().unwrap();
    let vip4 = Ipv4Addr::new(127, 100, 100, 2);
    let mut bed = Cluster::start(ClusterOptions::new("routing6")).expect("testbed");
    bed.add_namespace("shop", true);
    let client = bed
        .add_pod(PodSpec::new("shop", "client", 0, &[("app", "client")]))
        .unwrap();
    let mut web = Vec::new();
    for (name, node) in [("web-a", 1), ("web-b", 2)] {
        let key = bed
            .add_pod(PodSpec::new("shop", name, node, &[("app", "web")]))
            .unwrap();
        bed.serve(&key, TARGET, BackendMode::Identify).unwrap();
        web.push(key);
    }
    let refs: Vec<&str> = web.iter().map(String::as_str).collect();
    bed.apply_service_dual("shop", "web6", vip4, Some(vip6), PORT, TARGET, &refs)
        .unwrap();
    bed.sync("both families of shop/web6", |c| {
        service_backends(c, "shop-web6-80").len() == 2
            && service_backends(c, "shop-web6-80-ipv6").len() == 2
    })
    .unwrap();
    wait_workloads(bed.agent(0), &["shop-client"], Duration::from_secs(20)).unwrap();

    let pod = bed.pod(&client);
    let report = ConnectClient::new(SocketAddr::from((vip6, PORT)), 400)
        .run(Some(pod.cgroup()), Some(pod.netns()))
        .unwrap();
    report.assert_all_ok("pod on node 1 -> IPv6 VIP");
    for r in &report.results {
        assert_eq!(r.peer.as_deref(), Some("[fd00:100::1]:80"), "{r:?}");
    }
    let counts = report.backend_counts();
    let by_backend: Vec<u64> = web
        .iter()
        .map(|k| {
            let addr = SocketAddr::from((bed.pod(k).ip6, TARGET));
            counts.get(&addr.to_string()).copied().unwrap_or(0)
        })
        .collect();
    println!("400 IPv6 connects from node 1: {by_backend:?} (web-a on node 2, web-b on node 3)");
    assert_shares(
        "cross-node IPv6 spread",
        &by_backend,
        &[1, 1],
        binomial_tolerance(400, 4.0),
    );
}

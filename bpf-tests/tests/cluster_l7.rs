//! The cluster testbed (src/cluster) with an http service: a MeshPolicy says
//! `protocol: http` with a header route, and a pod on node 1 calls the Service's ClusterIP.
//! Node 1's kernel sends the pod's connection to node 1's proxy on the node's address (as
//! deploy/ runs it, `--proxy-listen=$(POD_IP):15001`), which learns the service and the
//! calling pod from the kernel's origin map and sends each request to a pod on node 2 or 3.
//! When the route's pods are gone from the endpoints, the control plane leaves the route out
//! (the service stays in the mesh) and its requests go to the rest of the service.
//!
//! VIP 127.100.100.40; backends are python HTTP servers on their pods' addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient, HttpReport};
use sockmesh_bpf_tests::{sum_metric, wait_workloads};

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 100, 40);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const SERVICE: &str = "shop-web-80";
const WAIT: Duration = Duration::from_secs(60);

fn http_service(config: &Value) -> Option<&Value> {
    config["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == SERVICE && s["protocol"] == "http")
}

fn routes(config: &Value) -> usize {
    http_service(config)
        .and_then(|s| s["http"]["routes"].as_array())
        .map_or(0, Vec::len)
}

/// Requests the proxy of node 1 answered for the client pod, with `code`.
fn proxied(bed: &Cluster, code: &str) -> f64 {
    sum_metric(
        &bed.proxy_metrics(0),
        "sockmesh_requests_total",
        &[
            ("service", SERVICE),
            ("caller", "shop-client"),
            ("code", code),
        ],
    )
}

#[test]
fn a_pod_reaches_an_http_service_through_its_nodes_proxy() {
    let mut bed = Cluster::start(ClusterOptions::new("l7")).expect("testbed");
    bed.add_namespace("shop", true);
    let client = bed
        .add_pod(PodSpec::new("shop", "client", 0, &[("app", "client")]))
        .unwrap();
    let stable = bed
        .add_pod(PodSpec::new(
            "shop",
            "web-stable",
            1,
            &[("app", "web"), ("track", "stable")],
        ))
        .unwrap();
    let canary = bed
        .add_pod(PodSpec::new(
            "shop",
            "web-canary",
            2,
            &[("app", "web"), ("track", "canary")],
        ))
        .unwrap();
    let serve = |key: &str| {
        let pod = bed.pod(key);
        HttpBackends::start_in(
            &pod.netns().path(),
            &[(SocketAddr::from((pod.ip, TARGET)), "ok")],
        )
        .unwrap()
    };
    let (stable_http, canary_http) = (serve(&stable), serve(&canary));

    bed.apply_policy(
        "shop",
        "web",
        json!({"protocol": "http",
               "http": {"timeout": "5s",
                        "routes": [{"match": {"headers": {"x-canary": "1"}},
                                    "to": {"track": "canary"}}]}}),
    );
    bed.apply_service("shop", "web", VIP, PORT, TARGET, &[&stable, &canary])
        .unwrap();
    bed.sync("shop-web-80 as an http service with its route", |c| {
        http_service(c).is_some() && service_backends(c, SERVICE).len() == 2 && routes(c) == 1
    })
    .unwrap();
    wait_workloads(bed.agent(0), &["shop-client"], WAIT).unwrap();
    bed.wait_proxy(0, "node 1's proxy has its targets", WAIT, |t| {
        sum_metric(t, "sockmesh_proxy_targets_generation", &[]) >= 1.0
    })
    .unwrap();

    let vip = SocketAddr::from((VIP, PORT));
    let totals = || [&stable_http, &canary_http].map(|b| b.totals().unwrap().iter().sum::<u64>());

    // Requests without the header: the whole service, across nodes 2 and 3.
    let plain = run(&bed, &client, HttpClient::get(vip, 100));
    assert_eq!(plain.code(200), 100, "{:?}", plain.codes);
    let after_plain = totals();
    println!(
        "100 plain GETs from node 1: stable {}, canary {}",
        after_plain[0], after_plain[1]
    );
    assert_eq!(after_plain[0] + after_plain[1], 100);

    // The header route: every one to the canary pod on node 3, none to the stable one.
    let routed = run(
        &bed,
        &client,
        HttpClient::get(vip, 50).header("x-canary", "1"),
    );
    assert_eq!(routed.code(200), 50, "{:?}", routed.codes);
    let after_routed = totals();
    assert_eq!(
        after_routed[0], after_plain[0],
        "no routed request to stable"
    );
    assert_eq!(after_routed[1], after_plain[1] + 50);

    // Node 1's proxy counted each, with the calling pod's workload from the kernel.
    assert_eq!(proxied(&bed, "200"), 150.0, "{}", bed.proxy_metrics(0));
    let generation = sum_metric(
        &bed.proxy_metrics(0),
        "sockmesh_proxy_targets_generation",
        &[],
    );

    // The canary pod leaves the endpoints (scaled to zero): the route is left out, the
    // service stays, and routed requests take the whole service (now the stable pod).
    bed.set_endpoints("shop", "web", TARGET, &[&stable])
        .unwrap();
    bed.sync("the canary gone and its route left out", |c| {
        http_service(c).is_some() && service_backends(c, SERVICE).len() == 1 && routes(c) == 0
    })
    .unwrap();
    let log = bed.control().log();
    assert!(
        log.contains("http.routes[0] (to track=canary) selects no ready endpoint"),
        "the control plane says why the route is out:\n{log}"
    );
    bed.wait_proxy(0, "the targets without the canary", WAIT, |t| {
        sum_metric(t, "sockmesh_proxy_targets_generation", &[]) > generation
    })
    .unwrap();
    let before = totals();
    let fallback = run(
        &bed,
        &client,
        HttpClient::get(vip, 30).header("x-canary", "1"),
    );
    assert_eq!(fallback.code(200), 30, "{:?}", fallback.codes);
    let after = totals();
    assert_eq!(
        after[0],
        before[0] + 30,
        "routed requests go to the stable pod"
    );
    assert_eq!(after[1], before[1], "none to the pod out of the endpoints");
    assert_eq!(proxied(&bed, "200"), 180.0);
}

/// Runs `client` in pod `key` (its cgroup and network namespace); no request may fail.
fn run(bed: &Cluster, key: &str, client: HttpClient) -> HttpReport {
    let pod = bed.pod(key);
    let report = client
        .netns(pod.netns().path())
        .timeout(Duration::from_secs(20))
        .run(pod.cgroup())
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

//! Caller identity the way Kubernetes users write it, on the testbed (src/cluster):
//! `allowed_callers` selects pods by namespace, labels and ServiceAccount, the control plane
//! resolves them from the Pods it watches, and each node's kernel admits or refuses at
//! connect(). The shipped `deploy/examples/meshpolicy.yaml` is applied as it is, to a Service
//! `shop/checkout`, and admits exactly whom its comments name; a second Service admits a
//! whole namespace and a label. A pod cannot make itself someone else by labelling itself
//! with the identity labels.
//!
//! VIPs 127.100.107.x; backends on their pods' addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::{sum_metric, wait_workloads, BackendMode, ConnectClient};

const CHECKOUT_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 107, 1);
const INVENTORY_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 107, 2);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const CONNECTS: usize = 20;
/// errno ECONNREFUSED: how the kernel refuses a caller the ACL does not admit.
const ECONNREFUSED: i32 = 111;

/// The shipped example's `spec`, as JSON.
fn example_spec() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/meshpolicy.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the shipped example policy");
    let doc: Value = serde_yaml::from_str(&text).expect("the example is YAML");
    let mut spec = doc["spec"].clone();
    spec.as_object_mut().unwrap().remove("service");
    spec
}

/// (namespace, pod, node, labels, service account, admitted by checkout, by inventory).
type PlannedCaller<'a> = (
    &'a str,
    &'a str,
    usize,
    &'a [(&'a str, &'a str)],
    &'a str,
    bool,
    bool,
);

struct Caller {
    key: String,
    admitted_checkout: bool,
    admitted_inventory: bool,
}

#[test]
fn callers_are_admitted_by_namespace_labels_and_service_account() {
    let mut bed = Cluster::start(ClusterOptions::new("identity")).expect("testbed");
    for ns in ["shop", "jobs", "other"] {
        bed.add_namespace(ns, true);
    }
    let plan: [PlannedCaller; 7] = [
        (
            "shop",
            "frontend",
            0,
            &[("app", "frontend")],
            "default",
            true,
            false,
        ),
        (
            "shop",
            "backoffice",
            0,
            &[("app", "backoffice")],
            "default",
            false,
            false,
        ),
        (
            "jobs",
            "batch-runner",
            1,
            &[("app", "runner")],
            "batch",
            true,
            true,
        ),
        (
            "jobs",
            "cron",
            1,
            &[("app", "frontend")],
            "default",
            false,
            true,
        ),
        (
            "other",
            "frontend",
            2,
            &[("app", "frontend")],
            "default",
            false,
            false,
        ),
        ("other", "ops", 2, &[("role", "ops")], "batch", false, true),
        // Labels itself with the identity labels of an admitted pod: still `other`'s pod.
        (
            "other",
            "spoof",
            2,
            &[
                ("app", "frontend"),
                ("sockmesh.io/namespace", "shop"),
                ("sockmesh.io/service-account", "batch"),
            ],
            "default",
            false,
            false,
        ),
    ];
    let mut callers = Vec::new();
    for (ns, name, node, labels, sa, checkout, inventory) in plan {
        let key = bed
            .add_pod(PodSpec::new(ns, name, node, labels).service_account(sa))
            .unwrap();
        callers.push(Caller {
            key,
            admitted_checkout: checkout,
            admitted_inventory: inventory,
        });
    }
    let mut backends = Vec::new();
    for (name, node, track) in [
        ("checkout-1", 0, "stable"),
        ("checkout-2", 1, "canary"),
        ("checkout-3", 2, "stable"),
        ("checkout-4", 2, "canary"),
    ] {
        let key = bed
            .add_pod(PodSpec::new("shop", name, node, &[("track", track)]))
            .unwrap();
        bed.serve(&key, TARGET, BackendMode::Identify).unwrap();
        backends.push(key);
    }
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    bed.apply_policy("shop", "checkout", example_spec());
    bed.apply_policy(
        "shop",
        "inventory",
        json!({"allowed_callers": [{"namespace": "jobs"}, {"labels": {"role": "ops"}}]}),
    );
    bed.apply_service("shop", "checkout", CHECKOUT_VIP, PORT, TARGET, &refs)
        .unwrap();
    bed.apply_service("shop", "inventory", INVENTORY_VIP, PORT, TARGET, &refs)
        .unwrap();
    bed.sync("both services with their policies", |c| {
        service_backends(c, "shop-checkout-80").len() == 4
            && service_backends(c, "shop-inventory-80").len() == 4
            && c["services"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["allowed_callers"].is_array()))
    })
    .unwrap();
    for c in &callers {
        let node = bed.pod(&c.key).node;
        let name = c.key.replace('/', "-");
        wait_workloads(bed.agent(node), &[&name], Duration::from_secs(20)).unwrap();
    }

    let mut denied_expected = [0usize; 3];
    for (vip, service) in [(CHECKOUT_VIP, "checkout"), (INVENTORY_VIP, "inventory")] {
        for c in &callers {
            let admitted = if service == "checkout" {
                c.admitted_checkout
            } else {
                c.admitted_inventory
            };
            let pod = bed.pod(&c.key);
            let report = ConnectClient::new(SocketAddr::from((vip, PORT)), CONNECTS)
                .timeout(Duration::from_secs(2))
                .run(Some(pod.cgroup()), Some(pod.netns()))
                .unwrap();
            let ok = report.results.len() - report.failures().len();
            println!(
                "{service}: {} ({}): {ok} of {CONNECTS} connected",
                c.key,
                if admitted { "admitted" } else { "refused" }
            );
            if admitted {
                report.assert_all_ok(&format!("{service}: {} must be admitted", c.key));
            } else {
                assert_eq!(ok, 0, "{service}: {} must be refused", c.key);
                for r in &report.results {
                    assert_eq!(r.errno, Some(ECONNREFUSED), "{service}: {}: {r:?}", c.key);
                }
                denied_expected[pod.node] += CONNECTS;
            }
        }
    }
    // Every refusal was the ACL's, counted on the caller's node as `denied`.
    for (node, want) in denied_expected.iter().enumerate() {
        let text = bed.agent(node).metrics_text().unwrap();
        let denied = sum_metric(&text, "sockmesh_connections_total", &[("result", "denied")]);
        assert_eq!(denied as usize, *want, "node {}: denied connects", node + 1);
    }
}

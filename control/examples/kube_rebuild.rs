//! What one EndpointSlice change costs the Kubernetes source at scale: the cluster of
//! `cargo xtask bench --scale` (Services x ready endpoints, one slice each, one enrolled
//! namespace) built as objects in memory, then `--changes` times one slice's first endpoint
//! gets a new address and [`Rebuild::run_changes`] (map that Service again, assemble,
//! validate, compare, hand the config on) is timed, next to [`Rebuild::run`] (the whole
//! cluster, what every change cost before) and `map::build`. No API server: the watches'
//! part is not in the number. With a fourth argument, that many pods, each endpoint pointing
//! at one, and two more rows: a pod's readiness flipping (the Services pointing at it are
//! mapped again) and a new pod (a new workload: the whole config is validated again).
//!
//! ```sh
//! cargo run --release -p sockmesh-control --example kube_rebuild -- 10000 10 50
//! cargo run --release -p sockmesh-control --example kube_rebuild -- 10000 10 50 1000
//! ```
//!
//! Prints numbers; asserts only that each change is one new config (none for a readiness
//! flip) and that both paths give the same config.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use sockmesh_control::kube_source::map::{self, MapOptions, PolicyMemory, Snapshot};
use sockmesh_control::kube_source::{Rebuild, ServiceChange};
use sockmesh_control::SourceEvent;

fn vip(i: usize) -> String {
    format!("127.100.{}.{}", i / 250, i % 250 + 1)
}

fn endpoint(i: usize, e: usize, g: usize) -> String {
    let n = (i * 16 + e + g * 7) % (1 << 16);
    format!("198.19.{}.{}", n >> 8, n & 0xff)
}

fn service(i: usize) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("s{i}"), "namespace": "scale", "resourceVersion": "1"},
            "spec": {"type": "ClusterIP", "clusterIP": vip(i), "clusterIPs": [vip(i)],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }))
        .unwrap(),
    )
}

/// With `pods`, endpoint `e` of Service `i` points at pod `(i * 16 + e) % pods`.
fn slice(i: usize, backends: usize, generation: usize, pods: usize) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = (0..backends)
        .map(|e| {
            let g = if e == 0 { generation } else { 0 };
            let mut ep = json!({"addresses": [endpoint(i, e, g)], "conditions": {"ready": true},
                                "nodeName": "node-1", "zone": "zone-a"});
            if pods > 0 {
                ep["targetRef"] = json!({"kind": "Pod", "namespace": "scale",
                                         "name": format!("p{}", (i * 16 + e) % pods)});
            }
            ep
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("s{i}-slice"), "namespace": "scale",
                         "resourceVersion": format!("{}", 2 + generation),
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap(),
    )
}

/// Pod `name` (UID from `uid`), its status at `generation` (what readiness flips change;
/// labels stay).
fn pod(name: &str, uid: usize, generation: usize) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "scale", "uid": format!("{uid:08x}"),
                         "resourceVersion": format!("{generation}"),
                         "labels": {"app": "scale"}},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running", "qosClass": "BestEffort",
                       "conditions": [{"type": "Ready", "status": if generation.is_multiple_of(2) { "True" } else { "False" }}]}
        }))
        .unwrap(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} p50 {:>8.2} ms   p90 {:>8.2} ms   max {:>8.2} ms",
        at(0.5),
        at(0.9),
        at(1.0)
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("usage: kube_rebuild [services] [endpoints] [changes] [pods]")
        })
        .collect();
    let services = args.first().copied().unwrap_or(10_000);
    let backends = args.get(1).copied().unwrap_or(10);
    let changes = args.get(2).copied().unwrap_or(50).max(1);
    // 0: endpoints point at no pod, as in `cargo xtask bench --scale`.
    let pods = args.get(3).copied().unwrap_or(0);

    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "scale", "labels": {"sockmesh.io/mesh": "enabled"}}
    }))
    .unwrap();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}
    }))
    .unwrap();
    let mut snap = Snapshot {
        namespaces: vec![Arc::new(namespace)],
        nodes: vec![Arc::new(node)],
        services: (0..services).map(service).collect(),
        slices: (0..services).map(|i| slice(i, backends, 0, pods)).collect(),
        pods: (0..pods).map(|n| pod(&format!("p{n}"), n, 0)).collect(),
        policies: Vec::new(),
    };
    let opts = MapOptions::default();
    let mut rebuild = Rebuild::default();

    let t = Instant::now();
    let first = rebuild.run(&snap.clone(), &opts);
    let initial = t.elapsed();
    let Some(SourceEvent::Desired(cfg)) = first.first() else {
        panic!("the first rebuild made no config");
    };
    assert_eq!(cfg.services.len(), services);
    println!(
        "{services} Services x {backends} endpoints, {pods} pods, {changes} changes of one EndpointSlice each"
    );
    println!(
        "{:<44} {:>8.2} ms",
        "first rebuild (whole cluster)",
        ms(initial)
    );

    let mut per_change = Vec::new();
    let mut whole = Vec::new();
    let mut full_map = Vec::new();
    let mut whole_rebuild = Rebuild::default();
    whole_rebuild.run(&snap.clone(), &opts);
    for c in 0..changes {
        // Spread over the cluster; the slice's first endpoint gets a new address.
        let i = (c * 7919) % services;
        snap.slices[i] = slice(i, backends, c + 1, pods);
        let change =
            ServiceChange::EndpointSlice(format!("scale/s{i}-slice"), Some(snap.slices[i].clone()));
        let t = Instant::now();
        let events = rebuild
            .run_changes(vec![change], None, &opts)
            .expect("built once");
        per_change.push(ms(t.elapsed()));
        assert!(
            matches!(events.as_slice(), [SourceEvent::Patched(_)]),
            "change {c}: one new config, patched"
        );
        // The same change through a whole rebuild (with `Store::state`'s Arc clones).
        let t = Instant::now();
        let again = whole_rebuild.run(&snap.clone(), &opts);
        whole.push(ms(t.elapsed()));
        match (events.as_slice(), again.as_slice()) {
            ([SourceEvent::Patched(a)], [SourceEvent::Desired(b)]) => {
                assert!(a.config == *b, "change {c}: the same config either way")
            }
            _ => panic!("change {c}: one new config either way"),
        }
        let t = Instant::now();
        let built = map::build(&snap, &opts, &mut PolicyMemory::default()).unwrap();
        full_map.push(ms(t.elapsed()));
        assert_eq!(built.config.services.len(), services);
    }
    // Where the time of one change goes: the steps that still cost the whole config.
    let Some(SourceEvent::Desired(cfg)) = first.into_iter().next() else {
        unreachable!()
    };
    let (mut clone, mut validate, mut compare, mut drop) = (vec![], vec![], vec![], vec![]);
    for _ in 0..changes.min(10) {
        let t = Instant::now();
        let copy = cfg.clone();
        clone.push(ms(t.elapsed()));
        let t = Instant::now();
        copy.validate().unwrap();
        validate.push(ms(t.elapsed()));
        let t = Instant::now();
        assert!(copy == cfg);
        compare.push(ms(t.elapsed()));
        let t = Instant::now();
        std::mem::drop(copy);
        drop.push(ms(t.elapsed()));
    }
    summary("one change: Rebuild::run_changes (to the hub)", per_change);
    summary("  of which a clone of the config", clone);
    summary("  of which MeshConfig::validate", validate);
    summary("  of which comparing two configs", compare);
    summary("  of which dropping a config", drop);
    summary("one change: Rebuild::run (whole cluster)", whole);
    summary("map::build alone (whole cluster)", full_map);
    if pods == 0 {
        return;
    }

    // A pod's readiness flips (its labels and so the workloads stay): the Services whose
    // endpoints point at it are mapped again, nothing changes in the config.
    let mut status = Vec::new();
    for c in 0..changes {
        let n = (c * 7919) % pods;
        snap.pods[n] = pod(&format!("p{n}"), n, c + 1);
        let change = ServiceChange::Pod(format!("scale/p{n}"), Some(snap.pods[n].clone()));
        let t = Instant::now();
        let events = rebuild
            .run_changes(vec![change], Some(&snap), &opts)
            .expect("built once");
        status.push(ms(t.elapsed()));
        assert!(events.is_empty(), "pod change {c}: the config stays");
    }
    // A new pod: one more workload, so the whole config is validated again.
    let mut added = Vec::new();
    for c in 0..changes.min(20) {
        let name = format!("new{c}");
        snap.pods.push(pod(&name, pods + c, 0));
        let change = ServiceChange::Pod(format!("scale/{name}"), snap.pods.last().cloned());
        let t = Instant::now();
        let events = rebuild
            .run_changes(vec![change], Some(&snap), &opts)
            .expect("built once");
        added.push(ms(t.elapsed()));
        assert!(
            matches!(
                events.as_slice(),
                [SourceEvent::Desired(_) | SourceEvent::Patched(_)]
            ),
            "new pod {c}: one new config"
        );
    }
    summary("one pod's readiness: Rebuild::run_changes", status);
    summary("one new pod (workload): Rebuild::run_changes", added);
}

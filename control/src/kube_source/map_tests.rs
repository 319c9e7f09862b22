//! The mapping rules of `map.rs`, on hand-written objects.

use std::sync::Arc;

use serde_json::{json, Value};

use super::crd::MeshPolicy;
use super::map::*;
use sockmesh_model::{LbPolicy, MeshConfig, Priority, ServiceSpec};

pub(super) fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

pub(super) fn namespace(
    name: &str,
    enrolled: Option<&str>,
) -> Arc<k8s_openapi::api::core::v1::Namespace> {
    let labels = enrolled.map_or(json!({}), |v| json!({ MESH_LABEL: v }));
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

pub(super) fn service(
    ns: &str,
    name: &str,
    ip: &str,
    ports: Value,
) -> Arc<k8s_openapi::api::core::v1::Service> {
    obj(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports}
    }))
}

/// An endpoint: (ip, ready, pod name, zone).
type Ep<'a> = (&'a str, Option<bool>, Option<&'a str>, Option<&'a str>);

pub(super) fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: Value,
    endpoints: &[Ep<'_>],
) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let family = if endpoints.iter().any(|e| e.0.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, pod, zone)| {
            let mut e = json!({"addresses": [ip], "conditions": {}});
            if let Some(r) = ready {
                e["conditions"]["ready"] = json!(r);
            }
            if let Some(p) = pod {
                e["targetRef"] = json!({"kind": "Pod", "name": p, "namespace": ns});
            }
            if let Some(z) = zone {
                e["zone"] = json!(z);
            }
            e
        })
        .collect();
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": family,
        "ports": ports,
        "endpoints": endpoints
    }))
}

pub(super) fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    labels: Value,
) -> Arc<k8s_openapi::api::core::v1::Pod> {
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": []},
        "status": {"phase": "Running", "qosClass": "Burstable"}
    }))
}

pub(super) fn node(name: &str, zone: Option<&str>) -> Arc<k8s_openapi::api::core::v1::Node> {
    let labels = match zone {
        Some(z) => json!({ZONE_LABEL: z, "kubernetes.io/hostname": name}),
        None => json!({"kubernetes.io/hostname": name}),
    };
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

pub(super) fn policy(ns: &str, name: &str, spec: Value) -> Arc<MeshPolicy> {
    obj(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

/// The shop: enrolled namespace `shop` with Service `web` (ports 80 and 443 TCP, 53 UDP)
/// and three endpoints; namespace `other` (not enrolled) with Service `db`.
pub(super) fn shop() -> Snapshot {
    Snapshot {
        namespaces: vec![namespace("shop", Some(ENABLED)), namespace("other", None)],
        nodes: vec![node("node-a", Some("zone-a")), node("node-b", None)],
        services: vec![
            service(
                "shop",
                "web",
                "127.100.200.10",
                json!([
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": "tls"},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]),
            ),
            service("other", "db", "127.100.200.20", json!([{"port": 5432}])),
        ],
        slices: vec![
            slice(
                "shop",
                "web-abc",
                "web",
                json!([
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"name": "https", "port": 8443, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]),
                &[
                    ("127.0.10.2", Some(true), Some("web-1"), Some("zone-a")),
                    ("127.0.10.1", None, Some("web-2"), None),
                    ("127.0.10.3", Some(false), Some("web-3"), Some("zone-b")),
                ],
            ),
            slice(
                "other",
                "db-xyz",
                "db",
                json!([{"name": "", "port": 5432}]),
                &[("127.0.11.1", Some(true), None, None)],
            ),
        ],
        pods: vec![
            pod(
                "shop",
                "web-1",
                "11111111-2222-3333-4444-555555555555",
                json!({"app": "web", "track": "stable"}),
            ),
            pod(
                "shop",
                "web-2",
                "21111111-2222-3333-4444-555555555555",
                json!({"app": "web", "track": "canary", "sockmesh.io/priority": "offline"}),
            ),
            pod(
                "shop",
                "web-3",
                "31111111-2222-3333-4444-555555555555",
                json!({}),
            ),
            pod(
                "other",
                "db-0",
                "41111111-2222-3333-4444-555555555555",
                json!({}),
            ),
        ],
        policies: Vec::new(),
    }
}

pub(super) fn build_ok(snap: &Snapshot) -> (MeshConfig, Vec<String>) {
    let built = build(snap, &MapOptions::default(), &mut PolicyMemory::default()).unwrap();
    (
        built.config,
        built.rejections.into_iter().map(|r| r.message).collect(),
    )
}

pub(super) fn by_name<'a>(cfg: &'a MeshConfig, name: &str) -> &'a ServiceSpec {
    cfg.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {:?}", names(cfg)))
}

pub(super) fn names(cfg: &MeshConfig) -> Vec<&str> {
    cfg.services.iter().map(|s| s.name.as_str()).collect()
}

pub(super) fn addrs(s: &ServiceSpec) -> Vec<String> {
    s.backends.iter().map(|b| b.addr.to_string()).collect()
}

#[test]
fn services_ports_and_ready_backends() {
    let (cfg, rejected) = build_ok(&shop());
    assert!(rejected.is_empty(), "{rejected:?}");
    // One mesh service per TCP port; UDP skipped; `other` is not enrolled.
    assert_eq!(names(&cfg), ["shop-web-80", "shop-web-443"]);
    let http = by_name(&cfg, "shop-web-80");
    assert_eq!(http.vip.to_string(), "127.100.200.10");
    assert_eq!(http.port, 80);
    assert_eq!(http.lb, LbPolicy::WeightedRandom);
    // Ready and unknown-readiness endpoints, sorted; not-ready left out; the slice port of
    // the same name (the resolved targetPort).
    assert_eq!(addrs(http), ["127.0.10.1:8080", "127.0.10.2:8080"]);
    assert_eq!(
        addrs(by_name(&cfg, "shop-web-443")),
        ["127.0.10.1:8443", "127.0.10.2:8443"]
    );
    // Zone from the endpoint, labels from its pod.
    let b = &http.backends[1];
    assert_eq!(b.zone.as_deref(), Some("zone-a"));
    assert_eq!(b.labels.get("track").map(String::as_str), Some("stable"));
    assert_eq!(http.backends[0].zone, None);
    assert_eq!(
        http.backends[0].labels.get("track").map(String::as_str),
        Some("canary")
    );
}

#[test]
fn workloads_are_the_enrolled_pods() {
    let (cfg, _) = build_ok(&shop());
    let names: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["shop-web-1", "shop-web-2", "shop-web-3"]);
    // Only they are routed: the kernel leaves every other pod's connects alone.
    assert_eq!(cfg.enrollment, sockmesh_model::Enrollment::Workloads);
    let w = &cfg.workloads[1];
    assert_eq!(
        w.cgroup,
        "kubepods.slice/kubepods-burstable.slice/\
         kubepods-burstable-pod21111111_2222_3333_4444_555555555555.slice"
    );
    assert_eq!(w.priority, Priority::Offline);
    assert_eq!(w.labels.get("track").map(String::as_str), Some("canary"));
    assert_eq!(
        w.labels.get(NAMESPACE_LABEL).map(String::as_str),
        Some("shop")
    );
    assert_eq!(cfg.workloads[0].priority, Priority::Online);

    // A finished pod is no workload.
    let mut snap = shop();
    snap.pods[0] = obj(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "1111"},
        "status": {"phase": "Succeeded"}
    }));
    let (cfg, _) = build_ok(&snap);
    assert_eq!(cfg.workloads.len(), 2);
}

#[test]
fn pods_take_the_zone_of_their_node() {
    let mut snap = shop();
    let (cfg, _) = build_ok(&snap);
    // Every pod of the shop runs on node-a, labelled zone-a.
    assert!(cfg
        .workloads
        .iter()
        .all(|w| w.zone.as_deref() == Some("zone-a") && w.node.as_deref() == Some("node-a")));

    // A pod on a node without a zone label has none; a node that is not (yet) known, none.
    let mut on_b = (*snap.pods[1]).clone();
    on_b.spec.as_mut().unwrap().node_name = Some("node-b".into());
    let mut on_c = (*snap.pods[2]).clone();
    on_c.spec.as_mut().unwrap().node_name = Some("node-c".into());
    snap.pods[1] = Arc::new(on_b);
    snap.pods[2] = Arc::new(on_c);
    // An invalid zone label value is not a zone.
    snap.nodes.push(node("node-d", Some("Zone A!")));
    let (cfg, _) = build_ok(&snap);
    let zones: Vec<Option<&str>> = cfg.workloads.iter().map(|w| w.zone.as_deref()).collect();
    assert_eq!(zones, [Some("zone-a"), None, None]);

    // The node relabelled: its pods follow.
    snap.nodes[1] = node("node-b", Some("zone-b"));
    let (cfg, _) = build_ok(&snap);
    assert_eq!(cfg.workloads[1].zone.as_deref(), Some("zone-b"));
}

#[test]
fn enrolment_by_namespace_pod_and_service_label() {
    // Namespace label removed: nothing of `shop` is in the mesh.
    let mut snap = shop();
    snap.namespaces[0] = namespace("shop", None);
    let (cfg, _) = build_ok(&snap);
    assert!(cfg.services.is_empty(), "{:?}", names(&cfg));
    assert!(cfg.workloads.is_empty());

    // Any other value than `enabled` is not enrolled.
    snap.namespaces[0] = namespace("shop", Some("true"));
    assert!(build_ok(&snap).0.services.is_empty());

    // A pod enrolled by its own label: it is a workload, and the Service it backs is in.
    snap.pods[0] = pod(
        "shop",
        "web-1",
        "11111111-2222-3333-4444-555555555555",
        json!({"app": "web", MESH_LABEL: ENABLED}),
    );
    let (cfg, _) = build_ok(&snap);
    assert_eq!(names(&cfg), ["shop-web-80", "shop-web-443"]);
    let ws: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(ws, ["shop-web-1"]);

    // In an enrolled namespace, a pod labelled otherwise opts out (not a workload).
    let mut snap = shop();
    snap.pods[1] = pod(
        "shop",
        "web-2",
        "21111111-2222-3333-4444-555555555555",
        json!({MESH_LABEL: "disabled"}),
    );
    let (cfg, _) = build_ok(&snap);
    let ws: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(ws, ["shop-web-1", "shop-web-3"]);

    // A Service label wins over its namespace, both ways.
    let mut snap = shop();
    snap.services[1] = obj(json!({
        "metadata": {"name": "db", "namespace": "other", "labels": {MESH_LABEL: ENABLED}},
        "spec": {"clusterIP": "127.100.200.20", "ports": [{"port": 5432}]}
    }));
    snap.services[0] = obj(json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": {MESH_LABEL: "disabled"}},
        "spec": {"clusterIP": "127.100.200.10", "ports": [{"name": "http", "port": 80}]}
    }));
    let (cfg, _) = build_ok(&snap);
    assert_eq!(names(&cfg), ["other-db-5432"]);
    assert_eq!(addrs(&cfg.services[0]), ["127.0.11.1:5432"]);
}

#[test]
fn services_without_a_cluster_ip_or_ready_endpoint_are_left_out() {
    let mut snap = shop();
    snap.services
        .push(service("shop", "headless", "None", json!([{"port": 80}])));
    snap.services.push(obj(json!({
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}
    })));
    snap.services.push(service(
        "shop",
        "idle",
        "127.100.200.30",
        json!([{"port": 80}]),
    ));
    snap.slices.push(slice(
        "shop",
        "idle-1",
        "idle",
        json!([{"name": "", "port": 80}]),
        &[("127.0.10.9", Some(false), None, None)],
    ));
    let built = build(&snap, &MapOptions::default(), &mut PolicyMemory::default()).unwrap();
    assert_eq!(names(&built.config), ["shop-web-80", "shop-web-443"]);
    assert_eq!(built.without_backends, ["shop-idle-80"]);
}

#[test]
fn zone_from_hints_and_invalid_zones_dropped() {
    let ep: k8s_openapi::api::discovery::v1::Endpoint = serde_json::from_value(json!({
        "addresses": ["127.0.10.1"], "hints": {"forZones": [{"name": "zone-c"}]}
    }))
    .unwrap();
    assert_eq!(endpoint_zone(&ep).as_deref(), Some("zone-c"));
    let ep: k8s_openapi::api::discovery::v1::Endpoint = serde_json::from_value(json!({
        "addresses": ["127.0.10.1"], "zone": "zone a"
    }))
    .unwrap();
    assert_eq!(endpoint_zone(&ep), None);
}

#[test]
fn dual_stack_service_gets_one_mesh_service_per_family() {
    let mut snap = shop();
    snap.services = vec![obj(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "127.100.200.10", "clusterIPs": ["127.100.200.10", "fd00::10"],
                 "ports": [{"name": "http", "port": 80}]}
    }))];
    snap.slices.push(slice(
        "shop",
        "web-v6",
        "web",
        json!([{"name": "http", "port": 8080}]),
        &[("fd00::2", Some(true), Some("web-1"), None)],
    ));
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(names(&cfg), ["shop-web-80", "shop-web-80-ipv6"]);
    assert_eq!(addrs(&cfg.services[1]), ["[fd00::2]:8080"]);
    assert_eq!(
        addrs(&cfg.services[0]),
        ["127.0.10.1:8080", "127.0.10.2:8080"]
    );
}

#[test]
fn a_policy_sets_the_service_fields() {
    let mut snap = shop();
    snap.policies.push(policy(
        "shop",
        "web",
        json!({"service": "web", "lb": "maglev",
               "outlier": {"consecutive_failures": 3, "base_ban": "1s"},
               "routes": [{"match": {"lane": "canary"}, "to": {"track": "canary"}}],
               "allowed_callers": ["shop-web-1", "shop-gone-0"],
               "same_node": true}),
    ));
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    for name in ["shop-web-80", "shop-web-443"] {
        let s = by_name(&cfg, name);
        assert_eq!(s.lb, LbPolicy::Maglev);
        assert_eq!(s.outlier.consecutive_failures, 3);
        assert_eq!(s.outlier.base_ban.to_string(), "1s");
        assert_eq!(
            s.outlier.max_ban.to_string(),
            "5m",
            "defaults fill the rest"
        );
        assert_eq!(s.routes.len(), 1);
        assert!(s.same_node);
        // Callers that are not a workload now are dropped, not a rejection.
        assert_eq!(
            s.allowed_callers.as_deref(),
            Some(&["shop-web-1".into()][..])
        );
    }
}

#[test]
fn the_example_policy_is_accepted() {
    let text = include_str!("../../../deploy/examples/meshpolicy.yaml");
    let object: Value = serde_yaml::from_str(text).unwrap();
    let patch = check_policy(&object["spec"]).unwrap();
    assert!(patch.contains_key("slos") && !patch.contains_key("service"));
}

#[test]
fn a_refused_policy_keeps_the_last_valid_one() {
    let mut memory = PolicyMemory::default();
    let opts = MapOptions::default();
    let mut snap = shop();
    // Refused at first sight: the defaults, and a rejection naming the field.
    snap.policies = vec![policy(
        "shop",
        "web",
        json!({"service": "web", "lb": "maglev", "outlier": {"base_ban": "10s", "max_ban": "1s"}}),
    )];
    let built = build(&snap, &opts, &mut memory).unwrap();
    assert_eq!(built.rejections.len(), 1, "{:?}", built.rejections);
    let r = &built.rejections[0];
    assert_eq!(r.path.as_deref(), Some("spec.outlier.max_ban"));
    assert!(
        r.message
            .starts_with("MeshPolicy shop/web: spec.outlier.max_ban: "),
        "{r}"
    );
    assert!(r.message.contains("default policy"), "{r}");
    assert_eq!(
        by_name(&built.config, "shop-web-80").lb,
        LbPolicy::WeightedRandom
    );

    // A valid edit applies ...
    snap.policies = vec![policy(
        "shop",
        "web",
        json!({"service": "web", "lb": "maglev"}),
    )];
    let built = build(&snap, &opts, &mut memory).unwrap();
    assert!(built.rejections.is_empty());
    assert_eq!(by_name(&built.config, "shop-web-80").lb, LbPolicy::Maglev);

    // ... and survives a later refused one (an unknown variant, an unknown field, a field
    // the Service owns), while the rest of the mesh keeps updating.
    for (spec, path) in [
        (json!({"service": "web", "lb": "fastest"}), "spec.lb"),
        (json!({"service": "web", "lbb": "maglev"}), "spec.lbb"),
        (json!({"service": "web", "vip": "127.0.10.1"}), "spec.vip"),
        (
            json!({"service": "web", "routes": [{"weight_split": [{"to": {}, "percent": 90}]}]}),
            "spec.routes[0].weight_split",
        ),
    ] {
        snap.policies = vec![policy("shop", "web", spec.clone())];
        snap.slices[0] = slice(
            "shop",
            "web-abc",
            "web",
            json!([{"name": "http", "port": 8080}]),
            &[("127.0.10.7", Some(true), None, None)],
        );
        let built = build(&snap, &opts, &mut memory).unwrap();
        assert_eq!(built.rejections.len(), 1, "{spec}: {:?}", built.rejections);
        let r = &built.rejections[0];
        assert_eq!(r.path.as_deref(), Some(path), "{spec}: {r}");
        assert!(r.message.contains("last valid version"), "{r}");
        let web = by_name(&built.config, "shop-web-80");
        assert_eq!(web.lb, LbPolicy::Maglev, "{spec}");
        assert_eq!(addrs(web), ["127.0.10.7:8080"]);
    }

    // Deleting the policy forgets it: a refused one made later starts from the defaults.
    snap.policies.clear();
    build(&snap, &opts, &mut memory).unwrap();
    snap.policies = vec![policy(
        "shop",
        "web",
        json!({"service": "web", "lb": "fastest"}),
    )];
    let built = build(&snap, &opts, &mut memory).unwrap();
    assert_eq!(
        by_name(&built.config, "shop-web-80").lb,
        LbPolicy::WeightedRandom
    );
}

#[test]
fn one_policy_per_service_and_policies_need_a_service() {
    let mut snap = shop();
    snap.policies = vec![
        policy("shop", "b", json!({"service": "web", "lb": "round_robin"})),
        policy("shop", "a", json!({"service": "web", "lb": "maglev"})),
        policy("shop", "c", json!({"lb": "maglev"})),
        // Names a Service of its own namespace only.
        policy("other", "d", json!({"service": "web", "lb": "round_robin"})),
    ];
    let built = build(&snap, &MapOptions::default(), &mut PolicyMemory::default()).unwrap();
    assert_eq!(by_name(&built.config, "shop-web-80").lb, LbPolicy::Maglev);
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
    assert!(
        built.warnings[0].contains("MeshPolicy shop/b ignored"),
        "{:?}",
        built.warnings
    );
    assert_eq!(built.rejections.len(), 1);
    assert_eq!(built.rejections[0].path.as_deref(), Some("spec.service"));
}

#[test]
fn output_does_not_depend_on_watch_order() {
    let snap = shop();
    let mut reversed = snap.clone();
    reversed.services.reverse();
    reversed.slices.reverse();
    reversed.pods.reverse();
    reversed.namespaces.reverse();
    let a = build_ok(&snap).0;
    let b = build_ok(&reversed).0;
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
}

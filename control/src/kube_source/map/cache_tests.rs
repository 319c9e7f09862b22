//! [`ServiceCache::update`] against a whole [`build`]: over random sequences of object
//! changes (Services, EndpointSlices, Pods, Nodes, and now and then a Namespace or
//! MeshPolicy, which take the whole path), the config, rejections, warnings and services
//! without backends are exactly those of a whole build of the same cluster, with a policy
//! memory that went through the same history.
//!
//! The objects are few and collide on purpose: VIPs shared between Services (validation
//! leaves one out), names that meet (`a/b-c` and `a-b/c` are both `a-b-c-80`), slices that
//! move between Services, endpoints that point at pods whose labels enrol their Service.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const NAMESPACES: [&str; 3] = ["a", "a-b", "b"];
/// (namespace, name) of the Services.
const SERVICES: [(&str, &str); 5] = [
    ("a", "web"),
    ("a", "b-c"),
    ("a-b", "c"),
    ("b", "db"),
    ("b", "web"),
];
/// (namespace, name) of the EndpointSlices; each names one Service of its namespace.
const SLICES: [(&str, &str); 5] = [
    ("a", "s1"),
    ("a", "s2"),
    ("a-b", "s1"),
    ("b", "s1"),
    ("b", "s2"),
];
const PODS: [(&str, &str); 4] = [("a", "p1"), ("a", "p2"), ("a-b", "p1"), ("b", "p1")];

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

fn mesh_labels(mesh: u8) -> Value {
    match mesh {
        0 => json!({"app": "x"}),
        1 => json!({"app": "x", "sockmesh.io/mesh": "enabled"}),
        _ => json!({"app": "x", "sockmesh.io/mesh": "disabled"}),
    }
}

/// A Service: VIP from a pool of 3 (so some collide), ports 80 and/or 443 (and a UDP one),
/// maybe dual stack, its own enrolment label.
#[derive(Debug, Clone)]
struct ServiceShape {
    vip: u8,
    https: bool,
    http: bool,
    dual: bool,
    mesh: u8,
}

fn service_shape() -> impl Strategy<Value = ServiceShape> {
    (0u8..3, any::<bool>(), any::<bool>(), any::<bool>(), 0u8..4).prop_map(
        |(vip, https, http, dual, mesh)| ServiceShape {
            vip,
            https,
            http,
            dual,
            mesh,
        },
    )
}

fn service(i: usize, s: &ServiceShape) -> Arc<k8s_openapi::api::core::v1::Service> {
    let (ns, name) = SERVICES[i];
    let mut ports = vec![json!({"name": "dns", "port": 53, "protocol": "UDP"})];
    if s.http {
        ports.push(json!({"name": "http", "port": 80, "protocol": "TCP"}));
    }
    if s.https {
        ports.push(json!({"name": "https", "port": 443}));
    }
    let v4 = format!("127.100.0.{}", s.vip + 1);
    let ips = if s.dual {
        json!([v4, format!("fd00:100::{}", s.vip + 1)])
    } else {
        json!([v4])
    };
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "labels": mesh_labels(s.mesh)},
        "spec": {"type": "ClusterIP", "clusterIP": v4, "clusterIPs": ips, "ports": ports}
    }))
}

/// An EndpointSlice: which Service of its namespace it belongs to, its family, its `http`
/// port (8080, or 80: a backend can then be a VIP:port), and up to 3 endpoints (address from
/// a pool that holds a VIP and an address no backend may have, ready or not, pointing at a
/// pod or not).
#[derive(Debug, Clone)]
struct SliceShape {
    owner: u8,
    ipv6: bool,
    port_80: bool,
    endpoints: Vec<(u8, bool, Option<u8>)>,
}

fn slice_shape() -> impl Strategy<Value = SliceShape> {
    (
        0u8..3,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::collection::vec(
            (
                prop_oneof![8 => 0u8..3, 1 => Just(3), 1 => Just(4)],
                prop::bool::weighted(0.8),
                prop::option::of(0u8..2),
            ),
            0..4,
        ),
    )
        .prop_map(|(owner, ipv6, port_80, endpoints)| SliceShape {
            owner,
            ipv6,
            port_80,
            endpoints,
        })
}

fn slice(j: usize, s: &SliceShape) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let (ns, name) = SLICES[j];
    let owners: Vec<&str> = SERVICES
        .iter()
        .filter(|(n, _)| *n == ns)
        .map(|(_, svc)| *svc)
        .chain(["gone"])
        .collect();
    let owner = owners[usize::from(s.owner) % owners.len()];
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|(addr, ready, pod)| {
            let address = match (addr, s.ipv6) {
                (3, false) => "127.100.0.1".to_owned(),
                (3, true) => "fd00:100::1".to_owned(),
                (4, false) => "0.0.0.0".to_owned(),
                (4, true) => "::".to_owned(),
                (_, false) => format!("127.0.10.{}", addr + 1),
                (_, true) => format!("fd00:10::{}", addr + 1),
            };
            let mut ep = json!({"addresses": [address], "conditions": {"ready": ready},
                                "zone": "zone-a"});
            if let Some(p) = pod {
                ep["targetRef"] = json!({"kind": "Pod", "name": format!("p{}", p + 1)});
            }
            ep
        })
        .collect();
    obj(json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": owner}},
        "addressType": if s.ipv6 { "IPv6" } else { "IPv4" },
        "ports": [{"name": "http", "port": if s.port_80 { 80 } else { 8080 }, "protocol": "TCP"},
                  {"name": "https", "port": 8443}],
        "endpoints": endpoints
    }))
}

/// Pod `k`; on track 1 it shares its UID (so its cgroup) with any other pod on track 1,
/// which validation refuses (one of the workloads is left out).
fn pod(k: usize, mesh: u8, track: u8) -> Arc<k8s_openapi::api::core::v1::Pod> {
    let (ns, name) = PODS[k];
    let uid = if track == 1 {
        "0000-aa".to_owned()
    } else {
        format!("0000-{k}")
    };
    let mut labels = mesh_labels(mesh);
    labels["track"] = json!(format!("t{track}"));
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": []},
        "status": {"phase": "Running", "qosClass": "BestEffort"}
    }))
}

/// A MeshPolicy for Service `a/web`: a policy, one the model refuses, or callers by name
/// (a workload that comes and goes with pod `a/p1`).
fn policy(variant: u8) -> Arc<MeshPolicy> {
    let spec = match variant {
        0 => json!({"service": "web", "lb": "round_robin"}),
        1 => json!({"service": "web", "lb": "nope"}),
        _ => json!({"service": "web", "allowed_callers": ["a-p1", {"namespace": "b"}]}),
    };
    obj(json!({"metadata": {"name": "pol", "namespace": "a"}, "spec": spec}))
}

#[derive(Debug, Clone)]
enum Op {
    Service(usize, Option<ServiceShape>),
    Slice(usize, Option<SliceShape>),
    Pod(usize, Option<(u8, u8)>),
    Node(bool),
    /// Those below take the whole path.
    Namespace(usize, bool),
    Policy(Option<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SERVICES.len(), prop::option::weighted(0.85, service_shape()))
            .prop_map(|(i, s)| Op::Service(i, s)),
        6 => (0..SLICES.len(), prop::option::weighted(0.85, slice_shape()))
            .prop_map(|(j, s)| Op::Slice(j, s)),
        1 => (0..NAMESPACES.len(), any::<bool>()).prop_map(|(k, on)| Op::Namespace(k, on)),
        3 => (0..PODS.len(), prop::option::of((0u8..3, 0u8..2))).prop_map(|(k, p)| Op::Pod(k, p)),
        1 => prop::option::of(0u8..3).prop_map(Op::Policy),
        1 => any::<bool>().prop_map(Op::Node),
    ]
}

/// The cluster as the stores hold it, by `namespace/name`.
#[derive(Default)]
struct Cluster {
    namespaces: BTreeMap<String, Arc<k8s_openapi::api::core::v1::Namespace>>,
    nodes: BTreeMap<String, Arc<k8s_openapi::api::core::v1::Node>>,
    services: BTreeMap<String, Arc<k8s_openapi::api::core::v1::Service>>,
    slices: BTreeMap<String, Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    pods: BTreeMap<String, Arc<k8s_openapi::api::core::v1::Pod>>,
    policies: BTreeMap<String, Arc<MeshPolicy>>,
}

fn put<T>(map: &mut BTreeMap<String, Arc<T>>, key: String, v: Option<Arc<T>>) -> Option<Arc<T>> {
    match &v {
        Some(v) => map.insert(key, v.clone()),
        None => map.remove(&key),
    };
    v
}

/// What [`ServiceCache::update`] is told of an op.
enum Applied {
    Change(ServiceChange),
    /// A Node: the workloads are made again.
    Workloads,
    /// It does not take this one: a whole build.
    Whole,
}

impl Cluster {
    /// Applies `op`; the change for [`ServiceCache::update`], or `None` for one it does not
    /// take.
    fn apply(&mut self, op: &Op) -> Option<ServiceChange> {
        match self.applied(op) {
            Applied::Change(change) => Some(change),
            Applied::Workloads | Applied::Whole => None,
        }
    }

    fn applied(&mut self, op: &Op) -> Applied {
        Applied::Change(match op {
            Op::Service(i, s) => {
                let key = format!("{}/{}", SERVICES[*i].0, SERVICES[*i].1);
                let now = put(
                    &mut self.services,
                    key.clone(),
                    s.as_ref().map(|s| service(*i, s)),
                );
                ServiceChange::Service(key, now)
            }
            Op::Slice(j, s) => {
                let key = format!("{}/{}", SLICES[*j].0, SLICES[*j].1);
                let now = put(
                    &mut self.slices,
                    key.clone(),
                    s.as_ref().map(|s| slice(*j, s)),
                );
                ServiceChange::EndpointSlice(key, now)
            }
            Op::Namespace(k, on) => {
                let name = NAMESPACES[*k];
                let labels = if *on {
                    json!({"sockmesh.io/mesh": "enabled"})
                } else {
                    json!({})
                };
                let ns = obj(json!({"metadata": {"name": name, "labels": labels}}));
                self.namespaces.insert(name.to_owned(), ns);
                return Applied::Whole;
            }
            Op::Pod(k, p) => {
                let key = format!("{}/{}", PODS[*k].0, PODS[*k].1);
                let now = put(
                    &mut self.pods,
                    key.clone(),
                    p.map(|(mesh, track)| pod(*k, mesh, track)),
                );
                ServiceChange::Pod(key, now)
            }
            Op::Policy(v) => {
                put(&mut self.policies, "a/pol".to_owned(), v.map(policy));
                return Applied::Whole;
            }
            Op::Node(zoned) => {
                let labels = if *zoned {
                    json!({"topology.kubernetes.io/zone": "zone-a"})
                } else {
                    json!({})
                };
                let node = obj(json!({"metadata": {"name": "node-a", "labels": labels}}));
                self.nodes.insert("node-a".to_owned(), node);
                return Applied::Workloads;
            }
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: self.namespaces.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            // The stores' order is not the key order: the mapping must not depend on it.
            slices: self.slices.values().rev().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Each step is one to three changes, as one debounce window collects them.
    #[test]
    fn updates_give_what_a_whole_build_gives(
        steps in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..25),
    ) {
        let opts = MapOptions::default();
        let mut cluster = Cluster::default();
        cluster.apply(&Op::Namespace(0, true));
        let mut cache = ServiceCache::default();
        let mut memory = PolicyMemory::default();
        let mut whole_memory = PolicyMemory::default();
        let first = cache.build(&cluster.snapshot(), &opts, &mut memory);
        prop_assert!(first.changed);
        let first = first.built.cloned();
        prop_assert_eq!(&first, &build(&cluster.snapshot(), &opts, &mut whole_memory));
        let mut last_valid = first.ok().map(|b| b.config);
        let (mut updates, mut wholes) = (0, 0);
        for step in &steps {
            let applied: Vec<Applied> = step.iter().map(|op| cluster.applied(op)).collect();
            let snap = cluster.snapshot();
            let got = if applied.iter().all(|a| !matches!(a, Applied::Whole)) {
                updates += 1;
                let workloads = applied.iter().any(|a| {
                    matches!(a, Applied::Workloads | Applied::Change(ServiceChange::Pod(..)))
                });
                let changes = applied
                    .into_iter()
                    .filter_map(|a| match a {
                        Applied::Change(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                cache.update(changes, workloads.then_some((&snap, &opts)))
            } else {
                wholes += 1;
                cache.build(&snap, &opts, &mut memory)
            };
            let changed = got.changed;
            let got = got.built.cloned();
            let want = build(&snap, &opts, &mut whole_memory);
            prop_assert_eq!(&got, &want, "after {:?}", step);
            if let Ok(b) = got {
                prop_assert_eq!(changed, last_valid.as_ref() != Some(&b.config), "changed, after {:?}", step);
                last_valid = Some(b.config);
            } else {
                prop_assert!(!changed);
            }
        }
        prop_assert_eq!(updates + wholes, steps.len());
    }
}

/// The sequences above do reach what they are about: services in the config, names that
/// meet, a refused policy, a VIP left out by validation.
#[test]
fn the_objects_reach_every_path() {
    let mut cluster = Cluster::default();
    let shape = ServiceShape {
        vip: 0,
        https: false,
        http: true,
        dual: false,
        mesh: 1,
    };
    let ready = SliceShape {
        owner: 1,
        ipv6: false,
        port_80: false,
        endpoints: vec![(0, true, Some(0))],
    };
    for op in [
        Op::Service(1, Some(shape.clone())),
        Op::Service(
            2,
            Some(ServiceShape {
                vip: 1,
                ..shape.clone()
            }),
        ),
        Op::Service(
            3,
            Some(ServiceShape {
                vip: 1,
                ..shape.clone()
            }),
        ),
        Op::Slice(0, Some(ready.clone())),
        Op::Slice(
            2,
            Some(SliceShape {
                owner: 0,
                ..ready.clone()
            }),
        ),
        Op::Slice(
            3,
            Some(SliceShape {
                owner: 0,
                ..ready.clone()
            }),
        ),
        Op::Policy(Some(1)),
    ] {
        cluster.apply(&op);
    }
    let mut cache = ServiceCache::default();
    let built = cache
        .build(
            &cluster.snapshot(),
            &MapOptions::default(),
            &mut PolicyMemory::default(),
        )
        .built
        .cloned()
        .unwrap();
    let names: Vec<&str> = built
        .config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    // `a/b-c` and `a-b/c` meet at `a-b-c-80`: the second in key order is hashed. `a-b/c`
    // comes first (`-` sorts before `/`).
    assert_eq!(names.len(), 2, "{names:?} {:?}", built.rejections);
    assert_eq!(names[0], "a-b-c-80");
    assert!(names[1].starts_with("a-b-c-80-"), "{names:?}");
    let messages: Vec<&str> = built
        .rejections
        .iter()
        .map(|r| r.message.as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("MeshPolicy a/pol: spec.lb")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("service b-db-80 left out")),
        "{messages:?}"
    );
}

/// The one rule the services of an update alone cannot check: a backend that is another
/// service's VIP:port. After a clean build, an EndpointSlice update puts `b/db`'s backend on
/// `a/web`'s VIP:port; the update must leave `b/db` out as a whole build does.
#[test]
fn an_update_onto_another_services_vip_is_validated_with_the_whole_mesh() {
    let mut cluster = Cluster::default();
    cluster.apply(&Op::Namespace(0, true));
    let shape = ServiceShape {
        vip: 0,
        https: false,
        http: true,
        dual: false,
        mesh: 1,
    };
    let endpoint = |addr| SliceShape {
        owner: 0,
        ipv6: false,
        port_80: true,
        endpoints: vec![(addr, true, None)],
    };
    cluster.apply(&Op::Service(0, Some(shape.clone())));
    cluster.apply(&Op::Service(3, Some(ServiceShape { vip: 2, ..shape })));
    cluster.apply(&Op::Slice(0, Some(endpoint(0))));
    cluster.apply(&Op::Slice(3, Some(endpoint(0))));
    let opts = MapOptions::default();
    let mut cache = ServiceCache::default();
    let first = cache.build(&cluster.snapshot(), &opts, &mut PolicyMemory::default());
    let first = first.built.cloned().unwrap();
    assert_eq!(first.config.services.len(), 2);
    assert!(first.rejections.is_empty(), "{:?}", first.rejections);

    // 127.100.0.1:80 is a/web's VIP:port.
    let change = cluster.apply(&Op::Slice(3, Some(endpoint(3)))).unwrap();
    let outcome = cache.update(vec![change], None);
    assert!(outcome.changed);
    let got = outcome.built.cloned().unwrap();
    let want = build(&cluster.snapshot(), &opts, &mut PolicyMemory::default()).unwrap();
    assert_eq!(got, want);
    let names: Vec<&str> = got
        .config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["a-web-80"]);
    assert!(
        got.rejections[0]
            .message
            .contains("service b-db-80 left out"),
        "{:?}",
        got.rejections
    );
}

/// A pod none of its endpoints point at still changes a Service whose policy names it as a
/// caller: the names are kept only while they are workloads.
#[test]
fn a_new_workload_reaches_the_callers_of_a_policy() {
    let mut cluster = Cluster::default();
    cluster.apply(&Op::Namespace(0, true));
    let shape = ServiceShape {
        vip: 0,
        https: false,
        http: true,
        dual: false,
        mesh: 0,
    };
    cluster.apply(&Op::Service(0, Some(shape)));
    cluster.apply(&Op::Slice(
        0,
        Some(SliceShape {
            owner: 0,
            ipv6: false,
            port_80: false,
            endpoints: vec![(0, true, None)],
        }),
    ));
    cluster.apply(&Op::Policy(Some(2)));
    let opts = MapOptions::default();
    let mut cache = ServiceCache::default();
    let mut memory = PolicyMemory::default();
    let callers = |b: &Built| format!("{:?}", b.config.services[0].allowed_callers);
    let first = cache.build(&cluster.snapshot(), &opts, &mut memory);
    let first = first.built.cloned().unwrap();
    assert!(
        !callers(&first).contains("a-p1"),
        "{} {:?}",
        callers(&first),
        first.rejections
    );

    let change = cluster.apply(&Op::Pod(0, Some((0, 0)))).unwrap();
    let snap = cluster.snapshot();
    let outcome = cache.update(vec![change], Some((&snap, &opts)));
    assert!(outcome.changed);
    let got = outcome.built.cloned().unwrap();
    assert!(callers(&got).contains("a-p1"), "{}", callers(&got));
    let want = build(&snap, &opts, &mut PolicyMemory::default()).unwrap();
    assert_eq!(got, want);
}

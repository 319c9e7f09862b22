use std::sync::Mutex;

use sockmesh_common::ProxyOrigin;
use sockmesh_model::HttpSpec;

use super::*;
use crate::link::{TargetBackend, TargetService};
use crate::target::Outstanding;

/// Answers one origin (or none) for every connection.
#[derive(Default)]
struct OneOrigin(Mutex<Option<ProxyOrigin>>);

impl OneOrigin {
    fn set(&self, service_id: u32, workload: u32) {
        *self.0.lock().unwrap() = Some(ProxyOrigin {
            service_id,
            workload,
            ..ProxyOrigin::default()
        });
    }
}

impl Origins for Arc<OneOrigin> {
    fn lookup(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<ProxyOrigin> {
        *self.0.lock().unwrap()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn backend(port: u16, eligible: bool) -> TargetBackend {
    TargetBackend {
        addr: addr(port),
        weight: 1,
        labels: Default::default(),
        eligible,
    }
}

fn service(id: u32, name: &str, backends: Vec<TargetBackend>) -> TargetService {
    TargetService {
        id,
        name: name.into(),
        http: HttpSpec::default(),
        backends,
        latency_thresholds_us: Vec::new(),
        consecutive_5xx: 5,
        classes: Vec::new(),
    }
}

fn targets(generation: u64, services: Vec<TargetService>) -> Targets {
    Targets {
        generation,
        services,
        workloads: vec!["web".into(), "batch".into()],
    }
}

fn resolved(node: &NodeTargets<Arc<OneOrigin>>) -> Option<(Arc<ServiceTarget>, Option<Arc<str>>)> {
    node.resolve(addr(40000), addr(15001))
}

#[test]
fn the_origin_names_service_and_caller() {
    let origins = Arc::new(OneOrigin::default());
    let node = NodeTargets::new(origins.clone());
    node.apply(&targets(
        1,
        vec![service(7, "shop", vec![backend(1, true)])],
    ));

    assert!(resolved(&node).is_none(), "no origin: refused");
    origins.set(7, 2);
    let (svc, caller) = resolved(&node).unwrap();
    assert_eq!(&*svc.name, "shop");
    assert_eq!(caller.as_deref(), Some("batch"));
    origins.set(7, 0);
    assert_eq!(resolved(&node).unwrap().1, None, "0 is not a workload");
    origins.set(7, 3);
    assert_eq!(resolved(&node).unwrap().1, None, "out of range");
    origins.set(8, 1);
    assert!(resolved(&node).is_none(), "unknown service id: refused");
}

#[test]
fn an_eligibility_change_keeps_the_version_and_flips_the_flags() {
    let node = NodeTargets::new(Arc::new(OneOrigin::default()));
    node.apply(&targets(
        1,
        vec![service(7, "shop", vec![backend(1, true), backend(2, true)])],
    ));
    let v1 = node.snapshot().service(7).unwrap().clone();
    let applied = node.apply(&targets(
        2,
        vec![service(
            7,
            "shop",
            vec![backend(1, false), backend(2, true)],
        )],
    ));
    let v2 = node.snapshot().service(7).unwrap().clone();
    assert!(Arc::ptr_eq(&v1, &v2));
    assert!(!v2.backends[0].is_eligible() && v2.backends[1].is_eligible());
    assert!(applied.forget.is_empty());
    assert!(
        node.current(&v1, Some("web")).is_none(),
        "the newest version already"
    );

    let applied = node.apply(&targets(
        3,
        vec![service(7, "shop", vec![backend(1, true), backend(2, true)])],
    ));
    assert_eq!(
        applied.forget,
        vec![(Arc::from("shop"), addr(1))],
        "unbanned"
    );
}

#[test]
fn a_changed_service_keeps_outstanding_counts_and_the_budget_of_an_unchanged_http_block() {
    let node = NodeTargets::new(Arc::new(OneOrigin::default()));
    node.apply(&targets(
        1,
        vec![service(7, "shop", vec![backend(1, true), backend(2, true)])],
    ));
    let v1 = node.snapshot().service(7).unwrap().clone();
    let held = Outstanding::start(v1.clone(), 0);

    let applied = node.apply(&targets(
        2,
        vec![service(
            7,
            "shop",
            vec![backend(3, true), backend(1, false)],
        )],
    ));
    let v2 = node.snapshot().service(7).unwrap().clone();
    assert!(!Arc::ptr_eq(&v1, &v2));
    assert_eq!(
        node.current(&v1, Some("web")).map(|s| s.backends.len()),
        Some(2)
    );
    let b1 = v2.backend(addr(1)).unwrap();
    assert_eq!(b1.outstanding(), 1, "the try under way is still counted");
    assert!(
        !b1.is_eligible() && !v1.backends[0].is_eligible(),
        "one flag"
    );
    assert_eq!(v2.backend(addr(3)).unwrap().outstanding(), 0);
    assert!(v2.shares_budget(&v1));
    assert_eq!(applied.forget, vec![(Arc::from("shop"), addr(2))], "left");
    drop(held);
    assert_eq!(b1.outstanding(), 0, "released through the old version");

    let mut changed = service(7, "shop", vec![backend(3, true)]);
    changed.http.retries.budget_percent = 50;
    node.apply(&targets(3, vec![changed]));
    let v3 = node.snapshot().service(7).unwrap().clone();
    assert!(!v3.shares_budget(&v2), "a new http block, a new budget");
}

#[test]
fn a_service_that_leaves_forgets_its_backends_and_refuses_connections() {
    let origins = Arc::new(OneOrigin::default());
    origins.set(7, 1);
    let node = NodeTargets::new(origins);
    node.apply(&targets(
        1,
        vec![service(7, "shop", vec![backend(1, true)])],
    ));
    let applied = node.apply(&targets(
        2,
        vec![service(9, "cart", vec![backend(1, true)])],
    ));
    assert_eq!(applied.forget, vec![(Arc::from("shop"), addr(1))]);
    assert!(resolved(&node).is_none());
    assert_eq!(node.snapshot().generation, 2);
}

#[test]
fn each_caller_class_gets_its_weights_and_shares_the_live_state() {
    let origins = Arc::new(OneOrigin::default());
    let node = NodeTargets::new(origins.clone());
    let mut shop = service(7, "shop", vec![backend(1, true), backend(2, true)]);
    // Class 0 (everyone else): only backend 1; workload 1 (`web`): only backend 2.
    shop.classes = vec![
        crate::link::TargetClass {
            workload: 0,
            weights: vec![4, 0],
        },
        crate::link::TargetClass {
            workload: 1,
            weights: vec![0, 4],
        },
    ];
    node.apply(&targets(1, vec![shop.clone()]));
    let weights = |s: &Arc<ServiceTarget>| s.backends.iter().map(|b| b.weight).collect::<Vec<_>>();

    origins.set(7, 1);
    let (web, caller) = node.resolve(addr(9), addr(10)).unwrap();
    assert_eq!((weights(&web), web.class), (vec![0, 4], 1));
    assert_eq!(caller.as_deref(), Some("web"));
    origins.set(7, 2);
    let (batch, _) = node.resolve(addr(9), addr(10)).unwrap();
    assert_eq!(
        (weights(&batch), batch.class),
        (vec![4, 0], 0),
        "no class: class 0"
    );

    // One backend, whichever class counts a try on it.
    let _try = Outstanding::start(web.clone(), 1);
    assert_eq!(batch.backends[1].outstanding(), 1);
    assert!(web.shares_budget(&batch));

    // A new snapshot: a kept-alive connection of `web` moves to web's newest weights.
    shop.classes[1].weights = vec![1, 3];
    node.apply(&targets(2, vec![shop]));
    let newest = node.current(&web, Some("web")).expect("a newer version");
    assert_eq!((weights(&newest), newest.class), (vec![1, 3], 1));
    assert_eq!(
        newest.backends[1].outstanding(),
        1,
        "live state carried over"
    );
}

#[test]
fn a_service_without_classes_serves_every_caller_with_its_own_weights() {
    let origins = Arc::new(OneOrigin::default());
    let node = NodeTargets::new(origins.clone());
    node.apply(&targets(
        1,
        vec![service(3, "plain", vec![backend(1, true)])],
    ));
    origins.set(3, 1);
    let (s, _) = node.resolve(addr(9), addr(10)).unwrap();
    assert_eq!((s.class, s.backends[0].weight), (0, 1));
    assert!(
        node.current(&s, Some("web")).is_none(),
        "the same version: nothing newer"
    );
}

#[test]
fn a_kept_alive_caller_follows_routes_added_and_workloads_renumbered() {
    let origins = Arc::new(OneOrigin::default());
    let node = NodeTargets::new(origins.clone());
    let plain = service(7, "shop", vec![backend(1, true), backend(2, true)]);
    node.apply(&targets(1, vec![plain.clone()]));
    origins.set(7, 2);
    let (held, caller) = node.resolve(addr(9), addr(10)).unwrap();
    assert_eq!(caller.as_deref(), Some("batch"));
    let weights = |s: &Arc<ServiceTarget>| s.backends.iter().map(|b| b.weight).collect::<Vec<_>>();

    // Routes arrive, and a new workload list puts `batch` first (number 1).
    let mut routed = plain;
    routed.classes = vec![
        crate::link::TargetClass {
            workload: 0,
            weights: vec![1, 0],
        },
        crate::link::TargetClass {
            workload: 1,
            weights: vec![0, 1],
        },
    ];
    let mut next = targets(2, vec![routed]);
    next.workloads = vec!["batch".into(), "web".into()];
    node.apply(&next);
    let newest = node
        .current(&held, caller.as_deref())
        .expect("a newer version");
    assert_eq!(weights(&newest), [0, 1], "batch's own class, by name");
    let other = node.current(&held, Some("web")).expect("a newer version");
    assert_eq!(weights(&other), [1, 0], "web has no class: class 0");
    let unknown = node.current(&held, None).expect("a newer version");
    assert_eq!(weights(&unknown), [1, 0]);
}

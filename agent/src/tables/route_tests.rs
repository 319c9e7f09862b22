//! Tests of caller classes: what each class's weights are (routes, splits, fallback,
//! locality, bans), how the plan writes class tables, and properties over random configs,
//! bans and plan sequences (the pattern of `plan_tests.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use proptest::prelude::*;
use sockmesh_common::{SlotTableKey, CALLER_CLASS_DEFAULT, SERVICE_CLASS_TABLES};
use sockmesh_model::{
    parse_config, BackendSpec, Fallback, LbPolicy, LocalitySpec, MeshConfig, RouteSpec,
    ServiceSpec, SplitSpec, WorkloadSpec,
};

use super::{
    overlay::{Overlay, ServiceOverlay},
    plan::{plan_for, KernelState, TableState, Write},
    route::{class_weights, service_classes, workload_class, Caller, Node},
};

/// Stable s0, s1 and canary c0 (weight 1 each); canary callers go to c0 (fallback as
/// given), beta callers split 90/10, everyone else to stable.
fn canary_yaml(fallback: &str) -> String {
    format!(
        "
services:
  - name: shop
    vip: 127.100.90.1
    port: 80
    backends:
      - {{addr: 127.0.0.2:81, labels: {{track: stable}}}}
      - {{addr: 127.0.0.3:81, labels: {{track: stable}}}}
      - {{addr: 127.0.0.4:81, labels: {{track: canary}}}}
    routes:
      - match: {{lane: canary}}
        to: {{track: canary}}
        fallback: {fallback}
      - match: {{lane: beta}}
        weight_split:
          - {{to: {{track: stable}}, percent: 90}}
          - {{to: {{track: canary}}, percent: 10}}
      - to: {{track: stable}}
workloads:
  - {{name: canary, cgroup: t/canary, labels: {{lane: canary}}}}
  - {{name: beta, cgroup: t/beta, labels: {{lane: beta}}}}
  - {{name: plain, cgroup: t/plain}}
"
    )
}

/// Zone a: a0, a1, a2; zone b: b0, b1; locality with a 60 % threshold. Workload `near` is in
/// zone a, `far` in zone b, `nowhere` has no zone (the node's applies).
const ZONES: &str = "
services:
  - name: zoned
    vip: 127.100.91.1
    port: 80
    lb: round_robin
    backends:
      - {addr: 127.0.0.2:81, zone: a}
      - {addr: 127.0.0.3:81, zone: a}
      - {addr: 127.0.0.4:81, zone: a}
      - {addr: 127.0.0.5:81, zone: b}
      - {addr: 127.0.0.6:81, zone: b}
    locality: {min_healthy_percent: 60}
workloads:
  - {name: near, cgroup: t/near, zone: a}
  - {name: far, cgroup: t/far, zone: b}
  - {name: nowhere, cgroup: t/nowhere}
";

fn excluded(addrs: &[&str]) -> BTreeSet<SocketAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

fn weights_of(cfg: &MeshConfig, workload: Option<usize>, banned: &[&str], node: &Node) -> Vec<u32> {
    let spec = &cfg.services[0];
    let caller = match workload {
        Some(i) => Caller::workload(&cfg.workloads[i], node),
        None => Caller::unknown(node),
    };
    class_weights(spec, &excluded(banned), caller)
}

#[test]
fn canary_callers_get_the_canary_subset_and_the_rest_stable() {
    let cfg = parse_config(&canary_yaml("all")).unwrap();
    let node = Node::default();
    assert_eq!(weights_of(&cfg, Some(0), &[], &node), [0, 0, 1]);
    assert_eq!(
        weights_of(&cfg, Some(2), &[], &node),
        [1, 1, 0],
        "no label: last rule"
    );
    assert_eq!(
        weights_of(&cfg, None, &[], &node),
        [1, 1, 0],
        "unknown callers too"
    );
}

#[test]
fn a_weight_split_gives_each_subset_its_percent() {
    let cfg = parse_config(&canary_yaml("all")).unwrap();
    let node = Node::default();
    // 45 % + 45 % stable, 10 % canary, reduced by the gcd.
    assert_eq!(weights_of(&cfg, Some(1), &[], &node), [9, 9, 2]);
    // A banned stable backend: the other takes the whole 90 %.
    assert_eq!(
        weights_of(&cfg, Some(1), &["127.0.0.2:81"], &node),
        [0, 9, 1]
    );
    // The canary gone: its 10 % goes to the stable subset (shares renormalised).
    assert_eq!(
        weights_of(&cfg, Some(1), &["127.0.0.4:81"], &node),
        [1, 1, 0]
    );
}

#[test]
fn fallback_all_uses_the_whole_service_and_none_refuses() {
    let banned = ["127.0.0.4:81"];
    let node = Node::default();
    let all = parse_config(&canary_yaml("all")).unwrap();
    assert_eq!(weights_of(&all, Some(0), &banned, &node), [1, 1, 0]);
    let none = parse_config(&canary_yaml("none")).unwrap();
    assert_eq!(weights_of(&none, Some(0), &banned, &node), [0, 0, 0]);
    // Fallback is about health: with the canary healthy, `none` changes nothing.
    assert_eq!(weights_of(&none, Some(0), &[], &node), [0, 0, 1]);
    // Everything banned: nothing to fall back to either way.
    let every = ["127.0.0.2:81", "127.0.0.3:81", "127.0.0.4:81"];
    assert_eq!(weights_of(&all, Some(0), &every, &node), [0, 0, 0]);
}

#[test]
fn locality_prefers_the_callers_zone_until_it_is_too_unhealthy() {
    let cfg = parse_config(ZONES).unwrap();
    let node = Node::default();
    let near = |banned: &[&str]| weights_of(&cfg, Some(0), banned, &node);
    assert_eq!(near(&[]), [1, 1, 1, 0, 0]);
    assert_eq!(
        weights_of(&cfg, Some(1), &[], &node),
        [0, 0, 0, 1, 1],
        "far is in b"
    );
    // 2/3 = 67 % of zone a healthy >= 60 %: stay in a.
    assert_eq!(near(&["127.0.0.2:81"]), [0, 1, 1, 0, 0]);
    // 1/3 < 60 %: fail over to every healthy backend.
    assert_eq!(near(&["127.0.0.2:81", "127.0.0.3:81"]), [0, 0, 1, 1, 1]);
    // No zone (no workload zone, no node zone): no preference.
    assert_eq!(weights_of(&cfg, Some(2), &[], &node), [1, 1, 1, 1, 1]);
    assert_eq!(weights_of(&cfg, None, &[], &node), [1, 1, 1, 1, 1]);
    // The node's zone applies to callers without one of their own.
    let in_b = Node {
        zone: Some("b".into()),
    };
    assert_eq!(weights_of(&cfg, Some(2), &[], &in_b), [0, 0, 0, 1, 1]);
    assert_eq!(weights_of(&cfg, None, &[], &in_b), [0, 0, 0, 1, 1]);
    assert_eq!(
        weights_of(&cfg, Some(0), &[], &in_b),
        [1, 1, 1, 0, 0],
        "own zone wins"
    );
    // A zone with no backends at all: no preference.
    let in_c = Node {
        zone: Some("c".into()),
    };
    assert_eq!(weights_of(&cfg, None, &[], &in_c), [1, 1, 1, 1, 1]);
}

#[test]
fn the_locality_threshold_counts_weight_not_backends() {
    let mut cfg = parse_config(ZONES).unwrap();
    cfg.services[0].backends[0].weight = 4; // a0 is 4 of zone a's 6
    let node = Node::default();
    // a1 and a2 banned: 4/6 = 67 % of a's capacity healthy.
    let w = weights_of(&cfg, Some(0), &["127.0.0.3:81", "127.0.0.4:81"], &node);
    assert_eq!(
        w,
        [1, 0, 0, 0, 0],
        "a0 alone (weights reduced by their gcd)"
    );
    // a0 banned: 2/6 = 33 %, fail over.
    let w = weights_of(&cfg, Some(0), &["127.0.0.2:81"], &node);
    assert_eq!(w, [0, 1, 1, 1, 1]);
}

#[test]
fn locality_applies_within_each_subset_of_a_split() {
    let yaml = "
services:
  - name: s
    vip: 127.100.90.1
    port: 80
    backends:
      - {addr: 127.0.0.2:81, labels: {track: stable}, zone: a}
      - {addr: 127.0.0.3:81, labels: {track: stable}, zone: b}
      - {addr: 127.0.0.4:81, labels: {track: canary}, zone: b}
    routes:
      - weight_split:
          - {to: {track: stable}, percent: 80}
          - {to: {track: canary}, percent: 20}
    locality: {}
workloads:
  - {name: w, cgroup: t/w, zone: a}
";
    let cfg = parse_config(yaml).unwrap();
    // Stable stays in zone a; the canary has no zone-a member, so its 20 % keeps going to b.
    assert_eq!(weights_of(&cfg, Some(0), &[], &Node::default()), [4, 0, 1]);
}

#[test]
fn an_inert_locality_block_leaves_the_service_unrouted() {
    let mut cfg = parse_config(ZONES).unwrap();
    cfg.services[0].locality = Some(LocalitySpec {
        prefer_zone: false,
        min_healthy_percent: 50,
    });
    let (weights, classes) = service_classes(
        &cfg.services[0],
        &BTreeSet::new(),
        &cfg.workloads,
        &Node::default(),
    );
    assert_eq!(weights, [1, 1, 1, 1, 1]);
    assert!(classes.is_empty());
}

fn table(state: &KernelState, service_id: u32, class: u32) -> Option<&TableState> {
    state.tables.get(&SlotTableKey {
        service_id,
        caller_class: class,
    })
}

/// The table a caller of `class` reads, as the kernel chooses it.
fn effective(state: &KernelState, service_id: u32, class: u32) -> &TableState {
    let flagged = state
        .services
        .values()
        .any(|s| s.id == service_id && s.flags & SERVICE_CLASS_TABLES != 0);
    let own = (flagged && class != CALLER_CLASS_DEFAULT)
        .then(|| table(state, service_id, class))
        .flatten();
    own.or_else(|| table(state, service_id, CALLER_CLASS_DEFAULT))
        .expect("every service has a default table")
}

/// Backend id -> address, from the kernel's backend map.
fn addr_of(state: &KernelState, id: u32) -> SocketAddr {
    let b = state.backends[&id];
    SocketAddr::from((std::net::Ipv4Addr::from(u32::from_be(b.addr[0])), b.port))
}

/// The backend ids of a table of `service_id` (its policy may store more than ids).
fn routed<'t>(state: &KernelState, service_id: u32, t: &'t TableState) -> &'t [u32] {
    let svc = state
        .services
        .values()
        .find(|s| s.id == service_id)
        .expect("the table's service");
    crate::tables::policy::by_code(svc.lb)
        .expect("a known policy code")
        .routed(&t.slots)
}

fn slots_by_addr(state: &KernelState, service_id: u32, t: &TableState) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in routed(state, service_id, t) {
        *m.entry(addr_of(state, *id).to_string()).or_default() += 1;
    }
    m
}

fn apply(state: &mut KernelState, writes: &[Write]) {
    for w in writes {
        state.apply(w);
    }
}

#[test]
fn only_classes_that_differ_from_class_0_get_a_table_and_the_entry_flags_them() {
    let cfg = parse_config(&canary_yaml("all")).unwrap();
    let mut state = KernelState::default();
    let p = plan_for(&cfg, &Overlay::new(), &state, &Node::default()).unwrap();
    let flag_at = p
        .writes
        .iter()
        .position(
            |w| matches!(w, Write::UpsertService(_, s) if s.flags & SERVICE_CLASS_TABLES != 0),
        )
        .expect("the service is flagged");
    for (i, w) in p.writes.iter().enumerate() {
        if let Write::UpsertTable(k, _) = w {
            assert!(i < flag_at, "table {k:?} after the entry flagging it");
        }
    }
    apply(&mut state, &p.writes);
    let id = state.services.values().next().unwrap().id;
    // canary (class 1) and beta (class 2) have tables; plain (class 3) routes like class 0.
    let classes: Vec<u32> = state.tables.keys().map(|k| k.caller_class).collect();
    assert_eq!(classes, [0, 1, 2]);
    let by = |class| slots_by_addr(&state, id, effective(&state, id, class));
    assert_eq!(
        by(0),
        BTreeMap::from([("127.0.0.2:81".into(), 1), ("127.0.0.3:81".into(), 1)])
    );
    assert_eq!(
        by(workload_class(0)),
        BTreeMap::from([("127.0.0.4:81".into(), 1)])
    );
    assert_eq!(
        by(workload_class(1)),
        BTreeMap::from([
            ("127.0.0.2:81".into(), 9),
            ("127.0.0.3:81".into(), 9),
            ("127.0.0.4:81".into(), 2)
        ])
    );
    assert_eq!(by(workload_class(2)), by(0));
    // The admin view lists the two class tables by workload.
    let view = &p.views[0];
    assert_eq!(view.classes.len(), 2);
    assert_eq!(
        (view.classes[0].class, view.classes[0].workload.as_str()),
        (1, "canary")
    );
    assert_eq!(view.classes[1].slot_table_len, 20);
    assert!(plan_for(&cfg, &Overlay::new(), &state, &Node::default())
        .unwrap()
        .writes
        .is_empty());

    // Routes removed: the entry loses the flag first, then the class tables go.
    let mut plain = cfg.clone();
    plain.services[0].routes.clear();
    let p = plan_for(&plain, &Overlay::new(), &state, &Node::default()).unwrap();
    let unflag_at = p
        .writes
        .iter()
        .position(
            |w| matches!(w, Write::UpsertService(_, s) if s.flags & SERVICE_CLASS_TABLES == 0),
        )
        .expect("the flag is cleared");
    let deletes: Vec<usize> = p
        .writes
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(w, Write::DeleteTable(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(deletes.len(), 2);
    assert!(deletes.iter().all(|d| *d > unflag_at));
    apply(&mut state, &p.writes);
    assert_eq!(state.tables.len(), 1);
    assert_eq!(state.tables.values().next().unwrap().slots.len(), 3);
}

#[test]
fn a_ban_reaches_every_class_table_and_fallback_follows_it() {
    let cfg = parse_config(&canary_yaml("all")).unwrap();
    let mut state = KernelState::default();
    let p = plan_for(&cfg, &Overlay::new(), &state, &Node::default()).unwrap();
    apply(&mut state, &p.writes);
    let id = state.services.values().next().unwrap().id;
    let mut overlay = Overlay::new();
    overlay.insert(
        "shop".into(),
        ServiceOverlay {
            excluded: excluded(&["127.0.0.4:81"]),
            ..Default::default()
        },
    );
    let p = plan_for(&cfg, &overlay, &state, &Node::default()).unwrap();
    apply(&mut state, &p.writes);
    for class in [0, 1, 2, 3] {
        let t = effective(&state, id, class);
        assert!(!t.slots.is_empty(), "class {class} has backends left");
        assert!(
            !slots_by_addr(&state, id, t).contains_key("127.0.0.4:81"),
            "class {class} still routes to the banned canary"
        );
    }
    // Canary and beta now route like class 0 (stable only): their tables are gone.
    assert_eq!(state.tables.len(), 1);
    // The ban lifted: the class tables come back.
    let p = plan_for(&cfg, &Overlay::new(), &state, &Node::default()).unwrap();
    apply(&mut state, &p.writes);
    assert_eq!(state.tables.len(), 3);
}

#[test]
fn the_node_zone_shapes_class_0_and_zone_less_workloads() {
    let cfg = parse_config(ZONES).unwrap();
    let node = Node {
        zone: Some("a".into()),
    };
    let mut state = KernelState::default();
    let p = plan_for(&cfg, &Overlay::new(), &state, &node).unwrap();
    apply(&mut state, &p.writes);
    let id = state.services.values().next().unwrap().id;
    // Class 0 (unknown callers) and `near` (zone a) and `nowhere` (node zone a) share the
    // zone-a table; only `far` has a table of its own.
    let classes: Vec<u32> = state.tables.keys().map(|k| k.caller_class).collect();
    assert_eq!(classes, [0, workload_class(1)]);
    assert_eq!(effective(&state, id, 0).slots.len(), 3);
    assert_eq!(effective(&state, id, workload_class(1)).slots.len(), 2);
}

mod props;

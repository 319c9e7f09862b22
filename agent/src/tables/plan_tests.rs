//! Tests of `plan`: ordering, idempotence, id stability, and the property that a connect
//! racing with any prefix of the writes never meets a dangling table or backend.

use std::net::SocketAddr;

use proptest::prelude::*;
use sockmesh_common::{
    SlotTableKey, CALLER_CLASS_DEFAULT, SERVICE_ENROLLED_ONLY, SERVICE_HTTP, SERVICE_SAME_NODE,
};
use sockmesh_model::{BackendSpec, Enrollment, LbPolicy, MeshConfig, Protocol, ServiceSpec};

use super::{
    overlay::{Overlay, ServiceOverlay},
    plan::{plan, KernelState, Write},
};

fn service(name: &str, vip: &str, lb: LbPolicy, backends: &[(&str, u32)]) -> ServiceSpec {
    ServiceSpec::new(
        name,
        vip.parse().unwrap(),
        80,
        lb,
        backends
            .iter()
            .map(|(a, w)| BackendSpec {
                addr: a.parse::<SocketAddr>().unwrap(),
                weight: *w,
                labels: Default::default(),
                zone: None,
            })
            .collect(),
    )
}

fn config(services: Vec<ServiceSpec>) -> MeshConfig {
    MeshConfig {
        version: 1,
        services,
        workloads: Vec::new(),
        enrollment: Default::default(),
    }
}

fn apply_all(state: &mut KernelState, writes: &[Write]) {
    for w in writes {
        state.apply(w);
        assert_consistent(state);
    }
}

/// What a connect could observe between any two writes: every service has a table and every
/// slot names a backend that exists.
fn assert_consistent(state: &KernelState) {
    for (key, svc) in &state.services {
        let tk = SlotTableKey {
            service_id: svc.id,
            caller_class: CALLER_CLASS_DEFAULT,
        };
        let table = state
            .tables
            .get(&tk)
            .unwrap_or_else(|| panic!("service {key:?} has no table"));
        let policy = crate::tables::policy::by_code(svc.lb).expect("a known policy code");
        for id in policy.routed(&table.slots) {
            assert!(
                state.backends.contains_key(id),
                "slot names missing backend {id}"
            );
        }
    }
}

#[test]
fn first_apply_orders_backends_tables_services() {
    let cfg = config(vec![service(
        "web",
        "127.100.0.1",
        LbPolicy::WeightedRandom,
        &[("127.0.0.2:81", 1), ("127.0.0.3:81", 2)],
    )]);
    let p = plan(&cfg, &Overlay::new(), &KernelState::default()).unwrap();
    let kinds: Vec<u8> = p
        .writes
        .iter()
        .map(|w| match w {
            Write::UpsertBackend(..) => 0,
            Write::UpsertTable(..) => 1,
            Write::UpsertService(..) => 2,
            _ => 9,
        })
        .collect();
    assert_eq!(kinds, vec![0, 0, 1, 2]);
    assert_eq!(p.views[0].slot_table_len, 3);
    assert_eq!(p.views[0].backends[1].slots, 2);
}

#[test]
fn replanning_the_same_config_writes_nothing() {
    let cfg = config(vec![
        service(
            "a",
            "127.100.0.1",
            LbPolicy::Maglev,
            &[("127.0.0.2:81", 1), ("127.0.0.3:81", 1)],
        ),
        service(
            "b",
            "127.100.0.2",
            LbPolicy::RoundRobin,
            &[("127.0.0.2:81", 1)],
        ),
    ]);
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert!(plan(&cfg, &Overlay::new(), &state)
        .unwrap()
        .writes
        .is_empty());
    // The shared backend has one id.
    assert_eq!(state.backends.len(), 2);
}

#[test]
fn enrollment_workloads_flags_every_service_and_switching_back_clears_it() {
    let mut cfg = config(vec![
        service("a", "127.100.0.1", LbPolicy::Maglev, &[("127.0.0.2:81", 1)]),
        service("b", "::1", LbPolicy::RoundRobin, &[("[::1]:81", 1)]),
    ]);
    let flagged = |state: &KernelState| {
        state
            .services
            .values()
            .filter(|s| s.flags & SERVICE_ENROLLED_ONLY != 0)
            .count()
    };
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert_eq!(flagged(&state), 0, "the default routes every caller");
    cfg.enrollment = Enrollment::Workloads;
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    // Only the two service entries change: tables and backends stay as they are.
    assert_eq!(p.writes.len(), 2, "{:?}", p.writes);
    assert!(p
        .writes
        .iter()
        .all(|w| matches!(w, Write::UpsertService(..))));
    apply_all(&mut state, &p.writes);
    assert_eq!(flagged(&state), 2);
    cfg.enrollment = Enrollment::All;
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert_eq!(flagged(&state), 0);
}

#[test]
fn http_services_are_flagged_for_the_proxy_and_never_same_node() {
    let mut cfg = config(vec![
        service(
            "web",
            "127.100.0.1",
            LbPolicy::RoundRobin,
            &[("127.0.0.2:81", 1)],
        ),
        service("api", "::1", LbPolicy::Maglev, &[("[::1]:81", 1)]),
        service(
            "db",
            "127.100.0.3",
            LbPolicy::RoundRobin,
            &[("127.0.0.3:81", 1)],
        ),
    ]);
    for s in &mut cfg.services[..2] {
        s.protocol = Protocol::Http;
        s.same_node = true;
    }
    cfg.services[2].same_node = true;
    let flags = |state: &KernelState, vip: &str| {
        let key = crate::tables::addr::service_key(vip.parse().unwrap(), 80);
        state.services[&key].flags
    };
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    for vip in ["127.100.0.1", "::1"] {
        let f = flags(&state, vip);
        assert_ne!(f & SERVICE_HTTP, 0, "{vip}: {f:#x}");
        assert_eq!(f & SERVICE_SAME_NODE, 0, "{vip}: {f:#x}");
    }
    let tcp = flags(&state, "127.100.0.3");
    assert_eq!(
        (tcp & SERVICE_HTTP, tcp & SERVICE_SAME_NODE),
        (0, SERVICE_SAME_NODE)
    );
    // Back to tcp: one entry rewritten, the flag gone, same-node as asked.
    cfg.services[0].protocol = Protocol::Tcp;
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    assert_eq!(p.writes.len(), 1, "{:?}", p.writes);
    apply_all(&mut state, &p.writes);
    let f = flags(&state, "127.100.0.1");
    assert_eq!(
        (f & SERVICE_HTTP, f & SERVICE_SAME_NODE),
        (0, SERVICE_SAME_NODE)
    );
}

#[test]
fn removing_a_backend_rewrites_table_then_deletes_backend() {
    let two = config(vec![service(
        "a",
        "127.100.0.1",
        LbPolicy::WeightedRandom,
        &[("127.0.0.2:81", 1), ("127.0.0.3:81", 1)],
    )]);
    let one = config(vec![service(
        "a",
        "127.100.0.1",
        LbPolicy::WeightedRandom,
        &[("127.0.0.2:81", 1)],
    )]);
    let mut state = KernelState::default();
    let p = plan(&two, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    let p = plan(&one, &Overlay::new(), &state).unwrap();
    assert!(
        matches!(p.writes[0], Write::UpsertTable(_, ref t) if t.generation == 2 && t.slots.len() == 1)
    );
    assert!(matches!(p.writes.last(), Some(Write::DeleteBackend(_))));
    apply_all(&mut state, &p.writes);
    assert_eq!(state.backends.len(), 1);
}

#[test]
fn service_ids_are_stable_and_not_reused_in_one_plan() {
    let ab = config(vec![
        service(
            "a",
            "127.100.0.1",
            LbPolicy::WeightedRandom,
            &[("127.0.0.2:81", 1)],
        ),
        service(
            "b",
            "127.100.0.2",
            LbPolicy::WeightedRandom,
            &[("127.0.0.2:81", 1)],
        ),
    ]);
    let mut state = KernelState::default();
    let p = plan(&ab, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    let id_b = state.services.values().map(|s| s.id).max().unwrap();
    // Drop `a`, add `c`: `c` must not take `a`'s id while `a` is still being deleted.
    let bc = config(vec![
        service(
            "b",
            "127.100.0.2",
            LbPolicy::WeightedRandom,
            &[("127.0.0.2:81", 1)],
        ),
        service(
            "c",
            "127.100.0.3",
            LbPolicy::WeightedRandom,
            &[("127.0.0.2:81", 1)],
        ),
    ]);
    let p = plan(&bc, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    let ids: Vec<u32> = state.services.values().map(|s| s.id).collect();
    assert!(ids.contains(&id_b));
    assert!(!ids.contains(&1) || id_b == 1, "freed id reused: {ids:?}");
    assert_eq!(state.tables.len(), 2, "the deleted service's table is gone");
}

#[test]
fn ipv6_service_gets_its_own_key() {
    let cfg = config(vec![
        service(
            "v4",
            "127.100.0.1",
            LbPolicy::Maglev,
            &[("127.0.0.2:81", 1)],
        ),
        service("v6", "fd00::100", LbPolicy::Maglev, &[("[fd00::2]:81", 1)]),
    ]);
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert_eq!(state.services.len(), 2);
    assert!(state.tables.values().all(|t| t.slots.len() == 1021));
}

fn arb_config() -> impl Strategy<Value = MeshConfig> {
    let backend = (2u8..12, 0u32..5).prop_map(|(host, w)| (format!("127.0.0.{host}:81"), w));
    let svc = (
        0u8..6,
        prop::collection::vec(backend, 1..6),
        prop::sample::select(LbPolicy::ALL),
    );
    prop::collection::vec(svc, 0..6).prop_map(|services| {
        let mut seen = std::collections::BTreeSet::new();
        let specs = services
            .into_iter()
            .filter(|(vip, _, _)| seen.insert(*vip))
            .map(|(vip, mut backends, lb)| {
                backends.sort();
                backends.dedup_by(|a, b| a.0 == b.0);
                if backends.iter().all(|b| b.1 == 0) {
                    backends[0].1 = 1;
                }
                let refs: Vec<(&str, u32)> =
                    backends.iter().map(|(a, w)| (a.as_str(), *w)).collect();
                service(&format!("s{vip}"), &format!("127.100.0.{vip}"), lb, &refs)
            })
            .collect();
        config(specs)
    })
}

proptest! {
    #[test]
    fn any_sequence_of_configs_stays_consistent(configs in prop::collection::vec(arb_config(), 1..6)) {
        let mut state = KernelState::default();
        for cfg in &configs {
            let p = plan(cfg, &Overlay::new(), &state).unwrap();
            apply_all(&mut state, &p.writes);
            prop_assert!(plan(cfg, &Overlay::new(), &state).unwrap().writes.is_empty());
            prop_assert_eq!(state.services.len(), cfg.services.len());
        }
    }
}

#[test]
fn excluded_backends_get_no_slots_but_keep_their_ids() {
    let cfg = config(vec![service(
        "a",
        "127.100.0.1",
        LbPolicy::RoundRobin,
        &[("127.0.0.2:81", 1), ("127.0.0.3:81", 1)],
    )]);
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    let mut overlay = Overlay::new();
    let banned = ServiceOverlay {
        excluded: ["127.0.0.3:81".parse().unwrap()].into(),
        ..Default::default()
    };
    overlay.insert("a".into(), banned);
    let p = plan(&cfg, &overlay, &state).unwrap();
    assert!(
        p.writes
            .iter()
            .all(|w| !matches!(w, Write::DeleteBackend(_))),
        "the id stays for its return"
    );
    apply_all(&mut state, &p.writes);
    let table = state.tables.values().next().unwrap();
    assert_eq!(table.slots.len(), 1);
    assert_eq!(p.views[0].backends[1].slots, 0);
    // Lifting the ban restores the table.
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert_eq!(state.tables.values().next().unwrap().slots.len(), 2);
}

#[test]
fn acl_entries_precede_enforcement_and_follow_its_removal() {
    let mut svc = service(
        "a",
        "127.100.0.1",
        LbPolicy::RoundRobin,
        &[("127.0.0.2:81", 1)],
    );
    svc.allowed_callers = Some(vec!["front".into()]);
    let mut cfg = config(vec![svc]);
    cfg.workloads.push(sockmesh_model::WorkloadSpec {
        name: "front".into(),
        cgroup: "x/front".into(),
        labels: Default::default(),
        priority: Default::default(),
        zone: None,
        node: None,
    });
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    let acl_at = p
        .writes
        .iter()
        .position(|w| matches!(w, Write::UpsertAcl(k) if k.workload == 1))
        .unwrap();
    let svc_at = p
        .writes
        .iter()
        .position(|w| matches!(w, Write::UpsertService(..)))
        .unwrap();
    assert!(acl_at < svc_at);
    apply_all(&mut state, &p.writes);
    cfg.services[0].allowed_callers = None;
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    let del_at = p
        .writes
        .iter()
        .position(|w| matches!(w, Write::DeleteAcl(_)))
        .unwrap();
    let svc_at = p
        .writes
        .iter()
        .position(|w| matches!(w, Write::UpsertService(..)))
        .unwrap();
    assert!(svc_at < del_at);
    apply_all(&mut state, &p.writes);
    assert!(state.acl.is_empty());
}

/// `n` services on VIPs 127.100.x.y port 80, each naming every one of `backends` (weight 1).
fn many_services(first: u32, n: u32, backends: &[String]) -> MeshConfig {
    let refs: Vec<(&str, u32)> = backends.iter().map(|a| (a.as_str(), 1)).collect();
    config(
        (first..first + n)
            .map(|i| {
                let vip = format!("127.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
                service(&format!("s{i}"), &vip, LbPolicy::WeightedRandom, &refs)
            })
            .collect(),
    )
}

#[test]
fn more_service_backend_pairs_than_the_stats_table_holds_is_rejected_whole() {
    use super::plan::{capacity, PlanError};
    // 256 shared backend addresses (the backend table holds them easily), but one service
    // more than capacity / 256 naming all of them needs more per-(service, backend) stats
    // entries than the table holds.
    let backends: Vec<String> = (0..256).map(|i| format!("127.0.1.{i}:81")).collect();
    let over = (capacity::BACKEND_STATS / 256 + 1) as u32;
    let cfg = many_services(1, over, &backends);
    let err = plan(&cfg, &Overlay::new(), &KernelState::default()).unwrap_err();
    assert_eq!(
        err,
        PlanError::Capacity {
            what: "backend stats ((service, backend) pair)",
            needed: over as usize * 256,
            capacity: capacity::BACKEND_STATS,
        }
    );
    let expected = format!(
        "table full: {} entries needed, capacity {}",
        over * 256,
        capacity::BACKEND_STATS
    );
    assert!(err.to_string().contains(&expected), "{err}");
    // Two services fewer fit.
    let cfg = many_services(1, over - 2, &backends);
    assert!(plan(&cfg, &Overlay::new(), &KernelState::default()).is_ok());
}

#[test]
fn a_switch_that_would_overflow_halfway_is_rejected_before_any_write() {
    use super::plan::{capacity, PlanError};
    let backends = vec!["127.0.0.2:81".to_owned()];
    let half = (capacity::SERVICES as u32).div_ceil(2);
    let old = many_services(1, half, &backends);
    let mut state = KernelState::default();
    let p = plan(&old, &Overlay::new(), &state).unwrap();
    for w in &p.writes {
        state.apply(w);
    }
    // As many services again, all new: each fits alone, but old + new do not.
    let new = many_services(1 + half, half, &backends);
    let err = plan(&new, &Overlay::new(), &state).unwrap_err();
    assert_eq!(
        err,
        PlanError::Transition {
            what: "service",
            needed: 2 * half as usize,
            capacity: capacity::SERVICES,
        }
    );
    assert!(plan(&new, &Overlay::new(), &KernelState::default()).is_ok());
    // Keeping most of the old services is fine.
    let overlap = many_services(100, half, &backends);
    assert!(plan(&overlap, &Overlay::new(), &state).is_ok());
}

#[test]
fn least_conn_tables_hold_ids_then_weights_and_views_count_backends() {
    let cfg = config(vec![service(
        "lc",
        "127.100.0.1",
        LbPolicy::LeastConn,
        &[
            ("127.0.0.2:81", 1),
            ("127.0.0.3:81", 0),
            ("127.0.0.4:81", 3),
        ],
    )]);
    let mut state = KernelState::default();
    let p = plan(&cfg, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &p.writes);
    let svc = state.services.values().next().unwrap();
    assert_eq!(svc.lb, sockmesh_common::pick::LB_LEAST_CONN);
    let view = &p.views[0];
    assert_eq!(view.lb, "least_conn");
    let ids: Vec<u32> = view.backends.iter().map(|b| b.id).collect();
    let key = SlotTableKey {
        service_id: svc.id,
        caller_class: CALLER_CLASS_DEFAULT,
    };
    assert_eq!(state.tables[&key].slots, vec![ids[0], ids[2], 1, 3]);
    let slots: Vec<usize> = view.backends.iter().map(|b| b.slots).collect();
    assert_eq!(slots, [1, 0, 1]);
    // A ban takes the backend's id and its weight out together.
    let mut overlay = Overlay::new();
    overlay.insert(
        "lc".into(),
        ServiceOverlay {
            excluded: ["127.0.0.4:81".parse().unwrap()].into(),
            ..Default::default()
        },
    );
    let p = plan(&cfg, &overlay, &state).unwrap();
    apply_all(&mut state, &p.writes);
    assert_eq!(state.tables[&key].slots, vec![ids[0], 1]);
}

#[test]
fn switching_to_and_from_least_conn_bridges_the_table_around_the_entry() {
    let backends = [("127.0.0.2:81", 1), ("127.0.0.3:81", 3)];
    let rr = config(vec![service(
        "s",
        "127.100.0.1",
        LbPolicy::RoundRobin,
        &backends,
    )]);
    let lc = config(vec![service(
        "s",
        "127.100.0.1",
        LbPolicy::LeastConn,
        &backends,
    )]);
    let mut state = KernelState::default();
    let first = plan(&rr, &Overlay::new(), &state).unwrap();
    apply_all(&mut state, &first.writes);
    for to in [&lc, &rr] {
        let writes = plan(to, &Overlay::new(), &state).unwrap().writes;
        let kinds: Vec<&str> = writes
            .iter()
            .map(|w| match w {
                Write::UpsertTable(..) => "table",
                Write::UpsertService(..) => "service",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["table", "service", "table"], "{writes:?}");
        // apply_all checks every prefix under the entry's own policy.
        apply_all(&mut state, &writes);
    }
}

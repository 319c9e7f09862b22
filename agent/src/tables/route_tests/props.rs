//! Properties of caller-class planning over random meshes, bans and plan sequences.

use super::*;

const LABELS: [&str; 3] = ["red", "green", "blue"];
const ZONE_NAMES: [&str; 2] = ["a", "b"];

fn label_map(choice: u8) -> BTreeMap<String, String> {
    match choice % 4 {
        3 => BTreeMap::new(),
        c => BTreeMap::from([("color".to_owned(), LABELS[c as usize].to_owned())]),
    }
}

fn zone_of(choice: u8) -> Option<String> {
    match choice % 3 {
        2 => None,
        c => Some(ZONE_NAMES[c as usize].to_owned()),
    }
}

prop_compose! {
    fn arb_route()(matches in any::<u8>(), to in any::<u8>(), split in any::<bool>(),
                   cut in 0u32..=100, other in any::<u8>(), none in any::<bool>()) -> RouteSpec {
        let (to, weight_split) = if split {
            (None, vec![
                SplitSpec { to: label_map(to), percent: cut },
                SplitSpec { to: label_map(other), percent: 100 - cut },
            ])
        } else {
            (Some(label_map(to)), Vec::new())
        };
        RouteSpec {
            matches: label_map(matches),
            to,
            weight_split,
            fallback: if none { Fallback::None } else { Fallback::All },
        }
    }
}

prop_compose! {
    fn arb_service(vip: u8)(
        backends in prop::collection::vec((2u8..14, 0u32..4, any::<u8>(), any::<u8>()), 1..7),
        routes in prop::collection::vec(arb_route(), 0..3),
        locality in prop::option::of(0u32..=100),
        lb in prop::sample::select(LbPolicy::ALL),
    ) -> ServiceSpec {
        let mut seen = BTreeSet::new();
        let mut specs: Vec<BackendSpec> = backends
            .into_iter()
            .filter(|b| seen.insert(b.0))
            .map(|(host, weight, label, zone)| BackendSpec {
                labels: label_map(label),
                zone: zone_of(zone),
                ..BackendSpec::new(format!("127.0.0.{host}:81").parse().unwrap(), weight)
            })
            .collect();
        if specs.iter().all(|b| b.weight == 0) {
            specs[0].weight = 1;
        }
        let mut s = ServiceSpec::new(&format!("s{vip}"), format!("127.100.90.{vip}").parse().unwrap(), 80, lb, specs);
        s.routes = routes;
        s.locality = locality.map(|p| LocalitySpec { prefer_zone: true, min_healthy_percent: p });
        s
    }
}

fn arb_workloads() -> impl Strategy<Value = Vec<WorkloadSpec>> {
    prop::collection::vec((any::<u8>(), any::<u8>()), 0..5).prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, (label, zone))| WorkloadSpec {
                name: format!("w{i}"),
                cgroup: format!("t/w{i}"),
                labels: label_map(label),
                priority: Default::default(),
                zone: zone_of(zone),
                node: None,
            })
            .collect()
    })
}

fn arb_mesh() -> impl Strategy<Value = (MeshConfig, Overlay, Option<String>)> {
    (
        prop::collection::vec(any::<bool>(), 1..4),
        arb_workloads(),
        prop::collection::vec(2u8..14, 0..6),
        prop::option::of(0u8..2),
    )
        .prop_flat_map(|(present, workloads, banned, node)| {
            let services: Vec<_> = present
                .iter()
                .enumerate()
                .filter(|(_, p)| **p)
                .map(|(i, _)| arb_service(i as u8 + 1))
                .collect();
            (services, Just(workloads), Just(banned), Just(node))
        })
        .prop_map(|(services, workloads, banned, node)| {
            let banned: BTreeSet<SocketAddr> = banned
                .iter()
                .map(|h| format!("127.0.0.{h}:81").parse().unwrap())
                .collect();
            let overlay: Overlay = services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        ServiceOverlay {
                            excluded: banned.clone(),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let cfg = MeshConfig {
                version: 1,
                services,
                workloads,
                enrollment: Default::default(),
            };
            (
                cfg,
                overlay,
                node.map(|z| ZONE_NAMES[z as usize].to_owned()),
            )
        })
}

/// Between any two writes: every service has its default table, and every table names only
/// backends that exist (the invariant of `plan_tests.rs`, now over class tables too).
fn assert_consistent(state: &KernelState) {
    for svc in state.services.values() {
        assert!(
            table(state, svc.id, CALLER_CLASS_DEFAULT).is_some(),
            "service {} has no table",
            svc.id
        );
    }
    for (key, t) in &state.tables {
        // A table without its entry yet (written first) is read by no connect.
        if !state.services.values().any(|s| s.id == key.service_id) {
            continue;
        }
        for id in routed(state, key.service_id, t) {
            assert!(
                state.backends.contains_key(id),
                "table {key:?} names missing backend {id}"
            );
        }
    }
}

/// After a plan: each class's effective table holds only backends of its service, is empty
/// only when it must be, and is what the class's weights say.
fn check_end_state(
    cfg: &MeshConfig,
    overlay: &Overlay,
    node: &Node,
    state: &KernelState,
) -> Result<(), TestCaseError> {
    for spec in &cfg.services {
        let key = crate::tables::addr::service_key(spec.vip, spec.port);
        let id = state.services[&key].id;
        let own: BTreeSet<SocketAddr> = spec.backends.iter().map(|b| b.addr).collect();
        let banned = &overlay[&spec.name].excluded;
        let any_healthy = spec
            .backends
            .iter()
            .any(|b| b.weight > 0 && !banned.contains(&b.addr));
        let callers = std::iter::once((CALLER_CLASS_DEFAULT, Caller::unknown(node))).chain(
            cfg.workloads
                .iter()
                .enumerate()
                .map(|(i, w)| (workload_class(i), Caller::workload(w, node))),
        );
        for (class, caller) in callers {
            let t = effective(state, id, class);
            for slot in routed(state, id, t) {
                let addr = addr_of(state, *slot);
                prop_assert!(
                    own.contains(&addr),
                    "class {} of {} routes to {} outside the service",
                    class,
                    spec.name,
                    addr
                );
                prop_assert!(
                    !banned.contains(&addr),
                    "class {} of {} routes to banned {}",
                    class,
                    spec.name,
                    addr
                );
            }
            let rule = spec.routes.iter().find(|r| r.matches_caller(caller.labels));
            let may_refuse = rule.is_some_and(|r| r.fallback == Fallback::None);
            if any_healthy && !may_refuse {
                prop_assert!(
                    !t.slots.is_empty(),
                    "class {} of {} has an empty table with healthy backends",
                    class,
                    spec.name
                );
            }
            let weights = class_weights(spec, banned, caller);
            let routed = crate::tables::route::is_routed(spec);
            let present = slots_by_addr(state, id, t);
            for (b, w) in spec.backends.iter().zip(&weights) {
                let here = present.contains_key(&b.addr.to_string());
                let want = if routed {
                    *w > 0
                } else {
                    b.weight > 0 && !banned.contains(&b.addr)
                };
                // Never a backend its class gives no weight. Every weighted one has a slot,
                // except in Maglev, where a share far below 1/1021 may claim no position.
                prop_assert!(
                    !here || want,
                    "class {} of {}: {} has slots",
                    class,
                    spec.name,
                    b.addr
                );
                if spec.lb != LbPolicy::Maglev {
                    prop_assert!(
                        here || !want,
                        "class {} of {}: {} has none",
                        class,
                        spec.name,
                        b.addr
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn class_tables_stay_consistent_within_their_service_and_never_empty_needlessly(
        steps in prop::collection::vec(arb_mesh(), 1..5)
    ) {
        let mut state = KernelState::default();
        for (cfg, overlay, zone) in &steps {
            let node = Node { zone: zone.clone() };
            let p = plan_for(cfg, overlay, &state, &node).unwrap();
            for w in &p.writes {
                state.apply(w);
                assert_consistent(&state);
            }
            check_end_state(cfg, overlay, &node, &state)?;
            prop_assert!(plan_for(cfg, overlay, &state, &node).unwrap().writes.is_empty(), "replanning writes nothing");
            // No table for a class that routes like class 0, none for an unflagged service.
            for (key, t) in &state.tables {
                if key.caller_class == CALLER_CLASS_DEFAULT { continue; }
                let svc = state.services.values().find(|s| s.id == key.service_id).unwrap();
                prop_assert!(svc.flags & SERVICE_CLASS_TABLES != 0);
                prop_assert_ne!(&t.slots, &table(&state, key.service_id, 0).unwrap().slots);
            }
        }
    }
}

//! The per-service plan gives exactly the whole plan's writes, over random changes of
//! services, backends (shared between services), policies, VIPs reused under another name,
//! and bans.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use proptest::prelude::*;
use sockmesh_model::{BackendSpec, ConfigDelta, LbPolicy, MeshConfig, ServiceSpec};

use super::plan_services;
use crate::tables::{
    overlay::{Overlay, ServiceOverlay},
    plan::{plan, KernelState},
    route::Node,
};

fn arb_config() -> impl Strategy<Value = MeshConfig> {
    let backend = (2u8..12, 0u32..5).prop_map(|(host, w)| (host, w));
    let svc = (
        0u8..8,
        prop::bool::ANY,
        prop::collection::vec(backend, 1..6),
        prop::sample::select(LbPolicy::ALL),
    );
    prop::collection::vec(svc, 0..8).prop_map(|services| {
        let mut seen = BTreeSet::new();
        let services = services
            .into_iter()
            .filter(|(vip, ..)| seen.insert(*vip))
            .map(|(vip, renamed, mut backends, lb)| {
                backends.sort();
                backends.dedup_by(|a, b| a.0 == b.0);
                if backends.iter().all(|b| b.1 == 0) {
                    backends[0].1 = 1;
                }
                // The same VIP under another name: a removed service's key taken by a new one.
                let name = if renamed {
                    format!("t{vip}")
                } else {
                    format!("s{vip}")
                };
                ServiceSpec::new(
                    &name,
                    format!("127.100.0.{vip}").parse().unwrap(),
                    80,
                    lb,
                    backends
                        .iter()
                        .map(|(host, weight)| BackendSpec {
                            addr: format!("127.0.0.{host}:81").parse::<SocketAddr>().unwrap(),
                            weight: *weight,
                            labels: Default::default(),
                            zone: None,
                        })
                        .collect(),
                )
            })
            .collect();
        MeshConfig {
            version: 1,
            services,
            workloads: Vec::new(),
            enrollment: Default::default(),
        }
    })
}

/// Bans: for each service name, some backend hosts excluded.
fn arb_overlay() -> impl Strategy<Value = Overlay> {
    prop::collection::btree_map(
        (prop::bool::ANY, 0u8..8).prop_map(|(t, v)| format!("{}{v}", if t { "t" } else { "s" })),
        prop::collection::btree_set(2u8..12, 0..3),
        0..4,
    )
    .prop_map(|bans| {
        bans.into_iter()
            .map(|(name, hosts)| {
                let excluded = hosts
                    .into_iter()
                    .map(|h| format!("127.0.0.{h}:81").parse().unwrap())
                    .collect();
                (
                    name,
                    ServiceOverlay {
                        excluded,
                        ..Default::default()
                    },
                )
            })
            .collect()
    })
}

/// Names whose overlay entry differs.
fn overlay_changes<'a>(a: &'a Overlay, b: &'a Overlay) -> impl Iterator<Item = &'a str> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
}

/// `previous` with the services of the VIPs `take` marks replaced by `next`'s (added,
/// changed or removed), the others kept: most services stay as they were.
fn mix(previous: &MeshConfig, next: &MeshConfig, take: &[bool]) -> MeshConfig {
    let vip = |s: &ServiceSpec| match s.vip {
        std::net::IpAddr::V4(a) => a.octets()[3] as usize,
        std::net::IpAddr::V6(_) => unreachable!(),
    };
    let mut services: Vec<ServiceSpec> = previous
        .services
        .iter()
        .filter(|s| !take[vip(s)])
        .chain(next.services.iter().filter(|s| take[vip(s)]))
        .cloned()
        .collect();
    services.sort_by_key(vip);
    MeshConfig {
        services,
        ..previous.clone()
    }
}

proptest! {
    #[test]
    fn the_per_service_plan_equals_a_whole_re_plan(
        first in arb_config(),
        steps in prop::collection::vec(
            (arb_config(), prop::collection::vec(prop::bool::weighted(0.3), 8), arb_overlay()),
            1..8,
        ),
    ) {
        let mut state = KernelState::default();
        let mut previous = mix(&first, &first, &[false; 8]);
        let mut old_overlay = Overlay::new();
        let steps: Vec<(MeshConfig, Overlay)> = steps
            .iter()
            .scan(previous.clone(), |cfg, (next, take, overlay)| {
                *cfg = mix(cfg, next, take);
                Some((cfg.clone(), overlay.clone()))
            })
            .collect();
        let first = plan(&previous, &old_overlay, &state).unwrap();
        for w in &first.writes {
            state.apply(w);
        }
        for (config, overlay) in &steps {
            let Some(delta) = ConfigDelta::between(&previous, config) else {
                continue; // reordered: only a whole plan says it
            };
            let touched: HashSet<&str> = delta
                .services()
                .chain(overlay_changes(&old_overlay, overlay))
                .collect();
            let whole = plan(config, overlay, &state);
            let part = plan_services(config, &previous, &touched, overlay, &state, &Node::default());
            let (whole, part) = match (whole, part) {
                (Ok(w), Ok(Some(p))) => (w, p),
                (Err(w), Err(p)) => {
                    prop_assert_eq!(w, p);
                    continue;
                }
                other => panic!("the plans disagree: {other:?}"),
            };
            prop_assert_eq!(&part.writes, &whole.writes);
            let touched_views: Vec<_> = whole
                .views
                .iter()
                .filter(|v| touched.contains(v.name.as_str()))
                .cloned()
                .collect();
            prop_assert_eq!(part.views, touched_views);
            for w in &whole.writes {
                state.apply(w);
            }
            previous = config.clone();
            old_overlay = overlay.clone();
        }
    }
}

use proptest::prelude::*;

use super::*;
use crate::config::tests::{mesh, service};
use crate::{HttpSpec, Protocol, Span};

fn spec(name: usize, vip: u8, backends: &[(u8, u32)]) -> ServiceSpec {
    let addrs: Vec<(String, u32)> = backends
        .iter()
        .map(|(host, weight)| (format!("127.0.0.{host}:8080"), *weight))
        .collect();
    let refs: Vec<(&str, u32)> = addrs.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    service(&format!("s{name}"), &format!("127.100.0.{vip}"), 80, &refs)
}

/// One edit a source can make to a config.
#[derive(Debug, Clone)]
enum Edit {
    Add {
        at: usize,
        backends: Vec<(u8, u32)>,
    },
    Remove {
        at: usize,
    },
    Reweigh {
        at: usize,
        weight: u32,
    },
    Readdress {
        at: usize,
        host: u8,
    },
    /// Turns a service into an http one with this timeout (or back to tcp with `None`).
    Http {
        at: usize,
        timeout_ms: Option<u64>,
    },
    Enrollment,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (
            any::<usize>(),
            prop::collection::vec((2u8..40, 1u32..5), 1..4)
        )
            .prop_map(|(at, backends)| Edit::Add { at, backends }),
        any::<usize>().prop_map(|at| Edit::Remove { at }),
        (any::<usize>(), 1u32..9).prop_map(|(at, weight)| Edit::Reweigh { at, weight }),
        (any::<usize>(), 40u8..80).prop_map(|(at, host)| Edit::Readdress { at, host }),
        (any::<usize>(), proptest::option::of(1u64..5_000))
            .prop_map(|(at, timeout_ms)| Edit::Http { at, timeout_ms }),
        Just(Edit::Enrollment),
    ]
}

/// Applies one edit; `next` numbers new services so names never repeat.
fn edit(cfg: &MeshConfig, e: &Edit, next: &mut usize) -> MeshConfig {
    let mut cfg = cfg.clone();
    let n = cfg.services.len();
    match e {
        Edit::Add { at, backends } => {
            *next += 1;
            let vip = (*next % 250 + 1) as u8;
            cfg.services
                .insert(at % (n + 1), spec(*next, vip, backends));
        }
        Edit::Remove { at } if n > 0 => {
            cfg.services.remove(at % n);
        }
        Edit::Reweigh { at, weight } if n > 0 => cfg.services[at % n].backends[0].weight = *weight,
        Edit::Readdress { at, host } if n > 0 => {
            cfg.services[at % n].backends[0].addr = format!("127.0.0.{host}:8080").parse().unwrap()
        }
        Edit::Http { at, timeout_ms } if n > 0 => {
            let service = &mut cfg.services[at % n];
            service.protocol = match timeout_ms {
                Some(_) => Protocol::Http,
                None => Protocol::Tcp,
            };
            service.http = timeout_ms.map(|ms| HttpSpec {
                timeout: Span::millis(ms),
                ..HttpSpec::default()
            });
        }
        Edit::Enrollment => {
            cfg.enrollment = match cfg.enrollment {
                Enrollment::All => Enrollment::Workloads,
                Enrollment::Workloads => Enrollment::All,
            }
        }
        _ => {}
    }
    cfg
}

proptest! {
    /// Version N+1 is exactly version N with the delta from N to N+1 applied, for any
    /// sequence of edits, and several revisions at once (an agent that missed some) too.
    #[test]
    fn a_delta_applied_to_n_gives_n_plus_one(
        start in 0usize..6,
        batches in prop::collection::vec(prop::collection::vec(arb_edit(), 1..4), 1..12),
    ) {
        let mut next = 0;
        let mut versions = vec![mesh((0..start).map(|i| {
            next = i;
            spec(i, (i + 1) as u8, &[(2, 1)])
        }).collect())];
        for batch in &batches {
            let mut cfg = versions.last().unwrap().clone();
            for e in batch {
                cfg = edit(&cfg, e, &mut next);
            }
            versions.push(cfg);
        }
        for pair in versions.windows(2) {
            let delta = ConfigDelta::between(&pair[0], &pair[1]).expect("edits keep the order");
            prop_assert_eq!(delta.is_empty(), pair[0] == pair[1]);
            // It travels as JSON.
            let wire: ConfigDelta = serde_json::from_slice(&serde_json::to_vec(&delta).unwrap()).unwrap();
            prop_assert_eq!(&wire, &delta);
            prop_assert_eq!(&wire.apply(pair[0].clone()).unwrap(), &pair[1]);
        }
        let first = versions.first().unwrap();
        let last = versions.last().unwrap();
        let skip = ConfigDelta::between(first, last).unwrap();
        prop_assert_eq!(&skip.apply(first.clone()).unwrap(), last);
    }
}

#[test]
fn a_one_service_change_carries_that_service_only() {
    let old = mesh(
        (0..100)
            .map(|i| spec(i, (i + 1) as u8, &[(2, 1), (3, 1)]))
            .collect(),
    );
    let mut new = old.clone();
    new.services[42].backends[1].weight = 7;
    let delta = ConfigDelta::between(&old, &new).unwrap();
    assert_eq!(delta.changed, [new.services[42].clone()]);
    assert!(delta.added.is_empty() && delta.removed.is_empty());
    assert!(delta.workloads.is_none() && delta.enrollment.is_none());
    assert_eq!(delta.services().collect::<Vec<_>>(), ["s42"]);
    let bytes = serde_json::to_vec(&delta).unwrap().len();
    assert!(bytes < 1024, "{bytes} bytes");
}

#[test]
fn a_changed_http_block_is_a_service_change() {
    let mut old = mesh(vec![spec(1, 1, &[(2, 1)]), spec(2, 2, &[(2, 1)])]);
    old.services[1].protocol = Protocol::Http;
    let mut new = old.clone();
    new.services[1].http = Some(HttpSpec {
        per_try_timeout: Some(Span::millis(100)),
        ..HttpSpec::default()
    });
    let delta = ConfigDelta::between(&old, &new).unwrap();
    assert_eq!(delta.changed, [new.services[1].clone()]);
    assert_eq!(delta.apply(old).unwrap(), new);
}

#[test]
fn a_reordered_config_needs_a_snapshot() {
    let old = mesh(vec![spec(1, 1, &[(2, 1)]), spec(2, 2, &[(2, 1)])]);
    let mut new = old.clone();
    new.services.reverse();
    assert_eq!(ConfigDelta::between(&old, &new), None);
    let mut other_version = old.clone();
    other_version.version = 2;
    assert_eq!(ConfigDelta::between(&old, &other_version), None);
}

#[test]
fn a_delta_that_does_not_fit_its_base_is_refused_whole() {
    let base = mesh(vec![spec(1, 1, &[(2, 1)]), spec(2, 2, &[(2, 1)])]);
    let added = |name: usize, after: Option<&str>| AddedService {
        after: after.map(str::to_owned),
        service: spec(name, 9, &[(2, 1)]),
    };
    let cases = [
        (
            ConfigDelta {
                removed: vec!["s7".into()],
                ..Default::default()
            },
            DeltaError::RemovedUnknown("s7".into()),
        ),
        (
            ConfigDelta {
                changed: vec![spec(7, 7, &[(2, 1)])],
                ..Default::default()
            },
            DeltaError::ChangedUnknown("s7".into()),
        ),
        (
            ConfigDelta {
                added: vec![added(1, None)],
                ..Default::default()
            },
            DeltaError::AddedExisting("s1".into()),
        ),
        (
            ConfigDelta {
                added: vec![added(5, Some("s2"))],
                removed: vec!["s2".into()],
                ..Default::default()
            },
            DeltaError::AfterUnknown("s2".into()),
        ),
        (
            ConfigDelta {
                added: vec![added(5, Some("s6")), added(6, Some("s5"))],
                ..Default::default()
            },
            DeltaError::AfterUnknown("s6".into()),
        ),
        (
            ConfigDelta {
                changed: vec![spec(1, 1, &[(3, 1)])],
                removed: vec!["s1".into()],
                ..Default::default()
            },
            DeltaError::Repeated("s1".into()),
        ),
    ];
    for (delta, want) in cases {
        assert_eq!(delta.apply(base.clone()), Err(want));
    }
}

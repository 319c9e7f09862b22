use proptest::prelude::*;

use super::*;
use crate::config::tests::{mesh, service, workload};
use crate::{CallerSpec, Enrollment, MeshConfig};

/// One edit, often one that breaks a rule: VIPs and backends are drawn from few
/// addresses, so VIPs collide, backends point at VIPs, weights sum to 0, callers name
/// workloads that are gone.
#[derive(Debug, Clone)]
enum Edit {
    Add {
        at: usize,
        vip: u8,
        backends: Vec<(u8, u32)>,
        callers: bool,
    },
    Remove {
        at: usize,
    },
    Revip {
        at: usize,
        vip: u8,
    },
    Readdress {
        at: usize,
        host: u8,
    },
    Reweigh {
        at: usize,
        weight: u32,
    },
    Workloads {
        count: u8,
    },
    /// Http settings, valid or not ([`http_edit`]).
    Http {
        at: usize,
        kind: u8,
    },
    Enrollment,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..12, prop::collection::vec((0u8..16, 0u32..3), 1..4), any::<bool>())
            .prop_map(|(at, vip, backends, callers)| Edit::Add { at, vip, backends, callers }),
        2 => any::<usize>().prop_map(|at| Edit::Remove { at }),
        1 => (any::<usize>(), 1u8..12).prop_map(|(at, vip)| Edit::Revip { at, vip }),
        2 => (any::<usize>(), 0u8..16).prop_map(|(at, host)| Edit::Readdress { at, host }),
        1 => (any::<usize>(), 0u32..3).prop_map(|(at, weight)| Edit::Reweigh { at, weight }),
        1 => (0u8..3).prop_map(|count| Edit::Workloads { count }),
        1 => (any::<usize>(), 0u8..4).prop_map(|(at, kind)| Edit::Http { at, kind }),
        1 => Just(Edit::Enrollment),
    ]
}

/// A backend address: hosts below 4 are VIP:ports of the mesh's range (a routing loop or a
/// VIP routed twice), the others plain backends.
fn backend(host: u8) -> String {
    if host < 4 {
        format!("127.100.0.{}:80", host + 1)
    } else {
        format!("127.0.0.{host}:8080")
    }
}

fn edit(cfg: &mut MeshConfig, e: &Edit, next: &mut usize) {
    let n = cfg.services.len();
    match e {
        Edit::Add {
            at,
            vip,
            backends,
            callers,
        } => {
            *next += 1;
            let addrs: Vec<(String, u32)> =
                backends.iter().map(|(h, w)| (backend(*h), *w)).collect();
            let refs: Vec<(&str, u32)> = addrs.iter().map(|(a, w)| (a.as_str(), *w)).collect();
            let mut s = service(&format!("s{next}"), &format!("127.100.0.{vip}"), 80, &refs);
            if *callers {
                s.allowed_callers = Some(vec![CallerSpec::Workload("w1".into())]);
            }
            cfg.services.insert(at % (n + 1), s);
        }
        Edit::Remove { at } if n > 0 => {
            cfg.services.remove(at % n);
        }
        Edit::Revip { at, vip } if n > 0 => {
            cfg.services[at % n].vip = format!("127.100.0.{vip}").parse().unwrap()
        }
        Edit::Readdress { at, host } if n > 0 => {
            cfg.services[at % n].backends[0].addr = backend(*host).parse().unwrap()
        }
        Edit::Reweigh { at, weight } if n > 0 => cfg.services[at % n].backends[0].weight = *weight,
        Edit::Workloads { count } => {
            cfg.workloads = (1..=*count)
                .map(|i| workload(&format!("w{i}"), &format!("mesh/w{i}"), &[]))
                .collect();
        }
        Edit::Http { at, kind } if n > 0 => http_edit(&mut cfg.services[at % n], *kind),
        Edit::Enrollment => {
            cfg.enrollment = match cfg.enrollment {
                Enrollment::All => Enrollment::Workloads,
                Enrollment::Workloads => Enrollment::All,
            }
        }
        _ => {}
    }
}

/// 0: an http service with a block; 1: back to tcp, keeping the block (refused); 2: a
/// per-try timeout above the timeout (refused when http); 3: plain tcp.
fn http_edit(s: &mut crate::ServiceSpec, kind: u8) {
    use crate::{HttpSpec, Protocol, Span};
    match kind {
        0 => {
            s.protocol = Protocol::Http;
            s.http = Some(HttpSpec {
                per_try_timeout: Some(Span::millis(100)),
                ..HttpSpec::default()
            });
        }
        1 => s.protocol = Protocol::Tcp,
        2 => {
            if let Some(http) = &mut s.http {
                http.per_try_timeout = Some(Span::secs(60));
            }
        }
        _ => {
            s.protocol = Protocol::Tcp;
            s.http = None;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Over random edits (many of them breaking a rule), a step gives the fingerprint and
    /// the verdict of the whole check, and a committed step the index of the whole config.
    /// Like an agent, the walk keeps the last valid config as the base of the next delta.
    #[test]
    fn a_step_answers_as_the_whole_config_does(
        edits in prop::collection::vec(arb_edit(), 1..40),
    ) {
        let mut next = 0;
        let mut base = mesh(vec![service("s0", "127.100.0.1", 80, &[("127.0.0.5:8080", 1)])]);
        base.validate().unwrap();
        let mut index = ConfigIndex::of(&base);
        let mut cfg = base.clone();
        for e in &edits {
            edit(&mut cfg, e, &mut next);
            let Some(delta) = ConfigDelta::between(&base, &cfg) else { continue };
            let after = delta.apply(base.clone()).unwrap();
            prop_assert_eq!(&after, &cfg);
            let step = index.step(&base, &delta, &after);
            prop_assert_eq!(step.fingerprint(), after.fingerprint());
            let verdict = index.validate(&step, &after);
            prop_assert_eq!(&verdict, &after.validate());
            if verdict.is_ok() {
                index.commit(step);
                prop_assert_eq!(&index, &ConfigIndex::of(&after));
                prop_assert_eq!(index.fingerprint(&after), after.fingerprint());
                base = after;
            }
        }
    }
}

/// The edits above must give valid and invalid configs alike, or the equality of verdicts
/// says little: count them over a fixed sample.
#[test]
fn the_walk_meets_valid_and_invalid_configs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..200 {
        let edits = prop::collection::vec(arb_edit(), 1..40)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut next = 0;
        let mut base = mesh(vec![service(
            "s0",
            "127.100.0.1",
            80,
            &[("127.0.0.5:8080", 1)],
        )]);
        let mut cfg = base.clone();
        for e in &edits {
            edit(&mut cfg, e, &mut next);
            if cfg.validate().is_ok() {
                base = cfg.clone();
                taken += 1;
            } else {
                refused += 1;
                cfg = base.clone();
            }
        }
    }
    assert!(
        taken > 500 && refused > 500,
        "taken {taken}, refused {refused}"
    );
}

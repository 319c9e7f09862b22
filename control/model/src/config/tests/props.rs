//! Property tests: every config assembled from valid parts validates, and survives a YAML
//! round trip (and a JSON one) unchanged: the CLI writes configs the agent must read back
//! identically.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::{
    CallerSelector, CallerSpec, Fallback, HttpMatch, HttpRouteSpec, HttpSpec, LocalitySpec,
    Protocol, RetryOn, RetrySpec, RouteSpec, SliKind, SloSpec, Span, SplitSpec, WorkloadSpec,
    MAX_BACKENDS_PER_SERVICE, MAX_RETRY_ATTEMPTS, MAX_WEIGHT,
};

fn lb() -> impl Strategy<Value = LbPolicy> {
    prop::sample::select(LbPolicy::ALL)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?"
}

/// Backends of one family. Addresses stay in 127.0.0.0/16 (IPv4) or fd00::/64 (IPv6), apart
/// from the VIP ranges below, so no backend can equal any VIP.
fn backends(v6: bool) -> impl Strategy<Value = Vec<BackendSpec>> {
    let addr = (any::<u16>(), 1..=u16::MAX).prop_map(move |(host, port)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host))
        } else {
            let [hi, lo] = host.to_be_bytes();
            IpAddr::V4(Ipv4Addr::new(127, 0, hi, lo))
        };
        SocketAddr::new(ip, port)
    });
    (
        proptest::collection::btree_set(addr, 1..=16),
        proptest::collection::vec((0..=MAX_WEIGHT, labels(), zone()), 16),
        1..=MAX_WEIGHT,
    )
        .prop_map(
            |(addrs, rest, first_weight): (BTreeSet<SocketAddr>, Vec<_>, _)| {
                addrs
                    .into_iter()
                    .zip(rest)
                    .enumerate()
                    .map(|(i, (addr, (weight, labels, zone)))| BackendSpec {
                        addr,
                        // One weight above 0 keeps the total weight positive.
                        weight: if i == 0 { first_weight } else { weight },
                        labels,
                        zone,
                    })
                    .collect()
            },
        )
}

/// Service `index` gets VIP 127.100.0.0/16 or fd00:100::/32 plus its index, so VIPs are unique
/// whatever else is drawn.
fn service_at(index: usize, name: String) -> impl Strategy<Value = ServiceSpec> {
    any::<bool>().prop_flat_map(move |v6| {
        let vip = if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x100,
                0,
                0,
                0,
                0,
                0,
                index as u16 + 1,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(127, 100, 0, index as u8 + 1))
        };
        let name = name.clone();
        (
            (1..=u16::MAX, lb(), backends(v6), slos()),
            routes(),
            proptest::option::of((any::<bool>(), 0..=100u32)),
            proptest::option::of(proptest::option::of(http())),
        )
            .prop_map(
                move |((port, lb, backends, slos), routes, locality, http)| {
                    let (protocol, http) = match http {
                        None => (Protocol::Tcp, None),
                        Some(block) => (Protocol::Http, block.map(|b| b.aimed_at(&backends))),
                    };
                    ServiceSpec {
                        slos,
                        routes,
                        locality: locality.map(|(prefer_zone, min_healthy_percent)| LocalitySpec {
                            prefer_zone,
                            min_healthy_percent,
                        }),
                        protocol,
                        http,
                        ..ServiceSpec::new(&name, vip, port, lb, backends)
                    }
                },
            )
    })
}

/// An http block whose routes still need their targets: route `k` goes to the labels of
/// backend `k % len` (so every route names at least one backend).
#[derive(Debug, Clone)]
struct HttpDraft(HttpSpec);

impl HttpDraft {
    fn aimed_at(mut self, backends: &[BackendSpec]) -> HttpSpec {
        for (k, route) in self.0.routes.iter_mut().enumerate() {
            route.to = backends[k % backends.len()].labels.clone();
        }
        self.0
    }
}

fn http() -> impl Strategy<Value = HttpDraft> {
    let on = prop_oneof![
        Just(RetryOn::ConnectFailure),
        Just(RetryOn::RefusedStream),
        Just(RetryOn::Reset),
        Just(RetryOn::PerTryTimeout),
        Just(RetryOn::GatewayError),
        Just(RetryOn::Status5xx),
        (400u16..=599).prop_map(RetryOn::Status),
    ];
    let matches = (
        proptest::option::of("/[a-zA-Z0-9/._~%-]{0,30}"),
        any::<bool>(),
        proptest::option::of("[A-Z]{1,10}"),
        proptest::collection::btree_map("[a-z0-9-]{1,20}", "[!-~]([ -~]{0,20}[!-~])?", 0..3),
    )
        .prop_map(|(path, exact, method, headers)| HttpMatch {
            path_prefix: path.clone().filter(|_| !exact),
            path_exact: path.filter(|_| exact),
            method,
            headers,
        });
    let route = matches.prop_map(|matches| HttpRouteSpec {
        matches,
        to: BTreeMap::new(),
    });
    (
        (1u64..=120_000, 0u64..=100),
        (0..=MAX_RETRY_ATTEMPTS, 0..=100u32, any::<bool>()),
        proptest::collection::btree_set(on, 0..5),
        proptest::collection::vec(route, 0..3),
    )
        .prop_map(
            |((timeout_ms, per_try_pct), (attempts, budget_percent, non_idem), on, routes)| {
                let per_try = timeout_ms * per_try_pct / 100;
                HttpDraft(HttpSpec {
                    timeout: Span::millis(timeout_ms),
                    per_try_timeout: (per_try > 0).then(|| Span::millis(per_try)),
                    retries: RetrySpec {
                        attempts,
                        on: on.into_iter().collect(),
                        budget_percent,
                        retry_non_idempotent: non_idem,
                    },
                    routes,
                })
            },
        )
}

/// Up to three SLOs with distinct names, any objective strictly inside (0, 1) (floats must
/// survive the YAML round trip bit for bit), and a threshold exactly when the SLI needs one.
fn slos() -> impl Strategy<Value = Vec<SloSpec>> {
    let sli = prop_oneof![
        Just(SliKind::ConnectSuccess),
        Just(SliKind::ConnectLatency),
        Just(SliKind::Srtt),
    ];
    let one = (
        sli,
        1e-9f64..0.999_999_999,
        1u64..=90 * 86_400,
        1u64..=60_000,
    );
    proptest::collection::btree_map(name(), one, 0..3).prop_map(|slos| {
        slos.into_iter()
            .map(|(name, (sli, objective, window_s, threshold_ms))| SloSpec {
                name,
                sli,
                objective,
                window: Span::secs(window_s),
                threshold: sli.needs_threshold().then(|| Span::millis(threshold_ms)),
            })
            .collect()
    })
}

/// Zone names: the whole allowed alphabet, or none.
fn zone() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-zA-Z0-9_.-]{1,63}")
}

/// Up to three routes: a match, then `to` or a weight split whose percents (cut points of
/// 0..=100) sum to 100, and either fallback.
fn routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    let split = proptest::collection::vec((labels(), 0..=100u32), 1..4).prop_map(|parts| {
        let mut cuts: Vec<u32> = parts.iter().map(|p| p.1).collect();
        cuts.sort_unstable();
        let mut last = 0;
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (to, _))| {
                let end = if i + 1 == n { 100 } else { cuts[i] };
                let percent = end - last;
                last = end;
                SplitSpec { to, percent }
            })
            .collect::<Vec<_>>()
    });
    let route = (
        labels(),
        prop_oneof![labels().prop_map(Ok), split.prop_map(Err)],
        any::<bool>(),
    )
        .prop_map(|(matches, target, none)| {
            let (to, weight_split) = match target {
                Ok(to) => (Some(to), Vec::new()),
                Err(split) => (None, split),
            };
            RouteSpec {
                matches,
                to,
                weight_split,
                fallback: if none { Fallback::None } else { Fallback::All },
            }
        });
    proptest::collection::vec(route, 0..3)
}

/// Label values are any printable text (YAML must quote `true`, `1`, `: x`, `#x` and the
/// like to read them back as the same string); keys use the whole allowed alphabet.
fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[a-zA-Z0-9_./-]{1,63}", "\\PC{0,63}", 0..4)
}

/// Workload `index` gets a cgroup ending in its index, so cgroups are unique whatever the
/// drawn prefix (relative or absolute). Prefix components never start with '.', so none is
/// `..`.
fn workloads() -> impl Strategy<Value = Vec<WorkloadSpec>> {
    proptest::collection::btree_set(name(), 0..4).prop_flat_map(|names| {
        let workloads: Vec<_> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    "(/sys/fs/cgroup/)?([a-z0-9_-][a-z0-9._-]{0,7}/){0,2}",
                    labels(),
                    zone(),
                )
                    .prop_map(move |(prefix, labels, zone)| WorkloadSpec {
                        name: name.clone(),
                        cgroup: format!("{prefix}w{i}"),
                        labels,
                        priority: Default::default(),
                        zone,
                        node: None,
                    })
            })
            .collect();
        workloads
    })
}

fn config() -> impl Strategy<Value = MeshConfig> {
    let services = proptest::collection::btree_set(name(), 0..6).prop_flat_map(|names| {
        let services: Vec<_> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| service_at(i, name))
            .collect();
        services
    });
    let callers = proptest::collection::vec(proptest::option::of(allowed_callers()), 6);
    (services, workloads(), callers).prop_map(|(mut services, workloads, callers)| {
        for (service, entries) in services.iter_mut().zip(callers) {
            // Names must be workloads: keep the drawn ones that exist.
            service.allowed_callers = entries.map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|entry| match entry {
                        Ok(i) => workloads.get(i).map(|w| CallerSpec::from(w.name.as_str())),
                        Err(selector) => Some(selector),
                    })
                    .collect()
            });
        }
        MeshConfig {
            workloads,
            ..mesh(services)
        }
    })
}

/// `allowed_callers` entries: a workload by index (`Ok`) or a selector (`Err`) with at
/// least one field, over the whole alphabet of each.
fn allowed_callers() -> impl Strategy<Value = Vec<Result<usize, CallerSpec>>> {
    let selector = (
        proptest::option::of("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"),
        proptest::option::of("[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?"),
        labels(),
    )
        .prop_map(|(namespace, service_account, labels)| {
            let namespace = match (&namespace, &service_account) {
                (None, None) if labels.is_empty() => Some("default".to_owned()),
                _ => namespace,
            };
            CallerSpec::Selector(CallerSelector {
                namespace,
                service_account,
                labels,
            })
        });
    let entry = prop_oneof![(0..4usize).prop_map(Ok), selector.prop_map(Err)];
    proptest::collection::vec(entry, 0..5)
}

proptest! {
    #[test]
    fn valid_parts_make_a_valid_config(cfg in config()) {
        prop_assert!(cfg.services.iter().all(|s| s.backends.len() <= MAX_BACKENDS_PER_SERVICE));
        if let Err(err) = cfg.validate() {
            return Err(TestCaseError::fail(format!("{err}")));
        }
    }

    #[test]
    fn yaml_round_trip_is_lossless(cfg in config()) {
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        let parsed = parse_config(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&parsed, &cfg);
        prop_assert_eq!(parsed.fingerprint(), cfg.fingerprint());
    }

    #[test]
    fn json_round_trip_is_lossless(cfg in config()) {
        // The control plane may ship configs as JSON; the same model must read it back.
        let json = serde_json::to_string(&cfg).unwrap();
        let parsed: MeshConfig = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(parsed, cfg);
    }
}

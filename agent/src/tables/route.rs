//! Caller classes: which backends (and with what weights) one class of callers of a service
//! gets, from the service's `routes:`, its `locality:` and the backends kept out by the
//! health engine.
//!
//! A caller class is a configured workload (class = workload index + 1, the same number the
//! kernel's caller map and ACL use); class 0 (`CALLER_CLASS_DEFAULT`) is every other caller
//! (not a workload) and every workload whose table would be the same as class 0's. The agent
//! writes a class table only where it differs from the class-0 table, and the kernel falls
//! back to class 0 when a caller's class has no table, so the number of tables is what the
//! routes actually distinguish, not workloads x services.
//!
//! For one caller of one service:
//!
//! 1. **Route.** The first rule whose `match` labels the caller carries picks the backend
//!    subsets: `to` (one subset, 100 %) or `weight_split` (several, with percents). No rule
//!    matches: the whole service, 100 %.
//! 2. **Health and locality, per subset.** A subset's usable members are its backends with a
//!    weight above 0 that are not excluded (banned or awaiting a probe). With `locality`
//!    and a caller zone, the members in the caller's zone are used alone while their healthy
//!    weight is at least `min_healthy_percent` of their total weight (and above 0);
//!    otherwise every healthy member, whatever its zone.
//! 3. **Fallback.** Subsets left empty give their percent to the others (shares are
//!    renormalised). If every subset is empty: `fallback: all` uses the whole service (with
//!    locality, as in 2), `fallback: none` leaves the class with an empty table (connects
//!    refused, `no_backend`).
//! 4. **Weights.** One subset: the backends' own weights (so 1:1:2 is still a 4-slot table).
//!    Several: each backend gets `percent x weight / subset weight`, summed over the subsets
//!    it is in, scaled to integers; the slot table then reduces them by their gcd.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use sockmesh_model::{Fallback, ServiceSpec, WorkloadSpec};

/// What the node knows that the config does not: its own zone (`--zone`), the zone of
/// callers that are not a workload with a `zone:` of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Node {
    pub zone: Option<String>,
}

/// The kernel caller class of workload `index` (its position under `workloads:`).
pub(crate) fn workload_class(index: usize) -> u32 {
    index as u32 + 1
}

/// Who is connecting, as far as routing cares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub zone: Option<&'a str>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Caller<'a> {
    /// A caller that is not a configured workload: no labels, the node's zone.
    pub(crate) fn unknown(node: &'a Node) -> Self {
        Caller {
            labels: &NO_LABELS,
            zone: node.zone.as_deref(),
        }
    }

    /// A workload's callers: its labels, its zone or else the node's.
    pub(crate) fn workload(w: &'a WorkloadSpec, node: &'a Node) -> Self {
        Caller {
            labels: &w.labels,
            zone: w.zone.as_deref().or(node.zone.as_deref()),
        }
    }
}

/// Whether `spec` can give different callers different tables (routes, or an active zone
/// preference). Services without either keep the single class-0 table they always had.
pub(crate) fn is_routed(spec: &ServiceSpec) -> bool {
    !spec.routes.is_empty() || spec.locality.as_ref().is_some_and(|l| l.prefer_zone)
}

/// Weights of a plain (unrouted) table: configured weights, excluded backends at 0 (as
/// before routes existed, so such tables are unchanged).
pub(crate) fn plain_weights(spec: &ServiceSpec, excluded: &BTreeSet<SocketAddr>) -> Vec<u32> {
    spec.backends
        .iter()
        .map(|b| {
            if excluded.contains(&b.addr) {
                0
            } else {
                b.weight
            }
        })
        .collect()
}

/// Scale of the weights of a split: percent x SPLIT_SCALE fits a u32 with room to spare
/// (100 x 10^6 < 2^32), and keeps rounding far below one slot of 1024.
const SPLIT_SCALE: u64 = 1_000_000;

/// Per-backend weights (indexes of `spec.backends`) of `caller`'s table; all zero means an
/// empty table (connects refused).
pub(crate) fn class_weights(
    spec: &ServiceSpec,
    excluded: &BTreeSet<SocketAddr>,
    caller: Caller<'_>,
) -> Vec<u32> {
    let all = BTreeMap::new();
    let (parts, fallback) = match spec.routes.iter().find(|r| r.matches_caller(caller.labels)) {
        Some(rule) => (rule.parts(), rule.fallback),
        None => (vec![(&all, 100)], Fallback::All),
    };
    let mut chosen: Vec<(Vec<usize>, u32)> = parts
        .into_iter()
        .filter(|(_, percent)| *percent > 0)
        .filter_map(|(selector, percent)| {
            let members = (0..spec.backends.len())
                .filter(|&i| spec.backends[i].selected_by(selector))
                .collect();
            let set = usable(spec, members, excluded, caller.zone);
            (!set.is_empty()).then_some((set, percent))
        })
        .collect();
    if chosen.is_empty() && fallback == Fallback::All {
        let set = usable(
            spec,
            (0..spec.backends.len()).collect(),
            excluded,
            caller.zone,
        );
        if !set.is_empty() {
            chosen.push((set, 100));
        }
    }
    let mut weights = vec![0u32; spec.backends.len()];
    match chosen.as_slice() {
        [] => {}
        [(set, _)] => {
            for &i in set {
                weights[i] = spec.backends[i].weight;
            }
        }
        parts => {
            for (set, percent) in parts {
                let total: u64 = set
                    .iter()
                    .map(|&i| u64::from(spec.backends[i].weight))
                    .sum();
                for &i in set {
                    let w = u64::from(*percent) * SPLIT_SCALE * u64::from(spec.backends[i].weight)
                        / total;
                    // A backend in several subsets sums at most 100 % x SPLIT_SCALE.
                    weights[i] = weights[i].saturating_add(w as u32).max(1);
                }
            }
        }
    }
    reduce(&mut weights);
    weights
}

/// Divides weights by their gcd: tables depend only on proportions, and reduced weights make
/// "same table as class 0" a plain comparison.
fn reduce(weights: &mut [u32]) {
    let g = weights.iter().fold(0u32, |a, &w| gcd(a, w));
    if g > 1 {
        for w in weights {
            *w /= g;
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The members of a subset the caller may use: weight above 0, not excluded, and, with a zone
/// preference and a caller zone, only those of the caller's zone while that zone is healthy
/// enough.
fn usable(
    spec: &ServiceSpec,
    members: Vec<usize>,
    excluded: &BTreeSet<SocketAddr>,
    zone: Option<&str>,
) -> Vec<usize> {
    let backends = &spec.backends;
    let members: Vec<usize> = members
        .into_iter()
        .filter(|&i| backends[i].weight > 0)
        .collect();
    let healthy = |i: &usize| !excluded.contains(&backends[*i].addr);
    if let (Some(locality), Some(zone)) = (&spec.locality, zone) {
        if locality.prefer_zone {
            let local: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&i| backends[i].zone.as_deref() == Some(zone))
                .collect();
            let weight = |set: &mut dyn Iterator<Item = usize>| -> u64 {
                set.map(|i| u64::from(backends[i].weight)).sum()
            };
            let total = weight(&mut local.iter().copied());
            let up = weight(&mut local.iter().copied().filter(healthy));
            if up > 0 && up * 100 >= u64::from(locality.min_healthy_percent) * total {
                return local.into_iter().filter(healthy).collect();
            }
        }
    }
    members.into_iter().filter(healthy).collect()
}

/// The callers of a routed service whose table differs from class 0, as (class, weights),
/// plus class 0's weights. Unrouted services: class 0's plain weights and no classes.
pub(crate) fn service_classes(
    spec: &ServiceSpec,
    excluded: &BTreeSet<SocketAddr>,
    workloads: &[WorkloadSpec],
    node: &Node,
) -> (Vec<u32>, Vec<(u32, Vec<u32>)>) {
    if !is_routed(spec) {
        return (plain_weights(spec, excluded), Vec::new());
    }
    let default = class_weights(spec, excluded, Caller::unknown(node));
    let classes = workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let weights = class_weights(spec, excluded, Caller::workload(w, node));
            (weights != default).then(|| (workload_class(i), weights))
        })
        .collect();
    (default, classes)
}

//! Caller-based routes and locality: which of a service's backends a given caller may reach.
//!
//! ```yaml
//! routes:                          # ordered; the first rule whose `match` the caller has wins
//!   - match: {lane: canary}        # caller workload labels ({} or absent: every caller)
//!     to: {track: canary}          # backends carrying these labels
//!     fallback: all                # subset unhealthy: all | none (refuse)
//!   - match: {lane: beta}
//!     weight_split:                # or: shares between subsets, percents summing to 100
//!       - {to: {track: stable}, percent: 90}
//!       - {to: {track: canary}, percent: 10}
//! locality:
//!   prefer_zone: true              # stay in the caller's zone ...
//!   min_healthy_percent: 50        # ... while at least this share of it is healthy
//! ```
//!
//! The rules are compiled by the agent into slot tables per caller class (see
//! `agent/src/tables/route.rs`); this module only defines and checks them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::workload::{check_labels, unique_labels};

/// Most route rules one service may have: each is evaluated for every caller workload when
/// the agent plans, and a long list is more likely a generated mistake than a policy.
pub const MAX_ROUTES_PER_SERVICE: usize = 16;

/// Most subsets one weighted split may name.
pub const MAX_SPLITS_PER_ROUTE: usize = 8;

/// Longest zone name (a Kubernetes label value, like `topology.kubernetes.io/zone`'s).
pub const MAX_ZONE_LEN: usize = 63;

/// One caller-based route rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Labels the caller workload must all carry (equal values). Empty or absent: every
    /// caller, including callers that are not a configured workload.
    #[serde(
        rename = "match",
        default,
        deserialize_with = "unique_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub matches: BTreeMap<String, String>,
    /// The backends matching callers go to: every backend carrying all of these labels
    /// (`{}` selects every backend). Exactly one of `to` and `weight_split` is given.
    #[serde(
        default,
        deserialize_with = "some_labels",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<BTreeMap<String, String>>,
    /// A weighted split between subsets (canary percentages), instead of `to`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_split: Vec<SplitSpec>,
    /// What matching callers get when the selected backends have no healthy member.
    #[serde(default, skip_serializing_if = "super::is_default")]
    pub fallback: Fallback,
}

impl RouteSpec {
    /// Whether a caller with `labels` matches this rule.
    pub fn matches_caller(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The rule's subsets as (selector, percent): `to` is one subset with 100 %.
    pub fn parts(&self) -> Vec<(&BTreeMap<String, String>, u32)> {
        match &self.to {
            Some(to) => vec![(to, 100)],
            None => self
                .weight_split
                .iter()
                .map(|s| (&s.to, s.percent))
                .collect(),
        }
    }
}

/// One subset of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Backends carrying all of these labels.
    #[serde(deserialize_with = "unique_labels")]
    pub to: BTreeMap<String, String>,
    /// Share of the matching callers' connections, 0..=100; a split's percents sum to 100.
    pub percent: u32,
}

/// What a route does when its subset has no healthy backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Use every healthy backend of the service (the default: availability first).
    #[default]
    All,
    /// Refuse the connect (`result="no_backend"`): isolation first.
    None,
}

/// Zone preference for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalitySpec {
    /// Send callers to backends of their own zone (false: the block is inert).
    pub prefer_zone: bool,
    /// Stay in the zone while the healthy (not banned) share of its backends, by weight, is
    /// at least this percent; below it, fail over to the healthy backends of every zone.
    pub min_healthy_percent: u32,
}

impl Default for LocalitySpec {
    fn default() -> Self {
        Self {
            prefer_zone: true,
            min_healthy_percent: 50,
        }
    }
}

/// `to:` given (`Some`, possibly empty) versus absent (`None`, by `default`).
fn some_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    unique_labels(deserializer).map(Some)
}

/// Checks a zone name (as in `zone:` fields and the agent's `--zone`): 1-63 characters from
/// `A-Z a-z 0-9 _ . -`, a Kubernetes label value, so `topology.kubernetes.io/zone` values fit.
pub fn check_zone(zone: &str) -> Result<(), String> {
    if zone.is_empty() {
        return Err("zone must not be empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !zone.chars().all(allowed) {
        return Err(format!(
            "invalid zone {zone:?}: use letters, digits, '_', '.' and '-'"
        ));
    }
    if zone.len() > MAX_ZONE_LEN {
        return Err(format!(
            "zone {zone:?} is {} characters, more than the limit of {MAX_ZONE_LEN}",
            zone.len()
        ));
    }
    Ok(())
}

/// Checks a service's `routes:` and returns (field below the service, reason) of the first
/// rule broken. A selector that names no backend is accepted: with a dynamic source (pods
/// coming and going) an empty subset is a normal moment, and `fallback` covers it.
pub(super) fn check_routes(routes: &[RouteSpec]) -> Result<(), (String, String)> {
    if routes.len() > MAX_ROUTES_PER_SERVICE {
        return Err((
            "routes".to_owned(),
            format!(
                "{} routes, more than the limit of {MAX_ROUTES_PER_SERVICE}",
                routes.len()
            ),
        ));
    }
    for (k, route) in routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{k}].{field}");
        check_labels("match", &route.matches).map_err(|(f, r)| (at(&f), r))?;
        match (&route.to, route.weight_split.is_empty()) {
            (Some(_), false) => {
                return Err((
                    format!("routes[{k}]"),
                    "give either `to` or `weight_split`, not both".to_owned(),
                ))
            }
            (None, true) => {
                return Err((
                    format!("routes[{k}]"),
                    "a route needs `to` (a backend subset) or `weight_split`".to_owned(),
                ))
            }
            (Some(to), true) => {
                check_labels("to", to).map_err(|(f, r)| (at(&f), r))?;
            }
            (None, false) => check_split(&route.weight_split)
                .map_err(|(f, r)| (format!("routes[{k}].weight_split{f}"), r))?,
        }
    }
    Ok(())
}

/// (field suffix below `weight_split`, reason).
fn check_split(split: &[SplitSpec]) -> Result<(), (String, String)> {
    if split.len() > MAX_SPLITS_PER_ROUTE {
        return Err((
            String::new(),
            format!(
                "{} subsets, more than the limit of {MAX_SPLITS_PER_ROUTE}",
                split.len()
            ),
        ));
    }
    for (j, part) in split.iter().enumerate() {
        check_labels("to", &part.to).map_err(|(f, r)| (format!("[{j}].{f}"), r))?;
        if part.percent > 100 {
            return Err((
                format!("[{j}].percent"),
                format!("percent {} is above 100", part.percent),
            ));
        }
    }
    let total: u32 = split.iter().map(|p| p.percent).sum();
    if total != 100 {
        return Err((String::new(), format!("percents sum to {total}, not 100")));
    }
    Ok(())
}

/// Checks `locality:`; (field below the service, reason).
pub(super) fn check_locality(locality: &LocalitySpec) -> Result<(), (String, String)> {
    if locality.min_healthy_percent > 100 {
        return Err((
            "locality.min_healthy_percent".to_owned(),
            format!(
                "min_healthy_percent {} is above 100",
                locality.min_healthy_percent
            ),
        ));
    }
    Ok(())
}

//! Who may call a service: the entries of `allowed_callers`, and the one function that
//! decides which workloads a service admits.
//!
//! ```yaml
//! allowed_callers:
//!   - frontend                                   # a workload, by name
//!   - {namespace: shop, labels: {app: checkout}} # every workload matching all given fields
//!   - {service_account: batch}
//! ```
//!
//! A name is what a file config has always said. A selector is what Kubernetes users write:
//! workload names there are `<namespace>-<pod>` and change with every rollout, while a
//! namespace, a ServiceAccount and pod labels do not. `namespace` and `service_account` are
//! read from two workload labels, [`NAMESPACE_LABEL`] and [`SERVICE_ACCOUNT_LABEL`], which
//! the Kubernetes source sets from the pod (and a file config may set by hand), so a selector
//! is nothing but a label match with two well-known keys spelled out; `routes: match:` reads
//! the same labels.
//!
//! Callers that are not a workload (no cgroup of a configured workload) never match a
//! selector: a service with `allowed_callers` refuses them, as it always has.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::workload::{check_labels, unique_labels};
use super::{WorkloadSpec, MAX_LABEL_VALUE_LEN, MAX_MESH_WORKLOADS};

/// The workload label holding a workload's Kubernetes namespace (the Kubernetes source sets
/// it on every pod's workload); what a selector's `namespace` matches.
pub const NAMESPACE_LABEL: &str = "sockmesh.io/namespace";

/// The workload label holding the ServiceAccount its pod runs as (`spec.serviceAccountName`,
/// `default` when unset, as Kubernetes does); what a selector's `service_account` matches.
pub const SERVICE_ACCOUNT_LABEL: &str = "sockmesh.io/service-account";

/// Most selectors (`{namespace, service_account, labels}` entries) one service's
/// `allowed_callers` may hold: each is checked against every workload at each plan. Names
/// are looked up, not scanned, and are bounded by the mesh's workloads instead.
pub const MAX_CALLER_SELECTORS: usize = 32;

/// Most labels one caller selector may require.
pub const MAX_SELECTOR_LABELS: usize = 16;

/// One entry of a service's `allowed_callers`.
///
/// Serialized as what it was written as: a name is a plain string, so a config that only
/// names workloads has the fingerprint it had before selectors existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CallerSpec {
    /// The workload of this name (it must be under `workloads:`).
    Workload(String),
    /// Every workload that matches the selector (possibly none).
    Selector(CallerSelector),
}

/// Workloads by identity: every field given must match, at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSelector {
    /// The workload's [`NAMESPACE_LABEL`] equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload's [`SERVICE_ACCOUNT_LABEL`] equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The workload carries every one of these labels with the same value.
    #[serde(
        default,
        deserialize_with = "unique_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

impl CallerSelector {
    /// Whether a workload with `labels` matches: every field given is equal.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let has = |key: &str, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|v| labels.get(key).map(String::as_str) == Some(v.as_str()))
        };
        has(NAMESPACE_LABEL, &self.namespace)
            && has(SERVICE_ACCOUNT_LABEL, &self.service_account)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl From<&str> for CallerSpec {
    fn from(name: &str) -> Self {
        CallerSpec::Workload(name.to_owned())
    }
}

impl From<String> for CallerSpec {
    fn from(name: String) -> Self {
        CallerSpec::Workload(name)
    }
}

impl From<CallerSelector> for CallerSpec {
    fn from(selector: CallerSelector) -> Self {
        CallerSpec::Selector(selector)
    }
}

impl CallerSpec {
    /// The workload name, for a name entry.
    pub fn name(&self) -> Option<&str> {
        match self {
            CallerSpec::Workload(name) => Some(name),
            CallerSpec::Selector(_) => None,
        }
    }
}

/// Which of `workloads` an `allowed_callers` list admits, as indices into `workloads` in
/// their order: `None` for no list (every caller, workload or not, may connect), otherwise
/// the workloads named or matched by some entry (possibly none: nobody may connect).
///
/// The one decision the agent (kernel access list), the control plane and the tests share.
/// Costs one pass over the entries plus, per workload, a name lookup and the selectors.
pub fn admitted_workloads(
    allowed: Option<&[CallerSpec]>,
    workloads: &[WorkloadSpec],
) -> Option<Vec<usize>> {
    let allowed = allowed?;
    let mut names = HashSet::new();
    let mut selectors = Vec::new();
    for entry in allowed {
        match entry {
            CallerSpec::Workload(name) => {
                names.insert(name.as_str());
            }
            CallerSpec::Selector(s) => selectors.push(s),
        }
    }
    Some(
        workloads
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                names.contains(w.name.as_str()) || selectors.iter().any(|s| s.matches(&w.labels))
            })
            .map(|(i, _)| i)
            .collect(),
    )
}

/// Checks a service's `allowed_callers` and returns (field below the service, like
/// `allowed_callers[1].labels`, reason) for the first entry that breaks a rule. With
/// `workloads`, a name must be one of them; without (a MeshPolicy checked before the pods it
/// will meet are known), only the selectors and the list's size are checked.
pub fn check_allowed_callers(
    allowed: &[CallerSpec],
    workloads: Option<&[WorkloadSpec]>,
) -> Result<(), (String, String)> {
    if allowed.len() > MAX_MESH_WORKLOADS {
        // Longer than the mesh could have workloads to name: a generated mistake.
        return Err((
            "allowed_callers".to_owned(),
            format!(
                "{} entries, more than the limit of {MAX_MESH_WORKLOADS} (the most workloads a \
                 mesh may have)",
                allowed.len()
            ),
        ));
    }
    let mut selectors = 0;
    let mut names: Option<HashSet<&str>> = None;
    for (j, entry) in allowed.iter().enumerate() {
        let at = |field: &str| {
            if field.is_empty() {
                format!("allowed_callers[{j}]")
            } else {
                format!("allowed_callers[{j}].{field}")
            }
        };
        match entry {
            CallerSpec::Workload(name) => {
                let Some(workloads) = workloads else {
                    continue;
                };
                let known = names
                    .get_or_insert_with(|| workloads.iter().map(|w| w.name.as_str()).collect());
                if !known.contains(name.as_str()) {
                    return Err((
                        at(""),
                        format!("{name:?} is not a workload defined under workloads:"),
                    ));
                }
            }
            CallerSpec::Selector(s) => {
                selectors += 1;
                if selectors > MAX_CALLER_SELECTORS {
                    return Err((
                        "allowed_callers".to_owned(),
                        format!(
                            "more than {MAX_CALLER_SELECTORS} selectors: name fewer, broader \
                             groups (a namespace, a service account or a shared label)"
                        ),
                    ));
                }
                check_selector(s).map_err(|(field, reason)| (at(&field), reason))?;
            }
        }
    }
    Ok(())
}

/// (field below the entry, reason).
fn check_selector(s: &CallerSelector) -> Result<(), (String, String)> {
    if s.namespace.is_none() && s.service_account.is_none() && s.labels.is_empty() {
        return Err((
            String::new(),
            "a caller selector needs at least one of namespace, service_account or labels \
             (an empty one would admit every workload)"
                .to_owned(),
        ));
    }
    if let Some(ns) = &s.namespace {
        check_kube_name(ns, false)
            .map_err(|r| ("namespace".to_owned(), format!("namespace {r}")))?;
    }
    if let Some(sa) = &s.service_account {
        check_kube_name(sa, true)
            .map_err(|r| ("service_account".to_owned(), format!("service account {r}")))?;
    }
    if s.labels.len() > MAX_SELECTOR_LABELS {
        return Err((
            "labels".to_owned(),
            format!(
                "{} labels, more than the limit of {MAX_SELECTOR_LABELS}",
                s.labels.len()
            ),
        ));
    }
    check_labels("labels", &s.labels)
}

/// A Kubernetes namespace name (a DNS label: `a-z 0-9 -`) or, with `dots`, a ServiceAccount
/// name (a DNS subdomain, `.` too), at most [`MAX_LABEL_VALUE_LEN`] characters since it is
/// matched against a workload label value. The reason reads after "namespace"/"service
/// account".
fn check_kube_name(name: &str, dots: bool) -> Result<(), String> {
    let bytes = name.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err("must not be empty".to_owned());
    };
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner = |b: u8| edge(b) || b == b'-' || (dots && b == b'.');
    if !(edge(first) && edge(last) && bytes.iter().all(|&b| inner(b))) {
        let alphabet = if dots { "'-' and '.'" } else { "and '-'" };
        return Err(format!(
            "{name:?} is not a Kubernetes name: use lowercase letters, digits {alphabet}, \
             starting and ending with a letter or digit"
        ));
    }
    if name.len() > MAX_LABEL_VALUE_LEN {
        return Err(format!(
            "{name:?} is {} characters, more than the limit of {MAX_LABEL_VALUE_LEN}",
            name.len()
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for CallerSpec {
    /// A string is a name, a mapping a selector (decoded field by field, so an unknown key is
    /// reported by name and path, not as "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CallerVisitor)
    }
}

struct CallerVisitor;

impl<'de> Visitor<'de> for CallerVisitor {
    type Value = CallerSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a workload name or a selector {namespace, service_account, labels} of the callers",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CallerSpec, E> {
        Ok(CallerSpec::Workload(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<CallerSpec, E> {
        Ok(CallerSpec::Workload(v))
    }

    // A YAML scalar such as `batch7` is a string, but `2024` or `true` reach here as a number
    // or a boolean; names like that are taken as their text, as label values are.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<CallerSpec, E> {
        Ok(CallerSpec::Workload(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<CallerSpec, E> {
        Ok(CallerSpec::Workload(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<CallerSpec, E> {
        Ok(CallerSpec::Workload(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CallerSpec, A::Error> {
        CallerSelector::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(CallerSpec::Selector)
    }
}

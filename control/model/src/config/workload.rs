//! The rules for `workloads:`: names, cgroup paths and labels.
//!
//! A workload's cgroup is opened by the agent on every node and its id becomes a key in a
//! kernel map, so the path must stay below the cgroup2 mount and name one cgroup only once;
//! its name and labels become Prometheus label values, so they are kept short and plain.

use std::collections::btree_map::{self, BTreeMap};
use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::route::check_zone;
use super::validate::check_name;
use super::{
    ConfigError, WorkloadSpec, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_MESH_WORKLOADS,
    MAX_NODE_NAME_LEN, MAX_WORKLOADS,
};

/// Checks the `workloads:` list and returns the first rule broken, in document order.
pub(super) fn check_workloads(workloads: &[WorkloadSpec]) -> Result<(), ConfigError> {
    if workloads.len() > MAX_MESH_WORKLOADS {
        return Err(ConfigError::invalid(
            "workloads",
            format!(
                "{} workloads, more than the limit of {MAX_MESH_WORKLOADS} in one mesh",
                workloads.len()
            ),
        ));
    }
    if let Err(reason) = check_per_node(workloads) {
        return Err(ConfigError::invalid("workloads", reason));
    }
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(workloads.len());
    let mut cgroups: HashMap<CgroupKey<'_>, usize> = HashMap::with_capacity(workloads.len());
    for (i, workload) in workloads.iter().enumerate() {
        let fail = |field: &str, reason: String| {
            Err(ConfigError::invalid(
                format!("workloads[{i}].{field}"),
                reason,
            ))
        };
        let name = workload.name.as_str();
        if let Err(reason) = check_name("workload", name) {
            return fail("name", reason);
        }
        match names.entry(name) {
            Entry::Occupied(first) => {
                return fail(
                    "name",
                    format!(
                        "duplicate workload name {name:?}, already used by workloads[{}]",
                        first.get()
                    ),
                )
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }

        let cgroup = workload.cgroup.as_str();
        if let Err(reason) = check_cgroup(cgroup) {
            return fail("cgroup", reason);
        }
        match cgroups.entry(CgroupKey::of(cgroup)) {
            Entry::Occupied(first) => {
                let first = *first.get();
                return fail(
                    "cgroup",
                    format!(
                        "duplicate cgroup {cgroup:?}, already used by workloads[{first}] ({})",
                        workloads[first].name
                    ),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }

        if let Err((field, reason)) = check_labels("labels", &workload.labels) {
            return fail(&field, reason);
        }
        if let Some(zone) = &workload.zone {
            if let Err(reason) = check_zone(zone) {
                return fail("zone", reason);
            }
        }
        if let Some(node) = &workload.node {
            if let Err(reason) = check_node_name(node) {
                return fail("node", reason);
            }
        }
    }
    Ok(())
}

/// Every node acts on the workloads without a `node:` plus its own, and at most
/// [`MAX_WORKLOADS`] of them in all.
fn check_per_node(workloads: &[WorkloadSpec]) -> Result<(), String> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    let mut shared = 0;
    for w in workloads {
        match &w.node {
            Some(node) => *per_node.entry(node.as_str()).or_default() += 1,
            None => shared += 1,
        }
    }
    let busiest = per_node
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)));
    match busiest {
        Some((node, &n)) if shared + n > MAX_WORKLOADS => Err(format!(
            "{n} workloads on node {node:?} and {shared} without a node: {} for that node, \
             more than the limit of {MAX_WORKLOADS} per node",
            shared + n
        )),
        _ if shared > MAX_WORKLOADS => Err(format!(
            "{shared} workloads without a node (every node acts on all of them), more than \
             the limit of {MAX_WORKLOADS} per node"
        )),
        _ => Ok(()),
    }
}

/// A node name as Kubernetes allows it (a DNS subdomain: lower-case letters, digits, '-'
/// and '.').
pub fn check_node_name(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > MAX_NODE_NAME_LEN {
        return Err(format!(
            "node name must be 1 to {MAX_NODE_NAME_LEN} characters"
        ));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    if !node.bytes().all(allowed) {
        return Err(format!(
            "invalid node name {node:?}: use lower-case letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

/// Checks a label map (workload labels, backend labels, route selectors) given as `field`;
/// returns (`field` or `field.<key>`, reason) for the first key or value that breaks a rule.
pub(super) fn check_labels(
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    for (key, value) in labels {
        if let Err(reason) = check_label_key(key) {
            return Err((field.to_owned(), reason));
        }
        let chars = value.chars().count();
        if chars > MAX_LABEL_VALUE_LEN {
            return Err((
                format!("{field}.{key}"),
                format!(
                    "label value is {chars} characters, more than the limit of \
                     {MAX_LABEL_VALUE_LEN}"
                ),
            ));
        }
    }
    Ok(())
}

/// A cgroup path must name one directory below the cgroup2 mount: `..` could climb out of
/// the tree the agent was given (or out of the mount entirely), and a NUL cannot reach
/// `open(2)` at all.
fn check_cgroup(cgroup: &str) -> Result<(), String> {
    if cgroup.is_empty() {
        return Err("cgroup path must not be empty".to_owned());
    }
    if cgroup.contains('\0') {
        return Err(format!("cgroup path {cgroup:?} contains a NUL byte"));
    }
    if cgroup.split('/').any(|component| component == "..") {
        return Err(format!(
            "cgroup path {cgroup:?} has a '..' component: name a cgroup below the mount"
        ));
    }
    Ok(())
}

/// Label keys follow the Kubernetes label-name alphabet (with the `/` of a prefix), so labels
/// copied from a pod spec fit unchanged.
fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label key must not be empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if !key.chars().all(allowed) {
        return Err(format!(
            "invalid label key {key:?}: use letters, digits, '_', '.', '-' and '/'"
        ));
    }
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "label key {key:?} is {} characters, more than the limit of {MAX_LABEL_KEY_LEN}",
            key.len()
        ));
    }
    Ok(())
}

/// A cgroup path as the kernel resolves it: empty and `.` components dropped, so
/// `a/b`, `./a//b/` and `a/b/.` are found to be the same cgroup. An absolute path stays
/// distinct from a relative one: where the mount is, only the node knows.
#[derive(PartialEq, Eq, Hash)]
struct CgroupKey<'a> {
    absolute: bool,
    components: Vec<&'a str>,
}

impl<'a> CgroupKey<'a> {
    fn of(path: &'a str) -> Self {
        CgroupKey {
            absolute: path.starts_with('/'),
            components: path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect(),
        }
    }
}

/// Decodes `labels:`, rejecting a key given twice. A plain map keeps the last value silently,
/// and a label pasted twice with different values is the kind of mistake that should fail
/// loudly, like an unknown key does.
pub(super) fn unique_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    deserializer.deserialize_map(LabelsVisitor)
}

struct LabelsVisitor;

impl<'de> Visitor<'de> for LabelsVisitor {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of label keys to string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut labels = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            match labels.entry(key) {
                btree_map::Entry::Occupied(entry) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate label key {:?}",
                        entry.key()
                    )))
                }
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(value);
                }
            }
        }
        Ok(labels)
    }
}

impl super::MeshConfig {
    /// The part of the config the agent on `node` acts on: the workloads without a `node:`
    /// and those on `node`, in their order. An `allowed_callers` entry naming a workload of
    /// another node is dropped with it (no caller on this node can be that workload), so a
    /// service whose allowed callers all run elsewhere admits nobody here. Selectors stay:
    /// they match whichever of the remaining workloads fit. Valid whenever `self` is;
    /// unchanged (and not copied) when every workload is local.
    pub fn into_node(mut self, node: &str) -> super::MeshConfig {
        if self.is_all_on(node) {
            return self;
        }
        let here = |w: &WorkloadSpec| w.node.as_deref().is_none_or(|n| n == node);
        self.workloads.retain(here);
        let names: std::collections::HashSet<&str> =
            self.workloads.iter().map(|w| w.name.as_str()).collect();
        for s in &mut self.services {
            if let Some(callers) = &mut s.allowed_callers {
                callers.retain(|c| c.name().is_none_or(|n| names.contains(n)));
            }
        }
        self
    }

    /// [`into_node`](Self::into_node) of a shared config: the same `Arc` (nothing copied)
    /// when every workload is local.
    pub fn shared_into_node(self: std::sync::Arc<Self>, node: &str) -> std::sync::Arc<Self> {
        if self.is_all_on(node) {
            self
        } else {
            std::sync::Arc::new(std::sync::Arc::unwrap_or_clone(self).into_node(node))
        }
    }

    /// Every workload is on `node` or on every node.
    fn is_all_on(&self, node: &str) -> bool {
        self.workloads
            .iter()
            .all(|w| w.node.as_deref().is_none_or(|n| n == node))
    }
}

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
use super::{ConfigError, WorkloadSpec, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_WORKLOADS};

/// Checks the `workloads:` list and returns the first rule broken, in document order.
pub(super) fn check_workloads(workloads: &[WorkloadSpec]) -> Result<(), ConfigError> {
    if workloads.len() > MAX_WORKLOADS {
        return Err(ConfigError::invalid(
            "workloads",
            format!(
                "{} workloads, more than the limit of {MAX_WORKLOADS}",
                workloads.len()
            ),
        ));
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

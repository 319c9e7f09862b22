//! Per-service deltas: what turns one revision's config into a later one's, service by
//! service, so a one-service change travels as that service and not as the whole mesh.
//!
//! A delta names the services that are new (with the service they follow, so the order of
//! the services is kept exactly), the services whose spec changed (whole, in place), the
//! services removed (by name), and the workloads or enrollment when those changed. It
//! exists only when the services present in both configs keep their relative order and the
//! schema version is the same; anything else (a reordered file) travels as a snapshot.
//!
//! The one law: `ConfigDelta::between(a, b).apply(a) == b` (the property test below).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::fingerprint::FnvSet;
use crate::{Enrollment, MeshConfig, ServiceSpec, WorkloadSpec};

/// A service new in the later config, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedService {
    /// The service it follows in the later config; `None`: it is the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub service: ServiceSpec,
}

/// The difference between two configs, by service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDelta {
    /// New services, in the later config's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedService>,
    /// Services in both whose spec differs: the later spec, whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ServiceSpec>,
    /// Names of services the later config no longer has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// The later `workloads:` list, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Vec<WorkloadSpec>>,
    /// The later `enrollment:`, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
}

/// Why a delta does not fit the config it is applied to (the agent then asks for a
/// snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta removes service {0:?}, which the base config does not have")]
    RemovedUnknown(String),
    #[error("delta changes service {0:?}, which the base config does not have")]
    ChangedUnknown(String),
    #[error("delta adds service {0:?}, which the base config already has")]
    AddedExisting(String),
    #[error("delta adds a service after {0:?}, which the result does not have")]
    AfterUnknown(String),
    #[error("delta names service {0:?} twice")]
    Repeated(String),
}

impl ConfigDelta {
    /// The delta from `old` to `new`; `None` when only a snapshot can say it (another
    /// schema version, or services kept in both are in another order).
    pub fn between(old: &MeshConfig, new: &MeshConfig) -> Option<ConfigDelta> {
        if old.version != new.version {
            return None;
        }
        let before: HashMap<&str, &ServiceSpec> =
            old.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let after: HashSet<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
        let kept_old = old
            .services
            .iter()
            .filter(|s| after.contains(s.name.as_str()));
        let kept_new = new
            .services
            .iter()
            .filter(|s| before.contains_key(s.name.as_str()));
        if !kept_old.map(|s| &s.name).eq(kept_new.map(|s| &s.name)) {
            return None;
        }
        let mut delta = ConfigDelta::default();
        let mut previous: Option<&str> = None;
        for service in &new.services {
            match before.get(service.name.as_str()) {
                None => delta.added.push(AddedService {
                    after: previous.map(str::to_owned),
                    service: service.clone(),
                }),
                Some(&old_spec) if old_spec != service => delta.changed.push(service.clone()),
                Some(_) => {}
            }
            previous = Some(&service.name);
        }
        delta.removed = old
            .services
            .iter()
            .filter(|s| !after.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect();
        if old.workloads != new.workloads {
            delta.workloads = Some(new.workloads.clone());
        }
        if old.enrollment != new.enrollment {
            delta.enrollment = Some(new.enrollment);
        }
        Some(delta)
    }

    /// [`between`](Self::between) when the caller already knows which services were
    /// added, changed and removed, and whether the workloads changed (a control plane's
    /// per-version diff): reads only those services' specs, and walks the names once to
    /// check that the services kept in both keep their order. `None` as for `between`. The
    /// result equals `between(old, new)` when the names are exact (a property test in the
    /// control plane's diff holds it so).
    pub fn between_known(
        old: &MeshConfig,
        new: &MeshConfig,
        added: &[String],
        changed: &[String],
        removed: &[String],
        workloads: bool,
    ) -> Option<ConfigDelta> {
        if old.version != new.version || old.enrollment != new.enrollment {
            return None;
        }
        let (added_set, changed_set, removed_set) = (names(added), names(changed), names(removed));
        let kept_old = old
            .services
            .iter()
            .filter(|s| removed_set.is_empty() || !removed_set.contains(s.name.as_str()));
        let kept_new = new
            .services
            .iter()
            .filter(|s| added_set.is_empty() || !added_set.contains(s.name.as_str()));
        if !kept_old.map(|s| &s.name).eq(kept_new.map(|s| &s.name)) {
            return None;
        }
        let mut delta = ConfigDelta::default();
        if !added_set.is_empty() || !changed_set.is_empty() {
            let mut previous: Option<&str> = None;
            for service in &new.services {
                let name = service.name.as_str();
                if added_set.contains(name) {
                    delta.added.push(AddedService {
                        after: previous.map(str::to_owned),
                        service: service.clone(),
                    });
                } else if changed_set.contains(name) {
                    delta.changed.push(service.clone());
                }
                previous = Some(name);
            }
        }
        if !removed_set.is_empty() {
            delta.removed = old
                .services
                .iter()
                .filter(|s| removed_set.contains(s.name.as_str()))
                .map(|s| s.name.clone())
                .collect();
        }
        if workloads {
            delta.workloads = Some(new.workloads.clone());
        }
        Some(delta)
    }

    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.workloads.is_none()
            && self.enrollment.is_none()
    }

    /// The names of the services the delta touches: added, changed and removed.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.added
            .iter()
            .map(|a| a.service.name.as_str())
            .chain(self.changed.iter().map(|s| s.name.as_str()))
            .chain(self.removed.iter().map(String::as_str))
    }

    /// `base` with the delta applied. Checks that the delta fits `base` first, so on an
    /// error nothing is half-applied (`base` is consumed either way; keep a copy to fall
    /// back to). The result is not validated: that is the caller's next step, as for any
    /// config that arrives from outside.
    pub fn apply(&self, mut base: MeshConfig) -> Result<MeshConfig, DeltaError> {
        let mut index: HashMap<&str, usize> = base
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut named = HashSet::new();
        for name in self.services() {
            if !named.insert(name) {
                return Err(DeltaError::Repeated(name.to_owned()));
            }
        }
        for name in &self.removed {
            if !index.contains_key(name.as_str()) {
                return Err(DeltaError::RemovedUnknown(name.clone()));
            }
        }
        let mut replace = Vec::with_capacity(self.changed.len());
        for spec in &self.changed {
            match index.get(spec.name.as_str()) {
                Some(&i) => replace.push(i),
                None => return Err(DeltaError::ChangedUnknown(spec.name.clone())),
            }
        }
        // Where each added service goes, in the order they are inserted: after a service
        // the base keeps, or after one added before it.
        let mut known: HashSet<&str> = HashSet::new();
        for added in &self.added {
            let name = added.service.name.as_str();
            if index.contains_key(name) {
                return Err(DeltaError::AddedExisting(name.to_owned()));
            }
            if let Some(after) = &added.after {
                let kept =
                    index.contains_key(after.as_str()) && !self.removed.iter().any(|r| r == after);
                if !kept && !known.contains(after.as_str()) {
                    return Err(DeltaError::AfterUnknown(after.clone()));
                }
            }
            known.insert(name);
        }
        index.clear();
        drop(index);

        for (spec, i) in self.changed.iter().zip(replace) {
            base.services[i] = spec.clone();
        }
        if !self.removed.is_empty() {
            let removed: HashSet<&str> = self.removed.iter().map(String::as_str).collect();
            base.services.retain(|s| !removed.contains(s.name.as_str()));
        }
        if !self.added.is_empty() {
            // The services that follow each name, in order; then one pass rebuilds the list.
            let mut following: HashMap<Option<&str>, Vec<&ServiceSpec>> = HashMap::new();
            for added in &self.added {
                following
                    .entry(added.after.as_deref())
                    .or_default()
                    .push(&added.service);
            }
            let old = std::mem::take(&mut base.services);
            let mut services = Vec::with_capacity(old.len() + self.added.len());
            push_following(&mut services, &following, None);
            for service in old {
                let name = service.name.clone();
                services.push(service);
                push_following(&mut services, &following, Some(&name));
            }
            base.services = services;
        }
        if let Some(workloads) = &self.workloads {
            base.workloads = workloads.clone();
        }
        if let Some(enrollment) = self.enrollment {
            base.enrollment = enrollment;
        }
        Ok(base)
    }
}

/// Appends the added services that follow `name` (and, recursively, those that follow them).
fn push_following(
    services: &mut Vec<ServiceSpec>,
    following: &HashMap<Option<&str>, Vec<&ServiceSpec>>,
    name: Option<&str>,
) {
    let mut stack: Vec<&ServiceSpec> = following
        .get(&name)
        .map(|v| v.iter().rev().copied().collect())
        .unwrap_or_default();
    while let Some(spec) = stack.pop() {
        services.push(spec.clone());
        if let Some(next) = following.get(&Some(spec.name.as_str())) {
            stack.extend(next.iter().rev().copied());
        }
    }
}

/// The names as a set, for lookups.
fn names(names: &[String]) -> FnvSet<&str> {
    names.iter().map(String::as_str).collect()
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;

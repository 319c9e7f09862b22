//! The node's http services as the agent last described them ([`Targets`]), and the
//! [`Resolve`] that the proxy asks for each accepted connection: the kernel's origin record
//! ([`Origins`]) names the service by id and the calling workload by index; this module
//! turns them into the service's [`ServiceTarget`] and the workload's name.
//!
//! A connection with no origin (the kernel did not send it here) or with a service id the
//! snapshot does not have is refused: the server closes it and counts it as `unresolved`.
//!
//! Applying a snapshot keeps what requests under way rely on ([`ServiceTarget::from_target`]):
//! a service whose shape did not change keeps its very version (only eligibility flips), a
//! changed one is rebuilt around the old backends' counters and, when its `http:` block is the
//! same, its retry budget. The backends whose request-rule history should end are returned
//! ([`Applied::forget`]): those that left, and those the agent unbanned.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tracing::debug;

use crate::link::Targets;
use crate::origin::Origins;
use crate::target::{Resolve, ServiceTarget};

/// One snapshot of the node's http services.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    by_id: HashMap<u32, Arc<ServiceTarget>>,
    by_name: HashMap<Arc<str>, Arc<ServiceTarget>>,
    /// Services with caller classes (routes, locality): (service name, class) -> that
    /// class's version; class 0 is every caller without a class of its own.
    classes: HashMap<(Arc<str>, u32), Arc<ServiceTarget>>,
    workloads: Vec<Arc<str>>,
    /// Workload name -> the kernel's number (index + 1): a kept-alive connection's caller
    /// keeps its name across snapshots, not its number (a new workload list renumbers).
    numbers: HashMap<Arc<str>, u32>,
}

impl Snapshot {
    /// The service the kernel stamps with `id`.
    pub fn service(&self, id: u32) -> Option<&Arc<ServiceTarget>> {
        self.by_id.get(&id)
    }

    /// The service named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<ServiceTarget>> {
        self.by_name.get(name)
    }

    /// The version of `service` that caller `workload` (the kernel's number) is served by:
    /// its class's, else class 0's, else the service's own weights.
    pub fn for_caller(&self, service: &Arc<ServiceTarget>, workload: u32) -> Arc<ServiceTarget> {
        let class = |w: u32| self.classes.get(&(service.name.clone(), w));
        class(workload)
            .or_else(|| class(0))
            .unwrap_or(service)
            .clone()
    }

    /// The kernel's workload `w` (index + 1; 0 is "not a workload").
    pub fn workload(&self, w: u32) -> Option<&Arc<str>> {
        self.workloads.get(usize::try_from(w).ok()?.checked_sub(1)?)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceTarget>> {
        self.by_id.values()
    }
}

/// What applying a snapshot changed, for the request rules' state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// (service, backend) pairs that left the snapshot or became eligible again: their
    /// failure runs and latency history start over.
    pub forget: Vec<(Arc<str>, SocketAddr)>,
}

/// The services the proxy serves and how connections find theirs.
pub struct NodeTargets<O> {
    origins: O,
    current: RwLock<Arc<Snapshot>>,
}

impl<O: Origins> NodeTargets<O> {
    /// No services yet: every connection is refused until the first [`NodeTargets::apply`].
    pub fn new(origins: O) -> Self {
        Self {
            origins,
            current: RwLock::default(),
        }
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the snapshot with `targets`, carrying live state over (module docs).
    pub fn apply(&self, targets: &Targets) -> Applied {
        let old = self.snapshot();
        let mut next = Snapshot {
            generation: targets.generation,
            workloads: targets
                .workloads
                .iter()
                .map(|w| w.as_str().into())
                .collect(),
            ..Snapshot::default()
        };
        next.numbers = next
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), u32::try_from(i + 1).unwrap_or(u32::MAX)))
            .collect();
        let mut applied = Applied::default();
        for target in &targets.services {
            let previous = old.by_name(&target.name);
            if let Some(p) = previous {
                // Unbanned by the agent: the rules judge the backend afresh.
                let unbanned = target
                    .backends
                    .iter()
                    .filter(|t| t.eligible && p.backend(t.addr).is_some_and(|b| !b.is_eligible()));
                applied
                    .forget
                    .extend(unbanned.map(|t| (p.name.clone(), t.addr)));
            }
            let service = match previous {
                Some(p) if p.same_shape(target) => {
                    for (backend, t) in p.backends.iter().zip(&target.backends) {
                        backend.set_eligible(t.eligible);
                    }
                    p.clone()
                }
                _ => Arc::new(ServiceTarget::from_target(target, previous.map(|p| &**p))),
            };
            for class in &target.classes {
                next.classes.insert(
                    (service.name.clone(), class.workload),
                    Arc::new(service.for_class(class.workload, &class.weights)),
                );
            }
            next.by_name.insert(service.name.clone(), service.clone());
            next.by_id.insert(target.id, service);
        }
        for gone in old.by_id.values() {
            let kept = next.by_name.get(&gone.name);
            let left = gone
                .backends
                .iter()
                .filter(|b| kept.is_none_or(|k| k.backend(b.addr).is_none()));
            applied
                .forget
                .extend(left.map(|b| (gone.name.clone(), b.addr)));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        applied
    }
}

impl<O: Origins> Resolve for NodeTargets<O> {
    fn service(&self, peer: SocketAddr, local: SocketAddr) -> Option<Arc<ServiceTarget>> {
        self.resolve(peer, local).map(|(service, _)| service)
    }

    fn caller(&self, peer: SocketAddr, local: SocketAddr) -> Option<Arc<str>> {
        self.resolve(peer, local).and_then(|(_, caller)| caller)
    }

    fn resolve(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(Arc<ServiceTarget>, Option<Arc<str>>)> {
        let Some(origin) = self.origins.lookup(peer, local) else {
            debug!(%peer, %local, "no origin for the connection: not sent by the kernel");
            return None;
        };
        let snapshot = self.snapshot();
        let Some(service) = snapshot.service(origin.service_id) else {
            debug!(%peer, service_id = origin.service_id, "origin names a service not in the targets");
            return None;
        };
        Some((
            snapshot.for_caller(service, origin.workload),
            snapshot.workload(origin.workload).cloned(),
        ))
    }

    fn current(
        &self,
        service: &Arc<ServiceTarget>,
        caller: Option<&str>,
    ) -> Option<Arc<ServiceTarget>> {
        let snapshot = self.snapshot();
        let newest = snapshot.by_name(&service.name)?;
        // The caller's class in this snapshot: a service may have gained or lost routes,
        // and the caller its own table, since the connection was accepted.
        let workload = caller
            .and_then(|c| snapshot.numbers.get(c))
            .copied()
            .unwrap_or(0);
        let newest = snapshot.for_caller(newest, workload);
        (!Arc::ptr_eq(&newest, service)).then_some(newest)
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

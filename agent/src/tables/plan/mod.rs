//! Desired state -> ordered kernel writes.
//!
//! `plan` compares the config with what the kernel maps hold ([`KernelState`]) and emits the
//! writes that take one to the other, ordered so a concurrent connect never follows a dangling
//! reference: new backends first, then slot tables (each swapped whole), then service entries;
//! deletions in the reverse order. Ids are stable: a service keeps its id for its VIP:port and
//! a backend its id for its address, and an id freed in a plan is not reused by the same plan.
//!
//! A service with `routes:` or `locality:` may also get per-caller-class tables
//! ([`super::route`]): written before the service entry that flags them
//! (`SERVICE_CLASS_TABLES`), deleted after the entry that no longer does. The kernel falls
//! back to the class-0 table for a class without one, so every prefix stays consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use sockmesh_common::{
    BackendEntry, ServiceCaller, ServiceEntry, ServiceKey, SlotTableKey, MAX_BACKENDS, MAX_SERVICES,
};
use sockmesh_model::MeshConfig;

use super::{
    addr::{backend_entry, service_key},
    overlay::Overlay,
    route::Node,
};

/// A slot table as the agent tracks it: only the used slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableState {
    pub generation: u32,
    pub slots: Vec<u32>,
}

/// What the kernel maps hold (read at start, then mirrored as writes are applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    pub tables: BTreeMap<SlotTableKey, TableState>,
    pub backends: BTreeMap<u32, BackendEntry>,
    /// ACL entries: (service id, workload) pairs allowed to connect.
    pub acl: BTreeSet<ServiceCaller>,
    /// `backends` by address: kept with it (in [`KernelState::apply`] and
    /// [`KernelState::insert_backend`]), so a plan finds a backend's id without indexing
    /// every backend first.
    identities: BTreeMap<BackendIdentity, u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    UpsertBackend(u32, BackendEntry),
    UpsertTable(SlotTableKey, TableState),
    UpsertService(ServiceKey, ServiceEntry),
    DeleteService(ServiceKey),
    DeleteTable(SlotTableKey),
    DeleteBackend(u32),
    UpsertAcl(ServiceCaller),
    DeleteAcl(ServiceCaller),
}

impl KernelState {
    /// A backend read from the kernel.
    pub(crate) fn insert_backend(&mut self, id: u32, b: BackendEntry) {
        if let Some(old) = self.backends.insert(id, b) {
            self.identities.remove(&identity(&old));
        }
        self.identities.insert(identity(&b), id);
    }

    /// The id of the backend at `b`'s address, if the kernel has one.
    pub(super) fn backend_id(&self, b: &BackendEntry) -> Option<u32> {
        self.identities.get(&identity(b)).copied()
    }

    /// Mirrors a write the kernel accepted.
    pub(crate) fn apply(&mut self, write: &Write) {
        match write {
            Write::UpsertBackend(id, b) => {
                self.insert_backend(*id, *b);
            }
            Write::UpsertTable(k, t) => {
                self.tables.insert(*k, t.clone());
            }
            Write::UpsertService(k, s) => {
                self.services.insert(*k, *s);
            }
            Write::DeleteService(k) => {
                self.services.remove(k);
            }
            Write::DeleteTable(k) => {
                self.tables.remove(k);
            }
            Write::DeleteBackend(id) => {
                if let Some(old) = self.backends.remove(id) {
                    if self.identities.get(&identity(&old)) == Some(id) {
                        self.identities.remove(&identity(&old));
                    }
                }
            }
            Write::UpsertAcl(k) => {
                self.acl.insert(*k);
            }
            Write::DeleteAcl(k) => {
                self.acl.remove(k);
            }
        }
    }
}

/// One service as applied, for the admin API and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceView {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub lb: &'static str,
    pub id: u32,
    pub slot_table_len: usize,
    /// Shared (`Arc`): a config change copies the views of 10,000 services at the cost of
    /// their names, not of their 100,000 backends.
    pub backends: Arc<[BackendView]>,
    /// Caller classes with a table of their own (routes, locality); every other caller uses
    /// the service's table above.
    #[serde(skip_serializing_if = "no_classes")]
    pub classes: Arc<[ClassView]>,
    /// A service with routes or a zone preference: the weights (one per backend, in the
    /// config's order) its class-0 table was built from, what the L7 proxy picks by. The
    /// slot counts above are not always proportional to them (least_conn's table holds
    /// each usable backend once).
    #[serde(skip)]
    pub class0_weights: Option<Arc<[u32]>>,
}

fn no_classes(classes: &Arc<[ClassView]>) -> bool {
    classes.is_empty()
}

/// A caller class's own slot table, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ClassView {
    pub class: u32,
    /// The workload whose callers use it.
    pub workload: String,
    pub slot_table_len: usize,
    /// Slots per backend address (backends with none are left out).
    pub slots: BTreeMap<String, usize>,
    /// The weights (one per backend, in the config's order) the table was built from.
    #[serde(skip)]
    pub weights: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct BackendView {
    pub addr: String,
    pub weight: u32,
    pub id: u32,
    pub slots: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub writes: Vec<Write>,
    pub views: Vec<ServiceView>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PlanError {
    #[error("{what} table full: {needed} entries needed, capacity {capacity}")]
    Capacity {
        what: &'static str,
        needed: usize,
        capacity: usize,
    },
    /// The new config fits, but not together with the old one: a switch adds new entries
    /// before it removes old ones (so a connect never meets a dangling reference), and the
    /// kernel table would overflow halfway.
    #[error(
        "{what} table would overflow during the switch: old and new entries together need \
         {needed}, capacity {capacity}; apply the change in smaller steps"
    )]
    Transition {
        what: &'static str,
        needed: usize,
        capacity: usize,
    },
}

/// Entries each kernel table the plan writes can hold (`max_entries`; one less for tables
/// keyed by an id, since id 0 is never used).
pub(crate) mod capacity {
    use sockmesh_common::{
        MAX_ACL, MAX_BACKENDS, MAX_BACKEND_STATS, MAX_SERVICES, MAX_SLOT_TABLES,
    };

    pub(crate) const SERVICES: usize = MAX_SERVICES as usize - 1;
    pub(crate) const SLOT_TABLES: usize = MAX_SLOT_TABLES as usize;
    pub(crate) const BACKENDS: usize = MAX_BACKENDS as usize - 1;
    /// `SM_BACKEND_TCP`: one entry per (service, backend) pair, created by the agent.
    pub(crate) const BACKEND_STATS: usize = MAX_BACKEND_STATS as usize;
    pub(crate) const ACL: usize = MAX_ACL as usize;
}

/// `needed` entries in a table of `capacity`.
fn fits(what: &'static str, needed: usize, capacity: usize) -> Result<(), PlanError> {
    if needed > capacity {
        return Err(PlanError::Capacity {
            what,
            needed,
            capacity,
        });
    }
    Ok(())
}

/// Entries a table holds at the peak of a switch from `actual` to `wanted` keys: all of the
/// old ones plus the new ones (deletions come last).
fn peak<K: Ord>(actual: impl Iterator<Item = K>, wanted: &BTreeSet<K>) -> usize {
    let old: BTreeSet<K> = actual.collect();
    old.len() + wanted.iter().filter(|k| !old.contains(k)).count()
}

fn fits_switch(what: &'static str, needed: usize, capacity: usize) -> Result<(), PlanError> {
    if needed > capacity {
        return Err(PlanError::Transition {
            what,
            needed,
            capacity,
        });
    }
    Ok(())
}

mod builder;
mod services;

use builder::{distinct_backends, Builder};
pub(crate) use services::plan_services;

/// Ids from 1 up; 0 stays unused so a zeroed entry is recognisably invalid. The lowest id
/// that is neither in use (`in_use`, asked only while searching) nor handed out by this
/// plan comes first, so a whole plan and a per-service plan hand out the same ids.
pub(super) struct IdAllocator {
    taken: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl IdAllocator {
    pub(super) fn new(limit: u32) -> Self {
        Self {
            taken: BTreeSet::new(),
            next: 1,
            limit,
        }
    }

    pub(super) fn alloc(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        while self.next < self.limit {
            let id = self.next;
            self.next += 1;
            if !in_use(id) && self.taken.insert(id) {
                return Some(id);
            }
        }
        None
    }
}

pub(super) type BackendIdentity = ([u32; 4], u16, u16);

pub(super) fn identity(b: &BackendEntry) -> BackendIdentity {
    (b.addr, b.port, b.family)
}

/// [`plan_for`] on a node with no zone of its own.
pub(crate) fn plan(
    config: &MeshConfig,
    overlay: &Overlay,
    actual: &KernelState,
) -> Result<Plan, PlanError> {
    plan_for(config, overlay, actual, &Node::default())
}

/// The writes that take the kernel from `actual` to `config` with `overlay` applied, on
/// `node` (whose zone is the one callers without a workload zone are in).
pub(crate) fn plan_for(
    config: &MeshConfig,
    overlay: &Overlay,
    actual: &KernelState,
    node: &Node,
) -> Result<Plan, PlanError> {
    let capacity = |what, needed: usize, capacity: u32| {
        if needed >= capacity as usize {
            Err(PlanError::Capacity {
                what,
                needed,
                capacity: capacity as usize - 1,
            })
        } else {
            Ok(())
        }
    };
    capacity("service", config.services.len(), MAX_SERVICES)?;
    // Before any id is allocated: a switch that cannot fit must say so, not fail on an id.
    let keys: BTreeSet<ServiceKey> = config
        .services
        .iter()
        .map(|s| service_key(s.vip, s.port))
        .collect();
    fits_switch(
        "service",
        peak(actual.services.keys().copied(), &keys),
        capacity::SERVICES,
    )?;
    let identities: BTreeSet<BackendIdentity> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| identity(&backend_entry(b.addr))))
        .collect();
    fits("backend", identities.len(), capacity::BACKENDS)?;
    fits_switch(
        "backend",
        peak(actual.identities.keys().copied(), &identities),
        capacity::BACKENDS,
    )?;

    let mut b = Builder::new(config, overlay, actual, node);
    b.views.reserve(config.services.len());
    for spec in &config.services {
        b.service(spec)?;
    }
    capacity("backend", b.wanted_backends.len(), MAX_BACKENDS)?;
    // Tables the agent fills besides these: per-(service, backend) TCP stats (created by
    // the signals side after the plan is applied) and the ACL. Checked here so a config the
    // kernel cannot hold is rejected whole, with this error, before anything is written.
    let pairs: usize = b.views.iter().map(distinct_backends).sum();
    fits(
        "backend stats ((service, backend) pair)",
        pairs,
        capacity::BACKEND_STATS,
    )?;
    fits(
        "acl ((service, workload) pair)",
        b.wanted_acl.len(),
        capacity::ACL,
    )?;
    fits_switch(
        "slot table",
        peak(actual.tables.keys().copied(), &b.wanted_tables),
        capacity::SLOT_TABLES,
    )?;
    fits_switch(
        "acl ((service, workload) pair)",
        peak(actual.acl.iter().copied(), &b.wanted_acl),
        capacity::ACL,
    )?;
    let delete_acl = actual.acl.difference(&b.wanted_acl).copied().collect();
    let delete_services = actual
        .services
        .keys()
        .filter(|k| !b.wanted_services.contains(k))
        .copied()
        .collect();
    let delete_tables = actual
        .tables
        .keys()
        .filter(|k| !b.wanted_tables.contains(k))
        .copied()
        .collect();
    let delete_backends = actual
        .backends
        .keys()
        .filter(|id| !b.wanted_backends.contains(id))
        .copied()
        .collect();
    Ok(b.finish(delete_acl, delete_services, delete_tables, delete_backends))
}

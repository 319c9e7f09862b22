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

use serde::Serialize;
use sockmesh_common::{
    BackendEntry, ServiceCaller, ServiceEntry, ServiceKey, SlotTableKey, CALLER_CLASS_DEFAULT,
    MAX_BACKENDS, MAX_SERVICES, SERVICE_CLASS_TABLES, SERVICE_ENROLLED_ONLY, SERVICE_SAME_NODE,
};
use sockmesh_model::{Enrollment, MeshConfig};

use super::{
    addr::{backend_entry, service_key},
    overlay::{service_entry, Overlay},
    policy,
    route::{service_classes, workload_class, Node},
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
    /// Mirrors a write the kernel accepted.
    pub(crate) fn apply(&mut self, write: &Write) {
        match write {
            Write::UpsertBackend(id, b) => {
                self.backends.insert(*id, *b);
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
                self.backends.remove(id);
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
    pub backends: Vec<BackendView>,
    /// Caller classes with a table of their own (routes, locality); every other caller uses
    /// the service's table above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassView>,
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

/// Ids from 1 up; 0 stays unused so a zeroed entry is recognisably invalid.
struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl IdAllocator {
    fn new(used: BTreeSet<u32>, limit: u32) -> Self {
        Self {
            used,
            next: 1,
            limit,
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        while self.next < self.limit {
            let id = self.next;
            self.next += 1;
            if self.used.insert(id) {
                return Some(id);
            }
        }
        None
    }
}

type BackendIdentity = ([u32; 4], u16, u16);

fn identity(b: &BackendEntry) -> BackendIdentity {
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

    let mut service_ids = IdAllocator::new(
        actual.services.values().map(|s| s.id).collect(),
        MAX_SERVICES,
    );
    let mut backend_ids = IdAllocator::new(actual.backends.keys().copied().collect(), MAX_BACKENDS);
    let mut by_identity: BTreeMap<BackendIdentity, u32> = actual
        .backends
        .iter()
        .map(|(id, b)| (identity(b), *id))
        .collect();
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
        peak(by_identity.keys().copied(), &identities),
        capacity::BACKENDS,
    )?;

    let mut upsert_backends = BTreeMap::new();
    let mut tables = Vec::new();
    // Final tables of services whose table layout changes with their policy: written after
    // the service entries (bridge tables come before), see `policy::bridge`.
    let mut reformatted = Vec::new();
    let mut services = Vec::new();
    let mut wanted_backends = BTreeSet::new();
    let mut wanted_services = BTreeSet::new();
    let mut wanted_tables = BTreeSet::new();
    let mut views = Vec::with_capacity(config.services.len());
    let mut wanted_acl = BTreeSet::new();

    for spec in &config.services {
        let key = service_key(spec.vip, spec.port);
        wanted_services.insert(key);
        let id = match actual.services.get(&key) {
            Some(existing) => existing.id,
            None => service_ids.alloc().ok_or(PlanError::Capacity {
                what: "service id",
                needed: config.services.len(),
                capacity: MAX_SERVICES as usize - 1,
            })?,
        };
        let mut ids = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let entry = backend_entry(b.addr);
            let bid = match by_identity.get(&identity(&entry)) {
                Some(bid) => *bid,
                None => {
                    let bid = backend_ids.alloc().ok_or(PlanError::Capacity {
                        what: "backend",
                        needed: by_identity.len() + 1,
                        capacity: MAX_BACKENDS as usize - 1,
                    })?;
                    by_identity.insert(identity(&entry), bid);
                    bid
                }
            };
            if actual.backends.get(&bid) != Some(&entry) {
                upsert_backends.insert(bid, entry);
            }
            wanted_backends.insert(bid);
            ids.push(bid);
        }
        // The workloads of this node the service admits (by name or by identity selector),
        // keyed as the kernel's caller map numbers them (workload index + 1).
        for index in spec
            .admitted_workloads(&config.workloads)
            .into_iter()
            .flatten()
        {
            wanted_acl.insert(ServiceCaller {
                service_id: id,
                workload: workload_class(index),
            });
        }
        let ov = overlay.get(&spec.name).cloned().unwrap_or_default();
        // Banned backends (and those awaiting a probe) keep their ids but get no slot, in
        // every class's table.
        let (weights, classes) = service_classes(spec, &ov.excluded, &config.workloads, node);
        let lb = policy::of(spec.lb);
        let build = |weights: &[u32]| -> Vec<u32> { lb.table(&spec.backends, &ids, weights) };
        let slots = build(&weights);
        // Classes whose table comes out the same as class 0's get none: the kernel falls
        // back to class 0. Workloads with the same weights share one computation.
        let mut built: BTreeMap<Vec<u32>, Vec<u32>> = BTreeMap::new();
        let mut class_tables: Vec<(u32, Vec<u32>)> = Vec::new();
        for (class, w) in classes {
            let table = built.entry(w).or_insert_with_key(|w| build(w));
            if *table != slots {
                class_tables.push((class, table.clone()));
            }
        }
        // A policy change that changes how the kernel reads the table (ids only, or
        // least_conn's ids and weights) cannot be one write: the entry and its tables are
        // separate. Such a service's tables go bridge -> entry -> final.
        let reformat = actual
            .services
            .get(&key)
            .and_then(|old| policy::by_code(old.lb))
            .is_some_and(|old| old.ids_only() != lb.ids_only());
        for (class, table) in std::iter::once((CALLER_CLASS_DEFAULT, &slots))
            .chain(class_tables.iter().map(|(c, t)| (*c, t)))
        {
            let table_key = SlotTableKey {
                service_id: id,
                caller_class: class,
            };
            wanted_tables.insert(table_key);
            match actual.tables.get(&table_key) {
                Some(t) if t.slots == *table => {}
                existing => {
                    let mut generation = existing.map_or(1, |t| t.generation.wrapping_add(1));
                    let last = if reformat {
                        tables.push(Write::UpsertTable(
                            table_key,
                            TableState {
                                generation,
                                slots: policy::bridge(lb.routed(table)),
                            },
                        ));
                        generation = generation.wrapping_add(1);
                        &mut reformatted
                    } else {
                        &mut tables
                    };
                    last.push(Write::UpsertTable(
                        table_key,
                        TableState {
                            generation,
                            slots: table.clone(),
                        },
                    ));
                }
            }
        }
        if let Some(old) = actual
            .services
            .get(&key)
            .and_then(|old| policy::by_code(old.lb))
            .filter(|_| reformat)
        {
            // Class tables this plan deletes (after the entry) may still be read by the new
            // entry until then: bridge them too, keeping their backends.
            for (table_key, t) in actual
                .tables
                .iter()
                .filter(|(k, _)| k.service_id == id && !wanted_tables.contains(k))
            {
                tables.push(Write::UpsertTable(
                    *table_key,
                    TableState {
                        generation: t.generation.wrapping_add(1),
                        slots: policy::bridge(old.routed(&t.slots)),
                    },
                ));
            }
        }
        let mut entry = service_entry(id, lb.code(), spec, &ov);
        if !class_tables.is_empty() {
            entry.flags |= SERVICE_CLASS_TABLES;
        }
        if config.enrollment == Enrollment::Workloads {
            entry.flags |= SERVICE_ENROLLED_ONLY;
        }
        if spec.same_node {
            entry.flags |= SERVICE_SAME_NODE;
        }
        if actual.services.get(&key) != Some(&entry) {
            services.push(Write::UpsertService(key, entry));
        }
        let class_views = class_tables
            .iter()
            .map(|(class, table)| {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for (b, bid) in spec.backends.iter().zip(&ids) {
                    let n = lb.routed(table).iter().filter(|s| *s == bid).count();
                    if n > 0 {
                        counts.insert(b.addr.to_string(), n);
                    }
                }
                ClassView {
                    class: *class,
                    workload: config.workloads[*class as usize - 1].name.clone(),
                    slot_table_len: table.len(),
                    slots: counts,
                }
            })
            .collect();
        views.push(ServiceView {
            name: spec.name.clone(),
            vip: spec.vip.to_string(),
            port: spec.port,
            lb: spec.lb.as_str(),
            id,
            slot_table_len: slots.len(),
            backends: spec
                .backends
                .iter()
                .zip(&ids)
                .map(|(b, bid)| BackendView {
                    addr: b.addr.to_string(),
                    weight: b.weight,
                    id: *bid,
                    slots: lb.routed(&slots).iter().filter(|s| *s == bid).count(),
                })
                .collect(),
            classes: class_views,
        });
    }
    capacity("backend", wanted_backends.len(), MAX_BACKENDS)?;
    // Tables the agent fills besides these: per-(service, backend) TCP stats (created by
    // the signals side after the plan is applied) and the ACL. Checked here so a config the
    // kernel cannot hold is rejected whole, with this error, before anything is written.
    let pairs: usize = views
        .iter()
        .map(|v| {
            v.backends
                .iter()
                .map(|b| b.id)
                .collect::<BTreeSet<u32>>()
                .len()
        })
        .sum();
    fits(
        "backend stats ((service, backend) pair)",
        pairs,
        capacity::BACKEND_STATS,
    )?;
    fits(
        "acl ((service, workload) pair)",
        wanted_acl.len(),
        capacity::ACL,
    )?;
    fits_switch(
        "slot table",
        peak(actual.tables.keys().copied(), &wanted_tables),
        capacity::SLOT_TABLES,
    )?;
    fits_switch(
        "acl ((service, workload) pair)",
        peak(actual.acl.iter().copied(), &wanted_acl),
        capacity::ACL,
    )?;

    let mut writes: Vec<Write> = upsert_backends
        .into_iter()
        .map(|(id, b)| Write::UpsertBackend(id, b))
        .collect();
    // Allow entries before a service starts enforcing its ACL; removals after it stopped.
    writes.extend(
        wanted_acl
            .difference(&actual.acl)
            .map(|k| Write::UpsertAcl(*k)),
    );
    writes.extend(tables);
    writes.extend(services);
    writes.extend(reformatted);
    writes.extend(
        actual
            .acl
            .difference(&wanted_acl)
            .map(|k| Write::DeleteAcl(*k)),
    );
    for key in actual
        .services
        .keys()
        .filter(|k| !wanted_services.contains(k))
    {
        writes.push(Write::DeleteService(*key));
    }
    // Tables of removed services, and class tables no longer wanted (after the service
    // entry that stopped flagging them).
    for key in actual.tables.keys().filter(|k| !wanted_tables.contains(k)) {
        writes.push(Write::DeleteTable(*key));
    }
    for id in actual
        .backends
        .keys()
        .filter(|id| !wanted_backends.contains(id))
    {
        writes.push(Write::DeleteBackend(*id));
    }
    Ok(Plan { writes, views })
}

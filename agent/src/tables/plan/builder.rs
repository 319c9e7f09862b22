//! [`Builder`]: services into kernel writes, one at a time. The whole plan
//! ([`super::plan_for`]) and the per-service plan ([`super::plan_services`]) both use it, so
//! the two cannot disagree about a service.

use std::collections::{BTreeMap, BTreeSet};

use sockmesh_common::{
    BackendEntry, ServiceCaller, ServiceKey, SlotTableKey, CALLER_CLASS_DEFAULT, MAX_BACKENDS,
    MAX_SERVICES, SERVICE_CLASS_TABLES, SERVICE_ENROLLED_ONLY, SERVICE_HTTP, SERVICE_SAME_NODE,
};
use sockmesh_model::{Enrollment, MeshConfig, Protocol, ServiceSpec};

use super::{
    identity, BackendIdentity, BackendView, ClassView, IdAllocator, KernelState, Plan, PlanError,
    ServiceView, TableState, Write,
};
use crate::tables::{
    addr::{backend_entry, service_key},
    overlay::{service_entry, Overlay},
    policy,
    route::{is_routed, service_classes, workload_class, Node},
};

/// A plan in the making: services are added one by one ([`Builder::service`]); what is
/// wanted is collected, so the deletions can follow.
pub(super) struct Builder<'a> {
    pub(super) config: &'a MeshConfig,
    pub(super) overlay: &'a Overlay,
    pub(super) actual: &'a KernelState,
    pub(super) node: &'a Node,
    pub(super) service_ids: IdAllocator,
    /// Service ids the kernel holds, collected on the first new service.
    pub(super) used_service_ids: Option<BTreeSet<u32>>,
    pub(super) backend_ids: IdAllocator,
    /// Backends new in this plan, by address.
    pub(super) new_backends: BTreeMap<BackendIdentity, u32>,
    pub(super) upsert_backends: BTreeMap<u32, BackendEntry>,
    pub(super) tables: Vec<Write>,
    /// Final tables of services whose table layout changes with their policy: written
    /// after the service entries (bridge tables come before), see `policy::bridge`.
    pub(super) reformatted: Vec<Write>,
    pub(super) services: Vec<Write>,
    pub(super) wanted_backends: BTreeSet<u32>,
    pub(super) wanted_services: BTreeSet<ServiceKey>,
    pub(super) wanted_tables: BTreeSet<SlotTableKey>,
    pub(super) wanted_acl: BTreeSet<ServiceCaller>,
    pub(super) views: Vec<ServiceView>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(
        config: &'a MeshConfig,
        overlay: &'a Overlay,
        actual: &'a KernelState,
        node: &'a Node,
    ) -> Self {
        Builder {
            config,
            overlay,
            actual,
            node,
            service_ids: IdAllocator::new(MAX_SERVICES),
            used_service_ids: None,
            backend_ids: IdAllocator::new(MAX_BACKENDS),
            new_backends: BTreeMap::new(),
            upsert_backends: BTreeMap::new(),
            tables: Vec::new(),
            reformatted: Vec::new(),
            services: Vec::new(),
            wanted_backends: BTreeSet::new(),
            wanted_services: BTreeSet::new(),
            wanted_tables: BTreeSet::new(),
            wanted_acl: BTreeSet::new(),
            views: Vec::new(),
        }
    }

    /// The id of the backend at `entry`'s address: the kernel's, one this plan made, or
    /// a new one.
    fn backend_id(&mut self, entry: &BackendEntry) -> Result<u32, PlanError> {
        if let Some(id) = self.actual.backend_id(entry) {
            return Ok(id);
        }
        if let Some(id) = self.new_backends.get(&identity(entry)) {
            return Ok(*id);
        }
        let backends = &self.actual.backends;
        let id = self
            .backend_ids
            .alloc(|id| backends.contains_key(&id))
            .ok_or(PlanError::Capacity {
                what: "backend",
                needed: backends.len() + self.new_backends.len() + 1,
                capacity: MAX_BACKENDS as usize - 1,
            })?;
        self.new_backends.insert(identity(entry), id);
        Ok(id)
    }

    /// Plans one service: its backends, ACL, slot tables and entry, and its view.
    pub(super) fn service(&mut self, spec: &ServiceSpec) -> Result<(), PlanError> {
        let config = self.config;
        let actual = self.actual;
        let key = service_key(spec.vip, spec.port);
        self.wanted_services.insert(key);
        let id = match actual.services.get(&key) {
            Some(existing) => existing.id,
            None => {
                let used = self
                    .used_service_ids
                    .get_or_insert_with(|| actual.services.values().map(|s| s.id).collect());
                self.service_ids
                    .alloc(|id| used.contains(&id))
                    .ok_or(PlanError::Capacity {
                        what: "service id",
                        needed: config.services.len(),
                        capacity: MAX_SERVICES as usize - 1,
                    })?
            }
        };
        let mut ids = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let entry = backend_entry(b.addr);
            let bid = self.backend_id(&entry)?;
            if actual.backends.get(&bid) != Some(&entry) {
                self.upsert_backends.insert(bid, entry);
            }
            self.wanted_backends.insert(bid);
            ids.push(bid);
        }
        // The workloads of this node the service admits (by name or by identity selector),
        // keyed as the kernel's caller map numbers them (workload index + 1).
        for index in spec
            .admitted_workloads(&config.workloads)
            .into_iter()
            .flatten()
        {
            self.wanted_acl.insert(ServiceCaller {
                service_id: id,
                workload: workload_class(index),
            });
        }
        let ov = self.overlay.get(&spec.name).cloned().unwrap_or_default();
        // Banned backends (and those awaiting a probe) keep their ids but get no slot, in
        // every class's table.
        let (weights, classes) = service_classes(spec, &ov.excluded, &config.workloads, self.node);
        let lb = policy::of(spec.lb);
        let build = |weights: &[u32]| -> Vec<u32> { lb.table(&spec.backends, &ids, weights) };
        let slots = build(&weights);
        // Classes whose table comes out the same as class 0's get none: the kernel falls
        // back to class 0. Workloads with the same weights share one computation.
        let mut built: BTreeMap<Vec<u32>, Vec<u32>> = BTreeMap::new();
        let mut class_tables: Vec<(u32, Vec<u32>, Vec<u32>)> = Vec::new();
        for (class, w) in classes {
            let table = built.entry(w.clone()).or_insert_with_key(|w| build(w));
            if *table != slots {
                class_tables.push((class, table.clone(), w));
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
            .chain(class_tables.iter().map(|(c, t, _)| (*c, t)))
        {
            let table_key = SlotTableKey {
                service_id: id,
                caller_class: class,
            };
            self.wanted_tables.insert(table_key);
            match actual.tables.get(&table_key) {
                Some(t) if t.slots == *table => {}
                existing => {
                    let mut generation = existing.map_or(1, |t| t.generation.wrapping_add(1));
                    let last = if reformat {
                        self.tables.push(Write::UpsertTable(
                            table_key,
                            TableState {
                                generation,
                                slots: policy::bridge(lb.routed(table)),
                            },
                        ));
                        generation = generation.wrapping_add(1);
                        &mut self.reformatted
                    } else {
                        &mut self.tables
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
            // entry until then: bridge them too, keeping their backends. (Every class table
            // of this service the plan wants is known by now: they are all written above.)
            for (table_key, t) in
                tables_of(actual, id).filter(|(k, _)| !self.wanted_tables.contains(k))
            {
                self.tables.push(Write::UpsertTable(
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
        match spec.protocol {
            // The proxy is the client's peer, not the service's sockets: no same-node pairing.
            Protocol::Http => entry.flags |= SERVICE_HTTP,
            Protocol::Tcp if spec.same_node => entry.flags |= SERVICE_SAME_NODE,
            Protocol::Tcp => {}
        }
        if actual.services.get(&key) != Some(&entry) {
            self.services.push(Write::UpsertService(key, entry));
        }
        let class_views: Vec<ClassView> = class_tables
            .iter()
            .map(|(class, table, weights)| {
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
                    weights: weights.clone(),
                }
            })
            .collect();
        self.views.push(ServiceView {
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
            classes: class_views.into(),
            class0_weights: is_routed(spec).then(|| weights.into()),
        });
        Ok(())
    }

    /// The writes, in the order the kernel must see them, given the deletions.
    pub(super) fn finish(
        self,
        delete_acl: Vec<ServiceCaller>,
        delete_services: Vec<ServiceKey>,
        delete_tables: Vec<SlotTableKey>,
        delete_backends: Vec<u32>,
    ) -> Plan {
        let mut writes: Vec<Write> = self
            .upsert_backends
            .into_iter()
            .map(|(id, b)| Write::UpsertBackend(id, b))
            .collect();
        // Allow entries before a service starts enforcing its ACL; removals after it stopped.
        writes.extend(
            self.wanted_acl
                .iter()
                .filter(|k| !self.actual.acl.contains(k))
                .map(|k| Write::UpsertAcl(*k)),
        );
        writes.extend(self.tables);
        writes.extend(self.services);
        writes.extend(self.reformatted);
        writes.extend(delete_acl.into_iter().map(Write::DeleteAcl));
        writes.extend(delete_services.into_iter().map(Write::DeleteService));
        // Tables of removed services, and class tables no longer wanted (after the service
        // entry that stopped flagging them).
        writes.extend(delete_tables.into_iter().map(Write::DeleteTable));
        writes.extend(delete_backends.into_iter().map(Write::DeleteBackend));
        Plan {
            writes,
            views: self.views,
        }
    }
}

/// The slot tables the kernel holds for service `id` (every caller class).
pub(super) fn tables_of(
    actual: &KernelState,
    id: u32,
) -> impl Iterator<Item = (&SlotTableKey, &TableState)> {
    actual.tables.range(
        SlotTableKey {
            service_id: id,
            caller_class: 0,
        }..=SlotTableKey {
            service_id: id,
            caller_class: u32::MAX,
        },
    )
}

/// The ACL entries the kernel holds for service `id`.
pub(super) fn acl_of(actual: &KernelState, id: u32) -> impl Iterator<Item = &ServiceCaller> {
    actual.acl.range(
        ServiceCaller {
            service_id: id,
            workload: 0,
        }..=ServiceCaller {
            service_id: id,
            workload: u32::MAX,
        },
    )
}

/// Backend ids a service's view names, each once: its (service, backend) pairs.
pub(super) fn distinct_backends(v: &ServiceView) -> usize {
    v.backends
        .iter()
        .map(|b| b.id)
        .collect::<BTreeSet<u32>>()
        .len()
}

//! The mapping kept from one rebuild to the next, so that an EndpointSlice or Service change
//! maps that one Service again and not the whole cluster.
//!
//! A build has steps, each a function of fewer inputs than the whole cluster:
//!
//! | step | reads | kept per |
//! |---|---|---|
//! | [`map_service`] | the Service, its EndpointSlices, the labels of the pods they point at, whether its namespace is enrolled | Service |
//! | names ([`Names`]) | every enrolled Service's name parts, in `namespace/name` order | mesh service |
//! | [`finalize`] | the above, the Service's MeshPolicy, the workloads' names | mesh service |
//! | workloads, policies | Pods, Nodes, Namespaces; MeshPolicies | cluster |
//! | [`settle`] (budget, validation) | the assembled config | nothing: run each build |
//!
//! [`ServiceCache::update`] takes the Services and EndpointSlices that changed: it maps those
//! Services again, names every mesh service again only when one of them gained, lost or
//! renamed a port (names depend on the ones taken before them), and finalizes what was mapped
//! or renamed. Everything else (a Namespace, Node, Pod or MeshPolicy change, a relist) goes
//! through [`ServiceCache::build`], the whole cluster. Both give exactly the same [`Built`]
//! (`cache_tests.rs`, a property test over random change sequences).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::naming::Names;
use super::policy::effective_policies;
use super::service::{finalize, map_service, ChosenPolicy, Finalized, Inputs, MappedService};
use super::workload::{cap_per_node, workloads};
use super::{key_of, settle, Built, Index, MapOptions, PolicyMemory, Snapshot};
use crate::SourceError;
use sockmesh_model::WorkloadSpec;

/// A Service or EndpointSlice as it is now, by `namespace/name`; `None` once deleted.
#[derive(Debug, Clone)]
pub enum ServiceChange {
    Service(String, Option<Arc<Service>>),
    EndpointSlice(String, Option<Arc<EndpointSlice>>),
}

/// What the last build mapped, per Service and for the cluster.
#[derive(Debug, Default)]
pub struct ServiceCache {
    inputs: Inputs,
    /// Services by `namespace/name`: the config's order.
    services: BTreeMap<String, Entry>,
    workloads: Vec<WorkloadSpec>,
    workload_names: HashSet<String>,
    /// Of the workloads (caps), then of the policies (one ignored).
    warnings: Vec<String>,
    policies: HashMap<(String, String), ChosenPolicy>,
    policy_rejections: Vec<SourceError>,
    built: bool,
}

#[derive(Debug)]
struct Entry {
    service: Arc<Service>,
    mapped: MappedService,
    /// The mesh name of each of `mapped.ports`.
    names: Vec<String>,
    /// Each of `mapped.ports`, finalized.
    out: Vec<Finalized>,
}

impl ServiceCache {
    /// Whether a [`ServiceCache::build`] has run, so [`ServiceCache::update`] may.
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Maps the whole cluster (what [`super::build`] does) and keeps it.
    pub fn build(
        &mut self,
        snap: &Snapshot,
        opts: &MapOptions,
        memory: &mut PolicyMemory,
    ) -> Result<Built, SourceError> {
        let index = Index::new(snap);
        let mut scratch = Built::empty();
        // Workloads first: allowed_callers is filtered against them.
        let mut workloads = workloads(snap, &index, opts);
        cap_per_node(&mut workloads, &mut scratch.warnings);
        self.workload_names = workloads.iter().map(|w| w.name.clone()).collect();
        self.workloads = workloads;
        self.policies = effective_policies(snap, memory, &mut scratch);
        self.warnings = scratch.warnings;
        self.policy_rejections = scratch.rejections;

        self.inputs = Inputs::new(snap);
        self.services.clear();
        for svc in &snap.services {
            if svc.metadata.namespace.is_none() || svc.metadata.name.is_none() {
                continue;
            }
            let mapped = map_service(svc, &self.inputs);
            self.services.insert(
                key_of(&svc.metadata),
                Entry {
                    service: svc.clone(),
                    mapped,
                    names: Vec::new(),
                    out: Vec::new(),
                },
            );
        }
        let all: BTreeSet<String> = self.services.keys().cloned().collect();
        self.name_all();
        self.finalize(&all);
        self.built = true;
        self.assemble()
    }

    /// Applies `changes` (Services and EndpointSlices only; anything else needs
    /// [`ServiceCache::build`]) and returns the config of the cluster as it is now, equal to
    /// what a whole build of it would give. Maps again only the Services whose object or
    /// EndpointSlices changed.
    pub fn update(&mut self, changes: Vec<ServiceChange>) -> Result<Built, SourceError> {
        debug_assert!(self.built, "update before the first build");
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut objects: HashMap<String, Option<Arc<Service>>> = HashMap::new();
        for change in changes {
            match change {
                ServiceChange::Service(key, svc) => {
                    dirty.insert(key.clone());
                    objects.insert(key, svc);
                }
                ServiceChange::EndpointSlice(key, slice) => {
                    dirty.extend(self.inputs.put_slice(&key, slice));
                }
            }
        }
        let mut renamed = false;
        for key in &dirty {
            let now = match objects.remove(key) {
                Some(now) => now,
                None => self.services.get(key).map(|e| e.service.clone()),
            };
            let now = now.filter(|s| {
                s.metadata.namespace.is_some() && s.metadata.name.is_some() && {
                    key_of(&s.metadata) == *key
                }
            });
            let Some(svc) = now else {
                if let Some(gone) = self.services.remove(key) {
                    renamed |= !gone.mapped.ports.is_empty();
                }
                continue;
            };
            let mapped = map_service(&svc, &self.inputs);
            match self.services.get_mut(key) {
                Some(entry) => {
                    renamed |= !same_parts(&entry.mapped, &mapped);
                    entry.service = svc;
                    entry.mapped = mapped;
                }
                None => {
                    renamed |= !mapped.ports.is_empty();
                    self.services.insert(
                        key.clone(),
                        Entry {
                            service: svc,
                            mapped,
                            names: Vec::new(),
                            out: Vec::new(),
                        },
                    );
                }
            }
        }
        dirty.retain(|k| self.services.contains_key(k));
        // Names depend only on the name parts of every port, in order: when none appeared,
        // went or changed, every name is taken again in the same order and stays.
        if renamed {
            dirty.extend(self.name_all());
        }
        self.finalize(&dirty);
        self.assemble()
    }

    /// Names every mesh service again, in order; returns the Services whose names changed.
    fn name_all(&mut self) -> Vec<String> {
        let mut names = Names::default();
        let mut changed = Vec::new();
        for (key, entry) in &mut self.services {
            let now: Vec<String> = entry
                .mapped
                .ports
                .iter()
                .map(|p| {
                    let parts: Vec<&str> = p.parts.iter().map(String::as_str).collect();
                    names.take(&parts)
                })
                .collect();
            if now != entry.names {
                entry.names = now;
                changed.push(key.clone());
            }
        }
        changed
    }

    fn finalize(&mut self, keys: &BTreeSet<String>) {
        for key in keys {
            let Some(entry) = self.services.get_mut(key) else {
                continue;
            };
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            let policy = self.policies.get(&(ns.to_owned(), name.to_owned()));
            entry.out = entry
                .mapped
                .ports
                .iter()
                .zip(&entry.names)
                .map(|(port, name)| finalize(port, name, policy, &self.workload_names))
                .collect();
        }
    }

    /// The config of what is kept, in order, then settled (budget, validation).
    fn assemble(&self) -> Result<Built, SourceError> {
        let mut out = Built::empty();
        out.config.workloads = self.workloads.clone();
        out.warnings = self.warnings.clone();
        out.rejections = self.policy_rejections.clone();
        let mut services = Vec::with_capacity(self.services.len());
        for entry in self.services.values() {
            for f in &entry.out {
                out.warnings.extend(f.warning.clone());
                out.without_backends.extend(f.without_backends.clone());
                out.rejections.extend(f.rejection.clone());
                services.extend(f.spec.clone());
            }
        }
        settle(out, services)
    }
}

/// Whether two mappings of a Service name the same mesh services.
fn same_parts(a: &MappedService, b: &MappedService) -> bool {
    a.ports.len() == b.ports.len()
        && a.ports
            .iter()
            .zip(&b.ports)
            .all(|(x, y)| x.parts == y.parts)
}

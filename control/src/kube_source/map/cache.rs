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
//! | workloads | Pods, Nodes, Namespaces | cluster |
//! | policies | MeshPolicies | cluster |
//! | [`settle`] (budget, validation) | the assembled config | nothing: run each build |
//!
//! [`ServiceCache::update`] takes the Services, EndpointSlices and Pods that changed (and
//! whether a Node did): it maps again the Services whose object or EndpointSlices changed or
//! whose EndpointSlices point at a changed pod (`Inputs` counts which do), makes the
//! workloads again when a Pod or Node changed (and finalizes again the Services whose
//! policy names callers, when they changed), names every mesh service again only when a
//! port appeared, went or changed its name parts (names depend on the ones taken before
//! them), and finalizes what was mapped or renamed. A Namespace or MeshPolicy change, or a
//! relist, goes through [`ServiceCache::build`], the whole cluster: they move enrolment
//! and policies of many Services at once. Both give exactly the same [`Built`]
//! (`cache_tests.rs`, a property test over random change sequences).
//!
//! Validating the whole config again would still cost the cluster (most of an update at
//! 10,000 Services), so an update that keeps every mesh service's name, VIP and port and
//! the workloads, after a build that left nothing out, patches the kept config in place
//! instead: the services it
//! did not touch passed the model's rules with the same names, VIPs and workloads, the
//! touched ones are validated on their own (a config of just them), and what only the whole
//! config can break is checked here: the (service, backend) pair budget and a backend that is
//! some service's VIP:port. Anything else takes the whole [`settle`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::naming::Names;
use super::policy::effective_policies;
use super::service::{finalize, map_service, ChosenPolicy, Finalized, Inputs, MappedService};
use super::workload::{cap_per_node, workloads};
use super::{key_of, settle, Built, Index, MapOptions, PolicyMemory, Snapshot};
use crate::SourceError;
use sockmesh_model::{
    Enrollment, MeshConfig, ServiceSpec, WorkloadSpec, CONFIG_VERSION, MAX_BACKEND_PAIRS,
};

/// A Service, EndpointSlice or Pod as it is now, by `namespace/name`; `None` once deleted.
#[derive(Debug, Clone)]
pub enum ServiceChange {
    Service(String, Option<Arc<Service>>),
    EndpointSlice(String, Option<Arc<EndpointSlice>>),
    /// Maps again the Services whose EndpointSlices point at the pod; the workloads come
    /// from the snapshot given to [`ServiceCache::update`].
    Pod(String, Option<Arc<Pod>>),
}

/// What a build or an update made of the cluster.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The config with what was refused, or why no valid config could be made.
    pub built: Result<&'a Built, SourceError>,
    /// Whether the config differs from the last valid one (true for the first).
    pub changed: bool,
    /// When the config was patched from the last valid one: the services patched, and
    /// whether the workloads were replaced (nothing else differs). `None`: built whole.
    pub patched: Option<(Vec<String>, bool)>,
}

/// What the last build mapped, per Service and for the cluster.
#[derive(Debug, Default)]
pub struct ServiceCache {
    inputs: Inputs,
    /// Services by `namespace/name`: the config's order.
    services: BTreeMap<String, Entry>,
    workloads: Vec<WorkloadSpec>,
    workload_names: HashSet<String>,
    /// Of the workloads (caps).
    workload_warnings: Vec<String>,
    /// Of the policies (one ignored).
    policy_warnings: Vec<String>,
    /// The policy of each Service, by `namespace/name`.
    policies: HashMap<String, ChosenPolicy>,
    policy_rejections: Vec<SourceError>,
    built: bool,
    /// The last valid outcome: what an update patches and compares with.
    last: Option<Built>,
    /// Whether `last` holds exactly the finalized specs (none cut by the budget or left out
    /// by validation): only then may an update patch it in place.
    clean: bool,
    /// VIP:port of every service of `last` (when `clean`).
    vips: HashSet<SocketAddr>,
    /// Backends of all services of `last` together (when `clean`).
    pairs: usize,
}

#[derive(Debug)]
struct Entry {
    service: Arc<Service>,
    mapped: MappedService,
    /// The mesh name of each of `mapped.ports`.
    names: Vec<String>,
    /// Each of `mapped.ports`, finalized.
    out: Vec<Finalized>,
    /// Where its first spec is in the last config's services (when `clean`).
    at: usize,
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
    ) -> Outcome<'_> {
        // Workloads first: allowed_callers is filtered against them.
        let (workloads, warnings) = workloads_of(snap, opts);
        self.workload_names = workloads.iter().map(|w| w.name.clone()).collect();
        self.workloads = workloads;
        self.workload_warnings = warnings;
        let mut scratch = Built::empty();
        self.policies = effective_policies(snap, memory, &mut scratch)
            .into_iter()
            .map(|((ns, name), chosen)| (format!("{ns}/{name}"), chosen))
            .collect();
        self.policy_warnings = scratch.warnings;
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
                    at: 0,
                },
            );
        }
        self.name_all();
        let all: Vec<String> = self.services.keys().cloned().collect();
        self.finalize(&all);
        self.built = true;
        self.settle_all()
    }

    /// Applies `changes` and returns the config of the cluster as it is now, equal to what
    /// a whole build of it would give. Maps again only the Services whose object,
    /// EndpointSlices or pods changed. `workloads_from` (its Namespaces, Nodes and Pods; the
    /// rest is not read) is required when a Pod or Node changed: the workloads are made
    /// again from it. A Namespace or MeshPolicy change needs [`ServiceCache::build`].
    pub fn update(
        &mut self,
        changes: Vec<ServiceChange>,
        workloads_from: Option<(&Snapshot, &MapOptions)>,
    ) -> Outcome<'_> {
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
                ServiceChange::Pod(key, pod) => {
                    debug_assert!(workloads_from.is_some(), "a pod changed: workloads needed");
                    dirty.extend(self.inputs.put_pod(&key, pod));
                }
            }
        }
        let mut workloads_changed = false;
        if let Some((snap, opts)) = workloads_from {
            let (workloads, warnings) = workloads_of(snap, opts);
            self.workload_warnings = warnings;
            if workloads != self.workloads {
                workloads_changed = true;
                self.workload_names = workloads.iter().map(|w| w.name.clone()).collect();
                self.workloads = workloads;
                // Their specs keep only the `allowed_callers` names that are workloads.
                let callers = self
                    .policies
                    .iter()
                    .filter(|(_, (_, patch))| patch.contains_key("allowed_callers"))
                    .map(|(key, _)| key)
                    .filter(|key| self.services.contains_key(*key));
                dirty.extend(callers.cloned());
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
                            at: 0,
                        },
                    );
                }
            }
        }
        dirty.retain(|k| self.services.contains_key(k));
        let before: HashMap<String, Vec<Finalized>> = dirty
            .iter()
            .filter_map(|k| {
                let out = std::mem::take(&mut self.services.get_mut(k)?.out);
                Some((k.clone(), out))
            })
            .collect();
        // Names depend only on the name parts of every port, in order: when none appeared,
        // went or changed, every name is taken again in the same order and stays.
        if renamed {
            for key in self.name_all() {
                // Renamed but not mapped again: its backends went into its specs.
                if !dirty.contains(&key) {
                    if let Some(e) = self.services.get_mut(&key) {
                        e.mapped = map_service(&e.service, &self.inputs);
                    }
                    dirty.insert(key);
                }
            }
        }
        let dirty: Vec<String> = dirty.into_iter().collect();
        self.finalize(&dirty);
        if !renamed {
            if let Some((changed, names)) = self.patch(&before, workloads_changed) {
                return Outcome {
                    built: Ok(self.last.as_ref().expect("patched")),
                    changed,
                    patched: Some((names, workloads_changed)),
                };
            }
        }
        self.settle_all()
    }

    /// Patches the last config with the specs finalized again (`before`: what they were)
    /// and, when `workloads_changed`, the workloads, when that gives what [`settle`] would
    /// (module docs); `None` when it cannot tell. Returns whether the config changed, and
    /// the names of the services patched.
    ///
    /// Of the model's rules only `allowed_callers` (names must be workloads) and the
    /// workloads' own read the workloads; every Service with callers is among `before` when
    /// the workloads changed (`update`), so those are all checked with the new ones.
    fn patch(
        &mut self,
        before: &HashMap<String, Vec<Finalized>>,
        workloads_changed: bool,
    ) -> Option<(bool, Vec<String>)> {
        if !self.clean {
            return None;
        }
        let mut pairs = self.pairs;
        let mut patches: Vec<(usize, &ServiceSpec)> = Vec::new();
        // Validated on their own: the changed specs, and those with callers when the
        // workloads changed.
        let mut checks: Vec<&ServiceSpec> = Vec::new();
        for (key, old) in before {
            let entry = self.services.get(key)?;
            if old.len() != entry.out.len() {
                return None;
            }
            let mut at = entry.at;
            for (was, now) in old.iter().zip(&entry.out) {
                match (&was.spec, &now.spec) {
                    (None, None) => continue,
                    (Some(was), Some(now))
                        if was.name == now.name && was.vip == now.vip && was.port == now.port =>
                    {
                        pairs = pairs - was.backends.len() + now.backends.len();
                        if was != now {
                            if now.backends.iter().any(|b| self.vips.contains(&b.addr)) {
                                return None;
                            }
                            patches.push((at, now));
                            checks.push(now);
                        } else if workloads_changed && now.allowed_callers.is_some() {
                            checks.push(now);
                        }
                    }
                    _ => return None,
                }
                at += 1;
            }
        }
        if pairs > MAX_BACKEND_PAIRS {
            return None;
        }
        if !checks.is_empty() || workloads_changed {
            let callers = checks.iter().any(|s| s.allowed_callers.is_some());
            let alone = MeshConfig {
                version: CONFIG_VERSION,
                services: checks.into_iter().cloned().collect(),
                workloads: if callers || workloads_changed {
                    self.workloads.clone()
                } else {
                    Vec::new()
                },
                enrollment: Enrollment::Workloads,
            };
            alone.validate().ok()?;
        }
        let (warnings, without_backends, rejections) = self.reports();
        let last = self.last.as_mut()?;
        let changed = !patches.is_empty() || workloads_changed;
        let names = patches.iter().map(|(_, spec)| spec.name.clone()).collect();
        for (at, spec) in patches {
            last.config.services[at] = spec.clone();
        }
        if workloads_changed {
            last.config.workloads = self.workloads.clone();
        }
        last.warnings = warnings;
        last.without_backends = without_backends;
        last.rejections = rejections;
        self.pairs = pairs;
        Some((changed, names))
    }

    /// The warnings, services without backends and rejections of what is kept, in order,
    /// before [`settle`] adds its own.
    fn reports(&self) -> (Vec<String>, Vec<String>, Vec<SourceError>) {
        let mut warnings = self.workload_warnings.clone();
        warnings.extend(self.policy_warnings.iter().cloned());
        let mut without_backends = Vec::new();
        let mut rejections = self.policy_rejections.clone();
        for f in self.services.values().flat_map(|e| &e.out) {
            warnings.extend(f.warnings.iter().cloned());
            without_backends.extend(f.without_backends.clone());
            rejections.extend(f.rejection.clone());
        }
        (warnings, without_backends, rejections)
    }

    /// Assembles and settles the whole config; keeps it when valid.
    fn settle_all(&mut self) -> Outcome<'_> {
        let finalized: usize = self
            .services
            .values()
            .flat_map(|e| &e.out)
            .filter(|f| f.spec.is_some())
            .count();
        let built = match self.assemble() {
            Ok(built) => built,
            Err(e) => {
                self.clean = false;
                return Outcome {
                    built: Err(e),
                    changed: false,
                    patched: None,
                };
            }
        };
        let changed = self.last.as_ref().is_none_or(|l| l.config != built.config);
        self.clean = built.config.services.len() == finalized
            && built.config.workloads.len() == self.workloads.len();
        if self.clean {
            let mut at = 0;
            for entry in self.services.values_mut() {
                entry.at = at;
                at += entry.out.iter().filter(|f| f.spec.is_some()).count();
            }
            self.vips = built
                .config
                .services
                .iter()
                .map(|s| SocketAddr::new(s.vip, s.port))
                .collect();
            self.pairs = built.config.services.iter().map(|s| s.backends.len()).sum();
        }
        Outcome {
            built: Ok(self.last.insert(built)),
            changed,
            patched: None,
        }
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

    /// Finalizes the ports of `keys`, which must have been mapped since they last were.
    fn finalize(&mut self, keys: &[String]) {
        for key in keys {
            let Some(entry) = self.services.get_mut(key) else {
                continue;
            };
            let policy = self.policies.get(key);
            entry.out = entry
                .mapped
                .ports
                .iter_mut()
                .zip(&entry.names)
                .map(|(port, name)| finalize(port, name, policy, &self.workload_names))
                .collect();
        }
    }

    /// The config of what is kept, in order, then settled (budget, validation).
    fn assemble(&self) -> Result<Built, SourceError> {
        let mut out = Built::empty();
        out.config.workloads = self.workloads.clone();
        (out.warnings, out.without_backends, out.rejections) = self.reports();
        let services = self
            .services
            .values()
            .flat_map(|e| &e.out)
            .filter_map(|f| f.spec.clone())
            .collect();
        settle(out, services)
    }
}

/// The workloads of `snap`'s pods (its Namespaces and Nodes read too), capped, with the
/// warnings of the caps.
fn workloads_of(snap: &Snapshot, opts: &MapOptions) -> (Vec<WorkloadSpec>, Vec<String>) {
    let index = Index::new(snap);
    let mut warnings = Vec::new();
    let mut workloads = workloads(snap, &index, opts);
    cap_per_node(&mut workloads, &mut warnings);
    (workloads, warnings)
}

/// Whether two mappings of a Service name the same mesh services.
fn same_parts(a: &MappedService, b: &MappedService) -> bool {
    a.ports.len() == b.ports.len()
        && a.ports
            .iter()
            .zip(&b.ports)
            .all(|(x, y)| x.parts == y.parts)
}

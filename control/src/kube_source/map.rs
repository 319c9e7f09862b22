//! From Kubernetes objects to a [`MeshConfig`]: pure functions, no API calls, so every rule
//! here is unit-tested on hand-written objects (`map_tests.rs`, `identity_tests.rs`).
//!
//! The rules (docs/control-plane.md, "Kubernetes source"):
//!
//! - **Enrolment.** A namespace is enrolled by the label `sockmesh.io/mesh: enabled`. A pod
//!   is enrolled when its own `sockmesh.io/mesh` label is `enabled`, or when it has no such
//!   label and its namespace is enrolled; any other value (`disabled`) opts it out. A
//!   Service is in the mesh when its own label says `enabled`, or when it has no such label
//!   and its namespace is enrolled or one of its endpoints is a pod enrolled by its own
//!   label. Anything else is not in the config, so the agents never route it.
//! - **Services.** Each TCP port of a Service with a ClusterIP is one mesh service named
//!   `<namespace>-<service>-<port>`, VIP the ClusterIP (a dual-stack Service's second family
//!   adds `-ipv4`/`-ipv6`). Backends: the ready endpoints of the Service's EndpointSlices of
//!   that family, first address, at the slice port of the same name as the Service port (the
//!   targetPort resolved for that pod), zone from `endpoint.zone` or the first zone hint,
//!   labels those of the endpoint's pod. A Service without a ready endpoint is left out until
//!   it has one (a mesh service needs a backend).
//! - **Policy.** A `MeshPolicy` whose `spec.service` names the Service supplies every other
//!   field, decoded and validated with the model itself. A policy the model refuses is
//!   reported (a rejection with its field path) and the services it names keep the last
//!   valid version of it seen by this process (or the defaults): one bad policy never stops
//!   endpoint updates of the whole mesh.
//! - **Workloads.** Each enrolled, not finished pod is a workload `<namespace>-<pod>` with
//!   the pod's labels (plus `sockmesh.io/namespace` and `sockmesh.io/service-account`, taken
//!   from the pod's namespace and `spec.serviceAccountName`, over any label of those names
//!   the pod carries), its pod cgroup (from its UID and QoS
//!   class, the kubelet's naming for the configured cgroup driver; the agent walks the
//!   container cgroups below it and skips pods that are not on its node), and priority
//!   `offline` when labelled `sockmesh.io/priority: offline`, and the zone of its node (the
//!   Node's `topology.kubernetes.io/zone` label), so `locality:` applies to pods.
//!
//! Names longer than 63 characters, or equal to one already taken, end in a hash of the
//! whole name, so they stay unique and stable.

mod cache;
#[cfg(test)]
mod cache_tests;
mod naming;
mod policy;
mod service;
mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::crd::MeshPolicy;
use crate::SourceError;
use sockmesh_model::{
    check_zone, Enrollment, MeshConfig, ServiceSpec, CONFIG_VERSION, MAX_BACKEND_PAIRS,
};

pub use cache::{Outcome, ServiceCache, ServiceChange};
pub use naming::mesh_name;
pub use policy::{apply_policy, check_policy, PolicyMemory};
pub use service::{endpoint_zone, model_labels};
pub use workload::{pod_cgroup, qos_class, QosClass};

/// The enrolment label, on namespaces, pods and Services.
pub const MESH_LABEL: &str = "sockmesh.io/mesh";
/// The enrolment label's value that enrols.
pub const ENABLED: &str = "enabled";
/// Set on every workload's labels (over any the pod carries itself): the pod's namespace,
/// what `allowed_callers` selectors' `namespace` and `routes: match:` read.
pub use sockmesh_model::NAMESPACE_LABEL;
/// Set on every workload's labels (over any the pod carries itself): the pod's
/// ServiceAccount (`spec.serviceAccountName`, `default` when unset), what `allowed_callers`
/// selectors' `service_account` reads.
pub use sockmesh_model::SERVICE_ACCOUNT_LABEL;
/// The ServiceAccount of a pod that names none (the API server's own default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// A pod label: `offline` makes the workload's callers shed first under overload.
pub const PRIORITY_LABEL: &str = "sockmesh.io/priority";
/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The well-known label of a Node's zone; a pod's workload takes its node's.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Everything the mapping reads: the objects the watches hold at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub namespaces: Vec<Arc<Namespace>>,
    pub nodes: Vec<Arc<Node>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub policies: Vec<Arc<MeshPolicy>>,
}

/// How the kubelet names pod cgroups (its `--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` (the
    /// default of kubeadm and most distributions).
    #[default]
    Systemd,
    /// `kubepods/burstable/pod<uid>`.
    Cgroupfs,
}

impl std::str::FromStr for CgroupDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "systemd" => Ok(CgroupDriver::Systemd),
            "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
            other => Err(format!(
                "unknown cgroup driver {other:?}: use systemd or cgroupfs"
            )),
        }
    }
}

/// Node-side facts the control plane cannot see, given by flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapOptions {
    pub cgroup_driver: CgroupDriver,
    /// Prefix of the pod cgroups below the cgroup2 mount (the kubelet's `--cgroup-root`;
    /// empty for the default).
    pub cgroup_root: String,
}

/// What [`build`] made of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// Valid: `config.validate()` passed.
    pub config: MeshConfig,
    /// What was refused (a MeshPolicy the model rejects, an object left out): reported as
    /// [`SourceEvent::Rejected`](crate::SourceEvent::Rejected), each once.
    pub rejections: Vec<SourceError>,
    /// Degradations worth a log line (a capped backend or workload list, a policy ignored).
    pub warnings: Vec<String>,
    /// Mesh services left out for want of a ready endpoint (logged at debug level).
    pub without_backends: Vec<String>,
}

/// Builds the mesh config of a snapshot. `memory` keeps the last valid spec of each policy
/// across calls. Errs only when the config cannot be made valid by leaving objects out (it
/// should not happen; the source reports it as a rejection and keeps serving the last one).
///
/// The whole cluster each time; [`ServiceCache`] keeps what this maps and, when only
/// Services and EndpointSlices changed, maps those again and nothing else.
pub fn build(
    snap: &Snapshot,
    opts: &MapOptions,
    memory: &mut PolicyMemory,
) -> Result<Built, SourceError> {
    ServiceCache::default()
        .build(snap, opts, memory)
        .built
        .cloned()
}

impl Built {
    fn empty() -> Self {
        Built {
            config: MeshConfig {
                version: CONFIG_VERSION,
                services: Vec::new(),
                workloads: Vec::new(),
                // Enrolment is the caller side too: only enrolled pods (the workloads) are
                // routed, in the kernel; every other pod's connects stay kube-proxy's.
                enrollment: Enrollment::Workloads,
            },
            rejections: Vec::new(),
            warnings: Vec::new(),
            without_backends: Vec::new(),
        }
    }
}

/// The last step of a build: `services` (in order) cut to the kernel's budget of (service,
/// backend) pairs, then whatever still breaks a rule of the model left out, one object at a
/// time, each with a rejection.
fn settle(mut out: Built, mut services: Vec<ServiceSpec>) -> Result<Built, SourceError> {
    let left_out = fit_backend_budget(&mut services, MAX_BACKEND_PAIRS);
    if let Some(first) = left_out.first() {
        out.rejections.push(SourceError {
            path: Some("services".to_owned()),
            message: format!(
                "{} services left out (first: {first}): their backends would take the mesh past \
                 the {MAX_BACKEND_PAIRS} (service, backend) pairs the kernel's tables hold",
                left_out.len()
            ),
        });
    }
    out.config.services = services;

    // Belt and braces: whatever still breaks a rule is left out, one object at a time.
    let limit = out.config.services.len() + out.config.workloads.len() + 1;
    for _ in 0..limit {
        let Err(err) = out.config.validate() else {
            return Ok(out);
        };
        let path = err.path().unwrap_or("");
        if let Some(i) = index_in(path, "services[") {
            let gone = out.config.services.remove(i);
            out.rejections.push(SourceError {
                path: Some(path.to_owned()),
                message: format!("service {} left out: {err}", gone.name),
            });
        } else if let Some(i) = index_in(path, "workloads[") {
            let gone = out.config.workloads.remove(i);
            for s in &mut out.config.services {
                if let Some(callers) = &mut s.allowed_callers {
                    callers.retain(|c| c.name() != Some(gone.name.as_str()));
                }
            }
            out.rejections.push(SourceError {
                path: Some(path.to_owned()),
                message: format!("workload {} left out: {err}", gone.name),
            });
        } else {
            return Err(err.into());
        }
    }
    out.config.validate().map_err(SourceError::from)?;
    Ok(out)
}

/// Keeps the services, in order, whose backends fit in `budget` (service, backend) pairs
/// together and leaves out each one that would not (a later, smaller one may still fit);
/// returns the names left out. One pass, so a cluster far over the kernel's budget costs no
/// more than one at it.
pub fn fit_backend_budget(services: &mut Vec<ServiceSpec>, budget: usize) -> Vec<String> {
    let mut used = 0usize;
    let mut left_out = Vec::new();
    services.retain(|s| {
        if used + s.backends.len() > budget {
            left_out.push(s.name.clone());
            false
        } else {
            used += s.backends.len();
            true
        }
    });
    left_out
}

/// `i` of a path starting `prefix` `i` `]`.
fn index_in(path: &str, prefix: &str) -> Option<usize> {
    path.strip_prefix(prefix)?.split(']').next()?.parse().ok()
}

/// Lookups the workload rules need.
struct Index<'a> {
    enrolled_namespaces: HashSet<&'a str>,
    /// Node name -> its zone (from [`ZONE_LABEL`], when it is a valid zone name).
    node_zones: HashMap<&'a str, &'a str>,
}

impl<'a> Index<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let enrolled_namespaces = snap
            .namespaces
            .iter()
            .filter(|ns| namespace_enrolled(ns))
            .filter_map(|ns| ns.metadata.name.as_deref())
            .collect();
        let node_zones = snap
            .nodes
            .iter()
            .filter_map(|n| {
                let zone = label(&n.metadata.labels, ZONE_LABEL)?;
                check_zone(zone).is_ok().then_some(())?;
                Some((n.metadata.name.as_deref()?, zone))
            })
            .collect();
        Index {
            enrolled_namespaces,
            node_zones,
        }
    }

    fn namespace_enrolled(&self, ns: &str) -> bool {
        self.enrolled_namespaces.contains(ns)
    }
}

fn label<'a>(labels: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref()?.get(key).map(String::as_str)
}

/// The `sockmesh.io/mesh` label: `Some(true)` for `enabled`, `Some(false)` for any other
/// value (an explicit opt-out: fail closed), `None` when absent.
pub fn mesh_label(labels: &Option<BTreeMap<String, String>>) -> Option<bool> {
    label(labels, MESH_LABEL).map(|v| v == ENABLED)
}

pub fn namespace_enrolled(ns: &Namespace) -> bool {
    mesh_label(&ns.metadata.labels) == Some(true)
}

/// Whether a pod is in the mesh, given whether its namespace is.
pub fn pod_enrolled(pod: &Pod, namespace_enrolled: bool) -> bool {
    mesh_label(&pod.metadata.labels).unwrap_or(namespace_enrolled)
}

/// `ns/name`, the sort key that makes the output independent of watch order.
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

fn sorted<T, K: Ord>(items: &[Arc<T>], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut v: Vec<&T> = items.iter().map(|a| &**a).collect();
    v.sort_by_cached_key(|t| key(t));
    v
}

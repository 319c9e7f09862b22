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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use serde_json::{Map, Value};

use super::crd::MeshPolicy;
use crate::SourceError;
use sockmesh_model::{
    check_allowed_callers, check_zone, BackendSpec, Enrollment, LbPolicy, MeshConfig, Priority,
    ServiceSpec, WorkloadSpec, CONFIG_VERSION, MAX_BACKENDS_PER_SERVICE, MAX_BACKEND_PAIRS,
    MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_MESH_WORKLOADS, MAX_SERVICE_NAME_LEN,
    MAX_WORKLOADS,
};

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

/// Fields a MeshPolicy may not set: they come from the Service and its EndpointSlices.
const FROM_THE_CLUSTER: [&str; 4] = ["name", "vip", "port", "backends"];

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

/// The last valid spec of each MeshPolicy (`namespace/name` -> the spec without `service`):
/// what a service keeps while its policy's newest edit is refused.
#[derive(Debug, Clone, Default)]
pub struct PolicyMemory(HashMap<String, Map<String, Value>>);

/// What [`build`] made of a snapshot.
#[derive(Debug, Clone)]
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
pub fn build(
    snap: &Snapshot,
    opts: &MapOptions,
    memory: &mut PolicyMemory,
) -> Result<Built, SourceError> {
    let mut out = Built {
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
    };
    let index = Index::new(snap);

    // Workloads first: allowed_callers is filtered against them.
    let mut workloads = workloads(snap, &index, opts);
    cap_per_node(&mut workloads, &mut out.warnings);
    let workload_names: HashSet<&str> = workloads.iter().map(|w| w.name.as_str()).collect();

    let policies = effective_policies(snap, memory, &mut out);
    let mut names = Names::default();
    let mut services = Vec::new();
    for svc in sorted(&snap.services, |s| key_of(&s.metadata)) {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        if !service_enrolled(svc, &index) {
            continue;
        }
        let policy = policies.get(&(ns.to_owned(), name.to_owned()));
        for mut spec in service_ports(svc, &index, &mut names, &mut out) {
            if let Some((key, patch)) = policy {
                match apply_policy(&spec, patch) {
                    Ok(with) => spec = with,
                    // Checked in `effective_policies`; defaults if it fails anyway.
                    Err((path, reason)) => out.rejections.push(SourceError {
                        message: format!("MeshPolicy {key}: {path}: {reason}"),
                        path: Some(path),
                    }),
                }
            }
            if let Some(callers) = &mut spec.allowed_callers {
                // Pods come and go; a caller that is not a workload now cannot call anyway.
                // Selectors stay: they match whichever pods there are.
                callers.retain(|c| c.name().is_none_or(|n| workload_names.contains(n)));
            }
            services.push(spec);
        }
    }
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
    out.config.workloads = workloads;

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

/// Lookups the rules need.
struct Index<'a> {
    enrolled_namespaces: HashSet<&'a str>,
    /// Node name -> its zone (from [`ZONE_LABEL`], when it is a valid zone name).
    node_zones: HashMap<&'a str, &'a str>,
    pods: HashMap<(&'a str, &'a str), &'a Pod>,
    /// (namespace, service name) -> its EndpointSlices.
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
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
        let pods = snap
            .pods
            .iter()
            .filter_map(|p| {
                Some((
                    (
                        p.metadata.namespace.as_deref()?,
                        p.metadata.name.as_deref()?,
                    ),
                    &**p,
                ))
            })
            .collect();
        let mut slices: HashMap<_, Vec<&EndpointSlice>> = HashMap::new();
        for slice in sorted(&snap.slices, |s| key_of(&s.metadata)) {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                label(&slice.metadata.labels, SERVICE_NAME_LABEL),
            ) else {
                continue;
            };
            slices.entry((ns, svc)).or_default().push(slice);
        }
        Index {
            enrolled_namespaces,
            node_zones,
            pods,
            slices,
        }
    }

    fn namespace_enrolled(&self, ns: &str) -> bool {
        self.enrolled_namespaces.contains(ns)
    }

    /// The pod an endpoint points at, if it is a pod we know.
    fn target_pod(&self, slice_ns: &'a str, ep: &'a Endpoint) -> Option<&'a Pod> {
        let target = ep.target_ref.as_ref()?;
        if target.kind.as_deref().is_some_and(|k| k != "Pod") {
            return None;
        }
        let ns = target.namespace.as_deref().unwrap_or(slice_ns);
        self.pods.get(&(ns, target.name.as_deref()?)).copied()
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

fn service_enrolled(svc: &Service, index: &Index<'_>) -> bool {
    if let Some(on) = mesh_label(&svc.metadata.labels) {
        return on;
    }
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return false;
    };
    if index.namespace_enrolled(ns) {
        return true;
    }
    // A pod enrolled by its own label brings the Services it backs along.
    index.slices.get(&(ns, name)).is_some_and(|slices| {
        slices.iter().any(|slice| {
            slice.endpoints.iter().flatten().any(|ep| {
                index
                    .target_pod(ns, ep)
                    .is_some_and(|p| mesh_label(&p.metadata.labels) == Some(true))
            })
        })
    })
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

/// Chooses, checks and remembers the policy of each Service: (namespace, service) ->
/// (policy key, the spec fields to apply).
fn effective_policies(
    snap: &Snapshot,
    memory: &mut PolicyMemory,
    out: &mut Built,
) -> HashMap<(String, String), (String, Map<String, Value>)> {
    let mut chosen: HashMap<(String, String), (String, Map<String, Value>)> = HashMap::new();
    let mut seen = HashSet::new();
    for policy in sorted(&snap.policies, MeshPolicy::key) {
        let key = policy.key();
        seen.insert(key.clone());
        let Some(ns) = policy.metadata.namespace.clone() else {
            continue;
        };
        let Some(service) = policy.service().map(str::to_owned) else {
            out.rejections.push(SourceError {
                path: Some("spec.service".to_owned()),
                message: format!(
                    "MeshPolicy {key}: spec.service: missing or not a string: it must name a \
                     Service of namespace {ns}"
                ),
            });
            continue;
        };
        if let Some((first, _)) = chosen.get(&(ns.clone(), service.clone())) {
            out.warnings.push(format!(
                "MeshPolicy {key} ignored: {first} already names Service {ns}/{service} (one \
                 policy per Service; the first by name wins)"
            ));
            continue;
        }
        let patch = match check_policy(&policy.spec) {
            Ok(patch) => {
                memory.0.insert(key.clone(), patch.clone());
                Some(patch)
            }
            Err((path, reason)) => {
                let kept = memory.0.get(&key).cloned();
                let consequence = if kept.is_some() {
                    "its services keep the last valid version of the policy"
                } else {
                    "its services run with the default policy"
                };
                out.rejections.push(SourceError {
                    message: format!("MeshPolicy {key}: {path}: {reason} ({consequence})"),
                    path: Some(path),
                });
                kept
            }
        };
        if let Some(patch) = patch {
            chosen.insert((ns, service), (key, patch));
        }
    }
    memory.0.retain(|k, _| seen.contains(k));
    chosen
}

/// The spec fields of a policy to apply to a service, when the model accepts them: decoded
/// as a service's fields and validated with every rule that concerns the service alone
/// (`allowed_callers` names aside: which workloads exist changes with the pods; its
/// selectors are checked). Errs with (`spec.<field path>`, reason).
pub fn check_policy(spec: &Value) -> Result<Map<String, Value>, (String, String)> {
    let Some(fields) = spec.as_object() else {
        return Err(("spec".to_owned(), "must be an object".to_owned()));
    };
    let mut patch = fields.clone();
    patch.remove("service");
    let probe = ServiceSpec::new(
        "policy-check",
        IpAddr::from([127, 0, 0, 1]),
        1,
        LbPolicy::default(),
        vec![BackendSpec::new(SocketAddr::from(([127, 0, 0, 2], 1)), 1)],
    );
    let mut service = apply_policy(&probe, &patch)?;
    if let Some(callers) = service.allowed_callers.take() {
        check_allowed_callers(&callers, None)
            .map_err(|(field, reason)| (spec_path(&field), reason))?;
    }
    let cfg = MeshConfig {
        version: CONFIG_VERSION,
        services: vec![service],
        workloads: Vec::new(),
        enrollment: Enrollment::default(),
    };
    if let Err(err) = cfg.validate() {
        let path = err.path().unwrap_or("");
        let field = path.strip_prefix("services[0]").unwrap_or(path);
        let field = field.strip_prefix('.').unwrap_or(field);
        return Err((spec_path(field), err.reason().to_owned()));
    }
    Ok(patch)
}

fn spec_path(field: &str) -> String {
    if field.is_empty() {
        "spec".to_owned()
    } else {
        format!("spec.{field}")
    }
}

/// `base` with the policy's fields set, decoded by the model (unknown fields and bad values
/// are refused with their path, as in a config file).
pub fn apply_policy(
    base: &ServiceSpec,
    patch: &Map<String, Value>,
) -> Result<ServiceSpec, (String, String)> {
    let mut value = serde_json::to_value(base).map_err(|e| ("spec".to_owned(), e.to_string()))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(("spec".to_owned(), "not an object".to_owned()));
    };
    for (k, v) in patch {
        if k == "service" {
            continue;
        }
        if FROM_THE_CLUSTER.contains(&k.as_str()) {
            return Err((
                format!("spec.{k}"),
                format!("`{k}` comes from the Service and its EndpointSlices, not a MeshPolicy"),
            ));
        }
        fields.insert(k.clone(), v.clone());
    }
    serde_path_to_error::deserialize::<_, ServiceSpec>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (spec_path(&path), e.into_inner().to_string())
    })
}

/// The mesh services of one Service: one per TCP port and cluster IP with a ready backend.
fn service_ports(
    svc: &Service,
    index: &Index<'_>,
    names: &mut Names,
    out: &mut Built,
) -> Vec<ServiceSpec> {
    let (Some(ns), Some(name), Some(spec)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let slices = index.slices.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
    let mut services = Vec::new();
    for (i, vip) in ips.iter().enumerate() {
        for port in spec.ports.iter().flatten() {
            if !is_tcp(port.protocol.as_deref()) {
                continue;
            }
            let Ok(vip_port) = u16::try_from(port.port) else {
                continue;
            };
            if vip_port == 0 {
                continue;
            }
            let port_text = port.port.to_string();
            let mut parts = vec![ns, name, port_text.as_str()];
            if i > 0 {
                parts.push(if vip.is_ipv4() { "ipv4" } else { "ipv6" });
            }
            let mesh_name = names.take(&parts);
            let mut backends = backends(ns, port, *vip, slices, index);
            if backends.is_empty() {
                out.without_backends.push(mesh_name);
                continue;
            }
            if backends.len() > MAX_BACKENDS_PER_SERVICE {
                out.warnings.push(format!(
                    "{mesh_name}: {} ready endpoints, more than the {MAX_BACKENDS_PER_SERVICE} \
                     backends a service may have: the first {MAX_BACKENDS_PER_SERVICE} by \
                     address are used",
                    backends.len()
                ));
                backends.truncate(MAX_BACKENDS_PER_SERVICE);
            }
            services.push(ServiceSpec::new(
                &mesh_name,
                *vip,
                vip_port,
                LbPolicy::default(),
                backends,
            ));
        }
    }
    services
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// The ready endpoints of `slices` for one Service port and address family, sorted by
/// address, each address once.
fn backends(
    ns: &str,
    port: &ServicePort,
    vip: IpAddr,
    slices: &[&EndpointSlice],
    index: &Index<'_>,
) -> Vec<BackendSpec> {
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    let port_name = port.name.as_deref().unwrap_or("");
    let mut out: BTreeMap<SocketAddr, BackendSpec> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        // The slice port of the same name is the Service's targetPort, resolved for the
        // pods of this slice (a named targetPort may differ from slice to slice).
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && is_tcp(p.protocol.as_deref())
        }) else {
            continue;
        };
        let Some(target_port) = target
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let slice_ns = slice.metadata.namespace.as_deref().unwrap_or(ns);
        for ep in slice.endpoints.iter().flatten() {
            // `ready` unset means unknown, which consumers are to treat as ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ip.is_ipv4() != vip.is_ipv4() {
                continue;
            }
            let addr = SocketAddr::new(ip, target_port);
            let mut backend = BackendSpec::new(addr, 1);
            backend.zone = endpoint_zone(ep);
            if let Some(pod) = index.target_pod(slice_ns, ep) {
                backend.labels = model_labels(&pod.metadata.labels);
            }
            out.entry(addr).or_insert(backend);
        }
    }
    out.into_values().collect()
}

/// `endpoint.zone`, else the first zone hint; `None` when neither is a valid zone name.
pub fn endpoint_zone(ep: &Endpoint) -> Option<String> {
    let hinted = ep
        .hints
        .as_ref()
        .and_then(|h| h.for_zones.as_ref())
        .and_then(|z| z.first())
        .map(|z| z.name.as_str());
    ep.zone
        .as_deref()
        .or(hinted)
        .filter(|z| check_zone(z).is_ok())
        .map(str::to_owned)
}

/// The labels the model can carry: keys of at most 63 characters from its alphabet (a
/// Kubernetes key with a long prefix is dropped), values of at most 63 characters.
pub fn model_labels(labels: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    labels
        .iter()
        .flatten()
        .filter(|(k, v)| {
            !k.is_empty()
                && k.len() <= MAX_LABEL_KEY_LEN
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
                && v.chars().count() <= MAX_LABEL_VALUE_LEN
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keeps at most [`MAX_WORKLOADS`] workloads per node (each agent's limit) and
/// [`MAX_MESH_WORKLOADS`] in all, the first by name; warns about the rest.
fn cap_per_node(workloads: &mut Vec<WorkloadSpec>, warnings: &mut Vec<String>) {
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut cut: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept = 0;
    workloads.retain(|w| {
        let node = w.node.clone().unwrap_or_default();
        let n = per_node.entry(node.clone()).or_default();
        if *n >= MAX_WORKLOADS || kept >= MAX_MESH_WORKLOADS {
            *cut.entry(node).or_default() += 1;
            return false;
        }
        *n += 1;
        kept += 1;
        true
    });
    for (node, n) in cut {
        warnings.push(format!(
            "{n} enrolled pods on node {node:?} left out: a node may have {MAX_WORKLOADS} \
             workloads and a mesh {MAX_MESH_WORKLOADS}; the first by name are kept"
        ));
    }
}

/// The workloads of the enrolled pods, sorted by name.
fn workloads(snap: &Snapshot, index: &Index<'_>, opts: &MapOptions) -> Vec<WorkloadSpec> {
    let mut names = Names::default();
    let mut out = Vec::new();
    for pod in sorted(&snap.pods, |p| key_of(&p.metadata)) {
        let Some(ns) = pod.metadata.namespace.as_deref() else {
            continue;
        };
        if !pod_enrolled(pod, index.namespace_enrolled(ns)) {
            continue;
        }
        if let Some(mut w) = workload(pod, opts, &mut names) {
            w.zone = w
                .node
                .as_deref()
                .and_then(|n| index.node_zones.get(n))
                .map(|z| (*z).to_owned());
            out.push(w);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The workload of one pod: `None` for a finished pod or one without a usable UID.
fn workload(pod: &Pod, opts: &MapOptions, names: &mut Names) -> Option<WorkloadSpec> {
    let ns = pod.metadata.namespace.as_deref()?;
    let name = pod.metadata.name.as_deref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    // A pod not yet scheduled has no cgroup anywhere; it becomes a workload once it is.
    pod.spec.as_ref()?.node_name.as_ref()?;
    let uid = pod.metadata.uid.as_deref()?;
    let cgroup = pod_cgroup(opts, uid, qos_class(pod))?;
    let mut labels = model_labels(&pod.metadata.labels);
    // Identity comes from the pod's spec, never from labels the pod sets on itself: a pod
    // labelled `sockmesh.io/service-account: admin` is not admitted as `admin`.
    labels.insert(NAMESPACE_LABEL.to_owned(), ns.to_owned());
    labels.remove(SERVICE_ACCOUNT_LABEL);
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    // A name over the label value limit cannot be carried: no label, so no service-account
    // selector admits the pod (fails closed).
    if account.chars().count() <= MAX_LABEL_VALUE_LEN {
        labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), account.to_owned());
    }
    let priority = match label(&pod.metadata.labels, PRIORITY_LABEL) {
        Some("offline") => Priority::Offline,
        _ => Priority::Online,
    };
    Some(WorkloadSpec {
        name: names.take(&[ns, name]),
        cgroup,
        labels,
        priority,
        zone: None,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    })
}

/// A pod's QoS class, which decides its cgroup's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// `status.qosClass` (set by the API server when the pod is created), else derived from the
/// containers' requests and limits as the kubelet does.
pub fn qos_class(pod: &Pod) -> QosClass {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("Guaranteed") => return QosClass::Guaranteed,
        Some("Burstable") => return QosClass::Burstable,
        Some("BestEffort") => return QosClass::BestEffort,
        _ => {}
    }
    let Some(spec) = &pod.spec else {
        return QosClass::BestEffort;
    };
    let containers: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let (requests, limits) = c
            .resources
            .as_ref()
            .map_or((None, None), |r| (r.requests.as_ref(), r.limits.as_ref()));
        for resource in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(resource));
            let limit = limits.and_then(|l| l.get(resource));
            any |= request.is_some() || limit.is_some();
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// The pod-level cgroup the kubelet creates for a pod, relative to the cgroup2 mount; the
/// containers' cgroups are below it. `None` for a UID that is not one (only hex digits and
/// `-`), so no path can be smuggled in.
pub fn pod_cgroup(opts: &MapOptions, uid: &str, qos: QosClass) -> Option<String> {
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let path = match opts.cgroup_driver {
        CgroupDriver::Systemd => {
            let uid = uid.replace('-', "_");
            match qos {
                QosClass::Guaranteed => format!("kubepods.slice/kubepods-pod{uid}.slice"),
                QosClass::Burstable => format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"
                ),
                QosClass::BestEffort => format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"
                ),
            }
        }
        CgroupDriver::Cgroupfs => match qos {
            QosClass::Guaranteed => format!("kubepods/pod{uid}"),
            QosClass::Burstable => format!("kubepods/burstable/pod{uid}"),
            QosClass::BestEffort => format!("kubepods/besteffort/pod{uid}"),
        },
    };
    let root = opts.cgroup_root.trim_matches('/');
    Some(if root.is_empty() {
        path
    } else {
        format!("{root}/{path}")
    })
}

/// Hands out mesh names, each once.
#[derive(Debug, Default)]
struct Names(HashSet<String>);

impl Names {
    /// `parts` joined by `-` as a model name; hashed when too long or already taken.
    fn take(&mut self, parts: &[&str]) -> String {
        let mut name = mesh_name(parts);
        if self.0.contains(&name) {
            name = hashed_name(&name, &parts.join("/"));
        }
        self.0.insert(name.clone());
        name
    }
}

/// `parts` joined by `-`, made a valid service or workload name: lowercase, characters
/// outside `a-z 0-9 - . _` become `-`, letters or digits at both ends, and at most 63
/// characters (a longer one keeps its first 54 and ends in `-` and 8 hex digits of a hash
/// of the whole, so two long names stay apart).
pub fn mesh_name(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let clean: String = joined
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if clean.is_empty() {
        return hashed_name("x", &parts.join("/"));
    }
    if clean.len() > MAX_SERVICE_NAME_LEN {
        return hashed_name(clean, &parts.join("/"));
    }
    clean.to_owned()
}

/// The first 54 characters of `clean` (trimmed to end in a letter or digit), `-`, and 8 hex
/// digits of FNV-1a over `whole`.
fn hashed_name(clean: &str, whole: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in whole.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let keep = MAX_SERVICE_NAME_LEN - 9;
    let head = &clean[..clean.len().min(keep)];
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        format!("x-{hash:08x}")
    } else {
        format!("{head}-{hash:08x}")
    }
}

//! One Service on its own: its mesh services (one per TCP port and cluster IP) and their
//! backends, from the Service, its EndpointSlices and the labels of the pods they point
//! at. Names, policies and the mesh-wide caps come later ([`super::cache`]), so a Service
//! whose inputs did not change need not be mapped again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use serde_json::{Map, Value};

use super::{
    apply_policy, key_of, label, mesh_label, namespace_enrolled, Snapshot, SERVICE_NAME_LABEL,
};
use crate::SourceError;
use sockmesh_model::{
    check_zone, BackendSpec, LbPolicy, ServiceSpec, MAX_BACKENDS_PER_SERVICE, MAX_LABEL_KEY_LEN,
    MAX_LABEL_VALUE_LEN,
};

/// What mapping a Service reads besides the Service itself: which namespaces are enrolled,
/// the pods, and each Service's EndpointSlices. Owned, so the cache keeps it from one
/// rebuild to the next and files an EndpointSlice change in place.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    enrolled_namespaces: HashSet<String>,
    /// namespace -> pod name -> pod.
    pods: HashMap<String, HashMap<String, Arc<Pod>>>,
    /// namespace -> Service name -> its EndpointSlices by `namespace/name`: the order the
    /// mapping reads them in.
    slices: HashMap<String, HashMap<String, BTreeMap<String, Arc<EndpointSlice>>>>,
    /// `namespace/name` of each filed EndpointSlice -> the Service it is filed under.
    slice_owner: HashMap<String, (String, String)>,
    /// `namespace/name` of a pod -> the Services (`namespace/name`) whose EndpointSlices
    /// point at it, with how many endpoints do: whose mapping a change of the pod can move
    /// (its labels are their backends', its own enrolment may enrol them).
    pod_refs: HashMap<String, HashMap<String, usize>>,
}

impl Inputs {
    pub(super) fn new(snap: &Snapshot) -> Self {
        let mut inputs = Inputs {
            enrolled_namespaces: snap
                .namespaces
                .iter()
                .filter(|ns| namespace_enrolled(ns))
                .filter_map(|ns| ns.metadata.name.clone())
                .collect(),
            ..Inputs::default()
        };
        for pod in &snap.pods {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            inputs
                .pods
                .entry(ns.clone())
                .or_default()
                .insert(name.clone(), pod.clone());
        }
        for slice in &snap.slices {
            inputs.put_slice(&key_of(&slice.metadata), Some(slice.clone()));
        }
        inputs
    }

    /// Files the EndpointSlice `key` (`namespace/name`) as it is now (`None`: deleted);
    /// returns the Services whose slices changed (the one it left, the one it joined), as
    /// `namespace/name`.
    pub(super) fn put_slice(
        &mut self,
        key: &str,
        slice: Option<Arc<EndpointSlice>>,
    ) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some((ns, svc)) = self.slice_owner.remove(key) {
            let mut gone = None;
            if let Some(services) = self.slices.get_mut(&ns) {
                if let Some(filed) = services.get_mut(&svc) {
                    gone = filed.remove(key);
                    if filed.is_empty() {
                        services.remove(&svc);
                    }
                }
                if services.is_empty() {
                    self.slices.remove(&ns);
                }
            }
            if let Some(gone) = gone {
                self.count_targets(&gone, &format!("{ns}/{svc}"), false);
            }
            touched.push(format!("{ns}/{svc}"));
        }
        let Some(slice) = slice else {
            return touched;
        };
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.clone(),
            label(&slice.metadata.labels, SERVICE_NAME_LABEL).map(str::to_owned),
        ) else {
            return touched;
        };
        let owner = (ns, svc);
        let service_key = format!("{}/{}", owner.0, owner.1);
        self.count_targets(&slice, &service_key, true);
        if !touched.contains(&service_key) {
            touched.push(service_key);
        }
        self.slices
            .entry(owner.0.clone())
            .or_default()
            .entry(owner.1.clone())
            .or_default()
            .insert(key.to_owned(), slice);
        self.slice_owner.insert(key.to_owned(), owner);
        touched
    }

    /// Counts the pods `slice`'s endpoints point at for Service `service` (or stops).
    fn count_targets(&mut self, slice: &EndpointSlice, service: &str, add: bool) {
        let slice_ns = slice.metadata.namespace.as_deref().unwrap_or("");
        for ep in slice.endpoints.iter().flatten() {
            let Some(pod) = target_key(slice_ns, ep) else {
                continue;
            };
            let refs = self.pod_refs.entry(pod.clone()).or_default();
            let n = refs.entry(service.to_owned()).or_default();
            if add {
                *n += 1;
                continue;
            }
            *n = n.saturating_sub(1);
            if *n == 0 {
                refs.remove(service);
            }
            if refs.is_empty() {
                self.pod_refs.remove(&pod);
            }
        }
    }

    /// Files the pod `key` (`namespace/name`) as it is now (`None`: deleted); returns the
    /// Services (`namespace/name`) whose EndpointSlices point at it.
    pub(super) fn put_pod(&mut self, key: &str, pod: Option<Arc<Pod>>) -> Vec<String> {
        if let Some((ns, name)) = key.split_once('/') {
            match pod {
                Some(pod) => {
                    self.pods
                        .entry(ns.to_owned())
                        .or_default()
                        .insert(name.to_owned(), pod);
                }
                None => {
                    if let Some(pods) = self.pods.get_mut(ns) {
                        pods.remove(name);
                    }
                }
            }
        }
        self.pod_refs
            .get(key)
            .map(|refs| refs.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn namespace_enrolled(&self, ns: &str) -> bool {
        self.enrolled_namespaces.contains(ns)
    }

    /// The EndpointSlices of Service `ns/name`, in `namespace/name` order.
    fn slices_of(&self, ns: &str, name: &str) -> Vec<&EndpointSlice> {
        self.slices
            .get(ns)
            .and_then(|services| services.get(name))
            .map(|filed| filed.values().map(|s| &**s).collect())
            .unwrap_or_default()
    }

    /// The pod an endpoint points at, if it is a pod we know.
    fn target_pod(&self, slice_ns: &str, ep: &Endpoint) -> Option<&Pod> {
        let (ns, name) = target(slice_ns, ep)?;
        self.pods.get(ns)?.get(name).map(|p| &**p)
    }
}

/// (namespace, name) of the pod an endpoint points at.
fn target<'a>(slice_ns: &'a str, ep: &'a Endpoint) -> Option<(&'a str, &'a str)> {
    let target = ep.target_ref.as_ref()?;
    if target.kind.as_deref().is_some_and(|k| k != "Pod") {
        return None;
    }
    Some((
        target.namespace.as_deref().unwrap_or(slice_ns),
        target.name.as_deref()?,
    ))
}

/// `namespace/name` of the pod an endpoint points at.
fn target_key(slice_ns: &str, ep: &Endpoint) -> Option<String> {
    target(slice_ns, ep).map(|(ns, name)| format!("{ns}/{name}"))
}

/// A Service mapped on its own: its mesh services before names and policies.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct MappedService {
    pub(super) enrolled: bool,
    /// One per TCP port and cluster IP, in the Service's order; empty when not enrolled.
    pub(super) ports: Vec<MappedPort>,
}

/// One mesh service of a Service, not yet named.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MappedPort {
    /// What its name is made of: namespace, Service, port, and the family of a second
    /// cluster IP.
    pub(super) parts: Vec<String>,
    vip: IpAddr,
    port: u16,
    /// Ready endpoints, sorted by address, at most [`MAX_BACKENDS_PER_SERVICE`]; moved
    /// into the spec by [`finalize`] (a port is mapped again before it is finalized again).
    backends: Vec<BackendSpec>,
    /// How many ready endpoints there were (more than `backends` holds when capped).
    ready: usize,
}

/// The mesh services of one Service: one per TCP port and cluster IP.
pub(super) fn map_service(svc: &Service, inputs: &Inputs) -> MappedService {
    let (Some(ns), Some(name), Some(spec)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return MappedService::default();
    };
    if !service_enrolled(svc, inputs) {
        return MappedService::default();
    }
    let mut mapped = MappedService {
        enrolled: true,
        ports: Vec::new(),
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return mapped;
    }
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let slices = inputs.slices_of(ns, name);
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
            let mut parts = vec![ns.to_owned(), name.to_owned(), port.port.to_string()];
            if i > 0 {
                parts.push(if vip.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned());
            }
            let mut backends = backends(ns, port, *vip, &slices, inputs);
            let ready = backends.len();
            backends.truncate(MAX_BACKENDS_PER_SERVICE);
            mapped.ports.push(MappedPort {
                parts,
                vip: *vip,
                port: vip_port,
                backends,
                ready,
            });
        }
    }
    mapped
}

/// One mesh service as it goes into the config, with what its mapping reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Finalized {
    /// `None` while it has no ready endpoint.
    pub(super) spec: Option<ServiceSpec>,
    pub(super) warnings: Vec<String>,
    pub(super) rejection: Option<SourceError>,
    /// Its name, when it has no ready endpoint.
    pub(super) without_backends: Option<String>,
}

/// A Service's policy as chosen for it: (policy `namespace/name`, the spec fields to apply).
pub(super) type ChosenPolicy = (String, Map<String, Value>);

/// `port` named `name`, with its Service's policy applied and the `allowed_callers` names
/// that are not workloads dropped. Takes the port's backends.
pub(super) fn finalize(
    port: &mut MappedPort,
    name: &str,
    policy: Option<&ChosenPolicy>,
    workload_names: &HashSet<String>,
) -> Finalized {
    let mut out = Finalized::default();
    if port.ready == 0 {
        out.without_backends = Some(name.to_owned());
        return out;
    }
    if port.ready > MAX_BACKENDS_PER_SERVICE {
        out.warnings.push(format!(
            "{name}: {} ready endpoints, more than the {MAX_BACKENDS_PER_SERVICE} backends a \
             service may have: the first {MAX_BACKENDS_PER_SERVICE} by address are used",
            port.ready
        ));
    }
    let mut spec = ServiceSpec::new(
        name,
        port.vip,
        port.port,
        LbPolicy::default(),
        std::mem::take(&mut port.backends),
    );
    if let Some((key, patch)) = policy {
        match apply_policy(&spec, patch) {
            Ok(with) => spec = with,
            // Checked in `effective_policies`; defaults if it fails anyway.
            Err((path, reason)) => {
                out.rejection = Some(SourceError {
                    message: format!("MeshPolicy {key}: {path}: {reason}"),
                    path: Some(path),
                })
            }
        }
    }
    out.warnings.extend(
        prune_unserved_routes(&mut spec)
            .into_iter()
            .map(|(k, to)| unserved_route_warning(name, k, &to)),
    );
    if let Some(callers) = &mut spec.allowed_callers {
        // Pods come and go; a caller that is not a workload now cannot call anyway.
        // Selectors stay: they match whichever pods there are.
        callers.retain(|c| c.name().is_none_or(|n| workload_names.contains(n)));
    }
    out.spec = Some(spec);
    out
}

fn service_enrolled(svc: &Service, inputs: &Inputs) -> bool {
    if let Some(on) = mesh_label(&svc.metadata.labels) {
        return on;
    }
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return false;
    };
    if inputs.namespace_enrolled(ns) {
        return true;
    }
    // A pod enrolled by its own label brings the Services it backs along.
    inputs.slices_of(ns, name).iter().any(|slice| {
        slice.endpoints.iter().flatten().any(|ep| {
            inputs
                .target_pod(ns, ep)
                .is_some_and(|p| mesh_label(&p.metadata.labels) == Some(true))
        })
    })
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
    inputs: &Inputs,
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
            if let Some(pod) = inputs.target_pod(slice_ns, ep) {
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

/// Leaves out the request routes (`http.routes`) of `spec` that select none of its backends
/// now; returns each one's index (in the policy) and `to`. In a file such a route can only be
/// a typo and the model refuses it; in a cluster it is a subset scaled to zero or not ready
/// yet (a canary Deployment at 0 replicas), which must not take the whole service out of the
/// mesh. Its requests take the next matching route or the whole service until it is back.
pub(super) fn prune_unserved_routes(
    spec: &mut ServiceSpec,
) -> Vec<(usize, BTreeMap<String, String>)> {
    let Some(http) = spec.http.as_mut() else {
        return Vec::new();
    };
    let backends = &spec.backends;
    let mut gone = Vec::new();
    let mut k = 0;
    http.routes.retain(|route| {
        let served = backends.iter().any(|b| b.selected_by(&route.to));
        if !served {
            gone.push((k, route.to.clone()));
        }
        k += 1;
        served
    });
    gone
}

fn unserved_route_warning(service: &str, k: usize, to: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = to.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{service}: http.routes[{k}] (to {}) selects no ready endpoint: left out until one is \
         ready; its requests take the next matching route or the whole service",
        labels.join(",")
    )
}

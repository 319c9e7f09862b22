//! MeshPolicies: which one applies to a Service, whether the model accepts it, and what a
//! service keeps while its policy's newest edit is refused.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use super::{sorted, Built, MeshPolicy, Snapshot};
use crate::SourceError;
use sockmesh_model::{
    check_allowed_callers, BackendSpec, Enrollment, LbPolicy, MeshConfig, ServiceSpec,
    CONFIG_VERSION,
};

/// Fields a MeshPolicy may not set: they come from the Service and its EndpointSlices.
const FROM_THE_CLUSTER: [&str; 4] = ["name", "vip", "port", "backends"];

/// The last valid spec of each MeshPolicy (`namespace/name` -> the spec without `service`):
/// what a service keeps while its policy's newest edit is refused.
#[derive(Debug, Clone, Default)]
pub struct PolicyMemory(pub(super) HashMap<String, Map<String, Value>>);

/// Chooses, checks and remembers the policy of each Service: (namespace, service) ->
/// (policy key, the spec fields to apply).
pub(super) fn effective_policies(
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
    // The cluster's endpoints are not known here: one probe backend per request route,
    // carrying that route's `to`, so each route is checked in every other respect
    // (`finalize` leaves out a route that selects no ready endpoint of the real Service).
    let routes = service.http.as_ref().map_or(0, |h| h.routes.len());
    for k in 0..routes {
        let to = service.http.as_ref().expect("counted").routes[k].to.clone();
        let mut backend = BackendSpec::new(route_probe_addr(k), 1);
        backend.labels = to;
        service.backends.push(backend);
    }
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
        let field = route_of_probe(field).unwrap_or_else(|| field.to_owned());
        return Err((spec_path(&field), err.reason().to_owned()));
    }
    Ok(patch)
}

/// The address of the probe backend of request route `k` (the policy's own backend is
/// 127.0.0.2:1).
fn route_probe_addr(k: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 2 + k as u16))
}

/// A field of probe backend `1 + k` is one of request route `k`'s `to` labels.
fn route_of_probe(field: &str) -> Option<String> {
    let rest = field.strip_prefix("backends[")?;
    let (index, _) = rest.split_once(']')?;
    let k = index.parse::<usize>().ok()?.checked_sub(1)?;
    Some(format!("http.routes[{k}].to"))
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

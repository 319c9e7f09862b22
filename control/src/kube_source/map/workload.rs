//! Pods as workloads: enrolment, identity labels, the pod cgroup the kubelet makes, the
//! node's zone, and the caps per node and per mesh.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::naming::Names;
use super::{
    key_of, label, model_labels, pod_enrolled, sorted, CgroupDriver, Index, MapOptions, Snapshot,
    DEFAULT_SERVICE_ACCOUNT, NAMESPACE_LABEL, PRIORITY_LABEL, SERVICE_ACCOUNT_LABEL,
};
use sockmesh_model::{
    Priority, WorkloadSpec, MAX_LABEL_VALUE_LEN, MAX_MESH_WORKLOADS, MAX_WORKLOADS,
};

/// Keeps at most [`MAX_WORKLOADS`] workloads per node (each agent's limit) and
/// [`MAX_MESH_WORKLOADS`] in all, the first by name; warns about the rest.
pub(super) fn cap_per_node(workloads: &mut Vec<WorkloadSpec>, warnings: &mut Vec<String>) {
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
pub(super) fn workloads(
    snap: &Snapshot,
    index: &Index<'_>,
    opts: &MapOptions,
) -> Vec<WorkloadSpec> {
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

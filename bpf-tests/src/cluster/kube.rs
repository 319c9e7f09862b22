//! The Kubernetes objects of the testbed, as the API server would hold them (hand-written
//! JSON; the fake stamps kind, apiVersion, resourceVersion and, unless given, uid).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

/// The zone label Nodes carry.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The enrolment label (namespaces, pods, Services).
pub const MESH_LABEL: &str = "sockmesh.io/mesh";

pub fn node(name: &str, zone: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {ZONE_LABEL: zone, "kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn namespace(name: &str, enrolled: bool) -> Value {
    let labels = if enrolled {
        json!({MESH_LABEL: "enabled"})
    } else {
        json!({})
    };
    json!({"metadata": {"name": name, "labels": labels}})
}

/// A running BestEffort pod (so its cgroup is `kubepods-besteffort-pod<uid_>.slice`), with
/// an address of each family.
#[allow(clippy::too_many_arguments)]
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    service_account: &str,
    labels: &BTreeMap<String, String>,
) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "app:1"}]
        },
        "status": {
            "phase": "Running",
            "qosClass": "BestEffort",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}, {"ip": ip6.to_string()}]
        }
    })
}

/// A ClusterIP Service with one TCP port, named `http`; dual-stack when `vip6` is given
/// (IPv4 first, so the mesh service of the IPv6 address is `<ns>-<name>-<port>-ipv6`).
pub fn service(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    vip6: Option<Ipv6Addr>,
    port: u16,
    target_port: u16,
) -> Value {
    let mut ips = vec![vip.to_string()];
    let mut families = vec!["IPv4"];
    if let Some(v6) = vip6 {
        ips.push(v6.to_string());
        families.push("IPv6");
    }
    let policy = if vip6.is_some() {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip.to_string(),
            "clusterIPs": ips,
            "ipFamilies": families,
            "ipFamilyPolicy": policy,
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": target_port}]
        }
    })
}

/// One ready endpoint of an EndpointSlice.
#[derive(Debug, Clone)]
pub struct EndpointRef {
    pub ip: IpAddr,
    pub node: String,
    pub zone: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

/// The Service's EndpointSlice of one address family (`<service>-slice4` or `-slice6`)
/// with those of `endpoints` of that family, all ready.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    target_port: u16,
    ipv6: bool,
    endpoints: &[EndpointRef],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .filter(|e| e.ip.is_ipv6() == ipv6)
        .map(|e| {
            json!({
                "addresses": [e.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": e.node,
                "zone": e.zone,
                "targetRef": {"kind": "Pod", "namespace": e.pod_namespace, "name": e.pod_name}
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": format!("{service}-slice{}", if ipv6 { 6 } else { 4 }),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": if ipv6 { "IPv6" } else { "IPv4" },
        "ports": [{"name": "http", "port": target_port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// A MeshPolicy for `service` with `spec` (its other fields).
pub fn mesh_policy(namespace: &str, service: &str, mut spec: Value) -> Value {
    spec["service"] = json!(service);
    json!({
        "metadata": {"name": service, "namespace": namespace, "generation": 1},
        "spec": spec
    })
}

/// The pod cgroup the kubelet (systemd driver) makes for a BestEffort pod, relative to the
/// node's cgroup root, and the container cgroup below it where the pod's processes run.
pub fn pod_cgroup(uid: &str) -> (String, String) {
    let pod = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    );
    let container = format!("{pod}/cri-containerd-{}.scope", uid.replace('-', ""));
    (pod, container)
}

/// A UID for pod number `n` of the testbed (hex and dashes, as the kubelet expects).
pub fn pod_uid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The audience agents' tokens are minted for (deploy/'s projected volume).
pub const TOKEN_AUDIENCE: &str = "sockmesh-control";

/// A JWT-shaped ServiceAccount token for the agent on `node` (the control plane reviews
/// nothing else): unique per node, meaningful only to the fake API server.
pub fn agent_token(node: &str) -> String {
    let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
    format!("eyJhbGciOiJSUzI1NiJ9.{hex}.c2lnbmF0dXJl")
}

/// The user a TokenReview of [`agent_token`] names: the agents' ServiceAccount, bound to a
/// pod on `node`.
pub fn agent_user(node: &str) -> Value {
    json!({
        "username": "system:serviceaccount:sockmesh-system:sockmesh-agent",
        "uid": format!("sa-{node}"),
        "groups": ["system:serviceaccounts", "system:serviceaccounts:sockmesh-system"],
        "extra": {
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/pod-name": [format!("sockmesh-agent-{node}")],
        }
    })
}

/// Grants the agent on `node` its ServiceAccount token in the fake API server (a
/// TokenReview binds it to `node`, as a projected token is) and writes it to
/// `dir/control-token`, its `--control-token-file`.
pub fn grant_agent_token(
    kube: &sockmesh_fake_kube::FakeKube,
    node: &str,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let token = agent_token(node);
    kube.grant_token(&token, agent_user(node), &[TOKEN_AUDIENCE]);
    std::fs::create_dir_all(dir)?;
    let path = dir.join("control-token");
    std::fs::write(&path, format!("{token}\n"))?;
    Ok(path)
}

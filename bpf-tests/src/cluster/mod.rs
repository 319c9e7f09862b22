//! A Kubernetes cluster on one machine, for the tests of what a DaemonSet deployment meets
//! (tests/cluster_*.rs) and for `cargo xtask cluster`:
//!
//! - **Nodes**: each a network namespace running its own `sockmesh-agent` exactly as the
//!   DaemonSet does (`--control`, `--node-name`, `--cgroup /sys/fs/cgroup`, metrics on its
//!   address), in a mount namespace where the node's cgroup subtree
//!   (`<cgroup2>/sockmesh-test-<pid>-<bed>/<node>`) is its cgroup2 root ([`NodeSandbox`]).
//! - **Pods**: a network namespace on the node's bridge plus the cgroup the kubelet (systemd
//!   driver) would make, `kubepods.slice/kubepods-besteffort.slice/...-pod<uid>.slice/
//!   cri-containerd-<id>.scope` under the node's root; their processes (stock python3
//!   clients) run in both, their backends listen on the pod's address.
//! - **The cluster's API**: the fake API server (`sockmesh-fake-kube`) holding the Nodes
//!   (zone labels), Namespaces, Pods (`nodeName`, `serviceAccountName`, labels), Services
//!   and EndpointSlices (`nodeName`, `zone`), served inside the fabric namespace to one
//!   `sockmesh-control --source kubernetes` that every agent follows over the fabric.
//!
//! Addresses and wiring: [`net`]. VIPs (ClusterIPs) stay in 127.100.0.0/16. Everything goes
//! away on drop, also on panic: agents (stopped, pins cleaned up), control plane, pods'
//! processes, namespaces and cgroups, the temp dir.

pub mod hold;
pub mod kube;
pub mod l7;
pub mod net;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sockmesh_fake_kube::FakeKube;
use tempfile::TempDir;

use crate::agent::{Agent, AgentOptions, NodeSandbox};
use crate::backend::{BackendMode, TcpBackendSet};
use crate::bpffs::Bpffs;
use crate::cgroup::{cgroup2_mount, Cgroup2};
use crate::control_server::{control_bin, ControlServer};
use crate::netns::Netns;
use crate::{agent_bin, require_root, resource_name, sweep_stale};
use kube::EndpointRef;

/// How long an agent may take to load, attach and apply its first version.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a change in the cluster's API may take to reach every agent's kernel tables.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The agents' metrics port on their node's address (the DaemonSet's).
pub const METRICS_PORT: u16 = 9477;
/// The control API port on the fabric (the Deployment's).
pub const CONTROL_PORT: u16 = 9476;

/// One node of the testbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub zone: String,
}

/// The testbed's shape.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Names the bed's resources (`sockmesh-test-<pid>-<name>-...`).
    pub name: String,
    pub nodes: Vec<NodeSpec>,
}

impl ClusterOptions {
    /// Three nodes in two zones: `node-1` and `node-2` in `zone-a`, `node-3` in `zone-b`.
    pub fn new(name: &str) -> Self {
        let node = |n: &str, z: &str| NodeSpec {
            name: n.to_owned(),
            zone: z.to_owned(),
        };
        ClusterOptions {
            name: name.to_owned(),
            nodes: vec![
                node("node-1", "zone-a"),
                node("node-2", "zone-a"),
                node("node-3", "zone-b"),
            ],
        }
    }
}

/// A pod to create: where it runs and who it is.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// Index into [`ClusterOptions::nodes`].
    pub node: usize,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

impl PodSpec {
    /// A pod with the `default` service account and the given labels.
    pub fn new(namespace: &str, name: &str, node: usize, labels: &[(&str, &str)]) -> Self {
        PodSpec {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            service_account: "default".to_owned(),
        }
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.to_owned();
        self
    }
}

/// A running pod. Dropping it is the pod disappearing at once: its backends close, its
/// processes are killed, its cgroup and its network namespace (and so its veth) go.
#[derive(Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    // Drop order: sockets, then processes and cgroups, then the namespace.
    backends: Option<TcpBackendSet>,
    container: Cgroup2,
    _pod_cgroup: Cgroup2,
    netns: Netns,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container cgroup its processes run in.
    pub fn cgroup(&self) -> &Cgroup2 {
        &self.container
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its backends, when [`Cluster::serve`] started some.
    pub fn backends(&self) -> Option<&TcpBackendSet> {
        self.backends.as_ref()
    }
}

#[derive(Debug)]
struct Node {
    spec: NodeSpec,
    netns: Netns,
    bpffs: Bpffs,
    /// `<cgroup2>/sockmesh-test-<pid>-<bed>/<node>`, the node's cgroup2 root.
    cgroup_root: PathBuf,
    pods_made: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: agents detach first (their pins cleaned up), then the
    // control plane and the API server go, then pods, nodes, the fabric, the cgroups
    // (killing anything left in them) and the temp dir.
    agents: Vec<Option<Agent>>,
    control: ControlServer,
    kube: FakeKube,
    pods: BTreeMap<String, Pod>,
    nodes: Vec<Node>,
    fabric: Netns,
    _root: Cgroup2,
    dir: TempDir,
    name: String,
    pods_made: usize,
}

impl Cluster {
    /// Builds the network, the API server with the Nodes, the control plane and one agent
    /// per node; returns once every agent runs the control plane's first version.
    ///
    /// # Panics
    /// Without root, `SOCKMESH_AGENT_BIN` or `SOCKMESH_CONTROL_BIN`: the bed cannot run.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        require_root();
        agent_bin();
        control_bin();
        sweep_stale();
        if opts.nodes.is_empty() || opts.nodes.len() > net::MAX_NODES {
            bail!("a testbed has 1 to {} nodes", net::MAX_NODES);
        }
        let name = &opts.name;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", resource_name(name)))
            .tempdir()
            .context("creating the bed's temp dir")?;
        let root = Cgroup2::create(name)?;
        let fabric = Netns::create(&format!("{name}-fabric"))?;
        net::wire_fabric(&fabric)?;
        let mut nodes = Vec::new();
        for (i, spec) in opts.nodes.iter().enumerate() {
            let netns = Netns::create(&format!("{name}-n{}", i + 1))?;
            let cgroup_root = root.path().join(&spec.name);
            std::fs::create_dir(&cgroup_root)
                .with_context(|| format!("creating {}", cgroup_root.display()))?;
            nodes.push(Node {
                spec: spec.clone(),
                netns,
                bpffs: Bpffs::new(&format!("{name}-{}", spec.name))?,
                cgroup_root,
                pods_made: 0,
            });
        }
        for (i, node) in nodes.iter().enumerate() {
            net::wire_node(&fabric, &node.netns, i, nodes.len())?;
        }
        let listener = fabric.run_inside(|| {
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the fake API server")
        })?;
        let kube = FakeKube::start_on(listener);
        for node in &nodes {
            kube.apply("Node", kube::node(&node.spec.name, &node.spec.zone));
        }
        let control = ControlServer::spawn_kubernetes(
            dir.path(),
            SocketAddr::from((net::CONTROL_IP, CONTROL_PORT)),
            &kube.kubeconfig(),
            &fabric.path(),
        )?;
        let mut bed = Cluster {
            agents: Vec::new(),
            control,
            kube,
            pods: BTreeMap::new(),
            nodes,
            fabric,
            _root: root,
            dir,
            name: name.clone(),
            pods_made: 0,
        };
        for i in 0..bed.nodes.len() {
            let agent = bed.spawn_agent(i)?;
            bed.agents.push(Some(agent));
        }
        for i in 0..bed.nodes.len() {
            bed.agent(i).wait_ready(NODE_READY_TIMEOUT)?;
        }
        bed.sync("the first version", |_| true)?;
        // Every agent acked as its own node, with the token the API server bound to that
        // node (a node credential acks as nothing else): deploy/'s identity, end to end.
        let agents = bed.control.get_json("/v1/agents")?;
        for node in &bed.nodes {
            let acked = agents
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["agent"] == node.spec.name.as_str()));
            if !acked {
                bail!(
                    "node {} never acked with its ServiceAccount token: {agents}\n{}",
                    node.spec.name,
                    bed.control.log_tail()
                );
            }
        }
        Ok(bed)
    }

    fn spawn_agent(&self, i: usize) -> Result<Agent> {
        let node = &self.nodes[i];
        let state = self.dir.path().join(&node.spec.name);
        let cgroup2 = cgroup2_mount()?;
        let opts = AgentOptions {
            config: None,
            // As the agent sees it: the node's root, mounted over the cgroup2 mount point.
            cgroup: cgroup2.clone(),
            bpffs: node.bpffs.path().to_path_buf(),
            state_dir: state.join("state"),
            watch_interval_ms: None,
            log_file: state.join("agent.log"),
        };
        // The node's credential, as deploy/ gives it: not the operator's token.
        let token_path = kube::grant_agent_token(&self.kube, &node.spec.name, &state)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--control".into(),
            self.control.url().into(),
            "--control-token-file".into(),
            token_path.into(),
            "--node-name".into(),
            node.spec.name.clone().into(),
            "--metrics-addr".into(),
            format!("{}:{METRICS_PORT}", net::node_ip(i)).into(),
        ];
        args.extend(self.control.trust_args());
        args.extend(l7::proxy_args(i));
        let sandbox = NodeSandbox {
            netns: node.netns.path(),
            cgroup_root: node.cgroup_root.clone(),
            cgroup2_mount: cgroup2,
        };
        Agent::spawn_sandboxed(opts, args, sandbox)
    }

    /// The agent of node `i`.
    ///
    /// # Panics
    /// While it is stopped ([`Cluster::stop_agent`]).
    pub fn agent(&mut self, i: usize) -> &mut Agent {
        self.agents[i]
            .as_mut()
            .expect("the node's agent is stopped")
    }

    /// Stops node `i`'s agent (SIGTERM) and leaves its pins: routing goes on in the kernel.
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        self.agent(i).sigterm()?;
        Ok(())
    }

    /// Starts node `i`'s agent again (it adopts or replaces the pins) and waits until ready.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let agent = self.agent(i);
        agent.restart()?;
        agent.wait_ready(NODE_READY_TIMEOUT)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &NodeSpec {
        &self.nodes[i].spec
    }

    /// Node `i`'s pin directory (`--bpffs`).
    pub fn node_bpffs(&self, i: usize) -> &Path {
        self.nodes[i].bpffs.path()
    }

    pub fn control(&mut self) -> &mut ControlServer {
        &mut self.control
    }

    /// The namespace joining the nodes, where the control plane runs.
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    pub fn kube(&self) -> &FakeKube {
        &self.kube
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a Namespace, enrolled in the mesh or not.
    pub fn add_namespace(&self, name: &str, enrolled: bool) {
        self.kube
            .apply("Namespace", kube::namespace(name, enrolled));
    }

    /// Creates a pod: its network namespace on its node's bridge, its kubelet cgroups, and
    /// its Pod object. Returns its key (`namespace/name`).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<String> {
        let key = format!("{}/{}", spec.namespace, spec.name);
        if self.pods.contains_key(&key) {
            bail!("pod {key} exists");
        }
        let node = self
            .nodes
            .get_mut(spec.node)
            .with_context(|| format!("no node {}", spec.node))?;
        let k = node.pods_made;
        node.pods_made += 1;
        self.pods_made += 1;
        let uid = kube::pod_uid(self.pods_made);
        let ip = net::pod_ip(spec.node, k);
        let ip6 = net::pod_ip6(spec.node, k);
        let netns = Netns::create(&format!("{}-n{}-p{k}", self.name, spec.node + 1))?;
        net::wire_pod(&node.netns, &netns, spec.node, k)?;
        let (pod_rel, container_rel) = kube::pod_cgroup(&uid);
        let pod_cgroup = Cgroup2::create_all(&node.cgroup_root.join(&pod_rel))?;
        let container = Cgroup2::create_all(&node.cgroup_root.join(&container_rel))?;
        let node_name = node.spec.name.clone();
        self.kube.apply(
            "Pod",
            kube::pod(
                &spec.namespace,
                &spec.name,
                &uid,
                &node_name,
                ip,
                ip6,
                &spec.service_account,
                &spec.labels,
            ),
        );
        self.pods.insert(
            key.clone(),
            Pod {
                namespace: spec.namespace,
                name: spec.name,
                node: spec.node,
                uid,
                ip,
                ip6,
                backends: None,
                container,
                _pod_cgroup: pod_cgroup,
                netns,
            },
        );
        Ok(key)
    }

    /// The pod `key` (`namespace/name`).
    ///
    /// # Panics
    /// When there is no such pod.
    pub fn pod(&self, key: &str) -> &Pod {
        self.pods.get(key).unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// Starts backends in pod `key` on both its addresses, `port`; returns the IPv4 one (the
    /// set's first; the IPv6 one is second).
    pub fn serve(&mut self, key: &str, port: u16, mode: BackendMode) -> Result<SocketAddr> {
        let pod = self
            .pods
            .get_mut(key)
            .with_context(|| format!("no pod {key}"))?;
        let addr = SocketAddr::from((pod.ip, port));
        let addr6 = SocketAddr::from((pod.ip6, port));
        pod.backends = Some(TcpBackendSet::start_in_netns(
            &pod.netns,
            &[addr, addr6],
            mode,
        )?);
        Ok(addr)
    }

    /// Stops pod `key`'s backends: their listeners close, so connects to them are refused.
    pub fn stop_serving(&mut self, key: &str) {
        if let Some(pod) = self.pods.get_mut(key) {
            pod.backends = None;
        }
    }

    /// Deletes pods at once, as a dead node loses them: the objects stay in the API (the
    /// control plane learns nothing), the namespaces, processes and cgroups are gone.
    pub fn kill_pods(&mut self, keys: &[String]) {
        for key in keys {
            self.pods.remove(key);
        }
    }

    /// Deletes a pod object and the pod with it.
    pub fn delete_pod(&mut self, key: &str) {
        if let Some(pod) = self.pods.remove(key) {
            self.kube.delete("Pod", &pod.namespace, &pod.name);
        }
    }

    /// Creates or replaces a ClusterIP Service with one TCP port and its EndpointSlices of
    /// `pods` (ready, each with its node and zone).
    pub fn apply_service(
        &self,
        namespace: &str,
        name: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        pods: &[&str],
    ) -> Result<()> {
        self.apply_service_dual(namespace, name, vip, None, port, target_port, pods)
    }

    /// [`Cluster::apply_service`], dual-stack when `vip6` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_service_dual(
        &self,
        namespace: &str,
        name: &str,
        vip: Ipv4Addr,
        vip6: Option<Ipv6Addr>,
        port: u16,
        target_port: u16,
        pods: &[&str],
    ) -> Result<()> {
        self.kube.apply(
            "Service",
            kube::service(namespace, name, vip, vip6, port, target_port),
        );
        self.set_endpoints(namespace, name, target_port, pods)
    }

    /// Replaces the Service's EndpointSlices (one per address family) with `pods`.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        target_port: u16,
        pods: &[&str],
    ) -> Result<()> {
        let endpoints = pods
            .iter()
            .map(|key| {
                let pod = self
                    .pods
                    .get(*key)
                    .with_context(|| format!("no pod {key}"))?;
                let node = &self.nodes[pod.node].spec;
                let endpoint = |ip: IpAddr| EndpointRef {
                    ip,
                    node: node.name.clone(),
                    zone: node.zone.clone(),
                    pod_namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                };
                Ok([endpoint(pod.ip.into()), endpoint(pod.ip6.into())])
            })
            .collect::<Result<Vec<_>>>()?
            .concat();
        for ipv6 in [false, true] {
            self.kube.apply(
                "EndpointSlice",
                kube::endpoint_slice(namespace, service, target_port, ipv6, &endpoints),
            );
        }
        Ok(())
    }

    /// Creates or replaces the MeshPolicy of a Service.
    pub fn apply_policy(&self, namespace: &str, service: &str, spec: Value) {
        self.kube
            .apply("MeshPolicy", kube::mesh_policy(namespace, service, spec));
    }

    /// Waits until the control plane's head version satisfies `pred` and every running
    /// agent runs it (its fingerprint in `/status`: the kernel tables hold it). The head is
    /// read again on every poll, so a version that follows the awaited one (a second write
    /// of the same change) is waited for too. Returns the head's snapshot.
    pub fn sync(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
        let mut last = String::from("no snapshot yet");
        loop {
            if let Ok(snapshot) = self.control.snapshot() {
                if pred(&snapshot["config"]) {
                    let head = snapshot["fingerprint"].as_str().unwrap_or("").to_owned();
                    let behind: Vec<String> = self
                        .agents
                        .iter()
                        .flatten()
                        .filter(|a| a.pid().is_some())
                        .filter_map(|a| {
                            let f = a.status().ok()?["config"]["fingerprint"].clone();
                            (f.as_str() != Some(head.as_str())).then(|| f.to_string())
                        })
                        .collect();
                    if behind.is_empty() {
                        return Ok(snapshot);
                    }
                    last = format!("head {head}; agents behind at {behind:?}");
                } else {
                    last = format!("head version {} does not show it", snapshot["version"]);
                }
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "timed out after {SYNC_TIMEOUT:?} waiting for every node to run {what} \
                     ({last})\n{}",
                    self.control.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The names of the backends of service `name` in a served config.
pub fn service_backends(config: &Value, name: &str) -> Vec<String> {
    config["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == name)
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["addr"].as_str().map(str::to_owned))
        .collect()
}

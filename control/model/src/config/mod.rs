//! The config schema: what a mesh config file says, and the rules it must follow.
//!
//! ```yaml
//! version: 1                 # optional, the only schema version there is
//! services:                  # required; `services: []` is an empty mesh
//!   - name: web              # [a-z0-9]([-a-z0-9._]*[a-z0-9])?, at most 63 characters, unique
//!     vip: 127.100.0.1       # IPv4 or IPv6 literal callers connect to (quote IPv6 in YAML)
//!     port: 80               # VIP port, 1..=65535; VIP:port is unique across services
//!     lb: weighted_random    # optional: weighted_random (default) | round_robin | maglev | least_conn
//!     backends:              # 1..=256 entries
//!       - addr: 127.0.0.2:8081   # ip:port, "[ip6]:port" for IPv6; same family as the VIP
//!         weight: 1              # optional, default 1, 0..=10000; 0 keeps a backend drained
//!         labels: {track: stable}  # optional; what `routes:` select backends by
//!         zone: zone-a           # optional; what `locality:` prefers
//!     routes:                # optional, <= 16, first match wins: caller labels -> backend subset
//!       - match: {lane: canary}  # the caller workload's labels ({} or absent: every caller)
//!         to: {track: canary}    # backends with these labels ...
//!         fallback: all          # ... or all backends if none of them is healthy (none: refuse)
//!       - weight_split:          # ... or a split between subsets, percents summing to 100
//!           - {to: {track: stable}, percent: 90}
//!           - {to: {track: canary}, percent: 10}
//!     locality: {prefer_zone: true, min_healthy_percent: 50}  # optional: stay in the caller's zone
//!     protocol: tcp          # optional: tcp (default) | http (served per request, `http:`)
//!     allowed_callers:       # optional: only these callers may connect (absent: everyone)
//!       - frontend           # a workload by name ...
//!       - {namespace: shop, service_account: checkout, labels: {app: web}}  # ... or by identity
//!     slos:                  # optional, <= 16: objectives judged on kernel signals
//!       - name: availability # same shape as a service name, unique within the service
//!         sli: connect_success   # connect_success | connect_latency | srtt
//!         objective: 0.999       # share of good events, strictly between 0 and 1
//!         window: 30d            # the error budget's compliance period, > 0
//!       - name: handshake
//!         sli: connect_latency
//!         threshold: 5ms         # required for connect_latency and srtt, > 0; else refused
//!         objective: 0.99
//!         window: 30d
//! workloads:                 # optional: cgroups whose CPU starvation is reported, <= 1024
//!   - name: frontend         # same shape as a service name, unique among workloads
//!     cgroup: demo/frontend  # cgroup v2 path relative to the cgroup2 mount (or absolute)
//!     labels: {team: web}    # optional; keys [A-Za-z0-9_.-/]{1,63}, values <= 63 characters
//!     zone: zone-a           # optional; the caller's zone (default: the agent's --zone)
//! ```
//!
//! Unknown keys are rejected by name rather than ignored, so a typo (`weigth: 3`) fails
//! loudly instead of silently falling back to a default.
//!
//! Reading a file is two steps, both in [`parse_config`]: decoding (types, address literals,
//! known keys) and [`MeshConfig::validate`] (rules that span fields: uniqueness, address
//! families, loops, limits, workload cgroups). Either step reports the first problem as a
//! [`ConfigError`] naming the field path, like `services[1].backends[0].addr`.
//!
//! What an SLI counts as good and total is defined in docs/slo.md; the agent turns SLOs into
//! error budgets and burn rates ([`SloSpec`]).
//!
//! Workloads are independent of services: a workload names a cgroup whose CPU starvation the
//! kernel measures, and may share its name with a service.

mod address;
mod caller;
mod duration;
mod error;
pub(crate) mod fingerprint;
mod http;
mod index;
mod parse;
mod policy;
mod route;
mod slo;
mod validate;
mod workload;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use caller::{
    admitted_workloads, check_allowed_callers, CallerSelector, CallerSpec, MAX_CALLER_SELECTORS,
    MAX_SELECTOR_LABELS, NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL,
};
pub use duration::Span;
pub use error::{ConfigError, Location};
pub use http::{
    check_header_name, HttpMatch, HttpRouteSpec, HttpSpec, Protocol, RetryOn, RetrySpec,
    MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HTTP_ROUTES, MAX_RETRY_ATTEMPTS,
    MAX_ROUTE_HEADERS, MAX_ROUTE_PATH_LEN,
};
pub use index::{ConfigIndex, IndexStep};
pub use parse::parse_config;
pub use policy::{CircuitSpec, LimitsSpec, OutlierSpec, Priority};
pub use route::{
    check_zone, Fallback, LocalitySpec, RouteSpec, SplitSpec, MAX_ROUTES_PER_SERVICE,
    MAX_SPLITS_PER_ROUTE, MAX_ZONE_LEN,
};
pub use slo::{SliKind, SloSpec, MAX_SLOS_PER_SERVICE};
pub use workload::check_node_name;

/// The schema version this build reads and writes. A file without `version` is this version.
pub const CONFIG_VERSION: u32 = 1;

/// Most services one mesh may hold: the kernel service table's capacity
/// (`sockmesh_common::MAX_SERVICES`) less id 0, which the agent never hands out, so any valid
/// config fits in it whole. (A switch that replaces many services at once needs room for old
/// and new entries together; the agent checks that against the same capacity and refuses the
/// switch whole, see ARCHITECTURE.md "Map pressure".)
pub const MAX_SERVICES: usize = sockmesh_common::MAX_SERVICES as usize - 1;

/// Most backends one service may list. The kernel picks from a slot table of
/// `sockmesh_common::MAX_SLOTS` (1024) slots (1021 for Maglev); a quarter of that leaves every
/// backend a few slots, so weights keep their meaning.
pub const MAX_BACKENDS_PER_SERVICE: usize = sockmesh_common::MAX_SLOTS / 4;

/// Most (service, backend) pairs one mesh may hold, the backends of every service together:
/// the agent keeps one kernel entry per pair for its TCP signals (`SM_BACKEND_TCP`,
/// `sockmesh_common::MAX_BACKEND_STATS`, 131,072), the tightest of the per-backend tables (the
/// backend table itself, `MAX_BACKENDS`, holds twice that: an address shared by services is
/// one entry there). A config over it would be refused by every agent; the model refuses it
/// first, so the control plane never serves it.
pub const MAX_BACKEND_PAIRS: usize = {
    let stats = sockmesh_common::MAX_BACKEND_STATS as usize;
    let backends = sockmesh_common::MAX_BACKENDS as usize - 1;
    if stats < backends {
        stats
    } else {
        backends
    }
};

/// Largest backend weight. Weights are relative shares, not slot counts; the bound catches a
/// stray extra digit and keeps a service's total (at most 256 x 10,000) far from overflow.
pub const MAX_WEIGHT: u32 = 10_000;

/// Longest service name: a DNS label, so names can become Kubernetes object names and
/// metric label values unchanged.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// Most workloads one node may have: those without a `node:` plus those on the node. The
/// kernel keeps one run-queue latency histogram per workload in an array of
/// `sockmesh_common::MAX_WORKLOADS` (1024) slots; a node with more could not be observed whole.
pub const MAX_WORKLOADS: usize = sockmesh_common::MAX_WORKLOADS as usize;

/// Most workloads one mesh may name, over all nodes (bounds the snapshot every agent reads:
/// about 300 bytes of YAML per workload).
pub const MAX_MESH_WORKLOADS: usize = 65_536;

/// Longest `node:` name: a Kubernetes node name (a DNS subdomain).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Longest workload label key, as for a Kubernetes label name (prefix aside).
pub const MAX_LABEL_KEY_LEN: usize = 63;

/// Longest workload label value, in characters. Labels become Prometheus label values, and
/// a short bound keeps the exposition readable.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// The whole desired state of a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Config schema version; only [`CONFIG_VERSION`] is accepted.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Every service in the mesh. Required (not defaulted) so that an empty or truncated
    /// file does not quietly become a mesh with no services.
    pub services: Vec<ServiceSpec>,
    /// The cgroups whose CPU starvation (run-queue latency, CFS throttling) is reported, by
    /// name. Optional. Left out of the serialization when empty, so a config without
    /// workloads keeps the fingerprint it had before workloads existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSpec>,
    /// Which callers the connect hook routes: every process under the agent's cgroup
    /// (`all`, the default) or only those in a workload's cgroup (`workloads`; the others'
    /// connects to a VIP pass through untouched). Left out of the serialization at its
    /// default, so fingerprints of configs from before the field are unchanged.
    #[serde(default, skip_serializing_if = "is_default")]
    pub enrollment: Enrollment,
}

/// Which callers the mesh routes (docs/config.md, "Enrollment").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrollment {
    /// Every caller the hooks see (every process under the agent's `--cgroup`).
    #[default]
    All,
    /// Only callers in the cgroup (or below it) of a configured workload. A connect from
    /// anywhere else to a VIP is left as it is: it goes to the VIP address itself (where
    /// kube-proxy, or nothing, answers), unobserved and unrefused.
    Workloads,
}

impl Enrollment {
    /// The name used in config files and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            Enrollment::All => "all",
            Enrollment::Workloads => "workloads",
        }
    }
}

/// One service: a VIP:port that callers dial and the backends it is routed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name, used in metrics, logs and the CLI.
    pub name: String,
    /// The virtual address callers connect to.
    #[serde(deserialize_with = "address::ip")]
    pub vip: IpAddr,
    /// The VIP port callers connect to.
    pub port: u16,
    /// How a connection picks one of the backends.
    #[serde(default)]
    pub lb: LbPolicy,
    /// Where connections to the VIP go.
    pub backends: Vec<BackendSpec>,
    /// Outlier detection and bans.
    #[serde(default, skip_serializing_if = "is_default")]
    pub outlier: OutlierSpec,
    /// The service's circuit breaker.
    #[serde(default, skip_serializing_if = "is_default")]
    pub circuit: CircuitSpec,
    /// Connection limits, enforced in the kernel.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    /// Callers allowed to connect: workloads by name, or by identity selectors (namespace,
    /// service account, labels). Absent means every caller may; a list admits only the
    /// workloads it names or matches ([`ServiceSpec::admitted_workloads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_callers: Option<Vec<CallerSpec>>,
    /// How long connections to a banned or removed backend may live on before the agent
    /// closes them (so clients reconnect to healthy backends).
    #[serde(
        default = "policy::default_drain_grace",
        skip_serializing_if = "is_default_grace"
    )]
    pub drain_grace: Span,
    /// Service level objectives. Left out of the serialization when empty, so a config
    /// without SLOs keeps the fingerprint it had before SLOs existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slos: Vec<SloSpec>,
    /// Caller-based routes: ordered rules from the caller workload's labels to a labelled
    /// subset of the backends (or a weighted split between subsets); the first rule that
    /// matches a caller decides. Left out of the serialization when empty (fingerprints of
    /// configs without routes are unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// Zone preference: callers stay on backends of their own zone while enough of those are
    /// healthy. Absent: zones are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalitySpec>,
    /// Same-node fast path (opt-in): when a caller and the backend it was routed to are both
    /// under the agent's cgroup, writes go socket to socket (sk_msg) instead of through
    /// loopback TCP. Left out of the serialization when off (fingerprints unchanged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_node: bool,
    /// `http`: connections go to the node's L7 proxy, which serves them per request (issue
    /// 19). Left out of the serialization at `tcp` (fingerprints unchanged).
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Request policy of an http service: timeouts, retries, request routes. Absent: the
    /// defaults ([`HttpSpec::default`]); only with `protocol: http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
}

impl ServiceSpec {
    /// A service with the default health policy (what a config that says nothing gets).
    pub fn new(
        name: &str,
        vip: IpAddr,
        port: u16,
        lb: LbPolicy,
        backends: Vec<BackendSpec>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            vip,
            port,
            lb,
            backends,
            outlier: OutlierSpec::default(),
            circuit: CircuitSpec::default(),
            limits: LimitsSpec::default(),
            allowed_callers: None,
            drain_grace: policy::default_drain_grace(),
            slos: Vec::new(),
            routes: Vec::new(),
            locality: None,
            same_node: false,
            protocol: Protocol::Tcp,
            http: None,
        }
    }
}

impl ServiceSpec {
    /// Which of `workloads` may connect to the service, as indices into `workloads`: `None`
    /// when it has no `allowed_callers` (every caller may), else the workloads its entries
    /// name or match ([`admitted_workloads`]).
    pub fn admitted_workloads(&self, workloads: &[WorkloadSpec]) -> Option<Vec<usize>> {
        admitted_workloads(self.allowed_callers.as_deref(), workloads)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_default_grace(v: &Span) -> bool {
    *v == policy::default_drain_grace()
}

/// How the kernel picks a backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Random pick, each backend in proportion to its weight.
    #[default]
    WeightedRandom,
    /// Backends in turn, each as often as its weight.
    RoundRobin,
    /// Consistent hashing (Maglev): a caller keeps its backend while the set changes little.
    Maglev,
    /// The backend with the fewest active connections relative to its weight (counted by
    /// the kernel); ties split by weight.
    LeastConn,
}

impl LbPolicy {
    /// Every policy, for tests and tools that must cover them all.
    pub const ALL: &'static [LbPolicy] = &[
        LbPolicy::WeightedRandom,
        LbPolicy::RoundRobin,
        LbPolicy::Maglev,
        LbPolicy::LeastConn,
    ];

    /// The name used in config files, metrics and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            LbPolicy::WeightedRandom => "weighted_random",
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Maglev => "maglev",
            LbPolicy::LeastConn => "least_conn",
        }
    }
}

impl fmt::Display for LbPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Where a routed connection actually goes.
    #[serde(deserialize_with = "address::socket")]
    pub addr: SocketAddr,
    /// Share of new connections relative to the service's other backends.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Labels `routes:` select backends by (same key and value rules as workload labels).
    #[serde(
        default,
        deserialize_with = "workload::unique_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// The zone the backend runs in, for `locality:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl BackendSpec {
    /// A backend with no labels and no zone.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            labels: BTreeMap::new(),
            zone: None,
        }
    }

    /// Whether the backend is in the subset `selector` names: it carries every label of the
    /// selector with the same value (an empty selector names every backend).
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A workload: a cgroup the mesh observes, with a name and labels for metrics and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Unique among workloads; same shape as a service name (it becomes a label value too).
    pub name: String,
    /// cgroup v2 directory, relative to the cgroup2 mount (`sockmesh-test-42/frontend`) so
    /// one config works whatever the mount point; an absolute path is taken as-is.
    pub cgroup: String,
    /// Free-form labels copied onto the workload's metrics and shown by the CLI. A key given
    /// twice is an error, not last-one-wins.
    #[serde(default, deserialize_with = "workload::unique_labels")]
    pub labels: BTreeMap<String, String>,
    /// Shedding order under overload: `online` (default) callers are refused last.
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: Priority,
    /// The zone the workload's callers run in, for `locality:` (default: the agent's
    /// `--zone`, the node's zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The node the workload runs on (the Kubernetes source sets the pod's `spec.nodeName`).
    /// An agent acts only on workloads without a node and those on its own `--node-name`
    /// ([`MeshConfig::into_node`]); the others' cgroups do not exist on its machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}

fn default_weight() -> u32 {
    1
}

//! The mesh's desired state: the one definition shared by the agent, the control plane and
//! the `sockmesh` CLI.
//!
//! A mesh is a list of services. Each service is a virtual address (VIP and port) that
//! callers connect to, a load-balancing policy, and the backends a connection to the VIP is
//! routed to. The kernel rewrites the destination once, at `connect()`, so everything that
//! must hold for that rewrite to be safe (same address family, no routing loop, at least one
//! backend that can take traffic) is checked here, before a config ever reaches a node.
//!
//! ```
//! let cfg = sockmesh_control::parse_config(
//!     "services:\n  - name: web\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n",
//! )?;
//! assert_eq!(cfg.services[0].lb, sockmesh_control::LbPolicy::WeightedRandom);
//! println!("config {}", cfg.fingerprint());
//! # Ok::<(), sockmesh_control::ConfigError>(())
//! ```
//!
//! See [`model`] for the schema and its rules; `docs/config.md` is the operator reference.
//! [`cli`] is the library half of the `sockmesh` operator CLI (`docs/cli.md`), which reads
//! the agent's admin API. [`server`] is the control plane (`sockmesh-control`) that serves
//! the desired state to every node's agent, versioned (`docs/control-plane.md`).

pub mod cli;
pub mod model;
pub mod server;

mod default_config;

pub use default_config::{default_config, DEFAULT_CONFIG_YAML};
pub use model::{
    check_node_name, check_zone, parse_config, BackendSpec, CircuitSpec, ConfigError, Enrollment,
    Fallback, LbPolicy, LimitsSpec, LocalitySpec, Location, MeshConfig, OutlierSpec, Priority,
    RouteSpec, ServiceSpec, SliKind, SloSpec, Span, SplitSpec, WorkloadSpec, CONFIG_VERSION,
    MAX_BACKENDS_PER_SERVICE, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_MESH_WORKLOADS,
    MAX_NODE_NAME_LEN, MAX_ROUTES_PER_SERVICE, MAX_SERVICES, MAX_SERVICE_NAME_LEN,
    MAX_SLOS_PER_SERVICE, MAX_SPLITS_PER_ROUTE, MAX_WEIGHT, MAX_WORKLOADS, MAX_ZONE_LEN,
};

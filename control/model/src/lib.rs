//! The mesh's contracts, in one crate that the agent, the control plane (`sockmesh-control`),
//! the `sockmesh` CLI, the tests and the fuzz targets all depend on: what a mesh is, and how
//! it travels between the control plane and the agents. No server, no I/O beyond reading a
//! config file.
//!
//! A mesh is a list of services. Each service is a virtual address (VIP and port) that
//! callers connect to, a load-balancing policy, and the backends a connection to the VIP is
//! routed to. The kernel rewrites the destination once, at `connect()`, so everything that
//! must hold for that rewrite to be safe (same address family, no routing loop, at least one
//! backend that can take traffic) is checked here, before a config ever reaches a node.
//!
//! ```
//! let cfg = sockmesh_model::parse_config(
//!     "services:\n  - name: web\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n",
//! )?;
//! assert_eq!(cfg.services[0].lb, sockmesh_model::LbPolicy::WeightedRandom);
//! println!("config {}", cfg.fingerprint());
//! # Ok::<(), sockmesh_model::ConfigError>(())
//! ```
//!
//! - [`config`]: the schema, its validation rules and fingerprint (`docs/config.md` is the
//!   operator reference). Limits that mirror a kernel table's capacity come from
//!   `sockmesh-common`, the kernel's own definitions.
//! - [`watch`]: a config file polled for changes ([`FileWatch`]), shared by the agent's
//!   `--config` and the control plane's file source.
//! - The control channel (`docs/control-plane.md`): [`protocol`] (every path and body),
//!   [`request`] (the pure, fuzzed decoder of one API request), [`address`] (where a client
//!   finds the server), [`token`] (the bearer credential), [`agent_name`].
//! - [`exposition`]: the Prometheus text formats, shared by every `/metrics` the mesh serves.

pub mod address;
pub mod agent_name;
pub mod config;
pub mod delta;
pub mod exposition;
pub mod protocol;
pub mod request;
pub mod token;
pub mod watch;

mod default_config;

pub use address::ControlAddress;
pub use agent_name::{check_agent_name, MAX_AGENT_NAME_LEN};
pub use config::{
    admitted_workloads, check_allowed_callers, check_header_name, check_node_name, check_zone,
    parse_config, BackendSpec, CallerSelector, CallerSpec, CircuitSpec, ConfigError, ConfigIndex,
    Enrollment, Fallback, HttpMatch, HttpRouteSpec, HttpSpec, IndexStep, LbPolicy, LimitsSpec,
    LocalitySpec, Location, MeshConfig, OutlierSpec, Priority, Protocol, RetryOn, RetrySpec,
    RouteSpec, ServiceSpec, SliKind, SloSpec, Span, SplitSpec, WorkloadSpec, CONFIG_VERSION,
    MAX_BACKENDS_PER_SERVICE, MAX_BACKEND_PAIRS, MAX_CALLER_SELECTORS, MAX_HEADER_NAME_LEN,
    MAX_HEADER_VALUE_LEN, MAX_HTTP_ROUTES, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN,
    MAX_MESH_WORKLOADS, MAX_NODE_NAME_LEN, MAX_RETRY_ATTEMPTS, MAX_ROUTES_PER_SERVICE,
    MAX_ROUTE_HEADERS, MAX_ROUTE_PATH_LEN, MAX_SELECTOR_LABELS, MAX_SERVICES, MAX_SERVICE_NAME_LEN,
    MAX_SLOS_PER_SERVICE, MAX_SPLITS_PER_ROUTE, MAX_WEIGHT, MAX_WORKLOADS, MAX_ZONE_LEN,
    NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL,
};
pub use default_config::{default_config, DEFAULT_CONFIG_YAML};
pub use delta::{AddedService, ConfigDelta, DeltaError};
pub use token::{file_stamp, Token, TokenReload, TokenSource};
pub use watch::{FileWatch, Patch, SourceError, SourceEvent};

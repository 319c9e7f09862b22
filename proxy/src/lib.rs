//! `sockmesh-proxy`: the decisions of the L7 proxy (issue 19), and the server core that calls
//! them for each request of a `protocol: http` service.
//!
//! Each decision is a small pure module, fed its inputs (time included: nothing here reads a
//! clock or draws its own randomness), so all of it is tested natively and deterministically:
//!
//! - [`route`]: which backend subset a request goes to (the service's `http.routes`, first
//!   match wins on method, path and headers).
//! - [`retry`]: whether a failed try is tried again (the `retries.on` list, the idempotency
//!   rule) and the per-service retry budget.
//! - [`pick`]: which backend serves one try: weighted power of two choices on outstanding
//!   requests, skipping banned and open-circuit backends.
//! - [`deadline`]: the request's deadline from the config and the caller (`grpc-timeout`,
//!   `x-sockmesh-timeout`), and the value passed on to the backend.
//! - [`code`]: the bounded `code` label of the request metrics.
//!
//! The server core, on hyper 1 and tokio:
//!
//! - [`server`]: [`Proxy`] accepts connections, asks a [`Resolve`] which service each is
//!   for, serves HTTP/1.1 and h2c with limits against bad callers, and drains on shutdown.
//! - [`forward`]: one request, from route to response, with retries and deadlines.
//! - [`upstream`]: keep-alive pools to the backends, and what a failed try means.
//! - [`body`]: request bodies held for retries, or streamed.
//! - [`target`]: a service as the proxy serves it, its backends' live state, [`Resolve`].
//! - [`report`]: the per-request [`Report`] an [`Observe`] receives.
//!
//! What the reports feed:
//!
//! - [`metrics`]: the request metrics, an [`Observe`] on a prometheus-client registry, with
//!   a bound on series per family.
//! - [`outlier`]: the request ban rules (`outlier.consecutive_5xx`, and latency against the
//!   service's other backends), as ban suggestions.
//! - [`feedback`]: the process's [`Observe`]: metrics, ban rules and per-service tallies,
//!   drained into the agent's reports.
//!
//! The process (`src/main.rs`, the `sockmesh-proxy` binary, is a thin edge over these):
//!
//! - [`link`]: the agent link's frames and the listener handover (`SCM_RIGHTS`).
//! - [`origin`]: the kernel's record of each redirected connection (service, caller).
//! - [`node`]: the agent's targets, applied keeping live state, and the [`Resolve`] over
//!   the kernel's origins.
//! - [`process`]: the link's life: hello, listeners, targets, reports, reconnects, drain.
//! - [`exporter`]: the process's `/metrics`.

pub mod body;
pub mod code;
pub mod deadline;
pub mod exporter;
pub mod feedback;
pub mod forward;
pub mod link;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod outlier;
pub mod pick;
pub mod process;
pub mod report;
pub mod retry;
pub mod route;
pub mod server;
pub mod target;
pub mod upstream;

pub use report::{Observe, Report, Try};
pub use server::{Drained, Proxy, ProxyConfig};
pub use target::{Backend, Fixed, Resolve, ServiceTarget};

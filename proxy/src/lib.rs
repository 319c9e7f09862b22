//! `sockmesh-proxy`: the decisions of the L7 proxy (issue 19), which the proxy server (the
//! next slice: hyper, connection pools, the kernel's socket stamp) will call for each request
//! of a `protocol: http` service.
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
//! Nothing here serves traffic yet; the agent refuses `protocol: http` services until the
//! server exists.

pub mod code;
pub mod deadline;
pub mod pick;
pub mod retry;
pub mod route;

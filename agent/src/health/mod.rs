//! Health: the agent's decisions about backends and services, as pure state machines.
//!
//! The kernel enforces, the agent decides (docs/health-design.md). Each decision is a small
//! module with no I/O and no clock of its own — every time-dependent call takes
//! `now: tokio::time::Instant` — so all of them run under paused time in tests:
//! - [`window`]: connect outcomes over a sliding window of buckets;
//! - [`outlier`]: which backends of a service are outliers (consecutive failures, failure
//!   ratio, deviation from the mean of the others);
//! - [`ban`]: ban times, the max-banned cap and panic mode, and the probe gate;
//! - [`circuit`]: the per-service circuit breaker and its half-open admission share;
//! - [`shed`]: which caller priorities a service still admits.
//!
//! The kernel's connection-rate limiter (GCRA) lives in `sockmesh_common::gcra`, so the kernel
//! runs exactly the tested code. The engine that feeds these from the signals and writes their
//! outputs into the kernel's tables is `crate::engine`.

pub(crate) mod ban;
pub(crate) mod circuit;
pub(crate) mod outlier;
pub(crate) mod shed;
pub(crate) mod window;

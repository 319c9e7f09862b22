//! Prometheus metrics: the registry every subsystem registers its own families in, and the
//! `/metrics` server. Each subsystem owns its metrics next to the code that updates them:
//!
//! - connections (lifecycle events): `crate::signals::metrics`;
//! - kernel-map series read at scrape time (TCP stats, workloads, lost events):
//!   `crate::signals::kernel_metrics`; the same-node fast path's counters:
//!   `crate::signals::same_node_metrics`; map pressure: `crate::signals::pressure::gauges`;
//! - health (bans, circuits, panic mode, drains): `crate::engine::metrics`;
//! - SLOs: `crate::slo::metrics`; applied and rejected configs: `crate::runtime`.
//!
//! The names, types and labels are a contract (deploy/metrics.txt, checked by
//! `contract_tests`): every family is registered under the `sockmesh` prefix with its full
//! name, and label values from a closed set are enums.

mod server;

use prometheus_client::{encoding::EncodeLabelSet, registry::Registry};

pub(crate) use server::serve;
/// The exposition formats are the model's: the agent, the proxy and the control plane
/// answer scrapes alike (`sockmesh_model::exposition`, tested there).
#[cfg(test)]
pub(crate) use sockmesh_model::exposition::to_classic;

/// The labels of a per-backend series, shared by the connection, kernel and health families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    pub(crate) service: String,
    pub(crate) backend: String,
}

/// The registry the subsystems register in: every name gets the `sockmesh_` prefix.
pub(crate) fn registry() -> Registry {
    Registry::with_prefix("sockmesh")
}

/// The registry's exposition in the OpenMetrics text format (tests read it; the endpoint
/// encodes through `sockmesh_serve::serve_registry`).
#[cfg(test)]
pub(crate) fn encode(registry: &Registry) -> String {
    sockmesh_serve::encode_registry(registry)
}

#[cfg(test)]
mod contract_tests;

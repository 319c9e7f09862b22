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

mod format;
mod server;

use prometheus_client::{encoding::EncodeLabelSet, registry::Registry};

#[cfg(test)]
pub(crate) use format::to_classic;
pub(crate) use server::serve;

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

/// The registry's exposition in the OpenMetrics text format.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod contract_tests;

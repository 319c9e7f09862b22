//! Prometheus metrics. Event-driven series (connection outcomes, handshake and lifetime
//! histograms, bytes) are prometheus-client families updated as events are folded; series
//! whose truth lives in kernel maps (TCP counters, srtt and run-queue histograms, throttling)
//! are encoded at scrape time from the latest kernel snapshot by [`KernelCollector`], so they
//! survive agent restarts (the maps are pinned) and cost nothing per event. SLO budgets and
//! burn rates depend on the clock as much as on events, so [`SloCollector`] also computes
//! them at scrape time.

mod format;
mod kernel;
pub mod pressure;
mod server;
mod slo;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use kernel::{KernelCollector, KernelSnapshot, SameNodeCounters, WorkloadSample};
pub use pressure::MapPressure;
pub use server::serve;
pub use slo::SloCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub service: String,
    pub backend: String,
    pub caller: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BackendLabels {
    pub service: String,
    pub backend: String,
}

/// `sent` (application bytes the backend acknowledged) or `received`.
pub type Direction = &'static str;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub service: String,
    pub backend: String,
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub label: &'static str,
}

/// Handshakes on a LAN take tens of µs to a few ms; timeouts take seconds.
const HANDSHAKE_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Connection lifetimes: from one request to long-lived streams.
const LIFETIME_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

fn handshake_histogram() -> Histogram {
    Histogram::new(HANDSHAKE_BUCKETS)
}

fn lifetime_histogram() -> Histogram {
    Histogram::new(LIFETIME_BUCKETS)
}

pub struct Metrics {
    pub registry: Registry,
    pub connections: Family<ConnLabels, Counter>,
    pub connect_duration: Family<BackendLabels, Histogram>,
    pub connection_duration: Family<BackendLabels, Histogram>,
    pub bytes: Family<BytesLabels, Counter>,
    pub inbound: Family<InboundLabels, Counter>,
    pub config_version: Gauge,
    pub config_rejected: Counter,
    pub label_overflow: Family<OverflowLabels, Counter>,
    pub events_drained: Counter,
    pub backend_banned: Family<BackendLabels, Gauge>,
    pub bans: Family<ReasonLabels, Counter>,
    pub circuit_state: Family<ServiceLabels, Gauge>,
    pub panic_mode: Family<ServiceLabels, Gauge>,
    pub drained: Counter,
    /// Entries per kernel map (`sockmesh_map_entries`, `sockmesh_map_capacity`).
    pub pressure: std::sync::Arc<MapPressure>,
}

impl Metrics {
    pub fn new(collector: KernelCollector, slos: SloCollector) -> Self {
        let mut registry = Registry::with_prefix("sockmesh");
        let connections = Family::default();
        registry.register(
            "connections",
            "Connect attempts through the mesh by outcome (reset: an established connection later ended by a RST; it was counted ok at establishment)",
            connections.clone(),
        );
        let connect_duration =
            Family::new_with_constructor(handshake_histogram as fn() -> Histogram);
        registry.register(
            "connect_duration_seconds",
            "Time from connect() to the end of the TCP handshake, per backend",
            connect_duration.clone(),
        );
        let connection_duration =
            Family::new_with_constructor(lifetime_histogram as fn() -> Histogram);
        registry.register(
            "connection_duration_seconds",
            "Lifetime of routed connections, connect() to close",
            connection_duration.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "bytes",
            "Bytes over routed connections, counted at close",
            bytes.clone(),
        );
        let inbound = Family::default();
        registry.register(
            "inbound_connections",
            "Connections accepted by local workloads (backend: the local address if it is a configured backend, else other)",
            inbound.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Number of configs applied by this agent since it started",
            config_version.clone(),
        );
        let config_rejected = Counter::default();
        registry.register(
            "config_rejected",
            "Configs rejected (invalid or not applicable)",
            config_rejected.clone(),
        );
        let label_overflow = Family::default();
        registry.register(
            "label_overflow",
            "Label values folded into `other` because the cardinality bound was reached",
            label_overflow.clone(),
        );
        let events_drained = Counter::default();
        registry.register(
            "events_drained",
            "Lifecycle events read from the kernel ring buffer",
            events_drained.clone(),
        );
        let backend_banned = Family::default();
        registry.register(
            "backend_banned",
            "1 while a backend is out of the slot table (banned or awaiting its probe)",
            backend_banned.clone(),
        );
        let bans = Family::default();
        registry.register(
            "backend_bans",
            "Backend bans by the rule that caused them",
            bans.clone(),
        );
        let circuit_state = Family::default();
        registry.register(
            "circuit_state",
            "Circuit breaker state per service: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let panic_mode = Family::default();
        registry.register(
            "panic_mode",
            "1 while a service wanted to ban more backends than max_banned_percent allows",
            panic_mode.clone(),
        );
        let drained = Counter::default();
        registry.register(
            "drained_connections",
            "Connections to banned or removed backends closed after the drain grace",
            drained.clone(),
        );
        registry.register_collector(Box::new(collector));
        registry.register_collector(Box::new(slos));
        let pressure = std::sync::Arc::new(MapPressure::default());
        registry.register_collector(Box::new(pressure::PressureCollector(pressure.clone())));
        Self {
            registry,
            connections,
            connect_duration,
            connection_duration,
            bytes,
            inbound,
            config_version,
            config_rejected,
            label_overflow,
            events_drained,
            backend_banned,
            bans,
            circuit_state,
            panic_mode,
            drained,
            pressure,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod contract_tests;

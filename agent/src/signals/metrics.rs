//! Connection metrics, owned by [`super::Signals`], which folds the ring buffer's lifecycle
//! events into them: outcomes per (service, backend, caller), handshake and lifetime
//! histograms, bytes at close, inbound connections, events drained and caller labels folded
//! into `other`. Kernel-map series read at scrape time are [`super::kernel_metrics`]'s.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::aggregate::ConnectResult;
use crate::metrics::BackendLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnLabels {
    pub(crate) service: String,
    pub(crate) backend: String,
    pub(crate) caller: String,
    pub(crate) result: ConnectResult,
}

/// Which way bytes went over a routed connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Application bytes the backend acknowledged.
    Sent,
    Received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    pub(crate) service: String,
    pub(crate) backend: String,
    pub(crate) direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct InboundLabels {
    pub(crate) backend: String,
}

/// A label whose values are bounded, folding the excess into `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum BoundedLabel {
    Caller,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OverflowLabels {
    pub(crate) label: BoundedLabel,
}

// The derive writes a variant's identifier; these values are snake_case words.
impl EncodeLabelValue for ConnectResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        };
        std::fmt::Write::write_str(encoder, value)
    }
}

impl EncodeLabelValue for BoundedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            BoundedLabel::Caller => "caller",
        };
        std::fmt::Write::write_str(encoder, value)
    }
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

type HistogramFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

pub(crate) struct ConnectionMetrics {
    pub(crate) connections: Family<ConnLabels, Counter>,
    pub(crate) connect_duration: HistogramFamily,
    pub(crate) connection_duration: HistogramFamily,
    pub(crate) bytes: Family<BytesLabels, Counter>,
    pub(crate) inbound: Family<InboundLabels, Counter>,
    pub(crate) label_overflow: Family<OverflowLabels, Counter>,
    pub(crate) events_drained: Counter,
}

impl ConnectionMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connections: Family::default(),
            connect_duration: Family::new_with_constructor(handshake_histogram),
            connection_duration: Family::new_with_constructor(lifetime_histogram),
            bytes: Family::default(),
            inbound: Family::default(),
            label_overflow: Family::default(),
            events_drained: Counter::default(),
        };
        registry.register(
            "connections",
            "Connect attempts through the mesh by outcome (reset: an established connection later ended by a RST; it was counted ok at establishment)",
            m.connections.clone(),
        );
        registry.register(
            "connect_duration_seconds",
            "Time from connect() to the end of the TCP handshake, per backend",
            m.connect_duration.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "Lifetime of routed connections, connect() to close",
            m.connection_duration.clone(),
        );
        registry.register(
            "bytes",
            "Bytes over routed connections, counted at close",
            m.bytes.clone(),
        );
        registry.register(
            "inbound_connections",
            "Connections accepted by local workloads (backend: the local address if it is a configured backend, else other)",
            m.inbound.clone(),
        );
        registry.register(
            "label_overflow",
            "Label values folded into `other` because the cardinality bound was reached",
            m.label_overflow.clone(),
        );
        registry.register(
            "events_drained",
            "Lifecycle events read from the kernel ring buffer",
            m.events_drained.clone(),
        );
        m
    }
}

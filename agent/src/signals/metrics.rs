//! Connection metrics, owned by [`super::Signals`], which folds the ring buffer's lifecycle
//! events into them: outcomes per (service, backend, caller), handshake and lifetime
//! histograms, bytes at close, inbound connections, events drained and caller labels folded
//! into `other`. Kernel-map series read at scrape time are [`super::kernel_metrics`]'s.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use sockmesh_common::{ConnEvent, EVENT_ESTABLISHED};

use super::aggregate::ConnectResult;
use crate::metrics::BackendLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    service: String,
    backend: String,
    caller: String,
    result: ConnectResult,
}

/// Which way bytes went over a routed connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Direction {
    /// Application bytes the backend acknowledged.
    Sent,
    Received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    service: String,
    backend: String,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundLabels {
    backend: String,
}

/// A label whose values are bounded, folding the excess into `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum BoundedLabel {
    Caller,
    /// `--max-series`: (service, backend) pairs beyond it ([`super::series`]).
    Backend,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    label: BoundedLabel,
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
            BoundedLabel::Backend => "backend",
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
    connections: Family<ConnLabels, Counter>,
    connect_duration: HistogramFamily,
    connection_duration: HistogramFamily,
    bytes: Family<BytesLabels, Counter>,
    inbound: Family<InboundLabels, Counter>,
    label_overflow: Family<OverflowLabels, Counter>,
    events_drained: Counter,
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
    /// A connect's outcome (established or failed), and its handshake time if established.
    pub(crate) fn connect(&self, ev: &ConnEvent, service: &str, backend: &str, caller: &str) {
        let labels = ConnLabels {
            service: service.to_owned(),
            backend: backend.to_owned(),
            caller: caller.to_owned(),
            result: ConnectResult::from_code(ev.result),
        };
        self.connections.get_or_create(&labels).inc();
        if ev.kind == EVENT_ESTABLISHED {
            let labels = backend_labels(service, backend);
            self.connect_duration
                .get_or_create(&labels)
                .observe(ev.duration_ns as f64 / 1e9);
        }
    }

    /// A routed connection closed: its lifetime and bytes, and a `reset` outcome for the
    /// caller `reset_by` if it ended with a RST (counted ok at establishment).
    pub(crate) fn closed(
        &self,
        ev: &ConnEvent,
        service: &str,
        backend: &str,
        reset_by: Option<String>,
    ) {
        self.connection_duration
            .get_or_create(&backend_labels(service, backend))
            .observe(ev.duration_ns as f64 / 1e9);
        for (direction, n) in [
            (Direction::Sent, ev.bytes_acked),
            (Direction::Received, ev.bytes_received),
        ] {
            let labels = BytesLabels {
                service: service.to_owned(),
                backend: backend.to_owned(),
                direction,
            };
            self.bytes.get_or_create(&labels).inc_by(n);
        }
        if let Some(caller) = reset_by {
            let labels = ConnLabels {
                service: service.to_owned(),
                backend: backend.to_owned(),
                caller,
                result: ConnectResult::Reset,
            };
            self.connections.get_or_create(&labels).inc();
        }
    }

    /// A local workload accepted a connection (`backend`: its address, or `other`).
    pub(crate) fn inbound(&self, backend: String) {
        self.inbound.get_or_create(&InboundLabels { backend }).inc();
    }

    /// `n` more values of `label` were folded into `other`.
    pub(crate) fn labels_folded(&self, label: BoundedLabel, n: u64) {
        self.label_overflow
            .get_or_create(&OverflowLabels { label })
            .inc_by(n);
    }

    /// Removes every series of (service, backend) (it left the config and its drain grace
    /// passed): connections for each of `callers` and outcome, durations and bytes; and the
    /// backend's inbound series if `inbound` (its address is no backend of any service now).
    pub(crate) fn remove_backend(
        &self,
        labels: &BackendLabels,
        callers: &std::collections::BTreeSet<String>,
        inbound: bool,
    ) {
        for caller in callers {
            for result in ConnectResult::ALL {
                self.connections.remove(&ConnLabels {
                    service: labels.service.clone(),
                    backend: labels.backend.clone(),
                    caller: caller.clone(),
                    result,
                });
            }
        }
        self.connect_duration.remove(labels);
        self.connection_duration.remove(labels);
        for direction in [Direction::Sent, Direction::Received] {
            self.bytes.remove(&BytesLabels {
                service: labels.service.clone(),
                backend: labels.backend.clone(),
                direction,
            });
        }
        if inbound {
            self.inbound.remove(&InboundLabels {
                backend: labels.backend.clone(),
            });
        }
    }

    /// `n` lifecycle events were read from the ring buffer.
    pub(crate) fn events_drained(&self, n: u64) {
        self.events_drained.inc_by(n);
    }
}

fn backend_labels(service: &str, backend: &str) -> BackendLabels {
    BackendLabels {
        service: service.to_owned(),
        backend: backend.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sockmesh_common::{EVENT_CLOSED, RESULT_OK, RESULT_RESET};

    use super::*;

    #[test]
    fn remove_backend_drops_every_series_of_the_pair_and_keeps_the_rest() {
        let mut registry = crate::metrics::registry();
        let m = ConnectionMetrics::new(&mut registry);
        let ev = |kind, result| ConnEvent {
            kind,
            result,
            duration_ns: 1_000_000,
            bytes_acked: 10,
            ..ConnEvent::ZERO
        };
        for backend in ["127.0.0.2:80", "127.0.0.3:80"] {
            for caller in ["a", "b"] {
                m.connect(&ev(EVENT_ESTABLISHED, RESULT_OK), "web", backend, caller);
            }
            m.closed(
                &ev(EVENT_CLOSED, RESULT_RESET),
                "web",
                backend,
                Some("a".into()),
            );
            m.inbound(backend.to_owned());
        }
        let gone = backend_labels("web", "127.0.0.2:80");
        let callers = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        m.remove_backend(&gone, &callers, true);
        let text = crate::metrics::encode(&registry);
        assert!(!text.contains("127.0.0.2:80"), "{text}");
        for family in [
            "sockmesh_connections_total{",
            "sockmesh_connect_duration_seconds_count{",
            "sockmesh_connection_duration_seconds_count{",
            "sockmesh_bytes_total{",
            "sockmesh_inbound_connections_total{",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(family) && l.contains("127.0.0.3:80")),
                "{family} lost the kept backend:\n{text}"
            );
        }
    }
}

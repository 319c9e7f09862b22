//! The endpoints' connection counters. The agent registers them on its `sockmesh` registry
//! and the control plane on its `sockmesh_control` one, so the same families read
//! `sockmesh_http_connections_total` and `sockmesh_control_http_connections_total`.
//!
//! - `http_connections_total{endpoint,event}`: `accepted`; `refused` (cap reached, every
//!   connection busy: closed unanswered); `evicted` (an idle connection closed to make room
//!   at the cap); `header_timeout` (no complete request head in time, on a new or a
//!   kept-alive connection); `idle_closed` (no request in progress and no byte moved for
//!   the idle timeout); `accept_error` (the listener's accept failed, e.g. EMFILE).
//! - `http_connections_open{endpoint}`: connections with a task now.

use std::fmt;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Which endpoint: a closed set over both binaries.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /metrics` (the agent's, or the control plane's with `/ready`).
    Metrics,
    /// The agent's admin API (unix socket and TCP).
    Admin,
    /// The control plane's API (TCP and unix socket).
    Api,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Metrics => "metrics",
            Endpoint::Admin => "admin",
            Endpoint::Api => "api",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// What happened to a connection; see the module docs.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnEvent {
    Accepted,
    Refused,
    Evicted,
    HeaderTimeout,
    IdleClosed,
    AcceptError,
}

impl ConnEvent {
    pub const ALL: [ConnEvent; 6] = [
        ConnEvent::Accepted,
        ConnEvent::Refused,
        ConnEvent::Evicted,
        ConnEvent::HeaderTimeout,
        ConnEvent::IdleClosed,
        ConnEvent::AcceptError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnEvent::Accepted => "accepted",
            ConnEvent::Refused => "refused",
            ConnEvent::Evicted => "evicted",
            ConnEvent::HeaderTimeout => "header_timeout",
            ConnEvent::IdleClosed => "idle_closed",
            ConnEvent::AcceptError => "accept_error",
        }
    }
}

impl EncodeLabelValue for ConnEvent {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    endpoint: Endpoint,
    event: ConnEvent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: Endpoint,
}

/// The families; cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct ServeMetrics {
    connections: Family<ConnLabels, Counter>,
    open: Family<EndpointLabels, Gauge>,
}

impl ServeMetrics {
    /// Registers the families on `registry` (under its prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let m = ServeMetrics::default();
        registry.register(
            "http_connections",
            "Connections to the HTTP endpoints, by what happened: accepted, refused (cap reached, all busy), evicted (idle one closed for a new one at the cap), header_timeout, idle_closed, accept_error",
            m.connections.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open connections of each HTTP endpoint",
            m.open.clone(),
        );
        m
    }

    /// Creates an endpoint's series at zero, so they show before the first connection.
    pub(crate) fn init(&self, endpoint: Endpoint) {
        for event in ConnEvent::ALL {
            let _ = self
                .connections
                .get_or_create(&ConnLabels { endpoint, event });
        }
        let _ = self.open.get_or_create(&EndpointLabels { endpoint });
    }

    pub(crate) fn count(&self, endpoint: Endpoint, event: ConnEvent) {
        self.connections
            .get_or_create(&ConnLabels { endpoint, event })
            .inc();
    }

    pub(crate) fn opened(&self, endpoint: Endpoint, delta: i64) {
        self.open
            .get_or_create(&EndpointLabels { endpoint })
            .inc_by(delta);
    }

    /// The current count of `event` on `endpoint` (tests, and the agent's status).
    pub fn get(&self, endpoint: Endpoint, event: ConnEvent) -> u64 {
        self.connections
            .get_or_create(&ConnLabels { endpoint, event })
            .get()
    }

    /// Connections of `endpoint` open now.
    pub fn open(&self, endpoint: Endpoint) -> i64 {
        self.open.get_or_create(&EndpointLabels { endpoint }).get()
    }
}

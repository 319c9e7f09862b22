//! The request metrics: an [`Observe`] that counts each [`Report`] into prometheus-client
//! families registered on the caller's [`Registry`], so the agent can serve them on its
//! `/metrics` next to its own (it registers on a `sockmesh`-prefixed registry, which gives
//! the names below; nothing registers these yet).
//!
//! - `sockmesh_requests_total{service,backend,caller,code}`: requests by how they ended
//!   (`code`: [`crate::code`]; `backend="none"` when the proxy answered itself,
//!   `caller="unknown"` when [`crate::Resolve::caller`] did not name one);
//! - `sockmesh_request_duration_seconds{service}`: a histogram, 1 ms to 10 s;
//! - `sockmesh_request_retries_total{service,reason}`: retries by
//!   [`crate::retry::Outcome::reason`] (seven values);
//! - `sockmesh_request_series_dropped_total{metric}`: observations folded into `other`;
//! - `sockmesh_proxy_refused_total{reason}`: connections the server refused for bad input
//!   ([`Refusals`], [`Refusal`]: five reasons), exported with the connection counters.
//!
//! Cardinality: `code` and `reason` are bounded sets, but service, backend and caller come
//! from the config and the kernel's stamp, and a bug there (a caller label per pod IP, say)
//! must not grow the families without end. Each family admits at most
//! [`MAX_SERIES_PER_FAMILY`] label sets; a new one beyond that is counted with service,
//! backend and caller folded into `other` (the agent's word for the same fold, keeping the
//! bounded `code` or `reason`), each such observation once in
//! `sockmesh_request_series_dropped_total`. The folded series are outside the budget and at
//! most 84 + 1 + 7 of them exist.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::code::Code;
use crate::report::{Observe, Report};

/// Label sets each family admits before folding new ones into `other`: 10,000 is well
/// above a node's services x backends x callers x codes in practice, and well below what
/// makes a scrape slow.
pub const MAX_SERIES_PER_FAMILY: usize = 10_000;

/// The value that folded label sets carry for service, backend and caller.
pub const OTHER: &str = "other";
/// The caller label when the stamp named no caller.
pub const UNKNOWN_CALLER: &str = "unknown";
/// The backend label when no backend answered (the proxy's own 502, 503, 504, 499).
pub const NO_BACKEND: &str = "none";

/// Upper bounds of the duration histogram, in seconds: 1 ms .. 10 s, about 2.5x apart.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub backend: String,
    pub caller: String,
    pub code: CodeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub metric: &'static str,
}

/// The `code` label, written as [`Code`] displays it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct CodeLabel(pub Code);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_fmt(encoder, format_args!("{}", self.0))
    }
}

#[derive(Clone)]
struct DurationHistogram;

impl MetricConstructor<Histogram> for DurationHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(DURATION_BUCKETS)
    }
}

/// A family that admits at most `max` label sets.
struct Bounded<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    /// Label sets admitted so far (the folded ones are not counted); the lock also makes
    /// the check-then-insert of a new label set one step.
    admitted: Mutex<usize>,
    max: usize,
    /// The `metric` label of the drops.
    name: &'static str,
}

impl<L, M, C> Bounded<L, M, C>
where
    L: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// The series of `labels`, or of `fold(labels)` when the family is full (counted in
    /// `dropped`).
    fn series(
        &self,
        labels: L,
        fold: impl FnOnce(L) -> L,
        dropped: &Family<DroppedLabels, Counter>,
    ) -> M {
        if let Some(series) = self.family.get(&labels) {
            return series.clone();
        }
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if self.family.get(&labels).is_none() {
            if *admitted >= self.max {
                drop(admitted);
                dropped
                    .get_or_create(&DroppedLabels { metric: self.name })
                    .inc();
                return self.family.get_or_create_owned(&fold(labels));
            }
            *admitted += 1;
        }
        self.family.get_or_create_owned(&labels)
    }
}

/// The request families; cloning is not offered: one observer per proxy.
pub struct RequestMetrics {
    requests: Bounded<RequestLabels, Counter>,
    duration: Bounded<ServiceLabels, Histogram, DurationHistogram>,
    retries: Bounded<RetryLabels, Counter>,
    dropped: Family<DroppedLabels, Counter>,
}

impl RequestMetrics {
    /// Registers the families on `registry` (names without the `sockmesh_` prefix: the
    /// agent's registry adds it), with [`MAX_SERIES_PER_FAMILY`].
    pub fn new(registry: &mut Registry) -> Self {
        Self::with_max_series(registry, MAX_SERIES_PER_FAMILY)
    }

    /// As [`RequestMetrics::new`], admitting `max` label sets per family.
    pub fn with_max_series(registry: &mut Registry, max: usize) -> Self {
        let m = Self {
            requests: bounded(Family::default(), max, "requests"),
            duration: bounded(
                Family::new_with_constructor(DurationHistogram),
                max,
                "request_duration_seconds",
            ),
            retries: bounded(Family::default(), max, "request_retries"),
            dropped: Family::default(),
        };
        registry.register(
            "requests",
            "Requests through the L7 proxy, by how they ended (code: the status, its class, or the gRPC status)",
            m.requests.family.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the response's end",
            m.duration.family.clone(),
        );
        registry.register(
            "request_retries",
            "Retries the L7 proxy made, by what the failed try ended with",
            m.retries.family.clone(),
        );
        registry.register(
            "request_series_dropped",
            "Request observations folded into `other` because the family's series bound was reached",
            m.dropped.clone(),
        );
        m
    }

    /// Counts one request.
    pub fn record(&self, report: &Report) {
        let service = report.service.to_string();
        let requests = RequestLabels {
            service: service.clone(),
            backend: report
                .backend
                .map_or_else(|| NO_BACKEND.to_string(), |b| b.to_string()),
            caller: report
                .caller
                .as_deref()
                .unwrap_or(UNKNOWN_CALLER)
                .to_string(),
            code: CodeLabel(report.code),
        };
        let fold_request = |l: RequestLabels| RequestLabels {
            service: OTHER.into(),
            backend: OTHER.into(),
            caller: OTHER.into(),
            code: l.code,
        };
        self.requests
            .series(requests, fold_request, &self.dropped)
            .inc();
        let fold_service = |_| ServiceLabels {
            service: OTHER.into(),
        };
        self.duration
            .series(
                ServiceLabels {
                    service: service.clone(),
                },
                fold_service,
                &self.dropped,
            )
            .observe(report.duration.as_secs_f64());
        for &reason in &report.retries {
            let labels = RetryLabels {
                service: service.clone(),
                reason,
            };
            let fold_retry = |l: RetryLabels| RetryLabels {
                service: OTHER.into(),
                reason: l.reason,
            };
            self.retries.series(labels, fold_retry, &self.dropped).inc();
        }
    }
}

fn bounded<L, M, C>(family: Family<L, M, C>, max: usize, name: &'static str) -> Bounded<L, M, C> {
    Bounded {
        family,
        admitted: Mutex::new(0),
        max,
        name,
    }
}

impl Observe for RequestMetrics {
    fn request_done(&self, report: &Report) {
        self.record(report)
    }
}

/// Why the server refused a connection's input (the `reason` of
/// `sockmesh_proxy_refused_total`): a fixed set, so the family has five series at most.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// Bytes that are not an HTTP/1.1 request head (a bad method, URI, version or header):
    /// answered 400 and closed.
    NotHttp,
    /// A request head (or URI) over the server's limit: answered 431 (414 for a URI) and
    /// closed.
    HeadTooLarge,
    /// An HTTP/1.1 request head not complete within the header timeout (slowloris): closed.
    HeadTimeout,
    /// HTTP/2: the caller made the server reset streams too fast (rapid reset,
    /// CVE-2023-44487) or otherwise flooded it: GOAWAY `ENHANCE_YOUR_CALM` and closed.
    Http2Flood,
    /// HTTP/2: any other protocol violation (a bad frame, preface or header block): GOAWAY
    /// with its error code and closed.
    Http2Protocol,
}

impl Refusal {
    /// Every reason, in the order of [`Refusals`]' counters.
    pub const ALL: [Refusal; 5] = [
        Refusal::NotHttp,
        Refusal::HeadTooLarge,
        Refusal::HeadTimeout,
        Refusal::Http2Flood,
        Refusal::Http2Protocol,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotHttp => "not_http",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::HeadTimeout => "head_timeout",
            Refusal::Http2Flood => "http2_flood",
            Refusal::Http2Protocol => "http2_protocol",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: Refusal,
}

/// The refusal counters: plain atomics the accept loop adds to, read at each scrape
/// ([`Refusals::encode`]). Every reason is exported, 0 included, so a rate over a reason
/// that never happened is 0, not absent.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
}

impl Refusals {
    pub fn count(&self, reason: Refusal) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: Refusal) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// Writes `proxy_refused_total{reason}` (the registry's prefix makes it
    /// `sockmesh_proxy_refused_total`).
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "proxy_refused",
            "Connections the L7 proxy refused for bad input, by reason: not_http (400), head_too_large (431), head_timeout (slowloris), http2_flood (GOAWAY ENHANCE_YOUR_CALM, rapid reset), http2_protocol (other GOAWAY)",
            None,
            MetricType::Counter,
        )?;
        for reason in Refusal::ALL {
            ConstCounter::new(self.get(reason))
                .encode(family.encode_family(&RefusalLabels { reason })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;

//! The request latency rule: a backend whose smoothed latency is far above its peers' in
//! the same service is suggested for a ban (`deviation_latency`, the agent's name for its
//! connect-level latency rule). Pure, like the consecutive rule; not consumed yet.
//!
//! - A sample is a try's [`crate::Try::elapsed`] (send to response head) when the try got a
//!   response (any status) or ran out of its per-try timeout; connect failures, resets and
//!   refused streams time nothing the backend served.
//! - Each backend keeps an EWMA of its samples (weight [`EWMA_WEIGHT`] on a new one).
//! - A backend deviates when it has [`MIN_SAMPLES`] samples, its EWMA is above [`FLOOR`],
//!   and it exceeds [`DEVIATION_FACTOR`] times the median EWMA of the service's OTHER
//!   backends that have [`MIN_SAMPLES`] (at least one). Leaving the backend out of the
//!   median is what lets one slow backend of two stand out (the agent's deviation rule
//!   excludes it from its mean for the same reason).
//! - A deviating backend is suggested once; it is suggested again only after it stopped
//!   deviating, or after [`LatencyOutliers::unbanned`] (which also forgets its samples).
//! - Backends are checked when a report brings them a sample: a backend whose peers got
//!   faster is caught at its next sample, not before.
//!
//! The constants are fixed, not config: the model has no field for them yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{BanSuggestion, RequestBanReason};
use crate::report::Report;
use crate::retry::Outcome;

/// How many times the peers' median latency a backend must exceed (the agent's default
/// `deviation_factor`).
pub const DEVIATION_FACTOR: f64 = 3.0;
/// Samples a backend needs before it is judged or counts as a peer.
pub const MIN_SAMPLES: u32 = 20;
/// Latencies at or below this never deviate: 3 ms against 0.5 ms is not an outlier.
pub const FLOOR: Duration = Duration::from_millis(5);
/// The weight of a new sample in the EWMA (about the last 10 samples dominate).
pub const EWMA_WEIGHT: f64 = 0.1;

#[derive(Debug, Clone, Copy, Default)]
struct Smoothed {
    /// Seconds.
    ewma: f64,
    samples: u32,
    suggested: bool,
}

/// The smoothed latency of each backend of each service.
#[derive(Debug, Default)]
pub struct LatencyOutliers {
    services: HashMap<Arc<str>, HashMap<SocketAddr, Smoothed>>,
}

impl LatencyOutliers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the samples of `report` and returns the backends that started deviating.
    pub fn observe(&mut self, report: &Report) -> Vec<BanSuggestion> {
        let backends = self.services.entry(report.service.clone()).or_default();
        let mut touched: Vec<SocketAddr> = Vec::new();
        for attempt in &report.tries {
            if !matches!(attempt.outcome, Outcome::Status(_) | Outcome::PerTryTimeout) {
                continue;
            }
            let s = backends.entry(attempt.backend).or_default();
            let sample = attempt.elapsed.as_secs_f64();
            s.ewma = if s.samples == 0 {
                sample
            } else {
                s.ewma + EWMA_WEIGHT * (sample - s.ewma)
            };
            s.samples = s.samples.saturating_add(1);
            if !touched.contains(&attempt.backend) {
                touched.push(attempt.backend);
            }
        }
        let mut suggestions = Vec::new();
        for backend in touched {
            let deviates = deviates(backends, backend);
            let s = backends.get_mut(&backend).expect("touched above");
            if deviates && !s.suggested {
                suggestions.push(BanSuggestion {
                    service: report.service.clone(),
                    backend,
                    reason: RequestBanReason::DeviationLatency,
                });
            }
            s.suggested = deviates;
        }
        suggestions
    }

    /// The agent unbanned `backend` of `service` (or it left the config): its samples go,
    /// and it is judged again once it has [`MIN_SAMPLES`] new ones.
    pub fn unbanned(&mut self, service: &str, backend: SocketAddr) {
        if let Some(backends) = self.services.get_mut(service) {
            backends.remove(&backend);
            if backends.is_empty() {
                self.services.remove(service);
            }
        }
    }

    /// `backend`'s smoothed latency and sample count, if it has samples.
    pub fn latency(&self, service: &str, backend: SocketAddr) -> Option<(Duration, u32)> {
        let s = self.services.get(service)?.get(&backend)?;
        Some((Duration::from_secs_f64(s.ewma), s.samples))
    }

    /// The EWMA in seconds, unrounded, for the tests' model.
    #[cfg(test)]
    fn ewma(&self, service: &str, backend: SocketAddr) -> Option<(f64, u32)> {
        let s = self.services.get(service)?.get(&backend)?;
        Some((s.ewma, s.samples))
    }
}

/// Whether `backend` deviates from its judged peers.
fn deviates(backends: &HashMap<SocketAddr, Smoothed>, backend: SocketAddr) -> bool {
    let me = backends[&backend];
    if me.samples < MIN_SAMPLES || me.ewma <= FLOOR.as_secs_f64() {
        return false;
    }
    let mut peers: Vec<f64> = backends
        .iter()
        .filter(|(addr, s)| **addr != backend && s.samples >= MIN_SAMPLES)
        .map(|(_, s)| s.ewma)
        .collect();
    match median(&mut peers) {
        Some(median) => me.ewma > DEVIATION_FACTOR * median,
        None => false,
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

#[cfg(test)]
#[path = "outlier_latency_tests.rs"]
mod tests;

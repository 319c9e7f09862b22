//! What the proxy tells about its requests: the [`Observe`] of the proxy process. Each
//! [`Report`] is counted into the request metrics ([`RequestMetrics`]), fed to the request
//! ban rules ([`RequestOutliers`], [`LatencyOutliers`]), and tallied per service; the link
//! takes what piled up about once a second as one [`ProxyReport`] for the agent
//! ([`Feedback::take_report`]).
//!
//! - A request **fails** the service when it was answered 5xx (the proxy's own 502, 503 and
//!   504 included), when it is gRPC and its status is one gRPC's HTTP mapping makes a 5xx
//!   (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS:
//!   [`crate::code::Code::is_server_error`], the `request_success` SLI's reading; statuses
//!   the caller causes, such as NOT_FOUND or INVALID_ARGUMENT, are not failures), or when it
//!   was never answered: its caller left before a response head (499), which is what a
//!   hung backend looks like from here.
//! - Each service's rules come with the targets ([`Rules`]): its `outlier.consecutive_5xx`
//!   and the thresholds of its `request_latency` SLOs, under which requests are counted
//!   ([`ServiceTally::within`]).
//! - Each request is also counted for the backend that answered it or, when the proxy
//!   answered itself after a try (502, 504), for that try's backend ([`ServiceTally::backends`]):
//!   the agent's diagnosis names the backends the failures come from.
//! - Bounds: only services of the current targets are tallied and judged (a report of a
//!   service that left is counted in the metrics only), so a report holds at most one tally
//!   per service and at most [`MAX_TALLY_BACKENDS`] backends per tally; a ban suggestion is
//!   sent once per (service, backend, reason) per report, and the rules themselves suggest a
//!   backend once per run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use sockmesh_model::OutlierSpec;

use crate::link::{BackendTally, BanRequest, ProxyReport, ServiceTally, MAX_TALLY_BACKENDS};
use crate::metrics::RequestMetrics;
use crate::outlier::latency::LatencyOutliers;
use crate::outlier::{BanSuggestion, RequestOutliers};
use crate::report::{Observe, Report, CLIENT_CLOSED};

/// A service's rules, from its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `outlier.consecutive_5xx` (0: the rule is off).
    pub consecutive_5xx: u32,
    /// `request_latency` SLO thresholds, µs, sorted.
    pub latency_thresholds_us: Vec<u64>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            consecutive_5xx: OutlierSpec::default().consecutive_5xx,
            latency_thresholds_us: Vec::new(),
        }
    }
}

impl Rules {
    /// The rules the agent sent for `service`.
    pub fn of(service: &crate::link::TargetService) -> Self {
        Self {
            consecutive_5xx: service.consecutive_5xx,
            latency_thresholds_us: service.latency_thresholds_us.clone(),
        }
    }
}

/// Requests of one service since the last report.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    failed: u64,
    /// Requests within each of the service's latency thresholds (same order).
    within: Vec<u64>,
    /// Per backend ([`BackendTally`] without the address).
    backends: HashMap<SocketAddr, BackendCounts>,
}

#[derive(Debug, Default, Clone, Copy)]
struct BackendCounts {
    requests: u64,
    failed: u64,
    gateway: u64,
}

#[derive(Debug, Default)]
struct Pending {
    /// The services of the current targets, with their rules.
    known: HashMap<Arc<str>, Rules>,
    tallies: HashMap<Arc<str>, Tally>,
    bans: Vec<BanSuggestion>,
    consecutive: RequestOutliers,
    latency: LatencyOutliers,
}

/// The proxy process's [`Observe`]; see the module docs.
pub struct Feedback {
    metrics: RequestMetrics,
    pending: Mutex<Pending>,
    /// Woken when a ban request is waiting: it goes to the agent at once, not at the next
    /// report tick, because every request until the ban may meet the failing backend.
    bans_waiting: tokio::sync::Notify,
}

impl Feedback {
    /// Registers the request metrics on `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            metrics: RequestMetrics::new(registry),
            pending: Mutex::default(),
            bans_waiting: tokio::sync::Notify::new(),
        }
    }

    /// The targets changed: `services` are the ones now served, and `forget` the backends
    /// whose failure runs and latency history end (left, or unbanned).
    pub fn targets_changed(
        &self,
        services: impl IntoIterator<Item = (Arc<str>, Rules)>,
        forget: &[(Arc<str>, SocketAddr)],
    ) {
        let mut p = self.lock();
        p.known = services.into_iter().collect();
        for (service, backend) in forget {
            p.consecutive.unbanned(service, *backend);
            p.latency.unbanned(service, *backend);
        }
        let Pending {
            known,
            tallies,
            bans,
            ..
        } = &mut *p;
        // A tally counted under other thresholds would be misread: it goes with them.
        tallies.retain(|service, t| {
            known
                .get(service)
                .is_some_and(|r| r.latency_thresholds_us.len() == t.within.len())
        });
        bans.retain(|ban| known.contains_key(&ban.service));
    }

    /// Completes when a ban request is waiting to be reported (module docs).
    pub async fn ban_waiting(&self) {
        self.bans_waiting.notified().await;
    }

    /// What piled up since the last call; `None` when there is nothing to say.
    pub fn take_report(&self) -> Option<ProxyReport> {
        let mut p = self.lock();
        if p.tallies.is_empty() && p.bans.is_empty() {
            return None;
        }
        let Pending { known, tallies, .. } = &mut *p;
        let mut services: Vec<ServiceTally> = tallies
            .drain()
            .map(|(service, t)| {
                let thresholds = known
                    .get(&service)
                    .map(|r| r.latency_thresholds_us.as_slice())
                    .unwrap_or_default();
                ServiceTally {
                    service: service.to_string(),
                    requests: t.requests,
                    failed: t.failed,
                    within: thresholds.iter().copied().zip(t.within).collect(),
                    backends: backend_rows(t.backends),
                }
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let bans = p
            .bans
            .drain(..)
            .map(|s| BanRequest {
                service: s.service.to_string(),
                backend: s.backend,
                reason: s.reason.as_str().to_owned(),
            })
            .collect();
        Some(ProxyReport { services, bans })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every update below leaves the state whole: a panic elsewhere cannot break it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn backend_rows(counts: HashMap<SocketAddr, BackendCounts>) -> Vec<BackendTally> {
    let mut rows: Vec<BackendTally> = counts
        .into_iter()
        .map(|(backend, c)| BackendTally {
            backend,
            requests: c.requests,
            failed: c.failed,
            gateway: c.gateway,
        })
        .collect();
    rows.sort_by_key(|r| r.backend);
    rows
}

/// The backend a request is counted for: the one that answered, else the last one tried
/// (the proxy's 502 or 504 followed its try); `None` when no backend was tried.
pub fn answered_by(report: &Report) -> Option<SocketAddr> {
    report
        .backend
        .or_else(|| report.tries.last().map(|t| t.backend))
}

/// Whether `report` counts against its service (module docs).
pub fn failed(report: &Report) -> bool {
    report.code.is_server_error() || report.status.as_u16() == CLIENT_CLOSED
}

impl Observe for Feedback {
    fn request_done(&self, report: &Report) {
        self.metrics.record(report);
        let mut p = self.lock();
        let Pending { known, tallies, .. } = &mut *p;
        let Some(rules) = known.get(&report.service) else {
            return;
        };
        let tally = tallies
            .entry(report.service.clone())
            .or_insert_with(|| Tally {
                within: vec![0; rules.latency_thresholds_us.len()],
                ..Tally::default()
            });
        let failed = failed(report);
        tally.requests += 1;
        tally.failed += u64::from(failed);
        if let Some(backend) = answered_by(report) {
            let room =
                tally.backends.len() < MAX_TALLY_BACKENDS || tally.backends.contains_key(&backend);
            if room {
                let gateway =
                    report.backend.is_none() && matches!(report.status.as_u16(), 502 | 504);
                let n = tally.backends.entry(backend).or_default();
                n.requests += 1;
                n.failed += u64::from(failed);
                n.gateway += u64::from(gateway);
            }
        }
        let us = u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX);
        for (n, threshold) in tally.within.iter_mut().zip(&rules.latency_thresholds_us) {
            *n += u64::from(us <= *threshold);
        }
        let consecutive_5xx = rules.consecutive_5xx;
        let mut suggestions = p.consecutive.observe(report, consecutive_5xx);
        suggestions.extend(p.latency.observe(report));
        let mut added = false;
        for s in suggestions {
            if !p.bans.contains(&s) {
                p.bans.push(s);
                added = true;
            }
        }
        drop(p);
        if added {
            // `notify_one` keeps a permit if the link is not waiting right now.
            self.bans_waiting.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "feedback_tests.rs"]
mod tests;

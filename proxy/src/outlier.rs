//! The request-level ban rule: a backend whose tries failed `outlier.consecutive_5xx` times
//! in a row is suggested for a ban. The agent's ban engine will take the suggestions (it
//! owns bans, their durations, the cap on banned backends and the probes, as it does for
//! its connect rules); this module only decides, from the tries of each [`Report`], pure
//! (no clock, no I/O), and the agent does not consume it yet.
//!
//! What each try counts as (Envoy's `consecutive_5xx`, with gateway errors and failed tries
//! included since they are 5xx to the caller too):
//!
//! - a failure: a 5xx status (502, 503, 504 among them), a connect failure, a reset before
//!   the response, a per-try timeout; for the try that answered a gRPC request, a gRPC
//!   status that maps to a 5xx ([`Code::is_server_error`], as Envoy maps `grpc-status`);
//! - a success: any other status (a 4xx is the caller's fault, not the backend's); it ends
//!   the backend's run of failures;
//! - neither: HTTP/2 REFUSED_STREAM, which a backend sends for a request it did not process
//!   (a draining server's GOAWAY among them): no evidence either way.
//!
//! A backend whose run reaches the threshold is suggested once; failures after that add
//! nothing until a success, or the agent reporting it unbanned
//! ([`RequestOutliers::unbanned`]), starts a new run. A threshold of 0 disables the rule (runs are still counted, so a
//! threshold set later applies to the run under way).
//!
//! The latency rule, a backend's smoothed latency far above its peers', is [`latency`].

#[path = "outlier_latency.rs"]
pub mod latency;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::code::Code;
use crate::report::Report;
use crate::retry::Outcome;

/// Why a backend is suggested for a ban, named as the config names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestBanReason {
    /// `outlier.consecutive_5xx` failed tries in a row.
    Consecutive5xx,
    /// Smoothed latency far above the service's other backends' ([`latency`]).
    DeviationLatency,
}

impl RequestBanReason {
    /// The reason's label value (`consecutive_5xx`), next to the agent's connect rules'.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestBanReason::Consecutive5xx => "consecutive_5xx",
            RequestBanReason::DeviationLatency => "deviation_latency",
        }
    }
}

/// A backend the request rule would ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanSuggestion {
    pub service: Arc<str>,
    pub backend: SocketAddr,
    pub reason: RequestBanReason,
}

/// What one try tells about its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Failure,
    Success,
    /// Refused before processing: neither.
    Neither,
}

/// The verdict on a try that ended with `outcome`; `grpc_code` is the request's gRPC code
/// when this try's response is the one the caller got.
pub fn verdict(outcome: Outcome, grpc_code: Option<Code>) -> Verdict {
    match outcome {
        Outcome::ConnectFailure | Outcome::Reset | Outcome::PerTryTimeout => Verdict::Failure,
        Outcome::RefusedStream => Verdict::Neither,
        Outcome::Status(s) if (500..=599).contains(&s) => Verdict::Failure,
        Outcome::Status(_) => match grpc_code {
            Some(code) if code.is_server_error() => Verdict::Failure,
            _ => Verdict::Success,
        },
    }
}

/// A backend's run of failures under way.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    failures: u32,
    suggested: bool,
}

/// The consecutive-failure runs of the backends of every service. Only backends in a run
/// have an entry (a success removes it), so memory follows the failing backends; a backend
/// that leaves the config while failing is dropped with [`RequestOutliers::unbanned`].
#[derive(Debug, Default)]
pub struct RequestOutliers {
    runs: HashMap<(Arc<str>, SocketAddr), Run>,
}

impl RequestOutliers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts the tries of `report`, whose service bans after `consecutive_5xx` failures in
    /// a row (its `outlier.consecutive_5xx`; 0: never), and returns the backends whose run
    /// reached it with this report, each once.
    pub fn observe(&mut self, report: &Report, consecutive_5xx: u32) -> Vec<BanSuggestion> {
        let mut suggestions = Vec::new();
        let last = report.tries.len().wrapping_sub(1);
        for (i, attempt) in report.tries.iter().enumerate() {
            // The gRPC status belongs to the response the caller got: the last try's, when
            // it answered.
            let answered = i == last && report.backend == Some(attempt.backend);
            let grpc = match report.code {
                Code::Grpc(_) if answered => Some(report.code),
                _ => None,
            };
            let key = (report.service.clone(), attempt.backend);
            match verdict(attempt.outcome, grpc) {
                Verdict::Neither => {}
                Verdict::Success => {
                    self.runs.remove(&key);
                }
                Verdict::Failure => {
                    let run = self.runs.entry(key).or_default();
                    run.failures = run.failures.saturating_add(1);
                    if consecutive_5xx > 0 && run.failures >= consecutive_5xx && !run.suggested {
                        run.suggested = true;
                        suggestions.push(BanSuggestion {
                            service: report.service.clone(),
                            backend: attempt.backend,
                            reason: RequestBanReason::Consecutive5xx,
                        });
                    }
                }
            }
        }
        suggestions
    }

    /// The agent unbanned `backend` of `service` (or it left the config): its run ends, and
    /// the next run that reaches the threshold is suggested again.
    pub fn unbanned(&mut self, service: &str, backend: SocketAddr) {
        self.runs.remove(&(Arc::from(service), backend));
    }

    /// The length of `backend`'s failure run under way (0: none).
    pub fn failures(&self, service: &str, backend: SocketAddr) -> u32 {
        self.runs
            .get(&(Arc::from(service), backend))
            .map_or(0, |r| r.failures)
    }
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;

//! Ranking the likely causes of a service's trouble from kernel signals: a pure function of a
//! plain [`DiagnoseInput`], so every rule is tested with hand-made numbers
//! (docs/slo.md, "Diagnosis", is the operator's version of this file).
//!
//! Five causes, each scored in [0, 1] from the recent window (the last minute), with the
//! five minutes before it as the baseline that says whether a signal is new:
//! - `backends_failing`: failed connects concentrated on a few backends, or failure bans.
//! - `network`: retransmits per connection (or SYN timeouts) above a floor on MOST backends.
//! - `cpu_starvation`: the callers' or the backends' workloads wait in the run queue or are
//!   throttled by their CPU quota.
//! - `overload`: the mesh refuses connects because of limits, shedding or an open circuit.
//! - `backend_errors` (http services): the requests that fail (5xx, gRPC server errors,
//!   the proxy's gateway errors) come from a few backends, or the proxy banned one for
//!   `consecutive_5xx` ([`super::backend_errors`]).

use serde::Serialize;

/// Below this many backend failures in the window, failure shares are noise.
pub(crate) const MIN_FAILURES: u64 = 5;
/// A backend failing at least this share of its connects is failing.
pub(crate) const FAILING_RATIO: f64 = 0.5;
/// The service's failure share at which `backends_failing` reaches full severity.
pub(crate) const FULL_FAILURE_SHARE: f64 = 0.05;
/// Retransmits per connection above which a backend's path is lossy...
pub(crate) const RETRANSMIT_FLOOR: f64 = 1.0;
/// ... given at least this many retransmits in the window.
pub(crate) const MIN_RETRANSMITS: u64 = 3;
/// SYN timeouts or ICMP errors on at least this share of a backend's connects are also loss.
pub(crate) const SYN_TROUBLE_RATIO: f64 = 0.2;
/// Run-queue waits a workload needs in the window before its latency is judged.
pub(crate) const MIN_WAITS: u64 = 20;
/// Overload refusals needed before `overload` scores.
pub(crate) const MIN_REFUSALS: u64 = 5;
/// The share of refused connects at which `overload` reaches full score.
pub(crate) const FULL_REFUSAL_SHARE: f64 = 0.10;
/// Below this many failed requests in the window, request failure shares are noise.
pub(crate) const MIN_FAILED_REQUESTS: u64 = 5;
/// A backend failing at least this share of the requests it answered is erring (lower than
/// [`FAILING_RATIO`]: a backend answering 5xx to one request in five is already broken).
pub(crate) const ERRING_RATIO: f64 = 0.2;
/// The service's failed-request share at which `backend_errors` reaches full severity.
pub(crate) const FULL_REQUEST_FAILURE_SHARE: f64 = 0.05;
/// A signal that was as strong in the baseline is not what changed: its score is scaled.
pub(crate) const CHRONIC: f64 = 0.8;
/// Below this, no cause is named in the summary.
pub(crate) const CLEAR: f64 = 0.2;

/// Connect outcomes and TCP counters of one backend over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BackendWindow {
    pub ok: u64,
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    /// Connections open at the window's start plus those established in it.
    pub connections: u64,
    pub retransmits: u64,
    pub rtos: u64,
}

impl BackendWindow {
    pub(crate) fn failed(&self) -> u64 {
        self.refused + self.timeout + self.unreachable
    }

    pub(crate) fn attempts(&self) -> u64 {
        self.ok + self.failed()
    }

    pub(crate) fn retransmits_per_connection(&self) -> f64 {
        self.retransmits as f64 / self.connections.max(1) as f64
    }

    pub(crate) fn lossy(&self) -> bool {
        self.retransmits >= MIN_RETRANSMITS && self.retransmits_per_connection() >= RETRANSMIT_FLOOR
    }

    pub(crate) fn syn_trouble(&self) -> bool {
        let lost = self.timeout + self.unreachable;
        lost >= 3 && lost as f64 >= SYN_TROUBLE_RATIO * self.attempts() as f64
    }
}

/// A backend the health engine keeps out of its slot table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BanNow {
    /// `banned` or `probing`.
    pub state: String,
    /// `/v1/bans` reasons: `consecutive_failures`, `failure_ratio`, `deviation_*`.
    pub reason: String,
}

impl BanNow {
    pub(crate) fn for_failures(&self) -> bool {
        matches!(
            self.reason.as_str(),
            "consecutive_failures" | "failure_ratio" | "deviation_failures"
        )
    }

    /// A ban the L7 proxy asked for because a backend's requests failed in a row: the
    /// `backend_errors` cause's evidence, not `backends_failing`'s.
    pub(crate) fn for_request_errors(&self) -> bool {
        self.reason == "consecutive_5xx"
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BackendSignals {
    pub addr: String,
    pub recent: BackendWindow,
    pub baseline: BackendWindow,
    pub ban: Option<BanNow>,
}

/// Requests of one backend, or of the whole service, over one window (the L7 proxy's
/// reports).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestWindow {
    pub requests: u64,
    /// 5xx, gRPC server errors, never answered.
    pub failed: u64,
    /// Of `failed`, the proxy's own 502 or 504 after this backend's try (backends only).
    pub gateway: u64,
}

impl RequestWindow {
    pub(crate) fn failed_share(&self) -> f64 {
        self.failed as f64 / self.requests.max(1) as f64
    }

    pub(crate) fn erring(&self) -> bool {
        self.failed >= 3 && self.failed_share() >= ERRING_RATIO
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BackendRequests {
    pub addr: String,
    pub recent: RequestWindow,
    pub baseline: RequestWindow,
    pub ban: Option<BanNow>,
}

/// An http service's requests: the whole service (every request the proxy took, those no
/// backend was tried for included) and each configured backend. Empty for a tcp service.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestSignals {
    pub recent: RequestWindow,
    pub baseline: RequestWindow,
    pub backends: Vec<BackendRequests>,
}

/// Whose CPU it is: a caller of the service, or a workload serving one of its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    Caller,
    Backend,
}

/// One workload's CPU starvation over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CpuWindow {
    /// How much of the window the agent observed.
    pub seconds: f64,
    pub waits: u64,
    pub wait_sum_us: u64,
    pub waits_over_1ms: u64,
    pub nr_throttled: u64,
    pub throttled_seconds: f64,
}

impl CpuWindow {
    pub(crate) fn mean_wait_ms(&self) -> f64 {
        self.wait_sum_us as f64 / self.waits.max(1) as f64 / 1e3
    }

    pub(crate) fn over_1ms_share(&self) -> f64 {
        self.waits_over_1ms as f64 / self.waits.max(1) as f64
    }

    pub(crate) fn throttled_share(&self) -> f64 {
        if self.seconds <= 0.0 || self.nr_throttled == 0 {
            return 0.0;
        }
        self.throttled_seconds / self.seconds
    }

    /// 0 (fine) to 1 (starved): run-queue latency (30 % of waits over 1 ms, or a mean of
    /// 2.5 ms, is full) or throttling (a quarter of the time throttled is full).
    pub(crate) fn starvation(&self) -> f64 {
        let runq = if self.waits >= MIN_WAITS {
            let mass = (self.over_1ms_share() - 0.05) / 0.25;
            let mean = (self.mean_wait_ms() - 0.5) / 2.0;
            mass.max(mean).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let throttle = (self.throttled_share() / 0.25).clamp(0.0, 1.0);
        runq.max(throttle)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkloadSignals {
    pub name: String,
    pub role: Role,
    pub recent: CpuWindow,
    pub baseline: CpuWindow,
}

/// The service's connect attempts (every decision) and its overload refusals in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Refusals {
    pub attempts: u64,
    pub limited: u64,
    pub shed: u64,
    pub circuit_open: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CircuitNow {
    /// `closed`, `half_open` or `open`.
    pub state: String,
    pub panic_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SloBurn {
    pub slo: String,
    /// `connect_success`, `request_success`, ...
    pub sli: String,
    #[serde(rename = "5m")]
    pub burn_5m: f64,
    #[serde(rename = "1h")]
    pub burn_1h: f64,
}

/// Everything diagnosis looks at, for one service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiagnoseInput {
    pub service: String,
    pub recent_secs: f64,
    pub baseline_secs: f64,
    pub backends: Vec<BackendSignals>,
    pub workloads: Vec<WorkloadSignals>,
    pub refusals: Refusals,
    pub circuit: Option<CircuitNow>,
    pub slos: Vec<SloBurn>,
    pub requests: RequestSignals,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Cause {
    pub cause: &'static str,
    pub score: f64,
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Diagnosis {
    pub service: String,
    pub window_secs: f64,
    pub baseline_secs: f64,
    pub summary: String,
    /// Highest score first; equal scores keep the order of the module docs.
    pub causes: Vec<Cause>,
    pub slos: Vec<SloBurn>,
}

/// Scores every cause and ranks them.
pub(crate) fn diagnose(input: &DiagnoseInput) -> Diagnosis {
    let mut causes = vec![
        super::causes::backends_failing(input),
        super::causes::network(input),
        super::causes::cpu_starvation(input),
        super::causes::overload(input),
        super::backend_errors::backend_errors(input),
    ];
    for c in &mut causes {
        // Two decimals: enough to rank, and stable in JSON and tests.
        c.score = (c.score.clamp(0.0, 1.0) * 100.0).round() / 100.0;
    }
    // Stable: ties keep the fixed order above.
    causes.sort_by(|a, b| b.score.total_cmp(&a.score));
    Diagnosis {
        service: input.service.clone(),
        window_secs: input.recent_secs,
        baseline_secs: input.baseline_secs,
        summary: summary(input, &causes),
        causes,
        slos: input.slos.clone(),
    }
}

fn summary(input: &DiagnoseInput, ranked: &[Cause]) -> String {
    let burning = input
        .slos
        .iter()
        .max_by(|a, b| a.burn_1h.total_cmp(&b.burn_1h))
        .filter(|s| s.burn_1h > 0.0 || s.burn_5m > 0.0)
        .map(|s| {
            format!(
                " (SLO {} burning {:.1}x over 1h, {:.1}x over 5m)",
                s.slo, s.burn_1h, s.burn_5m
            )
        })
        .unwrap_or_default();
    match ranked.first() {
        Some(top) if top.score >= CLEAR => {
            let why = top.evidence.first().map_or("", String::as_str);
            format!(
                "{}: most likely {} (score {:.2}){burning}: {why}",
                input.service, top.cause, top.score
            )
        }
        _ => format!(
            "{}: no clear cause in the last {:.0} s{burning}",
            input.service, input.recent_secs
        ),
    }
}

#[cfg(test)]
mod tests;

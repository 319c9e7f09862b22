//! Outlier detection: which backends of one service should be banned, from what the kernel
//! saw of them over the last window.
//!
//! Three rules, checked in this order (the first that fires names the ban reason):
//! 1. consecutive connect failures ≥ N (fast: a dead backend is caught after N connects);
//! 2. failure ratio over the window ≥ a threshold, once the window holds `min_requests`;
//! 3. deviation (UFC): a signal — failure ratio, handshake latency, srtt, retransmits per
//!    connection — more than `deviation_factor` times the mean of the OTHER backends. Excluding
//!    the backend itself from the mean is what lets one bad backend among two healthy ones
//!    stand out: with three backends, no value can exceed 3× a mean it is itself part of
//!    (x > 3 · (x + 2y) / 3 needs y < 0).
//!
//! Deviation only compares backends with enough evidence: a backend contributes a signal when
//! it has `min_requests` attempts and the signal is present, and a comparison needs
//! `deviation_min_backends` such backends. An absolute floor per signal keeps tiny numbers
//! (0.2 ms against 0.05 ms) from banning anyone.
//!
//! Detection is a pure function of the signals; bans, caps and probes are [`super::ban`]'s.

use std::time::Duration;

/// Failure ratios at or below this never deviate: one failure in 20 is noise, not an outlier.
pub(crate) const FLOOR_FAILURE_RATIO: f64 = 0.05;
/// Deviation on failures also needs this many failures in the window: with healthy peers at
/// zero, a ratio of 2 in 20 would otherwise "deviate" infinitely (Envoy asks for 100
/// requests for the same reason); a dead backend is caught by the consecutive rule anyway.
pub(crate) const MIN_DEVIATION_FAILURES: u64 = 5;
/// Handshake latency (ms) at or below this never deviates.
pub(crate) const FLOOR_HANDSHAKE_MS: f64 = 1.0;
/// Smoothed RTT (µs) at or below this never deviates.
pub(crate) const FLOOR_SRTT_US: f64 = 1_000.0;
/// Retransmits per connection at or below this never deviate.
pub(crate) const FLOOR_RETRANSMIT_RATE: f64 = 0.05;

/// Detection and ban policy of one service (the `outlier:` block of the config).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutlierPolicy {
    /// Ban after this many connect failures in a row; 0 disables the rule.
    pub consecutive_failures: u32,
    /// ... or when this share of the window's attempts failed.
    pub failure_ratio: f64,
    pub window: Duration,
    /// The ratio and deviation rules need this many attempts in the window.
    pub min_requests: u64,
    /// ... or when a signal exceeds this many times the mean of the other backends.
    pub deviation_factor: f64,
    /// Deviation needs at least this many backends with the signal (the backend included).
    pub deviation_min_backends: usize,
    pub base_ban: Duration,
    pub max_ban: Duration,
    pub reset_after: Duration,
    pub max_banned_percent: u32,
    pub probe_timeout: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            deviation_factor: 3.0,
            deviation_min_backends: 3,
            base_ban: Duration::from_secs(5),
            max_ban: Duration::from_secs(300),
            reset_after: Duration::from_secs(60),
            max_banned_percent: 50,
            probe_timeout: Duration::from_millis(500),
        }
    }
}

/// What the kernel saw of one backend; window counts are over [`OutlierPolicy::window`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct BackendSignals {
    pub id: u32,
    pub consecutive_failures: u32,
    pub attempts: u64,
    pub failures: u64,
    pub handshake_mean_ms: Option<f64>,
    pub srtt_mean_us: Option<f64>,
    /// Retransmits per connection in the window.
    pub retransmit_rate: Option<f64>,
}

/// Why a backend was banned; the `reason` label of `sockmesh_backend_bans_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum BanReason {
    ConsecutiveFailures,
    FailureRatio,
    DeviationFailures,
    DeviationLatency,
    DeviationSrtt,
    DeviationRetransmits,
    /// The L7 proxy saw `outlier.consecutive_5xx` failed requests in a row (http services).
    Consecutive5xx,
    /// The L7 proxy saw the backend's request latency far above its peers' (http services).
    RequestLatency,
}

impl BanReason {
    pub(crate) const ALL: [BanReason; 8] = [
        BanReason::ConsecutiveFailures,
        BanReason::FailureRatio,
        BanReason::DeviationFailures,
        BanReason::DeviationLatency,
        BanReason::DeviationSrtt,
        BanReason::DeviationRetransmits,
        BanReason::Consecutive5xx,
        BanReason::RequestLatency,
    ];

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            BanReason::ConsecutiveFailures => "consecutive_failures",
            BanReason::FailureRatio => "failure_ratio",
            BanReason::DeviationFailures => "deviation_failures",
            BanReason::DeviationLatency => "deviation_latency",
            BanReason::DeviationSrtt => "deviation_srtt",
            BanReason::DeviationRetransmits => "deviation_retransmits",
            BanReason::Consecutive5xx => "consecutive_5xx",
            BanReason::RequestLatency => "request_latency",
        }
    }

    /// The reason of a ban the L7 proxy asks for (`sockmesh_proxy::link::BanRequest`);
    /// `None` for a reason this agent does not know (a newer proxy).
    pub(crate) fn from_proxy(reason: &str) -> Option<Self> {
        match reason {
            "consecutive_5xx" => Some(BanReason::Consecutive5xx),
            "deviation_latency" | "request_latency" => Some(BanReason::RequestLatency),
            _ => None,
        }
    }
}

/// One signal deviation compares: its ban reason, its floor, and how to read it.
struct DeviationSignal {
    reason: BanReason,
    floor: f64,
    read: fn(&BackendSignals) -> Option<f64>,
}

const DEVIATION_SIGNALS: [DeviationSignal; 4] = [
    DeviationSignal {
        reason: BanReason::DeviationFailures,
        floor: FLOOR_FAILURE_RATIO,
        read: failure_ratio,
    },
    DeviationSignal {
        reason: BanReason::DeviationLatency,
        floor: FLOOR_HANDSHAKE_MS,
        read: |s| s.handshake_mean_ms,
    },
    DeviationSignal {
        reason: BanReason::DeviationSrtt,
        floor: FLOOR_SRTT_US,
        read: |s| s.srtt_mean_us,
    },
    DeviationSignal {
        reason: BanReason::DeviationRetransmits,
        floor: FLOOR_RETRANSMIT_RATE,
        read: |s| s.retransmit_rate,
    },
];

/// One signal across a service's backends: each backend's usable value, plus how many have
/// one and their sum, so the mean of the others is one subtraction away.
struct Column<'a> {
    signal: &'a DeviationSignal,
    values: Vec<Option<f64>>,
    count: usize,
    sum: f64,
}

impl Column<'_> {
    fn deviates(&self, i: usize, policy: &OutlierPolicy) -> bool {
        let Some(own) = self.values[i] else {
            return false;
        };
        if self.count < policy.deviation_min_backends.max(2) {
            return false;
        }
        let others = ((self.sum - own) / (self.count - 1) as f64).max(0.0);
        own > self.signal.floor && own > policy.deviation_factor * others
    }
}

fn failure_ratio(s: &BackendSignals) -> Option<f64> {
    (s.attempts > 0).then(|| s.failures.min(s.attempts) as f64 / s.attempts as f64)
}

/// The backends to ban and why, in input order, one reason each. Backends already banned
/// may be passed (their signals simply go stale); [`super::ban::BanBook`] ignores repeats.
pub(crate) fn detect(policy: &OutlierPolicy, backends: &[BackendSignals]) -> Vec<(u32, BanReason)> {
    let enough = |s: &BackendSignals| s.attempts > 0 && s.attempts >= policy.min_requests;
    let columns: Vec<Column> = DEVIATION_SIGNALS
        .iter()
        .map(|signal| {
            let values: Vec<Option<f64>> = backends
                .iter()
                .map(|s| (signal.read)(s).filter(|v| enough(s) && v.is_finite() && *v >= 0.0))
                .collect();
            Column {
                signal,
                count: values.iter().flatten().count(),
                sum: values.iter().flatten().sum(),
                values,
            }
        })
        .collect();

    let mut out = Vec::new();
    for (i, s) in backends.iter().enumerate() {
        if policy.consecutive_failures > 0 && s.consecutive_failures >= policy.consecutive_failures
        {
            out.push((s.id, BanReason::ConsecutiveFailures));
            continue;
        }
        if enough(s) && failure_ratio(s).is_some_and(|r| r >= policy.failure_ratio) {
            out.push((s.id, BanReason::FailureRatio));
            continue;
        }
        let few_failures = s.failures < MIN_DEVIATION_FAILURES;
        if let Some(c) = columns.iter().find(|c| {
            !(few_failures && c.signal.reason == BanReason::DeviationFailures)
                && c.deviates(i, policy)
        }) {
            out.push((s.id, c.signal.reason));
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! Per-service health policy: outlier detection and bans, the circuit breaker, connection
//! limits, who may call, and how long connections to a removed backend may drain. Every field
//! has a default that is safe for a three-backend service, so a config that says nothing
//! still gets sane protection (see docs/health-design.md for the semantics).

use serde::{Deserialize, Serialize};

use super::duration::Span;

/// Outlier detection and bans (Envoy's outlier detection, UFC's "compare with the others").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSpec {
    /// Ban after this many connect failures in a row (0 disables the rule).
    pub consecutive_failures: u32,
    /// ... or when this share of attempts over `window` failed.
    pub failure_ratio: f64,
    pub window: Span,
    /// The ratio and deviation rules need at least this many attempts in the window.
    pub min_requests: u32,
    /// ... or when a signal is this many times the mean of the service's other backends.
    pub deviation_factor: f64,
    /// Deviation needs at least this many backends with the signal.
    pub deviation_min_backends: u32,
    /// First ban; each consecutive ban doubles it, up to `max_ban`.
    pub base_ban: Span,
    pub max_ban: Span,
    /// Healthy this long after a ban: the next ban starts from `base_ban` again.
    pub reset_after: Span,
    /// Never ban more than this share of the backends; beyond it, keep routing and raise
    /// panic mode instead (banning everything would turn a partial outage into a full one).
    pub max_banned_percent: u32,
    /// A banned backend returns only after a TCP connect probe succeeds within this time.
    pub probe_timeout: Span,
    /// http services: ban after this many 5xx responses in a row (0 disables the rule).
    /// Left out of the serialization at its default, so the fingerprints of configs from
    /// before the field are unchanged; a tcp service may not change it.
    #[serde(skip_serializing_if = "is_default_consecutive_5xx")]
    pub consecutive_5xx: u32,
}

/// Envoy's default for its `consecutive_5xx` outlier rule.
pub(super) const DEFAULT_CONSECUTIVE_5XX: u32 = 5;

fn is_default_consecutive_5xx(v: &u32) -> bool {
    *v == DEFAULT_CONSECUTIVE_5XX
}

// Eq for the config types that derive it: the f64 fields are validated finite (a NaN is
// rejected by `check`), so equality is reflexive on every config that passes validation.
impl Eq for OutlierSpec {}
impl Eq for CircuitSpec {}

impl Default for OutlierSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Span::secs(10),
            min_requests: 20,
            deviation_factor: 3.0,
            deviation_min_backends: 3,
            base_ban: Span::secs(5),
            max_ban: Span::secs(300),
            reset_after: Span::secs(60),
            max_banned_percent: 50,
            probe_timeout: Span::millis(500),
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
        }
    }
}

/// The per-service circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitSpec {
    /// Open when the success share over `window` falls below this (0 disables the breaker).
    pub min_success_ratio: f64,
    pub window: Span,
    pub min_requests: u32,
    /// Open -> half-open after this; doubles on each re-open up to `max_cooldown`.
    pub cooldown: Span,
    pub max_cooldown: Span,
    /// Share of connects admitted while half-open.
    pub half_open_admit_percent: u32,
    /// Successes while half-open that close the circuit.
    pub half_open_successes: u32,
}

impl Default for CircuitSpec {
    fn default() -> Self {
        Self {
            min_success_ratio: 0.5,
            window: Span::secs(10),
            min_requests: 20,
            cooldown: Span::secs(5),
            max_cooldown: Span::secs(60),
            half_open_admit_percent: 10,
            half_open_successes: 5,
        }
    }
}

/// Limits enforced in the kernel at connect(); over a limit the connect fails at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Concurrent connections to the service (absent: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Concurrent connections to the service from one caller workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_caller: Option<u32>,
    /// New connections per second (token bucket), with `connect_burst` of slack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_burst: Option<u32>,
}

/// Priority of a caller workload: while a service is overloaded or half-open, lower
/// priorities are refused first (UFC's degradation).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Offline,
    #[default]
    Online,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Offline => "offline",
            Priority::Online => "online",
        }
    }

    /// The level the kernel compares (higher is more important).
    pub fn level(&self) -> u32 {
        match self {
            Priority::Offline => 1,
            Priority::Online => 2,
        }
    }
}

pub(super) fn default_drain_grace() -> Span {
    Span::secs(10)
}

/// Rule checks for the policy of `services[index]`; `Err((field, reason))`.
pub(super) fn check(
    outlier: &OutlierSpec,
    circuit: &CircuitSpec,
    limits: &LimitsSpec,
) -> Result<(), (String, String)> {
    let fail = |field: &str, reason: &str| Err((field.to_string(), reason.to_string()));
    let ratio = |v: f64| (0.0..=1.0).contains(&v);
    if !ratio(outlier.failure_ratio) {
        return fail("outlier.failure_ratio", "must be between 0 and 1");
    }
    if !(outlier.deviation_factor >= 1.0 && outlier.deviation_factor.is_finite()) {
        return fail("outlier.deviation_factor", "must be at least 1");
    }
    if outlier.window.0.is_zero() {
        return fail("outlier.window", "must be longer than 0");
    }
    if outlier.base_ban.0.is_zero() {
        return fail("outlier.base_ban", "must be longer than 0");
    }
    if outlier.max_ban < outlier.base_ban {
        return fail("outlier.max_ban", "must be at least base_ban");
    }
    if outlier.max_banned_percent > 100 {
        return fail("outlier.max_banned_percent", "must be between 0 and 100");
    }
    if outlier.probe_timeout.0.is_zero() {
        return fail("outlier.probe_timeout", "must be longer than 0");
    }
    if !ratio(circuit.min_success_ratio) {
        return fail("circuit.min_success_ratio", "must be between 0 and 1");
    }
    if circuit.window.0.is_zero() {
        return fail("circuit.window", "must be longer than 0");
    }
    if circuit.cooldown.0.is_zero() {
        return fail("circuit.cooldown", "must be longer than 0");
    }
    if circuit.max_cooldown < circuit.cooldown {
        return fail("circuit.max_cooldown", "must be at least cooldown");
    }
    if !(1..=100).contains(&circuit.half_open_admit_percent) {
        return fail(
            "circuit.half_open_admit_percent",
            "must be between 1 and 100",
        );
    }
    if circuit.half_open_successes == 0 {
        return fail("circuit.half_open_successes", "must be at least 1");
    }
    for (field, value) in [
        ("limits.max_connections", limits.max_connections),
        (
            "limits.max_connections_per_caller",
            limits.max_connections_per_caller,
        ),
        ("limits.connect_rate", limits.connect_rate),
        ("limits.connect_burst", limits.connect_burst),
    ] {
        if value == Some(0) {
            return fail(field, "must be at least 1 (leave it out for no limit)");
        }
    }
    if limits.connect_burst.is_some() && limits.connect_rate.is_none() {
        return fail("limits.connect_burst", "needs limits.connect_rate");
    }
    Ok(())
}

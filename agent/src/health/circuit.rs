//! The per-service circuit breaker: when most connects to a service fail, stop sending them
//! (the kernel refuses at connect(), no timeout), then let a trickle through to find out when
//! it recovered.
//!
//! ```text
//!   Closed ──success ratio < min over window (≥ min_requests)──> Open
//!   Open ──cooldown elapsed──> HalfOpen (admits half_open_admit_percent)
//!   HalfOpen ──half_open_successes successes──> Closed (window cleared)
//!   HalfOpen ──any failure──> Open (cooldown doubled, up to max_cooldown)
//! ```
//! Each open in a streak doubles the cooldown; the streak (and the cooldown) goes back to
//! base once the circuit has stayed closed for a whole window.
//!
//! Only connects that reached a backend may be fed in. The mesh's own refusals (circuit open,
//! shed, denied, limited, injected faults) must never be recorded: they would hold the circuit
//! open by its own doing. Outcomes arriving while open (connects started before it opened) are
//! ignored. Queries take `now`, so an open circuit turns half-open by time alone; it trips
//! only on a batch that holds a failure (successes expiring from the window with no traffic
//! left to protect do not open it).

use std::time::Duration;

use tokio::time::Instant;

use super::window::{OutcomeWindow, Tally};

/// Parts per million: the unit of `admit_ppm` in the kernel's service entry.
pub(crate) const PPM: u32 = 1_000_000;

/// The `circuit:` block of a service's config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CircuitPolicy {
    /// Open when the success share over `window` falls below this; 0 disables the breaker.
    pub min_success_ratio: f64,
    pub window: Duration,
    pub min_requests: u64,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Share of connects admitted while half-open (clamped to 0..=100).
    pub half_open_admit_percent: u32,
    /// Successes while half-open that close the circuit (at least 1).
    pub half_open_successes: u32,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            min_success_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            half_open_admit_percent: 10,
            half_open_successes: 5,
        }
    }
}

impl CircuitPolicy {
    /// Cooldown of the `opens`-th open in a streak (0-based): doubling, within
    /// `cooldown..=max(cooldown, max_cooldown)`.
    pub(crate) fn cooldown_for(&self, opens: u32) -> Duration {
        let factor = 1u128 << opens.min(64);
        let nanos = self.cooldown.as_nanos().saturating_mul(factor);
        let max = self.max_cooldown.max(self.cooldown).as_nanos();
        Duration::from_nanos(nanos.min(max).min(u128::from(u64::MAX)) as u64)
    }
}

/// `sockmesh_circuit_state{service}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub(crate) fn as_gauge(&self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { since: Instant },
    Open { until: Instant },
    HalfOpen { successes: u32 },
}

/// One service's circuit.
#[derive(Debug, Clone)]
pub(crate) struct Circuit {
    policy: CircuitPolicy,
    window: OutcomeWindow,
    phase: Phase,
    /// Opens in the current streak; picks the next cooldown.
    opens: u32,
}

impl Circuit {
    pub(crate) fn new(now: Instant, policy: CircuitPolicy) -> Self {
        Self {
            window: OutcomeWindow::new(now, policy.window),
            policy,
            phase: Phase::Closed { since: now },
            opens: 0,
        }
    }

    pub(crate) fn policy(&self) -> &CircuitPolicy {
        &self.policy
    }

    #[cfg(test)]
    pub(crate) fn record_success(&mut self, now: Instant) {
        self.record(now, 1, 0);
    }

    #[cfg(test)]
    pub(crate) fn record_failure(&mut self, now: Instant) {
        self.record(now, 0, 1);
    }

    /// Outcomes of connects that reached a backend (never the mesh's own refusals). In a batch
    /// the order is unknown, so while half-open any failure in it re-opens the circuit.
    pub(crate) fn record(&mut self, now: Instant, successes: u64, failures: u64) {
        self.advance(now);
        match self.phase {
            Phase::Open { .. } => {}
            Phase::HalfOpen { successes: seen } => {
                if failures > 0 {
                    self.open(now);
                    return;
                }
                let seen = u64::from(seen).saturating_add(successes);
                if seen >= u64::from(self.policy.half_open_successes.max(1)) {
                    self.phase = Phase::Closed { since: now };
                    self.window.clear();
                } else {
                    self.phase = Phase::HalfOpen {
                        successes: seen as u32,
                    };
                }
            }
            Phase::Closed { .. } => {
                let batch = Tally {
                    attempts: successes.saturating_add(failures),
                    failures,
                    ..Tally::default()
                };
                self.window.record(now, &batch);
                let totals = self.window.totals(now);
                let enough = totals.attempts > 0 && totals.attempts >= self.policy.min_requests;
                let ratio = totals.success_ratio().unwrap_or(1.0);
                if failures > 0 && enough && ratio < self.policy.min_success_ratio {
                    self.open(now);
                }
            }
        }
    }

    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { until } if now < until => CircuitState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Share of connects the kernel admits, in ppm: all when closed, the half-open share,
    /// none when open.
    pub(crate) fn admit_ppm(&self, now: Instant) -> u32 {
        match self.state(now) {
            CircuitState::Closed => PPM,
            CircuitState::HalfOpen => self.policy.half_open_admit_percent.min(100) * (PPM / 100),
            CircuitState::Open => 0,
        }
    }

    /// When an open circuit turns half-open (the engine's next wake-up), if it is open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    #[cfg(test)]
    /// The cooldown the next open would get.
    pub(crate) fn next_cooldown(&self, now: Instant) -> Duration {
        self.policy.cooldown_for(self.opens_at(now))
    }

    fn open(&mut self, now: Instant) {
        let cooldown = self.policy.cooldown_for(self.opens);
        self.opens = self.opens.saturating_add(1);
        self.phase = Phase::Open {
            until: now + cooldown,
        };
    }

    fn opens_at(&self, now: Instant) -> u32 {
        match self.phase {
            Phase::Closed { since }
                if now.saturating_duration_since(since) >= self.policy.window =>
            {
                0
            }
            _ => self.opens,
        }
    }

    /// Time-driven transitions: open → half-open at `until`; a full window closed ends the
    /// streak of opens.
    fn advance(&mut self, now: Instant) {
        self.opens = self.opens_at(now);
        if matches!(self.phase, Phase::Open { until } if now >= until) {
            self.phase = Phase::HalfOpen { successes: 0 };
        }
    }
}

#[cfg(test)]
mod tests;

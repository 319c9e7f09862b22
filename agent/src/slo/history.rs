//! How many good and total events an SLO saw, over any recent window, in bounded memory.
//!
//! Three rings of time buckets share one origin, so their boundaries line up:
//! 10 s buckets for the last hour (the 5m, 30m and 1h burn windows), 1 min buckets for the
//! last 6 h (the 6h burn window), and 1 h buckets for the SLO window (the error budget),
//! capped at [`MAX_BUDGET_SPAN`]. Every event is added to all three. A ring only stores
//! buckets that saw traffic, so a quiet SLO costs nothing and a busy one at most
//! 360 + 360 + 2,160 buckets of 24 bytes.
//!
//! A window of `W` read at `now` sums the `n = ceil(W / width)` newest buckets of the finest
//! ring that reaches back `W`, the current (partial) one included: an event counts from the
//! moment it is recorded until its bucket is `n` buckets old, i.e. for between `W - width`
//! and `W`. An event exactly `W` before `now` (on a bucket boundary) is out.
//!
//! Time is always passed in, so the history is deterministic under test.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Width of the buckets behind the short burn windows (5m, 30m, 1h).
pub(crate) const FINE_WIDTH: Duration = Duration::from_secs(10);
/// Width of the buckets behind the 6h burn window.
pub(crate) const MEDIUM_WIDTH: Duration = Duration::from_secs(60);
/// Width of the buckets behind the error budget: an hour in a 30-day window is 0.14 %.
pub(crate) const COARSE_WIDTH: Duration = Duration::from_secs(3600);
const FINE_SPAN: Duration = Duration::from_secs(3600);
const MEDIUM_SPAN: Duration = Duration::from_secs(6 * 3600);
/// Longest stretch the error budget looks back: 90 days covers monthly and quarterly SLO
/// windows. A longer window is computed over its last 90 days (memory stays bounded).
pub(crate) const MAX_BUDGET_SPAN: Duration = Duration::from_secs(90 * 86_400);

/// Good and total events over some stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    pub(crate) fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }

    fn add(&mut self, other: Counts) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
    }
}

/// (bad/total) / (1 - objective): how fast the budget burns, 1.0 being "exactly spent at the
/// end of the SLO window". 0 without traffic: no events burn nothing.
pub(crate) fn burn_rate(counts: Counts, objective: f64) -> f64 {
    if counts.total == 0 {
        return 0.0;
    }
    (counts.bad() as f64 / counts.total as f64) / (1.0 - objective)
}

/// 1 - burn rate over the SLO window: the share of the error budget left, 1 without traffic,
/// negative once overspent.
pub(crate) fn budget_remaining(counts: Counts, objective: f64) -> f64 {
    1.0 - burn_rate(counts, objective)
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which bucket width since the origin this holds.
    epoch: u64,
    counts: Counts,
}

/// Buckets of one width, oldest first, only those with traffic and at most `retention` old.
#[derive(Debug, Clone)]
struct Ring {
    width_ns: u64,
    retention: u64,
    buckets: VecDeque<Bucket>,
}

impl Ring {
    fn new(width: Duration, retention: u64) -> Self {
        Self {
            width_ns: width.as_nanos() as u64,
            retention: retention.max(1),
            buckets: VecDeque::new(),
        }
    }

    fn span(&self) -> Duration {
        Duration::from_nanos(self.width_ns.saturating_mul(self.retention))
    }

    fn epoch(&self, since_origin: Duration) -> u64 {
        (since_origin.as_nanos() / u128::from(self.width_ns)).min(u128::from(u64::MAX)) as u64
    }

    fn record(&mut self, since_origin: Duration, counts: Counts) {
        let epoch = self.epoch(since_origin);
        match self.buckets.back_mut() {
            // A `now` older than the newest bucket (never from a monotonic clock) joins that
            // bucket rather than reopening the past.
            Some(last) if last.epoch >= epoch => last.counts.add(counts),
            _ => self.buckets.push_back(Bucket { epoch, counts }),
        }
        let newest = self.buckets.back().map_or(epoch, |b| b.epoch);
        while let Some(first) = self.buckets.front() {
            if newest - first.epoch < self.retention {
                break;
            }
            self.buckets.pop_front();
        }
    }

    /// Sum of the `n` newest bucket epochs ending at the one holding `since_origin`.
    fn sum(&self, since_origin: Duration, n: u64) -> Counts {
        let current = self.epoch(since_origin);
        let mut sum = Counts::default();
        for b in self.buckets.iter().rev() {
            if b.epoch > current {
                continue;
            }
            if current - b.epoch >= n {
                break;
            }
            sum.add(b.counts);
        }
        sum
    }
}

/// The event history of one SLO.
#[derive(Debug, Clone)]
pub(crate) struct History {
    origin: Instant,
    rings: [Ring; 3],
    /// Everything ever recorded, for the `_total` counters.
    cumulative: Counts,
}

impl History {
    /// An empty history starting at `now`, keeping enough coarse buckets for `slo_window`.
    pub(crate) fn new(now: Instant, slo_window: Duration) -> Self {
        let retention = |span: Duration, width: Duration| span.as_nanos() / width.as_nanos();
        let mut history = Self {
            origin: now,
            rings: [
                Ring::new(FINE_WIDTH, retention(FINE_SPAN, FINE_WIDTH) as u64),
                Ring::new(MEDIUM_WIDTH, retention(MEDIUM_SPAN, MEDIUM_WIDTH) as u64),
                Ring::new(COARSE_WIDTH, 1),
            ],
            cumulative: Counts::default(),
        };
        history.set_slo_window(slo_window);
        history
    }

    /// The SLO's window changed: keep what is recorded, retain as much as the new one needs.
    pub(crate) fn set_slo_window(&mut self, slo_window: Duration) {
        let span = slo_window.min(MAX_BUDGET_SPAN);
        self.rings[2].retention = span.as_nanos().div_ceil(COARSE_WIDTH.as_nanos()).max(1) as u64;
    }

    /// Adds `good` of `total` events at `now`.
    pub(crate) fn record(&mut self, now: Instant, good: u64, total: u64) {
        let counts = Counts {
            good: good.min(total),
            total,
        };
        let since = now.saturating_duration_since(self.origin);
        for ring in &mut self.rings {
            ring.record(since, counts);
        }
        self.cumulative.add(counts);
    }

    /// Everything recorded since the history began.
    pub(crate) fn cumulative(&self) -> Counts {
        self.cumulative
    }

    /// Counts over the window of `window` ending at `now` (see the module docs for edges).
    pub(crate) fn counts(&self, now: Instant, window: Duration) -> Counts {
        let ring = self
            .rings
            .iter()
            .find(|r| r.span() >= window)
            .unwrap_or(&self.rings[2]);
        let n = window
            .as_nanos()
            .div_ceil(u128::from(ring.width_ns))
            .clamp(1, u128::from(ring.retention)) as u64;
        ring.sum(now.saturating_duration_since(self.origin), n)
    }

    /// Burn rate over the `window` ending at `now`.
    pub(crate) fn burn_rate(&self, now: Instant, window: Duration, objective: f64) -> f64 {
        burn_rate(self.counts(now, window), objective)
    }

    /// Error budget left over the SLO window ending at `now` (or since the history began,
    /// when that is shorter).
    pub(crate) fn budget_remaining(
        &self,
        now: Instant,
        objective: f64,
        slo_window: Duration,
    ) -> f64 {
        budget_remaining(self.counts(now, slo_window), objective)
    }

    #[cfg(test)]
    pub(crate) fn stored_buckets(&self) -> usize {
        self.rings.iter().map(|r| r.buckets.len()).sum()
    }
}

#[cfg(test)]
mod tests;

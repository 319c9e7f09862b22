//! A sliding time window of connect outcomes, kept as a ring of buckets.
//!
//! Outcomes land in the bucket of the instant they are recorded; a bucket is reused (and
//! cleared) once the ring wraps around to it. A read sums the buckets of the last `window`.
//! Bucketing trades precision for a fixed memory and O(buckets) reads, like Envoy's and
//! linkerd's windows: an outcome counts for longer than `window - window / buckets` and
//! never longer than `window`.
//!
//! Time is always passed in (`now`), so the window is deterministic under paused time.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window unless the caller asks otherwise: a tenth of the window is the
/// largest error, good enough for ban and circuit decisions over seconds.
pub(crate) const DEFAULT_BUCKETS: u32 = 10;

/// Counts over some stretch of time; also what one batch of kernel counters adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Connects that reached a backend (mesh-own refusals never count).
    pub attempts: u64,
    /// Of those, the ones that failed (refused, timed out, reset before established).
    pub failures: u64,
    /// Successful connects that carried a handshake latency.
    pub latency_samples: u64,
    pub latency_sum: Duration,
}

impl Tally {
    /// One successful connect, with its handshake latency when the kernel measured it.
    #[cfg(test)]
    pub(crate) fn success(handshake: Option<Duration>) -> Self {
        Self {
            attempts: 1,
            failures: 0,
            latency_samples: u64::from(handshake.is_some()),
            latency_sum: handshake.unwrap_or_default(),
        }
    }

    /// One failed connect.
    #[cfg(test)]
    pub(crate) fn failure() -> Self {
        Self {
            attempts: 1,
            failures: 1,
            ..Self::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn successes(&self) -> u64 {
        self.attempts.saturating_sub(self.failures)
    }

    /// Share of attempts that failed; `None` without attempts.
    pub(crate) fn failure_ratio(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.failures.min(self.attempts) as f64 / self.attempts as f64)
    }

    /// Share of attempts that succeeded; `None` without attempts.
    pub(crate) fn success_ratio(&self) -> Option<f64> {
        self.failure_ratio().map(|f| 1.0 - f)
    }

    /// Mean handshake latency; `None` without samples.
    pub(crate) fn mean_latency(&self) -> Option<Duration> {
        let n = u32::try_from(self.latency_samples).unwrap_or(u32::MAX);
        (n > 0).then(|| self.latency_sum / n)
    }

    fn add(&mut self, other: &Tally) {
        self.attempts = self.attempts.saturating_add(other.attempts);
        self.failures = self.failures.saturating_add(other.failures);
        self.latency_samples = self.latency_samples.saturating_add(other.latency_samples);
        self.latency_sum = self.latency_sum.saturating_add(other.latency_sum);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket width since `origin` this holds; stale once the ring moved past it.
    epoch: u64,
    tally: Tally,
}

/// Connect outcomes over the last `window`.
#[derive(Debug, Clone)]
pub(crate) struct OutcomeWindow {
    origin: Instant,
    width_ns: u64,
    buckets: Vec<Bucket>,
}

impl OutcomeWindow {
    /// A window of `window` split into [`DEFAULT_BUCKETS`] buckets, starting empty at `now`.
    pub(crate) fn new(now: Instant, window: Duration) -> Self {
        Self::with_buckets(now, window, DEFAULT_BUCKETS)
    }

    /// `buckets` is clamped to at least 1; a zero-length window behaves as 1 ns per bucket.
    pub(crate) fn with_buckets(now: Instant, window: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let width_ns = (window.as_nanos() / u128::from(buckets)).clamp(1, u128::from(u64::MAX));
        Self {
            origin: now,
            width_ns: width_ns as u64,
            buckets: vec![Bucket::default(); buckets as usize],
        }
    }

    #[cfg(test)]
    /// The stretch actually covered: `buckets × width` (≤ the requested window).
    pub(crate) fn window(&self) -> Duration {
        Duration::from_nanos(self.width_ns.saturating_mul(self.buckets.len() as u64))
    }

    #[cfg(test)]
    pub(crate) fn record_success(&mut self, now: Instant, handshake: Option<Duration>) {
        self.record(now, &Tally::success(handshake));
    }

    #[cfg(test)]
    pub(crate) fn record_failure(&mut self, now: Instant) {
        self.record(now, &Tally::failure());
    }

    /// Adds a batch (e.g. one read of the kernel's counters) at `now`. A batch older than
    /// the window relative to what is already recorded is dropped: it would count for no time.
    pub(crate) fn record(&mut self, now: Instant, tally: &Tally) {
        let epoch = self.epoch(now);
        let n = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(epoch % n) as usize];
        if bucket.epoch < epoch {
            *bucket = Bucket {
                epoch,
                tally: Tally::default(),
            };
        } else if bucket.epoch > epoch {
            return;
        }
        bucket.tally.add(tally);
    }

    /// Totals of the buckets inside the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> Tally {
        let current = self.epoch(now);
        let n = self.buckets.len() as u64;
        let mut sum = Tally::default();
        for b in &self.buckets {
            if b.epoch <= current && current - b.epoch < n {
                sum.add(&b.tally);
            }
        }
        sum
    }

    /// Forgets everything (a circuit that closes starts from a clean slate).
    pub(crate) fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        (since / u128::from(self.width_ns)).min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_then_expires() {
        let t0 = Instant::now();
        let mut w = OutcomeWindow::new(t0, Duration::from_secs(10));
        w.record_success(t0, Some(ms(2)));
        w.record_success(t0 + ms(500), Some(ms(4)));
        w.record_failure(t0 + ms(1500));
        let t = w.totals(t0 + ms(1500));
        assert_eq!((t.attempts, t.failures, t.successes()), (3, 1, 2));
        assert_eq!(t.mean_latency(), Some(ms(3)));
        assert_eq!(t.failure_ratio(), Some(1.0 / 3.0));
        // The first bucket (0..1s) leaves the window at 10s, the second at 11s.
        assert_eq!(w.totals(t0 + ms(9_999)).attempts, 3);
        assert_eq!(w.totals(t0 + ms(10_000)).attempts, 1);
        assert_eq!(w.totals(t0 + ms(10_999)).attempts, 1);
        assert_eq!(w.totals(t0 + ms(11_000)), Tally::default());
    }

    #[test]
    fn reused_bucket_starts_clean() {
        let t0 = Instant::now();
        let mut w = OutcomeWindow::with_buckets(t0, Duration::from_secs(4), 4);
        w.record_failure(t0);
        w.record_success(t0 + ms(4_000), None);
        let t = w.totals(t0 + ms(4_000));
        assert_eq!((t.attempts, t.failures), (1, 0));
        assert_eq!(t.mean_latency(), None);
    }

    #[test]
    fn late_batch_older_than_the_ring_is_dropped() {
        let t0 = Instant::now();
        let mut w = OutcomeWindow::with_buckets(t0, Duration::from_secs(4), 4);
        w.record_success(t0 + ms(4_500), None);
        w.record_failure(t0 + ms(500));
        assert_eq!(w.totals(t0 + ms(4_500)).failures, 0);
        assert_eq!(w.totals(t0 + ms(4_500)).attempts, 1);
    }

    #[test]
    fn empty_and_degenerate_windows() {
        let t0 = Instant::now();
        let mut w = OutcomeWindow::with_buckets(t0, Duration::ZERO, 0);
        assert_eq!(w.totals(t0).failure_ratio(), None);
        w.record_failure(t0);
        assert_eq!(w.totals(t0).attempts, 1);
        assert_eq!(w.totals(t0 + Duration::from_nanos(1)).attempts, 0);
        w.clear();
        assert_eq!(w.totals(t0), Tally::default());
    }

    #[test]
    fn batches_add_up() {
        let t0 = Instant::now();
        let mut w = OutcomeWindow::new(t0, Duration::from_secs(1));
        let batch = Tally {
            attempts: 10,
            failures: 4,
            latency_samples: 6,
            latency_sum: ms(60),
        };
        w.record(t0, &batch);
        w.record(t0 + ms(10), &batch);
        let t = w.totals(t0 + ms(10));
        assert_eq!((t.attempts, t.failures, t.successes()), (20, 8, 12));
        assert_eq!(t.mean_latency(), Some(ms(10)));
        assert_eq!(t.success_ratio(), Some(0.6));
    }

    proptest! {
        /// Against a plain list of timestamped outcomes: the window counts everything younger
        /// than `window - width` and nothing older than `window`.
        #[test]
        fn matches_reference_within_one_bucket(
            buckets in 1u32..12,
            window_ms in 1u64..5_000,
            steps in prop::collection::vec((0u64..1_500, any::<bool>()), 1..200),
        ) {
            let t0 = Instant::now();
            let mut w = OutcomeWindow::with_buckets(t0, ms(window_ms), buckets);
            let window = w.window();
            let width = window / buckets;
            let mut log: Vec<(Instant, bool)> = Vec::new();
            let mut now = t0;
            for (advance, failed) in steps {
                now += ms(advance);
                if failed { w.record_failure(now) } else { w.record_success(now, None) }
                log.push((now, failed));
                let got = w.totals(now);
                let younger = |limit: Duration| log.iter().filter(move |(t, _)| now - *t < limit);
                let (lo, hi) = (younger(window - width).count(), younger(window).count());
                prop_assert!(lo as u64 <= got.attempts && got.attempts <= hi as u64,
                    "{lo} <= {} <= {hi}", got.attempts);
                let lo_f = younger(window - width).filter(|(_, f)| *f).count() as u64;
                let hi_f = younger(window).filter(|(_, f)| *f).count() as u64;
                prop_assert!(lo_f <= got.failures && got.failures <= hi_f);
                prop_assert!(got.failures <= got.attempts);
            }
        }
    }
}

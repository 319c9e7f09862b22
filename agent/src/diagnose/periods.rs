//! "This period against the one before", in bounded memory: tallies kept in 10 s buckets for
//! the last ten minutes.
//!
//! The SLO [`History`](crate::slo::history::History) counts good and total events; the line
//! view and diagnosis need richer tallies (handshake sums, retransmits, run-queue waits), so
//! the buckets here hold any [`Tally`]. Like the SLO history, a window of `n` buckets read at
//! `now` sums the bucket holding `now` (partial) and the `n - 1` before it, so "the last
//! 5 min" covers between 290 and 300 seconds; only buckets that saw something are stored.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(10);
/// Buckets kept: two 5-minute periods (the line view's "last" and "previous"), which also
/// covers diagnosis (the last minute and the five before it).
pub(crate) const RETAINED: u64 = 60;

/// Something that adds up: counts, sums of durations.
pub(crate) trait Tally: Default + Clone {
    fn add(&mut self, other: &Self);
}

/// Bucket numbers since a fixed origin, shared by every [`Periods`] of one recorder so their
/// boundaries line up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new(origin: Instant) -> Self {
        Self { origin }
    }

    /// How long the recorder has been recording at `now`.
    pub(crate) fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// The bucket holding `now`.
    pub(crate) fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / BUCKET.as_nanos()).min(u128::from(u64::MAX)) as u64
    }
}

/// Buckets of one tally, oldest first, only those with something in them.
#[derive(Debug, Clone)]
pub(crate) struct Periods<T> {
    buckets: VecDeque<(u64, T)>,
}

impl<T> Default for Periods<T> {
    fn default() -> Self {
        Self {
            buckets: VecDeque::new(),
        }
    }
}

impl<T: Tally> Periods<T> {
    /// Adds to the bucket `epoch` (an epoch older than the newest bucket joins the newest:
    /// a monotonic clock never goes back), and forgets buckets older than [`RETAINED`].
    pub(crate) fn record(&mut self, epoch: u64, f: impl FnOnce(&mut T)) {
        match self.buckets.back_mut() {
            Some((last, tally)) if *last >= epoch => f(tally),
            _ => {
                let mut tally = T::default();
                f(&mut tally);
                self.buckets.push_back((epoch, tally));
            }
        }
        self.trim(epoch);
    }

    fn trim(&mut self, current: u64) {
        while let Some((first, _)) = self.buckets.front() {
            if current.saturating_sub(*first) < RETAINED {
                break;
            }
            self.buckets.pop_front();
        }
    }

    /// The sum of the `n` buckets that end `skip` buckets before the one holding `current`:
    /// `sum(e, 0, 30)` is the last 5 min, `sum(e, 30, 30)` the 5 min before.
    pub(crate) fn sum(&self, current: u64, skip: u64, n: u64) -> T {
        let mut out = T::default();
        for (epoch, tally) in self.buckets.iter().rev() {
            let age = match current.checked_sub(*epoch) {
                Some(age) => age,
                None => continue,
            };
            if age < skip {
                continue;
            }
            if age >= skip + n {
                break;
            }
            out.add(tally);
        }
        out
    }

    /// Nothing left within the retention at `current`: the entry can go.
    pub(crate) fn is_stale(&self, current: u64) -> bool {
        self.buckets
            .back()
            .is_none_or(|(last, _)| current.saturating_sub(*last) >= RETAINED)
    }

    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Count(u64);

    impl Tally for Count {
        fn add(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    fn add(p: &mut Periods<Count>, epoch: u64, n: u64) {
        p.record(epoch, |c| c.0 += n);
    }

    #[test]
    fn splits_last_and_previous_periods_at_bucket_edges() {
        let mut p = Periods::default();
        add(&mut p, 0, 1); // 59 buckets before epoch 59: in "previous"
        add(&mut p, 29, 10); // 30 before: first bucket of "previous"
        add(&mut p, 30, 100); // 29 before: oldest bucket of "last"
        add(&mut p, 59, 1000); // current
        assert_eq!(p.sum(59, 0, 30), Count(1100));
        assert_eq!(p.sum(59, 30, 30), Count(11));
        // One bucket later the oldest event has aged out of "previous".
        assert_eq!(p.sum(60, 30, 30), Count(110));
        assert_eq!(p.sum(60, 0, 30), Count(1000));
    }

    #[test]
    fn keeps_at_most_the_retained_buckets() {
        let mut p = Periods::default();
        for e in 0..500 {
            add(&mut p, e, 1);
        }
        assert_eq!(p.stored(), RETAINED as usize);
        assert_eq!(p.sum(499, 0, RETAINED), Count(RETAINED));
        assert!(!p.is_stale(499 + RETAINED - 1));
        assert!(p.is_stale(499 + RETAINED));
        assert!(Periods::<Count>::default().is_stale(0));
    }

    #[test]
    fn a_late_epoch_joins_the_newest_bucket_and_future_buckets_are_skipped() {
        let mut p = Periods::default();
        add(&mut p, 10, 1);
        add(&mut p, 9, 1);
        assert_eq!(p.stored(), 1);
        assert_eq!(p.sum(10, 0, 1), Count(2));
        assert_eq!(p.sum(9, 0, 5), Count(0), "a bucket newer than `current`");
    }

    #[test]
    fn clock_counts_whole_buckets() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        assert_eq!(c.epoch(t0), 0);
        assert_eq!(c.epoch(t0 + Duration::from_millis(9_999)), 0);
        assert_eq!(c.epoch(t0 + BUCKET), 1);
        assert_eq!(c.epoch(t0 - Duration::from_secs(1)), 0, "before the origin");
    }
}

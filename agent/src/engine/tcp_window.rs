//! One backend's kernel TCP counters over the outlier window, fed only when they change.
//!
//! The signals read a backend's counters only when it had traffic (or at a scrape), so the
//! engine sees a backend's samples at its changes, not once a second: an idle mesh of
//! 100,000 backends then costs nothing here. The rates are the same as those of a sample
//! taken every second: a counter's value at any moment is that of its last change, so the
//! start of the window is the last sample at or before `now - window` (or the first sample,
//! while the history is shorter than the window). The test below checks that against a
//! sampler reading every second.

use std::{collections::VecDeque, time::Duration};

use sockmesh_common::BackendTcpStats;
use tokio::time::Instant;

/// The counters detection reads, at one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    established: u64,
    retransmits: u64,
    srtt_sum_us: u64,
    srtt_count: u64,
}

impl From<&BackendTcpStats> for Counters {
    fn from(s: &BackendTcpStats) -> Self {
        Self {
            established: s.established,
            retransmits: s.retransmits,
            srtt_sum_us: s.srtt_sum_us,
            srtt_count: s.srtt_count,
        }
    }
}

/// Changes of one backend's counters, oldest first; at most one older than the window.
#[derive(Debug, Default)]
pub(crate) struct TcpWindow {
    samples: VecDeque<(Instant, Counters)>,
}

impl TcpWindow {
    /// The backend's counters read at `now` are `after`; `before` is what they were at the
    /// read before (unknown for a pair read for the first time). Returns true when rates
    /// over the window may have changed (the counters moved since the last known value).
    pub(crate) fn record(
        &mut self,
        now: Instant,
        window: Duration,
        before: Option<&BackendTcpStats>,
        after: &BackendTcpStats,
    ) -> bool {
        let after = Counters::from(after);
        if self.samples.is_empty() {
            // The first thing known about this backend: the value before the change is the
            // starting point (a first read only sets it, as its counters may hold hours of
            // history, or a previous agent's).
            match before {
                Some(b) => self.samples.push_back((now, Counters::from(b))),
                None => {
                    self.samples.push_back((now, after));
                    return false;
                }
            }
        }
        let changed = self.samples.back().is_some_and(|(_, last)| *last != after);
        if changed {
            self.samples.push_back((now, after));
        }
        self.prune(now, window);
        changed
    }

    /// Drops samples before the one that stands for the window's start.
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= window)
        {
            self.samples.pop_front();
        }
    }

    /// (retransmits per connection, mean srtt µs) over the window ending at `now`.
    ///
    /// The kernel samples srtt per connection, not per ACK (`RTT_SAMPLES_PER_CONN` callbacks,
    /// then once at close), so the mean weighs connections alike: a bulk connection cannot
    /// outvote a hundred short ones. A window in which no connection of the backend was
    /// sampled (only long-lived connections past their samples) has no srtt mean: the
    /// deviation rule then leaves the backend out of the srtt comparison instead of judging
    /// it on a stale value.
    pub(crate) fn rates(&self, now: Instant, window: Duration) -> (Option<f64>, Option<f64>) {
        let Some((_, last)) = self.samples.back() else {
            return (None, None);
        };
        let first = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= window)
            .or(self.samples.front())
            .map(|(_, c)| *c)
            .expect("not empty");
        let conns = last.established.saturating_sub(first.established);
        let rtts = last.srtt_count.saturating_sub(first.srtt_count);
        let retrans = last.retransmits.saturating_sub(first.retransmits);
        let rate = (conns > 0).then(|| retrans as f64 / conns as f64);
        let srtt = (rtts > 0)
            .then(|| last.srtt_sum_us.saturating_sub(first.srtt_sum_us) as f64 / rtts as f64);
        (rate, srtt)
    }

    /// Samples held (bounded by the changes within one window, plus one).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler this replaces: a sample every read, those older than the window dropped,
    /// rates from the oldest kept to the newest.
    #[derive(Default)]
    struct EverySecond(VecDeque<(Instant, Counters)>);

    impl EverySecond {
        fn record(&mut self, now: Instant, window: Duration, s: &BackendTcpStats) {
            self.0.push_back((now, Counters::from(s)));
            while self
                .0
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
            {
                self.0.pop_front();
            }
        }

        fn rates(&self) -> (Option<f64>, Option<f64>) {
            let (Some((_, first)), Some((_, last))) = (self.0.front(), self.0.back()) else {
                return (None, None);
            };
            let conns = last.established - first.established;
            let rtts = last.srtt_count - first.srtt_count;
            (
                (conns > 0).then(|| (last.retransmits - first.retransmits) as f64 / conns as f64),
                (rtts > 0).then(|| (last.srtt_sum_us - first.srtt_sum_us) as f64 / rtts as f64),
            )
        }
    }

    /// A small deterministic generator (no dependency needed for one test).
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[tokio::test(start_paused = true)]
    async fn changes_only_give_the_rates_of_a_read_every_second() {
        let window = Duration::from_secs(10);
        for mut seed in 1..40u64 {
            let mut reference = EverySecond::default();
            let mut sparse = TcpWindow::default();
            let mut counters = BackendTcpStats::ZERO;
            counters.established = seed * 100; // history from before the agent
            let mut last_read: Option<BackendTcpStats> = None;
            for second in 0..120 {
                // Bursts of traffic, then quiet spells longer than the window.
                if (second / 15) % 2 == 0 && next(&mut seed).is_multiple_of(3) {
                    counters.established += next(&mut seed) % 5;
                    counters.retransmits += next(&mut seed) % 3;
                    let n = next(&mut seed) % 4;
                    counters.srtt_count += n;
                    counters.srtt_sum_us += n * (100 + next(&mut seed) % 900);
                }
                let now = Instant::now();
                reference.record(now, window, &counters);
                // The signals report a pair on its first read and when it changed.
                if last_read.is_none_or(|l| Counters::from(&l) != Counters::from(&counters)) {
                    sparse.record(now, window, last_read.as_ref(), &counters);
                    last_read = Some(counters);
                }
                assert_eq!(
                    sparse.rates(now, window),
                    reference.rates(),
                    "seed {seed}, second {second}"
                );
                assert!(sparse.len() <= 12, "bounded by the window's changes");
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_first_seen_at_a_change_starts_from_the_value_before_it() {
        let window = Duration::from_secs(10);
        let mut w = TcpWindow::default();
        let mut before = BackendTcpStats::ZERO;
        before.established = 50;
        let mut after = before;
        after.established = 54;
        after.retransmits = 2;
        assert!(w.record(Instant::now(), window, Some(&before), &after));
        assert_eq!(w.rates(Instant::now(), window).0, Some(0.5));
        // Nothing new for a window: the change left it.
        tokio::time::advance(window).await;
        assert_eq!(w.rates(Instant::now(), window), (None, None));
        // A first read only sets the starting point.
        let mut fresh = TcpWindow::default();
        assert!(!fresh.record(Instant::now(), window, None, &after));
        assert_eq!(fresh.rates(Instant::now(), window), (None, None));
    }
}

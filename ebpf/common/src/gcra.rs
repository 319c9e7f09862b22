//! The kernel's connection-rate limiter: GCRA, the generic cell rate algorithm.
//!
//! A token bucket of `burst` tokens refilled at `rate` per second is equivalent to one number,
//! the "theoretical arrival time" (TAT): when the next connect would be on schedule if the
//! service were used at exactly its rate. A connect at `now` is admitted when scheduling it
//! keeps the TAT within `burst` intervals of now:
//!
//! ```text
//! new_tat = max(tat, now) + interval
//! admit  <=> new_tat - now <= burst_ns          (burst_ns = burst × interval)
//! ```
//!
//! One u64 per service fits an array map value updated with a compare-and-swap; a bucket
//! would need two fields (tokens, last refill) and a lock. The kernel reads the TAT, calls
//! [`gcra_admit`], and stores the new TAT with `__sync_val_compare_and_swap`, retrying (or
//! refusing) if another CPU moved it meanwhile.
//!
//! The TAT starts at 0, i.e. a full bucket. Arrivals with an older `now` than a previous one
//! (CPUs reading the clock in a different order than they update) are handled: the TAT is
//! already ahead of them and they are judged against it.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// The new TAT if a connect at `now_ns` is admitted, `None` if it is over the limit.
///
/// `interval_ns == 0` means no limit: everything is admitted and the TAT never moves past now.
#[inline(always)]
pub const fn gcra_admit(tat_ns: u64, now_ns: u64, interval_ns: u64, burst_ns: u64) -> Option<u64> {
    let start = if tat_ns > now_ns { tat_ns } else { now_ns };
    match start.checked_add(interval_ns) {
        Some(new_tat) if new_tat - now_ns <= burst_ns => Some(new_tat),
        _ => None,
    }
}

/// `(interval_ns, burst_ns)` for `rate_per_sec` connects per second with `burst` of slack.
///
/// The interval rounds up, so the limiter never admits more than the configured rate. A burst
/// of 0 counts as 1 (a bucket that holds no token admits nothing, which is not a rate). A rate
/// of 0 returns `(0, 0)`: no limit.
#[inline(always)]
pub const fn gcra_params(rate_per_sec: u32, burst: u32) -> (u64, u64) {
    if rate_per_sec == 0 {
        return (0, 0);
    }
    let interval = NS_PER_SEC.div_ceil(rate_per_sec as u64);
    let burst = if burst == 0 { 1 } else { burst as u64 };
    (interval, interval * burst)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A plain token bucket in integer nanoseconds of credit (one token = one interval),
    /// starting full: the reference GCRA must agree with decision for decision.
    struct Bucket {
        credit: u64,
        capacity: u64,
        cost: u64,
        last: u64,
    }

    impl Bucket {
        fn new(interval: u64, burst_ns: u64) -> Self {
            Self {
                credit: burst_ns,
                capacity: burst_ns,
                cost: interval,
                last: 0,
            }
        }

        fn admit(&mut self, now: u64) -> bool {
            let elapsed = now.saturating_sub(self.last);
            self.credit = self.credit.saturating_add(elapsed).min(self.capacity);
            self.last = self.last.max(now);
            if self.credit >= self.cost {
                self.credit -= self.cost;
                true
            } else {
                false
            }
        }
    }

    fn run(interval: u64, burst_ns: u64, arrivals: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        arrivals
            .iter()
            .map(|&now| match gcra_admit(tat, now, interval, burst_ns) {
                Some(t) => {
                    tat = t;
                    true
                }
                None => false,
            })
            .collect()
    }

    const _: () = assert!(matches!(gcra_params(500, 100), (2_000_000, 200_000_000)));
    const _: () = assert!(gcra_admit(0, 10, 5, 5).is_some());

    #[test]
    fn params() {
        assert_eq!(gcra_params(1, 1), (NS_PER_SEC, NS_PER_SEC));
        assert_eq!(gcra_params(3, 2), (333_333_334, 666_666_668));
        assert_eq!(gcra_params(7, 0), gcra_params(7, 1));
        assert_eq!(gcra_params(0, 9), (0, 0));
        assert_eq!(gcra_params(u32::MAX, u32::MAX).0, 1);
    }

    #[test]
    fn burst_then_steady_rate() {
        // 10/s, burst 3, starting at t = 1 s: three at once, then one per 100 ms.
        let (i, b) = gcra_params(10, 3);
        let t0 = NS_PER_SEC;
        let at = |ms: u64| t0 + ms * 1_000_000;
        let got = run(
            i,
            b,
            &[
                at(0),
                at(0),
                at(0),
                at(0),
                at(99),
                at(100),
                at(150),
                at(200),
            ],
        );
        assert_eq!(got, [true, true, true, false, false, true, false, true]);
    }

    #[test]
    fn idle_time_refills_at_most_the_burst() {
        let (i, b) = gcra_params(10, 2);
        let late = 3_600 * NS_PER_SEC;
        let got = run(i, b, &[late, late, late]);
        assert_eq!(got, [true, true, false]);
    }

    #[test]
    fn no_limit_and_clock_skew() {
        assert_eq!(gcra_admit(0, 5, 0, 0), Some(5));
        assert_eq!(gcra_admit(u64::MAX, 0, 0, 0), None);
        // An arrival stamped before the TAT's "now" is judged against the TAT.
        let (i, b) = gcra_params(10, 1);
        let tat = gcra_admit(0, NS_PER_SEC, i, b).unwrap();
        assert_eq!(gcra_admit(tat, NS_PER_SEC - 1, i, b), None);
        // Overflow at the end of time refuses instead of wrapping.
        assert_eq!(gcra_admit(u64::MAX - 1, u64::MAX - 1, 10, 100), None);
    }

    proptest! {
        #[test]
        fn agrees_with_a_token_bucket(
            rate in 1u32..10_000,
            burst in 0u32..50,
            gaps in prop::collection::vec(0u64..20_000_000, 1..300),
        ) {
            let (i, b) = gcra_params(rate, burst);
            let arrivals: Vec<u64> = gaps
                .iter()
                .scan(0u64, |t, g| { *t += g; Some(*t) })
                .collect();
            let mut bucket = Bucket::new(i, b);
            let expected: Vec<bool> = arrivals.iter().map(|&t| bucket.admit(t)).collect();
            prop_assert_eq!(run(i, b, &arrivals), expected);
        }

        /// Over any stretch, admissions never exceed the burst plus the rate times the time.
        #[test]
        fn never_exceeds_burst_plus_rate(
            rate in 1u32..10_000,
            burst in 1u32..50,
            gaps in prop::collection::vec(0u64..5_000_000, 1..300),
        ) {
            let (i, b) = gcra_params(rate, burst);
            let arrivals: Vec<u64> = gaps
                .iter()
                .scan(NS_PER_SEC, |t, g| { *t += g; Some(*t) })
                .collect();
            let admitted: Vec<u64> = arrivals
                .iter()
                .zip(run(i, b, &arrivals))
                .filter_map(|(t, ok)| ok.then_some(*t))
                .collect();
            for (k, first) in admitted.iter().enumerate() {
                for (n, last) in admitted[k..].iter().enumerate() {
                    let allowed = u64::from(burst) + (last - first) / i;
                    prop_assert!((n as u64) < allowed, "{} admitted in {} ns", n + 1, last - first);
                }
            }
        }
    }
}

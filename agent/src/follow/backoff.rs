//! Reconnect delays: exponential from `base`, capped, with jitter so a fleet that lost its
//! control plane together does not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// `seed` only picks the jitter sequence (any value but 0 works; 0 is replaced).
    pub(super) fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: seed.max(1),
        }
    }

    /// A seed that differs between processes and starts.
    pub(super) fn seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    }

    /// The next delay: half of `min(cap, base * 2^attempt)` fixed, the other half random
    /// ("equal jitter"), so the wait still grows while no two agents wait alike.
    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1).min(31);
        let half = exp / 2;
        let jitter = half.as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.next_random() % (jitter + 1)
        };
        half + Duration::from_nanos(extra)
    }

    /// After a success: the next failure waits `base` again.
    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// xorshift64*: plenty for jitter, and no dependency for it.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(5);

    #[test]
    fn grows_exponentially_within_jitter_and_stops_at_the_cap() {
        let mut b = Backoff::new(BASE, CAP, 42);
        for attempt in 0..40u32 {
            let exp = BASE
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(CAP);
            let d = b.next_delay();
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let delays = |seed| {
            let mut b = Backoff::new(BASE, CAP, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(delays(1), delays(2));
        assert_eq!(delays(7), delays(7));
    }
}

//! Accept errors: EMFILE/ENFILE (out of file descriptors), ENOBUFS, ENOMEM do not go away
//! by retrying at once, and a loop that retries at once spins a core and floods the log.
//! The loop waits 10 ms after the first failure, doubling to 1 s while they continue, and
//! back to nothing after an accept succeeds; it logs the first failure and then at most one
//! line every 10 s, saying how many failed since the last line.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) const FIRST_WAIT: Duration = Duration::from_millis(10);
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    /// The wait after the next failure; zero after a success.
    next: Duration,
    last_log: Option<Instant>,
    /// Failures since the last log line.
    unlogged: u64,
}

impl AcceptBackoff {
    /// One more failure at `now`: how long to wait, and `Some(failures since the last
    /// line)` when this one is to be logged.
    pub(crate) fn on_error(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let wait = if self.next.is_zero() {
            FIRST_WAIT
        } else {
            self.next
        };
        self.next = (wait * 2).min(MAX_WAIT);
        self.unlogged += 1;
        let log = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if !log {
            return (wait, None);
        }
        self.last_log = Some(now);
        (wait, Some(std::mem::take(&mut self.unlogged)))
    }

    pub(crate) fn on_success(&mut self) {
        self.next = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_the_cap_and_reset_after_a_success() {
        let mut b = AcceptBackoff::default();
        let now = Instant::now();
        let waits: Vec<u64> = (0..10)
            .map(|_| b.on_error(now).0.as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.on_success();
        assert_eq!(b.on_error(now).0, FIRST_WAIT);
    }

    #[test]
    fn logs_the_first_failure_then_once_per_interval_with_the_count() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.on_error(t0).1, Some(1));
        for i in 1..100 {
            assert_eq!(b.on_error(t0 + Duration::from_millis(i * 50)).1, None);
        }
        // 99 failures since the first line, plus this one.
        assert_eq!(b.on_error(t0 + LOG_EVERY).1, Some(100));
        // A success does not reset the log interval: a flapping error stays rate-limited.
        b.on_success();
        assert_eq!(b.on_error(t0 + LOG_EVERY + FIRST_WAIT).1, None);
    }
}

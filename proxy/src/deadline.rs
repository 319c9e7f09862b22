//! Request deadlines: the service's `http.timeout`, shortened by what the caller says it has
//! left, and the time left passed on to the backend (UFC's idea of carrying the caller's
//! budget down the call chain).
//!
//! Two request headers carry a caller's remaining time:
//!
//! - `grpc-timeout` (gRPC over HTTP/2): 1 to 8 ASCII digits and one unit, `H` hours, `M`
//!   minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds (`250m`).
//! - [`SOCKMESH_TIMEOUT`], `x-sockmesh-timeout`, for any HTTP request: the same form
//!   (`250m`, `2S`), or 1 to 8 digits alone, read as milliseconds (`250`).
//!
//! The proxy passes the remaining time on in the header it came in (a gRPC request always
//! gets `grpc-timeout`; another request gets `x-sockmesh-timeout` when the caller sent one or
//! the service has a timeout), always in the unit form, truncated (never longer than what
//! is left). A value that does not parse is ignored (the service's timeout applies) and
//! counted by the server; it never fails the request.

use std::time::{Duration, Instant};

/// The HTTP/1.1 (and HTTP/2 non-gRPC) deadline header.
pub const SOCKMESH_TIMEOUT: &str = "x-sockmesh-timeout";
/// The gRPC deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Most digits a timeout value may have (gRPC's limit).
pub const MAX_DIGITS: usize = 8;

/// Why a timeout header was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("empty timeout value")]
    Empty,
    #[error("timeout value needs 1 to {MAX_DIGITS} digits")]
    Digits,
    #[error("unknown timeout unit (H, M, S, m, u or n)")]
    Unit,
    #[error("a timeout value needs a unit (H, M, S, m, u or n)")]
    NoUnit,
}

/// The units, finest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    parse(value, false)
}

/// Parses an `x-sockmesh-timeout` value (the gRPC form, or digits alone: milliseconds).
pub fn parse_sockmesh_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    parse(value, true)
}

fn parse(value: &[u8], bare_millis: bool) -> Result<Duration, TimeoutError> {
    let (&last, digits) = value.split_last().ok_or(TimeoutError::Empty)?;
    let (digits, unit_ns) = if last.is_ascii_digit() {
        if !bare_millis {
            return Err(TimeoutError::NoUnit);
        }
        (value, 1_000_000)
    } else {
        let (_, ns) = UNITS
            .iter()
            .find(|(u, _)| *u == last)
            .ok_or(TimeoutError::Unit)?;
        (digits, *ns)
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TimeoutError::Digits);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    // Up to 99,999,999 hours: 3.6e20 ns overflows u64, so whole seconds from `S` up.
    Ok(if unit_ns >= 1_000_000_000 {
        Duration::from_secs(n * (unit_ns / 1_000_000_000))
    } else {
        Duration::from_nanos(n * unit_ns)
    })
}

/// Formats a remaining time in the finest unit whose value fits in 8 digits, truncated, so
/// the value passed on is never longer than `d` (and shorter by less than a hundred
/// thousandth of it). `None` for zero: nothing is left to pass on. Times beyond the largest
/// value (99,999,999 hours) are sent as that value.
pub fn format_timeout(d: Duration) -> Option<String> {
    if d.is_zero() {
        return None;
    }
    let max = 10u128.pow(MAX_DIGITS as u32) - 1;
    let ns = d.as_nanos();
    let (unit, n) = UNITS
        .iter()
        .map(|&(u, len)| (u, ns / u128::from(len)))
        .find(|&(_, n)| n <= max)
        .unwrap_or((b'H', max));
    if n == 0 {
        return None;
    }
    Some(format!("{n}{}", unit as char))
}

/// One request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// When the proxy received the request.
    pub start: Instant,
    /// The whole budget from `start`: the service's timeout or the caller's, the shorter.
    pub budget: Duration,
}

impl Deadline {
    /// The request's deadline: `timeout` (the service's `http.timeout`), shortened to the
    /// caller's remaining time when it sent one.
    pub fn new(start: Instant, timeout: Duration, caller: Option<Duration>) -> Self {
        let budget = caller.map_or(timeout, |c| c.min(timeout));
        Self { start, budget }
    }

    /// Time left at `now`; `None` once it is spent.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let left = self
            .budget
            .checked_sub(now.saturating_duration_since(self.start))?;
        (!left.is_zero()).then_some(left)
    }

    /// The time one try may take from `now`: what is left, at most `per_try`.
    pub fn try_budget(&self, now: Instant, per_try: Option<Duration>) -> Option<Duration> {
        let left = self.remaining(now)?;
        Some(per_try.map_or(left, |p| p.min(left)))
    }

    /// The header value passed on with a try sent at `now`: the time the try may take (the
    /// time left, so minus what was spent in the proxy and on earlier tries, at most
    /// `per_try`), or `None` when none is left. The backend should not work on past it: the
    /// proxy will have given up.
    pub fn propagate(&self, now: Instant, per_try: Option<Duration>) -> Option<String> {
        self.try_budget(now, per_try).and_then(format_timeout)
    }
}

#[cfg(test)]
#[path = "deadline_tests.rs"]
mod tests;

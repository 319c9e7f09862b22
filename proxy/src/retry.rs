//! Retries: whether a failed try of a request is tried again, on another backend.
//!
//! [`decide`] applies, in order: the outcome must be one the service's `retries.on` names;
//! the method must be idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
//! unless `retry_non_idempotent`, except that an outcome where the request never reached the
//! application (`connect_failure`, `refused_stream`) is safe for every method; tries must
//! remain (`1 + attempts` in all); and the service's [`RetryBudget`] must allow one more
//! retry. The caller checks the request's deadline separately ([`crate::deadline`]).

use std::time::{Duration, Instant};

use http::Method;
use sockmesh_model::{RetryOn, RetrySpec};

/// How one try ended, as far as retries care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No connection to the backend (refused, timed out, unreachable).
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM, or a GOAWAY whose last stream id excludes the request.
    RefusedStream,
    /// The connection or stream was reset after the request was sent, before a response.
    Reset,
    /// The try ran out of `per_try_timeout`.
    PerTryTimeout,
    /// A response with this status.
    Status(u16),
}

impl Outcome {
    /// Whether `on` names this outcome.
    pub fn is_listed(self, on: &[RetryOn]) -> bool {
        on.iter().any(|&condition| match (condition, self) {
            (RetryOn::ConnectFailure, Outcome::ConnectFailure)
            | (RetryOn::RefusedStream, Outcome::RefusedStream)
            | (RetryOn::Reset, Outcome::Reset)
            | (RetryOn::PerTryTimeout, Outcome::PerTryTimeout) => true,
            (RetryOn::GatewayError, Outcome::Status(s)) => matches!(s, 502..=504),
            (RetryOn::Status5xx, Outcome::Status(s)) => (500..=599).contains(&s),
            (RetryOn::Status(want), Outcome::Status(s)) => want == s,
            _ => false,
        })
    }

    /// The request never reached the application, so trying it again cannot repeat an
    /// effect, whatever its method.
    pub fn never_processed(self) -> bool {
        matches!(self, Outcome::ConnectFailure | Outcome::RefusedStream)
    }

    /// The `reason` label of `sockmesh_request_retries_total`: a fixed set of seven.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::ConnectFailure => "connect_failure",
            Outcome::RefusedStream => "refused_stream",
            Outcome::Reset => "reset",
            Outcome::PerTryTimeout => "per_try_timeout",
            Outcome::Status(502..=504) => "gateway_error",
            Outcome::Status(500..=599) => "5xx",
            Outcome::Status(_) => "status",
        }
    }
}

/// RFC 9110 §9.2.2: the methods whose repetition has the effect of one request.
pub fn idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again (on another backend); counted under `reason`.
    Retry { reason: &'static str },
    /// Hand the outcome to the client.
    GiveUp(GiveUp),
}

/// Why a failed try is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// `retries.on` does not name the outcome.
    NotListed,
    /// The method is not idempotent and the request may have been processed.
    NotIdempotent,
    /// `1 + attempts` tries were made.
    Exhausted,
    /// The service's retry budget is spent.
    Budget,
}

/// Decides on the outcome of try number `tries` (1 for the first) of a `method` request; a
/// `Retry` has been withdrawn from `budget`.
pub fn decide(
    spec: &RetrySpec,
    method: &Method,
    outcome: Outcome,
    tries: u32,
    budget: &mut RetryBudget,
    now: Instant,
) -> Decision {
    if !outcome.is_listed(&spec.on) {
        return Decision::GiveUp(GiveUp::NotListed);
    }
    if !(spec.retry_non_idempotent || outcome.never_processed() || idempotent(method)) {
        return Decision::GiveUp(GiveUp::NotIdempotent);
    }
    if tries > spec.attempts {
        return Decision::GiveUp(GiveUp::Exhausted);
    }
    if !budget.try_withdraw(now) {
        return Decision::GiveUp(GiveUp::Budget);
    }
    Decision::Retry {
        reason: outcome.reason(),
    }
}

/// Buckets of the budget's sliding window, one per second.
const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);

/// Retries a service may make: over the last ten seconds, at most `percent` of its requests
/// plus `min_per_second` per second, so a quiet service can still retry (Linkerd's budget:
/// 20 %, 10 per second, 10 s). Requests are deposits, retries withdrawals; time is passed in.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    epoch: Instant,
    /// (second since `epoch`, requests, retries) per bucket, indexed by second % BUCKETS.
    buckets: [(u64, u64, u64); BUCKETS],
}

/// Linkerd's floor: a service with little traffic may still retry this often.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

impl RetryBudget {
    /// A budget whose window starts at `epoch` (times before it count as `epoch`).
    pub fn new(percent: u32, min_per_second: u32, epoch: Instant) -> Self {
        Self {
            percent,
            min_per_second,
            epoch,
            buckets: [(0, 0, 0); BUCKETS],
        }
    }

    /// Counts one request (first tries only; retries are withdrawals).
    pub fn deposit(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Takes one retry if the window allows it; `false` leaves the budget unchanged.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        if retries >= self.allowance(requests) {
            return false;
        }
        self.bucket(now).2 += 1;
        true
    }

    /// Retries the window allows for `requests` requests in it.
    pub fn allowance(&self, requests: u64) -> u64 {
        requests * u64::from(self.percent) / 100 + u64::from(self.min_per_second) * BUCKETS as u64
    }

    /// (requests, retries) over the window ending at `now`.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let second = self.second(now);
        self.buckets
            .iter()
            .filter(|b| b.0 + BUCKETS as u64 > second && b.0 <= second)
            .fold((0, 0), |(q, r), b| (q + b.1, r + b.2))
    }

    fn second(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / BUCKET.as_nanos()) as u64
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let second = self.second(now);
        let bucket = &mut self.buckets[(second % BUCKETS as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0, 0);
        }
        bucket
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn spec(on: &[RetryOn], attempts: u32, non_idempotent: bool) -> RetrySpec {
    RetrySpec {
        attempts,
        on: on.to_vec(),
        budget_percent: 20,
        retry_non_idempotent: non_idempotent,
    }
}

fn roomy(t0: Instant) -> RetryBudget {
    RetryBudget::new(100, 1_000, t0)
}

#[test]
fn outcomes_are_classified_against_the_on_list() {
    use Outcome::*;
    let on = [RetryOn::GatewayError];
    assert!(Status(502).is_listed(&on) && Status(504).is_listed(&on));
    assert!(!Status(500).is_listed(&on) && !Reset.is_listed(&on));
    let on = [RetryOn::Status5xx];
    assert!(Status(500).is_listed(&on) && Status(599).is_listed(&on));
    assert!(!Status(429).is_listed(&on) && !PerTryTimeout.is_listed(&on));
    let on = [RetryOn::Status(503), RetryOn::Status(429)];
    assert!(Status(503).is_listed(&on) && Status(429).is_listed(&on));
    assert!(!Status(502).is_listed(&on) && !ConnectFailure.is_listed(&on));
    for (outcome, condition) in [
        (ConnectFailure, RetryOn::ConnectFailure),
        (RefusedStream, RetryOn::RefusedStream),
        (Reset, RetryOn::Reset),
        (PerTryTimeout, RetryOn::PerTryTimeout),
    ] {
        assert!(outcome.is_listed(&[condition]), "{outcome:?}");
        assert!(!outcome.is_listed(&[RetryOn::Status5xx]), "{outcome:?}");
    }
    assert!(!Status(200).is_listed(&RetrySpec::default().on));
}

#[test]
fn idempotent_methods_follow_rfc_9110() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(
            idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
            "{m}"
        );
    }
    for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
        assert!(
            !idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
            "{m}"
        );
    }
}

#[test]
fn a_post_is_retried_only_when_configured_or_never_processed() {
    let t0 = Instant::now();
    let mut budget = roomy(t0);
    let on = [RetryOn::ConnectFailure, RetryOn::Status(503)];
    let strict = spec(&on, 2, false);
    let post = Method::POST;
    let got = decide(&strict, &post, Outcome::Status(503), 1, &mut budget, t0);
    assert_eq!(got, Decision::GiveUp(GiveUp::NotIdempotent));
    let got = decide(&strict, &post, Outcome::ConnectFailure, 1, &mut budget, t0);
    assert_eq!(
        got,
        Decision::Retry {
            reason: "connect_failure"
        }
    );
    let lax = spec(&on, 2, true);
    let got = decide(&lax, &post, Outcome::Status(503), 1, &mut budget, t0);
    assert_eq!(
        got,
        Decision::Retry {
            reason: "gateway_error"
        }
    );
    let got = decide(
        &strict,
        &Method::PUT,
        Outcome::Status(503),
        1,
        &mut budget,
        t0,
    );
    assert!(matches!(got, Decision::Retry { .. }));
}

#[test]
fn attempts_bound_the_tries() {
    let t0 = Instant::now();
    let mut budget = roomy(t0);
    let two = spec(&[RetryOn::Reset], 2, false);
    let get = Method::GET;
    for tries in 1..=2 {
        let got = decide(&two, &get, Outcome::Reset, tries, &mut budget, t0);
        assert_eq!(got, Decision::Retry { reason: "reset" }, "try {tries}");
    }
    let got = decide(&two, &get, Outcome::Reset, 3, &mut budget, t0);
    assert_eq!(got, Decision::GiveUp(GiveUp::Exhausted));
    let none = spec(&[RetryOn::Reset], 0, false);
    let got = decide(&none, &get, Outcome::Reset, 1, &mut budget, t0);
    assert_eq!(got, Decision::GiveUp(GiveUp::Exhausted));
    let got = decide(&two, &get, Outcome::Status(500), 1, &mut budget, t0);
    assert_eq!(got, Decision::GiveUp(GiveUp::NotListed));
}

#[test]
fn reasons_are_a_fixed_set() {
    let mut reasons: Vec<&str> = (0..=u16::MAX)
        .map(|s| Outcome::Status(s).reason())
        .chain(
            [
                Outcome::ConnectFailure,
                Outcome::RefusedStream,
                Outcome::Reset,
                Outcome::PerTryTimeout,
            ]
            .map(Outcome::reason),
        )
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), 7, "{reasons:?}");
}

#[test]
fn the_budget_allows_a_share_of_requests_plus_a_floor() {
    let t0 = Instant::now();
    let mut budget = RetryBudget::new(20, 1, t0);
    // A quiet service: the floor of 1/s over the 10 s window.
    let taken = (0..100).filter(|_| budget.try_withdraw(t0)).count();
    assert_eq!(taken, 10);
    // 500 requests allow 100 more.
    for _ in 0..500 {
        budget.deposit(t0);
    }
    let taken = (0..1000).filter(|_| budget.try_withdraw(t0)).count();
    assert_eq!(taken, 100);
    assert_eq!(budget.totals(t0), (500, 110));
    // The window slides: 10 s later all of it has expired and the floor is back.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(budget.totals(later), (0, 0));
    let taken = (0..100).filter(|_| budget.try_withdraw(later)).count();
    assert_eq!(taken, 10);
}

#[test]
fn a_spent_budget_stops_retries() {
    let t0 = Instant::now();
    let mut budget = RetryBudget::new(0, 0, t0);
    let all = spec(&[RetryOn::Status5xx], 5, true);
    let got = decide(&all, &Method::GET, Outcome::Status(500), 1, &mut budget, t0);
    assert_eq!(got, Decision::GiveUp(GiveUp::Budget));
    assert_eq!(
        budget.totals(t0),
        (0, 0),
        "a refused withdrawal is not counted"
    );
}

proptest! {
    /// Whatever the traffic (requests and retry attempts at increasing times), the window's
    /// totals are exact, a retry is taken only within the allowance of the requests in the
    /// window, and refused only when the allowance is used up.
    #[test]
    fn retries_never_exceed_the_budget(
        percent in 0u32..=100,
        floor in 0u32..5,
        events in proptest::collection::vec((any::<bool>(), 0u64..400), 1..400),
    ) {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(percent, floor, t0);
        let mut now = t0;
        let mut log: Vec<(u64, bool)> = Vec::new(); // (second, is_request) of what counted
        for (is_request, step_ms) in events {
            now += Duration::from_millis(step_ms);
            let second = (now - t0).as_secs();
            let taken = if is_request {
                budget.deposit(now);
                log.push((second, true));
                false
            } else {
                let taken = budget.try_withdraw(now);
                if taken {
                    log.push((second, false));
                }
                taken
            };
            let window = log.iter().filter(|(s, _)| s + 10 > second);
            let (q, r) = window.fold((0u64, 0u64), |(q, r), &(_, req)| {
                if req { (q + 1, r) } else { (q, r + 1) }
            });
            prop_assert_eq!(budget.totals(now), (q, r));
            // Checked when a retry is taken: earlier retries may outlive the requests that
            // allowed them in a sliding window, but none is taken beyond the allowance.
            if taken {
                prop_assert!(r <= q * u64::from(percent) / 100 + u64::from(floor) * 10);
            } else if !is_request {
                prop_assert!(r >= q * u64::from(percent) / 100 + u64::from(floor) * 10);
            }
        }
    }
}

//! The request ban rule: runs of failed tries, one suggestion per run, resets.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use proptest::prelude::*;

use super::*;
use crate::report::Try;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request whose tries ended with `outcomes` on `backends`; the last one answered when it
/// got a status.
fn report(tries: &[(u16, Outcome)]) -> Report {
    let last = tries.last().copied();
    let backend = match last {
        Some((port, Outcome::Status(_))) => Some(addr(port)),
        _ => None,
    };
    let status = match last {
        Some((_, Outcome::Status(s))) => s,
        _ => 502,
    };
    Report {
        service: "shop".into(),
        caller: None,
        backend,
        status: StatusCode::from_u16(status).unwrap(),
        code: Code::http(status),
        duration: Duration::from_millis(1),
        tries: tries
            .iter()
            .map(|&(port, outcome)| Try {
                backend: addr(port),
                outcome,
                elapsed: Duration::from_millis(1),
            })
            .collect(),
        retries: Vec::new(),
    }
}

fn suggested(port: u16) -> BanSuggestion {
    BanSuggestion {
        service: "shop".into(),
        backend: addr(port),
        reason: RequestBanReason::Consecutive5xx,
    }
}

#[test]
fn a_run_reaching_the_threshold_is_suggested_once() {
    let mut rule = RequestOutliers::new();
    let s503 = Outcome::Status(503);
    assert!(rule.observe(&report(&[(1, s503)]), 3).is_empty());
    assert!(rule
        .observe(&report(&[(1, Outcome::ConnectFailure)]), 3)
        .is_empty());
    assert_eq!(
        rule.observe(&report(&[(1, Outcome::PerTryTimeout)]), 3),
        [suggested(1)]
    );
    // The run goes on: no second suggestion.
    assert!(rule
        .observe(&report(&[(1, Outcome::Status(500))]), 3)
        .is_empty());
    assert_eq!(rule.failures("shop", addr(1)), 4);
    // A success ends it; the next run of three is suggested again.
    assert!(rule
        .observe(&report(&[(1, Outcome::Status(200))]), 3)
        .is_empty());
    assert_eq!(rule.failures("shop", addr(1)), 0);
    for _ in 0..2 {
        assert!(rule.observe(&report(&[(1, s503)]), 3).is_empty());
    }
    assert_eq!(rule.observe(&report(&[(1, s503)]), 3), [suggested(1)]);
}

#[test]
fn every_try_counts_on_its_own_backend() {
    let mut rule = RequestOutliers::new();
    // Backend 1 fails twice per request (retried on 2, which answers).
    let tries = [
        (1, Outcome::Reset),
        (1, Outcome::Status(502)),
        (2, Outcome::Status(200)),
    ];
    assert!(rule.observe(&report(&tries), 3).is_empty());
    assert_eq!(rule.failures("shop", addr(1)), 2);
    assert_eq!(rule.observe(&report(&tries), 3), [suggested(1)]);
    assert_eq!(rule.failures("shop", addr(2)), 0);
    // Two backends can reach it in the same report.
    let mut rule = RequestOutliers::new();
    let both = [(1, Outcome::ConnectFailure), (2, Outcome::ConnectFailure)];
    assert_eq!(
        rule.observe(&report(&both), 1),
        [suggested(1), suggested(2)]
    );
}

#[test]
fn client_errors_succeed_and_refused_streams_are_no_evidence() {
    let mut rule = RequestOutliers::new();
    rule.observe(&report(&[(1, Outcome::Status(500))]), 2);
    rule.observe(&report(&[(1, Outcome::RefusedStream)]), 2);
    assert_eq!(rule.failures("shop", addr(1)), 1, "refused: the run stays");
    rule.observe(&report(&[(1, Outcome::Status(404))]), 2);
    assert_eq!(
        rule.failures("shop", addr(1)),
        0,
        "a 404 is the backend answering"
    );
}

#[test]
fn grpc_server_errors_of_the_answered_try_are_failures() {
    let mut rule = RequestOutliers::new();
    let mut r = report(&[(1, Outcome::Status(200))]);
    r.code = Code::grpc(Some(b"14"));
    assert_eq!(rule.observe(&r, 1), [suggested(1)]);
    r.code = Code::grpc(Some(b"5"));
    assert!(rule.observe(&r, 1).is_empty());
    assert_eq!(
        rule.failures("shop", addr(1)),
        0,
        "NOT_FOUND is the caller's"
    );
    // An earlier try's 200 is not the answered response: the gRPC code is not its.
    let mut r = report(&[(2, Outcome::Status(200)), (1, Outcome::Status(200))]);
    r.code = Code::grpc(Some(b"13"));
    rule.observe(&r, 5);
    assert_eq!(rule.failures("shop", addr(2)), 0);
    assert_eq!(rule.failures("shop", addr(1)), 1);
}

#[test]
fn zero_disables_and_unbanned_starts_over() {
    let mut rule = RequestOutliers::new();
    for _ in 0..10 {
        assert!(rule
            .observe(&report(&[(1, Outcome::Status(503))]), 0)
            .is_empty());
    }
    // Counted all along: a threshold set now applies to the run under way.
    assert_eq!(
        rule.observe(&report(&[(1, Outcome::Status(503))]), 5),
        [suggested(1)]
    );
    assert!(rule
        .observe(&report(&[(1, Outcome::Status(503))]), 5)
        .is_empty());
    rule.unbanned("shop", addr(1));
    assert_eq!(rule.failures("shop", addr(1)), 0);
    for _ in 0..4 {
        assert!(rule
            .observe(&report(&[(1, Outcome::Status(503))]), 5)
            .is_empty());
    }
    assert_eq!(
        rule.observe(&report(&[(1, Outcome::Status(503))]), 5),
        [suggested(1)]
    );
}

#[test]
fn services_keep_their_own_runs() {
    let mut rule = RequestOutliers::new();
    rule.observe(&report(&[(1, Outcome::Status(503))]), 2);
    let mut other = report(&[(1, Outcome::Status(503))]);
    other.service = "cart".into();
    assert!(rule.observe(&other, 2).is_empty());
    assert_eq!(rule.failures("shop", addr(1)), 1);
    assert_eq!(rule.failures("cart", addr(1)), 1);
}

/// One event of the property test: a request's tries, or an unban.
#[derive(Debug, Clone)]
enum Event {
    Request(Vec<(u16, Outcome)>),
    Unbanned(u16),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::ConnectFailure),
        Just(Outcome::RefusedStream),
        Just(Outcome::Reset),
        Just(Outcome::PerTryTimeout),
        prop::sample::select(vec![200u16, 204, 404, 429, 500, 502, 503, 504])
            .prop_map(Outcome::Status),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => prop::collection::vec((1u16..=3, outcome()), 1..4).prop_map(Event::Request),
        1 => (1u16..=3).prop_map(Event::Unbanned),
    ]
}

proptest! {
    /// Against a model that splits each backend's history into runs (failures between
    /// successes or unbans): a suggestion comes exactly when a run reaches the threshold,
    /// never for a shorter run, and exactly once per run that reaches it.
    #[test]
    fn one_suggestion_per_run_that_reaches_the_threshold(
        threshold in 1u32..5,
        events in prop::collection::vec(event(), 0..60),
    ) {
        let mut rule = RequestOutliers::new();
        let mut run: HashMap<u16, u32> = HashMap::new();
        let mut expected = 0usize;
        let mut got = 0usize;
        for event in &events {
            match event {
                Event::Unbanned(port) => {
                    rule.unbanned("shop", addr(*port));
                    run.remove(port);
                }
                Event::Request(tries) => {
                    let suggestions = rule.observe(&report(tries), threshold);
                    let mut due = Vec::new();
                    for &(port, outcome) in tries {
                        match verdict(outcome, None) {
                            Verdict::Failure => {
                                let n = run.entry(port).or_default();
                                *n += 1;
                                if *n == threshold {
                                    due.push(suggested(port));
                                }
                            }
                            Verdict::Success => {
                                run.remove(&port);
                            }
                            Verdict::Neither => {}
                        }
                    }
                    // Exactly the backends whose run reached the threshold with this
                    // report: none with a shorter run, none a second time in a run.
                    prop_assert_eq!(&suggestions, &due);
                    expected += due.len();
                    got += suggestions.len();
                }
            }
            for (&port, &n) in &run {
                prop_assert_eq!(rule.failures("shop", addr(port)), n);
            }
        }
        prop_assert_eq!(got, expected);
    }
}

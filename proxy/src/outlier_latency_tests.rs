//! The latency rule: smoothed per-try latency against the median of the other backends.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use proptest::prelude::*;

use super::*;
use crate::code::Code;
use crate::report::Try;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request answered by `port` after `ms`.
fn answered(port: u16, ms: u64) -> Report {
    tried(&[(port, Outcome::Status(200), ms)])
}

fn tried(tries: &[(u16, Outcome, u64)]) -> Report {
    Report {
        service: "shop".into(),
        caller: None,
        backend: tries.last().map(|t| addr(t.0)),
        status: StatusCode::OK,
        code: Code::http(200),
        duration: Duration::from_millis(tries.iter().map(|t| t.2).sum()),
        tries: tries
            .iter()
            .map(|&(port, outcome, ms)| Try {
                backend: addr(port),
                outcome,
                elapsed: Duration::from_millis(ms),
            })
            .collect(),
        retries: Vec::new(),
    }
}

fn slow(port: u16) -> BanSuggestion {
    BanSuggestion {
        service: "shop".into(),
        backend: addr(port),
        reason: RequestBanReason::DeviationLatency,
    }
}

/// Feeds `n` rounds of one answer per backend, with these latencies; the suggestions made.
fn rounds(rule: &mut LatencyOutliers, n: u32, latencies: &[(u16, u64)]) -> Vec<BanSuggestion> {
    let mut all = Vec::new();
    for _ in 0..n {
        for &(port, ms) in latencies {
            all.extend(rule.observe(&answered(port, ms)));
        }
    }
    all
}

#[test]
fn a_backend_far_slower_than_its_peers_is_suggested_once() {
    let mut rule = LatencyOutliers::new();
    let three = [(1, 10), (2, 12), (3, 50)];
    // Nothing is judged before MIN_SAMPLES.
    assert!(rounds(&mut rule, MIN_SAMPLES - 1, &three).is_empty());
    assert_eq!(rounds(&mut rule, 1, &three), [slow(3)]);
    assert!(
        rounds(&mut rule, 50, &three).is_empty(),
        "once while it deviates"
    );
    assert_eq!(rule.latency("shop", addr(3)).unwrap().1, MIN_SAMPLES + 50);
    // It recovers (the EWMA falls under 3 x 11 ms), then slows down again: a new suggestion.
    assert!(rounds(&mut rule, 30, &[(1, 10), (2, 12), (3, 11)]).is_empty());
    assert_eq!(rounds(&mut rule, 40, &three), [slow(3)]);
}

#[test]
fn the_backend_is_left_out_of_its_own_median() {
    // Two backends: with itself in the median, 50 ms could never be 3x (50 + 10) / 2.
    let mut rule = LatencyOutliers::new();
    assert_eq!(
        rounds(&mut rule, MIN_SAMPLES, &[(1, 10), (2, 50)]),
        [slow(2)]
    );
}

#[test]
fn no_peers_few_samples_or_small_numbers_never_deviate() {
    let mut rule = LatencyOutliers::new();
    assert!(rounds(&mut rule, 100, &[(1, 900)]).is_empty(), "alone");
    // Peers under MIN_SAMPLES do not count.
    assert!(rounds(&mut rule, MIN_SAMPLES - 1, &[(2, 1)]).is_empty());
    // Under the floor: 4 ms against 0 ms.
    let mut rule = LatencyOutliers::new();
    assert!(rounds(&mut rule, 100, &[(1, 0), (2, 4)]).is_empty());
}

#[test]
fn only_tries_that_timed_the_backend_are_samples() {
    let mut rule = LatencyOutliers::new();
    let r = tried(&[
        (1, Outcome::ConnectFailure, 900),
        (1, Outcome::Reset, 900),
        (1, Outcome::RefusedStream, 900),
        (1, Outcome::PerTryTimeout, 500),
        (2, Outcome::Status(503), 7),
    ]);
    assert!(rule.observe(&r).is_empty());
    assert_eq!(
        rule.latency("shop", addr(1)),
        Some((Duration::from_millis(500), 1))
    );
    assert_eq!(
        rule.latency("shop", addr(2)),
        Some((Duration::from_millis(7), 1))
    );
}

#[test]
fn unbanned_forgets_the_samples() {
    let mut rule = LatencyOutliers::new();
    assert_eq!(
        rounds(&mut rule, MIN_SAMPLES, &[(1, 10), (2, 10), (3, 90)]),
        [slow(3)]
    );
    rule.unbanned("shop", addr(3));
    assert_eq!(rule.latency("shop", addr(3)), None);
    assert!(rounds(&mut rule, MIN_SAMPLES - 1, &[(3, 90)]).is_empty());
    assert_eq!(rounds(&mut rule, 1, &[(3, 90)]), [slow(3)]);
}

#[test]
fn the_median_of_an_even_count_is_the_middle_mean() {
    assert_eq!(median(&mut []), None);
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
}

proptest! {
    /// Whatever the latencies: a suggested backend has MIN_SAMPLES, is above the floor and
    /// above DEVIATION_FACTOR x its peers' median at that moment, and is not suggested
    /// again until a report finds it not deviating.
    #[test]
    fn suggestions_only_for_judged_deviating_backends(
        scales in prop::array::uniform4(1u64..8),
        samples in prop::collection::vec((1u16..=4, 0u64..40), 0..300),
    ) {
        let mut rule = LatencyOutliers::new();
        let mut armed: HashMap<u16, bool> = HashMap::new();
        for (port, ms) in samples {
            // Each backend's own scale, so some backends really are several times slower.
            let ms = ms * scales[usize::from(port - 1)];
            let suggestions = rule.observe(&answered(port, ms));
            let (ewma, n) = rule.ewma("shop", addr(port)).unwrap();
            let mut peers: Vec<f64> = (1u16..=4)
                .filter(|&p| p != port)
                .filter_map(|p| rule.ewma("shop", addr(p)))
                .filter(|&(_, n)| n >= MIN_SAMPLES)
                .map(|(e, _)| e)
                .collect();
            let deviating = n >= MIN_SAMPLES
                && ewma > FLOOR.as_secs_f64()
                && median(&mut peers).is_some_and(|m| ewma > DEVIATION_FACTOR * m);
            let was_suggested = armed.get(&port).copied().unwrap_or(false);
            let expected = if deviating && !was_suggested { vec![slow(port)] } else { vec![] };
            prop_assert_eq!(suggestions, expected);
            armed.insert(port, deviating);
        }
    }
}

//! Outlier detection: unit tests per rule, and properties over random services.

use super::*;
use proptest::prelude::*;

fn healthy(id: u32) -> BackendSignals {
    BackendSignals {
        id,
        consecutive_failures: 0,
        attempts: 100,
        failures: 1,
        handshake_mean_ms: Some(2.0),
        srtt_mean_us: Some(2_000.0),
        retransmit_rate: Some(0.01),
    }
}

fn three_with(bad: BackendSignals) -> Vec<BackendSignals> {
    vec![healthy(1), healthy(2), bad]
}

#[test]
fn reason_labels() {
    let labels: Vec<_> = BanReason::ALL.iter().map(BanReason::as_str).collect();
    assert_eq!(
        labels,
        [
            "consecutive_failures",
            "failure_ratio",
            "deviation_failures",
            "deviation_latency",
            "deviation_srtt",
            "deviation_retransmits",
            "consecutive_5xx",
            "request_latency"
        ]
    );
}

#[test]
fn healthy_service_has_no_outliers() {
    let p = OutlierPolicy::default();
    assert!(detect(&p, &[healthy(1), healthy(2), healthy(3)]).is_empty());
    assert!(detect(&p, &[]).is_empty());
}

#[test]
fn consecutive_failures_need_no_volume() {
    let p = OutlierPolicy::default();
    let dead = BackendSignals {
        id: 9,
        consecutive_failures: 5,
        attempts: 5,
        failures: 5,
        ..Default::default()
    };
    assert_eq!(detect(&p, &[dead]), [(9, BanReason::ConsecutiveFailures)]);
    let almost = BackendSignals {
        consecutive_failures: 4,
        ..dead
    };
    assert!(detect(&p, &[almost]).is_empty());
    let off = OutlierPolicy {
        consecutive_failures: 0,
        ..p
    };
    assert!(detect(&off, &[dead]).is_empty());
}

#[test]
fn failure_ratio_needs_min_requests() {
    let p = OutlierPolicy::default();
    let flaky = BackendSignals {
        id: 3,
        attempts: 20,
        failures: 10,
        ..Default::default()
    };
    assert_eq!(detect(&p, &[flaky]), [(3, BanReason::FailureRatio)]);
    let thin = BackendSignals {
        attempts: 19,
        failures: 19,
        ..flaky
    };
    assert!(detect(&p, &[thin]).is_empty());
}

#[test]
fn one_bad_among_healthy_is_found_by_each_signal() {
    let p = OutlierPolicy::default();
    let cases = [
        (
            BackendSignals {
                failures: 20,
                ..healthy(3)
            },
            BanReason::DeviationFailures,
        ),
        (
            BackendSignals {
                handshake_mean_ms: Some(7.0),
                ..healthy(3)
            },
            BanReason::DeviationLatency,
        ),
        (
            BackendSignals {
                srtt_mean_us: Some(6_500.0),
                ..healthy(3)
            },
            BanReason::DeviationSrtt,
        ),
        (
            BackendSignals {
                retransmit_rate: Some(0.2),
                ..healthy(3)
            },
            BanReason::DeviationRetransmits,
        ),
    ];
    for (bad, reason) in cases {
        assert_eq!(detect(&p, &three_with(bad)), [(3, reason)], "{reason:?}");
    }
    // Exactly the factor is not "more than" the factor.
    let edge = BackendSignals {
        handshake_mean_ms: Some(6.0),
        ..healthy(3)
    };
    assert!(detect(&p, &three_with(edge)).is_empty());
}

#[test]
fn floors_keep_tiny_numbers_quiet() {
    let p = OutlierPolicy::default();
    let quiet = |f: fn(&mut BackendSignals)| {
        let mut v: Vec<_> = (1..=3).map(healthy).collect();
        v.iter_mut().for_each(|s| {
            s.failures = 0;
            s.handshake_mean_ms = Some(0.05);
            s.srtt_mean_us = Some(50.0);
            s.retransmit_rate = Some(0.0);
        });
        f(&mut v[2]);
        detect(&p, &v)
    };
    assert!(quiet(|s| s.failures = 5).is_empty()); // 5%: at the floor
    assert!(quiet(|s| s.handshake_mean_ms = Some(0.9)).is_empty());
    assert!(quiet(|s| s.srtt_mean_us = Some(900.0)).is_empty());
    assert!(quiet(|s| s.retransmit_rate = Some(0.05)).is_empty());
    assert_eq!(
        quiet(|s| s.failures = 6),
        [(3, BanReason::DeviationFailures)]
    );
}

#[test]
fn deviation_needs_enough_backends_with_volume() {
    let p = OutlierPolicy::default();
    let bad = BackendSignals {
        handshake_mean_ms: Some(50.0),
        ..healthy(3)
    };
    assert!(detect(&p, &[healthy(1), bad]).is_empty());
    let thin = BackendSignals {
        attempts: 10,
        ..healthy(2)
    };
    assert!(detect(&p, &[healthy(1), thin, bad]).is_empty());
    let no_signal = BackendSignals {
        handshake_mean_ms: None,
        ..healthy(2)
    };
    assert!(detect(&p, &[healthy(1), no_signal, bad]).is_empty());
    let thin_bad = BackendSignals {
        attempts: 19,
        ..bad
    };
    assert!(detect(&p, &three_with(thin_bad)).is_empty());
    let nan = BackendSignals {
        handshake_mean_ms: Some(f64::NAN),
        ..healthy(2)
    };
    assert!(detect(&p, &[healthy(1), nan, bad]).is_empty());
}

#[test]
fn first_rule_names_the_reason() {
    let p = OutlierPolicy::default();
    let worst = BackendSignals {
        consecutive_failures: 9,
        failures: 90,
        handshake_mean_ms: Some(100.0),
        ..healthy(3)
    };
    assert_eq!(
        detect(&p, &three_with(worst)),
        [(3, BanReason::ConsecutiveFailures)]
    );
    let ratio = BackendSignals {
        consecutive_failures: 0,
        ..worst
    };
    assert_eq!(
        detect(&p, &three_with(ratio)),
        [(3, BanReason::FailureRatio)]
    );
}

/// Values on a 1/4 grid and power-of-two attempts, so ratios and sums are exact and input
/// order cannot change a comparison.
fn signals() -> impl Strategy<Value = BackendSignals> {
    let value = prop::option::of((0u32..400).prop_map(|v| f64::from(v) / 4.0));
    (
        0u32..8,
        prop::sample::select(vec![0u64, 8, 16, 32, 64]),
        0u64..64,
        value.clone(),
        value.clone(),
        value,
    )
        .prop_map(
            |(consecutive_failures, attempts, failures, h, s, r)| BackendSignals {
                id: 0,
                consecutive_failures,
                attempts,
                failures: failures.min(attempts),
                handshake_mean_ms: h,
                srtt_mean_us: s.map(|v| v * 100.0),
                retransmit_rate: r.map(|v| v / 64.0),
            },
        )
}

fn with_ids(mut v: Vec<BackendSignals>) -> Vec<BackendSignals> {
    v.iter_mut().enumerate().for_each(|(i, s)| s.id = i as u32);
    v
}

proptest! {
    #[test]
    fn outliers_are_known_unique_and_order_free(
        v in prop::collection::vec(signals(), 0..12).prop_map(with_ids),
        rotate in 0usize..12,
    ) {
        let p = OutlierPolicy::default();
        let found = detect(&p, &v);
        let mut ids: Vec<u32> = found.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        prop_assert_eq!(ids.len(), found.len());
        prop_assert!(ids.iter().all(|id| (*id as usize) < v.len()));
        let mut rotated = v.clone();
        if !rotated.is_empty() {
            let k = rotate % rotated.len();
            rotated.rotate_left(k);
        }
        let mut a = found.clone();
        let mut b = detect(&p, &rotated);
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn thin_backends_are_only_banned_for_consecutive_failures(
        v in prop::collection::vec(signals(), 0..12).prop_map(with_ids),
    ) {
        let p = OutlierPolicy::default();
        for (id, reason) in detect(&p, &v) {
            let s = &v[id as usize];
            if s.attempts < p.min_requests {
                prop_assert_eq!(reason, BanReason::ConsecutiveFailures);
            }
        }
    }

    #[test]
    fn identical_backends_never_deviate(s in signals(), n in 0usize..10) {
        let p = OutlierPolicy { consecutive_failures: 0, failure_ratio: 1.1, ..Default::default() };
        let v = with_ids(vec![s; n]);
        prop_assert!(detect(&p, &v).is_empty());
    }
}

#[test]
fn failure_deviation_needs_a_few_real_failures() {
    // 2 failures in 50 attempts while the peers have none: a 4% blip, not an outlier.
    let blip = BackendSignals {
        id: 9,
        attempts: 50,
        failures: 2,
        ..healthy(9)
    };
    assert!(detect(&OutlierPolicy::default(), &three_with(blip)).is_empty());
    // 6 in 50 (12%) against peers at 0 is a real skew.
    let skewed = BackendSignals {
        id: 9,
        attempts: 50,
        failures: 6,
        ..healthy(9)
    };
    assert_eq!(
        detect(&OutlierPolicy::default(), &three_with(skewed)),
        vec![(9, BanReason::DeviationFailures)]
    );
}

//! Circuit breaker: the whole cycle under paused time, then properties over random outcome
//! and clock sequences.

use super::*;
use proptest::prelude::*;
use tokio::time::advance;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn now() -> Instant {
    Instant::now()
}

fn tripped() -> Circuit {
    let mut c = Circuit::new(now(), CircuitPolicy::default());
    c.record(now(), 0, 20);
    c
}

#[test]
fn labels_and_gauge() {
    let all = [
        CircuitState::Closed,
        CircuitState::HalfOpen,
        CircuitState::Open,
    ];
    assert_eq!(all.map(|s| s.as_gauge()), [0, 1, 2]);
    assert_eq!(all.map(|s| s.as_str()), ["closed", "half_open", "open"]);
}

#[test]
fn cooldowns_double_up_to_the_cap() {
    let p = CircuitPolicy::default();
    let got: Vec<u64> = (0..6).map(|n| p.cooldown_for(n).as_secs()).collect();
    assert_eq!(got, [5, 10, 20, 40, 60, 60]);
    assert_eq!(p.cooldown_for(u32::MAX), secs(60));
}

#[tokio::test(start_paused = true)]
async fn opens_only_with_volume_and_a_low_success_ratio() {
    let mut c = Circuit::new(now(), CircuitPolicy::default());
    c.record(now(), 0, 19);
    assert_eq!(c.state(now()), CircuitState::Closed);
    // 20 attempts, 10 successes: exactly the threshold is not below it.
    c.record(now(), 10, 0);
    assert_eq!(c.state(now()), CircuitState::Closed);
    c.record_failure(now());
    assert_eq!(c.state(now()), CircuitState::Open);
    assert_eq!(c.admit_ppm(now()), 0);
    assert_eq!(c.open_until(), Some(now() + secs(5)));

    // Old failures leave the window: the same burst later on does not trip alone.
    let mut c = Circuit::new(now(), CircuitPolicy::default());
    c.record(now(), 0, 15);
    advance(secs(11)).await;
    c.record(now(), 0, 10);
    assert_eq!(c.state(now()), CircuitState::Closed);

    // A zero threshold disables the breaker.
    let off = CircuitPolicy {
        min_success_ratio: 0.0,
        ..CircuitPolicy::default()
    };
    let mut c = Circuit::new(now(), off);
    c.record(now(), 0, 1_000);
    assert_eq!(c.state(now()), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn full_cycle_with_doubling_and_reset() {
    let mut c = tripped();
    // Outcomes of connects in flight while open are ignored.
    c.record(now(), 100, 0);
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(c.state(now()), CircuitState::Open);
    advance(Duration::from_millis(1)).await;
    assert_eq!(c.state(now()), CircuitState::HalfOpen);
    assert_eq!(c.admit_ppm(now()), 100_000);

    // A failure in half-open re-opens for twice as long.
    c.record_success(now());
    c.record_failure(now());
    assert_eq!(c.state(now()), CircuitState::Open);
    assert_eq!(c.open_until(), Some(now() + secs(10)));
    advance(secs(10)).await;

    // Five successes close it, with a clean window.
    for _ in 0..4 {
        c.record_success(now());
    }
    assert_eq!(c.state(now()), CircuitState::HalfOpen);
    c.record_success(now());
    assert_eq!(c.state(now()), CircuitState::Closed);
    assert_eq!(c.admit_ppm(now()), PPM);
    c.record(now(), 0, 19);
    assert_eq!(c.state(now()), CircuitState::Closed);

    // Tripping again before a whole closed window: the streak goes on (20 s).
    c.record_failure(now());
    assert_eq!(c.open_until(), Some(now() + secs(20)));
    advance(secs(20)).await;
    c.record(now(), 5, 0);
    assert_eq!(c.state(now()), CircuitState::Closed);
    assert_eq!(c.next_cooldown(now()), secs(40));

    // Closed for a whole window: back to the base cooldown.
    advance(secs(10)).await;
    assert_eq!(c.next_cooldown(now()), secs(5));
    c.record(now(), 0, 20);
    assert_eq!(c.open_until(), Some(now() + secs(5)));
}

#[tokio::test(start_paused = true)]
async fn batches_in_half_open() {
    let mut c = tripped();
    advance(secs(5)).await;
    c.record(now(), 10, 1);
    assert_eq!(c.state(now()), CircuitState::Open);
    advance(secs(10)).await;
    c.record(now(), 7, 0);
    assert_eq!(c.state(now()), CircuitState::Closed);
}

#[derive(Debug, Clone)]
enum Op {
    Record(u64, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..8, 0u64..8).prop_map(|(s, f)| Op::Record(s, f)),
        (0u64..15_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn admission_matches_state_and_transitions_are_earned(
        min_success_ratio in 0.0f64..1.0,
        min_requests in 0u64..30,
        half_open_successes in 1u32..8,
        admit in 0u32..=100,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let policy = CircuitPolicy {
            min_success_ratio,
            min_requests,
            half_open_successes,
            half_open_admit_percent: admit,
            ..CircuitPolicy::default()
        };
        let mut now = Instant::now();
        let mut c = Circuit::new(now, policy.clone());
        let mut half_open_successes_seen = 0u64;
        for op in ops {
            let before = c.state(now);
            let before_until = c.open_until();
            if let Op::Record(s, f) = op {
                c.record(now, s, f);
            } else if let Op::Advance(ms) = op {
                now += Duration::from_millis(ms);
            }
            let after = c.state(now);
            let expected = match after {
                CircuitState::Closed => PPM,
                CircuitState::HalfOpen => admit * 10_000,
                CircuitState::Open => 0,
            };
            prop_assert_eq!(c.admit_ppm(now), expected);
            match (before, after, &op) {
                (CircuitState::Open, CircuitState::Open, _) => {
                    prop_assert_eq!(c.open_until(), before_until);
                }
                (CircuitState::Open, CircuitState::HalfOpen, Op::Advance(_)) => {
                    prop_assert!(before_until.is_some_and(|u| now >= u));
                    half_open_successes_seen = 0;
                }
                (CircuitState::Closed | CircuitState::HalfOpen, CircuitState::Open, Op::Record(_, f)) => {
                    prop_assert!(*f > 0, "opened without a failure");
                    let d = c.open_until().unwrap() - now;
                    prop_assert!(d >= policy.cooldown && d <= policy.max_cooldown);
                }
                (CircuitState::HalfOpen, CircuitState::Closed, Op::Record(s, f)) => {
                    prop_assert_eq!(*f, 0);
                    prop_assert!(half_open_successes_seen + s >= u64::from(half_open_successes));
                }
                (CircuitState::HalfOpen, CircuitState::HalfOpen, Op::Record(s, _)) => {
                    half_open_successes_seen += s;
                }
                (CircuitState::Closed, CircuitState::Closed, _)
                | (CircuitState::HalfOpen, CircuitState::HalfOpen, Op::Advance(_)) => {}
                (b, a, op) => prop_assert!(false, "{:?} -> {:?} on {:?}", b, a, op),
            }
        }
    }
}

//! Bans: the whole cycle under paused time, then properties over random request, probe and
//! clock sequences.

use super::*;
use proptest::prelude::*;
use tokio::time::advance;

const R: BanReason = BanReason::ConsecutiveFailures;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn book() -> BanBook {
    BanBook::new(BanPolicy::default())
}

#[test]
fn durations_double_up_to_the_cap() {
    let p = BanPolicy::default();
    let got: Vec<u64> = (1..=9).map(|s| p.ban_duration(s).as_secs()).collect();
    assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(p.ban_duration(u32::MAX), secs(300));
    assert_eq!(p.ban_duration(0), secs(5));
}

#[test]
fn cap_is_a_floor_of_the_share() {
    let p = BanPolicy::default();
    assert_eq!([1, 2, 3, 4, 5].map(|n| p.cap(n)), [0, 1, 1, 2, 2]);
    let none = BanPolicy {
        max_banned_percent: 0,
        ..p.clone()
    };
    assert_eq!(none.cap(100), 0);
    let all = BanPolicy {
        max_banned_percent: 250,
        ..p
    };
    assert_eq!(all.cap(3), 3);
}

#[tokio::test(start_paused = true)]
async fn ban_probe_fail_reban_then_return() {
    let mut b = book();
    let t0 = Instant::now();
    assert_eq!(
        b.request_ban(t0, 7, R, 3),
        BanOutcome::Banned {
            until: t0 + secs(5)
        }
    );
    assert_eq!(b.request_ban(t0, 7, R, 3), BanOutcome::AlreadyBanned);
    assert_eq!(b.excluded(), BTreeSet::from([7]));
    assert_eq!(b.next_deadline(), Some(t0 + secs(5)));

    advance(Duration::from_millis(4_999)).await;
    assert!(b.due_probes(Instant::now()).is_empty());
    advance(Duration::from_millis(1)).await;
    assert_eq!(b.due_probes(Instant::now()), [7]);
    // Still excluded while probing, and the probe is not issued twice.
    assert!(b.is_excluded(7));
    assert!(b.due_probes(Instant::now()).is_empty());
    assert!(matches!(
        b.views()[..],
        [BanView {
            id: 7,
            exclusion: Exclusion::Probing { .. },
            streak: 1,
            ..
        }]
    ));

    let t1 = Instant::now();
    assert_eq!(
        b.probe_result(t1, 7, false),
        ProbeOutcome::Rebanned {
            until: t1 + secs(10)
        }
    );
    assert_eq!(b.probe_result(t1, 7, true), ProbeOutcome::Ignored);
    advance(secs(10)).await;
    assert_eq!(b.due_probes(Instant::now()), [7]);
    assert_eq!(
        b.probe_result(Instant::now(), 7, true),
        ProbeOutcome::Unbanned
    );
    assert!(b.excluded().is_empty());
    assert_eq!(b.next_deadline(), None);

    // Banned again soon after: the streak goes on (third ban: 20 s).
    advance(secs(59)).await;
    let t2 = Instant::now();
    assert_eq!(
        b.request_ban(t2, 7, BanReason::DeviationSrtt, 3),
        BanOutcome::Banned {
            until: t2 + secs(20)
        }
    );
    assert_eq!(b.bans_total_by_reason()[&R], 1);
    assert_eq!(b.bans_total_by_reason()[&BanReason::DeviationSrtt], 1);
    assert_eq!(b.bans_total_by_reason().len(), BanReason::ALL.len());
    assert_eq!(b.probe_failures_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn streak_resets_after_a_healthy_period() {
    let mut b = book();
    b.request_ban(Instant::now(), 1, R, 3);
    advance(secs(5)).await;
    b.due_probes(Instant::now());
    b.probe_result(Instant::now(), 1, true);
    advance(secs(60)).await;
    let t = Instant::now();
    assert_eq!(
        b.request_ban(t, 1, R, 3),
        BanOutcome::Banned { until: t + secs(5) }
    );
}

#[tokio::test(start_paused = true)]
async fn lost_probe_results_are_reissued() {
    let mut b = book();
    b.request_ban(Instant::now(), 4, R, 3);
    advance(secs(5)).await;
    assert_eq!(b.due_probes(Instant::now()), [4]);
    assert_eq!(b.next_deadline(), Some(Instant::now() + secs(1)));
    advance(Duration::from_millis(999)).await;
    assert!(b.due_probes(Instant::now()).is_empty());
    advance(Duration::from_millis(1)).await;
    assert_eq!(b.due_probes(Instant::now()), [4]);
    assert!(b.is_excluded(4));
}

#[tokio::test(start_paused = true)]
async fn cap_refuses_and_panics_until_outliers_fit_or_vanish() {
    // Two of three dead with a 50 % cap: only one banned, panic mode on.
    let mut b = book();
    let t = Instant::now();
    let out = b.evaluate(t, &[(1, R), (2, R)], 3);
    assert!(matches!(out[0], (1, BanOutcome::Banned { .. })));
    assert_eq!(out[1], (2, BanOutcome::Capped));
    assert!(b.panic_mode());
    assert_eq!(b.excluded(), BTreeSet::from([1]));
    // Still refused while 1 is probing.
    advance(secs(5)).await;
    b.due_probes(Instant::now());
    assert_eq!(
        b.evaluate(Instant::now(), &[(2, R)], 3),
        [(2, BanOutcome::Capped)]
    );
    assert!(b.panic_mode());
    // 1 returns: 2 fits now, panic clears.
    b.probe_result(Instant::now(), 1, true);
    assert!(matches!(
        b.evaluate(Instant::now(), &[(2, R)], 3)[..],
        [(2, BanOutcome::Banned { .. })]
    ));
    assert!(!b.panic_mode());
    // A round whose only outlier is already excluded leaves panic off.
    assert_eq!(
        b.evaluate(Instant::now(), &[(2, R)], 3),
        [(2, BanOutcome::AlreadyBanned)]
    );
    assert!(!b.panic_mode());
    // A zero cap never bans; a round without outliers clears panic.
    let mut never = BanBook::new(BanPolicy {
        max_banned_percent: 0,
        ..BanPolicy::default()
    });
    assert_eq!(never.request_ban(t, 1, R, 10), BanOutcome::Capped);
    assert!(never.panic_mode());
    never.evaluate(t, &[], 10);
    assert!(!never.panic_mode());
}

#[test]
fn forget_drops_a_removed_backend() {
    let mut b = book();
    let t = Instant::now();
    b.request_ban(t, 1, R, 2);
    b.forget(1);
    assert!(b.excluded().is_empty());
    assert_eq!(b.probe_result(t, 1, true), ProbeOutcome::Ignored);
    assert_eq!(b.due_probes(t + secs(600)), Vec::<u32>::new());
}

#[derive(Debug, Clone)]
enum Op {
    Request(u32),
    Advance(u64),
    /// Run due probes and report them: bit i of the mask is the i-th probe's result.
    Probes(u8),
    Probe(u32, bool),
    Forget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..6).prop_map(Op::Request),
        3 => (0u64..40_000).prop_map(Op::Advance),
        2 => any::<u8>().prop_map(Op::Probes),
        1 => (0u32..6, any::<bool>()).prop_map(|(id, ok)| Op::Probe(id, ok)),
        1 => (0u32..6).prop_map(Op::Forget),
    ]
}

proptest! {
    #[test]
    fn cap_probe_gate_and_doubling_hold(
        percent in 0u32..=100,
        base_ms in 1u64..10_000,
        max_factor in 1u64..100,
        ops in prop::collection::vec(op(), 1..150),
    ) {
        const TOTAL: usize = 6;
        let policy = BanPolicy {
            base_ban: Duration::from_millis(base_ms),
            max_ban: Duration::from_millis(base_ms * max_factor),
            reset_after: secs(60),
            max_banned_percent: percent,
            probe_timeout: Duration::from_millis(500),
        };
        let cap = policy.cap(TOTAL);
        let mut b = BanBook::new(policy.clone());
        let mut now = Instant::now();
        // Per backend: length of its last ban, and when it last came back.
        let mut last_ban: BTreeMap<u32, Duration> = BTreeMap::new();
        let mut unbanned_at: BTreeMap<u32, Instant> = BTreeMap::new();
        for op in ops {
            let before = b.excluded();
            let mut may_leave = BTreeSet::new();
            let mut new_bans: Vec<(u32, Instant, bool)> = Vec::new(); // (id, until, after probe)
            match op {
                Op::Request(id) => match b.request_ban(now, id, R, TOTAL) {
                    BanOutcome::Banned { until } => new_bans.push((id, until, false)),
                    BanOutcome::Capped => {
                        prop_assert!(before.len() >= cap && b.panic_mode());
                    }
                    BanOutcome::AlreadyBanned => prop_assert!(before.contains(&id)),
                },
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Probes(mask) => {
                    for (i, id) in b.due_probes(now).into_iter().enumerate() {
                        prop_assert!(before.contains(&id));
                        match b.probe_result(now, id, mask & (1 << (i % 8)) != 0) {
                            ProbeOutcome::Unbanned => { may_leave.insert(id); unbanned_at.insert(id, now); }
                            ProbeOutcome::Rebanned { until } => new_bans.push((id, until, true)),
                            ProbeOutcome::Ignored => prop_assert!(false, "issued probe ignored"),
                        }
                    }
                }
                Op::Probe(id, ok) => match b.probe_result(now, id, ok) {
                    ProbeOutcome::Unbanned => { may_leave.insert(id); unbanned_at.insert(id, now); }
                    ProbeOutcome::Rebanned { until } => new_bans.push((id, until, true)),
                    ProbeOutcome::Ignored => {}
                },
                Op::Forget(id) => {
                    b.forget(id);
                    may_leave.insert(id);
                    last_ban.remove(&id);
                    unbanned_at.remove(&id);
                }
            }
            let after = b.excluded();
            prop_assert!(after.len() <= cap, "{} excluded, cap {}", after.len(), cap);
            for id in before.difference(&after) {
                prop_assert!(may_leave.contains(id), "{} left without a passing probe", id);
            }
            for (id, until, after_probe) in new_bans {
                let d = until - now;
                prop_assert!(d <= policy.max_ban && d >= policy.base_ban.min(policy.max_ban));
                let same_streak = after_probe
                    || unbanned_at.get(&id).is_some_and(|t| now - *t < policy.reset_after);
                if let (true, Some(prev)) = (same_streak, last_ban.get(&id)) {
                    prop_assert!(d >= *prev, "ban shrank within a streak: {:?} < {:?}", d, prev);
                }
                last_ban.insert(id, d);
            }
        }
    }
}

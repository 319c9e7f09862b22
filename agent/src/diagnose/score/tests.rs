//! Each cause on hand-made signals, alone and mixed with others.

use super::*;

fn backend(addr: &str, ok: u64, refused: u64) -> BackendSignals {
    BackendSignals {
        addr: addr.to_owned(),
        recent: BackendWindow {
            ok,
            refused,
            connections: ok,
            ..BackendWindow::default()
        },
        ..BackendSignals::default()
    }
}

fn lossy(mut b: BackendSignals, retransmits: u64) -> BackendSignals {
    b.recent.retransmits = retransmits;
    b.recent.rtos = retransmits / 4;
    b
}

fn healthy_three() -> Vec<BackendSignals> {
    (2..5)
        .map(|i| backend(&format!("127.0.0.{i}:80"), 200, 0))
        .collect()
}

fn input(backends: Vec<BackendSignals>) -> DiagnoseInput {
    let attempts = backends.iter().map(|b| b.recent.attempts()).sum();
    DiagnoseInput {
        service: "web".into(),
        recent_secs: 60.0,
        baseline_secs: 300.0,
        backends,
        workloads: Vec::new(),
        refusals: Refusals {
            attempts,
            ..Refusals::default()
        },
        circuit: Some(CircuitNow {
            state: "closed".into(),
            panic_mode: false,
        }),
        slos: vec![SloBurn {
            slo: "availability".into(),
            sli: "connect_success".into(),
            burn_5m: 333.3,
            burn_1h: 40.0,
        }],
        requests: RequestSignals::default(),
    }
}

fn starved(name: &str, role: Role) -> WorkloadSignals {
    WorkloadSignals {
        name: name.into(),
        role,
        recent: CpuWindow {
            seconds: 60.0,
            waits: 2_000,
            wait_sum_us: 40_000_000,
            waits_over_1ms: 1_500,
            nr_throttled: 540,
            throttled_seconds: 50.0,
        },
        baseline: CpuWindow::default(),
    }
}

fn calm(name: &str) -> WorkloadSignals {
    WorkloadSignals {
        name: name.into(),
        role: Role::Caller,
        recent: CpuWindow {
            seconds: 60.0,
            waits: 5_000,
            wait_sum_us: 250_000,
            waits_over_1ms: 20,
            ..CpuWindow::default()
        },
        baseline: CpuWindow::default(),
    }
}

fn ranked(d: &Diagnosis) -> Vec<(&'static str, f64)> {
    d.causes.iter().map(|c| (c.cause, c.score)).collect()
}

fn cause<'a>(d: &'a Diagnosis, name: &str) -> &'a Cause {
    d.causes.iter().find(|c| c.cause == name).unwrap()
}

#[test]
fn healthy_service_has_no_clear_cause() {
    let mut i = input(healthy_three());
    i.workloads = vec![calm("front")];
    i.slos[0].burn_1h = 0.0;
    i.slos[0].burn_5m = 0.0;
    let d = diagnose(&i);
    assert!(d.causes.iter().all(|c| c.score == 0.0), "{:?}", ranked(&d));
    assert_eq!(d.summary, "web: no clear cause in the last 60 s");
    let cpu = cause(&d, "cpu_starvation");
    assert!(cpu.evidence[0].contains("front") && cpu.evidence[0].ends_with("not starved"));
}

#[test]
fn one_dead_backend_ranks_backends_failing_first_and_names_it() {
    let mut b = healthy_three();
    b[1] = backend("127.0.0.3:80", 0, 200);
    let d = diagnose(&input(b));
    assert_eq!(d.causes[0].cause, "backends_failing");
    assert_eq!(d.causes[0].score, 1.0, "one of three carries every failure");
    assert!(
        d.causes[1..].iter().all(|c| c.score == 0.0),
        "{:?}",
        ranked(&d)
    );
    assert_eq!(
        d.causes[0].evidence[0],
        "127.0.0.3:80: 200 of 200 connects failed in the last 60 s (refused 200)"
    );
    assert_eq!(
        d.summary,
        "web: most likely backends_failing (score 1.00) (SLO availability burning 40.0x over \
         1h, 333.3x over 5m): 127.0.0.3:80: 200 of 200 connects failed in the last 60 s \
         (refused 200)"
    );
}

#[test]
fn a_banned_backend_still_counts_once_traffic_has_moved_away() {
    let mut b = healthy_three();
    // Five refused connects got it banned; it has had no traffic since.
    b[1] = backend("127.0.0.3:80", 0, 5);
    b[1].ban = Some(BanNow {
        state: "banned".into(),
        reason: "consecutive_failures".into(),
    });
    let d = diagnose(&input(b));
    assert_eq!(d.causes[0].cause, "backends_failing");
    // 5 of 605 failed: severity 0.17; the ban alone says 0.8.
    assert_eq!(d.causes[0].score, 0.8);
    assert!(d.causes[0].evidence[0].ends_with("; banned (consecutive_failures)"));
}

#[test]
fn failures_on_every_backend_are_not_a_few_backends() {
    let b = (2..5)
        .map(|i| backend(&format!("127.0.0.{i}:80"), 50, 150))
        .collect();
    let d = diagnose(&input(b));
    assert_eq!(cause(&d, "backends_failing").score, 0.5);
}

#[test]
fn thin_failures_and_noise_score_nothing() {
    let mut b = healthy_three();
    b[0].recent.refused = 2;
    b[1].recent.refused = 2;
    b[2].recent.refused = 2;
    let d = diagnose(&input(b));
    let failing = cause(&d, "backends_failing");
    assert_eq!(failing.score, 0.0);
    assert!(failing.evidence[0].contains("spread thinly"), "{failing:?}");
}

#[test]
fn loss_on_all_backends_ranks_network_first() {
    let b = healthy_three().into_iter().map(|b| lossy(b, 400)).collect();
    let d = diagnose(&input(b));
    assert_eq!(ranked(&d)[0], ("network", 1.0));
    let net = &d.causes[0];
    assert_eq!(
        net.evidence[0],
        "packet loss on 3 of 3 backends with traffic in the last 60 s"
    );
    assert!(net.evidence[1].ends_with("2.0 per connection"), "{net:?}");
}

#[test]
fn loss_on_one_backend_is_not_the_network() {
    let mut b = healthy_three();
    b[0] = lossy(b[0].clone(), 400);
    let d = diagnose(&input(b));
    assert_eq!(cause(&d, "network").score, 0.13, "1/3 x 0.4");
    assert!(d.summary.contains("no clear cause"), "{}", d.summary);
}

#[test]
fn syn_timeouts_on_every_backend_are_network_more_than_backends() {
    let b = (2..5)
        .map(|i| {
            let mut b = backend(&format!("127.0.0.{i}:80"), 40, 0);
            b.recent.timeout = 60;
            b
        })
        .collect();
    let d = diagnose(&input(b));
    assert_eq!(ranked(&d)[0], ("network", 1.0));
    assert_eq!(cause(&d, "backends_failing").score, 0.5);
}

#[test]
fn chronic_loss_scores_less_than_new_loss() {
    let b = healthy_three()
        .into_iter()
        .map(|b| {
            let mut b = lossy(b, 400);
            b.baseline = b.recent.clone();
            b
        })
        .collect();
    let d = diagnose(&input(b));
    assert_eq!(ranked(&d)[0], ("network", 0.8));
    assert!(d.causes[0].evidence.last().unwrap().contains("not new"));
}

#[test]
fn a_throttled_caller_ranks_cpu_starvation_first() {
    let mut i = input(healthy_three());
    i.workloads = vec![calm("batch"), starved("front", Role::Caller)];
    let d = diagnose(&i);
    assert_eq!(ranked(&d)[0], ("cpu_starvation", 1.0));
    assert_eq!(
        d.causes[0].evidence[0],
        "caller workload front: 75% of 2000 run-queue waits over 1 ms (mean 20.00 ms), \
         throttled 540 times in 60 s observed (50.0 s summed over CPUs)"
    );
}

#[test]
fn runqueue_latency_alone_or_throttling_alone_is_starvation() {
    let mut w = starved("front", Role::Backend);
    w.recent.nr_throttled = 0;
    w.recent.throttled_seconds = 0.0;
    assert_eq!(w.recent.starvation(), 1.0, "mean 20 ms");
    w.recent.wait_sum_us = 1_500_000; // mean 0.75 ms, 75 % over 1 ms
    assert_eq!(w.recent.starvation(), 1.0);
    w.recent.waits_over_1ms = 200; // 10 %: (0.10 - 0.05) / 0.25
    assert!((w.recent.starvation() - 0.2).abs() < 1e-9);
    w.recent.waits = 10;
    assert_eq!(w.recent.starvation(), 0.0, "too few waits to judge");
    w.recent.nr_throttled = 3;
    w.recent.throttled_seconds = 7.5; // 12.5 % of 60 s
    assert!((w.recent.starvation() - 0.5).abs() < 1e-9);
}

#[test]
fn limits_refusing_connects_rank_overload_first() {
    let mut i = input(healthy_three());
    i.refusals.limited = 60;
    i.refusals.shed = 20;
    i.refusals.attempts += 80;
    let d = diagnose(&i);
    assert_eq!(ranked(&d)[0], ("overload", 1.0));
    assert!(d.causes[0].evidence[0].starts_with("limits refused 60 and shedding 20 of 680"));
}

#[test]
fn an_open_circuit_after_failures_leaves_backends_failing_first() {
    let mut b = healthy_three();
    b[0] = backend("127.0.0.2:80", 0, 60);
    b[1] = backend("127.0.0.3:80", 0, 60);
    let mut i = input(b);
    i.refusals.circuit_open = 400;
    i.refusals.attempts += 400;
    i.circuit = Some(CircuitNow {
        state: "open".into(),
        panic_mode: true,
    });
    let d = diagnose(&i);
    assert_eq!(ranked(&d)[0], ("backends_failing", 0.75));
    assert_eq!(cause(&d, "overload").score, 0.5);
    let evidence = &cause(&d, "overload").evidence;
    assert!(
        evidence.iter().any(|e| e == "circuit open now"),
        "{evidence:?}"
    );
    assert!(d.causes[0]
        .evidence
        .iter()
        .any(|e| e.starts_with("panic mode")));
}

#[test]
fn mixed_dead_backend_and_starved_caller_rank_by_strength() {
    let mut b = healthy_three();
    b[2] = backend("127.0.0.4:80", 0, 200);
    let mut i = input(b);
    let mut front = starved("front", Role::Caller);
    front.recent.nr_throttled = 0;
    front.recent.throttled_seconds = 0.0;
    front.recent.wait_sum_us = 1_000_000; // mean 0.5 ms
    front.recent.waits_over_1ms = 300; // 15 %: 0.4
    i.workloads = vec![front];
    let d = diagnose(&i);
    assert_eq!(
        ranked(&d),
        vec![
            ("backends_failing", 1.0),
            ("cpu_starvation", 0.4),
            ("network", 0.0),
            ("overload", 0.0),
            ("backend_errors", 0.0)
        ]
    );
}

#[test]
fn mixed_loss_everywhere_with_one_dead_backend() {
    let mut b: Vec<_> = healthy_three().into_iter().map(|b| lossy(b, 600)).collect();
    b[0] = backend("127.0.0.2:80", 0, 100);
    let d = diagnose(&input(b));
    // The dead one has no connections, so two of three are lossy: both causes show.
    assert_eq!(ranked(&d)[0], ("backends_failing", 1.0));
    assert_eq!(cause(&d, "network").score, 0.67);
}

#[test]
fn chronic_failures_and_starvation_are_scaled_down() {
    let mut b = healthy_three();
    b[1] = backend("127.0.0.3:80", 0, 200);
    b[1].baseline = b[1].recent.clone();
    let mut i = input(b);
    let mut front = starved("front", Role::Caller);
    front.baseline = front.recent.clone();
    i.workloads = vec![front];
    let d = diagnose(&i);
    assert_eq!(cause(&d, "backends_failing").score, 0.8);
    assert_eq!(cause(&d, "cpu_starvation").score, 0.8);
    // Ties keep the fixed order.
    assert_eq!(d.causes[0].cause, "backends_failing");
}

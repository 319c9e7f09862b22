//! Engine tests with paused time: bans from kernel-like event streams, the cap and panic mode,
//! the probe gate, circuit transitions and shedding, all through the engine's own API.

use std::time::Duration;

use sockmesh_common::{
    ConnEvent, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_CIRCUIT_OPEN, RESULT_LIMITED, RESULT_OK,
    RESULT_REFUSED,
};
use sockmesh_model::{BackendSpec, LbPolicy, MeshConfig, ServiceSpec};
use tokio::time::{advance, Instant};

use super::Engine;
use crate::tables::{plan, CircuitFlag, KernelState, Overlay};

fn config(backends: usize) -> MeshConfig {
    let b = (0..backends)
        .map(|i| BackendSpec {
            addr: format!("127.0.0.{}:81", i + 2).parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            zone: None,
        })
        .collect();
    let svc = ServiceSpec::new(
        "web",
        "127.100.0.1".parse().unwrap(),
        80,
        LbPolicy::RoundRobin,
        b,
    );
    MeshConfig {
        version: 1,
        services: vec![svc],
        workloads: Vec::new(),
        enrollment: Default::default(),
    }
}

fn engine(cfg: &MeshConfig) -> Engine {
    let views = plan(cfg, &Overlay::new(), &KernelState::default())
        .unwrap()
        .views;
    let mut e = Engine::default();
    e.on_config(Instant::now(), cfg, &views);
    e
}

fn ev(backend: u32, kind: u32, result: u32) -> ConnEvent {
    ConnEvent {
        kind,
        result,
        service_id: 1,
        backend_id: backend,
        duration_ns: 100_000,
        ..ConnEvent::ZERO
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_ban_then_probe_gate_returns_the_backend() {
    let mut e = engine(&config(3));
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    let out = e.tick(Instant::now());
    assert_eq!(
        out.bans.len(),
        1,
        "banned after exactly 5 failures in a row"
    );
    let excluded = &e.overlay(Instant::now())["web"].excluded;
    assert!(excluded.contains(&"127.0.0.3:81".parse().unwrap()));
    // 5 s later the ban ends, but the backend stays out until its probe passes.
    advance(Duration::from_secs(5)).await;
    let out = e.tick(Instant::now());
    assert_eq!(out.probes.len(), 1);
    assert!(!e.overlay(Instant::now())["web"].excluded.is_empty());
    e.probe_result(Instant::now(), 1, 2, true);
    assert!(e.overlay(Instant::now())["web"].excluded.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_cap_bans_one_of_three_and_raises_panic_mode() {
    let mut e = engine(&config(3));
    for backend in [1, 2] {
        for _ in 0..5 {
            e.on_event(Instant::now(), &ev(backend, EVENT_FAILED, RESULT_REFUSED));
        }
    }
    let out = e.tick(Instant::now());
    assert_eq!(out.bans.len(), 1, "50% of 3 backends is one");
    assert_eq!(e.overlay(Instant::now())["web"].excluded.len(), 1);
    assert!(e.services_by_id().next().unwrap().1.bans.panic_mode());
}

#[tokio::test(start_paused = true)]
async fn mesh_refusals_never_count_against_backends() {
    let mut e = engine(&config(3));
    for _ in 0..50 {
        e.on_event(Instant::now(), &ev(0, EVENT_FAILED, RESULT_CIRCUIT_OPEN));
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_LIMITED));
    }
    assert!(e.tick(Instant::now()).bans.is_empty());
    assert_eq!(
        e.overlay(Instant::now())["web"].circuit,
        CircuitFlag::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_on_failures_and_recovers_through_half_open() {
    let mut e = engine(&config(3));
    for backend in [1, 2, 3] {
        for _ in 0..8 {
            e.on_event(Instant::now(), &ev(backend, EVENT_FAILED, RESULT_REFUSED));
        }
    }
    e.tick(Instant::now());
    assert_eq!(e.overlay(Instant::now())["web"].circuit, CircuitFlag::Open);
    advance(Duration::from_secs(5)).await;
    assert!(matches!(
        e.overlay(Instant::now())["web"].circuit,
        CircuitFlag::HalfOpen(100_000)
    ));
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(3, EVENT_ESTABLISHED, RESULT_OK));
    }
    assert_eq!(
        e.overlay(Instant::now())["web"].circuit,
        CircuitFlag::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn limit_refusals_shed_lower_priorities_for_a_while() {
    let mut cfg = config(1);
    cfg.workloads.push(sockmesh_model::WorkloadSpec {
        name: "batch".into(),
        cgroup: "x/batch".into(),
        labels: Default::default(),
        priority: sockmesh_model::Priority::Offline,
        zone: None,
        node: None,
    });
    let mut e = engine(&cfg);
    assert_eq!(e.overlay(Instant::now())["web"].min_priority, 0);
    e.on_event(Instant::now(), &ev(0, EVENT_FAILED, RESULT_LIMITED));
    assert_eq!(
        e.overlay(Instant::now())["web"].min_priority,
        2,
        "only online callers"
    );
    advance(super::OVERLOAD_HOLD).await;
    assert_eq!(e.overlay(Instant::now())["web"].min_priority, 0);
}

#[tokio::test(start_paused = true)]
async fn faults_and_removed_backends_drain_after_the_grace() {
    let mut e = engine(&config(2));
    assert!(e.set_fault("web", 250_000));
    assert!(!e.set_fault("nope", 1));
    assert_eq!(e.overlay(Instant::now())["web"].fault_refuse_ppm, 250_000);
    let smaller = config(1);
    let views = plan(&smaller, &Overlay::new(), &KernelState::default())
        .unwrap()
        .views;
    e.on_config(Instant::now(), &smaller, &views);
    assert!(
        e.tick(Instant::now()).drains.is_empty(),
        "not before the grace"
    );
    advance(Duration::from_secs(10)).await;
    let drains = e.tick(Instant::now()).drains;
    // With the removed backend's id (2, the second of config(2)), though no view names it
    // now: its sockets were stamped with it.
    assert_eq!(drains, vec![(1, 2, "127.0.0.3:81".parse().unwrap())]);
    assert!(e.tick(Instant::now()).drains.is_empty(), "drained once");
}

#[tokio::test(start_paused = true)]
async fn late_failures_do_not_reban_a_backend_whose_probe_passed() {
    let mut e = engine(&config(3));
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    assert_eq!(e.tick(Instant::now()).bans.len(), 1);
    // Connects that were in flight at ban time still report failures.
    for _ in 0..4 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    advance(Duration::from_secs(5)).await;
    assert_eq!(e.tick(Instant::now()).probes.len(), 1);
    e.probe_result(Instant::now(), 1, 2, true);
    e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    assert!(
        e.tick(Instant::now()).bans.is_empty(),
        "one failure after return is not five"
    );
    assert!(e.overlay(Instant::now())["web"].excluded.is_empty());
}

#[tokio::test(start_paused = true)]
async fn idle_services_settle_and_wake_on_any_input() {
    use crate::signals::TcpChange;
    use sockmesh_common::{BackendKey, BackendTcpStats};
    let settled = |e: &Engine| e.services_by_id().next().unwrap().1.settled();
    let mut e = engine(&config(3));
    assert!(!settled(&e), "nothing evaluated yet");
    e.tick(Instant::now());
    assert!(
        settled(&e),
        "a service without inputs settles after one clean evaluation"
    );

    // Unchanged TCP counters keep it settled; changed ones wake it.
    let key = BackendKey {
        service_id: 1,
        backend_id: 2,
    };
    let change = |before, after| TcpChange { key, before, after };
    let mut stats = BackendTcpStats::ZERO;
    e.on_tcp(Instant::now(), &[change(None, stats)]);
    e.tick(Instant::now());
    e.on_tcp(Instant::now(), &[change(Some(stats), stats)]);
    assert!(settled(&e), "the same counters again change nothing");
    let before = stats;
    stats.established = 4;
    e.on_tcp(Instant::now(), &[change(Some(before), stats)]);
    assert!(!settled(&e), "new TCP counters wake it");

    // One failure: awake while it is in the window, settled again once it left.
    e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    assert!(!settled(&e));
    e.tick(Instant::now());
    assert!(!settled(&e), "the failure is still in the window");
    advance(Duration::from_secs(600)).await;
    e.tick(Instant::now());
    assert!(settled(&e), "inputs left the windows: settled again");

    // After a long quiet spell detection is as quick as ever.
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    let out = e.tick(Instant::now());
    assert_eq!(out.bans.len(), 1, "banned after 5 failures in a row");
    assert!(!settled(&e), "a ban keeps it evaluated");
}

/// A run from the event queue is folded as its events one by one: five failures in one run
/// ban as five failure events do; four do not.
#[tokio::test(start_paused = true)]
async fn a_run_of_failures_bans_like_the_same_failures_one_by_one() {
    use super::queue::{Outcome, Run};
    let run = |backend, outcome, count| Run {
        service: 1,
        backend,
        outcome,
        count,
        latency_sum: Duration::from_micros(100) * count as u32,
    };
    let mut e = engine(&config(3));
    e.on_run(Instant::now(), &run(2, Outcome::Failure, 4));
    assert!(
        e.tick(Instant::now()).bans.is_empty(),
        "4 failures in a row"
    );
    e.on_run(Instant::now(), &run(2, Outcome::Success, 3));
    e.on_run(Instant::now(), &run(2, Outcome::Failure, 4));
    assert!(
        e.tick(Instant::now()).bans.is_empty(),
        "a success ended the streak"
    );
    e.on_run(Instant::now(), &run(2, Outcome::Failure, 1));
    let out = e.tick(Instant::now());
    assert_eq!(out.bans.len(), 1, "the fifth failure in a row bans");
    assert!(e.overlay(Instant::now())["web"]
        .excluded
        .contains(&"127.0.0.3:81".parse().unwrap()));
}

/// What the engine's task does each step, with every probe passing; returns the overlay
/// published so far.
fn step(e: &mut Engine, published: &mut Overlay) {
    let now = Instant::now();
    let out = e.tick(now);
    for (svc, backend, _, _) in out.probes {
        e.probe_result(now, svc, backend, true);
    }
    if let Some(overlay) = e.overlay_update(now) {
        *published = overlay;
    }
    e.settle(now);
}

/// Idle services are not visited by a tick, and the overlay kept per awake service equals the
/// overlay computed whole, through a ban, its probe and the backend's return.
#[tokio::test(start_paused = true)]
async fn idle_services_sleep_and_the_kept_overlay_stays_exact() {
    let mut e = engine(&config(3));
    let mut published = Overlay::new();
    assert_eq!(e.awake_count(), 1, "a new config wakes every service");
    step(&mut e, &mut published);
    assert_eq!(published, e.overlay(Instant::now()));
    assert_eq!(e.awake_count(), 0, "no input: asleep after one step");
    assert_eq!(e.overlay_update(Instant::now()), None, "nothing changed");

    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    assert_eq!(e.awake_count(), 1, "an input wakes its service");
    let mut banned = false;
    for _ in 0..300 {
        step(&mut e, &mut published);
        let now = Instant::now();
        assert_eq!(
            published,
            e.overlay(now),
            "the kept overlay is the computed one"
        );
        banned |= !published["web"].excluded.is_empty();
        if banned && e.awake_count() == 0 {
            break;
        }
        advance(Duration::from_millis(500)).await;
    }
    assert!(banned, "five failures banned the backend");
    assert!(
        published["web"].excluded.is_empty(),
        "the probe let it back"
    );
    assert_eq!(
        e.awake_count(),
        0,
        "asleep again once the inputs left the windows"
    );
}

/// The kernel samples srtt per connection (its first `RTT_SAMPLES_PER_CONN` RTT callbacks,
/// then once at close), so the srtt mean is over the samples taken within the window, and a
/// window with connections open but no new sample (long-lived ones past their samples) has
/// no srtt mean at all rather than a stale one.
#[tokio::test(start_paused = true)]
async fn srtt_mean_is_over_the_window_samples_and_none_without_new_ones() {
    use crate::signals::TcpChange;
    use sockmesh_common::{BackendKey, BackendTcpStats, RTT_SAMPLES_PER_CONN};
    let rates = |e: &Engine| {
        e.services_by_id()
            .next()
            .unwrap()
            .1
            .tcp_rates_of(Instant::now(), 2)
    };
    let per_conn = u64::from(RTT_SAMPLES_PER_CONN) + 1;
    let mut e = engine(&config(3));
    let key = BackendKey {
        service_id: 1,
        backend_id: 2,
    };
    let change = |before, after| TcpChange { key, before, after };
    let mut stats = BackendTcpStats::ZERO;
    stats.established = 1;
    stats.srtt_count = per_conn;
    stats.srtt_sum_us = per_conn * 300;
    e.on_tcp(Instant::now(), &[change(None, stats)]);
    assert_eq!(rates(&e).1, None, "one read is no window yet");

    advance(Duration::from_secs(1)).await;
    let before = stats;
    stats.established += 2;
    stats.srtt_count += 2 * per_conn;
    stats.srtt_sum_us += 2 * per_conn * 500;
    e.on_tcp(Instant::now(), &[change(Some(before), stats)]);
    assert_eq!(rates(&e).1, Some(500.0), "the window's samples only");

    // Only long-lived connections now, past their samples: the counters stand still.
    advance(Duration::from_secs(11)).await;
    e.on_tcp(Instant::now(), &[change(Some(stats), stats)]);
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        rates(&e),
        (None, None),
        "no sample in the window: nothing to judge"
    );

    // One of them closes: its srtt at close is the window's one sample.
    advance(Duration::from_secs(1)).await;
    let before = stats;
    stats.closed += 1;
    stats.srtt_count += 1;
    stats.srtt_sum_us += 4_000;
    e.on_tcp(Instant::now(), &[change(Some(before), stats)]);
    assert_eq!(rates(&e).1, Some(4_000.0));
}

/// After a new config the health gauges (kept where the service and its backends stayed,
/// removed where they went) read exactly as if every gauge had been written afresh.
#[tokio::test(start_paused = true)]
async fn health_gauges_after_a_config_equal_a_fresh_export() {
    use super::metrics::{HealthExport, HealthMetrics};
    use prometheus_client::{encoding::text::encode, registry::Registry};

    fn exposition(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    let mut registry = Registry::default();
    let mut exported = HealthExport::new(HealthMetrics::new(&mut registry));
    let mut cfg = config(3);
    let mut other = cfg.services[0].clone();
    other.name = "api".into();
    other.vip = "127.100.0.2".parse().unwrap();
    cfg.services.push(other);
    let mut e = engine(&cfg);
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    e.tick(Instant::now());
    exported.export(&e, Instant::now());
    let before = exposition(&registry);
    assert!(
        before
            .iter()
            .any(|l| l.contains("127.0.0.3:81") && l.ends_with(" 1")),
        "{before:?}"
    );

    // `web` leaves the mesh; `api` stays as it was.
    let mut next = cfg.clone();
    next.services.remove(0);
    let views = plan(&next, &Overlay::new(), &KernelState::default())
        .unwrap()
        .views;
    e.on_config(Instant::now(), &next, &views);
    exported.reconfigure(&e);
    e.tick(Instant::now());
    exported.export(&e, Instant::now());
    let kept = exposition(&registry);

    let mut fresh_registry = Registry::default();
    HealthExport::new(HealthMetrics::new(&mut fresh_registry)).export(&e, Instant::now());
    assert_eq!(kept, exposition(&fresh_registry));
    assert!(
        !kept.iter().any(|l| l.contains("service=\"web\"")),
        "{kept:?}"
    );
    assert!(
        kept.iter().any(|l| l.contains("service=\"api\"")),
        "{kept:?}"
    );
}

/// A new config wakes only the services it added or changed; the kept overlay still equals
/// the overlay computed whole, a removed service leaves it, and a banned backend of an
/// unchanged service stays banned.
#[tokio::test(start_paused = true)]
async fn a_config_wakes_only_what_it_changed() {
    let mut cfg = config(3);
    for (i, name) in ["api", "db", "cache"].iter().enumerate() {
        let mut s = cfg.services[0].clone();
        s.name = (*name).into();
        s.vip = format!("127.100.0.{}", i + 2).parse().unwrap();
        cfg.services.push(s);
    }
    let mut state = KernelState::default();
    let first = plan(&cfg, &Overlay::new(), &state).unwrap();
    for w in &first.writes {
        state.apply(w);
    }
    let mut e = Engine::default();
    e.on_config(Instant::now(), &cfg, &first.views);
    let mut published = Overlay::new();
    assert_eq!(e.awake_count(), 4);
    for _ in 0..5 {
        e.on_event(Instant::now(), &ev(2, EVENT_FAILED, RESULT_REFUSED));
    }
    step(&mut e, &mut published);
    assert!(
        !published["web"].excluded.is_empty(),
        "web's backend banned"
    );

    // `db` gets a fourth backend, `cache` leaves; `web` (banned backend) and `api` stay.
    let mut next = cfg.clone();
    let mut extra = next.services[2].backends[0].clone();
    extra.addr = "127.0.0.9:81".parse().unwrap();
    next.services[2].backends.push(extra);
    next.services.remove(3);
    let views = plan(&next, &published, &state).unwrap().views;
    let awake_before = e.awake_count();
    e.on_config(Instant::now(), &next, &views);
    assert_eq!(
        e.awake_count(),
        awake_before + 1,
        "only db is woken (web was awake already)"
    );
    step(&mut e, &mut published);
    assert_eq!(published, e.overlay(Instant::now()));
    assert!(!published.contains_key("cache"));
    assert!(!published["web"].excluded.is_empty(), "still banned");
}

#[tokio::test(start_paused = true)]
async fn a_request_ban_from_the_proxy_excludes_the_backend_within_the_cap() {
    use crate::health::outlier::BanReason;
    let mut e = engine(&config(3));
    let bad: std::net::SocketAddr = "127.0.0.3:81".parse().unwrap();
    let made = e.request_ban(Instant::now(), "web", bad, BanReason::Consecutive5xx);
    assert_eq!(
        made,
        Some(("web".to_owned(), bad, BanReason::Consecutive5xx))
    );
    assert!(e.overlay(Instant::now())["web"].excluded.contains(&bad));
    // Asking again while banned makes no second ban.
    assert_eq!(
        e.request_ban(Instant::now(), "web", bad, BanReason::Consecutive5xx),
        None
    );
    // An unknown service or backend bans nothing.
    assert_eq!(
        e.request_ban(Instant::now(), "nope", bad, BanReason::Consecutive5xx),
        None
    );
    let other: std::net::SocketAddr = "127.0.0.9:81".parse().unwrap();
    assert_eq!(
        e.request_ban(Instant::now(), "web", other, BanReason::Consecutive5xx),
        None
    );
    // The cap (default: a third of the backends, at least one) holds for request bans too.
    let second: std::net::SocketAddr = "127.0.0.2:81".parse().unwrap();
    assert_eq!(
        e.request_ban(Instant::now(), "web", second, BanReason::RequestLatency),
        None
    );
    assert_eq!(e.overlay(Instant::now())["web"].excluded.len(), 1);
    // The ban ends like any other: a probe, then the backend is back.
    advance(Duration::from_secs(5)).await;
    let out = e.tick(Instant::now());
    assert_eq!(out.probes.len(), 1);
    e.probe_result(Instant::now(), 1, out.probes[0].1, true);
    assert!(e.overlay(Instant::now())["web"].excluded.is_empty());
}

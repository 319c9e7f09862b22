//! The ban cap: three backends, two of them dead (nothing listens: RST), and
//! `max_banned_percent: 50` (one of three). Traffic keeps flowing for 3 s, across the first
//! ban's end and failed probes: exactly one dead backend is ever banned, the other stays
//! routed (so the caller keeps seeing its failures: banning it too would leave one backend
//! carrying everything), and `sockmesh_panic_mode{service}` is 1.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::health_admin::{bans_of, circuit, unix_now};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{loopback_addrs, metric_value, ServiceYaml, TestBed};

const SERVICE: &str = "half-dead";

#[test]
fn two_dead_of_three_with_a_50_percent_cap_bans_one_and_raises_panic_mode() {
    let backends = loopback_addrs(2, 3, 18420);
    let vip: SocketAddr = "127.100.42.1:18421".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]),
    )
    // The circuit breaker is off: with half the connects failing it would (rightly) open,
    // and this test is about the ban cap.
    .with(
        "outlier",
        "{consecutive_failures: 5, base_ban: 1s, probe_timeout: 200ms, max_banned_percent: 50}",
    )
    .with("circuit", "{min_success_ratio: 0}");
    let set = SwitchBackends::start_some(&backends, &[true, false, false]).unwrap();
    let mut bed = TestBed::start("health-cap", &health_mesh(&[service], &[])).unwrap();
    let mut caller = Caller::spawn("caller", bed.cgroup(), vip).unwrap();

    let mut max_banned = 0;
    let mut banned_seen = std::collections::BTreeSet::new();
    let mut panic_seen_at = None;
    let started = unix_now();
    let run = thread::scope(|s| {
        let client = s.spawn(|| {
            caller.connect(
                &Connects::new(600)
                    .rate(200.0)
                    .timeout(Duration::from_secs(1)),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(4);
        while !client.is_finished() && Instant::now() < deadline {
            let agent = bed.agent();
            if let Ok(rows) = bans_of(agent, SERVICE) {
                max_banned = max_banned.max(rows.len());
                for r in rows {
                    banned_seen.insert(r["backend"].as_str().unwrap_or("").to_string());
                }
            }
            if panic_seen_at.is_none()
                && circuit(agent, SERVICE).is_ok_and(|c| c["panic_mode"] == true)
            {
                panic_seen_at = Some(unix_now());
            }
            thread::sleep(Duration::from_millis(25));
        }
        client.join().expect("client thread")
    })
    .unwrap();

    let by_backend = run.by_backend();
    let failures = run.failures();
    let fail_after = |t: f64| failures.iter().filter(|a| a.t > t).count();
    eprintln!(
        "{} connects in {:.0} ms: ok by backend {by_backend:?}, {} failed; most banned at once \
         {max_banned}, banned ever {banned_seen:?}; panic mode seen {:.2} s in",
        run.results.len(),
        run.elapsed_ms,
        failures.len(),
        panic_seen_at.map_or(f64::NAN, |t| t - started)
    );
    assert_eq!(max_banned, 1, "never more than 1 of 3 banned at a 50% cap");
    assert_eq!(
        banned_seen.len(),
        1,
        "the same backend stays the banned one"
    );
    let banned = banned_seen.iter().next().unwrap().clone();
    assert_ne!(
        banned,
        backends[0].to_string(),
        "the healthy backend is never banned"
    );
    assert!(
        panic_seen_at.is_some(),
        "/v1/circuits never showed panic_mode"
    );
    assert!(failures.iter().all(|a| a.refused()), "{failures:#?}");
    // Panic mode keeps routing to the other dead backend: its failures continue long after the
    // first ban, about a third of the connects (round robin over the two left in the table:
    // half of them).
    let late = fail_after(started + 1.5);
    eprintln!("failures in the last 1.5 s: {late}");
    assert!(
        late > 50,
        "the unbanned dead backend is still routed: {late} late failures"
    );
    assert_eq!(set.accepts(1) + set.accepts(2), 0);

    // The state now: one banned, panic mode on, in /v1/bans, /v1/circuits and the metrics.
    let agent = bed.agent();
    let rows = bans_of(agent, SERVICE).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["reason"], "consecutive_failures");
    let c = circuit(agent, SERVICE).unwrap();
    assert_eq!(c["panic_mode"], true, "{c}");
    let text = agent.metrics_text().unwrap();
    let panic = metric_value(&text, "sockmesh_panic_mode", &[("service", SERVICE)]);
    let banned_gauges: Vec<(String, Option<f64>)> = backends
        .iter()
        .map(|b| {
            let addr = b.to_string();
            let v = metric_value(
                &text,
                "sockmesh_backend_banned",
                &[("service", SERVICE), ("backend", &addr)],
            );
            (addr, v)
        })
        .collect();
    eprintln!("sockmesh_panic_mode {panic:?}; sockmesh_backend_banned {banned_gauges:?}");
    assert_eq!(panic, Some(1.0));
    for (addr, v) in &banned_gauges {
        let want = if *addr == banned { 1.0 } else { 0.0 };
        assert_eq!(*v, Some(want), "sockmesh_backend_banned for {addr}");
    }
    // Bans granted (re-bans after failed probes are not new bans).
    assert_eq!(
        metric_value(
            &text,
            "sockmesh_backend_bans_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(1.0)
    );
}

//! Banning a dead backend and letting it back: three echo backends behind a
//! round-robin VIP, a client making 1,000 connects at a steady 1,000/s, and one backend's
//! listener killed a third of the way in (its port then answers SYNs with RST).
//!
//! - The agent bans it after `consecutive_failures: 5` refused connects, and the client sees
//!   exactly those 5 failures in all: the kernel stops routing to it before a sixth.
//!   `/v1/bans` shows it with reason `consecutive_failures`.
//! - Its 1 s ban ends while it is still dead: the agent's TCP probe fails, and it is banned
//!   again for twice as long (streak 2) instead of returning.
//! - Restarted during that second ban, it gets no connection before the ban ends; then one
//!   passing probe lets it back, and the client reaches it again right after.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmesh_bpf_tests::health_admin::{bans_of, log_times, unix_now, wait_until};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, sum_metric, wait_counter_settled, ServiceYaml, TestBed,
};

const SERVICE: &str = "web";
const CONNECTIONS: &str = "sockmesh_connections_total";
const N: usize = 5;
const BASE_BAN: f64 = 1.0;
/// Clock slack when comparing the caller's and backends' timestamps with a ban end computed
/// from the agent's log (the engine takes its `now` a few µs after the log line's).
const TOLERANCE: f64 = 0.01;

/// The victim's row in `/v1/bans`, if it is there.
fn ban_row(bed: &mut TestBed, backend: SocketAddr) -> Option<Value> {
    bans_of(bed.agent(), SERVICE)
        .ok()?
        .into_iter()
        .find(|b| b["backend"] == backend.to_string())
}

#[test]
fn killed_backend_is_banned_after_n_failures_and_returns_only_after_ban_and_probe() {
    let backends = loopback_addrs(2, 3, 18400);
    let victim = 1;
    let victim_addr = backends[victim];
    let vip: SocketAddr = "127.100.40.1:18401".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]),
    )
    // `deviation_min_backends: 4` (more than the service has) keeps the deviation rule out
    // of it: with its defaults, a failure share above 5% against two flawless backends bans
    // even sooner (after 3 failures in a window of ~50 connects to the victim), and this test
    // is about the consecutive-failures rule and the probe gate.
    .with(
        "outlier",
        "{consecutive_failures: 5, deviation_min_backends: 4, base_ban: 1s, max_ban: 8s, \
         probe_timeout: 200ms}",
    );
    let mut set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start("health-ban", &health_mesh(&[service], &[])).unwrap();
    let mut caller = Caller::spawn("caller", bed.cgroup(), vip).unwrap();

    // Phase A: 1,000 connects at 1,000/s; the victim's listener dies 400 ms in (python needs
    // ~100 ms to start).
    let mut killed_at = 0.0;
    let mut victim_before = 0;
    let mut first_seen: Option<(f64, Value)> = None;
    let run = thread::scope(|s| {
        let client = s.spawn(|| {
            // Connect and close, without waiting for the backend's name: at 1,000/s the
            // caller must not wait on backend threads (2-core machines). Who answered is
            // counted by the backends' accepts instead.
            caller.connect(
                &Connects::new(1000)
                    .rate(1000.0)
                    .timeout(Duration::from_secs(1))
                    .no_identify(),
            )
        });
        thread::sleep(Duration::from_millis(400));
        killed_at = unix_now();
        victim_before = set.accepts(victim);
        set.stop(victim);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && first_seen.is_none() {
            if let Some(row) = ban_row(&mut bed, victim_addr) {
                first_seen = Some((unix_now(), row));
            }
            thread::sleep(Duration::from_millis(10));
        }
        client.join().expect("client thread")
    })
    .unwrap();
    let (seen_at, row) = first_seen.expect("the killed backend was never banned");

    let failures: Vec<_> = run.results.iter().filter(|a| a.connect_failed()).collect();
    let read_failures = run
        .results
        .iter()
        .filter(|a| a.stage.as_deref() == Some("read"))
        .count();
    // When the agent decided: its log line's timestamp (same clock as the caller's).
    let victim_name = victim_addr.to_string();
    let ban_started = log_times(
        bed.agent(),
        &["backend banned", &format!("backend={victim_name}")],
    )
    .first()
    .copied()
    .expect("the ban is logged");
    let first_failure = failures.first().map_or(f64::NAN, |a| a.t);
    let last_failure = failures.last().map_or(f64::NAN, |a| a.t);
    eprintln!(
        "phase A: {} connects in {:.0} ms ({:.0}/s), {} ok, {} failed connects, {} failed \
         reads (accept queue reset at the kill); victim answered {victim_before} before the kill",
        run.results.len(),
        run.elapsed_ms,
        run.results.len() as f64 / (run.elapsed_ms / 1000.0),
        run.ok_count(),
        failures.len(),
        read_failures
    );
    eprintln!(
        "kill -> first failure {:.1} ms; first -> last (5th) failure {:.1} ms; last failure -> \
         ban decided {:.1} ms; kill -> ban {:.1} ms; /v1/bans showed it {:.1} ms after the kill: \
         {row}",
        (first_failure - killed_at) * 1e3,
        (last_failure - first_failure) * 1e3,
        (ban_started - last_failure) * 1e3,
        (ban_started - killed_at) * 1e3,
        (seen_at - killed_at) * 1e3
    );
    assert_eq!(run.results.len(), 1000);
    assert!(victim_before > 20, "the victim served before the kill");
    assert_eq!(
        set.accepts(victim),
        victim_before,
        "nothing reached the dead victim"
    );
    assert!(
        failures.iter().all(|a| a.refused()),
        "a dead port refuses: {failures:#?}"
    );
    assert!(
        failures.len() <= N,
        "the client saw {} failed connects; the ban must come after at most {N}: {failures:#?}",
        failures.len()
    );
    assert!(!failures.is_empty(), "the kill caused no failure at all");
    assert!(
        read_failures <= 2,
        "{read_failures} connects failed after connecting"
    );
    assert_eq!(row["reason"], "consecutive_failures", "{row}");
    assert_eq!(row["streak"], 1, "{row}");
    // After the last failure every connect succeeded (on the other two).
    assert!(run
        .results
        .iter()
        .filter(|a| a.t > last_failure)
        .all(|a| a.ok()));

    // The ban ends while the victim is still dead: the probe fails and the ban doubles.
    let (seen2, row2) = wait_until(
        bed.agent(),
        "the victim banned again after a failed probe",
        Duration::from_secs(5),
        |a| {
            let row = bans_of(a, SERVICE)?.into_iter().find(|b| {
                b["backend"] == victim_name && b["streak"] == 2 && b["state"] == "banned"
            });
            Ok(row.map(|r| (unix_now(), r)))
        },
    )
    .unwrap();
    let remaining2 = row2["remaining_seconds"].as_f64().unwrap();
    // The second ban runs 2 x base_ban from the failed probe's result.
    let failed_probe = log_times(
        bed.agent(),
        &["probe", &format!("backend={victim_name}"), "ok=false"],
    )
    .last()
    .copied()
    .expect("the failed probe is logged");
    let ban2_end = failed_probe + 2.0 * BASE_BAN;
    eprintln!(
        "first ban ended, probe failed {:.0} ms after its end, banned again (ends {:.3} s from \
         /v1/bans, {:.3} s from the log): {row2}",
        (failed_probe - ban_started - BASE_BAN) * 1e3,
        seen2 + remaining2 - ban_started,
        ban2_end - ban_started
    );
    assert!(
        remaining2 > BASE_BAN && remaining2 <= 2.0 * BASE_BAN,
        "second ban lasts 2 x base_ban: {row2}"
    );
    assert_eq!(row2["reason"], "consecutive_failures");

    // Restart it during the second ban.
    let accepts_before = set.accepts(victim);
    set.restart(victim).unwrap();
    let restarted_at = unix_now();
    assert!(
        restarted_at < ban2_end - 0.5,
        "restarted {:.2} s before the ban's end; the test needs a margin",
        ban2_end - restarted_at
    );

    // Phase B: 200/s until 3 s past the ban's end.
    let count = ((ban2_end + 3.0 - unix_now()) * 200.0).ceil() as usize;
    let back = caller
        .connect(
            &Connects::new(count)
                .rate(200.0)
                .timeout(Duration::from_secs(1)),
        )
        .unwrap();
    assert_eq!(back.ok_count(), count, "{:#?}", back.failures());
    let victim_hits: Vec<f64> = back
        .results
        .iter()
        .filter(|a| a.backend.as_deref() == Some(&victim_name))
        .map(|a| a.t)
        .collect();
    let accepts: Vec<f64> = set.accept_times(victim)[accepts_before..].to_vec();
    let first_hit = victim_hits.first().copied().unwrap_or(f64::NAN);
    let first_accept = accepts.first().copied().unwrap_or(f64::NAN);
    let before_end = back.results.iter().filter(|a| a.t < ban2_end).count();
    eprintln!(
        "phase B: {count} connects; restarted {:.2} s before the ban's end; {before_end} connects \
         before it, none to the victim; first accept (the probe) {:+.0} ms and first client \
         connect {:+.0} ms from the ban's end; victim then answered {} connects",
        ban2_end - restarted_at,
        (first_accept - ban2_end) * 1e3,
        (first_hit - ban2_end) * 1e3,
        victim_hits.len()
    );
    assert!(before_end > 100, "phase B covered the rest of the ban");
    assert!(!victim_hits.is_empty(), "the victim never came back");
    assert!(
        first_accept >= ban2_end - TOLERANCE,
        "the restarted victim accepted a connection {:.0} ms before its ban ended",
        (ban2_end - first_accept) * 1e3
    );
    assert!(
        first_hit >= ban2_end - TOLERANCE,
        "the client reached the victim {:.0} ms before its ban ended",
        (ban2_end - first_hit) * 1e3
    );
    assert!(
        first_hit <= ban2_end + 2.0,
        "the victim came back {:.2} s after its ban ended",
        first_hit - ban2_end
    );
    // Exactly one connection reached it that was not the client's: the passing probe, first.
    assert_eq!(
        accepts.len(),
        victim_hits.len() + 1,
        "victim accepts after the restart = client connects + one probe"
    );
    assert!(first_accept <= first_hit);
    let log = bed.agent().log();
    let probes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("probe") && l.contains(&format!("backend={victim_name}")))
        .collect();
    eprintln!("probes: {probes:#?}");
    assert!(
        probes.iter().any(|l| l.contains("ok=false")),
        "a failed probe is logged"
    );
    assert!(
        probes.last().is_some_and(|l| l.contains("ok=true")),
        "the last probe passed"
    );
    assert!(bans_of(bed.agent(), SERVICE).unwrap().is_empty());

    // The agent's own account: 5 refused connects, one ban, the victim routed again.
    let text = wait_counter_settled(
        bed.agent(),
        "refused connects",
        failures.len() as f64,
        |t| {
            sum_metric(
                t,
                CONNECTIONS,
                &[("service", SERVICE), ("result", "refused")],
            )
        },
    )
    .unwrap();
    let refused_victim = metric_value(
        &text,
        CONNECTIONS,
        &[("backend", &victim_name), ("result", "refused")],
    );
    assert_eq!(refused_victim, Some(failures.len() as f64));
    assert_eq!(
        metric_value(
            &text,
            "sockmesh_backend_bans_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "sockmesh_backend_banned",
            &[("service", SERVICE), ("backend", &victim_name)]
        ),
        Some(0.0)
    );
}

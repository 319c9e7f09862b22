//! Draining: a caller holds one long-lived echo connection to each of three backends.
//! Then one backend stops accepting new connections (`sockmesh-agent netfault` drops the SYNs
//! to it, so new connects time out; the established connection is untouched and still
//! echoes). Five timed-out connects ban it, and `drain_grace: 1s` later the agent closes the
//! long-lived connection to it (SOCK_DESTROY), not before; the connections to the two healthy
//! backends live on. `sockmesh_drained_connections_total{netns="agent"}` counts it.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::health_admin::{bans_of, log_times, unix_now};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, wait_counter_settled, Faults, Netfault, ServiceYaml, TestBed,
};

const SERVICE: &str = "sticky";
const GRACE: f64 = 1.0;
/// How long the test waits for the drain and its effects: far above the grace plus the
/// agent's 50 ms evaluation tick, so only a drain that never comes fails the wait.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// The ban's log line is written just after the decision the grace counts from, so the
/// logged ban time can be late by a scheduling delay; a drain that ignored the grace would
/// still be a whole grace early.
const CLOCK_EPSILON: f64 = 0.1;

#[test]
fn long_lived_connection_to_a_banned_backend_is_closed_after_the_grace() {
    let backends = loopback_addrs(2, 3, 18480);
    let vip: SocketAddr = "127.100.48.1:18481".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with(
        "outlier",
        "{consecutive_failures: 5, deviation_min_backends: 4, base_ban: 20s}",
    )
    .with("circuit", "{min_success_ratio: 0}")
    .with("drain_grace", "1s");
    let set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start("health-drain", &health_mesh(&[service], &[])).unwrap();
    let mut holder = Caller::spawn("holder", bed.cgroup(), vip).unwrap();
    let mut prober = Caller::spawn("prober", bed.cgroup(), vip).unwrap();

    // One long-lived connection per backend (round robin).
    let held = holder.connect(&Connects::new(3).hold()).unwrap();
    assert_eq!(held.ok_count(), 3, "{:#?}", held.failures());
    let names: Vec<String> = held
        .results
        .iter()
        .filter_map(|a| a.backend.clone())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "one connection per backend: {names:?}");
    let victim_name = names[1].clone();
    let victim = set.index_of(&victim_name).unwrap();
    let victim_addr = backends[victim];

    // The victim stops answering SYNs; its established connection still echoes.
    let faults = Faults {
        drop_syn: 100.0,
        ..Faults::default()
    };
    let netfault = Netfault::start(bed.cgroup(), &[victim_addr], faults).unwrap();
    let status = holder.status().unwrap();
    assert!(
        status.iter().all(|h| h.alive),
        "before the ban: {status:#?}"
    );

    // New connects: every third times out (300 ms); the fifth timeout bans the victim.
    let tries = prober
        .connect(&Connects::new(18).timeout(Duration::from_millis(300)))
        .unwrap();
    let timeouts = tries.results.iter().filter(|a| a.timed_out()).count();
    let bans = bans_of(bed.agent(), SERVICE).unwrap();
    eprintln!(
        "new connects: {} ok, {timeouts} timed out; bans {bans:?}",
        tries.ok_count()
    );
    assert_eq!(timeouts, 5, "{:#?}", tries.failures());
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["backend"], victim_name);
    let banned_at = log_times(
        bed.agent(),
        &["backend banned", &format!("backend={victim_name}")],
    )
    .first()
    .copied()
    .expect("the ban is logged");

    // Watch the held connections until the victim's is gone.
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut last_alive = f64::NAN;
    let (closed_at, last) = loop {
        let status = holder.status().unwrap();
        // Taken after the answer: a connection seen closed here was closed by now.
        let now = unix_now();
        let victim_conn = status
            .iter()
            .find(|h| h.backend.as_deref() == Some(&victim_name))
            .expect("the victim's connection is held");
        if !victim_conn.alive {
            break (now, status);
        }
        last_alive = now;
        assert!(
            Instant::now() < deadline,
            "the victim's connection is still open {:.1} s after the ban",
            now - banned_at
        );
        thread::sleep(Duration::from_millis(50));
    };
    let dropped = netfault.stop().unwrap();
    let drained_log = log_times(
        bed.agent(),
        &["drained connections", &format!("backend={victim_name}")],
    );
    eprintln!(
        "banned -> last seen open {:.2} s, seen closed {:.2} s (grace {GRACE} s); agent logged \
         the drain {:.2} s after the ban; held now: {last:#?}; {dropped}",
        last_alive - banned_at,
        closed_at - banned_at,
        drained_log.first().map_or(f64::NAN, |t| t - banned_at)
    );
    // Not before the grace: the close happened before `closed_at` (taken after the answer
    // that showed it closed), so an early drain shows up as a `closed_at` inside the grace.
    // No bound on how soon after the grace: that is the agent's tick and this poll's
    // timing, which a busy machine stretches (the numbers are printed above).
    assert!(
        closed_at - banned_at >= GRACE - CLOCK_EPSILON,
        "seen closed {:.3} s after the ban: closed before the {GRACE} s grace",
        closed_at - banned_at
    );
    let drained = drained_log.first().copied().expect("the drain is logged");
    assert!(
        drained - banned_at >= GRACE - CLOCK_EPSILON,
        "drained {:.2} s after the ban, before the grace",
        drained - banned_at
    );
    let victim_conn = last
        .iter()
        .find(|h| h.backend.as_deref() == Some(&victim_name))
        .unwrap();
    // SOCK_DESTROY aborts the socket: the application sees ECONNABORTED.
    assert_eq!(
        victim_conn.errno,
        Some(libc::ECONNABORTED),
        "{victim_conn:#?}"
    );
    // The other two are untouched and still echo.
    let others: Vec<_> = last
        .iter()
        .filter(|h| h.backend.as_deref() != Some(&victim_name))
        .collect();
    assert_eq!(others.len(), 2);
    assert!(others.iter().all(|h| h.alive), "{others:#?}");
    // The backend sees the abort's RST once it arrives and its echo thread notices.
    let deadline = Instant::now() + DRAIN_WAIT;
    while set.open_connections(victim) != 0 {
        assert!(
            Instant::now() < deadline,
            "the backend still holds {} connections {DRAIN_WAIT:?} after the drain",
            set.open_connections(victim)
        );
        thread::sleep(Duration::from_millis(20));
    }

    // Counted as drained in the agent's own network namespace, where the caller runs.
    let agent_netns = [("netns", "agent")];
    let text = wait_counter_settled(bed.agent(), "drained connections", 1.0, |t| {
        metric_value(t, "sockmesh_drained_connections_total", &agent_netns).unwrap_or(0.0)
    })
    .unwrap();
    assert_eq!(
        metric_value(&text, "sockmesh_drained_connections_total", &agent_netns),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "sockmesh_drained_connections_total",
            &[("netns", "workload")]
        ),
        Some(0.0)
    );
}

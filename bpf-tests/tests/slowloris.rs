//! Endpoints that survive abuse (issue 18): 2,000 connections that each send half a request
//! and then wait, held against the real agent's `/metrics` and the real control plane's API.
//!
//! - Agent (`--http-header-timeout-secs 5`): `/metrics` still answers within 1 s (the
//!   scrape's own timeout; every scrape time is printed), the admin socket answers, connects
//!   through a VIP are routed and a dead backend is banned; the agent holds at most its
//!   connection cap (512) of them, so its descriptors stay bounded (the rest are closed to
//!   make room, longest-idle first); and every held connection is closed by the agent, by
//!   eviction or by the header timeout.
//! - Control plane: tests/slowloris_control.rs, a test process of its own (in the same
//!   process after this test, its 2,000 connects were sometimes accepted late).
//!
//! Ports 18970-18979, VIPs 127.100.97.1-2, backends 127.0.0.2-4. Durations are printed,
//! never asserted beyond the 1 s bound for a scrape and generous waits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::health_admin::{bans_of, wait_until};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::slowloris::{fd_count, nofile_soft_limit, HeldConnections};
use sockmesh_bpf_tests::{
    http_get_tcp, loopback_addrs, metric_value, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

const HELD: usize = 2_000;
/// The agent's `--http-header-timeout-secs` here.
const AGENT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on top of a timeout before "the server closed them all" counts as failed.
const CLOSE_SLACK: Duration = Duration::from_secs(30);
/// The bound on a scrape while the connections are held.
const SCRAPE_BOUND: Duration = Duration::from_secs(1);
/// The agent's connection cap on `/metrics` (agent/src/runtime.rs).
const AGENT_METRICS_CAP: usize = 512;
const CONNECTIONS: &str = "sockmesh_http_connections_total";

fn count(text: &str, name: &str, endpoint: &str, event: &str) -> u64 {
    metric_value(text, name, &[("endpoint", endpoint), ("event", event)]).unwrap_or(0.0) as u64
}

#[test]
fn agent_metrics_admin_routing_and_bans_survive_2000_held_connections() {
    let live = loopback_addrs(2, 2, 18972);
    let dead: SocketAddr = "127.0.0.4:18972".parse().unwrap();
    let vip: SocketAddr = "127.100.97.1:18971".parse().unwrap();
    let mut backends = live.clone();
    backends.push(dead);
    let service = HealthService::new(
        ServiceYaml::new("web", vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with(
        "outlier",
        "{consecutive_failures: 3, deviation_min_backends: 4, base_ban: 120s, max_ban: 120s}",
    );
    let _set = TcpBackendSet::start(&live, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new("slowloris-agent", &health_mesh(&[service], &[])).unwrap();
    bed.start_agent_with([
        "--http-header-timeout-secs",
        &AGENT_HEADER_TIMEOUT.as_secs().to_string(),
        "--http-idle-timeout-secs",
        "5",
    ])
    .unwrap();
    let agent = bed.agent();
    let pid = agent.pid().unwrap();
    let metrics = agent.metrics_addr().unwrap();
    let limit = nofile_soft_limit(pid).unwrap();
    let fds_before = fd_count(pid).unwrap();

    let mut held = HeldConnections::open(
        metrics,
        HELD,
        b"GET /metrics HTTP/1.1\r\nHost: sockmesh\r\nAccept: */*\r\n",
    )
    .unwrap();
    let held_at = Instant::now();
    let fds_held = fd_count(pid).unwrap();

    // Scrapes, each bounded by the 1 s.
    let mut scrapes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = http_get_tcp(metrics, "/metrics", SCRAPE_BOUND)
            .expect("a scrape under 2,000 held connections answers within 1 s");
        assert_eq!(r.status, 200, "{}", r.body);
        scrapes.push(t.elapsed());
    }
    // The admin socket.
    let status = bed.agent().status().expect("the admin socket answers");
    assert_eq!(status["metrics_addr"], metrics.to_string());

    // Routing, and a ban of the dead backend.
    let report = ConnectClient::new(vip, 60)
        .interval(Duration::from_millis(10))
        .run(Some(bed.cgroup()), None)
        .unwrap();
    let failed = report.failures().len();
    assert!(
        (3..=6).contains(&failed),
        "the dead backend is banned after 3 refused connects: {failed} of 60 failed"
    );
    let ban = wait_until(
        bed.agent(),
        "the dead backend's ban",
        Duration::from_secs(10),
        |a| {
            Ok(bans_of(a, "web")?
                .into_iter()
                .find(|b| b["backend"] == dead.to_string()))
        },
    )
    .unwrap();
    let after_ban = ConnectClient::new(vip, 30)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    after_ban.assert_all_ok("connects after the ban");
    let fds_during = fd_count(pid).unwrap();

    let closed_in = held
        .wait_all_closed(AGENT_HEADER_TIMEOUT + CLOSE_SLACK)
        .expect("the agent closes every held connection");
    let since_held = held_at.elapsed();
    let fds_after = fd_count(pid).unwrap();
    let text = bed.agent().metrics_text().unwrap();
    let evicted = count(&text, CONNECTIONS, "metrics", "evicted");
    let header_timeout = count(&text, CONNECTIONS, "metrics", "header_timeout");
    let idle = count(&text, CONNECTIONS, "metrics", "idle_closed");
    let refused = count(&text, CONNECTIONS, "metrics", "refused");
    println!(
        "agent: RLIMIT_NOFILE {limit}; fds before {fds_before}, with {HELD} held {fds_held}, \
         during routing {fds_during}, after {fds_after}; scrapes {scrapes:?}; \
         {failed} connects failed before the ban ({}); all held closed {closed_in:?} after \
         the checks ({since_held:?} after opening); evicted {evicted}, header_timeout \
         {header_timeout}, idle_closed {idle}, refused {refused}",
        ban["reason"]
    );
    assert!(
        fds_held < limit as usize && fds_during < limit as usize,
        "fds {fds_held}/{fds_during} reached the limit {limit}"
    );
    // The cap holds: the agent's descriptors grow by at most the cap (plus slack for the
    // scrapes, admin calls and probes of the moment).
    assert!(
        fds_held <= fds_before + AGENT_METRICS_CAP + 64,
        "with {HELD} held the agent has {fds_held} fds, before {fds_before}"
    );
    assert!(
        evicted + header_timeout + idle >= HELD as u64,
        "every held connection closed by the agent: evicted {evicted} + header_timeout \
         {header_timeout} + idle {idle} < {HELD}"
    );
    assert!(evicted > 0, "2,000 > the cap: some made room for others");
}

//! Endpoints that survive abuse (issue 18): 2,000 connections that each send half a request
//! and then wait, held against the real agent's `/metrics` and the real control plane's API.
//!
//! - Agent (`--http-header-timeout-secs 5`): `/metrics` still answers within 1 s (the
//!   scrape's own timeout; every scrape time is printed), the admin socket answers, connects
//!   through a VIP are routed and a dead backend is banned; the agent holds at most its
//!   connection cap (512) of them, so its descriptors stay bounded (the rest are closed to
//!   make room, longest-idle first); and every held connection is closed by the agent, by
//!   eviction or by the header timeout.
//! - Control plane (default limits: header timeout 10 s, cap 16,384): all 2,000 held (with
//!   the token), a config change still reaches the following agent's kernel tables, and
//!   every held connection is closed after the header timeout.
//!
//! Ports 18970-18979, VIPs 127.100.97.1-2, backends 127.0.0.2-4. Durations are printed,
//! never asserted beyond the 1 s bound for a scrape and generous waits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::control_bed::{ControlBed, NODE_NAME};
use sockmesh_bpf_tests::control_server::CONTROL_TOKEN;
use sockmesh_bpf_tests::health_admin::{bans_of, wait_until};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::slowloris::{fd_count, nofile_soft_limit, HeldConnections};
use sockmesh_bpf_tests::{
    fingerprint_of, http_get_tcp, loopback_addrs, metric_value, BackendMode, ConnectClient,
    ServiceYaml, TcpBackendSet, TestBed,
};

const HELD: usize = 2_000;
/// The agent's `--http-header-timeout-secs` here.
const AGENT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The control plane runs with its default header timeout.
const CONTROL_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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

#[test]
fn control_api_survives_2000_held_connections_and_the_agent_keeps_syncing() {
    let port = 18975;
    let vip: SocketAddr = "127.100.97.2:18976".parse().unwrap();
    let backends = loopback_addrs(2, 2, 18977);
    let mesh = |weights: [u32; 2]| {
        ServiceYaml::mesh(&[
            ServiceYaml::new("ctl", vip, "weighted_random").backends(&backends, &weights)
        ])
    };
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let v1 = mesh([1, 0]);
    // Plain http: the held connections send half an HTTP request (a TLS port would close
    // them at the first byte that is no handshake).
    let mut bed = ControlBed::new_plaintext("slowloris-ctl", port, &v1).unwrap();
    bed.start_agent(Some(&fingerprint_of(&v1).unwrap()))
        .unwrap();
    let pid = bed.control().pid().unwrap();
    let api = bed.control().addr();
    let limit = nofile_soft_limit(pid).unwrap();
    let fds_before = fd_count(pid).unwrap();

    let half = format!(
        "GET /v1/watch?after=0&agent=slowloris HTTP/1.1\r\nHost: sockmesh\r\n\
         Authorization: Bearer {CONTROL_TOKEN}\r\n"
    );
    let status = bed.control().status().unwrap();
    let metrics: SocketAddr = status["metrics_addr"].as_str().unwrap().parse().unwrap();
    let scrape = || {
        http_get_tcp(metrics, "/metrics", Duration::from_secs(5))
            .unwrap()
            .body
    };
    let mut held = HeldConnections::open(api, HELD, half.as_bytes()).unwrap();
    let held_at = Instant::now();
    // Connected is not yet accepted: wait until the API holds them all (under its cap).
    let open_api = |text: &str| {
        metric_value(
            text,
            "sockmesh_control_http_connections_open",
            &[("endpoint", "api")],
        )
        .unwrap_or(0.0) as usize
    };
    let mut open = open_api(&scrape());
    while open < HELD && held_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        open = open_api(&scrape());
    }
    let fds_held = fd_count(pid).unwrap();

    // A change still reaches the agent's kernel tables.
    let t = Instant::now();
    let (version, _) = bed.apply(&mesh([0, 1])).unwrap();
    let applied_in = t.elapsed();
    assert_eq!(version, 2);
    let report = ConnectClient::new(vip, 20)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("connects after the change");
    assert_eq!(
        report
            .backend_counts()
            .get(&backends[1].to_string())
            .copied(),
        Some(20),
        "{:?}",
        report.backend_counts()
    );
    let agent = bed
        .control()
        .wait_agent(NODE_NAME, "acked version 2", Duration::from_secs(10), |a| {
            a["applied_version"] == 2
        })
        .unwrap();
    assert_eq!(agent["in_sync"], true, "{agent:#}");

    let closed_in = held
        .wait_all_closed(CONTROL_HEADER_TIMEOUT + CLOSE_SLACK)
        .expect("the control plane closes every held connection");
    let since_held = held_at.elapsed();
    let text = scrape();
    let name = "sockmesh_control_http_connections_total";
    let header_timeout = count(&text, name, "api", "header_timeout");
    let evicted = count(&text, name, "api", "evicted");
    let fds_after = fd_count(pid).unwrap();
    println!(
        "control: RLIMIT_NOFILE {limit}; fds before {fds_before}, with {HELD} held \
         {fds_held} ({open} open on the API), after {fds_after}; change applied by the agent in {applied_in:?}; all \
         held closed {closed_in:?} after the checks ({since_held:?} after opening); \
         header_timeout {header_timeout}, evicted {evicted}"
    );
    assert!(
        fds_held < limit as usize,
        "fds {fds_held} reached the limit {limit}"
    );
    assert!(
        open >= HELD && fds_held >= HELD,
        "under its cap the control plane holds every connection: {open} open, {fds_held} fds"
    );
    assert!(
        header_timeout >= HELD as u64,
        "every held connection closed by the header timeout: {header_timeout}"
    );
}

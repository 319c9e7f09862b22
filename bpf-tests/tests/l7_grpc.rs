//! gRPC through a VIP in the real kernel (issue 19, "Must show"): a stock grpcio client in a
//! workload cgroup dials an http service's VIP (`grpc.insecure_channel`: HTTP/2 with prior
//! knowledge), the connect hook sends it to the agent-spawned `sockmesh-proxy`, and the
//! proxy forwards each call to stock grpcio servers (the generic API on raw bytes,
//! `sockmesh_bpf_tests::grpc_py`). Shown:
//!
//! - **Status codes counted:** calls the servers answer OK and calls they abort with
//!   NOT_FOUND, UNAVAILABLE and INTERNAL: the client's own count per status equals the
//!   proxy's `sockmesh_requests_total{code="grpc_<status>"}` summed over backends, and the
//!   servers' own counts (no call retried: a gRPC status rides on an HTTP 200, and the default
//!   `retries.on` retries only what never reached a backend).
//! - **Deadline propagated:** each server records `context.time_remaining()`. Service
//!   `short` (`http.timeout: 2s`) with a client deadline of 10 s: the server sees at most
//!   2 s (and less than the 10 s grpcio sends). Service `probe` (`http.timeout: 10s`) with
//!   a client deadline of 3 s: the server sees more than 0 and the client's 3 s, not the
//!   service's 10 s, as grpcio sent it: grpcio rounds the `grpc-timeout` it sends up (a
//!   server it calls directly sees about 3.009 s of a 3 s deadline and 10.099 s of a 10 s
//!   one, measured first, without the proxy), so "at most 3 s" holds within that rounding,
//!   [`GRPC_ROUNDING`]; the proxy passes it on less the time the call spent in the proxy.
//! - **A deadline that expires at a slow server:** `short`'s 2 s run out while the server
//!   holds the call: the client gets DEADLINE_EXCEEDED and the proxy counts
//!   `grpc_deadline_exceeded`. The client's own 1 s deadline running out at a slow server
//!   (service timeout 10 s): DEADLINE_EXCEEDED at the client, which resets the stream
//!   before the proxy's or the server's later deadline: the proxy counts the call once, as
//!   a caller that left first (`grpc_cancelled`; `grpc_deadline_exceeded` if the server's
//!   answer won the race).
//!
//! Ports 18930-18931, VIPs 127.100.93.1-2, backends 127.0.0.30-31.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::grpc_py::{grpc_python, CallReport, GrpcBackends, GrpcCall, GrpcClient};
use sockmesh_bpf_tests::l7::{start_agent_with_proxy, wait_proxy};
use sockmesh_bpf_tests::{sum_metric, TestBed};

/// Bounds on waits for the agent and the proxy.
const WAIT: Duration = Duration::from_secs(60);
/// Calls per status in the status-code run.
const PER_STATUS: usize = 20;
const DEADLINE_CALLS: usize = 10;
const SLOW_CALLS: usize = 3;
/// How long a `Slow` call holds, well past every deadline below (the server stops early
/// once the call is no longer active).
const SLOW_SECONDS: &str = "8";
/// What a grpcio server's `time_remaining()` may exceed the deadline it was sent by: grpc
/// encodes a timeout rounded up (its `timeout_encoding`, "encoding may round up
/// arbitrarily": a 3 s deadline goes out as up to 1 % more), and its clock has millisecond
/// resolution. Measured directly below (no proxy) and printed.
const GRPC_ROUNDING: f64 = 0.01;
const GRPC_CLOCK: f64 = 0.002;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The `code` label the proxy gives a gRPC status name as grpcio spells it.
fn label(status: &str) -> String {
    format!("grpc_{}", status.to_ascii_lowercase())
}

/// The server-side `time_remaining` of each reply of a `Deadline` step.
fn remaining(report: &CallReport) -> Vec<f64> {
    report
        .replies
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            v["time_remaining"]
                .as_f64()
                .unwrap_or_else(|| panic!("the server saw no deadline: {r}"))
        })
        .collect()
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MIN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MAX, f64::min)
}

#[test]
fn grpcio_through_the_vip_counts_statuses_and_propagates_deadlines() {
    let python = grpc_python();
    let servers = [addr("127.0.0.30:18930"), addr("127.0.0.31:18930")];
    let probe = addr("127.100.93.1:18931");
    let short = addr("127.100.93.2:18931");
    let mut backends = GrpcBackends::start(&python, &servers).unwrap();

    let mut bed = TestBed::new("l7-grpc", "version: 1\nservices: []\n").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    // No ban may take a backend out of the pick (INTERNAL and UNAVAILABLE count for the
    // proxy's 5xx rule, the slow calls for its latency rule): the counts are per call.
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: web, cgroup: {web_cg}}}
services:
  - name: probe
    vip: {probe_ip}
    port: {port}
    protocol: http
    http:
      timeout: 10s
    outlier: {{consecutive_5xx: 0, max_banned_percent: 0}}
    backends: [{{addr: "{a}"}}, {{addr: "{b}"}}]
  - name: short
    vip: {short_ip}
    port: {port}
    protocol: http
    http:
      timeout: 2s
    outlier: {{consecutive_5xx: 0, max_banned_percent: 0}}
    backends: [{{addr: "{a}"}}, {{addr: "{b}"}}]
"#,
        web_cg = web.relative_path().unwrap(),
        probe_ip = probe.ip(),
        short_ip = short.ip(),
        port = probe.port(),
        a = servers[0],
        b = servers[1],
    );
    bed.write_config(&yaml).unwrap();
    let proxy_addr = start_agent_with_proxy(&mut bed, &["web"], WAIT).unwrap();

    // For comparison: what the servers see of a grpcio deadline with no proxy in between
    // (a backend's own address is no VIP: the connect hook leaves it alone).
    let direct = GrpcClient::new(
        servers[0],
        vec![
            GrpcCall::new("Deadline", "", Duration::from_secs(3), DEADLINE_CALLS),
            GrpcCall::new("Deadline", "", Duration::from_secs(10), DEADLINE_CALLS),
        ],
    )
    .run(&python, &web)
    .unwrap();
    let (direct_3s, direct_10s) = (remaining(&direct[0]), remaining(&direct[1]));
    eprintln!("direct, no proxy: client deadline 3 s -> server saw {direct_3s:?}");
    eprintln!("direct, no proxy: client deadline 10 s -> server saw {direct_10s:?}");

    let ten = Duration::from_secs(10);
    let statuses = ["OK", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"];
    let mut plan: Vec<GrpcCall> = statuses
        .iter()
        .map(|s| GrpcCall::new("Status", s, ten, PER_STATUS))
        .collect();
    plan.push(GrpcCall::new(
        "Deadline",
        "",
        Duration::from_secs(3),
        DEADLINE_CALLS,
    ));
    plan.push(GrpcCall::new(
        "Slow",
        SLOW_SECONDS,
        Duration::from_secs(1),
        SLOW_CALLS,
    ));
    let via_probe = GrpcClient::new(probe, plan).run(&python, &web).unwrap();
    let via_short = GrpcClient::new(
        short,
        vec![
            GrpcCall::new("Deadline", "", ten, DEADLINE_CALLS),
            GrpcCall::new("Slow", SLOW_SECONDS, ten, SLOW_CALLS),
        ],
    )
    .run(&python, &web)
    .unwrap();
    for (service, reports) in [("probe", &via_probe), ("short", &via_short)] {
        for r in reports.iter() {
            eprintln!("client via {service}: {:?} {:?}", r.codes, r.details);
        }
    }

    // (1) Status codes: the client's own counts.
    for (report, status) in via_probe.iter().zip(statuses) {
        assert_eq!(
            report.codes,
            BTreeMap::from([(status.to_owned(), PER_STATUS as u64)]),
            "every {status} call ended {status}: {:?}",
            report.details
        );
    }
    let ok_replies: BTreeMap<&str, usize> =
        via_probe[0]
            .replies
            .iter()
            .fold(BTreeMap::new(), |mut by, r| {
                *by.entry(r.as_str()).or_default() += 1;
                by
            });
    eprintln!("OK replies by backend: {ok_replies:?}");
    let deadline_3s = &via_probe[4];
    let slow_1s = &via_probe[5];
    let deadline_short = &via_short[0];
    let slow_short = &via_short[1];
    for (what, report) in [
        ("Deadline via probe", deadline_3s),
        ("Deadline via short", deadline_short),
    ] {
        assert_eq!(
            report.code("OK"),
            DEADLINE_CALLS as u64,
            "{what}: {report:?}"
        );
    }
    for (what, report) in [("Slow via probe", slow_1s), ("Slow via short", slow_short)] {
        assert_eq!(
            report.code("DEADLINE_EXCEEDED"),
            SLOW_CALLS as u64,
            "{what}: {report:?}"
        );
    }

    // Each call reached one backend once.
    let seen = backends.seen().unwrap();
    eprintln!("servers saw: {seen:?}");
    for status in statuses {
        let got: u64 = seen.values().filter_map(|s| s.calls.get(status)).sum();
        assert_eq!(got, PER_STATUS as u64, "{status} calls at the servers");
    }
    let got = |method: &str| -> u64 { seen.values().filter_map(|s| s.calls.get(method)).sum() };
    assert_eq!(got("Deadline"), 4 * DEADLINE_CALLS as u64, "incl. direct");
    assert_eq!(got("Slow"), 2 * SLOW_CALLS as u64);

    // The proxy's counts, summed over backends, equal the client's.
    let want_probe: u64 = via_probe.iter().flat_map(|r| r.codes.values()).sum();
    let want_short: u64 = via_short.iter().flat_map(|r| r.codes.values()).sum();
    let metrics = wait_proxy(proxy_addr, "every call counted", WAIT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[("service", "probe")]) >= want_probe as f64
            && sum_metric(t, "sockmesh_requests_total", &[("service", "short")])
                >= want_short as f64
    })
    .unwrap();
    let count = |service: &str, code: &str| {
        sum_metric(
            &metrics,
            "sockmesh_requests_total",
            &[("service", service), ("code", code), ("caller", "web")],
        ) as u64
    };
    for service in ["probe", "short"] {
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("sockmesh_requests_total")
                    || l.starts_with("sockmesh_request_retries_total")
            })
            .filter(|l| l.contains(&format!("service=\"{service}\"")))
            .collect();
        eprintln!("proxy, {service}:\n{}", lines.join("\n"));
    }
    for status in statuses {
        let want = PER_STATUS as u64
            + if status == "OK" {
                DEADLINE_CALLS as u64
            } else {
                0
            };
        assert_eq!(count("probe", &label(status)), want, "{}", label(status));
    }
    assert_eq!(
        count("short", "grpc_ok"),
        DEADLINE_CALLS as u64,
        "short: grpc_ok"
    );
    // `short`'s own 2 s ran out while the server held each call: DEADLINE_EXCEEDED.
    assert_eq!(
        count("short", "grpc_deadline_exceeded"),
        SLOW_CALLS as u64,
        "short: a slow call past the service's timeout"
    );
    // The client's 1 s ran out at the slow server, with `probe`'s 10 s far off. The client's
    // timer fires first (the proxy's and the server's deadlines start later, when the
    // request reached them, from the time grpcio sent, rounded up), and grpcio resets the
    // stream: the proxy counts a gRPC caller that left before the response head as
    // `grpc_cancelled` (backend `none`). Only if the server's DEADLINE_EXCEEDED reached the proxy before the
    // reset would it count `grpc_deadline_exceeded`; every call is counted once either way.
    let (left, exceeded) = (
        count("probe", "grpc_cancelled"),
        count("probe", "grpc_deadline_exceeded"),
    );
    eprintln!(
        "client deadline at a slow server: proxy counted grpc_cancelled (caller left) {left}, \
         grpc_deadline_exceeded {exceeded}"
    );
    assert_eq!(
        left + exceeded,
        SLOW_CALLS as u64,
        "probe: each slow call past the client's deadline counted once"
    );
    for (service, want) in [("probe", want_probe), ("short", want_short)] {
        let all = sum_metric(&metrics, "sockmesh_requests_total", &[("service", service)]);
        assert_eq!(
            all as u64, want,
            "{service}: no other code, no other caller"
        );
        let retries = sum_metric(
            &metrics,
            "sockmesh_request_retries_total",
            &[("service", service)],
        );
        assert_eq!(retries, 0.0, "{service}: no call retried");
    }

    // (2) Deadlines, as the servers saw them.
    let via_short_10s = remaining(deadline_short);
    let via_probe_3s = remaining(deadline_3s);
    eprintln!("via short (timeout 2 s), client deadline 10 s -> server saw {via_short_10s:?}");
    eprintln!("via probe (timeout 10 s), client deadline 3 s -> server saw {via_probe_3s:?}");
    assert!(
        max(&via_short_10s) <= 2.0 + GRPC_CLOCK,
        "the service's 2 s bound the server's deadline: {via_short_10s:?}"
    );
    assert!(min(&via_short_10s) > 0.0, "{via_short_10s:?}");
    assert!(
        max(&via_short_10s) < min(&direct_10s),
        "shorter than the client's 10 s as grpc passes it on: {via_short_10s:?} vs direct \
         {direct_10s:?}"
    );
    assert!(min(&via_probe_3s) > 0.0, "{via_probe_3s:?}");
    assert!(
        max(&via_probe_3s) <= 3.0 * (1.0 + GRPC_ROUNDING) + GRPC_CLOCK,
        "the client's 3 s bound the server's deadline, not the service's 10 s: {via_probe_3s:?}"
    );
    let slow_cancelled: u64 = seen.values().map(|s| s.slow_cancelled).sum();
    assert_eq!(
        slow_cancelled,
        2 * SLOW_CALLS as u64,
        "every slow call ended at its deadline, not after {SLOW_SECONDS} s"
    );
}

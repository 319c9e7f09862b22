//! Request timeouts through the agent-spawned `sockmesh-proxy` in the real kernel (issue 19,
//! "Must show"), with stock python backends and a python `http.client` caller in a workload
//! cgroup:
//!
//! - a hung backend beside a good one (`per_try_timeout: 500ms`, `retries.on:
//!   [per_try_timeout]`): every request gets 200, each try on the hung backend moves on to
//!   the other one, and the proxy's `sockmesh_request_retries_total{reason="per_try_timeout"}`
//!   equals the requests the hung backend received;
//! - every backend hung (`timeout: 2s`, no per-try timeout): the client gets 504 for each
//!   request, each within the timeout plus a tolerance of [`TOLERANCE`] = 5 s (generous for
//!   a busy 2-core machine running CI beside this test) and no sooner than the timeout minus
//!   100 ms (the proxy must wait out the deadline, not give up early).
//!
//! Ports 18955-18959, VIPs 127.100.96.10-11, backends 127.0.0.2-5.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient};
use sockmesh_bpf_tests::l7::{start_agent_with_proxy, wait_proxy};
use sockmesh_bpf_tests::{sum_metric, TestBed};

/// Bounds on waits for the agent and the proxy.
const WAIT: Duration = Duration::from_secs(60);
/// Service `all-hung`'s `http.timeout`.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How much later than [`TIMEOUT`] a 504 may reach the client: the proxy's timer, its
/// answer, python's scheduling, all on a shared 2-core machine under load.
const TOLERANCE: Duration = Duration::from_secs(5);
/// How much sooner than [`TIMEOUT`] a 504 may arrive (clock granularity only).
const EARLY: Duration = Duration::from_millis(100);
const MOVED_REQUESTS: usize = 30;
const HUNG_REQUESTS: usize = 5;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn per_try_timeout_moves_requests_off_a_hung_backend_and_all_hung_answers_504_in_time() {
    let ok = addr("127.0.0.2:18955");
    let hung = addr("127.0.0.3:18955");
    let hung_a = addr("127.0.0.4:18955");
    let hung_b = addr("127.0.0.5:18955");
    let moved = addr("127.100.96.10:18956");
    let all_hung = addr("127.100.96.11:18956");
    let backends = HttpBackends::start(&[
        (ok, "ok"),
        (hung, "hang"),
        (hung_a, "hang"),
        (hung_b, "hang"),
    ])
    .unwrap();

    let mut bed = TestBed::new("l7-timeouts", "version: 1\nservices: []\n").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    // No ban may take a hung backend out of the pick (the proxy's 5xx and latency rules
    // would): the test is about what each request does with it.
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: web, cgroup: {web_cg}}}
services:
  - name: moved
    vip: {moved_ip}
    port: {port}
    protocol: http
    http:
      timeout: 5s
      per_try_timeout: 500ms
      retries: {{attempts: 2, on: [per_try_timeout]}}
    outlier: {{consecutive_5xx: 0, max_banned_percent: 0}}
    backends: [{{addr: "{ok}"}}, {{addr: "{hung}"}}]
  - name: all-hung
    vip: {all_hung_ip}
    port: {port}
    protocol: http
    http:
      timeout: {timeout_ms}ms
    outlier: {{consecutive_5xx: 0, max_banned_percent: 0}}
    backends: [{{addr: "{hung_a}"}}, {{addr: "{hung_b}"}}]
"#,
        web_cg = web.relative_path().unwrap(),
        moved_ip = moved.ip(),
        all_hung_ip = all_hung.ip(),
        port = moved.port(),
        timeout_ms = TIMEOUT.as_millis(),
    );
    bed.write_config(&yaml).unwrap();
    let proxy = start_agent_with_proxy(&mut bed, &["web"], WAIT).unwrap();

    // 1. One hung backend: its tries time out after 500 ms and move to the good one.
    let r = HttpClient::get(moved, MOVED_REQUESTS).run(&web).unwrap();
    let got = backends.totals().unwrap();
    let slowest = r.timings.iter().map(|t| t.1).fold(0.0, f64::max);
    eprintln!(
        "moved: client {:?}, errors {:?}; backends got (ok, hung) ({}, {}); slowest request \
         {slowest:.0} ms",
        r.codes, r.errors, got[0], got[1]
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.code(200),
        MOVED_REQUESTS as u64,
        "every request got 200: {:?}",
        r.codes
    );
    assert_eq!(
        got[0], MOVED_REQUESTS as u64,
        "every request ended on the good backend"
    );
    assert!(got[1] >= 1, "the hung backend was tried");
    let text = wait_proxy(proxy, "every moved request counted", WAIT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[("service", "moved")]) >= MOVED_REQUESTS as f64
    })
    .unwrap();
    let per_try = sum_metric(
        &text,
        "sockmesh_request_retries_total",
        &[("service", "moved"), ("reason", "per_try_timeout")],
    );
    let all_retries = sum_metric(
        &text,
        "sockmesh_request_retries_total",
        &[("service", "moved")],
    );
    eprintln!("moved: retries per_try_timeout {per_try}, all reasons {all_retries}");
    assert_eq!(
        per_try, got[1] as f64,
        "each try on the hung backend timed out and was retried once"
    );
    assert_eq!(all_retries, per_try, "no other retry");

    // 2. Every backend hung: 504 at the deadline.
    let r = HttpClient::get(all_hung, HUNG_REQUESTS)
        .timeout(Duration::from_secs(60))
        .run(&web)
        .unwrap();
    let millis: Vec<f64> = r.timings.iter().map(|t| t.1).collect();
    eprintln!(
        "all-hung: client {:?}, errors {:?}; each request (ms): {millis:.0?}; timeout \
         {TIMEOUT:?}, tolerance {TOLERANCE:?}; backends got {:?}",
        r.codes,
        r.errors,
        &backends.totals().unwrap()[2..]
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.code(504),
        HUNG_REQUESTS as u64,
        "every request got 504: {:?}",
        r.codes
    );
    let lowest = (TIMEOUT - EARLY).as_secs_f64() * 1000.0;
    let highest = (TIMEOUT + TOLERANCE).as_secs_f64() * 1000.0;
    for (status, ms) in &r.timings {
        assert_eq!(*status, 504);
        assert!(
            *ms >= lowest && *ms < highest,
            "a 504 after {ms:.0} ms, expected within [{lowest:.0}, {highest:.0}) ms"
        );
    }
    let text = wait_proxy(proxy, "every all-hung request counted", WAIT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[("service", "all-hung")]) >= HUNG_REQUESTS as f64
    })
    .unwrap();
    assert_eq!(
        sum_metric(
            &text,
            "sockmesh_requests_total",
            &[("service", "all-hung"), ("code", "504")]
        ),
        HUNG_REQUESTS as f64
    );
}

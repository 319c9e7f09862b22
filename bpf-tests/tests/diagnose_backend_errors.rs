//! Diagnosis of an http service with a backend that answers 500 (issue 19): the proxy's
//! per-backend request counts reach the agent, `/v1/diagnose` ranks `backend_errors` first
//! with evidence naming that backend, `/v1/top` shows the service's requests and failures,
//! and `sockmesh diagnose` says the same.
//!
//! VIP 127.100.94.30:18946; python backends 127.0.0.44-46:18947.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::diag_admin::{evidence, ranked, wait_clear_diagnosis};
use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient};
use sockmesh_bpf_tests::l7::start_agent_with_proxy;
use sockmesh_bpf_tests::{sockmesh_cli, TestBed};

const TIMEOUT: Duration = Duration::from_secs(60);
const REQUESTS: u64 = 150;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_backend_answering_500_ranks_backend_errors_first() {
    let ok1 = addr("127.0.0.44:18947");
    let ok2 = addr("127.0.0.45:18947");
    let bad = addr("127.0.0.46:18947");
    let shop = addr("127.100.94.30:18946");
    let http = HttpBackends::start(&[(ok1, "ok"), (ok2, "ok"), (bad, "500")]).unwrap();

    let mut bed = TestBed::new("diag-5xx", "version: 1\nservices: []\n").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    // No ban (consecutive_5xx: 0), no retries of a 500: every request the bad backend gets
    // fails at the client, and keeps failing.
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: web, cgroup: {web_cg}}}
services:
  - name: shop
    vip: {ip}
    port: {port}
    protocol: http
    outlier: {{consecutive_5xx: 0}}
    slos:
      - {{name: requests, sli: request_success, objective: 0.99, window: 1d}}
    backends: [{{addr: "{ok1}"}}, {{addr: "{ok2}"}}, {{addr: "{bad}"}}]
"#,
        web_cg = web.relative_path().unwrap(),
        ip = shop.ip(),
        port = shop.port(),
    );
    bed.write_config(&yaml).unwrap();
    start_agent_with_proxy(&mut bed, &["web"], TIMEOUT).unwrap();

    let report = HttpClient::get(shop, REQUESTS as usize)
        .interval(Duration::from_millis(5))
        .run(&web)
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let failed = report.code(500);
    let bad_got = http.totals().unwrap()[2];
    eprintln!("client: {:?}; the 500 backend got {bad_got}", report.codes);
    assert_eq!(failed, bad_got, "every request of the bad backend failed");
    assert!(failed > 0 && report.code(200) + failed == REQUESTS);

    let agent = bed.agent();
    let d = wait_clear_diagnosis(agent, "shop", TIMEOUT, || true).unwrap();
    eprintln!("diagnosis: {d:#}");
    let causes = ranked(&d);
    assert_eq!(causes[0].0, "backend_errors", "{causes:?}");
    let why = evidence(&d, "backend_errors");
    assert!(
        why.iter().any(|e| e.starts_with(&bad.to_string())),
        "the evidence names {bad}: {why:?}"
    );
    assert!(
        why.iter()
            .all(|e| !e.starts_with(&ok1.to_string()) && !e.starts_with(&ok2.to_string())),
        "and not the good ones: {why:?}"
    );

    // top: the service's requests, with the failures the client saw (once the proxy's
    // last report, about a second behind, is in).
    let deadline = std::time::Instant::now() + TIMEOUT;
    let row = loop {
        let top = agent.get_json("/v1/top").unwrap();
        let row = top
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["service"] == "shop")
            .expect("shop in top")
            .clone();
        if row["requests"]["requests"]["last"] == REQUESTS || std::time::Instant::now() > deadline {
            break row;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("top: {row:#}");
    assert_eq!(row["requests"]["requests"]["last"], REQUESTS, "{row:#}");
    assert_eq!(row["requests"]["failed"]["last"], failed, "{row:#}");

    let out = sockmesh_cli(agent, &["diagnose", "shop"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("sockmesh diagnose shop:\n{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("shop: most likely backend_errors"),
        "{text}"
    );
}

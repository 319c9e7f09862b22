//! Caller routes and locality per request in the real kernel (issue 19): the proxy picks
//! each request's backend among those the caller's class may use, as the kernel's slot
//! tables for that class hold them, so an http service honours `routes:` (by the calling
//! workload's labels) and `locality:` (its zone) like a tcp service does at connect().
//!
//! Two workloads call through their VIPs: `beta` (labels `lane: beta`, zone a) and `web`
//! (no labels, zone a). Service `shop` routes `lane: beta` to the canary and everyone else
//! to stable; service `zonal` prefers the caller's zone. Counts are exact.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient};
use sockmesh_bpf_tests::l7::{start_agent_with_proxy, wait_proxy};
use sockmesh_bpf_tests::{sum_metric, TestBed};

const TIMEOUT: Duration = Duration::from_secs(60);
const REQUESTS: u64 = 60;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn each_caller_gets_its_routes_and_its_zone_per_request() {
    let stable = addr("127.0.0.40:18945");
    let canary = addr("127.0.0.41:18945");
    let zone_a = addr("127.0.0.42:18945");
    let zone_b = addr("127.0.0.43:18945");
    let shop = addr("127.100.94.20:18944");
    let zonal = addr("127.100.94.21:18944");
    let http = HttpBackends::start(&[
        (stable, "ok"),
        (canary, "ok"),
        (zone_a, "ok"),
        (zone_b, "ok"),
    ])
    .unwrap();

    let mut bed = TestBed::new("l7-callers", "version: 1\nservices: []\n").unwrap();
    let beta = bed.cgroup().child("beta").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: beta, cgroup: {beta_cg}, labels: {{lane: beta}}, zone: a}}
  - {{name: web, cgroup: {web_cg}, zone: a}}
services:
  - name: shop
    vip: {shop_ip}
    port: {port}
    protocol: http
    routes:
      - match: {{lane: beta}}
        to: {{track: canary}}
      - to: {{track: stable}}
    backends:
      - {{addr: "{stable}", labels: {{track: stable}}}}
      - {{addr: "{canary}", labels: {{track: canary}}}}
  - name: zonal
    vip: {zonal_ip}
    port: {port}
    protocol: http
    locality: {{prefer_zone: true}}
    backends:
      - {{addr: "{zone_a}", zone: a}}
      - {{addr: "{zone_b}", zone: b}}
"#,
        beta_cg = beta.relative_path().unwrap(),
        web_cg = web.relative_path().unwrap(),
        shop_ip = shop.ip(),
        zonal_ip = zonal.ip(),
        port = shop.port(),
    );
    bed.write_config(&yaml).unwrap();
    let metrics = start_agent_with_proxy(&mut bed, &["beta", "web"], TIMEOUT).unwrap();

    let totals = || http.totals().unwrap();
    let run = |cgroup, target| {
        let r = HttpClient::get(target, REQUESTS as usize)
            .run(cgroup)
            .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.code(200), REQUESTS, "{:?}", r.codes);
    };

    // Routes: beta's requests all go to the canary, web's all to stable.
    let before = totals();
    run(&beta, shop);
    let after_beta = totals();
    assert_eq!(after_beta[1] - before[1], REQUESTS, "beta -> canary");
    assert_eq!(after_beta[0], before[0], "none of beta's to stable");
    run(&web, shop);
    let after_web = totals();
    assert_eq!(after_web[0] - after_beta[0], REQUESTS, "web -> stable");
    assert_eq!(after_web[1], after_beta[1], "none of web's to the canary");

    // Locality: both callers are in zone a, so the zone-a backend serves every request.
    run(&web, zonal);
    run(&beta, zonal);
    let after_zonal = totals();
    assert_eq!(after_zonal[2] - after_web[2], 2 * REQUESTS, "zone a only");
    assert_eq!(after_zonal[3], after_web[3], "nothing to zone b");

    // The proxy counted each request with its caller.
    let text = wait_proxy(metrics, "all requests counted", TIMEOUT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[]) >= (4 * REQUESTS) as f64
    })
    .unwrap();
    for (service, caller) in [("shop", "beta"), ("shop", "web"), ("zonal", "web")] {
        assert_eq!(
            sum_metric(
                &text,
                "sockmesh_requests_total",
                &[("service", service), ("caller", caller), ("code", "200")]
            ),
            REQUESTS as f64,
            "{service} from {caller}"
        );
    }
}

//! The L7 path end to end in the real kernel (issue 19): one agent started with
//! `--config`, a config with http services and a tcp service; the agent starts the
//! `sockmesh-proxy` it supervises, the connect hook sends the http services' connections to
//! it, and stock clients (python's http.client, curl) in a workload's cgroup call the VIPs.
//!
//! Shown here: retries hide a backend that answers 503 (0 errors at the client, every 503
//! retried and counted) and the proxy's `consecutive_5xx` rule gets it banned by the agent's
//! engine; POSTs are not retried; header and path routes send requests to their subset
//! (exact counts); the request metrics name the caller workload the kernel stamped; a tcp
//! service in the same config is not proxied.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient};
use sockmesh_bpf_tests::l7::{proxy_metrics, start_agent_with_proxy, wait_proxy};
use sockmesh_bpf_tests::{sum_metric, BackendMode, ConnectClient, TcpBackendSet, TestBed};

const TIMEOUT: Duration = Duration::from_secs(60);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn http_services_are_served_by_the_proxy_and_tcp_services_are_not() {
    let ok1 = addr("127.0.0.2:18941");
    let ok2 = addr("127.0.0.3:18941");
    let bad = addr("127.0.0.4:18941");
    let post_ok = addr("127.0.0.5:18941");
    let post_bad = addr("127.0.0.6:18941");
    let stable = addr("127.0.0.7:18941");
    let canary = addr("127.0.0.8:18941");
    let tcp_backend = addr("127.0.0.9:18942");
    let shop = addr("127.100.94.1:18940");
    let orders = addr("127.100.94.2:18940");
    let routed = addr("127.100.94.3:18940");
    let plain = addr("127.100.94.4:18943");
    let http = HttpBackends::start(&[
        (ok1, "ok"),
        (ok2, "ok"),
        (bad, "503"),
        (post_ok, "ok"),
        (post_bad, "503"),
        (stable, "ok"),
        (canary, "ok"),
    ])
    .unwrap();
    let tcp = TcpBackendSet::start(&[tcp_backend], BackendMode::Identify).unwrap();

    let mut bed = TestBed::new("l7-proxy", "version: 1\nservices: []\n").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: web, cgroup: {web_cg}}}
services:
  - name: shop
    vip: {shop_ip}
    port: {port}
    protocol: http
    http:
      timeout: 10s
      retries: {{attempts: 2, on: ["503"]}}
    outlier: {{consecutive_5xx: 5}}
    backends: [{{addr: "{ok1}"}}, {{addr: "{ok2}"}}, {{addr: "{bad}"}}]
  - name: orders
    vip: {orders_ip}
    port: {port}
    protocol: http
    http:
      retries: {{attempts: 2, on: ["503"]}}
    outlier: {{consecutive_5xx: 0}}
    backends: [{{addr: "{post_ok}"}}, {{addr: "{post_bad}"}}]
  - name: routed
    vip: {routed_ip}
    port: {port}
    protocol: http
    http:
      routes:
        - match: {{headers: {{x-canary: "1"}}}}
          to: {{track: canary}}
        - match: {{path_prefix: /v2}}
          to: {{track: canary}}
    backends:
      - {{addr: "{stable}", labels: {{track: stable}}}}
      - {{addr: "{canary}", labels: {{track: canary}}}}
  - name: plain
    vip: {plain_ip}
    port: {plain_port}
    backends: [{{addr: "{tcp_backend}"}}]
"#,
        web_cg = web.relative_path().unwrap(),
        shop_ip = shop.ip(),
        orders_ip = orders.ip(),
        routed_ip = routed.ip(),
        plain_ip = plain.ip(),
        port = shop.port(),
        plain_port = plain.port(),
    );
    bed.write_config(&yaml).unwrap();
    let metrics = start_agent_with_proxy(&mut bed, &["web"], TIMEOUT).unwrap();

    // 1. Retries hide the 503 backend; the proxy's consecutive_5xx rule bans it.
    let r = HttpClient::get(shop, 1000).run(&web).unwrap();
    eprintln!("shop: {r:?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.code(200), 1000, "the client saw only 200s: {:?}", r.codes);
    let totals = http.totals().unwrap();
    let bad_got = totals[2];
    eprintln!("shop backends got {:?} (ok1, ok2, bad)", &totals[..3]);
    assert_eq!(
        totals[0] + totals[1],
        1000,
        "every request answered by a good backend once"
    );
    assert!(bad_got >= 5, "the 503 backend was tried ({bad_got})");
    let text = wait_proxy(metrics, "1000 shop requests counted", TIMEOUT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[("service", "shop")]) >= 1000.0
    })
    .unwrap();
    assert_eq!(
        sum_metric(
            &text,
            "sockmesh_requests_total",
            &[("service", "shop"), ("code", "200")]
        ),
        1000.0
    );
    assert_eq!(
        sum_metric(
            &text,
            "sockmesh_requests_total",
            &[("service", "shop"), ("caller", "web")]
        ),
        1000.0,
        "the caller is the workload the kernel stamped"
    );
    assert_eq!(
        sum_metric(
            &text,
            "sockmesh_request_retries_total",
            &[("service", "shop")]
        ),
        bad_got as f64,
        "every 503 was retried once, and counted"
    );
    bed.agent()
        .wait_metrics("a consecutive_5xx ban", TIMEOUT, |t| {
            sum_metric(
                t,
                "sockmesh_backend_bans_total",
                &[("reason", "consecutive_5xx")],
            ) >= 1.0
        })
        .unwrap();

    // 2. POSTs are not retried: each 503 reaches the client, and nothing is retried.
    let r = HttpClient::get(orders, 40)
        .method("POST")
        .run(&web)
        .unwrap();
    eprintln!("orders: {r:?}");
    let counts = http.counts().unwrap();
    let posted = |i: usize| counts[i].get("POST").copied().unwrap_or(0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.code(503), posted(4), "every 503 reached the client");
    assert_eq!(r.code(200), posted(3));
    assert_eq!(r.code(200) + r.code(503), 40);
    assert!(
        r.code(503) >= 1,
        "the 503 backend got some POSTs: {:?}",
        r.codes
    );
    let text = wait_proxy(metrics, "40 orders requests", TIMEOUT, |t| {
        sum_metric(t, "sockmesh_requests_total", &[("service", "orders")]) >= 40.0
    })
    .unwrap();
    assert_eq!(
        sum_metric(
            &text,
            "sockmesh_request_retries_total",
            &[("service", "orders")]
        ),
        0.0,
        "no POST was retried"
    );

    // 3. Routes: exact counts per subset.
    let routed_counts = || {
        let t = http.totals().unwrap();
        (t[5], t[6])
    };
    let r = HttpClient::get(routed, 30)
        .header("x-canary", "1")
        .run(&web)
        .unwrap();
    assert_eq!(r.code(200), 30);
    assert_eq!(
        routed_counts(),
        (0, 30),
        "the header route reaches the canary only"
    );
    let r = HttpClient::get(routed, 20)
        .path("/v2/items")
        .run(&web)
        .unwrap();
    assert_eq!(r.code(200), 20);
    assert_eq!(
        routed_counts(),
        (0, 50),
        "the path route reaches the canary only"
    );
    let r = HttpClient::get(routed, 40).run(&web).unwrap();
    assert_eq!(r.code(200), 40);
    let (s, c) = routed_counts();
    assert_eq!(s + c, 90, "unmatched requests go to the whole service");
    assert!(
        s > 0,
        "unmatched requests reach the stable backend too ({s}, {c})"
    );

    // 4. curl, unmodified, through the VIP.
    let out = web
        .command("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{shop}/")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        body == ok1.to_string() || body == ok2.to_string(),
        "curl got {body:?}"
    );

    // 5. The tcp service in the same config goes straight to its backend.
    let served = |t: &str| {
        sum_metric(
            t,
            "sockmesh_proxy_connections_total",
            &[("event", "served")],
        )
    };
    let before = served(&proxy_metrics(metrics));
    let report = ConnectClient::new(plain, 20).run(Some(&web), None).unwrap();
    report.assert_all_ok("tcp service");
    assert!(report
        .results
        .iter()
        .all(|c| c.backend.as_deref() == Some(tcp_backend.to_string().as_str())));
    assert_eq!(tcp.total_accepts(), 20);
    let after = served(&proxy_metrics(metrics));
    assert_eq!(before, after, "no tcp-service connection reached the proxy");
    assert!(
        before >= 1.0,
        "the http clients' connections were served by the proxy"
    );
}

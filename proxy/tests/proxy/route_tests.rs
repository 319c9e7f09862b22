//! Request routes to labelled subsets, HTTP/2 through the proxy, ineligible backends.

use http::{Request, StatusCode, Version};

use super::*;

/// `/v2` with `x-canary: 1` goes to the canary only, `/admin` to the stable backends only,
/// anything else to the whole service: counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_routes_send_requests_to_their_subsets() {
    let stable1 = TestBackend::start(Mode::Status(200)).await;
    let stable2 = TestBackend::start(Mode::Status(200)).await;
    let canary = TestBackend::start(Mode::Status(200)).await;
    let routes = http(
        "routes:\n\
         - {match: {path_prefix: /v2, headers: {x-canary: \"1\"}}, to: {track: canary}}\n\
         - {match: {path_exact: /admin}, to: {track: stable}}\n",
    );
    let backends = [
        spec(stable1.addr, &[("track", "stable")]),
        spec(stable2.addr, &[("track", "stable")]),
        spec(canary.addr, &[("track", "canary")]),
    ];
    let proxy = RunningProxy::start(routes, &backends).await;
    let client = client();
    let hits = || [stable1.hits(), stable2.hits(), canary.hits()];

    for _ in 0..30 {
        let request = Request::get(proxy.url("/v2/items"))
            .header("x-canary", "1")
            .body(Default::default())
            .unwrap();
        assert_eq!(send(&client, request).await.0, StatusCode::OK);
    }
    assert_eq!(hits(), [0, 0, 30], "canary route");

    for _ in 0..40 {
        assert_eq!(
            send(&client, get(&proxy.url("/admin"))).await.0,
            StatusCode::OK
        );
    }
    let [s1, s2, c] = hits();
    assert_eq!((s1 + s2, c), (40, 30), "stable route");

    for _ in 0..60 {
        assert_eq!(
            send(&client, get(&proxy.url("/v2/items"))).await.0,
            StatusCode::OK
        );
    }
    let [s1, s2, c] = hits();
    assert_eq!(s1 + s2 + c, 130, "no match: the whole service");
    assert!(c > 30, "the canary is part of the whole service");
    println!("canary 30/30, stable 40/40, whole service: {:?}", hits());
}

/// HTTP/2 with prior knowledge from a hyper client: answered over HTTP/2, sent on to the
/// backend over h2c; many requests multiplexed on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_works_through_the_proxy() {
    let a = TestBackend::start(Mode::Status(200)).await;
    let b = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(a.addr, &[]), spec(b.addr, &[])]).await;
    let h2 = h2_client();
    let mut calls = Vec::new();
    for _ in 0..50 {
        let h2 = h2.clone();
        let url = proxy.url("/h2");
        calls.push(tokio::spawn(async move { send(&h2, get(&url)).await }));
    }
    for call in calls {
        let (status, _, version) = call.await.unwrap();
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    }
    assert_eq!(a.hits() + b.hits(), 50);
    assert!(a
        .seen()
        .iter()
        .chain(&b.seen())
        .all(|s| s.version == Version::HTTP_2));
    let reports = proxy.wait_reports(50).await;
    assert!(reports.iter().all(|r| r.code.to_string() == "200"));
}

/// No eligible backend (both banned): 503 from the proxy, reported without a backend;
/// unbanning one serves again, from that one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_backend_gives_503() {
    let a = TestBackend::start(Mode::Status(200)).await;
    let b = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(a.addr, &[]), spec(b.addr, &[])]).await;
    for backend in &proxy.service.backends {
        backend.set_eligible(false);
    }
    let client = client();
    let (status, body, _) = send(&client, get(&proxy.url("/"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "sockmesh: no backend\n");
    proxy.service.backend(b.addr).unwrap().set_eligible(true);
    for _ in 0..10 {
        assert_eq!(send(&client, get(&proxy.url("/"))).await.0, StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (0, 10));
    let reports = proxy.wait_reports(11).await;
    assert_eq!(reports[0].backend, None);
    assert_eq!(reports[0].code.to_string(), "503");
}

/// Hop-by-hop headers stay on the caller's hop (those `connection` lists too); the caller's
/// address is appended to `x-forwarded-for`; the `host` is kept; the backend's own
/// hop-by-hop headers do not reach the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_the_caller_appended() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
    let request = Request::get(proxy.url("/h"))
        .header("connection", "x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-kept", "yes")
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&client(), request).await.0, StatusCode::OK);
    let seen = &backend.seen()[0];
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    let forwarded: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded, ["192.0.2.7", "127.0.0.1"]);
    assert_eq!(seen.headers.get("x-kept").unwrap(), "yes");
    assert_eq!(seen.headers.get("host").unwrap(), &proxy.addr.to_string());
}

/// Tries reuse kept-alive connections: 100 requests one after another, from HTTP/1.1 and
/// HTTP/2 callers, take one connection per protocol to the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_kept_alive_and_reused() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
    let (h1, h2) = (client(), h2_client());
    for i in 0..100 {
        let client = if i % 2 == 0 { &h1 } else { &h2 };
        assert_eq!(send(client, get(&proxy.url("/"))).await.0, StatusCode::OK);
    }
    assert_eq!(backend.hits(), 100);
    assert_eq!(
        backend.connections(),
        2,
        "one HTTP/1.1 and one h2c connection"
    );
}

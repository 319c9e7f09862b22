//! Retries: a backend answering 503 hidden from the client, POST not retried unless the
//! service says so, a dead backend's connect failures retried.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sockmesh_proxy::retry::Outcome;

use super::*;

/// 200 GETs over a backend answering 200 and one answering 503, retrying on 503: the
/// client sees 200 every time, and every 503 try is reported as a retried
/// `gateway_error` on the failing backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_backend_answering_503() {
    let good = TestBackend::start(Mode::Status(200)).await;
    let bad = TestBackend::start(Mode::Status(503)).await;
    // A budget of 100 % so the expected ~100 retries stay well inside it (the default
    // 20 % plus 10/s over 10 s allows 140 for 200 requests: too close to test on).
    let spec = http("retries: {attempts: 2, on: [connect_failure, \"503\"], budget_percent: 100}");
    let proxy = RunningProxy::start(spec, &[spec_of(&good), spec_of(&bad)]).await;
    let client = client();
    let mut non_200 = 0;
    for _ in 0..200 {
        let (status, body, _) = send(&client, get(&proxy.url("/items"))).await;
        if status != StatusCode::OK {
            non_200 += 1;
        }
        assert_eq!(body, good.addr.to_string());
    }
    assert_eq!(non_200, 0, "the client saw non-200 answers");
    let reports = proxy.wait_reports(200).await;
    let retries: usize = reports.iter().map(|r| r.retries.len()).sum();
    assert!(bad.hits() > 0, "the 503 backend was never picked");
    assert_eq!(retries, bad.hits(), "each 503 try was retried once");
    assert_eq!(good.hits(), 200);
    for r in &reports {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend, Some(good.addr));
        assert_eq!(r.code.to_string(), "200");
        assert!(r.retries.iter().all(|&reason| reason == "gateway_error"));
        assert_eq!(r.tries.len(), r.retries.len() + 1);
        for t in &r.tries[..r.retries.len()] {
            assert_eq!((t.backend, t.outcome), (bad.addr, Outcome::Status(503)));
        }
    }
    println!(
        "503 backend hit {} times, {retries} retries, 0 errors in 200 requests",
        bad.hits()
    );
}

fn spec_of(backend: &TestBackend) -> sockmesh_model::BackendSpec {
    spec(backend.addr, &[])
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(b"order=1")))
        .unwrap()
}

/// POSTs on 503 are handed to the client as they are (RFC 9110: not idempotent); with
/// `retry_non_idempotent` they are retried, the buffered body sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_on_503_unless_configured() {
    let good = TestBackend::start(Mode::Status(200)).await;
    let bad = TestBackend::start(Mode::Status(503)).await;
    let backends = [spec_of(&good), spec_of(&bad)];
    let client = client();

    let strict = RunningProxy::start(
        http("retries: {on: [\"503\"], budget_percent: 100}"),
        &backends,
    )
    .await;
    let mut got_503 = 0;
    for _ in 0..40 {
        let (status, _, _) = send(&client, post(&strict.url("/orders"))).await;
        got_503 += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(got_503 > 0, "the 503 backend was never picked in 40 POSTs");
    assert_eq!(got_503, bad.hits(), "every 503 reached the client");
    let reports = strict.wait_reports(40).await;
    assert!(reports.iter().all(|r| r.retries.is_empty()));

    let lenient = RunningProxy::start(
        http("retries: {on: [\"503\"], budget_percent: 100, retry_non_idempotent: true}"),
        &backends,
    )
    .await;
    let bad_before = bad.hits();
    for _ in 0..40 {
        let (status, _, _) = send(&client, post(&lenient.url("/orders"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(bad.hits() > bad_before, "the 503 backend was never picked");
    let reports = lenient.wait_reports(40).await;
    let retries: usize = reports.iter().map(|r| r.retries.len()).sum();
    assert_eq!(retries, bad.hits() - bad_before);
    for seen in good.seen().iter().chain(&bad.seen()) {
        assert_eq!(seen.body, Bytes::from_static(b"order=1"), "body sent whole");
    }
}

/// A backend nothing listens on: connect failures are retried (for every method: the
/// request never left) on the live backend, and reported as `connect_failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_move_to_a_live_backend() {
    let good = TestBackend::start(Mode::Status(200)).await;
    let dead = dead_addr().await;
    let proxy = RunningProxy::start(http("{}"), &[spec_of(&good), spec(dead, &[])]).await;
    let client = client();
    for _ in 0..30 {
        let (status, _, _) = send(&client, post(&proxy.url("/"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let reports = proxy.wait_reports(30).await;
    let retried: Vec<_> = reports.iter().filter(|r| !r.retries.is_empty()).collect();
    assert!(
        !retried.is_empty(),
        "the dead backend was never picked in 30"
    );
    for r in retried {
        assert_eq!(r.retries, ["connect_failure"]);
        assert_eq!(r.tries[0].backend, dead);
    }
}

/// A backend that closes every connection alone: 502, reported with no backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_backend_gives_502() {
    let closing = TestBackend::start(Mode::Close).await;
    let proxy = RunningProxy::start(http("{}"), &[spec_of(&closing)]).await;
    let (status, body, _) = send(&client(), get(&proxy.url("/"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&body).starts_with("sockmesh: "));
    let reports = proxy.wait_reports(1).await;
    assert_eq!(reports[0].backend, None);
    assert_eq!(reports[0].code.to_string(), "502");
}

/// A body over the 64 KiB the proxy holds is streamed to the backend whole, and such a
/// request gets one try: its 503s reach the client even with `retry_non_idempotent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_streamed_and_not_retried() {
    let good = TestBackend::start(Mode::Status(200)).await;
    let bad = TestBackend::start(Mode::Status(503)).await;
    let spec_http =
        http("retries: {on: [\"503\"], budget_percent: 100, retry_non_idempotent: true}");
    let proxy = RunningProxy::start(spec_http, &[spec_of(&good), spec_of(&bad)]).await;
    let client = client();
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let mut got_503 = 0;
    for _ in 0..20 {
        let request = Request::put(proxy.url("/blob"))
            .body(Full::new(big.clone()))
            .unwrap();
        let (status, _, _) = send(&client, request).await;
        got_503 += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(got_503 > 0, "the 503 backend was never picked in 20");
    assert_eq!(got_503, bad.hits());
    assert_eq!(good.hits() + bad.hits(), 20, "one try each");
    for seen in good.seen().iter().chain(&bad.seen()) {
        assert_eq!(seen.body.len(), big.len());
    }
    let reports = proxy.wait_reports(20).await;
    assert!(reports.iter().all(|r| r.retries.is_empty()));
}

//! Timeouts and deadlines: a hung backend left for another by the per-try timeout, 504
//! when every backend hangs, and the caller's deadline shortening the request's and passed
//! on to the backend.

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use sockmesh_proxy::deadline::{parse_grpc_timeout, parse_sockmesh_timeout};
use sockmesh_proxy::retry::Outcome;

use super::*;

/// How much later than its deadline a 504 may come on a busy 2-core machine: generous, so
/// these tests show the deadline holds (no hang, well under the 10 s service timeout in
/// the gRPC case), not how fast; the latency is `cargo xtask bench`'s to measure.
const TOLERANCE: Duration = Duration::from_secs(5);

/// One backend hangs: each try that lands on it gives up after `per_try_timeout` and the
/// request moves to the other backend; the client sees only 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_a_request_off_a_hung_backend() {
    let hung = TestBackend::start(Mode::Hang).await;
    let good = TestBackend::start(Mode::Status(200)).await;
    let spec_http = http(
        "{timeout: 10s, per_try_timeout: 300ms, \
         retries: {on: [per_try_timeout], budget_percent: 100}}",
    );
    let proxy = RunningProxy::start(spec_http, &[spec(hung.addr, &[]), spec(good.addr, &[])]).await;
    let client = client();
    for _ in 0..20 {
        let (status, _, _) = send(&client, get(&proxy.url("/"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let reports = proxy.wait_reports(20).await;
    let retried: Vec<_> = reports.iter().filter(|r| !r.retries.is_empty()).collect();
    assert!(
        !retried.is_empty(),
        "the hung backend was never picked in 20"
    );
    assert_eq!(retried.len(), hung.hits());
    for r in retried {
        assert_eq!(r.retries, ["per_try_timeout"]);
        assert_eq!(r.tries[0].backend, hung.addr);
        assert_eq!(r.tries[0].outcome, Outcome::PerTryTimeout);
        assert_eq!(r.backend, Some(good.addr));
    }
}

/// Every backend hangs: the client gets a 504 from the proxy within `timeout` (1 s) plus
/// [`TOLERANCE`], after the tries the deadline allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_hung_gives_504_within_the_timeout() {
    let a = TestBackend::start(Mode::Hang).await;
    let b = TestBackend::start(Mode::Hang).await;
    let spec_http = http(
        "{timeout: 1s, per_try_timeout: 400ms, \
         retries: {attempts: 5, on: [per_try_timeout], budget_percent: 100}}",
    );
    let proxy = RunningProxy::start(spec_http, &[spec(a.addr, &[]), spec(b.addr, &[])]).await;
    let start = Instant::now();
    let (status, body, _) = send(&client(), get(&proxy.url("/"))).await;
    let took = start.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(String::from_utf8_lossy(&body).starts_with("sockmesh: "));
    assert!(
        took < Duration::from_secs(1) + TOLERANCE,
        "504 after {took:?}"
    );
    let reports = proxy.wait_reports(1).await;
    assert_eq!(reports[0].code.to_string(), "504");
    // 400 ms, 400 ms, then what is left of 1 s: three tries, alternating backends.
    assert!(reports[0].tries.len() >= 2, "{:?}", reports[0].tries);
    assert_ne!(reports[0].tries[0].backend, reports[0].tries[1].backend);
    println!(
        "all hung: 504 after {took:?} (timeout 1 s), {} tries",
        reports[0].tries.len()
    );
}

/// The backend sees `x-sockmesh-timeout`: the service's 10 s when the caller sends none,
/// the caller's shorter 800 ms when it does (minus the time in the proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_timeout_shortens_the_deadline_and_is_passed_on() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("timeout: 10s"), &[spec(backend.addr, &[])]).await;
    let client = client();
    send(&client, get(&proxy.url("/plain"))).await;
    let caller = Request::get(proxy.url("/short"))
        .header("x-sockmesh-timeout", "800")
        .body(Default::default())
        .unwrap();
    send(&client, caller).await;
    let seen = backend.seen();
    let passed = |i: usize| {
        let value = seen[i]
            .headers
            .get("x-sockmesh-timeout")
            .expect("passed on");
        parse_sockmesh_timeout(value.as_bytes()).unwrap()
    };
    let (plain, short) = (passed(0), passed(1));
    assert!(
        plain <= Duration::from_secs(10) && plain > Duration::from_secs(5),
        "{plain:?}"
    );
    assert!(
        short <= Duration::from_millis(800) && short > Duration::ZERO,
        "{short:?}"
    );
    println!("backend saw {plain:?} (service timeout 10 s) and {short:?} (caller's 800 ms)");
}

/// A gRPC call over h2c with `grpc-timeout: 500m`: the backend gets a `grpc-timeout` of at
/// most 500 ms; and a caller's 300 ms in front of a hung backend ends in a 504 well before
/// the service's 10 s, with `grpc-status: 4` (DEADLINE_EXCEEDED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_shortens_the_deadline_and_is_passed_on() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("timeout: 10s"), &[spec(backend.addr, &[])]).await;
    let grpc = |url: String, timeout: &str| {
        Request::post(url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(Default::default())
            .unwrap()
    };
    let h2 = h2_client();
    send(&h2, grpc(proxy.url("/shop.Cart/Add"), "500m")).await;
    let seen = backend.seen();
    let value = seen[0].headers.get("grpc-timeout").expect("passed on");
    let passed = parse_grpc_timeout(value.as_bytes()).unwrap();
    assert!(
        passed <= Duration::from_millis(500) && passed > Duration::ZERO,
        "{passed:?}"
    );
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].headers.get("te").unwrap(), "trailers");

    let hung = TestBackend::start(Mode::Hang).await;
    let proxy = RunningProxy::start(http("timeout: 10s"), &[spec(hung.addr, &[])]).await;
    let start = Instant::now();
    let response = h2
        .request(grpc(proxy.url("/shop.Cart/Add"), "300m"))
        .await
        .unwrap();
    // gRPC's Trailers-Only form (grpc_tests.rs): DEADLINE_EXCEEDED where others get a 504.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("grpc-status").unwrap(), "4");
    assert!(start.elapsed() < Duration::from_millis(300) + TOLERANCE);
    let reports = proxy.wait_reports(1).await;
    assert_eq!(reports[0].code.to_string(), "grpc_deadline_exceeded");
    println!("grpc: backend saw {passed:?} of the caller's 500 ms");
}

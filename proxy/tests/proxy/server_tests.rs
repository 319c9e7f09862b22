//! The listener against bad callers, and graceful shutdown.

use std::time::{Duration, Instant};

use http::StatusCode;
use sockmesh_proxy::metrics::Refusal;
use sockmesh_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Writes `bytes` on a fresh connection and reads until the proxy closes it (at most 20 s):
/// what the proxy answered.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    String::from_utf8_lossy(&raw_bytes(addr, bytes).await).into_owned()
}

/// As [`raw`], the answer's bytes; a reset ends the answer.
async fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The proxy may close before reading it all; a failed write is part of the answer.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer));
    match read.await {
        Ok(_) => answer,
        Err(_) => panic!("the proxy held the connection for 20 s"),
    }
}

fn first_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("(closed)")
}

fn refused(answer: &str) -> bool {
    answer.is_empty() || answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 431")
}

/// Bytes that are not HTTP get a 400 (or a close), never a hang; a silent connection is
/// closed after `header_read_timeout`, and so is a head that never ends (slowloris); other
/// clients are served meanwhile, and nothing reached the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_callers_are_refused_and_others_served() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let proxy = RunningProxy::start_with(http("{}"), &[spec(backend.addr, &[])], config).await;
    let addr = proxy.addr;

    // A silent connection and a slowloris head held open while others are served.
    let silent = tokio::spawn(async move { raw(addr, b"").await });
    let slow = tokio::spawn(async move { raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n").await });
    let garbage = raw(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(refused(&garbage), "garbage answered {garbage:?}");
    let nul = raw(addr, &[0u8; 4096]).await;
    assert!(refused(&nul), "NUL bytes answered {nul:?}");
    let client = client();
    for _ in 0..5 {
        assert_eq!(send(&client, get(&proxy.url("/"))).await.0, StatusCode::OK);
    }

    let silent = silent.await.unwrap();
    assert!(silent.is_empty(), "silent connection got {silent:?}");
    let slow = slow.await.unwrap();
    assert!(
        slow.is_empty() || slow.starts_with("HTTP/1.1 408"),
        "slowloris got {slow:?}"
    );
    assert_eq!(
        backend.hits(),
        5,
        "only the good requests reached the backend"
    );
    println!(
        "garbage: {:?}, NUL: {:?}, silent: {:?}, slowloris: {:?}",
        first_line(&garbage),
        first_line(&nul),
        first_line(&silent),
        first_line(&slow)
    );
    let stats = proxy.stats();
    assert_eq!(stats.silent.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(stats.errors.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    // Each refusal counted once under its reason; the good requests under none.
    wait_for("the refusals counted", || {
        stats.refused.get(Refusal::NotHttp) == 2 && stats.refused.get(Refusal::HeadTimeout) == 1
    })
    .await;
    for other in [
        Refusal::HeadTooLarge,
        Refusal::Http2Flood,
        Refusal::Http2Protocol,
    ] {
        assert_eq!(stats.refused.get(other), 0, "{other:?}");
    }
}

/// A 1 MiB header is refused with 431 (or 400, or a close) without reaching the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_header_is_refused() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
    let mut request = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend(b"\r\n\r\n");
    let answer = raw(proxy.addr, &request).await;
    assert!(
        refused(&answer),
        "answered {:?}",
        &answer[..answer.len().min(80)]
    );
    assert_eq!(backend.hits(), 0);
    println!("1 MiB header: {:?}", first_line(&answer));
    assert_eq!(
        send(&client(), get(&proxy.url("/"))).await.0,
        StatusCode::OK
    );
    let refused = &proxy.stats().refused;
    wait_for("the refusal counted", || {
        refused.get(Refusal::HeadTooLarge) == 1
    })
    .await;
    assert_eq!(refused.get(Refusal::NotHttp), 0);
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// The error code of the first GOAWAY among the server's frames in `bytes`.
fn goaway_code(bytes: &[u8]) -> Option<u32> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, payload) = (rest[3], rest.get(9..9 + len)?);
        if kind == 7 && len >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        rest = &rest[9 + len..];
    }
    None
}

/// HTTP/2 rapid reset (CVE-2023-44487) in raw frames: the preface, SETTINGS, then 500
/// streams each opened (HEADERS, a literal HPACK block) and reset (RST_STREAM CANCEL) at
/// once, in one write. hyper's limit on streams reset before they are accepted answers
/// GOAWAY ENHANCE_YOUR_CALM and closes: counted as `http2_flood`; a new caller is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_burst_gets_goaway_and_is_counted() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(h2_frame(4, 0, 0, &[]));
    // :method GET, :scheme http, :path / (static table), :authority x (literal).
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        burst.extend(h2_frame(1, 0x5, stream, &block));
        burst.extend(h2_frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    let answer = raw_bytes(proxy.addr, &burst).await;
    let code = goaway_code(&answer);
    println!("rapid reset: GOAWAY {code:?}, {} bytes", answer.len());
    assert_eq!(code, Some(11), "GOAWAY ENHANCE_YOUR_CALM");
    let refused = &proxy.stats().refused;
    wait_for("the refusal counted", || {
        refused.get(Refusal::Http2Flood) == 1
    })
    .await;
    assert_eq!(
        send(&h2_client(), get(&proxy.url("/"))).await.0,
        StatusCode::OK
    );
}

/// A caller that starts the HTTP/2 preface and stalls (a slowloris the HTTP/1.1 head timer
/// would not see: hyper waits for the whole preface without a timer) is closed after
/// `header_read_timeout` and counted as `head_timeout`; a whole preface is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_preface_is_closed_after_the_head_timeout() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let proxy = RunningProxy::start_with(http("{}"), &[spec(backend.addr, &[])], config).await;
    let started = Instant::now();
    let answer = raw(proxy.addr, b"PRI * HTTP/2.0\r\n").await;
    assert!(answer.is_empty(), "answered {answer:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed at the timeout, not before: {:?}",
        started.elapsed()
    );
    let refused = &proxy.stats().refused;
    wait_for("the refusal counted", || {
        refused.get(Refusal::HeadTimeout) == 1
    })
    .await;
    assert_eq!(
        send(&h2_client(), get(&proxy.url("/"))).await.0,
        StatusCode::OK
    );
}

/// An error that is no hyper or h2 error is no refusal.
#[test]
fn other_errors_are_no_refusal() {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    assert_eq!(sockmesh_proxy::server::refusal(&io), None);
}

/// Shutdown while a request is in flight (the backend answers after 1 s): the request
/// finishes with 200, the proxy reports a complete drain, and new connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let backend = TestBackend::start(Mode::Delay(Duration::from_secs(1))).await;
    let mut proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { send(&client(), get(&url)).await });
    wait_for("the request at the backend", || backend.hits() == 1).await;

    let start = Instant::now();
    let drained = proxy.shut_down().await;
    let (status, body, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, backend.addr.to_string());
    assert!(
        drained.complete,
        "drain cut short after {:?}",
        start.elapsed()
    );
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
    proxy.wait_reports(1).await;
}

/// A gRPC caller that leaves (its deadline, a cancel) is reported as gRPC's CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_caller_leaving_is_reported_as_cancelled() {
    let hung = TestBackend::start(Mode::Hang).await;
    let proxy = RunningProxy::start(http("timeout: 30s"), &[spec(hung.addr, &[])]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /pkg.Svc/Call HTTP/1.1\r\nhost: shop\r\ncontent-type: application/grpc\r\n\
              content-length: 5\r\n\r\n\0\0\0\0\0",
        )
        .await
        .unwrap();
    wait_for("the request at the backend", || hung.hits() == 1).await;
    drop(stream);
    let reports = proxy.wait_reports(1).await;
    assert_eq!(reports[0].status.as_u16(), 499);
    assert_eq!(reports[0].code.to_string(), "grpc_cancelled");
    assert!(!reports[0].code.is_server_error());
}

/// A caller that leaves while its request waits on a hung backend: the request is reported
/// as 499 (`4xx`), and the backend's outstanding count goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaving_is_reported_as_499() {
    let hung = TestBackend::start(Mode::Hang).await;
    let proxy = RunningProxy::start(http("timeout: 30s"), &[spec(hung.addr, &[])]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /wait HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    wait_for("the request at the backend", || hung.hits() == 1).await;
    assert_eq!(proxy.service.backends[0].outstanding(), 1);
    drop(stream);
    let reports = proxy.wait_reports(1).await;
    assert_eq!(reports[0].status.as_u16(), 499);
    assert_eq!(reports[0].code.to_string(), "4xx");
    wait_for("no outstanding try", || {
        proxy.service.backends[0].outstanding() == 0
    })
    .await;
}

/// A connection no service is resolved for is closed at once and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_connection_is_closed() {
    struct Nobody;
    impl sockmesh_proxy::Resolve for Nobody {
        fn service(
            &self,
            _peer: SocketAddr,
            _local: SocketAddr,
        ) -> Option<std::sync::Arc<sockmesh_proxy::ServiceTarget>> {
            None
        }
    }
    let proxy = sockmesh_proxy::Proxy::new(
        ProxyConfig::default(),
        std::sync::Arc::new(Nobody),
        std::sync::Arc::new(sockmesh_proxy::report::Ignore),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = proxy.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    let answer = raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.is_empty(), "answered {answer:?}");
    let unresolved = &proxy.stats().unresolved;
    wait_for("the count", || {
        unresolved.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
}

/// A burst of 300 HTTP/2 requests each cancelled (RST_STREAM) 200 ms after it is sent, on
/// one connection, to a hung backend: no try stays outstanding, every request that reached
/// the proxy is reported 499 (or 502, see below), and a new caller is served right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_http2_streams_leave_nothing_behind() {
    let hung = TestBackend::start(Mode::Hang).await;
    let good = TestBackend::start(Mode::Status(200)).await;
    let routes = http(
        "{timeout: 30s, routes: [\
         {match: {path_prefix: /good}, to: {track: good}}, \
         {match: {path_prefix: /hang}, to: {track: hung}}]}",
    );
    let backends = [
        spec(hung.addr, &[("track", "hung")]),
        spec(good.addr, &[("track", "good")]),
    ];
    let proxy = RunningProxy::start(routes, &backends).await;
    // One connection, up before the burst.
    let h2 = h2_client();
    assert_eq!(send(&h2, get(&proxy.url("/good"))).await.0, StatusCode::OK);
    let mut burst = Vec::new();
    for _ in 0..300 {
        let h2 = h2.clone();
        let url = proxy.url("/hang");
        burst.push(tokio::spawn(async move {
            let call = h2.request(get(&url));
            tokio::time::timeout(Duration::from_millis(200), call).await
        }));
    }
    for call in burst {
        // No answer: the client's timeout, an error when hyper's rapid-reset guard closed
        // the connection (GOAWAY) on a slow machine, or a 502 (see below).
        let answered = call.await.unwrap();
        assert!(
            !matches!(&answered, Ok(Ok(r)) if r.status() != StatusCode::BAD_GATEWAY),
            "a hung request was answered: {answered:?}"
        );
    }
    assert_eq!(
        send(&h2_client(), get(&proxy.url("/good"))).await.0,
        StatusCode::OK
    );
    wait_for("no outstanding try", || {
        proxy.service.backends.iter().all(|b| b.outstanding() == 0)
    })
    .await;
    let statuses = || -> Vec<u16> { proxy.reports().iter().map(|r| r.status.as_u16()).collect() };
    wait_for("both good requests reported", || {
        statuses().iter().filter(|&&s| s == 200).count() == 2
    })
    .await;
    let statuses = statuses();
    let cancelled = statuses.iter().filter(|&&s| s == 499).count();
    // On a loaded machine the proxy's resets of its upstream streams can trip the hung
    // backend's own rapid-reset guard (hyper's, too): it closes the shared h2c connection
    // and the tries still on it end in 502 before their callers' resets arrive.
    let upstream_closed = statuses.iter().filter(|&&s| s == 502).count();
    assert_eq!(
        cancelled + upstream_closed + 2,
        statuses.len(),
        "all but the good requests are 499 (or 502): {statuses:?}"
    );
    assert!(
        cancelled + upstream_closed > 0 && hung.hits() > 0,
        "the burst reached the hung backend"
    );
    assert_eq!((good.hits(), good.connections()), (2, 1));
    println!(
        "300 cancelled streams: {cancelled} reported 499, {upstream_closed} 502, {} at the \
         hung backend",
        hung.hits()
    );
}

/// An HTTP/1.1 connection on its own (hyper's client connection, no pool): what a
/// kept-alive caller does between its requests is up to the test.
async fn h1_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// A request sent on an idle kept-alive HTTP/1.1 connection just after the drain began is
/// answered (200, `Connection: close`), not met with an EOF or a reset; the connection
/// then ends cleanly, and so does the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_an_idle_connection_during_a_drain_is_answered_with_close() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let config = ProxyConfig {
        drain_grace: Duration::from_secs(3),
        ..ProxyConfig::default()
    };
    let mut proxy = RunningProxy::start_with(http("{}"), &[spec(backend.addr, &[])], config).await;
    let (mut sender, connection) = h1_connection(proxy.addr).await;
    let first = sender.send_request(get(&proxy.url("/one"))).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("connection").is_none(), "kept alive");
    first.into_body().collect().await.unwrap();

    let drained = proxy.shut_down();
    // The drain is under way (the listener is closed) while the connection sits idle.
    wait_for_async("the listener closed", || async {
        TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    let started = Instant::now();
    sender.ready().await.expect("the connection is still open");
    let second = sender.send_request(get(&proxy.url("/two"))).await;
    let second = second.expect("the request is answered, not reset");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        second.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the answer tells the caller to reconnect"
    );
    second.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the proxy closes the connection after the answer")
        .unwrap()
        .expect("a clean close");
    assert!(drained.await.complete);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after the answer, not at the end of the grace: {:?}",
        started.elapsed()
    );
    assert_eq!(backend.hits(), 2);
}

/// A kept-alive connection that sends nothing during the drain is closed at the end of the
/// grace (not at once, not at the drain timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_drain_grace() {
    let backend = TestBackend::start(Mode::Status(200)).await;
    let config = ProxyConfig {
        drain_grace: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let mut proxy = RunningProxy::start_with(http("{}"), &[spec(backend.addr, &[])], config).await;
    let (mut sender, connection) = h1_connection(proxy.addr).await;
    let first = sender.send_request(get(&proxy.url("/one"))).await.unwrap();
    first.into_body().collect().await.unwrap();

    let started = Instant::now();
    let drained = proxy.shut_down().await;
    assert!(drained.complete);
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("closed by the proxy")
        .unwrap()
        .expect("a clean close");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(10),
        "closed after the grace: {took:?}"
    );
}

/// HTTP/2: a drain sends GOAWAY and serves the streams in flight on the connection; the
/// caller's client sees them all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_finish_during_a_drain() {
    let backend = TestBackend::start(Mode::Delay(Duration::from_millis(500))).await;
    let config = ProxyConfig {
        drain_grace: Duration::from_secs(5),
        ..ProxyConfig::default()
    };
    let mut proxy = RunningProxy::start_with(http("{}"), &[spec(backend.addr, &[])], config).await;
    // One connection, ten streams in flight when the drain begins.
    let client = h2_client();
    send(&client, get(&proxy.url("/warm"))).await;
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/slow"));
            tokio::spawn(async move { send(&client, get(&url)).await })
        })
        .collect();
    wait_for("the requests at the backend", || backend.hits() == 11).await;
    let started = Instant::now();
    let drained = proxy.shut_down().await;
    for request in in_flight {
        let (status, _, version) = request.await.unwrap();
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    }
    assert_eq!(
        backend.connections(),
        1,
        "the proxy's h2c pool kept one connection"
    );
    assert!(drained.complete);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "GOAWAY at once, no HTTP/1.1 grace: {:?}",
        started.elapsed()
    );
}

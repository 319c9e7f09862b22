//! The loop against real sockets (127.0.0.1) and in-memory streams, with short limits and
//! real time: every check waits for an outcome with a generous bound, none times one.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::TcpStream,
    sync::{mpsc, Notify},
    time::timeout,
};

use super::*;
use crate::conns::{pick_victim, Candidate};

const BOUND: Duration = Duration::from_secs(10);

fn limits(header_ms: u64, idle_ms: u64, cap: usize) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections: cap,
    }
}

fn ok(body: &'static [u8]) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(body)))
}

/// A TCP endpoint on 127.0.0.1 answering `hello` (after `gate`, when given).
async fn start(limits: Limits, gate: Option<Arc<Notify>>) -> (std::net::SocketAddr, ServeMetrics) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ServeMetrics::default();
    let server = Server::new(Endpoint::Metrics, limits, metrics.clone());
    tokio::spawn(server.serve(listener, move |_req| {
        let gate = gate.clone();
        async move {
            if let Some(g) = gate {
                g.notified().await;
            }
            ok(b"hello")
        }
    }));
    (addr, metrics)
}

const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n";

/// Reads until the server closes; the bytes read. Fails the test after [`BOUND`].
async fn until_closed(s: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(BOUND, s.read(&mut buf)).await.expect("still open") {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn wait_count(m: &ServeMetrics, event: ConnEvent, want: u64) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while m.get(Endpoint::Metrics, event) < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{event:?} stayed below {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn answers_and_counts() {
    let (addr, m) = start(limits(1000, 1000, 4), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = until_closed(&mut s).await;
    assert!(reply.starts_with(b"HTTP/1.1 200 OK"), "{reply:?}");
    assert!(reply.ends_with(b"hello"));
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::Accepted), 1);
}

#[tokio::test]
async fn a_half_sent_request_is_closed_by_the_header_timeout() {
    let (addr, m) = start(limits(200, 60_000, 4), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let reply = until_closed(&mut s).await;
    // hyper answers 408 before closing, or closes.
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 408"),
        "{reply:?}"
    );
    wait_count(&m, ConnEvent::HeaderTimeout, 1).await;
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::IdleClosed), 0);
}

#[tokio::test]
async fn a_kept_alive_connection_without_a_next_request_is_closed_by_the_header_timeout() {
    let (addr, m) = start(limits(300, 60_000, 4), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    // hyper's header timer also runs between kept-alive requests (hyper 1.x).
    until_closed(&mut s).await;
    wait_count(&m, ConnEvent::HeaderTimeout, 1).await;
}

/// An in-memory listener: each stream sent on the channel is one accepted connection.
struct Streams(tokio::sync::Mutex<mpsc::Receiver<DuplexStream>>);

impl Listener for Streams {
    type Io = DuplexStream;
    async fn accept(&self) -> io::Result<DuplexStream> {
        match self.0.lock().await.recv().await {
            Some(s) => Ok(s),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_reply_is_closed_by_the_idle_timeout() {
    let (tx, rx) = mpsc::channel(4);
    let metrics = ServeMetrics::default();
    // A long header timeout: only the idle timeout can close this one.
    let server = Server::new(Endpoint::Metrics, limits(60_000, 300, 4), metrics.clone());
    tokio::spawn(
        server.serve(Streams(tokio::sync::Mutex::new(rx)), |_req| async {
            Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20])))
        }),
    );
    // 4 KiB of buffer: the 1 MiB reply stalls once the client stops reading.
    let (mut client, server_end) = tokio::io::duplex(4096);
    tx.send(server_end).await.unwrap();
    client.write_all(GET).await.unwrap();
    let mut head = [0u8; 64];
    client.read_exact(&mut head).await.unwrap();
    wait_count(&metrics, ConnEvent::IdleClosed, 1).await;
    assert_eq!(metrics.get(Endpoint::Metrics, ConnEvent::HeaderTimeout), 0);
    // The rest of the buffer, then end of stream.
    until_closed(&mut client).await;
}

#[tokio::test]
async fn a_request_in_the_handler_is_never_idle() {
    let gate = Arc::new(Notify::new());
    let (addr, m) = start(limits(60_000, 100, 4), Some(gate.clone())).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    // Six idle timeouts with the request in the handler (a long-poll).
    tokio::time::sleep(Duration::from_millis(600)).await;
    gate.notify_one();
    let mut buf = [0u8; 256];
    let n = timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", &buf[..n]);
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::IdleClosed), 0);
    // Idle after the reply: closed then.
    until_closed(&mut s).await;
    wait_count(&m, ConnEvent::IdleClosed, 1).await;
}

#[tokio::test]
async fn at_the_cap_a_new_connection_takes_the_place_of_the_longest_idle_one() {
    let (addr, m) = start(limits(60_000, 60_000, 2), None).await;
    let mut oldest = TcpStream::connect(addr).await.unwrap();
    oldest.write_all(b"GET /metr").await.unwrap();
    wait_count(&m, ConnEvent::Accepted, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut newer = TcpStream::connect(addr).await.unwrap();
    newer.write_all(b"GET /metr").await.unwrap();
    wait_count(&m, ConnEvent::Accepted, 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut scraper = TcpStream::connect(addr).await.unwrap();
    scraper.write_all(GET).await.unwrap();
    let mut buf = [0u8; 256];
    let n = timeout(BOUND, scraper.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::Evicted), 1);
    // The oldest went; the newer one is still open.
    until_closed(&mut oldest).await;
    assert!(
        timeout(Duration::from_millis(200), newer.read(&mut buf))
            .await
            .is_err(),
        "the newer held connection was closed too"
    );
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::Refused), 0);
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused() {
    let gate = Arc::new(Notify::new());
    let (addr, m) = start(limits(60_000, 60_000, 1), Some(gate.clone())).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(GET).await.unwrap();
    wait_count(&m, ConnEvent::Accepted, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut late = TcpStream::connect(addr).await.unwrap();
    let _ = late.write_all(GET).await;
    assert!(
        until_closed(&mut late).await.is_empty(),
        "refused unanswered"
    );
    assert_eq!(m.get(Endpoint::Metrics, ConnEvent::Refused), 1);
    gate.notify_one();
    let mut buf = [0u8; 256];
    let n = timeout(BOUND, busy.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn open_connections_are_counted_up_and_down() {
    let (addr, m) = start(limits(200, 60_000, 8), None).await;
    let held: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(TcpStream::connect(addr).await.unwrap());
        }
        v
    };
    wait_count(&m, ConnEvent::Accepted, 3).await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while m.open(Endpoint::Metrics) != 3 {
        assert!(tokio::time::Instant::now() < deadline, "open != 3");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_count(&m, ConnEvent::HeaderTimeout, 3).await;
    while m.open(Endpoint::Metrics) != 0 {
        assert!(tokio::time::Instant::now() < deadline, "open != 0");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
}

#[test]
fn the_victim_is_the_longest_idle_connection_not_in_a_request() {
    let t0 = tokio::time::Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let c = |key, busy, ms| Candidate {
        key,
        busy,
        last_io: at(ms),
    };
    assert_eq!(
        pick_victim([
            c(1, false, 30),
            c(2, true, 0),
            c(3, false, 10),
            c(4, false, 20)
        ]),
        Some(3)
    );
    assert_eq!(pick_victim([c(1, true, 0), c(2, true, 5)]), None);
    assert_eq!(pick_victim(Vec::<Candidate<u8>>::new()), None);
}

#[test]
fn the_table_admits_up_to_the_cap_then_evicts_then_refuses() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let table = Arc::new(ConnTable::new(2));
        let admit = |t: &Arc<ConnTable>| match t.admit() {
            Admission::Admitted { conn, evicted } => Some((conn, evicted)),
            Admission::Refused => None,
        };
        let (a, e) = admit(&table).unwrap();
        assert!(e.is_none());
        let (b, e) = admit(&table).unwrap();
        assert!(e.is_none());
        let busy_a = InFlight::enter(a.state());
        let (_c, e) = admit(&table).unwrap();
        let victim = e.expect("b was idle");
        assert!(Arc::ptr_eq(&victim, b.state()));
        assert_eq!(table.len(), 2);
        // The victim is closed only once its task lets go of it.
        assert!(timeout(Duration::from_millis(20), victim.closed())
            .await
            .is_err());
        drop(b);
        timeout(BOUND, victim.closed())
            .await
            .expect("closed on drop");
        let busy_c = InFlight::enter(_c.state());
        assert!(admit(&table).is_none(), "a and c busy");
        drop((busy_a, busy_c, a));
    });
}

/// A server-side stream that counts how many are alive at once.
struct Counted {
    io: DuplexStream,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Hands out queued streams, noting the most alive at once at each accept.
struct Backlog {
    queue: tokio::sync::Mutex<mpsc::Receiver<DuplexStream>>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

impl Listener for Backlog {
    type Io = Counted;
    async fn accept(&self) -> io::Result<Counted> {
        match self.queue.lock().await.recv().await {
            Some(io) => {
                use std::sync::atomic::Ordering::SeqCst;
                let now = self.live.fetch_add(1, SeqCst) + 1;
                self.most.fetch_max(now, SeqCst);
                Ok(Counted {
                    io,
                    live: self.live.clone(),
                })
            }
            None => std::future::pending().await,
        }
    }
}

/// The slowloris fd bound: a backlog of held half-requests far past the cap, all ready to
/// accept at once, never has more than the cap + 1 open on the server side (the new one
/// waits for the evicted one to close), on either runtime flavour.
#[test]
fn a_flood_past_the_cap_never_holds_more_than_the_cap_plus_one() {
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(async {
            const CAP: usize = 4;
            const FLOOD: usize = 200;
            let (tx, rx) = mpsc::channel(FLOOD);
            let mut clients = Vec::new();
            for _ in 0..FLOOD {
                let (mut client, server) = tokio::io::duplex(1024);
                client.write_all(b"GET /metr").await.unwrap();
                clients.push(client);
                tx.send(server).await.unwrap();
            }
            let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let listener = Backlog {
                queue: tokio::sync::Mutex::new(rx),
                live: live.clone(),
                most: most.clone(),
            };
            let metrics = ServeMetrics::default();
            let server = Server::new(
                Endpoint::Metrics,
                limits(60_000, 60_000, CAP),
                metrics.clone(),
            );
            let task = tokio::spawn(server.serve(listener, |_req| async { ok(b"") }));
            let deadline = tokio::time::Instant::now() + BOUND;
            while metrics.get(Endpoint::Metrics, ConnEvent::Accepted) < FLOOD as u64 {
                assert!(tokio::time::Instant::now() < deadline, "not all accepted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let most = most.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                most <= CAP + 1,
                "{most} open at once, cap {CAP} (multi {multi})"
            );
            assert_eq!(
                metrics.get(Endpoint::Metrics, ConnEvent::Evicted),
                (FLOOD - CAP) as u64
            );
            task.abort();
        });
    }
}

/// A listener whose accept always fails, counting the calls.
struct Failing(Arc<std::sync::atomic::AtomicU32>);

impl Listener for Failing {
    type Io = DuplexStream;
    async fn accept(&self) -> io::Result<DuplexStream> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }
}

#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_instead_of_spinning() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let metrics = ServeMetrics::default();
    let server = Server::new(Endpoint::Admin, limits(1000, 1000, 4), metrics.clone());
    let task = tokio::spawn(server.serve(Failing(calls.clone()), |_req| async { ok(b"") }));
    // 10 + 20 + ... + 640 ms = 1.27 s, then 1 s each: 7 + 3 waits in 4.3 s (virtual time).
    tokio::time::sleep(Duration::from_millis(4300)).await;
    task.abort();
    let n = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((10..=12).contains(&n), "{n} accepts in 4.3 s");
    assert_eq!(
        metrics.get(Endpoint::Admin, ConnEvent::AcceptError),
        u64::from(n)
    );
}

/// An upgrade (where TLS goes) that never completes its handshake.
#[derive(Clone)]
struct StalledHandshake;

impl<Io: Send + 'static> Upgrade<Io> for StalledHandshake {
    type Out = DuplexStream;
    async fn upgrade(&self, _io: Io) -> io::Result<DuplexStream> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stalled_upgrade_is_closed_by_the_header_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ServeMetrics::default();
    let server = Server::new(Endpoint::Api, limits(200, 60_000, 4), metrics.clone());
    tokio::spawn(server.serve_with(listener, StalledHandshake, |_req| async { ok(b"") }));
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(until_closed(&mut s).await.is_empty());
    let deadline = tokio::time::Instant::now() + BOUND;
    while metrics.get(Endpoint::Api, ConnEvent::HeaderTimeout) < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

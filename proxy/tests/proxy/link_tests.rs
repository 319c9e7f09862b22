//! The proxy process on its link, with the test playing the agent: a unix socket in a
//! temporary directory, a listening socket on 127.0.0.1 handed over by `SCM_RIGHTS`,
//! targets and drains as frames, and a fake kernel that names one origin for every
//! connection.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use prometheus_client::registry::Registry;
use sockmesh_common::ProxyOrigin;
use sockmesh_model::HttpSpec;
use sockmesh_proxy::exporter;
use sockmesh_proxy::link::{
    read_frame, send_fds, write_frame, ProxyReport, TargetBackend, TargetService, Targets, ToAgent,
    ToProxy, LINK_VERSION,
};
use sockmesh_proxy::origin::Origins;
use sockmesh_proxy::process::{Exit, LinkConfig, ProcessError, ProxyProcess, Stop};
use sockmesh_serve::{Endpoint, Limits, ServeMetrics, Server};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::*;

/// The service id and workload the fake kernel stamps.
const SHOP: u32 = 7;
const WEB: u32 = 1;

/// The kernel's origin record for every connection (or none).
#[derive(Clone, Default)]
struct FakeOrigins(Arc<Mutex<Option<ProxyOrigin>>>);

impl FakeOrigins {
    fn stamping(service_id: u32) -> Self {
        let origins = Self::default();
        origins.set(Some(service_id));
        origins
    }

    fn set(&self, service_id: Option<u32>) {
        *self.0.lock().unwrap() = service_id.map(|service_id| ProxyOrigin {
            service_id,
            workload: WEB,
            ..ProxyOrigin::default()
        });
    }
}

impl Origins for FakeOrigins {
    fn lookup(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<ProxyOrigin> {
        *self.0.lock().unwrap()
    }
}

/// The agent's side of the link.
struct FakeAgent {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl FakeAgent {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        FakeAgent {
            _dir: dir,
            path,
            listener,
        }
    }

    /// Accepts the proxy's connection and checks its hello.
    async fn accept(&self) -> AgentLink {
        let accepted = tokio::time::timeout(Duration::from_secs(20), self.listener.accept());
        let (mut stream, _) = accepted.await.expect("the proxy connects").unwrap();
        match read_frame::<_, ToAgent>(&mut stream).await.unwrap() {
            Some(ToAgent::Hello { version, pid }) => {
                assert_eq!(version, LINK_VERSION);
                assert_eq!(pid, std::process::id());
            }
            other => panic!("expected a hello, got {other:?}"),
        }
        AgentLink { stream }
    }
}

struct AgentLink {
    stream: UnixStream,
}

impl AgentLink {
    /// Hands `listener` over (the test's copy is closed).
    async fn hand_over(&self, listener: std::net::TcpListener) {
        let fd = listener.as_raw_fd();
        let stream = &self.stream;
        stream
            .async_io(Interest::WRITABLE, || send_fds(stream, &[fd]))
            .await
            .unwrap();
    }

    /// Hands these descriptors over in one message.
    async fn hand_over_all(&self, fds: &[std::os::fd::RawFd]) {
        let stream = &self.stream;
        stream
            .async_io(Interest::WRITABLE, || send_fds(stream, fds))
            .await
            .unwrap();
    }

    async fn send(&mut self, msg: &ToProxy) {
        write_frame(&mut self.stream, msg).await.unwrap();
    }

    /// The next report (20 s at most); `None` when the proxy closed the link.
    async fn report(&mut self) -> Option<ProxyReport> {
        let read = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut self.stream));
        match read.await.expect("a report within 20 s").unwrap() {
            Some(ToAgent::Report(report)) => Some(report),
            Some(other) => panic!("expected a report, got {other:?}"),
            None => None,
        }
    }
}

/// A listening socket on 127.0.0.1 and its address.
fn tcp_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Targets with the service `shop` (id [`SHOP`]) on these backends, workload 1 `web`.
fn targets(generation: u64, backends: &[(SocketAddr, bool)]) -> ToProxy {
    ToProxy::Targets(Targets {
        generation,
        services: vec![TargetService {
            id: SHOP,
            name: "shop".into(),
            http: HttpSpec::default(),
            backends: backends
                .iter()
                .map(|&(addr, eligible)| TargetBackend {
                    addr,
                    weight: 1,
                    labels: BTreeMap::new(),
                    eligible,
                })
                .collect(),
            latency_thresholds_us: Vec::new(),
            consecutive_5xx: 5,
            classes: Vec::new(),
        }],
        workloads: vec!["web".into()],
    })
}

/// A proxy process running against `agent`.
struct RunningProcess {
    registry: Arc<Registry>,
    stats: Arc<ConnectionStats>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Exit, ProcessError>>,
}

impl RunningProcess {
    fn start(agent: &FakeAgent, origins: FakeOrigins) -> Self {
        Self::start_at(agent.path.clone(), origins, 50)
    }

    fn start_at(path: PathBuf, origins: FakeOrigins, first_attempts: u32) -> Self {
        let link = LinkConfig {
            first_attempts,
            backoff: (Duration::from_millis(20), Duration::from_millis(200)),
            io_timeout: Duration::from_secs(5),
            report_interval: Duration::from_millis(200),
            ..LinkConfig::new(path)
        };
        let mut registry = exporter::registry();
        let process = ProxyProcess::new(link, ProxyConfig::default(), origins, &mut registry);
        let stats = process.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(process.run(async move {
            let _ = rx.await;
        }));
        RunningProcess {
            registry: Arc::new(registry),
            stats,
            shutdown: Some(tx),
            task,
        }
    }

    fn metrics(&self) -> String {
        exporter::encode(&self.registry)
    }

    /// Waits until the targets of `generation` are applied.
    async fn wait_generation(&self, generation: u64) {
        let line = format!("sockmesh_proxy_targets_generation {generation}\n");
        wait_for("the targets to apply", || self.metrics().contains(&line)).await;
    }

    /// Waits (20 s at most) for the process to return.
    async fn exit(self) -> Result<Exit, ProcessError> {
        let ended = tokio::time::timeout(Duration::from_secs(20), self.task);
        ended.await.expect("the process returns").unwrap()
    }
}

/// Bodies of `n` GETs to `addr` through `client` (each must be 200).
async fn bodies(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    n: usize,
) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let (status, body, _) = send(client, get(&format!("http://{addr}/"))).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        got.push(String::from_utf8(body.to_vec()).unwrap());
    }
    got
}

/// Requests reach the service's backends through the handed-over listener; a ban in new
/// targets moves the next requests of the same kept-alive connection to the other
/// backend; the caller's name is in the metrics; a connection without an origin is closed
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_route_requests_and_a_ban_moves_them() {
    let a = TestBackend::start(Mode::Status(200)).await;
    let b = TestBackend::start(Mode::Status(200)).await;
    let agent = FakeAgent::new();
    let origins = FakeOrigins::stamping(SHOP);
    let process = RunningProcess::start(&agent, origins.clone());
    let mut link = agent.accept().await;
    let (listener, addr) = tcp_listener();
    link.hand_over(listener).await;
    link.send(&targets(1, &[(a.addr, true), (b.addr, true)]))
        .await;

    let client = client();
    let got = bodies(&client, addr, 20).await;
    assert!(got
        .iter()
        .all(|body| *body == a.addr.to_string() || *body == b.addr.to_string()));
    assert_eq!(a.hits() + b.hits(), 20);

    link.send(&targets(2, &[(a.addr, false), (b.addr, true)]))
        .await;
    process.wait_generation(2).await;
    let a_before = a.hits();
    let got = bodies(&client, addr, 10).await;
    assert!(
        got.iter().all(|body| *body == b.addr.to_string()),
        "{got:?}"
    );
    assert_eq!(a.hits(), a_before, "nothing more to the banned backend");

    // Scraped over HTTP, as Prometheus would.
    let scrape = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scrape_addr = scrape.local_addr().unwrap();
    let server = Server::new(
        Endpoint::Metrics,
        Limits::with_cap(4),
        ServeMetrics::default(),
    );
    tokio::spawn(exporter::serve(scrape, process.registry.clone(), server));
    let (status, body, _) = send(&client, get(&format!("http://{scrape_addr}/metrics"))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = format!(
        "sockmesh_requests_total{{service=\"shop\",backend=\"{}\",caller=\"web\",code=\"200\"}}",
        b.addr
    );
    assert!(text.contains(&line), "{line} in\n{text}");
    assert!(
        text.contains("sockmesh_proxy_targets_generation 2"),
        "{text}"
    );
    assert!(text.contains("sockmesh_proxy_link_up 1"), "{text}");

    // No origin: closed at once, counted.
    origins.set(None);
    let fresh = super::client();
    let refused = fresh.request(get(&format!("http://{addr}/"))).await;
    assert!(refused.is_err(), "a connection without an origin is closed");
    let unresolved = process.stats.unresolved.load(Ordering::Relaxed);
    assert!(unresolved >= 1);
    let line = format!("sockmesh_proxy_connections_total{{event=\"unresolved\"}} {unresolved}");
    assert!(process.metrics().contains(&line), "{line}");
}

/// A backend answering 500 is tallied as failures and asked for a ban once its run
/// reaches the default `consecutive_5xx` (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_backend_is_reported_with_a_tally_and_a_ban() {
    let bad = TestBackend::start(Mode::Status(500)).await;
    let agent = FakeAgent::new();
    let _process = RunningProcess::start(&agent, FakeOrigins::stamping(SHOP));
    let mut link = agent.accept().await;
    let (listener, addr) = tcp_listener();
    link.hand_over(listener).await;
    link.send(&targets(1, &[(bad.addr, true)])).await;

    let client = client();
    for _ in 0..6 {
        let (status, _, _) = send(&client, get(&format!("http://{addr}/"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (mut requests, mut failed, mut bans) = (0, 0, Vec::new());
    while requests < 6 || bans.is_empty() {
        let report = link.report().await.expect("the link stays up");
        assert!(report.services.len() <= 1, "one tally per service");
        for tally in &report.services {
            assert_eq!(tally.service, "shop");
            requests += tally.requests;
            failed += tally.failed;
        }
        bans.extend(report.bans);
    }
    assert_eq!((requests, failed), (6, 6));
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].service, "shop");
    assert_eq!(bans[0].backend, bad.addr);
    assert_eq!(bans[0].reason, "consecutive_5xx");
}

/// The agent's drain: the request in flight is answered, the listener closes, a last
/// report carries the request, and the process returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_request_in_flight_and_returns() {
    let slow = TestBackend::start(Mode::Delay(Duration::from_secs(1))).await;
    let agent = FakeAgent::new();
    let process = RunningProcess::start(&agent, FakeOrigins::stamping(SHOP));
    let mut link = agent.accept().await;
    let (listener, addr) = tcp_listener();
    link.hand_over(listener).await;
    link.send(&targets(1, &[(slow.addr, true)])).await;

    let in_flight =
        tokio::spawn(async move { send(&client(), get(&format!("http://{addr}/"))).await });
    wait_for("the request to reach the backend", || slow.hits() == 1).await;
    link.send(&ToProxy::Drain).await;
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "answered during the drain");
    let exit = process.exit().await.unwrap();
    assert_eq!(
        exit,
        Exit {
            stop: Stop::Drain,
            drained: true
        }
    );
    let mut requests = 0;
    while let Some(report) = link.report().await {
        requests += report.services.iter().map(|t| t.requests).sum::<u64>();
    }
    assert_eq!(
        requests, 1,
        "the drained request is reported before the link closes"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed"
    );
}

/// A bad frame ends the link, not the serving: the proxy reconnects, closes a listener
/// handed over again (the same socket), serves a new one (a restarted agent's, bound beside
/// it) and takes the new link's targets; with the agent gone altogether it keeps serving
/// the last targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_keeps_serving_and_reconnects() {
    let a = TestBackend::start(Mode::Status(200)).await;
    let b = TestBackend::start(Mode::Status(200)).await;
    let agent = FakeAgent::new();
    let process = RunningProcess::start(&agent, FakeOrigins::stamping(SHOP));
    let mut link = agent.accept().await;
    let (listener, addr) = tcp_listener();
    let same = listener.try_clone().unwrap();
    link.hand_over(listener).await;
    link.send(&targets(1, &[(a.addr, true)])).await;
    let client = client();
    assert_eq!(bodies(&client, addr, 1).await, [a.addr.to_string()]);

    // Not JSON: the proxy drops the link.
    link.stream.write_all(&4u32.to_be_bytes()).await.unwrap();
    link.stream.write_all(b"nope").await.unwrap();
    let mut second = agent.accept().await;
    assert_eq!(bodies(&client, addr, 3).await, vec![a.addr.to_string(); 3]);
    let (new, new_addr) = tcp_listener();
    second
        .hand_over_all(&[same.as_raw_fd(), new.as_raw_fd()])
        .await;
    drop((same, new));
    second.send(&targets(2, &[(b.addr, true)])).await;
    process.wait_generation(2).await;
    assert_eq!(bodies(&client, addr, 3).await, vec![b.addr.to_string(); 3]);
    let other = super::client();
    assert_eq!(
        bodies(&other, new_addr, 3).await,
        vec![b.addr.to_string(); 3],
        "the new listener is served"
    );

    // The agent goes away: serving goes on.
    drop(second);
    drop(agent);
    wait_for("the link to be seen down", || {
        process.metrics().contains("sockmesh_proxy_link_up 0")
    })
    .await;
    assert_eq!(bodies(&client, addr, 5).await, vec![b.addr.to_string(); 5]);
    let fresh = super::client();
    assert_eq!(bodies(&fresh, addr, 1).await, [b.addr.to_string()]);
    assert!(process
        .metrics()
        .contains("sockmesh_proxy_link_connects_total 2"));

    // SIGTERM's path: the caller's shutdown drains and returns.
    let mut process = process;
    let _ = process.shutdown.take().unwrap().send(());
    let exit = process.exit().await.unwrap();
    assert_eq!(exit.stop, Stop::Shutdown);
}

/// No agent: the first link gives up after its tries with an error naming the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let process = RunningProcess::start_at(path.clone(), FakeOrigins::default(), 3);
    let err = process.exit().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("after 3 attempts"), "{text}");
}

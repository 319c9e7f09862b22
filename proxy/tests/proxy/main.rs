//! The proxy server with real sockets on 127.0.0.1: small hyper backends that answer a
//! status, hang, answer late or close, a proxy in front of them, and hyper clients.
//!
//! Waits are for conditions with generous bounds (the machine is shared); no test asserts a
//! tight duration.

mod grpc_tests;
mod link_tests;
mod retry_tests;
mod route_tests;
mod server_tests;
mod timeout_tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sockmesh_model::{BackendSpec, HttpSpec};
use sockmesh_proxy::server::ConnectionStats;
use sockmesh_proxy::{Drained, Fixed, Proxy, ProxyConfig, Report, ServiceTarget};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a test backend does with each request.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Answers this status at once, its body naming the backend.
    Status(u16),
    /// Never answers (the connection stays open).
    Hang,
    /// Answers 200 after this long.
    Delay(Duration),
    /// Accepts connections and closes them without reading.
    Close,
    /// Answers 200 with this `grpc-status` in the trailers (a gRPC server).
    Grpc(u8),
}

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A backend on 127.0.0.1 serving HTTP/1.1 and h2c, counting what it got.
#[derive(Clone)]
pub struct TestBackend {
    pub addr: SocketAddr,
    /// Requests whose head arrived (for `Close`: connections accepted).
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestBackend {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = TestBackend {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            connections: Arc::default(),
            seen: Arc::default(),
        };
        let this = backend.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                this.connections.fetch_add(1, Ordering::SeqCst);
                if let Mode::Close = mode {
                    this.hits.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let this = this.clone();
                tokio::spawn(async move {
                    let handler = service_fn(move |request| this.clone().answer(mode, request));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        backend
    }

    async fn answer(
        self,
        mode: Mode,
        request: Request<Incoming>,
    ) -> Result<Response<BoxBody<Bytes, Infallible>>, hyper::Error> {
        let (parts, body) = request.into_parts();
        self.hits.fetch_add(1, Ordering::SeqCst);
        let body = body.collect().await?.to_bytes();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            version: parts.version,
            headers: parts.headers,
            body,
        });
        let status = match mode {
            Mode::Grpc(code) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", code.to_string().parse().unwrap());
                let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                    .with_trailers(async move { Some(Ok(trailers)) });
                let mut response = Response::new(body.boxed());
                let content_type = "application/grpc".parse().unwrap();
                response.headers_mut().insert("content-type", content_type);
                return Ok(response);
            }
            Mode::Status(status) => status,
            Mode::Hang => std::future::pending().await,
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                200
            }
            Mode::Close => unreachable!(),
        };
        let mut response = Response::new(Full::new(Bytes::from(self.addr.to_string())).boxed());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend spec for `addr` with weight 1 and these labels.
pub fn spec(addr: SocketAddr, labels: &[(&str, &str)]) -> BackendSpec {
    let mut spec = BackendSpec::new(addr, 1);
    spec.labels = labels
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect::<BTreeMap<_, _>>();
    spec
}

/// An `http:` block from YAML (the model's own parser and defaults).
pub fn http(yaml: &str) -> HttpSpec {
    serde_yaml::from_str(yaml).unwrap()
}

/// A proxy serving one service on 127.0.0.1, with every report it made.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub service: Arc<ServiceTarget>,
    pub reports: Arc<Mutex<Vec<Report>>>,
    pub proxy: Proxy,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Drained>>,
}

impl RunningProxy {
    pub async fn start(http: HttpSpec, backends: &[BackendSpec]) -> Self {
        Self::start_with(http, backends, ProxyConfig::default()).await
    }

    pub async fn start_with(http: HttpSpec, backends: &[BackendSpec], config: ProxyConfig) -> Self {
        let service = Arc::new(ServiceTarget::new("shop", http, backends));
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let sink = reports.clone();
        let observe = move |report: &Report| sink.lock().unwrap().push(report.clone());
        let proxy = Proxy::new(config, Arc::new(Fixed(service.clone())), Arc::new(observe));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = proxy.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            server.serve(listener, shutdown).await.unwrap()
        });
        RunningProxy {
            addr,
            service,
            reports,
            proxy,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }

    /// Waits until `n` requests were reported (reports come as response bodies end).
    pub async fn wait_reports(&self, n: usize) -> Vec<Report> {
        wait_for("reports", || self.reports.lock().unwrap().len() >= n).await;
        self.reports()
    }

    pub fn stats(&self) -> &ConnectionStats {
        self.proxy.stats()
    }

    /// Starts the shutdown; the returned future ends when the proxy has drained.
    pub fn shut_down(&mut self) -> impl Future<Output = Drained> + use<> {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        async move { task.await.unwrap() }
    }
}

/// An HTTP/1.1 keep-alive client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `request` and reads the whole response: (status, body, version).
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, Bytes, Version) {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("the proxy answers within 30 s")
        .expect("a response");
    let (status, version) = (response.status(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body, version)
}

/// A GET of `url`.
pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

/// Waits up to 20 s for `condition`.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A local address nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Waits up to 20 s for an async `condition`.
pub async fn wait_for_async<F: Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

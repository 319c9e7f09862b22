//! The one HTTP/1.1 accept loop of sockmesh's endpoints (the agent's `/metrics` and admin
//! API, the control plane's API and `/metrics`): every endpoint survives a client that
//! opens connections and never finishes a request, or never reads its reply.
//!
//! - **Header timeout** ([`Limits::header_timeout`], 10 s): hyper's `header_read_timeout`
//!   with a tokio timer (without a timer hyper has none). In hyper 1.x it also runs while a
//!   kept-alive connection waits for its *next* request, so a keep-alive connection that
//!   sends nothing is closed after this too; the control API's TLS handshake runs under
//!   the same bound ([`Upgrade`]).
//! - **Idle timeout** ([`Limits::idle_timeout`], 60 s): a connection with no request in the
//!   handler and no byte read or written for that long is closed (`activity`). That covers
//!   what hyper's timer does not: a client that stops reading its reply, so the write waits
//!   forever. A request in the handler (a long-poll) is never idle.
//! - **Connection cap** ([`Limits::max_connections`]): when it is reached, a new connection
//!   closes the connection that has waited longest without a request in the handler
//!   (`evicted`), so held half-requests cannot lock out a scraper that sends its request at
//!   once; only when every open connection has a request in the handler is the new one
//!   closed at once (`refused`, no reply written: nothing is spent on it). `conns`.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS...) back off 10 ms doubling to 1 s and are
//!   logged at most every 10 s with a count (`backoff`).
//! - **Body timeout** ([`read_body`], 10 s): the handlers read a request body with a size
//!   and a time bound (413, 408), so a body sent a byte a minute cannot keep a connection
//!   "in a request" (never idle, never evicted) for good.
//! - Counters per endpoint ([`ServeMetrics`]) and the RLIMIT_NOFILE raise ([`fd_limit`]).
//!
//! Flags for the timeouts: [`HttpTimeoutArgs`], flattened into both binaries' command lines.

mod activity;
mod backoff;
mod body;
mod conns;
pub mod fd_limit;
mod metrics;
mod scrape;

use std::{convert::Infallible, future::Future, io, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};
use tracing::{debug, warn};

pub use metrics::{ConnEvent, Endpoint, ServeMetrics};
pub use scrape::{encode_registry, serve_registry, Negotiate};

pub use activity::Tracked;

use activity::{idle, InFlight};
use backoff::AcceptBackoff;
pub use body::{read_body, BodyError, BODY_TIMEOUT};
use conns::{Admission, ConnTable};

/// How long the accept loop waits for an evicted connection to close before it accepts
/// again anyway (its task is only ever that slow on a starved runtime).
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// What every endpoint enforces; see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// The default timeouts with `max_connections`.
    pub fn with_cap(max_connections: usize) -> Self {
        Limits {
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: max_connections.max(1),
        }
    }
}

/// The timeout flags both binaries take (`#[command(flatten)]`); the caps are per endpoint
/// and fixed by each binary.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct HttpTimeoutArgs {
    /// Every HTTP endpoint: seconds a client has to send a request head, also while a
    /// kept-alive connection waits for its next request.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// Every HTTP endpoint: seconds a connection may go without a request in progress and
    /// without a byte read or written before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub http_idle_timeout_secs: u64,
}

impl HttpTimeoutArgs {
    /// These timeouts with `max_connections`.
    pub fn limits(&self, max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(self.http_header_timeout_secs),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
            max_connections: max_connections.max(1),
        }
    }
}

/// A listening socket the loop accepts from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Replies are one write each; no reason to wait for more.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        Ok(UnixListener::accept(self).await?.0)
    }
}

/// What runs on an accepted stream before HTTP, inside the connection's task and under the
/// header timeout: the seam where TLS (tokio-rustls) wraps the stream. [`Plain`] is none.
pub trait Upgrade<Io>: Clone + Send + Sync + 'static {
    type Out: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn upgrade(&self, io: Io) -> impl Future<Output = io::Result<Self::Out>> + Send;
}

/// Plain HTTP: the stream as accepted.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Upgrade<Io> for Plain {
    type Out = Io;
    async fn upgrade(&self, io: Io) -> io::Result<Io> {
        Ok(io)
    }
}

/// One endpoint's accept loop: its label, limits and counters.
#[derive(Debug, Clone)]
pub struct Server {
    endpoint: Endpoint,
    limits: Limits,
    metrics: ServeMetrics,
}

/// How a connection's task ended, for the counters.
enum Ended {
    /// The client or the server closed it normally, or with an error other than a timeout.
    Closed,
    HeaderTimeout,
    Idle,
    Evicted,
}

impl Server {
    /// The connection cap is lowered to fit the file-descriptor limit
    /// ([`fd_limit::fit_cap`]), with a warning, when the limit could not be raised enough.
    pub fn new(endpoint: Endpoint, mut limits: Limits, metrics: ServeMetrics) -> Self {
        metrics.init(endpoint);
        if let Some(soft) = fd_limit::soft_limit() {
            let fitted = fd_limit::fit_cap(limits.max_connections, soft);
            if fitted < limits.max_connections {
                warn!(%endpoint, asked = limits.max_connections, cap = fitted, rlimit_nofile = soft,
                    "connection cap lowered to fit the file-descriptor limit");
                limits.max_connections = fitted;
            }
        }
        Server {
            endpoint,
            limits,
            metrics,
        }
    }

    /// Serves plain HTTP/1.1 on `listener` with `handler` until the task is dropped.
    pub async fn serve<L, F, Fut>(self, listener: L, handler: F)
    where
        L: Listener,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        self.serve_with(listener, Plain, handler).await
    }

    /// [`Server::serve`], with `upgrade` run on each accepted stream first.
    pub async fn serve_with<L, U, F, Fut>(self, listener: L, upgrade: U, handler: F)
    where
        L: Listener,
        U: Upgrade<Tracked<L::Io>>,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let table = Arc::new(ConnTable::new(self.limits.max_connections));
        let mut backoff = AcceptBackoff::default();
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.count(self.endpoint, ConnEvent::AcceptError);
                    let now = tokio::time::Instant::now();
                    let (wait, report) = backoff.on_error(now);
                    if let Some(since_last) = report {
                        warn!(endpoint = %self.endpoint, error = %e, failures_since_last_log = since_last,
                            backoff_ms = wait.as_millis() as u64, "accept failed; backing off");
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            backoff.on_success();
            self.metrics.count(self.endpoint, ConnEvent::Accepted);
            let (conn, evicted) = match table.admit() {
                Admission::Admitted { conn, evicted } => {
                    if evicted.is_some() {
                        self.metrics.count(self.endpoint, ConnEvent::Evicted);
                    }
                    (conn, evicted)
                }
                Admission::Refused => {
                    self.metrics.count(self.endpoint, ConnEvent::Refused);
                    drop(stream);
                    continue;
                }
            };
            let (server, upgrade, handler) = (self.clone(), upgrade.clone(), handler.clone());
            tokio::spawn(async move {
                server.metrics.opened(server.endpoint, 1);
                let state = conn.state().clone();
                let work = server.run_conn(Tracked::new(stream, state.clone()), upgrade, handler);
                let ended = tokio::select! {
                    ended = work => ended,
                    () = idle(&state, server.limits.idle_timeout) => Ended::Idle,
                    () = state.evicted() => Ended::Evicted,
                };
                match ended {
                    Ended::Closed | Ended::Evicted => {}
                    Ended::HeaderTimeout => server
                        .metrics
                        .count(server.endpoint, ConnEvent::HeaderTimeout),
                    Ended::Idle => server.metrics.count(server.endpoint, ConnEvent::IdleClosed),
                }
                server.metrics.opened(server.endpoint, -1);
                drop(conn);
            });
            // The evicted connection's descriptor closes when its task runs; accept again
            // only then (bounded, in case that task is starved), so a flood of new
            // connections cannot hold more than the cap + 1 descriptors at once.
            if let Some(victim) = evicted {
                let _ = tokio::time::timeout(EVICTION_WAIT, victim.closed()).await;
            }
        }
    }

    async fn run_conn<Io, U, F, Fut>(&self, io: Tracked<Io>, upgrade: U, handler: F) -> Ended
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: Upgrade<Tracked<Io>>,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let state = io.state().clone();
        let io = match tokio::time::timeout(self.limits.header_timeout, upgrade.upgrade(io)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                debug!(endpoint = %self.endpoint, error = %e, "connection setup failed");
                return Ended::Closed;
            }
            Err(_) => return Ended::HeaderTimeout,
        };
        let svc = service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::enter(&state);
            let reply = handler(req);
            async move {
                let reply = reply.await;
                drop(in_flight);
                Ok::<_, Infallible>(reply)
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .serve_connection(TokioIo::new(io), svc)
            .await;
        match served {
            Ok(()) => Ended::Closed,
            Err(e) if e.is_timeout() => Ended::HeaderTimeout,
            Err(e) => {
                debug!(endpoint = %self.endpoint, error = %e, "connection ended with an error");
                Ended::Closed
            }
        }
    }
}

#[cfg(test)]
mod tests;

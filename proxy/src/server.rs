//! The proxy server: accepts connections on a listener, asks [`Resolve`] which service each
//! is for, and serves its requests (HTTP/1.1 keep-alive, or HTTP/2 with prior knowledge,
//! told apart by the connection preface) through [`crate::forward`].
//!
//! Limits against bad callers: a connection that sends nothing is closed after
//! `header_read_timeout`, and so is an HTTP/1.1 request head not complete by then (hyper's
//! timer); a head larger than `max_header_bytes` is refused (HTTP/1.1: 431 or 400 and close;
//! HTTP/2: the header list limit); bytes that are not HTTP get a 400 and a close (hyper);
//! HTTP/2 streams per connection are bounded, and hyper's protection against rapid resets
//! (CVE-2023-44487: a bounded number of pending-accept and locally reset streams) stays on
//! at its defaults; connections beyond `max_connections` wait in the kernel's backlog.
//!
//! Shutdown ([`Proxy::serve`]'s `shutdown` future): stop accepting, tell every connection
//! to finish (HTTP/1.1: after the request in flight; HTTP/2: GOAWAY), and wait for them up
//! to `drain_timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::body::MAX_BUFFERED_BODY;
use crate::forward::Forwarder;
use crate::report::Observe;
use crate::target::Resolve;
use crate::upstream::{PoolConfig, Upstream};

/// The proxy's settings (defaults: [`ProxyConfig::default`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub pool: PoolConfig,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A connection's first bytes, and each HTTP/1.1 request head, must arrive within this.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// The most of a request body held so the request can be retried.
    pub max_buffered_body: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            pool: PoolConfig::default(),
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            max_buffered_body: MAX_BUFFERED_BODY,
        }
    }
}

/// Counts of what happened to connections (the agent will export them).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections accepted and handed to the HTTP server.
    pub served: AtomicU64,
    /// Connections closed at once: no service resolved for them.
    pub unresolved: AtomicU64,
    /// Connections closed because nothing arrived within `header_read_timeout`.
    pub silent: AtomicU64,
    /// Connections that ended in an HTTP error (bytes that are not HTTP, a head too large
    /// or too slow, a protocol violation).
    pub errors: AtomicU64,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Every connection finished within `drain_timeout`.
    pub complete: bool,
}

/// Errors that stop [`Proxy::serve`].
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener has no local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// The L7 proxy: one per node, serving every http service's connections.
#[derive(Clone)]
pub struct Proxy {
    config: ProxyConfig,
    resolve: Arc<dyn Resolve>,
    forwarder: Arc<Forwarder>,
    stats: Arc<ConnectionStats>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, resolve: Arc<dyn Resolve>, observe: Arc<dyn Observe>) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let forwarder = Forwarder {
            upstream: Upstream::new(&config.pool),
            observe,
            max_buffered_body: config.max_buffered_body,
            seed: AtomicU64::new(seed),
        };
        Self {
            config,
            resolve,
            forwarder: Arc::new(forwarder),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// The counters, to export them (every listener this proxy serves counts into them).
    pub fn shared_stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }

    /// Serves `listener` until `shutdown` completes, then drains.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Drained, ProxyError> {
        let local = listener.local_addr().map_err(ProxyError::LocalAddr)?;
        let builder = Arc::new(self.http_builder());
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        // Out of descriptors or an aborted handshake: pause, do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Some((service, caller)) = self.resolve.resolve(peer, local) else {
                self.stats.unresolved.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let forwarder = self.forwarder.clone();
            let resolve = self.resolve.clone();
            let handler = service_fn(move |request| {
                let forwarder = forwarder.clone();
                // A kept-alive connection outlives snapshots: each request takes the
                // service's newest version (its backends, their eligibility, its routes).
                let service = resolve.current(&service).unwrap_or_else(|| service.clone());
                let caller = caller.clone();
                async move { forwarder.handle(service, caller, peer, request).await }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let stats = self.stats.clone();
            let first_bytes = self.config.header_read_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                if !first_byte(&stream, first_bytes).await {
                    stats.silent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.served.fetch_add(1, Ordering::Relaxed);
                let connection = builder.serve_connection(TokioIo::new(stream), handler);
                if watcher.watch(connection).await.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        drop(listener);
        let complete = tokio::time::timeout(self.config.drain_timeout, graceful.shutdown())
            .await
            .is_ok();
        Ok(Drained { complete })
    }

    fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let c = &self.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(c.header_read_timeout)
            .max_buf_size(c.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(c.max_concurrent_streams)
            .max_header_list_size(u32::try_from(c.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}

/// Waits for the connection's first byte (or its close) up to `within`: the HTTP/1.1 head
/// timer starts only once the server knows the protocol, so a silent connection would
/// otherwise be held forever.
async fn first_byte(stream: &TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.peek(&mut byte)).await,
        Ok(Ok(1..))
    )
}

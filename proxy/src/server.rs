//! The proxy server: accepts connections on a listener, asks [`Resolve`] which service each
//! is for, and serves its requests (HTTP/1.1 keep-alive, or HTTP/2 with prior knowledge,
//! told apart by the connection preface) through [`crate::forward`].
//!
//! Limits against bad callers: a connection that sends nothing is closed after
//! `header_read_timeout`, and so is one that sent only part of the HTTP/2 preface by then
//! (`opening`) and an HTTP/1.1 request head not complete by then (hyper's timer); a head
//! larger than `max_header_bytes` is refused (HTTP/1.1: 431 or 400 and close; HTTP/2: the
//! header list limit); bytes that are not HTTP get a 400 and a close (hyper);
//! HTTP/2 streams per connection are bounded, and hyper's protection against rapid resets
//! (CVE-2023-44487: a bounded number of pending-accept and locally reset streams) stays on
//! at its defaults; connections beyond `max_connections` wait in the kernel's backlog.
//! Each such refusal is counted by its [`Refusal`] reason ([`refusal`] reads it from the
//! connection's error) in [`ConnectionStats::refused`]; the head timer's expiry only on a
//! connection's first request (hyper's timer also closes a kept-alive connection idle that
//! long, and cannot say whether part of a next head had arrived).
//!
//! Shutdown ([`Proxy::serve`]'s `shutdown` future): stop accepting (the listener is the
//! agent's, so connects queue for the next proxy), tell every connection to finish, and
//! wait for them up to `drain_timeout`. HTTP/2: GOAWAY at once, hyper's (h2's) two-step one
//! (last stream id 2^31-1, a PING, then the real last id), so streams the caller started
//! before it saw the GOAWAY are still served. HTTP/1.1: closing a kept-alive connection
//! that looks idle races the caller's next request (it would read an EOF or a reset, and a
//! non-idempotent request cannot be retried blindly), so for `drain_grace` the connection
//! keeps taking requests, each answered with `Connection: close` (the caller reconnects,
//! to the next proxy, after its response); one still idle at the end of the grace is
//! closed (hyper's graceful close: after a request in flight).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::body::MAX_BUFFERED_BODY;
use crate::forward::Forwarder;
use crate::metrics::{Refusal, Refusals};
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
    /// On shutdown, how long an HTTP/1.1 connection keeps taking requests (each answered
    /// with `Connection: close`) before it is closed (module docs).
    pub drain_grace: Duration,
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
            drain_grace: Duration::from_secs(1),
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
    /// or too slow, a stalled HTTP/2 preface, a protocol violation, a reset by the caller).
    pub errors: AtomicU64,
    /// The errors that are refusals of bad input, by reason (each also in `errors`).
    pub refused: Refusals,
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
        // `true` once the shutdown began; every connection watches it.
        let (draining_tx, draining) = watch::channel(false);
        // Each connection's task holds a sender: the channel closes when the last one ends.
        let (live, mut all_ended) = mpsc::channel::<()>(1);
        let grace = self.config.drain_grace.min(self.config.drain_timeout);
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
            // A response head and its body are separate writes: with Nagle on, the body
            // waits for the caller's (delayed, ~40 ms) ACK of the head.
            let _ = stream.set_nodelay(true);
            let forwarder = self.forwarder.clone();
            let resolve = self.resolve.clone();
            let saw_http2 = Arc::new(AtomicBool::new(false));
            let http2 = saw_http2.clone();
            let saw_request = Arc::new(AtomicBool::new(false));
            let asked = saw_request.clone();
            let closing = draining.clone();
            let handler = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let forwarder = forwarder.clone();
                // A kept-alive connection outlives snapshots: each request takes the
                // service's newest version (its backends, their eligibility, its routes).
                let service = resolve
                    .current(&service, caller.as_deref())
                    .unwrap_or_else(|| service.clone());
                let caller = caller.clone();
                let http1 = request.version() < Version::HTTP_2;
                asked.store(true, Ordering::Relaxed);
                if !http1 {
                    http2.store(true, Ordering::Relaxed);
                }
                let closing = closing.clone();
                async move {
                    let mut response = forwarder.handle(service, caller, peer, request).await?;
                    // Read when the response is ready: a request that was in flight when
                    // the drain began closes its connection too.
                    if http1 && *closing.borrow() {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let builder = builder.clone();
            let mut draining = draining.clone();
            let live = live.clone();
            let stats = self.stats.clone();
            let first_bytes = self.config.header_read_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                let _live = live;
                // A connection still silent `grace` into a drain is not waited for.
                let silent_in_drain = async {
                    wait_draining(&mut draining).await;
                    tokio::time::sleep(grace).await;
                };
                let opening = tokio::select! {
                    opening = opening(&stream, first_bytes) => opening,
                    () = silent_in_drain => Opening::Silent,
                };
                match opening {
                    Opening::Spoke => {}
                    Opening::Silent => {
                        stats.silent.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Opening::Stalled => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        stats.refused.count(Refusal::HeadTimeout);
                        return;
                    }
                }
                stats.served.fetch_add(1, Ordering::Relaxed);
                let connection = builder.serve_connection(TokioIo::new(stream), handler);
                tokio::pin!(connection);
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = wait_draining(&mut draining) => {
                        let mut within_grace = None;
                        if !saw_http2.load(Ordering::Relaxed) {
                            within_grace = tokio::time::timeout(grace, connection.as_mut()).await.ok();
                        }
                        match within_grace {
                            Some(ended) => ended,
                            None => {
                                connection.as_mut().graceful_shutdown();
                                connection.await
                            }
                        }
                    }
                };
                if let Err(error) = ended {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    // hyper's head timer also runs while a kept-alive connection waits
                    // for its next request: after a first request, its expiry is an idle
                    // caller as often as a slow one, and not counted as a refusal.
                    let kept_alive = saw_request.load(Ordering::Relaxed);
                    match refusal(&*error) {
                        Some(Refusal::HeadTimeout) if kept_alive => {}
                        Some(reason) => stats.refused.count(reason),
                        None => {}
                    }
                }
            });
        }
        drop(listener);
        draining_tx.send_replace(true);
        drop(live);
        let complete = tokio::time::timeout(self.config.drain_timeout, all_ended.recv())
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

/// The refusal of bad input that ended a connection with `error` (hyper's, for HTTP/1.1
/// from its parser or header timer; for HTTP/2 h2's GOAWAY under it), or `None` for other
/// ends (the caller reset or left, an I/O error): those are not the caller's bad input as
/// far as the server can tell.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_parse_too_large() {
                return Some(Refusal::HeadTooLarge);
            }
            if e.is_parse() {
                return Some(Refusal::NotHttp);
            }
            if e.is_timeout() {
                return Some(Refusal::HeadTimeout);
            }
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            // A GOAWAY the server sent for what the caller did; one the caller sent, or a
            // reset of one stream, is no refusal.
            if !(e.is_go_away() && e.is_library()) {
                return None;
            }
            return Some(match e.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Refusal::Http2Flood,
                _ => Refusal::Http2Protocol,
            });
        }
        cause = e.source();
    }
    None
}

/// Returns once the drain began. The guard `wait_for` returns is not `Send`; this drops it
/// at once.
async fn wait_draining(draining: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is gone: as good as draining.
    let _ = draining.wait_for(|d| *d).await;
}

/// The HTTP/2 client preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connection that sent part of the HTTP/2 preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(20);

/// How a connection began (see [`opening`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Bytes hyper can tell a protocol from: HTTP/1.1 (or garbage), or the whole preface.
    Spoke,
    /// Nothing, or a close, within the timeout.
    Silent,
    /// Part of the HTTP/2 preface, and no more, within the timeout.
    Stalled,
}

/// Waits up to `within` for the connection's opening bytes. Without it a silent connection
/// would be held forever (the HTTP/1.1 head timer starts only once the server knows the
/// protocol), and so would one that sends a part of the HTTP/2 preface: hyper waits for all
/// 24 bytes, with no timer. `peek` leaves the bytes for hyper; a partial preface is looked
/// at again every [`PREFACE_POLL`] (peek returns at once while bytes are queued).
async fn opening(stream: &TcpStream, within: Duration) -> Opening {
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = [0u8; H2_PREFACE.len()];
    let mut partial = false;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut bytes)).await {
            Err(_) if partial => return Opening::Stalled,
            Err(_) => return Opening::Silent,
            // Closed after a part of the preface: hyper reads the end and says so.
            Ok(Ok(0) | Err(_)) if partial => return Opening::Spoke,
            Ok(Ok(0) | Err(_)) => return Opening::Silent,
            Ok(Ok(n)) => n,
        };
        if n == H2_PREFACE.len() || bytes[..n] != H2_PREFACE[..n] {
            return Opening::Spoke;
        }
        partial = true;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Opening::Stalled;
        }
        tokio::time::sleep(PREFACE_POLL.min(deadline - now)).await;
    }
}

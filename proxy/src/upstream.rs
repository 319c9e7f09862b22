//! Connections to backends: keep-alive pools, one per backend and protocol, and what a
//! failed try's error means for retries.
//!
//! The pools are hyper-util's client pools, keyed by the backend's address: an idle
//! connection is reused by the next try to that backend, at most
//! [`PoolConfig::max_idle_per_backend`] idle connections are kept per backend (so the idle
//! total is bounded by that times the backends), and idle ones close after
//! [`PoolConfig::idle_timeout`]. A try goes out in the protocol its request came in: an
//! HTTP/1.1 request over an HTTP/1.1 connection, an HTTP/2 request (gRPC among them) over
//! an h2c (prior knowledge) connection, multiplexed. Connections in use are not bounded
//! here (requests outstanding per backend are what the pick balances on).

use std::error::Error as StdError;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::retry::Outcome;

/// How the proxy keeps connections to backends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per backend and protocol.
    pub max_idle_per_backend: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// A connection attempt fails after this long (then it is a `connect_failure`).
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_backend: 32,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// The pools to every backend, shared by all services of one proxy.
#[derive(Clone, Debug)]
pub struct Upstream {
    http1: Client<HttpConnector, UpstreamBody>,
    http2: Client<HttpConnector, UpstreamBody>,
}

impl Upstream {
    pub fn new(config: &PoolConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = |http2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(config.max_idle_per_backend)
                .pool_idle_timeout(config.idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2)
                .build(connector.clone())
        };
        Self {
            http1: client(false),
            http2: client(true),
        }
    }

    /// Sends one try; the request's URI names the backend (`http://addr/path`). An HTTP/2
    /// request goes over h2c, any other as HTTP/1.1.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        if request.version() == Version::HTTP_2 {
            self.http2.request(request).await
        } else {
            *request.version_mut() = Version::HTTP_11;
            self.http1.request(request).await
        }
    }
}

/// What a failed try means for retries: no connection, a refused HTTP/2 stream, or anything
/// else after the request went out (a reset, a close, a response that did not parse).
pub fn classify(error: &ClientError) -> Outcome {
    if error.is_connect() {
        return Outcome::ConnectFailure;
    }
    // h2 is not a dependency of its own, so its REFUSED_STREAM is recognised by its message
    // ("refused stream before processing any application logic") along the source chain.
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if e.to_string().contains("refused stream") {
            return Outcome::RefusedStream;
        }
        source = e.source();
    }
    Outcome::Reset
}

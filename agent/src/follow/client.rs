//! One HTTP/1.1 request to the control plane (hyper's client connection, no pool): a
//! follower makes one long-poll at a time, so a connection per request costs nothing that
//! matters and never finds a pooled connection the server has already closed. An
//! https:// control plane is verified against `--control-ca`; the handshake's failure is
//! worded by [`sockmesh_tls::explain`] (unknown CA, name mismatch, no TLS on the port).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sockmesh_model::{ControlAddress, TokenReload, TokenSource};
use sockmesh_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// Largest reply read: a snapshot of a very large mesh is tens of MB.
const MAX_REPLY_BYTES: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed; the text says why.
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("reading the reply: {0}")]
    Body(String),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub(super) struct Client {
    address: ControlAddress,
    /// Its `Debug` hides the token, as this struct's does.
    token: Option<TokenSource>,
    /// Required for an https:// address (checked at start, `crate::follow_options`).
    tls: Option<ClientTls>,
}

impl Client {
    pub(super) fn new(
        address: ControlAddress,
        token: Option<TokenSource>,
        tls: Option<ClientTls>,
    ) -> Self {
        Client {
            address,
            token,
            tls,
        }
    }

    pub(super) async fn get(&self, path: &str, timeout: Duration) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, None, timeout).await
    }

    pub(super) async fn post_json(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.send(Method::POST, path, Some(Bytes::from(body)), timeout)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.address.host_header())
            .header(
                header::USER_AGENT,
                concat!("sockmesh-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONNECTION, "close");
        if let Some(source) = &self.token {
            let (token, reload) = source.current();
            match reload {
                Some(TokenReload::Taken) => {
                    info!("control token file changed: sending the new token")
                }
                Some(TokenReload::Failed(e)) => warn!(
                    error = %e,
                    "control token file changed but holds no token: the last good one stays in use"
                ),
                None => {}
            }
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.as_str()));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Body(e.to_string()))?;
        let exchange = async {
            match &self.address {
                ControlAddress::Tcp { authority, tls } => {
                    let stream = TcpStream::connect(authority.as_str())
                        .await
                        .map_err(ClientError::Connect)?;
                    let _ = stream.set_nodelay(true);
                    if !tls {
                        return exchange(stream, req).await;
                    }
                    let stream = self.handshake(authority, stream).await?;
                    exchange(stream, req).await
                }
                ControlAddress::Unix(path) => {
                    let stream = UnixStream::connect(path)
                        .await
                        .map_err(ClientError::Connect)?;
                    exchange(stream, req).await
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

impl Client {
    async fn handshake(
        &self,
        authority: &str,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let Some(tls) = &self.tls else {
            return Err(ClientError::Tls(format!(
                "{} needs --control-ca to verify its certificate",
                self.address
            )));
        };
        let name = sockmesh_tls::client::server_name(authority)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let (config, reload) = tls.current();
        match reload {
            Some(sockmesh_tls::CaReload::Taken) => info!(
                ca = %tls.ca_file().display(),
                "control CA file changed: verifying with the new CA certificates"
            ),
            Some(sockmesh_tls::CaReload::Failed(e)) => warn!(
                error = %e,
                "control CA file changed but holds no usable CA: the last good one stays in use"
            ),
            None => {}
        }
        TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| ClientError::Tls(sockmesh_tls::explain(&e, &self.address.to_string())))
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<Reply, ClientError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future does the I/O. It is aborted when this exchange ends, also when
    // a timeout drops it halfway, so no task outlives its request holding a socket.
    let _driver = AbortOnDrop(tokio::spawn(conn));
    async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?
            .to_bytes();
        Ok(Reply { status, body })
    }
    .await
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! One request to the control plane's API, with its errors worded for the operator.

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use sockmesh_tls::ClientTls;

use serde::Deserialize;

use super::super::admin::{connect_tcp, JsonReply, DEFAULT_TIMEOUT};
use super::super::error::os_message;
use super::super::http::{self, HttpError, HttpResponse};
use sockmesh_model::token::{Token, TokenError};
use sockmesh_model::ControlAddress;

/// Where `sockmesh config` looks without `--control-url`: the socket a single-machine
/// control plane serves with `--listen-unix /run/sockmesh-control/control.sock`.
pub const DEFAULT_CONTROL_URL: &str = "unix:/run/sockmesh-control/control.sock";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the control plane at {target}: {} (is sockmesh-control running? see --control-url)", os_message(cause))]
    Unreachable {
        target: ControlAddress,
        cause: io::Error,
    },
    #[error("the control plane at {target} {}", match cause.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "did not answer in time".to_owned(),
        _ => format!("broke off the exchange: {}", os_message(cause)),
    })]
    Exchange {
        target: ControlAddress,
        cause: io::Error,
    },
    #[error("the control plane at {target} sent a malformed HTTP reply: {reason}{}",
        if target.is_plaintext_tcp() { " (if it serves TLS, use https:// with --control-ca)" } else { "" })]
    Malformed {
        target: ControlAddress,
        reason: String,
    },
    #[error("{}", if *token_sent {
        "the control plane refused the token (401)"
    } else {
        "the control plane requires a token (401): pass --token-file"
    })]
    Unauthorized { token_sent: bool },
    /// An error status with the control plane's `{"error": ...}` body.
    #[error("the control plane answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the control plane answered {status} to {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
    #[error("the control plane's reply to {path} is not JSON: {cause}")]
    NotJson {
        path: String,
        cause: serde_json::Error,
    },
    /// A reply without the shape docs/control-plane.md gives it: no table can be made.
    #[error("the control plane's reply is not {expected} (try -o json to see it)")]
    Shape { expected: &'static str },
    /// The TLS handshake failed; `reason` says why (unknown CA, name mismatch, no TLS).
    #[error("{reason}")]
    Tls { reason: String },
    #[error("an https:// --control-url needs --control-ca FILE: the CA that signed the control plane's certificate")]
    NoCa,
    #[error("--control-ca: {0}")]
    CaFile(#[from] sockmesh_tls::TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    BadUrl(#[from] sockmesh_model::address::AddressError),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Sends requests to the control plane, one connection per request.
#[derive(Debug, Clone)]
pub struct ControlClient {
    target: ControlAddress,
    token: Option<Token>,
    /// Verifies an https:// target's certificate.
    tls: Option<ClientTls>,
    timeout: Duration,
}

impl ControlClient {
    pub fn new(target: ControlAddress) -> Self {
        ControlClient {
            target,
            token: None,
            tls: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Verifies an https:// control plane against `tls`'s CA bundle (`--control-ca`).
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    pub fn target(&self) -> &ControlAddress {
        &self.target
    }

    pub fn get_json(&self, path: &str) -> Result<JsonReply, ControlError> {
        let response = self.send(path, None)?;
        self.json_reply(path, response)
    }

    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<JsonReply, ControlError> {
        let response = self.send(path, Some(&body.to_string()))?;
        self.json_reply(path, response)
    }

    fn send(&self, path: &str, body: Option<&str>) -> Result<HttpResponse, ControlError> {
        let token = self.token.as_ref().map(Token::as_str);
        let unreachable = |cause| ControlError::Unreachable {
            target: self.target.clone(),
            cause,
        };
        let host = self.target.host_header();
        let result = match &self.target {
            ControlAddress::Unix(socket) => {
                let stream = UnixStream::connect(socket).map_err(unreachable)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| self.exchange_error(HttpError::Io(e)))?;
                exchange(stream, host, path, token, body)
            }
            ControlAddress::Tcp { authority, tls } => {
                // Before connecting: a missing CA is a usage error, not a network one.
                let client_tls = match (tls, &self.tls) {
                    (true, None) => return Err(ControlError::NoCa),
                    (true, Some(client_tls)) => Some(client_tls),
                    (false, _) => None,
                };
                let stream = connect_tcp(authority, self.timeout).map_err(unreachable)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| self.exchange_error(HttpError::Io(e)))?;
                match client_tls {
                    Some(client_tls) => {
                        let stream = self.handshake(client_tls, authority, stream)?;
                        exchange(stream, host, path, token, body)
                    }
                    None => exchange(stream, host, path, token, body),
                }
            }
        };
        result.map_err(|e| self.exchange_error(e))
    }

    /// Completes the handshake before any byte of the request is sent, so its failure is
    /// reported as what it is.
    fn handshake(
        &self,
        client_tls: &ClientTls,
        authority: &str,
        mut stream: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, ControlError> {
        let name = sockmesh_tls::client::server_name(authority).map_err(|e| ControlError::Tls {
            reason: e.to_string(),
        })?;
        let mut conn =
            ClientConnection::new(client_tls.config(), name).map_err(|e| ControlError::Tls {
                reason: format!("TLS setup: {e}"),
            })?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut stream) {
                let reason = match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                        "the control plane at {} did not finish the TLS handshake in time",
                        self.target
                    ),
                    _ => sockmesh_tls::explain(&e, &self.target.to_string()),
                };
                return Err(ControlError::Tls { reason });
            }
        }
        Ok(StreamOwned::new(conn, stream))
    }

    fn json_reply(&self, path: &str, response: HttpResponse) -> Result<JsonReply, ControlError> {
        let text = String::from_utf8_lossy(&response.body).into_owned();
        match response.status {
            200..=299 => match serde_json::from_str(&text) {
                Ok(value) => Ok(JsonReply { text, value }),
                Err(cause) => Err(ControlError::NotJson {
                    path: path.to_owned(),
                    cause,
                }),
            },
            401 => Err(ControlError::Unauthorized {
                token_sent: self.token.is_some(),
            }),
            status => Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(ErrorBody { error }) => ControlError::Api {
                    status,
                    message: error,
                },
                Err(_) => ControlError::Status {
                    status,
                    path: path.to_owned(),
                    body: text.chars().take(200).collect(),
                },
            }),
        }
    }

    fn exchange_error(&self, err: HttpError) -> ControlError {
        let target = self.target.clone();
        match err {
            HttpError::Io(cause) => ControlError::Exchange { target, cause },
            HttpError::Malformed(reason) => ControlError::Malformed { target, reason },
        }
    }
}

fn exchange<S: io::Read + io::Write>(
    stream: S,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    match body {
        None => http::get(stream, host, path, token),
        Some(body) => http::post_json(stream, host, path, token, body),
    }
}

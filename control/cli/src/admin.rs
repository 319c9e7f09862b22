//! Where the agent's admin API is, who may ask it, and how one JSON document is fetched
//! (or posted).

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::AdminError;
use super::http::{self, HttpError, HttpResponse};

/// Where the agent puts its admin socket unless told otherwise (`<state-dir>/admin.sock`).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/sockmesh/admin.sock";

/// How long to wait to connect and for each read or write. The agent answers from memory,
/// so anything slower means it is stuck, and a CLI should say so rather than hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTarget {
    /// The unix socket (`sockmesh-agent --admin-socket`): mode 0600, no token needed.
    Unix(PathBuf),
    /// The optional TCP listener (`sockmesh-agent --admin-addr`), which needs a token.
    /// `authority` is `host:port` as the operator wrote it; it is also the `Host` header.
    Tcp { authority: String },
}

impl AdminTarget {
    /// Reads `http://IP:PORT` (a host name instead of the IP works too; a trailing `/` is
    /// allowed). The port is required: the admin API has no well-known port.
    pub fn from_url(url: &str) -> Result<Self, AdminError> {
        let bad = |reason: &str| {
            Err(AdminError::BadUrl {
                url: url.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                return bad(
                    "the admin API speaks plain HTTP; use http:// over a private \
                            network or a tunnel",
                );
            }
            return bad("expected http://IP:PORT");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return bad("expected http://IP:PORT, without a path or user");
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return bad("the port is missing: expected http://IP:PORT");
        };
        if host.is_empty() || host == "[]" {
            return bad("the host is missing: expected http://IP:PORT");
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return bad("put an IPv6 address in brackets: http://[::1]:PORT");
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return bad("the port must be a number from 1 to 65535");
        }
        Ok(AdminTarget::Tcp {
            authority: authority.to_owned(),
        })
    }
}

impl fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminTarget::Unix(path) => write!(f, "admin socket {}", path.display()),
            AdminTarget::Tcp { authority } => write!(f, "admin API at http://{authority}"),
        }
    }
}

/// The bearer token for the TCP admin API. Its `Debug` output hides the secret, so it can
/// sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token as the agent reads it: the file's first line, whitespace trimmed.
    pub fn read_file(path: &Path) -> Result<Self, AdminError> {
        let text = std::fs::read_to_string(path).map_err(|cause| AdminError::TokenFile {
            path: path.to_owned(),
            cause,
        })?;
        let first_line = text.lines().next().unwrap_or_default();
        AdminToken::new(first_line).map_err(|problem| AdminError::BadToken {
            path: path.to_owned(),
            problem,
        })
    }

    /// Trims `token` and checks it can travel in a header: not empty, printable ASCII
    /// (a CR or LF would end the header early and smuggle in others).
    pub fn new(token: &str) -> Result<Self, &'static str> {
        let token = token.trim();
        if token.is_empty() {
            return Err("is empty: its first line must be the token");
        }
        if !token.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err("holds characters other than printable ASCII");
        }
        Ok(AdminToken(token.to_owned()))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// A successful reply: the text exactly as the agent sent it (for `-o json`, which keeps
/// the agent's key order) and the same text parsed (for tables).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonReply {
    pub text: String,
    pub value: serde_json::Value,
}

/// The body of every error reply of the admin API.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Sends requests to one agent's admin API, one connection per request.
#[derive(Debug, Clone)]
pub struct AdminClient {
    target: AdminTarget,
    token: Option<AdminToken>,
    timeout: Duration,
}

impl AdminClient {
    pub fn new(target: AdminTarget) -> Self {
        AdminClient {
            target,
            token: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: AdminToken) -> Self {
        self.token = Some(token);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn target(&self) -> &AdminTarget {
        &self.target
    }

    /// GETs `path` (with its query) and returns the JSON of a 2xx reply. Error statuses
    /// become [`AdminError`]s that carry the agent's own message when it sent one.
    pub fn get_json(&self, path: &str) -> Result<JsonReply, AdminError> {
        let response = self.get(path)?;
        self.json_reply(path, response)
    }

    /// POSTs the JSON document `body` to `path` and returns the JSON of a 2xx reply, with
    /// error statuses as in [`get_json`](Self::get_json) (a 400 carries the agent's reason).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<JsonReply, AdminError> {
        let response = self.post(path, &body.to_string())?;
        self.json_reply(path, response)
    }

    /// GETs `path` and returns the reply whatever its status.
    ///
    /// # Panics
    /// If `path` does not start with `/` or holds whitespace or control characters: paths
    /// are built by code ([`Query::path`](super::Query::path) percent-encodes), never typed.
    pub fn get(&self, path: &str) -> Result<HttpResponse, AdminError> {
        self.send(path, None)
    }

    /// POSTs `json_body` to `path` and returns the reply whatever its status.
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn post(&self, path: &str, json_body: &str) -> Result<HttpResponse, AdminError> {
        self.send(path, Some(json_body))
    }

    fn send(&self, path: &str, json_body: Option<&str>) -> Result<HttpResponse, AdminError> {
        assert!(
            path.starts_with('/') && !path.bytes().any(|b| b <= b' ' || b == 0x7f),
            "request path {path:?} must be percent-encoded"
        );
        let token = self.token.as_ref().map(|t| t.0.as_str());
        let unreachable = |cause| AdminError::Unreachable {
            target: self.target.clone(),
            cause,
        };
        let result = match &self.target {
            AdminTarget::Unix(socket) => {
                let stream = UnixStream::connect(socket).map_err(unreachable)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|cause| self.exchange_error(HttpError::Io(cause)))?;
                // Any Host will do on a unix socket; HTTP/1.1 only requires that there is one.
                exchange(stream, "localhost", path, token, json_body)
            }
            AdminTarget::Tcp { authority } => {
                let stream = connect_tcp(authority, self.timeout).map_err(unreachable)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|cause| self.exchange_error(HttpError::Io(cause)))?;
                exchange(stream, authority, path, token, json_body)
            }
        };
        result.map_err(|err| self.exchange_error(err))
    }

    /// The JSON of a 2xx reply, or the error the status stands for.
    fn json_reply(&self, path: &str, response: HttpResponse) -> Result<JsonReply, AdminError> {
        let text = String::from_utf8_lossy(&response.body).into_owned();
        let status = response.status;
        match status {
            200..=299 => match serde_json::from_str(&text) {
                Ok(value) => Ok(JsonReply { text, value }),
                Err(cause) => Err(AdminError::NotJson {
                    path: path.to_owned(),
                    cause,
                }),
            },
            401 => Err(AdminError::Unauthorized {
                token_sent: self.token.is_some(),
            }),
            _ => Err(match serde_json::from_str::<ErrorBody>(&text) {
                // An agent that predates an endpoint answers an unknown path with 404, and
                // one that predates the POST with 405: name the path and the likely cause.
                Ok(ErrorBody { error })
                    if status == 405 || (status == 404 && error.starts_with("unknown path")) =>
                {
                    AdminError::NotServed {
                        status,
                        path: path.to_owned(),
                        message: error,
                    }
                }
                Ok(ErrorBody { error }) => AdminError::Api {
                    status,
                    message: error,
                },
                Err(_) => AdminError::Status {
                    status,
                    path: path.to_owned(),
                    body: text,
                },
            }),
        }
    }

    fn exchange_error(&self, err: HttpError) -> AdminError {
        let target = self.target.clone();
        match err {
            HttpError::Io(cause) => AdminError::Exchange { target, cause },
            HttpError::Malformed(reason) => AdminError::Malformed { target, reason },
        }
    }
}

/// A GET without a body, a POST with one, on either kind of stream.
fn exchange<S: io::Read + io::Write>(
    stream: S,
    host: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    match json_body {
        None => http::get(stream, host, path, token),
        Some(body) => http::post_json(stream, host, path, token, body),
    }
}

/// Tries every address the authority resolves to, as browsers do, and reports the last
/// failure when none answers.
pub(super) fn connect_tcp(authority: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

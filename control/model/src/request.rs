//! The control plane's request decoder: method, path, query string and body of one HTTP
//! request into what is asked ([`ApiRequest`]) or the 4xx that answers it ([`BadRequest`]).
//! Pure and synchronous, so the server's handler only does I/O with its result and the
//! decoder can be fuzzed on arbitrary bytes (`fuzz/fuzz_targets/control_request.rs`).

use std::time::Duration;

use http::StatusCode;

use crate::agent_name::check_agent_name;
use crate::protocol::{
    Ack, RollbackRequest, ACK_PATH, AGENTS_PATH, DEFAULT_WATCH_TIMEOUT_SECS, HISTORY_PATH,
    MAX_WATCH_TIMEOUT_SECS, ROLLBACK_PATH, SNAPSHOT_PATH, STATUS_PATH, WATCH_PATH,
};
use crate::Span;

/// Largest request body (acks and rollbacks are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest `error` an ack may carry.
pub const MAX_ACK_ERROR_BYTES: usize = 4096;

/// A request the API understood.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /v1/snapshot[?version=V][&agent=NAME]`
    Snapshot {
        agent: Option<String>,
        version: Option<u64>,
    },
    /// `GET /v1/watch?after=V[&timeout=30s][&agent=NAME][&delta=1]`
    Watch {
        agent: Option<String>,
        after: u64,
        timeout: Duration,
        /// `delta=1`: the agent reads [`crate::protocol::Update`] replies, so a version
        /// it can reach from `after` comes as a per-service delta.
        delta: bool,
    },
    /// `POST /v1/ack` with an [`Ack`] body.
    Ack(Ack),
    /// `GET /v1/agents`
    Agents,
    /// `GET /v1/history`
    History,
    /// `POST /v1/rollback` with a [`RollbackRequest`] body.
    Rollback(RollbackRequest),
    /// `GET /v1/status`
    Status,
}

/// Why a request is refused before it reaches the hub: the status and the message of the
/// JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub status: StatusCode,
    pub message: String,
}

impl BadRequest {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        BadRequest {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// Every path the API serves (the fuzz target draws from these).
pub const PATHS: [&str; 7] = [
    SNAPSHOT_PATH,
    WATCH_PATH,
    ACK_PATH,
    AGENTS_PATH,
    HISTORY_PATH,
    ROLLBACK_PATH,
    STATUS_PATH,
];

/// Decodes one request. `body` is what the client sent, already capped at
/// [`MAX_BODY_BYTES`] by the reader; only the two `POST`s look at it.
pub fn decode(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<ApiRequest, BadRequest> {
    let query = Query::parse(query);
    match (method, path) {
        ("GET", SNAPSHOT_PATH) => Ok(ApiRequest::Snapshot {
            agent: query.agent()?,
            version: match query.get("version") {
                None => None,
                Some(v) => Some(
                    v.parse::<u64>()
                        .map_err(|_| BadRequest::bad("version must be a number"))?,
                ),
            },
        }),
        ("GET", WATCH_PATH) => {
            let agent = query.agent()?;
            let Some(Ok(after)) = query.get("after").map(str::parse::<u64>) else {
                return Err(BadRequest::bad(
                    "after=VERSION (the version the agent has) is required",
                ));
            };
            let timeout = match query.get("timeout") {
                None => Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECS),
                Some(t) => match t.parse::<Span>() {
                    Ok(Span(d)) if d <= Duration::from_secs(MAX_WATCH_TIMEOUT_SECS) => d,
                    Ok(_) => {
                        return Err(BadRequest::bad(format!(
                            "timeout may be at most {MAX_WATCH_TIMEOUT_SECS}s"
                        )))
                    }
                    Err(e) => return Err(BadRequest::bad(format!("timeout: {e}"))),
                },
            };
            let delta = match query.get("delta") {
                None | Some("0") => false,
                Some("1") => true,
                Some(_) => return Err(BadRequest::bad("delta must be 0 or 1")),
            };
            Ok(ApiRequest::Watch {
                agent,
                after,
                timeout,
                delta,
            })
        }
        ("POST", ACK_PATH) => {
            let ack: Ack = json_body(body)?;
            check_agent_name(&ack.agent).map_err(BadRequest::bad)?;
            if ack
                .error
                .as_ref()
                .is_some_and(|e| e.len() > MAX_ACK_ERROR_BYTES)
            {
                return Err(BadRequest::bad(format!(
                    "error may be at most {MAX_ACK_ERROR_BYTES} bytes"
                )));
            }
            Ok(ApiRequest::Ack(ack))
        }
        ("GET", AGENTS_PATH) => Ok(ApiRequest::Agents),
        ("GET", HISTORY_PATH) => Ok(ApiRequest::History),
        ("POST", ROLLBACK_PATH) => Ok(ApiRequest::Rollback(json_body(body)?)),
        ("GET", STATUS_PATH) => Ok(ApiRequest::Status),
        (method, path) if PATHS.contains(&path) => Err(BadRequest::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        (_, path) => Err(BadRequest::new(
            StatusCode::NOT_FOUND,
            format!("unknown path {path}; see docs/control-plane.md"),
        )),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BadRequest::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body may be at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| BadRequest::bad(format!("invalid JSON body: {e}")))
}

/// `a=1&b=2`, without percent-decoding: every parameter is a number, a duration or an
/// agent name, none of which has a character that needs encoding. The first of repeated
/// names wins.
struct Query<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Query<'a> {
    fn parse(text: &'a str) -> Self {
        Query(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    /// The `agent=` a snapshot or watch names, checked.
    fn agent(&self) -> Result<Option<String>, BadRequest> {
        match self.get("agent") {
            None => Ok(None),
            Some(a) => {
                check_agent_name(a).map_err(BadRequest::bad)?;
                Ok(Some(a.to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(method: &str, path: &str, query: &str, body: &[u8]) -> BadRequest {
        decode(method, path, query, body).unwrap_err()
    }

    #[test]
    fn snapshot_and_watch_read_their_query() {
        assert_eq!(
            decode("GET", SNAPSHOT_PATH, "version=7&agent=node-1", b"").unwrap(),
            ApiRequest::Snapshot {
                agent: Some("node-1".into()),
                version: Some(7)
            }
        );
        assert_eq!(
            decode("GET", WATCH_PATH, "after=3&timeout=5s&after=9", b"").unwrap(),
            ApiRequest::Watch {
                agent: None,
                after: 3,
                timeout: Duration::from_secs(5),
                delta: false,
            }
        );
        assert_eq!(
            decode("GET", WATCH_PATH, "after=0", b"").unwrap(),
            ApiRequest::Watch {
                agent: None,
                after: 0,
                timeout: Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECS),
                delta: false,
            }
        );
        assert_eq!(
            decode("GET", WATCH_PATH, "after=2&delta=1", b"").unwrap(),
            ApiRequest::Watch {
                agent: None,
                after: 2,
                timeout: Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECS),
                delta: true,
            }
        );
        assert!(decode("GET", WATCH_PATH, "after=2&delta=yes", b"").is_err());
    }

    #[test]
    fn bad_queries_are_400_with_the_reason() {
        let e = err("GET", SNAPSHOT_PATH, "version=x", b"");
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::BAD_REQUEST, "version must be a number")
        );
        assert!(err("GET", WATCH_PATH, "", b"").message.contains("after="));
        assert!(err("GET", WATCH_PATH, "after=1&timeout=301s", b"")
            .message
            .contains("at most 300s"));
        assert!(err("GET", WATCH_PATH, "after=1&timeout=soon", b"")
            .message
            .starts_with("timeout: "));
        assert!(err("GET", SNAPSHOT_PATH, "agent=a/b", b"")
            .message
            .contains("may only hold"));
    }

    #[test]
    fn acks_are_checked() {
        let ok = br#"{"agent":"n1","version":4,"ok":false,"error":"services[0]: bad"}"#;
        let ApiRequest::Ack(ack) = decode("POST", ACK_PATH, "", ok).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!((ack.version, ack.ok), (4, false));
        let long = format!(
            r#"{{"agent":"n1","version":4,"ok":false,"error":"{}"}}"#,
            "x".repeat(MAX_ACK_ERROR_BYTES + 1)
        );
        assert!(err("POST", ACK_PATH, "", long.as_bytes())
            .message
            .contains("at most 4096"));
        assert!(err("POST", ACK_PATH, "", b"{")
            .message
            .starts_with("invalid JSON body"));
        assert!(err(
            "POST",
            ACK_PATH,
            "",
            br#"{"agent":"","version":1,"ok":true}"#
        )
        .message
        .contains("1 to"));
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            err("POST", ROLLBACK_PATH, "", &huge).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn method_and_path_errors() {
        assert_eq!(
            err("DELETE", ACK_PATH, "", b"").status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            err("GET", "/v1/nothing", "", b"").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            decode("GET", STATUS_PATH, "junk&&=", b"").unwrap(),
            ApiRequest::Status
        );
    }
}

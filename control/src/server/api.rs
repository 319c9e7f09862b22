//! The HTTP API agents and operators use (docs/control-plane.md has every request and
//! reply): snapshot, long-poll watch, ack, agents, history, rollback, status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use serde::Serialize;

use super::agents::check_agent_name;
use super::auth::Token;
use super::history::Revision;
use super::hub::Hub;
use super::protocol::{
    Ack, ErrorBody, RollbackRequest, ACK_PATH, AGENTS_PATH, DEFAULT_WATCH_TIMEOUT_SECS,
    HISTORY_PATH, MAX_WATCH_TIMEOUT_SECS, ROLLBACK_PATH, SNAPSHOT_PATH, STATUS_PATH, WATCH_PATH,
};
use crate::Span;

/// Largest request body (acks and rollbacks are a few hundred bytes).
const MAX_BODY_BYTES: usize = 64 * 1024;

pub type Reply = Response<Full<Bytes>>;

/// Where this control plane listens, for `/v1/status`.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub tcp: Vec<String>,
    pub unix: Option<String>,
    pub metrics: Option<String>,
}

/// One listener's view of the API: the hub, plus the token its clients must present
/// (`None` on the unix socket).
#[derive(Debug, Clone)]
pub struct Api {
    pub hub: Arc<Hub>,
    pub token: Option<Token>,
    pub listening: Arc<Listening>,
}

impl Api {
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        if let Some(token) = &self.token {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !token.matches_header(given) {
                let mut reply = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                );
                reply.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"sockmesh-control\""),
                );
                return reply;
            }
        }
        let query = Query::parse(req.uri().query().unwrap_or(""));
        match (req.method(), req.uri().path()) {
            (&Method::GET, SNAPSHOT_PATH) => self.snapshot(&query),
            (&Method::GET, WATCH_PATH) => self.watch(&query).await,
            (&Method::POST, ACK_PATH) => match read_json::<Ack>(req).await {
                Ok(ack) => self.ack(ack),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            },
            (&Method::GET, AGENTS_PATH) => json(StatusCode::OK, &self.hub.agents()),
            (&Method::GET, HISTORY_PATH) => json(StatusCode::OK, &self.hub.history()),
            (&Method::POST, ROLLBACK_PATH) => match read_json::<RollbackRequest>(req).await {
                Ok(r) => match self.hub.rollback(r.version) {
                    Ok(reply) => json(StatusCode::OK, &reply),
                    Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
                },
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            },
            (&Method::GET, STATUS_PATH) => {
                let mut status = self.hub.status();
                status.listen = self.listening.tcp.clone();
                status.listen_unix = self.listening.unix.clone();
                status.metrics_addr = self.listening.metrics.clone();
                json(StatusCode::OK, &status)
            }
            (
                _,
                SNAPSHOT_PATH | WATCH_PATH | ACK_PATH | AGENTS_PATH | HISTORY_PATH | ROLLBACK_PATH
                | STATUS_PATH,
            ) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} is not allowed on {}", req.method(), req.uri().path()),
            ),
            (_, path) => error(
                StatusCode::NOT_FOUND,
                &format!("unknown path {path}; see docs/control-plane.md"),
            ),
        }
    }

    /// Notes the `agent=` a snapshot or watch names; the error is a 400's message.
    fn note_agent(&self, query: &Query<'_>) -> Result<(), String> {
        if let Some(agent) = query.get("agent") {
            check_agent_name(agent)?;
            self.hub.seen(agent);
        }
        Ok(())
    }

    fn snapshot(&self, query: &Query<'_>) -> Reply {
        if let Err(e) = self.note_agent(query) {
            return error(StatusCode::BAD_REQUEST, &e);
        }
        let revision = match query.get("version") {
            None => self.hub.head(),
            Some(v) => match v.parse::<u64>() {
                Ok(v) => match self.hub.revision(v) {
                    Some(r) => Some(r),
                    None => {
                        return error(
                            StatusCode::NOT_FOUND,
                            &format!("version {v} is not kept; see {HISTORY_PATH}"),
                        )
                    }
                },
                Err(_) => return error(StatusCode::BAD_REQUEST, "version must be a number"),
            },
        };
        match revision {
            Some(r) => snapshot_reply(&r),
            None => no_head(),
        }
    }

    /// Answers at once when the head is not version `after`, else waits for a new head
    /// until the timeout and answers 204. "Not `after`" rather than "newer than `after`":
    /// an agent that is ahead (this control plane lost its history) is brought back to
    /// what is served now instead of waiting forever.
    async fn watch(&self, query: &Query<'_>) -> Reply {
        if let Err(e) = self.note_agent(query) {
            return error(StatusCode::BAD_REQUEST, &e);
        }
        let Some(Ok(after)) = query.get("after").map(str::parse::<u64>) else {
            return error(
                StatusCode::BAD_REQUEST,
                "after=VERSION (the version the agent has) is required",
            );
        };
        let timeout = match query.get("timeout") {
            None => Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECS),
            Some(t) => match t.parse::<Span>() {
                Ok(Span(d)) if d <= Duration::from_secs(MAX_WATCH_TIMEOUT_SECS) => d,
                Ok(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("timeout may be at most {MAX_WATCH_TIMEOUT_SECS}s"),
                    )
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("timeout: {e}")),
            },
        };
        let mut heads = self.hub.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(head) = heads.borrow_and_update().clone() {
                if head.version != after {
                    return snapshot_reply(&head);
                }
            }
            match tokio::time::timeout_at(deadline, heads.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
                Err(_) => {
                    return Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .expect("static response parts are valid")
                }
            }
        }
    }

    fn ack(&self, ack: Ack) -> Reply {
        if let Err(e) = check_agent_name(&ack.agent) {
            return error(StatusCode::BAD_REQUEST, &e);
        }
        if ack.error.as_ref().is_some_and(|e| e.len() > 4096) {
            return error(StatusCode::BAD_REQUEST, "error may be at most 4096 bytes");
        }
        self.hub.ack(&ack);
        json(StatusCode::OK, &serde_json::json!({"recorded": true}))
    }
}

fn snapshot_reply(revision: &Revision) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(revision.snapshot_json()))
        .expect("static response parts are valid")
}

fn no_head() -> Reply {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no valid config yet: the source has produced nothing that validates",
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).expect("replies always serialize");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(
        status,
        &ErrorBody {
            error: message.to_owned(),
        },
    )
}

/// The body as `T`; the error is a 400's message.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// `a=1&b=2`, without percent-decoding: every parameter is a number, a duration or an
/// agent name, none of which has a character that needs encoding.
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
}

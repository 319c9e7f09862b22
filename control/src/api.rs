//! The HTTP API agents and operators use (docs/control-plane.md has every request and
//! reply): snapshot, long-poll watch, ack, agents, history, rollback, status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Body, header, Method, Request, Response, StatusCode};
use serde::Serialize;
use sockmesh_serve::{read_body, BODY_TIMEOUT};

use crate::credentials::{self, Authn, Credentials, Identity, RefusedReason};
use crate::history::Revision;
use crate::hub::Hub;
use sockmesh_model::protocol::{ErrorBody, HISTORY_PATH};
use sockmesh_model::request::{self, ApiRequest, MAX_BODY_BYTES};

pub type Reply = Response<Full<Bytes>>;

/// Where this control plane listens, for `/v1/status`.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub tcp: Vec<String>,
    pub unix: Option<String>,
    pub metrics: Option<String>,
}

/// One listener's view of the API: the hub, plus the credentials its clients must present
/// (`None` on the unix socket, whose clients are the operator: `crate::credentials`).
#[derive(Debug, Clone)]
pub struct Api {
    pub hub: Arc<Hub>,
    pub credentials: Option<Arc<Credentials>>,
    pub listening: Arc<Listening>,
}

impl Api {
    /// Answers one request. Generic over the body so the router is a function of a plain
    /// request (the server passes hyper's `Incoming`; the `control_router` fuzz target an
    /// in-memory body) and needs no socket.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let identity = match &self.credentials {
            None => Identity::Operator,
            Some(credentials) => {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                match credentials.authenticate(given).await {
                    Authn::Known(identity) => identity,
                    Authn::Unknown => return self.unauthenticated(),
                    Authn::Unavailable(why) => {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("cannot check the credential now: {why}"),
                        )
                    }
                }
            }
        };
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = if req.method() == Method::POST {
            match read_body(req.into_body(), MAX_BODY_BYTES, BODY_TIMEOUT).await {
                Ok(b) => b,
                Err(e) => return error(e.status(), &e.to_string()),
            }
        } else {
            Bytes::new()
        };
        let request = match request::decode(&method, &path, &query, &body) {
            Ok(r) => r,
            Err(bad) => return error(bad.status, &bad.message),
        };
        if let Err(refusal) = credentials::authorize(&identity, &request) {
            self.hub.metrics.refused(refusal.reason);
            return error(StatusCode::FORBIDDEN, &refusal.message);
        }
        // A node's reads are its own whatever `agent=` it gave (none, or its own name), so
        // its sync record and its watch cap key on the credential, not on a claim.
        let own = |agent: Option<String>| match &identity {
            Identity::Node(node) => Some(node.to_string()),
            Identity::Operator => agent,
        };
        match request {
            ApiRequest::Snapshot { agent, version } => {
                let agent = own(agent);
                self.note_agent(agent.as_deref());
                self.snapshot(version)
            }
            ApiRequest::Watch {
                agent,
                after,
                timeout,
                delta,
            } => {
                let agent = own(agent);
                self.note_agent(agent.as_deref());
                // Held until the reply is made (or the connection goes).
                let Some(_slot) = self.hub.watches.enter(agent.as_deref()) else {
                    self.hub.metrics.watches_refused.inc();
                    return error(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "agent {:?} already holds {} watches, the most one identity may",
                            agent.as_deref().unwrap_or(crate::watch_cap::UNNAMED),
                            self.hub.watches.per_identity()
                        ),
                    );
                };
                self.watch(after, timeout, delta).await
            }
            ApiRequest::Ack(ack) => {
                self.hub.ack(&ack);
                json(StatusCode::OK, &serde_json::json!({"recorded": true}))
            }
            ApiRequest::Agents => json(StatusCode::OK, &self.hub.agents()),
            ApiRequest::History => json(StatusCode::OK, &self.hub.history()),
            ApiRequest::Rollback(r) => match self.hub.rollback(r.version) {
                Ok(reply) => json(StatusCode::OK, &reply),
                Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
            },
            ApiRequest::Status => {
                let mut status = self.hub.status();
                status.listen = self.listening.tcp.clone();
                status.listen_unix = self.listening.unix.clone();
                status.metrics_addr = self.listening.metrics.clone();
                json(StatusCode::OK, &status)
            }
        }
    }

    /// 401 with the challenge, counted.
    fn unauthenticated(&self) -> Reply {
        self.hub.metrics.refused(RefusedReason::Unauthenticated);
        let mut reply = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        reply.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"sockmesh-control\""),
        );
        reply
    }

    /// Notes the (already checked) `agent=` a snapshot or watch names.
    fn note_agent(&self, agent: Option<&str>) {
        if let Some(agent) = agent {
            self.hub.seen(agent);
        }
    }

    fn snapshot(&self, version: Option<u64>) -> Reply {
        let revision = match version {
            None => self.hub.head(),
            Some(v) => match self.hub.revision(v) {
                Some(r) => Some(r),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        &format!("version {v} is not kept; see {HISTORY_PATH}"),
                    )
                }
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
    ///
    /// `delta`: the agent reads `Update`s; it gets the head as a delta from `after` when
    /// `after` is still kept, else as a snapshot.
    async fn watch(&self, after: u64, timeout: Duration, delta: bool) -> Reply {
        let mut heads = self.hub.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let head = heads.borrow_and_update().clone();
            if let Some(head) = head {
                if head.version != after {
                    if !delta {
                        return snapshot_reply(&head);
                    }
                    let body = self
                        .hub
                        .revision(after)
                        .and_then(|base| head.delta_json(&base));
                    self.hub.metrics.served(body.is_some());
                    return json_bytes(body.unwrap_or_else(|| head.update_json()));
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
}

fn snapshot_reply(revision: &Revision) -> Reply {
    json_bytes(revision.snapshot_json())
}

fn json_bytes(body: Bytes) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
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

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;

//! Admin API: the endpoints of [`Endpoint`] (shapes in docs/agent-interface.md), every one a
//! GET but `POST /v1/fault` and `POST /v1/proxy/restart`.
//!
//! Served on a unix socket created with mode 0600 (only root or the owner can connect: no token
//! to leak), and optionally on TCP, where every request must carry a bearer token: the read
//! credential for `GET`s, the fault credential for the POSTs as well ([`access`]).

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Body, Incoming},
    Method, Request, Response, StatusCode,
};
use serde_json::json;
use sockmesh_serve::{Listener, Server};
use tokio::net::UnixListener;

pub(crate) mod access;
pub(crate) mod endpoint;

pub(crate) use access::{AdminAccess, AdminMetrics};
pub(crate) use endpoint::Endpoint;

use access::{Grant, RefusedReason};

use crate::{
    diagnose::api as diagnose,
    engine::task::{Command, EngineHandle, EngineViews},
    signals::Signals,
    status::SharedStatus,
};

/// The largest body `POST /v1/fault` reads; a larger one is refused with 413.
pub(crate) const MAX_POST_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub status: SharedStatus,
    pub signals: Arc<Signals>,
    pub engine: EngineHandle,
    /// The credentials TCP clients present; `None` on the unix socket, where file
    /// permissions are the guard and every scope is granted.
    pub access: Option<AdminAccess>,
    pub metrics: AdminMetrics,
    /// Hitless restarts of a spawned L7 proxy.
    pub proxy: crate::l7::Restarter,
}

/// Binds the socket (replacing a stale one from a previous agent), private from the start.
pub(crate) fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    // SAFETY: umask only swaps the process mask; restored right after bind.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin API on `listener` (the unix socket, or TCP with `state.access` set)
/// through the hardened loop of `sockmesh-serve`.
pub(crate) async fn serve<L: Listener>(listener: L, state: AdminState, server: Server) {
    server
        .serve(listener, move |req: Request<Incoming>| {
            let state = state.clone();
            async move { route(req, &state).await }
        })
        .await
}

/// Answers one request: the whole router, a function of the request and the state, with no
/// socket in it (the server passes hyper's `Incoming` body; the fuzz targets an in-memory
/// one).
pub(crate) async fn route<B>(req: Request<B>, state: &AdminState) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let grant = match &state.access {
        None => Grant::Fault,
        Some(access) => {
            let header = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match access.grant(header) {
                Some(grant) => grant,
                None => {
                    state.metrics.refused(RefusedReason::Unauthenticated);
                    return json_reply(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": "missing or wrong bearer token"}),
                    );
                }
            }
        }
    };
    if req.method() == Method::POST {
        if grant != Grant::Fault
            && Endpoint::from_path(req.uri().path()).is_some_and(Endpoint::is_post)
        {
            state.metrics.refused(RefusedReason::Scope);
            return json_reply(
                StatusCode::FORBIDDEN,
                &json!({"error": access::FAULT_SCOPE_NEEDED}),
            );
        }
        return post(req, state).await;
    }
    // The engine's views are built by the engine task, on request.
    let views = if req.method() == Method::GET
        && Endpoint::from_path(req.uri().path()).is_some_and(Endpoint::needs_engine)
    {
        state.engine.views().await
    } else {
        None
    };
    handle(&req, state, views.as_ref())
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn json_reply(code: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    reply(code, "application/json", body + "\n")
}

fn engine_gone() -> Response<Full<Bytes>> {
    json_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "the health engine is not running"}),
    )
}

fn unknown_service(name: &str) -> Response<Full<Bytes>> {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("unknown service {name}")}),
    )
}

fn handle<B>(
    req: &Request<B>,
    state: &AdminState,
    engine: Option<&EngineViews>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "the admin API is read-only (GET)"}),
        );
    }
    let snapshot = || state.status.read().expect("status lock").clone();
    let query = req.uri().query().unwrap_or("");
    let Some(endpoint) = Endpoint::from_path(req.uri().path()) else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown path; see docs/agent-interface.md"}),
        );
    };
    if endpoint.needs_engine() && engine.is_none() {
        return engine_gone();
    }
    let engine = || engine.expect("checked above");
    match endpoint {
        Endpoint::Ready if snapshot().ready => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        Endpoint::Ready => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        Endpoint::Status => json_reply(
            StatusCode::OK,
            &serde_json::to_value(snapshot()).unwrap_or_default(),
        ),
        Endpoint::Services => json_reply(StatusCode::OK, &state.signals.services_json()),
        Endpoint::Backends => {
            let name = query_param(query, "service").unwrap_or_default();
            match state.signals.backends_json(&name) {
                Some(v) => json_reply(StatusCode::OK, &v),
                None => unknown_service(&name),
            }
        }
        Endpoint::Workloads => json_reply(StatusCode::OK, &state.signals.workloads_json()),
        Endpoint::Failures => json_reply(StatusCode::OK, &state.signals.failures_json()),
        Endpoint::Slos => json_reply(
            StatusCode::OK,
            &serde_json::to_value(state.signals.slos()).unwrap_or_default(),
        ),
        Endpoint::Bans => json_reply(StatusCode::OK, &engine().bans),
        Endpoint::Circuits => json_reply(StatusCode::OK, &engine().circuits),
        Endpoint::Lines => json_reply(StatusCode::OK, &diagnose::lines_json(&state.signals)),
        Endpoint::Top => json_reply(StatusCode::OK, &diagnose::top_json(&state.signals)),
        Endpoint::Diagnose => {
            let name = query_param(query, "service").unwrap_or_default();
            match diagnose::diagnose_json(&state.signals, engine(), &name) {
                Some(v) => json_reply(StatusCode::OK, &v),
                None => unknown_service(&name),
            }
        }
        Endpoint::Fault => json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "fault drills are POST /v1/fault"}),
        ),
        Endpoint::ProxyRestart => json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "a proxy restart is POST /v1/proxy/restart"}),
        ),
    }
}

/// `POST /v1/fault` `{"service": NAME, "refuse_percent": P}`: refuse P% of the service's
/// connects (chaos drills); `0` ends the drill. Only callers with the fault scope reach this.
async fn post<B>(req: Request<B>, state: &AdminState) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Endpoint::from_path(req.uri().path()) {
        Some(Endpoint::Fault) => {}
        Some(Endpoint::ProxyRestart) => return restart_proxy(state).await,
        _ => {
            return json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": "POST goes to /v1/fault or /v1/proxy/restart"}),
            )
        }
    }
    let body = match sockmesh_serve::read_body(
        req.into_body(),
        MAX_POST_BYTES,
        sockmesh_serve::BODY_TIMEOUT,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return json_reply(e.status(), &json!({"error": e.to_string()})),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fault {
        service: String,
        refuse_percent: f64,
    }
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    if !(0.0..=100.0).contains(&fault.refuse_percent) {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"error": "refuse_percent must be between 0 and 100"}),
        );
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let refuse_ppm = (fault.refuse_percent * 10_000.0).round() as u32;
    let cmd = Command::Fault {
        service: fault.service.clone(),
        refuse_ppm,
        reply,
    };
    if state.engine.commands.send(cmd).await.is_err() {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "engine stopped"}),
        );
    }
    match answer.await {
        Ok(true) => {
            tracing::warn!(service = %fault.service, refuse_percent = fault.refuse_percent, "fault injection set");
            json_reply(
                StatusCode::OK,
                &json!({"service": fault.service, "refuse_percent": fault.refuse_percent}),
            )
        }
        Ok(false) => json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("unknown service {}", fault.service)}),
        ),
        Err(_) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "engine stopped"}),
        ),
    }
}

/// `POST /v1/proxy/restart` (no body): start a successor to the spawned L7 proxy, and
/// drain the old one once the successor serves; 200 `{"old_pid","new_pid"}`.
async fn restart_proxy(state: &AdminState) -> Response<Full<Bytes>> {
    use crate::l7::RestartError;
    match state.proxy.restart().await {
        Ok(done) => json_reply(
            StatusCode::OK,
            &serde_json::to_value(done).unwrap_or_default(),
        ),
        Err(e) => {
            let code = match e {
                RestartError::NotSpawned | RestartError::NotRunning => StatusCode::CONFLICT,
                RestartError::Successor(_) | RestartError::Stopping => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            json_reply(code, &json!({"error": e.to_string()}))
        }
    }
}

/// One `key=value` from a query string, percent-decoding `%XX` (service names are plain, but
/// a CLI may still encode them).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// `%XX` (two ASCII hex digits) becomes that byte and `+` a space, on bytes: slicing the
/// string instead once cut through a multi-byte character (`%a` then `é`) and panicked the
/// connection's task (docs/fuzzing.md, "Findings").
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'%', hi, lo]) = bytes.get(i..i + 3) {
            if let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo)) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
#[path = "admin/scope_tests.rs"]
mod scope_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_params() {
        assert_eq!(
            query_param("service=web&x=1", "service").as_deref(),
            Some("web")
        );
        assert_eq!(
            query_param("x=1&service=a%2Db", "service").as_deref(),
            Some("a-b")
        );
        assert_eq!(query_param("x=1", "service"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn percent_escapes_are_decoded_on_bytes() {
        // The fuzzer's first find (fuzz/seeds/admin_router/regress-percent-non-ascii): an
        // escape cut inside a UTF-8 sequence panicked.
        assert_eq!(
            query_param("service=%a\u{e9}", "service").as_deref(),
            Some("%a\u{e9}")
        );
        assert_eq!(percent_decode("%\u{e9}1"), "%\u{e9}1");
        assert_eq!(percent_decode("%a\u{20ac}"), "%a\u{20ac}");
        assert_eq!(percent_decode("%C3%A9+%e2%82%ac"), "\u{e9} \u{20ac}");
        // Only hex digits: a sign is not one (`from_str_radix` took `%+1` as 0x01).
        assert_eq!(percent_decode("%+1%-1"), "% 1%-1");
        // A lone byte of a sequence decodes lossily rather than failing.
        assert_eq!(percent_decode("a%C3"), "a\u{fffd}");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%4"), "A%4");
    }
}

//! The agent's admin router (`sockmesh_agent`'s `admin::route`: `authorized`, `handle`,
//! `post`, the endpoints) on arbitrary requests (method, path, query string, headers with
//! or without the bearer token, body), against an agent's admin state over the default
//! config with its health engine running and no kernel (`sockmesh_agent::fuzzing`), as the
//! TCP listener (token required) or the unix socket (none). Request layout:
//! `sockmesh_fuzz::request`.
//!
//! Beyond "never panics" (the first find: `?service=%a` then a non-ASCII byte panicked the
//! query decoder), every reply must keep the API's rules:
//! - on TCP, a request without exactly `Authorization: Bearer TOKEN` gets 401, whatever
//!   its method and path; with it (or on the unix socket), never 401;
//! - only `GET` reads and only `POST /v1/fault` writes: any other method gets 405, a `POST`
//!   elsewhere 404, a `GET /v1/fault` 405, an unknown path 404;
//! - a `POST /v1/fault` with a body over the limit gets 413; one that sets a fault (200)
//!   names a service of the config and a percentage in 0..=100, and a well-formed one for
//!   a known service is accepted;
//! - `/v1/backends` and `/v1/diagnose` answer 200 exactly when `?service=` names a service
//!   of the config (percent-decoded on bytes, as a client encodes it), else 404;
//! - every reply has a content type and every JSON reply parses; every error names it.

#![no_main]

use std::sync::OnceLock;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sockmesh_agent::fuzzing::{is_post, paths, AdminHarness, MAX_POST_BYTES};
use sockmesh_fuzz::{request, TOKEN};
use tokio::runtime::Runtime;

/// One runtime and one agent for every input: the engine task lives on between inputs.
fn agent() -> &'static (Runtime, AdminHarness) {
    static AGENT: OnceLock<(Runtime, AdminHarness)> = OnceLock::new();
    AGENT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let harness = rt.block_on(AdminHarness::new(TOKEN));
        (rt, harness)
    })
}

/// `%XX` decoded on bytes, `+` as a space, the rest as is (then lossy UTF-8): what a client
/// that encodes a name means by it.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn service_param(query: &str) -> String {
    query
        .split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "service").then(|| percent_decode(v))
        })
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fault {
    service: String,
    refuse_percent: f64,
}

fuzz_target!(|input: &[u8]| {
    let (rt, agent) = agent();
    let Some(req) = request(input, &paths(), MAX_POST_BYTES) else {
        return;
    };
    let authorized = req.unix || req.has_token();
    let (status, headers, body) = rt.block_on(async {
        let reply = agent.route(req.request, req.unix).await;
        let (parts, body) = reply.into_parts();
        let body = body.collect().await.expect("an in-memory body").to_bytes();
        (parts.status, parts.headers, body)
    });

    let ctype = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .expect("every reply has a content type");
    let json = (ctype == "application/json").then(|| {
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{status}: a JSON reply that does not parse ({e})"))
    });
    if !status.is_success() {
        if let Some(v) = &json {
            let error = v["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "{status} without an error: {v}");
        }
    }

    if !authorized {
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            req.method,
            req.path
        );
        return;
    }
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    let known = |name: &str| agent.services().iter().any(|s| s == name);
    let served = paths().contains(&req.path.as_str());
    let query = req.query.as_deref().unwrap_or("");
    match req.method {
        Method::POST if !is_post(&req.path) => assert_eq!(status, StatusCode::NOT_FOUND),
        // The harness runs no spawned proxy: a restart is refused with the reason.
        Method::POST if req.path == "/v1/proxy/restart" => {
            assert_eq!(status, StatusCode::CONFLICT)
        }
        Method::POST if req.body.len() > MAX_POST_BYTES => {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE)
        }
        Method::POST => {
            let fault = serde_json::from_slice::<Fault>(&req.body).ok();
            let valid = fault
                .as_ref()
                .is_some_and(|f| known(&f.service) && (0.0..=100.0).contains(&f.refuse_percent));
            if status == StatusCode::OK {
                assert!(
                    valid,
                    "a fault set from {:?}",
                    String::from_utf8_lossy(&req.body)
                );
            } else {
                assert!(!valid, "{status} for a valid fault");
                assert!(
                    [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&status),
                    "{status}"
                );
            }
        }
        Method::GET if !served => assert_eq!(status, StatusCode::NOT_FOUND),
        Method::GET if is_post(&req.path) => assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED),
        Method::GET if req.path == "/v1/backends" || req.path == "/v1/diagnose" => {
            let name = service_param(query);
            let expected = if known(&name) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(status, expected, "{} for service {name:?}", req.path);
        }
        Method::GET => assert_eq!(status, StatusCode::OK, "{}", req.path),
        _ => assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{}", req.method),
    }
});

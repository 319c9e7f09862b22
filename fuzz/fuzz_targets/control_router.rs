//! The control plane's router (`sockmesh_control::api::Api::handle`) on arbitrary requests
//! (method, path, query string, headers with or without the bearer token, body), against a
//! real hub that starts with two versions of the default config, as the TCP listener (the
//! operator token, or node `node-1`'s token, which the input can send as its own
//! `authorization:` line; the dictionary has it) or the unix socket (none). Request layout:
//! `sockmesh_fuzz::request`. One hub serves `HUB_INPUTS` inputs in a row (building one per
//! input cost 10x the throughput), so acks and rollbacks accumulate; the checks read its
//! state before and after each request. Then a fresh hub takes over: a hub kept for good
//! fills its agent registry (10,000 names), where each new name scans every entry for the
//! stalest, and the target ran at a twelfth of its speed.
//!
//! Beyond "never panics", every reply must keep the API's rules:
//! - on TCP, a request without exactly `Authorization: Bearer TOKEN` (or node-1's token)
//!   gets 401 with a `WWW-Authenticate` challenge and changes nothing (no version, no agent
//!   recorded); with it (or on the unix socket), never 401;
//! - with node-1's token, a rollback, history, agents or status request, and a snapshot,
//!   watch or ack naming another agent, gets 403 once it decodes: a node never moves the
//!   head;
//! - an authorized `POST` with a body over `MAX_BODY_BYTES` gets 413, and only such a POST;
//! - otherwise the status is what the request decoder (`request::decode`) makes of the
//!   request: its 4xx when it refuses it, else the endpoint's answer (200, 204 for a watch
//!   that timed out on the version it already has, 404 for a version not kept);
//! - the head only moves on a successful rollback; every reply but a 204 is JSON, and
//!   every error reply names the error.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use http::StatusCode;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sockmesh_control::api::{Api, Listening};
use sockmesh_control::credentials::{Credentials, NodeTokens};
use sockmesh_control::hub::Hub;
use sockmesh_control::source::SourceEvent;
use sockmesh_fuzz::{request, TOKEN};
use sockmesh_model::request::{decode, ApiRequest, MAX_BODY_BYTES, PATHS};
use sockmesh_model::{default_config, Token};
use tokio::runtime::Runtime;

/// How many inputs in a row one hub serves before a fresh one replaces it.
const HUB_INPUTS: u32 = 4_096;

/// One runtime for every input, and the hub of the current run of `HUB_INPUTS` inputs; the
/// clock is paused, so a watch's long-poll ends at once.
fn state() -> (&'static Runtime, Arc<Hub>) {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    static HUB: Mutex<Option<(u32, Arc<Hub>)>> = Mutex::new(None);
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    });
    let mut current = HUB.lock().expect("the hub lock");
    match current.as_mut() {
        Some((served, hub)) if *served < HUB_INPUTS => {
            *served += 1;
            (rt, hub.clone())
        }
        _ => {
            let hub = rt.block_on(async { hub() });
            *current = Some((1, hub.clone()));
            (rt, hub)
        }
    }
}

/// A hub at version 2, with version 1 kept (so a rollback has somewhere to go).
fn hub() -> Arc<Hub> {
    let hub = Arc::new(Hub::new("fuzz".into(), 4, None).expect("a hub without a store"));
    let first = default_config();
    let mut second = first.clone();
    second.services.truncate(1);
    assert_ne!(first, second, "the default config has several services");
    hub.on_source(SourceEvent::Desired(first));
    hub.on_source(SourceEvent::Desired(second));
    hub
}

/// Node `node-1`'s token on the TCP listener.
const NODE_TOKEN: &str = "fuzz-node-1-token-0123";
const NODE: &str = "node-1";

/// Whether node-1's credential is refused `request` (the scope rules of
/// docs/control-plane.md, written out again rather than calling the implementation).
fn node_refused(request: &ApiRequest) -> bool {
    match request {
        ApiRequest::Rollback(_) | ApiRequest::History | ApiRequest::Agents | ApiRequest::Status => {
            true
        }
        ApiRequest::Ack(ack) => ack.agent != NODE,
        ApiRequest::Snapshot { agent, .. } | ApiRequest::Watch { agent, .. } => {
            agent.as_deref().is_some_and(|a| a != NODE)
        }
    }
}

fn head(hub: &Hub) -> u64 {
    hub.head().expect("the hub has a head").version
}

fuzz_target!(|input: &[u8]| {
    let Some(req) = request(input, &PATHS, MAX_BODY_BYTES) else {
        return;
    };
    let (rt, hub) = state();
    let hub = &hub;
    let head_before = head(hub);
    let agents_before = hub.agent_count();
    let api = Api {
        hub: hub.clone(),
        credentials: (!req.unix).then(|| {
            let operator = Token::new(TOKEN, "fuzz").expect("a valid token");
            let nodes = NodeTokens::parse(&format!("{NODE} {NODE_TOKEN}"), "fuzz")
                .expect("a valid node tokens file");
            Arc::new(Credentials::new(Some(operator), nodes))
        }),
        listening: Arc::new(Listening::default()),
    };
    let node = !req.unix
        && req.authorization.as_deref() == Some(format!("Bearer {NODE_TOKEN}").as_bytes());
    let authorized = req.unix || req.has_token() || node;
    let post = req.method == http::Method::POST;
    let (status, headers, body) = rt.block_on(async {
        let reply = api.handle(req.request).await;
        let (parts, body) = reply.into_parts();
        let body = body.collect().await.expect("an in-memory body").to_bytes();
        (parts.status, parts.headers, body)
    });

    if status != StatusCode::NO_CONTENT {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: a reply that is not JSON ({e})"));
        if !status.is_success() {
            let error = value["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "{status} without an error: {value}");
        }
    }

    if !authorized {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(http::header::WWW_AUTHENTICATE));
        assert_eq!(
            head(hub),
            head_before,
            "an unauthorized request moved the head"
        );
        assert_eq!(
            hub.agent_count(),
            agents_before,
            "an unauthorized request recorded an agent"
        );
        return;
    }
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    if post && req.body.len() > MAX_BODY_BYTES {
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        return;
    }
    assert_ne!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let body = if post { &req.body[..] } else { &[] };
    let query = req.query.as_deref().unwrap_or("");
    let mut rolled_back = false;
    match decode(req.method.as_str(), &req.path, query, body) {
        Err(bad) => assert_eq!(status, bad.status, "{}", bad.message),
        Ok(r) if node && node_refused(&r) => {
            assert_eq!(status, StatusCode::FORBIDDEN, "node-1 asking {r:?}")
        }
        Ok(ApiRequest::Snapshot { version, .. }) => match version {
            Some(v) if hub.revision(v).is_none() => assert_eq!(status, StatusCode::NOT_FOUND),
            _ => assert_eq!(status, StatusCode::OK),
        },
        Ok(ApiRequest::Watch { after, .. }) => {
            let expected = if after == head_before {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "watch after {after}");
        }
        Ok(ApiRequest::Rollback(r)) => {
            if status == StatusCode::OK {
                rolled_back = true;
            } else {
                assert_eq!(status, StatusCode::NOT_FOUND, "rollback to {}", r.version);
            }
        }
        Ok(ApiRequest::Ack(_) | ApiRequest::Agents | ApiRequest::History | ApiRequest::Status) => {
            assert_eq!(status, StatusCode::OK)
        }
    }
    if !rolled_back {
        assert_eq!(head(hub), head_before, "only a rollback moves the head");
    }
});

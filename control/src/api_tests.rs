//! The router with credentials: what a node token, the operator token, no token and the
//! unix socket may do, against a real hub.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::{Api, Listening};
use crate::credentials::{Credentials, NodeTokens, RefusedLabels, RefusedReason};
use crate::hub::Hub;
use crate::source::SourceEvent;
use sockmesh_model::{default_config, Token};

const OPERATOR: &str = "operator-token-0123456789";
const NODE_A: &str = "token-of-node-a-0123";
const NODE_B: &str = "token-of-node-b-4567";

/// A hub at version 2 with version 1 kept, and the TCP view of it.
fn api() -> Api {
    let hub = Arc::new(Hub::new("test".into(), 4, None).unwrap());
    let first = default_config();
    let mut second = first.clone();
    second.services.truncate(1);
    hub.on_source(SourceEvent::Desired(first));
    hub.on_source(SourceEvent::Desired(second));
    let nodes = NodeTokens::parse(&format!("node-a {NODE_A}\nnode-b {NODE_B}\n"), "test").unwrap();
    Api {
        hub,
        credentials: Some(Arc::new(Credentials::new(
            Some(Token::new(OPERATOR, "test").unwrap()),
            nodes,
        ))),
        listening: Arc::new(Listening::default()),
    }
}

async fn call(
    api: &Api,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if method == "POST" {
        Bytes::from(body.to_string())
    } else {
        Bytes::new()
    };
    let reply = api.handle(req.body(Full::new(body)).unwrap()).await;
    let status = reply.status();
    let bytes = reply.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

fn refused(api: &Api, reason: RefusedReason) -> u64 {
    api.hub
        .metrics
        .requests_refused
        .get_or_create(&RefusedLabels { reason })
        .get()
}

fn head(api: &Api) -> u64 {
    api.hub.head().unwrap().version
}

fn ack(agent: &str) -> Value {
    json!({"agent": agent, "version": 2, "ok": true})
}

#[tokio::test]
async fn a_node_credential_cannot_roll_back_or_read_the_history() {
    let api = api();
    let (status, body) = call(
        &api,
        "POST",
        "/v1/rollback",
        Some(NODE_A),
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        "node credential of node-a cannot roll back: that needs the operator credential \
         (the control plane's --token-file, or its unix socket)"
    );
    assert_eq!(head(&api), 2, "a refused rollback moved the head");
    assert_eq!(refused(&api, RefusedReason::Scope), 1);

    for path in ["/v1/history", "/v1/agents", "/v1/status"] {
        let (status, body) = call(&api, "GET", path, Some(NODE_A), Value::Null).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("needs the operator credential"));
    }
    assert_eq!(refused(&api, RefusedReason::Scope), 4);
}

#[tokio::test]
async fn a_node_acks_and_watches_as_itself_only() {
    let api = api();
    let (status, body) = call(&api, "POST", "/v1/ack", Some(NODE_A), ack("node-b")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        "node credential of node-a cannot ack as node-b"
    );
    assert!(api.hub.agents().is_empty(), "a refused ack was recorded");
    assert_eq!(refused(&api, RefusedReason::IdentityMismatch), 1);

    let (status, _) = call(&api, "POST", "/v1/ack", Some(NODE_A), ack("node-a")).await;
    assert_eq!(status, StatusCode::OK);
    let agents = api.hub.agents();
    assert_eq!(agents.len(), 1);
    assert_eq!((agents[0].agent.as_str(), agents[0].version), ("node-a", 2));

    let (status, body) = call(
        &api,
        "GET",
        "/v1/watch?after=1&agent=node-a&delta=1",
        Some(NODE_A),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &api,
        "GET",
        "/v1/snapshot?agent=node-a",
        Some(NODE_A),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let (status, body) = call(
        &api,
        "GET",
        "/v1/watch?after=1&agent=node-b",
        Some(NODE_A),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        "node credential of node-a cannot watch as node-b"
    );
    assert_eq!(refused(&api, RefusedReason::IdentityMismatch), 2);
    assert_eq!(refused(&api, RefusedReason::Scope), 0);
}

#[tokio::test]
async fn the_operator_may_do_everything_and_no_token_nothing() {
    let api = api();
    let (status, _) = call(&api, "POST", "/v1/ack", Some(OPERATOR), ack("node-b")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&api, "GET", "/v1/history", Some(OPERATOR), Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &api,
        "POST",
        "/v1/rollback",
        Some(OPERATOR),
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(head(&api), 3);

    for token in [None, Some("token-of-node-c-8901"), Some("")] {
        let (status, body) = call(&api, "GET", "/v1/snapshot", token, Value::Null).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
    }
    assert_eq!(refused(&api, RefusedReason::Unauthenticated), 3);
    assert_eq!(refused(&api, RefusedReason::Scope), 0);

    // The unix socket's clients are the operator.
    let unix = Api {
        credentials: None,
        ..api.clone()
    };
    let (status, body) = call(&unix, "POST", "/v1/rollback", None, json!({"version": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_nodes_watches_count_against_its_credential_not_its_claim() {
    let api = api();
    let per = api.hub.watches.per_identity();
    let held: Vec<_> = (0..per)
        .map(|_| api.hub.watches.enter(Some("node-a")).unwrap())
        .collect();
    // No agent= at all: still node-a's watch, so over node-a's cap.
    let (status, body) = call(&api, "GET", "/v1/watch?after=1", Some(NODE_A), Value::Null).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"node-a\""),
        "{body}"
    );
    // node-b is not affected.
    let (status, _) = call(&api, "GET", "/v1/watch?after=1", Some(NODE_B), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    drop(held);
    let (status, _) = call(&api, "GET", "/v1/watch?after=1", Some(NODE_A), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    // And the snapshot it read without agent= is recorded as node-a's.
    call(&api, "GET", "/v1/snapshot", Some(NODE_A), Value::Null).await;
    assert!(api.hub.agents().iter().any(|a| a.agent == "node-a"));
}

//! The admin API's two scopes over a real TCP socket on 127.0.0.1: the read credential
//! reads and cannot inject faults (403 with the reason, counted), the fault credential
//! does both, anything else is 401 (counted).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::access::{RefusedReason, FAULT_SCOPE_NEEDED};
use super::AdminState;
use crate::fuzzing::AdminHarness;

const READ: &str = "admin-read-token-0123";
const FAULT: &str = "admin-fault-token-4567";

/// Serves `state` on 127.0.0.1 and returns the address.
async fn serve(state: AdminState) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut registry = crate::metrics::registry();
    let server = sockmesh_serve::Server::new(
        sockmesh_serve::Endpoint::Admin,
        sockmesh_serve::Limits::with_cap(16),
        sockmesh_serve::ServeMetrics::new(&mut registry),
    );
    tokio::spawn(super::serve(listener, state, server));
    addr
}

/// One request on a new connection: the status and the body as JSON.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let status = reply[9..12].parse().unwrap();
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    let value = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into()));
    (status, value)
}

fn fault_body(service: &str, percent: u32) -> String {
    format!(r#"{{"service":"{service}","refuse_percent":{percent}}}"#)
}

#[tokio::test]
async fn the_read_credential_reads_but_cannot_inject_faults() {
    let harness = AdminHarness::with_tokens(READ, Some(FAULT)).await;
    let state = harness.tcp_state();
    let addr = serve(state.clone()).await;
    let service = harness.services()[0].clone();

    let (status, body) = call(addr, "GET", "/status", Some(READ), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(addr, "GET", "/v1/bans", Some(READ), "").await;
    assert_eq!(status, 200);

    let (status, body) = call(
        addr,
        "POST",
        "/v1/fault",
        Some(READ),
        &fault_body(&service, 50),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], FAULT_SCOPE_NEEDED);
    assert_eq!(state.metrics.count(RefusedReason::Scope), 1);

    let (status, body) = call(
        addr,
        "POST",
        "/v1/fault",
        Some(FAULT),
        &fault_body(&service, 50),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refuse_percent"], 50.0);
    let (status, _) = call(addr, "GET", "/status", Some(FAULT), "").await;
    assert_eq!(status, 200, "the fault credential also reads");
    assert_eq!(state.metrics.count(RefusedReason::Scope), 1);

    for token in [None, Some("admin-wrong-token-000")] {
        let (status, _) = call(addr, "POST", "/v1/fault", token, &fault_body(&service, 0)).await;
        assert_eq!(status, 401, "{token:?}");
        let (status, _) = call(addr, "GET", "/status", token, "").await;
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(state.metrics.count(RefusedReason::Unauthenticated), 4);
}

#[tokio::test]
async fn without_a_fault_credential_tcp_cannot_inject_faults_and_the_socket_can() {
    let harness = AdminHarness::with_tokens(READ, None).await;
    let state = harness.tcp_state();
    let addr = serve(state.clone()).await;
    let service = harness.services()[0].clone();
    let (status, body) = call(
        addr,
        "POST",
        "/v1/fault",
        Some(READ),
        &fault_body(&service, 10),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some(FAULT_SCOPE_NEEDED))
    );
    assert_eq!(state.metrics.count(RefusedReason::Scope), 1);

    let request = hyper::Request::post("/v1/fault")
        .body(http_body_util::Full::new(bytes::Bytes::from(fault_body(
            &service, 10,
        ))))
        .unwrap();
    let reply = harness.route(request, true).await;
    assert_eq!(
        reply.status(),
        hyper::StatusCode::OK,
        "the unix socket has every scope"
    );
}

/// A proxy restart is a write: the read credential gets 403, the fault credential reaches
/// the restarter (which, with no spawned proxy, answers 409 with the reason).
#[tokio::test]
async fn a_proxy_restart_needs_the_fault_credential() {
    let harness = AdminHarness::with_tokens(READ, Some(FAULT)).await;
    let state = harness.tcp_state();
    let addr = serve(state.clone()).await;
    let (status, body) = call(addr, "POST", "/v1/proxy/restart", Some(READ), "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some(FAULT_SCOPE_NEEDED))
    );
    let (status, body) = call(addr, "POST", "/v1/proxy/restart", Some(FAULT), "").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--proxy external"),
        "{body}"
    );
    let (status, _) = call(addr, "GET", "/v1/proxy/restart", Some(FAULT), "").await;
    assert_eq!(status, 405);
}

//! `AdminClient::post_json` (`POST /v1/fault`) against real listeners: what goes on the
//! wire, the token on TCP, and each error the agent can answer with.

mod fake_agent;

use fake_agent::{bad_request, body_of, json_reply, not_found, ok, FakeAgent, Reply};
use sockmesh_cli::{AdminClient, AdminError, AdminTarget, AdminToken, FaultDrill, FAULT_PATH};

const SET: &str = r#"{"service":"web","refuse_percent":25.0}"#;

fn unix_client(agent: &FakeAgent) -> AdminClient {
    AdminClient::new(AdminTarget::Unix(agent.socket.clone().unwrap()))
}

fn tcp_client(agent: &FakeAgent, token: &str) -> AdminClient {
    let target = AdminTarget::from_url(&format!("http://{}", agent.addr.unwrap())).unwrap();
    AdminClient::new(target).with_token(AdminToken::new(token).unwrap())
}

#[test]
fn post_over_the_unix_socket_sends_the_drill_as_json() {
    let agent = FakeAgent::unix(vec![(FAULT_PATH, ok(SET))]);
    let drill = FaultDrill::set("web", 25.0);
    let reply = unix_client(&agent)
        .post_json(FAULT_PATH, &drill.body())
        .unwrap();
    assert_eq!(reply.text, SET);
    assert_eq!(reply.value["refuse_percent"], 25.0);
    let request = agent.last_request();
    assert!(
        request.starts_with("POST /v1/fault HTTP/1.1\r\nHost: localhost\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nContent-Type: application/json\r\n"),
        "{request}"
    );
    let body = body_of(&request);
    assert!(
        request.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{request}"
    );
    assert!(!request.contains("Authorization"), "{request}");
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"service": "web", "refuse_percent": 25.0})
    );
}

#[test]
fn post_over_tcp_carries_the_token() {
    let agent = FakeAgent::tcp(vec![(FAULT_PATH, ok(SET))], "s3cret");
    let drill = FaultDrill::clear("web");
    tcp_client(&agent, "s3cret")
        .post_json(FAULT_PATH, &drill.body())
        .unwrap();
    let request = agent.last_request();
    assert!(
        request.starts_with("POST /v1/fault HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nAuthorization: Bearer s3cret\r\n"),
        "{request}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body_of(&request)).unwrap()["refuse_percent"],
        0.0
    );
    let err = tcp_client(&agent, "guess")
        .post_json(FAULT_PATH, &drill.body())
        .unwrap_err();
    assert_eq!(err.to_string(), "the agent refused the token (401)");
}

#[test]
fn unknown_service_is_the_agents_404_as_is() {
    let agent = FakeAgent::unix(vec![(
        FAULT_PATH,
        not_found(r#"{"error":"unknown service nope"}"#),
    )]);
    let err = unix_client(&agent)
        .post_json(FAULT_PATH, &FaultDrill::set("nope", 10.0).body())
        .unwrap_err();
    assert!(
        matches!(err, AdminError::Api { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unknown service nope");
    assert!(body_of(&agent.last_request()).contains(r#""service":"nope""#));
}

#[test]
fn a_rejected_percentage_is_the_agents_400_with_its_reason() {
    let agent = FakeAgent::unix(vec![(
        FAULT_PATH,
        bad_request(r#"{"error":"refuse_percent must be between 0 and 100"}"#),
    )]);
    let err = unix_client(&agent)
        .post_json(FAULT_PATH, &FaultDrill::set("web", 150.0).body())
        .unwrap_err();
    assert!(
        matches!(err, AdminError::Api { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the agent answered 400: refuse_percent must be between 0 and 100"
    );
}

#[test]
fn an_agent_without_the_endpoint_or_method_is_named_as_probably_older() {
    let agent = FakeAgent::unix(vec![
        // The issue-3 agent: read-only, and a JSON 404 for paths it does not know.
        (
            FAULT_PATH,
            Reply::Raw(json_reply(
                "405 Method Not Allowed",
                r#"{"error":"the admin API is read-only (GET)"}"#,
            )),
        ),
        (
            "/v1/bans",
            not_found(r#"{"error":"unknown path; see docs/agent-interface.md"}"#),
        ),
    ]);
    let client = unix_client(&agent);
    let err = client
        .post_json(FAULT_PATH, &FaultDrill::set("web", 1.0).body())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent answered 405 to /v1/fault: the admin API is read-only (GET) \
         (is the agent older than this CLI?)"
    );
    let err = client.get_json("/v1/bans").unwrap_err();
    assert!(
        matches!(err, AdminError::NotServed { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the agent answered 404 to /v1/bans: unknown path; see docs/agent-interface.md \
         (is the agent older than this CLI?)"
    );
}

//! Per-node identity on Kubernetes against a real `sockmesh-control --kube-token-review`
//! and a fake API server's TokenReview endpoint (kube-rs, the real client, through a
//! kubeconfig): an agent's ServiceAccount token bound to node-a reads and acks as node-a
//! and nothing more (no ack as node-b, no rollback, no history: 403, counted); tokens the
//! API server does not vouch for (unknown, another audience, another ServiceAccount, no
//! node) are 401; the answers are cached (one review per token); a revoked token stops
//! working once its cached answer runs out; an API server that cannot be asked makes 503,
//! never a 200. No token appears in the log.

#![cfg(feature = "kubernetes")]

mod control_process;

use std::time::{Duration, Instant};

use control_process::{mesh, Control, TOKEN, WAIT};
use serde_json::{json, Value};
use sockmesh_cli::control::{ControlClient, ControlError};
use sockmesh_fake_kube::FakeKube;

const AGENT_SA: &str = "system:serviceaccount:sockmesh-system:sockmesh-agent";
const AUDIENCE: &str = "sockmesh-control";
/// JWT-shaped, as projected ServiceAccount tokens are (the control plane reviews nothing
/// else).
const NODE_A: &str = "eyJhbGciOiJSUzI1NiJ9.eyJub2RlIjoibm9kZS1hIn0.c2lnbmF0dXJlLWE";
const WRONG_AUDIENCE: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJrdWJlIn0.c2lnbmF0dXJlLWI";
const OTHER_SA: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzYSI6ImFwcCJ9.c2lnbmF0dXJlLWM";
const NO_NODE: &str = "eyJhbGciOiJSUzI1NiJ9.eyJub2RlIjpudWxsfQ.c2lnbmF0dXJlLWQ";
const UNKNOWN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoieSJ9.c2lnbmF0dXJlLWU";

fn user(name: &str, node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": ["sockmesh-agent-x1"],
        "authentication.kubernetes.io/pod-uid": ["6f1c"],
    });
    if let Some(node) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
    }
    json!({"username": name, "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra})
}

fn client(control: &Control, token: &str) -> ControlClient {
    control.client_with(token)
}

fn metric(control: &Control, series: &str) -> u64 {
    control.metric(series)
}

fn reviews(control: &Control, result: &str) -> u64 {
    metric(
        control,
        &format!("sockmesh_control_token_reviews_total{{result=\"{result}\"}}"),
    )
}

fn status_of<T>(result: Result<T, ControlError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(ControlError::Api { status, .. }) => status,
        Err(ControlError::Unauthorized { .. }) => 401,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn an_agents_service_account_token_is_its_node_and_nothing_more() {
    let kube = FakeKube::start();
    kube.grant_token(NODE_A, user(AGENT_SA, Some("node-a")), &[AUDIENCE]);
    kube.grant_token(
        WRONG_AUDIENCE,
        user(AGENT_SA, Some("node-a")),
        &["https://kubernetes.default.svc"],
    );
    kube.grant_token(
        OTHER_SA,
        user("system:serviceaccount:shop:web", Some("node-a")),
        &[AUDIENCE],
    );
    kube.grant_token(NO_NODE, user(AGENT_SA, None), &[AUDIENCE]);
    let kubeconfig = kube.kubeconfig();
    let control = Control::start_with_env(
        &mesh(&[("web", 1, 1)]),
        &["--kube-token-review", "--kube-token-review-cache-secs", "2"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    control.write_config(&mesh(&[("web", 1, 4)]));
    control.wait_version(2);

    // node-a's token: reads and acks as node-a.
    let node_a = client(&control, NODE_A);
    let snapshot = node_a.get_json("/v1/snapshot?agent=node-a").unwrap();
    assert_eq!(snapshot.value["version"], 2);
    node_a
        .post_json(
            "/v1/ack",
            &json!({"agent": "node-a", "version": 2, "ok": true}),
        )
        .unwrap();
    let agents = control.get("/v1/agents");
    assert_eq!(agents[0]["agent"], "node-a", "{agents}");

    // ... and nothing more.
    match node_a.post_json(
        "/v1/ack",
        &json!({"agent": "node-b", "version": 2, "ok": true}),
    ) {
        Err(ControlError::Api {
            status: 403,
            message,
        }) => assert_eq!(message, "node credential of node-a cannot ack as node-b"),
        other => panic!("ack as node-b: {other:?}"),
    }
    assert_eq!(
        status_of(node_a.post_json("/v1/rollback", &json!({"version": 1}))),
        403
    );
    assert_eq!(status_of(node_a.get_json("/v1/history")), 403);
    control.wait_version(2);
    assert_eq!(
        metric(
            &control,
            "sockmesh_control_requests_refused_total{reason=\"scope\"}"
        ),
        2
    );

    // Tokens the API server does not vouch for, each for its own reason. A token minted
    // for another audience is not authenticated for ours (the API server checks the
    // audiences asked; `audience` counts a server that says so without refusing).
    for (token, result, count) in [
        (WRONG_AUDIENCE, "unauthenticated", 1),
        (OTHER_SA, "not_agent", 1),
        (NO_NODE, "no_node", 1),
        (UNKNOWN, "unauthenticated", 2),
    ] {
        assert_eq!(
            status_of(client(&control, token).get_json("/v1/snapshot")),
            401,
            "{result}"
        );
        assert_eq!(reviews(&control, result), count, "{result}");
    }
    // Not even shaped like a ServiceAccount token: refused without asking.
    let asked = kube.token_reviews();
    assert_eq!(
        status_of(client(&control, "not-a-jwt-token-0123456789").get_json("/v1/snapshot")),
        401
    );
    assert_eq!(kube.token_reviews(), asked);

    // One review per token: node-a's five requests asked once.
    assert_eq!(reviews(&control, "accepted"), 1);
    assert_eq!(kube.token_reviews(), 5);
    assert!(metric(&control, "sockmesh_control_token_review_cache_hits_total") >= 4);

    // The operator token is still the operator's.
    assert_eq!(
        status_of(client(&control, TOKEN).get_json("/v1/history")),
        200
    );

    // A revoked token stops working once its cached answer runs out (2 s here).
    kube.revoke_token(NODE_A);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(node_a.get_json("/v1/snapshot?agent=node-a")) == 200 {
        assert!(Instant::now() < deadline, "a revoked token kept working");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(reviews(&control, "unauthenticated"), 3);

    let log = control.log();
    for secret in [NODE_A, WRONG_AUDIENCE, OTHER_SA, NO_NODE, UNKNOWN, TOKEN] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
    assert!(kube
        .requests()
        .iter()
        .all(|r| !r.contains(NODE_A.split('.').nth(1).unwrap())));
    drop(kube);
}

#[test]
fn an_api_server_that_cannot_be_asked_makes_503_not_200() {
    let kube = FakeKube::start();
    let kubeconfig = kube.kubeconfig();
    let control = Control::start_with_env(
        &mesh(&[("web", 1, 1)]),
        &["--kube-token-review"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    // The API server goes away after the start.
    drop(kube);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = status_of(client(&control, NODE_A).get_json("/v1/snapshot"));
        if status != 401 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{}", control.log());
    assert!(reviews(&control, "error") >= 1);
    // The operator does not depend on the API server.
    assert_eq!(
        status_of(client(&control, TOKEN).get_json("/v1/history")),
        200
    );
}

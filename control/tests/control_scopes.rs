//! Credentials and scopes against a real `sockmesh-control` and the `sockmesh` CLI: a node
//! token (`--node-tokens`) cannot roll back or ack as another node, each refusal is a 403
//! with the reason and counted; the operator token (`--token-file`) can; an edit of the
//! node tokens file is picked up without a restart.

mod control_process;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use control_process::{mesh, Control, TOKEN, WAIT};
use serde_json::json;
use sockmesh_cli::control::{ControlClient, ControlError};

const NODE_A: &str = "node-a-token-0123456789";
const NODE_B: &str = "node-b-token-0123456789";
const NODE_C: &str = "node-c-token-0123456789";

fn sockmesh(control: &Control, token_file: &Path, args: &[&str]) -> Output {
    Command::new(control_process::cli_bin())
        .args(args)
        .arg("--control-url")
        .arg(format!("http://{}", control.tcp.as_deref().unwrap()))
        .arg("--insecure-plaintext")
        .arg("--token-file")
        .arg(token_file)
        .env_remove("SOCKMESH_CONTROL_URL")
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env_remove("SOCKMESH_TOKEN_FILE")
        .output()
        .unwrap()
}

fn client(control: &Control, token: &str) -> ControlClient {
    control.client_with(token)
}

/// `sockmesh_control_requests_refused_total{reason}` now.
fn refused(control: &Control, reason: &str) -> u64 {
    control.metric(&format!(
        "sockmesh_control_requests_refused_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn node_tokens_are_scoped_and_the_operator_token_is_not() {
    let keys = tempfile::tempdir().unwrap();
    let nodes = keys.path().join("node-tokens");
    std::fs::write(
        &nodes,
        format!("# node TOKEN\nnode-a {NODE_A}\nnode-b {NODE_B}\n"),
    )
    .unwrap();
    let node_a_file = keys.path().join("node-a.token");
    std::fs::write(&node_a_file, format!("{NODE_A}\n")).unwrap();
    let operator_file = keys.path().join("operator.token");
    std::fs::write(&operator_file, format!("{TOKEN}\n")).unwrap();

    let control = Control::start_with(
        &mesh(&[("web", 1, 1)]),
        &["--node-tokens", nodes.to_str().unwrap()],
    );
    control.write_config(&mesh(&[("web", 1, 4)]));
    control.wait_version(2);

    // The CLI with a node's token: the control plane's reason, exit 1, nothing moved.
    let out = sockmesh(&control, &node_a_file, &["config", "rollback", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sockmesh: the control plane answered 403: node credential of node-a cannot roll \
         back: that needs the operator credential (the control plane's --token-file, or its \
         unix socket)\n"
    );
    let out = sockmesh(&control, &node_a_file, &["config", "history"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the history"));
    assert_eq!(refused(&control, "scope"), 2);
    control.wait_version(2);

    // Acks: as itself, yes; as another node, 403.
    let node_a = client(&control, NODE_A);
    match node_a.post_json(
        "/v1/ack",
        &json!({"agent": "node-b", "version": 2, "ok": true}),
    ) {
        Err(ControlError::Api {
            status: 403,
            message,
        }) => {
            assert_eq!(message, "node credential of node-a cannot ack as node-b")
        }
        other => panic!("ack as node-b: {other:?}"),
    }
    assert_eq!(refused(&control, "identity_mismatch"), 1);
    node_a
        .post_json(
            "/v1/ack",
            &json!({"agent": "node-a", "version": 2, "ok": true}),
        )
        .unwrap();
    let snapshot = node_a.get_json("/v1/snapshot?agent=node-a").unwrap();
    assert_eq!(snapshot.value["version"], 2);
    let agents = control.get("/v1/agents");
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(agents[0]["agent"], "node-a");

    // Unknown tokens are 401, counted.
    assert!(matches!(
        client(&control, NODE_C).get_json("/v1/snapshot"),
        Err(ControlError::Unauthorized { .. })
    ));
    assert_eq!(refused(&control, "unauthenticated"), 1);

    // The operator can roll back.
    let out = sockmesh(&control, &operator_file, &["config", "rollback", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    control.wait_version(3);
    assert_eq!(refused(&control, "scope"), 2);

    // A new node in the file is let in without a restart.
    std::fs::write(
        &nodes,
        format!("node-a {NODE_A}\nnode-b {NODE_B}\nnode-c {NODE_C}\n"),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while client(&control, NODE_C).get_json("/v1/snapshot").is_err() {
        assert!(
            Instant::now() < deadline,
            "node-c never let in:\n{}",
            control.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No token in the log.
    let log = control.log();
    for secret in [NODE_A, NODE_B, NODE_C, TOKEN] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}

#[test]
fn a_bad_node_tokens_file_stops_the_start_naming_the_line() {
    let keys = tempfile::tempdir().unwrap();
    let nodes = keys.path().join("node-tokens");
    std::fs::write(&nodes, format!("node-a {NODE_A}\nnode-b {NODE_A}\n")).unwrap();
    let mut control = Control::start_with(&mesh(&[("web", 1, 1)]), &[]);
    control.stop();
    let out = control
        .command("127.0.0.1:0")
        .arg("--node-tokens")
        .arg(&nodes)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "node tokens file {}, line 2: node node-b has the same token as node node-a (line 1)",
            nodes.display()
        )),
        "{err}"
    );
}

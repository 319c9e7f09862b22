//! `sockmesh config history|rollback|agents` against a real `sockmesh-control`.

mod control_process;

use std::process::{Command, Output};

use control_process::{fingerprint, mesh, Control};
use serde_json::json;

fn sockmesh(control: &Control, args: &[&str]) -> Output {
    Command::new(control_process::cli_bin())
        .args(args)
        .arg("--control-url")
        .arg(format!("http://{}", control.tcp.as_deref().unwrap()))
        .arg("--insecure-plaintext")
        .arg("--token-file")
        .arg(control.path("token"))
        .env_remove("SOCKMESH_CONTROL_URL")
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env_remove("SOCKMESH_TOKEN_FILE")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn history_then_rollback_then_history() {
    let v1 = mesh(&[("web", 1, 1)]);
    let control = Control::start(&v1);
    control.write_config(&mesh(&[("web", 1, 4), ("api", 2, 1)]));
    control.wait_version(2);

    let table = stdout(&sockmesh(&control, &["config", "history"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("VERSION   CREATED"), "{table}");
    assert!(
        lines[1].starts_with("2 ") && lines[1].ends_with("+api ~web"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("1 ") && lines[2].ends_with("+web"),
        "{table}"
    );
    assert!(lines[2].contains(&fingerprint(&v1)), "{table}");

    let said = stdout(&sockmesh(&control, &["config", "rollback", "1"]));
    assert_eq!(
        said,
        format!(
            "rolled back to version 1: agents are now served version 3 (fingerprint {})\n",
            fingerprint(&v1)
        )
    );
    let table = stdout(&sockmesh(&control, &["config", "history"]));
    let head = table.lines().nth(1).unwrap();
    assert!(
        head.starts_with("3 ") && head.contains("rollback of 1") && head.ends_with("~web -api"),
        "{table}"
    );

    // -o json is the control plane's reply.
    let json: serde_json::Value = serde_json::from_str(&stdout(&sockmesh(
        &control,
        &["config", "history", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(json["head"], 3);

    // Unknown versions: the control plane's reason, exit 1, nothing on stdout.
    let out = sockmesh(&control, &["config", "rollback", "42"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sockmesh: the control plane answered 404: version 42 is not kept (kept: 1 to 3)\n"
    );
}

#[test]
fn agents_table_and_errors() {
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    control
        .post(
            "/v1/ack",
            &json!({"agent": "node-a", "version": 1, "ok": true}),
        )
        .unwrap();
    let table = stdout(&sockmesh(&control, &["config", "agents"]));
    assert!(
        table.starts_with("AGENT    APPLIED   LAST-ACK   OK    SYNC-AGE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("node-a   1         1          yes   0.0s"),
        "{table}"
    );

    // The unix socket works without a token.
    let out = Command::new(control_process::cli_bin())
        .args(["config", "agents", "-o", "json", "--control-url"])
        .arg(format!("unix:{}", control.socket().display()))
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stdout(&out).into_bytes()).unwrap();
    assert_eq!(json[0]["agent"], "node-a");

    // A wrong token is the control plane's 401.
    std::fs::write(control.path("bad-token"), "nope\n").unwrap();
    let out = Command::new(control_process::cli_bin())
        .args(["config", "history", "--control-url"])
        .arg(format!("http://{}", control.tcp.as_deref().unwrap()))
        .arg("--insecure-plaintext")
        .arg("--token-file")
        .arg(control.path("bad-token"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sockmesh: the control plane refused the token (401)\n"
    );

    // An http:// URL without any token is a usage error, before connecting.
    let out = Command::new(control_process::cli_bin())
        .args(["config", "history", "--control-url", "http://127.0.0.1:1"])
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env_remove("SOCKMESH_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --token-file"));

    // Nobody there: exit 1 with a hint.
    let out = Command::new(control_process::cli_bin())
        .args(["config", "history", "--control-url"])
        .arg(format!("unix:{}", control.path("missing.sock").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("sockmesh: cannot reach the control plane at unix:"),
        "{err}"
    );
    assert!(
        err.contains("No such file or directory (is sockmesh-control running? see --control-url)"),
        "{err}"
    );
}

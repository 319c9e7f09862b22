//! The `sockmesh` binary end to end: flags and env vars, tables on stdout, errors on stderr
//! with exit status 1, against a fake agent on a real socket.

mod fake_agent;

use std::process::{Command, Output};

use fake_agent::{not_found, ok, ok_chunked, FakeAgent};

const SERVICES: &str = r#"[{"name":"web","vip":"127.100.0.1","port":8080,"lb":"weighted_random","id":1,"slot_table_len":4,"slot_table":[1,1,2,3],"backends":[{"addr":"127.0.0.2:18081","weight":1,"id":1,"slots":2},{"addr":"127.0.0.3:18081","weight":1,"id":2,"slots":1},{"addr":"127.0.0.4:18081","weight":2,"id":3,"slots":1}]}]"#;

const STATUS: &str = r#"{"ready":true,"adopted":true,"cgroup":"/sys/fs/cgroup/demo","bpffs":"/sys/fs/bpf/sockmesh","config":{"source":"embedded-default","fingerprint":"ce1108f033799158","applies":1,"rejected":0,"last_error":null,"applied_at_unix_ms":0},"services":[]}"#;

/// Runs `sockmesh` with `args` and only the env vars given: the caller's SOCKMESH_* must not
/// leak in.
fn sockmesh(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockmesh"));
    for var in [
        "SOCKMESH_ADMIN_SOCKET",
        "SOCKMESH_ADMIN_URL",
        "SOCKMESH_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn services_prints_a_table() {
    let agent = FakeAgent::unix(vec![("/v1/services", ok_chunked(SERVICES))]);
    let socket = agent.socket.as_ref().unwrap().to_str().unwrap();
    let out = sockmesh(&["--admin-socket", socket, "services"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
NAME   VIP:PORT           LB                BACKENDS   SLOTS
web    127.100.0.1:8080   weighted_random   3          4
"
    );
}

#[test]
fn json_output_is_the_agents_reply_indented_in_its_own_key_order() {
    let agent = FakeAgent::unix(vec![("/v1/services", ok(SERVICES))]);
    let socket = agent.socket.as_ref().unwrap().to_str().unwrap();
    let out = sockmesh(
        &["services", "-o", "json"],
        &[("SOCKMESH_ADMIN_SOCKET", socket)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.starts_with("[\n  {\n    \"name\": \"web\",\n    \"vip\": \"127.100.0.1\",\n"),
        "{shown}"
    );
    assert!(shown.ends_with("\n]\n"), "{shown}");
    let reparsed: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        reparsed,
        serde_json::from_str::<serde_json::Value>(SERVICES).unwrap()
    );
}

#[test]
fn unknown_service_prints_the_agents_error_and_exits_1() {
    let agent = FakeAgent::unix(vec![(
        "/v1/backends?service=nope",
        not_found(r#"{"error":"unknown service nope"}"#),
    )]);
    let socket = agent.socket.as_ref().unwrap().to_str().unwrap();
    let out = sockmesh(&["--admin-socket", socket, "backends", "nope"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "sockmesh: unknown service nope\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_socket_exits_1_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();
    let out = sockmesh(&["status"], &[("SOCKMESH_ADMIN_SOCKET", socket)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "sockmesh: cannot reach the agent's admin socket {socket}: No such file or \
             directory (is sockmesh-agent running? see --admin-socket)\n"
        )
    );
}

#[test]
fn status_over_tcp_with_url_and_token_from_the_environment() {
    let agent = FakeAgent::tcp(vec![("/status", ok(STATUS))], "t0ken");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let url = format!("http://{}", agent.addr.unwrap());
    let out = sockmesh(
        &["status"],
        &[
            ("SOCKMESH_ADMIN_URL", &url),
            ("SOCKMESH_TOKEN_FILE", token.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
ready:         yes
adopted:       yes
cgroup:        /sys/fs/cgroup/demo
bpffs:         /sys/fs/bpf/sockmesh
config:        embedded-default
fingerprint:   ce1108f033799158
applied at:    1970-01-01T00:00:00.000Z
applies:       1
rejected:      0
last error:    -
services:      0
"
    );
    assert!(agent
        .last_request()
        .contains("\r\nAuthorization: Bearer t0ken\r\n"));
}

#[test]
fn admin_url_without_token_file_is_a_usage_error() {
    let out = sockmesh(&["--admin-url", "http://127.0.0.1:9478", "services"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap's usage-error status");
    assert!(
        stderr(&out).contains("--admin-url needs --token-file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn url_and_token_file_may_come_from_env_or_flags_in_any_position() {
    let agent = FakeAgent::tcp(vec![("/v1/workloads", ok("[]"))], "t0ken");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let token = token.to_str().unwrap();
    let url = format!("http://{}", agent.addr.unwrap());
    for (args, env) in [
        (
            vec!["--admin-url", &url, "--token-file", token, "workloads"],
            vec![],
        ),
        (
            vec!["workloads", "--admin-url", &url, "--token-file", token],
            vec![],
        ),
        (
            vec!["workloads", "--token-file", token],
            vec![("SOCKMESH_ADMIN_URL", url.as_str())],
        ),
        (
            vec!["--admin-url", &url, "workloads"],
            vec![("SOCKMESH_TOKEN_FILE", token)],
        ),
    ] {
        let out = sockmesh(&args, &env);
        assert!(out.status.success(), "{args:?} {env:?}: {}", stderr(&out));
        assert!(
            stdout(&out).starts_with("NAME   CGROUP   THREADS"),
            "{}",
            stdout(&out)
        );
    }
}

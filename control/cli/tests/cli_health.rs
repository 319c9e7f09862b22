//! `sockmesh bans`, `sockmesh circuits` and `sockmesh fault` end to end: the binary against a
//! fake agent on a real socket, tables and messages on stdout, errors on stderr with exit 1.

mod fake_agent;

use std::process::{Command, Output};

use fake_agent::{bad_request, body_of, not_found, ok, ok_chunked, FakeAgent};

const BANS: &str = r#"[{"service":"web","backend":"127.0.0.3:18081","state":"banned","reason":"consecutive_failures","streak":2,"remaining_seconds":59.2},{"service":"web","backend":"127.0.0.4:18081","state":"probing","reason":"deviation_srtt","streak":1,"remaining_seconds":0.0}]"#;

/// As the agent sends it: pretty-printed, with a trailing newline.
const CIRCUITS: &str = "[\n  {\n    \"service\": \"web\",\n    \"state\": \"half_open\",\n    \"admit_percent\": 10.0,\n    \"reopens_in_seconds\": null,\n    \"panic_mode\": false,\n    \"min_priority\": 2,\n    \"fault_refuse_percent\": 0.0\n  }\n]\n";

/// Runs `sockmesh` with `args` and only the env vars given (none of the caller's SOCKMESH_*).
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

/// `sockmesh --admin-socket <agent's socket> args...`
fn on_socket(agent: &FakeAgent, args: &[&str]) -> Output {
    let socket = agent.socket.as_ref().unwrap().to_str().unwrap();
    let mut all = vec!["--admin-socket", socket];
    all.extend_from_slice(args);
    sockmesh(&all, &[])
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn sent_json(agent: &FakeAgent) -> serde_json::Value {
    serde_json::from_str(body_of(&agent.last_request())).unwrap()
}

#[test]
fn bans_prints_a_table() {
    let agent = FakeAgent::unix(vec![("/v1/bans", ok_chunked(BANS))]);
    let out = on_socket(&agent, &["bans"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
SERVICE   BACKEND           STATE     REASON                 STREAK   REMAINING
web       127.0.0.3:18081   banned    consecutive_failures   2        59.2s
web       127.0.0.4:18081   probing   deviation_srtt         1        -
"
    );
    assert!(agent
        .last_request()
        .starts_with("GET /v1/bans HTTP/1.1\r\n"));
}

#[test]
fn circuits_prints_a_table_and_json() {
    let agent = FakeAgent::unix(vec![("/v1/circuits", ok(CIRCUITS))]);
    let out = on_socket(&agent, &["circuits"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
SERVICE   STATE       ADMIT%   PANIC   SHED>=   FAULT%
web       half_open   10       no      online   0
"
    );
    let out = on_socket(&agent, &["circuits", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        CIRCUITS,
        "the agent's own indentation, unchanged"
    );
}

#[test]
fn fault_set_posts_the_drill_and_says_what_was_set() {
    let agent = FakeAgent::unix(vec![(
        "/v1/fault",
        ok(r#"{"service":"web","refuse_percent":25.0}"#),
    )]);
    let out = on_socket(&agent, &["fault", "set", "web", "--refuse-percent", "25"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "fault drill on web: refusing 25% of connects\n"
    );
    assert!(agent
        .last_request()
        .starts_with("POST /v1/fault HTTP/1.1\r\n"));
    assert_eq!(
        sent_json(&agent),
        serde_json::json!({"service": "web", "refuse_percent": 25.0})
    );
    let out = on_socket(
        &agent,
        &[
            "fault",
            "set",
            "web",
            "--refuse-percent",
            "25%",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\n  \"service\": \"web\",\n  \"refuse_percent\": 25.0\n}\n"
    );
}

#[test]
fn fault_clear_over_tcp_posts_zero_with_the_token() {
    let agent = FakeAgent::tcp(
        vec![("/v1/fault", ok(r#"{"service":"web","refuse_percent":0.0}"#))],
        "t0ken",
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let url = format!("http://{}", agent.addr.unwrap());
    let out = sockmesh(
        &[
            "fault",
            "clear",
            "web",
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[("SOCKMESH_ADMIN_URL", &url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "fault drill on web ended: no connects refused\n"
    );
    let request = agent.last_request();
    assert!(
        request.contains("\r\nAuthorization: Bearer t0ken\r\n"),
        "{request}"
    );
    assert_eq!(sent_json(&agent)["refuse_percent"], 0.0);
}

#[test]
fn fault_on_an_unknown_service_prints_the_agents_error_and_exits_1() {
    let agent = FakeAgent::unix(vec![(
        "/v1/fault",
        not_found(r#"{"error":"unknown service nope"}"#),
    )]);
    let out = on_socket(&agent, &["fault", "set", "nope", "--refuse-percent", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "sockmesh: unknown service nope\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_percentage_the_agent_refuses_exits_1_with_its_reason() {
    let agent = FakeAgent::unix(vec![(
        "/v1/fault",
        bad_request(r#"{"error":"refuse_percent must be between 0 and 100"}"#),
    )]);
    // A negative number is the option's value, not a flag; the agent judges the range.
    let out = on_socket(&agent, &["fault", "set", "web", "--refuse-percent", "-5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "sockmesh: the agent answered 400: refuse_percent must be between 0 and 100\n"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(sent_json(&agent)["refuse_percent"], -5.0);
}

#[test]
fn a_percentage_json_cannot_carry_is_a_usage_error() {
    let agent = FakeAgent::unix(vec![]);
    let out = on_socket(&agent, &["fault", "set", "web", "--refuse-percent", "nan"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage-error status");
    assert!(
        stderr(&out).contains("is not a percentage"),
        "{}",
        stderr(&out)
    );
    assert!(
        agent.requests.lock().unwrap().is_empty(),
        "nothing was sent"
    );
}

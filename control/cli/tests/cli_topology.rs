//! `sockmesh lines`, `sockmesh top` and `sockmesh diagnose` end to end: the binary against a
//! fake agent on a real socket, tables and text on stdout, errors on stderr with exit 1.

mod fake_agent;

use std::process::{Command, Output};

use fake_agent::{not_found, ok, ok_chunked, FakeAgent};

const LINES: &str = r#"[{"service":"web","caller":"frontend","last":{"ok":12,"failed":4,"refused_by_mesh":0,"handshake_mean_ms":0.08},"previous":{"ok":10,"failed":0,"refused_by_mesh":0,"handshake_mean_ms":0.06}}]"#;

const TOP: &str = r#"[{"rank":1,"service":"web","worst_slo":"availability","burn_1h":333.3,"connects":{"last":16,"previous":10},"failed":{"last":4,"previous":0},"failure_growth":4,"handshake_mean_ms":{"last":0.08,"previous":0.06},"latency_growth":1.3333},{"rank":2,"service":"api","worst_slo":null,"burn_1h":null,"connects":{"last":0,"previous":0},"failed":{"last":0,"previous":0},"failure_growth":0,"handshake_mean_ms":{"last":null,"previous":null},"latency_growth":null}]"#;

/// As the agent sends it: pretty-printed, with a trailing newline.
const DIAGNOSIS: &str = "{\n  \"service\": \"web\",\n  \"window_secs\": 60.0,\n  \"baseline_secs\": 300.0,\n  \"summary\": \"web: most likely network (score 1.00): packet loss on 3 of 3 backends with traffic in the last 60 s\",\n  \"causes\": [\n    {\n      \"cause\": \"network\",\n      \"score\": 1.0,\n      \"evidence\": [\n        \"packet loss on 3 of 3 backends with traffic in the last 60 s\",\n        \"127.0.0.2:18511: 40 retransmits (2 RTOs) over 3 connections, 13.3 per connection\"\n      ]\n    },\n    {\n      \"cause\": \"backends_failing\",\n      \"score\": 0.0,\n      \"evidence\": []\n    }\n  ],\n  \"slos\": []\n}\n";

fn sockmesh(agent: &FakeAgent, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockmesh"));
    for var in [
        "SOCKMESH_ADMIN_SOCKET",
        "SOCKMESH_ADMIN_URL",
        "SOCKMESH_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    let socket = agent.socket.as_ref().unwrap().to_str().unwrap();
    cmd.arg("--admin-socket").arg(socket).args(args);
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn lines_prints_a_table() {
    let agent = FakeAgent::unix(vec![("/v1/lines", ok_chunked(LINES))]);
    let out = sockmesh(&agent, &["lines"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
SERVICE   CALLER     OK   FAILED   MESH-REFUSED   HANDSHAKE(ms)   PREV-OK   PREV-FAILED   PREV-HANDSHAKE(ms)
web       frontend   12   4        0              0.08            10        0             0.06
"
    );
    assert!(agent
        .last_request()
        .starts_with("GET /v1/lines HTTP/1.1\r\n"));
}

#[test]
fn top_prints_services_worst_first() {
    let agent = FakeAgent::unix(vec![("/v1/top", ok(TOP))]);
    let out = sockmesh(&agent, &["top"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
RANK   SERVICE   WORST-SLO      BURN-1H   CONNECTS   FAILED   PREV-FAILED   FAILED+   HANDSHAKE(ms)   PREV-HANDSHAKE(ms)   LATENCY-GROWTH   REQ/S   REQ-FAILED   SUCCESS   WITHIN-LATENCY
1      web       availability   333.30x   16         4        0             +4        0.08            0.06                 1.33x            -       -            -         -
2      api       -              -         0          0        0             0         -               -                    -                -       -            -         -
"
    );
}

#[test]
fn diagnose_prints_ranked_causes_and_json() {
    let agent = FakeAgent::unix(vec![("/v1/diagnose?service=web", ok(DIAGNOSIS))]);
    let out = sockmesh(&agent, &["diagnose", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
web: most likely network (score 1.00): packet loss on 3 of 3 backends with traffic in the last 60 s
window: the last 60 s, against the 300 s before

1. network   score 1.00
   - packet loss on 3 of 3 backends with traffic in the last 60 s
   - 127.0.0.2:18511: 40 retransmits (2 RTOs) over 3 connections, 13.3 per connection

2. backends_failing   score 0.00
"
    );
    assert!(agent
        .last_request()
        .starts_with("GET /v1/diagnose?service=web HTTP/1.1\r\n"));
    let out = sockmesh(&agent, &["diagnose", "web", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), DIAGNOSIS, "the agent's reply, unchanged");
}

#[test]
fn diagnose_an_unknown_service_prints_the_agents_error_and_exits_1() {
    let agent = FakeAgent::unix(vec![(
        "/v1/diagnose?service=nope",
        not_found(r#"{"error":"unknown service nope"}"#),
    )]);
    let out = sockmesh(&agent, &["diagnose", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "sockmesh: unknown service nope\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_agent_without_the_endpoints_is_named_older() {
    let agent = FakeAgent::unix(vec![]);
    let out = sockmesh(&agent, &["top"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("sockmesh: the agent answered 404 to /v1/top")
            && err.contains("older than this CLI"),
        "{err}"
    );
    let out = sockmesh(&agent, &["diagnose"]);
    assert_eq!(out.status.code(), Some(2), "SERVICE is required");
}

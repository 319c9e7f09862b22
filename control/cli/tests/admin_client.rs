//! `AdminClient` against real listeners: a unix socket in a temp dir and 127.0.0.1:0, each
//! served by a thread with canned replies in both framings hyper uses.

mod fake_agent;

use std::time::Duration;

use fake_agent::{chunked_reply, json_reply, not_found, ok, ok_chunked, FakeAgent, Reply};
use sockmesh_cli::{AdminClient, AdminError, AdminTarget, AdminToken, Query};

const SERVICES: &str = r#"[{"name":"web","vip":"127.100.0.1","port":8080,"lb":"weighted_random","id":1,"slot_table_len":4,"slot_table":[1,1,2,3],"backends":[{"addr":"127.0.0.2:18081","weight":1,"id":1,"slots":2}]}]"#;

fn unix_client(agent: &FakeAgent) -> AdminClient {
    AdminClient::new(AdminTarget::Unix(agent.socket.clone().unwrap()))
}

#[test]
fn content_length_reply_over_the_unix_socket() {
    let agent = FakeAgent::unix(vec![("/v1/services", ok(SERVICES))]);
    let reply = unix_client(&agent).get_json("/v1/services").unwrap();
    assert_eq!(reply.text, SERVICES);
    assert_eq!(reply.value[0]["slot_table"][3], 3);
    let request = agent.last_request();
    assert!(
        request.starts_with("GET /v1/services HTTP/1.1\r\nHost: localhost\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    assert!(!request.contains("Authorization"), "{request}");
}

#[test]
fn chunked_reply_over_the_unix_socket() {
    let agent = FakeAgent::unix(vec![("/v1/services", ok_chunked(SERVICES))]);
    let reply = unix_client(&agent).get_json("/v1/services").unwrap();
    assert_eq!(reply.text, SERVICES);
}

#[test]
fn tcp_sends_the_token_from_the_first_line_of_the_file() {
    let agent = FakeAgent::tcp(vec![("/status", ok(r#"{"ready":true}"#))], "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  s3cret \nnot part of the token\n").unwrap();
    let addr = agent.addr.unwrap();
    let target = AdminTarget::from_url(&format!("http://{addr}/")).unwrap();
    let client = AdminClient::new(target).with_token(AdminToken::read_file(&token_file).unwrap());
    let reply = client.get_json("/status").unwrap();
    assert_eq!(reply.value["ready"], true);
    let request = agent.last_request();
    assert!(
        request.contains(&format!("\r\nHost: {addr}\r\n")),
        "{request}"
    );
    assert!(
        request.contains("\r\nAuthorization: Bearer s3cret\r\n"),
        "{request}"
    );
}

#[test]
fn a_wrong_token_or_none_is_a_401() {
    let agent = FakeAgent::tcp(vec![("/status", ok("{}"))], "s3cret");
    let target = AdminTarget::from_url(&format!("http://{}", agent.addr.unwrap())).unwrap();
    let wrong = AdminClient::new(target.clone()).with_token(AdminToken::new("guess").unwrap());
    let err = wrong.get_json("/status").unwrap_err();
    assert_eq!(err.to_string(), "the agent refused the token (401)");
    let err = AdminClient::new(target).get_json("/status").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent requires a token (401): pass --token-file"
    );
}

#[test]
fn a_missing_socket_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let err = AdminClient::new(AdminTarget::Unix(socket.clone()))
        .get_json("/status")
        .unwrap_err();
    assert!(matches!(err, AdminError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the agent's admin socket {}: No such file or directory \
             (is sockmesh-agent running? see --admin-socket)",
            socket.display()
        )
    );
}

#[test]
fn a_closed_tcp_port_says_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = AdminTarget::from_url(&format!("http://127.0.0.1:{port}")).unwrap();
    let err = AdminClient::new(target).get_json("/status").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the agent's admin API at http://127.0.0.1:{port}: Connection refused \
             (is sockmesh-agent running with --admin-addr? see --admin-url)"
        )
    );
}

#[test]
fn the_agents_json_error_is_shown_as_is() {
    let query = Query::Backends {
        service: "nope".into(),
    };
    let agent = FakeAgent::unix(vec![
        (
            &query.path(),
            not_found(r#"{"error":"unknown service nope"}"#),
        ),
        (
            "/v1/failures",
            Reply::Raw(json_reply(
                "500 Internal Server Error",
                r#"{"error":"boom"}"#,
            )),
        ),
    ]);
    let client = unix_client(&agent);
    let err = client.get_json(&query.path()).unwrap_err();
    assert!(
        matches!(err, AdminError::Api { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unknown service nope");
    let err = client.get_json("/v1/failures").unwrap_err();
    assert_eq!(err.to_string(), "the agent answered 500: boom");
}

#[test]
fn an_agent_without_the_endpoint_is_named_as_probably_older() {
    let agent = FakeAgent::unix(vec![]);
    let err = unix_client(&agent).get_json("/v1/workloads").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent answered 404 to /v1/workloads: try /ready or /status \
         (is the agent older than this CLI?)"
    );
}

#[test]
fn a_reply_that_is_not_json_or_not_http_is_named() {
    let agent = FakeAgent::unix(vec![
        (
            "/status",
            Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n".to_vec()),
        ),
        ("/v1/services", Reply::Raw(Vec::new())),
        (
            "/v1/failures",
            Reply::Raw(chunked_reply("200 OK", "[1,2]", 2)[..60].to_vec()),
        ),
    ]);
    let client = unix_client(&agent);
    let err = client.get_json("/status").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the agent's reply to /status is not JSON: "),
        "{err}"
    );
    let err = client.get_json("/v1/services").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("malformed HTTP reply: the connection closed before any reply"),
        "{err}"
    );
    let err = client.get_json("/v1/failures").unwrap_err();
    assert!(matches!(err, AdminError::Malformed { .. }), "{err:?}");
}

#[test]
fn a_stuck_agent_times_out() {
    let agent = FakeAgent::unix(vec![("/status", Reply::Hang)]);
    let err = unix_client(&agent)
        .with_timeout(Duration::from_millis(200))
        .get_json("/status")
        .unwrap_err();
    assert!(err.to_string().ends_with("did not answer in time"), "{err}");
}

#[test]
fn admin_urls() {
    for (url, authority) in [
        ("http://127.0.0.9:9478", "127.0.0.9:9478"),
        ("http://127.0.0.9:9478/", "127.0.0.9:9478"),
        ("http://[::1]:9478", "[::1]:9478"),
        ("http://node-1.local:9478", "node-1.local:9478"),
    ] {
        let target = AdminTarget::from_url(url).unwrap();
        assert_eq!(
            target,
            AdminTarget::Tcp {
                authority: authority.into()
            }
        );
        assert_eq!(
            target.to_string(),
            format!("admin API at http://{authority}")
        );
    }
    for (url, reason) in [
        ("127.0.0.9:9478", "expected http://IP:PORT"),
        ("https://127.0.0.9:9478", "plain HTTP"),
        ("http://127.0.0.9", "the port is missing"),
        ("http://127.0.0.9:0", "the port must be a number"),
        ("http://127.0.0.9:http", "the port must be a number"),
        ("http://:9478", "the host is missing"),
        ("http://::1:9478", "brackets"),
        ("http://127.0.0.9:9478/v1", "without a path"),
    ] {
        let err = AdminTarget::from_url(url).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid admin URL {url:?}: ")),
            "{err}"
        );
        assert!(err.contains(reason), "{err} lacks {reason:?}");
    }
}

#[test]
fn token_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let err = AdminToken::read_file(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cannot read the token file {}: No such file or directory",
            path.display()
        )
    );
    for (text, problem) in [
        ("", "is empty"),
        ("   \nsecond line\n", "is empty"),
        ("tök\n", "printable ASCII"),
        ("a\u{7f}b\n", "printable ASCII"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = AdminToken::read_file(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("the token file {} ", path.display())),
            "{err}"
        );
        assert!(err.contains(problem), "{err} lacks {problem:?}");
    }
    assert_eq!(
        format!("{:?}", AdminToken::new("s3cret").unwrap()),
        "AdminToken(<redacted>)"
    );
}

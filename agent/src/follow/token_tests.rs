//! No secret in logs or `Debug` output, and a token file that rotates: the follower and the
//! real control plane (the `sockmesh-control` binary, on TCP with TLS and node-a's token
//! from `--node-tokens`), both logging at `trace`, through a refused start with a wrong
//! token, a start with the right one, a watch that brings a new version, then node-a's
//! token rotated in both files (as the kubelet rewrites a projected ServiceAccount token)
//! and one more version, acked with the new token without a restart. No token may appear
//! in either log, nor in the options' or the client's `Debug`. The agent binary's own run (kernel needed) is
//! bpf-tests/tests/control_follow.rs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use super::tests::{
    control_bin, mesh, runtime, wait_agent, wait_for_socket, write, ControlProcess, WAIT,
};
use super::tls_tests::tls_init;
use super::*;
use sockmesh_model::Token;

const SECRET: &str = "s3cret-follow-token-7f3a9c";
const WRONG: &str = "wrong-follow-token-b41d20";
const ROTATED: &str = "rotated-follow-token-9e21c7";

/// Everything the agent's tracing writes, kept for grepping.
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, WRONG, ROTATED] {
        assert!(
            !text.contains(secret),
            "{what} shows a token:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A current-thread runtime: every task the follower spawns logs through this thread's
/// subscriber.
#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_logs_or_debug_output() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("mesh.yaml"), &mesh(1, "web"));
    let (nodes, token_file) = (dir.path().join("node-tokens"), dir.path().join("token"));
    std::fs::write(&nodes, format!("node-a {SECRET}\n")).unwrap();
    std::fs::write(&token_file, format!("{SECRET}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = dir.path().join("control.sock");
    let ca = tls_init(dir.path());
    let control_log = dir.path().join("control.log");
    let log_file = std::fs::File::create(&control_log).unwrap();
    let child = Command::new(control_bin())
        .arg("--config")
        .arg(dir.path().join("mesh.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.path().join("tls/server.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("tls/server-key.pem"))
        .arg("--listen-unix")
        .arg(&socket)
        .arg("--node-tokens")
        .arg(&nodes)
        .args(["--metrics-addr", "127.0.0.1:0", "--watch-interval-ms", "20"])
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env("RUST_LOG", "trace")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start sockmesh-control");
    let control = ControlProcess(child);
    wait_for_socket(&socket).await;

    let address = ControlAddress::parse(&format!("https://127.0.0.1:{port}")).unwrap();
    let opts = FollowOptions {
        address: address.clone(),
        token: Some(TokenSource::file(&token_file).unwrap()),
        tls: Some(sockmesh_tls::ClientTls::from_ca_file(&ca).unwrap()),
        node: "node-a".into(),
        state_dir: dir.path().join("state"),
        watch_timeout: Duration::from_secs(1),
    };
    assert_no_secret("FollowOptions' Debug", &format!("{opts:?} {opts:#?}"));
    let client = Client::new(address, opts.token.clone(), opts.tls.clone());
    assert_no_secret("the client's Debug", &format!("{client:?} {client:#?}"));

    // A wrong token: refused (401), retried with backoff and logged, never shown.
    let wrong = FollowOptions {
        token: Some(TokenSource::fixed(Token::new(WRONG, "test").unwrap())),
        state_dir: dir.path().join("wrong-state"),
        ..opts.clone()
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), start(&wrong))
            .await
            .is_err(),
        "a wrong token got a config"
    );
    assert!(logs.text().contains("401"), "{}", logs.text());

    // The right one: version 1 applied and acked, then version 2 through a watch.
    let first = start(&opts).await.unwrap();
    let mut applied = runtime(spawn(opts.clone(), first));
    wait_agent(dir.path(), "acked version 1", |a| {
        a.applied_version == Some(1)
    })
    .await;
    write(&dir.path().join("mesh.yaml"), &mesh(5, "web"));
    tokio::time::timeout(WAIT, applied.recv())
        .await
        .unwrap()
        .unwrap();
    wait_agent(dir.path(), "acked version 2", |a| {
        a.applied_version == Some(2)
    })
    .await;

    // Rotated under the running follower: the control plane takes the new token (its file
    // is re-read within a second) and the agent sends it from its next request on.
    std::fs::write(&nodes, format!("node-a {ROTATED}\n")).unwrap();
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    write(&dir.path().join("mesh.yaml"), &mesh(7, "web"));
    tokio::time::timeout(WAIT, applied.recv())
        .await
        .unwrap()
        .unwrap();
    wait_agent(dir.path(), "acked version 3 with the rotated token", |a| {
        a.applied_version == Some(3)
    })
    .await;
    assert!(
        logs.text().contains("control token file changed"),
        "{}",
        logs.text()
    );
    drop(control);

    let agent_log = logs.text();
    let control_text = std::fs::read_to_string(&control_log).unwrap();
    // At `trace`, but the control plane logs little below `info`: what it logged of this
    // agent is what must not carry the token.
    assert!(control_text.contains("agent applied"), "{control_text}");
    assert_no_secret("the agent's log", &agent_log);
    assert_no_secret("the control plane's log", &control_text);
}

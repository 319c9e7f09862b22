//! The follower over TLS against the real control plane (the `sockmesh-control` binary
//! on 127.0.0.1, its certificates from `sockmesh-control tls init`): the right CA syncs;
//! a wrong CA, a plain-http server behind an https:// URL, and an http:// URL without
//! `--insecure-plaintext` are refused, each saying why.

use std::process::{Command, Stdio};

use super::tests::{
    control_bin, mesh, runtime, wait_agent, wait_for_socket, write, ControlProcess, WAIT,
};
use super::token_tests::Logs;
use super::*;
use sockmesh_model::Token;

const TOKEN: &str = "tls-follow-token";

/// Runs `sockmesh-control tls init --dir DIR/tls --name 127.0.0.1`; the CA's path.
pub(super) fn tls_init(dir: &std::path::Path) -> PathBuf {
    let out = Command::new(control_bin())
        .args(["tls", "init", "--name", "127.0.0.1", "--dir"])
        .arg(dir.join("tls"))
        .output()
        .expect("run sockmesh-control tls init");
    assert!(
        out.status.success(),
        "tls init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("tls/ca.pem")
}

/// The control plane on a free 127.0.0.1 port (TLS from DIR/tls when `tls`, else plain
/// http with --insecure-plaintext) and a unix socket; its TCP address.
fn start_control(dir: &std::path::Path, tls: bool) -> (ControlProcess, String) {
    write(&dir.join("mesh.yaml"), &mesh(1, "web"));
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(control_bin());
    cmd.arg("--config")
        .arg(dir.join("mesh.yaml"))
        .args(["--listen", &addr])
        .arg("--listen-unix")
        .arg(dir.join("control.sock"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(["--metrics-addr", "127.0.0.1:0", "--watch-interval-ms", "20"])
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if tls {
        cmd.arg("--tls-cert")
            .arg(dir.join("tls/server.pem"))
            .arg("--tls-key")
            .arg(dir.join("tls/server-key.pem"));
    } else {
        cmd.arg("--insecure-plaintext");
    }
    (
        ControlProcess(cmd.spawn().expect("start sockmesh-control")),
        addr,
    )
}

fn options(dir: &std::path::Path, url: &str, ca: Option<&std::path::Path>) -> FollowOptions {
    FollowOptions {
        address: ControlAddress::parse(url).unwrap(),
        token: Some(TokenSource::fixed(Token::new(TOKEN, "test").unwrap())),
        tls: ca.map(|ca| sockmesh_tls::ClientTls::from_ca_file(ca).unwrap()),
        node: "node-a".into(),
        state_dir: dir.join("state"),
        watch_timeout: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_ca_syncs_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls_init(dir.path());
    let (_control, addr) = start_control(dir.path(), true);
    wait_for_socket(&dir.path().join("control.sock")).await;
    let opts = options(dir.path(), &format!("https://{addr}"), Some(&ca));

    let first = tokio::time::timeout(WAIT, start(&opts))
        .await
        .unwrap()
        .unwrap();
    assert!(!first.from_disk);
    let mut applied = runtime(spawn(opts.clone(), first));
    wait_agent(dir.path(), "acked version 1 over https", |a| {
        a.applied_version == Some(1)
    })
    .await;
    write(&dir.path().join("mesh.yaml"), &mesh(5, "web"));
    let cfg = tokio::time::timeout(WAIT, applied.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cfg.services[0].backends[0].weight, 5);
    wait_agent(dir.path(), "acked version 2 over https", |a| {
        a.applied_version == Some(2)
    })
    .await;
}

/// Starts a follower that cannot get a config (nothing persisted, so `start` keeps
/// retrying) and returns what it logged once `expect` shows up.
async fn refused_start_logs(opts: FollowOptions, expect: &str) -> String {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let deadline = tokio::time::Instant::now() + WAIT;
    let run = start(&opts);
    tokio::pin!(run);
    loop {
        tokio::select! {
            got = &mut run => panic!("got a config: {:?}", got.map(|s| s.snapshot.version)),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let text = logs.text();
        if text.contains(expect) {
            assert!(!text.contains(TOKEN), "the token reached the log:\n{text}");
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {expect:?} in the log within {WAIT:?}:\n{text}"
        );
    }
}

/// Current-thread: the follower's logs go through this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_ca_is_refused_as_an_unknown_issuer() {
    let dir = tempfile::tempdir().unwrap();
    tls_init(dir.path());
    let (_control, addr) = start_control(dir.path(), true);
    wait_for_socket(&dir.path().join("control.sock")).await;
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = tls_init(other.path());
    let url = format!("https://{addr}");
    let text =
        refused_start_logs(options(dir.path(), &url, Some(&wrong_ca)), "unknown issuer").await;
    assert!(
        text.contains(&format!(
            "the certificate of the control plane at {url} is not signed by a CA in --control-ca"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_plain_http_control_plane_behind_an_https_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls_init(dir.path());
    let (_control, addr) = start_control(dir.path(), false);
    wait_for_socket(&dir.path().join("control.sock")).await;
    let text = refused_start_logs(
        options(dir.path(), &format!("https://{addr}"), Some(&ca)),
        &format!("the control plane does not speak TLS on https://{addr}"),
    )
    .await;
    assert!(text.contains("no config from the control plane"), "{text}");
}

#[test]
fn http_urls_need_insecure_plaintext_and_https_urls_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls_init(dir.path());
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let token = dir.path().join("token");
    let trust = |ca_file, insecure_plaintext| crate::ControlTrust {
        token_file: Some(&token),
        ca_file,
        insecure_plaintext,
    };
    let follow = |url: &str, trust| {
        crate::follow_options(url, trust, Some("node-a".into()), dir.path())
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    };
    let err = follow("http://127.0.0.1:9480", trust(None, false)).unwrap_err();
    assert!(
        err.contains("the control channel is plain http; pass an https:// URL with --control-ca, or --insecure-plaintext to accept it"),
        "{err}"
    );
    follow("http://127.0.0.1:9480", trust(None, true)).unwrap();
    let err = follow("https://127.0.0.1:9480", trust(None, false)).unwrap_err();
    assert!(err.contains("needs --control-ca"), "{err}");
    follow("https://127.0.0.1:9480", trust(Some(&ca), false)).unwrap();
    let err = follow("https://127.0.0.1:9480", trust(Some(&token), false)).unwrap_err();
    assert!(err.contains("--control-ca"), "{err}");
    // The unix socket needs neither.
    follow("unix:/run/x.sock", trust(None, false)).unwrap();
}

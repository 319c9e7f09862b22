//! The API over TLS: the `sockmesh` CLI (the real binary) against a real `sockmesh-control`
//! on 127.0.0.1 with a pair from `sockmesh_tls::generate` (what `tls init` writes): the
//! right CA works, a wrong CA and a plain-http server are refused with the reason, http://
//! needs --insecure-plaintext; and a replaced pair serves the next handshake while a broken
//! one is refused and counted, the pair before it still serving.

mod control_process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use control_process::{mesh, Control, WAIT};
use sockmesh_tls::generate::{write_dir, Ca, SERVER_CERT, SERVER_KEY};

/// A CA and a server pair for 127.0.0.1 in a directory of their own.
fn certificates() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let written = write_dir(dir.path(), &["127.0.0.1".into()]).unwrap();
    (dir, written.ca_cert)
}

fn start_tls(certs: &Path) -> Control {
    start_tls_with(certs, &[])
}

fn start_tls_with(certs: &Path, extra: &[&str]) -> Control {
    let cert = certs.join(SERVER_CERT).display().to_string();
    let key = certs.join(SERVER_KEY).display().to_string();
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Control::start_with(&mesh(&[("web", 1, 1)]), &args)
}

/// `sockmesh config history` with `args` after it.
fn history(control: &Control, args: &[&str]) -> Output {
    Command::new(control_process::cli_bin())
        .args(["config", "history", "-o", "json", "--token-file"])
        .arg(control.path("token"))
        .args(args)
        .env_remove("SOCKMESH_CONTROL_URL")
        .env_remove("SOCKMESH_CONTROL_CA")
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env_remove("SOCKMESH_TOKEN_FILE")
        .output()
        .unwrap()
}

fn https(control: &Control) -> String {
    format!("https://{}", control.tcp.as_deref().unwrap())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn history_with_ca(control: &Control, ca: &Path) -> Output {
    history(
        control,
        &[
            "--control-url",
            &https(control),
            "--control-ca",
            ca.to_str().unwrap(),
        ],
    )
}

#[test]
fn the_cli_verifies_the_control_plane() {
    let (certs, ca) = certificates();
    let control = start_tls(certs.path());

    let out = history_with_ca(&control, &ca);
    assert!(out.status.success(), "{}\n{}", stderr(&out), control.log());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["head"], 1, "{json}");

    // A CA that did not sign it.
    let (_other, wrong_ca) = certificates();
    let out = history_with_ca(&control, &wrong_ca);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "sockmesh: the certificate of the control plane at {} is not signed by a CA in \
             --control-ca (unknown issuer)\n",
            https(&control)
        )
    );

    // https:// without a CA, and http:// without --insecure-plaintext: usage errors.
    let out = history(&control, &["--control-url", &https(&control)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("needs --control-ca FILE"),
        "{}",
        stderr(&out)
    );
    let http = format!("http://{}", control.tcp.as_deref().unwrap());
    let out = history(&control, &["--control-url", &http]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "the control channel is plain http; pass an https:// --control-url with \
             --control-ca, or --insecure-plaintext to accept it"
        ),
        "{}",
        stderr(&out)
    );
    // With the flag, a plain-http client reaches a TLS port and says what it found.
    let out = history(&control, &["--control-url", &http, "--insecure-plaintext"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("use https://"), "{}", stderr(&out));

    // An https:// URL to a control plane that serves plain http.
    let plain = Control::start(&mesh(&[("web", 1, 1)]));
    let out = history_with_ca(&plain, &ca);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "the control plane does not speak TLS on {}",
            https(&plain)
        )),
        "{}",
        stderr(&out)
    );
}

/// The value of `sockmesh_control_tls_reloads_total{result="RESULT"}`.
fn reloads(control: &Control, result: &str) -> u64 {
    let text = control.metrics_text();
    let prefix = format!("sockmesh_control_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in\n{text}"))
        .parse()
        .unwrap()
}

fn wait_until(what: &str, control: &Control, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT * 2;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            control.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_replaced_pair_serves_new_handshakes_and_a_broken_one_is_refused() {
    let (certs, old_ca) = certificates();
    let control = start_tls(certs.path());
    assert!(history_with_ca(&control, &old_ca).status.success());
    assert_eq!(reloads(&control, "ok"), 0);

    // A pair from a new CA, key first as `tls init` writes it.
    let new_ca = Ca::new().unwrap();
    let pair = new_ca.issue(&["127.0.0.1".into()]).unwrap();
    let new_ca_file = certs.path().join("new-ca.pem");
    std::fs::write(&new_ca_file, &new_ca.cert_pem).unwrap();
    std::fs::write(certs.path().join(SERVER_KEY), &pair.key_pem).unwrap();
    std::fs::write(certs.path().join(SERVER_CERT), &pair.cert_pem).unwrap();
    wait_until("the new pair to serve", &control, || {
        history_with_ca(&control, &new_ca_file).status.success()
    });
    let out = history_with_ca(&control, &old_ca);
    assert!(stderr(&out).contains("unknown issuer"), "{}", stderr(&out));
    wait_until("the reload to be counted", &control, || {
        reloads(&control, "ok") >= 1
    });

    // A broken certificate: logged, counted, and the pair before it keeps serving.
    std::fs::write(
        certs.path().join(SERVER_CERT),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    wait_until("the broken pair to be refused", &control, || {
        reloads(&control, "error") >= 1
    });
    assert!(
        control
            .log()
            .contains("TLS certificate changed but cannot be used"),
        "{}",
        control.log()
    );
    assert!(history_with_ca(&control, &new_ca_file).status.success());
}

/// The value of `sockmesh_control_http_connections_total{endpoint="api",event=EVENT}`.
fn api_events(control: &Control, event: &str) -> u64 {
    let text = control.metrics_text();
    let prefix =
        format!("sockmesh_control_http_connections_total{{endpoint=\"api\",event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in\n{text}"))
        .parse()
        .unwrap()
}

/// A client that connects and never sends its ClientHello is closed by the header timeout,
/// counted as such: the handshake runs under it.
#[test]
fn a_handshake_that_never_starts_is_closed_by_the_header_timeout() {
    use std::io::Read;
    let (certs, ca) = certificates();
    let control = start_tls_with(certs.path(), &["--http-header-timeout-secs", "1"]);
    let mut silent = std::net::TcpStream::connect(control.tcp.as_deref().unwrap()).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    // EOF (0 bytes) from the server's close; a timeout here would be an error.
    assert_eq!(silent.read(&mut buf).unwrap(), 0);
    wait_until("the header timeout to be counted", &control, || {
        api_events(&control, "header_timeout") >= 1
    });
    // Clients that do speak go on being served.
    assert!(history_with_ca(&control, &ca).status.success());
}

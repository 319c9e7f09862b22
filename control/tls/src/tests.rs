//! Handshakes over real sockets on 127.0.0.1 (std threads, no runtime): the client's
//! verification and its explanations, and the server's reload.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::client::server_name;
use crate::generate::{write_dir, Ca, CA_CERT, SERVER_CERT, SERVER_KEY};
use crate::{explain, CaReload, ClientTls, Reload, ServerTls};

/// A TLS server answering `ok` to one line per connection, until the test ends.
fn serve_tls(tls: Arc<ServerTls>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let conn = ServerConnection::new(tls.config()).unwrap();
            let mut tls = StreamOwned::new(conn, stream);
            let mut byte = [0u8; 1];
            if tls.read(&mut byte).is_ok() {
                let _ = tls.write_all(b"ok");
                let _ = tls.flush();
            }
        }
    });
    addr
}

/// A plain HTTP server: reads what comes and answers 400, as hyper does to a TLS hello.
fn serve_plain() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    addr
}

/// One exchange; `Err` is the explained failure.
fn ask(ca: &Path, addr: &str) -> Result<(), String> {
    ask_with(ClientTls::from_ca_file(ca).unwrap().config(), addr)
}

/// One exchange with a given client config.
fn ask_with(config: Arc<rustls::ClientConfig>, addr: &str) -> Result<(), String> {
    let conn = ClientConnection::new(config, server_name(addr).unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    let url = format!("https://{addr}");
    tls.write_all(b"x")
        .and_then(|()| tls.flush())
        .map_err(|e| explain(&e, &url))?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply)
        .or_else(|e| match e.kind() {
            // The server thread closes without close_notify.
            std::io::ErrorKind::UnexpectedEof if reply == b"ok" => Ok(2),
            _ => Err(e),
        })
        .map_err(|e| explain(&e, &url))?;
    assert_eq!(reply, b"ok");
    Ok(())
}

#[test]
fn the_right_ca_verifies_and_others_are_explained() {
    let good = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let wrong_name = tempfile::tempdir().unwrap();
    write_dir(good.path(), &["127.0.0.1".into()]).unwrap();
    write_dir(other.path(), &["127.0.0.1".into()]).unwrap();
    write_dir(wrong_name.path(), &["control.example".into()]).unwrap();
    let tls = |dir: &Path| {
        Arc::new(ServerTls::load(&dir.join(SERVER_CERT), &dir.join(SERVER_KEY)).unwrap())
    };
    let addr = serve_tls(tls(good.path()));
    ask(&good.path().join(CA_CERT), &addr).unwrap();

    let err = ask(&other.path().join(CA_CERT), &addr).unwrap_err();
    assert!(err.contains("unknown issuer"), "{err}");

    let misnamed = serve_tls(tls(wrong_name.path()));
    let err = ask(&wrong_name.path().join(CA_CERT), &misnamed).unwrap_err();
    assert!(err.contains("name mismatch"), "{err}");

    let plain = serve_plain();
    let err = ask(&good.path().join(CA_CERT), &plain).unwrap_err();
    assert!(
        err.contains(&format!("does not speak TLS on https://{plain}")),
        "{err}"
    );
}

#[test]
fn a_new_pair_serves_the_next_handshake_and_a_broken_one_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_dir(dir.path(), &["127.0.0.1".into()]).unwrap();
    let old_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&first.ca_cert, old_ca.path()).unwrap();
    let tls = Arc::new(ServerTls::load(&first.server_cert, &first.server_key).unwrap());
    let addr = serve_tls(tls.clone());
    ask(old_ca.path(), &addr).unwrap();
    assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));

    // A pair from a new CA: the next handshake presents it.
    let new_ca = Ca::new().unwrap();
    let pair = new_ca.issue(&["127.0.0.1".into()]).unwrap();
    let new_ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(new_ca_file.path(), &new_ca.cert_pem).unwrap();
    std::fs::write(&first.server_key, &pair.key_pem).unwrap();
    std::fs::write(&first.server_cert, &pair.cert_pem).unwrap();
    assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
    ask(new_ca_file.path(), &addr).unwrap();
    let err = ask(old_ca.path(), &addr).unwrap_err();
    assert!(err.contains("unknown issuer"), "{err}");

    // A broken certificate file: refused, and the pair before it keeps serving.
    std::fs::write(&first.server_cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    match tls.reload_if_changed() {
        Reload::Failed(e) => assert!(e.to_string().contains("server.pem"), "{e}"),
        other => panic!("a broken file was not refused: {other:?}"),
    }
    ask(new_ca_file.path(), &addr).unwrap();
    // A certificate with another key: refused the same way.
    let stranger = new_ca.issue(&["127.0.0.1".into()]).unwrap();
    std::fs::write(&first.server_cert, &stranger.cert_pem).unwrap();
    match tls.reload_if_changed() {
        Reload::Failed(e) => assert!(
            e.to_string().contains("not a certificate and its key"),
            "{e}"
        ),
        other => panic!("a mismatched pair was not refused: {other:?}"),
    }
    ask(new_ca_file.path(), &addr).unwrap();
}

#[test]
fn a_long_lived_client_follows_a_ca_rotation_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_dir(dir.path(), &["127.0.0.1".into()]).unwrap();
    let tls = Arc::new(ServerTls::load(&first.server_cert, &first.server_key).unwrap());
    let addr = serve_tls(tls.clone());
    let ca_file = dir.path().join("trusted-ca.pem");
    let old_ca = std::fs::read_to_string(&first.ca_cert).unwrap();
    std::fs::write(&ca_file, &old_ca).unwrap();
    let client = ClientTls::from_ca_file(&ca_file).unwrap();
    let (config, reload) = client.current();
    assert!(reload.is_none());
    ask_with(config, &addr).unwrap();

    // Step 1: the bundle trusts the old and the new CA; the server still has the old pair.
    let new_ca = Ca::new().unwrap();
    std::fs::write(&ca_file, format!("{old_ca}{}", new_ca.cert_pem)).unwrap();
    let (config, reload) = client.current();
    assert!(matches!(reload, Some(CaReload::Taken)), "{reload:?}");
    ask_with(config, &addr).unwrap();
    assert!(
        client.current().1.is_none(),
        "an unchanged file reported again"
    );

    // Step 2: the server moves to a pair of the new CA; the same client still verifies.
    let pair = new_ca.issue(&["127.0.0.1".into()]).unwrap();
    std::fs::write(&first.server_key, &pair.key_pem).unwrap();
    std::fs::write(&first.server_cert, &pair.cert_pem).unwrap();
    assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
    ask_with(client.current().0, &addr).unwrap();

    // A broken CA file: said once, and the last good bundle stays in use.
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let (config, reload) = client.current();
    assert!(matches!(reload, Some(CaReload::Failed(_))), "{reload:?}");
    ask_with(config, &addr).unwrap();
    assert!(client.current().1.is_none());
}

//! Listeners: TCP (token required; TLS unless `--insecure-plaintext`) and a unix socket
//! created mode 0600 (file permissions are the guard). Connections are HTTP/1.1 with keep-alive, so an agent's watch after
//! watch reuses one connection; a long-poll in progress is never idle, and the header
//! timeout bounds only the wait for a request head (docs/endpoints.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hyper::{body::Incoming, Request};
use sockmesh_serve::{Listener, Server};
use tokio::net::UnixListener;

use crate::api::Api;
use crate::tls::TlsUpgrade;

/// Binds `path` (replacing a stale socket from an earlier run), private from the start.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // SAFETY: umask only swaps the process's file mode mask; restored right after bind, so
    // the socket never exists with looser permissions.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API on `listener` (TCP, or the unix socket) through the hardened loop of
/// sockmesh-serve: header and idle timeouts, the connection cap, accept back-off.
pub async fn serve<L: Listener>(listener: L, api: Api, server: Server) {
    server
        .serve(listener, move |req: Request<Incoming>| {
            let api = api.clone();
            async move { api.handle(req).await }
        })
        .await
}

/// [`serve`] with TLS: the handshake runs in each connection's task under the header
/// timeout.
pub async fn serve_tls<L: Listener>(listener: L, tls: TlsUpgrade, api: Api, server: Server) {
    server
        .serve_with(listener, tls, move |req: Request<Incoming>| {
            let api = api.clone();
            async move { api.handle(req).await }
        })
        .await
}

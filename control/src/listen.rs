//! Listeners: TCP (token required) and a unix socket created mode 0600 (file permissions
//! are the guard). Connections are HTTP/1.1 with keep-alive, so an agent's watch after
//! watch reuses one connection.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use crate::api::Api;

/// A client must send its request head within this; long-polls wait on the reply, not here.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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

pub async fn serve_tcp(listener: TcpListener, api: Api) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn_conn(stream, api.clone());
            }
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn serve_unix(listener: UnixListener, api: Api) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(stream, api.clone()),
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn spawn_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, api: Api) {
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc)
            .await
        {
            debug!(error = %e, "API connection ended with an error");
        }
    });
}

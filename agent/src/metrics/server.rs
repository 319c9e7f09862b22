//! `/metrics` over HTTP/1.1 on `--metrics-addr`, through the hardened loop of
//! `sockmesh-serve` (timeouts, connection cap, accept back-off) and its registry handler.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use sockmesh_serve::Server;
use tokio::net::TcpListener;

/// Answers scrapes of `registry` on `listener`, in the format the scraper asks for.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>, server: Server) {
    sockmesh_serve::serve_registry(
        listener,
        registry,
        server,
        sockmesh_model::exposition::negotiate,
    )
    .await
}

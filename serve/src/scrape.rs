//! `GET /metrics` of a prometheus-client registry through a [`Server`]: one handler for
//! every process that only exports metrics on its endpoint (the agent's `--metrics-addr`,
//! the L7 proxy's). The format follows the scraper's `Accept` header through `negotiate`
//! (the callers pass `sockmesh_model::exposition::negotiate`; this crate knows no model).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::Server;

/// The content type and body for a scrape, from its `Accept` header and the OpenMetrics
/// text of the registry.
pub type Negotiate = fn(Option<&str>, String) -> (&'static str, String);

/// The registry as OpenMetrics text.
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// Answers scrapes of `registry` on `listener` until the task is dropped.
pub async fn serve_registry(
    listener: TcpListener,
    registry: Arc<Registry>,
    server: Server,
    negotiate: Negotiate,
) {
    server
        .serve(listener, move |req: Request<Incoming>| {
            let registry = registry.clone();
            async move { answer(&req, &registry, negotiate) }
        })
        .await
}

fn answer(
    req: &Request<Incoming>,
    registry: &Registry,
    negotiate: Negotiate,
) -> Response<Full<Bytes>> {
    let resp = if req.uri().path() == "/metrics" {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (ctype, body) = negotiate(accept, encode_registry(registry));
        Response::builder()
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
    };
    resp.expect("static response parts are valid")
}

//! `/metrics` over HTTP/1.1 on `--metrics-addr`, through the hardened loop of
//! `sockmesh-serve` (timeouts, connection cap, accept back-off).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use sockmesh_serve::Server;
use tokio::net::TcpListener;

use super::{encode, format};

/// Answers scrapes of `registry` on `listener`, in the format the scraper asks for.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>, server: Server) {
    server
        .serve(listener, move |req: Request<Incoming>| {
            let registry = registry.clone();
            async move { answer(&req, &registry) }
        })
        .await
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let resp = if req.uri().path() == "/metrics" {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (ctype, body) = if format::wants_openmetrics(accept) {
            (format::OPENMETRICS, encode(registry))
        } else {
            (format::CLASSIC, format::to_classic(&encode(registry)))
        };
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

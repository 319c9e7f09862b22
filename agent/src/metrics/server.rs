//! `/metrics` over HTTP/1.1 (hyper) on `--metrics-addr`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use prometheus_client::registry::Registry;

use super::{encode, format};

/// Answers scrapes of `registry` on `listener`, in the format the scraper asks for.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let registry = registry.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let accept = req
                            .headers()
                            .get(hyper::header::ACCEPT)
                            .and_then(|v| v.to_str().ok());
                        let (ctype, body) = if format::wants_openmetrics(accept) {
                            (format::OPENMETRICS, encode(&registry))
                        } else {
                            (format::CLASSIC, format::to_classic(&encode(&registry)))
                        };
                        Response::builder()
                            .header("content-type", ctype)
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    Ok::<_, Infallible>(resp.expect("static response parts are valid"))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

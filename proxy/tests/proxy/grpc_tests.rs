//! gRPC through the proxy: statuses from trailers, and the proxy's own answers in gRPC's form.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;

use super::*;

/// gRPC over h2c: the status comes from the trailers, which reach the client, and the
/// report's `code` is the gRPC status (`grpc_ok`, `grpc_unavailable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_is_read_from_the_trailers() {
    let ok = TestBackend::start(Mode::Grpc(0)).await;
    let unavailable = TestBackend::start(Mode::Grpc(14)).await;
    let h2 = h2_client();
    for (backend, status, want) in [
        (&ok, "0", "grpc_ok"),
        (&unavailable, "14", "grpc_unavailable"),
    ] {
        let proxy = RunningProxy::start(http("{}"), &[spec(backend.addr, &[])]).await;
        let request = Request::post(proxy.url("/shop.Cart/Add"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let response = h2.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().expect("trailers reach the client").clone();
        let reports = proxy.wait_reports(1).await;
        assert_eq!(reports[0].code.to_string(), want);
        assert_eq!(trailers.get("grpc-status").unwrap(), status);
    }
}

/// The proxy's own answers to a gRPC caller are gRPC's Trailers-Only responses (HTTP 200,
/// `content-type: application/grpc`, `grpc-status`, `grpc-message`, the stream ended by the
/// headers): grpcio read the earlier form (a 504 or 502 with `grpc-status` and a text body) as
/// UNKNOWN, "Data frame with END_STREAM flag received". A caller's deadline that runs out
/// at a hung backend is DEADLINE_EXCEEDED; a backend that refuses connections, UNAVAILABLE;
/// both counted by their gRPC status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_to_grpc_callers_are_trailers_only() {
    let hung = TestBackend::start(Mode::Hang).await;
    let dead = dead_addr().await;
    let h2 = h2_client();
    for (backend, status, want) in [
        (hung.addr, "4", "grpc_deadline_exceeded"),
        (dead, "14", "grpc_unavailable"),
    ] {
        let proxy = RunningProxy::start(http("timeout: 10s"), &[spec(backend, &[])]).await;
        let request = Request::post(proxy.url("/shop.Cart/Add"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let response = h2.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{want}");
        let headers = response.headers().clone();
        assert_eq!(headers.get("content-type").unwrap(), "application/grpc");
        assert_eq!(headers.get("grpc-status").unwrap(), status, "{want}");
        assert!(headers.contains_key("grpc-message"), "{headers:?}");
        assert!(
            response.body().is_end_stream(),
            "the headers end the stream: no body, no trailers"
        );
        let body = response.into_body().collect().await.unwrap();
        assert!(body.trailers().is_none());
        assert!(body.to_bytes().is_empty());
        let reports = proxy.wait_reports(1).await;
        assert_eq!(reports[0].code.to_string(), want);
        assert_eq!(
            reports[0].status,
            StatusCode::OK,
            "the status the caller got"
        );
        assert!(reports[0].code.is_server_error(), "{want} fails the SLI");
    }
}

//! gRPC through the proxy: statuses from trailers.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

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

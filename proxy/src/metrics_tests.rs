//! The request metrics: reports in, the exposition text out, series by series.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::registry::Registry;

use super::*;
use crate::report::Try;
use crate::retry::Outcome;

const A: &str = "127.0.0.1:8001";
const B: &str = "127.0.0.1:8002";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn report(service: &str, backend: Option<&str>, caller: Option<&str>, code: Code) -> Report {
    Report {
        service: service.into(),
        caller: caller.map(Arc::from),
        backend: backend.map(addr),
        status: StatusCode::OK,
        code,
        duration: Duration::from_millis(3),
        tries: backend
            .map(|b| Try {
                backend: addr(b),
                outcome: Outcome::Status(200),
                elapsed: Duration::from_millis(3),
            })
            .into_iter()
            .collect(),
        retries: Vec::new(),
    }
}

fn metrics(max: usize) -> (Registry, RequestMetrics) {
    let mut registry = Registry::with_prefix("sockmesh");
    let metrics = RequestMetrics::with_max_series(&mut registry, max);
    (registry, metrics)
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// The exposition's sample lines starting with `prefix`, sorted (families keep no order).
fn samples(text: &str, prefix: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn requests_count_by_service_backend_caller_and_code() {
    let (registry, m) = metrics(MAX_SERIES_PER_FAMILY);
    for _ in 0..3 {
        m.request_done(&report("shop", Some(A), Some("web"), Code::http(200)));
    }
    m.request_done(&report("shop", Some(A), Some("web"), Code::http(503)));
    m.request_done(&report("shop", Some(B), None, Code::grpc(Some(b"14"))));
    m.request_done(&report("shop", None, Some("web"), Code::http(504)));
    m.request_done(&report("shop", Some(A), Some("web"), Code::http(499)));
    let text = encode(&registry);
    assert_eq!(
        samples(&text, "sockmesh_requests_total"),
        [
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8001",caller="web",code="200"} 3"#,
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8001",caller="web",code="4xx"} 1"#,
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8001",caller="web",code="503"} 1"#,
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8002",caller="unknown",code="grpc_unavailable"} 1"#,
            r#"sockmesh_requests_total{service="shop",backend="none",caller="web",code="504"} 1"#,
        ]
    );
    assert!(text.contains("# TYPE sockmesh_requests counter"), "{text}");
    assert!(samples(&text, "sockmesh_request_series_dropped_total").is_empty());
}

#[test]
fn durations_land_in_their_buckets_with_count_and_sum() {
    let (registry, m) = metrics(MAX_SERIES_PER_FAMILY);
    for ms in [2, 40, 40, 3_000] {
        let mut r = report("shop", Some(A), Some("web"), Code::http(200));
        r.duration = Duration::from_millis(ms);
        m.request_done(&r);
    }
    let text = encode(&registry);
    let lines = samples(&text, "sockmesh_request_duration_seconds");
    let find = |suffix: &str| {
        lines
            .iter()
            .find(|l| l.contains(suffix))
            .unwrap_or_else(|| panic!("{suffix} in {lines:?}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(find("_count{service=\"shop\"}"), "4");
    let sum: f64 = find("_sum{service=\"shop\"}").parse().unwrap();
    assert!((sum - 3.082).abs() < 1e-9, "{sum}");
    // Cumulative buckets: 2 ms is under 2.5 ms, the two 40 ms under 50 ms, 3 s under 5 s.
    assert_eq!(find("le=\"0.001\""), "0");
    assert_eq!(find("le=\"0.0025\""), "1");
    assert_eq!(find("le=\"0.025\""), "1");
    assert_eq!(find("le=\"0.05\""), "3");
    assert_eq!(find("le=\"2.5\""), "3");
    assert_eq!(find("le=\"5.0\""), "4");
    assert_eq!(find("le=\"+Inf\""), "4");
    assert_eq!(
        lines.iter().filter(|l| l.contains("_bucket")).count(),
        DURATION_BUCKETS.len() + 1
    );
}

#[test]
fn retries_count_by_reason() {
    let (registry, m) = metrics(MAX_SERIES_PER_FAMILY);
    let mut r = report("shop", Some(B), Some("web"), Code::http(200));
    r.retries = vec!["connect_failure", "gateway_error", "connect_failure"];
    m.request_done(&r);
    r.retries = vec!["5xx"];
    m.request_done(&r);
    m.request_done(&report("cart", Some(A), Some("web"), Code::http(200)));
    let text = encode(&registry);
    assert_eq!(
        samples(&text, "sockmesh_request_retries_total"),
        [
            r#"sockmesh_request_retries_total{service="shop",reason="5xx"} 1"#,
            r#"sockmesh_request_retries_total{service="shop",reason="connect_failure"} 2"#,
            r#"sockmesh_request_retries_total{service="shop",reason="gateway_error"} 1"#,
        ]
    );
}

#[test]
fn label_sets_beyond_the_cap_fold_into_other_and_are_counted() {
    let (registry, m) = metrics(2);
    // Two callers fill the budget of requests_total; the third and fourth fold.
    for caller in ["a", "b", "c", "d", "a"] {
        m.request_done(&report("shop", Some(A), Some(caller), Code::http(200)));
    }
    m.request_done(&report("shop", Some(A), Some("e"), Code::http(500)));
    // Durations: one service, well under the cap; retries: a third service folds.
    for service in ["cart", "pay"] {
        let mut r = report(service, Some(A), Some("a"), Code::http(200));
        r.retries = vec!["reset"];
        m.request_done(&r);
    }
    let text = encode(&registry);
    assert_eq!(
        samples(&text, "sockmesh_requests_total"),
        [
            r#"sockmesh_requests_total{service="other",backend="other",caller="other",code="200"} 4"#,
            r#"sockmesh_requests_total{service="other",backend="other",caller="other",code="500"} 1"#,
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8001",caller="a",code="200"} 2"#,
            r#"sockmesh_requests_total{service="shop",backend="127.0.0.1:8001",caller="b",code="200"} 1"#,
        ]
    );
    assert_eq!(
        samples(&text, "sockmesh_request_duration_seconds_count"),
        [
            r#"sockmesh_request_duration_seconds_count{service="cart"} 1"#,
            r#"sockmesh_request_duration_seconds_count{service="other"} 1"#,
            r#"sockmesh_request_duration_seconds_count{service="shop"} 6"#,
        ]
    );
    assert_eq!(
        samples(&text, "sockmesh_request_retries_total"),
        [
            r#"sockmesh_request_retries_total{service="cart",reason="reset"} 1"#,
            r#"sockmesh_request_retries_total{service="pay",reason="reset"} 1"#,
        ]
    );
    assert_eq!(
        samples(&text, "sockmesh_request_series_dropped_total"),
        [
            r#"sockmesh_request_series_dropped_total{metric="request_duration_seconds"} 1"#,
            r#"sockmesh_request_series_dropped_total{metric="requests"} 5"#,
        ]
    );
}

/// [`Refusals`] alone on a registry, as the process's connection collector exports it.
#[derive(Debug)]
struct RefusalsOnly(Arc<Refusals>);

impl prometheus_client::collector::Collector for RefusalsOnly {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(&mut encoder)
    }
}

#[test]
fn refusals_export_every_reason_with_its_count() {
    let refusals = Arc::new(Refusals::default());
    for _ in 0..3 {
        refusals.count(Refusal::NotHttp);
    }
    refusals.count(Refusal::Http2Flood);
    let mut registry = Registry::with_prefix("sockmesh");
    registry.register_collector(Box::new(RefusalsOnly(refusals.clone())));
    let text = encode(&registry);
    assert_eq!(
        samples(&text, "sockmesh_proxy_refused_total"),
        [
            "sockmesh_proxy_refused_total{reason=\"head_timeout\"} 0",
            "sockmesh_proxy_refused_total{reason=\"head_too_large\"} 0",
            "sockmesh_proxy_refused_total{reason=\"http2_flood\"} 1",
            "sockmesh_proxy_refused_total{reason=\"http2_protocol\"} 0",
            "sockmesh_proxy_refused_total{reason=\"not_http\"} 3",
        ]
    );
    assert_eq!(refusals.get(Refusal::HeadTimeout), 0);
    let labels: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), Refusal::ALL.len(), "one label per reason");
    for (i, reason) in Refusal::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, i, "ALL is in the counters' order");
    }
}

//! MeshPolicies of http services (`protocol: http`, `http:`): accepted with request routes
//! whose subsets the cluster decides, and a route whose subset has no ready endpoint left
//! out (with a warning) instead of the whole service.

use serde_json::json;

use super::map::*;
use super::map_tests::{by_name, policy, shop, slice};
use sockmesh_model::Protocol;

fn http_policy(routes: serde_json::Value) -> serde_json::Value {
    json!({"service": "web", "protocol": "http",
           "http": {"timeout": "2s", "routes": routes},
           "outlier": {"consecutive_5xx": 3}})
}

fn build_all(snap: &Snapshot) -> Built {
    build(snap, &MapOptions::default(), &mut PolicyMemory::default()).unwrap()
}

#[test]
fn an_http_policy_carries_its_request_routes() {
    let mut snap = shop();
    snap.policies.push(policy(
        "shop",
        "web",
        http_policy(json!([
            {"match": {"headers": {"x-canary": "1"}}, "to": {"track": "canary"}},
            {"match": {"path_prefix": "/v1"}, "to": {"track": "stable"}}
        ])),
    ));
    let built = build_all(&snap);
    assert!(built.rejections.is_empty(), "{:?}", built.rejections);
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let s = by_name(&built.config, "shop-web-80");
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.outlier.consecutive_5xx, 3);
    let http = s.http.as_ref().expect("http block");
    assert_eq!(http.timeout.to_string(), "2s");
    assert_eq!(http.routes.len(), 2);
}

#[test]
fn a_route_without_a_ready_endpoint_is_left_out_not_the_service() {
    let mut snap = shop();
    snap.policies.push(policy(
        "shop",
        "web",
        http_policy(json!([
            {"match": {"headers": {"x-canary": "1"}}, "to": {"track": "canary"}},
            {"match": {"path_prefix": "/v1"}, "to": {"track": "stable"}}
        ])),
    ));
    // The canary pod (web-2) is not ready: its subset is empty for now.
    snap.slices[0] = slice(
        "shop",
        "web-abc",
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"},
               {"name": "https", "port": 8443, "protocol": "TCP"}]),
        &[
            ("127.0.10.2", Some(true), Some("web-1"), Some("zone-a")),
            ("127.0.10.1", Some(false), Some("web-2"), None),
        ],
    );
    let built = build_all(&snap);
    assert!(built.rejections.is_empty(), "{:?}", built.rejections);
    let s = by_name(&built.config, "shop-web-80");
    let routes = &s.http.as_ref().unwrap().routes;
    assert_eq!(routes.len(), 1, "only the stable route is left: {routes:?}");
    assert_eq!(
        routes[0].to.get("track").map(String::as_str),
        Some("stable")
    );
    let warned: Vec<&String> = built
        .warnings
        .iter()
        .filter(|w| w.contains("http.routes[0] (to track=canary) selects no ready endpoint"))
        .collect();
    // Once per mesh service of the Service (ports 80 and 443).
    assert_eq!(warned.len(), 2, "{:?}", built.warnings);

    // The canary becomes ready: its route is back, in its place.
    snap.slices[0] = shop().slices[0].clone();
    let built = build_all(&snap);
    let routes = &by_name(&built.config, "shop-web-80")
        .http
        .as_ref()
        .unwrap()
        .routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[0].to.get("track").map(String::as_str),
        Some("canary")
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
}

#[test]
fn a_bad_request_route_is_refused_with_its_field() {
    for (routes, field) in [
        (
            json!([{"match": {"path_prefix": "v2"}, "to": {"track": "canary"}}]),
            "spec.http.routes[0].match.path_prefix",
        ),
        (
            json!([{"to": {"track": "canary"}}, {"to": {"bad key!": "x"}}]),
            "spec.http.routes[1].to",
        ),
    ] {
        let err = check_policy(&http_policy(routes)).unwrap_err();
        assert!(err.0.starts_with(field), "{err:?} should name {field}");
    }
    // Routes on a tcp service are refused as in a file.
    let err = check_policy(&json!({"service": "web", "http": {"timeout": "1s"}})).unwrap_err();
    assert!(err.0.starts_with("spec.http"), "{err:?}");
}

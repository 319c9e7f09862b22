//! `protocol: http`, the `http:` block and `outlier.consecutive_5xx`: the YAML shape and its
//! defaults, the unchanged fingerprint of tcp configs, and one rejection per rule with its
//! field path.

use std::time::Duration;

use super::*;
use crate::{HttpSpec, Protocol, RetryOn, RetrySpec, MAX_HTTP_ROUTES};

const SHOP: &str = "
services:
  - name: shop
    vip: 127.100.0.9
    port: 80
    protocol: http
    http:
      timeout: 2s
      per_try_timeout: 500ms
      retries: {attempts: 2, on: [connect_failure, refused_stream, \"503\", 429, 5xx], budget_percent: 20}
      routes:
        - match: {path_prefix: /v2, headers: {x-canary: \"1\"}}
          to: {track: canary}
        - match: {path_exact: /healthz, method: GET}
          to: {track: stable}
    outlier: {consecutive_5xx: 3}
    backends:
      - addr: 127.0.0.2:8081
        labels: {track: stable}
      - addr: 127.0.0.3:8081
        labels: {track: canary}
";

/// The `http:` block of SHOP with `line` replaced by `with`.
fn shop_with(line: &str, with: &str) -> String {
    assert!(SHOP.contains(line), "{line:?} is not in SHOP");
    SHOP.replace(line, with)
}

#[test]
fn an_http_service_parses_with_its_fields() {
    let cfg = parse_config(SHOP).unwrap();
    let s = &cfg.services[0];
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.outlier.consecutive_5xx, 3);
    let http = s.http.as_ref().unwrap();
    assert_eq!(http.timeout.0, Duration::from_secs(2));
    assert_eq!(http.per_try_timeout.unwrap().0, Duration::from_millis(500));
    assert_eq!(
        http.retries.on,
        [
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Status(503),
            RetryOn::Status(429),
            RetryOn::Status5xx
        ]
    );
    assert!(!http.retries.retry_non_idempotent);
    let canary = &http.routes[0];
    assert_eq!(canary.matches.path_prefix.as_deref(), Some("/v2"));
    assert_eq!(canary.matches.headers["x-canary"], "1");
    assert_eq!(canary.to["track"], "canary");
    assert_eq!(http.routes[1].matches.method.as_deref(), Some("GET"));
}

#[test]
fn an_http_service_without_a_block_gets_the_defaults() {
    let cfg =
        parse_config(&ONE_SERVICE.replace("port: 80\n", "port: 80\n    protocol: http\n")).unwrap();
    let s = &cfg.services[0];
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.http, None);
    let defaults = HttpSpec::default();
    assert_eq!(defaults.timeout.0, Duration::from_secs(15));
    assert_eq!(defaults.per_try_timeout, None);
    assert_eq!(
        defaults.retries,
        RetrySpec {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::RefusedStream],
            budget_percent: 20,
            retry_non_idempotent: false,
        }
    );
    assert_eq!(s.outlier.consecutive_5xx, 5);
}

#[test]
fn http_services_round_trip_through_yaml_and_json() {
    let cfg = parse_config(SHOP).unwrap();
    let yaml = serde_yaml::to_string(&cfg).unwrap();
    assert!(
        yaml.contains("protocol: http") && yaml.contains("'503'"),
        "{yaml}"
    );
    assert_eq!(parse_config(&yaml).unwrap(), cfg);
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), cfg);
    for on in [
        "connect_failure",
        "per_try_timeout",
        "gateway_error",
        "5xx",
        "504",
    ] {
        assert_eq!(on.parse::<RetryOn>().unwrap().to_string(), on);
    }
}

#[test]
fn tcp_configs_keep_their_fingerprint() {
    let plain = parse_config(ONE_SERVICE).unwrap();
    let explicit = ONE_SERVICE.replace(
        "port: 80\n",
        "port: 80\n    protocol: tcp\n    outlier: {consecutive_5xx: 5}\n",
    );
    assert_eq!(
        parse_config(&explicit).unwrap().fingerprint(),
        plain.fingerprint()
    );
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("protocol") && !json.contains("http") && !json.contains("5xx"));
    // A non-default outlier block serializes whole, still without the new field.
    let custom = ONE_SERVICE.replace("port: 80\n", "port: 80\n    outlier: {min_requests: 3}\n");
    let json = serde_json::to_string(&parse_config(&custom).unwrap()).unwrap();
    assert!(
        json.contains("min_requests") && !json.contains("5xx"),
        "{json}"
    );
}

#[test]
fn a_changed_http_block_changes_the_fingerprint() {
    let base = parse_config(SHOP).unwrap().fingerprint();
    for (line, with) in [
        ("timeout: 2s", "timeout: 3s"),
        ("budget_percent: 20", "budget_percent: 21"),
        ("path_prefix: /v2", "path_prefix: /v3"),
        ("consecutive_5xx: 3", "consecutive_5xx: 4"),
    ] {
        let changed = parse_config(&shop_with(line, with)).unwrap().fingerprint();
        assert_ne!(changed, base, "{with}");
    }
}

#[test]
fn http_settings_need_protocol_http() {
    let tcp = shop_with("    protocol: http\n", "");
    assert_rejected(&tcp, "services[0].http", "needs protocol: http");
    let no_block = ONE_SERVICE.replace(
        "port: 80\n",
        "port: 80\n    outlier: {consecutive_5xx: 2}\n",
    );
    assert_rejected(
        &no_block,
        "services[0].outlier.consecutive_5xx",
        "needs protocol: http",
    );
    assert_rejected(
        &shop_with("protocol: http", "protocol: grpc"),
        "services[0].protocol",
        "unknown variant",
    );
}

#[test]
fn timeouts_are_checked() {
    assert_rejected(
        &shop_with("per_try_timeout: 500ms", "per_try_timeout: 3s"),
        "services[0].http.per_try_timeout",
        "longer than timeout 2s",
    );
    assert_rejected(
        &shop_with("per_try_timeout: 500ms", "per_try_timeout: 0ms"),
        "services[0].http.per_try_timeout",
        "longer than 0",
    );
    assert_rejected(
        &shop_with("timeout: 2s", "timeout: 0s"),
        "services[0].http.timeout",
        "longer than 0",
    );
    assert_rejected(
        &shop_with("timeout: 2s", "timeout: 2"),
        "services[0].http.timeout",
        "missing unit",
    );
    // Equal is fine: one try may use the whole budget.
    parse_config(&shop_with("per_try_timeout: 500ms", "per_try_timeout: 2s")).unwrap();
}

#[test]
fn retries_are_checked() {
    assert_rejected(
        &shop_with("attempts: 2", "attempts: 6"),
        "services[0].http.retries.attempts",
        "above the limit of 5",
    );
    assert_rejected(
        &shop_with("budget_percent: 20", "budget_percent: 101"),
        "services[0].http.retries.budget_percent",
        "between 0 and 100",
    );
    assert_rejected(
        &shop_with("429, 5xx", "429, 5xx, 429"),
        "services[0].http.retries.on[5]",
        "429 is listed twice",
    );
    assert_rejected(
        &shop_with("429, 5xx", "200"),
        "services[0].http.retries.on[3]",
        "from 400 to 599",
    );
    assert_rejected(
        &shop_with("429, 5xx", "timeout"),
        "services[0].http.retries.on[3]",
        "unknown retry condition",
    );
    assert_rejected(
        &shop_with("budget_percent: 20", "budget: 20"),
        "services[0].http.retries.budget",
        "unknown field",
    );
}

#[test]
fn routes_are_checked() {
    let cases = [
        (
            "path_prefix: /v2",
            "path_prefix: v2",
            "0].match.path_prefix",
            "start with '/'",
        ),
        (
            "path_prefix: /v2",
            "path_prefix: /v2?x=1",
            "0].match.path_prefix",
            "contains '?'",
        ),
        (
            "path_prefix: /v2,",
            "path_prefix: /v2, path_exact: /v2,",
            "0].match",
            "not both",
        ),
        (
            "x-canary:",
            "X-Canary:",
            "0].match.headers",
            "invalid header name",
        ),
        (
            "x-canary:",
            "\"x canary\":",
            "0].match.headers",
            "invalid header name",
        ),
        (
            "\"1\"}",
            "\" 1\"}",
            "0].match.headers.x-canary",
            "leading or trailing",
        ),
        (
            "to: {track: canary}",
            "to: {track: canary2}",
            "0].to",
            "no backend carries",
        ),
        ("method: GET", "method: get", "1].match.method", "uppercase"),
    ];
    for (line, with, field, fragment) in cases {
        let path = format!("services[0].http.routes[{field}");
        assert_rejected(&shop_with(line, with), &path, fragment);
    }
    let long = format!("path_prefix: /{}", "a".repeat(1024));
    assert_rejected(
        &shop_with("path_prefix: /v2", &long),
        "services[0].http.routes[0].match.path_prefix",
        "more than the limit of 1024",
    );
    let headers: Vec<String> = (0..9).map(|i| format!("h{i}: v")).collect();
    assert_rejected(
        &shop_with("x-canary: \"1\"", &headers.join(", ")),
        "services[0].http.routes[0].match.headers",
        "more than the limit of 8",
    );
    let route = "        - to: {track: stable}\n";
    let many = route.repeat(MAX_HTTP_ROUTES + 1);
    assert_rejected(
        &SHOP.replace("      routes:\n", &format!("      routes:\n{many}")),
        "services[0].http.routes",
        "more than the limit of 32",
    );
    // An empty match is every request; the whole service is a valid subset.
    parse_config(&SHOP.replace("      routes:\n", "      routes:\n        - to: {}\n")).unwrap();
}

#[test]
fn validation_of_an_edited_config_agrees_with_parsing() {
    let mut cfg = parse_config(SHOP).unwrap();
    cfg.services[0].http.as_mut().unwrap().retries.attempts = 9;
    assert_invalid(&cfg, "services[0].http.retries.attempts", "limit of 5");
}

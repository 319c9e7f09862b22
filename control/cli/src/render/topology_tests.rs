//! The topology and diagnosis replies, shaped exactly like `docs/agent-interface.md`.

use serde_json::json;

use super::*;

#[test]
fn lines_table() {
    let reply = json!([
        {"service": "web", "caller": "frontend",
         "last": {"ok": 1200, "failed": 3, "refused_by_mesh": 1, "handshake_mean_ms": 0.0612},
         "previous": {"ok": 1100, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": 0.05}},
        {"service": "web", "caller": "unknown",
         "last": {"ok": 0, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": null},
         "previous": {"ok": 7, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": 1.5}}
    ]);
    assert_eq!(
        lines(&reply).unwrap(),
        "\
SERVICE   CALLER     OK     FAILED   MESH-REFUSED   HANDSHAKE(ms)   PREV-OK   PREV-FAILED   PREV-HANDSHAKE(ms)
web       frontend   1200   3        1              0.06            1100      0             0.05
web       unknown    0      0        0              -               7         0             1.50
"
    );
}

#[test]
fn top_table() {
    let reply = json!([
        {"rank": 1, "service": "web", "worst_slo": "availability", "burn_1h": 333.3333,
         "connects": {"last": 900, "previous": 850}, "failed": {"last": 300, "previous": 0},
         "failure_growth": 300,
         "handshake_mean_ms": {"last": 0.07, "previous": 0.05}, "latency_growth": 1.4,
         "requests": null},
        {"rank": 2, "service": "shop", "worst_slo": "success", "burn_1h": 12.0,
         "connects": {"last": 40, "previous": 40}, "failed": {"last": 0, "previous": 0},
         "failure_growth": 0,
         "handshake_mean_ms": {"last": 0.04, "previous": 0.04}, "latency_growth": 1.0,
         "requests": {"requests": {"last": 3000, "previous": 600},
                      "failed": {"last": 30, "previous": 0}, "rate_per_second": 10.0,
                      "success": 0.99, "latency": {"threshold_ms": 100.0, "within": 0.9}}},
        {"rank": 3, "service": "cart", "worst_slo": null, "burn_1h": null,
         "connects": {"last": 3, "previous": 3}, "failed": {"last": 0, "previous": 0},
         "failure_growth": 0,
         "handshake_mean_ms": {"last": 0.04, "previous": 0.04}, "latency_growth": 1.0,
         "requests": {"requests": {"last": 0, "previous": 6},
                      "failed": {"last": 0, "previous": 0}, "rate_per_second": 0.0,
                      "success": null, "latency": null}},
        {"rank": 4, "service": "calm", "worst_slo": null, "burn_1h": null,
         "connects": {"last": 10, "previous": 12}, "failed": {"last": 0, "previous": 2},
         "failure_growth": -2,
         "handshake_mean_ms": {"last": null, "previous": 0.05}, "latency_growth": null}
    ]);
    assert_eq!(
        top(&reply).unwrap(),
        "\
RANK   SERVICE   WORST-SLO      BURN-1H   CONNECTS   FAILED   PREV-FAILED   FAILED+   HANDSHAKE(ms)   PREV-HANDSHAKE(ms)   LATENCY-GROWTH   REQ/S   REQ-FAILED   SUCCESS   WITHIN-LATENCY
1      web       availability   333.33x   900        300      0             +300      0.07            0.05                 1.40x            -       -            -         -
2      shop      success        12.00x    40         0        0             0         0.04            0.04                 1.00x            10.0    30           99.00%    90.00% <=100ms
3      cart      -              -         3          0        0             0         0.04            0.04                 1.00x            0.0     0            -         -
4      calm      -              -         10         0        2             -2        -               0.05                 -                -       -            -         -
"
    );
}

#[test]
fn diagnosis_lists_causes_ranked_with_evidence() {
    let reply = json!({
        "service": "web", "window_secs": 60.0, "baseline_secs": 300.0,
        "summary": "web: most likely backends_failing (score 1.00): 127.0.0.3:18081: 200 of 200 connects failed in the last 60 s (refused 200)",
        "causes": [
            {"cause": "backends_failing", "score": 1.0, "evidence": [
                "127.0.0.3:18081: 200 of 200 connects failed in the last 60 s (refused 200)",
                "1 of 3 backends carry 100% of the service's 200 failed connects (33.3% of 600)"]},
            {"cause": "network", "score": 0.0, "evidence": [
                "no backend retransmitted more than 1 per connection in the last 60 s (0 retransmits, 3 backends with traffic)"]},
            {"cause": "overload", "score": 0.0, "evidence": []}
        ],
        "slos": [{"slo": "availability", "5m": 333.3, "1h": 40.0}]
    });
    assert_eq!(
        diagnose(&reply).unwrap(),
        "\
web: most likely backends_failing (score 1.00): 127.0.0.3:18081: 200 of 200 connects failed in the last 60 s (refused 200)
window: the last 60 s, against the 300 s before
SLO availability: burning 40.00x over 1h, 333.30x over 5m

1. backends_failing   score 1.00
   - 127.0.0.3:18081: 200 of 200 connects failed in the last 60 s (refused 200)
   - 1 of 3 backends carry 100% of the service's 200 failed connects (33.3% of 600)

2. network   score 0.00
   - no backend retransmitted more than 1 per connection in the last 60 s (0 retransmits, 3 backends with traffic)

3. overload   score 0.00
"
    );
}

#[test]
fn diagnosis_escapes_control_characters_and_needs_causes() {
    let reply = json!({"summary": "a\nb", "causes": [
        {"cause": "network", "score": 0.5, "evidence": ["x\u{1b}[31m"]}]});
    let shown = diagnose(&reply).unwrap();
    assert!(shown.starts_with("a\\nb\n"), "{shown}");
    assert!(shown.contains("   - x\\u{1b}[31m\n"), "{shown}");
    assert!(shown.contains("window: the last - s"), "{shown}");
    assert_eq!(
        diagnose(&json!([])).unwrap_err().expected,
        "a JSON object with the service's ranked causes"
    );
}

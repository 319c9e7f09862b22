//! Each table rendered from JSON shaped exactly like `docs/agent-interface.md`.

use serde_json::json;

use super::*;

#[test]
fn status_lists_one_fact_per_line() {
    let reply = json!({
        "ready": true,
        "adopted": false,
        "cgroup": "/sys/fs/cgroup/unified/sockmesh-test-1",
        "bpffs": "/sys/fs/bpf/sockmesh-test-1",
        "config": {
            "source": "/path/mesh.yaml",
            "fingerprint": "8c1f00aa11bb22cc",
            "applies": 2,
            "rejected": 1,
            "last_error": "services[0].backends[1].addr: invalid socket address \"x\"",
            "applied_at_unix_ms": 1763800000000u64
        },
        "services": [
            { "name": "web", "vip": "127.100.0.1", "port": 8080, "lb": "weighted_random",
              "id": 1, "slot_table_len": 4,
              "backends": [ { "addr": "127.0.0.2:18081", "weight": 1, "id": 1, "slots": 1 } ] }
        ]
    });
    assert_eq!(
        status(&reply).unwrap(),
        "\
ready:         yes
adopted:       no
cgroup:        /sys/fs/cgroup/unified/sockmesh-test-1
bpffs:         /sys/fs/bpf/sockmesh-test-1
config:        /path/mesh.yaml
fingerprint:   8c1f00aa11bb22cc
applied at:    2025-11-22T08:26:40.000Z
applies:       2
rejected:      1
last error:    services[0].backends[1].addr: invalid socket address \"x\"
services:      1
"
    );
}

#[test]
fn status_shows_null_and_missing_fields_as_dashes() {
    let reply =
        json!({"ready": false, "config": {"source": "embedded-default", "last_error": null}});
    let shown = status(&reply).unwrap();
    assert!(shown.contains("ready:         no\n"), "{shown}");
    assert!(
        shown.contains("config:        embedded-default\n"),
        "{shown}"
    );
    assert!(shown.contains("last error:    -\n"), "{shown}");
    assert!(shown.contains("services:      -\n"), "{shown}");
}

#[test]
fn services_table() {
    let reply = json!([
        { "name": "web", "vip": "127.100.0.1", "port": 8080, "lb": "weighted_random", "id": 1,
          "slot_table_len": 1024, "slot_table": [1, 2, 3, 3],
          "backends": [
              { "addr": "127.0.0.2:18081", "weight": 1, "id": 1, "slots": 256 },
              { "addr": "127.0.0.3:18081", "weight": 1, "id": 2, "slots": 256 },
              { "addr": "127.0.0.4:18081", "weight": 2, "id": 3, "slots": 512 } ] },
        { "name": "web6", "vip": "fd00::100", "port": 80, "lb": "maglev", "id": 2,
          "slot_table_len": 1021, "slot_table": [4],
          "backends": [ { "addr": "[fd00::2]:8081", "weight": 1, "id": 4, "slots": 1021 } ] }
    ]);
    assert_eq!(
        services(&reply).unwrap(),
        "\
NAME   VIP:PORT           LB                BACKENDS   SLOTS
web    127.100.0.1:8080   weighted_random   3          1024
web6   [fd00::100]:80     maglev            1          1021
"
    );
}

#[test]
fn empty_lists_print_only_the_header() {
    assert_eq!(
        services(&json!([])).unwrap(),
        "NAME   VIP:PORT   LB   BACKENDS   SLOTS\n"
    );
    assert_eq!(
        failures(&json!([])).unwrap(),
        "TIME   SERVICE   BACKEND   CALLER   RESULT   DURATION(ms)\n"
    );
}

#[test]
fn backends_table() {
    let reply = json!([
        { "addr": "127.0.0.2:18081", "id": 1, "weight": 1, "slots": 341,
          "connects": { "ok": 1200, "refused": 0, "timeout": 0, "unreachable": 0, "reset": 3 },
          "active": 12, "handshake_mean_ms": 0.0612, "srtt_mean_us": 48.7,
          "retransmits": 0, "rtos": 0, "bytes_sent": 100, "bytes_received": 200 },
        { "addr": "127.0.0.3:18081", "id": 2, "weight": 2, "slots": 683,
          "connects": { "ok": 0, "refused": 17, "timeout": 2, "unreachable": 0, "reset": 0 },
          "active": 0, "handshake_mean_ms": null, "srtt_mean_us": null,
          "retransmits": 5, "rtos": 1, "bytes_sent": 0, "bytes_received": 0 }
    ]);
    assert_eq!(
        backends(&reply).unwrap(),
        "\
ADDR              WEIGHT   SLOTS   OK     REFUSED   TIMEOUT   RESET   ACTIVE   HANDSHAKE(ms)   SRTT(us)   RETRANS
127.0.0.2:18081   1        341     1200   0         0         3       12       0.06            49         0
127.0.0.3:18081   2        683     0      17        2         0       0        -               -          5
"
    );
}

#[test]
fn workloads_table() {
    let reply = json!([
        { "name": "frontend", "cgroup": "sockmesh-test-42/frontend", "cgroup_id": 4242,
          "labels": { "team": "web", "tier": "1" }, "threads": 8,
          "runqueue": { "count": 5000, "mean_us": 1520.25, "over_1ms": 812 },
          "throttled_seconds": 1.25, "nr_throttled": 40 },
        { "name": "idle", "cgroup": "sockmesh-test-42/idle", "cgroup_id": 4243,
          "labels": {}, "threads": 1,
          "runqueue": { "count": 0, "mean_us": null, "over_1ms": 0 },
          "throttled_seconds": 0.0, "nr_throttled": 0 }
    ]);
    assert_eq!(
        workloads(&reply).unwrap(),
        "\
NAME       CGROUP                      THREADS   RUNQ-WAITS   RUNQ-MEAN(us)   RUNQ>1ms   THROTTLED(s)   NR-THROTTLED   LABELS
frontend   sockmesh-test-42/frontend   8         5000         1520.2          812        1.250          40             team=web,tier=1
idle       sockmesh-test-42/idle       1         0            -               0          0.000          0              -
"
    );
}

#[test]
fn failures_table() {
    let reply = json!([
        { "unix_ms": 1763800000123u64, "service": "web", "backend": "127.0.0.3:18081",
          "caller": "frontend", "result": "refused", "duration_ms": 0.2 },
        { "unix_ms": 1763799999000u64, "service": "api", "backend": null,
          "caller": "other", "result": "no_backend", "duration_ms": 0 }
    ]);
    assert_eq!(
        failures(&reply).unwrap(),
        "\
TIME                       SERVICE   BACKEND           CALLER     RESULT       DURATION(ms)
2025-11-22T08:26:40.123Z   web       127.0.0.3:18081   frontend   refused      0.2
2025-11-22T08:26:39.000Z   api       -                 other      no_backend   0
"
    );
}

#[test]
fn bans_table() {
    let reply = json!([
        { "service": "web", "backend": "127.0.0.3:18081", "state": "banned",
          "reason": "consecutive_failures", "streak": 1, "remaining_seconds": 29.5213 },
        { "service": "web", "backend": "127.0.0.4:18081", "state": "banned",
          "reason": "deviation_latency", "streak": 4, "remaining_seconds": 245.0 },
        { "service": "api", "backend": "[fd00::2]:8081", "state": "probing",
          "reason": "failure_ratio", "streak": 2, "remaining_seconds": 0.0 }
    ]);
    assert_eq!(
        bans(&reply).unwrap(),
        "\
SERVICE   BACKEND           STATE     REASON                 STREAK   REMAINING
web       127.0.0.3:18081   banned    consecutive_failures   1        29.5s
web       127.0.0.4:18081   banned    deviation_latency      4        4m05s
api       [fd00::2]:8081    probing   failure_ratio          2        -
"
    );
    assert_eq!(
        bans(&json!([])).unwrap(),
        "SERVICE   BACKEND   STATE   REASON   STREAK   REMAINING\n"
    );
}

#[test]
fn circuits_table() {
    let reply = json!([
        { "service": "web", "state": "closed", "admit_percent": 100.0,
          "reopens_in_seconds": null, "panic_mode": false, "min_priority": 0,
          "fault_refuse_percent": 25.0 },
        { "service": "api", "state": "open", "admit_percent": 0.0,
          "reopens_in_seconds": 4.31, "panic_mode": true, "min_priority": 2,
          "fault_refuse_percent": 0.0 },
        { "service": "batch", "state": "half_open", "admit_percent": 12.5,
          "reopens_in_seconds": null, "panic_mode": false, "min_priority": 1,
          "fault_refuse_percent": 0.0001 },
        { "service": "new", "state": "closed", "admit_percent": 100.0, "min_priority": 7 }
    ]);
    assert_eq!(
        circuits(&reply).unwrap(),
        "\
SERVICE   STATE         ADMIT%   PANIC   SHED>=    FAULT%
web       closed        100      no      -         25
api       open (4.3s)   0        yes     online    0
batch     half_open     12.5     no      offline   0.0001
new       closed        100      -       7         -
"
    );
}

#[test]
fn durations_and_percentages() {
    use super::super::table::{percent, seconds};
    let secs = |x: f64| seconds(Some(&json!(x)));
    assert_eq!(secs(0.0), "0.0s");
    assert_eq!(secs(-0.5), "0.0s");
    assert_eq!(secs(59.94), "59.9s");
    assert_eq!(secs(59.96), "1m00s");
    assert_eq!(secs(3599.4), "59m59s");
    assert_eq!(secs(3600.0), "1h00m");
    assert_eq!(secs(7385.0), "2h03m");
    assert_eq!(seconds(Some(&json!(null))), "-");
    let pct = |x: f64| percent(Some(&json!(x)));
    assert_eq!(pct(25.0), "25");
    assert_eq!(pct(100.0), "100");
    assert_eq!(pct(0.0), "0");
    assert_eq!(pct(-0.0), "0");
    assert_eq!(pct(33.333333), "33.3333");
    assert_eq!(pct(10.5), "10.5");
    assert_eq!(percent(Some(&json!(50))), "50");
    assert_eq!(percent(None), "-");
}

#[test]
fn fault_reply_is_one_sentence() {
    assert_eq!(
        fault(&json!({"service": "web", "refuse_percent": 25.0})).unwrap(),
        "fault drill on web: refusing 25% of connects\n"
    );
    assert_eq!(
        fault(&json!({"service": "web", "refuse_percent": 0.5})).unwrap(),
        "fault drill on web: refusing 0.5% of connects\n"
    );
    assert_eq!(
        fault(&json!({"service": "web", "refuse_percent": 0.0})).unwrap(),
        "fault drill on web ended: no connects refused\n"
    );
    let err = fault(&json!({"service": "web"})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent's reply is not a JSON object with the service and its refuse_percent \
         (try -o json to see it)"
    );
    assert!(fault(&json!([])).is_err());
}

#[test]
fn wrong_shapes_are_reported_not_rendered() {
    let err = services(&json!({"error": "x"})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent's reply is not a JSON array of services (try -o json to see it)"
    );
    assert!(status(&json!([])).is_err());
    assert!(backends(&json!(null)).is_err());
    assert!(workloads(&json!("x")).is_err());
    assert!(failures(&json!(1)).is_err());
    assert!(bans(&json!({})).is_err());
    assert!(circuits(&json!({"web": {}})).is_err());
}

#[test]
fn control_characters_cannot_break_a_row() {
    let reply = json!([{ "name": "w", "cgroup": "a\nb\u{1b}[31m", "labels": {"k": "v\tw"} }]);
    let shown = workloads(&reply).unwrap();
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(shown.contains("a\\nb\\u{1b}[31m"), "{shown}");
    assert!(shown.contains("k=v\\tw"), "{shown}");
}

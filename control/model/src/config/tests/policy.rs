//! The per-service health policy: defaults, YAML shape, and one rejection per rule.

use std::time::Duration;

use super::*;
use crate::{LimitsSpec, Priority, Span};

const WITH_POLICY: &str = "
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
    outlier:
      consecutive_failures: 3
      base_ban: 2s
      max_ban: 1m
      max_banned_percent: 34
    circuit:
      cooldown: 500ms
      half_open_admit_percent: 20
    limits:
      max_connections: 100
      connect_rate: 50
      connect_burst: 10
    allowed_callers: [frontend]
    drain_grace: 3s
workloads:
  - name: frontend
    cgroup: a/frontend
  - name: batch
    cgroup: a/batch
    priority: offline
";

#[test]
fn policy_fields_parse_with_defaults_for_the_rest() {
    let cfg = parse_config(WITH_POLICY).unwrap();
    let web = &cfg.services[0];
    assert_eq!(web.outlier.consecutive_failures, 3);
    assert_eq!(web.outlier.base_ban, Span(Duration::from_secs(2)));
    assert_eq!(web.outlier.max_ban, Span::secs(60));
    assert_eq!(web.outlier.window, Span::secs(10), "default kept");
    assert_eq!(web.circuit.cooldown, Span::millis(500));
    assert_eq!(web.limits.max_connections, Some(100));
    assert_eq!(web.limits.max_connections_per_caller, None);
    assert_eq!(
        web.allowed_callers.as_deref(),
        Some(&["frontend".into()][..])
    );
    assert_eq!(web.drain_grace, Span::secs(3));
    assert_eq!(cfg.workloads[0].priority, Priority::Online);
    assert_eq!(cfg.workloads[1].priority, Priority::Offline);
    assert!(Priority::Online.level() > Priority::Offline.level());
}

#[test]
fn a_service_without_policy_gets_safe_defaults() {
    let cfg = parse_config(ONE_SERVICE).unwrap();
    let web = &cfg.services[0];
    assert_eq!(web.outlier.max_banned_percent, 50);
    assert_eq!(web.circuit.half_open_admit_percent, 10);
    assert_eq!(web.limits, LimitsSpec::default());
    assert_eq!(web.drain_grace, Span::secs(10));
    assert!(web.allowed_callers.is_none());
}

#[test]
fn policy_round_trips_through_yaml() {
    let cfg = parse_config(WITH_POLICY).unwrap();
    let text = serde_yaml::to_string(&cfg).unwrap();
    assert_eq!(parse_config(&text).unwrap(), cfg);
}

fn with(edit: impl FnOnce(&mut ServiceSpec)) -> MeshConfig {
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    edit(&mut web);
    mesh(vec![web])
}

/// A change to a valid service that breaks one rule.
type Edit = Box<dyn FnOnce(&mut ServiceSpec)>;

#[test]
fn each_policy_rule_names_its_field() {
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|s| s.outlier.failure_ratio = 1.5),
            "services[0].outlier.failure_ratio",
            "between 0 and 1",
        ),
        (
            Box::new(|s| s.outlier.failure_ratio = f64::NAN),
            "services[0].outlier.failure_ratio",
            "between 0 and 1",
        ),
        (
            Box::new(|s| s.outlier.deviation_factor = 0.5),
            "services[0].outlier.deviation_factor",
            "at least 1",
        ),
        (
            Box::new(|s| s.outlier.window = Span::secs(0)),
            "services[0].outlier.window",
            "longer than 0",
        ),
        (
            Box::new(|s| s.outlier.base_ban = Span::secs(0)),
            "services[0].outlier.base_ban",
            "longer than 0",
        ),
        (
            Box::new(|s| s.outlier.max_ban = Span::secs(1)),
            "services[0].outlier.max_ban",
            "at least base_ban",
        ),
        (
            Box::new(|s| s.outlier.max_banned_percent = 101),
            "services[0].outlier.max_banned_percent",
            "between 0 and 100",
        ),
        (
            Box::new(|s| s.outlier.probe_timeout = Span::secs(0)),
            "services[0].outlier.probe_timeout",
            "longer than 0",
        ),
        (
            Box::new(|s| s.circuit.min_success_ratio = -0.1),
            "services[0].circuit.min_success_ratio",
            "between 0 and 1",
        ),
        (
            Box::new(|s| s.circuit.window = Span::secs(0)),
            "services[0].circuit.window",
            "longer than 0",
        ),
        (
            Box::new(|s| s.circuit.cooldown = Span::secs(0)),
            "services[0].circuit.cooldown",
            "longer than 0",
        ),
        (
            Box::new(|s| s.circuit.max_cooldown = Span::secs(1)),
            "services[0].circuit.max_cooldown",
            "at least cooldown",
        ),
        (
            Box::new(|s| s.circuit.half_open_admit_percent = 0),
            "services[0].circuit.half_open_admit_percent",
            "between 1 and 100",
        ),
        (
            Box::new(|s| s.circuit.half_open_successes = 0),
            "services[0].circuit.half_open_successes",
            "at least 1",
        ),
        (
            Box::new(|s| s.limits.max_connections = Some(0)),
            "services[0].limits.max_connections",
            "at least 1",
        ),
        (
            Box::new(|s| s.limits.connect_rate = Some(0)),
            "services[0].limits.connect_rate",
            "at least 1",
        ),
        (
            Box::new(|s| s.limits.connect_burst = Some(5)),
            "services[0].limits.connect_burst",
            "needs limits.connect_rate",
        ),
        (
            Box::new(|s| s.allowed_callers = Some(vec!["ghost".into()])),
            "services[0].allowed_callers[0]",
            "not a workload",
        ),
    ];
    for (edit, path, fragment) in cases {
        assert_invalid(&with(edit), path, fragment);
    }
}

#[test]
fn bad_durations_and_priorities_are_decode_errors_with_a_path() {
    let bad_unit = WITH_POLICY.replace("base_ban: 2s", "base_ban: 2y");
    assert_rejected(&bad_unit, "services[0].outlier.base_ban", "unknown unit");
    let bad_priority = WITH_POLICY.replace("priority: offline", "priority: low");
    assert_rejected(&bad_priority, "workloads[1].priority", "unknown variant");
    let typo = WITH_POLICY.replace("consecutive_failures: 3", "consecutive_failure: 3");
    assert_rejected(
        &typo,
        "services[0].outlier.consecutive_failure",
        "unknown field",
    );
}

use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::code::Code;
use crate::report::Try;
use crate::retry::Outcome;

fn backend(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request of `service` answered by `backend` with `status` (gRPC `grpc` if given).
fn report(service: &str, backend: SocketAddr, status: u16, grpc: Option<u8>) -> Report {
    Report {
        service: service.into(),
        caller: None,
        backend: Some(backend),
        status: StatusCode::from_u16(status).unwrap(),
        code: grpc.map_or(Code::http(status), |g| {
            Code::grpc(Some(g.to_string().as_bytes()))
        }),
        duration: Duration::from_millis(1),
        tries: vec![Try {
            backend,
            outcome: Outcome::Status(status),
            elapsed: Duration::from_millis(1),
        }],
        retries: Vec::new(),
    }
}

fn feedback(services: &[&str]) -> Feedback {
    let feedback = Feedback::new(&mut Registry::default());
    let names: Vec<Arc<str>> = services.iter().map(|&s| s.into()).collect();
    feedback.targets_changed(names.iter().map(|n| (n.clone(), Rules::default())), &[]);
    feedback
}

#[test]
fn failures_are_5xx_grpc_server_errors_and_unanswered_requests() {
    let b = backend(1);
    assert!(failed(&report("shop", b, 503, None)));
    assert!(failed(&report("shop", b, 200, Some(13))), "INTERNAL");
    assert!(failed(&report("shop", b, 200, Some(14))), "UNAVAILABLE");
    assert!(
        !failed(&report("shop", b, 200, Some(5))),
        "NOT_FOUND is the caller's"
    );
    assert!(!failed(&report("shop", b, 200, Some(0))));
    assert!(!failed(&report("shop", b, 404, None)));
    let mut left = report("shop", b, CLIENT_CLOSED, None);
    left.backend = None;
    assert!(failed(&left), "never answered");
}

#[test]
fn tallies_per_known_service_and_nothing_to_say_is_none() {
    let feedback = feedback(&["shop", "cart"]);
    assert_eq!(feedback.take_report(), None);
    for status in [200, 200, 500] {
        feedback.request_done(&report("shop", backend(1), status, None));
    }
    feedback.request_done(&report("gone", backend(1), 500, None));
    let got = feedback.take_report().unwrap();
    assert_eq!(
        got.services,
        vec![ServiceTally {
            service: "shop".into(),
            requests: 3,
            failed: 1,
            within: Vec::new(),
            backends: vec![BackendTally {
                backend: backend(1),
                requests: 3,
                failed: 1,
                gateway: 0,
            }],
        }]
    );
    assert!(got.bans.is_empty());
    assert_eq!(feedback.take_report(), None, "drained");
}

#[test]
fn a_run_of_5xx_asks_for_one_ban_until_forgotten() {
    let feedback = feedback(&["shop"]);
    for _ in 0..12 {
        feedback.request_done(&report("shop", backend(1), 502, None));
    }
    let got = feedback.take_report().unwrap();
    let ban = BanRequest {
        service: "shop".into(),
        backend: backend(1),
        reason: "consecutive_5xx".into(),
    };
    assert_eq!(got.bans, vec![ban.clone()]);
    assert_eq!(got.services[0].failed, 12);

    feedback.request_done(&report("shop", backend(1), 502, None));
    assert!(feedback.take_report().unwrap().bans.is_empty(), "same run");
    let names: [Arc<str>; 1] = [Arc::from("shop")];
    feedback.targets_changed(
        names.iter().map(|n| (n.clone(), Rules::default())),
        &[(names[0].clone(), backend(1))],
    );
    for _ in 0..5 {
        feedback.request_done(&report("shop", backend(1), 502, None));
    }
    assert_eq!(feedback.take_report().unwrap().bans, vec![ban], "a new run");
}

#[test]
fn requests_are_counted_under_each_latency_threshold_and_the_services_own_5xx_rule() {
    let feedback = Feedback::new(&mut Registry::default());
    let shop: Arc<str> = "shop".into();
    let rules = Rules {
        consecutive_5xx: 2,
        latency_thresholds_us: vec![5_000, 50_000],
    };
    feedback.targets_changed([(shop.clone(), rules)], &[]);
    for ms in [1, 10, 100] {
        let mut r = report("shop", backend(1), 200, None);
        r.duration = Duration::from_millis(ms);
        feedback.request_done(&r);
    }
    let got = feedback.take_report().unwrap();
    assert_eq!(got.services[0].within, vec![(5_000, 1), (50_000, 2)]);
    // Two failures in a row are this service's threshold, not the default five.
    for _ in 0..2 {
        feedback.request_done(&report("shop", backend(1), 503, None));
    }
    let got = feedback.take_report().unwrap();
    assert_eq!(got.bans.len(), 1, "{got:?}");
    assert_eq!(got.bans[0].reason, "consecutive_5xx");
}

#[test]
fn requests_are_counted_for_the_backend_that_answered_or_was_tried_last() {
    let feedback = feedback(&["shop"]);
    feedback.request_done(&report("shop", backend(1), 200, None));
    feedback.request_done(&report("shop", backend(2), 500, None));
    feedback.request_done(&report("shop", backend(2), 200, Some(14)));
    // The proxy's own 502 after backend 3's try failed, and a 504 after backend 2 hung.
    for (port, status) in [(3, 502), (2, 504)] {
        let mut gateway = report("shop", backend(port), status, None);
        gateway.backend = None;
        gateway.tries[0].outcome = Outcome::ConnectFailure;
        feedback.request_done(&gateway);
    }
    // A retry saved by backend 1 after backend 3 failed: counted for backend 1 only.
    let mut saved = report("shop", backend(1), 200, None);
    saved.tries.insert(
        0,
        Try {
            backend: backend(3),
            outcome: Outcome::Status(503),
            elapsed: Duration::from_millis(1),
        },
    );
    feedback.request_done(&saved);
    // No backend eligible: the service's failure, no backend's.
    let mut none = report("shop", backend(9), 503, None);
    none.backend = None;
    none.tries.clear();
    feedback.request_done(&none);

    let got = feedback.take_report().unwrap();
    let row = |port, requests, failed, gateway| BackendTally {
        backend: backend(port),
        requests,
        failed,
        gateway,
    };
    let tally = &got.services[0];
    assert_eq!((tally.requests, tally.failed), (7, 5));
    assert_eq!(
        tally.backends,
        vec![row(1, 2, 0, 0), row(2, 3, 3, 1), row(3, 1, 1, 1)]
    );
}

#[test]
fn a_tally_names_at_most_the_bounded_number_of_backends() {
    let feedback = feedback(&["shop"]);
    let many = MAX_TALLY_BACKENDS as u16 + 10;
    for port in 1..=many {
        feedback.request_done(&report("shop", backend(port), 500, None));
    }
    // A backend already counted keeps counting.
    feedback.request_done(&report("shop", backend(1), 500, None));
    let got = feedback.take_report().unwrap();
    let tally = &got.services[0];
    assert_eq!(
        tally.requests,
        u64::from(many) + 1,
        "the service counts all"
    );
    assert_eq!(tally.backends.len(), MAX_TALLY_BACKENDS);
    assert_eq!(tally.backends[0].requests, 2);
}

#[test]
fn exports_exactly_the_families_of_deploy_proxy_metrics_txt() {
    let mut registry = crate::exporter::registry();
    let feedback = Feedback::new(&mut registry);
    let mut retried = report("shop", backend(1), 200, None);
    retried.retries = vec![Outcome::Status(503).reason()];
    feedback.request_done(&retried);
    // One label set past the bound: the fold into `other` is counted.
    for port in 0..=crate::metrics::MAX_SERIES_PER_FAMILY as u16 {
        feedback.request_done(&report("shop", backend(port), 200, None));
    }
    let text = crate::exporter::encode(&registry);
    let encoded: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| match l.split_once(' ')? {
            (name, "counter") => Some(format!("{name}_total")),
            (name, _) => Some(name.to_owned()),
        })
        .collect();
    let listed: std::collections::BTreeSet<String> = include_str!("../../deploy/proxy-metrics.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(encoded, listed);
}

//! `backend_errors` on hand-made request counts: alone, against the other causes, and in the
//! cases it must not claim.

use super::super::score::{
    diagnose, BackendRequests, BackendSignals, BanNow, Cause, CircuitNow, DiagnoseInput, Diagnosis,
    Refusals, RequestSignals, RequestWindow, SloBurn,
};

fn window(requests: u64, failed: u64, gateway: u64) -> RequestWindow {
    RequestWindow {
        requests,
        failed,
        gateway,
    }
}

fn backend(port: u16, requests: u64, failed: u64) -> BackendRequests {
    BackendRequests {
        addr: format!("127.0.0.{port}:80"),
        recent: window(requests, failed, 0),
        ..BackendRequests::default()
    }
}

/// An http service whose three backends answered `rows`; the service's own counts are
/// theirs plus `unattributed` failed requests no backend was tried for.
fn http(rows: Vec<BackendRequests>, unattributed: u64) -> DiagnoseInput {
    let requests: u64 = rows.iter().map(|b| b.recent.requests).sum::<u64>() + unattributed;
    let failed: u64 = rows.iter().map(|b| b.recent.failed).sum::<u64>() + unattributed;
    DiagnoseInput {
        service: "shop".into(),
        recent_secs: 60.0,
        baseline_secs: 300.0,
        // The kernel sees only the connects to the proxy: no per-backend connect signals.
        backends: rows
            .iter()
            .map(|b| BackendSignals {
                addr: b.addr.clone(),
                ..BackendSignals::default()
            })
            .collect(),
        workloads: Vec::new(),
        refusals: Refusals::default(),
        circuit: Some(CircuitNow {
            state: "closed".into(),
            panic_mode: false,
        }),
        slos: vec![SloBurn {
            slo: "success".into(),
            sli: "request_success".into(),
            burn_5m: 300.0,
            burn_1h: 30.0,
        }],
        requests: RequestSignals {
            recent: window(requests, failed, 0),
            baseline: RequestWindow::default(),
            backends: rows,
        },
    }
}

/// Cause `name` of `d`.
fn cause<'a>(d: &'a Diagnosis, name: &str) -> &'a Cause {
    d.causes
        .iter()
        .find(|c| c.cause == name)
        .unwrap_or_else(|| panic!("no cause {name}"))
}

fn score(d: &Diagnosis) -> f64 {
    cause(d, "backend_errors").score
}

#[test]
fn one_backend_answering_500_ranks_backend_errors_first_and_names_it() {
    let mut rows = vec![backend(2, 300, 0), backend(3, 300, 300), backend(4, 300, 0)];
    rows[1].recent.gateway = 0;
    let d = diagnose(&http(rows, 0));
    let top = &d.causes[0];
    assert_eq!((top.cause, top.score), ("backend_errors", 1.0));
    assert_eq!(
        top.evidence[0],
        "127.0.0.3:80: 300 of 300 requests failed in the last 60 s"
    );
    assert_eq!(
        top.evidence[1],
        "1 of 3 backends carry 100% of the 300 failed requests answered by or tried on a \
         backend (300 of 900 requests failed, 33.3%)"
    );
    assert!(
        top.evidence
            .iter()
            .any(|e| e == "SLO success (request_success) burning 30.0x over 1h, 300.0x over 5m"),
        "{:?}",
        top.evidence
    );
    assert!(
        d.causes[1..].iter().all(|c| c.score == 0.0),
        "{:?}",
        d.causes
    );
    assert!(d
        .summary
        .starts_with("shop: most likely backend_errors (score 1.00) (SLO success burning 30.0x"));
}

#[test]
fn gateway_errors_count_and_are_named() {
    let mut hung = backend(3, 100, 100);
    hung.recent.gateway = 100;
    let d = diagnose(&http(vec![backend(2, 400, 0), hung, backend(4, 400, 0)], 0));
    assert_eq!(d.causes[0].cause, "backend_errors");
    assert!(
        d.causes[0].evidence[0].contains("100 the proxy answered 502/504 after its try"),
        "{}",
        d.causes[0].evidence[0]
    );
}

#[test]
fn errors_on_every_backend_are_not_a_few_backends() {
    let rows = (2..5).map(|p| backend(p, 300, 300)).collect();
    let d = diagnose(&http(rows, 0));
    assert_eq!(score(&d), 0.5, "concentration 1, fewness 0.5, severity 1");
}

#[test]
fn thin_errors_and_noise_score_nothing() {
    // 1 % everywhere: no backend errs.
    let rows = (2..5).map(|p| backend(p, 300, 3)).collect();
    let d = diagnose(&http(rows, 0));
    assert_eq!(score(&d), 0.0);
    let e = &cause(&d, "backend_errors").evidence;
    assert!(e[0].contains("spread thinly"), "{e:?}");
    // Fewer than five failed requests in all.
    let d = diagnose(&http(vec![backend(2, 4, 4), backend(3, 100, 0)], 0));
    assert_eq!(score(&d), 0.0);
}

#[test]
fn a_small_share_of_the_service_scales_the_severity() {
    // 10 of 1000 requests failed (1 %), all on one of three backends: severity 0.2.
    let rows = vec![backend(2, 495, 0), backend(3, 10, 10), backend(4, 495, 0)];
    assert_eq!(score(&diagnose(&http(rows, 0))), 0.2);
}

#[test]
fn a_consecutive_5xx_ban_counts_once_traffic_has_moved_away() {
    let mut banned = backend(3, 0, 0);
    banned.ban = Some(BanNow {
        state: "banned".into(),
        reason: "consecutive_5xx".into(),
    });
    let mut i = http(vec![backend(2, 300, 0), banned, backend(4, 300, 0)], 0);
    // Its ban is evidence of backend errors, not of failed connects.
    i.backends[1].ban = i.requests.backends[1].ban.clone();
    let d = diagnose(&i);
    assert_eq!(
        (d.causes[0].cause, d.causes[0].score),
        ("backend_errors", 0.8)
    );
    assert_eq!(
        d.causes[0].evidence[0],
        "127.0.0.3:80: no requests in the last 60 s; banned (consecutive_5xx)"
    );
    let failing = cause(&d, "backends_failing");
    assert_eq!(failing.score, 0.0, "{failing:?}");
}

#[test]
fn failures_that_reach_no_backend_are_said_but_not_blamed() {
    // Every backend ineligible: the proxy answers 503 itself.
    let rows = (2..5).map(|p| backend(p, 0, 0)).collect();
    let d = diagnose(&http(rows, 50));
    assert_eq!(score(&d), 0.0);
    let e = &cause(&d, "backend_errors").evidence;
    assert!(
        e.iter()
            .any(|l| l.starts_with("50 failed requests reached no backend")),
        "{e:?}"
    );
}

#[test]
fn chronic_errors_score_less_than_new_ones() {
    let mut rows = vec![backend(2, 300, 0), backend(3, 300, 300), backend(4, 300, 0)];
    rows[1].baseline = window(1500, 1500, 0);
    let d = diagnose(&http(rows, 0));
    assert_eq!(score(&d), 0.8);
}

#[test]
fn a_tcp_service_has_no_requests_to_judge() {
    let mut i = http(Vec::new(), 0);
    i.requests = RequestSignals::default();
    let d = diagnose(&i);
    let c = cause(&d, "backend_errors");
    assert_eq!(c.score, 0.0);
    assert_eq!(
        c.evidence,
        ["no requests through the node's L7 proxy in the last 360 s"]
    );
}

#[test]
fn equal_scores_leave_backend_errors_after_the_kernel_causes() {
    // A dead tcp-side backend and an erring http one both score 1: the fixed order holds.
    let mut i = http(
        vec![backend(2, 300, 0), backend(3, 300, 300), backend(4, 300, 0)],
        0,
    );
    i.backends[1].recent.refused = 200;
    i.backends[0].recent.ok = 200;
    i.backends[2].recent.ok = 200;
    let d = diagnose(&i);
    let order: Vec<&str> = d.causes.iter().take(2).map(|c| c.cause).collect();
    assert_eq!(order, ["backends_failing", "backend_errors"]);
}

//! The `backend_errors` cause (http services): the requests that fail come from a few
//! backends. The kernel sees an http service's connects end at the node's proxy, so the
//! connect-based `backends_failing` cannot see a backend answering 500; the proxy's
//! per-backend request counts can (`sockmesh_proxy::link::BackendTally`).
//!
//! A backend is *erring* when at least 3 and at least [`ERRING_RATIO`] of the requests
//! counted for it failed (answered 5xx or a gRPC server error, or the proxy's own 502/504
//! after its try, or never answered), or when it is banned for `consecutive_5xx`. With k of
//! n backends erring: score = concentration x fewness x severity, as for
//! `backends_failing`: the erring backends' share of the failed requests counted for
//! backends, 1 - 0.5 (k - 1)/(n - 1), and the service's failed-request share over
//! [`FULL_REQUEST_FAILURE_SHARE`] capped at 1; at least [`MIN_FAILED_REQUESTS`] failed. A
//! `consecutive_5xx` ban scores at least 0.8 x fewness; erring as much in the baseline is
//! chronic (x [`CHRONIC`]).

use super::causes::{fewness, pct};
use super::score::{
    BackendRequests, Cause, DiagnoseInput, RequestWindow, CHRONIC, FULL_REQUEST_FAILURE_SHARE,
    MIN_FAILED_REQUESTS,
};

pub(super) fn backend_errors(input: &DiagnoseInput) -> Cause {
    let window = input.recent_secs;
    let req = &input.requests;
    let n = req.backends.len();
    let service = &req.recent;
    let counted: u64 = req.backends.iter().map(|b| b.recent.failed).sum();
    let service_failed = service.failed.max(counted);
    let service_requests = service.requests.max(service_failed);
    let banned = |b: &BackendRequests| b.ban.as_ref().is_some_and(|x| x.for_request_errors());
    let mut erring: Vec<&BackendRequests> = req
        .backends
        .iter()
        .filter(|b| b.recent.erring() || banned(b))
        .collect();
    erring.sort_by_key(|b| std::cmp::Reverse(b.recent.failed));

    let mut evidence = Vec::new();
    if service_requests == 0 && req.baseline.requests == 0 && erring.is_empty() {
        evidence.push(format!(
            "no requests through the node's L7 proxy in the last {:.0} s",
            input.recent_secs + input.baseline_secs
        ));
        return Cause {
            cause: "backend_errors",
            score: 0.0,
            evidence,
        };
    }
    for b in &erring {
        evidence.push(line(b, window));
    }
    let on_erring: u64 = erring.iter().map(|b| b.recent.failed).sum();
    let mut score: f64 = 0.0;
    if service_failed >= MIN_FAILED_REQUESTS && !erring.is_empty() && counted > 0 {
        let concentration = on_erring as f64 / counted as f64;
        let severity =
            (service_failed as f64 / service_requests.max(1) as f64 / FULL_REQUEST_FAILURE_SHARE)
                .min(1.0);
        score = concentration * fewness(erring.len(), n) * severity;
        evidence.push(format!(
            "{} of {n} backends carry {:.0}% of the {counted} failed requests answered by or \
             tried on a backend ({service_failed} of {service_requests} requests failed, {:.1}%)",
            erring.len(),
            pct(on_erring, counted),
            pct(service_failed, service_requests)
        ));
    } else if service_failed > 0 && erring.is_empty() {
        evidence.push(format!(
            "{service_failed} of {service_requests} requests failed in the last {window:.0} s, \
             spread thinly: no backend fails a fifth of its requests"
        ));
    } else if service_failed == 0 {
        evidence.push(format!(
            "no failed requests among {service_requests} in the last {window:.0} s"
        ));
    }
    let unattributed = service_failed.saturating_sub(counted);
    if unattributed > 0 {
        evidence.push(format!(
            "{unattributed} failed requests reached no backend (503: none eligible, or the \
             caller left before a try)"
        ));
    }
    if erring.iter().any(|b| banned(b)) {
        score = score.max(0.8 * fewness(erring.len(), n));
    }
    let chronic = !erring.is_empty()
        && erring
            .iter()
            .all(|b| b.baseline.requests > 0 && b.baseline.erring());
    if chronic {
        score *= CHRONIC;
        evidence.push("the same backends were answering errors in the 5 min before".to_owned());
    }
    if score > 0.0 {
        for s in input.slos.iter().filter(|s| s.sli.starts_with("request_")) {
            if s.burn_1h > 0.0 || s.burn_5m > 0.0 {
                evidence.push(format!(
                    "SLO {} ({}) burning {:.1}x over 1h, {:.1}x over 5m",
                    s.slo, s.sli, s.burn_1h, s.burn_5m
                ));
            }
        }
    }
    Cause {
        cause: "backend_errors",
        score,
        evidence,
    }
}

/// `ADDR: F of N requests failed in the last 60 s (gateway errors G); banned
/// (consecutive_5xx); before: F' of N'`.
fn line(b: &BackendRequests, window: f64) -> String {
    let r: &RequestWindow = &b.recent;
    let mut line = if r.requests > 0 {
        format!(
            "{}: {} of {} requests failed in the last {window:.0} s",
            b.addr, r.failed, r.requests
        )
    } else {
        format!("{}: no requests in the last {window:.0} s", b.addr)
    };
    if r.gateway > 0 {
        line.push_str(&format!(
            " ({} the proxy answered 502/504 after its try: no answer in time or a broken \
             connection)",
            r.gateway
        ));
    }
    if let Some(ban) = &b.ban {
        line.push_str(&format!("; {} ({})", ban.state, ban.reason));
    }
    if b.baseline.requests > 0 {
        line.push_str(&format!(
            "; before: {} of {}",
            b.baseline.failed, b.baseline.requests
        ));
    }
    line
}

#[cfg(test)]
#[path = "backend_errors_tests.rs"]
mod tests;

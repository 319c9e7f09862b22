//! The caller x service "line" view and the `top` ranking of services, from the
//! [`Recorder`] and the SLO tracker's samples. Pure: `now` and the service names come in.

use serde::Serialize;

use super::record::{ConnTally, Recorder, RequestTally, LAST, PREVIOUS};
use crate::slo::{BurnWindow, SloSample};

/// One period of one line, as `/v1/lines` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Period {
    pub ok: u64,
    pub failed: u64,
    pub refused_by_mesh: u64,
    pub handshake_mean_ms: Option<f64>,
}

impl From<&ConnTally> for Period {
    fn from(t: &ConnTally) -> Self {
        Self {
            ok: t.ok,
            failed: t.failed,
            refused_by_mesh: t.mesh_refused,
            handshake_mean_ms: t.handshake_mean_ms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Line {
    pub service: String,
    pub caller: String,
    pub last: Period,
    pub previous: Period,
}

/// Every (service, caller) pair with connects in the last 10 min, for the configured
/// `services` only, sorted by service then caller.
pub(crate) fn lines(rec: &Recorder, now: tokio::time::Instant, services: &[String]) -> Vec<Line> {
    let mut pairs: Vec<(String, String)> = rec
        .lines(now, LAST)
        .chain(rec.lines(now, PREVIOUS))
        .filter(|(s, _)| services.iter().any(|n| n == s))
        .map(|(s, c)| (s.to_owned(), c.to_owned()))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
        .into_iter()
        .map(|(service, caller)| Line {
            last: Period::from(&rec.line(now, &service, &caller, LAST)),
            previous: Period::from(&rec.line(now, &service, &caller, PREVIOUS)),
            service,
            caller,
        })
        .collect()
}

/// `{"last": .., "previous": ..}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Pair<T> {
    pub last: T,
    pub previous: T,
}

/// One service in `top`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TopRow {
    pub rank: usize,
    pub service: String,
    /// The SLO burning fastest over 1h, and that burn rate (`None` without SLOs).
    pub worst_slo: Option<String>,
    pub burn_1h: Option<f64>,
    pub connects: Pair<u64>,
    pub failed: Pair<u64>,
    /// Failed connects in the last 5 min minus the 5 min before.
    pub failure_growth: i64,
    pub handshake_mean_ms: Pair<Option<f64>>,
    /// Mean handshake of the last 5 min over the 5 min before (`None` unless both had one).
    pub latency_growth: Option<f64>,
    /// An http service's requests through the node's L7 proxy (`None`: no requests in
    /// the last 10 min, as for a tcp service).
    pub requests: Option<RequestRow>,
}

/// The request SLIs of one http service in `top`, the last 5 min against the 5 min before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RequestRow {
    pub requests: Pair<u64>,
    /// Failed as `request_success` counts them: 5xx, gRPC server errors, never answered.
    pub failed: Pair<u64>,
    /// Requests per second over the last 5 min (over the time since the agent started, if
    /// shorter).
    pub rate_per_second: f64,
    /// The share of the last 5 min's requests that did not fail (`None` without requests).
    pub success: Option<f64>,
    /// The tightest `request_latency` threshold and the share of the last 5 min's requests
    /// within it (`None` without a latency SLO or requests).
    pub latency: Option<LatencyShare>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LatencyShare {
    pub threshold_ms: f64,
    pub within: f64,
}

impl RequestRow {
    fn of(last: &RequestTally, previous: &RequestTally, observed_secs: f64) -> Option<Self> {
        if last.requests == 0 && previous.requests == 0 {
            return None;
        }
        let share = |n: u64| (last.requests > 0).then(|| n as f64 / last.requests as f64);
        let latency = last.within.first_key_value().and_then(|(us, n)| {
            Some(LatencyShare {
                threshold_ms: *us as f64 / 1e3,
                within: share((*n).min(last.requests))?,
            })
        });
        Some(Self {
            requests: Pair {
                last: last.requests,
                previous: previous.requests,
            },
            failed: Pair {
                last: last.failed,
                previous: previous.failed,
            },
            rate_per_second: last.requests as f64 / observed_secs,
            success: share(last.requests.saturating_sub(last.failed)),
            latency,
        })
    }

    /// Failed requests in the last 5 min minus the 5 min before.
    fn failure_growth(&self) -> i64 {
        self.failed.last as i64 - self.failed.previous as i64
    }
}

/// Every configured service, worst first: by 1h burn of its worst SLO, then failure growth
/// (failed connects, plus failed requests for an http service), then latency growth (a
/// service without SLOs burns 0; no latency figure counts as 1, no change); equal rows by
/// name.
pub(crate) fn top(
    rec: &Recorder,
    now: tokio::time::Instant,
    services: &[String],
    slos: &[SloSample],
) -> Vec<TopRow> {
    let mut rows: Vec<TopRow> = services
        .iter()
        .map(|service| {
            let worst = slos
                .iter()
                .filter(|s| &s.service == service)
                .map(|s| (s.slo.clone(), burn_1h(s)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let last = rec.service(now, service, LAST);
            let previous = rec.service(now, service, PREVIOUS);
            let (hl, hp) = (last.handshake_mean_ms(), previous.handshake_mean_ms());
            TopRow {
                rank: 0,
                service: service.clone(),
                burn_1h: worst.as_ref().map(|w| w.1),
                worst_slo: worst.map(|w| w.0),
                connects: Pair {
                    last: last.ok + last.failed,
                    previous: previous.ok + previous.failed,
                },
                failed: Pair {
                    last: last.failed,
                    previous: previous.failed,
                },
                failure_growth: last.failed as i64 - previous.failed as i64,
                handshake_mean_ms: Pair {
                    last: hl,
                    previous: hp,
                },
                latency_growth: match (hl, hp) {
                    (Some(l), Some(p)) if p > 0.0 => Some(l / p),
                    _ => None,
                },
                requests: RequestRow::of(
                    &rec.requests(now, service, LAST),
                    &rec.requests(now, service, PREVIOUS),
                    rec.observed_secs(now, LAST),
                ),
            }
        })
        .collect();
    rank(&mut rows);
    rows
}

fn burn_1h(s: &SloSample) -> f64 {
    s.burn
        .iter()
        .find(|(w, _)| *w == BurnWindow::OneHour)
        .map_or(0.0, |(_, b)| *b)
}

/// Sorts worst first and numbers the rows from 1.
pub(crate) fn rank(rows: &mut [TopRow]) {
    rows.sort_by(|a, b| {
        let burn = |r: &TopRow| r.burn_1h.unwrap_or(0.0);
        let growth = |r: &TopRow| r.latency_growth.unwrap_or(1.0);
        let failures = |r: &TopRow| {
            r.failure_growth + r.requests.as_ref().map_or(0, RequestRow::failure_growth)
        };
        burn(b)
            .total_cmp(&burn(a))
            .then(failures(b).cmp(&failures(a)))
            .then(growth(b).total_cmp(&growth(a)))
            .then(a.service.cmp(&b.service))
    });
    for (i, row) in rows.iter_mut().enumerate() {
        row.rank = i + 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sockmesh_common::{ConnEvent, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_OK, RESULT_REFUSED};
    use tokio::time::Instant;

    use super::*;

    fn connect(r: &mut Recorder, at: Instant, service: &str, caller: &str, ok: bool, ms: u64) {
        let ev = ConnEvent {
            kind: if ok { EVENT_ESTABLISHED } else { EVENT_FAILED },
            result: if ok { RESULT_OK } else { RESULT_REFUSED },
            duration_ns: ms * 1_000_000,
            ..ConnEvent::ZERO
        };
        r.on_connect(at, service, "127.0.0.2:80", caller, &ev);
    }

    fn slo(service: &str, name: &str, burn_1h: f64) -> SloSample {
        SloSample {
            service: service.into(),
            slo: name.into(),
            sli: "connect_success",
            objective: 0.999,
            window_secs: 2_592_000.0,
            good_total: 0,
            total: 0,
            budget_remaining: 1.0,
            burn: [
                (BurnWindow::FiveMinutes, 0.0),
                (BurnWindow::ThirtyMinutes, 0.0),
                (BurnWindow::OneHour, burn_1h),
                (BurnWindow::SixHours, 0.0),
            ],
        }
    }

    #[test]
    fn lines_show_both_periods_for_configured_services_only() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        connect(&mut r, t0, "web", "front", true, 2);
        let now = t0 + Duration::from_secs(300);
        connect(&mut r, now, "web", "front", true, 4);
        connect(&mut r, now, "web", "front", false, 0);
        connect(&mut r, now, "web", "batch", true, 1);
        connect(&mut r, now, "gone", "front", true, 1);
        let rows = lines(&r, now, &["web".into()]);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"service": "web", "caller": "batch",
                 "last": {"ok": 1, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": 1.0},
                 "previous": {"ok": 0, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": null}},
                {"service": "web", "caller": "front",
                 "last": {"ok": 1, "failed": 1, "refused_by_mesh": 0, "handshake_mean_ms": 4.0},
                 "previous": {"ok": 1, "failed": 0, "refused_by_mesh": 0, "handshake_mean_ms": 2.0}}
            ])
        );
    }

    #[test]
    fn top_ranks_by_burn_then_failure_growth_then_latency_growth() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        let now = t0 + Duration::from_secs(300);
        // In time order: the recorder's clock is monotonic.
        for _ in 0..3 {
            connect(&mut r, t0, "calm", "c", true, 1);
        }
        for _ in 0..3 {
            connect(&mut r, now, "calm", "c", true, 3);
            connect(&mut r, now, "flaky", "c", false, 0);
        }
        connect(&mut r, now, "web", "c", false, 0);
        let services: Vec<String> = ["calm", "flaky", "idle", "web"].map(String::from).into();
        let slos = [
            slo("web", "availability", 20.0),
            slo("web", "handshake", 2.0),
        ];
        let rows = top(&r, now, &services, &slos);
        let order: Vec<(usize, &str)> = rows.iter().map(|r| (r.rank, r.service.as_str())).collect();
        assert_eq!(order, [(1, "web"), (2, "flaky"), (3, "calm"), (4, "idle")]);
        assert_eq!(rows[0].worst_slo.as_deref(), Some("availability"));
        assert_eq!(rows[0].burn_1h, Some(20.0));
        assert_eq!(rows[1].failure_growth, 3);
        assert_eq!(rows[1].burn_1h, None);
        assert_eq!(rows[2].latency_growth, Some(3.0));
        assert_eq!(
            rows[2].connects,
            Pair {
                last: 3,
                previous: 3
            }
        );
        let json = serde_json::to_value(&rows[2]).unwrap();
        assert_eq!(
            json["handshake_mean_ms"],
            serde_json::json!({"last": 3.0, "previous": 1.0})
        );
        assert_eq!(json["worst_slo"], serde_json::Value::Null);
        assert_eq!(json["requests"], serde_json::Value::Null, "a tcp service");
    }

    #[test]
    fn top_shows_request_slis_of_http_services_and_ranks_their_failures() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        let now = t0 + Duration::from_secs(300);
        let tally = |requests, failed, within: &[(u64, u64)]| RequestTally {
            requests,
            failed,
            gateway: 0,
            within: within.iter().copied().collect(),
        };
        let none = std::iter::empty();
        r.on_requests(t0, "shop", &tally(600, 0, &[(100_000, 600)]), none);
        let latency = [(100_000, 2_700), (250_000, 2_950)];
        r.on_requests(now, "shop", &tally(3_000, 30, &latency), std::iter::empty());
        r.on_requests(now, "cart", &tally(300, 0, &[]), std::iter::empty());
        connect(&mut r, now, "db", "c", false, 0);
        let services: Vec<String> = ["cart", "db", "shop"].map(String::from).into();
        let rows = top(&r, now, &services, &[]);
        let order: Vec<&str> = rows.iter().map(|r| r.service.as_str()).collect();
        assert_eq!(
            order,
            ["shop", "db", "cart"],
            "30 more failed requests rank first"
        );
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(
            json["requests"],
            serde_json::json!({
                "requests": {"last": 3000, "previous": 600},
                "failed": {"last": 30, "previous": 0},
                "rate_per_second": 10.0,
                "success": 0.99,
                "latency": {"threshold_ms": 100.0, "within": 0.9}
            })
        );
        let cart = rows[2].requests.as_ref().unwrap();
        assert_eq!((cart.success, cart.latency.as_ref()), (Some(1.0), None));
        assert_eq!(rows[1].requests, None, "a tcp service");
    }
}

//! The caller x service "line" view and the `top` ranking of services, from the
//! [`Recorder`] and the SLO tracker's samples. Pure: `now` and the service names come in.

use serde::Serialize;

use super::record::{ConnTally, Recorder, LAST, PREVIOUS};
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
}

/// Every configured service, worst first: by 1h burn of its worst SLO, then failure growth,
/// then latency growth (a service without SLOs burns 0; no latency figure counts as 1, no
/// change); equal rows by name.
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
        burn(b)
            .total_cmp(&burn(a))
            .then(b.failure_growth.cmp(&a.failure_growth))
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
    }
}

//! Building a [`DiagnoseInput`] for one service from what the agent holds: the [`Recorder`],
//! the health engine's `/v1/bans` and `/v1/circuits` views, and the SLO samples.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::time::Instant;

use super::{
    record::{BackendTally, CpuTally, Recorder, RequestTally, BASELINE, RECENT},
    score::{
        BackendRequests, BackendSignals, BackendWindow, BanNow, CircuitNow, CpuWindow,
        DiagnoseInput, Refusals, RequestSignals, RequestWindow, Role, SloBurn, WorkloadSignals,
    },
};
use crate::{
    signals::topology,
    slo::{BurnWindow, SloSample},
    tables::ServiceView,
};

/// What besides the recorder diagnosis reads, as the admin API holds it.
pub(crate) struct Context<'a> {
    /// Configured workloads found on this node, by name.
    pub workloads: &'a [String],
    /// Backend address -> the workload whose process listens on it, where known.
    pub backend_workloads: &'a BTreeMap<String, String>,
    /// `/v1/bans` and `/v1/circuits` rows.
    pub bans: &'a Value,
    pub circuits: &'a Value,
    pub slos: &'a [SloSample],
}

pub(crate) fn gather(
    rec: &Recorder,
    now: Instant,
    view: &ServiceView,
    ctx: &Context,
) -> DiagnoseInput {
    let service = view.name.as_str();
    let bans: BTreeMap<&str, BanNow> = rows_of(ctx.bans, service)
        .filter_map(|row| {
            Some((
                row["backend"].as_str()?,
                BanNow {
                    state: row["state"].as_str()?.to_owned(),
                    reason: row["reason"].as_str()?.to_owned(),
                },
            ))
        })
        .collect();
    let backends = view
        .backends
        .iter()
        .map(|b| {
            let (recent, baseline) = windows(rec, now, service, &b.addr);
            BackendSignals {
                addr: b.addr.clone(),
                recent,
                baseline,
                ban: bans.get(b.addr.as_str()).cloned(),
            }
        })
        .collect();

    let mut named: Vec<(String, Role)> = rec
        .lines(now, RECENT)
        .chain(rec.lines(now, BASELINE))
        .filter(|(s, c)| *s == service && *c != topology::UNKNOWN && *c != topology::OTHER)
        .map(|(_, c)| (c.to_owned(), Role::Caller))
        .collect();
    named.extend(view.backends.iter().filter_map(|b| {
        let w = ctx.backend_workloads.get(&b.addr)?;
        Some((w.clone(), Role::Backend))
    }));
    named.sort();
    named.dedup_by(|a, b| a.0 == b.0);
    let workloads = named
        .into_iter()
        .filter(|(name, _)| ctx.workloads.contains(name))
        .filter_map(|(name, role)| {
            Some(WorkloadSignals {
                recent: cpu(&rec.workload(now, &name, RECENT)?),
                baseline: cpu(&rec.workload(now, &name, BASELINE).unwrap_or_default()),
                name,
                role,
            })
        })
        .collect();

    let requests = RequestSignals {
        recent: request_window(&rec.requests(now, service, RECENT)),
        baseline: request_window(&rec.requests(now, service, BASELINE)),
        backends: view
            .backends
            .iter()
            .map(|b| BackendRequests {
                addr: b.addr.clone(),
                recent: request_window(&rec.backend_requests(now, service, &b.addr, RECENT)),
                baseline: request_window(&rec.backend_requests(now, service, &b.addr, BASELINE)),
                ban: bans.get(b.addr.as_str()).cloned(),
            })
            .collect(),
    };
    let conns = rec.service(now, service, RECENT);
    let r = rec.refusals(now, service, RECENT);
    let circuit = rows_of(ctx.circuits, service).next().map(|row| CircuitNow {
        state: row["state"].as_str().unwrap_or("closed").to_owned(),
        panic_mode: row["panic_mode"].as_bool().unwrap_or(false),
    });
    let burn =
        |s: &SloSample, w: BurnWindow| s.burn.iter().find(|(l, _)| *l == w).map_or(0.0, |b| b.1);
    DiagnoseInput {
        service: service.to_owned(),
        recent_secs: RECENT.secs(),
        baseline_secs: BASELINE.secs(),
        backends,
        workloads,
        refusals: Refusals {
            attempts: conns.ok + conns.failed,
            limited: r.limited,
            shed: r.shed,
            circuit_open: r.circuit_open,
        },
        circuit,
        slos: ctx
            .slos
            .iter()
            .filter(|s| s.service == service)
            .map(|s| SloBurn {
                slo: s.slo.clone(),
                sli: s.sli.to_owned(),
                burn_5m: burn(s, BurnWindow::FiveMinutes),
                burn_1h: burn(s, BurnWindow::OneHour),
            })
            .collect(),
        requests,
    }
}

fn request_window(t: &RequestTally) -> RequestWindow {
    RequestWindow {
        requests: t.requests,
        failed: t.failed,
        gateway: t.gateway,
    }
}

fn rows_of<'v>(rows: &'v Value, service: &'v str) -> impl Iterator<Item = &'v Value> + 'v {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(move |row| row["service"] == service)
}

/// The recent and baseline windows of one backend. Connections in a window are those open
/// at its start (worked back from the open count now) plus those established in it.
fn windows(
    rec: &Recorder,
    now: Instant,
    service: &str,
    addr: &str,
) -> (BackendWindow, BackendWindow) {
    let r = rec.backend(now, service, addr, RECENT);
    let b = rec.backend(now, service, addr, BASELINE);
    let open_now = rec.open_now(service, addr);
    let open_at_recent = (open_now + r.closed).saturating_sub(r.established);
    let open_at_baseline = (open_at_recent + b.closed).saturating_sub(b.established);
    (window(&r, open_at_recent), window(&b, open_at_baseline))
}

fn window(t: &BackendTally, open_at_start: u64) -> BackendWindow {
    BackendWindow {
        ok: t.ok,
        refused: t.refused,
        timeout: t.timeout,
        unreachable: t.unreachable,
        connections: open_at_start + t.established,
        retransmits: t.retransmits,
        rtos: t.rtos,
    }
}

fn cpu(t: &CpuTally) -> CpuWindow {
    CpuWindow {
        seconds: t.seconds,
        waits: t.waits,
        wait_sum_us: t.wait_sum_us,
        waits_over_1ms: t.waits_over_1ms,
        nr_throttled: t.nr_throttled,
        throttled_seconds: t.throttled_seconds,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use sockmesh_common::{BackendTcpStats, ConnEvent, EVENT_ESTABLISHED, RESULT_OK};

    use super::*;
    use crate::{
        metrics::BackendLabels,
        signals::kernel_metrics::{KernelSnapshot, WorkloadSample},
        tables::plan::BackendView,
    };

    fn view() -> ServiceView {
        let backend = |addr: &str, id| BackendView {
            addr: addr.into(),
            weight: 1,
            id,
            slots: 1,
        };
        ServiceView {
            name: "web".into(),
            vip: "127.100.0.1".into(),
            port: 80,
            lb: "round_robin",
            id: 1,
            slot_table_len: 2,
            backends: vec![backend("127.0.0.2:80", 1), backend("127.0.0.3:80", 2)].into(),
            classes: std::sync::Arc::default(),
            class0_weights: None,
        }
    }

    fn kernel(established: u64, closed: u64, retransmits: u64, waits: u64) -> KernelSnapshot {
        let labels = BackendLabels {
            service: "web".into(),
            backend: "127.0.0.2:80".into(),
        };
        let stats = BackendTcpStats {
            established,
            closed,
            retransmits,
            ..BackendTcpStats::ZERO
        };
        let sample = |name: &str| WorkloadSample {
            name: name.into(),
            runq: Some(sockmesh_common::RunqHist {
                count: waits,
                sum_us: waits * 10,
                buckets: [0; sockmesh_common::HIST_BUCKETS],
            }),
            throttled_seconds: 0.0,
            nr_throttled: 0,
        };
        KernelSnapshot {
            backends: [(labels, stats)].into(),
            workloads: vec![sample("front"), sample("db"), sample("bystander")],
            events_lost: 0,
            unenrolled_connects: 0,
            unknown_policy_connects: 0,
            same_node: Default::default(),
        }
    }

    #[test]
    fn gathers_bans_circuit_slos_callers_and_connections() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0);
        rec.on_kernel(t0, &kernel(100, 90, 0, 1000));
        let now = t0 + Duration::from_secs(30);
        // 10 open at t0; 5 more established and 3 closed since, with 12 retransmits.
        rec.on_kernel(now, &kernel(105, 93, 12, 1500));
        let ok = ConnEvent {
            kind: EVENT_ESTABLISHED,
            result: RESULT_OK,
            ..ConnEvent::ZERO
        };
        for caller in ["front", "unknown", "not-configured"] {
            rec.on_connect(now, "web", "127.0.0.2:80", caller, &ok);
        }
        let bans = json!([
            {"service": "web", "backend": "127.0.0.3:80", "state": "banned",
             "reason": "failure_ratio", "streak": 1, "remaining_seconds": 3.0},
            {"service": "api", "backend": "127.0.0.2:80", "state": "banned",
             "reason": "failure_ratio", "streak": 1, "remaining_seconds": 3.0}
        ]);
        let circuits = json!([{"service": "web", "state": "half_open", "panic_mode": true}]);
        let backend_workloads: BTreeMap<String, String> =
            [("127.0.0.3:80".to_owned(), "db".to_owned())].into();
        let mut slo = crate::slo::SloSample {
            service: "web".into(),
            slo: "availability".into(),
            sli: "connect_success",
            objective: 0.99,
            window_secs: 86_400.0,
            good_total: 0,
            total: 0,
            budget_remaining: 1.0,
            burn: [
                (BurnWindow::FiveMinutes, 7.0),
                (BurnWindow::ThirtyMinutes, 0.0),
                (BurnWindow::OneHour, 3.0),
                (BurnWindow::SixHours, 0.0),
            ],
        };
        let other = crate::slo::SloSample {
            service: "api".into(),
            ..slo.clone()
        };
        slo.slo = "availability".into();
        let workloads = ["front", "db", "bystander"].map(String::from);
        let ctx = Context {
            workloads: &workloads,
            backend_workloads: &backend_workloads,
            bans: &bans,
            circuits: &circuits,
            slos: &[slo, other],
        };
        let input = gather(&rec, now, &view(), &ctx);
        assert_eq!(input.recent_secs, 60.0);
        let b = &input.backends[0];
        assert_eq!(
            b.recent.connections, 15,
            "10 open at the start + 5 established"
        );
        assert_eq!((b.recent.ok, b.recent.retransmits), (3, 12));
        assert_eq!(b.ban, None);
        assert_eq!(
            input.backends[1].ban,
            Some(BanNow {
                state: "banned".into(),
                reason: "failure_ratio".into()
            })
        );
        let names: Vec<(&str, Role)> = input
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.role))
            .collect();
        assert_eq!(names, [("db", Role::Backend), ("front", Role::Caller)]);
        assert_eq!(input.workloads[1].recent.waits, 500);
        assert_eq!(
            input.circuit,
            Some(CircuitNow {
                state: "half_open".into(),
                panic_mode: true
            })
        );
        assert_eq!(input.refusals.attempts, 3);
        assert_eq!(
            input.slos,
            [SloBurn {
                slo: "availability".into(),
                sli: "connect_success".into(),
                burn_5m: 7.0,
                burn_1h: 3.0
            }]
        );
    }
}

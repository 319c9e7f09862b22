//! What the line view, `top` and diagnosis remember: connect outcomes per (service, caller)
//! and per (service, backend), the mesh's refusals per service, the kernel's cumulative
//! counters (per-backend TCP, per-workload run queue and throttling) turned into per-bucket
//! increments, and the L7 proxy's request counts per service and per backend
//! ([`requests`]). Pure: every call takes `now`; the signals folder feeds it.
//!
//! Bounded: callers are already label-bounded (`--max-callers`), services and backends come
//! from the config, and an entry nothing was recorded in for ten minutes is dropped.

use std::collections::BTreeMap;

use sockmesh_common::{
    is_mesh_refusal, ConnEvent, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_CIRCUIT_OPEN,
    RESULT_LIMITED, RESULT_REFUSED, RESULT_SHED, RESULT_UNREACHABLE,
};
use tokio::time::Instant;

use super::periods::{Clock, Periods, Tally};
pub(crate) use super::tally::{BackendTally, ConnTally, CpuTally, RefusalTally, RequestTally};
use sockmesh_common::BackendTcpStats;

#[cfg(test)]
use crate::signals::kernel_metrics::KernelSnapshot;
use crate::{metrics::BackendLabels, signals::kernel_metrics::WorkloadSample};

/// Which buckets a question reads: `n` buckets ending `skip` buckets before the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub skip: u64,
    pub n: u64,
}

impl Span {
    pub(crate) fn secs(&self) -> f64 {
        (self.n * super::periods::BUCKET.as_secs()) as f64
    }
}

/// The line view's periods: the last 5 min and the 5 min before.
pub(crate) const LAST: Span = Span { skip: 0, n: 30 };
pub(crate) const PREVIOUS: Span = Span { skip: 30, n: 30 };
/// Diagnosis: the last minute, against the 5 min before it.
pub(crate) const RECENT: Span = Span { skip: 0, n: 6 };
pub(crate) const BASELINE: Span = Span { skip: 6, n: 30 };

/// Cumulative kernel TCP counters of one backend at the last read.
#[derive(Debug, Clone, Copy, Default)]
struct TcpPoint {
    established: u64,
    closed: u64,
    retransmits: u64,
    rtos: u64,
}

/// Cumulative CPU counters of one workload at the last read.
#[derive(Debug, Clone, Copy)]
struct CpuPoint {
    at: Instant,
    waits: u64,
    wait_sum_us: u64,
    waits_over_1ms: u64,
    nr_throttled: u64,
    throttled_seconds: f64,
}

/// First run-queue histogram bucket of waits >= 1024 µs (bucket b holds [2^(b-1), 2^b)).
const OVER_1MS_BUCKET: usize = 11;

/// See the module docs. Keys are names (service, backend address, caller, workload), which
/// stay meaningful across config changes, unlike the kernel's ids.
#[derive(Debug)]
pub(crate) struct Recorder {
    clock: Clock,
    lines: BTreeMap<(String, String), Periods<ConnTally>>,
    backends: BTreeMap<(String, String), Periods<BackendTally>>,
    refusals: BTreeMap<String, Periods<RefusalTally>>,
    workloads: BTreeMap<String, Periods<CpuTally>>,
    /// The L7 proxy's requests per service, and per (service, backend).
    requests: BTreeMap<String, Periods<RequestTally>>,
    backend_requests: BTreeMap<(String, String), Periods<RequestTally>>,
    last_tcp: BTreeMap<(String, String), TcpPoint>,
    last_cpu: BTreeMap<String, CpuPoint>,
    /// Backend address -> the workload whose process listens on it (see [`super::listeners`]).
    backend_workloads: BTreeMap<String, String>,
    next_listener_scan: Option<Instant>,
}

impl Recorder {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            clock: Clock::new(origin),
            lines: BTreeMap::new(),
            backends: BTreeMap::new(),
            refusals: BTreeMap::new(),
            workloads: BTreeMap::new(),
            requests: BTreeMap::new(),
            backend_requests: BTreeMap::new(),
            last_tcp: BTreeMap::new(),
            last_cpu: BTreeMap::new(),
            backend_workloads: BTreeMap::new(),
            next_listener_scan: None,
        }
    }

    /// True once every [`super::listeners::SCAN_EVERY`] (the first call included).
    pub(crate) fn listener_scan_due(&mut self, now: Instant) -> bool {
        if self.next_listener_scan.is_some_and(|next| now < next) {
            return false;
        }
        self.next_listener_scan = Some(now + super::listeners::SCAN_EVERY);
        true
    }

    pub(crate) fn set_backend_workloads(&mut self, found: BTreeMap<String, String>) {
        self.backend_workloads = found;
    }

    pub(crate) fn backend_workloads(&self) -> &BTreeMap<String, String> {
        &self.backend_workloads
    }

    /// One connect outcome (established or failed) of `caller` to `service` via `backend`.
    pub(crate) fn on_connect(
        &mut self,
        now: Instant,
        service: &str,
        backend: &str,
        caller: &str,
        ev: &ConnEvent,
    ) {
        let epoch = self.clock.epoch(now);
        let established = ev.kind == EVENT_ESTABLISHED;
        if !established && ev.kind != EVENT_FAILED {
            return;
        }
        let refusal = !established && is_mesh_refusal(ev.result);
        self.lines
            .entry((service.to_owned(), caller.to_owned()))
            .or_default()
            .record(epoch, |t| {
                if established {
                    t.ok += 1;
                    t.handshake_count += 1;
                    t.handshake_sum_ns += ev.duration_ns;
                } else {
                    t.failed += 1;
                    t.mesh_refused += u64::from(refusal);
                }
            });
        if refusal {
            let counted = matches!(
                ev.result,
                RESULT_LIMITED | RESULT_SHED | RESULT_CIRCUIT_OPEN
            );
            if counted {
                self.refusals
                    .entry(service.to_owned())
                    .or_default()
                    .record(epoch, |t| match ev.result {
                        RESULT_LIMITED => t.limited += 1,
                        RESULT_SHED => t.shed += 1,
                        _ => t.circuit_open += 1,
                    });
            }
            return;
        }
        self.backends
            .entry((service.to_owned(), backend.to_owned()))
            .or_default()
            .record(epoch, |t| match (established, ev.result) {
                (true, _) => {
                    t.ok += 1;
                    t.handshake_count += 1;
                    t.handshake_sum_ns += ev.duration_ns;
                }
                (false, RESULT_REFUSED) => t.refused += 1,
                (false, RESULT_UNREACHABLE) => t.unreachable += 1,
                (false, _) => t.timeout += 1,
            });
    }

    /// The kernel's counters as of `now` (the agent reads them once a second). The increments
    /// since the previous read are recorded; the first read of a backend or workload only sets
    /// the starting point (its counters may hold hours of history, or a previous agent's).
    #[cfg(test)]
    pub(crate) fn on_kernel(&mut self, now: Instant, snapshot: &KernelSnapshot) {
        self.on_backend_rows(now, snapshot.backends.iter(), &[], true);
        self.on_workloads(now, &snapshot.workloads);
    }

    /// Per-backend kernel counters read at `now`: every row when `complete` (rows left out
    /// are gone), else only rows that changed, and `removed` rows that are gone. The
    /// increments since a row's previous read are recorded; its first read only sets the
    /// starting point.
    pub(crate) fn on_backend_rows<'a>(
        &mut self,
        now: Instant,
        rows: impl Iterator<Item = (&'a BackendLabels, &'a BackendTcpStats)>,
        removed: &[BackendLabels],
        complete: bool,
    ) {
        let epoch = self.clock.epoch(now);
        let mut seen_tcp = BTreeMap::new();
        for (labels, s) in rows {
            let key = (labels.service.clone(), labels.backend.clone());
            let point = TcpPoint {
                established: s.established,
                closed: s.closed,
                retransmits: s.retransmits,
                rtos: s.rtos,
            };
            if let Some(last) = self.last_tcp.get(&key) {
                let d = |now: u64, then: u64| now.saturating_sub(then);
                let delta = BackendTally {
                    established: d(point.established, last.established),
                    closed: d(point.closed, last.closed),
                    retransmits: d(point.retransmits, last.retransmits),
                    rtos: d(point.rtos, last.rtos),
                    ..BackendTally::default()
                };
                if delta != BackendTally::default() {
                    self.backends
                        .entry(key.clone())
                        .or_default()
                        .record(epoch, |t| t.add(&delta));
                }
            }
            seen_tcp.insert(key, point);
        }
        if complete {
            self.last_tcp = seen_tcp;
        } else {
            for labels in removed {
                self.last_tcp
                    .remove(&(labels.service.clone(), labels.backend.clone()));
            }
            self.last_tcp.extend(seen_tcp);
        }
    }

    /// Per-workload CPU counters read at `now` (every configured workload found).
    pub(crate) fn on_workloads(&mut self, now: Instant, workloads: &[WorkloadSample]) {
        let epoch = self.clock.epoch(now);
        let mut seen_cpu = BTreeMap::new();
        for w in workloads {
            let last = self.last_cpu.get(&w.name).copied();
            // No run-queue reading this time: keep the last point, so the next reading's
            // increment covers the gap rather than counting from zero.
            let Some(runq) = &w.runq else {
                if let Some(last) = last {
                    seen_cpu.insert(w.name.clone(), last);
                }
                continue;
            };
            let point = CpuPoint {
                at: now,
                waits: runq.count,
                wait_sum_us: runq.sum_us,
                waits_over_1ms: runq.buckets[OVER_1MS_BUCKET..].iter().sum(),
                nr_throttled: w.nr_throttled,
                throttled_seconds: w.throttled_seconds,
            };
            if let Some(last) = last {
                let delta = CpuTally {
                    seconds: now.saturating_duration_since(last.at).as_secs_f64(),
                    waits: point.waits.saturating_sub(last.waits),
                    wait_sum_us: point.wait_sum_us.saturating_sub(last.wait_sum_us),
                    waits_over_1ms: point.waits_over_1ms.saturating_sub(last.waits_over_1ms),
                    nr_throttled: point.nr_throttled.saturating_sub(last.nr_throttled),
                    throttled_seconds: (point.throttled_seconds - last.throttled_seconds).max(0.0),
                };
                self.workloads
                    .entry(w.name.clone())
                    .or_default()
                    .record(epoch, |t| t.add(&delta));
            }
            seen_cpu.insert(w.name.clone(), point);
        }
        self.last_cpu = seen_cpu;
        self.forget_stale(epoch);
    }

    fn forget_stale(&mut self, epoch: u64) {
        self.lines.retain(|_, p| !p.is_stale(epoch));
        self.backends.retain(|_, p| !p.is_stale(epoch));
        self.refusals.retain(|_, p| !p.is_stale(epoch));
        self.workloads.retain(|_, p| !p.is_stale(epoch));
        self.requests.retain(|_, p| !p.is_stale(epoch));
        self.backend_requests.retain(|_, p| !p.is_stale(epoch));
    }

    /// Every (service, caller) line with connects in `span`, sorted by service, then caller.
    pub(crate) fn lines(
        &self,
        now: Instant,
        span: Span,
    ) -> impl Iterator<Item = (&str, &str)> + '_ {
        let epoch = self.clock.epoch(now);
        self.lines.iter().filter_map(move |((s, c), p)| {
            let t = p.sum(epoch, span.skip, span.n);
            (t.ok + t.failed > 0).then_some((s.as_str(), c.as_str()))
        })
    }

    pub(crate) fn line(&self, now: Instant, service: &str, caller: &str, span: Span) -> ConnTally {
        let epoch = self.clock.epoch(now);
        self.lines
            .get(&(service.to_owned(), caller.to_owned()))
            .map(|p| p.sum(epoch, span.skip, span.n))
            .unwrap_or_default()
    }

    /// All callers of `service` together.
    pub(crate) fn service(&self, now: Instant, service: &str, span: Span) -> ConnTally {
        let epoch = self.clock.epoch(now);
        let mut out = ConnTally::default();
        for ((s, _), p) in &self.lines {
            if s == service {
                out.add(&p.sum(epoch, span.skip, span.n));
            }
        }
        out
    }

    pub(crate) fn backend(
        &self,
        now: Instant,
        service: &str,
        backend: &str,
        span: Span,
    ) -> BackendTally {
        let epoch = self.clock.epoch(now);
        self.backends
            .get(&(service.to_owned(), backend.to_owned()))
            .map(|p| p.sum(epoch, span.skip, span.n))
            .unwrap_or_default()
    }

    /// Connections to `backend` open at the last kernel read.
    pub(crate) fn open_now(&self, service: &str, backend: &str) -> u64 {
        self.last_tcp
            .get(&(service.to_owned(), backend.to_owned()))
            .map_or(0, |p| p.established.saturating_sub(p.closed))
    }

    pub(crate) fn refusals(&self, now: Instant, service: &str, span: Span) -> RefusalTally {
        let epoch = self.clock.epoch(now);
        self.refusals
            .get(service)
            .map(|p| p.sum(epoch, span.skip, span.n))
            .unwrap_or_default()
    }

    /// `None` for a workload the agent has not read twice yet.
    pub(crate) fn workload(&self, now: Instant, workload: &str, span: Span) -> Option<CpuTally> {
        let epoch = self.clock.epoch(now);
        self.workloads
            .get(workload)
            .map(|p| p.sum(epoch, span.skip, span.n))
    }
}

mod requests;
#[cfg(test)]
mod tests;

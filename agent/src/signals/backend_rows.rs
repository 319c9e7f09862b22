//! The per-backend kernel counters between the maps and everything that reads them: which
//! pairs a refresh or a scrape reads ([`backend_reads`]), folded into the last known
//! counters, the health engine's pending changes, the kernel snapshot's rows (admitted pairs
//! under their own labels, the rest in their service's `other`) and the diagnosis recorder.

use std::collections::{BTreeMap, BTreeSet};

use sockmesh_common::{BackendKey, BackendTcpStats};

use super::{
    backend_reads::{fold_read, merge_changes, Read},
    topology, Inner, Signals,
};
use crate::metrics::BackendLabels;

impl Signals {
    /// Before a scrape: every pair's stats read now (at most once per refresh period), so
    /// what Prometheus sees is exact also for pairs whose counters moved without an event yet
    /// (connects in flight).
    fn read_backends_for_scrape(&self) {
        let now = tokio::time::Instant::now();
        let last = *self.backend_read.lock().expect("backend read lock");
        if last.is_some_and(|t| now.saturating_duration_since(t) < SCRAPE_READ_EVERY) {
            return;
        }
        self.inner.lock().expect("signals lock").reads.read_all();
        self.read_backends(None, now);
    }

    /// Reads the per-backend stats the schedule asks for and folds them into the last known
    /// counters, the health engine's pending changes, the kernel rows and the diagnosis.
    /// `events_lost`: the kernel's lost-event counter now, if read.
    pub(super) fn read_backends(&self, events_lost: Option<u64>, now: tokio::time::Instant) {
        let mut last_all = self.backend_read.lock().expect("backend read lock");
        let read = {
            let mut inner = self.inner.lock().expect("signals lock");
            inner.reads.next(events_lost)
        };
        let stats = {
            let guard = self.maps.lock().expect("maps lock");
            let Some(maps) = guard.as_ref() else {
                return;
            };
            match &read {
                Read::All => maps.backend_stats(),
                Read::Pairs(keys) => maps.backend_stats_of(keys),
            }
        };
        if read == Read::All {
            *last_all = Some(now);
        }
        let mut inner = self.inner.lock().expect("signals lock");
        inner.reads.read_done(&read, &stats);
        let (changes, gone) = fold_read(&mut inner.tcp, &read, stats);
        merge_changes(&mut inner.tcp_changes, &changes);
        let changed: Vec<BackendKey> = changes.iter().map(|c| c.key).collect();
        self.kernel_rows(&mut inner, &changed, &gone, now);
    }
}

/// A collector that encodes nothing: it makes a scrape read every per-backend entry first
/// ([`Signals::read_backends_for_scrape`]).
#[derive(Debug)]
pub(super) struct ScrapeRead(pub(super) std::sync::Weak<Signals>);

impl prometheus_client::collector::Collector for ScrapeRead {
    fn encode(
        &self,
        _: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        if let Some(signals) = self.0.upgrade() {
            signals.read_backends_for_scrape();
        }
        Ok(())
    }
}

/// A scrape reads every per-backend entry at most this often (the refresh period).
const SCRAPE_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Signals {
    /// Updates the kernel snapshot's per-backend rows for pairs whose counters changed or
    /// whose entry is gone: admitted pairs under their own labels, the rest (over
    /// `--max-series`) summed into their service's `other` row; the diagnosis gets the rows
    /// that changed. All rows are rebuilt after a new config or when series expired. Also
    /// removes the series of pairs whose drain grace after leaving the config has passed.
    fn kernel_rows(
        &self,
        inner: &mut Inner,
        changed: &[BackendKey],
        gone: &[BackendKey],
        now: tokio::time::Instant,
    ) {
        let Inner {
            topology,
            series,
            tcp,
            diag,
            rows_stale,
            ..
        } = inner;
        let expired = series.expire(now);
        for gone in &expired {
            let inbound_gone = !topology.backend_by_addr.contains_key(&gone.labels.backend);
            self.metrics
                .remove_backend(&gone.labels, &gone.callers, inbound_gone);
        }
        let mut snap = self.snapshot.lock().expect("snapshot lock");
        if std::mem::take(rows_stale) || !expired.is_empty() {
            let mut rows = BTreeMap::new();
            let mut folded: BTreeMap<String, BackendTcpStats> = BTreeMap::new();
            for (k, s) in tcp.iter() {
                let service = topology.service(k.service_id);
                let backend = topology.backend(k.backend_id);
                if series.admit(service, backend) {
                    rows.insert(backend_labels(service, backend), *s);
                } else {
                    add_stats(
                        folded
                            .entry(service.to_owned())
                            .or_insert(BackendTcpStats::ZERO),
                        s,
                    );
                }
            }
            for (service, s) in folded {
                series.admit(&service, topology::OTHER);
                rows.insert(backend_labels(&service, topology::OTHER), s);
            }
            diag.on_backend_rows(now, rows.iter(), &[], true);
            snap.backends = rows;
            return;
        }
        let mut updated: BTreeMap<BackendLabels, BackendTcpStats> = BTreeMap::new();
        let mut removed = Vec::new();
        let mut fold_again = BTreeSet::new();
        for k in gone {
            let labels = backend_labels(
                topology.service(k.service_id),
                topology.backend(k.backend_id),
            );
            if snap.backends.remove(&labels).is_some() {
                removed.push(labels);
            } else {
                fold_again.insert(k.service_id);
            }
        }
        for k in changed {
            let service = topology.service(k.service_id);
            let backend = topology.backend(k.backend_id);
            if series.admit(service, backend) {
                let labels = backend_labels(service, backend);
                let s = tcp[k];
                snap.backends.insert(labels.clone(), s);
                updated.insert(labels, s);
            } else {
                fold_again.insert(k.service_id);
            }
        }
        for service_id in fold_again {
            let service = topology.service(service_id);
            let mut sum = None;
            let pairs = BackendKey {
                service_id,
                backend_id: 0,
            }..=BackendKey {
                service_id,
                backend_id: u32::MAX,
            };
            for (k, s) in tcp.range(pairs) {
                let backend = topology.backend(k.backend_id);
                if !series.admit(service, backend) {
                    add_stats(sum.get_or_insert(BackendTcpStats::ZERO), s);
                } else if !snap
                    .backends
                    .contains_key(&backend_labels(service, backend))
                {
                    // Admitted now (the budget allows it): its own row from here on.
                    let labels = backend_labels(service, backend);
                    snap.backends.insert(labels.clone(), *s);
                    updated.insert(labels, *s);
                }
            }
            let labels = backend_labels(service, topology::OTHER);
            match sum {
                Some(s) => {
                    series.admit(service, topology::OTHER);
                    snap.backends.insert(labels.clone(), s);
                    updated.insert(labels, s);
                }
                None => {
                    if snap.backends.remove(&labels).is_some() {
                        removed.push(labels);
                    }
                }
            }
        }
        diag.on_backend_rows(now, updated.iter(), &removed, false);
    }
}

fn backend_labels(service: &str, backend: &str) -> BackendLabels {
    BackendLabels {
        service: service.to_owned(),
        backend: backend.to_owned(),
    }
}

/// Adds `b`'s counters and histogram to `a` (backends folded into `other`).
fn add_stats(a: &mut BackendTcpStats, b: &BackendTcpStats) {
    a.established += b.established;
    a.closed += b.closed;
    a.retransmits += b.retransmits;
    a.rtos += b.rtos;
    a.srtt_count += b.srtt_count;
    a.srtt_sum_us += b.srtt_sum_us;
    for (x, y) in a.srtt_hist.iter_mut().zip(b.srtt_hist.iter()) {
        *x += y;
    }
}

//! Signals: what the kernel saw, folded into aggregates, metrics and admin views.
//!
//! Two feeds: lifecycle events from the ring buffer ([`ring`]), folded as they arrive into the
//! connection metrics ([`metrics`]), and the per-CPU maps plus cgroup files, read once a second
//! ([`Signals::refresh`]) into a snapshot the kernel-map metrics ([`kernel_metrics`],
//! [`same_node_metrics`]) and the admin API serve, and into map pressure ([`pressure`]).
//! Connect and close events also feed the SLO tracker ([`crate::slo`]), which the metrics
//! collector and `/v1/slos` read; connect outcomes, kernel reads and the L7 proxy's request
//! counts feed the diagnosis recorder ([`crate::diagnose`]). The per-backend reads and rows
//! are in [`backend_rows`], the kernel's workload maps kept in step in [`kernel_sync`].

pub(crate) mod aggregate;
pub(crate) mod backend_reads;
mod backend_rows;
mod diagnosis;
pub(crate) mod kernel_maps;
pub(crate) mod kernel_metrics;
mod kernel_sync;
pub(crate) mod map_count;
pub(crate) mod metrics;
pub(crate) mod pressure;
pub(crate) mod ring;
pub(crate) mod same_node_metrics;
pub(crate) mod series;
pub(crate) mod topology;
mod updater;
mod views;
pub(crate) mod workloads;

pub(crate) use updater::SignalsUpdater;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use prometheus_client::registry::Registry;
use sockmesh_common::{
    BackendKey, BackendTcpStats, ConnEvent, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED,
    EVENT_INBOUND, RESULT_RESET,
};
use sockmesh_model::{MeshConfig, WorkloadSpec};
use tracing::warn;

use self::{
    aggregate::{result_name, Aggregates, Failure},
    backend_reads::ReadSchedule,
    backend_rows::ScrapeRead,
    kernel_maps::SignalMaps,
    kernel_metrics::{KernelCollector, KernelSnapshot, WorkloadSample},
    kernel_sync::{retry_backend_keys, sync_callers, sync_tids},
    metrics::{BoundedLabel, ConnectionMetrics},
    pressure::gauges::MapPressure,
    series::BackendSeries,
    topology::{CallerLabels, Topology},
    workloads::ResolvedWorkload,
};
use crate::{
    diagnose::Recorder,
    engine::task::EventInbox,
    slo::{SloSample, SloTracker},
    status::unix_ms_now,
    tables::{addr::words_to_socket_addr, ServiceView},
};
pub(crate) use backend_reads::TcpChange;

struct Inner {
    topology: Topology,
    callers: CallerLabels,
    aggregates: Aggregates,
    workload_specs: Vec<WorkloadSpec>,
    workloads: Vec<ResolvedWorkload>,
    /// The views of the last config and overlay, shared with the runtime (never copied).
    views: Arc<Vec<ServiceView>>,
    /// Every pair's counters as of its last read.
    tcp: BTreeMap<BackendKey, BackendTcpStats>,
    /// Which pairs the next refresh reads ([`backend_reads`]).
    reads: ReadSchedule,
    /// Counters that moved since the health engine last took them.
    tcp_changes: BTreeMap<BackendKey, TcpChange>,
    /// The per-backend rows must be rebuilt whole (new topology, or series expired).
    rows_stale: bool,
    overflow_reported: u64,
    /// Which (service, backend) series exist, and when those of removed backends go.
    series: BackendSeries,
    backend_overflow_reported: u64,
    /// Lines, per-backend and per-workload history for `/v1/lines`, `/v1/top`, `/v1/diagnose`.
    diag: Recorder,
}

pub(crate) struct Signals {
    inner: Mutex<Inner>,
    /// Connect outcomes are also fed to the health engine (set once it runs).
    engine: std::sync::OnceLock<Arc<EventInbox>>,
    /// `None` only in [`Signals::without_kernel`]: nothing is read from or written to the kernel.
    maps: Mutex<Option<SignalMaps>>,
    metrics: ConnectionMetrics,
    /// Shared with the kernel-map collectors, which encode it at scrape time.
    snapshot: Arc<Mutex<KernelSnapshot>>,
    /// Entries per kernel map (`sockmesh_map_entries`), recorded by [`Signals::refresh`].
    pressure: Arc<MapPressure>,
    /// Its own lock, shared with the metrics collector: a scrape computes burn rates without
    /// holding up the folding of other signals.
    slos: Arc<Mutex<SloTracker>>,
    cgroup2: PathBuf,
    /// When the kernel-written maps are counted next ([`pressure`]).
    counts: Mutex<pressure::CountSchedule>,
    /// Held from reading per-backend stats to folding them in, so reads fold in the order
    /// they were made (a refresh and a scrape may read at once).
    backend_read: Mutex<Option<tokio::time::Instant>>,
}

impl Signals {
    /// The signals over `maps`; their metrics (connections, kernel maps, same-node, map
    /// pressure, SLOs) are registered in `registry`.
    pub(crate) fn new(
        maps: SignalMaps,
        max_callers: usize,
        max_series: usize,
        cgroup2: PathBuf,
        registry: &mut Registry,
    ) -> Arc<Self> {
        Self::build(Some(maps), max_callers, max_series, cgroup2, registry)
    }

    /// Signals over no kernel maps: the views answer from the config alone and
    /// [`Signals::refresh`] reads nothing. For driving the admin router in-process (fuzz/).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn without_kernel(registry: &mut Registry) -> Arc<Self> {
        Self::build(
            None,
            64,
            series::DEFAULT_MAX_SERIES,
            PathBuf::from("/nonexistent"),
            registry,
        )
    }

    fn build(
        mut maps: Option<SignalMaps>,
        max_callers: usize,
        max_series: usize,
        cgroup2: PathBuf,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let counted = maps.as_mut().and_then(|m| m.counted.take());
        Arc::new_cyclic(|signals| {
            // Encoded before the kernel-map families, so a scrape sees every pair read now.
            registry.register_collector(Box::new(ScrapeRead(signals.clone())));
            let metrics = ConnectionMetrics::new(registry);
            let snapshot = KernelCollector::register(registry);
            same_node_metrics::register(registry, snapshot.clone());
            let pressure = MapPressure::new(registry);
            let slos = Arc::new(Mutex::new(SloTracker::default()));
            crate::slo::metrics::register(registry, slos.clone());
            Self {
                engine: std::sync::OnceLock::new(),
                inner: Mutex::new(Inner {
                    topology: Topology::default(),
                    callers: CallerLabels::new(max_callers),
                    aggregates: Aggregates::default(),
                    workload_specs: Vec::new(),
                    workloads: Vec::new(),
                    views: Arc::default(),
                    tcp: BTreeMap::new(),
                    reads: ReadSchedule::default(),
                    tcp_changes: BTreeMap::new(),
                    rows_stale: true,
                    overflow_reported: 0,
                    series: BackendSeries::new(max_series),
                    backend_overflow_reported: 0,
                    diag: Recorder::new(tokio::time::Instant::now()),
                }),
                maps: Mutex::new(maps),
                metrics,
                snapshot,
                pressure,
                slos,
                cgroup2,
                counts: Mutex::new(pressure::CountSchedule::new(counted)),
                backend_read: Mutex::new(None),
            }
        })
    }

    /// A new config was applied: rename ids, create stats entries for new backends,
    /// re-resolve workloads, and track the services' SLOs.
    pub(crate) fn set_config(&self, views: &Arc<Vec<ServiceView>>, config: &MeshConfig) {
        let topology = Topology::from_views(views);
        let keys: BTreeSet<BackendKey> = views
            .iter()
            .flat_map(|v| {
                v.backends.iter().map(|b| BackendKey {
                    service_id: v.id,
                    backend_id: b.id,
                })
            })
            .collect();
        if let Err(e) = self
            .maps
            .lock()
            .expect("maps lock")
            .as_mut()
            .map_or(Ok(()), |m| m.sync_backend_keys(&keys))
        {
            warn!(
                error = %format!("{e:#}"),
                "could not create all per-backend stats entries yet; retrying every second"
            );
        }
        let graces: BTreeMap<&str, std::time::Duration> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.drain_grace.0))
            .collect();
        let mut configured: BTreeMap<String, (BTreeSet<String>, std::time::Duration)> =
            BTreeMap::new();
        for v in views.iter() {
            let grace = graces.get(v.name.as_str()).copied().unwrap_or_default();
            let entry = configured
                .entry(v.name.clone())
                .or_insert_with(|| (BTreeSet::new(), grace));
            entry.0.extend(v.backends.iter().map(|b| b.addr.clone()));
        }
        let workloads_changed = {
            let mut inner = self.inner.lock().expect("signals lock");
            inner
                .series
                .set_config(tokio::time::Instant::now(), &configured);
            inner.topology = topology;
            match backend_reads::pairs_after_config(&inner.views, views) {
                Some(pairs) => pairs.into_iter().for_each(|k| inner.reads.touched(k)),
                None => inner.reads.read_all(),
            }
            inner.rows_stale = true;
            inner.views = views.clone();
            let changed = inner.workload_specs != config.workloads;
            if changed {
                inner.workload_specs = config.workloads.clone();
            }
            changed
        };
        self.slos
            .lock()
            .expect("slo lock")
            .reconfigure(tokio::time::Instant::now(), config, views);
        // New workloads: their threads and caller entries now, not at the next refresh
        // (which picks up everything else within a second).
        if workloads_changed {
            self.refresh();
        }
    }

    /// `n` lifecycle events were read from the ring buffer.
    pub(crate) fn events_drained(&self, n: usize) {
        self.metrics.events_drained(n as u64);
    }

    pub(crate) fn feed_engine(&self, inbox: Arc<EventInbox>) {
        let _ = self.engine.set(inbox);
    }

    /// The per-backend kernel TCP counters that changed since the last call (with what
    /// they were before), for the health engine.
    pub(crate) fn take_tcp_changes(&self) -> Vec<TcpChange> {
        let mut inner = self.inner.lock().expect("signals lock");
        std::mem::take(&mut inner.tcp_changes)
            .into_values()
            .collect()
    }

    /// The cgroups of the workloads found on this node (as of the last refresh).
    pub(crate) fn workload_cgroups(&self) -> Vec<PathBuf> {
        let inner = self.inner.lock().expect("signals lock");
        inner.workloads.iter().map(|w| w.cgroup.clone()).collect()
    }

    /// Slot tables changed without a config change (a ban, a probe passed): new views only.
    pub(crate) fn set_views(&self, views: &Arc<Vec<ServiceView>>) {
        self.inner.lock().expect("signals lock").views = views.clone();
    }

    /// Every SLO's numbers now (`GET /v1/slos`).
    pub(crate) fn slos(&self) -> Vec<SloSample> {
        let tracker = self.slos.lock().expect("slo lock");
        tracker.snapshot(tokio::time::Instant::now())
    }

    /// The L7 proxy's count of a service's requests: for its request SLIs, and per backend
    /// for `top` and diagnosis (only the service's configured backends, and at most
    /// [`sockmesh_proxy::link::MAX_TALLY_BACKENDS`] rows, are kept).
    pub(crate) fn on_requests(&self, t: &sockmesh_proxy::link::ServiceTally) {
        let now = tokio::time::Instant::now();
        let tally = crate::slo::RequestTally {
            requests: t.requests,
            failed: t.failed,
            within: &t.within,
        };
        self.slos
            .lock()
            .expect("slo lock")
            .on_requests(now, &t.service, tally);
        let mut inner = self.inner.lock().expect("signals lock");
        let Inner { views, diag, .. } = &mut *inner;
        let Some(view) = views.iter().find(|v| v.name == t.service) else {
            return;
        };
        let total = crate::diagnose::record::RequestTally {
            requests: t.requests,
            failed: t.failed,
            gateway: 0,
            within: t.within.iter().copied().collect(),
        };
        let rows: Vec<(String, crate::diagnose::record::RequestTally)> = t
            .backends
            .iter()
            .take(sockmesh_proxy::link::MAX_TALLY_BACKENDS)
            .map(|b| (b.backend.to_string(), b))
            .filter(|(addr, _)| view.backends.iter().any(|v| &v.addr == addr))
            .map(|(addr, b)| {
                let counts = crate::diagnose::record::RequestTally {
                    requests: b.requests,
                    failed: b.failed.min(b.requests),
                    gateway: b.gateway.min(b.failed),
                    within: Default::default(),
                };
                (addr, counts)
            })
            .collect();
        diag.on_requests(
            now,
            &t.service,
            &total,
            rows.iter().map(|(a, c)| (a.as_str(), c.clone())),
        );
    }

    pub(crate) fn on_event(&self, ev: ConnEvent) {
        if let Some(inbox) = self.engine.get() {
            // Bounded and coalescing: never waits for the engine (engine::queue).
            inbox.push(&ev);
        }
        if matches!(ev.kind, EVENT_ESTABLISHED | EVENT_FAILED | EVENT_CLOSED) {
            // Taken and released before the signals lock: the two are never held together.
            self.slos
                .lock()
                .expect("slo lock")
                .on_event(tokio::time::Instant::now(), &ev);
        }
        let mut inner = self.inner.lock().expect("signals lock");
        let Inner {
            topology,
            callers,
            aggregates,
            diag,
            series,
            reads,
            ..
        } = &mut *inner;
        if matches!(ev.kind, EVENT_ESTABLISHED | EVENT_FAILED | EVENT_CLOSED) {
            reads.touched(BackendKey {
                service_id: ev.service_id,
                backend_id: ev.backend_id,
            });
        }
        let service = topology.service(ev.service_id).to_owned();
        let backend = topology.backend(ev.backend_id).to_owned();
        let m = &self.metrics;
        match ev.kind {
            EVENT_INBOUND => {
                let addr =
                    words_to_socket_addr(ev.family, &ev.local_addr, ev.local_port).to_string();
                let known = topology.backend_by_addr.contains_key(&addr);
                let backend = if known {
                    addr
                } else {
                    topology::OTHER.to_owned()
                };
                m.inbound(backend);
                aggregates.events += 1;
                return;
            }
            EVENT_ESTABLISHED | EVENT_FAILED => {
                let caller = callers.label(ev.cgroup_id);
                let now = tokio::time::Instant::now();
                diag.on_connect(now, &service, &backend, &caller, &ev);
                let label = series.label(&service, &backend);
                series.note_caller(&service, label, &caller);
                m.connect(&ev, &service, label, &caller);
                aggregates.fold(&ev, || Failure {
                    unix_ms: unix_ms_now(),
                    service,
                    backend,
                    caller,
                    result: result_name(ev.result),
                    duration_ms: ev.duration_ns as f64 / 1e6,
                });
            }
            EVENT_CLOSED => {
                // Only a reset is counted per caller (labelling one may fold it into `other`).
                let reset_by = (ev.result == RESULT_RESET).then(|| callers.label(ev.cgroup_id));
                let label = series.label(&service, &backend);
                if let Some(caller) = &reset_by {
                    series.note_caller(&service, label, caller);
                }
                m.closed(&ev, &service, label, reset_by);
                aggregates.fold(&ev, || unreachable!("closed events are not failures"));
            }
            _ => {}
        }
        let overflow = callers.overflowed;
        if overflow > inner.overflow_reported {
            m.labels_folded(BoundedLabel::Caller, overflow - inner.overflow_reported);
            inner.overflow_reported = overflow;
        }
        let overflow = inner.series.overflowed;
        if overflow > inner.backend_overflow_reported {
            m.labels_folded(
                BoundedLabel::Backend,
                overflow - inner.backend_overflow_reported,
            );
            inner.backend_overflow_reported = overflow;
        }
    }

    /// Re-reads workloads (cgroup ids, threads, throttling), the per-CPU counters, and the
    /// per-backend stats of the pairs that had traffic ([`backend_reads`]).
    pub(crate) fn refresh(&self) {
        let specs = self
            .inner
            .lock()
            .expect("signals lock")
            .workload_specs
            .clone();
        let resolved = workloads::resolve(&specs, &self.cgroup2);
        let mut guard = self.maps.lock().expect("maps lock");
        let Some(maps) = guard.as_mut() else {
            return;
        };
        let tids = sync_tids(maps, &resolved);
        let callers = sync_callers(maps, &resolved);
        let created = retry_backend_keys(maps);
        let backend_stats = maps.backend_stats_entries;
        let previous = self
            .snapshot
            .lock()
            .expect("snapshot lock")
            .workloads
            .clone();
        let samples: Vec<WorkloadSample> = resolved
            .iter()
            .map(|w| {
                // No reading (e.g. no process left to find the v1 cpu cgroup through): keep the
                // last one, so the counter never falls back to 0 (a reset to Prometheus).
                let last = previous.iter().find(|p| p.name == w.name);
                let (nr, secs) = workloads::throttling(&w.cgroup)
                    .or_else(|| last.map(|p| (p.nr_throttled, p.throttled_seconds)))
                    .unwrap_or((0, 0.0));
                WorkloadSample {
                    name: w.name.clone(),
                    runq: maps.runq(w.index),
                    throttled_seconds: secs,
                    nr_throttled: nr,
                }
            })
            .collect();
        let events_lost = maps.events_lost();
        let unenrolled_connects = maps.unenrolled_connects();
        let unknown_policy_connects = maps.unknown_policy_connects();
        let same_node = maps.same_node();
        drop(guard);
        self.record_pressure(tids, callers, backend_stats);
        let now = tokio::time::Instant::now();
        self.scan_listeners(now, &resolved);
        {
            let mut inner = self.inner.lock().expect("signals lock");
            let by_cgroup: BTreeMap<u64, String> = resolved
                .iter()
                .flat_map(|w| w.cgroup_ids.iter().map(|id| (*id, w.name.clone())))
                .collect();
            inner.callers.set_workloads(by_cgroup);
            for key in created {
                inner.reads.touched(key);
            }
        }
        self.read_backends(Some(events_lost), now);

        let mut inner = self.inner.lock().expect("signals lock");
        inner.diag.on_workloads(now, &samples);
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        snapshot.workloads = samples;
        snapshot.events_lost = events_lost;
        snapshot.unenrolled_connects = unenrolled_connects;
        snapshot.unknown_policy_connects = unknown_policy_connects;
        snapshot.same_node = same_node;
        drop(snapshot);
        inner.workloads = resolved;
    }
}

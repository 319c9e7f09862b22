//! Health metrics, owned by the engine's task (the only writer): bans by reason, banned
//! backends, circuit state, panic mode, drained connections (by network namespace: the
//! agent's or a workload's), workload namespaces a drain could not enter, and connect
//! outcomes the event queue coalesced or dropped ([`super::queue`]).
//! `sockmesh_backend_bans_total` and the drain counters count as the engine acts; the three gauges are
//! written from the engine's state after each step, only where a value changed
//! ([`HealthExport`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;

use super::Engine;
use crate::{health::outlier::BanReason, metrics::BackendLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: BanReason,
}

/// The label value is the rule's name in docs/health-design.md (`consecutive_failures`...),
/// which the derive (it writes the variant's identifier) cannot spell.
impl EncodeLabelValue for BanReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DrainLabels {
    pub(crate) netns: DrainNetns,
}

/// Where a drain closed connections: the agent's own network namespace, or a workload's
/// (a pod's) that it entered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum DrainNetns {
    Agent,
    Workload,
}

impl EncodeLabelValue for DrainNetns {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            DrainNetns::Agent => "agent",
            DrainNetns::Workload => "workload",
        };
        std::fmt::Write::write_str(encoder, value)
    }
}

/// The health families; cloning shares them (each is an `Arc` inside).
#[derive(Clone)]
pub(crate) struct HealthMetrics {
    backend_banned: Family<BackendLabels, Gauge>,
    bans: Family<ReasonLabels, Counter>,
    circuit_state: Family<ServiceLabels, Gauge>,
    panic_mode: Family<ServiceLabels, Gauge>,
    drained: Family<DrainLabels, Counter>,
    netns_denied: Counter,
    events_coalesced: Counter,
    events_dropped: Counter,
}

impl HealthMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            backend_banned: Family::default(),
            bans: Family::default(),
            circuit_state: Family::default(),
            panic_mode: Family::default(),
            drained: Family::default(),
            netns_denied: Counter::default(),
            events_coalesced: Counter::default(),
            events_dropped: Counter::default(),
        };
        // Both paths show from the start, at 0, so a rate over either is defined.
        for netns in [DrainNetns::Agent, DrainNetns::Workload] {
            let _ = m.drained.get_or_create(&DrainLabels { netns });
        }
        registry.register(
            "backend_banned",
            "1 while a backend is out of the slot table (banned or awaiting its probe)",
            m.backend_banned.clone(),
        );
        registry.register(
            "backend_bans",
            "Backend bans by the rule that caused them",
            m.bans.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker state per service: 0 closed, 1 half-open, 2 open",
            m.circuit_state.clone(),
        );
        registry.register(
            "panic_mode",
            "1 while a service wanted to ban more backends than max_banned_percent allows",
            m.panic_mode.clone(),
        );
        registry.register(
            "drained_connections",
            "Connections to banned or removed backends closed after the drain grace, by the \
             network namespace they were in (the agent's, or a workload's it entered)",
            m.drained.clone(),
        );
        registry.register(
            "drain_netns_denied",
            "Workload network namespaces a drain could not enter (the agent lacks \
             CAP_SYS_ADMIN or CAP_SYS_PTRACE); connections there stay open",
            m.netns_denied.clone(),
        );
        registry.register(
            "engine_events_coalesced",
            "Connect outcomes folded into the previous run of the same outcome for the same \
             backend on their way to the health engine (engine::queue)",
            m.events_coalesced.clone(),
        );
        registry.register(
            "engine_events_dropped",
            "Connect outcomes the health engine never saw: its event queue held its bound of \
             runs (engine::queue::MAX_RUNS)",
            m.events_dropped.clone(),
        );
        m
    }

    /// What the event queue coalesced and dropped since the engine last took it.
    pub(crate) fn events_queued(&self, coalesced: u64, dropped: u64) {
        self.events_coalesced.inc_by(coalesced);
        self.events_dropped.inc_by(dropped);
    }

    pub(crate) fn banned(&self, reason: BanReason) {
        self.bans.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn drained(&self, netns: DrainNetns, connections: u64) {
        self.drained
            .get_or_create(&DrainLabels { netns })
            .inc_by(connections);
    }

    pub(crate) fn netns_denied(&self, namespaces: u64) {
        self.netns_denied.inc_by(namespaces);
    }
}

/// Health gauges (banned backends, circuit state, panic mode), written only where a value
/// changed since the last step: at 10,000 services x 10 backends, setting all 100,000
/// backend gauges every 50 ms tick (label formatting and family lookups) was about a third
/// of the agent's CPU while nothing changed.
pub(crate) struct HealthExport {
    metrics: HealthMetrics,
    services: HashMap<u32, ServiceExport>,
}

/// What was last exported for one service.
struct ServiceExport {
    /// Its labels: the service's name and each backend's address, by id.
    name: String,
    backends: BTreeMap<u32, SocketAddr>,
    circuit: i64,
    panic: bool,
    excluded: BTreeSet<u32>,
}

impl HealthExport {
    pub(crate) fn new(metrics: HealthMetrics) -> Self {
        Self {
            metrics,
            services: HashMap::new(),
        }
    }

    pub(crate) fn metrics(&self) -> &HealthMetrics {
        &self.metrics
    }

    /// A new config (already in `engine`): the series of every service that is gone, or is
    /// now another service or has other backends under its id, are removed, and those
    /// services are written again at the next step; the others keep their series and are
    /// written again only where a value changes. (Clearing the families instead made the
    /// first step after every config write all 100,000 backend gauges at 10,000 x 10.)
    pub(crate) fn reconfigure(&mut self, engine: &Engine) {
        let m = &self.metrics;
        self.services.retain(|id, last| {
            let same = engine.service(*id).is_some_and(|svc| {
                svc.name == last.name
                    && svc
                        .backends
                        .iter()
                        .map(|(bid, b)| (bid, &b.addr))
                        .eq(last.backends.iter())
            });
            if !same {
                let service = ServiceLabels {
                    service: last.name.clone(),
                };
                m.circuit_state.remove(&service);
                m.panic_mode.remove(&service);
                for addr in last.backends.values() {
                    m.backend_banned.remove(&BackendLabels {
                        service: last.name.clone(),
                        backend: addr.to_string(),
                    });
                }
            }
            same
        });
    }

    /// Writes the gauges of the awake services whose values changed (a sleeping service's
    /// cannot have changed since its last step awake, which exported them).
    pub(crate) fn export(&mut self, engine: &Engine, now: Instant) {
        let m = &self.metrics;
        for (id, svc) in engine.awake_services() {
            let circuit = svc.circuit.state(now).as_gauge();
            let panic = svc.bans.panic_mode();
            let excluded = svc.bans.excluded();
            let last = self.services.get(id);
            if last
                .is_some_and(|l| l.circuit == circuit && l.panic == panic && l.excluded == excluded)
            {
                continue;
            }
            let service = ServiceLabels {
                service: svc.name.clone(),
            };
            m.circuit_state.get_or_create(&service).set(circuit);
            m.panic_mode.get_or_create(&service).set(i64::from(panic));
            for (bid, b) in &svc.backends {
                let banned = excluded.contains(bid);
                if last.is_some_and(|l| l.excluded.contains(bid) == banned) {
                    continue;
                }
                let labels = BackendLabels {
                    service: svc.name.clone(),
                    backend: b.addr.to_string(),
                };
                m.backend_banned
                    .get_or_create(&labels)
                    .set(i64::from(banned));
            }
            self.services.insert(
                *id,
                ServiceExport {
                    name: svc.name.clone(),
                    backends: svc.backends.iter().map(|(bid, b)| (*bid, b.addr)).collect(),
                    circuit,
                    panic,
                    excluded,
                },
            );
        }
    }
}

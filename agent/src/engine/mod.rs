//! The health engine: kernel signals in, kernel overlay out.
//!
//! [`Engine`] is pure (every call takes `now`) and owns one [`ServiceHealth`] per service: it
//! folds connect outcomes and TCP counters, runs outlier detection and bans, the circuit
//! breaker and shedding, and says which banned backends to probe and which to drain. The
//! task in [`task`] feeds it, runs probes and drains, and publishes the [`Overlay`] the
//! dataplane applies. The mesh's own refusals (circuit, shedding, limits, ACL, faults) are
//! never fed in as backend failures.

pub(crate) mod drain;
pub(crate) mod metrics;
pub(crate) mod queue;
mod service;
pub(crate) mod task;
mod tcp_window;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use serde_json::{json, Value};
#[cfg(test)]
use sockmesh_common::ConnEvent;
use sockmesh_model::{MeshConfig, Priority};
use tokio::time::Instant;

pub(crate) use service::ServiceHealth;

use self::queue::{Outcome, Run};

use crate::{
    health::{
        ban::{Exclusion, ProbeOutcome},
        circuit::CircuitState,
        outlier::BanReason,
        shed,
    },
    signals::TcpChange,
    tables::{Overlay, ServiceOverlay, ServiceView},
};

/// A limit refusal within this long marks a service overloaded (it sheds low priorities).
pub(crate) const OVERLOAD_HOLD: Duration = Duration::from_secs(5);

#[derive(Debug, Default, PartialEq)]
pub(crate) struct TickOutput {
    /// (service id, backend id, address, timeout): TCP-connect probes to run.
    pub probes: Vec<(u32, u32, SocketAddr, Duration)>,
    /// (service id, backend id, backend address): close routed connections to it now. The
    /// id is the one the sockets were stamped with, also for a backend no longer configured.
    pub drains: Vec<(u32, u32, SocketAddr)>,
    /// (service name, backend address, reason): bans made in this tick, for logs and metrics.
    pub bans: Vec<(String, SocketAddr, BanReason)>,
}

#[derive(Debug, Default)]
pub(crate) struct Engine {
    services: BTreeMap<u32, ServiceHealth>,
    last_limited: BTreeMap<u32, Instant>,
    /// Highest caller priority level in the config: the one that keeps its access longest.
    top_priority: u32,
    /// The services a tick visits: those with inputs since they settled, or whose state
    /// moves with time (a ban, a drain, a circuit not closed, a recent overload). The
    /// others' detection, gauges and overlay cannot change until an input wakes them, so
    /// an idle mesh costs nothing per tick whatever its size.
    awake: BTreeSet<u32>,
    /// Each service's overlay as of its last tick awake ([`Engine::overlay_update`]).
    overlay: Overlay,
    /// The overlay above changed since [`Engine::overlay_update`] last returned it.
    overlay_changed: bool,
}

impl Engine {
    pub(crate) fn on_config(&mut self, now: Instant, config: &MeshConfig, views: &[ServiceView]) {
        // Callers that are not a configured workload run at the default level, so it counts.
        let top_priority = config
            .workloads
            .iter()
            .map(|w| w.priority.level())
            .chain([Priority::default().level()])
            .max()
            .unwrap_or_default();
        // The shedding level is in every service's overlay entry.
        let all = std::mem::replace(&mut self.top_priority, top_priority) != top_priority;
        let mut next = BTreeMap::new();
        let mut changed = Vec::new();
        for (spec, view) in config.services.iter().zip(views) {
            let backends: Vec<(u32, SocketAddr)> = spec
                .backends
                .iter()
                .zip(view.backends.iter())
                .map(|(b, v)| (v.id, b.addr))
                .collect();
            let kept = self
                .services
                .remove(&view.id)
                .filter(|h| h.name == spec.name);
            let is_new = kept.is_none();
            let mut health = kept.unwrap_or_else(|| ServiceHealth::new(now, view.id, spec));
            if health.reconfigure(now, spec, &backends) || is_new {
                changed.push(view.id);
            }
            next.insert(view.id, health);
        }
        self.services = next;
        // Only the services that are new or changed are looked at again (with those already
        // awake): an unchanged sleeping service's overlay entry and gauges are still right.
        let services = &self.services;
        let names: std::collections::HashSet<&str> =
            services.values().map(|s| s.name.as_str()).collect();
        self.overlay
            .retain(|name, _| !all && names.contains(name.as_str()));
        self.awake.retain(|id| services.contains_key(id));
        if all {
            self.awake = self.services.keys().copied().collect();
        } else {
            self.awake.extend(changed);
        }
        self.overlay_changed = true;
    }

    /// Folds one lifecycle event (only connect outcomes matter here): a run of one.
    #[cfg(test)]
    pub(crate) fn on_event(&mut self, now: Instant, ev: &ConnEvent) {
        if let Some(outcome) = Outcome::of(ev) {
            let run = Run {
                service: ev.service_id,
                backend: ev.backend_id,
                outcome,
                count: 1,
                latency_sum: Duration::from_nanos(ev.duration_ns),
            };
            self.on_run(now, &run);
        }
    }

    /// Folds one run of outcomes from the event queue: the same as its events one by one.
    pub(crate) fn on_run(&mut self, now: Instant, run: &Run) {
        self.awake.insert(run.service);
        if run.outcome == Outcome::Limited {
            self.last_limited.insert(run.service, now);
        }
        let Some(svc) = self.services.get_mut(&run.service) else {
            return;
        };
        match run.outcome {
            Outcome::Success => svc.on_successes(now, run.backend, run.count, run.latency_sum),
            Outcome::Failure => svc.on_failures(now, run.backend, run.count),
            Outcome::Limited => {}
        }
    }

    /// Kernel TCP counters that moved (or were read for the first time) since the last call;
    /// a pair left out did not change.
    pub(crate) fn on_tcp(&mut self, now: Instant, changes: &[TcpChange]) {
        for c in changes {
            if let Some(svc) = self.services.get_mut(&c.key.service_id) {
                self.awake.insert(c.key.service_id);
                svc.on_tcp(now, c.key.backend_id, c.before.as_ref(), &c.after);
            }
        }
    }

    /// Evaluates the awake services: bans, probes and drains due.
    pub(crate) fn tick(&mut self, now: Instant) -> TickOutput {
        let mut out = TickOutput::default();
        let Self {
            services, awake, ..
        } = self;
        for id in awake.iter() {
            let Some(svc) = services.get_mut(id) else {
                continue;
            };
            for (backend, reason) in svc.evaluate(now) {
                if let Some(b) = svc.backends.get(&backend) {
                    out.bans.push((svc.name.clone(), b.addr, reason));
                }
            }
            let timeout = svc.bans.policy().probe_timeout;
            for backend in svc.bans.due_probes(now) {
                if let Some(b) = svc.backends.get(&backend) {
                    out.probes.push((*id, backend, b.addr, timeout));
                }
            }
            out.drains.extend(
                svc.due_drains(now)
                    .into_iter()
                    .map(|(backend, a)| (*id, backend, a)),
            );
        }
        out
    }

    pub(crate) fn probe_result(&mut self, now: Instant, service: u32, backend: u32, ok: bool) {
        self.awake.insert(service);
        if let Some(svc) = self.services.get_mut(&service) {
            if svc.bans.probe_result(now, backend, ok) == ProbeOutcome::Unbanned {
                // Failures of connects still in flight at ban time must not re-ban it.
                svc.forget_history(backend);
            }
        }
    }

    /// A ban the L7 proxy asks for (a request rule of an http service): the same bans,
    /// cap, probes and drains as the connect rules'. Returns the ban made, if any (`None`:
    /// unknown service or backend, already excluded, or the cap refused it).
    pub(crate) fn request_ban(
        &mut self,
        now: Instant,
        service: &str,
        backend: SocketAddr,
        reason: BanReason,
    ) -> Option<(String, SocketAddr, BanReason)> {
        let svc = self.services.values_mut().find(|s| s.name == service)?;
        self.awake.insert(svc.id);
        svc.request_ban(now, backend, reason)
            .then(|| (svc.name.clone(), backend, reason))
    }

    /// Fault injection from the operator: refuse this share of connects (ppm).
    pub(crate) fn set_fault(&mut self, service: &str, refuse_ppm: u32) -> bool {
        let Some(svc) = self.services.values_mut().find(|s| s.name == service) else {
            return false;
        };
        svc.fault_refuse_ppm = refuse_ppm;
        self.awake.insert(svc.id);
        true
    }

    /// Every service's overlay, computed now.
    pub(crate) fn overlay(&self, now: Instant) -> Overlay {
        self.services
            .values()
            .map(|svc| (svc.name.clone(), self.service_overlay(svc, now)))
            .collect()
    }

    fn overloaded(&self, service: u32, now: Instant) -> bool {
        self.last_limited
            .get(&service)
            .is_some_and(|t| now.saturating_duration_since(*t) < OVERLOAD_HOLD)
    }

    fn service_overlay(&self, svc: &ServiceHealth, now: Instant) -> ServiceOverlay {
        let level = self.top_priority.min(u8::MAX as u32) as u8;
        let min = shed::min_priority(svc.circuit.state(now), self.overloaded(svc.id, now), level);
        svc.overlay(now, u32::from(min))
    }

    /// The overlay with the awake services' entries computed now; `None` when it is what
    /// the last call returned. Equal to [`Engine::overlay`] at the same moment (a sleeping
    /// service's entry cannot have changed since it fell asleep).
    pub(crate) fn overlay_update(&mut self, now: Instant) -> Option<Overlay> {
        for id in &self.awake {
            let Some(svc) = self.services.get(id) else {
                continue;
            };
            let entry = self.service_overlay(svc, now);
            if self.overlay.get(&svc.name) != Some(&entry) {
                self.overlay.insert(svc.name.clone(), entry);
                self.overlay_changed = true;
            }
        }
        std::mem::take(&mut self.overlay_changed).then(|| self.overlay.clone())
    }

    /// Puts to sleep the services whose state cannot change without an input: detection
    /// settled (nothing banned, no panic), nothing left to drain, the circuit closed and
    /// no recent overload. Called after a tick's gauges and overlay were taken.
    pub(crate) fn settle(&mut self, now: Instant) {
        let asleep: Vec<u32> = self
            .awake
            .iter()
            .copied()
            .filter(|id| {
                self.services.get(id).is_none_or(|svc| {
                    svc.settled()
                        && svc.excluded_since.is_empty()
                        && svc.circuit.state(now) == CircuitState::Closed
                        && !self.overloaded(*id, now)
                })
            })
            .collect();
        for id in asleep {
            self.awake.remove(&id);
            self.last_limited.remove(&id);
        }
    }

    /// The awake services with their ids (the ones whose gauges may have changed).
    pub(crate) fn awake_services(&self) -> impl Iterator<Item = (&u32, &ServiceHealth)> {
        self.awake
            .iter()
            .filter_map(|id| self.services.get_key_value(id))
    }

    /// How many services a tick visits now.
    #[cfg(test)]
    pub(crate) fn awake_count(&self) -> usize {
        self.awake.len()
    }

    /// A service by its id.
    pub(crate) fn service(&self, id: u32) -> Option<&ServiceHealth> {
        self.services.get(&id)
    }

    /// The services with their ids.
    #[cfg(test)]
    pub(crate) fn services_by_id(&self) -> impl Iterator<Item = (&u32, &ServiceHealth)> {
        self.services.iter()
    }

    /// `/v1/bans`: every excluded backend with why and until when.
    pub(crate) fn bans_json(&self, now: Instant) -> Value {
        let rows: Vec<Value> = self
            .services
            .values()
            .flat_map(|svc| {
                svc.bans.views().into_iter().filter_map(move |v| {
                    let addr = svc.backends.get(&v.id)?.addr;
                    let (state, remaining) = match v.exclusion {
                        Exclusion::Banned { until } => {
                            ("banned", until.saturating_duration_since(now))
                        }
                        Exclusion::Probing { .. } => ("probing", Duration::ZERO),
                    };
                    Some(json!({
                        "service": svc.name, "backend": addr.to_string(), "state": state,
                        "reason": v.reason.as_str(), "streak": v.streak,
                        "remaining_seconds": remaining.as_secs_f64(),
                    }))
                })
            })
            .collect();
        Value::Array(rows)
    }

    /// `/v1/circuits`: circuit state, panic mode, shedding and faults per service.
    pub(crate) fn circuits_json(&self, now: Instant) -> Value {
        let overlay = self.overlay(now);
        let rows: Vec<Value> = self
            .services
            .values()
            .map(|svc| {
                let state = svc.circuit.state(now);
                let ov = &overlay[&svc.name];
                json!({
                    "service": svc.name,
                    "state": state.as_str(),
                    "admit_percent": svc.circuit.admit_ppm(now) as f64 / 1e4,
                    "reopens_in_seconds": (state == CircuitState::Open)
                        .then(|| svc.circuit.open_until().map(|u| u.saturating_duration_since(now).as_secs_f64())),
                    "panic_mode": svc.bans.panic_mode(),
                    "min_priority": ov.min_priority,
                    "fault_refuse_percent": svc.fault_refuse_ppm as f64 / 1e4,
                })
            })
            .collect();
        Value::Array(rows)
    }
}

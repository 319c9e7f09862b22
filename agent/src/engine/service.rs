//! One service's health: per-backend windows and counters, its ban book and circuit, and the
//! operator's fault injection. Pure; every call takes `now`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use sockmesh_common::BackendTcpStats;
use sockmesh_model::{CircuitSpec, OutlierSpec, ServiceSpec};
use tokio::time::Instant;

use super::tcp_window::TcpWindow;
use crate::{
    health::{
        ban::{BanBook, BanPolicy},
        circuit::{Circuit, CircuitPolicy, CircuitState},
        outlier::{detect, BackendSignals, BanReason, OutlierPolicy},
        window::{OutcomeWindow, Tally},
    },
    tables::{CircuitFlag, ServiceOverlay},
};

pub(super) fn outlier_policy(s: &OutlierSpec) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_failures: s.consecutive_failures,
        failure_ratio: s.failure_ratio,
        window: s.window.0,
        min_requests: u64::from(s.min_requests),
        deviation_factor: s.deviation_factor,
        deviation_min_backends: s.deviation_min_backends as usize,
        base_ban: s.base_ban.0,
        max_ban: s.max_ban.0,
        reset_after: s.reset_after.0,
        max_banned_percent: s.max_banned_percent,
        probe_timeout: s.probe_timeout.0,
    }
}

pub(super) fn circuit_policy(s: &CircuitSpec) -> CircuitPolicy {
    CircuitPolicy {
        min_success_ratio: s.min_success_ratio,
        window: s.window.0,
        min_requests: u64::from(s.min_requests),
        cooldown: s.cooldown.0,
        max_cooldown: s.max_cooldown.0,
        half_open_admit_percent: s.half_open_admit_percent,
        half_open_successes: s.half_open_successes,
    }
}

#[derive(Debug)]
pub(crate) struct BackendHealth {
    pub addr: SocketAddr,
    window: OutcomeWindow,
    consecutive_failures: u32,
    tcp: TcpWindow,
}

impl BackendHealth {
    fn new(now: Instant, addr: SocketAddr, window: Duration) -> Self {
        Self {
            addr,
            window: OutcomeWindow::new(now, window),
            consecutive_failures: 0,
            tcp: TcpWindow::default(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ServiceHealth {
    pub name: String,
    pub id: u32,
    policy: OutlierPolicy,
    pub backends: BTreeMap<u32, BackendHealth>,
    pub bans: BanBook,
    pub circuit: Circuit,
    pub fault_refuse_ppm: u32,
    /// When each backend left the slot table (banned or removed), with the id the connect
    /// hook stamped its sockets with (a removed backend's id is in no view any more), for
    /// draining.
    pub excluded_since: BTreeMap<SocketAddr, (u32, Instant)>,
    pub drain_grace: Duration,
    /// Until when inputs recorded so far can still change what detection sees (outcomes
    /// and changed TCP counters stay in the windows this long).
    busy_until: Instant,
    /// When detection last ran and found nothing, with nothing excluded and no panic.
    clean_at: Option<Instant>,
}

impl ServiceHealth {
    pub(crate) fn new(now: Instant, id: u32, spec: &ServiceSpec) -> Self {
        let policy = outlier_policy(&spec.outlier);
        Self {
            name: spec.name.clone(),
            id,
            bans: BanBook::new(BanPolicy::from(&policy)),
            circuit: Circuit::new(now, circuit_policy(&spec.circuit)),
            policy,
            backends: BTreeMap::new(),
            fault_refuse_ppm: 0,
            excluded_since: BTreeMap::new(),
            drain_grace: spec.drain_grace.0,
            busy_until: now,
            clean_at: None,
        }
    }

    /// An input detection reads changed at `now`: it may matter until it left the windows.
    fn touched(&mut self, now: Instant) {
        self.busy_until = self.busy_until.max(now + self.policy.window * 2);
    }

    /// True when detection would find what it found at `clean_at` (nothing): no input
    /// changed since it settled, nothing is excluded and panic mode is off. An idle service
    /// of a large mesh then costs nothing per tick.
    pub(crate) fn settled(&self) -> bool {
        self.clean_at.is_some_and(|t| t >= self.busy_until)
            && !self.bans.any_excluded()
            && !self.bans.panic_mode()
    }

    /// The config changed: keep state for backends that stay, forget the others. Returns
    /// whether anything of this service changed (nothing: its state stays as it was).
    pub(crate) fn reconfigure(
        &mut self,
        now: Instant,
        spec: &ServiceSpec,
        backends: &[(u32, SocketAddr)],
    ) -> bool {
        let same_backends = self.backends.len() == backends.len()
            && backends
                .iter()
                .all(|(id, addr)| self.backends.get(id).is_some_and(|b| b.addr == *addr));
        let policy = outlier_policy(&spec.outlier);
        let circuit = circuit_policy(&spec.circuit);
        if same_backends
            && policy == self.policy
            && &circuit == self.circuit.policy()
            && self.drain_grace == spec.drain_grace.0
        {
            return false;
        }
        if policy != self.policy {
            self.bans = BanBook::new(BanPolicy::from(&policy));
            self.policy = policy;
        }
        if &circuit != self.circuit.policy() {
            self.circuit = Circuit::new(now, circuit);
        }
        self.drain_grace = spec.drain_grace.0;
        self.clean_at = None;
        let keep: BTreeSet<u32> = backends.iter().map(|(id, _)| *id).collect();
        for gone in self
            .backends
            .keys()
            .copied()
            .filter(|id| !keep.contains(id))
            .collect::<Vec<_>>()
        {
            self.bans.forget(gone);
            if let Some(b) = self.backends.remove(&gone) {
                // A removed backend drains like a banned one.
                self.excluded_since.entry(b.addr).or_insert((gone, now));
            }
        }
        for (id, addr) in backends {
            self.excluded_since.remove(addr);
            self.backends
                .entry(*id)
                .or_insert_with(|| BackendHealth::new(now, *addr, self.policy.window));
        }
        true
    }

    /// `count` connects in a row to `backend` established, with `latency_sum` of handshakes
    /// (a run from the event queue): the same as one success at a time.
    pub(crate) fn on_successes(
        &mut self,
        now: Instant,
        backend: u32,
        count: u64,
        latency_sum: Duration,
    ) {
        self.touched(now);
        if let Some(b) = self.backends.get_mut(&backend) {
            b.window.record(
                now,
                &Tally {
                    attempts: count,
                    failures: 0,
                    latency_samples: count,
                    latency_sum,
                },
            );
            b.consecutive_failures = 0;
        }
        self.circuit.record(now, count, 0);
    }

    /// `count` connects in a row to `backend` failed (a run from the event queue): the
    /// same as one failure at a time.
    pub(crate) fn on_failures(&mut self, now: Instant, backend: u32, count: u64) {
        self.touched(now);
        if let Some(b) = self.backends.get_mut(&backend) {
            b.window.record(
                now,
                &Tally {
                    attempts: count,
                    failures: count,
                    ..Tally::default()
                },
            );
            let add = u32::try_from(count).unwrap_or(u32::MAX);
            b.consecutive_failures = b.consecutive_failures.saturating_add(add);
        }
        self.circuit.record(now, 0, count);
    }

    #[cfg(test)]
    pub(crate) fn tcp_rates_of(&self, now: Instant, backend: u32) -> (Option<f64>, Option<f64>) {
        self.backends
            .get(&backend)
            .map_or((None, None), |b| b.tcp.rates(now, self.policy.window))
    }

    /// `backend`'s kernel TCP counters moved from `before` (unknown on a first read) to
    /// `after` ([`TcpWindow::record`]).
    pub(crate) fn on_tcp(
        &mut self,
        now: Instant,
        backend: u32,
        before: Option<&BackendTcpStats>,
        after: &BackendTcpStats,
    ) {
        let window = self.policy.window;
        let changed = self
            .backends
            .get_mut(&backend)
            .is_some_and(|b| b.tcp.record(now, window, before, after));
        if changed {
            self.touched(now);
        }
    }

    /// Starts a backend's outcome history afresh (it was let back in).
    pub(crate) fn forget_history(&mut self, backend: u32) {
        self.clean_at = None;
        if let Some(b) = self.backends.get_mut(&backend) {
            b.window.clear();
            b.consecutive_failures = 0;
        }
    }

    /// Runs detection and bans; returns backends newly banned (id, reason).
    pub(crate) fn evaluate(&mut self, now: Instant) -> Vec<(u32, BanReason)> {
        if self.settled() {
            return Vec::new();
        }
        let signals: Vec<BackendSignals> = self
            .backends
            .iter()
            .filter(|(id, _)| !self.bans.is_excluded(**id))
            .map(|(id, b)| {
                let t = b.window.totals(now);
                let (retransmit_rate, srtt_mean_us) = b.tcp.rates(now, self.policy.window);
                BackendSignals {
                    id: *id,
                    consecutive_failures: b.consecutive_failures,
                    attempts: t.attempts,
                    failures: t.failures,
                    handshake_mean_ms: t.mean_latency().map(|d| d.as_secs_f64() * 1e3),
                    srtt_mean_us,
                    retransmit_rate,
                }
            })
            .collect();
        let outliers = detect(&self.policy, &signals);
        let outcomes = self.bans.evaluate(now, &outliers, self.backends.len());
        self.clean_at =
            (outliers.is_empty() && !self.bans.any_excluded() && !self.bans.panic_mode())
                .then_some(now);
        let mut banned = Vec::new();
        for ((id, reason), (_, outcome)) in outliers.iter().zip(&outcomes) {
            if matches!(outcome, crate::health::ban::BanOutcome::Banned { .. }) {
                if let Some(b) = self.backends.get_mut(id) {
                    // Its window described the backend before the ban: start clean on return.
                    b.window.clear();
                    b.consecutive_failures = 0;
                    self.excluded_since.entry(b.addr).or_insert((*id, now));
                }
                banned.push((*id, *reason));
            }
        }
        banned
    }

    /// Bans the backend at `addr` for `reason` (a request rule), within the same cap as
    /// [`ServiceHealth::evaluate`]'s bans; true if it was banned now.
    pub(crate) fn request_ban(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        reason: BanReason,
    ) -> bool {
        let Some((&id, _)) = self.backends.iter().find(|(_, b)| b.addr == addr) else {
            return false;
        };
        let outcome = self.bans.request_ban(now, id, reason, self.backends.len());
        if !matches!(outcome, crate::health::ban::BanOutcome::Banned { .. }) {
            return false;
        }
        self.clean_at = None;
        if let Some(b) = self.backends.get_mut(&id) {
            b.window.clear();
            b.consecutive_failures = 0;
            self.excluded_since.entry(b.addr).or_insert((id, now));
        }
        true
    }

    /// The overlay the kernel should run for this service now.
    pub(crate) fn overlay(&self, now: Instant, min_priority: u32) -> ServiceOverlay {
        let circuit = match self.circuit.state(now) {
            CircuitState::Closed => CircuitFlag::Closed,
            CircuitState::HalfOpen => CircuitFlag::HalfOpen(self.circuit.admit_ppm(now)),
            CircuitState::Open => CircuitFlag::Open,
        };
        let excluded = self
            .bans
            .excluded()
            .iter()
            .filter_map(|id| self.backends.get(id).map(|b| b.addr))
            .collect();
        ServiceOverlay {
            circuit,
            min_priority,
            fault_refuse_ppm: self.fault_refuse_ppm,
            excluded,
        }
    }

    /// Backends (id, address) whose drain grace ran out while they stayed out of the slot
    /// table.
    pub(crate) fn due_drains(&mut self, now: Instant) -> Vec<(u32, SocketAddr)> {
        if self.excluded_since.is_empty() {
            return Vec::new();
        }
        let excluded: BTreeSet<SocketAddr> = self
            .bans
            .excluded()
            .iter()
            .filter_map(|id| self.backends.get(id).map(|b| b.addr))
            .collect();
        let configured: BTreeSet<SocketAddr> = self.backends.values().map(|b| b.addr).collect();
        // Returned backends (probe passed) stop draining.
        self.excluded_since
            .retain(|addr, _| excluded.contains(addr) || !configured.contains(addr));
        let grace = self.drain_grace;
        let due: Vec<(u32, SocketAddr)> = self
            .excluded_since
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= grace)
            .map(|(a, (id, _))| (*id, *a))
            .collect();
        for (_, a) in &due {
            self.excluded_since.remove(a);
        }
        due
    }
}

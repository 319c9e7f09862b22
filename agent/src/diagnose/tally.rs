//! What the [`super::Recorder`] adds up per 10 s bucket: connect outcomes per line and per
//! backend, the mesh's overload refusals, CPU starvation per workload, and the L7 proxy's
//! requests per service and per backend.

use super::periods::Tally;

/// Connects of one caller to one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ConnTally {
    pub ok: u64,
    /// Every failed connect the caller saw, the mesh's own refusals included.
    pub failed: u64,
    /// The part of `failed` the mesh refused (circuit, limits, shedding, ACL, faults, no backend).
    pub mesh_refused: u64,
    pub handshake_count: u64,
    pub handshake_sum_ns: u64,
}

impl ConnTally {
    pub(crate) fn handshake_mean_ms(&self) -> Option<f64> {
        (self.handshake_count > 0)
            .then(|| self.handshake_sum_ns as f64 / self.handshake_count as f64 / 1e6)
    }
}

impl Tally for ConnTally {
    fn add(&mut self, o: &Self) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.mesh_refused += o.mesh_refused;
        self.handshake_count += o.handshake_count;
        self.handshake_sum_ns += o.handshake_sum_ns;
    }
}

/// One backend of one service: connect outcomes from events, TCP counters from the kernel.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BackendTally {
    pub ok: u64,
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub handshake_count: u64,
    pub handshake_sum_ns: u64,
    pub established: u64,
    pub closed: u64,
    pub retransmits: u64,
    pub rtos: u64,
}

impl Tally for BackendTally {
    fn add(&mut self, o: &Self) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.unreachable += o.unreachable;
        self.handshake_count += o.handshake_count;
        self.handshake_sum_ns += o.handshake_sum_ns;
        self.established += o.established;
        self.closed += o.closed;
        self.retransmits += o.retransmits;
        self.rtos += o.rtos;
    }
}

/// The mesh's refusals of one service that say "overloaded".
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RefusalTally {
    pub limited: u64,
    pub shed: u64,
    pub circuit_open: u64,
}

impl Tally for RefusalTally {
    fn add(&mut self, o: &Self) {
        self.limited += o.limited;
        self.shed += o.shed;
        self.circuit_open += o.circuit_open;
    }
}

/// One workload's CPU starvation over some stretch (`seconds` of it observed).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CpuTally {
    pub seconds: f64,
    pub waits: u64,
    pub wait_sum_us: u64,
    pub waits_over_1ms: u64,
    pub nr_throttled: u64,
    pub throttled_seconds: f64,
}

impl Tally for CpuTally {
    fn add(&mut self, o: &Self) {
        self.seconds += o.seconds;
        self.waits += o.waits;
        self.wait_sum_us += o.wait_sum_us;
        self.waits_over_1ms += o.waits_over_1ms;
        self.nr_throttled += o.nr_throttled;
        self.throttled_seconds += o.throttled_seconds;
    }
}

/// Requests of one service, or of one backend of it, as the L7 proxy reported them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestTally {
    pub requests: u64,
    /// Failed the service: 5xx, a gRPC server error, or never answered.
    pub failed: u64,
    /// Of `failed`, the proxy's own 502 or 504 after the backend's try (backends only).
    pub gateway: u64,
    /// Requests within each `request_latency` threshold (µs) of the service (services
    /// only; a few per service, from the config).
    pub within: std::collections::BTreeMap<u64, u64>,
}

impl Tally for RequestTally {
    fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.gateway += o.gateway;
        for (threshold, n) in &o.within {
            *self.within.entry(*threshold).or_default() += n;
        }
    }
}

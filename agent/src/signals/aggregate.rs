//! Folding lifecycle events into per-(service, backend) tallies and a recent-failures log.
//! Pure: the ring-buffer reader feeds it decoded events; the admin API and metrics read it.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use sockmesh_common::{
    is_mesh_refusal, ConnEvent, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_CIRCUIT_OPEN,
    RESULT_DENIED, RESULT_FAULT, RESULT_LIMITED, RESULT_NO_BACKEND, RESULT_OK, RESULT_REFUSED,
    RESULT_RESET, RESULT_SHED, RESULT_TIMEOUT, RESULT_UNREACHABLE,
};

pub(crate) const RECENT_FAILURES: usize = 100;

/// Label value of a kernel result code.
pub(crate) fn result_name(result: u32) -> &'static str {
    ConnectResult::from_code(result).as_str()
}

/// A connect's outcome as the kernel reports it: the `result` label of
/// `sockmesh_connections_total` (`Reset` is counted at close, [`super::metrics`]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum ConnectResult {
    Ok,
    Refused,
    Timeout,
    Unreachable,
    Reset,
    NoBackend,
    Denied,
    CircuitOpen,
    Shed,
    Limited,
    Fault,
    /// A code this agent does not know (newer programs).
    Other,
}

impl ConnectResult {
    /// Every outcome (to remove a backend's series of each).
    pub(crate) const ALL: [Self; 12] = [
        Self::Ok,
        Self::Refused,
        Self::Timeout,
        Self::Unreachable,
        Self::Reset,
        Self::NoBackend,
        Self::Denied,
        Self::CircuitOpen,
        Self::Shed,
        Self::Limited,
        Self::Fault,
        Self::Other,
    ];

    pub(crate) fn from_code(result: u32) -> Self {
        match result {
            RESULT_OK => Self::Ok,
            RESULT_REFUSED => Self::Refused,
            RESULT_TIMEOUT => Self::Timeout,
            RESULT_UNREACHABLE => Self::Unreachable,
            RESULT_RESET => Self::Reset,
            RESULT_NO_BACKEND => Self::NoBackend,
            RESULT_DENIED => Self::Denied,
            RESULT_CIRCUIT_OPEN => Self::CircuitOpen,
            RESULT_SHED => Self::Shed,
            RESULT_LIMITED => Self::Limited,
            RESULT_FAULT => Self::Fault,
            _ => Self::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Reset => "reset",
            Self::NoBackend => "no_backend",
            Self::Denied => "denied",
            Self::CircuitOpen => "circuit_open",
            Self::Shed => "shed",
            Self::Limited => "limited",
            Self::Fault => "fault",
            Self::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct ConnectCounts {
    pub ok: u64,
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub reset: u64,
}

/// What events say about one (service id, backend id).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct BackendTally {
    pub connects: ConnectCounts,
    pub handshake_count: u64,
    pub handshake_sum_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl BackendTally {
    pub(crate) fn handshake_mean_ms(&self) -> Option<f64> {
        (self.handshake_count > 0)
            .then(|| self.handshake_sum_ns as f64 / self.handshake_count as f64 / 1e6)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Failure {
    pub unix_ms: u64,
    pub service: String,
    pub backend: String,
    pub caller: String,
    pub result: &'static str,
    pub duration_ms: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Aggregates {
    pub backends: BTreeMap<(u32, u32), BackendTally>,
    /// The mesh's own refusals per (service id, result): no backend to attribute them to.
    pub refused: BTreeMap<(u32, u32), u64>,
    pub recent_failures: VecDeque<Failure>,
    pub events: u64,
}

impl Aggregates {
    /// Folds one event. `failure` builds the human record for failed connects (names are
    /// resolved by the caller, which owns the topology).
    pub(crate) fn fold(&mut self, ev: &ConnEvent, failure: impl FnOnce() -> Failure) {
        self.events += 1;
        match ev.kind {
            EVENT_ESTABLISHED => {
                let t = self
                    .backends
                    .entry((ev.service_id, ev.backend_id))
                    .or_default();
                t.connects.ok += 1;
                t.handshake_count += 1;
                t.handshake_sum_ns += ev.duration_ns;
            }
            EVENT_FAILED if is_mesh_refusal(ev.result) => {
                *self.refused.entry((ev.service_id, ev.result)).or_default() += 1;
                self.remember(failure());
            }
            EVENT_FAILED => {
                let t = self
                    .backends
                    .entry((ev.service_id, ev.backend_id))
                    .or_default();
                match ev.result {
                    RESULT_REFUSED => t.connects.refused += 1,
                    RESULT_UNREACHABLE => t.connects.unreachable += 1,
                    _ => t.connects.timeout += 1,
                }
                self.remember(failure());
            }
            EVENT_CLOSED => {
                let t = self
                    .backends
                    .entry((ev.service_id, ev.backend_id))
                    .or_default();
                t.bytes_sent += ev.bytes_acked;
                t.bytes_received += ev.bytes_received;
                if ev.result == RESULT_RESET {
                    t.connects.reset += 1;
                }
            }
            _ => {}
        }
    }

    fn remember(&mut self, f: Failure) {
        if self.recent_failures.len() == RECENT_FAILURES {
            self.recent_failures.pop_back();
        }
        self.recent_failures.push_front(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_common::EVENT_INBOUND;

    fn ev(kind: u32, result: u32, backend: u32) -> ConnEvent {
        ConnEvent {
            kind,
            result,
            service_id: 1,
            backend_id: backend,
            cgroup_id: 7,
            duration_ns: 2_000_000,
            bytes_acked: 10,
            bytes_received: 20,
            srtt_us: 50,
            family: 2,
            ..ConnEvent::ZERO
        }
    }

    fn failure() -> Failure {
        Failure {
            unix_ms: 1,
            service: "s".into(),
            backend: "b".into(),
            caller: "c".into(),
            result: "refused",
            duration_ms: 0.0,
        }
    }

    #[test]
    fn folds_each_kind() {
        let mut a = Aggregates::default();
        a.fold(&ev(EVENT_ESTABLISHED, RESULT_OK, 2), failure);
        a.fold(&ev(EVENT_ESTABLISHED, RESULT_OK, 2), failure);
        a.fold(&ev(EVENT_FAILED, RESULT_REFUSED, 2), failure);
        a.fold(&ev(EVENT_FAILED, RESULT_TIMEOUT, 3), failure);
        a.fold(&ev(EVENT_CLOSED, RESULT_RESET, 2), failure);
        a.fold(&ev(EVENT_FAILED, RESULT_NO_BACKEND, 0), failure);
        a.fold(&ev(EVENT_INBOUND, RESULT_OK, 0), failure);
        let b2 = &a.backends[&(1, 2)];
        assert_eq!(
            b2.connects,
            ConnectCounts {
                ok: 2,
                refused: 1,
                timeout: 0,
                unreachable: 0,
                reset: 1
            }
        );
        assert_eq!(b2.handshake_mean_ms(), Some(2.0));
        assert_eq!(b2.bytes_sent, 10);
        assert_eq!(a.backends[&(1, 3)].connects.timeout, 1);
        assert_eq!(a.refused[&(1, RESULT_NO_BACKEND)], 1);
        assert_eq!(a.recent_failures.len(), 3);
        assert_eq!(a.events, 7);
    }

    #[test]
    fn recent_failures_are_bounded_newest_first() {
        let mut a = Aggregates::default();
        for i in 0..(RECENT_FAILURES as u64 + 10) {
            a.fold(&ev(EVENT_FAILED, RESULT_REFUSED, 2), || Failure {
                unix_ms: i,
                ..failure()
            });
        }
        assert_eq!(a.recent_failures.len(), RECENT_FAILURES);
        assert_eq!(a.recent_failures[0].unix_ms, RECENT_FAILURES as u64 + 9);
    }
}

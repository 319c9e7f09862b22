//! The health engine's decisions, applied over the config: circuit state, shedding level,
//! fault injection and the backends that are out of the slot table (banned or awaiting a
//! probe). Kept apart from the config so a ban never edits what the operator wrote.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use sockmesh_common::{
    gcra::gcra_params, ServiceEntry, SERVICE_ACL, SERVICE_CIRCUIT_OPEN, SERVICE_HALF_OPEN,
};
use sockmesh_model::ServiceSpec;

pub(crate) const PPM: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum CircuitFlag {
    #[default]
    Closed,
    /// Admit this share of connects, in ppm.
    HalfOpen(u32),
    Open,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceOverlay {
    pub circuit: CircuitFlag,
    /// Callers whose priority level is below this are shed (0: nobody).
    pub min_priority: u32,
    /// Fault injection: share of connects refused, in ppm.
    pub fault_refuse_ppm: u32,
    /// Backends kept out of the slot table.
    pub excluded: BTreeSet<SocketAddr>,
}

/// Overlays by service name; a service without one runs on its config alone.
pub(crate) type Overlay = BTreeMap<String, ServiceOverlay>;

/// The kernel's service entry for `spec` with `overlay` applied.
pub(crate) fn service_entry(
    id: u32,
    lb: u32,
    spec: &ServiceSpec,
    overlay: &ServiceOverlay,
) -> ServiceEntry {
    let (circuit_flags, admit_ppm) = match overlay.circuit {
        CircuitFlag::Closed => (0, PPM),
        CircuitFlag::HalfOpen(ppm) => (SERVICE_HALF_OPEN, ppm.min(PPM)),
        CircuitFlag::Open => (SERVICE_CIRCUIT_OPEN, 0),
    };
    let acl = if spec.allowed_callers.is_some() {
        SERVICE_ACL
    } else {
        0
    };
    let (rate_interval_ns, rate_burst_ns) = match spec.limits.connect_rate {
        Some(rate) => gcra_params(rate, spec.limits.connect_burst.unwrap_or(1)),
        None => (0, 0),
    };
    ServiceEntry {
        id,
        lb,
        flags: circuit_flags | acl,
        admit_ppm,
        min_priority: overlay.min_priority,
        max_conns: spec.limits.max_connections.unwrap_or(0),
        max_conns_per_caller: spec.limits.max_connections_per_caller.unwrap_or(0),
        fault_refuse_ppm: overlay.fault_refuse_ppm.min(PPM),
        rate_interval_ns,
        rate_burst_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_model::{BackendSpec, LbPolicy};

    fn spec() -> ServiceSpec {
        let b = BackendSpec {
            addr: "127.0.0.2:81".parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            zone: None,
        };
        ServiceSpec::new(
            "web",
            "127.100.0.1".parse().unwrap(),
            80,
            LbPolicy::RoundRobin,
            vec![b],
        )
    }

    #[test]
    fn closed_config_only_entry_admits_everyone() {
        let e = service_entry(3, 1, &spec(), &ServiceOverlay::default());
        assert_eq!(
            (e.id, e.lb, e.flags, e.admit_ppm, e.min_priority),
            (3, 1, 0, PPM, 0)
        );
        assert_eq!(
            (e.max_conns, e.rate_interval_ns, e.fault_refuse_ppm),
            (0, 0, 0)
        );
    }

    #[test]
    fn overlay_and_limits_reach_the_entry() {
        let mut s = spec();
        s.limits.max_connections = Some(10);
        s.limits.connect_rate = Some(100);
        s.allowed_callers = Some(vec!["a".into()]);
        let ov = ServiceOverlay {
            circuit: CircuitFlag::HalfOpen(100_000),
            min_priority: 2,
            fault_refuse_ppm: 2 * PPM,
            excluded: BTreeSet::new(),
        };
        let e = service_entry(1, 0, &s, &ov);
        assert_eq!(e.flags, SERVICE_HALF_OPEN | SERVICE_ACL);
        assert_eq!((e.admit_ppm, e.min_priority, e.max_conns), (100_000, 2, 10));
        assert_eq!(e.fault_refuse_ppm, PPM, "clamped");
        assert_eq!(e.rate_interval_ns, 10_000_000, "100/s is one every 10 ms");
        let open = service_entry(
            1,
            0,
            &s,
            &ServiceOverlay {
                circuit: CircuitFlag::Open,
                ..ov
            },
        );
        assert_eq!(
            (open.flags & SERVICE_CIRCUIT_OPEN, open.admit_ppm),
            (SERVICE_CIRCUIT_OPEN, 0)
        );
    }
}

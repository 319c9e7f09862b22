//! Map pressure gauges: how full each hash map the agent relies on is, as two gauges,
//! `sockmesh_map_entries{map}` and `sockmesh_map_capacity{map}`, and one log line when a map
//! crosses 90% of its capacity (once per crossing: it re-arms only after the map fell below
//! 85%, so a map hovering at the threshold does not log every second).
//!
//! Where the counts come from (see [`super`], fed by `Signals::refresh`): the agent's own mirror for the
//! tables it writes (services, slot tables, backends, ACL, backend TCP stats, callers,
//! workload threads), and a bounded count for the maps the kernel fills (`SM_SOCK_STAMPS`,
//! `SM_CALLER_CONNS`, the same-node notes and `SM_PROXY_ORIGINS`, all LRU, and the same-node
//! socket hash).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{gauge::ConstGauge, MetricType},
    registry::Registry,
};
use sockmesh_common::{
    ACL_MAP, BACKENDS_MAP, BACKEND_STATS_MAP, CALLERS_MAP, CALLER_CONNS_MAP, MAX_ACL, MAX_BACKENDS,
    MAX_BACKEND_STATS, MAX_CALLERS, MAX_PROXY_ORIGINS, MAX_SAME_NODE_SOCKS, MAX_SERVICES,
    MAX_SLOT_TABLES, MAX_SOCK_STAMPS, MAX_WORKLOAD_TIDS, PROXY_ORIGINS_MAP, SAME_NODE_PENDING_MAP,
    SAME_NODE_SOCKS_MAP, SAME_NODE_TCP_MAP, SERVICES_MAP, SLOT_TABLES_MAP, SOCK_STAMPS_MAP,
    WORKLOAD_TIDS_MAP,
};
use tracing::{info, warn};

/// A map at or above this share of its capacity is reported (once).
pub(crate) const WARN_RATIO: f64 = 0.9;
/// ... and reported again only after it fell below this share.
pub(crate) const REARM_RATIO: f64 = 0.85;

/// A kernel map with a pressure gauge; its `map` label value is the map's pinned name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum KernelMap {
    Services,
    SlotTables,
    Backends,
    BackendStats,
    Acl,
    Callers,
    WorkloadTids,
    SockStamps,
    CallerConns,
    SameNodePending,
    SameNodeSocks,
    SameNodeTcp,
    ProxyOrigins,
}

impl KernelMap {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Services => SERVICES_MAP,
            Self::SlotTables => SLOT_TABLES_MAP,
            Self::Backends => BACKENDS_MAP,
            Self::BackendStats => BACKEND_STATS_MAP,
            Self::Acl => ACL_MAP,
            Self::Callers => CALLERS_MAP,
            Self::WorkloadTids => WORKLOAD_TIDS_MAP,
            Self::SockStamps => SOCK_STAMPS_MAP,
            Self::CallerConns => CALLER_CONNS_MAP,
            Self::SameNodePending => SAME_NODE_PENDING_MAP,
            Self::SameNodeSocks => SAME_NODE_SOCKS_MAP,
            Self::SameNodeTcp => SAME_NODE_TCP_MAP,
            Self::ProxyOrigins => PROXY_ORIGINS_MAP,
        }
    }

    fn watched(self) -> &'static WatchedMap {
        WATCHED
            .iter()
            .find(|m| m.map == self)
            .expect("every KernelMap is watched")
    }
}

// The derive writes a variant's identifier; the label is the map's name (`SM_SERVICES`).
impl EncodeLabelValue for KernelMap {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

/// One watched map: which, its `max_entries`, and what happens when it is full.
pub(crate) struct WatchedMap {
    pub(crate) map: KernelMap,
    pub(crate) capacity: u32,
    pub(crate) when_full: &'static str,
}

/// Every map with a pressure gauge, in exposition order.
pub(crate) const WATCHED: [WatchedMap; 13] = [
    WatchedMap {
        map: KernelMap::Services,
        capacity: MAX_SERVICES,
        when_full: "configs with more services are rejected (the previous config stays)",
    },
    WatchedMap {
        map: KernelMap::SlotTables,
        capacity: MAX_SLOT_TABLES,
        when_full: "configs with more services are rejected (the previous config stays)",
    },
    WatchedMap {
        map: KernelMap::Backends,
        capacity: MAX_BACKENDS,
        when_full: "configs with more backend addresses are rejected (the previous config stays)",
    },
    WatchedMap {
        map: KernelMap::BackendStats,
        capacity: MAX_BACKEND_STATS,
        when_full: "configs with more (service, backend) pairs are rejected (the previous config stays)",
    },
    WatchedMap {
        map: KernelMap::Acl,
        capacity: MAX_ACL,
        when_full: "configs with more allowed (service, workload) pairs are rejected (the previous config stays)",
    },
    WatchedMap {
        map: KernelMap::Callers,
        capacity: MAX_CALLERS,
        when_full: "cgroups of workloads beyond it count as unknown callers (no ACL grant, default priority)",
    },
    WatchedMap {
        map: KernelMap::WorkloadTids,
        capacity: MAX_WORKLOAD_TIDS,
        when_full: "threads beyond it get no run-queue latency samples",
    },
    WatchedMap {
        map: KernelMap::SockStamps,
        capacity: MAX_SOCK_STAMPS,
        when_full: "LRU: the least recently used sockets lose their stamp (getpeername then \
                    answers the backend, and the socket is no longer observed); connects never fail",
    },
    WatchedMap {
        map: KernelMap::CallerConns,
        capacity: MAX_ACL,
        when_full: "LRU: the least recently used (service, caller) counters are evicted and \
                    per-caller connection limits restart counting for them; connects never fail",
    },
    WatchedMap {
        map: KernelMap::SameNodePending,
        capacity: MAX_SAME_NODE_SOCKS,
        when_full: "LRU: the oldest same-node clients still waiting for their server end are \
                    forgotten and stay on TCP; connections never fail",
    },
    WatchedMap {
        map: KernelMap::SameNodeSocks,
        capacity: MAX_SAME_NODE_SOCKS,
        when_full: "new same-node connections stay on loopback TCP (their sockets do not fit in \
                    the socket hash); joined pairs and all connections are untouched",
    },
    WatchedMap {
        map: KernelMap::SameNodeTcp,
        capacity: MAX_SAME_NODE_SOCKS,
        when_full: "LRU: the oldest same-node senders that fell back to TCP are forgotten and \
                    try the fast path again (it falls back again if there is no peer)",
    },
    WatchedMap {
        map: KernelMap::ProxyOrigins,
        capacity: MAX_PROXY_ORIGINS,
        when_full: "LRU: the least recently used proxied connections lose their origin, and \
                    the proxy cannot tell their service and caller",
    },
];

/// A crossing of the warning threshold, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crossing {
    Above,
    Below,
}

/// Hysteresis for one map: reports [`Crossing::Above`] when entries reach [`WARN_RATIO`] of
/// capacity, then nothing until they fall under [`REARM_RATIO`] ([`Crossing::Below`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermark {
    above: bool,
}

impl Watermark {
    pub(crate) fn update(&mut self, entries: u64, capacity: u64) -> Option<Crossing> {
        if capacity == 0 {
            return None;
        }
        let ratio = entries as f64 / capacity as f64;
        if !self.above && ratio >= WARN_RATIO {
            self.above = true;
            Some(Crossing::Above)
        } else if self.above && ratio < REARM_RATIO {
            self.above = false;
            Some(Crossing::Below)
        } else {
            None
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Level {
    entries: u64,
    mark: Watermark,
}

/// The latest entry count of every watched map. Shared by the refresh that records counts
/// and the collector that exports them.
#[derive(Debug, Default)]
pub(crate) struct MapPressure {
    levels: Mutex<BTreeMap<KernelMap, Level>>,
}

impl MapPressure {
    /// An empty record whose gauges are registered in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Arc<Self> {
        let pressure = Arc::new(Self::default());
        registry.register_collector(Box::new(PressureCollector(pressure.clone())));
        pressure
    }

    /// Records `entries` for `which` and logs a threshold crossing.
    pub(crate) fn record(&self, which: KernelMap, entries: u64) {
        let map = which.watched();
        let name = which.name();
        let capacity = u64::from(map.capacity);
        let crossing = {
            let mut levels = self.levels.lock().expect("pressure lock");
            let level = levels.entry(which).or_default();
            level.entries = entries;
            level.mark.update(entries, capacity)
        };
        let percent = (entries as f64 * 100.0 / capacity as f64).floor();
        match crossing {
            Some(Crossing::Above) => warn!(
                map = name,
                entries,
                capacity,
                "map {name} is {percent}% full ({entries} of {capacity} entries); when full: {}",
                map.when_full
            ),
            Some(Crossing::Below) => info!(
                map = name,
                entries,
                capacity,
                "map {name} is back below {}% ({entries} of {capacity} entries)",
                (REARM_RATIO * 100.0) as u32
            ),
            None => {}
        }
    }

    /// The latest count of `map`, if one was recorded.
    #[cfg(test)]
    pub(crate) fn entries(&self, map: KernelMap) -> Option<u64> {
        let levels = self.levels.lock().expect("pressure lock");
        levels.get(&map).map(|l| l.entries)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: KernelMap,
}

/// Encodes the two gauge families at scrape time.
#[derive(Debug, Clone)]
struct PressureCollector(Arc<MapPressure>);

impl Collector for PressureCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let levels = self.0.levels.lock().expect("pressure lock").clone();
        let mut m = enc.encode_descriptor(
            "map_entries",
            "Entries in a kernel map (agent-written maps: the agent's mirror; SM_SOCK_STAMPS and SM_CALLER_CONNS: counted, at most every second)",
            None,
            MetricType::Gauge,
        )?;
        for map in &WATCHED {
            if let Some(level) = levels.get(&map.map) {
                ConstGauge::new(level.entries as i64)
                    .encode(m.encode_family(&MapLabels { map: map.map })?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "map_capacity",
            "Most entries a kernel map can hold (max_entries)",
            None,
            MetricType::Gauge,
        )?;
        for map in &WATCHED {
            ConstGauge::new(i64::from(map.capacity))
                .encode(m.encode_family(&MapLabels { map: map.map })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_crossing_with_hysteresis() {
        let mut w = Watermark::default();
        let seq = [0, 50, 89, 90, 95, 100, 90, 86, 85, 84, 89, 90, 91];
        let out: Vec<Option<Crossing>> = seq.iter().map(|e| w.update(*e, 100)).collect();
        use Crossing::*;
        assert_eq!(
            out,
            vec![
                None,
                None,
                None,
                Some(Above),
                None,
                None,
                None,
                None,
                None,
                Some(Below),
                None,
                Some(Above),
                None
            ]
        );
        assert_eq!(Watermark::default().update(5, 0), None);
    }

    #[test]
    fn exports_entries_and_capacity_per_map() {
        let mut registry = Registry::with_prefix("sockmesh");
        let p = MapPressure::new(&mut registry);
        p.record(KernelMap::Services, 3);
        p.record(KernelMap::SockStamps, 250_000);
        assert_eq!(p.entries(KernelMap::SockStamps), Some(250_000));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("sockmesh_map_entries{map=\"SM_SERVICES\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("sockmesh_map_entries{map=\"SM_SOCK_STAMPS\"} 250000\n"));
        assert!(out.contains("sockmesh_map_capacity{map=\"SM_SOCK_STAMPS\"} 262144\n"));
        let backend_tcp = format!(
            "sockmesh_map_capacity{{map=\"SM_BACKEND_TCP\"}} {}\n",
            sockmesh_common::MAX_BACKEND_STATS
        );
        assert!(out.contains(&backend_tcp), "{out}");
        assert_eq!(out.matches("sockmesh_map_capacity{").count(), WATCHED.len());
        for (i, map) in WATCHED.iter().enumerate() {
            assert!(
                WATCHED[..i].iter().all(|m| m.map != map.map),
                "{:?} watched twice",
                map.map
            );
        }
    }
}

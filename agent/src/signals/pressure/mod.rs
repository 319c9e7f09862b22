//! Map pressure: the gauges ([`gauges`]) and feeding them once per refresh.
//!
//! - Tables the dataplane writes (services, slot tables, backends, ACL): the dataplane's own
//!   mirror of them ([`MIRROR_COUNTS`]), no kernel access.
//! - Tables this module's refresh writes (callers, workload threads) and the backend stats
//!   entries created per config: the counts the syncs end with.
//! - The maps the kernel fills (`SM_SOCK_STAMPS`, `SM_CALLER_CONNS`, the same-node maps):
//!   counted with batch lookups, the socket hash key by key ([`super::map_count`]), within a CPU budget: a count that took `t` is repeated
//!   no sooner than `t / COUNT_CPU_SHARE` later (and never more than once a second).

pub(crate) mod gauges;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use self::gauges::KernelMap;
use super::{map_count::CountedMaps, Signals};
use crate::tables::kernel::MIRROR_COUNTS;

/// Share of one CPU counting the kernel-written maps may take. Measured: a full
/// `SM_SOCK_STAMPS` (262,144 entries) takes tens of milliseconds, so it is then counted
/// every few seconds; a map of a few thousand sockets well under a millisecond (every second).
pub(super) const COUNT_CPU_SHARE: f64 = 0.01;

/// The kernel-written maps and when they are counted next.
pub(super) struct CountSchedule {
    maps: Option<CountedMaps>,
    next: Instant,
    reported_slow: bool,
}

impl CountSchedule {
    pub(super) fn new(maps: Option<CountedMaps>) -> Self {
        Self {
            maps,
            next: Instant::now(),
            reported_slow: false,
        }
    }
}

/// The pause after a count that took `took`: `took / COUNT_CPU_SHARE`.
pub(super) fn pause_after(took: Duration) -> Duration {
    took.div_f64(COUNT_CPU_SHARE)
}

/// Set while the caller map is full (so that is logged once, not every second).
pub(super) static CALLERS_FULL: AtomicBool = AtomicBool::new(false);
/// Set while the workload thread map is full.
pub(super) static TIDS_FULL: AtomicBool = AtomicBool::new(false);

/// Logs `what` when an insert failed (`error`) and the map was not already known to be full;
/// re-arms once a sync completes without a failure.
pub(super) fn report_full(flag: &AtomicBool, error: Option<aya::maps::MapError>, what: &str) {
    match error {
        Some(e) => {
            if !flag.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "{what}");
            }
        }
        None => flag.store(false, Ordering::Relaxed),
    }
}

impl Signals {
    /// Records every watched map's entries; `tids`, `callers` and `backend_stats` are what
    /// the syncs left in those maps. Called without the signal maps' lock held: counting a
    /// full LRU map takes a while (see [`COUNT_CPU_SHARE`]).
    pub(super) fn record_pressure(&self, tids: usize, callers: usize, backend_stats: usize) {
        let p = &self.pressure;
        let c = &MIRROR_COUNTS;
        let mirror = |n: &std::sync::atomic::AtomicUsize| n.load(Ordering::Relaxed) as u64;
        p.record(KernelMap::Services, mirror(&c.services));
        p.record(KernelMap::SlotTables, mirror(&c.slot_tables));
        p.record(KernelMap::Backends, mirror(&c.backends));
        p.record(KernelMap::Acl, mirror(&c.acl));
        p.record(KernelMap::BackendStats, backend_stats as u64);
        p.record(KernelMap::WorkloadTids, tids as u64);
        p.record(KernelMap::Callers, callers as u64);

        // A refresh already counting (a config apply refreshes too) has it covered.
        let Ok(mut schedule) = self.counts.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now < schedule.next {
            return;
        }
        let Some(maps) = &schedule.maps else {
            return;
        };
        for (which, map) in [
            (KernelMap::SockStamps, &maps.stamps),
            (KernelMap::CallerConns, &maps.caller_conns),
            (KernelMap::SameNodePending, &maps.same_node_pending),
            (KernelMap::SameNodeTcp, &maps.same_node_tcp),
            (KernelMap::SameNodeSocks, &maps.same_node_socks),
            (KernelMap::ProxyOrigins, &maps.proxy_origins),
        ] {
            match map.count() {
                Ok(n) => p.record(which, n),
                Err(e) => warn!(map = which.name(), error = %e, "counting map entries failed"),
            }
        }
        let took = now.elapsed();
        let pause = pause_after(took);
        schedule.next = now + pause;
        debug!(
            took_us = took.as_micros() as u64,
            next_in_ms = pause.as_millis() as u64,
            "counted the kernel-written maps"
        );
        if pause > Duration::from_secs(2) && !schedule.reported_slow {
            schedule.reported_slow = true;
            info!(
                took_ms = took.as_secs_f64() * 1e3,
                every_s = pause.as_secs_f64(),
                "counting the kernel-written maps takes long (they are large): counted less often from now on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_takes_at_most_its_cpu_share() {
        assert_eq!(
            pause_after(Duration::from_millis(30)),
            Duration::from_secs(3)
        );
        assert_eq!(
            pause_after(Duration::from_micros(200)),
            Duration::from_millis(20)
        );
    }
}

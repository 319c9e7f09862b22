//! Reading (and keying) the per-CPU signal maps. Values are summed across CPUs here; the
//! kernel side never shares a counter between CPUs.

use std::{collections::BTreeSet, os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, IterableMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use sockmesh_common::{
    BackendKey, BackendTcpStats, CallerEntry, RunqHist, BACKEND_STATS_MAP, CALLERS_MAP,
    CALLER_CONNS_MAP, KERNEL_COUNTERS_MAP, LOST_EVENTS_SLOT, MAX_BACKEND_STATS, PROXY_ORIGINS_MAP,
    RUNQ_HIST_MAP, SAME_NODE_BYTES_SLOT, SAME_NODE_FALLBACKS_SLOT, SAME_NODE_PAIRS_SLOT,
    SAME_NODE_PENDING_MAP, SAME_NODE_SOCKS_MAP, SAME_NODE_TCP_MAP, SOCK_STAMPS_MAP,
    UNENROLLED_SLOT, UNKNOWN_POLICY_SLOT, WORKLOAD_TIDS_MAP,
};

use super::map_count::{walk_batch, CountedMap, CountedMaps};
use super::same_node_metrics::SameNodeCounters;

pub(crate) struct SignalMaps {
    backend_stats: PerCpuHashMap<MapData, BackendKey, BackendTcpStats>,
    counters: PerCpuArray<MapData, u64>,
    runq: PerCpuArray<MapData, RunqHist>,
    pub tids: HashMap<MapData, u32, u32>,
    pub callers: HashMap<MapData, u64, CallerEntry>,
    /// Maps the kernel fills, counted for the pressure gauges (taken by `Signals`, which
    /// counts them outside this struct's lock).
    pub counted: Option<CountedMaps>,
    /// Entries in the backend stats map after the last sync (the agent creates them all).
    pub backend_stats_entries: usize,
    /// Configured pairs whose stats entry could not be created yet (retried each refresh).
    missing_backend_keys: BTreeSet<BackendKey>,
    /// The stats map's keys: read from the kernel on the first sync, then kept with every
    /// insert and remove (only the agent makes or removes keys; the kernel updates values
    /// in place), so a sync does not walk 100,000 keys through system calls.
    known_backend_keys: Option<BTreeSet<BackendKey>>,
    nr_cpus: usize,
}

fn pinned(dir: &Path, name: &str) -> Result<MapData> {
    MapData::from_pin(dir.join(name)).with_context(|| format!("opening pinned map {name}"))
}

impl SignalMaps {
    pub(crate) fn open(map_dir: &Path) -> Result<Self> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        Ok(Self {
            backend_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(pinned(
                map_dir,
                BACKEND_STATS_MAP,
            )?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(pinned(
                map_dir,
                KERNEL_COUNTERS_MAP,
            )?))?,
            runq: PerCpuArray::try_from(Map::PerCpuArray(pinned(map_dir, RUNQ_HIST_MAP)?))?,
            tids: HashMap::try_from(Map::HashMap(pinned(map_dir, WORKLOAD_TIDS_MAP)?))?,
            callers: HashMap::try_from(Map::HashMap(pinned(map_dir, CALLERS_MAP)?))?,
            counted: Some(CountedMaps {
                stamps: CountedMap::new(pinned(map_dir, SOCK_STAMPS_MAP)?)
                    .context("reading SM_SOCK_STAMPS's info")?,
                caller_conns: CountedMap::new(pinned(map_dir, CALLER_CONNS_MAP)?)
                    .context("reading SM_CALLER_CONNS's info")?,
                same_node_pending: CountedMap::new(pinned(map_dir, SAME_NODE_PENDING_MAP)?)
                    .context("reading SM_SAME_NODE_WAIT's info")?,
                same_node_tcp: CountedMap::new(pinned(map_dir, SAME_NODE_TCP_MAP)?)
                    .context("reading SM_SAME_NODE_TCP's info")?,
                same_node_socks: CountedMap::new(pinned(map_dir, SAME_NODE_SOCKS_MAP)?)
                    .context("reading SM_SAME_NODE's info")?,
                proxy_origins: CountedMap::new(pinned(map_dir, PROXY_ORIGINS_MAP)?)
                    .context("reading SM_PROXY_ORIGINS's info")?,
            }),
            backend_stats_entries: 0,
            missing_backend_keys: BTreeSet::new(),
            known_backend_keys: None,
            nr_cpus,
        })
    }

    /// Makes the stats map hold exactly one entry per configured (service, backend): new pairs
    /// get zeroed counters (so the kernel never allocates on the ACK path), removed pairs go.
    /// Removed pairs go first, so the map never holds more than the larger of the old and the
    /// new config (which the plan checked against its capacity).
    pub(crate) fn sync_backend_keys(&mut self, wanted: &BTreeSet<BackendKey>) -> Result<()> {
        let stats = &self.backend_stats;
        let existing = self
            .known_backend_keys
            .get_or_insert_with(|| stats.keys().filter_map(Result::ok).collect());
        let gone: Vec<BackendKey> = existing.difference(wanted).copied().collect();
        for key in gone {
            // Gone either way; any other failure keeps the key, to be removed next sync.
            let gone = match self.backend_stats.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => true,
                Err(aya::maps::MapError::SyscallError(e)) => {
                    e.io_error.raw_os_error() == Some(libc::ENOENT)
                }
                Err(_) => false,
            };
            if gone {
                existing.remove(&key);
            }
        }
        self.backend_stats_entries = existing.len();
        self.missing_backend_keys = wanted.difference(existing).copied().collect();
        self.create_missing_backend_keys()
    }

    /// Creates the stats entries the last sync has not created yet. The kernel allocates a
    /// no-prealloc per-CPU map's values without sleeping and refills its per-CPU pool in the
    /// background, so a burst of thousands of inserts (a config with thousands of services,
    /// or adopting one) fails with ENOMEM part-way; the rest is retried on every refresh
    /// until done ([`SignalMaps::missing_backend_keys`]).
    pub(crate) fn create_missing_backend_keys(&mut self) -> Result<()> {
        while let Some(key) = self.missing_backend_keys.first().copied() {
            let zeros = PerCpuValues::try_from(vec![BackendTcpStats::ZERO; self.nr_cpus])?;
            self.backend_stats.insert(key, zeros, 0).with_context(|| {
                format!(
                    "creating backend stats entries ({} still missing)",
                    self.missing_backend_keys.len()
                )
            })?;
            self.missing_backend_keys.remove(&key);
            if let Some(known) = &mut self.known_backend_keys {
                known.insert(key);
            }
            self.backend_stats_entries += 1;
        }
        Ok(())
    }

    /// Stats entries of the configured (service, backend) pairs not created yet.
    pub(crate) fn missing_backend_keys(&self) -> usize {
        self.missing_backend_keys.len()
    }

    /// The pairs whose stats entry is not created yet.
    pub(crate) fn missing_keys(&self) -> impl Iterator<Item = &BackendKey> {
        self.missing_backend_keys.iter()
    }

    pub(crate) fn is_missing(&self, key: &BackendKey) -> bool {
        self.missing_backend_keys.contains(key)
    }

    /// These pairs' counters summed over CPUs, one lookup each (pairs without an entry are
    /// left out): for the few pairs with traffic, cheaper than walking the whole map.
    pub(crate) fn backend_stats_of(
        &self,
        keys: &[BackendKey],
    ) -> Vec<(BackendKey, BackendTcpStats)> {
        keys.iter()
            .filter_map(|k| {
                let values = self.backend_stats.get(k, 0).ok()?;
                Some((*k, sum_tcp(values.iter())))
            })
            .collect()
    }

    /// Every (service, backend)'s counters summed over CPUs, read in batches (a chunk of
    /// entries per system call: at 100,000 backends, one lookup per key was a third of the
    /// agent's CPU).
    pub(crate) fn backend_stats(&self) -> Vec<(BackendKey, BackendTcpStats)> {
        const KEY: usize = size_of::<BackendKey>();
        // Per-CPU values come back as one 8-byte-aligned slot per possible CPU.
        const SLOT: usize = size_of::<BackendTcpStats>().next_multiple_of(8);
        let mut out = Vec::with_capacity(self.backend_stats_entries);
        let fd = self.backend_stats.map().fd().as_fd();
        let mut cpus: Vec<BackendTcpStats> = Vec::with_capacity(self.nr_cpus);
        let walked = walk_batch(
            fd,
            KEY,
            SLOT * self.nr_cpus,
            u64::from(MAX_BACKEND_STATS),
            |keys, values, n| {
                for i in 0..n {
                    // SAFETY: the kernel wrote `n` keys of KEY bytes and `n` values of
                    // `nr_cpus` SLOT-byte per-CPU slots; both types are plain old data.
                    let key: BackendKey =
                        unsafe { std::ptr::read_unaligned(keys[i * KEY..].as_ptr().cast()) };
                    let per_cpu = &values[i * SLOT * self.nr_cpus..(i + 1) * SLOT * self.nr_cpus];
                    cpus.clear();
                    cpus.extend(per_cpu.chunks_exact(SLOT).map(|c| {
                        // SAFETY: as above, one CPU's slot.
                        unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<BackendTcpStats>()) }
                    }));
                    out.push((key, sum_tcp(cpus.iter())));
                }
            },
        );
        if let Err(e) = walked {
            tracing::warn!(error = %e, "reading the per-backend TCP stats failed");
        }
        out
    }

    pub(crate) fn events_lost(&self) -> u64 {
        self.counter(LOST_EVENTS_SLOT)
    }

    /// Connects to a VIP the kernel left untouched: the caller is not enrolled.
    pub(crate) fn unenrolled_connects(&self) -> u64 {
        self.counter(UNENROLLED_SLOT)
    }

    /// Connects refused because the service entry names a policy code the programs do not
    /// know (never one the agent wrote).
    pub(crate) fn unknown_policy_connects(&self) -> u64 {
        self.counter(UNKNOWN_POLICY_SLOT)
    }

    /// Same-node fast path counters (kernel slots), summed over CPUs.
    pub(crate) fn same_node(&self) -> SameNodeCounters {
        SameNodeCounters {
            pairs: self.counter(SAME_NODE_PAIRS_SLOT),
            fallbacks: self.counter(SAME_NODE_FALLBACKS_SLOT),
            bytes: self.counter(SAME_NODE_BYTES_SLOT),
        }
    }

    /// One slot of the per-CPU kernel counters, summed over CPUs.
    fn counter(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub(crate) fn runq(&self, workload_index: u32) -> Option<RunqHist> {
        self.runq
            .get(&workload_index, 0)
            .ok()
            .map(|v| sum_runq(v.iter()))
    }
}

/// The total of one key's per-CPU values.
pub(crate) fn sum_tcp<'a>(values: impl Iterator<Item = &'a BackendTcpStats>) -> BackendTcpStats {
    values.fold(BackendTcpStats::ZERO, |mut acc, v| {
        acc.add(v);
        acc
    })
}

pub(crate) fn sum_runq<'a>(values: impl Iterator<Item = &'a RunqHist>) -> RunqHist {
    values.fold(RunqHist::ZERO, |mut acc, v| {
        acc.add(v);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_common::HIST_BUCKETS;

    #[test]
    fn sums_across_cpus() {
        let mut a = BackendTcpStats::ZERO;
        a.retransmits = 2;
        a.srtt_hist[3] = 1;
        a.established = 5;
        let mut b = a;
        b.closed = 4;
        let s = sum_tcp([a, b].iter());
        assert_eq!(
            (s.retransmits, s.srtt_hist[3], s.established, s.closed),
            (4, 2, 10, 4)
        );
        let h = RunqHist {
            count: 1,
            sum_us: 10,
            buckets: [1; HIST_BUCKETS],
        };
        assert_eq!(sum_runq([h, h].iter()).buckets[31], 2);
    }
}

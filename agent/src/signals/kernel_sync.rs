//! Keeping the kernel's per-workload maps (caller cgroups, threads) and the per-backend stats
//! entries in step with the workloads found and the config, once per refresh.

use std::collections::{BTreeMap, BTreeSet};

use sockmesh_common::{BackendKey, CallerEntry};
use tracing::{debug, info};

use super::{kernel_maps::SignalMaps, pressure, workloads::ResolvedWorkload};

/// Makes the kernel's caller map (cgroup id -> workload, priority, class) match the workloads
/// found; the connect hook reads it for access control, shedding, per-caller limits and the
/// caller class of routed services.
///
/// Returns the entries the map holds afterwards (for its pressure gauge).
pub(super) fn sync_callers(maps: &mut SignalMaps, resolved: &[ResolvedWorkload]) -> usize {
    let wanted: BTreeMap<u64, CallerEntry> = resolved
        .iter()
        .flat_map(|w| {
            let entry = CallerEntry {
                workload: w.index + 1,
                priority: w.priority,
                // The slot tables the plan writes per caller class are keyed by this.
                class: crate::tables::route::workload_class(w.index as usize),
            };
            w.cgroup_ids.iter().map(move |id| (*id, entry))
        })
        .collect();
    let existing: BTreeSet<u64> = maps.callers.keys().filter_map(Result::ok).collect();
    let mut entries = existing.len();
    for id in &existing {
        if !wanted.contains_key(id) && maps.callers.remove(id).is_ok() {
            entries -= 1;
        }
    }
    let mut full = None;
    for (id, entry) in wanted {
        if maps.callers.get(&id, 0).ok() != Some(entry) {
            match maps.callers.insert(id, entry, 0) {
                Ok(()) => entries += usize::from(!existing.contains(&id)),
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
    }
    pressure::report_full(
        &pressure::CALLERS_FULL,
        full,
        "caller map full; cgroups beyond it are treated as unknown callers",
    );
    entries
}

/// Creates the per-backend stats entries an earlier sync could not (see
/// [`SignalMaps::create_missing_backend_keys`]); logs once when all exist. Returns the pairs
/// whose entry was created (their rows are due).
pub(super) fn retry_backend_keys(maps: &mut SignalMaps) -> Vec<BackendKey> {
    if maps.missing_backend_keys() == 0 {
        return Vec::new();
    }
    let before: Vec<BackendKey> = maps.missing_keys().copied().collect();
    match maps.create_missing_backend_keys() {
        Ok(()) => info!(
            entries = maps.backend_stats_entries,
            "all per-backend stats entries created"
        ),
        Err(e) => debug!(error = %format!("{e:#}"), "per-backend stats entries still missing"),
    }
    before.into_iter().filter(|k| !maps.is_missing(k)).collect()
}

/// Makes the kernel's tid -> workload map match the threads found in the workloads' cgroups.
/// Returns the entries the map holds afterwards (for its pressure gauge).
pub(super) fn sync_tids(maps: &mut SignalMaps, resolved: &[ResolvedWorkload]) -> usize {
    let wanted: BTreeMap<u32, u32> = resolved
        .iter()
        .flat_map(|w| w.tids.iter().map(|t| (*t, w.index)))
        .collect();
    let existing: BTreeSet<u32> = maps.tids.keys().filter_map(Result::ok).collect();
    let mut entries = existing.len();
    for tid in &existing {
        if !wanted.contains_key(tid) && maps.tids.remove(tid).is_ok() {
            entries -= 1;
        }
    }
    let mut full = None;
    for (tid, index) in wanted {
        if maps.tids.get(&tid, 0).ok() != Some(index) {
            match maps.tids.insert(tid, index, 0) {
                Ok(()) => entries += usize::from(!existing.contains(&tid)),
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
    }
    pressure::report_full(
        &pressure::TIDS_FULL,
        full,
        "workload thread map full; run-queue latency is partial",
    );
    entries
}

//! Names for the ids the kernel reports: service ids, backend ids and caller cgroup ids become
//! the label values operators read. Caller labels are bounded: beyond `max_callers` distinct
//! workloads, callers are reported as `other` (and the overflow is counted), so a flood of
//! workloads cannot blow up the number of series.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::tables::ServiceView;

pub(crate) const UNKNOWN: &str = "unknown";
pub(crate) const OTHER: &str = "other";

#[derive(Clone, Debug, Default)]
pub(crate) struct Topology {
    pub services: HashMap<u32, String>,
    pub backends: HashMap<u32, String>,
    /// Backend "ip:port" -> its id, for attributing inbound connections.
    pub backend_by_addr: HashMap<String, u32>,
}

impl Topology {
    pub(crate) fn from_views(views: &[ServiceView]) -> Self {
        let mut t = Topology::default();
        for v in views {
            t.services.insert(v.id, v.name.clone());
            for b in v.backends.iter() {
                t.backends.insert(b.id, b.addr.clone());
                t.backend_by_addr.insert(b.addr.clone(), b.id);
            }
        }
        t
    }

    pub(crate) fn service(&self, id: u32) -> &str {
        self.services.get(&id).map_or(UNKNOWN, String::as_str)
    }

    pub(crate) fn backend(&self, id: u32) -> &str {
        if id == 0 {
            return "none";
        }
        self.backends.get(&id).map_or(UNKNOWN, String::as_str)
    }
}

/// Maps caller cgroup ids to workload names, admitting at most `max` distinct names as label
/// values. Admission is first come, first served and sticky, so a label never changes
/// meaning while the agent runs.
#[derive(Debug)]
pub(crate) struct CallerLabels {
    max: usize,
    by_cgroup: HashMap<u64, String>,
    admitted: BTreeSet<String>,
    pub overflowed: u64,
}

impl CallerLabels {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            by_cgroup: HashMap::new(),
            admitted: BTreeSet::new(),
            overflowed: 0,
        }
    }

    /// Replaces the cgroup id -> workload mapping (workloads are re-resolved periodically).
    pub(crate) fn set_workloads(&mut self, by_cgroup: BTreeMap<u64, String>) {
        self.by_cgroup = by_cgroup.into_iter().collect();
    }

    /// The label value for a caller cgroup.
    pub(crate) fn label(&mut self, cgroup_id: u64) -> String {
        let Some(name) = self.by_cgroup.get(&cgroup_id) else {
            return UNKNOWN.to_string();
        };
        if self.admitted.contains(name) {
            return name.clone();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(name.clone());
            return name.clone();
        }
        self.overflowed += 1;
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn workloads(n: u64) -> BTreeMap<u64, String> {
        (0..n).map(|i| (1000 + i, format!("w{i}"))).collect()
    }

    #[test]
    fn unknown_cgroups_are_unknown_and_known_ones_named() {
        let mut c = CallerLabels::new(8);
        c.set_workloads(workloads(2));
        assert_eq!(c.label(1), UNKNOWN);
        assert_eq!(c.label(1001), "w1");
    }

    #[test]
    fn overflow_goes_to_other_and_admission_is_sticky() {
        let mut c = CallerLabels::new(2);
        c.set_workloads(workloads(4));
        assert_eq!(c.label(1000), "w0");
        assert_eq!(c.label(1001), "w1");
        assert_eq!(c.label(1002), OTHER);
        assert_eq!(c.label(1000), "w0");
        assert_eq!(c.overflowed, 1);
    }

    proptest! {
        #[test]
        fn label_values_stay_bounded(max in 0usize..10, callers in prop::collection::vec(0u64..200, 0..500)) {
            let mut c = CallerLabels::new(max);
            c.set_workloads(workloads(100));
            let seen: BTreeSet<String> = callers.iter().map(|id| c.label(*id)).collect();
            // At most `max` workload names, plus the two reserved values.
            prop_assert!(seen.len() <= max + 2);
        }
    }
}

//! Load-balancing policies: one module per policy, behind [`Policy`].
//!
//! A policy is two things: the code the kernel knows it by (`pick::LB_*`, written into the
//! service entry) and how its slot table is built from a service's backends and one caller
//! class's weights. The planner ([`super::plan`]) calls through the trait and never matches on
//! the policy, and the table diff, write and atomic swap are the same for all of them.
//!
//! Adding a policy: a variant of `LbPolicy` (model, with its name), a `pick::LB_*` code and
//! the kernel's arm in `pick_backend` (ebpf/programs/src/route.rs), a module here, and its
//! line in [`of`]. Tests that cover every policy iterate `LbPolicy::ALL`.

mod least_conn;
mod maglev;
mod round_robin;
mod weighted_random;

use sockmesh_common::MAX_SLOTS;
use sockmesh_model::{BackendSpec, LbPolicy};

pub(crate) use least_conn::LeastConn;
pub(crate) use maglev::Maglev;
pub(crate) use round_robin::RoundRobin;
pub(crate) use weighted_random::WeightedRandom;

/// One load-balancing policy, as the agent compiles it for the kernel.
pub(crate) trait Policy: Sync {
    /// The policy code the kernel matches (`sockmesh_common::pick::LB_*`).
    fn code(&self) -> u32;

    /// The slot table for one caller class. `backends` and `ids` are the service's backends
    /// in config order and their kernel ids; `weights` are this class's weights for them
    /// (0: no traffic, e.g. banned or routed elsewhere). Everything the kernel reads for
    /// this policy must be in the table, at most `MAX_SLOTS` entries.
    fn table(&self, backends: &[BackendSpec], ids: &[u32], weights: &[u32]) -> Vec<u32>;

    /// The part of a table that names backends, one entry per slot a backend holds (for
    /// views and checks). The whole table unless the policy stores more than ids.
    fn routed<'t>(&self, table: &'t [u32]) -> &'t [u32] {
        table
    }

    /// Whether the kernel reads every slot of this policy's tables as a backend id. Policies
    /// that agree here can switch tables and entry in any order; see [`bridge`].
    fn ids_only(&self) -> bool {
        true
    }
}

/// A table both layouts route correctly with, for a policy switch that changes the layout:
/// `ids` (the new table's backends, [`Policy::routed`]) twice. Read as ids only, it holds only
/// new backends (in the new proportions); read as least_conn's `[ids, weights]`, its id half
/// is `ids` (the "weights" are ids: the split is off for the moment of the switch, never the
/// choice of backends). Too long to double (an ids-only table over 512 slots), the table
/// itself already reads safely both ways. The plan writes it, then the entry, then the real
/// table, so a connect between any two writes routes to a backend of the service.
pub(crate) fn bridge(ids: &[u32]) -> Vec<u32> {
    if ids.len() * 2 <= MAX_SLOTS {
        ids.iter().chain(ids).copied().collect()
    } else {
        ids.to_vec()
    }
}

/// The module of `lb`.
pub(crate) fn of(lb: LbPolicy) -> &'static dyn Policy {
    match lb {
        LbPolicy::WeightedRandom => &WeightedRandom,
        LbPolicy::RoundRobin => &RoundRobin,
        LbPolicy::Maglev => &Maglev,
        LbPolicy::LeastConn => &LeastConn,
    }
}

/// The policy a kernel code stands for; `None` for a code no policy writes.
pub(crate) fn by_code(code: u32) -> Option<&'static dyn Policy> {
    LbPolicy::ALL
        .iter()
        .map(|lb| of(*lb))
        .find(|p| p.code() == code)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_policy_has_its_own_code_and_is_found_by_it() {
        let codes: BTreeSet<u32> = LbPolicy::ALL.iter().map(|lb| of(*lb).code()).collect();
        assert_eq!(codes.len(), LbPolicy::ALL.len());
        for lb in LbPolicy::ALL {
            assert_eq!(
                by_code(of(*lb).code()).map(|p| p.code()),
                Some(of(*lb).code())
            );
        }
        assert!(by_code(77).is_none());
    }

    #[test]
    fn every_table_routes_only_to_weighted_backends() {
        let backends: Vec<BackendSpec> = (2..6)
            .map(|h| BackendSpec::new(format!("127.0.0.{h}:81").parse().unwrap(), 1))
            .collect();
        let ids = [10, 11, 12, 13];
        let weights = [1, 0, 3, 2];
        for lb in LbPolicy::ALL {
            let p = of(*lb);
            let table = p.table(&backends, &ids, &weights);
            assert!(table.len() <= sockmesh_common::MAX_SLOTS, "{lb}");
            let routed: BTreeSet<u32> = p.routed(&table).iter().copied().collect();
            assert_eq!(routed, BTreeSet::from([10, 12, 13]), "{lb}");
            assert!(p.table(&backends, &ids, &[0; 4]).is_empty(), "{lb}");
        }
    }
}

//! `round_robin`: the same weighted table as `weighted_random` (smooth weighted round-robin
//! order), walked by a global kernel counter instead of a random number, so the cycle is
//! exact.

use sockmesh_common::pick::LB_ROUND_ROBIN;
use sockmesh_model::BackendSpec;

use super::{Policy, WeightedRandom};

pub(crate) struct RoundRobin;

impl Policy for RoundRobin {
    fn code(&self) -> u32 {
        LB_ROUND_ROBIN
    }

    fn table(&self, backends: &[BackendSpec], ids: &[u32], weights: &[u32]) -> Vec<u32> {
        WeightedRandom.table(backends, ids, weights)
    }
}

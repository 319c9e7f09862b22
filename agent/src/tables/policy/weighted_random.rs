//! `weighted_random`: the kernel indexes the table with a random number, so each backend gets
//! connects in proportion to its slots (its weight).

use sockmesh_common::{pick::LB_WEIGHTED_RANDOM, MAX_SLOTS};
use sockmesh_model::BackendSpec;

use super::Policy;
use crate::tables::slots::weighted_sequence;

pub(crate) struct WeightedRandom;

impl Policy for WeightedRandom {
    fn code(&self) -> u32 {
        LB_WEIGHTED_RANDOM
    }

    fn table(&self, _backends: &[BackendSpec], ids: &[u32], weights: &[u32]) -> Vec<u32> {
        weighted_sequence(weights, MAX_SLOTS)
            .into_iter()
            .map(|i| ids[i])
            .collect()
    }
}

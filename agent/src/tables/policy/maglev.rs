//! `maglev`: the Maglev lookup table ([`crate::tables::maglev`]) over the backends' addresses,
//! indexed by the kernel with a hash of the caller.

use sockmesh_common::{pick::LB_MAGLEV, MAGLEV_TABLE_SIZE};
use sockmesh_model::BackendSpec;

use super::Policy;
use crate::tables::maglev::maglev_table;

pub(crate) struct Maglev;

impl Policy for Maglev {
    fn code(&self) -> u32 {
        LB_MAGLEV
    }

    fn table(&self, backends: &[BackendSpec], ids: &[u32], weights: &[u32]) -> Vec<u32> {
        let named: Vec<(Vec<u8>, u32)> = backends
            .iter()
            .zip(weights)
            .map(|(b, w)| (b.addr.to_string().into_bytes(), *w))
            .collect();
        maglev_table(&named, MAGLEV_TABLE_SIZE)
            .into_iter()
            .map(|i| ids[i])
            .collect()
    }
}

//! `least_conn`: the kernel sends each connect to the backend with the fewest active
//! connections relative to its weight, from per-backend counts it keeps itself
//! (`SM_BACKEND_CONNS`); the decision is `sockmesh_common::pick::least_conn_pick`.
//!
//! The table is `[id_0..id_{n-1}, w_0..w_{n-1}]`: the class's backends with a positive
//! weight, then their weights, so the table diff and atomic swap are those of every policy.

use sockmesh_common::pick::{LB_LEAST_CONN, LEAST_CONN_MAX_BACKENDS};
use sockmesh_model::{BackendSpec, MAX_BACKENDS_PER_SERVICE};

use super::Policy;

// Every valid service fits a least-conn table (ids and weights share the slots). The model's
// per-service limit is what enforces it, with the field path and reason.
const _: () = assert!(MAX_BACKENDS_PER_SERVICE <= LEAST_CONN_MAX_BACKENDS);

pub(crate) struct LeastConn;

impl Policy for LeastConn {
    fn code(&self) -> u32 {
        LB_LEAST_CONN
    }

    fn table(&self, _backends: &[BackendSpec], ids: &[u32], weights: &[u32]) -> Vec<u32> {
        let (ids, weights): (Vec<u32>, Vec<u32>) = ids
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(id, w)| (*id, *w))
            .unzip();
        let mut table = ids;
        table.extend(weights);
        table
    }

    fn routed<'t>(&self, table: &'t [u32]) -> &'t [u32] {
        &table[..table.len() / 2]
    }

    fn ids_only(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ids_then_weights_of_weighted_backends() {
        let t = LeastConn.table(&[], &[7, 8, 9], &[2, 0, 5]);
        assert_eq!(t, vec![7, 9, 2, 5]);
        assert_eq!(LeastConn.routed(&t), &[7, 9]);
        assert!(LeastConn.table(&[], &[7], &[0]).is_empty());
    }
}

//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend gets a permutation of the table positions derived from a stable hash of its
//! address; backends take turns claiming their next preferred free position. Removing one
//! backend only frees the positions it held (plus a small reshuffle), so most callers keep
//! their backend. Hashes depend only on the backend's address, never on list order or on the
//! process, so every agent on every node computes the same table.

/// Builds a table of `size` (prime) positions; entries are indexes into `backends`.
/// `backends` are (stable identity bytes, weight). Zero-weight backends get no position.
pub(crate) fn maglev_table(backends: &[(Vec<u8>, u32)], size: u32) -> Vec<usize> {
    let mut live: Vec<usize> = (0..backends.len()).filter(|i| backends[*i].1 > 0).collect();
    // Turn order decides contested positions, so fix it by identity, not by config order.
    live.sort_by(|a, b| backends[*a].0.cmp(&backends[*b].0));
    if live.is_empty() {
        return Vec::new();
    }
    let m = size as u64;
    let params: Vec<(u64, u64)> = live
        .iter()
        .map(|i| {
            let id = &backends[*i].0;
            let offset = fnv1a(id, 0xcbf2_9ce4_8422_2325) % m;
            let skip = fnv1a(id, 0x8422_2325_cbf2_9ce4) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = live
        .iter()
        .map(|i| backends[*i].1 as u64)
        .max()
        .unwrap_or(1);
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![usize::MAX; size as usize];
    let mut filled = 0u64;
    // Weighted turns: each round a backend gains its weight in credit and claims one position
    // per `max_weight` of credit, so claims are proportional to weight.
    while filled < m {
        for (k, i) in live.iter().enumerate() {
            credit[k] += backends[*i].1 as u64;
            while credit[k] >= max_weight && filled < m {
                credit[k] -= max_weight;
                let (offset, skip) = params[k];
                loop {
                    let pos = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[pos] == usize::MAX {
                        table[pos] = *i;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

/// FNV-1a, 64-bit, with a chosen offset basis so two independent hashes come from one function.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche: FNV's low bits are weak for short inputs like socket addresses.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 1021;

    fn ids(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n)
            .map(|i| (format!("127.0.0.{}:8080", i + 2).into_bytes(), 1))
            .collect()
    }

    #[test]
    fn balanced_within_a_few_percent() {
        let t = maglev_table(&ids(5), M);
        assert_eq!(t.len(), M as usize);
        for b in 0..5 {
            let n = t.iter().filter(|x| **x == b).count();
            assert!((n as i64 - 204).abs() <= 2, "backend {b} has {n}");
        }
    }

    #[test]
    fn removal_moves_only_the_removed_backends_positions() {
        let all = ids(5);
        let before = maglev_table(&all, M);
        let kept: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, b)| b.clone())
            .collect();
        let after = maglev_table(&kept, M);
        // Map new indexes back to old ones.
        let to_old = |i: usize| if i >= 2 { i + 1 } else { i };
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 2 && to_old(**a) != **b)
            .count();
        assert!(
            moved * 100 / M as usize <= 3,
            "{moved} positions of healthy backends moved"
        );
        assert!(after.iter().all(|a| to_old(*a) != 2));
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut rev = ids(4);
        let fwd = maglev_table(&rev, M);
        rev.reverse();
        let back = maglev_table(&rev, M);
        assert!(fwd.iter().zip(&back).all(|(f, b)| *f == 3 - *b));
    }

    #[test]
    fn weights_are_respected() {
        let mut b = ids(2);
        b[1].1 = 3;
        let t = maglev_table(&b, M);
        let heavy = t.iter().filter(|x| **x == 1).count();
        assert!((heavy as i64 - 766).abs() <= 3, "heavy has {heavy}");
    }

    #[test]
    fn all_zero_weights_give_an_empty_table() {
        let mut b = ids(2);
        b[0].1 = 0;
        b[1].1 = 0;
        assert!(maglev_table(&b, M).is_empty());
    }
}

//! Weighted slot sequences for `weighted_random` and `round_robin`.
//!
//! Both policies use the same table: each backend appears in proportion to its weight, and
//! the order is the smooth weighted round-robin order (nginx's algorithm), so that round
//! robin, which walks the table with a global counter, never sends a burst to one backend.

/// Slot counts per backend for `weights`, summing to at most `max_slots`.
///
/// Weights are divided by their gcd first, so 1:1:2 becomes exactly 4 slots and round robin
/// cycles every 4 connects. When the reduced sum exceeds `max_slots`, counts are scaled with
/// the largest-remainder method; every backend with a positive weight keeps at least one slot.
pub(crate) fn slot_counts(weights: &[u32], max_slots: usize) -> Vec<usize> {
    let g = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0u64, |a, w| gcd(a, w as u64));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let reduced: Vec<u64> = weights.iter().map(|w| *w as u64 / g).collect();
    let total: u64 = reduced.iter().sum();
    if total as usize <= max_slots {
        return reduced.iter().map(|w| *w as usize).collect();
    }
    let positive = reduced.iter().filter(|w| **w > 0).count();
    assert!(positive <= max_slots, "more weighted backends than slots");
    // Give every positive backend one slot, then share the rest by largest remainder.
    let spare = (max_slots - positive) as u64;
    let mut counts: Vec<usize> = reduced.iter().map(|w| usize::from(*w > 0)).collect();
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(reduced.len());
    let mut used = 0u64;
    for (i, w) in reduced.iter().enumerate() {
        let exact = w * spare;
        counts[i] += (exact / total) as usize;
        used += exact / total;
        remainders.push((exact % total, i));
    }
    // Ties go to the lower index so the result is deterministic.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders.into_iter().take((spare - used) as usize) {
        counts[i] += 1;
    }
    counts
}

/// The table for `weights`: backend indexes in smooth weighted round-robin order.
pub(crate) fn weighted_sequence(weights: &[u32], max_slots: usize) -> Vec<usize> {
    let counts = slot_counts(weights, max_slots);
    let total: i64 = counts.iter().map(|c| *c as i64).sum();
    let mut current = vec![0i64; counts.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for (i, c) in counts.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            current[i] += *c as i64;
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reduces_by_gcd() {
        assert_eq!(slot_counts(&[2, 2, 4], 1024), vec![1, 1, 2]);
        assert_eq!(weighted_sequence(&[1, 1, 2], 1024).len(), 4);
    }

    #[test]
    fn smooth_order_interleaves() {
        assert_eq!(weighted_sequence(&[1, 1, 2], 1024), vec![2, 0, 1, 2]);
        assert_eq!(
            weighted_sequence(&[5, 1, 1], 1024),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn zero_weights_get_no_slot() {
        assert_eq!(slot_counts(&[0, 3], 1024), vec![0, 1]);
        assert_eq!(slot_counts(&[0, 0], 1024), vec![0, 0]);
        assert!(weighted_sequence(&[0, 0], 1024).is_empty());
    }

    #[test]
    fn scales_when_too_many_slots() {
        let counts = slot_counts(&[10_000, 1, 9_999], 1024);
        assert_eq!(counts.iter().sum::<usize>(), 1024);
        assert_eq!(counts[1], 1, "a tiny weight keeps one slot");
    }

    proptest! {
        #[test]
        fn counts_are_proportional(weights in prop::collection::vec(0u32..10_000, 1..200)) {
            let counts = slot_counts(&weights, 1024);
            let total: usize = counts.iter().sum();
            prop_assert!(total <= 1024);
            let wsum: u64 = weights.iter().map(|w| *w as u64).sum();
            for (w, c) in weights.iter().zip(&counts) {
                prop_assert_eq!(*w == 0, *c == 0);
                if wsum > 0 && total == 1024 {
                    let share = *w as f64 / wsum as f64;
                    let ideal = share * 1024.0;
                    // Rounding costs at most one slot each way; the one slot guaranteed to
                    // every positive backend shifts each count by at most its share of those.
                    let positive = weights.iter().filter(|w| **w > 0).count() as f64;
                    let tolerance = 2.0 + share * positive;
                    prop_assert!((*c as f64 - ideal).abs() <= tolerance, "w={} c={} ideal={}", w, c, ideal);
                }
            }
            let seq = weighted_sequence(&weights, 1024);
            prop_assert_eq!(seq.len(), total);
            for (i, c) in counts.iter().enumerate() {
                prop_assert_eq!(seq.iter().filter(|s| **s == i).count(), *c);
            }
        }
    }
}

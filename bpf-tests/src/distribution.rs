//! Comparing how connects spread over backends with how the config weighs them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Each count's share of the total (all zeros when the total is zero).
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect()
}

/// Orders a client's per-backend counts (keyed by how backends name themselves) like
/// `addrs`; backends the client never reached count zero.
pub fn counts_by_backend(counts: &BTreeMap<String, u64>, addrs: &[SocketAddr]) -> Vec<u64> {
    addrs
        .iter()
        .map(|a| counts.get(&a.to_string()).copied().unwrap_or(0))
        .collect()
}

/// A share tolerance of `sigmas` standard deviations of a binomial share over `n` trials, at
/// its worst case p = 1/2: for asserts on runs whose length depends on timing.
pub fn binomial_tolerance(n: usize, sigmas: f64) -> f64 {
    sigmas * 0.5 / (n.max(1) as f64).sqrt()
}

/// Panics unless each backend's share of `counts` is within `tolerance` (a fraction: 0.03
/// is 3 percentage points) of its weight's share of the total weight.
pub fn assert_shares(what: &str, counts: &[u64], weights: &[u32], tolerance: f64) {
    assert_eq!(
        counts.len(),
        weights.len(),
        "{what}: one weight per backend"
    );
    let total_weight: u32 = weights.iter().sum();
    let seen = shares(counts);
    for (i, (&share, &w)) in seen.iter().zip(weights).enumerate() {
        let want = f64::from(w) / f64::from(total_weight);
        assert!(
            (share - want).abs() <= tolerance,
            "{what}: backend #{i} got {:.2}% of connects, weight share is {:.2}% \
             (tolerance {:.1} points); counts {counts:?}, weights {weights:?}",
            share * 100.0,
            want * 100.0,
            tolerance * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_counts() {
        assert_eq!(shares(&[1, 1, 2]), vec![0.25, 0.25, 0.5]);
        assert_eq!(shares(&[0, 0]), vec![0.0, 0.0]);
    }

    #[test]
    fn within_tolerance_passes() {
        assert_shares("t", &[1020, 980, 2000], &[1, 1, 2], 0.03);
    }

    #[test]
    #[should_panic(expected = "backend #0 got 32.50%")]
    fn outside_tolerance_panics() {
        assert_shares("t", &[1300, 1300, 1400], &[1, 1, 2], 0.03);
    }

    #[test]
    fn counts_in_address_order() {
        let a: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:1".parse().unwrap();
        let counts = BTreeMap::from([(b.to_string(), 4)]);
        assert_eq!(counts_by_backend(&counts, &[a, b]), vec![0, 4]);
    }
}

//! The kernel's per-connect decision: which slot of a service's slot table gets this connect.
//!
//! The agent does all the thinking (weights, Maglev permutations, bans) when it fills a slot
//! table; the kernel only indexes it. These helpers are that index computation, plus
//! [`least_conn_pick`], the one policy that also reads live kernel state (per-backend
//! connection counts).

use core::num::NonZeroU64;

use crate::MAX_SLOTS;

/// Load-balancing policy codes stored in [`crate::ServiceEntry::lb`]. The kernel matches
/// every one of them explicitly; any other code refuses the connect (`no_backend`) and is
/// counted in [`crate::UNKNOWN_POLICY_SLOT`]. The agent takes a service's code from its
/// policy module, so it never writes one the kernel does not know.
pub const LB_WEIGHTED_RANDOM: u32 = 0;
pub const LB_ROUND_ROBIN: u32 = 1;
pub const LB_MAGLEV: u32 = 2;
/// Fewest active connections relative to weight. The slot table holds
/// `[id_0..id_{n-1}, w_0..w_{n-1}]` (length `2n`): backend ids, then their weights.
pub const LB_LEAST_CONN: u32 = 3;

/// Least-conn services with at most this many backends (in one class's table) are scanned
/// exactly; larger ones use the power of two choices. Two choices drawn from two backends
/// still send a quarter of the connects to the busier one (both draws land on it), so small
/// services, where one misplaced connect matters most, pay for the exact scan instead.
pub const LC_SCAN_MAX: u32 = 16;
/// Most backends a least-conn table can hold: ids and weights share the slots.
pub const LEAST_CONN_MAX_BACKENDS: usize = MAX_SLOTS / 2;

/// A 32-bit hash of the caller identity (cgroup id and source address if the socket is
/// already bound). Maglev uses it so one caller keeps hitting one backend while different
/// callers spread. Integer-only mixing (no loops over bytes) keeps it cheap and verifier
/// friendly; the finalizer is splitmix64's, which avalanches well.
#[inline(always)]
pub const fn caller_hash(cgroup_id: u64, src: &[u32; 4], src_port: u16) -> u32 {
    let mut h = cgroup_id ^ 0x9e37_79b9_7f4a_7c15;
    h = mix64(h ^ ((src[0] as u64) << 32 | src[1] as u64));
    h = mix64(h ^ ((src[2] as u64) << 32 | src[3] as u64));
    h = mix64(h ^ src_port as u64);
    (h ^ (h >> 32)) as u32
}

#[inline(always)]
const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Slot index for one connect. `entropy` is a random number for weighted random, the
/// service's round-robin counter for round robin, or the caller hash for Maglev: all three
/// policies reduce to "index the table", which is why the kernel side stays this small.
/// Returns `None` for an empty table (no backend: the connect is refused).
#[inline(always)]
pub const fn pick_slot(entropy: u32, len: u32) -> Option<u32> {
    if len == 0 {
        None
    } else {
        Some(entropy % len)
    }
}

/// `a % b` for a `b` the caller knows is not 0, without a zero check: a branch whose outcome
/// the verifier can tell from value ranges makes it track those values exactly, and states
/// that differ only in them then stop merging (the scan below would explode into 2^16
/// paths). BPF's own modulo needs no check (`x % 0` is `x`), Rust's `%` would add a panic.
///
/// # Safety
/// `b` must not be 0.
#[inline(always)]
unsafe fn rem_nonzero(a: u64, b: u64) -> u64 {
    // SAFETY: the caller guarantees b != 0.
    a % unsafe { NonZeroU64::new_unchecked(b) }
}

/// Whether backend `a` (count, weight) carries strictly less load per unit of weight than `b`:
/// `count_a / w_a < count_b / w_b` by cross-multiplication in u64. Exact while counts stay
/// below 2^50 (weights are at most 10,000 in the model; 2^32 in the layout would still allow
/// counts below 2^32): no clamp, because a clamp is a branch (see [`rem_nonzero`]).
#[inline(always)]
const fn lighter(count_a: u64, w_a: u32, count_b: u64, w_b: u32) -> bool {
    count_a.wrapping_mul(w_b as u64) < count_b.wrapping_mul(w_a as u64)
}

/// The least-loaded choice so far, with weighted reservoir sampling among ties: a candidate
/// as loaded as the best joins the tie with probability `w / (sum of tied weights)`, so with
/// equal load the split follows the weights.
///
/// It keeps the winner's key (the kernel: its backend id, read from the table), not its
/// position: a position is a different constant on every path through the scan, which the
/// verifier would have to explore one by one, while keys read from a map are unknown values
/// on every path, so the paths merge after each candidate.
struct Best<K> {
    key: K,
    count: u64,
    weight: u32,
    /// Sum of the weights tied at the best load (0 only while the best has weight 0).
    tied: u64,
    rng: u64,
}

impl<K: Copy> Best<K> {
    /// Starts from the first candidate, whatever its weight: no "is there a best yet" test.
    #[inline(always)]
    fn first(key: K, count: u64, weight: u32, rng: u64) -> Self {
        Best {
            key,
            count,
            weight,
            tied: weight as u64,
            rng,
        }
    }

    #[inline(always)]
    fn offer(&mut self, key: K, count: u64, weight: u32) {
        if weight == 0 {
            return;
        }
        if lighter(count, weight, self.count, self.weight) {
            self.key = key;
            self.count = count;
            self.weight = weight;
            self.tied = weight as u64;
        } else if !lighter(self.count, self.weight, count, weight) {
            // A tie (or the best so far has weight 0, which any weighted candidate beats:
            // then `tied` was 0 and becomes `weight`, and the draw always takes it).
            self.tied += weight as u64;
            self.rng = mix64(self.rng);
            // SAFETY: `tied` just grew by `weight`, which is not 0.
            if unsafe { rem_nonzero(self.rng, self.tied) } < weight as u64 {
                self.key = key;
                self.count = count;
                self.weight = weight;
            }
        }
    }
}

/// The least-conn decision for a table of `n` backends. `load(i)` gives backend `i`'s key
/// (what is returned if it wins: an index in tests, a backend id in the kernel), its active
/// connections and its weight; `seed` is a random number. With `n <= LC_SCAN_MAX` every
/// backend is compared and a minimum-load one is returned; above that, two distinct backends
/// are drawn and the lighter one wins (ties by weight again); a weight of 0 never wins over a
/// positive one. Returns `None` when `n` is 0 or above [`LEAST_CONN_MAX_BACKENDS`].
///
/// Pure (the kernel passes map reads in `load`) so it is tested natively; the loop is bounded
/// by [`LC_SCAN_MAX`] for the verifier.
#[inline(always)]
pub fn least_conn_pick<K: Copy, F: FnMut(u32) -> (K, u64, u32)>(
    n: u32,
    mut load: F,
    seed: u64,
) -> Option<K> {
    if n == 0 || n as usize > LEAST_CONN_MAX_BACKENDS {
        return None;
    }
    let best = if n <= LC_SCAN_MAX {
        let (key, count, weight) = load(0);
        let mut best = Best::first(key, count, weight, seed);
        let mut i = 1;
        while i < LC_SCAN_MAX {
            if i >= n {
                break;
            }
            let (key, count, weight) = load(i);
            best.offer(key, count, weight);
            i += 1;
        }
        best
    } else {
        let r = mix64(seed);
        // SAFETY: n > LC_SCAN_MAX here, so neither n nor n - 1 is 0.
        let first = unsafe { rem_nonzero(r & 0xffff_ffff, n as u64) } as u32;
        // SAFETY: as above.
        let mut second = unsafe { rem_nonzero(r >> 32, n as u64 - 1) } as u32;
        if second >= first {
            second += 1;
        }
        let (key, count, weight) = load(first);
        let mut best = Best::first(key, count, weight, r);
        let (key, count, weight) = load(second);
        best.offer(key, count, weight);
        best
    };
    // No "every weight was 0" test: it would be a branch the verifier can decide from
    // ranges (see `rem_nonzero`), and the agent never writes a weight of 0 into a table.
    Some(best.key)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    #[test]
    fn empty_table_has_no_slot() {
        assert_eq!(pick_slot(7, 0), None);
        assert_eq!(pick_slot(7, 5), Some(2));
    }

    #[test]
    fn caller_hash_is_deterministic_and_spreads() {
        let src = [0u32; 4];
        assert_eq!(caller_hash(42, &src, 0), caller_hash(42, &src, 0));
        // Distinct callers land in distinct buckets of a 1021-slot table most of the time.
        let buckets: HashSet<u32> = (0..500u64)
            .map(|c| caller_hash(c, &src, 0) % 1021)
            .collect();
        assert!(
            buckets.len() > 350,
            "only {} distinct buckets",
            buckets.len()
        );
    }

    fn pick(counts: &[u64], weights: &[u32], seed: u64) -> Option<u32> {
        least_conn_pick(
            counts.len() as u32,
            |i| (i, counts[i as usize], weights[i as usize]),
            seed,
        )
    }

    fn relative_load(counts: &[u64], weights: &[u32], i: usize) -> f64 {
        counts[i] as f64 / weights[i] as f64
    }

    #[test]
    fn least_conn_prefers_the_idle_backend_and_refuses_nothing_to_pick() {
        assert_eq!(pick(&[50, 0], &[1, 1], 7), Some(1));
        assert_eq!(pick(&[0, 50], &[1, 1], 7), Some(0));
        // Relative to weight: 3 connections on weight 3 are lighter than 2 on weight 1.
        assert_eq!(pick(&[2, 3], &[1, 3], 7), Some(1));
        assert_eq!(pick(&[], &[], 7), None);
        // All weights 0 (the agent never writes that): the first backend, not a refusal.
        assert_eq!(pick(&[0, 0], &[0, 0], 7), Some(0));
        // A zero weight is never picked, however idle.
        assert_eq!(pick(&[9, 0], &[1, 0], 7), Some(0));
    }

    #[test]
    fn least_conn_tie_split_follows_the_weights() {
        let weights = [1u32, 3, 4];
        // Equal load per unit of weight: all idle, or counts in proportion to the weights.
        for counts in [[0u64, 0, 0], [2, 6, 8]] {
            let mut seen = [0u64; 3];
            let rounds = 40_000u64;
            for seed in 0..rounds {
                seen[pick(&counts, &weights, mix64(seed)).unwrap() as usize] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let share = seen[i] as f64 / rounds as f64;
                let want = *w as f64 / 8.0;
                // One standard deviation is at most 0.25 points here; 1 point is > 4 of them.
                assert!((share - want).abs() < 0.01, "{counts:?}: {seen:?}");
            }
        }
    }

    #[test]
    fn two_choices_split_ties_by_weight_and_draw_distinct_backends() {
        // 20 backends (above the scan cutoff), all idle, weights 1 and 3 alternating.
        let weights: [u32; 20] = core::array::from_fn(|i| if i % 2 == 0 { 1 } else { 3 });
        let counts = [0u64; 20];
        let mut heavy = 0u64;
        let rounds = 40_000u64;
        for seed in 0..rounds {
            let i = pick(&counts, &weights, mix64(seed)).unwrap() as usize;
            heavy += u64::from(weights[i] == 3);
        }
        // Pairs: 1/4 both heavy, 1/4 both light, 1/2 mixed (heavy wins 3/4 of those).
        let share = heavy as f64 / rounds as f64;
        assert!((share - 0.625).abs() < 0.01, "heavy share {share}");
        // With one backend busy and the other idle among two distinct draws, the idle one
        // always wins: a busy backend is only picked when both draws are the same load.
        let mut busy = [0u64; 20];
        busy[0] = 100;
        for seed in 0..rounds {
            assert_ne!(pick(&busy, &[1; 20], mix64(seed)), Some(0));
        }
    }

    proptest! {
        #[test]
        fn least_conn_scan_returns_a_minimum_load_backend(
            backends in prop::collection::vec((0u64..100, 1u32..10_000), 1..=LC_SCAN_MAX as usize),
            seed: u64,
        ) {
            let (counts, weights): (Vec<u64>, Vec<u32>) = backends.into_iter().unzip();
            let i = pick(&counts, &weights, seed).unwrap() as usize;
            let mine = relative_load(&counts, &weights, i);
            for j in 0..counts.len() {
                prop_assert!(mine <= relative_load(&counts, &weights, j) + 1e-12);
            }
        }

        #[test]
        fn least_conn_two_choices_stay_in_range_and_never_pick_the_busier(
            backends in prop::collection::vec((0u64..100, 1u32..10_000), LC_SCAN_MAX as usize + 1..300),
            seed: u64,
        ) {
            let (counts, weights): (Vec<u64>, Vec<u32>) = backends.into_iter().unzip();
            let n = counts.len();
            let i = pick(&counts, &weights, seed).unwrap() as usize;
            prop_assert!(i < n);
            // Replay the draw: two distinct backends, and the winner is the lighter one.
            let r = mix64(seed);
            let first = (r as u32 % n as u32) as usize;
            let mut second = ((r >> 32) as u32 % (n as u32 - 1)) as usize;
            if second >= first {
                second += 1;
            }
            prop_assert_ne!(first, second);
            prop_assert!(i == first || i == second);
            let other = if i == first { second } else { first };
            prop_assert!(relative_load(&counts, &weights, i) <= relative_load(&counts, &weights, other) + 1e-12);
        }

        #[test]
        fn pick_is_always_in_range(entropy: u32, len in 1u32..4096) {
            let slot = pick_slot(entropy, len).unwrap();
            prop_assert!(slot < len);
        }

        #[test]
        fn source_address_changes_hash(cg: u64, a: u32, b: u32) {
            prop_assume!(a != b);
            let ha = caller_hash(cg, &[a, 0, 0, 0], 0);
            let hb = caller_hash(cg, &[b, 0, 0, 0], 0);
            // Not a strict guarantee for a 32-bit hash, but a collision here would point at a
            // broken mixer rather than bad luck.
            prop_assert_ne!(ha, hb);
        }
    }
}

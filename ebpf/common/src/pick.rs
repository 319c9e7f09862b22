//! The kernel's per-connect decision: which slot of a service's slot table gets this connect.
//!
//! The agent does all the thinking (weights, Maglev permutations, bans) when it fills a slot
//! table; the kernel only indexes it. These helpers are that index computation.

/// Load-balancing policy codes stored in [`crate::ServiceEntry::lb`].
pub const LB_WEIGHTED_RANDOM: u32 = 0;
pub const LB_ROUND_ROBIN: u32 = 1;
pub const LB_MAGLEV: u32 = 2;

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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

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

    proptest! {
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

//! Which backend serves one try: weighted power of two choices on outstanding requests
//! (Linkerd's and Envoy's least-request balancer, with weights).
//!
//! [`pick`] draws two distinct eligible backends, each with probability proportional to its
//! weight, and keeps the one with fewer outstanding requests per unit of weight
//! (`outstanding / weight`, compared exactly by cross-multiplying); on a tie the first
//! drawn wins. So with no load (or equal load per unit of weight) each backend's share is its
//! weight's share, and under load work moves away from the slower backends, which hold their
//! requests longer. A backend is eligible when it is not excluded (banned, its circuit open,
//! or already tried by this request: the caller decides) and its weight is above 0.
//!
//! Randomness is injected ([`Random`]), so tests are deterministic. Each pick walks the
//! candidates (a service has at most 256 backends); the server may cache the weight sums
//! per table generation later if profiles say so.

/// One backend as a pick sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The backend's configured weight (0: drained, never picked).
    pub weight: u32,
    /// Requests sent to it and not yet answered (across this proxy).
    pub outstanding: u32,
    /// Banned, circuit open, or already tried by this request.
    pub excluded: bool,
}

impl Candidate {
    fn eligible(&self) -> bool {
        !self.excluded && self.weight > 0
    }
}

/// A source of uniform random numbers.
pub trait Random {
    /// A number in `0..n`; `n > 0`.
    fn below(&mut self, n: u64) -> u64;
}

impl<F: FnMut(u64) -> u64> Random for F {
    fn below(&mut self, n: u64) -> u64 {
        self(n) % n
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, fast, seedable generator, good enough to
/// spread load (not for secrets). The server seeds one per worker.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl Random for SplitMix64 {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Lemire's multiply-shift: the bias is below n / 2^64, far under any load effect.
        ((u128::from(z) * u128::from(n)) >> 64) as u64
    }
}

/// The index of the backend for the next try, or `None` when no candidate is eligible.
pub fn pick(candidates: &[Candidate], random: &mut impl Random) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .filter(|c| c.eligible())
        .map(|c| u64::from(c.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let first = weighted(candidates, total, None, random);
    let rest = total - u64::from(candidates[first].weight);
    if rest == 0 {
        return Some(first);
    }
    let second = weighted(candidates, rest, Some(first), random);
    let (a, b) = (&candidates[first], &candidates[second]);
    // a.outstanding / a.weight <= b.outstanding / b.weight, without division.
    let a_load = u64::from(a.outstanding) * u64::from(b.weight);
    let b_load = u64::from(b.outstanding) * u64::from(a.weight);
    Some(if a_load <= b_load { first } else { second })
}

/// An eligible candidate other than `skip`, drawn in proportion to weight; `total` is the
/// weight of those candidates together (> 0).
fn weighted(
    candidates: &[Candidate],
    total: u64,
    skip: Option<usize>,
    random: &mut impl Random,
) -> usize {
    let mut r = random.below(total);
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible() || Some(i) == skip {
            continue;
        }
        let w = u64::from(c.weight);
        if r < w {
            return i;
        }
        r -= w;
    }
    unreachable!("r < total, the sum of the eligible weights")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn idle(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                weight,
                outstanding: 0,
                excluded: false,
            })
            .collect()
    }

    fn shares(candidates: &[Candidate], picks: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64(seed);
        let mut counts = vec![0usize; candidates.len()];
        for _ in 0..picks {
            counts[pick(candidates, &mut rng).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn the_less_loaded_of_two_wins_per_unit_of_weight() {
        let mut c = idle(&[1, 1]);
        c[0].outstanding = 5;
        // Whatever is drawn, the two candidates are both backends: backend 1 wins.
        let mut rng = SplitMix64(7);
        assert!((0..100).all(|_| pick(&c, &mut rng) == Some(1)));
        // Weight 3 with 5 outstanding (5/3) beats weight 1 with 2 (2/1).
        let mut c = idle(&[3, 1]);
        c[0].outstanding = 5;
        c[1].outstanding = 2;
        assert!((0..100).all(|_| pick(&c, &mut rng) == Some(0)));
    }

    #[test]
    fn nothing_eligible_is_none_and_one_eligible_is_it() {
        let mut rng = SplitMix64(1);
        assert_eq!(pick(&[], &mut rng), None);
        let mut c = idle(&[0, 4, 2]);
        c[2].excluded = true;
        assert_eq!(pick(&c, &mut rng), Some(1));
        c[1].excluded = true;
        assert_eq!(pick(&c, &mut rng), None);
        // A closure works as the randomness too.
        let mut always_zero = |_n: u64| 0;
        assert_eq!(pick(&idle(&[1, 1]), &mut always_zero), Some(0));
    }

    /// A closed loop: each request stays outstanding for `hold[i]` picks; the slow backend
    /// (hold 8 against 2) ends up with a small share of the requests.
    #[test]
    fn load_moves_away_from_a_slow_backend() {
        let hold = [2usize, 2, 8];
        let mut c = idle(&[1, 1, 1]);
        let mut rng = SplitMix64(42);
        let mut ends: Vec<(usize, usize)> = Vec::new();
        let mut counts = [0usize; 3];
        for step in 0..30_000 {
            ends.retain(|&(at, i)| {
                let done = at <= step;
                if done {
                    c[i].outstanding -= 1;
                }
                !done
            });
            for _ in 0..2 {
                let i = pick(&c, &mut rng).unwrap();
                c[i].outstanding += 1;
                counts[i] += 1;
                ends.push((step + hold[i], i));
            }
        }
        let total: usize = counts.iter().sum();
        let slow = counts[2] as f64 / total as f64;
        assert!(slow < 0.25, "slow backend got {slow:.3} of the requests");
    }

    proptest! {
        /// An excluded or drained backend is never picked, and a pick exists exactly when an
        /// eligible backend does.
        #[test]
        fn never_picks_an_ineligible_backend(
            backends in proptest::collection::vec((0u32..5, 0u32..20, any::<bool>()), 0..12),
            seed in any::<u64>(),
        ) {
            let c: Vec<Candidate> = backends
                .iter()
                .map(|&(weight, outstanding, excluded)| Candidate { weight, outstanding, excluded })
                .collect();
            let any_eligible = c.iter().any(Candidate::eligible);
            let mut rng = SplitMix64(seed);
            for _ in 0..50 {
                match pick(&c, &mut rng) {
                    Some(i) => prop_assert!(c[i].eligible(), "picked {}: {:?}", i, c[i]),
                    None => prop_assert!(!any_eligible),
                }
            }
        }

        /// With equal load per unit of weight (none), each backend's share tracks its
        /// weight's share within 2 points over 20,000 picks.
        #[test]
        fn shares_track_weights(
            weights in proptest::collection::vec(1u32..10, 1..6),
            seed in any::<u64>(),
        ) {
            let total: u32 = weights.iter().sum();
            let got = shares(&idle(&weights), 20_000, seed);
            for (w, share) in weights.iter().zip(&got) {
                let want = f64::from(*w) / f64::from(total);
                prop_assert!((share - want).abs() < 0.02, "weights {:?}: {:?}", weights, got);
            }
        }
    }
}

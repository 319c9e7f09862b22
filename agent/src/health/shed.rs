//! Priority shedding (UFC's degradation): while a service is overloaded or half-open, only
//! its most important callers get through; everyone else is refused at connect() first.
//!
//! Priorities are u8 levels, higher is more important (config `online` > `offline`). The
//! kernel admits a caller when `caller_level >= min_priority`, so [`ADMIT_ALL`] (0) admits
//! everyone, including callers the mesh knows nothing about.

use super::circuit::CircuitState;

/// `min_priority` that admits every caller.
pub(crate) const ADMIT_ALL: u8 = 0;

/// Lowest priority callers still admitted for a service.
///
/// `top_level` is the highest level among the service's callers (or the highest the config
/// knows). Closed and not overloaded: everyone. Half-open or overloaded: only `top_level`, so
/// the lower classes are shed first and the scarce capacity (the half-open trickle, or what an
/// overloaded service still serves) goes to the callers that matter most. Open: the same bar —
/// the circuit flag already refuses everyone, and the bar is ready when it turns half-open.
pub(crate) fn min_priority(state: CircuitState, overloaded: bool, top_level: u8) -> u8 {
    if state == CircuitState::Closed && !overloaded {
        ADMIT_ALL
    } else {
        top_level
    }
}

#[cfg(test)]
/// Whether the service sheds anyone (its SHEDDING flag), given the callers' levels.
pub(crate) fn shedding(min_priority: u8, caller_levels: impl IntoIterator<Item = u8>) -> bool {
    caller_levels.into_iter().any(|l| !admits(min_priority, l))
}

#[cfg(test)]
/// The kernel's check, mirrored for tests and the admin view.
pub(crate) fn admits(min_priority: u8, caller_level: u8) -> bool {
    caller_level >= min_priority
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFLINE: u8 = 1;
    const ONLINE: u8 = 2;

    fn state() -> impl Strategy<Value = CircuitState> {
        prop_oneof![
            Just(CircuitState::Closed),
            Just(CircuitState::HalfOpen),
            Just(CircuitState::Open),
        ]
    }

    #[test]
    fn healthy_service_admits_everyone() {
        let min = min_priority(CircuitState::Closed, false, ONLINE);
        assert_eq!(min, ADMIT_ALL);
        assert!([0, OFFLINE, ONLINE].iter().all(|l| admits(min, *l)));
        assert!(!shedding(min, [OFFLINE, ONLINE]));
    }

    #[test]
    fn overload_and_half_open_shed_offline_first() {
        for (state, overloaded) in [
            (CircuitState::Closed, true),
            (CircuitState::HalfOpen, false),
            (CircuitState::HalfOpen, true),
        ] {
            let min = min_priority(state, overloaded, ONLINE);
            assert!(admits(min, ONLINE), "{state:?} {overloaded}");
            assert!(!admits(min, OFFLINE), "{state:?} {overloaded}");
            assert!(!admits(min, 0), "unknown callers are shed too");
            assert!(shedding(min, [OFFLINE, ONLINE]));
            assert!(!shedding(min, [ONLINE]));
        }
    }

    proptest! {
        #[test]
        fn top_class_is_never_shed_and_a_healthy_service_sheds_nobody(
            state in state(),
            overloaded: bool,
            top in 0u8..=u8::MAX,
            levels in prop::collection::vec(0u8..=u8::MAX, 0..8),
        ) {
            let levels: Vec<u8> = levels.into_iter().map(|l| l.min(top)).collect();
            let min = min_priority(state, overloaded, top);
            prop_assert!(admits(min, top));
            if state == CircuitState::Closed && !overloaded {
                prop_assert!(!shedding(min, levels.iter().copied()));
            } else {
                for l in levels {
                    prop_assert_eq!(admits(min, l), l == top);
                }
            }
        }

        /// Getting worse never admits a caller that was refused before.
        #[test]
        fn shedding_is_monotone_in_trouble(top: u8, level: u8) {
            let calm = min_priority(CircuitState::Closed, false, top);
            let busy = min_priority(CircuitState::Closed, true, top);
            let half = min_priority(CircuitState::HalfOpen, true, top);
            prop_assert!(calm <= busy && busy <= half);
            prop_assert!(admits(half, level) <= admits(calm, level));
        }
    }
}

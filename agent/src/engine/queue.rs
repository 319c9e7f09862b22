//! The engine's event queue: connect outcomes from the ring drain, coalesced and bounded.
//!
//! The ring drain must never wait for the engine, and a connect storm (tens of thousands of
//! refused connects a second) must not grow the agent's memory. What the engine needs from
//! an outcome is which backend it was, whether it succeeded (with its handshake latency) and
//! the order of outcomes per backend (consecutive-failure bans). So the queue holds runs:
//! an outcome of the same kind for the same (service, backend) as that key's latest run
//! joins it (a count and a latency sum), and only a change of outcome starts a new run. A
//! storm against a dead backend is then one run whose count grows. New runs beyond
//! [`MAX_RUNS`] are dropped and counted; joining a run never drops. The engine takes the
//! whole queue at once ([`EventQueue::take`]) and applies the runs in order.
//!
//! Order and counts per backend are exact while nothing is dropped (the property test
//! below replays both streams through a consecutive-failure detector). Across backends,
//! outcomes coalesced into an earlier run move ahead of other backends' later runs, which
//! only the per-service circuit sees, as counts taken at the same `now`.

use std::{collections::HashMap, time::Duration};

use sockmesh_common::{
    is_mesh_refusal, ConnEvent, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_LIMITED,
};

/// Runs the queue holds at most between two takes (each about 40 bytes, plus its index
/// entry): about 1 MiB, however many connects the runs count.
pub(crate) const MAX_RUNS: usize = 16_384;

/// What the engine folds from one connect event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Established; the run sums the handshake latencies.
    Success,
    /// The backend refused, timed out or reset before established.
    Failure,
    /// The mesh's own rate or connection limit refused it (marks the service overloaded).
    Limited,
}

impl Outcome {
    /// The outcome the engine folds from `ev`, or `None` when it folds nothing (closes,
    /// inbound connections, the mesh's other refusals).
    pub(crate) fn of(ev: &ConnEvent) -> Option<Self> {
        match ev.kind {
            EVENT_ESTABLISHED => Some(Self::Success),
            EVENT_FAILED if ev.result == RESULT_LIMITED => Some(Self::Limited),
            EVENT_FAILED if !is_mesh_refusal(ev.result) => Some(Self::Failure),
            _ => None,
        }
    }
}

/// Consecutive outcomes of one kind for one (service, backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub service: u32,
    pub backend: u32,
    pub outcome: Outcome,
    /// Connects in the run (≥ 1).
    pub count: u64,
    /// Sum of the handshake latencies (successes only).
    pub latency_sum: Duration,
}

/// What one [`EventQueue::take`] hands the engine.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// In the order each run started.
    pub runs: Vec<Run>,
    /// Outcomes that joined an existing run since the last take.
    pub coalesced: u64,
    /// Outcomes dropped since the last take because the queue held [`MAX_RUNS`] runs.
    pub dropped: u64,
}

/// The bounded, coalescing queue (pure; the engine's task puts it behind a lock).
#[derive(Debug)]
pub(crate) struct EventQueue {
    max_runs: usize,
    runs: Vec<Run>,
    /// (service, backend) -> index of its latest run in `runs`.
    latest: HashMap<(u32, u32), usize>,
    coalesced: u64,
    dropped: u64,
}

impl Default for EventQueue {
    fn default() -> Self {
        Self::with_max_runs(MAX_RUNS)
    }
}

impl EventQueue {
    pub(crate) fn with_max_runs(max_runs: usize) -> Self {
        Self {
            max_runs: max_runs.max(1),
            runs: Vec::new(),
            latest: HashMap::new(),
            coalesced: 0,
            dropped: 0,
        }
    }

    /// Queues one outcome. Never blocks and never grows past the bound: returns false when
    /// the outcome was dropped (counted).
    pub(crate) fn push(
        &mut self,
        service: u32,
        backend: u32,
        outcome: Outcome,
        latency: Duration,
    ) -> bool {
        let key = (service, backend);
        if let Some(run) = self.latest.get(&key).map(|&i| &mut self.runs[i]) {
            if run.outcome == outcome {
                run.count += 1;
                if outcome == Outcome::Success {
                    run.latency_sum += latency;
                }
                self.coalesced += 1;
                return true;
            }
        }
        if self.runs.len() >= self.max_runs {
            self.dropped += 1;
            return false;
        }
        self.latest.insert(key, self.runs.len());
        self.runs.push(Run {
            service,
            backend,
            outcome,
            count: 1,
            latency_sum: if outcome == Outcome::Success {
                latency
            } else {
                Duration::ZERO
            },
        });
        true
    }

    /// Queues the outcome of `ev` if the engine folds one; see [`EventQueue::push`].
    pub(crate) fn push_event(&mut self, ev: &ConnEvent) -> bool {
        match Outcome::of(ev) {
            Some(outcome) => self.push(
                ev.service_id,
                ev.backend_id,
                outcome,
                Duration::from_nanos(ev.duration_ns),
            ),
            None => true,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.coalesced == 0 && self.dropped == 0
    }

    /// Everything queued since the last take, and the counts; the queue starts empty.
    pub(crate) fn take(&mut self) -> Batch {
        self.latest.clear();
        Batch {
            runs: std::mem::take(&mut self.runs),
            coalesced: std::mem::take(&mut self.coalesced),
            dropped: std::mem::take(&mut self.dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A consecutive-failure detector as the engine runs it: a backend is banned when its
    /// streak of failures reaches `threshold`, and the streak starts again after a ban.
    /// Returns, per backend, the ordinals (among that backend's outcomes) of its bans, and
    /// per backend the sequence of outcomes seen.
    type Decisions = BTreeMap<(u32, u32), (Vec<u64>, Vec<Outcome>)>;

    fn decide(threshold: u64, runs: impl IntoIterator<Item = Run>) -> Decisions {
        let mut state: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
        let mut out = Decisions::new();
        for run in runs {
            let key = (run.service, run.backend);
            let (seen, streak) = state.entry(key).or_default();
            let (bans, outcomes) = out.entry(key).or_default();
            outcomes.extend(std::iter::repeat_n(run.outcome, run.count as usize));
            match run.outcome {
                Outcome::Failure => {
                    // Bans fall where the streak reaches the threshold inside the run.
                    let mut left = run.count;
                    while *streak + left >= threshold {
                        let step = threshold - *streak;
                        bans.push(*seen + step - 1);
                        *seen += step;
                        left -= step;
                        *streak = 0;
                    }
                    *seen += left;
                    *streak += left;
                }
                Outcome::Success => {
                    *seen += run.count;
                    *streak = 0;
                }
                Outcome::Limited => *seen += run.count,
            }
        }
        out
    }

    fn raw(events: &[(u32, u32, Outcome)]) -> impl Iterator<Item = Run> + '_ {
        events.iter().map(|&(service, backend, outcome)| Run {
            service,
            backend,
            outcome,
            count: 1,
            latency_sum: Duration::ZERO,
        })
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            6 => Just(Outcome::Failure),
            3 => Just(Outcome::Success),
            1 => Just(Outcome::Limited),
        ]
    }

    /// Few services and backends, so runs coalesce often.
    fn events() -> impl Strategy<Value = Vec<(u32, u32, Outcome)>> {
        prop::collection::vec((1u32..3, 1u32..4, outcome()), 0..400)
    }

    proptest! {
        #[test]
        fn coalesced_stream_decides_like_the_raw_stream(
            events in events(),
            threshold in 1u64..8,
            takes in prop::collection::vec(0usize..400, 0..4),
        ) {
            let mut q = EventQueue::with_max_runs(usize::MAX);
            let mut runs = Vec::new();
            let mut coalesced = 0;
            for (i, &(s, b, o)) in events.iter().enumerate() {
                prop_assert!(q.push(s, b, o, Duration::from_micros(100)));
                // The engine takes the queue whenever it wakes: at arbitrary points.
                if takes.contains(&i) {
                    let batch = q.take();
                    prop_assert_eq!(batch.dropped, 0);
                    coalesced += batch.coalesced;
                    runs.extend(batch.runs);
                }
            }
            let batch = q.take();
            coalesced += batch.coalesced;
            runs.extend(batch.runs);
            let total: u64 = runs.iter().map(|r| r.count).sum();
            prop_assert_eq!(total, events.len() as u64);
            prop_assert_eq!(coalesced, events.len() as u64 - runs.len() as u64);
            prop_assert_eq!(decide(threshold, runs), decide(threshold, raw(&events)));
        }

        #[test]
        fn the_bound_holds_and_drops_are_counted_exactly(
            events in events(),
            max_runs in 1usize..20,
        ) {
            let mut q = EventQueue::with_max_runs(max_runs);
            let mut refused = 0u64;
            for &(s, b, o) in &events {
                if !q.push(s, b, o, Duration::ZERO) {
                    refused += 1;
                }
                prop_assert!(q.runs.len() <= max_runs);
            }
            let batch = q.take();
            let kept: u64 = batch.runs.iter().map(|r| r.count).sum();
            prop_assert_eq!(batch.dropped, refused);
            prop_assert_eq!(kept + batch.dropped, events.len() as u64);
            prop_assert_eq!(batch.coalesced + batch.runs.len() as u64, kept);
            prop_assert!(q.is_empty());
        }
    }

    #[test]
    fn a_storm_against_one_dead_backend_is_one_run() {
        let mut q = EventQueue::with_max_runs(4);
        for _ in 0..100_000 {
            assert!(q.push(1, 7, Outcome::Failure, Duration::ZERO));
        }
        let batch = q.take();
        assert_eq!(batch.runs.len(), 1);
        assert_eq!(batch.runs[0].count, 100_000);
        assert_eq!(batch.coalesced, 99_999);
        assert_eq!(batch.dropped, 0);
    }

    #[test]
    fn successes_sum_their_latency_and_a_change_of_outcome_starts_a_run() {
        let mut q = EventQueue::default();
        q.push(1, 2, Outcome::Success, Duration::from_micros(100));
        q.push(1, 2, Outcome::Success, Duration::from_micros(300));
        q.push(1, 2, Outcome::Failure, Duration::from_micros(999));
        q.push(1, 2, Outcome::Success, Duration::from_micros(50));
        let runs = q.take().runs;
        let shape: Vec<(Outcome, u64, Duration)> = runs
            .iter()
            .map(|r| (r.outcome, r.count, r.latency_sum))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Outcome::Success, 2, Duration::from_micros(400)),
                (Outcome::Failure, 1, Duration::ZERO),
                (Outcome::Success, 1, Duration::from_micros(50)),
            ]
        );
    }

    #[test]
    fn only_outcomes_the_engine_folds_are_queued() {
        use sockmesh_common::{EVENT_CLOSED, RESULT_CIRCUIT_OPEN, RESULT_REFUSED};
        let ev = |kind, result| ConnEvent {
            kind,
            result,
            service_id: 1,
            backend_id: 2,
            ..ConnEvent::ZERO
        };
        assert_eq!(Outcome::of(&ev(EVENT_CLOSED, 0)), None);
        assert_eq!(Outcome::of(&ev(EVENT_FAILED, RESULT_CIRCUIT_OPEN)), None);
        assert_eq!(
            Outcome::of(&ev(EVENT_FAILED, RESULT_REFUSED)),
            Some(Outcome::Failure)
        );
        assert_eq!(
            Outcome::of(&ev(EVENT_FAILED, RESULT_LIMITED)),
            Some(Outcome::Limited)
        );
        assert_eq!(
            Outcome::of(&ev(EVENT_ESTABLISHED, 0)),
            Some(Outcome::Success)
        );
    }
}

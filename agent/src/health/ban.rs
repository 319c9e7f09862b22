//! Bans: how long an outlier stays out of the slot table, how many may be out at once, and
//! the probe that gates its return.
//!
//! Per service, one [`BanBook`]:
//! - a ban lasts `base_ban × 2^(streak − 1)`, capped at `max_ban`; the streak counts
//!   consecutive bans and starts over once the backend stayed routed for `reset_after` after
//!   its last unban (a backend that flaps is kept out longer each time);
//! - never more than `floor(max_banned_percent × backends / 100)` backends are excluded: a ban
//!   beyond that is refused and the service enters panic mode (keep routing, alert) — banning
//!   every backend would turn a partial outage into a full one (Envoy's panic threshold);
//! - a ban that ends does not return the backend: it turns into a probe ([`BanBook::due_probes`])
//!   and only a passing probe ([`BanBook::probe_result`]) lets it back; a failing probe bans it
//!   again for the next, doubled, time.
//!
//! Excluded = banned or probing: both are absent from the slot table.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::time::Instant;

use super::outlier::{BanReason, OutlierPolicy};

/// The ban half of [`OutlierPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BanPolicy {
    pub base_ban: Duration,
    pub max_ban: Duration,
    pub reset_after: Duration,
    /// 0 means never ban (always panic instead); values above 100 count as 100.
    pub max_banned_percent: u32,
    /// A probe whose result has not arrived after twice this is issued again, so a lost
    /// result cannot keep a backend out forever.
    pub probe_timeout: Duration,
}

impl From<&OutlierPolicy> for BanPolicy {
    fn from(p: &OutlierPolicy) -> Self {
        Self {
            base_ban: p.base_ban,
            max_ban: p.max_ban,
            reset_after: p.reset_after,
            max_banned_percent: p.max_banned_percent,
            probe_timeout: p.probe_timeout,
        }
    }
}

impl Default for BanPolicy {
    fn default() -> Self {
        Self::from(&OutlierPolicy::default())
    }
}

impl BanPolicy {
    /// Length of the `streak`-th consecutive ban (1-based): doubling, never above `max_ban`.
    pub(crate) fn ban_duration(&self, streak: u32) -> Duration {
        let factor = 1u128 << streak.saturating_sub(1).min(64);
        let nanos = self.base_ban.as_nanos().saturating_mul(factor);
        let capped = nanos.min(self.max_ban.as_nanos()).min(u128::from(u64::MAX));
        Duration::from_nanos(capped as u64)
    }

    /// How many of `total_backends` may be excluded at once.
    pub(crate) fn cap(&self, total_backends: usize) -> usize {
        let percent = self.max_banned_percent.min(100) as usize;
        percent.saturating_mul(total_backends) / 100
    }

    fn probe_reissue(&self) -> Duration {
        self.probe_timeout
            .saturating_mul(2)
            .max(Duration::from_millis(1))
    }
}

/// Answer to a ban request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanOutcome {
    /// Excluded until `until`, then probed.
    Banned { until: Instant },
    /// Already banned or being probed; nothing changed.
    AlreadyBanned,
    /// Refused: the service is at its cap. Panic mode is on.
    Capped,
}

/// Answer to a probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    /// The backend goes back into the slot table.
    Unbanned,
    /// The probe failed: banned again until `until`.
    Rebanned { until: Instant },
    /// The backend was not being probed (a late or duplicate result); nothing changed.
    Ignored,
}

/// Where an excluded backend stands, for the admin API and `sockmesh bans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exclusion {
    Banned { until: Instant },
    Probing { since: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BanView {
    pub id: u32,
    pub exclusion: Exclusion,
    pub reason: BanReason,
    /// Consecutive bans so far, this one included.
    pub streak: u32,
}

#[derive(Debug, Clone, Copy)]
enum Standing {
    Routed { unbanned_at: Instant },
    Banned { until: Instant },
    Probing { since: Instant, issued_at: Instant },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    standing: Standing,
    streak: u32,
    reason: BanReason,
}

/// Ban state of one service's backends. Backends never banned have no entry.
#[derive(Debug, Clone)]
pub(crate) struct BanBook {
    policy: BanPolicy,
    entries: BTreeMap<u32, Entry>,
    panic: bool,
    bans_total: BTreeMap<BanReason, u64>,
    probe_failures_total: u64,
}

impl BanBook {
    pub(crate) fn new(policy: BanPolicy) -> Self {
        Self {
            policy,
            entries: BTreeMap::new(),
            panic: false,
            bans_total: BanReason::ALL.iter().map(|r| (*r, 0)).collect(),
            probe_failures_total: 0,
        }
    }

    pub(crate) fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    /// One evaluation round: asks to ban every outlier of [`super::outlier::detect`], then sets
    /// panic mode exactly when one of them was refused — so a round without outliers (or with
    /// only already-excluded ones) clears it.
    pub(crate) fn evaluate(
        &mut self,
        now: Instant,
        outliers: &[(u32, BanReason)],
        total_backends: usize,
    ) -> Vec<(u32, BanOutcome)> {
        let outcomes: Vec<_> = outliers
            .iter()
            .map(|&(id, reason)| (id, self.request_ban(now, id, reason, total_backends)))
            .collect();
        self.panic = outcomes.iter().any(|(_, o)| *o == BanOutcome::Capped);
        outcomes
    }

    /// Bans `id` unless it is already excluded or the cap for `total_backends` is reached.
    /// A refusal turns panic mode on; a ban that fits turns it off. If the service shrank
    /// below its excluded count, existing bans stand and new ones are refused.
    pub(crate) fn request_ban(
        &mut self,
        now: Instant,
        id: u32,
        reason: BanReason,
        total_backends: usize,
    ) -> BanOutcome {
        let previous = self.entries.get(&id).copied();
        let streak = match previous.map(|e| (e.standing, e.streak)) {
            Some((Standing::Banned { .. } | Standing::Probing { .. }, _)) => {
                return BanOutcome::AlreadyBanned
            }
            Some((Standing::Routed { unbanned_at }, streak)) => {
                let healthy_for = now.saturating_duration_since(unbanned_at);
                if healthy_for >= self.policy.reset_after {
                    0
                } else {
                    streak
                }
            }
            None => 0,
        };
        if self.excluded_count() >= self.policy.cap(total_backends) {
            self.panic = true;
            return BanOutcome::Capped;
        }
        self.panic = false;
        let streak = streak.saturating_add(1);
        let until = now + self.policy.ban_duration(streak);
        self.entries.insert(
            id,
            Entry {
                standing: Standing::Banned { until },
                streak,
                reason,
            },
        );
        *self.bans_total.entry(reason).or_default() += 1;
        BanOutcome::Banned { until }
    }

    /// Backends to probe now: those whose ban just ended (they turn into probing and stay
    /// excluded), plus those whose probe result is overdue. Each is returned once per issue.
    pub(crate) fn due_probes(&mut self, now: Instant) -> Vec<u32> {
        let reissue = self.policy.probe_reissue();
        let mut due = Vec::new();
        for (id, e) in &mut self.entries {
            match e.standing {
                Standing::Banned { until } if until <= now => {
                    e.standing = Standing::Probing {
                        since: now,
                        issued_at: now,
                    };
                    due.push(*id);
                }
                Standing::Probing { since, issued_at }
                    if now.saturating_duration_since(issued_at) >= reissue =>
                {
                    e.standing = Standing::Probing {
                        since,
                        issued_at: now,
                    };
                    due.push(*id);
                }
                _ => {}
            }
        }
        due
    }

    /// The result of a probe issued by [`Self::due_probes`].
    pub(crate) fn probe_result(&mut self, now: Instant, id: u32, ok: bool) -> ProbeOutcome {
        let Some(e) = self.entries.get_mut(&id) else {
            return ProbeOutcome::Ignored;
        };
        if !matches!(e.standing, Standing::Probing { .. }) {
            return ProbeOutcome::Ignored;
        }
        if ok {
            e.standing = Standing::Routed { unbanned_at: now };
            return ProbeOutcome::Unbanned;
        }
        e.streak = e.streak.saturating_add(1);
        let until = now + self.policy.ban_duration(e.streak);
        e.standing = Standing::Banned { until };
        self.probe_failures_total += 1;
        ProbeOutcome::Rebanned { until }
    }

    /// Backends to leave out of the slot table: banned or probing. Time alone never shrinks
    /// this set; only a passing probe or [`Self::forget`] does.
    pub(crate) fn excluded(&self) -> BTreeSet<u32> {
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e.standing, Standing::Routed { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn is_excluded(&self, id: u32) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|e| !matches!(e.standing, Standing::Routed { .. }))
    }

    /// `sockmesh_panic_mode{service}`: an outlier is still routed because of the cap.
    pub(crate) fn panic_mode(&self) -> bool {
        self.panic
    }

    /// True when some backend is banned or being probed.
    pub(crate) fn any_excluded(&self) -> bool {
        self.excluded_count() > 0
    }

    /// The backend left the config: drop everything known about it.
    pub(crate) fn forget(&mut self, id: u32) {
        self.entries.remove(&id);
    }

    #[cfg(test)]
    /// `sockmesh_backend_bans_total{reason}`, every reason present. Counts bans granted by
    /// [`Self::request_ban`]; re-bans after a failed probe are [`Self::probe_failures_total`].
    pub(crate) fn bans_total_by_reason(&self) -> BTreeMap<BanReason, u64> {
        self.bans_total.clone()
    }

    #[cfg(test)]
    pub(crate) fn probe_failures_total(&self) -> u64 {
        self.probe_failures_total
    }

    #[cfg(test)]
    /// When the engine should next call [`Self::due_probes`] (the earliest ban end or probe
    /// re-issue), if anything is excluded.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let reissue = self.policy.probe_reissue();
        self.entries
            .values()
            .filter_map(|e| match e.standing {
                Standing::Banned { until } => Some(until),
                Standing::Probing { issued_at, .. } => Some(issued_at + reissue),
                Standing::Routed { .. } => None,
            })
            .min()
    }

    /// Excluded backends with their state, by id.
    pub(crate) fn views(&self) -> Vec<BanView> {
        self.entries
            .iter()
            .filter_map(|(id, e)| {
                let exclusion = match e.standing {
                    Standing::Banned { until } => Exclusion::Banned { until },
                    Standing::Probing { since, .. } => Exclusion::Probing { since },
                    Standing::Routed { .. } => return None,
                };
                Some(BanView {
                    id: *id,
                    exclusion,
                    reason: e.reason,
                    streak: e.streak,
                })
            })
            .collect()
    }

    fn excluded_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !matches!(e.standing, Standing::Routed { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests;

//! The agents that follow this control plane: what each last acknowledged, what it runs,
//! when it was last heard from, and how long it has been behind (UFC's "sync age"), so a
//! stale node is visible in `GET /v1/agents` and in `sockmesh_control_agent_sync_age_seconds`.

use std::collections::BTreeMap;

use sockmesh_model::protocol::{Ack, AgentReport};
pub use sockmesh_model::{check_agent_name, MAX_AGENT_NAME_LEN};

use crate::history::History;

/// Most agents tracked. Agents are authenticated, so this only bounds a misconfigured fleet
/// (a name per pod restart); past it, the agent heard from least recently is forgotten.
pub const MAX_AGENTS: usize = 10_000;
#[derive(Debug, Clone, Default)]
struct AgentState {
    version: u64,
    ok: bool,
    error: Option<String>,
    applied_version: Option<u64>,
    fingerprint: Option<String>,
    last_seen_unix_ms: u64,
}

#[derive(Debug, Default)]
pub struct Agents {
    by_name: BTreeMap<String, AgentState>,
}

impl Agents {
    /// Notes that `agent` asked for something (a snapshot or a watch).
    pub fn seen(&mut self, agent: &str, now_unix_ms: u64) {
        self.entry(agent).last_seen_unix_ms = now_unix_ms;
    }

    /// Records an ack. An ok ack moves the agent's applied version; a rejection leaves it
    /// where it was (the agent keeps routing with it).
    pub fn ack(&mut self, ack: &Ack, now_unix_ms: u64) {
        let state = self.entry(&ack.agent);
        state.version = ack.version;
        state.ok = ack.ok;
        state.error = if ack.ok { None } else { ack.error.clone() };
        if ack.ok {
            state.applied_version = Some(ack.version);
        }
        if ack.fingerprint.is_some() {
            state.fingerprint = ack.fingerprint.clone();
        }
        state.last_seen_unix_ms = now_unix_ms;
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every agent, by name, with its sync age against `history`'s head at `now`.
    pub fn reports(&self, history: &History, now_unix_ms: u64) -> Vec<AgentReport> {
        let head = history.head().map(|h| h.version);
        self.by_name
            .iter()
            .map(|(name, s)| {
                let in_sync = head.is_some() && s.applied_version >= head;
                let sync_age_seconds = if in_sync {
                    0.0
                } else {
                    // The first version it lacks; with nothing applied, the oldest kept.
                    history
                        .first_after(s.applied_version.unwrap_or(0))
                        .map_or(0.0, |r| {
                            now_unix_ms.saturating_sub(r.created_unix_ms) as f64 / 1000.0
                        })
                };
                AgentReport {
                    agent: name.clone(),
                    version: s.version,
                    ok: s.ok,
                    error: s.error.clone(),
                    applied_version: s.applied_version,
                    fingerprint: s.fingerprint.clone(),
                    last_seen_unix_ms: s.last_seen_unix_ms,
                    sync_age_seconds,
                    in_sync,
                }
            })
            .collect()
    }

    fn entry(&mut self, agent: &str) -> &mut AgentState {
        if !self.by_name.contains_key(agent) && self.by_name.len() >= MAX_AGENTS {
            let stalest = self
                .by_name
                .iter()
                .min_by_key(|(_, s)| s.last_seen_unix_ms)
                .map(|(name, _)| name.clone());
            if let Some(name) = stalest {
                self.by_name.remove(&name);
            }
        }
        self.by_name.entry(agent.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_model::parse_config;
    use sockmesh_model::protocol::Origin;

    fn history_at(times: &[u64]) -> History {
        let mut h = History::new(10);
        for (i, t) in times.iter().enumerate() {
            let cfg = parse_config(&format!(
                "services:\n  - name: s\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {}\n",
                i + 1
            ))
            .unwrap();
            h.commit(cfg, Origin::Source { source: "t".into() }, *t);
        }
        h
    }

    fn ack(agent: &str, version: u64, ok: bool) -> Ack {
        Ack {
            agent: agent.into(),
            version,
            ok,
            error: (!ok).then(|| "services[0]: no room".into()),
            fingerprint: Some("f".into()),
        }
    }

    #[test]
    fn sync_age_is_zero_at_head_and_counts_from_the_first_missing_version() {
        let h = history_at(&[1_000, 5_000, 9_000]);
        let mut agents = Agents::default();
        agents.ack(&ack("a", 3, true), 9_500);
        agents.ack(&ack("b", 1, true), 2_000);
        let reports = agents.reports(&h, 12_000);
        assert_eq!(reports[0].agent, "a");
        assert!(reports[0].in_sync);
        assert_eq!(reports[0].sync_age_seconds, 0.0);
        assert!(!reports[1].in_sync);
        // b lacks version 2, made at 5 s: behind for 7 s at 12 s.
        assert_eq!(reports[1].sync_age_seconds, 7.0);
    }

    #[test]
    fn a_rejection_keeps_the_applied_version_and_records_the_error() {
        let h = history_at(&[1_000, 5_000]);
        let mut agents = Agents::default();
        agents.ack(&ack("a", 1, true), 1_500);
        agents.ack(&ack("a", 2, false), 5_100);
        let r = &agents.reports(&h, 6_000)[0];
        assert_eq!((r.version, r.ok, r.applied_version), (2, false, Some(1)));
        assert_eq!(r.error.as_deref(), Some("services[0]: no room"));
        assert_eq!(r.sync_age_seconds, 1.0);
        agents.ack(&ack("a", 2, true), 7_000);
        let r = &agents.reports(&h, 8_000)[0];
        assert!(r.ok && r.in_sync && r.error.is_none());
    }

    #[test]
    fn an_agent_seen_but_never_acked_is_behind_since_the_oldest_kept_version() {
        let h = history_at(&[1_000, 5_000]);
        let mut agents = Agents::default();
        agents.seen("new", 5_500);
        let r = &agents.reports(&h, 6_000)[0];
        assert_eq!(r.applied_version, None);
        assert_eq!(r.sync_age_seconds, 5.0);
        assert_eq!(r.last_seen_unix_ms, 5_500);
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut agents = Agents::default();
        for i in 0..MAX_AGENTS + 5 {
            agents.seen(&format!("n{i}"), i as u64);
        }
        assert_eq!(agents.len(), MAX_AGENTS);
        let h = History::new(1);
        assert!(agents.reports(&h, 0).iter().all(|r| r.agent != "n0"));
    }
}

//! The control plane's state, shared by the source loop, the API and the metrics: the
//! history (head included), the agents, and the last rejected edit. A new head is published
//! on a `watch` channel, which is what wakes every long-polling agent at once.

use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::agents::Agents;
use crate::credentials::{RefusedLabels, RefusedReason};
use crate::history::{Commit, History, HistoryError, Revision};
use crate::source::{Patch, SourceEvent};
use crate::store::{Store, StoreError};
use crate::watch_cap::WatchCap;
use sockmesh_model::protocol::{
    Ack, AgentReport, HistoryReply, Origin, Rejection, RollbackReply, StatusReply,
};
use sockmesh_model::{ConfigIndex, MeshConfig};

/// The series the hub moves itself (the per-agent ones are computed at scrape time).
#[derive(Debug, Clone, Default)]
pub struct HubMetrics {
    /// `sockmesh_control_config_version`: the head's version.
    pub config_version: Gauge,
    /// `sockmesh_control_rejected_total`: source edits refused.
    pub rejected: Counter,
    /// `sockmesh_control_updates_served_total{kind}`: watch replies to agents that read
    /// deltas, by what they carried.
    pub updates_served: Family<UpdateKind, Counter>,
    /// `sockmesh_control_watches_refused_total`: watches over the per-identity cap (429).
    pub watches_refused: Counter,
    /// `sockmesh_control_requests_refused_total{reason}`: API requests refused for their
    /// credential (401) or its scope (403).
    pub requests_refused: Family<RefusedLabels, Counter>,
    /// `sockmesh_control_token_reviews_total{result}` and
    /// `sockmesh_control_token_review_cache_hits_total` (`--kube-token-review`).
    pub token_reviews: crate::credentials::review::ReviewMetrics,
}

/// How a version reached an agent that reads deltas.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateKind {
    /// `delta` or `snapshot` (the agent's version was no longer kept, or only a snapshot
    /// could say the change).
    pub kind: &'static str,
}

impl HubMetrics {
    /// Counts one refused request.
    pub fn refused(&self, reason: RefusedReason) {
        self.requests_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// Counts one watch reply to a delta-reading agent.
    pub fn served(&self, delta: bool) {
        let kind = if delta { "delta" } else { "snapshot" };
        self.updates_served
            .get_or_create(&UpdateKind { kind })
            .inc();
    }
}

pub type Head = Option<Arc<Revision>>;

#[derive(Debug)]
struct State {
    history: History,
    agents: Agents,
    /// The last state the source produced, so a repeat (or the same file after a restart)
    /// is not a change, and a rollback holds until the source really changes.
    source_fingerprint: Option<String>,
    /// The index of the head's config (and the head's version), made at the first patch
    /// from the source after a version made otherwise: a patch is fingerprinted from the
    /// services it names.
    index: Option<(u64, ConfigIndex)>,
    rejected: u64,
    last_rejection: Option<Rejection>,
}

#[derive(Debug)]
pub struct Hub {
    source: String,
    state: Mutex<State>,
    head: watch::Sender<Head>,
    store: Option<Store>,
    pub metrics: HubMetrics,
    /// Long-polls held per agent (`crate::watch_cap`).
    pub watches: WatchCap,
}

impl Hub {
    /// A hub for `source`, keeping `keep` revisions, restored from `store` when given.
    pub fn new(source: String, keep: usize, store: Option<Store>) -> Result<Self, StoreError> {
        let (history, source_fingerprint) = match &store {
            Some(store) => {
                let stored = store.load()?;
                let history =
                    History::restore(keep, stored.revisions).map_err(|e| StoreError::Io {
                        path: "revisions".into(),
                        cause: std::io::Error::other(e.to_string()),
                    })?;
                (history, stored.source_fingerprint)
            }
            None => (History::new(keep), None),
        };
        let head = history.head().cloned();
        let metrics = HubMetrics::default();
        if let Some(h) = &head {
            info!(version = h.version, fingerprint = %h.fingerprint, "restored revisions");
            metrics.config_version.set(h.version as i64);
        }
        Ok(Hub {
            source,
            state: Mutex::new(State {
                history,
                agents: Agents::default(),
                source_fingerprint,
                index: None,
                rejected: 0,
                last_rejection: None,
            }),
            head: watch::Sender::new(head),
            store,
            metrics,
            watches: WatchCap::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is a few
        // assignments after the fallible work), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Takes one event from the source: a new state becomes the next version (unless it
    /// is the same as before), a rejection is counted and logged with its field path and
    /// never served.
    pub fn on_source(&self, event: SourceEvent) {
        match event {
            SourceEvent::Desired(config) => self.on_desired(config, None),
            SourceEvent::Patched(Patch {
                config,
                services,
                workloads,
            }) => self.on_desired(config, Some((services, workloads))),
            SourceEvent::Rejected(err) => {
                let mut state = self.lock();
                state.rejected += 1;
                self.metrics.rejected.inc();
                error!(
                    source = %self.source,
                    path = err.path.as_deref().unwrap_or("-"),
                    error = %err.message,
                    "config rejected; agents keep being served version {}",
                    state.history.head().map_or("none".into(), |h| h.version.to_string())
                );
                state.last_rejection = Some(Rejection {
                    error: err.message,
                    path: err.path,
                    unix_ms: unix_ms_now(),
                });
            }
        }
    }

    /// `patched`: the services that differ from the source's previous state, and whether
    /// its workloads do.
    fn on_desired(&self, config: MeshConfig, patched: Option<(Vec<String>, bool)>) {
        let mut state = self.lock();
        let state = &mut *state;
        // A patch says what differs from the source's previous state; when that is the head
        // (no rollback since), the head's index gives the fingerprint from those services.
        let step = match (&patched, state.history.head()) {
            (Some((services, workloads)), Some(head))
                if state.source_fingerprint.as_deref() == Some(head.fingerprint.as_str()) =>
            {
                let index = match &mut state.index {
                    Some((version, index)) if *version == head.version => index,
                    slot => &mut slot.insert((head.version, ConfigIndex::of(&head.config))).1,
                };
                let services = services.iter().map(String::as_str);
                Some(index.step_touched(&head.config, services, *workloads, &config))
            }
            _ => None,
        };
        let fingerprint = match &step {
            Some(step) => step.fingerprint().to_owned(),
            None => config.fingerprint(),
        };
        debug_assert_eq!(
            fingerprint,
            config.fingerprint(),
            "a patch named too little"
        );
        if state.source_fingerprint.as_deref() == Some(fingerprint.as_str())
            && state.history.head().is_some()
        {
            info!(
                fingerprint,
                "source unchanged since the last revision it made; nothing to do"
            );
            return;
        }
        state.source_fingerprint = Some(fingerprint.clone());
        if let Some(store) = &self.store {
            if let Err(e) = store.save_source_fingerprint(&fingerprint) {
                warn!(error = %e, "could not store the source's fingerprint");
            }
        }
        let origin = Origin::Source {
            source: self.source.clone(),
        };
        let patch = step
            .is_some()
            .then(|| patched.as_ref().map(|(s, w)| (s.as_slice(), *w)))
            .flatten();
        let commit = state
            .history
            .commit_patch(config, fingerprint, patch, origin, unix_ms_now());
        match (&commit, step, &mut state.index) {
            (Commit::New { revision, .. }, Some(step), Some((version, index))) => {
                index.commit(step);
                *version = revision.version;
            }
            (Commit::New { .. }, _, index) => *index = None,
            _ => {}
        }
        self.publish(&state.history, &commit);
    }

    /// Logs, stores and announces a commit. Called with the state locked, so heads are
    /// published in version order.
    fn publish(&self, history: &History, commit: &Commit) {
        let Commit::New { revision, .. } = commit else {
            info!(
                version = commit.revision().version,
                "the head already has this config; no new version"
            );
            return;
        };
        let c = &revision.changes;
        info!(
            version = revision.version,
            fingerprint = %revision.fingerprint,
            services = revision.config.services.len(),
            added = c.added.len(),
            removed = c.removed.len(),
            changed = c.changed.len(),
            workloads_changed = c.workloads,
            origin = %revision.origin,
            "new version"
        );
        if let Some(store) = &self.store {
            // The version is served from memory either way; on disk it only matters for
            // the next start, which then begins from the last stored head.
            let previous = history.get(revision.version.wrapping_sub(1));
            let oldest = history.oldest().map_or(revision.version, |r| r.version);
            if let Err(e) = store.save(revision, previous.map(|p| &**p), oldest) {
                error!(error = %e, version = revision.version, "could not store the revision");
            }
        }
        self.metrics.config_version.set(revision.version as i64);
        self.head.send_replace(Some(revision.clone()));
    }

    pub fn head(&self) -> Head {
        self.head.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    pub fn revision(&self, version: u64) -> Option<Arc<Revision>> {
        self.lock().history.get(version).cloned()
    }

    pub fn rollback(&self, version: u64) -> Result<RollbackReply, HistoryError> {
        let mut state = self.lock();
        let commit = state.history.rollback(version, unix_ms_now())?;
        warn!(to = version, "rollback requested");
        self.publish(&state.history, &commit);
        let head = commit.revision();
        Ok(RollbackReply {
            version: head.version,
            rolled_back_to: version,
            fingerprint: head.fingerprint.clone(),
            changed: matches!(commit, Commit::New { .. }),
        })
    }

    pub fn ack(&self, ack: &Ack) {
        if ack.ok {
            info!(agent = %ack.agent, version = ack.version, "agent applied");
        } else {
            warn!(
                agent = %ack.agent,
                version = ack.version,
                error = ack.error.as_deref().unwrap_or("-"),
                "agent rejected"
            );
        }
        self.lock().agents.ack(ack, unix_ms_now());
    }

    pub fn seen(&self, agent: &str) {
        self.lock().agents.seen(agent, unix_ms_now());
    }

    /// How many agents are tracked (what `agents().len()` says, without the reports).
    pub fn agent_count(&self) -> usize {
        self.lock().agents.len()
    }

    pub fn agents(&self) -> Vec<AgentReport> {
        let state = self.lock();
        state.agents.reports(&state.history, unix_ms_now())
    }

    pub fn history(&self) -> HistoryReply {
        let state = self.lock();
        HistoryReply {
            head: state.history.head().map(|h| h.version),
            keep: state.history.keep(),
            versions: state.history.entries(),
        }
    }

    /// The status without the listener addresses (the API fills those in).
    pub fn status(&self) -> StatusReply {
        let state = self.lock();
        let head = state.history.head();
        StatusReply {
            source: self.source.clone(),
            version: head.map(|h| h.version),
            fingerprint: head.map(|h| h.fingerprint.clone()),
            rejected: state.rejected,
            last_rejection: state.last_rejection.clone(),
            agents: state.agents.len(),
            listen: Vec::new(),
            listen_unix: None,
            metrics_addr: None,
        }
    }
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use sockmesh_model::parse_config;

    type Said = (u64, String, BTreeMap<String, u64>, Vec<String>, Vec<String>);

    fn mesh(weights: &[(usize, u32)]) -> MeshConfig {
        let mut y = String::from("services:\n");
        for (i, w) in weights {
            y.push_str(&format!(
                "  - name: s{i}\n    vip: 127.100.0.{}\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {w}\n",
                i + 1
            ));
        }
        parse_config(&y).unwrap()
    }

    /// What a version says about its config: the same whichever way the source said it.
    fn head_of(hub: &Hub) -> Said {
        let h = hub.head().unwrap();
        let mut changed = h.changes.changed.clone();
        changed.extend(h.changes.added.iter().cloned());
        changed.sort();
        let mut removed = h.changes.removed.clone();
        removed.sort();
        (
            h.version,
            h.fingerprint.clone(),
            h.service_versions.clone(),
            changed,
            removed,
        )
    }

    /// Patches (fingerprinted and diffed from the services they name) make the same
    /// versions as whole configs, across a rollback (after which the hub reads a patch
    /// whole, its base being no longer the head).
    #[test]
    fn a_patched_config_makes_the_version_a_whole_one_does() {
        let steps: Vec<(MeshConfig, Vec<&str>)> = vec![
            (mesh(&[(0, 1), (1, 1), (2, 1)]), vec![]),
            (mesh(&[(0, 1), (1, 4), (2, 1)]), vec!["s1"]),
            (mesh(&[(0, 1), (1, 4), (3, 1), (2, 1)]), vec!["s3", "s0"]),
            (mesh(&[(0, 1), (3, 1), (2, 2)]), vec!["s1", "s2"]),
        ];
        let patched = Hub::new("test".into(), 8, None).unwrap();
        let whole = Hub::new("test".into(), 8, None).unwrap();
        for (k, (config, touched)) in steps.iter().enumerate() {
            whole.on_source(SourceEvent::Desired(config.clone()));
            patched.on_source(if k == 0 {
                SourceEvent::Desired(config.clone())
            } else {
                SourceEvent::Patched(Patch {
                    config: config.clone(),
                    services: touched.iter().map(|s| s.to_string()).collect(),
                    workloads: false,
                })
            });
            assert_eq!(head_of(&patched), head_of(&whole), "step {k}");
            assert_eq!(head_of(&patched).1, config.fingerprint(), "step {k}");
            if k == 1 {
                patched.rollback(1).unwrap();
                whole.rollback(1).unwrap();
            }
        }
    }
}

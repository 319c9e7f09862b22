//! Versioning: every accepted desired state becomes a [`Revision`] with the next global
//! version; the last `keep` revisions are kept for agents that are behind, for
//! `sockmesh config history`, and for rollback.
//!
//! Versions only grow. A rollback does not move the head back to an old number: it copies
//! the old revision's config into a new revision, so an agent never sees a version number
//! go down and "newer" always means "later decision".

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::diff::{diff, diff_touched};
use sockmesh_model::protocol::{Changes, DeltaUpdate, HistoryEntry, Origin, Snapshot, Update};
use sockmesh_model::{ConfigDelta, MeshConfig};

/// How many revisions are kept unless `--keep` says otherwise.
pub const DEFAULT_KEEP: usize = 20;

/// One version of the desired state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revision {
    pub version: u64,
    pub fingerprint: String,
    pub created_unix_ms: u64,
    pub origin: Origin,
    pub service_versions: BTreeMap<String, u64>,
    pub changes: Changes,
    pub config: MeshConfig,
    /// The snapshot's JSON, made once: every agent that watches gets the same bytes, and a
    /// large mesh is worth serializing only once per version.
    #[serde(skip)]
    snapshot_json: OnceLock<Bytes>,
    /// The same as an [`Update::Snapshot`], for agents that read deltas.
    #[serde(skip)]
    update_json: OnceLock<Bytes>,
    /// The [`Update::Delta`] from the version before this one (what every agent that keeps
    /// up asks for), made once; `None` inside when only a snapshot can say it.
    #[serde(skip)]
    delta_from_previous: OnceLock<Option<Bytes>>,
}

impl Revision {
    /// What agents are served.
    pub fn snapshot(&self) -> Snapshot<&MeshConfig> {
        Snapshot {
            version: self.version,
            fingerprint: self.fingerprint.clone(),
            created_unix_ms: self.created_unix_ms,
            service_versions: self.service_versions.clone(),
            config: &self.config,
        }
    }

    /// [`Revision::snapshot`] as JSON, serialized on first use.
    pub fn snapshot_json(&self) -> Bytes {
        self.snapshot_json
            .get_or_init(|| {
                let mut body = serde_json::to_vec(&self.snapshot())
                    .expect("a snapshot always serializes to JSON");
                body.push(b'\n');
                Bytes::from(body)
            })
            .clone()
    }

    /// [`Revision::snapshot`] as an [`Update::Snapshot`] (JSON, made on first use).
    pub fn update_json(&self) -> Bytes {
        self.update_json
            .get_or_init(|| to_json(&Update::Snapshot(self.snapshot())))
            .clone()
    }

    /// This revision as an [`Update::Delta`] from `base` (JSON), or `None` when only a
    /// snapshot can say it. The one from the version just before is made once.
    pub fn delta_json(&self, base: &Revision) -> Option<Bytes> {
        let make = || {
            // The version just before: this revision's changes name what differs.
            let delta = if base.version + 1 == self.version {
                let c = &self.changes;
                ConfigDelta::between_known(
                    &base.config,
                    &self.config,
                    &c.added,
                    &c.changed,
                    &c.removed,
                    c.workloads,
                )?
            } else {
                ConfigDelta::between(&base.config, &self.config)?
            };
            Some(to_json(&Update::<&MeshConfig>::Delta(DeltaUpdate {
                version: self.version,
                from: base.version,
                fingerprint: self.fingerprint.clone(),
                created_unix_ms: self.created_unix_ms,
                delta,
            })))
        };
        if base.version + 1 == self.version {
            self.delta_from_previous.get_or_init(make).clone()
        } else {
            make()
        }
    }

    /// A revision with what is recorded of it (made at commit, or read back from the
    /// store); its serialized forms are made on first use.
    pub(crate) fn restored(
        version: u64,
        fingerprint: String,
        created_unix_ms: u64,
        origin: Origin,
        service_versions: BTreeMap<String, u64>,
        changes: Changes,
        config: MeshConfig,
    ) -> Self {
        Revision {
            version,
            fingerprint,
            created_unix_ms,
            origin,
            service_versions,
            changes,
            config,
            snapshot_json: OnceLock::new(),
            update_json: OnceLock::new(),
            delta_from_previous: OnceLock::new(),
        }
    }

    pub fn entry(&self) -> HistoryEntry {
        HistoryEntry {
            version: self.version,
            fingerprint: self.fingerprint.clone(),
            created_unix_ms: self.created_unix_ms,
            origin: self.origin.clone(),
            services: self.config.services.len(),
            changes: self.changes.clone(),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    let mut body = serde_json::to_vec(value).expect("replies always serialize to JSON");
    body.push(b'\n');
    Bytes::from(body)
}

/// What [`History::commit`] did.
#[derive(Debug, Clone)]
pub enum Commit {
    /// The config is the head's already: no new version.
    Unchanged(Arc<Revision>),
    /// A new head; `evicted` are the versions that fell out of the kept window.
    New {
        revision: Arc<Revision>,
        evicted: Vec<u64>,
    },
}

impl Commit {
    pub fn revision(&self) -> &Arc<Revision> {
        match self {
            Commit::Unchanged(r) | Commit::New { revision: r, .. } => r,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("version {version} is not kept (kept: {kept})")]
    NotKept { version: u64, kept: String },
    #[error("stored revisions are out of order: version {later} follows {earlier}")]
    OutOfOrder { earlier: u64, later: u64 },
}

/// The kept revisions, oldest first; the last one is the head.
#[derive(Debug)]
pub struct History {
    revisions: VecDeque<Arc<Revision>>,
    keep: usize,
}

impl History {
    /// An empty history keeping at most `keep` revisions (at least 1: the head).
    pub fn new(keep: usize) -> Self {
        History {
            revisions: VecDeque::new(),
            keep: keep.max(1),
        }
    }

    /// A history restored from stored revisions (any order); only the newest `keep` stay.
    pub fn restore(keep: usize, mut revisions: Vec<Revision>) -> Result<Self, HistoryError> {
        revisions.sort_by_key(|r| r.version);
        for pair in revisions.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(HistoryError::OutOfOrder {
                    earlier: pair[0].version,
                    later: pair[1].version,
                });
            }
        }
        let mut history = History::new(keep);
        history.revisions = revisions.into_iter().map(Arc::new).collect();
        history.evict();
        Ok(history)
    }

    pub fn keep(&self) -> usize {
        self.keep
    }

    pub fn head(&self) -> Option<&Arc<Revision>> {
        self.revisions.back()
    }

    /// The oldest kept revision.
    pub fn oldest(&self) -> Option<&Arc<Revision>> {
        self.revisions.front()
    }

    pub fn get(&self, version: u64) -> Option<&Arc<Revision>> {
        self.revisions.iter().find(|r| r.version == version)
    }

    /// The oldest kept revision newer than `version`: the first one an agent at `version`
    /// lacks (or, when that one is no longer kept, the oldest that is).
    pub fn first_after(&self, version: u64) -> Option<&Arc<Revision>> {
        self.revisions.iter().find(|r| r.version > version)
    }

    /// Newest first.
    pub fn entries(&self) -> Vec<HistoryEntry> {
        self.revisions.iter().rev().map(|r| r.entry()).collect()
    }

    /// Makes `config` the head with the next version, unless it already is the head's.
    pub fn commit(&mut self, config: MeshConfig, origin: Origin, now_unix_ms: u64) -> Commit {
        let fingerprint = config.fingerprint();
        self.commit_with(config, fingerprint, origin, now_unix_ms)
    }

    /// [`commit`](Self::commit) of a config whose fingerprint the caller already has.
    pub fn commit_with(
        &mut self,
        config: MeshConfig,
        fingerprint: String,
        origin: Origin,
        now_unix_ms: u64,
    ) -> Commit {
        self.commit_patch(config, fingerprint, None, origin, now_unix_ms)
    }

    /// [`commit_with`](Self::commit_with) of a config that differs from the head's only in
    /// the services `patched` names and, when it says so, the workloads (a source's
    /// [`Patch`](sockmesh_model::Patch)): only those are compared.
    pub fn commit_patch(
        &mut self,
        config: MeshConfig,
        fingerprint: String,
        patched: Option<(&[String], bool)>,
        origin: Origin,
        now_unix_ms: u64,
    ) -> Commit {
        if let Some(head) = self.head() {
            if head.fingerprint == fingerprint && head.config == config {
                return Commit::Unchanged(head.clone());
            }
        }
        let version = self.head().map_or(1, |h| h.version + 1);
        let (changes, service_versions) = match (self.head(), patched) {
            (Some(h), Some((touched, workloads))) => diff_touched(
                (&h.config, &h.service_versions),
                &config,
                touched,
                workloads,
                version,
            ),
            (head, _) => diff(
                head.map(|h| (&h.config, &h.service_versions)),
                &config,
                version,
            ),
        };
        let revision = Arc::new(Revision::restored(
            version,
            fingerprint,
            now_unix_ms,
            origin,
            service_versions,
            changes,
            config,
        ));
        self.revisions.push_back(revision.clone());
        let evicted = self.evict();
        Commit::New { revision, evicted }
    }

    /// Makes the config of kept revision `version` the head again, as a new version.
    pub fn rollback(&mut self, version: u64, now_unix_ms: u64) -> Result<Commit, HistoryError> {
        let Some(target) = self.get(version) else {
            return Err(HistoryError::NotKept {
                version,
                kept: self.kept_range(),
            });
        };
        let config = target.config.clone();
        Ok(self.commit(config, Origin::Rollback { of: version }, now_unix_ms))
    }

    fn kept_range(&self) -> String {
        match (self.revisions.front(), self.revisions.back()) {
            (Some(first), Some(last)) if first.version == last.version => {
                format!("only {}", first.version)
            }
            (Some(first), Some(last)) => format!("{} to {}", first.version, last.version),
            _ => "none".to_owned(),
        }
    }

    fn evict(&mut self) -> Vec<u64> {
        let mut evicted = Vec::new();
        while self.revisions.len() > self.keep {
            if let Some(old) = self.revisions.pop_front() {
                evicted.push(old.version);
            }
        }
        evicted
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;

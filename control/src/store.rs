//! Revisions on disk (`--state-dir`), so versions keep counting up, history and rollback
//! survive a restart, and a restart does not undo a rollback.
//!
//! One file per revision, written beside and renamed into place, so a crash leaves either
//! the old set or the new one:
//! - a **checkpoint**, `revisions/<version>.json`: the whole revision;
//! - a **delta**, `revisions/<version>.delta`: a line of the revision's own record (version,
//!   fingerprint, origin, changes, the per-service versions that moved), then the
//!   [`Update::Delta`] from the version before, the same bytes the agents are served. A
//!   one-service change to a 10,000-service mesh writes about a kilobyte instead of the
//!   whole config (megabytes, serialized and fsynced before the version is served).
//!
//! A delta follows the revision stored just before it in this process; a checkpoint is
//! written for the first revision after a start, every [`CHECKPOINT_EVERY`] versions, and
//! whenever only a snapshot can say the change. Reading back replays each delta on the
//! revision before it and checks the result against the recorded fingerprint; files older
//! than the checkpoint that anchors the oldest kept version are removed.
//! `source.json` holds the fingerprint of the last state the source produced: at start, a
//! source that still says the same is not a change (otherwise a restart would replace a
//! rolled-back head with the file again).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sockmesh_model::protocol::{Changes, Origin, Update};

use crate::history::Revision;

const REVISIONS_DIR: &str = "revisions";
const SOURCE_FILE: &str = "source.json";
const CHECKPOINT_EXT: &str = "json";
const DELTA_EXT: &str = "delta";

/// Deltas written between two checkpoints at most: bounds what a start replays and what a
/// lost file can take with it.
pub const CHECKPOINT_EVERY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("{}: not a stored revision: {cause} (move it away to start without it)", path.display())]
    Corrupt {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{}: its config no longer validates: {cause} (move it away to start without it)", path.display())]
    Invalid {
        path: PathBuf,
        cause: sockmesh_model::ConfigError,
    },
    #[error("{}: {reason} (move it and the revisions after it away to start without them)", path.display())]
    Broken { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.to_owned(),
        cause,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SourceState {
    fingerprint: Option<String>,
}

/// The first line of a delta file: the revision, but for its config.
#[derive(Debug, Serialize, Deserialize)]
struct DeltaRecord {
    version: u64,
    /// The version the delta applies to.
    base: u64,
    fingerprint: String,
    created_unix_ms: u64,
    origin: Origin,
    changes: Changes,
    /// Per-service versions that differ from the base's (new or moved).
    service_versions_set: BTreeMap<String, u64>,
    /// Services in the base's per-service versions and not in this one's.
    service_versions_removed: Vec<String>,
}

impl DeltaRecord {
    /// The per-service versions that moved are the ones the changes name: an added or
    /// changed service takes the revision's version, every other keeps the base's.
    fn of(revision: &Revision, base: &Revision) -> Self {
        let c = &revision.changes;
        DeltaRecord {
            version: revision.version,
            base: base.version,
            fingerprint: revision.fingerprint.clone(),
            created_unix_ms: revision.created_unix_ms,
            origin: revision.origin.clone(),
            changes: c.clone(),
            service_versions_set: c
                .added
                .iter()
                .chain(&c.changed)
                .filter_map(|name| Some((name.clone(), *revision.service_versions.get(name)?)))
                .collect(),
            service_versions_removed: c.removed.clone(),
        }
    }
}

/// What this process has on disk: the files by version (`true`: a checkpoint), the last
/// one written and the deltas since the last checkpoint.
#[derive(Debug, Default)]
struct Chain {
    files: BTreeMap<u64, bool>,
    last: Option<u64>,
    deltas_since_checkpoint: usize,
}

/// What was stored, read back at start.
#[derive(Debug, Default)]
pub struct Stored {
    pub revisions: Vec<Revision>,
    pub source_fingerprint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    chain: Arc<Mutex<Chain>>,
}

impl Store {
    /// Creates `dir/revisions` (mode 0700: configs name every backend) if needed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let revisions = dir.join(REVISIONS_DIR);
        fs::create_dir_all(&revisions).map_err(io_err(&revisions))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        Ok(Store {
            dir: dir.to_owned(),
            chain: Arc::default(),
        })
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every stored revision back (checkpoints as they are, deltas replayed on the
    /// revision before them), oldest first.
    pub fn load(&self) -> Result<Stored, StoreError> {
        let dir = self.dir.join(REVISIONS_DIR);
        let mut files: BTreeMap<u64, (PathBuf, bool)> = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let checkpoint = match path.extension().and_then(|e| e.to_str()) {
                Some(CHECKPOINT_EXT) => true,
                Some(DELTA_EXT) => false,
                _ => continue, // a `.tmp` a crash left behind
            };
            let version = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Broken {
                    path: path.clone(),
                    reason: "not named <version>.json or <version>.delta".into(),
                })?;
            if let Some((other, _)) = files.insert(version, (path.clone(), checkpoint)) {
                return Err(StoreError::Broken {
                    path,
                    reason: format!("version {version} is also in {}", other.display()),
                });
            }
        }
        let mut revisions: Vec<Revision> = Vec::with_capacity(files.len());
        let mut chain = Chain::default();
        for (version, (path, checkpoint)) in files {
            let raw = fs::read(&path).map_err(io_err(&path))?;
            let revision = if checkpoint {
                serde_json::from_slice::<Revision>(&raw).map_err(|cause| StoreError::Corrupt {
                    path: path.clone(),
                    cause,
                })?
            } else {
                replay(&path, &raw, revisions.last())?
            };
            if revision.version != version {
                return Err(StoreError::Broken {
                    path,
                    reason: format!("it holds version {}", revision.version),
                });
            }
            revision
                .config
                .validate()
                .map_err(|cause| StoreError::Invalid {
                    path: path.clone(),
                    cause,
                })?;
            chain.files.insert(version, checkpoint);
            revisions.push(revision);
        }
        // The next save starts with a checkpoint: this process has not written the last.
        *self.chain() = chain;
        let source = self.dir.join(SOURCE_FILE);
        let source_fingerprint = match fs::read(&source) {
            Ok(raw) => {
                serde_json::from_slice::<SourceState>(&raw)
                    .map_err(|cause| StoreError::Corrupt {
                        path: source.clone(),
                        cause,
                    })?
                    .fingerprint
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&source)(e)),
        };
        Ok(Stored {
            revisions,
            source_fingerprint,
        })
    }

    /// Writes `revision`: as a delta from `previous` (the revision before it) when the
    /// last file this process wrote is `previous`'s and the chain is short enough, else as
    /// a checkpoint. Then removes the files no kept revision (`oldest` on) needs.
    pub fn save(
        &self,
        revision: &Revision,
        previous: Option<&Revision>,
        oldest: u64,
    ) -> Result<(), StoreError> {
        let mut chain = self.chain();
        let delta = previous
            .filter(|p| {
                chain.last == Some(p.version)
                    && p.version + 1 == revision.version
                    && chain.deltas_since_checkpoint < CHECKPOINT_EVERY
            })
            .and_then(|p| Some((p, revision.delta_json(p)?)));
        let checkpoint = delta.is_none();
        match delta {
            Some((base, update)) => {
                let mut body = serde_json::to_vec(&DeltaRecord::of(revision, base))
                    .expect("a delta record always serializes");
                body.push(b'\n');
                body.extend_from_slice(&update);
                write_atomically(&self.revision_path(revision.version, false), &body)?;
                chain.deltas_since_checkpoint += 1;
            }
            None => {
                let body = serde_json::to_vec(revision).expect("a revision always serializes");
                write_atomically(&self.revision_path(revision.version, true), &body)?;
                chain.deltas_since_checkpoint = 0;
            }
        }
        chain.files.insert(revision.version, checkpoint);
        chain.last = Some(revision.version);
        // Everything before the newest checkpoint at or below the oldest kept version goes.
        let anchor = chain
            .files
            .range(..=oldest)
            .rev()
            .find(|(_, checkpoint)| **checkpoint)
            .map(|(v, _)| *v);
        if let Some(anchor) = anchor {
            let gone: Vec<(u64, bool)> =
                chain.files.range(..anchor).map(|(v, c)| (*v, *c)).collect();
            for (version, checkpoint) in gone {
                let path = self.revision_path(version, checkpoint);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                    _ => {}
                }
                chain.files.remove(&version);
            }
        }
        Ok(())
    }

    pub fn save_source_fingerprint(&self, fingerprint: &str) -> Result<(), StoreError> {
        let state = SourceState {
            fingerprint: Some(fingerprint.to_owned()),
        };
        let body = serde_json::to_vec(&state).expect("always serializes");
        write_atomically(&self.dir.join(SOURCE_FILE), &body)
    }

    fn revision_path(&self, version: u64, checkpoint: bool) -> PathBuf {
        let ext = if checkpoint {
            CHECKPOINT_EXT
        } else {
            DELTA_EXT
        };
        // Zero-padded, so `ls` lists them in version order.
        self.dir
            .join(REVISIONS_DIR)
            .join(format!("{version:020}.{ext}"))
    }
}

/// The revision a delta file describes, from the revision read just before it.
fn replay(path: &Path, raw: &[u8], base: Option<&Revision>) -> Result<Revision, StoreError> {
    let broken = |reason: String| StoreError::Broken {
        path: path.to_owned(),
        reason,
    };
    let corrupt = |cause| StoreError::Corrupt {
        path: path.to_owned(),
        cause,
    };
    let split = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| broken("no delta after the record line".into()))?;
    let record: DeltaRecord = serde_json::from_slice(&raw[..split]).map_err(corrupt)?;
    let Update::Delta(update) =
        serde_json::from_slice::<Update>(&raw[split + 1..]).map_err(corrupt)?
    else {
        return Err(broken("the second line is not a delta".into()));
    };
    let base = match base {
        Some(b) if b.version == record.base && update.from == record.base => b,
        _ => {
            return Err(broken(format!(
                "a delta from version {}, which is not the stored revision before it",
                record.base
            )))
        }
    };
    let config = update.delta.apply(base.config.clone()).map_err(|e| {
        broken(format!(
            "the delta does not fit version {}: {e}",
            record.base
        ))
    })?;
    let fingerprint = config.fingerprint();
    if fingerprint != record.fingerprint || update.fingerprint != record.fingerprint {
        return Err(broken(format!(
            "replayed, it gives fingerprint {fingerprint}, not the recorded {}",
            record.fingerprint
        )));
    }
    let mut service_versions = base.service_versions.clone();
    for name in &record.service_versions_removed {
        service_versions.remove(name);
    }
    service_versions.extend(record.service_versions_set);
    Ok(Revision::restored(
        record.version,
        record.fingerprint,
        record.created_unix_ms,
        record.origin,
        service_versions,
        record.changes,
        config,
    ))
}

fn write_atomically(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

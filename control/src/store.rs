//! Revisions on disk (`--state-dir`), so versions keep counting up, history and rollback
//! survive a restart, and a restart does not undo a rollback.
//!
//! One file per revision (`revisions/<version>.json`), written beside and renamed into
//! place, so a crash leaves either the old set or the new one, and a change to a large mesh
//! writes one revision, not the whole history. `source.json` holds the fingerprint of the
//! last state the source produced: at start, a source that still says the same is not a
//! change (otherwise a restart would replace a rolled-back head with the file again).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::history::Revision;

const REVISIONS_DIR: &str = "revisions";
const SOURCE_FILE: &str = "source.json";

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

/// What was stored, read back at start.
#[derive(Debug, Default)]
pub struct Stored {
    pub revisions: Vec<Revision>,
    pub source_fingerprint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
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
        })
    }

    pub fn load(&self) -> Result<Stored, StoreError> {
        let dir = self.dir.join(REVISIONS_DIR);
        let mut revisions = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue; // a `.tmp` a crash left behind
            }
            let raw = fs::read(&path).map_err(io_err(&path))?;
            let revision: Revision =
                serde_json::from_slice(&raw).map_err(|cause| StoreError::Corrupt {
                    path: path.clone(),
                    cause,
                })?;
            revision
                .config
                .validate()
                .map_err(|cause| StoreError::Invalid {
                    path: path.clone(),
                    cause,
                })?;
            revisions.push(revision);
        }
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

    /// Writes a new revision and removes the evicted ones.
    pub fn save(&self, revision: &Revision, evicted: &[u64]) -> Result<(), StoreError> {
        let body = serde_json::to_vec(revision).expect("a revision always serializes");
        write_atomically(&self.revision_path(revision.version), &body)?;
        for version in evicted {
            let path = self.revision_path(*version);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
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

    fn revision_path(&self, version: u64) -> PathBuf {
        // Zero-padded, so `ls` lists them in version order.
        self.dir
            .join(REVISIONS_DIR)
            .join(format!("{version:020}.json"))
    }
}

fn write_atomically(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Commit, History};
    use sockmesh_model::parse_config;
    use sockmesh_model::protocol::Origin;

    #[test]
    fn revisions_and_source_fingerprint_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().revisions.is_empty());
        let mut h = History::new(2);
        for w in 1u32..=3 {
            let cfg = parse_config(&format!(
                "services:\n  - name: s\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {w}\n"
            ))
            .unwrap();
            if let Commit::New { revision, evicted } =
                h.commit(cfg, Origin::Source { source: "t".into() }, w.into())
            {
                store.save(&revision, &evicted).unwrap();
            }
        }
        store.save_source_fingerprint("abc").unwrap();
        let stored = store.load().unwrap();
        let mut versions: Vec<u64> = stored.revisions.iter().map(|r| r.version).collect();
        versions.sort();
        assert_eq!(versions, [2, 3], "evicted revisions are removed from disk");
        assert_eq!(stored.source_fingerprint.as_deref(), Some("abc"));
        let restored = History::restore(2, stored.revisions).unwrap();
        assert_eq!(restored.head().unwrap().config, h.head().unwrap().config);
    }

    #[test]
    fn a_corrupt_revision_is_a_loud_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("revisions/00000000000000000001.json"), "{").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("not a stored revision"), "{err}");
    }
}

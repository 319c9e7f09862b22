//! Watching a config file: each distinct content of the file becomes one [`SourceEvent`],
//! a validated [`MeshConfig`] or the reason it was refused. The agent (`--config`) and the
//! control plane's file source share it, so both refuse the same edits the same way.

use std::path::{Path, PathBuf};

use crate::{parse_config, ConfigError, MeshConfig};

/// Something that changed in a source.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A new desired state, valid under the model's rules.
    Desired(MeshConfig),
    /// A new desired state, valid under the model's rules, that the source made by
    /// patching the last one it reported: what differs is named, so a consumer need not
    /// compare every service (it may also treat it as [`SourceEvent::Desired`]).
    Patched(Patch),
    /// The source changed, but not into something that may be served.
    Rejected(SourceError),
}

/// A desired state and what differs from the source's previous one.
#[derive(Debug, Clone)]
pub struct Patch {
    pub config: MeshConfig,
    /// The services added, changed or removed (at least those).
    pub services: Vec<String>,
    /// The workloads differ. Nothing else does.
    pub workloads: bool,
}

impl SourceEvent {
    /// The desired state, whichever way it came, or the refusal.
    pub fn into_desired(self) -> Result<MeshConfig, SourceError> {
        match self {
            SourceEvent::Desired(config) | SourceEvent::Patched(Patch { config, .. }) => Ok(config),
            SourceEvent::Rejected(e) => Err(e),
        }
    }
}

/// Why a source's new content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// The config field at fault (`services[0].backends[1].addr`), when there is one.
    pub path: Option<String>,
    /// The whole message, the path included.
    pub message: String,
}

impl From<ConfigError> for SourceError {
    fn from(err: ConfigError) -> Self {
        SourceError {
            path: err.path().map(str::to_owned),
            message: err.to_string(),
        }
    }
}

/// A YAML file polled for changes, synchronous, for callers with their own loop: the agent's
/// `--config` watcher, and the control plane's file source (`sockmesh_model::FileSource`).
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// The raw content last seen, valid or not (or the read error), so a broken file is
    /// reported once, not once per poll.
    last_seen: Option<Vec<u8>>,
}

impl FileWatch {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileWatch {
            path: path.into(),
            last_seen: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; an event only when its content (or the reason it cannot be read)
    /// differs from the last read. The first call always reports.
    pub fn poll(&mut self) -> Option<SourceEvent> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) => {
                let message = format!("reading {}: {e}", self.path.display());
                let marker = message.clone().into_bytes();
                if self.last_seen.as_ref() == Some(&marker) {
                    return None;
                }
                self.last_seen = Some(marker);
                return Some(SourceEvent::Rejected(SourceError {
                    path: None,
                    message,
                }));
            }
        };
        if self.last_seen.as_ref() == Some(&raw) {
            return None;
        }
        let event = match std::str::from_utf8(&raw) {
            Ok(text) => match parse_config(text) {
                Ok(cfg) => SourceEvent::Desired(cfg),
                Err(e) => SourceEvent::Rejected(e.into()),
            },
            Err(e) => SourceEvent::Rejected(SourceError {
                path: None,
                message: format!("config is not UTF-8: {e}"),
            }),
        };
        self.last_seen = Some(raw);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_CONFIG_YAML;

    #[test]
    fn each_distinct_content_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, DEFAULT_CONFIG_YAML).unwrap();
        let mut w = FileWatch::new(&file);
        assert!(matches!(w.poll(), Some(SourceEvent::Desired(_))));
        assert!(w.poll().is_none());
        std::fs::write(&file, DEFAULT_CONFIG_YAML.replace("round_robin", "fastest")).unwrap();
        match w.poll() {
            Some(SourceEvent::Rejected(e)) => {
                assert_eq!(e.path.as_deref(), Some("services[1].lb"));
                assert!(e.message.starts_with("services[1].lb: "), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(w.poll().is_none(), "a broken file is reported once");
        std::fs::remove_file(&file).unwrap();
        assert!(
            matches!(w.poll(), Some(SourceEvent::Rejected(e)) if e.message.contains("reading"))
        );
        assert!(w.poll().is_none());
        std::fs::write(&file, DEFAULT_CONFIG_YAML).unwrap();
        assert!(matches!(w.poll(), Some(SourceEvent::Desired(_))));
    }
}

//! Where the desired state comes from. A [`Source`] turns something an operator edits (a
//! YAML file here; Kubernetes objects in `kube_source`, feature `kubernetes`) into validated
//! [`MeshConfig`]s, and reports what it cannot turn into one, so the hub can refuse it with
//! the reason.
//!
//! The contract every source keeps:
//! - the first event reports the current state (so the hub has a head to serve);
//! - afterwards an event only when the state changed (the hub also ignores repeats);
//! - a [`SourceEvent::Rejected`] never changes what is served: the last good state stays.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use crate::{parse_config, ConfigError, MeshConfig};

/// Something that changed in a source.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A new desired state, valid under the model's rules.
    Desired(MeshConfig),
    /// The source changed, but not into something that may be served.
    Rejected(SourceError),
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

/// A provider of desired state. Object safe, so the binary picks one by its flags
/// (`Box<dyn Source>`) and the Kubernetes source plugs in beside [`FileSource`].
pub trait Source: Send {
    /// Names the source in logs, `/v1/status` and each revision's origin:
    /// `file /etc/sockmesh/mesh.yaml`.
    fn describe(&self) -> String;

    /// Waits for the next event (see the module docs for the contract).
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = SourceEvent> + Send + '_>>;
}

/// A YAML file, re-read every `interval` and reported when its bytes change: the same
/// polling the agent does with `--config` (no inotify: it misses edits through some
/// editors' rename dance and on some mounts, and one stat-sized read per interval is cheap).
#[derive(Debug)]
pub struct FileSource {
    watch: FileWatch,
    interval: Duration,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        FileSource {
            watch: FileWatch::new(path),
            interval,
        }
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.watch.path().display())
    }

    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = SourceEvent> + Send + '_>> {
        Box::pin(async move {
            loop {
                if let Some(event) = self.watch.poll() {
                    return event;
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

/// The polling half of [`FileSource`], synchronous, for callers with their own loop (the
/// agent's `--config` watcher uses it too).
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

    #[tokio::test(start_paused = true)]
    async fn file_source_waits_for_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, DEFAULT_CONFIG_YAML).unwrap();
        let mut source = FileSource::new(&file, Duration::from_millis(100));
        assert_eq!(source.describe(), format!("file {}", file.display()));
        assert!(matches!(source.next_event().await, SourceEvent::Desired(_)));
        let next = tokio::time::timeout(Duration::from_secs(5), source.next_event()).await;
        assert!(next.is_err(), "no event without a change");
        std::fs::write(&file, "services: []\n").unwrap();
        match source.next_event().await {
            SourceEvent::Desired(cfg) => assert!(cfg.services.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}

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
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

pub use sockmesh_model::watch::{FileWatch, Patch, SourceError, SourceEvent};

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

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_model::DEFAULT_CONFIG_YAML;

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

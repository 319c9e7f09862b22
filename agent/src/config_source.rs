//! Where the desired state comes from: a YAML file (watched) or the embedded default; or,
//! with `--control`, the control plane (`crate::follow`).

use std::path::PathBuf;

use sockmesh_model::FileWatch;
use sockmesh_model::{parse_config, MeshConfig, DEFAULT_CONFIG_YAML};

pub(crate) enum ConfigSource {
    File(PathBuf),
    Embedded,
}

/// One observed change of the source.
pub(crate) enum Change {
    Valid(MeshConfig),
    /// The new content is invalid (or unreadable); the applied config must stay.
    Invalid(String),
}

pub(crate) struct Watcher {
    source: ConfigSource,
    /// The file's polling, shared with the control plane's file source (same semantics:
    /// each distinct content, or read error, is reported once).
    file: Option<FileWatch>,
    /// The embedded default never changes: reported once.
    embedded_reported: bool,
}

impl ConfigSource {
    pub(crate) fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded => "embedded-default".into(),
        }
    }
}

impl Watcher {
    pub(crate) fn new(source: ConfigSource) -> Self {
        let file = match &source {
            ConfigSource::File(p) => Some(FileWatch::new(p.clone())),
            ConfigSource::Embedded => None,
        };
        Self {
            source,
            file,
            embedded_reported: false,
        }
    }

    pub(crate) fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Reads the source; returns a change only when its content differs from the last read.
    pub(crate) fn poll(&mut self) -> Option<Change> {
        let Some(file) = &mut self.file else {
            if std::mem::replace(&mut self.embedded_reported, true) {
                return None;
            }
            return Some(match parse_config(DEFAULT_CONFIG_YAML) {
                Ok(cfg) => Change::Valid(cfg),
                Err(e) => Change::Invalid(e.to_string()),
            });
        };
        Some(match file.poll()?.into_desired() {
            Ok(cfg) => Change::Valid(cfg),
            Err(e) => Change::Invalid(e.message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_distinct_content_once() {
        let dir = std::env::temp_dir().join(format!("sockmesh-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, DEFAULT_CONFIG_YAML).unwrap();
        let mut w = Watcher::new(ConfigSource::File(file.clone()));
        assert!(matches!(w.poll(), Some(Change::Valid(_))));
        assert!(w.poll().is_none());
        std::fs::write(&file, "services: [{name: x}]").unwrap();
        assert!(matches!(w.poll(), Some(Change::Invalid(_))));
        assert!(w.poll().is_none(), "a broken file is reported once");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(w.poll(), Some(Change::Invalid(e)) if e.contains("reading")));
        assert!(w.poll().is_none());
        std::fs::write(&file, DEFAULT_CONFIG_YAML).unwrap();
        assert!(matches!(w.poll(), Some(Change::Valid(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn embedded_default_is_valid() {
        let mut w = Watcher::new(ConfigSource::Embedded);
        assert!(matches!(w.poll(), Some(Change::Valid(_))));
        assert!(w.poll().is_none());
    }
}

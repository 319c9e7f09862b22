//! The last snapshot this agent applied from the control plane, kept in its state dir
//! (`last-applied.yaml`), so an agent that starts while the control plane is unreachable
//! still routes, with what it last knew.
//!
//! The file is a mesh config with a comment header naming the control plane's version and
//! fingerprint: an operator can read it, diff it, and in an emergency run an agent on it
//! with `--config`. It is written beside and renamed into place: a crash leaves the old
//! file or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sockmesh_model::{parse_config, MeshConfig};
use tokio::sync::watch;
use tracing::error;

pub(super) const FILE_NAME: &str = "last-applied.yaml";
const VERSION_KEY: &str = "# control-version: ";
const FINGERPRINT_KEY: &str = "# fingerprint: ";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Persisted {
    pub version: u64,
    /// The control plane's fingerprint of this version.
    pub fingerprint: String,
    /// Shared with the runtime (and through it the signals, engine and `/status`).
    pub config: Arc<MeshConfig>,
}

/// Writes the applied snapshot in the background, newest first: the ack and the next
/// version never wait for the disk, and a burst of versions costs a write for the last.
pub(super) fn spawn_saver(state_dir: PathBuf, control: String) -> watch::Sender<Option<Persisted>> {
    let (tx, mut rx) = watch::channel::<Option<Persisted>>(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(snapshot) = rx.borrow_and_update().clone() else {
                continue;
            };
            let (dir, control) = (state_dir.clone(), control.clone());
            let saved = tokio::task::spawn_blocking(move || save(&dir, &snapshot, &control)).await;
            match saved {
                Ok(Ok(())) => {}
                // The version is live either way; only a start during an outage would miss it.
                Ok(Err(e)) => {
                    error!(error = %format!("{e:#}"), "could not persist the applied snapshot")
                }
                Err(e) => error!(error = %e, "persisting the applied snapshot panicked"),
            }
        }
    });
    tx
}

pub(super) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The config is written as JSON, which is YAML too (a config file `--config` reads): at
/// 10,000 services serde_yaml took 260 ms to write it, serde_json 40 ms.
pub(super) fn save(state_dir: &Path, snapshot: &Persisted, control: &str) -> Result<()> {
    let json = serde_json::to_string(&*snapshot.config).context("serializing the config")?;
    let text = format!(
        "# sockmesh-agent: the last config applied from the control plane {control}.\n\
         # The agent starts from it when the control plane is unreachable; it is a valid\n\
         # mesh config (sockmesh-agent --config can run on it).\n\
         {VERSION_KEY}{}\n{FINGERPRINT_KEY}{}\n{json}\n",
        snapshot.version, snapshot.fingerprint
    );
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let target = path(state_dir);
    let tmp = target.with_extension("yaml.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &target).with_context(|| format!("replacing {}", target.display()))
}

/// `Ok(None)` when there is no file; an error when there is one that cannot be used.
pub(super) fn load(state_dir: &Path) -> Result<Option<Persisted>> {
    let file = path(state_dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let header = |key: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let version = header(VERSION_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("{} has no `{VERSION_KEY}N` line", file.display()))?;
    let config = parse_config(&text).with_context(|| format!("{} is invalid", file.display()))?;
    let fingerprint = header(FINGERPRINT_KEY).map_or_else(|| config.fingerprint(), str::to_owned);
    Ok(Some(Persisted {
        version,
        fingerprint,
        config: Arc::new(config),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_snapshot_reads_back_and_is_a_config_file() {
        let dir = tempfile_dir();
        assert_eq!(load(&dir).unwrap(), None);
        let snap = Persisted {
            version: 7,
            fingerprint: sockmesh_model::default_config().fingerprint(),
            config: Arc::new(sockmesh_model::default_config()),
        };
        save(&dir, &snap, "http://127.0.0.1:9480").unwrap();
        assert_eq!(load(&dir).unwrap(), Some(snap.clone()));
        let text = fs::read_to_string(path(&dir)).unwrap();
        assert_eq!(parse_config(&text).unwrap(), *snap.config);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(path(&dir), "services: []\n").unwrap();
        assert!(load(&dir)
            .unwrap_err()
            .to_string()
            .contains("control-version"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockmesh-persist-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

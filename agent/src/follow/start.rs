//! The agent's first config in `--control` mode: the control plane's, or what it last gave.

use std::sync::Arc;

use anyhow::{bail, Result};
use sockmesh_model::protocol::{decode_config, Snapshot, SNAPSHOT_PATH};
use tracing::warn;

use super::backoff::Backoff;
use super::client::Client;
use super::{
    fetch, persist, send_ack, FollowOptions, Persisted, Start, BACKOFF_BASE, BACKOFF_CAP,
    STARTUP_TIMEOUT,
};

/// The first config: the control plane's head when it answers within a few seconds, else
/// the persisted snapshot; with neither, waits (with backoff) for the control plane.
pub(crate) async fn start(opts: &FollowOptions) -> Result<Start> {
    let persisted = match persist::load(&opts.state_dir) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "ignoring the persisted snapshot");
            None
        }
    };
    let client = Client::new(opts.address.clone(), opts.token.clone(), opts.tls.clone());
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP, Backoff::seed());
    let path = format!("{SNAPSHOT_PATH}?agent={}", opts.node);
    loop {
        let failure =
            match fetch::<Snapshot<serde_json::Value>>(&client, &path, STARTUP_TIMEOUT).await {
                Ok(Some(snap)) => {
                    let version = snap.version;
                    match decode_config(snap.config) {
                        Ok(config) => {
                            return Ok(Start {
                                snapshot: Persisted {
                                    version,
                                    fingerprint: snap.fingerprint,
                                    config: Arc::new(config),
                                },
                                from_disk: false,
                            })
                        }
                        Err(e) => {
                            let error = format!("{e}");
                            send_ack(&client, opts, version, &Err(error.clone()), None)
                                .await
                                .ok();
                            format!("version {version} cannot be applied: {error}")
                        }
                    }
                }
                Ok(None) => "no snapshot in the reply".to_owned(),
                Err(e) => e,
            };
        if let Some(snapshot) = persisted {
            warn!(
                control = %opts.address,
                error = %failure,
                version = snapshot.version,
                file = %persist::path(&opts.state_dir).display(),
                "no config from the control plane at start; starting from the persisted snapshot"
            );
            return Ok(Start {
                snapshot,
                from_disk: true,
            });
        }
        let delay = backoff.next_delay();
        warn!(
            control = %opts.address,
            error = %failure,
            retry_in = ?delay,
            "no config from the control plane and none persisted in the state dir; waiting"
        );
        tokio::time::sleep(delay).await;
    }
}

/// `--node-name` when not given: the host name (a Kubernetes node name in a DaemonSet
/// that sets it from the downward API, else the kernel's).
pub(crate) fn default_node_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() {
        bail!("cannot read the host name for --node-name; pass --node-name");
    }
    Ok(name)
}

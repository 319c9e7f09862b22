//! What the agent reports about itself on the admin API: readiness, the applied config and
//! the services as compiled into the kernel.

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::tables::ServiceView;

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ConfigStatus {
    /// The config file path, or `embedded-default`.
    pub source: String,
    pub fingerprint: String,
    pub applies: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
    pub applied_at_unix_ms: u64,
    /// How long the last applied config took: reading and parsing the file (for a file
    /// source), planning the kernel tables and writing them, in milliseconds.
    pub apply_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Status {
    pub ready: bool,
    pub adopted: bool,
    pub cgroup: String,
    pub bpffs: String,
    /// The address /metrics is served on (resolved, so `--metrics-addr 127.0.0.1:0` works).
    pub metrics_addr: String,
    pub config: ConfigStatus,
    pub services: std::sync::Arc<Vec<ServiceView>>,
}

/// Shared between the reconcile loop (writer) and the admin server (readers). A plain lock:
/// writes happen on config changes only, reads on admin requests.
pub(crate) type SharedStatus = Arc<RwLock<Status>>;

pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

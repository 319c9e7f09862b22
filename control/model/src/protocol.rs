//! What travels between the control plane, its agents and the CLI: paths and JSON bodies.
//! docs/control-plane.md is the reference; the types here are its one definition, used by
//! the server, the agent's follower and `sockmesh config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ConfigDelta, ConfigError, MeshConfig};

/// `GET`: the head revision ([`Snapshot`]); `?version=V` for a kept older one.
pub const SNAPSHOT_PATH: &str = "/v1/snapshot";
/// `GET ?after=V&timeout=30s`: the head once it is not `V` (a [`Snapshot`]), or 204. With
/// `&delta=1`, an [`Update`]: the head as a delta from `V` when the control plane still
/// keeps `V`, else as a snapshot.
pub const WATCH_PATH: &str = "/v1/watch";
/// `POST` an [`Ack`]: an agent says what it made of a version.
pub const ACK_PATH: &str = "/v1/ack";
/// `GET`: one [`AgentReport`] per agent that has talked to this control plane.
pub const AGENTS_PATH: &str = "/v1/agents";
/// `GET`: the kept revisions, newest first ([`HistoryReply`]).
pub const HISTORY_PATH: &str = "/v1/history";
/// `POST` a [`RollbackRequest`]: an old revision's config becomes a new head.
pub const ROLLBACK_PATH: &str = "/v1/rollback";
/// `GET`: the source, head and last rejection ([`StatusReply`]).
pub const STATUS_PATH: &str = "/v1/status";

/// How long a watch waits when the agent does not say (`timeout=`).
pub const DEFAULT_WATCH_TIMEOUT_SECS: u64 = 30;
/// The longest wait a watch may ask for: proxies and NATs drop idle connections after a
/// few minutes, and an agent that hears nothing that long should reconnect anyway.
pub const MAX_WATCH_TIMEOUT_SECS: u64 = 300;

/// One revision of the desired state, as served to agents. `C` is the config: the model
/// on the server, `serde_json::Value` on an agent that wants to decode the config itself
/// (so a config it cannot read is still a version it can reject by number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<C = MeshConfig> {
    /// The global version: grows by one with every revision, never reused.
    pub version: u64,
    /// `MeshConfig::fingerprint()` of `config`.
    pub fingerprint: String,
    pub created_unix_ms: u64,
    /// Per service, the global version at which its spec last changed.
    pub service_versions: BTreeMap<String, u64>,
    pub config: C,
}

/// A watch's answer to an agent that reads deltas (`delta=1`), tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Update<C = MeshConfig> {
    /// The whole config: the first sync, or an agent further behind than the kept history.
    Snapshot(Snapshot<C>),
    Delta(DeltaUpdate),
}

/// Revision `version` as the services that differ from revision `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaUpdate {
    pub version: u64,
    /// The version the delta applies to: the watch's `after`.
    pub from: u64,
    /// `MeshConfig::fingerprint()` of the config at `version`: the agent checks the config
    /// it assembled against it, and asks for a snapshot when they differ.
    pub fingerprint: String,
    pub created_unix_ms: u64,
    pub delta: ConfigDelta,
}

/// Reads a snapshot's `config` into the model and checks its rules: what an agent does
/// before it applies a version. The error names the field, as `parse_config`'s does, so a
/// control plane newer than the agent (a field this agent does not know) is rejected with
/// a reason the operator can act on.
pub fn decode_config(config: serde_json::Value) -> Result<MeshConfig, ConfigError> {
    let config: MeshConfig = serde_path_to_error::deserialize(config).map_err(|err| {
        let path = match err.path().to_string() {
            root if root == "." => "(root)".to_owned(),
            path => path,
        };
        ConfigError::Decode {
            path,
            reason: err.inner().to_string(),
            location: None,
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// What an agent made of a version (`POST /v1/ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The agent's name (`sockmesh-agent --node-name`).
    pub agent: String,
    pub version: u64,
    /// `true`: the version is live in the agent's kernel tables. `false`: rejected, and the
    /// agent keeps routing with what it had.
    pub ok: bool,
    /// Why it was rejected (`ok: false`), e.g. `services[0].backends: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The fingerprint of the config the agent runs after this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// One agent as the control plane sees it (`GET /v1/agents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent: String,
    /// The last version the agent acknowledged, applied or not.
    pub version: u64,
    /// Whether it applied that version.
    pub ok: bool,
    pub error: Option<String>,
    /// The last version the agent applied (it routes with this one); `null` before any.
    pub applied_version: Option<u64>,
    /// The fingerprint the agent reported with its last ack.
    pub fingerprint: Option<String>,
    /// The agent's last request of any kind (snapshot, watch, ack).
    pub last_seen_unix_ms: u64,
    /// 0 while the agent runs the head; else how long ago the first version it lacks was
    /// made (a lower bound when that version is no longer kept).
    pub sync_age_seconds: f64,
    /// `applied_version` is the head.
    pub in_sync: bool,
}

/// Where a revision came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// The source produced it (`source`: e.g. `file /etc/sockmesh/mesh.yaml`).
    Source { source: String },
    /// `POST /v1/rollback`: a copy of revision `of`.
    Rollback { of: u64 },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Source { source } => f.write_str(source),
            Origin::Rollback { of } => write!(f, "rollback of {of}"),
        }
    }
}

/// How a revision differs from the one before it, by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Services present before and after whose spec differs.
    pub changed: Vec<String>,
    /// The `workloads:` list differs.
    pub workloads: bool,
    /// Something outside services and workloads differs (a top-level field), or only the
    /// order of services did.
    pub other: bool,
}

impl Changes {
    /// Nothing but the order of services differs (or this is the first revision).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.workloads
            && !self.other
    }
}

/// One kept revision, without its config (`GET /v1/history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub fingerprint: String,
    pub created_unix_ms: u64,
    pub origin: Origin,
    /// Number of services in the revision.
    pub services: usize,
    /// Against the revision before it (every service `added` for the first one).
    pub changes: Changes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The version agents are served; always the first entry of `versions`.
    pub head: Option<u64>,
    /// How many revisions are kept (`--keep`).
    pub keep: usize,
    /// Newest first.
    pub versions: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReply {
    /// The head after the rollback: a new version, or the old head when nothing changed.
    pub version: u64,
    /// The revision whose config is now served.
    pub rolled_back_to: u64,
    pub fingerprint: String,
    /// `false` when the head already had that config (no new version was made).
    pub changed: bool,
}

/// A source edit the control plane refused (it was never served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// `services[0].backends[1].addr: invalid socket address ...`.
    pub error: String,
    /// The field path alone, when the error has one.
    pub path: Option<String>,
    pub unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// `file /etc/sockmesh/mesh.yaml`.
    pub source: String,
    pub version: Option<u64>,
    pub fingerprint: Option<String>,
    /// Source edits refused since start.
    pub rejected: u64,
    pub last_rejection: Option<Rejection>,
    pub agents: usize,
    /// Bound API addresses (`--listen`, resolved: port 0 shows the real port), and the
    /// unix socket (`--listen-unix`).
    pub listen: Vec<String>,
    pub listen_unix: Option<String>,
    pub metrics_addr: Option<String>,
}

/// Every error reply: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_config_names_the_field() {
        let good = serde_json::to_value(crate::default_config()).unwrap();
        assert_eq!(
            decode_config(good.clone()).unwrap(),
            crate::default_config()
        );
        let mut unknown = good.clone();
        unknown["services"][0]["zone_affinity"] = serde_json::json!(true);
        let err = decode_config(unknown).unwrap_err();
        assert_eq!(err.path(), Some("services[0].zone_affinity"), "{err}");
        assert!(err.to_string().contains("zone_affinity"), "{err}");
        let mut invalid = good;
        invalid["services"][0]["backends"] = serde_json::json!([]);
        let err = decode_config(invalid).unwrap_err();
        assert!(
            err.path().unwrap().starts_with("services[0].backends"),
            "{err}"
        );
    }
}

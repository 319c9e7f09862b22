//! `--control URL`: the agent follows the control plane instead of a file.
//!
//! ```text
//! start:  GET /v1/snapshot ── answer ──> apply, ack, persist (in the background)
//!                          └─ none (3 s) ──> last-applied.yaml from --state-dir, if any
//! follow: GET /v1/snapshot, then GET /v1/watch?after=V&delta=1 (long-poll) ... for ever
//!         each version: a delta from V (applied to the config the kernel runs, and
//!         checked against the control plane's fingerprint; a snapshot when it does not
//!         fit), or a snapshot when V is no longer kept; offer it to the runtime (which
//!         applies it to the kernel or refuses it, keeping what it had), POST /v1/ack,
//!         and persist it when applied
//!         any error: reconnect after a capped exponential backoff with jitter, and
//!         start over with a snapshot (which also re-sends the ack that may have been lost)
//! ```
//!
//! Routing never waits for the control plane: the kernel keeps the tables it has while the
//! agent reconnects, and an agent restarted during an outage starts from its persisted
//! snapshot. Protocol: docs/control-plane.md.

mod backoff;
mod client;
mod persist;
mod start;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockmesh_model::protocol::{
    decode_config, Ack, DeltaUpdate, ErrorBody, Snapshot, Update, ACK_PATH, SNAPSHOT_PATH,
    WATCH_PATH,
};
use sockmesh_model::{ConfigIndex, ControlAddress, MeshConfig, TokenSource};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use backoff::Backoff;
use client::Client;
pub(crate) use persist::Persisted;
pub(crate) use start::{default_node_name, start};

/// How long the first snapshot may take at start before the persisted one is used.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Snapshots and acks: the control plane answers them from memory.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch may take its whole timeout; this much more before the reply counts as lost.
const WATCH_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct FollowOptions {
    pub address: ControlAddress,
    /// Required for `http://`; the unix socket needs none. A [`TokenSource`] (the file is
    /// read again when it changes), whose `Debug` hides the token: these options are
    /// `Debug`, and may be logged.
    pub token: Option<TokenSource>,
    /// `--control-ca`: verifies an https:// control plane (required for one).
    pub tls: Option<sockmesh_tls::ClientTls>,
    /// `--node-name`: how the control plane knows this agent.
    pub node: String,
    /// Where `last-applied.yaml` lives (`--state-dir`).
    pub state_dir: PathBuf,
    /// How long one watch waits for a new version.
    pub watch_timeout: Duration,
}

impl FollowOptions {
    /// The config source as the agent reports it (`/status`, logs).
    pub(crate) fn describe(&self) -> String {
        format!("control {}", self.address)
    }
}

/// The config the agent starts with.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub snapshot: Persisted,
    /// It came from `last-applied.yaml` (the control plane did not answer in time).
    pub from_disk: bool,
}

/// A version for the runtime to apply. It answers on `reply`: `Ok` once the version is
/// live in the kernel, or why it was refused (the previous config then stays active).
pub(crate) struct Offer {
    /// `Err`: the snapshot could not even be read into the model (a field this agent does
    /// not know); the runtime counts and reports it like any rejected config.
    pub config: Result<Arc<MeshConfig>, String>,
    /// `config.fingerprint()`, already checked against the control plane's.
    pub fingerprint: String,
    /// The services that differ from the applied config, when the version came as a delta
    /// that kept the workloads and enrollment: the runtime plans those only. `None`: it
    /// finds out itself.
    pub touched: Option<Vec<String>>,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Follows the control plane from `start` (already applied by the runtime) on a task of
/// its own; versions come out of the returned channel. The task ends when it is dropped.
pub(crate) fn spawn(opts: FollowOptions, start: Start) -> mpsc::Receiver<Offer> {
    let (offers, rx) = mpsc::channel(1);
    let (opts_state_dir, opts_control) = (opts.state_dir.clone(), opts.address.to_string());
    let follower = Follower {
        client: Client::new(opts.address.clone(), opts.token.clone(), opts.tls.clone()),
        seen: start.snapshot.version,
        applied: start.snapshot,
        index: None,
        opts,
        offers,
        rejected: None,
        backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP, Backoff::seed()),
        down: None,
        arrived: Instant::now(),
        saver: persist::spawn_saver(opts_state_dir, opts_control),
    };
    if !start.from_disk {
        follower.persist();
    }
    tokio::spawn(follower.run());
    rx
}

enum Stop {
    /// The runtime is gone (shutting down).
    Stopped,
    /// The control plane could not be reached or answered wrongly: reconnect.
    Control(String),
}

struct Follower {
    opts: FollowOptions,
    client: Client,
    offers: mpsc::Sender<Offer>,
    /// What the kernel runs, as the control plane named it.
    applied: Persisted,
    /// The index of `applied.config`, made at the first delta after a snapshot: a delta is
    /// checked and fingerprinted from the services it touches.
    index: Option<ConfigIndex>,
    /// The last version taken (applied or refused): the watch's `after`.
    seen: u64,
    /// The last version refused, its fingerprint and why: offered again (after a
    /// reconnect) it is re-acked, not re-applied.
    rejected: Option<(u64, String, String)>,
    backoff: Backoff,
    /// Since when, and with which error, the control plane is unreachable.
    down: Option<(Instant, String)>,
    /// When the reply being taken arrived: the log says how long it took to be live.
    arrived: Instant,
    /// Writes `last-applied.yaml` off the path of the ack.
    saver: tokio::sync::watch::Sender<Option<Persisted>>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            match self.follow().await {
                Stop::Stopped => return,
                Stop::Control(e) => {
                    let delay = self.backoff.next_delay();
                    match self.down.take() {
                        Some((since, last)) if last == e => {
                            debug!(error = %e, retry_in = ?delay, "control plane still unreachable");
                            self.down = Some((since, last));
                        }
                        Some((since, _)) => {
                            warn!(control = %self.opts.address, error = %e, retry_in = ?delay, "control plane still unreachable");
                            self.down = Some((since, e));
                        }
                        None => {
                            warn!(
                                control = %self.opts.address,
                                error = %e,
                                version = self.applied.version,
                                retry_in = ?delay,
                                "lost the control plane; routing continues with the applied version; reconnecting"
                            );
                            self.down = Some((Instant::now(), e));
                        }
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection's worth of following; returns why it ended.
    async fn follow(&mut self) -> Stop {
        let snap = match self.snapshot().await {
            Ok(snap) => snap,
            Err(stop) => return stop,
        };
        if let Some((since, _)) = self.down.take() {
            info!(after = ?since.elapsed(), control = %self.opts.address, "control plane reachable again");
        }
        if let Err(stop) = self.take(snap).await {
            return stop;
        }
        let timeout = self.opts.watch_timeout;
        loop {
            let path = format!(
                "{WATCH_PATH}?after={}&timeout={}ms&agent={}&delta=1",
                self.seen,
                timeout.as_millis(),
                self.opts.node
            );
            let taken = match fetch(&self.client, &path, timeout + WATCH_GRACE).await {
                Ok(Some(Update::Snapshot(snap))) => self.take(snap).await,
                Ok(Some(Update::Delta(delta))) => self.take_delta(delta).await,
                Ok(None) => Ok(()),
                Err(e) => return Stop::Control(e),
            };
            if let Err(stop) = taken {
                return stop;
            }
            // A watch went through: the next failure starts the backoff from the bottom.
            self.backoff.reset();
        }
    }

    /// The head, whole (`GET /v1/snapshot`).
    async fn snapshot(&self) -> Result<Snapshot<serde_json::Value>, Stop> {
        let path = format!("{SNAPSHOT_PATH}?agent={}", self.opts.node);
        match fetch(&self.client, &path, REQUEST_TIMEOUT).await {
            Ok(Some(snap)) => Ok(snap),
            Ok(None) => Err(Stop::Control("no snapshot in the reply".into())),
            Err(e) => Err(Stop::Control(e)),
        }
    }

    /// Takes a version that came as a delta: applied to the config the kernel runs, it must
    /// give the control plane's fingerprint. A delta from another version than the applied
    /// one (this agent refused the one in between), one that does not fit, or a result with
    /// another fingerprint is not guessed at: the agent takes the head's snapshot instead.
    async fn take_delta(&mut self, update: DeltaUpdate) -> Result<(), Stop> {
        self.arrived = Instant::now();
        let version = update.version;
        let assembled = if update.from != self.applied.version {
            Err(format!(
                "it applies to version {}, this agent runs {}",
                update.from, self.applied.version
            ))
        } else {
            let base = &self.applied.config;
            match update.delta.apply(MeshConfig::clone(base)) {
                Ok(config) => {
                    let index = self.index.get_or_insert_with(|| ConfigIndex::of(base));
                    let step = index.step(base, &update.delta, &config);
                    match step.fingerprint() {
                        fp if fp == update.fingerprint => Ok((config, step)),
                        fp => Err(format!(
                            "the assembled config has fingerprint {fp}, the control plane's is {}",
                            update.fingerprint
                        )),
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let (config, step) = match assembled {
            Ok(assembled) => assembled,
            Err(why) => {
                warn!(version, reason = %why, "a delta did not fit; taking a snapshot instead");
                let snap = self.snapshot().await?;
                return self.take(snap).await;
            }
        };
        let touched = (update.delta.workloads.is_none() && update.delta.enrollment.is_none())
            .then(|| update.delta.services().map(str::to_owned).collect());
        debug!(
            version,
            services = update.delta.services().count(),
            "version arrived as a delta"
        );
        let index = self.index.as_ref().expect("made above");
        let config = index
            .validate(&step, &config)
            .map(|()| Arc::new(config))
            .map_err(|e| e.to_string());
        let snap = Snapshot {
            version,
            fingerprint: update.fingerprint,
            created_unix_ms: update.created_unix_ms,
            service_versions: Default::default(),
            config,
        };
        self.take_version(snap, touched).await?;
        if self.applied.version == version && self.applied.fingerprint == step.fingerprint() {
            if let Some(index) = &mut self.index {
                index.commit(step);
            }
        }
        Ok(())
    }

    /// Applies (or refuses) one version read whole, and acks it.
    async fn take(&mut self, snap: Snapshot<serde_json::Value>) -> Result<(), Stop> {
        self.arrived = Instant::now();
        // A snapshot replaces the config the index describes (or might).
        self.index = None;
        let (snap, config) = split(snap);
        let config = decode_config(config)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        self.take_version(with_config(snap, config), None).await
    }

    /// Applies (or refuses) one version and acks it.
    async fn take_version(
        &mut self,
        snap: Snapshot<Result<Arc<MeshConfig>, String>>,
        touched: Option<Vec<String>>,
    ) -> Result<(), Stop> {
        let version = snap.version;
        self.seen = version;
        let outcome = if snap.fingerprint == self.applied.fingerprint {
            // Already running it (a rollback to the same config, a reconnect): a new
            // number for the same tables.
            if version != self.applied.version {
                self.applied.version = version;
                self.persist();
            }
            Ok(())
        } else if let Some((v, fp, e)) = &self.rejected {
            if *v == version && *fp == snap.fingerprint {
                Err(e.clone())
            } else {
                self.offer(snap, touched).await?
            }
        } else {
            self.offer(snap, touched).await?
        };
        match &outcome {
            Ok(()) => {
                self.rejected = None;
                info!(
                    version,
                    fingerprint = %self.applied.fingerprint,
                    took_us = self.arrived.elapsed().as_micros() as u64,
                    "following control: version applied"
                );
            }
            Err(e) => {
                error!(version, error = %e, "following control: version refused; the previous config stays active")
            }
        }
        send_ack(
            &self.client,
            &self.opts,
            version,
            &outcome,
            Some(&self.applied.fingerprint),
        )
        .await
        .map_err(Stop::Control)
    }

    /// Hands a new config to the runtime and waits for its verdict.
    async fn offer(
        &mut self,
        snap: Snapshot<Result<Arc<MeshConfig>, String>>,
        touched: Option<Vec<String>>,
    ) -> Result<Result<(), String>, Stop> {
        let config = snap.config;
        let (reply, verdict) = oneshot::channel();
        let offer = Offer {
            config: config.clone(),
            fingerprint: snap.fingerprint.clone(),
            touched,
            reply,
        };
        self.offers.send(offer).await.map_err(|_| Stop::Stopped)?;
        let verdict = verdict.await.map_err(|_| Stop::Stopped)?;
        Ok(match (verdict, config) {
            (Ok(()), Ok(config)) => {
                self.applied = Persisted {
                    version: snap.version,
                    fingerprint: snap.fingerprint,
                    config,
                };
                self.persist();
                Ok(())
            }
            (Err(e), _) | (Ok(()), Err(e)) => {
                self.rejected = Some((snap.version, snap.fingerprint, e.clone()));
                Err(e)
            }
        })
    }

    /// Hands the applied snapshot to the background saver.
    fn persist(&self) {
        self.saver.send_replace(Some(self.applied.clone()));
    }
}

/// A snapshot's fields, and its config apart.
fn split<C>(snap: Snapshot<C>) -> (Snapshot<()>, C) {
    let Snapshot {
        version,
        fingerprint,
        created_unix_ms,
        service_versions,
        config,
    } = snap;
    let rest = Snapshot {
        version,
        fingerprint,
        created_unix_ms,
        service_versions,
        config: (),
    };
    (rest, config)
}

fn with_config<C>(snap: Snapshot<()>, config: C) -> Snapshot<C> {
    Snapshot {
        version: snap.version,
        fingerprint: snap.fingerprint,
        created_unix_ms: snap.created_unix_ms,
        service_versions: snap.service_versions,
        config,
    }
}

/// A snapshot from `GET /v1/snapshot`, or an [`Update`] from a watch; `None` for a
/// watch's 204.
async fn fetch<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    timeout: Duration,
) -> Result<Option<T>, String> {
    let reply = client.get(path, timeout).await.map_err(|e| e.to_string())?;
    match reply.status.as_u16() {
        200 => serde_json::from_slice(&reply.body)
            .map(Some)
            .map_err(|e| format!("the reply is not what this agent reads: {e}")),
        204 => Ok(None),
        status => Err(format!("answered {status}: {}", reason(&reply.body))),
    }
}

async fn send_ack(
    client: &Client,
    opts: &FollowOptions,
    version: u64,
    outcome: &Result<(), String>,
    fingerprint: Option<&str>,
) -> Result<(), String> {
    let ack = Ack {
        agent: opts.node.clone(),
        version,
        ok: outcome.is_ok(),
        error: outcome
            .as_ref()
            .err()
            .map(|e| e.chars().take(4000).collect()),
        fingerprint: fingerprint.map(str::to_owned),
    };
    let body = serde_json::to_vec(&ack).expect("an ack always serializes");
    let reply = client
        .post_json(ACK_PATH, body, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("ack: {e}"))?;
    if !reply.status.is_success() {
        return Err(format!(
            "ack answered {}: {}",
            reply.status.as_u16(),
            reason(&reply.body)
        ));
    }
    Ok(())
}

/// The control plane's `{"error": ...}`, or the start of whatever else it sent.
fn reason(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
#[cfg(test)]
mod token_tests;

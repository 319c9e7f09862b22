//! `--proxy spawn`: the agent starts `sockmesh-proxy` and starts it again whenever it
//! exits (with a back-off from 1 s to 30 s, reset after a minute of running). The child
//! gets SIGTERM if the agent dies (`PR_SET_PDEATHSIG`), and drains.
//!
//! A restart asked for ([`Restarter`], `POST /v1/proxy/restart`) has no gap in accepting:
//! the successor starts first, and only once it is linked and has its targets is the old
//! proxy told to drain (on its link alone); both share the agent's listener meanwhile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::link::Links;
use super::ProxyOptions;
use sockmesh_common::PROXY_ORIGINS_MAP;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A proxy that ran this long was healthy: its exit starts the back-off again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a successor may take to link and get its targets before the restart is
/// abandoned (the old proxy keeps serving).
const SUCCESSOR_WAIT: Duration = Duration::from_secs(20);

/// A restart's result: the pids of the drained proxy and of its successor.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Restarted {
    pub old_pid: u32,
    pub new_pid: u32,
}

/// Why a restart did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestartError {
    #[error("the proxy is not run by this agent (--proxy external or off)")]
    NotSpawned,
    #[error("no proxy runs yet (no http service), or it is being started again after an exit")]
    NotRunning,
    #[error("the successor proxy failed: {0}; the old one keeps serving")]
    Successor(String),
    #[error("the agent is stopping")]
    Stopping,
}

type Request = oneshot::Sender<Result<Restarted, RestartError>>;

/// Asks the supervisor for a hitless restart (the admin API's `POST /v1/proxy/restart`).
#[derive(Clone)]
pub(crate) struct Restarter {
    requests: Option<mpsc::Sender<Request>>,
    /// Set while a proxy runs under the supervisor.
    running: Arc<AtomicBool>,
}

impl Restarter {
    /// One that always answers [`RestartError::NotSpawned`].
    pub(crate) fn none() -> Self {
        Self {
            requests: None,
            running: Arc::default(),
        }
    }

    pub(crate) async fn restart(&self) -> Result<Restarted, RestartError> {
        let requests = self.requests.as_ref().ok_or(RestartError::NotSpawned)?;
        if !self.running.load(Ordering::Relaxed) {
            return Err(RestartError::NotRunning);
        }
        let (reply, answer) = oneshot::channel();
        requests
            .send(reply)
            .await
            .map_err(|_| RestartError::Stopping)?;
        answer.await.map_err(|_| RestartError::Stopping)?
    }
}

/// The supervisor's end of the [`Restarter`].
pub(super) struct Restarts {
    requests: mpsc::Receiver<Request>,
    running: Arc<AtomicBool>,
}

/// A restarter and the supervisor's end of it.
pub(super) fn restarts() -> (Restarter, Restarts) {
    let (tx, rx) = mpsc::channel(4);
    let running = Arc::new(AtomicBool::new(false));
    let restarter = Restarter {
        requests: Some(tx),
        running: running.clone(),
    };
    (
        restarter,
        Restarts {
            requests: rx,
            running,
        },
    )
}

/// Runs the proxy until `stop` is set; then waits for it to drain (it was told on the
/// link) and, past the bound, kills it.
pub(super) async fn run(
    opts: &ProxyOptions,
    links: &Links,
    mut restarts: Restarts,
    mut stop: watch::Receiver<bool>,
    starts: Counter,
) {
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => match std::env::current_exe() {
            Ok(me) => me.with_file_name("sockmesh-proxy"),
            Err(e) => {
                error!(error = %e, "cannot find the agent's own binary; pass --proxy-bin");
                return;
            }
        },
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match spawn(&bin, opts) {
            Ok(mut child) => {
                starts.inc();
                restarts.running.store(true, Ordering::Relaxed);
                info!(pid = child.id(), bin = %bin.display(), "proxy started");
                loop {
                    tokio::select! {
                        status = child.wait() => {
                            warn!(?status, "proxy exited; starting it again");
                            if started.elapsed() > HEALTHY_RUN {
                                backoff = MIN_BACKOFF;
                            }
                            break;
                        }
                        Some(reply) = restarts.requests.recv() => {
                            let result = hand_over(&mut child, &bin, opts, links, &starts).await;
                            let _ = reply.send(result);
                        }
                        _ = super::stopped(&mut stop) => {
                            if tokio::time::timeout(super::DRAIN_WAIT, child.wait()).await.is_err() {
                                warn!("proxy did not drain in time; killing it");
                                let _ = child.kill().await;
                            }
                            return;
                        }
                    }
                }
                restarts.running.store(false, Ordering::Relaxed);
            }
            Err(e) => error!(error = %e, bin = %bin.display(), "cannot start the proxy"),
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                Some(reply) = restarts.requests.recv() => {
                    let _ = reply.send(Err(RestartError::NotRunning));
                }
                _ = super::stopped(&mut stop) => return,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(bin: &PathBuf, opts: &ProxyOptions) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg("--agent-socket")
        .arg(&opts.socket)
        .arg("--origins-map")
        .arg(opts.maps.join(PROXY_ORIGINS_MAP))
        .arg("--metrics-addr")
        .arg(opts.metrics_addr.to_string());
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts a successor to `current`, waits until it serves, then drains `current` (on its
/// link, or SIGTERM if it has none) and makes the successor current. The old one is
/// reaped in the background, killed past the drain bound.
async fn hand_over(
    current: &mut Child,
    bin: &PathBuf,
    opts: &ProxyOptions,
    links: &Links,
    starts: &Counter,
) -> Result<Restarted, RestartError> {
    let old_pid = current.id().unwrap_or_default();
    let mut successor = spawn(bin, opts).map_err(|e| RestartError::Successor(e.to_string()))?;
    starts.inc();
    let new_pid = successor.id().unwrap_or_default();
    info!(old_pid, new_pid, "restarting the proxy: successor started");
    let failed = tokio::select! {
        serving = tokio::time::timeout(SUCCESSOR_WAIT, links.serving(new_pid)) => match serving {
            Ok(()) => None,
            Err(_) => Some(format!("not linked within {SUCCESSOR_WAIT:?}")),
        },
        status = successor.wait() => Some(format!("exited before it linked ({status:?})")),
    };
    if let Some(why) = failed {
        warn!(old_pid, new_pid, reason = %why, "proxy restart abandoned");
        let _ = successor.kill().await;
        return Err(RestartError::Successor(why));
    }
    if !links.drain(old_pid) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGTERM) };
    }
    let mut old = std::mem::replace(current, successor);
    tokio::spawn(async move {
        if tokio::time::timeout(super::DRAIN_WAIT, old.wait())
            .await
            .is_err()
        {
            warn!(
                pid = old_pid,
                "replaced proxy did not drain in time; killing it"
            );
            let _ = old.kill().await;
        }
    });
    info!(old_pid, new_pid, "proxy restarted: the old one drains");
    Ok(Restarted { old_pid, new_pid })
}

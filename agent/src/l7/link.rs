//! The agent's end of the proxy link (`sockmesh_proxy::link`): a unix socket, mode 0600,
//! any number of proxies at once (an old one draining while its successor serves). Each
//! proxy says hello, gets the listeners, then the targets (again on every change); its
//! reports go to the agent's report channel. Links are known by the pid in the proxy's
//! hello ([`Links`]), so one proxy can be told to drain while its successor serves.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sockmesh_proxy::link::{
    read_frame, send_fds, write_frame, ProxyReport, ToAgent, ToProxy, LINK_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, info, warn};

use super::L7Metrics;

/// A proxy that connects must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Links open at once; more wait in the socket's backlog (a restart needs two).
const MAX_LINKS: usize = 8;

/// The proxies linked now, by the pid of their hello: which have their targets, and a
/// drain for each one alone (the agent's `stop` drains them all).
pub(super) struct Links {
    drains: Mutex<HashMap<u32, (u64, Arc<Notify>)>>,
    /// Pids linked and sent the targets (serving, or about to).
    serving: watch::Sender<BTreeSet<u32>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            drains: Mutex::default(),
            serving: watch::channel(BTreeSet::new()).0,
            next_id: Default::default(),
        }
    }
}

impl Links {
    /// A new link from `pid`: its id (a proxy's reconnect may overlap its old link's end)
    /// and its drain.
    fn linked(&self, pid: u32) -> (u64, Arc<Notify>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let drain = Arc::new(Notify::new());
        let mut drains = self.drains.lock().expect("links lock");
        drains.insert(pid, (id, drain.clone()));
        (id, drain)
    }

    fn has_targets(&self, pid: u32) {
        self.serving.send_if_modified(|s| s.insert(pid));
    }

    fn gone(&self, pid: u32, id: u64) {
        let mut drains = self.drains.lock().expect("links lock");
        if drains.get(&pid).is_some_and(|(i, _)| *i == id) {
            drains.remove(&pid);
            self.serving.send_if_modified(|s| s.remove(&pid));
        }
    }

    /// Tells the proxy `pid` to drain; false if it has no link.
    pub(super) fn drain(&self, pid: u32) -> bool {
        let drains = self.drains.lock().expect("links lock");
        let Some((_, drain)) = drains.get(&pid) else {
            return false;
        };
        // Stored if the link is busy writing a frame: it drains right after.
        drain.notify_one();
        true
    }

    /// Waits until the proxy `pid` is linked and has its targets.
    pub(super) async fn serving(&self, pid: u32) {
        let mut serving = self.serving.subscribe();
        let _ = serving.wait_for(|s| s.contains(&pid)).await;
    }
}

/// Serves the link on `socket` until `stop` is set and every proxy has gone.
pub(super) async fn serve(
    socket: &Path,
    links: Arc<Links>,
    listeners: Vec<TcpListener>,
    frames: watch::Receiver<Arc<Vec<u8>>>,
    stop: watch::Receiver<bool>,
    reports: mpsc::Sender<ProxyReport>,
    metrics: L7Metrics,
) {
    let unix = match bind(socket) {
        Ok(u) => u,
        Err(e) => {
            error!(error = %format!("{e:#}"), "cannot serve the proxy link; no proxy can connect");
            return;
        }
    };
    info!(socket = %socket.display(), "proxy link listening");
    let listeners = Arc::new(listeners);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_LINKS));
    let mut stopping = stop.clone();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = super::stopped(&mut stopping) => return,
        };
        let stream = tokio::select! {
            a = unix.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "proxy link accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = super::stopped(&mut stopping) => return,
        };
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let (frames, stop, reports, metrics) = (
            frames.clone(),
            stop.clone(),
            reports.clone(),
            metrics.clone(),
        );
        let held = listeners.clone();
        let links = links.clone();
        tokio::spawn(async move {
            metrics.connected.inc();
            if let Err(e) = one(stream, &fds, &links, frames, stop, reports, &metrics).await {
                metrics.link_errors.inc();
                warn!(error = %format!("{e:#}"), "proxy link ended");
            }
            metrics.connected.dec();
            drop((permit, held));
        });
    }
}

fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A previous agent's socket: nobody serves it any more.
    let _ = std::fs::remove_file(socket);
    let unix =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(unix)
}

/// One proxy, from hello to the end of its link.
async fn one(
    mut stream: UnixStream,
    fds: &[RawFd],
    links: &Links,
    frames: watch::Receiver<Arc<Vec<u8>>>,
    stop: watch::Receiver<bool>,
    reports: mpsc::Sender<ProxyReport>,
    metrics: &L7Metrics,
) -> Result<()> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame::<_, ToAgent>(&mut stream))
        .await
        .context("no hello")??;
    let pid = match hello {
        Some(ToAgent::Hello { version, pid }) if version == LINK_VERSION => pid,
        Some(ToAgent::Hello { version, .. }) => {
            bail!("proxy speaks link version {version}, this agent {LINK_VERSION}")
        }
        other => bail!("expected a hello, got {other:?}"),
    };
    loop {
        stream.writable().await?;
        match send_fds(&stream, fds) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e).context("handing over the listeners"),
        }
    }
    info!(pid, "proxy connected");
    let (id, drain) = links.linked(pid);
    let ended = linked(stream, pid, links, &drain, frames, stop, reports, metrics).await;
    links.gone(pid, id);
    ended
}

/// A linked proxy's life: targets out, reports in, until it leaves or is told to drain.
#[allow(clippy::too_many_arguments)]
async fn linked(
    stream: UnixStream,
    pid: u32,
    links: &Links,
    drain: &Notify,
    mut frames: watch::Receiver<Arc<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
    reports: mpsc::Sender<ProxyReport>,
    metrics: &L7Metrics,
) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    // Frames are read by a task of their own: a read cut off by select! would lose bytes.
    let dropped = metrics.reports_dropped.clone();
    let mut reader = tokio::spawn(async move {
        loop {
            match read_frame::<_, ToAgent>(&mut rd).await? {
                None => return Ok::<(), anyhow::Error>(()),
                Some(ToAgent::Report(r)) => {
                    if reports.try_send(r).is_err() {
                        dropped.inc();
                    }
                }
                Some(ToAgent::Hello { .. }) => bail!("a second hello"),
            }
        }
    });
    let first = frames.borrow_and_update().clone();
    if !first.is_empty() {
        wr.write_all(&first).await?;
        links.has_targets(pid);
    }
    loop {
        tokio::select! {
            ended = &mut reader => {
                info!(pid, "proxy disconnected");
                return ended?;
            }
            changed = frames.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let frame = frames.borrow_and_update().clone();
                wr.write_all(&frame).await?;
                links.has_targets(pid);
            }
            () = drain.notified() => {
                info!(pid, "telling the proxy to drain (its successor serves)");
                write_frame(&mut wr, &ToProxy::Drain).await?;
                let _ = tokio::time::timeout(super::DRAIN_WAIT, &mut reader).await;
                return Ok(());
            }
            _ = super::stopped(&mut stop) => {
                write_frame(&mut wr, &ToProxy::Drain).await?;
                // The proxy closes the link when it has drained.
                let _ = tokio::time::timeout(super::DRAIN_WAIT, &mut reader).await;
                return Ok(());
            }
        }
    }
}

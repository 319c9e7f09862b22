//! The proxy process's life on its link to the agent ([`crate::link`]):
//!
//! 1. Connect to the agent's socket (capped exponential backoff; the first link gives up
//!    after [`LinkConfig::first_attempts`] with an error naming the socket), say hello,
//!    take the listening sockets the agent hands over.
//! 2. On the first [`Targets`], start serving every listener with one [`Proxy`] (one
//!    accept loop per listener, shared pools and counters). Until then connections wait in
//!    the kernel's backlog rather than being refused for want of a service.
//! 3. Apply each [`Targets`] ([`NodeTargets::apply`]) and send what requests showed
//!    ([`Feedback::take_report`]) about once a second, when there is something to say.
//! 4. [`ToProxy::Drain`], or the caller's `shutdown` (SIGTERM, SIGINT): stop accepting,
//!    drain the requests in flight (bounded by `drain_timeout`), send a last report, return.
//!
//! A link that fails (closed, a frame that does not parse or is too large, a write that
//! does not finish in time) never stops the serving: the proxy keeps the last targets,
//! reconnects with backoff, and closes the listeners the agent hands over again (it already
//! serves its own). Every wait on the agent is bounded, so nothing here hangs on it. A
//! report whose write fails is lost with the link (tallies and suggestions are about the
//! last second; the rules suggest a backend again on its next run).

#[path = "process_link.rs"]
mod link_io;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::exporter::ConnectionCollector;
use crate::feedback::Feedback;
use crate::link::{LinkError, Targets, ToAgent, ToProxy};
use crate::node::NodeTargets;
use crate::origin::Origins;
use crate::server::{ConnectionStats, Drained, Proxy, ProxyConfig, ProxyError};

pub use link_io::listener_from_fd;

/// How the process talks to the agent.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The agent's unix socket (`--agent-socket`).
    pub agent_socket: PathBuf,
    /// Tries of the first connect before giving up (later links retry without end).
    pub first_attempts: u32,
    /// Backoff between connects: doubles from the first value up to the second.
    pub backoff: (Duration, Duration),
    /// Bound on each step of a handshake (connect, hello, the listeners) and on a write.
    pub io_timeout: Duration,
    /// How often piled-up feedback is sent.
    pub report_interval: Duration,
}

impl LinkConfig {
    /// The defaults: 20 first tries over about 30 s, backoff 100 ms to 2 s, 10 s per step,
    /// a report a second.
    pub fn new(agent_socket: PathBuf) -> Self {
        Self {
            agent_socket,
            first_attempts: 20,
            backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            io_timeout: Duration::from_secs(10),
            report_interval: Duration::from_secs(1),
        }
    }
}

/// Why the process stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The agent sent [`ToProxy::Drain`].
    Drain,
    /// The caller's shutdown future completed (a signal).
    Shutdown,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub stop: Stop,
    /// Every connection finished within `drain_timeout`.
    pub drained: bool,
}

/// Errors that end [`ProxyProcess::run`] before it serves.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no link to the agent at {path} after {attempts} attempts: {last}")]
    Unreachable {
        path: PathBuf,
        attempts: u32,
        #[source]
        last: LinkError,
    },
    #[error("the agent handed over no usable listening socket")]
    NoListeners,
}

/// The link's own metrics.
#[derive(Clone, Default)]
struct LinkMetrics {
    up: Gauge,
    connects: Counter,
    generation: Gauge,
}

impl LinkMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "proxy_link_up",
            "1 while the proxy has a link to the agent",
            m.up.clone(),
        );
        registry.register(
            "proxy_link_connects",
            "Links to the agent established (the first and every reconnect)",
            m.connects.clone(),
        );
        registry.register(
            "proxy_targets_generation",
            "Generation of the targets the proxy serves (0: none yet)",
            m.generation.clone(),
        );
        m
    }
}

/// The proxy process: its targets, its feedback, its server, its link.
pub struct ProxyProcess<O> {
    link: LinkConfig,
    node: Arc<NodeTargets<O>>,
    feedback: Arc<Feedback>,
    proxy: Proxy,
    metrics: LinkMetrics,
}

/// How a link's session ended.
enum End {
    Lost(String),
    Stop(Stop, OwnedWriteHalf),
}

/// The listeners and their accept loops.
struct Serving {
    /// Handed over, not served until the next targets.
    waiting: Vec<TcpListener>,
    /// The sockets (inode numbers) of every listener taken, served or waiting.
    held: std::collections::HashSet<u64>,
    tasks: JoinSet<Result<Drained, ProxyError>>,
    stop: watch::Sender<bool>,
}

impl<O: Origins> ProxyProcess<O> {
    /// Registers the request, connection and link metrics on `registry`.
    pub fn new(link: LinkConfig, config: ProxyConfig, origins: O, registry: &mut Registry) -> Self {
        let node = Arc::new(NodeTargets::new(origins));
        let feedback = Arc::new(Feedback::new(registry));
        let proxy = Proxy::new(config, node.clone(), feedback.clone());
        registry.register_collector(Box::new(ConnectionCollector(proxy.shared_stats())));
        let metrics = LinkMetrics::new(registry);
        Self {
            link,
            node,
            feedback,
            proxy,
            metrics,
        }
    }

    /// The connection counters of every listener.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.proxy.shared_stats()
    }

    /// Runs until the agent's drain or `shutdown`, then drains (module docs).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Exit, ProcessError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let (stream, fds) = tokio::select! {
            linked = self.first_link() => linked?,
            () = &mut shutdown => return Ok(Exit { stop: Stop::Shutdown, drained: true }),
        };
        let mut waiting = Vec::new();
        for fd in fds {
            match listener_from_fd(fd) {
                Ok(listener) => waiting.push(listener),
                Err(e) => {
                    warn!(error = %e, "closing a handed-over descriptor that is no TCP listener")
                }
            }
        }
        if waiting.is_empty() {
            return Err(ProcessError::NoListeners);
        }
        let addrs: Vec<String> = waiting
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        info!(listeners = ?addrs, "linked to the agent; serving once targets arrive");
        let held = waiting.iter().filter_map(socket_inode).collect();
        let mut serving = Serving {
            waiting,
            held,
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        };

        let mut link = Some(stream);
        let (stop, writer) = loop {
            let Some(stream) = link.take() else {
                tokio::select! {
                    (back, fds) = self.reconnect() => {
                        serving.adopt(fds);
                        link = Some(back);
                    }
                    () = &mut shutdown => break (Stop::Shutdown, None),
                }
                continue;
            };
            self.metrics.up.set(1);
            match self.session(stream, &mut serving, shutdown.as_mut()).await {
                End::Lost(why) => {
                    self.metrics.up.set(0);
                    warn!(reason = %why, "link to the agent lost; serving the last targets, reconnecting");
                }
                End::Stop(stop, writer) => break (stop, Some(writer)),
            }
        };

        info!(
            ?stop,
            "stopping: no new connections, draining the requests in flight"
        );
        let drained = serving.drain().await;
        if let Some(mut writer) = writer {
            if let Some(report) = self.feedback.take_report() {
                // Best effort: the agent may be gone already.
                let _ = self.send(&mut writer, &ToAgent::Report(report)).await;
            }
        }
        info!(drained, "stopped");
        Ok(Exit { stop, drained })
    }

    /// One link's life: targets in, reports out, until it fails or the process stops.
    async fn session(
        &self,
        stream: UnixStream,
        serving: &mut Serving,
        mut shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> End {
        let (read, mut write) = stream.into_split();
        let (tx, mut frames) = mpsc::channel(8);
        // Reading a frame is not cancel-safe: it runs in a task of its own (aborted with the
        // set when the session ends), handing whole frames over.
        let mut reader = JoinSet::new();
        reader.spawn(link_io::read_frames(read, tx));
        let mut tick = tokio::time::interval(self.link.report_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.as_mut() => return End::Stop(Stop::Shutdown, write),
                frame = frames.recv() => match frame {
                    Some(Ok(ToProxy::Targets(targets))) => {
                        self.apply(&targets);
                        serving.start(&self.proxy);
                    }
                    Some(Ok(ToProxy::Drain)) => return End::Stop(Stop::Drain, write),
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("the agent closed the link".into()),
                },
                _ = tick.tick() => {
                    if let Some(report) = self.feedback.take_report() {
                        if let Err(e) = self.send(&mut write, &ToAgent::Report(report)).await {
                            return End::Lost(e.to_string());
                        }
                    }
                }
                () = self.feedback.ban_waiting() => {
                    if let Some(report) = self.feedback.take_report() {
                        if let Err(e) = self.send(&mut write, &ToAgent::Report(report)).await {
                            return End::Lost(e.to_string());
                        }
                    }
                }
            }
        }
    }

    fn apply(&self, targets: &Targets) {
        let applied = self.node.apply(targets);
        let snapshot = self.node.snapshot();
        let names: Vec<Arc<str>> = snapshot.services().map(|s| s.name.clone()).collect();
        let rules: std::collections::HashMap<&str, crate::feedback::Rules> = targets
            .services
            .iter()
            .map(|t| (t.name.as_str(), crate::feedback::Rules::of(t)))
            .collect();
        self.feedback.targets_changed(
            names.iter().map(|n| {
                let r = rules.get(&**n).cloned().unwrap_or_default();
                (n.clone(), r)
            }),
            &applied.forget,
        );
        self.metrics
            .generation
            .set(i64::try_from(targets.generation).unwrap_or(i64::MAX));
        info!(
            generation = targets.generation,
            services = names.len(),
            workloads = targets.workloads.len(),
            "targets applied"
        );
    }

    async fn send(&self, writer: &mut OwnedWriteHalf, msg: &ToAgent) -> Result<(), LinkError> {
        link_io::bounded(self.link.io_timeout, crate::link::write_frame(writer, msg)).await
    }

    /// The first link, within [`LinkConfig::first_attempts`].
    async fn first_link(&self) -> Result<(UnixStream, Vec<std::os::fd::OwnedFd>), ProcessError> {
        let mut wait = self.link.backoff.0;
        let mut attempt = 1;
        loop {
            match link_io::handshake(&self.link).await {
                Ok(linked) => {
                    self.metrics.connects.inc();
                    return Ok(linked);
                }
                Err(last) if attempt >= self.link.first_attempts.max(1) => {
                    return Err(ProcessError::Unreachable {
                        path: self.link.agent_socket.clone(),
                        attempts: attempt,
                        last,
                    })
                }
                Err(e) => {
                    info!(attempt, error = %e, socket = %self.link.agent_socket.display(), "agent not reachable yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.link.backoff.1);
                    attempt += 1;
                }
            }
        }
    }

    /// A new link after one was lost, retrying without end, with the listeners it brings.
    async fn reconnect(&self) -> (UnixStream, Vec<std::os::fd::OwnedFd>) {
        let mut wait = self.link.backoff.0;
        let mut failures: u64 = 0;
        loop {
            tokio::time::sleep(wait).await;
            match link_io::handshake(&self.link).await {
                Ok((stream, fds)) => {
                    self.metrics.connects.inc();
                    info!(listeners = fds.len(), "link to the agent back");
                    return (stream, fds);
                }
                Err(e) => {
                    // An agent down for long would otherwise log every couple of seconds.
                    if failures.is_multiple_of(30) {
                        warn!(error = %e, failures = failures + 1, "reconnecting to the agent failed; retrying");
                    }
                    failures += 1;
                    wait = (wait * 2).min(self.link.backoff.1);
                }
            }
        }
    }
}

impl Serving {
    /// Takes the listeners a new link handed over: the same sockets as before (an agent
    /// that kept running) are closed, new ones (a restarted agent bound the port again
    /// beside the one this proxy still holds, `SO_REUSEPORT`) are served from the next
    /// targets on, so connections the kernel queues on either are accepted.
    fn adopt(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        for fd in fds {
            let Some(inode) = socket_inode(&fd) else {
                continue;
            };
            if !self.held.insert(inode) {
                continue; // Already served: this copy closes.
            }
            match listener_from_fd(fd) {
                Ok(listener) => {
                    info!(addr = ?listener.local_addr().ok(), "serving a new listener from the agent");
                    self.waiting.push(listener);
                }
                Err(e) => {
                    warn!(error = %e, "closing a handed-over descriptor that is no TCP listener")
                }
            }
        }
    }

    /// Starts the accept loops of the listeners not served yet.
    fn start(&mut self, proxy: &Proxy) {
        for listener in self.waiting.drain(..) {
            let proxy = proxy.clone();
            let mut stop = self.stop.subscribe();
            self.tasks.spawn(async move {
                let stopped = async move {
                    // A dropped sender also stops: nobody is left to say otherwise.
                    let _ = stop.wait_for(|s| *s).await;
                };
                proxy.serve(listener, stopped).await
            });
        }
    }

    /// Stops every accept loop and waits for their drains; true if all finished in time.
    async fn drain(mut self) -> bool {
        // `send_replace`: the value changes even with no accept loop subscribed.
        self.stop.send_replace(true);
        self.waiting.clear();
        let mut complete = true;
        while let Some(done) = self.tasks.join_next().await {
            complete &= matches!(done, Ok(Ok(Drained { complete: true })));
        }
        complete
    }
}

/// The inode number of the socket behind `fd`: two descriptors of one socket share it.
fn socket_inode(fd: &impl std::os::fd::AsRawFd) -> Option<u64> {
    // SAFETY: fstat writes only into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    (rc == 0).then_some(st.st_ino)
}

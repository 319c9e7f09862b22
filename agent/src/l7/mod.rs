//! The agent's side of the L7 proxy (issue 19): it owns the proxy's listening sockets,
//! tells the kernel where they are (`SM_PROXY`), serves the link the proxy connects to
//! (`<state-dir>/proxy.sock`: the listeners by `SCM_RIGHTS`, then the http services as
//! [`Targets`]), and in single-node mode starts and supervises the `sockmesh-proxy` process.
//!
//! With `--proxy spawn` nothing starts until the config has its first `protocol: http`
//! service, so a tcp-only mesh binds no port and runs no proxy; with `--proxy external` the
//! listeners and the link are up from the first config, so the proxy's container links at
//! once. The listeners have `SO_REUSEPORT`: a restarted agent binds beside the one its
//! proxy still holds and hands the new one over too. ARCHITECTURE.md, "L7", argues the split.

mod link;
mod listen;
mod supervise;
pub(crate) mod targets;

pub(crate) use supervise::{RestartError, Restarter};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;
use sockmesh_model::MeshConfig;
use sockmesh_proxy::link::{encode_frame, ProxyReport, ToProxy};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::engine::task::Command;
use crate::health::outlier::BanReason;
use crate::tables::ServiceView;

/// `--proxy`: who runs the node's L7 proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProxyMode {
    /// The agent starts `sockmesh-proxy` itself and restarts it when it exits
    /// (single-node mode: one command serves http services).
    Spawn,
    /// The proxy runs on its own (its own container in the DaemonSet) and connects to
    /// the agent's proxy socket.
    External,
    /// No proxy: a config with a `protocol: http` service is refused.
    Off,
}

/// How the agent runs the proxy (from the command line).
#[derive(Clone, Debug)]
pub(crate) struct ProxyOptions {
    pub mode: ProxyMode,
    /// `--proxy-bin` [default: `sockmesh-proxy` beside the agent's own binary].
    pub bin: Option<PathBuf>,
    /// `--proxy-listen`: one port, at most one IPv4 and one IPv6 address.
    pub listen: Vec<SocketAddr>,
    /// `--proxy-metrics-addr`, passed to a spawned proxy.
    pub metrics_addr: SocketAddr,
    /// The link socket, `<state-dir>/proxy.sock`.
    pub socket: PathBuf,
    /// The pinned maps' directory (`SM_PROXY`, `SM_PROXY_ORIGINS`).
    pub maps: PathBuf,
    /// `--observe`: without sock_ops no connection's origin is recorded.
    pub observe: bool,
}

/// How long a proxy may take to finish its requests when the agent stops.
const DRAIN_WAIT: Duration = Duration::from_secs(35);

impl ProxyOptions {
    /// `Err` naming the first http service when this agent cannot serve it.
    pub(crate) fn refuse(&self, config: &MeshConfig) -> Result<(), String> {
        let why = match (self.mode, self.observe) {
            (ProxyMode::Off, _) => "this agent runs with --proxy off",
            (_, false) => {
                "this agent runs with --observe false, and without sock_ops the proxy \
                 cannot learn a connection's service"
            }
            _ => return Ok(()),
        };
        crate::http_gate::refuse_http(config, why)
    }
}

/// The proxy's counters on the agent's /metrics.
#[derive(Clone, Default)]
pub(crate) struct L7Metrics {
    /// Proxies connected to the link now.
    connected: Gauge,
    /// Proxy processes the agent started (spawn mode).
    starts: Counter,
    /// Links that ended in an error (bad hello, bad frame, i/o).
    link_errors: Counter,
    /// Reports the agent could not keep up with and dropped.
    reports_dropped: Counter,
}

impl L7Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("proxy");
        r.register(
            "connected",
            "L7 proxy processes connected to this agent's link",
            m.connected.clone(),
        );
        r.register(
            "starts",
            "L7 proxy processes this agent started (--proxy spawn)",
            m.starts.clone(),
        );
        r.register(
            "link_errors",
            "Links to an L7 proxy that ended in an error",
            m.link_errors.clone(),
        );
        r.register(
            "reports_dropped",
            "Reports from the L7 proxy dropped because the agent was behind",
            m.reports_dropped.clone(),
        );
        m
    }
}

/// The node's proxy as the agent runs it.
pub(crate) struct L7 {
    opts: ProxyOptions,
    metrics: L7Metrics,
    /// The current targets, as one encoded frame every link writes.
    frames: watch::Sender<Arc<Vec<u8>>>,
    /// Set once, when the agent stops: every proxy drains.
    stop: watch::Sender<bool>,
    reports: mpsc::Sender<ProxyReport>,
    generation: u64,
    started: bool,
    supervisor: Option<tokio::task::JoinHandle<()>>,
    links: Arc<link::Links>,
    restarter: Restarter,
    /// The supervisor's end of `restarter`, until it starts.
    restarts: Option<supervise::Restarts>,
}

impl L7 {
    /// Reports from proxies go to `reports`.
    pub(crate) fn new(
        opts: ProxyOptions,
        registry: &mut Registry,
        reports: mpsc::Sender<ProxyReport>,
    ) -> Self {
        let (restarter, restarts) = match opts.mode {
            ProxyMode::Spawn => {
                let (restarter, restarts) = supervise::restarts();
                (restarter, Some(restarts))
            }
            _ => (Restarter::none(), None),
        };
        Self {
            opts,
            metrics: L7Metrics::new(registry),
            frames: watch::channel(Arc::new(Vec::new())).0,
            stop: watch::channel(false).0,
            reports,
            generation: 0,
            started: false,
            supervisor: None,
            links: Arc::default(),
            restarter,
            restarts,
        }
    }

    /// Asks for a hitless restart of a spawned proxy (the admin API).
    pub(crate) fn restarter(&self) -> Restarter {
        self.restarter.clone()
    }

    /// `Err` naming the first http service when this agent cannot serve it.
    pub(crate) fn refuse(&self, config: &MeshConfig) -> Result<(), String> {
        self.opts.refuse(config)
    }

    /// After every apply: sends the proxy the http services as applied, and starts the
    /// proxy side on the first one.
    pub(crate) fn update(&mut self, config: &MeshConfig, views: &[ServiceView]) {
        // An external proxy (its own container) starts with the agent and waits for the
        // link: it is served from the first config on, with or without http services.
        // A spawned one starts with the first http service.
        let wanted = self.opts.mode == ProxyMode::External || targets::has_http(config);
        if self.opts.mode == ProxyMode::Off || (!self.started && !wanted) {
            return;
        }
        self.generation += 1;
        let t = targets::targets(config, views, self.generation);
        match encode_frame(&ToProxy::Targets(t)) {
            Ok(frame) => {
                self.frames.send_replace(Arc::new(frame));
            }
            Err(e) => error!(error = %e, "cannot encode the proxy's targets; it keeps the last"),
        }
        if !self.started {
            self.started = true;
            self.start();
        }
    }

    fn start(&mut self) {
        info!(listen = ?self.opts.listen, mode = ?self.opts.mode, "starting the L7 proxy side");
        let opts = self.opts.clone();
        let frames = self.frames.subscribe();
        let stop = self.stop.subscribe();
        let reports = self.reports.clone();
        let metrics = self.metrics.clone();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let links = self.links.clone();
        // Binding retries until the port is free (a proxy of the previous agent may
        // still be draining on it).
        tokio::spawn(async move {
            let listeners = listen::bind_until_free(&opts.listen, stop.clone()).await;
            let Some(listeners) = listeners else { return };
            if let Err(e) = listen::publish(&opts.maps, &listeners) {
                error!(error = %format!("{e:#}"), "cannot tell the kernel where the proxy listens; http services' connects are refused");
            }
            let _ = bound_tx.send(());
            link::serve(
                &opts.socket,
                links,
                listeners,
                frames,
                stop,
                reports,
                metrics,
            )
            .await;
        });
        if let Some(restarts) = self.restarts.take() {
            let opts = self.opts.clone();
            let stop = self.stop.subscribe();
            let metrics = self.metrics.clone();
            let links = self.links.clone();
            self.supervisor = Some(tokio::spawn(async move {
                // The link must be listening before the proxy tries it.
                if bound_rx.await.is_ok() {
                    supervise::run(&opts, &links, restarts, stop, metrics.starts).await;
                }
            }));
        }
    }

    /// The agent is stopping: proxies finish their requests (bounded) and exit.
    pub(crate) async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(s) = self.supervisor.take() {
            let _ = tokio::time::timeout(DRAIN_WAIT, s).await;
        }
        let _ = std::fs::remove_file(&self.opts.socket);
    }
}

/// Returns once `stop` is set (or its sender is gone). The guard `wait_for` returns is not
/// `Send`; this drops it before any other await.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the proxies report: request counts go to the SLO engine (`request_success`,
/// `request_latency`); ban suggestions go to the health engine, which bans within the
/// service's cap like its own rules' bans (reasons `consecutive_5xx`, `request_latency`).
pub(crate) async fn take_reports(
    mut reports: mpsc::Receiver<ProxyReport>,
    engine: crate::engine::task::EngineHandle,
    signals: Arc<crate::signals::Signals>,
) {
    while let Some(r) = reports.recv().await {
        for t in &r.services {
            signals.on_requests(t);
        }
        for ban in r.bans {
            let Some(reason) = BanReason::from_proxy(&ban.reason) else {
                warn!(reason = %ban.reason, "the proxy suggests a ban for a reason this agent does not know");
                continue;
            };
            let cmd = Command::RequestBan {
                service: ban.service,
                backend: ban.backend,
                reason,
            };
            if engine.commands.send(cmd).await.is_err() {
                return;
            }
        }
    }
}

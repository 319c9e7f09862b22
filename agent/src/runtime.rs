//! The agent's main loop: attach (or adopt), apply the config, serve metrics and the admin
//! API, drain kernel events, watch the config and re-apply on change, until SIGTERM/SIGINT.
//! Exiting leaves the pins, so routing continues while the agent is down.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use sockmesh_model::MeshConfig;
use sockmesh_serve::{Endpoint, ServeMetrics, Server};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminState},
    config_source::{Change, ConfigSource, Watcher},
    dataplane::Dataplane,
    engine::{self, task::Command},
    follow, loader, metrics,
    signals::{kernel_maps::SignalMaps, ring::EventReader, Signals, SignalsUpdater},
    status::{unix_ms_now, SharedStatus, Status},
};

pub(crate) struct RunOptions {
    pub config: Option<PathBuf>,
    pub cgroup: PathBuf,
    pub cgroup2_root: PathBuf,
    pub bpffs: PathBuf,
    pub admin_socket: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<sockmesh_model::Token>,
    /// The admin API's fault credential on TCP (`--admin-fault-token-file`).
    pub admin_fault_token: Option<sockmesh_model::Token>,
    pub metrics_addr: SocketAddr,
    pub watch_interval: Duration,
    pub max_callers: usize,
    /// `--max-series`: per-backend label sets before folding into `other`.
    pub max_series: usize,
    pub observe: bool,
    /// This node's zone (`--zone`): callers without a workload zone are in it.
    pub zone: Option<String>,
    /// `--node-name` (default: the host name): the agent acts only on workloads without a
    /// `node:` and those on this node (`MeshConfig::for_node`).
    pub node: String,
    /// `--control`: follow the control plane instead of `config`.
    pub control: Option<follow::FollowOptions>,
    /// `--http-header-timeout-secs`, `--http-idle-timeout-secs`: /metrics and admin API.
    pub http: sockmesh_serve::HttpTimeoutArgs,
    /// `--proxy*`: the node's L7 proxy.
    pub proxy: crate::l7::ProxyOptions,
}

/// Connection caps of the agent's HTTP endpoints (each listener has its own). A scrape or
/// an admin call holds a connection for milliseconds and its clients are a few Prometheus
/// replicas, kubelet probes and an operator's CLI: 512 is far above that, and bounds what
/// one endpoint can take of the descriptors (the agent raises its limit to the hard one at
/// start). At the cap the longest-idle connection makes room (sockmesh-serve), so held
/// connections cannot lock out a scraper.
const METRICS_MAX_CONNECTIONS: usize = 512;
const ADMIN_MAX_CONNECTIONS: usize = 512;

/// How often queued events are drained when the kernel has not forced a wake-up.
const DRAIN_TICK: Duration = Duration::from_millis(20);
/// Reports from the L7 proxy waiting for the agent (one a second per proxy).
const REPORTS_QUEUE: usize = 64;
/// How often per-CPU maps, workload threads and cgroup CPU stats are re-read.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(mut opts: RunOptions) -> Result<()> {
    let following = opts.control.take();
    let source = match &opts.config {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::Embedded,
    };
    let mut watcher = Watcher::new(source);
    // From the control plane (or what it last gave us), or from the file.
    let started = match &following {
        Some(f) => Some(follow::start(f).await?),
        None => None,
    };
    let source_name = match &following {
        Some(f) => f.describe(),
        None => watcher.source().describe(),
    };
    // Validate before touching the kernel: a bad file at start is a clear error, and any
    // routing an earlier agent left pinned keeps running meanwhile.
    let received = match &started {
        Some(start) => MeshConfig::clone(&start.snapshot.config),
        None => match watcher.poll() {
            Some(Change::Valid(cfg)) => cfg,
            Some(Change::Invalid(e)) => {
                anyhow::bail!("invalid config {}: {e}", watcher.source().describe())
            }
            None => unreachable!("the first poll always reports the content"),
        },
    };
    opts.proxy
        .refuse(&received)
        .map_err(|e| anyhow::anyhow!("config {source_name}: {e}"))?;
    let initial_fingerprint = received.fingerprint();
    let initial = received.into_node(&opts.node);
    info!(
        config = %source_name,
        cgroup = %opts.cgroup.display(),
        bpffs = %opts.bpffs.display(),
        admin_socket = %opts.admin_socket.display(),
        metrics_addr = %opts.metrics_addr,
        fingerprint = %initial_fingerprint,
        services = initial.services.len(),
        workloads = initial.workloads.len(),
        zone = opts.zone.as_deref().unwrap_or("-"),
        "starting sockmesh-agent"
    );

    let attached = loader::attach(&opts.bpffs, &opts.cgroup, opts.observe)?;
    let mut dataplane = Dataplane::open(&attached.layout)?.with_zone(opts.zone.clone());
    // Each subsystem registers its own families as it is built; then the registry is served.
    let mut registry = metrics::registry();
    let signals = Signals::new(
        SignalMaps::open(&attached.layout.maps)?,
        opts.max_callers,
        opts.max_series,
        opts.cgroup2_root.clone(),
        &mut registry,
    );
    let config_metrics = ConfigMetrics::new(&mut registry);
    let serve_metrics = ServeMetrics::new(&mut registry);
    let admin_metrics = admin::AdminMetrics::new(&mut registry);
    let (reports_tx, reports_rx) = tokio::sync::mpsc::channel(REPORTS_QUEUE);
    let mut l7 = crate::l7::L7::new(opts.proxy.clone(), &mut registry, reports_tx);
    let server =
        |endpoint, cap| Server::new(endpoint, opts.http.limits(cap), serve_metrics.clone());
    let mut events = EventReader::open(&attached.layout.maps)?;
    let (engine, mut overlay_rx) = engine::task::spawn(
        attached.layout.maps.clone(),
        opts.cgroup.clone(),
        signals.clone(),
        &mut registry,
    );
    signals.feed_engine(engine.events.clone());
    tokio::spawn(crate::l7::take_reports(
        reports_rx,
        engine.clone(),
        signals.clone(),
    ));
    let status: SharedStatus = Arc::new(std::sync::RwLock::new(Status {
        adopted: attached.adopted,
        cgroup: opts.cgroup.display().to_string(),
        bpffs: opts.bpffs.display().to_string(),
        ..Status::default()
    }));
    status.write().expect("status lock").config.source = source_name;

    let metrics_listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .with_context(|| format!("binding metrics on {}", opts.metrics_addr))?;
    status.write().expect("status lock").metrics_addr = metrics_listener.local_addr()?.to_string();
    tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::new(registry),
        server(Endpoint::Metrics, METRICS_MAX_CONNECTIONS),
    ));
    let admin_state = AdminState {
        status: status.clone(),
        signals: signals.clone(),
        engine: engine.clone(),
        access: None,
        metrics: admin_metrics,
        proxy: l7.restarter(),
    };
    tokio::spawn(admin::serve(
        admin::bind_unix(&opts.admin_socket)?,
        admin_state.clone(),
        server(Endpoint::Admin, ADMIN_MAX_CONNECTIONS),
    ));
    if let Some(addr) = opts.admin_addr {
        let token = opts
            .admin_token
            .clone()
            .context("--admin-addr needs --admin-token-file")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin API on {addr}"))?;
        info!(
            %addr,
            fault_credential = opts.admin_fault_token.is_some(),
            "admin API on TCP (bearer token required; faults need the fault credential)"
        );
        tokio::spawn(admin::serve(
            listener,
            AdminState {
                access: Some(admin::AdminAccess {
                    read: token,
                    fault: opts.admin_fault_token.clone(),
                }),
                ..admin_state
            },
            server(Endpoint::Admin, ADMIN_MAX_CONNECTIONS),
        ));
    }

    let drain_signals = signals.clone();
    tokio::spawn(async move {
        loop {
            let n = events
                .drain(DRAIN_TICK, |ev| drain_signals.on_event(ev))
                .await;
            drain_signals.events_drained(n);
        }
    });
    let refresh_signals = signals.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        loop {
            tick.tick().await;
            let s = refresh_signals.clone();
            // Reading cgroup files and per-CPU maps blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
        }
    });

    let mut overlay = crate::tables::Overlay::new();
    let initial_started = Instant::now();
    let views = dataplane
        .apply(&initial, &overlay, None, None)
        .context("applying the initial config")?;
    signals.set_config(&views, &initial);
    l7.update(&initial, &views);
    let initial = Arc::new(initial);
    let signals_updater = SignalsUpdater::spawn(signals.clone(), initial.clone(), views.clone());
    let _ = engine
        .commands
        .send(Command::Config {
            config: initial.clone(),
            views: views.clone(),
        })
        .await;
    record_applied(
        &status,
        &config_metrics,
        initial_fingerprint,
        views,
        initial_started.elapsed(),
    );
    // This layout now routes with the config applied: programs of another layout version
    // (an upgrade across a map-layout change) can go without a gap in routing.
    if let Err(e) = loader::retire_other_versions(&opts.bpffs) {
        warn!(error = %format!("{e:#}"), "could not retire pins of another layout version");
    }
    status.write().expect("status lock").ready = true;
    info!(adopted = attached.adopted, "ready");

    let mut current = initial;
    let mut offers = following.zip(started).map(|(f, s)| follow::spawn(f, s));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(opts.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Ok(()) = overlay_rx.changed() => {
                // The health engine banned, unbanned, opened or closed something.
                overlay = overlay_rx.borrow_and_update().clone();
                match dataplane.apply_overlay(&current, &overlay) {
                    Ok(views) => {
                        l7.update(&current, &views);
                        signals_updater.views(views.clone());
                        status.write().expect("status lock").services = views;
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "applying health decisions failed"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick(), if offers.is_none() => {
                let started = Instant::now();
                let Some(change) = watcher.poll() else { continue };
                let mut reconcile = Reconcile {
                    dataplane: &mut dataplane,
                    overlay: &overlay,
                    current: &mut current,
                    signals: &signals_updater,
                    config_metrics: &config_metrics,
                    engine: &engine,
                    status: &status,
                    node: &opts.node,
                    l7: &mut l7,
                };
                let change = match change {
                    Change::Valid(cfg) => Ok(Arc::new(cfg)),
                    Change::Invalid(e) => Err(e),
                };
                let _ = reconcile.take(change, None, None, started).await;
            }
            Some(offer) = next_offer(&mut offers) => {
                let started = Instant::now();
                let mut reconcile = Reconcile {
                    dataplane: &mut dataplane,
                    overlay: &overlay,
                    current: &mut current,
                    signals: &signals_updater,
                    config_metrics: &config_metrics,
                    engine: &engine,
                    status: &status,
                    node: &opts.node,
                    l7: &mut l7,
                };
                let fingerprint = Some(offer.fingerprint);
                let taken = reconcile
                    .take(offer.config, fingerprint, offer.touched.as_deref(), started)
                    .await;
                let _ = offer.reply.send(taken);
            }
        }
    }
    warn!("shutting down; programs stay attached and maps pinned (run `cleanup` to detach)");
    l7.shutdown().await;
    let _ = std::fs::remove_file(&opts.admin_socket);
    Ok(())
}

/// What a new desired state needs to be applied, or refused with the reason.
struct Reconcile<'a> {
    dataplane: &'a mut Dataplane,
    overlay: &'a crate::tables::Overlay,
    current: &'a mut Arc<MeshConfig>,
    signals: &'a SignalsUpdater,
    config_metrics: &'a ConfigMetrics,
    engine: &'a engine::task::EngineHandle,
    status: &'a SharedStatus,
    node: &'a str,
    l7: &'a mut crate::l7::L7,
}

impl Reconcile<'_> {
    /// Applies a valid config, or records why a change was refused; on any failure the
    /// previous config stays active. The file watcher and the control follower share it.
    /// `fingerprint`: the config's, when the source already computed it.
    /// `started`: when reading the change began (its apply time is measured from there).
    async fn take(
        &mut self,
        change: Result<Arc<MeshConfig>, String>,
        fingerprint: Option<String>,
        touched: Option<&[String]>,
        started: Instant,
    ) -> Result<(), String> {
        let received = match change.and_then(|cfg| {
            self.l7.refuse(&cfg)?;
            Ok(cfg)
        }) {
            Ok(cfg) => cfg,
            Err(e) => {
                error!(error = %e, "config rejected; the previous config stays active");
                return Err(self.rejected(e));
            }
        };
        // Acks and /status name the config as received; the tables hold this node's part.
        let fingerprint = fingerprint.unwrap_or_else(|| received.fingerprint());
        let cfg = received.shared_into_node(self.node);
        let planning = Instant::now();
        match self
            .dataplane
            .apply(&cfg, self.overlay, Some(self.current), touched)
        {
            Ok(views) => {
                let tables_us = planning.elapsed().as_micros() as u64;
                info!(tables_us, "config taken");

                self.signals.config(cfg.clone(), views.clone());
                self.l7.update(&cfg, &views);
                // Bounded: waits while the engine is behind; a config change is never lost.
                let _ = self
                    .engine
                    .commands
                    .send(Command::Config {
                        config: cfg.clone(),
                        views: views.clone(),
                    })
                    .await;
                record_applied(
                    self.status,
                    self.config_metrics,
                    fingerprint,
                    views,
                    started.elapsed(),
                );
                *self.current = cfg;
                Ok(())
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "config could not be applied; the previous config stays active");
                Err(self.rejected(format!("{e:#}")))
            }
        }
    }

    fn rejected(&self, error: String) -> String {
        record_rejected(self.status, self.config_metrics, error.clone());
        error
    }
}

/// The next version from the control plane; never, when following a file.
async fn next_offer(
    offers: &mut Option<tokio::sync::mpsc::Receiver<follow::Offer>>,
) -> Option<follow::Offer> {
    match offers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Config metrics: `sockmesh_config_version` (configs applied) and
/// `sockmesh_config_rejected_total`, counted where the status records the same events.
pub(crate) struct ConfigMetrics {
    version: Gauge,
    rejected: Counter,
}

impl ConfigMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            version: Gauge::default(),
            rejected: Counter::default(),
        };
        registry.register(
            "config_version",
            "Number of configs applied by this agent since it started",
            m.version.clone(),
        );
        registry.register(
            "config_rejected",
            "Configs rejected (invalid or not applicable)",
            m.rejected.clone(),
        );
        m
    }
}

fn record_applied(
    status: &SharedStatus,
    metrics: &ConfigMetrics,
    fingerprint: String,
    views: Arc<Vec<crate::tables::ServiceView>>,
    took: Duration,
) {
    metrics.version.inc();
    let mut s = status.write().expect("status lock");
    s.config.apply_ms = took.as_secs_f64() * 1000.0;
    s.config.fingerprint = fingerprint;
    s.config.applies += 1;
    s.config.last_error = None;
    s.config.applied_at_unix_ms = unix_ms_now();
    s.services = views;
}

fn record_rejected(status: &SharedStatus, metrics: &ConfigMetrics, error: String) {
    metrics.rejected.inc();
    let mut s = status.write().expect("status lock");
    s.config.rejected += 1;
    s.config.last_error = Some(error);
}

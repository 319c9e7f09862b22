//! The engine's task: feeds [`Engine`] events, TCP counters and probe results, runs probes
//! and drains, exports health metrics, and publishes the overlay the dataplane applies.
//!
//! Every input is bounded. Connect outcomes arrive through the [`EventInbox`], a coalescing
//! queue of bounded size ([`super::queue`]) the ring drain pushes to without ever waiting;
//! commands (config changes, admin requests) through a bounded channel whose senders wait
//! when it is full (they are rare, and none may be lost); probe results through a bounded
//! channel their probe tasks wait on.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::Value;
use sockmesh_common::ConnEvent;
use sockmesh_model::MeshConfig;
use tokio::{
    sync::{mpsc, oneshot, watch, Notify},
    time::Instant,
};
use tracing::{info, warn};

use prometheus_client::registry::Registry;

use crate::health::outlier::BanReason;

use super::{
    drain::{self, netns::DrainReport},
    metrics::{DrainNetns, HealthExport, HealthMetrics},
    queue::{Batch, EventQueue, Outcome},
    Engine,
};
use crate::{
    signals::Signals,
    tables::{Overlay, ServiceView},
};

/// How often the engine evaluates (detection latency is at most this plus the drain tick).
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// How often kernel TCP counters are folded in.
const TCP_EVERY: Duration = Duration::from_secs(1);
/// Commands waiting for the engine at most; a sender waits beyond (config changes and admin
/// requests are rare: this is never reached but by a stuck engine).
const COMMANDS_QUEUED: usize = 64;
/// Probe results waiting for the engine at most; a probe task waits beyond. Probes run for
/// banned backends only, so this is rarely near.
const PROBES_QUEUED: usize = 1024;

/// Where the ring drain leaves connect outcomes for the engine: a bounded coalescing queue
/// and the engine's wake-up. Pushing never waits for the engine.
#[derive(Default)]
pub(crate) struct EventInbox {
    queue: Mutex<EventQueue>,
    wake: Notify,
}

impl EventInbox {
    /// Queues the outcome of `ev` (if the engine folds one) and wakes the engine.
    pub(crate) fn push(&self, ev: &ConnEvent) {
        // Closes and the mesh's other refusals take no lock: the engine folds nothing of them.
        if Outcome::of(ev).is_none() {
            return;
        }
        let was_empty = {
            let mut q = self.queue.lock().expect("event queue lock");
            let was_empty = q.is_empty();
            q.push_event(ev);
            was_empty
        };
        // The engine empties the queue when it wakes: one wake-up per non-empty queue.
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Batch {
        self.queue.lock().expect("event queue lock").take()
    }
}

pub(crate) enum Command {
    /// The config the kernel now holds: shared with the runtime, never copied.
    Config {
        config: Arc<MeshConfig>,
        views: Arc<Vec<ServiceView>>,
    },
    /// Refuse `refuse_ppm` of the service's connects; replies false for an unknown service.
    Fault {
        service: String,
        refuse_ppm: u32,
        reply: oneshot::Sender<bool>,
    },
    /// The admin API's view of the engine as of now.
    Views { reply: oneshot::Sender<EngineViews> },
    /// The L7 proxy's request rules would ban this backend of an http service.
    RequestBan {
        service: String,
        backend: SocketAddr,
        reason: BanReason,
    },
}

/// The admin API's view of the engine (`/v1/bans`, `/v1/circuits`), built when asked for:
/// exact at the moment of the request, and nothing to build while nobody asks (at 10,000
/// services, building them every tick was a tenth of the agent's CPU).
#[derive(Default)]
pub(crate) struct EngineViews {
    pub bans: Value,
    pub circuits: Value,
}

#[derive(Clone)]
pub(crate) struct EngineHandle {
    pub events: Arc<EventInbox>,
    pub commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// The engine's views now; `None` if the engine task is gone.
    pub(crate) async fn views(&self) -> Option<EngineViews> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Views { reply }).await.ok()?;
        answer.await.ok()
    }
}

/// Starts the engine's task; its health metrics are registered in `registry`. `cgroup` is
/// the cgroup the programs are attached to: drains reach the network namespaces of its
/// processes (and of the workloads').
pub(crate) fn spawn(
    map_dir: PathBuf,
    cgroup: PathBuf,
    signals: Arc<Signals>,
    registry: &mut Registry,
) -> (EngineHandle, watch::Receiver<Overlay>) {
    let events = Arc::new(EventInbox::default());
    let (commands, mut command_rx) = mpsc::channel::<Command>(COMMANDS_QUEUED);
    let (probe_tx, mut probe_rx) = mpsc::channel::<(u32, u32, bool)>(PROBES_QUEUED);
    let (overlay_tx, overlay_rx) = watch::channel(Overlay::new());
    let handle = EngineHandle {
        events: events.clone(),
        commands,
    };
    let mut ctx = Ctx {
        map_dir,
        cgroup,
        denied_said: Arc::default(),
        signals,
        probe_tx,
        overlay_tx,
        exported: HealthExport::new(HealthMetrics::new(registry)),
    };
    tokio::spawn(async move {
        let mut engine = Engine::default();
        let mut tick = tokio::time::interval(TICK);
        let mut last_tcp = Instant::now();
        loop {
            tokio::select! {
                () = events.wake.notified() => {
                    let batch = events.take();
                    ctx.exported
                        .metrics()
                        .events_queued(batch.coalesced, batch.dropped);
                    let now = Instant::now();
                    for run in &batch.runs {
                        engine.on_run(now, run);
                        // Backend failures may complete a ban: decide now, not at the next
                        // tick (the caller keeps connecting meanwhile), and before a later
                        // run of successes for the same backend ends the streak.
                        if run.outcome == Outcome::Failure {
                            step(&mut engine, &mut ctx);
                        }
                    }
                }
                Some((svc, backend, ok)) = probe_rx.recv() => {
                    engine.probe_result(Instant::now(), svc, backend, ok);
                    // A passed probe returns the backend now, not at the next tick.
                    step(&mut engine, &mut ctx);
                }
                Some(cmd) = command_rx.recv() => match cmd {
                    Command::Config { config, views } => {
                        engine.on_config(Instant::now(), &config, &views);
                        ctx.exported.reconfigure(&engine);
                    }
                    Command::Fault { service, refuse_ppm, reply } => {
                        let _ = reply.send(engine.set_fault(&service, refuse_ppm));
                    }
                    Command::RequestBan { service, backend, reason } => {
                        if let Some((service, backend, reason)) =
                            engine.request_ban(Instant::now(), &service, backend, reason)
                        {
                            warn!(%service, %backend, reason = reason.as_str(), "backend banned");
                            ctx.exported.metrics().banned(reason);
                        }
                        step(&mut engine, &mut ctx);
                    }
                    Command::Views { reply } => {
                        let now = Instant::now();
                        // The gauges as of the same moment: a reader of a view never sees
                        // older metrics after it (a circuit half-open here but open there).
                        ctx.exported.export(&engine, now);
                        let _ = reply.send(EngineViews {
                            bans: engine.bans_json(now),
                            circuits: engine.circuits_json(now),
                        });
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.saturating_duration_since(last_tcp) >= TCP_EVERY {
                        engine.on_tcp(now, &ctx.signals.take_tcp_changes());
                        last_tcp = now;
                    }
                    step(&mut engine, &mut ctx);
                }
            }
        }
    });
    (handle, overlay_rx)
}

/// What a step needs besides the engine.
struct Ctx {
    map_dir: PathBuf,
    cgroup: PathBuf,
    /// Set once the agent said it cannot enter workload network namespaces (said once).
    denied_said: Arc<AtomicBool>,
    signals: Arc<Signals>,
    probe_tx: mpsc::Sender<(u32, u32, bool)>,
    overlay_tx: watch::Sender<Overlay>,
    exported: HealthExport,
}

/// One evaluation: bans, probes, drains, metrics, admin views, and the overlay if it changed.
fn step(engine: &mut Engine, ctx: &mut Ctx) {
    let now = Instant::now();
    let signals = &ctx.signals;
    let out = engine.tick(now);
    for (service, backend, reason) in &out.bans {
        warn!(%service, %backend, reason = reason.as_str(), "backend banned");
        ctx.exported.metrics().banned(*reason);
    }
    for (svc, backend, addr, timeout) in out.probes {
        let tx = ctx.probe_tx.clone();
        tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
            info!(backend = %addr, ok, "probe");
            let _ = tx.send((svc, backend, ok)).await;
        });
    }
    let roots = if out.drains.is_empty() {
        Vec::new()
    } else {
        drain::netns::roots(&ctx.cgroup, &signals.workload_cgroups())
    };
    for (svc, backend, addr) in out.drains {
        let dir = ctx.map_dir.clone();
        let metrics = ctx.exported.metrics().clone();
        let roots = roots.clone();
        let denied_said = ctx.denied_said.clone();
        tokio::task::spawn_blocking(move || {
            match drain::routed_cookies(&dir, svc, backend)
                .and_then(|c| Ok(drain::netns::destroy_everywhere(&roots, addr, &c)?))
            {
                Ok(report) => drained(addr, &report, &metrics, &denied_said),
                Err(e) => warn!(backend = %addr, error = %format!("{e:#}"), "drain failed"),
            }
        });
    }
    ctx.exported.export(engine, now);
    if let Some(overlay) = engine.overlay_update(now) {
        ctx.overlay_tx.send_if_modified(|current| {
            let changed = *current != overlay;
            if changed {
                *current = overlay;
            }
            changed
        });
    }
    engine.settle(now);
}

/// Logs and counts one drain; says once that workload namespaces cannot be entered.
fn drained(
    addr: std::net::SocketAddr,
    r: &DrainReport,
    metrics: &HealthMetrics,
    denied_said: &AtomicBool,
) {
    info!(
        backend = %addr,
        closed = r.agent + r.workloads,
        agent_netns = r.agent,
        workload_netns = r.workloads,
        namespaces = r.entered,
        "drained connections"
    );
    metrics.drained(DrainNetns::Agent, r.agent as u64);
    metrics.drained(DrainNetns::Workload, r.workloads as u64);
    metrics.netns_denied(r.denied as u64);
    for (ino, e) in &r.failed {
        warn!(backend = %addr, netns = ino, error = %e, "drain failed in a workload network namespace");
    }
    if r.denied > 0 && !denied_said.swap(true, Ordering::Relaxed) {
        let error = r
            .denied_error
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        warn!(
            namespaces = r.denied,
            %error,
            "cannot enter workload network namespaces to drain them (needs CAP_SYS_ADMIN, and \
             CAP_SYS_PTRACE for processes with other credentials): draining only the agent's \
             own network namespace; connections pods hold stay open \
             (sockmesh_drain_netns_denied_total counts them; said once)"
        );
    }
}

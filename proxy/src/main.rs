//! `sockmesh-proxy`: the node's L7 proxy process. The agent spawns it (or a DaemonSet runs
//! it beside the agent), owns its listening sockets and hands them over on the link
//! (`--agent-socket`); the kernel's record of each redirected connection
//! (`--origins-map`, the pinned `SM_PROXY_ORIGINS`) names its service and caller. A thin
//! edge over `sockmesh_proxy::process`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sockmesh_proxy::exporter;
use sockmesh_proxy::origin::KernelOrigins;
use sockmesh_proxy::process::{LinkConfig, ProxyProcess};
use sockmesh_proxy::ProxyConfig;
use sockmesh_serve::{Endpoint, Limits, ServeMetrics, Server};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// mimalloc instead of glibc's malloc, as in the agent: a request allocates and frees many
/// small buffers (headers, HPACK, frames), where glibc's took about 12 % of the proxy's CPU
/// under HTTP/2 load (`cargo xtask bench --only l7`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Scrapers at once on `/metrics` (the agent's cap).
const METRICS_MAX_CONNECTIONS: usize = 512;

/// The node's L7 proxy for `protocol: http` services.
#[derive(Debug, Parser)]
#[command(name = "sockmesh-proxy", version)]
struct Args {
    /// The agent's link socket: the proxy connects, says hello and receives its listeners.
    #[arg(long, value_name = "PATH")]
    agent_socket: PathBuf,
    /// The pinned SM_PROXY_ORIGINS map (`<bpffs>/v<layout>/maps/SM_PROXY_ORIGINS`); opening
    /// it needs CAP_BPF (or root).
    #[arg(long, value_name = "PATH")]
    origins_map: PathBuf,
    /// Where `GET /metrics` answers.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9478")]
    metrics_addr: SocketAddr,
    /// How long a drain (the agent's, or SIGTERM/SIGINT) waits for requests in flight.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_timeout_secs: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Installed first: a SIGTERM from now on drains instead of killing.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    };
    info!(
        agent_socket = %args.agent_socket.display(),
        origins_map = %args.origins_map.display(),
        metrics_addr = %args.metrics_addr,
        drain_timeout_secs = args.drain_timeout_secs,
        "starting sockmesh-proxy"
    );
    sockmesh_serve::fd_limit::raise_nofile_logged();
    let origins = KernelOrigins::open(&args.origins_map).with_context(|| {
        format!(
            "opening the origins map {} (the agent's pinned SM_PROXY_ORIGINS; needs CAP_BPF)",
            args.origins_map.display()
        )
    })?;

    let mut registry = exporter::registry();
    let serve_metrics = ServeMetrics::new(&mut registry);
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        ..ProxyConfig::default()
    };
    let process = ProxyProcess::new(
        LinkConfig::new(args.agent_socket),
        config,
        origins,
        &mut registry,
    );
    let metrics_listener = bind_metrics(args.metrics_addr)
        .with_context(|| format!("binding metrics on {}", args.metrics_addr))?;
    let server = Server::new(
        Endpoint::Metrics,
        Limits::with_cap(METRICS_MAX_CONNECTIONS),
        serve_metrics,
    );
    tokio::spawn(exporter::serve(
        metrics_listener,
        Arc::new(registry),
        server,
    ));

    let exit = process.run(shutdown).await?;
    if !exit.drained {
        warn!(
            drain_timeout_secs = args.drain_timeout_secs,
            "connections still open at the drain timeout were closed"
        );
    }
    Ok(())
}

/// `/metrics` with `SO_REUSEPORT`: a successor the agent starts before it drains this proxy
/// (a hitless restart) binds the same address; during the overlap a scrape reaches either.
fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

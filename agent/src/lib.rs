//! `sockmesh-agent`: the per-node daemon. Loads and attaches the kernel programs (or adopts a
//! previous agent's), compiles the mesh config into the kernel's tables and keeps them in sync.
//!
//! A library only so that its binary (src/main.rs, which calls [`main`]) and the fuzz
//! targets (feature `fuzzing`, [`fuzzing`]) can share it: nothing here is an API, so `pub`
//! only ever means `pub(crate)`; the lint keeps it that way (a `pub` item reads as if other
//! crates used it).
#![warn(unreachable_pub)]

mod admin;
mod config_source;
mod dataplane;
mod diagnose;
mod engine;
mod follow;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod health;
mod http_gate;
mod l7;
mod loader;
mod metrics;
mod netfault;
mod runtime;
mod signals;
mod slo;
mod status;
mod tables;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sockmesh-agent", version, about = "sockmesh node agent")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file offline; exits non-zero with the field path and reason.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Drop a share of SYNs or data segments leaving a cgroup (drills and tests; no netem).
    Netfault(netfault::NetfaultArgs),
    /// Detach and remove everything pinned under --bpffs.
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/sockmesh")]
        bpffs: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Mesh config (YAML). Without it (and without --control) the embedded default config is used.
    #[arg(long, env = "SOCKMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Follow the control plane at URL (https://HOST:PORT, http://HOST:PORT with
    /// --insecure-plaintext, or unix:PATH) instead of a file.
    #[arg(
        long,
        value_name = "URL",
        env = "SOCKMESH_CONTROL_URL",
        conflicts_with = "config"
    )]
    control: Option<String>,
    /// File whose first line is the control plane's bearer token (or set SOCKMESH_CONTROL_TOKEN).
    #[arg(long, value_name = "FILE", env = "SOCKMESH_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,
    /// The CA bundle (PEM) that signed the control plane's certificate, for an https://
    /// --control URL.
    #[arg(long, value_name = "FILE", env = "SOCKMESH_CONTROL_CA")]
    control_ca: Option<PathBuf>,
    /// Accept an http:// --control URL: the token and the configs travel in the clear.
    #[arg(long)]
    insecure_plaintext: bool,
    /// This agent's name at the control plane [default: the host name].
    #[arg(long, env = "SOCKMESH_NODE_NAME")]
    node_name: Option<String>,
    /// cgroup v2 directory to attach to [default: the cgroup2 mount point from /proc/mounts].
    #[arg(long, env = "SOCKMESH_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Where programs, maps and links are pinned.
    #[arg(long, env = "SOCKMESH_BPFFS", default_value = "/sys/fs/bpf/sockmesh")]
    bpffs: PathBuf,
    /// Runtime state directory.
    #[arg(long, env = "SOCKMESH_STATE_DIR", default_value = "/run/sockmesh")]
    state_dir: PathBuf,
    /// Admin API unix socket (mode 0600) [default: <state-dir>/admin.sock].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    watch_interval_ms: u64,
    /// Prometheus metrics endpoint (GET /metrics).
    #[arg(long, env = "SOCKMESH_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    metrics_addr: std::net::SocketAddr,
    /// Also serve the admin API on TCP (requires --admin-token-file).
    #[arg(long, env = "SOCKMESH_ADMIN_ADDR", requires = "admin_token_file")]
    admin_addr: Option<std::net::SocketAddr>,
    /// File whose first line is the bearer token TCP admin clients must present: the read
    /// credential (every GET).
    #[arg(long, env = "SOCKMESH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// File whose first line is the admin API's fault credential: reads and
    /// `POST /v1/fault` over TCP. Without it, faults can only be injected on the unix socket.
    #[arg(long, env = "SOCKMESH_ADMIN_FAULT_TOKEN_FILE", requires = "admin_addr")]
    admin_fault_token_file: Option<PathBuf>,
    /// Most distinct caller workloads used as metric label values; the rest become `other`.
    #[arg(long, default_value_t = 64)]
    max_callers: usize,
    /// Most (service, backend) label sets of the per-backend series; the rest fold into
    /// `backend="other"`. Series of backends that left the config go after their drain grace.
    #[arg(long, default_value_t = signals::series::DEFAULT_MAX_SERIES)]
    max_series: usize,
    /// Attach the observation programs (sock_ops, tracepoints). `false` routes only; it
    /// exists to measure what observation costs. Without sock_ops no close is seen, so
    /// `least_conn` counts only grow and the policy degrades to fewest connections ever.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    observe: bool,
    /// This node's zone, for services with `locality:`: callers that are not a workload with
    /// a `zone:` of its own are in this zone. Without it they have no zone preference.
    #[arg(long, env = "SOCKMESH_ZONE", value_parser = parse_zone)]
    zone: Option<String>,
    #[command(flatten)]
    http: sockmesh_serve::HttpTimeoutArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
}

/// The node's L7 proxy, for `protocol: http` services (docs/http-services.md).
#[derive(Args)]
struct ProxyArgs {
    /// Who runs the L7 proxy: `spawn` (the agent starts `sockmesh-proxy` and restarts it),
    /// `external` (it runs on its own, e.g. its own container, and connects to
    /// `<state-dir>/proxy.sock`), `off` (configs with http services are refused).
    #[arg(
        long = "proxy",
        env = "SOCKMESH_PROXY",
        value_enum,
        default_value = "spawn"
    )]
    proxy_mode: l7::ProxyMode,
    /// The proxy binary for `--proxy spawn` [default: `sockmesh-proxy` beside this binary].
    #[arg(long = "proxy-bin", env = "SOCKMESH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// Where http services' connections are sent: one port, at most one IPv4 and one IPv6
    /// address (port 0: one the kernel picks). The agent binds them and hands them to the
    /// proxy; they are bound when the first http service appears.
    #[arg(
        long = "proxy-listen",
        env = "SOCKMESH_PROXY_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:15001,[::1]:15001"
    )]
    proxy_listen: Vec<std::net::SocketAddr>,
    /// The spawned proxy's /metrics (request metrics).
    #[arg(
        long = "proxy-metrics-addr",
        env = "SOCKMESH_PROXY_METRICS_ADDR",
        default_value = "127.0.0.1:9478"
    )]
    proxy_metrics_addr: std::net::SocketAddr,
}

impl ProxyArgs {
    /// One port, at most one address per family.
    fn check(&self) -> Result<()> {
        let v4 = self.proxy_listen.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.proxy_listen.len() - v4;
        anyhow::ensure!(
            !self.proxy_listen.is_empty() && v4 <= 1 && v6 <= 1,
            "--proxy-listen: one or two addresses, at most one IPv4 and one IPv6"
        );
        let port = self.proxy_listen[0].port();
        anyhow::ensure!(
            self.proxy_listen.iter().all(|a| a.port() == port),
            "--proxy-listen: every address on the same port (the kernel sends to one port)"
        );
        Ok(())
    }
}

fn parse_zone(zone: &str) -> Result<String, String> {
    sockmesh_model::check_zone(zone).map(|()| zone.to_owned())
}

/// The agent's command line: parses the arguments and runs what they ask for.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Netfault(args)) => netfault::run(args),
        Some(Command::Cleanup { bpffs }) => loader::cleanup(&bpffs).map(|n| {
            eprintln!("removed {n} pins under {}", bpffs.display());
        }),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &PathBuf) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = sockmesh_model::parse_config(&text)?;
    // Also compile it: capacity limits of the kernel tables are checked here too.
    tables::plan(
        &cfg,
        &tables::Overlay::new(),
        &tables::KernelState::default(),
    )?;
    println!(
        "{}: ok ({} services, fingerprint {})",
        path.display(),
        cfg.services.len(),
        cfg.fingerprint()
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    // Before anything opens descriptors: sockets, probes, map and cgroup files.
    sockmesh_serve::fd_limit::raise_nofile_logged();
    args.proxy.check()?;
    let cgroup2_root = loader::cgroup2_mount()?;
    let cgroup = args.cgroup.unwrap_or_else(|| cgroup2_root.clone());
    // The same rules as the control plane's token file: first line, trimmed, printable.
    let admin_token = match &args.admin_token_file {
        Some(f) => Some(sockmesh_model::Token::read_file(f)?),
        None => None,
    };
    let admin_fault_token = match &args.admin_fault_token_file {
        Some(f) => Some(sockmesh_model::Token::read_file(f)?),
        None => None,
    };
    if admin_fault_token.is_some() && admin_fault_token == admin_token {
        anyhow::bail!(
            "--admin-fault-token-file holds the same token as --admin-token-file: every reader \
             could inject faults; give the fault credential a token of its own"
        );
    }
    let admin_socket = args
        .admin_socket
        .unwrap_or_else(|| args.state_dir.join("admin.sock"));
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => follow::default_node_name()?,
    };
    let control = match &args.control {
        Some(url) => Some(follow_options(
            url,
            ControlTrust {
                token_file: args.control_token_file.as_deref(),
                ca_file: args.control_ca.as_deref(),
                insecure_plaintext: args.insecure_plaintext,
            },
            args.node_name.clone(),
            &args.state_dir,
        )?),
        None => None,
    };
    let proxy_maps = loader::PinLayout::new(&args.bpffs).maps;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(runtime::run(runtime::RunOptions {
        config: args.config,
        cgroup,
        cgroup2_root,
        bpffs: args.bpffs,
        admin_socket,
        admin_addr: args.admin_addr,
        admin_token,
        admin_fault_token,
        metrics_addr: args.metrics_addr,
        max_callers: args.max_callers,
        max_series: args.max_series,
        observe: args.observe,
        zone: args.zone,
        node,
        control,
        watch_interval: Duration::from_millis(args.watch_interval_ms),
        http: args.http,
        proxy: l7::ProxyOptions {
            mode: args.proxy.proxy_mode,
            bin: args.proxy.proxy_bin,
            listen: args.proxy.proxy_listen,
            metrics_addr: args.proxy.proxy_metrics_addr,
            socket: args.state_dir.join("proxy.sock"),
            maps: proxy_maps,
            observe: args.observe,
        },
    }))
}

/// How the agent trusts the control plane: `--control-token-file`, `--control-ca`,
/// `--insecure-plaintext`.
struct ControlTrust<'a> {
    token_file: Option<&'a std::path::Path>,
    ca_file: Option<&'a std::path::Path>,
    insecure_plaintext: bool,
}

/// `--control` and its companions, checked before anything touches the kernel.
fn follow_options(
    url: &str,
    trust: ControlTrust<'_>,
    node_name: Option<String>,
    state_dir: &std::path::Path,
) -> Result<follow::FollowOptions> {
    use sockmesh_model::{check_agent_name, ControlAddress, Token, TokenSource};
    let address = ControlAddress::parse(url)?;
    if address.is_plaintext_tcp() && !trust.insecure_plaintext {
        anyhow::bail!(
            "--control {url}: the control channel is plain http; pass an https:// URL with \
             --control-ca, or --insecure-plaintext to accept it"
        );
    }
    let tls = match (&address, trust.ca_file) {
        (ControlAddress::Tcp { tls: true, .. }, Some(ca)) => {
            Some(sockmesh_tls::ClientTls::from_ca_file(ca).context("--control-ca")?)
        }
        (ControlAddress::Tcp { tls: true, .. }, None) => anyhow::bail!(
            "--control {url} needs --control-ca FILE (or SOCKMESH_CONTROL_CA): the CA that \
             signed the control plane's certificate"
        ),
        _ => None,
    };
    // A file is read again whenever it changes: a projected ServiceAccount token rotates.
    let token = match trust.token_file {
        Some(f) => Some(TokenSource::file(f)?),
        None => match std::env::var("SOCKMESH_CONTROL_TOKEN") {
            Ok(text) => Some(TokenSource::fixed(Token::new(
                &text,
                "in SOCKMESH_CONTROL_TOKEN",
            )?)),
            Err(_) => None,
        },
    };
    if matches!(address, ControlAddress::Tcp { .. }) && token.is_none() {
        anyhow::bail!(
            "--control {url} needs --control-token-file (or SOCKMESH_CONTROL_TOKEN): \
             the control plane's TCP API always requires a token"
        );
    }
    let node = match node_name {
        Some(n) => n,
        None => follow::default_node_name()?,
    };
    check_agent_name(&node).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    Ok(follow::FollowOptions {
        address,
        token,
        tls,
        node,
        state_dir: state_dir.to_owned(),
        watch_timeout: Duration::from_secs(sockmesh_model::protocol::DEFAULT_WATCH_TIMEOUT_SECS),
    })
}

//! `sockmesh-control`: serves the mesh's desired state to every node's agent, versioned,
//! with history and rollback. Reference: docs/control-plane.md.
//!
//! This file parses flags, sets up logging and the runtime, and stops on SIGTERM/SIGINT;
//! the server is the `sockmesh_control` library. `sockmesh-control tls init` writes a CA
//! and a server certificate for the API's TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sockmesh_control::{FileSource, ServerOptions, Source, TlsFiles, DEFAULT_KEEP};
use sockmesh_model::Token;
use tokio::signal::unix::{signal, SignalKind};
use tracing::warn;

/// mimalloc instead of glibc's malloc, as the agent: at 10,000 services a config change
/// frees and allocates whole configs, and glibc spent a third of the control plane's CPU
/// in malloc, free and consolidation during churn (`perf`, `cargo xtask bench --scale`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Environment variable holding the token when no --token-file is given.
const TOKEN_ENV: &str = "SOCKMESH_CONTROL_TOKEN";

#[derive(Parser)]
#[command(
    name = "sockmesh-control",
    version,
    about = "Serve the mesh's desired state to sockmesh agents: versioned, with history and rollback",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the desired state comes from: the `--config` file, or the Kubernetes API
    /// (Services, EndpointSlices, Pods and MeshPolicies of enrolled namespaces; in a pod its
    /// service account, elsewhere KUBECONFIG or ~/.kube/config).
    #[arg(long, value_enum, env = "SOCKMESH_CONTROL_SOURCE", default_value_t = SourceKind::File)]
    source: SourceKind,
    /// Mesh config (YAML), watched for changes; an invalid edit is refused and never served.
    /// Required with `--source file`.
    #[arg(long, env = "SOCKMESH_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Serve the API on TCP (repeatable); every request needs the bearer token, and the
    /// listener needs --tls-cert (or --insecure-plaintext).
    #[arg(long, value_name = "IP:PORT")]
    listen: Vec<SocketAddr>,
    /// The TCP API's certificate chain (PEM); re-read when it changes.
    #[arg(
        long,
        value_name = "FILE",
        env = "SOCKMESH_CONTROL_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); re-read when it changes.
    #[arg(
        long,
        value_name = "FILE",
        env = "SOCKMESH_CONTROL_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Serve --listen in plain HTTP when no --tls-cert is given: the token and the configs
    /// travel in the clear (tests, or a network that is already encrypted).
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
    /// Serve the API on a unix socket, mode 0600 (no token: file permissions guard it).
    #[arg(long, value_name = "PATH")]
    listen_unix: Option<PathBuf>,
    /// File whose first line is the bearer token (or set SOCKMESH_CONTROL_TOKEN).
    #[arg(long, value_name = "FILE", env = "SOCKMESH_CONTROL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Per-node credentials: a file of `NODE TOKEN` lines (tokens of 16 characters or
    /// more). A node's token may only snapshot, watch and ack as that node; the
    /// --token-file token is the operator's. Re-read when it changes.
    #[arg(long, value_name = "FILE", env = "SOCKMESH_CONTROL_NODE_TOKENS")]
    node_tokens: Option<PathBuf>,
    /// Per-node credentials on Kubernetes: a bearer token that is no other credential is
    /// asked of the Kubernetes API (a TokenReview, with this process's kube credentials) and
    /// taken as the node the API server says the agent's pod runs on (Kubernetes 1.30+).
    /// Only the ServiceAccounts of --kube-agent-service-account, only for
    /// --kube-token-audience.
    #[arg(long, env = "SOCKMESH_CONTROL_KUBE_TOKEN_REVIEW")]
    kube_token_review: bool,
    /// --kube-token-review: the audience agents' tokens are minted for.
    #[arg(long, value_name = "AUDIENCE", default_value = sockmesh_control::credentials::review::DEFAULT_AUDIENCE)]
    kube_token_audience: String,
    /// --kube-token-review: the agents' ServiceAccount as NAMESPACE/NAME (repeatable).
    #[arg(long, value_name = "NAMESPACE/NAME", default_value = sockmesh_control::credentials::review::DEFAULT_AGENT_SERVICE_ACCOUNT)]
    kube_agent_service_account: Vec<String>,
    /// --kube-token-review: how long an accepted token is taken without asking the API
    /// server again, in seconds: the most a deleted pod's token keeps working.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    kube_token_review_cache_secs: u64,
    /// Prometheus `GET /metrics` and `GET /ready`.
    #[arg(
        long,
        env = "SOCKMESH_CONTROL_METRICS_ADDR",
        default_value = "127.0.0.1:9479"
    )]
    metrics_addr: SocketAddr,
    /// Where revisions are stored, so versions, history and rollbacks survive a restart
    /// [default: none, in memory only].
    #[arg(long, env = "SOCKMESH_CONTROL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How many versions are kept for history and rollback.
    #[arg(long, default_value_t = DEFAULT_KEEP as u64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    keep: u64,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    watch_interval_ms: u64,
    /// Kubernetes source: quiet time after a Service, EndpointSlice, Pod or Node change
    /// before a new config is built (changes that arrive together become one version), in
    /// milliseconds. Such a rebuild maps only the Services touched.
    #[arg(long, default_value_t = 25)]
    kube_debounce_ms: u64,
    /// Kubernetes source: the quiet time when the whole cluster must be mapped again (a
    /// Namespace or MeshPolicy changed), in milliseconds; at least --kube-debounce-ms.
    #[arg(long, default_value_t = 200)]
    kube_whole_debounce_ms: u64,
    /// Kubernetes source: the kubelets' cgroup driver, which names the pod cgroups that
    /// workloads point at: systemd or cgroupfs.
    #[arg(long, default_value = "systemd")]
    kube_cgroup_driver: String,
    /// Kubernetes source: the kubelets' --cgroup-root, prefix of the pod cgroups below the
    /// cgroup2 mount [default: none].
    #[arg(long, default_value = "")]
    kube_cgroup_root: String,
    #[command(flatten)]
    http: sockmesh_serve::HttpTimeoutArgs,
    /// Most connections each API listener holds; at the cap the longest-idle one makes room
    /// for a new one, and a new one is refused only when every one has a request running.
    #[arg(long, default_value_t = sockmesh_control::DEFAULT_API_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    api_max_connections: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates for the API's TLS.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a CA (ca.pem, ca-key.pem) and a server certificate it signs (server.pem,
    /// server-key.pem) into DIR. An existing CA there is reused, so running it again
    /// renews the server certificate under the CA the agents already trust.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A DNS name or IP address agents use to reach the control plane (repeatable):
        /// the host of their --control URL.
        #[arg(long = "name", value_name = "HOST", required = true)]
        names: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// The `--config` file, re-read every --watch-interval-ms.
    File,
    /// The Kubernetes API (needs a build with the `kubernetes` feature, the default).
    Kubernetes,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Tls(TlsCommand::Init { dir, names })) => tls_init(dir, names),
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Every agent holds a connection: raise the descriptor limit before serving any.
    sockmesh_serve::fd_limit::raise_nofile_logged();
    let token = match &cli.token_file {
        Some(path) => Some(Token::read_file(path)?),
        None => match std::env::var(TOKEN_ENV) {
            Ok(text) => Some(Token::new(&text, &format!("in {TOKEN_ENV}"))?),
            Err(_) => None,
        },
    };
    let file = match (cli.source, &cli.config) {
        (SourceKind::File, Some(path)) => Some(FileSource::new(
            path.clone(),
            Duration::from_millis(cli.watch_interval_ms.max(10)),
        )),
        (SourceKind::File, None) => {
            bail!("--config FILE is required with the file source (or use --source kubernetes)")
        }
        (SourceKind::Kubernetes, Some(_)) => {
            bail!("--config is for the file source; --source kubernetes reads the cluster")
        }
        (SourceKind::Kubernetes, None) => None,
    };
    let kube = kube_options(&cli)?;
    let review_policy = match cli.kube_token_review {
        true => Some(
            sockmesh_control::credentials::ReviewPolicy::new(
                &cli.kube_token_audience,
                &cli.kube_agent_service_account,
            )
            .map(|policy| sockmesh_control::credentials::ReviewPolicy {
                accepted_ttl: Duration::from_secs(cli.kube_token_review_cache_secs),
                ..policy
            })
            .map_err(|e| anyhow::anyhow!("--kube-agent-service-account: {e}"))?,
        ),
        false => None,
    };
    let mut opts = ServerOptions {
        listen: cli.listen,
        listen_unix: cli.listen_unix.clone(),
        token,
        tls: match (cli.tls_cert, cli.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        },
        insecure_plaintext: cli.insecure_plaintext,
        node_tokens: cli.node_tokens,
        token_review: None,
        metrics_addr: cli.metrics_addr,
        state_dir: cli.state_dir,
        keep: cli.keep as usize,
        http: cli.http,
        api_max_connections: cli.api_max_connections as usize,
    };
    // The work is a few long-polls and a file read per interval: two threads are plenty.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        if let Some(policy) = review_policy {
            opts.token_review = Some((token_reviewer().await?, policy));
        }
        let source: Box<dyn Source> = match file {
            Some(file) => Box::new(file),
            None => kube_source(kube).await?,
        };
        tokio::select! {
            r = sockmesh_control::run(source, opts) => r.map_err(anyhow::Error::from),
            _ = term.recv() => { warn!("SIGTERM: shutting down"); Ok(()) }
            _ = int.recv() => { warn!("SIGINT: shutting down"); Ok(()) }
        }
    });
    if let Some(path) = &cli.listen_unix {
        let _ = std::fs::remove_file(path);
    }
    // Pending long-polls end with their connections; agents reconnect to the next process.
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

/// `sockmesh-control tls init`.
fn tls_init(dir: &std::path::Path, names: &[String]) -> Result<()> {
    let written = sockmesh_tls::generate::write_dir(dir, names)?;
    let ca = if written.reused_ca { "kept" } else { "wrote" };
    println!(
        "{ca} the CA {} (its key {}: keep it offline)",
        written.ca_cert.display(),
        written.ca_key.display()
    );
    println!(
        "wrote {} and {} for {}",
        written.server_cert.display(),
        written.server_key.display(),
        names.join(", ")
    );
    println!(
        "serve:  sockmesh-control --tls-cert {} --tls-key {} ...",
        written.server_cert.display(),
        written.server_key.display()
    );
    let host = match names[0].contains(':') {
        true => format!("[{}]", names[0]),
        false => names[0].clone(),
    };
    println!(
        "follow: sockmesh-agent --control https://{host}:PORT --control-ca {} ...",
        written.ca_cert.display()
    );
    Ok(())
}

#[cfg(feature = "kubernetes")]
type KubeOptions = sockmesh_control::kube_source::KubeOptions;
/// Nothing to configure in a build without the Kubernetes source.
#[cfg(not(feature = "kubernetes"))]
struct KubeOptions;

#[cfg(feature = "kubernetes")]
fn kube_options(cli: &Cli) -> Result<KubeOptions> {
    use sockmesh_control::kube_source::{CgroupDriver, MapOptions};
    let cgroup_driver: CgroupDriver = cli
        .kube_cgroup_driver
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--kube-cgroup-driver: {e}"))?;
    let debounce = Duration::from_millis(cli.kube_debounce_ms);
    let whole_debounce = Duration::from_millis(cli.kube_whole_debounce_ms);
    Ok(KubeOptions {
        debounce,
        whole_debounce,
        max_delay: (debounce.max(whole_debounce) * 10).max(Duration::from_secs(2)),
        map: MapOptions {
            cgroup_driver,
            cgroup_root: cli.kube_cgroup_root.clone(),
        },
    })
}

#[cfg(not(feature = "kubernetes"))]
fn kube_options(_: &Cli) -> Result<KubeOptions> {
    Ok(KubeOptions)
}

/// The Kubernetes source with kube's default client configuration.
#[cfg(feature = "kubernetes")]
async fn kube_source(opts: KubeOptions) -> Result<Box<dyn Source>> {
    use sockmesh_control::kube_source::KubeSource;
    let source = KubeSource::from_default_config(opts)
        .await
        .context("connecting to Kubernetes (in-cluster service account, or KUBECONFIG)")?;
    Ok(Box::new(source))
}

/// The TokenReview client of --kube-token-review, with kube's default client configuration.
#[cfg(feature = "kubernetes")]
async fn token_reviewer() -> Result<std::sync::Arc<dyn sockmesh_control::credentials::TokenReviewer>>
{
    let client = kube::Client::try_default().await.context(
        "--kube-token-review: connecting to Kubernetes (in-cluster service account, or KUBECONFIG)",
    )?;
    Ok(std::sync::Arc::new(
        sockmesh_control::credentials::kube_review::KubeReviewer::new(client),
    ))
}

#[cfg(not(feature = "kubernetes"))]
async fn token_reviewer() -> Result<std::sync::Arc<dyn sockmesh_control::credentials::TokenReviewer>>
{
    bail!("--kube-token-review needs a sockmesh-control built with the `kubernetes` feature")
}

#[cfg(not(feature = "kubernetes"))]
async fn kube_source(_: KubeOptions) -> Result<Box<dyn Source>> {
    bail!("this sockmesh-control was built without the `kubernetes` feature: use --source file")
}

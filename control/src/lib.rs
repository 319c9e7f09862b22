//! `sockmesh-control`: holds the mesh's desired state, versions it, and serves it to every
//! node's agent. docs/control-plane.md is the operator and protocol reference.
//!
//! ```text
//! Source (file | Kubernetes) ──SourceEvent──> Hub ──watch channel──> API long-polls
//!                                                   │ History: global version, per-service
//!                                                   │ versions, last K revisions, rollback
//!                                                   │ Agents: acks, applied version, sync age
//!                                                   └──> Store (--state-dir), metrics
//! ```
//!
//! - [`source`]: the [`Source`] trait and [`FileSource`]. A source validates with the same
//!   [`parse_config`](sockmesh_model::parse_config) as the agent; what does not validate is a
//!   [`SourceEvent::Rejected`] with its field path, counted and never served.
//! - `kube_source` (feature `kubernetes`): `KubeSource`, the same trait fed by the
//!   Kubernetes API (Services, EndpointSlices, Pods, Namespaces, MeshPolicies).
//! - [`history`]: [`History`] and [`Revision`], pure: versions, diffs
//!   ([`diff`](diff::diff)), eviction, rollback.
//! - [`agents`]: per-agent acks and sync age, pure.
//! - [`hub`]: the shared state tying them together; [`store`]: revisions on disk.
//! - [`api`], [`listen`]: HTTPS on TCP (bearer token) and a unix socket (0600), through the
//!   hardened accept loop of `sockmesh-serve`; [`watch_cap`]: long-polls per agent;
//!   [`credentials`]: who a bearer token is (operator or one node) and what it may ask.
//! - [`tls`]: the TCP API's TLS (`--tls-cert`), reloaded when the files change.
//! - [`metrics`]: the `sockmesh_control_*` series.
//!
//! What travels on the wire (paths, bodies, the request decoder, the token, the exposition
//! formats) is not here but in `sockmesh-model`, which the agent and the CLI share; the agent
//! never depends on this crate.

pub mod agents;
pub mod api;
pub mod credentials;
pub mod diff;
pub mod history;
pub mod hub;
#[cfg(feature = "kubernetes")]
pub mod kube_source;
pub mod listen;
pub mod metrics;
pub mod source;
pub mod store;
pub mod tls;
pub mod watch_cap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use history::{History, Revision, DEFAULT_KEEP};
pub use hub::Hub;
pub use source::{FileSource, FileWatch, Source, SourceError, SourceEvent};

use sockmesh_model::Token;
use sockmesh_serve::{Endpoint, ServeMetrics, Server};
use tracing::info;

/// Everything [`run`] needs; the binary fills it from flags.
#[derive(Debug)]
pub struct ServerOptions {
    /// TCP API listeners; each requires `token` or `node_tokens`, and `tls` unless
    /// `insecure_plaintext`.
    pub listen: Vec<SocketAddr>,
    /// The unix socket API (mode 0600, no token).
    pub listen_unix: Option<PathBuf>,
    /// The operator credential (`--token-file`): every request.
    pub token: Option<Token>,
    /// The TCP API's certificate and key (PEM), re-read when they change.
    pub tls: Option<TlsFiles>,
    /// `--insecure-plaintext`: TCP listeners without `tls` serve plain HTTP.
    pub insecure_plaintext: bool,
    /// The per-node credentials file (`--node-tokens`), re-read when it changes.
    pub node_tokens: Option<PathBuf>,
    /// `--kube-token-review`: nodes' credentials are their agents' ServiceAccount tokens,
    /// vouched for by this reviewer (the Kubernetes API) under this policy.
    pub token_review: Option<(
        Arc<dyn credentials::TokenReviewer>,
        credentials::ReviewPolicy,
    )>,
    pub metrics_addr: SocketAddr,
    /// Where revisions are stored; `None` keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    pub keep: usize,
    /// Header and idle timeouts of every endpoint.
    pub http: sockmesh_serve::HttpTimeoutArgs,
    /// Connection cap of each API listener ([`DEFAULT_API_MAX_CONNECTIONS`]).
    pub api_max_connections: usize,
}

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The API's connection cap: an agent has one connection open at a time (a new one per
/// snapshot, watch or ack; two for a moment when it restarts), so 16,384 covers a
/// 5,000-node cluster three times over with operators on top, and bounds the descriptors
/// (the binary raises its limit to the hard one). At the cap the longest-idle connection
/// makes room; long-polls in progress are never taken.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 16_384;
/// How often the `--node-tokens` file is checked for changes.
const NODE_TOKENS_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// The metrics endpoint's cap: Prometheus and probes hold a connection for milliseconds.
const METRICS_MAX_CONNECTIONS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no API listener: give --listen ADDR (with --token-file) and/or --listen-unix PATH")]
    NoListener,
    #[error("--listen needs a token (the operator's --token-file or SOCKMESH_CONTROL_TOKEN, --node-tokens, or --kube-token-review): the TCP API never runs without one")]
    NoToken,
    #[error("--listen needs TLS: give --tls-cert FILE and --tls-key FILE (`sockmesh-control tls init` makes a pair), or --insecure-plaintext to send the token and configs in the clear")]
    NoTls,
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] sockmesh_tls::TlsError),
    #[error(transparent)]
    NodeTokens(#[from] credentials::NodeTokensError),
    #[error("binding {what}: {cause}")]
    Bind { what: String, cause: std::io::Error },
    #[error("state dir: {0}")]
    Store(#[from] store::StoreError),
    #[error("the initial config from {source_name} is invalid and no stored revision exists to serve instead: {cause}")]
    InitialInvalid {
        source_name: String,
        cause: SourceError,
    },
}

/// Runs the control plane until the process is stopped: reads the source's first state
/// (or serves the stored head when that one is invalid), binds every listener, then
/// follows the source forever.
pub async fn run(mut source: Box<dyn Source>, opts: ServerOptions) -> Result<(), ServerError> {
    if opts.listen.is_empty() && opts.listen_unix.is_none() {
        return Err(ServerError::NoListener);
    }
    if !opts.listen.is_empty()
        && opts.token.is_none()
        && opts.node_tokens.is_none()
        && opts.token_review.is_none()
    {
        return Err(ServerError::NoToken);
    }
    if !opts.listen.is_empty() && opts.tls.is_none() && !opts.insecure_plaintext {
        return Err(ServerError::NoTls);
    }
    let server_tls = match &opts.tls {
        Some(files) => Some(Arc::new(sockmesh_tls::ServerTls::load(
            &files.cert,
            &files.key,
        )?)),
        None => None,
    };
    let store = opts
        .state_dir
        .as_deref()
        .map(store::Store::open)
        .transpose()?;
    let hub = Arc::new(Hub::new(source.describe(), opts.keep, store)?);
    let mut credentials =
        credentials::Credentials::load(opts.token.clone(), opts.node_tokens.as_deref())?;
    if let Some((reviewer, policy)) = &opts.token_review {
        credentials = credentials.with_reviews(
            credentials::Reviews::new(reviewer.clone(), policy.clone())
                .with_metrics(hub.metrics.token_reviews.clone()),
        );
    }
    let credentials = Arc::new(credentials);

    // The first state decides whether there is anything to serve.
    let first = source.next_event().await;
    if let SourceEvent::Rejected(cause) = &first {
        if hub.head().is_none() {
            return Err(ServerError::InitialInvalid {
                source_name: source.describe(),
                cause: cause.clone(),
            });
        }
    }
    hub.on_source(first);

    let bind = |what: String| move |cause| ServerError::Bind { what, cause };
    let metrics_listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(bind(format!("metrics on {}", opts.metrics_addr)))?;
    let mut listening = api::Listening {
        metrics: metrics_listener.local_addr().ok().map(|a| a.to_string()),
        unix: opts.listen_unix.as_ref().map(|p| p.display().to_string()),
        ..api::Listening::default()
    };
    let mut tcp = Vec::new();
    for addr in &opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind(format!("the API on {addr}")))?;
        listening.tcp.push(
            listener
                .local_addr()
                .map_or(addr.to_string(), |a| a.to_string()),
        );
        tcp.push(listener);
    }
    let unix = match &opts.listen_unix {
        Some(path) => Some(
            listen::bind_unix(path).map_err(bind(format!("the API socket {}", path.display())))?,
        ),
        None => None,
    };
    let listening = Arc::new(listening);
    let api = |credentials| api::Api {
        hub: hub.clone(),
        credentials,
        listening: listening.clone(),
    };
    let mut registry = metrics::registry(&hub);
    let serve_metrics = ServeMetrics::new(&mut registry);
    let tls_metrics = tls::TlsMetrics::register(&mut registry);
    let server =
        |endpoint, cap| Server::new(endpoint, opts.http.limits(cap), serve_metrics.clone());
    for listener in tcp {
        let (api, server) = (
            api(Some(credentials.clone())),
            server(Endpoint::Api, opts.api_max_connections),
        );
        match &server_tls {
            Some(tls) => tokio::spawn(listen::serve_tls(
                listener,
                tls::TlsUpgrade::new(tls),
                api,
                server,
            )),
            None => tokio::spawn(listen::serve(listener, api, server)),
        };
    }
    if let Some(tls) = &server_tls {
        tokio::spawn(tls::watch_reloads(tls.clone(), tls_metrics));
    }
    if let Some(listener) = unix {
        tokio::spawn(listen::serve(
            listener,
            api(None),
            server(Endpoint::Api, opts.api_max_connections),
        ));
    }
    if opts.node_tokens.is_some() {
        tokio::spawn(credentials.clone().follow(NODE_TOKENS_CHECK_EVERY));
    }
    tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::new(registry),
        hub.clone(),
        server(Endpoint::Metrics, METRICS_MAX_CONNECTIONS),
    ));
    info!(
        source = %hub.source(),
        listen = ?listening.tcp,
        tls = match (&server_tls, opts.listen.is_empty()) {
            (Some(tls), _) => tls.cert_file().display().to_string(),
            (None, true) => "-".to_owned(),
            (None, false) => "off (--insecure-plaintext)".to_owned(),
        },
        listen_unix = listening.unix.as_deref().unwrap_or("-"),
        metrics = listening.metrics.as_deref().unwrap_or("-"),
        state_dir = ?opts.state_dir,
        keep = opts.keep,
        node_tokens = credentials.nodes(),
        version = hub.head().map(|h| h.version),
        "sockmesh-control serving"
    );
    loop {
        hub.on_source(source.next_event().await);
    }
}

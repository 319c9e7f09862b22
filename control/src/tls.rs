//! The API's TLS (`--tls-cert`, `--tls-key`): tokio-rustls in the accept loop's
//! [`Upgrade`] seam, so the handshake runs in the connection's task under the header
//! timeout, and a watcher that re-reads the pair every [`RELOAD_INTERVAL`] when the files
//! change (a renewed Secret, cert-manager). A bad new pair is logged and counted, and the
//! pair before it keeps serving.
//!
//! `sockmesh_control_tls_reloads_total{result}`: `ok` or `error` per changed pair.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use sockmesh_serve::Upgrade;
use sockmesh_tls::{Reload, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tracing::{error, info};

/// How often the certificate files are checked for a change (a stat of each).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Wraps each accepted stream in TLS with the current pair.
#[derive(Clone)]
pub struct TlsUpgrade {
    acceptor: TlsAcceptor,
}

impl TlsUpgrade {
    pub fn new(tls: &ServerTls) -> Self {
        TlsUpgrade {
            acceptor: TlsAcceptor::from(tls.config()),
        }
    }
}

impl<Io> Upgrade<Io> for TlsUpgrade
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Out = TlsStream<Io>;
    async fn upgrade(&self, io: Io) -> io::Result<TlsStream<Io>> {
        self.acceptor.accept(io).await
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum ReloadResult {
    Ok,
    Error,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let text = match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        };
        std::fmt::Write::write_str(encoder, text)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// The reload counter, registered on the control plane's registry.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    reloads: Family<ReloadLabels, Counter>,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TlsMetrics::default();
        for result in [ReloadResult::Ok, ReloadResult::Error] {
            let _ = metrics.reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register(
            "tls_reloads",
            "Changes of the API's certificate files, by result: ok (the new pair serves the next handshakes) or error (refused; the previous pair keeps serving)",
            metrics.reloads.clone(),
        );
        metrics
    }
}

/// Checks the files every [`RELOAD_INTERVAL`] for ever.
pub async fn watch_reloads(tls: Arc<ServerTls>, metrics: TlsMetrics) {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match tls.reload_if_changed() {
            Reload::Unchanged => continue,
            Reload::Reloaded => {
                info!(cert = %tls.cert_file().display(), "TLS certificate reloaded; new handshakes use it");
                ReloadResult::Ok
            }
            Reload::Failed(e) => {
                error!(error = %e, "TLS certificate changed but cannot be used; the previous one keeps serving");
                ReloadResult::Error
            }
        };
        metrics
            .reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

//! The proxy process's own `GET /metrics`, on the hardened accept loop every endpoint of
//! sockmesh uses (`sockmesh-serve`), answering in the format the scraper asks for as the
//! agent and the control plane do. The registry is `sockmesh`-prefixed, so the request
//! families read as documented (`sockmesh_requests_total`, ...), next to:
//!
//! - `sockmesh_proxy_connections_total{event}`: connections the proxy accepted, by what
//!   became of them ([`ConnectionStats`]): `served`, `unresolved` (no kernel origin, or a
//!   service the targets do not have: closed at once), `silent` (nothing sent within the
//!   header timeout), `error` (an HTTP error ended it);
//! - `sockmesh_proxy_refused_total{reason}`: the errors that were refusals of bad input
//!   ([`crate::metrics::Refusals`]);
//! - the link's gauges and counters (`crate::process`) and the endpoint's own
//!   `sockmesh_http_connections_total{endpoint="metrics"}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sockmesh_serve::Server;
use tokio::net::TcpListener;

use crate::server::ConnectionStats;

/// The registry the proxy process serves: every family under `sockmesh_`.
pub fn registry() -> Registry {
    Registry::with_prefix("sockmesh")
}

/// The registry's exposition in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    sockmesh_serve::encode_registry(registry)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

/// Reads [`ConnectionStats`] at each scrape (the server counts into plain atomics).
#[derive(Debug)]
pub struct ConnectionCollector(pub Arc<ConnectionStats>);

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut family = encoder.encode_descriptor(
            "proxy_connections",
            "Connections the L7 proxy accepted, by what became of them: served, unresolved (no kernel origin or unknown service: closed), silent, error",
            None,
            MetricType::Counter,
        )?;
        for (event, value) in [
            ("served", &s.served),
            ("unresolved", &s.unresolved),
            ("silent", &s.silent),
            ("error", &s.errors),
        ] {
            let labels = EventLabels { event };
            ConstCounter::new(value.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        s.refused.encode(&mut encoder)
    }
}

/// Answers scrapes of `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, server: Server) {
    sockmesh_serve::serve_registry(
        listener,
        registry,
        server,
        sockmesh_model::exposition::negotiate,
    )
    .await
}

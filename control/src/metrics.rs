//! The control plane's Prometheus series, on `--metrics-addr` with `GET /ready` (no auth,
//! like every exporter and probe endpoint: bind it where only Prometheus and the kubelet
//! reach).
//!
//! - `sockmesh_control_config_version`: the head's version.
//! - `sockmesh_control_rejected_total`: source edits refused (never served).
//! - `sockmesh_control_updates_served_total{kind}`: versions sent to delta-reading agents as
//!   a `delta` or as a whole `snapshot`.
//! - `sockmesh_control_agent_version{agent}`: the version each agent last applied (0: none).
//! - `sockmesh_control_agent_sync_age_seconds{agent}`: 0 while the agent runs the head, else
//!   how long since the first version it lacks was made; alert when it stays above a bound.
//! - `sockmesh_control_watches_refused_total`: long-polls over the per-agent cap (429,
//!   `crate::watch_cap`).
//! - `sockmesh_control_requests_refused_total{reason}`: API requests refused:
//!   `unauthenticated` (401), `scope` or `identity_mismatch` (403; `crate::credentials`).
//! - `sockmesh_control_token_reviews_total{result}` and
//!   `sockmesh_control_token_review_cache_hits_total`: agents' ServiceAccount tokens asked
//!   of the API server, by result, and answered from the cache (`--kube-token-review`,
//!   `crate::credentials::review`).
//! - `sockmesh_control_http_connections_total{endpoint,event}` and
//!   `sockmesh_control_http_connections_open{endpoint}`: the API's and this endpoint's
//!   connections (sockmesh-serve, registered by `crate::run`).
//!
//! The per-agent series are computed at scrape time from the hub, so the age grows between
//! acks without anyone updating it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{gauge::ConstGauge, MetricType},
    registry::Registry,
};
use sockmesh_serve::Server;
use tokio::net::TcpListener;

use crate::credentials::review::{ReviewLabels, ReviewResult};
use crate::credentials::{RefusedLabels, RefusedReason};
use crate::hub::Hub;
use sockmesh_model::exposition;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Debug)]
struct AgentCollector {
    hub: Arc<Hub>,
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports = self.hub.agents();
        let mut m = enc.encode_descriptor(
            "agent_version",
            "The config version each agent last applied (0: none yet)",
            None,
            MetricType::Gauge,
        )?;
        for r in &reports {
            let labels = AgentLabels {
                agent: r.agent.clone(),
            };
            ConstGauge::new(r.applied_version.unwrap_or(0) as i64)
                .encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "agent_sync_age_seconds",
            "0 while an agent runs the head version, else seconds since the first version it lacks was made",
            None,
            MetricType::Gauge,
        )?;
        for r in &reports {
            let labels = AgentLabels {
                agent: r.agent.clone(),
            };
            ConstGauge::new(r.sync_age_seconds).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The registry behind `/metrics`: `sockmesh_control_*`.
pub fn registry(hub: &Arc<Hub>) -> Registry {
    let mut registry = Registry::with_prefix("sockmesh_control");
    registry.register(
        "config_version",
        "The version of the desired state served to agents (the head)",
        hub.metrics.config_version.clone(),
    );
    registry.register(
        "rejected",
        "Edits of the source refused by validation (never served)",
        hub.metrics.rejected.clone(),
    );
    registry.register(
        "updates_served",
        "Watch replies to agents that read deltas, by kind (delta, or snapshot when the agent's version is no longer kept)",
        hub.metrics.updates_served.clone(),
    );
    registry.register(
        "watches_refused",
        "Long-polls refused (429) because their agent already held the most watches one identity may",
        hub.metrics.watches_refused.clone(),
    );
    // Every reason is exported from the start, so a rate() over it has a 0 to start from.
    for reason in RefusedReason::ALL {
        drop(
            hub.metrics
                .requests_refused
                .get_or_create(&RefusedLabels { reason }),
        );
    }
    registry.register(
        "requests_refused",
        "API requests refused, by reason: unauthenticated (401), scope or identity_mismatch (403)",
        hub.metrics.requests_refused.clone(),
    );
    for result in ReviewResult::ALL {
        drop(
            hub.metrics
                .token_reviews
                .reviews
                .get_or_create(&ReviewLabels { result }),
        );
    }
    registry.register(
        "token_reviews",
        "Agents' ServiceAccount tokens asked of the Kubernetes API (--kube-token-review), by result: accepted, unauthenticated, audience, not_agent, no_node, error",
        hub.metrics.token_reviews.reviews.clone(),
    );
    registry.register(
        "token_review_cache_hits",
        "Bearer tokens answered from the token review cache without asking the Kubernetes API",
        hub.metrics.token_reviews.cache_hits.clone(),
    );
    registry.register_collector(Box::new(AgentCollector { hub: hub.clone() }));
    registry
}

/// Serves `GET /metrics` and `GET /ready` (200 once there is a head to serve, else 503)
/// through the hardened loop of sockmesh-serve.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, hub: Arc<Hub>, server: Server) {
    server
        .serve(listener, move |req: Request<Incoming>| {
            let reply = answer(&req, &registry, &hub);
            async move { reply }
        })
        .await
}

fn answer(req: &Request<Incoming>, registry: &Registry, hub: &Hub) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry)
                .expect("writing to a String cannot fail");
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (ctype, body) = exposition::negotiate(accept, text);
            (StatusCode::OK, ctype, body)
        }
        "/ready" => match hub.head() {
            Some(head) => (
                StatusCode::OK,
                "text/plain",
                format!("ready: version {}\n", head.version),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no valid config yet\n".into(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics, readiness at /ready\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

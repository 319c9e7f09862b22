//! The questions the CLI can ask the agent: each is one admin endpoint and one table.
//! The one change it can ask for, a fault drill, is [`FaultDrill`](super::FaultDrill).

use serde_json::Value;

use super::render::{self, RenderError};

/// One `sockmesh` command's request, from `docs/agent-interface.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `GET /status`: readiness, pins, the applied config.
    Status,
    /// `GET /v1/services`: services and their slot tables.
    Services,
    /// `GET /v1/backends?service=NAME`: one service's backends with live stats.
    Backends { service: String },
    /// `GET /v1/workloads`: workloads and their CPU starvation.
    Workloads,
    /// `GET /v1/failures`: the most recent failed connects.
    Failures,
    /// `GET /v1/bans`: backends banned or being probed before they return.
    Bans,
    /// `GET /v1/circuits`: each service's circuit, panic mode, shedding and fault drill.
    Circuits,
    /// `GET /v1/lines`: connects per caller x service, the last 5 min and the 5 min before.
    Lines,
    /// `GET /v1/top`: services ranked by SLO burn, failure growth and latency growth.
    Top,
    /// `GET /v1/diagnose?service=NAME`: the likely causes of a service's trouble, ranked.
    Diagnose { service: String },
}

impl Query {
    /// The request target, query string percent-encoded.
    pub fn path(&self) -> String {
        match self {
            Query::Status => "/status".to_owned(),
            Query::Services => "/v1/services".to_owned(),
            Query::Backends { service } => {
                format!("/v1/backends?service={}", percent_encode(service))
            }
            Query::Workloads => "/v1/workloads".to_owned(),
            Query::Failures => "/v1/failures".to_owned(),
            Query::Bans => "/v1/bans".to_owned(),
            Query::Circuits => "/v1/circuits".to_owned(),
            Query::Lines => "/v1/lines".to_owned(),
            Query::Top => "/v1/top".to_owned(),
            Query::Diagnose { service } => {
                format!("/v1/diagnose?service={}", percent_encode(service))
            }
        }
    }

    /// The reply as the human table for this query.
    pub fn render_table(&self, reply: &Value) -> Result<String, RenderError> {
        match self {
            Query::Status => render::status(reply),
            Query::Services => render::services(reply),
            Query::Backends { .. } => render::backends(reply),
            Query::Workloads => render::workloads(reply),
            Query::Failures => render::failures(reply),
            Query::Bans => render::bans(reply),
            Query::Circuits => render::circuits(reply),
            Query::Lines => render::lines(reply),
            Query::Top => render::top(reply),
            Query::Diagnose { .. } => render::diagnose(reply),
        }
    }
}

/// Valid service names need no escaping, but the argument is whatever the operator typed,
/// and `a&b` or `a b` must reach the agent as a name it reports unknown, not as a broken
/// request. Everything but RFC 3986 unreserved characters is escaped.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_contract() {
        assert_eq!(Query::Status.path(), "/status");
        assert_eq!(Query::Services.path(), "/v1/services");
        assert_eq!(Query::Workloads.path(), "/v1/workloads");
        assert_eq!(Query::Failures.path(), "/v1/failures");
        assert_eq!(Query::Bans.path(), "/v1/bans");
        assert_eq!(Query::Circuits.path(), "/v1/circuits");
        assert_eq!(Query::Lines.path(), "/v1/lines");
        assert_eq!(Query::Top.path(), "/v1/top");
        assert_eq!(
            Query::Diagnose {
                service: "a b".into()
            }
            .path(),
            "/v1/diagnose?service=a%20b"
        );
        let backends = |s: &str| Query::Backends { service: s.into() }.path();
        assert_eq!(
            backends("web.prod_v2-1"),
            "/v1/backends?service=web.prod_v2-1"
        );
        assert_eq!(
            backends("a b&c=d/é"),
            "/v1/backends?service=a%20b%26c%3Dd%2F%C3%A9"
        );
    }
}

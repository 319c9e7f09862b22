//! `sockmesh fault`: the one request that changes the agent, a chaos drill that makes the
//! kernel refuse a share of a service's connects (`POST /v1/fault`).

use serde_json::{json, Value};

/// The endpoint a [`FaultDrill`] is posted to.
pub const FAULT_PATH: &str = "/v1/fault";

/// Refuse `refuse_percent` % of `service`'s connects; 0 ends the drill.
///
/// The agent is the judge of the value (0 to 100, or a 400 saying why not), so the CLI
/// sends what the operator typed. JSON has no NaN or infinity: the caller keeps those out.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultDrill {
    pub service: String,
    pub refuse_percent: f64,
}

impl FaultDrill {
    pub fn set(service: impl Into<String>, refuse_percent: f64) -> Self {
        FaultDrill {
            service: service.into(),
            refuse_percent,
        }
    }

    /// Ends the drill: refuse nothing.
    pub fn clear(service: impl Into<String>) -> Self {
        FaultDrill::set(service, 0.0)
    }

    /// The request body, `{"service": NAME, "refuse_percent": P}`.
    pub fn body(&self) -> Value {
        json!({"service": self.service, "refuse_percent": self.refuse_percent})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_follows_the_contract() {
        assert_eq!(
            FaultDrill::set("web", 25.0).body().to_string(),
            r#"{"refuse_percent":25.0,"service":"web"}"#
        );
        assert_eq!(FaultDrill::clear("web"), FaultDrill::set("web", 0.0));
        assert_eq!(FaultDrill::set("a\"b", 0.5).body()["service"], "a\"b");
    }
}

//! What each identity may ask. A node credential may read the config and report on itself:
//! snapshot, watch and ack, each as its own node only. History, the agents list and status
//! would tell a compromised node about the rest of the fleet and rollback would change
//! every node's routing, so those need the operator. Refusals are 403 with the reason and
//! counted in `sockmesh_control_requests_refused_total{reason}`, as is every 401.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use sockmesh_model::request::ApiRequest;

use super::Identity;

/// Why a request was refused: the label of `sockmesh_control_requests_refused_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusedReason {
    /// 401: no token, or one no credential has.
    Unauthenticated,
    /// 403: the credential's scope does not cover the request (a node asking for an
    /// operator's request).
    Scope,
    /// 403: a node credential naming another node (`agent=`, or an ack's `agent`).
    IdentityMismatch,
}

impl RefusedReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::Unauthenticated => "unauthenticated",
            RefusedReason::Scope => "scope",
            RefusedReason::IdentityMismatch => "identity_mismatch",
        }
    }

    pub const ALL: [RefusedReason; 3] = [
        RefusedReason::Unauthenticated,
        RefusedReason::Scope,
        RefusedReason::IdentityMismatch,
    ];
}

impl EncodeLabelValue for RefusedReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: RefusedReason,
}

/// A 403: why, and the message of the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusedReason,
    pub message: String,
}

/// Whether `identity` may make `request`.
pub fn authorize(identity: &Identity, request: &ApiRequest) -> Result<(), Refusal> {
    let Identity::Node(node) = identity else {
        return Ok(());
    };
    let as_itself = |verb: &str, claimed: Option<&str>| match claimed {
        Some(other) if other != &**node => Err(Refusal {
            reason: RefusedReason::IdentityMismatch,
            message: format!("node credential of {node} cannot {verb} as {other}"),
        }),
        _ => Ok(()),
    };
    let operator_only = |what: &str| {
        Err(Refusal {
            reason: RefusedReason::Scope,
            message: format!(
                "node credential of {node} cannot {what}: that needs the operator credential \
                 (the control plane's --token-file, or its unix socket)"
            ),
        })
    };
    match request {
        ApiRequest::Snapshot { agent, .. } => as_itself("read the snapshot", agent.as_deref()),
        ApiRequest::Watch { agent, .. } => as_itself("watch", agent.as_deref()),
        ApiRequest::Ack(ack) => as_itself("ack", Some(&ack.agent)),
        ApiRequest::Rollback(_) => operator_only("roll back"),
        ApiRequest::History => operator_only("read the history"),
        ApiRequest::Agents => operator_only("list the agents"),
        ApiRequest::Status => operator_only("read the status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_model::protocol::{Ack, RollbackRequest};
    use std::time::Duration;

    fn node(n: &str) -> Identity {
        Identity::Node(n.into())
    }

    fn ack(agent: &str) -> ApiRequest {
        ApiRequest::Ack(Ack {
            agent: agent.into(),
            version: 1,
            ok: true,
            error: None,
            fingerprint: None,
        })
    }

    fn watch(agent: Option<&str>) -> ApiRequest {
        ApiRequest::Watch {
            agent: agent.map(str::to_owned),
            after: 0,
            timeout: Duration::from_secs(1),
            delta: true,
        }
    }

    #[test]
    fn a_node_reads_and_acks_as_itself_only() {
        let a = node("node-a");
        assert_eq!(authorize(&a, &ack("node-a")), Ok(()));
        assert_eq!(authorize(&a, &watch(Some("node-a"))), Ok(()));
        assert_eq!(authorize(&a, &watch(None)), Ok(()));
        let refused = authorize(&a, &ack("node-b")).unwrap_err();
        assert_eq!(refused.reason, RefusedReason::IdentityMismatch);
        assert_eq!(
            refused.message,
            "node credential of node-a cannot ack as node-b"
        );
        assert_eq!(
            authorize(&a, &watch(Some("node-b"))).unwrap_err().reason,
            RefusedReason::IdentityMismatch
        );
        let snapshot = ApiRequest::Snapshot {
            agent: Some("node-b".into()),
            version: None,
        };
        assert_eq!(
            authorize(&a, &snapshot).unwrap_err().reason,
            RefusedReason::IdentityMismatch
        );
    }

    #[test]
    fn operator_requests_are_out_of_a_nodes_scope() {
        let a = node("node-a");
        let rollback = ApiRequest::Rollback(RollbackRequest { version: 1 });
        for request in [
            rollback.clone(),
            ApiRequest::History,
            ApiRequest::Agents,
            ApiRequest::Status,
        ] {
            let refused = authorize(&a, &request).unwrap_err();
            assert_eq!(refused.reason, RefusedReason::Scope, "{request:?}");
            assert!(
                refused.message.contains("needs the operator credential"),
                "{}",
                refused.message
            );
            assert_eq!(authorize(&Identity::Operator, &request), Ok(()));
        }
        assert!(authorize(&a, &rollback)
            .unwrap_err()
            .message
            .starts_with("node credential of node-a cannot roll back"));
        assert_eq!(authorize(&Identity::Operator, &ack("node-b")), Ok(()));
    }
}

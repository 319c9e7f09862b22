//! Who may use the admin API over TCP, and for what. Two credentials, two scopes:
//! `--admin-token-file` reads (every `GET`), `--admin-fault-token-file` also injects faults
//! (`POST /v1/fault`, the one request that changes the agent). Without a fault credential,
//! fault injection is only possible on the unix socket (mode 0600), whose clients have
//! every scope. Refusals are counted in `sockmesh_admin_requests_refused_total{reason}`:
//! `unauthenticated` (401) and `scope` (403, with the reason in the body).

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sockmesh_model::Token;

/// What a request's credential allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Every `GET`.
    Read,
    /// Reads and fault injection.
    Fault,
}

/// The credentials of the TCP listener.
#[derive(Clone)]
pub(crate) struct AdminAccess {
    pub read: Token,
    pub fault: Option<Token>,
}

impl AdminAccess {
    /// What the `Authorization` header value proves, if anything.
    pub(crate) fn grant(&self, header: Option<&[u8]>) -> Option<Grant> {
        // Both compared, each in constant time, so timing does not say which one matched.
        let fault = self
            .fault
            .as_ref()
            .is_some_and(|t| t.matches_header(header));
        let read = self.read.matches_header(header);
        if fault {
            Some(Grant::Fault)
        } else if read {
            Some(Grant::Read)
        } else {
            None
        }
    }
}

/// The message of the 403 a read credential gets for `POST /v1/fault`.
pub(crate) const FAULT_SCOPE_NEEDED: &str =
    "fault injection needs the fault credential (--admin-fault-token-file), or the admin unix socket";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum RefusedReason {
    /// 401: no token, or a wrong one.
    Unauthenticated,
    /// 403: a read credential asking to inject a fault.
    Scope,
}

impl EncodeLabelValue for RefusedReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            RefusedReason::Unauthenticated => "unauthenticated",
            RefusedReason::Scope => "scope",
        };
        std::fmt::Write::write_str(encoder, value)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    reason: RefusedReason,
}

/// `sockmesh_admin_requests_refused_total{reason}`.
#[derive(Clone, Debug, Default)]
pub(crate) struct AdminMetrics {
    refused: Family<RefusedLabels, Counter>,
}

impl AdminMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = AdminMetrics::default();
        // Both reasons from the start, so a rate() has a 0 to start from.
        for reason in [RefusedReason::Unauthenticated, RefusedReason::Scope] {
            drop(m.refused.get_or_create(&RefusedLabels { reason }));
        }
        registry.register(
            "admin_requests_refused",
            "Admin API requests refused: unauthenticated (401), or scope (403, a read credential injecting a fault)",
            m.refused.clone(),
        );
        m
    }

    pub(crate) fn refused(&self, reason: RefusedReason) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// Refusals counted for `reason` so far.
    #[cfg(test)]
    pub(crate) fn count(&self, reason: RefusedReason) -> u64 {
        self.refused.get_or_create(&RefusedLabels { reason }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_grants_its_scope() {
        let token = |t: &str| Token::new(t, "test").unwrap();
        let access = AdminAccess {
            read: token("read-token-0123456789"),
            fault: Some(token("fault-token-0123456789")),
        };
        let grant = |h: &str| access.grant(Some(h.as_bytes()));
        assert_eq!(grant("Bearer read-token-0123456789"), Some(Grant::Read));
        assert_eq!(grant("Bearer fault-token-0123456789"), Some(Grant::Fault));
        assert_eq!(grant("Bearer other"), None);
        assert_eq!(access.grant(None), None);
        let read_only = AdminAccess {
            fault: None,
            ..access
        };
        assert_eq!(
            read_only.grant(Some(b"Bearer fault-token-0123456789")),
            None
        );
    }

    #[test]
    fn refusals_are_exported_by_reason() {
        let mut registry = crate::metrics::registry();
        let m = AdminMetrics::new(&mut registry);
        m.refused(RefusedReason::Scope);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("sockmesh_admin_requests_refused_total{reason=\"scope\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sockmesh_admin_requests_refused_total{reason=\"unauthenticated\"} 0\n"),
            "{text}"
        );
    }
}

//! The `code` label of `sockmesh_requests_total`: what a request ended with, in a bounded
//! set of values (every value multiplies the series of each service x backend x caller).
//!
//! - An HTTP response: its status as a number (`200`, `503`) when the status is registered
//!   with IANA (RFC 9110 and its updates, the list in [`REGISTERED`]); any other status in
//!   100..=599 collapses to its class (`2xx` .. `5xx`, so `499` is `4xx`) and anything else
//!   to `other`.
//! - A gRPC response: `grpc_` and the status's name in snake case from `grpc-status`
//!   (`grpc_ok`, `grpc_unavailable`; the 17 codes of the gRPC spec). A missing, unparsable or
//!   unknown `grpc-status` is `grpc_unknown`, as the gRPC spec has clients read it.
//!
//! So the label takes at most 61 + 5 + 1 + 17 = 84 values.

use std::fmt;

/// HTTP statuses in the IANA registry (excluding the unused 306 and the reserved 418), kept
/// as numbers in the label.
pub const REGISTERED: [u16; 61] = [
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304,
    305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
    416, 417, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506,
    507, 508, 510, 511,
];

/// The gRPC status codes, by number.
const GRPC_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// gRPC's UNKNOWN, what an unreadable status counts as.
const GRPC_UNKNOWN: u8 = 2;

/// One value of the `code` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// A registered HTTP status.
    Http(u16),
    /// Another status of this class (1..=5).
    HttpClass(u8),
    /// Not an HTTP status at all.
    Other,
    /// A gRPC status, 0..=16.
    Grpc(u8),
}

impl Code {
    /// The label of an HTTP response's status.
    pub fn http(status: u16) -> Code {
        if REGISTERED.binary_search(&status).is_ok() {
            Code::Http(status)
        } else if (100..=599).contains(&status) {
            Code::HttpClass((status / 100) as u8)
        } else {
            Code::Other
        }
    }

    /// The label of a gRPC response from its `grpc-status` (trailer, or header of a
    /// trailers-only response); `None`: the response carried none.
    pub fn grpc(grpc_status: Option<&[u8]>) -> Code {
        let parsed = grpc_status
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty() && v.len() <= 2 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|&n| usize::from(n) < GRPC_NAMES.len());
        Code::Grpc(parsed.unwrap_or(GRPC_UNKNOWN))
    }

    /// Whether the request failed on the server's side, for the `request_success` SLI: an
    /// HTTP 5xx, or a gRPC status that gRPC's HTTP mapping turns into a 5xx (UNKNOWN,
    /// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Client errors
    /// (4xx, INVALID_ARGUMENT, NOT_FOUND, ...) are the caller's, not the service's.
    pub fn is_server_error(self) -> bool {
        match self {
            Code::Http(s) => (500..=599).contains(&s),
            Code::HttpClass(class) => class == 5,
            Code::Other => false,
            Code::Grpc(n) => matches!(n, 2 | 4 | 12 | 13 | 14 | 15),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Code::Http(status) => write!(f, "{status}"),
            Code::HttpClass(class) => write!(f, "{class}xx"),
            Code::Other => f.write_str("other"),
            Code::Grpc(n) => write!(f, "grpc_{}", GRPC_NAMES[usize::from(n)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn http_statuses_label_as_numbers_or_their_class() {
        for (status, label) in [
            (200, "200"),
            (503, "503"),
            (429, "429"),
            (499, "4xx"),
            (299, "2xx"),
            (599, "5xx"),
            (600, "other"),
            (99, "other"),
            (0, "other"),
        ] {
            assert_eq!(Code::http(status).to_string(), label, "{status}");
        }
        assert!(REGISTERED.windows(2).all(|w| w[0] < w[1]), "sorted");
    }

    #[test]
    fn grpc_statuses_label_by_name() {
        for (status, label) in [
            (&b"0"[..], "grpc_ok"),
            (b"4", "grpc_deadline_exceeded"),
            (b"14", "grpc_unavailable"),
            (b"16", "grpc_unauthenticated"),
            (b"17", "grpc_unknown"),
            (b"014", "grpc_unknown"),
            (b"-1", "grpc_unknown"),
            (b"", "grpc_unknown"),
            (b"ok", "grpc_unknown"),
        ] {
            assert_eq!(Code::grpc(Some(status)).to_string(), label, "{status:?}");
        }
        assert_eq!(Code::grpc(None).to_string(), "grpc_unknown");
    }

    #[test]
    fn server_errors_are_5xx_and_their_grpc_counterparts() {
        assert!(Code::http(503).is_server_error() && Code::http(598).is_server_error());
        assert!(!Code::http(404).is_server_error() && !Code::http(200).is_server_error());
        let errors: Vec<String> = (0u8..=16)
            .map(|n| Code::grpc(Some(n.to_string().as_bytes())))
            .filter(|c| c.is_server_error())
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "grpc_unknown",
                "grpc_deadline_exceeded",
                "grpc_unimplemented",
                "grpc_internal",
                "grpc_unavailable",
                "grpc_data_loss"
            ]
        );
    }

    #[test]
    fn every_status_lands_in_84_labels() {
        let mut labels: BTreeSet<String> =
            (0..=u16::MAX).map(|s| Code::http(s).to_string()).collect();
        labels.extend((0..=255u8).map(|n| Code::grpc(Some(n.to_string().as_bytes())).to_string()));
        assert_eq!(labels.len(), 84);
    }

    proptest! {
        /// Any bytes in `grpc-status` give one of the 17 gRPC labels, never a panic.
        #[test]
        fn any_grpc_status_bytes_give_a_known_label(bytes in proptest::collection::vec(any::<u8>(), 0..6)) {
            let code = Code::grpc(Some(&bytes));
            prop_assert!(matches!(code, Code::Grpc(n) if n <= 16));
            prop_assert!(code.to_string().starts_with("grpc_"));
        }
    }
}

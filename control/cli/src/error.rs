//! What can go wrong between the CLI and the agent, worded for the operator at the terminal.
//!
//! Each message says what failed and, where there is one, what to try next: most failures
//! are "the agent is not running" or "wrong socket/URL/token", not bugs.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::admin::AdminTarget;

/// Why a request to the agent's admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection: the socket is missing or refused, the port closed, the name unknown.
    #[error(
        "cannot reach the agent's {target}: {} ({})",
        os_message(cause),
        unreachable_hint(target, cause)
    )]
    Unreachable {
        target: AdminTarget,
        cause: io::Error,
    },
    /// Connected, then the exchange failed (reset, timeout).
    #[error("{}", exchange_message(target, cause))]
    Exchange {
        target: AdminTarget,
        cause: io::Error,
    },
    /// Something answered, but not with HTTP/1.x.
    #[error("the agent's {target} sent a malformed HTTP reply: {reason}")]
    Malformed { target: AdminTarget, reason: String },
    /// 401: the token is wrong, or none was sent where one is needed.
    #[error("{}", if *token_sent {
        "the agent refused the token (401)"
    } else {
        "the agent requires a token (401): pass --token-file"
    })]
    Unauthorized { token_sent: bool },
    /// The agent answered with an error status and an `{"error": "..."}` body. For a 404 the
    /// agent's message says it all (`unknown service web`), so it is shown alone.
    #[error("{}", ApiMessage { status: *status, message })]
    Api { status: u16, message: String },
    /// The agent does not serve this endpoint or method: a 404 for an unknown path or a 405
    /// (the admin API was read-only before `POST /v1/fault`), from an agent older than the
    /// CLI.
    #[error(
        "the agent answered {status} to {path}: {} (is the agent older than this CLI?)",
        excerpt(message)
    )]
    NotServed {
        status: u16,
        path: String,
        message: String,
    },
    /// An error status without the agent's JSON error body, e.g. from an older agent that
    /// does not serve this endpoint.
    #[error("the agent answered {status} to {path}: {}{}", excerpt(body), older_agent_hint(*status))]
    Status {
        status: u16,
        path: String,
        body: String,
    },
    /// A success status whose body is not JSON.
    #[error("the agent's reply to {path} is not JSON: {cause}")]
    NotJson {
        path: String,
        cause: serde_json::Error,
    },
    #[error("cannot read the token file {}: {}", path.display(), os_message(cause))]
    TokenFile { path: PathBuf, cause: io::Error },
    #[error("the token file {} {problem}", path.display())]
    BadToken {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("invalid admin URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// `No such file or directory` rather than `No such file or directory (os error 2)`: the
/// number helps no operator, and the message reads as a sentence.
pub(super) fn os_message(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

fn unreachable_hint(target: &AdminTarget, cause: &io::Error) -> &'static str {
    match (target, cause.kind()) {
        (AdminTarget::Unix(_), io::ErrorKind::PermissionDenied) => {
            "the socket is mode 0600: run as root or as the agent's user"
        }
        (AdminTarget::Unix(_), _) => "is sockmesh-agent running? see --admin-socket",
        (AdminTarget::Tcp { .. }, _) => {
            "is sockmesh-agent running with --admin-addr? see --admin-url"
        }
    }
}

fn exchange_message(target: &AdminTarget, cause: &io::Error) -> String {
    match cause.kind() {
        // A read timeout surfaces as WouldBlock on unix sockets and TimedOut on TCP.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("the agent's {target} did not answer in time")
        }
        _ => format!(
            "lost the connection to the agent's {target}: {}",
            os_message(cause)
        ),
    }
}

struct ApiMessage<'a> {
    status: u16,
    message: &'a str,
}

impl fmt::Display for ApiMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 404 {
            f.write_str(self.message)
        } else {
            write!(f, "the agent answered {}: {}", self.status, self.message)
        }
    }
}

/// The first line of a non-JSON error body, shortened: enough to recognise, not a dump.
fn excerpt(body: &str) -> String {
    let line = body.lines().next().unwrap_or_default().trim();
    // Control characters could drive the terminal; the text is the agent's, not ours.
    let mut shown: String = line.chars().filter(|c| !c.is_control()).take(120).collect();
    if line.chars().count() > 120 {
        shown.push('…');
    }
    if shown.is_empty() {
        shown.push_str("(empty body)");
    }
    shown
}

fn older_agent_hint(status: u16) -> &'static str {
    if status == 404 {
        " (is the agent older than this CLI?)"
    } else {
        ""
    }
}

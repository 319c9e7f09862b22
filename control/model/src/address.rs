//! Where a client finds the control plane: `http://HOST:PORT` (TCP, bearer token) or
//! `unix:PATH` (the 0600 socket). The agent's `--control` and the CLI's `--control-url`
//! both take it.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddress {
    /// `authority` is `host:port` as written; it is also the `Host` header.
    Tcp {
        authority: String,
    },
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid control plane URL {url:?}: {reason}")]
pub struct AddressError {
    pub url: String,
    pub reason: &'static str,
}

impl ControlAddress {
    /// Reads `http://HOST:PORT` (a trailing `/` is allowed; IPv6 in brackets), `unix:PATH`
    /// or `unix://PATH` (PATH absolute in the latter: `unix:///run/x.sock`).
    pub fn parse(url: &str) -> Result<Self, AddressError> {
        let bad = |reason| {
            Err(AddressError {
                url: url.to_owned(),
                reason,
            })
        };
        if let Some(rest) = url.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return bad("the socket path is missing: expected unix:/path/to/control.sock");
            }
            return Ok(ControlAddress::Unix(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                return bad("the control plane speaks plain HTTP; put TLS in front of it (a mesh, a tunnel) and give http:// here");
            }
            return bad("expected http://HOST:PORT or unix:PATH");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return bad("expected http://HOST:PORT, without a path or user");
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return bad("the port is missing: expected http://HOST:PORT");
        };
        if host.is_empty() || host == "[]" {
            return bad("the host is missing: expected http://HOST:PORT");
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return bad("put an IPv6 address in brackets: http://[::1]:PORT");
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return bad("the port must be a number from 1 to 65535");
        }
        Ok(ControlAddress::Tcp {
            authority: authority.to_owned(),
        })
    }

    /// The value for the `Host` header.
    pub fn host_header(&self) -> &str {
        match self {
            ControlAddress::Tcp { authority } => authority,
            ControlAddress::Unix(_) => "sockmesh-control",
        }
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Tcp { authority } => write!(f, "http://{authority}"),
            ControlAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let tcp = |a: &str| ControlAddress::Tcp {
            authority: a.into(),
        };
        assert_eq!(
            ControlAddress::parse("http://127.0.0.1:9480").unwrap(),
            tcp("127.0.0.1:9480")
        );
        assert_eq!(
            ControlAddress::parse("http://[::1]:9480/").unwrap(),
            tcp("[::1]:9480")
        );
        assert_eq!(
            ControlAddress::parse("http://control.sockmesh:9480").unwrap(),
            tcp("control.sockmesh:9480")
        );
        assert_eq!(
            ControlAddress::parse("unix:/run/c.sock").unwrap(),
            ControlAddress::Unix("/run/c.sock".into())
        );
        assert_eq!(
            ControlAddress::parse("unix:///run/c.sock").unwrap(),
            ControlAddress::Unix("/run/c.sock".into())
        );
        for bad in [
            "https://a:1",
            "a:1",
            "http://a",
            "http://:1",
            "http://a:0",
            "http://::1:5",
            "http://a:1/v1",
            "unix:",
        ] {
            assert!(ControlAddress::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(tcp("a:1").to_string(), "http://a:1");
    }
}

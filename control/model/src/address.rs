//! Where a client finds the control plane: `https://HOST:PORT` (TCP with TLS, bearer
//! token), `http://HOST:PORT` (plain TCP, which clients accept only with
//! `--insecure-plaintext`) or `unix:PATH` (the 0600 socket). The agent's `--control` and
//! the CLI's `--control-url` both take it.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddress {
    /// `authority` is `host:port` as written; it is also the `Host` header, and its host
    /// the name the certificate must hold when `tls`.
    Tcp {
        authority: String,
        tls: bool,
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
    /// Reads `https://HOST:PORT` or `http://HOST:PORT` (a trailing `/` is allowed; IPv6 in
    /// brackets), `unix:PATH` or `unix://PATH` (PATH absolute in the latter:
    /// `unix:///run/x.sock`).
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
        let (rest, tls) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else {
            return bad("expected https://HOST:PORT, http://HOST:PORT or unix:PATH");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return bad("expected https://HOST:PORT, without a path or user");
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return bad("the port is missing: expected https://HOST:PORT");
        };
        if host.is_empty() || host == "[]" {
            return bad("the host is missing: expected https://HOST:PORT");
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return bad("put an IPv6 address in brackets: https://[::1]:PORT");
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return bad("the port must be a number from 1 to 65535");
        }
        Ok(ControlAddress::Tcp {
            authority: authority.to_owned(),
            tls,
        })
    }

    /// TCP without TLS: the token and the configs travel in the clear.
    pub fn is_plaintext_tcp(&self) -> bool {
        matches!(self, ControlAddress::Tcp { tls: false, .. })
    }

    /// The value for the `Host` header.
    pub fn host_header(&self) -> &str {
        match self {
            ControlAddress::Tcp { authority, .. } => authority,
            ControlAddress::Unix(_) => "sockmesh-control",
        }
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Tcp {
                authority,
                tls: true,
            } => write!(f, "https://{authority}"),
            ControlAddress::Tcp {
                authority,
                tls: false,
            } => write!(f, "http://{authority}"),
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
            tls: false,
        };
        let tls = |a: &str| ControlAddress::Tcp {
            authority: a.into(),
            tls: true,
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
            ControlAddress::parse("https://127.0.0.1:9480").unwrap(),
            tls("127.0.0.1:9480")
        );
        assert_eq!(
            ControlAddress::parse("https://[::1]:9480/").unwrap(),
            tls("[::1]:9480")
        );
        assert_eq!(
            ControlAddress::parse("https://control.sockmesh:9480").unwrap(),
            tls("control.sockmesh:9480")
        );
        assert!(tcp("a:1").is_plaintext_tcp());
        assert!(!tls("a:1").is_plaintext_tcp());
        assert!(!ControlAddress::Unix("/s".into()).is_plaintext_tcp());
        assert_eq!(
            ControlAddress::parse("unix:/run/c.sock").unwrap(),
            ControlAddress::Unix("/run/c.sock".into())
        );
        assert_eq!(
            ControlAddress::parse("unix:///run/c.sock").unwrap(),
            ControlAddress::Unix("/run/c.sock".into())
        );
        for bad in [
            "ftp://a:1",
            "a:1",
            "https://a",
            "https://a:1/v1",
            "https://user@a:1",
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
        assert_eq!(tls("a:1").to_string(), "https://a:1");
    }
}

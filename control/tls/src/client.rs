//! The client side: agents and the CLI verify the control plane's certificate against a CA
//! bundle (`--control-ca FILE`), with the server name taken from the URL's host, and say
//! why a handshake failed in words an operator can act on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;

use crate::{pem, provider, TlsError};

/// A verified-TLS client config from a CA bundle; cheap to clone (clones share the current
/// config). A long-lived client (the agent) asks [`ClientTls::current`], which reads the
/// file again when it changed, so a CA rotation (publish a bundle of the old and the new CA,
/// then move the server to the new one) needs no restart.
#[derive(Clone)]
pub struct ClientTls {
    state: Arc<Mutex<Loaded>>,
    ca_file: PathBuf,
}

/// The CA file's stamp when last read, and the config from its last good contents.
type Loaded = (Option<(SystemTime, u64)>, Arc<ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// What [`ClientTls::current`] found when the CA file had changed.
#[derive(Debug)]
pub enum CaReload {
    /// New CA certificates, in use from this handshake on.
    Taken,
    /// The file no longer holds usable CA certificates: the last good ones stay in use.
    Failed(TlsError),
}

impl ClientTls {
    /// Trusts exactly the certificates in `path` (PEM, one or more), nothing from the
    /// system store: the control plane's CA is the mesh's own.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        let stamp = file_stamp(path);
        let config = Arc::new(client_config(path)?);
        Ok(ClientTls {
            state: Arc::new(Mutex::new((stamp, config))),
            ca_file: path.to_owned(),
        })
    }

    /// The config as last read (no look at the file: one-shot clients, the CLI).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The config to handshake with now, read again first if the CA file changed (its
    /// modification time or size), and what happened if it did.
    pub fn current(&self) -> (Arc<ClientConfig>, Option<CaReload>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = file_stamp(&self.ca_file);
        if stamp == state.0 {
            return (state.1.clone(), None);
        }
        state.0 = stamp;
        match client_config(&self.ca_file) {
            Ok(config) => {
                state.1 = Arc::new(config);
                (state.1.clone(), Some(CaReload::Taken))
            }
            Err(e) => (state.1.clone(), Some(CaReload::Failed(e))),
        }
    }

    /// The CA file, for messages.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

fn client_config(path: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem::certificates(path, "CA certificate")? {
        roots.add(cert).map_err(|cause| TlsError::Rustls {
            context: format!("a certificate in {} is not a usable CA", path.display()),
            cause,
        })?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|cause| TlsError::Rustls {
            context: "the TLS client configuration".into(),
            cause,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A file's modification time and size, through symlinks (a mounted ConfigMap swaps a
/// `..data` link), or `None` when it cannot be read.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The name the certificate must hold, from an authority `host:port` (`[v6]:port` too): a
/// DNS name, or an IP address that must be among its IP SANs.
pub fn server_name(authority: &str) -> Result<ServerName<'static>, TlsError> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
        host: host.to_owned(),
    })
}

/// Words a failed TLS handshake with the control plane at `address` (its URL) for the
/// operator: which of the usual causes it is, and what to check.
pub fn explain(err: &io::Error, address: &str) -> String {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(cause) = rustls_error else {
        return match err.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
                "the control plane at {address} closed the connection during the TLS handshake \
                 (does it serve TLS on this port?)"
            ),
            _ => format!("TLS handshake with the control plane at {address}: {err}"),
        };
    };
    match cause {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the certificate of the control plane at {address} is not signed by a CA in \
                 --control-ca (unknown issuer)"
            ),
            CertificateError::NotValidForName => format!(
                "the certificate of the control plane at {address} is not valid for its host \
                 (name mismatch)"
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the certificate of the control plane at {address} is not valid for {expected:?} \
                 (name mismatch: it names {})",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate of the control plane at {address} has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "the certificate of the control plane at {address} is not valid yet \
                     (is this machine's clock right?)"
                )
            }
            other => {
                format!("the certificate of the control plane at {address} was refused: {other:?}")
            }
        },
        // What a TLS client reads when the server answers in plain HTTP: `HTTP/1.1 400`
        // is no TLS record.
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the control plane does not speak TLS on {address} (it answered something else, \
             likely plain HTTP: start it with --tls-cert, or use http:// with --insecure-plaintext)"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the control plane at {address} refused the TLS handshake ({alert:?})")
        }
        other => format!("TLS handshake with the control plane at {address}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(
            server_name("127.0.0.1:9480").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert!(matches!(
            server_name("[::1]:9480").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("control.sockmesh:9480").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let err = ClientTls::from_ca_file(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = ClientTls::from_ca_file(&empty).unwrap_err().to_string();
        assert!(err.contains("holds no CA certificate"), "{err}");
    }

    #[test]
    fn plain_http_reads_as_no_tls() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let text = explain(&err, "https://127.0.0.1:1");
        assert!(
            text.contains("does not speak TLS on https://127.0.0.1:1"),
            "{text}"
        );
    }
}

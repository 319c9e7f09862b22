//! The control plane's side: a certificate chain and key from PEM files, served through a
//! resolver so a renewed pair (cert-manager, a rotated Secret, `sockmesh-control tls
//! init` again) takes effect on the next handshake without a restart. Connections already
//! open keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::{pem, provider, TlsError};

/// What [`ServerTls::reload_if_changed`] did.
#[derive(Debug)]
pub enum Reload {
    /// Neither file changed since the last read.
    Unchanged,
    /// The new pair serves from the next handshake.
    Reloaded,
    /// The files changed but do not make a usable pair; the previous pair still serves.
    /// Not retried until the files change again.
    Failed(TlsError),
}

/// The serving certificate and its files.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    resolver: Arc<CurrentCert>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files' (modified, length) when last read, good or bad.
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

type Stamp = [Option<(SystemTime, u64)>; 2];

#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ServerTls {
    /// Reads the pair; an error here stops the control plane at start.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let stamp = stamp(cert_file, key_file);
        let key = certified_key(cert_file, key_file)?;
        let resolver = Arc::new(CurrentCert(RwLock::new(key)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|cause| TlsError::Rustls {
                context: "the TLS server configuration".into(),
                cause,
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            resolver,
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            stamp: Mutex::new(stamp),
        })
    }

    /// The config for every accepted connection; it always asks the resolver, so it never
    /// needs replacing.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// Reads the files again if their modification time or length changed (a Kubernetes
    /// Secret volume swaps a symlink, which changes both as seen through it).
    pub fn reload_if_changed(&self) -> Reload {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return Reload::Unchanged;
            }
            *last = now;
        }
        match certified_key(&self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = key;
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    [cert_file, key_file].map(|path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
}

/// The chain and key, checked to belong together (a renewed certificate with the old key
/// would fail every handshake).
fn certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = pem::certificates(cert_file, "certificate")?;
    let key = pem::private_key(key_file)?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|cause| TlsError::Rustls {
            context: format!(
                "{} and {} are not a certificate and its key",
                cert_file.display(),
                key_file.display()
            ),
            cause,
        })?;
    Ok(Arc::new(certified))
}

//! TLS of sockmesh's control channel (docs/control-plane.md, "TLS"): every node trusts what
//! the control plane serves it, so agents and the CLI verify its certificate against a CA
//! file, and the control plane serves a certificate it re-reads when the files change.
//!
//! - [`client`]: [`ClientTls`], a CA bundle turned into a rustls client config, the server
//!   name from the URL's host (DNS names and IP addresses), and [`explain`], which words a
//!   failed handshake for the operator (unknown CA, name mismatch, a plain-HTTP server).
//! - [`server`]: [`ServerTls`], the certificate and key from PEM files behind a resolver
//!   that [`ServerTls::reload_if_changed`] swaps; a bad new pair keeps the old one.
//! - `generate` (feature `generate`): a CA and a server certificate it signs, for
//!   `sockmesh-control tls init` and tests.
//!
//! One crypto provider, ring, passed explicitly: nothing depends on a process default.

pub mod client;
#[cfg(feature = "generate")]
pub mod generate;
mod pem;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{explain, CaReload, ClientTls};
pub use server::{Reload, ServerTls};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is not valid PEM for a {what}: {reason}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{} holds no {what} (PEM)", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("{context}: {cause}")]
    Rustls {
        context: String,
        cause: rustls::Error,
    },
    #[error("{host:?} is not a valid server name for TLS")]
    ServerName { host: String },
    #[cfg(feature = "generate")]
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[cfg(feature = "generate")]
    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The one provider every config is built with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(all(test, feature = "generate"))]
mod tests;

//! A private CA and a server certificate it signs (`sockmesh-control tls init`): enough
//! for a mesh that has no PKI of its own, and for tests. ECDSA P-256 keys, the CA valid for
//! ten years, the server certificate for one (renew it by running `tls init` again in the same directory, or let
//! cert-manager do it; the control plane reloads it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// File names in the directory `tls init` writes.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
/// The common name of every CA made here, followed by a key id (see [`ca_name`]).
pub const CA_NAME: &str = "sockmesh control plane CA";

/// A CA's certificate and key, in PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A server certificate (signed by a [`Ca`]) and its key, in PEM.
pub struct ServerPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What [`write_dir`] wrote.
#[derive(Debug)]
pub struct Written {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA was read from the directory rather than made.
    pub reused_ca: bool,
}

impl Ca {
    /// A new CA, named [`CA_NAME`].
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let params = ca_params(&ca_name(&key))?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses, each a SAN; the first
    /// is also the common name).
    pub fn issue(&self, names: &[String]) -> Result<ServerPair, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        // What of the issuer goes into a certificate it signs is its subject and key
        // identifier: the parameters of `new` give both (no X.509 parser needed). A CA
        // made elsewhere, with another subject, cannot sign here.
        let issuer = Issuer::new(ca_params(&ca_name(&ca_key))?, ca_key);
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ServerPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// [`CA_NAME`] and the first bytes of the CA's public key in hex: two CAs made here never
/// share a name (a verifier that finds a CA of the issuer's name but another key reports a
/// bad signature rather than an unknown issuer), and the name follows from the key alone,
/// so a CA read back needs no X.509 parser.
fn ca_name(key: &KeyPair) -> String {
    let raw = key.public_key_raw();
    // An uncompressed point: 0x04, then X. Eight bytes of X tell keys apart.
    let id: String = raw
        .iter()
        .skip(1)
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{CA_NAME} {id}")
}

fn ca_params(common_name: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    Ok(params)
}

/// Writes `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` into `dir` (keys mode
/// 0600). An existing `ca.pem` and `ca-key.pem` are reused, so running it again renews the
/// server certificate under the CA the agents already trust; an existing server pair is
/// replaced.
pub fn write_dir(dir: &Path, names: &[String]) -> Result<Written, TlsError> {
    std::fs::create_dir_all(dir).map_err(|cause| TlsError::Write {
        path: dir.to_owned(),
        cause,
    })?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let reused_ca = ca_cert.exists() && ca_key.exists();
    let ca = if reused_ca {
        Ca {
            cert_pem: read(&ca_cert)?,
            key_pem: read(&ca_key)?,
        }
    } else {
        let ca = Ca::new()?;
        write(&ca_key, &ca.key_pem, 0o600)?;
        write(&ca_cert, &ca.cert_pem, 0o644)?;
        ca
    };
    let pair = ca.issue(names)?;
    let (server_cert, server_key) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    // Key first: a control plane watching these files sees the pair complete when the
    // certificate changes (and refuses a mismatched one until then).
    write(&server_key, &pair.key_pem, 0o600)?;
    write(&server_cert, &pair.cert_pem, 0o644)?;
    Ok(Written {
        ca_cert,
        ca_key,
        server_cert,
        server_key,
        reused_ca,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|cause| TlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Written to a temporary name and renamed: a reader never sees half a file.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let failed = |cause| TlsError::Write {
        path: path.to_owned(),
        cause,
    };
    let tmp = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientTls, ServerTls};

    #[test]
    fn a_written_pair_loads_and_a_second_run_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["127.0.0.1".to_owned(), "control.sockmesh".to_owned()];
        let first = write_dir(dir.path(), &names).unwrap();
        assert!(!first.reused_ca);
        let ca_before = std::fs::read(&first.ca_cert).unwrap();
        let cert_before = std::fs::read(&first.server_cert).unwrap();
        ServerTls::load(&first.server_cert, &first.server_key).unwrap();
        ClientTls::from_ca_file(&first.ca_cert).unwrap();
        let mode = std::fs::metadata(&first.ca_key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let second = write_dir(dir.path(), &names).unwrap();
        assert!(second.reused_ca);
        assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca_before);
        assert_ne!(std::fs::read(&second.server_cert).unwrap(), cert_before);
    }
}

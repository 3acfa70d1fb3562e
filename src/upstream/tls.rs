//! Upstream TLS: the rustls client config of an upstream set (trusted roots, ALPN),
//! the server name each server is verified against, and handshake failures put in
//! words.
//!
//! Owns: how an upstream connection is secured. Must not touch: sockets, pooling or
//! HTTP (`connect` does the handshake with what this builds).
//!
//! Roots: `tls_ca` *replaces* the system roots for that set (like nginx's
//! `proxy_ssl_trusted_certificate`): an internal upstream signed by a private CA
//! should not also accept any certificate a public CA issued for the name. Without
//! `tls_ca`, the OS trust store is used (loaded once per process).
//!
//! Trust is part of a connection's identity: [`TlsIdentity::config_id`] is a SHA-256
//! of the roots' DER and the ALPN offered, so after a reload that loads other roots
//! (a changed `tls_ca` file, the same path) no pooled connection verified under the
//! old ones is handed out again.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::config::UpstreamConfig;

/// Why an upstream set's TLS settings cannot be used. The key it is about
/// (`upstreams.app.tls_ca`) is put in front by `upstream::UpstreamError`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    ReadCa { path: PathBuf, reason: String },
    #[error("{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)", path.display())]
    EmptyCa { path: PathBuf },
    #[error("{} holds no usable CA certificate ({ignored} could not be parsed)", path.display())]
    UnusableCa { path: PathBuf, ignored: usize },
    #[error("tls = true but no system CA certificates were found ({0}); install the OS CA bundle (ca-certificates) or set tls_ca")]
    NoSystemRoots(String),
    #[error("{name:?} is not a valid DNS name or IP address")]
    BadServerName { name: String },
    #[error("cannot build the TLS client config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS identity a connection was made with: part of the pool key, so a
/// connection is only reused for the same server name under the same roots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsIdentity {
    /// Sent as SNI (not for IP addresses) and verified against the certificate.
    pub name: ServerName<'static>,
    /// What the connection was verified with: see [`ConfigId`].
    pub config_id: ConfigId,
}

/// SHA-256 of a client config's trust: every root's DER (subject, key, name
/// constraints) and the ALPN offered. Not a path or a setting's text: the same
/// `tls_ca` path with other certificates in it is another id. A cryptographic hash,
/// so two root sets cannot share an id by a collision of a 64-bit hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfigId([u8; 32]);

/// What a connection to one TLS server needs.
#[derive(Debug)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    /// `config` offering only `http/1.1` (the same config unless `http2 = true`):
    /// for connections that must speak HTTP/1.1 (upgrades).
    pub h1_config: Arc<ClientConfig>,
    pub identity: Arc<TlsIdentity>,
    /// Where the roots came from, for error messages (`tls_ca` path or "system roots").
    pub roots: Arc<str>,
}

/// An upstream set's client config, shared by its servers.
#[derive(Debug, Clone)]
pub struct SetTls {
    config: Arc<ClientConfig>,
    h1_config: Arc<ClientConfig>,
    config_id: ConfigId,
    roots: Arc<str>,
}

impl SetTls {
    /// Builds the client config of `cfg` (which has `tls = true`): roots from
    /// `tls_ca` or the system, ALPN `http/1.1` (`h2` first when `http2 = true`).
    pub fn new(cfg: &UpstreamConfig) -> Result<SetTls, TlsError> {
        let (roots, from) = match &cfg.tls_ca {
            Some(path) => (Arc::new(ca_roots(path)?), path.display().to_string()),
            None => (system_roots()?, "the system roots".to_owned()),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&roots))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let h1_config = Arc::new(config.clone());
        if cfg.http2 {
            config.alpn_protocols.insert(0, b"h2".to_vec());
        }
        let config_id = config_id(&roots, &config.alpn_protocols);
        Ok(SetTls {
            config: Arc::new(config),
            h1_config,
            config_id,
            roots: Arc::from(from),
        })
    }

    /// What this set's connections are verified with (changes when the roots do).
    pub fn config_id(&self) -> ConfigId {
        self.config_id
    }

    /// The target for one server written as `authority` (`host:port`): the name is
    /// `sni` when set, the host otherwise.
    pub fn target(&self, sni: Option<&str>, authority: &str) -> Result<TlsTarget, TlsError> {
        Ok(TlsTarget {
            config: Arc::clone(&self.config),
            h1_config: Arc::clone(&self.h1_config),
            identity: Arc::new(TlsIdentity {
                name: server_name(sni, authority)?,
                config_id: self.config_id,
            }),
            roots: Arc::clone(&self.roots),
        })
    }
}

/// The [`ConfigId`] of a config trusting `roots` and offering `alpn`. Each part is
/// length-prefixed, so no two lists of parts read as the same bytes.
fn config_id(roots: &RootCertStore, alpn: &[Vec<u8>]) -> ConfigId {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    part(b"roots");
    for anchor in &roots.roots {
        part(anchor.subject.as_ref());
        part(anchor.subject_public_key_info.as_ref());
        let constraints = anchor.name_constraints.as_deref();
        part(&[u8::from(constraints.is_some())]);
        part(constraints.unwrap_or_default());
    }
    part(b"alpn");
    for protocol in alpn {
        part(protocol);
    }
    let mut id = [0; 32];
    id.copy_from_slice(digest.finish().as_ref());
    ConfigId(id)
}

/// The crypto provider: *ring*, chosen explicitly (never the process default) so a
/// build with several providers enabled cannot panic choosing one. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange; it is kept because it builds
/// with a plain C compiler (aws-lc-rs needs more of a toolchain), and classic X25519
/// key exchange is what most upstreams offer today.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The name to verify: `sni` if given, else the host part of `authority`. An IP
/// address (either way) sends no SNI and is checked against the certificate's IP SANs.
pub fn server_name(sni: Option<&str>, authority: &str) -> Result<ServerName<'static>, TlsError> {
    let text = match sni {
        Some(name) => name,
        None => host_of(authority),
    };
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::BadServerName {
        name: text.to_owned(),
    })
}

/// `host` of `host:port` / `[v6]:port`.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, _)) => host,
        None => authority,
    }
}

/// The certificates of a PEM bundle as a root store.
fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bytes = crate::server::tls::certs::read_pem_file(path).map_err(|e| TlsError::ReadCa {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(cert.map_err(|e| TlsError::ReadCa {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?);
    }
    if certs.is_empty() {
        return Err(TlsError::EmptyCa {
            path: path.to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::UnusableCa {
            path: path.to_owned(),
            ignored,
        });
    }
    Ok(roots)
}

/// The OS trust store, loaded once: it is a few hundred files, and it changes only
/// with a package update (a restart picks that up).
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = match loaded.errors.first() {
                    Some(e) => e.to_string(),
                    None => "the store is empty".to_owned(),
                };
                return Err(why);
            }
            if !loaded.errors.is_empty() {
                tracing::debug!(target: "proxycache::upstream", errors = loaded.errors.len(), "some system CA certificates could not be loaded");
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::NoSystemRoots)
}

/// A failed handshake in words: what went wrong, and a hint where one helps.
pub fn describe_failure(err: &std::io::Error, target: &TlsTarget) -> String {
    if no_common_protocol(err) {
        return "TLS handshake failed: the server accepts none of the protocols offered \
                in ALPN"
            .to_owned();
    }
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {err}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => {
            let hint = match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    format!(" (not signed by a CA trusted from {})", target.roots)
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    " (set `sni` to a name the certificate has)".to_owned()
                }
                _ => String::new(),
            };
            format!("certificate verification failed: {cert}{hint}")
        }
        rustls::Error::InvalidMessage(_) => {
            format!("TLS handshake failed: {tls} (does the server speak TLS on that port?)")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Whether the handshake failed because the server takes none of the ALPN protocols
/// offered (its `no_application_protocol` alert).
pub fn no_common_protocol(err: &std::io::Error) -> bool {
    matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_host_and_ips_stay_ips() {
        let name = server_name(None, "app.internal:443").map(|n| n.to_str().into_owned());
        assert_eq!(name.ok().as_deref(), Some("app.internal"));
        assert!(matches!(
            server_name(None, "127.0.0.1:8443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name(None, "[::1]:8443"),
            Ok(ServerName::IpAddress(_))
        ));
        let sni = server_name(Some("api.example.com"), "10.0.0.1:443");
        assert_eq!(
            sni.map(|n| n.to_str().into_owned()).ok().as_deref(),
            Some("api.example.com")
        );
        assert!(server_name(Some("bad name!"), "x:1").is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let missing = ca_roots(Path::new("/nonexistent/proxycache-ca.pem"));
        assert!(matches!(missing, Err(TlsError::ReadCa { .. })));
        let dir = std::env::temp_dir().join(format!("pc-tls-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        let _ = std::fs::write(&empty, "not a certificate\n");
        let err = ca_roots(&empty)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("holds no certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

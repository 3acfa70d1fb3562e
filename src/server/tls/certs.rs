//! Certificate files and SNI: reads PEM certificate chains, private keys and client
//! CA bundles, and chooses a listener's certificate from the name the client asked
//! for (SNI) against each leaf's DNS subject alternative names.
//!
//! Owns: file reading and parsing for `[[server.tls]]`, and [`SniResolver`]. Must not
//! touch: sockets or rustls `ServerConfig` assembly (that is `tls.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertPair;

/// Why a TLS listener's files could not be used. Each names the config key and the
/// file, so `check`, start-up and a failed reload say exactly what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {} is not valid PEM: {message}", path.display())]
    Pem {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("{key}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { key: String, path: PathBuf },
    #[error("{key}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { key: String, path: PathBuf },
    #[error(
        "{key}: the private key in {0} is encrypted; encrypted keys are not supported; \
         decrypt with `openssl pkey -in {0} -out {0}.plain` and name that file",
        path.display()
    )]
    EncryptedKey { key: String, path: PathBuf },
    #[error(
        "{key}: the private key in {} is of a type this build cannot use ({message}); \
         supported: RSA, ECDSA P-256 and P-384, Ed25519",
        path.display()
    )]
    UnsupportedKey {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("{key}: the leaf certificate in {} cannot be parsed: {message}", path.display())]
    BadCertificate {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("{key}: the key in {} cannot be used with the certificate: {source}", path.display())]
    Key {
        key: String,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{key}: client CA bundle {}: {message}", path.display())]
    ClientCa {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("{key}: {message}")]
    Setup { key: String, message: String },
}

impl TlsError {
    /// The config key the error is about (`server.tls[0].certs[1].key`).
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Pem { key, .. }
            | TlsError::NoCertificate { key, .. }
            | TlsError::NoKey { key, .. }
            | TlsError::EncryptedKey { key, .. }
            | TlsError::UnsupportedKey { key, .. }
            | TlsError::BadCertificate { key, .. }
            | TlsError::Key { key, .. }
            | TlsError::ClientCa { key, .. }
            | TlsError::Setup { key, .. } => key,
        }
    }

    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path, .. }
            | TlsError::NoKey { path, .. }
            | TlsError::EncryptedKey { path, .. }
            | TlsError::UnsupportedKey { path, .. }
            | TlsError::BadCertificate { path, .. }
            | TlsError::Key { path, .. }
            | TlsError::ClientCa { path, .. } => Some(path),
            TlsError::Setup { .. } => None,
        }
    }
}

/// The largest certificate, key or CA bundle file read.
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;

/// Reads a certificate, key or CA bundle file: a regular file of at most 16 MiB. A
/// FIFO or a device named in a config (or in a `POST /config/verify` body) would block
/// the reading thread, or never end.
pub fn read_pem_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "larger than 16 MiB",
        ));
    }
    std::fs::read(path)
}

/// Reads a whole file, naming the key and the file on failure.
pub fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem_file(path).map_err(|source| TlsError::Read {
        key: key.to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate ready to serve, with the DNS names its leaf is valid for.
#[derive(Debug)]
pub struct NamedCert {
    /// Lower-cased DNS SANs of the leaf; wildcards keep their `*.`.
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

/// Loads `pair` (`key` is its config key, e.g. `server.tls[0].certs[1]`): the chain,
/// the private key, their match, and the leaf's DNS names.
pub fn load_pair(
    key: &str,
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<NamedCert, TlsError> {
    let cert_key = format!("{key}.cert");
    let chain = read_certs(&cert_key, &pair.cert)?;
    let names = leaf_names(&cert_key, &pair.cert, &chain)?;
    let key_key = format!("{key}.key");
    let bytes = read(&key_key, &pair.key)?;
    if is_encrypted_key(&bytes) {
        return Err(TlsError::EncryptedKey {
            key: key_key,
            path: pair.key.clone(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            key: key_key.clone(),
            path: pair.key.clone(),
        },
        other => TlsError::Pem {
            key: key_key.clone(),
            path: pair.key.clone(),
            message: other.to_string(),
        },
    })?;
    // Loaded apart from the match with the certificate, so that a key of a type the
    // provider lacks (P-521, DSA) is not reported as a mismatch.
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::UnsupportedKey {
            key: key_key.clone(),
            path: pair.key.clone(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key that cannot tell its public half is not a mismatch (as rustls's
        // `CertifiedKey::from_der` decides).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(source) => {
            return Err(TlsError::Key {
                key: key_key,
                path: pair.key.clone(),
                source,
            })
        }
    }
    Ok(NamedCert {
        names,
        key: Arc::new(certified),
    })
}

/// Whether a key file holds an encrypted key: PKCS#8 `ENCRYPTED PRIVATE KEY`, or a
/// legacy PEM key with `Proc-Type: 4,ENCRYPTED` (neither can be read without the
/// passphrase).
fn is_encrypted_key(bytes: &[u8]) -> bool {
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// Every certificate in a PEM file, in order (the leaf first, as servers send them).
pub fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let pem_error = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        key: key.to_owned(),
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            key: key.to_owned(),
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn leaf_names(
    key: &str,
    path: &Path,
    chain: &[CertificateDer<'static>],
) -> Result<Vec<String>, TlsError> {
    let bad = |message: String| TlsError::BadCertificate {
        key: key.to_owned(),
        path: path.to_path_buf(),
        message,
    };
    let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| bad(e.to_string()))?;
    Ok(parsed
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect())
}

/// The trust anchors client certificates must chain to (mTLS).
pub fn client_roots(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = read_certs(key, path)?;
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(TlsError::ClientCa {
            key: key.to_owned(),
            path: path.to_path_buf(),
            message: format!("none of its {ignored} certificate(s) can be used as a CA"),
        });
    }
    Ok(roots)
}

/// Chooses a listener's certificate by SNI: an exact SAN match first, then a wildcard
/// (`*.example.com` matches exactly one more label), else the first certificate.
#[derive(Debug)]
pub struct SniResolver {
    /// Never empty: config validation requires one certificate per listener.
    pub certs: Vec<NamedCert>,
}

impl SniResolver {
    /// The certificate serving `sni`, or the default (first) one.
    pub fn choose(&self, sni: Option<&str>) -> Option<&NamedCert> {
        let found = sni.and_then(|name| {
            self.certs
                .iter()
                .find(|c| c.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
                .or_else(|| {
                    self.certs
                        .iter()
                        .find(|c| c.names.iter().any(|n| wildcard_matches(n, name)))
                })
        });
        found.or_else(|| self.certs.first())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name()).map(|c| Arc::clone(&c.key))
    }
}

/// Whether the SAN `pattern` (`*.example.com`) covers `name` (`a.example.com`, but not
/// `example.com` nor `a.b.example.com`).
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_matches;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(wildcard_matches("*.example.com", "A.Example.COM"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("*.example.com", ".example.com"));
        assert!(!wildcard_matches("www.example.com", "www.example.com"));
    }
}

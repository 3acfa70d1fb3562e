//! TLS listeners (`[[server.tls]]`): the rustls server side of each listener, built
//! with every generation, and the per-connection handshake that hands the decrypted
//! stream to the same HTTP serving path as plain listeners.
//!
//! Certificate, key and client-CA files are read when a generation is built, so a bad
//! file refuses start-up, fails `proxycache check`, and fails a reload (the previous
//! generation, with its certificates, keeps serving). Each listener's `ServerConfig`
//! lives in the generation; the accept loop reads it per connection, so a reload
//! serves new certificates to new connections without a restart.
//!
//! Owns: rustls `ServerConfig`s (TLS 1.2 and 1.3, ALPN, SNI certificate choice,
//! session resumption, client-certificate verification) and the handshake. Must not
//! touch: sockets (the worker accepts), or anything after the handshake (`conn`).

pub mod certs;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsListenerConfig};
use crate::script::Diagnostic;

use super::conn::Protocol;
use super::worker::WorkerCtx;
pub use certs::TlsError;

/// TLS sessions each listener remembers for resumption by session id; resumption by
/// ticket needs no server memory.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// The rustls server side of every `[[server.tls]]` listener of one generation, in
/// config order, and the `ServerConfig` each socket opened at start-up serves with.
#[derive(Default)]
pub struct TlsListeners {
    listeners: Vec<TlsListener>,
    /// The sockets opened at start-up (TLS listeners are not opened or closed by a
    /// reload), each with its `ServerConfig`: its listener's in this generation, or,
    /// when a reload removed or moved that listener, the one it served with before,
    /// so the socket serves as it did until a restart.
    sockets: Vec<Socket>,
}

/// One start-up TLS socket (its index in `server.tls` and its configured address
/// then) and the `ServerConfig` it serves with in this generation.
struct Socket {
    index: usize,
    listen: SocketAddr,
    config: Arc<ServerConfig>,
}

struct TlsListener {
    listen: SocketAddr,
    config: Arc<ServerConfig>,
    /// Hash of its certificate and key files' bytes (what a reload diff compares).
    files_hash: u64,
    /// Hash of its client CA bundle: resumption state is carried into the next
    /// generation only while this is unchanged, because a resumed session is not
    /// verified again.
    ca_hash: Option<u64>,
    /// The DNS names of each certificate, for logs and `Debug`.
    names: Vec<Vec<String>>,
}

impl fmt::Debug for TlsListeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.listeners.iter().map(|l| (l.listen, &l.names)))
            .finish()
    }
}

impl TlsListeners {
    /// Reads every TLS listener's files and builds its `ServerConfig`. Resumption
    /// state (session cache, ticket keys) is carried over from `previous` for a
    /// listener on the same address with the same client CA, so a reload does not
    /// force every client into a full handshake. Returns every error found.
    pub fn build(config: &Config, previous: Option<&TlsListeners>) -> Result<Self, Vec<TlsError>> {
        // One provider for listeners and upstreams (ring; see there why).
        let provider = crate::upstream::tls::provider();
        let mut listeners = Vec::new();
        let mut errors = Vec::new();
        for (index, tls) in config.server.tls.iter().enumerate() {
            let before = previous.and_then(|p| find(&p.listeners, index, tls.listen));
            match build_one(index, tls, &provider, before) {
                Ok(listener) => listeners.push(listener),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let sockets = match previous {
            // The first generation: `server::start` opens a socket for each listener.
            None => listeners
                .iter()
                .enumerate()
                .map(|(index, l)| Socket {
                    index,
                    listen: l.listen,
                    config: Arc::clone(&l.config),
                })
                .collect(),
            Some(previous) => previous
                .sockets
                .iter()
                .map(|s| Socket {
                    index: s.index,
                    listen: s.listen,
                    config: find(&listeners, s.index, s.listen)
                        .map_or_else(|| Arc::clone(&s.config), |l| Arc::clone(&l.config)),
                })
                .collect(),
        };
        Ok(TlsListeners { listeners, sockets })
    }

    /// Whether there are no TLS listeners.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// The `ServerConfig` for the start-up socket of listener `index` configured as
    /// `listen` (carried over from an earlier generation when this one no longer has
    /// that listener); `None` only for a socket that was never opened.
    pub fn config_for(&self, index: usize, listen: SocketAddr) -> Option<Arc<ServerConfig>> {
        self.sockets
            .iter()
            .find(|s| s.index == index && s.listen == listen)
            .map(|s| Arc::clone(&s.config))
    }

    /// Listeners whose certificate, key or CA files differ from `old`'s (by address;
    /// a listener that only moved within `server.tls` is the same listener).
    pub fn changed_since(&self, old: &TlsListeners) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                find(&old.listeners, *i, l.listen)
                    .is_some_and(|o| o.files_hash != l.files_hash || o.ca_hash != l.ca_hash)
            })
            .map(|(_, l)| l.listen)
            .collect()
    }
}

/// Listener `index` if it is still configured as `listen`, else the listener on
/// `listen` (it moved within `server.tls`; port 0 names no one address).
fn find(listeners: &[TlsListener], index: usize, listen: SocketAddr) -> Option<&TlsListener> {
    super::listener::serving_entry(listeners, |l| l.listen, index, listen)
        .and_then(|i| listeners.get(i))
}

fn build_one(
    index: usize,
    tls: &TlsListenerConfig,
    provider: &Arc<CryptoProvider>,
    previous: Option<&TlsListener>,
) -> Result<TlsListener, Vec<TlsError>> {
    let key = format!("server.tls[{index}]");
    // Hashed before reading: a file replaced meanwhile differs from the hash, so the
    // next reload picks it up.
    let files_hash = hash_files(tls.certs.iter().flat_map(|p| [&p.cert, &p.key]));
    let ca_hash = tls.client_ca.as_ref().map(|ca| hash_files([ca]));
    let mut errors = Vec::new();
    let mut named = Vec::new();
    for (i, pair) in tls.certs.iter().enumerate() {
        match certs::load_pair(&format!("{key}.certs[{i}]"), pair, provider) {
            Ok(cert) => named.push(cert),
            Err(e) => errors.push(e),
        }
    }
    let verifier = match &tls.client_ca {
        Some(path) => {
            let ca_key = format!("{key}.client_ca");
            match certs::client_roots(&ca_key, path).and_then(|roots| {
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        key: ca_key.clone(),
                        path: path.clone(),
                        message: e.to_string(),
                    })
            }) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
        None => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if named.is_empty() {
        let message = "a TLS listener needs at least one certificate".to_owned();
        return Err(vec![TlsError::Setup { key, message }]);
    }
    let setup = |e: rustls::Error| {
        vec![TlsError::Setup {
            key: key.clone(),
            message: e.to_string(),
        }]
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(setup)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let names = named.iter().map(|c| c.names.clone()).collect();
    let mut config = builder.with_cert_resolver(Arc::new(certs::SniResolver { certs: named }));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    match previous.filter(|p| p.ca_hash == ca_hash) {
        Some(p) => {
            config.session_storage = Arc::clone(&p.config.session_storage);
            config.ticketer = Arc::clone(&p.config.ticketer);
        }
        None => {
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
            config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(setup)?;
        }
    }
    Ok(TlsListener {
        listen: tls.listen,
        config: Arc::new(config),
        files_hash,
        ca_hash,
        names,
    })
}

/// Hash of the bytes of `paths` (a missing file hashes as its error).
fn hash_files<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.hash(&mut h);
        match certs::read_pem_file(path) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

/// Every file TLS listeners read (certificates, keys, client CAs): the file watcher
/// watches them and the generation fingerprint hashes them.
pub fn files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config
        .server
        .tls
        .iter()
        .flat_map(|t| {
            t.certs
                .iter()
                .flat_map(|p| [p.cert.clone(), p.key.clone()])
                .chain(t.client_ca.clone())
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// TLS errors as diagnostics of the config file, as `proxycache check` prints them:
/// `config.toml:12:23: server.tls[0].certs[0].cert: cannot read /etc/...`, at the value
/// of the key that names the file (the files are read after validation, so the config
/// keeps where each value was).
pub fn diagnostics(config: &Config, errors: &[TlsError]) -> Vec<Diagnostic> {
    let config_file = config.source.as_ref().map_or_else(
        || crate::config::EMBEDDED_NAME.to_owned(),
        |p| p.display().to_string(),
    );
    errors
        .iter()
        .map(|e| match key_at(config, e.key()) {
            Some(at) => Diagnostic::at_range(&config_file, &config.source_text, at, e.to_string()),
            None => Diagnostic::unpositioned(&config_file, e.to_string()),
        })
        .collect()
}

/// Where the value of a `server.tls[..]` key is in the config text.
fn key_at(config: &Config, key: &str) -> Option<std::ops::Range<usize>> {
    config.server.tls.iter().enumerate().find_map(|(i, t)| {
        let listener = format!("server.tls[{i}]");
        let rest = key.strip_prefix(&listener)?;
        if rest.is_empty() {
            return Some(t.at.clone());
        }
        if rest == ".client_ca" {
            return t.client_ca_at.clone();
        }
        t.certs.iter().enumerate().find_map(|(j, p)| {
            match rest.strip_prefix(&format!(".certs[{j}]"))? {
                ".cert" => Some(p.cert_at.clone()),
                ".key" => Some(p.key_at.clone()),
                _ => None,
            }
        })
    })
}

/// Handshakes a connection accepted on a TLS listener (within `timeouts.header`), then
/// serves it as HTTP/2 or HTTP/1.1 as ALPN chose (with no ALPN, as the client's first
/// bytes say, HTTP/2 only when the listener's `alpn` has h2).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    ctx: Arc<WorkerCtx>,
) {
    let local = stream.local_addr().unwrap_or(peer);
    let limit = ctx.shared.generation().config.server.timeouts.header;
    // A listener whose `alpn` leaves out h2 serves HTTP/1.1 only, also to clients
    // that offer no ALPN and send the HTTP/2 preface anyway.
    let h2_allowed = config.alpn_protocols.iter().any(|p| p == b"h2");
    let handshake = TlsAcceptor::from(config).accept(stream);
    let stats = &ctx.shared.stats;
    let stream = match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            stats.tls_handshake(false);
            tracing::debug!(target: "proxycache::server", %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            stats.tls_handshake(false);
            tracing::debug!(target: "proxycache::server", %peer, "TLS handshake timeout; closing");
            return;
        }
    };
    stats.tls_handshake(true);
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        Some(_) => Protocol::Http1,
        // No ALPN: the client's first bytes say which (as on plain listeners).
        None if h2_allowed => Protocol::Auto,
        None => Protocol::Http1,
    };
    super::conn::serve_io(stream, peer, local, "https", protocol, ctx).await;
}

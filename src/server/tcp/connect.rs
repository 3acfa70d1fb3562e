//! Connection setup of a `[[tcp]]` session: pick a server of the set, connect within
//! `connect_timeout`, and on failure try the set's other available servers in turn.
//!
//! Owns: the server pick and connect retries, and what a failed setup is called.
//! Must not touch: the relay, the access line.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::config::ServerTarget;
use crate::server::listener::Throttle;
use crate::upstream::balance::{hash_bytes, PickKey};
use crate::upstream::{InflightGuard, NoServer, Tried, UpstreamSet};

/// Why an L4 connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("tcp frontend {listen}: upstream {upstream:?} no longer exists")]
    NoUpstream {
        listen: SocketAddr,
        upstream: String,
    },
    #[error(transparent)]
    NoServer(#[from] NoServer),
    #[error("upstream {upstream}: connect to {server} failed: {source}")]
    Connect {
        upstream: String,
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream}: connect to {server} timed out")]
    ConnectTimeout {
        upstream: String,
        server: SocketAddr,
    },
    #[error("upstream {upstream}: sending the PROXY header: {source}")]
    ProxyHeader {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
}

impl TcpError {
    /// The server a failed connect was with.
    pub fn server(&self) -> Option<SocketAddr> {
        match self {
            TcpError::Connect { server, .. } | TcpError::ConnectTimeout { server, .. } => {
                Some(*server)
            }
            _ => None,
        }
    }
}

/// Picks a server and connects to it; while connects fail, tries the set's other
/// servers in turn (nothing has been sent yet: as nginx's stream module does), each
/// within `connect_timeout`. `retries` throttles the warning each retry logs (a dead
/// server under load would fail every connection that picks it).
pub(super) async fn connect(
    set: &UpstreamSet,
    peer: SocketAddr,
    retries: &Mutex<Throttle>,
) -> Result<(TcpStream, InflightGuard), TcpError> {
    let key = PickKey {
        client_ip: peer.ip(),
        hash: match peer.ip() {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        },
    };
    let upstream = || set.name().to_owned();
    let mut tried = Tried::new();
    let mut last_error = None;
    // Bounded: every turn either returns or marks one more server as tried.
    for _ in 0..set.servers.len() {
        let Some((index, guard)) = set.pick(&key, &tried) else {
            break;
        };
        tried.insert(index);
        let server = Arc::clone(guard.server());
        if let Some(failed) = &last_error {
            // Only now, with another server picked, is the failure a retry.
            let admitted = retries.lock().admit();
            if let Some(left_out) = admitted {
                tracing::warn!(target: "proxycache::server", error = %failed, next = server.label(), left_out, "tcp connect failed; trying another server");
            }
        }
        let ServerTarget::Addr { addr, .. } = server.target else {
            // builtin:echo speaks HTTP only (validation refuses it in a set a [[tcp]]
            // frontend uses); it is no failure of the server's.
            continue;
        };
        let attempt = tokio::time::timeout(set.config.connect_timeout, TcpStream::connect(addr));
        let error = match attempt.await {
            Ok(Ok(stream)) => {
                guard.record_outcome(true, set.name());
                let _ = stream.set_nodelay(true);
                return Ok((stream, guard));
            }
            Ok(Err(source)) if crate::upstream::connect::is_local_failure(&source) => {
                // Out of file descriptors (or the like) here: not the server's fault,
                // and no other server would do better.
                return Err(TcpError::Connect {
                    upstream: upstream(),
                    server: addr,
                    source,
                });
            }
            Ok(Err(source)) => TcpError::Connect {
                upstream: upstream(),
                server: addr,
                source,
            },
            Err(_) => TcpError::ConnectTimeout {
                upstream: upstream(),
                server: addr,
            },
        };
        guard.record_outcome(false, set.name());
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| TcpError::NoServer(set.no_server())))
}

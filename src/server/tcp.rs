//! L4 `[[tcp]]` frontends: every worker accepts on its own `SO_REUSEPORT` socket for
//! the frontend's address; each connection picks a server of the named upstream set
//! (balancing, health and breaker as for HTTP, keyed by the client IP), connects
//! within the set's `connect_timeout` (a failed connect is tried on the set's other
//! available servers in turn until one answers, and every outcome feeds the server's
//! breaker), optionally sends a PROXY protocol header, then relays bytes both ways
//! (see `relay`) until both sides close or nothing moves for the frontend's own
//! `idle_timeout` (not `server.timeouts.idle`, which is HTTP keep-alive's: pooled
//! database connections sit idle far longer).
//!
//! Reload: the listeners themselves are fixed until a restart (an added, removed or
//! moved `[[tcp]]` listener is reported as `requires_restart`), but each connection
//! reads the current generation, finding its frontend by address (`serving_entry`),
//! so a changed upstream set, `proxy_protocol` or `idle_timeout` applies to the next
//! connection.
//!
//! Owns: the L4 accept loop and connection setup. Must not touch: HTTP.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ServerTarget};
use crate::generation::Generation;
use crate::upstream::balance::{hash_bytes, PickKey};
use crate::upstream::{InflightGuard, NoServer, Tried, UpstreamSet};

use super::listener::{self, Throttle};
use super::relay::{self, ConnSlot};
use super::worker::WorkerCtx;
use super::ServerError;

/// One worker's socket for one `[[tcp]]` frontend, with the frontend as configured at
/// startup (used when a reload removed it: the listener stays until a restart).
#[derive(Debug)]
pub struct Frontend {
    /// Position in `Config::tcp` at startup.
    pub index: usize,
    /// The configured address (may have port 0).
    pub listen: SocketAddr,
    /// The upstream set's name at startup.
    pub upstream: String,
    pub proxy_protocol: Option<u8>,
    pub idle_timeout: Duration,
    pub listener: StdListener,
}

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

/// Binds every `[[tcp]]` frontend once per worker. Returns each worker's frontends
/// and the bound addresses in config order (ports resolved when 0).
pub fn bind_all(
    config: &Config,
    workers: usize,
) -> Result<(Vec<Vec<Frontend>>, Vec<SocketAddr>), ServerError> {
    let mut per_worker: Vec<Vec<Frontend>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound_addrs = Vec::new();
    for (index, tcp) in config.tcp.iter().enumerate() {
        let addr = tcp.listen;
        let (sockets, bound) = listener::bind_reuseport(addr, workers)
            .map_err(|source| ServerError::Bind { addr, source })?;
        let upstream = config
            .upstreams
            .get(tcp.upstream)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        for (i, listener) in sockets.into_iter().enumerate() {
            per_worker[i].push(Frontend {
                index,
                listen: addr,
                upstream: upstream.clone(),
                proxy_protocol: tcp.proxy_protocol,
                idle_timeout: tcp.idle_timeout,
                listener,
            });
        }
        bound_addrs.push(bound);
    }
    Ok((per_worker, bound_addrs))
}

/// Accepts on one frontend until the worker aborts the task (shutdown).
pub async fn accept_loop(frontend: Frontend, ctx: Arc<WorkerCtx>) {
    let listener = match TcpListener::from_std(frontend.listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "proxycache::server", worker = ctx.id, listen = %frontend.listen, error = %e, "cannot register tcp listener");
            return;
        }
    };
    let frontend = Arc::new(Resolver {
        index: frontend.index,
        listen: frontend.listen,
        last: parking_lot::Mutex::new(Settings {
            upstream: frontend.upstream,
            proxy_protocol: frontend.proxy_protocol,
            idle_timeout: frontend.idle_timeout,
        }),
    });
    let (mut refusals, mut failures) = (Throttle::default(), Throttle::default());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = ConnSlot::try_take(&ctx.shared) else {
                    if let Some(left_out) = refusals.admit() {
                        tracing::warn!(target: "proxycache::server", %peer, left_out, "connection limit reached; refusing");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (ctx, frontend) = (Arc::clone(&ctx), Arc::clone(&frontend));
                tokio::spawn(async move {
                    serve(stream, peer, &frontend, &ctx).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                if let Some(left_out) = failures.admit() {
                    tracing::warn!(target: "proxycache::server", error = %e, left_out, "tcp accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Finds a frontend's settings in whichever generation is current.
struct Resolver {
    index: usize,
    listen: SocketAddr,
    /// The settings it last resolved to (at first, the startup settings).
    last: parking_lot::Mutex<Settings>,
}

/// A frontend's settings, its upstream set by name.
#[derive(Debug)]
struct Settings {
    upstream: String,
    proxy_protocol: Option<u8>,
    idle_timeout: Duration,
}

/// What a new connection goes by.
struct Resolved {
    set: Arc<UpstreamSet>,
    proxy_protocol: Option<u8>,
    idle_timeout: Duration,
}

impl Resolver {
    /// The settings for a new connection: the current generation's entry for this
    /// listener, or (when a reload removed or moved it: the listener serves on until
    /// a restart) the settings it last had, its upstream set looked up by name.
    fn resolve(&self, g: &Generation) -> Result<Resolved, TcpError> {
        let tcp = &g.config.tcp;
        let entry = listener::serving_entry(tcp, |t| t.listen, self.index, self.listen)
            .and_then(|i| tcp.get(i));
        let mut last = self.last.lock();
        let found = match entry {
            Some(t) => g.upstreams.sets.get(t.upstream).map(|s| {
                if last.upstream != s.name()
                    || last.proxy_protocol != t.proxy_protocol
                    || last.idle_timeout != t.idle_timeout
                {
                    *last = Settings {
                        upstream: s.name().to_owned(),
                        proxy_protocol: t.proxy_protocol,
                        idle_timeout: t.idle_timeout,
                    };
                }
                Resolved {
                    set: Arc::clone(s),
                    proxy_protocol: t.proxy_protocol,
                    idle_timeout: t.idle_timeout,
                }
            }),
            None => g.upstreams.by_name(&last.upstream).map(|s| Resolved {
                set: Arc::clone(s),
                proxy_protocol: last.proxy_protocol,
                idle_timeout: last.idle_timeout,
            }),
        };
        found.ok_or_else(|| TcpError::NoUpstream {
            listen: self.listen,
            upstream: last.upstream.clone(),
        })
    }
}

/// One L4 connection: set up, then relay until either side is done.
async fn serve(client: TcpStream, peer: SocketAddr, frontend: &Resolver, ctx: &WorkerCtx) {
    let generation = ctx.shared.generation();
    let local = client.local_addr().unwrap_or(frontend.listen);
    let setup = async {
        let Resolved {
            set,
            proxy_protocol,
            idle_timeout,
        } = frontend.resolve(&generation)?;
        let (mut upstream, guard) = connect(&set, peer).await?;
        if let Some(version) = proxy_protocol {
            let header = super::proxy_protocol::header(version, peer, local);
            upstream
                .write_all(&header)
                .await
                .map_err(|source| TcpError::ProxyHeader {
                    upstream: set.name().to_owned(),
                    source,
                })?;
        }
        Ok::<_, TcpError>((upstream, guard, idle_timeout))
    };
    let (upstream, guard, idle) = match setup.await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(target: "proxycache::server", %peer, listen = %frontend.listen, error = %e, "tcp connection refused");
            return;
        }
    };
    // The generation is not pinned for the relay's life: a long tunnel must not keep
    // an old pipeline alive.
    drop(generation);
    let server = guard.server().label().to_owned();
    match relay::relay(client, upstream, idle).await {
        Ok((up, down)) => {
            tracing::debug!(target: "proxycache::server", %peer, %server, up, down, "tcp connection closed")
        }
        Err(e) => {
            tracing::debug!(target: "proxycache::server", %peer, %server, error = %e, "tcp connection ended")
        }
    }
    // In flight on its server until the relay ends (least_conn counts tunnels).
    drop(guard);
}

/// Picks a server and connects to it; while connects fail, tries the set's other
/// servers in turn (nothing has been sent yet: as nginx's stream module does), each
/// within `connect_timeout`.
async fn connect(
    set: &UpstreamSet,
    peer: SocketAddr,
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
        let ServerTarget::Addr { addr, .. } = server.target else {
            // builtin:echo speaks HTTP only (validation refuses it in a set a [[tcp]]
            // frontend uses); it is no failure of the server's.
            continue;
        };
        let attempt = tokio::time::timeout(set.config.connect_timeout, TcpStream::connect(addr));
        let error = match attempt.await {
            Ok(Ok(stream)) => {
                guard.record_outcome(true);
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
        guard.record_outcome(false);
        tracing::warn!(target: "proxycache::server", error = %error, "tcp connect failed; retrying on another server");
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| TcpError::NoServer(set.no_server())))
}

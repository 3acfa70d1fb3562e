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
//! With `log.access`, every session writes one access line when it ends (`session`).
//!
//! Owns: the L4 accept loop and each session's course. Must not touch: HTTP.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::generation::Generation;
use crate::upstream::UpstreamSet;

use super::listener::{self, Throttle};
use super::relay::{self, ConnSlot};
use super::worker::WorkerCtx;
use super::ServerError;

mod connect;
mod session;

use connect::{connect, TcpError};
use session::{End, Session};

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
        bound: listener.local_addr().unwrap_or(frontend.listen),
        refused: Default::default(),
        retries: Default::default(),
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
    /// The configured address (may have port 0).
    listen: SocketAddr,
    /// The address bound, as the access log names the frontend.
    bound: SocketAddr,
    /// The per-connection warnings (a refused connection, a connect retried), at
    /// most one line a second each: a dead backend under load would fail every
    /// connection. (The access log still has every session.)
    refused: parking_lot::Mutex<Throttle>,
    retries: parking_lot::Mutex<Throttle>,
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

/// One L4 connection: set up, then relay until either side is done; its access line
/// is written when `session` drops, however this ends.
async fn serve(client: TcpStream, peer: SocketAddr, frontend: &Resolver, ctx: &WorkerCtx) {
    let generation = ctx.shared.generation();
    let log = generation.config.log.access
        && tracing::enabled!(target: "proxycache::access", tracing::Level::INFO);
    let mut session = Session::new(log, frontend.bound, peer);
    let local = client.local_addr().unwrap_or(frontend.listen);
    let setup = async {
        let Resolved {
            set,
            proxy_protocol,
            idle_timeout,
        } = frontend.resolve(&generation)?;
        session.upstream = Some(set.name().to_owned());
        let connected = connect(&set, peer, &frontend.retries).await;
        session.server = match &connected {
            Ok((_, guard)) => Some(guard.server().label().to_owned()),
            Err(e) => e.server().map(|s| s.to_string()),
        };
        let (mut upstream, guard) = connected?;
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
            let admitted = frontend.refused.lock().admit();
            if let Some(left_out) = admitted {
                tracing::warn!(target: "proxycache::server", %peer, listen = %frontend.bound, error = %e, left_out, "tcp connection refused");
            }
            session.end = Some(End::setup_failed(&e));
            return;
        }
    };
    // The generation is not pinned for the relay's life: a long tunnel must not keep
    // an old pipeline alive.
    drop(generation);
    let relayed = relay::relay(client, upstream, idle, &session.traffic).await;
    session.end = Some(End::relayed(&relayed));
    // In flight on its server until the relay ends (least_conn counts tunnels).
    drop(guard);
}

//! The server: binds listeners, starts the workers and the control thread, and shuts
//! down gracefully (stop accepting, let in-flight requests finish up to
//! `timeouts.shutdown_drain`).
//!
//! Owns: threads, sockets, connection lifecycle and limits. Must not touch: what a
//! request does once parsed (that is `proxy`).

pub mod conn;
pub mod fds;
pub mod h1;
pub mod h2;
pub mod listener;
pub mod proxy_protocol;
pub mod relay;
pub mod stall;
pub mod tcp;
pub mod tls;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Config;
use crate::generation::Generation;
use crate::stats::Stats;
use crate::upstream::pool::Pool;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("modules or certificates failed to load:\n{}", crate::script::diag::render_all(.0))]
    Modules(Vec<crate::script::Diagnostic>),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every worker and the control thread.
pub struct Shared {
    generation: ArcSwap<Generation>,
    shutdown: watch::Sender<bool>,
    /// Open client connections, across workers.
    pub connections: AtomicUsize,
    /// Woken when a connection closes (shutdown drain waits on it).
    pub conn_closed: Notify,
    /// Request and upstream counters.
    pub stats: Arc<Stats>,
    /// Every worker's pool, for statistics.
    pub pools: Mutex<Vec<Arc<Pool>>>,
    /// When the server started.
    pub started: Instant,
    /// The config file reloads read (`None`: the embedded default).
    pub config_path: Option<PathBuf>,
    /// The config the process started with. What only a restart changes still runs by
    /// it (the workers, the log setup, the cache and Redis client, the admin, TLS and
    /// `[[tcp]]` sockets): reloads compare their restart-only keys with it.
    pub startup_config: Arc<Config>,
    /// Each worker's command channel (listeners opened and closed on reload).
    pub workers: Mutex<Vec<mpsc::UnboundedSender<worker::WorkerCmd>>>,
    /// Configured HTTP listen address -> the address actually bound.
    pub listeners: Mutex<BTreeMap<SocketAddr, SocketAddr>>,
    /// The admin listener's bound address, if the admin API is on.
    pub admin_addr: Option<SocketAddr>,
    /// The reload machinery (serialises reloads, remembers the last result).
    pub reloads: crate::reload::ReloadState,
    /// Woken after a new generation is swapped in.
    pub generation_swapped: Notify,
}

impl Shared {
    /// State for `generation` with no listeners, workers, admin API or config file:
    /// what `start` fills in, and what benches and tools that drive the request path
    /// without a server use as it is.
    pub fn detached(generation: Arc<Generation>) -> Shared {
        Shared {
            startup_config: Arc::clone(&generation.config),
            generation: ArcSwap::new(generation),
            shutdown: watch::channel(false).0,
            connections: AtomicUsize::new(0),
            conn_closed: Notify::new(),
            stats: Arc::default(),
            pools: Mutex::new(Vec::new()),
            started: Instant::now(),
            config_path: None,
            workers: Mutex::new(Vec::new()),
            listeners: Mutex::new(BTreeMap::new()),
            admin_addr: None,
            reloads: crate::reload::ReloadState::default(),
            generation_swapped: Notify::new(),
        }
    }

    /// The current generation (requests pin it for their whole life).
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Swaps in a new generation; requests already running keep theirs.
    pub fn swap_generation(&self, next: Arc<Generation>) {
        self.generation.store(next);
        self.generation_swapped.notify_one();
    }

    /// A receiver that turns `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Upstream connections opened and requests sent on reused ones, across workers.
    pub fn pool_totals(&self) -> (u64, u64) {
        self.pools.lock().iter().fold((0, 0), |(o, r), p| {
            (
                o + p.opened.load(Ordering::Relaxed),
                r + p.reused.load(Ordering::Relaxed),
            )
        })
    }
}

/// A running server.
pub struct ServerHandle {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The addresses the HTTP listeners are bound to (ports resolved when 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The addresses the `[[server.tls]]` listeners are bound to, in config order.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The first plain listener's address (else the first TLS listener's; else
    /// `0.0.0.0:0` when there is neither).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs
            .first()
            .or_else(|| self.tls_addrs.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The addresses the `[[tcp]]` frontends are bound to, in config order.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The admin API's address, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.admin_addr
    }

    /// The shared state (generation, counters).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Begins a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Shuts down gracefully and waits for every thread to finish.
    pub fn shutdown(self) {
        self.begin_shutdown();
        self.join();
    }

    /// Waits for every thread to finish (after `begin_shutdown`).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds every listener and starts the workers and the control thread.
/// `config_path` is the file reloads re-read (`None`: the embedded default).
pub fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let config_path = config.source.clone();
    let std_state = Arc::new(crate::pipeline::StdState::new(
        config.cache,
        config.redis.clone(),
    ));
    // Modules are compiled and certificates read before any socket is bound: a broken
    // module or certificate file means no start.
    let generation =
        Arc::new(Generation::build(1, config, None, std_state).map_err(ServerError::Modules)?);
    let config = &generation.config;
    let workers = config.server.workers.max(1);
    let mut per_worker: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    let mut listeners = BTreeMap::new();
    for &addr in &config.server.listen {
        let (bound_sockets, bound) = listener::bind_reuseport(addr, workers)
            .map_err(|source| ServerError::Bind { addr, source })?;
        for (i, l) in bound_sockets.into_iter().enumerate() {
            per_worker[i].push((addr, l));
        }
        addrs.push(bound);
        listeners.insert(addr, bound);
    }
    let mut per_worker_tls: Vec<Vec<worker::TlsSocket>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut tls_addrs = Vec::new();
    for (index, tls) in config.server.tls.iter().enumerate() {
        let addr = tls.listen;
        let (sockets, bound) = listener::bind_reuseport(addr, workers)
            .map_err(|source| ServerError::Bind { addr, source })?;
        for (i, socket) in sockets.into_iter().enumerate() {
            per_worker_tls[i].push(worker::TlsSocket {
                index,
                listen: addr,
                socket,
            });
        }
        tls_addrs.push(bound);
    }
    let (mut per_worker_tcp, tcp_addrs) = tcp::bind_all(config, workers)?;
    let admin = match config.admin.listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let (shutdown, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        shutdown,
        config_path,
        listeners: Mutex::new(listeners),
        admin_addr,
        ..Shared::detached(Arc::clone(&generation))
    });
    generation.std_state.metrics.attach(&shared);
    // The SIGHUP listener and the file watches are made here, before any worker
    // accepts, not later on the control thread: once the proxy answers, a reload
    // signal is never the signal's default action (the end of the process), and a
    // file changed from then on is seen.
    let control = crate::control::prepare().map_err(|source| ServerError::Thread {
        name: "pc-control".into(),
        source,
    })?;
    let watching = crate::reload::watch::install(&shared);
    let mut threads = Vec::new();
    for (id, (listeners, tls)) in per_worker.into_iter().zip(per_worker_tls).enumerate() {
        let shared = Arc::clone(&shared);
        let (tx, rx) = mpsc::unbounded_channel();
        // Queued before the worker runs: it starts accepting on them at once.
        if let Some(frontends) = per_worker_tcp.get_mut(id) {
            for frontend in std::mem::take(frontends) {
                let _ = tx.send(worker::WorkerCmd::ListenTcp(frontend));
            }
        }
        shared.workers.lock().push(tx);
        threads.push(spawn_thread(format!("pc-worker-{id}"), move || {
            worker::run(id, listeners, tls, shared, rx)
        })?);
    }
    let control_shared = Arc::clone(&shared);
    threads.push(spawn_thread("pc-control".into(), move || {
        crate::control::run(control, control_shared, admin, watching)
    })?);
    // The admin address as a person writes it (`off`, not Rust's `None`).
    let admin_shown = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    // Lists as a person writes them (`127.0.0.1:8080,[::1]:8080`), left out when empty.
    let shown = |list: &[SocketAddr]| crate::observe::list(list, ",");
    let (listen, tls, tcp) = (shown(&addrs), shown(&tls_addrs), shown(&tcp_addrs));
    tracing::info!(
        target: "proxycache::server",
        listen = listen.as_deref().map(tracing::field::display),
        tls = tls.as_deref().map(tracing::field::display),
        tcp = tcp.as_deref().map(tracing::field::display),
        admin = %admin_shown,
        workers,
        generation = generation.number,
        modules = generation.modules.len(),
        "proxycache serving"
    );
    Ok(ServerHandle {
        shared,
        addrs,
        tls_addrs,
        tcp_addrs,
        threads,
    })
}

fn spawn_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, ServerError> {
    std::thread::Builder::new()
        .name(name.clone())
        // Evaluating a module recurses as deep as its (bounded) expressions nest.
        .stack_size(8 << 20)
        .spawn(f)
        .map_err(|source| ServerError::Thread { name, source })
}

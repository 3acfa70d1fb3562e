//! A worker: one OS thread running a current-thread tokio runtime with its own
//! listeners and its own upstream connection pool — the nginx model inside one
//! process. Workers share only the `Shared` state (generation, counters).

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::upstream::pool::Pool;

use super::listener::Throttle;
use super::Shared;

/// What a worker's request path can reach.
pub struct WorkerCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
}

/// What the control thread can ask of a running worker.
#[derive(Debug)]
pub enum WorkerCmd {
    /// Start accepting on this (already bound) listener; the key is the configured
    /// address it serves.
    Listen(SocketAddr, StdListener),
    /// Stop accepting on the listener serving this configured address.
    Unlisten(SocketAddr),
    /// Start accepting on this worker's socket for an L4 `[[tcp]]` frontend (sent
    /// once at startup; these listeners live until shutdown).
    ListenTcp(super::tcp::Frontend),
}

/// This worker's socket for one `[[server.tls]]` listener.
#[derive(Debug)]
pub struct TlsSocket {
    /// Its index in `server.tls`.
    pub index: usize,
    /// The address it is configured as (the key into the generation's TLS configs).
    pub listen: SocketAddr,
    pub socket: StdListener,
}

/// What an accept loop does with a connection.
enum Kind {
    Http,
    /// The start-up socket of TLS listener `index`, configured as `listen`.
    Tls {
        index: usize,
        listen: SocketAddr,
    },
}

/// How often idle upstream connections are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Runs worker `id` until shutdown has drained (or `shutdown_drain` ran out).
/// `listeners` pairs each configured address with this worker's socket for it;
/// `tls` are this worker's TLS sockets (opened at start-up only).
pub fn run(
    id: usize,
    listeners: Vec<(SocketAddr, StdListener)>,
    tls: Vec<TlsSocket>,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "proxycache::server", worker = id, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let ctx = Arc::new(WorkerCtx {
        id,
        shared: Arc::clone(&shared),
        pool: Arc::new(Pool::default()),
    });
    shared.pools.lock().push(Arc::clone(&ctx.pool));
    runtime.block_on(async move {
        let mut accept_tasks: HashMap<SocketAddr, (JoinHandle<()>, Arc<Notify>)> = HashMap::new();
        let mut tcp_tasks: Vec<JoinHandle<()>> = Vec::new();
        for (addr, listener) in listeners {
            listen(&ctx, &mut accept_tasks, addr, listener);
        }
        let mut tls_tasks = Vec::new();
        for t in tls {
            match TcpListener::from_std(t.socket) {
                Ok(l) => {
                    let kind = Kind::Tls { index: t.index, listen: t.listen };
                    let stop = Arc::new(Notify::new());
                    tls_tasks.push(tokio::spawn(accept_loop(l, Arc::clone(&ctx), kind, stop)));
                }
                Err(e) => {
                    tracing::error!(target: "proxycache::server", worker = id, addr = %t.listen, error = %e, "cannot register TLS listener")
                }
            }
        }
        tokio::spawn(sweep_loop(Arc::clone(&ctx)));
        let mut shutdown = ctx.shared.shutdown_signal();
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                cmd = commands.recv() => match cmd {
                    Some(WorkerCmd::Listen(addr, listener)) => listen(&ctx, &mut accept_tasks, addr, listener),
                    Some(WorkerCmd::Unlisten(addr)) => {
                        if let Some((task, stop)) = accept_tasks.remove(&addr) {
                            stop.notify_one();
                            let _ = task.await;
                        }
                    }
                    Some(WorkerCmd::ListenTcp(frontend)) => {
                        tcp_tasks.push(tokio::spawn(super::tcp::accept_loop(frontend, Arc::clone(&ctx))));
                    }
                    None => {}
                },
            }
        }
        // Stop accepting first: dropping the listeners makes new connections fail fast.
        let http_tasks = accept_tasks.into_values().map(|(task, _)| task);
        for task in http_tasks.chain(tls_tasks).chain(tcp_tasks) {
            task.abort();
            let _ = task.await;
        }
        // Listeners still queued (the `[[tcp]]` ones of a worker whose loop had not
        // run yet when shutdown began, a reload's `Listen`) would otherwise stay
        // open, taking connections into their backlog that nobody accepts, until
        // the drain ends.
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            drop(cmd);
        }
        drain(&ctx).await;
    });
}

fn listen(
    ctx: &Arc<WorkerCtx>,
    tasks: &mut HashMap<SocketAddr, (JoinHandle<()>, Arc<Notify>)>,
    addr: SocketAddr,
    listener: StdListener,
) {
    match TcpListener::from_std(listener) {
        Ok(l) => {
            let stop = Arc::new(Notify::new());
            let task = tokio::spawn(accept_loop(
                l,
                Arc::clone(ctx),
                Kind::Http,
                Arc::clone(&stop),
            ));
            if let Some((_, old)) = tasks.insert(addr, (task, stop)) {
                old.notify_one();
            }
        }
        Err(e) => {
            tracing::error!(target: "proxycache::server", worker = ctx.id, %addr, error = %e, "cannot register listener")
        }
    }
}

/// Accepts connections on `listener` until `stop` is notified; then takes what the
/// kernel had already queued before closing it. (Dropped with its queue, the socket
/// reset those connections: a client that connected while a reload moved the listener,
/// say from `127.0.0.1:8080` to `0.0.0.0:8080`, got a reset.)
async fn accept_loop(listener: TcpListener, ctx: Arc<WorkerCtx>, kind: Kind, stop: Arc<Notify>) {
    let (mut refusals, mut failures) = (Throttle::default(), Throttle::default());
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.notified() => {
                while let Poll::Ready(Ok((stream, peer))) =
                    std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await
                {
                    take(&ctx, &kind, stream, peer, &mut refusals);
                }
                return;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => take(&ctx, &kind, stream, peer, &mut refusals),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                if let Some(left_out) = failures.admit() {
                    tracing::warn!(target: "proxycache::server", error = %e, left_out, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves a connection `accept_loop` took, unless `max_connections` are open.
fn take(
    ctx: &Arc<WorkerCtx>,
    kind: &Kind,
    stream: TcpStream,
    peer: SocketAddr,
    refusals: &mut Throttle,
) {
    let shared = &ctx.shared;
    let generation = shared.generation();
    let max = generation.config.server.limits.max_connections;
    if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(left_out) = refusals.admit() {
            tracing::warn!(target: "proxycache::server", %peer, max, left_out, "connection limit reached; refusing");
        }
        return;
    }
    let _ = stream.set_nodelay(true);
    let conn_ctx = Arc::clone(ctx);
    match kind {
        Kind::Http => spawn_conn(ctx, move || super::conn::serve(stream, peer, conn_ctx)),
        Kind::Tls { index, listen } => {
            // Read per connection: a reload's new certificates serve the next
            // handshake. A listener a reload removed keeps the configuration it had
            // (the generation carries it over).
            match generation.tls.config_for(*index, *listen) {
                Some(config) => spawn_conn(ctx, move || {
                    super::tls::serve(stream, peer, config, conn_ctx)
                }),
                None => {
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                    tracing::error!(target: "proxycache::server", listen = %listen, "no TLS configuration for this listener; closing");
                }
            }
        }
    }
}

/// Runs one connection, counting it until it ends.
fn spawn_conn<F>(ctx: &Arc<WorkerCtx>, serve: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(conn_task(Arc::clone(ctx), serve));
}

/// The task of one connection: `serve`'s future, then the count of open connections
/// down by one. The future is made inside the task, not moved into it: an `async`
/// block that awaits a future it captured keeps room for both the captured future and
/// the one it awaits, which made every connection's task twice its size (11.8 KB where
/// the connection's future is 5.9 KB; heap bytes per idle connection, dhat).
async fn conn_task<F>(ctx: Arc<WorkerCtx>, serve: impl FnOnce() -> F)
where
    F: Future<Output = ()>,
{
    serve().await;
    ctx.shared.connections.fetch_sub(1, Ordering::AcqRel);
    ctx.shared.conn_closed.notify_waiters();
}

thread_local! {
    /// Set on a worker's thread when its shutdown drain runs out of time: the requests
    /// its runtime then drops were cut by the proxy, not given up by their clients.
    static DRAIN_CUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread's worker ended its shutdown drain with connections still open
/// (what `proxy::completion` logs a request dropped unanswered as).
pub fn drain_cut() -> bool {
    DRAIN_CUT.with(std::cell::Cell::get)
}

async fn drain(ctx: &WorkerCtx) {
    let drain_for = ctx
        .shared
        .generation()
        .config
        .server
        .timeouts
        .shutdown_drain;
    let deadline = tokio::time::Instant::now() + drain_for;
    loop {
        let notified = ctx.shared.conn_closed.notified();
        if ctx.shared.connections.load(Ordering::Acquire) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            tracing::warn!(target: "proxycache::server", worker = ctx.id, "shutdown drain time is up; closing remaining connections");
            DRAIN_CUT.with(|cut| cut.set(true));
            return;
        }
    }
}

async fn sweep_loop(ctx: Arc<WorkerCtx>) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticker.tick().await;
        let generation = ctx.shared.generation();
        ctx.pool.sweep(|addr| {
            generation
                .upstreams
                .serving(addr)
                .next()
                // An address of no set: a callout's, kept as long as callouts keep it.
                .map_or(crate::upstream::pool::OUTBOUND_IDLE_TIMEOUT, |s| {
                    s.config.pool.idle_timeout
                })
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::{accept_loop, conn_task, run, Kind, WorkerCmd, WorkerCtx};
    use crate::config::Config;
    use crate::generation::Generation;
    use crate::pipeline::StdState;
    use crate::server::{tcp, Shared};

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, None, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn detached(config: Config) -> Arc<Shared> {
        let std_state = Arc::new(StdState::new(config.cache, None));
        let generation = Generation::build_from(1, config, &[], None, std_state)
            .unwrap_or_else(|e| panic!("{e:?}"));
        Arc::new(Shared::detached(Arc::new(generation)))
    }

    #[test]
    fn a_connections_task_is_the_size_of_its_future() {
        // An `async` block awaiting a future it captured held two of them: 11.8 KB a
        // connection where one is 5.9 KB.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let ctx = Arc::new(WorkerCtx {
                id: 0,
                shared: detached(config("")),
                pool: Arc::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let connect = || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            };
            let (a, b) = (connect().await, connect().await);
            let alone =
                std::mem::size_of_val(&crate::server::conn::serve(a, addr, Arc::clone(&ctx)));
            let served = Arc::clone(&ctx);
            let task = conn_task(ctx, move || crate::server::conn::serve(b, addr, served));
            let whole = std::mem::size_of_val(&task);
            assert!(
                whole < alone + alone / 4,
                "a connection's task is {whole} bytes, its future {alone}"
            );
        });
    }

    #[test]
    fn a_listener_stopped_serves_the_connections_it_had_queued() {
        // A reload that moves or drops a listen address stops its accept loop: the
        // connections the kernel had queued on it were reset with the socket.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let echo = "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n\
                        [[routes]]\nupstream = \"echo\"\n";
            let ctx = Arc::new(WorkerCtx {
                id: 0,
                shared: detached(config(echo)),
                pool: Arc::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let stop = Arc::new(tokio::sync::Notify::new());
            let task = tokio::spawn(accept_loop(listener, ctx, Kind::Http, Arc::clone(&stop)));
            // Queued by the kernel before the loop ever runs, then the loop is stopped.
            let mut clients = Vec::new();
            for _ in 0..3 {
                let mut c = tokio::net::TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                clients.push(c);
            }
            stop.notify_one();
            let _ = task.await;
            for mut c in clients {
                let mut got = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
                let text = String::from_utf8_lossy(&got);
                assert!(
                    matches!(read, Ok(Ok(_))) && text.starts_with("HTTP/1.1 200"),
                    "a queued connection was served: {read:?} {text}"
                );
            }
        });
    }

    #[test]
    fn a_listener_still_queued_at_shutdown_is_closed_at_once() {
        // A worker whose loop had not run when shutdown began kept its [[tcp]]
        // socket in the command queue, open and accepting into its backlog, for the
        // whole drain.
        let text = "[server.timeouts]\nshutdown_drain = \"5s\"\n\n\
                    [upstreams.db]\nservers = [\"127.0.0.1:1\"]\n\n\
                    [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n";
        let config = config(text);
        let (mut frontends, addrs) = tcp::bind_all(&config, 1).unwrap_or_else(|e| panic!("{e}"));
        let shared = detached(config);
        shared.shutdown.send_replace(true);
        // A connection still open elsewhere: the drain waits for it.
        shared.connections.store(1, Ordering::Release);
        let (tx, rx) = mpsc::unbounded_channel();
        for frontend in frontends.remove(0) {
            let _ = tx.send(WorkerCmd::ListenTcp(frontend));
        }
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::spawn(move || run(0, Vec::new(), Vec::new(), worker_shared, rx));
        std::thread::sleep(Duration::from_millis(300));
        let connected = std::net::TcpStream::connect_timeout(&addrs[0], Duration::from_millis(500));
        shared.connections.store(0, Ordering::Release);
        shared.conn_closed.notify_waiters();
        let _ = worker.join();
        drop(tx);
        assert!(
            connected.is_err(),
            "the queued listener still took connections during the drain"
        );
    }
}

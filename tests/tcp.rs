//! L4 `[[tcp]]` frontends over real sockets: bytes relayed both ways through an
//! upstream set of TCP echo servers, balancing, half-close, a dead server skipped,
//! PROXY protocol v1/v2 headers as the upstream receives them, the idle timeout and
//! graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{dead_addr, proxy_toml, Proxy, CLIENT_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// A TCP server on 127.0.0.1:0: echoes everything, and after the client's EOF sends
/// `bye` and closes. Every connection's received bytes are kept.
struct EchoServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (Arc::clone(&accepts), Arc::clone(&received));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                all.extend_from_slice(&buf[..n]);
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    r.lock().expect("received lock").push(all);
                    let _ = stream.write_all(b"bye").await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        EchoServer {
            addr,
            accepts,
            received,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// What the `n`-th finished connection received.
    async fn received(&self, n: usize) -> Vec<u8> {
        let seen = common::wait_until(CLIENT_TIMEOUT, || {
            self.received.lock().expect("received lock").len() > n
        })
        .await;
        assert!(seen, "the upstream never saw connection {n} end");
        self.received.lock().expect("received lock")[n].clone()
    }
}

/// proxycache with one `[[tcp]]` frontend over `servers`; `tcp_extra` goes into the
/// `[[tcp]]` table, `server_extra` into `[server]`-level tables.
fn l4_proxy(servers: &[SocketAddr], tcp_extra: &str, server_extra: &str) -> (Proxy, SocketAddr) {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n{server_extra}\n\n[admin]\nlisten = \"\"\n\n\
         [upstreams.db]\nservers = [{}]\nconnect_timeout = \"500ms\"\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n{tcp_extra}\n",
        list.join(", ")
    );
    let proxy = proxy_toml(&toml);
    let tcp = proxy.handle().tcp_addrs()[0];
    (proxy, tcp)
}

/// Sends `msg`, shuts the write side, and reads everything back.
async fn exchange(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let run = async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the frontend");
        s.write_all(msg).await.expect("write");
        s.shutdown().await.expect("shutdown write");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read back");
        back
    };
    timeout(CLIENT_TIMEOUT, run)
        .await
        .expect("exchange in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_echoed_and_balanced_across_the_set() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let (proxy, tcp) = l4_proxy(&[a.addr, b.addr], "", "");
    for i in 0..6 {
        let msg = format!("hello {i}");
        let back = exchange(tcp, msg.as_bytes()).await;
        assert_eq!(back, format!("{msg}bye").into_bytes());
    }
    assert_eq!(a.accepts() + b.accepts(), 6);
    assert!(
        a.accepts() >= 2 && b.accepts() >= 2,
        "round robin: {} / {}",
        a.accepts(),
        b.accepts()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(&[echo.addr], "", "");
    let run = async {
        let mut s = TcpStream::connect(tcp).await.expect("connect");
        s.write_all(b"first").await.expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)
            .await
            .expect("echo before the half-close");
        assert_eq!(&buf, b"first");
        s.write_all(b" second").await.expect("write");
        // Our write side is done; the upstream's answer must still come through.
        s.shutdown().await.expect("shutdown write");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .await
            .expect("read after the half-close");
        rest
    };
    let rest = timeout(CLIENT_TIMEOUT, run).await.expect("in time");
    assert_eq!(rest, b" secondbye");
    assert_eq!(echo.received(0).await, b"first second");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_skipped() {
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(&[dead_addr(), echo.addr], "", "");
    for i in 0..4 {
        let msg = format!("try {i}");
        assert_eq!(
            exchange(tcp, msg.as_bytes()).await,
            format!("{msg}bye").into_bytes()
        );
    }
    assert_eq!(echo.accepts(), 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reachable_closes_the_client() {
    let (proxy, tcp) = l4_proxy(&[dead_addr()], "", "");
    let run = async {
        let mut s = TcpStream::connect(tcp)
            .await
            .expect("connect to the frontend");
        let mut back = Vec::new();
        // A close or a reset: either way nothing comes back.
        let _ = s.read_to_end(&mut back).await;
        back
    };
    let back = timeout(CLIENT_TIMEOUT, run).await.expect("closed in time");
    assert!(back.is_empty(), "{back:?}");
    proxy.shutdown().await;
}

/// Connects, sends `x`, closes, and returns what the upstream received with the
/// client's own address.
async fn via_proxy_protocol(version: u8) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(&[echo.addr], &format!("proxy_protocol = {version}"), "");
    let run = async {
        let mut s = TcpStream::connect(tcp).await.expect("connect");
        let me = s.local_addr().expect("client addr");
        s.write_all(b"x").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        me
    };
    let me = timeout(CLIENT_TIMEOUT, run).await.expect("in time");
    let got = echo.received(0).await;
    proxy.shutdown().await;
    (got, me, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_carries_the_real_addresses() {
    let (got, client, frontend) = via_proxy_protocol(1).await;
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\nx",
        client.ip(),
        frontend.ip(),
        client.port(),
        frontend.port()
    );
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_carries_the_real_addresses() {
    let (got, client, frontend) = via_proxy_protocol(2).await;
    assert_eq!(got.len(), 16 + 12 + 1, "{got:?}");
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(got[12], 0x21, "version 2, PROXY");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]), 12);
    assert_eq!(&got[16..20], &[127, 0, 0, 1]);
    assert_eq!(&got[20..24], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), client.port());
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), frontend.port());
    assert_eq!(got[28], b'x');
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_outlives_server_idle_and_closes_after_its_idle_timeout() {
    // Tunnels went by `server.timeouts.idle` (HTTP keep-alive's, 60 s by default),
    // which cut idle pooled database connections; the frontend has its own now.
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(
        &[echo.addr],
        "idle_timeout = \"1s\"",
        "[server.timeouts]\nidle = \"300ms\"\n",
    );
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(tcp).await.expect("connect");
    let mut one = [0u8; 1];
    let early = timeout(Duration::from_millis(700), s.read(&mut one)).await;
    assert!(
        early.is_err(),
        "closed at server.timeouts.idle, not the frontend's idle_timeout: {early:?}"
    );
    let read = timeout(Duration::from_secs(5), s.read(&mut one)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed by the idle timeout: {read:?}"
    );
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(900),
        "closed after {lived:?}, before idle_timeout"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_open_tunnels() {
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(
        &[echo.addr],
        "",
        "[server.timeouts]\nshutdown_drain = \"10s\"\n",
    );
    let mut open = TcpStream::connect(tcp).await.expect("connect");
    open.write_all(b"a").await.expect("write");
    let mut one = [0u8; 1];
    timeout(CLIENT_TIMEOUT, open.read_exact(&mut one))
        .await
        .expect("in time")
        .expect("echo");
    proxy.handle().begin_shutdown();
    // New connections are refused once the workers stop accepting...
    let refused = common::wait_until(CLIENT_TIMEOUT, || {
        std::net::TcpStream::connect_timeout(&tcp, Duration::from_millis(200)).is_err()
    })
    .await;
    assert!(refused, "the frontend still accepts after shutdown began");
    // ...while the open tunnel still works.
    open.write_all(b"b").await.expect("write during drain");
    timeout(CLIENT_TIMEOUT, open.read_exact(&mut one))
        .await
        .expect("in time")
        .expect("echo during drain");
    assert_eq!(&one, b"b");
    drop(open);
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited past the tunnel's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_next_connection_to_the_new_upstream_set() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let site = common::Site::new("tcp-reload");
    let config = |server: SocketAddr| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [scripts]\ndir = \"mods\"\nwatch = false\n\n\
             [upstreams.db]\nservers = [\"{server}\"]\n\n\
             [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n"
        )
    };
    site.write_config(&config(a.addr));
    let run = common::Running::start(&site);
    let tcp = run.handle.as_ref().expect("running").tcp_addrs()[0];
    assert_eq!(exchange(tcp, b"one").await, b"onebye");
    assert_eq!((a.accepts(), b.accepts()), (1, 0));

    site.write_config(&config(b.addr));
    let shared = Arc::clone(run.shared());
    let report = tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload thread");
    assert!(report.ok, "{report:?}");
    assert!(report.requires_restart.is_empty(), "{report:?}");
    assert_eq!(exchange(tcp, b"two").await, b"twobye");
    assert_eq!((a.accepts(), b.accepts()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_moved_by_a_reload_keeps_the_upstream_it_last_had() {
    // The old listener serves on until a restart; it fell back to its startup
    // upstream (or refused every connection when that set was gone).
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let site = common::Site::new("tcp-moved");
    let config = |sets: &str, listen: &str, upstream: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [scripts]\ndir = \"mods\"\nwatch = false\n\n{sets}\n\
             [[tcp]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n"
        )
    };
    let set_a = format!("[upstreams.a]\nservers = [\"{}\"]\n", a.addr);
    let set_b = format!("[upstreams.b]\nservers = [\"{}\"]\n", b.addr);
    site.write_config(&config(&set_a, "127.0.0.1:0", "a"));
    let run = common::Running::start(&site);
    let tcp = run.handle.as_ref().expect("running").tcp_addrs()[0];
    assert_eq!(exchange(tcp, b"one").await, b"onebye");

    let reload = |text: String| {
        site.write_config(&text);
        let shared = Arc::clone(run.shared());
        tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
    };
    // To set b, set a gone.
    let report = reload(config(&set_b, "127.0.0.1:0", "b"))
        .await
        .expect("reload");
    assert!(report.ok, "{report:?}");
    assert!(
        report
            .applied
            .iter()
            .any(|a| a.starts_with("tcp frontends")),
        "the report names the change: {report:?}"
    );
    assert_eq!(exchange(tcp, b"two").await, b"twobye");
    // Only its idle timeout changes: applied to new connections, and reported.
    let report = reload(config(&set_b, "127.0.0.1:0", "b") + "idle_timeout = \"2m\"\n")
        .await
        .expect("reload");
    assert!(report.ok, "{report:?}");
    assert!(
        report
            .applied
            .iter()
            .any(|a| a.starts_with("tcp frontends") && a.contains("idle_timeout 120s")),
        "the report names the new idle timeout: {report:?}"
    );
    // The frontend moves to another address: a restart is needed for that, and the
    // listener still open keeps serving set b.
    let report = reload(config(&set_b, "127.0.0.2:0", "b"))
        .await
        .expect("reload");
    assert!(report.ok, "{report:?}");
    assert_eq!(exchange(tcp, b"three").await, b"threebye");
    assert_eq!((a.accepts(), b.accepts()), (1, 2));
}

/// Free ports on 127.0.0.1, all different (each held until all are found).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// Upstream sets `a` and `b` and one `[[tcp]]` frontend per `(port, set)`, in order.
fn frontends(a: SocketAddr, b: SocketAddr, list: &[(u16, &str)]) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.a]\nservers = [\"{a}\"]\n\n[upstreams.b]\nservers = [\"{b}\"]\n\n"
    );
    for (port, set) in list {
        text.push_str(&format!(
            "[[tcp]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{set}\"\n\n"
        ));
    }
    text
}

/// `POST /reload` to the admin API: the report.
async fn post_reload(admin: SocketAddr) -> serde_json::Value {
    let resp = common::send(admin, common::empty(common::req("POST", "/reload"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_change_waiting_for_a_restart_is_reported_by_every_reload() {
    // The second reload compared with the first one's config: "nothing changed", no
    // restart needed, although the new port did not listen and the removed one served;
    // and putting the list back warned that it needed a restart.
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let [p1, p2, p3] = free_ports::<3>();
    let site = common::Site::new("tcp-pending");
    site.write_config(&frontends(a.addr, b.addr, &[(p1, "a"), (p2, "b")]));
    let run = common::Running::start(&site);

    site.write_config(&frontends(a.addr, b.addr, &[(p1, "a"), (p3, "b")]));
    let pending = serde_json::json!([format!(
        "tcp listeners: added 127.0.0.1:{p3}, removed 127.0.0.1:{p2}"
    )]);
    let report = post_reload(run.admin).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["requires_restart"], pending, "{report:#}");
    let report = post_reload(run.admin).await;
    assert_eq!(
        report["applied"],
        serde_json::json!(["nothing changed"]),
        "{report:#}"
    );
    assert_eq!(
        report["requires_restart"], pending,
        "still pending: {report:#}"
    );
    // What the report says is what runs: the removed port serves, the added one is shut.
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(exchange(at(p2), b"old").await, b"oldbye");
    assert_eq!(b.accepts(), 1);
    assert!(TcpStream::connect(at(p3)).await.is_err(), "{p3} listens");

    // Put back: nothing waits for a restart any more.
    site.write_config(&frontends(a.addr, b.addr, &[(p1, "a"), (p2, "b")]));
    let report = post_reload(run.admin).await;
    assert_eq!(
        report["requires_restart"],
        serde_json::json!([]),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_two_tcp_blocks_needs_no_restart() {
    // A listener is known by its address: the swap changes nothing that runs (each port
    // keeps its set), yet the order-sensitive compare warned that it needed a restart.
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let [p1, p2] = free_ports::<2>();
    let site = common::Site::new("tcp-swap");
    site.write_config(&frontends(a.addr, b.addr, &[(p1, "a"), (p2, "b")]));
    let run = common::Running::start(&site);

    site.write_config(&frontends(a.addr, b.addr, &[(p2, "b"), (p1, "a")]));
    let shared = Arc::clone(run.shared());
    let report = tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload thread");
    assert!(report.ok, "{report:?}");
    assert!(report.requires_restart.is_empty(), "{report:?}");
    assert!(
        !report.applied.iter().any(|a| a.starts_with("tcp")),
        "no frontend changed: {report:?}"
    );
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(exchange(at(p1), b"to a").await, b"to abye");
    assert_eq!(exchange(at(p2), b"to b").await, b"to bbye");
    assert_eq!((a.accepts(), b.accepts()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_set_only_tcp_uses_connect_instead_of_speaking_http() {
    // `health = {}` ran `GET /healthz` against servers that need not speak HTTP: a
    // database or an echo server failed it, and the whole frontend went down.
    let echo = EchoServer::start().await;
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n[admin]\nlisten = \"\"\n\n\
         [upstreams.db]\nservers = [\"{}\", \"{}\"]\nconnect_timeout = \"500ms\"\n\
         health = {{ interval = \"100ms\", timeout = \"500ms\", unhealthy_after = 1, healthy_after = 1 }}\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n",
        dead_addr(),
        echo.addr
    );
    let proxy = proxy_toml(&toml);
    let tcp = proxy.handle().tcp_addrs()[0];
    let checked = common::wait_until(Duration::from_secs(5), || echo.accepts() >= 3).await;
    assert!(checked, "the checks connect to the server");
    let before = echo.accepts();
    for i in 0..4 {
        let msg = format!("after checks {i}");
        assert_eq!(
            exchange(tcp, msg.as_bytes()).await,
            format!("{msg}bye").into_bytes()
        );
    }
    assert!(echo.accepts() >= before + 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_tries_every_server_until_one_answers() {
    // Only one retry was made: with two dead servers of three, connections failed
    // until the breakers opened.
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(&[dead_addr(), dead_addr(), echo.addr], "", "");
    for i in 0..6 {
        let msg = format!("try {i}");
        assert_eq!(
            exchange(tcp, msg.as_bytes()).await,
            format!("{msg}bye").into_bytes()
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_is_not_called_an_unhealthy_server() {
    // With health checks passing (or none), an open breaker refused connections as
    // "no healthy server", which sent people to the health checks.
    common::log::capture();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [upstreams.db]\nservers = [\"{}\"]\nconnect_timeout = \"500ms\"\n\
         circuit_breaker = {{ failures = 1, open_for = \"60s\" }}\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n",
        dead_addr()
    );
    let proxy = proxy_toml(&toml);
    let tcp = proxy.handle().tcp_addrs()[0];
    // The first connection fails to connect and opens the breaker; the second finds
    // no server to try.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(tcp).await.expect("connect");
        clients.push(s.local_addr().expect("client addr"));
        let mut back = Vec::new();
        let _ = timeout(CLIENT_TIMEOUT, s.read_to_end(&mut back)).await;
    }
    // Its access line (the refusal's warning may be throttled: the first one's came
    // less than a second before).
    let peer = format!("client_port={}", clients[1].port());
    let logged = common::wait_until(CLIENT_TIMEOUT, || {
        !common::log::lines_with(&peer).is_empty()
    })
    .await;
    assert!(logged, "the refusal is logged");
    let lines = common::log::lines_with(&peer);
    assert!(
        lines.iter().any(|l| l.contains(
            "upstream db: no server available: every server's circuit breaker is open \
             (upstreams.db.circuit_breaker)"
        )),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("no healthy server")),
        "{lines:#?}"
    );
    proxy.shutdown().await;
}

/// Sends `msg` and reads everything back; returns the client's own address.
async fn exchange_from(addr: SocketAddr, msg: &[u8]) -> SocketAddr {
    let run = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let me = s.local_addr().expect("client addr");
        s.write_all(msg).await.expect("write");
        s.shutdown().await.expect("shutdown write");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read back");
        me
    };
    timeout(CLIENT_TIMEOUT, run)
        .await
        .expect("exchange in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_line_follows_log_access() {
    // In the text format too, and none at all with `log.access = false`.
    common::log::capture();
    let echo = EchoServer::start().await;
    let (proxy, tcp) = l4_proxy(&[echo.addr], "", "");
    let me = exchange_from(tcp, b"ping").await;
    let port = format!("client_port={}", me.port());
    let logged = common::wait_until(CLIENT_TIMEOUT, || {
        !common::log::lines_with(&port).is_empty()
    })
    .await;
    let lines = common::log::lines_with(&port);
    assert!(logged, "a session line");
    let line = &lines[0];
    for part in [
        "proxycache::access: tcp session",
        &format!("listen={tcp}"),
        "upstream=\"db\"",
        &format!("server=\"{}\"", echo.addr),
        "bytes_received=4",
        "bytes_sent=7",
        "end=\"closed\"",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // In milliseconds to the microsecond, as the HTTP access line has it (it said
    // `duration_ms=0.41205400000000003`).
    let duration = line
        .split("duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    let decimals = duration.split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "duration_ms={duration} in {line}");
    proxy.shutdown().await;

    let (proxy, tcp) = l4_proxy(&[echo.addr], "", "[log]\naccess = false\n");
    let me = exchange_from(tcp, b"ping").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let port = format!("client_port={}", me.port());
    assert!(
        common::log::lines_with(&port).is_empty(),
        "log.access = false"
    );
    proxy.shutdown().await;
}

/// proxycache with one worker and one `[[tcp]]` frontend over `servers`, with
/// `upstream_extra` in the set's table; the capturing log is on.
fn logged_l4_proxy(servers: &[SocketAddr], upstream_extra: &str) -> (Proxy, SocketAddr) {
    common::log::capture();
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [upstreams.db]\nservers = [{}]\nconnect_timeout = \"500ms\"\n{upstream_extra}\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n",
        list.join(", ")
    );
    let proxy = proxy_toml(&toml);
    let tcp = proxy.handle().tcp_addrs()[0];
    (proxy, tcp)
}

/// Connects and waits for the proxy to close (nothing is sent).
async fn refused(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = timeout(CLIENT_TIMEOUT, s.read_to_end(&mut Vec::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opening_names_its_upstream_and_server() {
    // "circuit breaker opened" named neither.
    let dead = dead_addr();
    let (proxy, tcp) = logged_l4_proxy(&[dead], "circuit_breaker = { failures = 1 }");
    refused(tcp).await;
    let needle = format!("server=\"{dead}\"");
    let logged = common::wait_until(CLIENT_TIMEOUT, || {
        common::log::lines_with(&needle)
            .iter()
            .any(|l| l.contains("circuit breaker opened"))
    })
    .await;
    let lines = common::log::lines_with("circuit breaker opened");
    assert!(logged, "{lines:#?}");
    let line = lines.iter().find(|l| l.contains(&needle));
    assert!(
        line.is_some_and(|l| l.contains("upstream=\"db\"") && l.contains("failures=1")),
        "{lines:#?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_logged_only_when_another_server_is_tried() {
    // "retrying on another server" was logged with no other server to try.
    let alone = dead_addr();
    let (proxy, tcp) = logged_l4_proxy(&[alone], "");
    refused(tcp).await;
    let refusal = format!("listen={tcp}");
    let logged = common::wait_until(CLIENT_TIMEOUT, || {
        !common::log::lines_with(&refusal).is_empty()
    })
    .await;
    assert!(logged, "the refusal is logged");
    let retries: Vec<String> = common::log::lines_with(&alone.to_string())
        .into_iter()
        .filter(|l| l.contains("trying") || l.contains("retrying"))
        .collect();
    assert!(retries.is_empty(), "{retries:#?}");
    proxy.shutdown().await;

    // With a live server next to it, the retry is logged, naming the next server.
    let (dead, echo) = (dead_addr(), EchoServer::start().await);
    let (proxy, tcp) = logged_l4_proxy(&[dead, echo.addr], "");
    assert_eq!(exchange(tcp, b"x").await, b"xbye");
    let retries: Vec<String> = common::log::lines_with(&dead.to_string())
        .into_iter()
        .filter(|l| l.contains("tcp connect failed; trying another server"))
        .collect();
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert!(
        retries[0].contains(&format!("next=\"{}\"", echo.addr)),
        "{retries:#?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_for_a_dead_backend_are_one_line_a_second() {
    // Every connection logged its own WARN lines; under load that flooded the log.
    // (The access log keeps one line per session.)
    let (dead, other) = (dead_addr(), dead_addr());
    let (proxy, tcp) = logged_l4_proxy(&[dead, other], "circuit_breaker = { failures = 1000 }");
    for _ in 0..20 {
        refused(tcp).await;
    }
    let refusal = format!("listen={tcp}");
    let count = |what: &str| {
        common::log::lines_with(&refusal)
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    let sessions = common::wait_until(CLIENT_TIMEOUT, || count("tcp session") >= 20).await;
    assert!(sessions, "every session has its access line");
    let refusals = count("tcp connection refused");
    assert!((1..=3).contains(&refusals), "{refusals} refusal warnings");
    let retried = |l: &&String| l.contains("tcp connect failed; trying another server");
    let retries = common::log::lines_with(&dead.to_string())
        .iter()
        .chain(&common::log::lines_with(&other.to_string()))
        .filter(retried)
        .count();
    assert!((1..=3).contains(&retries), "{retries} retry warnings");
    // A second on, the next warning says how many were left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(tcp).await;
    let logged = common::wait_until(CLIENT_TIMEOUT, || {
        common::log::lines_with(&refusal)
            .iter()
            .any(|l| l.contains("tcp connection refused") && !l.contains("left_out=0"))
    })
    .await;
    assert!(logged, "{:#?}", common::log::lines_with(&refusal));
    proxy.shutdown().await;
}

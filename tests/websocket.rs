//! HTTP/1.1 upgrades over real sockets: a WebSocket tunnels frames both ways, the
//! request phase sees (and may reject) the upgrade request, an upstream that answers
//! 200 instead of 101 is passed through, one that switches to a protocol the request
//! did not ask for is a 502, a raw `Upgrade` tunnel half-closes and is closed by the
//! idle timeout, and `h2c` is never tunnelled.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server on 127.0.0.1:0 that greets each client with `welcome`
/// (so the upstream speaks first once) and keeps every handshake's headers.
struct WsEcho {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl WsEcho {
    async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("ws addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&handshakes);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    // The callback's type is tungstenite's; its error variant is large.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, resp: Response| {
                        seen.lock().expect("handshakes").push(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    if ws.send(Message::text("welcome")).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsEcho { addr, handshakes }
    }

    fn last_handshake(&self) -> http::HeaderMap {
        self.handshakes
            .lock()
            .expect("handshakes")
            .last()
            .cloned()
            .expect("a handshake reached the upstream")
    }
}

fn ws_proxy(up: SocketAddr, server_extra: &str) -> Proxy {
    proxy(&format!(
        "{server_extra}\n[upstreams.ws]\nservers = [\"{up}\"]\n\n[[routes]]\nupstream = \"ws\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnels_frames_both_ways() {
    let up = WsEcho::start().await;
    let px = ws_proxy(up.addr, "");
    let run = async {
        let stream = TcpStream::connect(px.addr).await.expect("connect");
        let url = format!("ws://{}/chat", px.addr);
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(resp.status(), 101);
        let welcome = ws.next().await.expect("a first frame").expect("frame");
        assert_eq!(welcome, Message::text("welcome"));
        for i in 0..20 {
            ws.send(Message::text(format!("hello {i}")))
                .await
                .expect("send");
            let back = ws.next().await.expect("echo").expect("frame");
            assert_eq!(back, Message::text(format!("hello {i}")));
        }
        let big = vec![7u8; 200_000];
        ws.send(Message::binary(big.clone()))
            .await
            .expect("send binary");
        let back = ws.next().await.expect("echo").expect("frame");
        assert_eq!(back.into_data().as_ref(), &big[..]);
        ws.close(None).await.expect("close");
    };
    timeout(CLIENT_TIMEOUT, run)
        .await
        .expect("the exchange in time");
    let h = up.last_handshake();
    assert_eq!(
        h.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert!(h.get("sec-websocket-key").is_some());
    assert_eq!(
        h.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"127.0.0.1"[..])
    );
    // The tunnel counted as a connection while open, and is gone after the close.
    let shared = Arc::clone(px.handle().shared());
    let closed = wait_until(CLIENT_TIMEOUT, || {
        shared.connections.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    assert!(closed, "the tunnel's connection slot was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_can_reject_an_upgrade() {
    let up = WsEcho::start().await;
    let (_site, run) = one_module_site(
        "ws-gate",
        (
            "ws_gate",
            r#"
mod ws_gate {
  on request {
    if $req.header["upgrade"] != nil and $req.header["x-ws-token"] == nil {
      respond 401 "token needed\n"
    }
  }
}
"#,
        ),
        up.addr,
    );
    let url = format!("ws://{}/chat", run.addr);

    let stream = TcpStream::connect(run.addr).await.expect("connect");
    let refused = timeout(
        CLIENT_TIMEOUT,
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    .expect("in time");
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body = resp.body().clone().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&body), "token needed\n");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(up.handshakes.lock().expect("handshakes").is_empty());

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut()
        .insert("x-ws-token", http::HeaderValue::from_static("t"));
    let stream = TcpStream::connect(run.addr).await.expect("connect");
    let (mut ws, _) = timeout(CLIENT_TIMEOUT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("in time")
        .expect("with a token the upgrade goes through");
    let welcome = timeout(CLIENT_TIMEOUT, ws.next()).await.expect("in time");
    assert!(matches!(welcome, Some(Ok(m)) if m == Message::text("welcome")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_101_answer_is_passed_through() {
    let up = Upstream::start("plain", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let raw = raw_request(
        px.addr,
        b"GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(raw_body(&raw).contains("\"plain\""), "{raw}");
    assert_eq!(raw_header(&raw, "upgrade"), None);
    let got = up.last().expect("the upstream saw the request");
    assert_eq!(got.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(got.header("connection").as_deref(), Some("upgrade"));
}

/// A server that answers any request with `101` to protocol `raw`, then echoes bytes
/// and, after the client's EOF, sends `done` and closes.
async fn raw_upgrade_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if !matches!(s.read(&mut byte).await, Ok(1)) {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"done").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Sends an upgrade to `raw` and returns the stream after the 101 head.
async fn upgraded(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /raw HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(CLIENT_TIMEOUT, s.read(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the head ended: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_upgrade_half_closes_and_idles_out() {
    let up = raw_upgrade_server().await;
    let px = ws_proxy(up, "[server.timeouts]\nidle = \"400ms\"\n");

    let (mut s, head) = upgraded(px.addr).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    assert_eq!(raw_header(&head, "upgrade").as_deref(), Some("raw"));
    assert_eq!(raw_header(&head, "connection").as_deref(), Some("upgrade"));
    s.write_all(b"abc").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    timeout(CLIENT_TIMEOUT, s.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(rest, b"abcdone");

    // A silent tunnel is closed by the idle timeout.
    let (mut s, _) = upgraded(px.addr).await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed by the idle timeout: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_not_tunnelled() {
    let up = Upstream::start("plain", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let raw = raw_request(
        px.addr,
        b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let got = up.last().expect("the upstream saw the request");
    assert_eq!(got.header("upgrade"), None);
    assert_eq!(got.header("http2-settings"), None);
}

/// An HTTP/2-only server (h2c, prior knowledge) on 127.0.0.1:0 answering `200 h2`.
async fn h2c_only_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"h2")),
                    ))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await;
            });
        }
    });
    addr
}

const WS_HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_an_h2c_set_is_refused_and_spares_the_breaker() {
    let up = h2c_only_server().await;
    let px = proxy(&format!(
        "[upstreams.grpc]\nservers = [\"{up}\"]\nhttp2 = true\n\
         circuit_breaker = {{ failures = 1, open_for = \"60s\" }}\n\n[[routes]]\nupstream = \"grpc\"\n"
    ));
    for _ in 0..5 {
        let raw = raw_request(px.addr, WS_HANDSHAKE).await;
        assert_eq!(raw_status(&raw), 501, "{raw}");
        assert_eq!(raw_header(&raw, "upgrade"), None, "{raw}");
    }
    // The set's own traffic still goes through: its breaker was not charged.
    let resp = get(px.addr, "/after").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "h2");
}

/// A server that records each request's raw bytes (head, then whatever body follows
/// within 1 s or up to a last chunk) and answers `101` to protocol `raw`.
async fn recording_upgrade_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                let end = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got);
                    text.find("\r\n\r\n")
                        .is_some_and(|head| text[head + 4..].ends_with("0\r\n\r\n"))
                };
                while !end(&got) {
                    match timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                record
                    .lock()
                    .expect("record")
                    .push(String::from_utf8_lossy(&got).into_owned());
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n";
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_handshake_body_reaches_the_upstream_chunked() {
    let (up, seen) = recording_upgrade_server().await;
    let px = ws_proxy(up, "");
    let mut s = TcpStream::connect(px.addr).await.expect("connect");
    s.write_all(
        b"GET /raw HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: raw\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_raw(&mut s, CLIENT_TIMEOUT).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let got = seen
        .lock()
        .expect("seen")
        .last()
        .cloned()
        .expect("the upstream saw the handshake");
    let lower = got.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "the body is framed: {got:?}"
    );
    assert!(
        got.ends_with("\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n"),
        "the body went on: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_a_module_turns_into_another_status_loses_the_upgrade_headers() {
    let up = WsEcho::start().await;
    let (_site, run) = one_module_site(
        "ws-deny",
        (
            "ws_deny",
            r#"
mod ws_deny {
  on response {
    set resp.status = 403
  }
}
"#,
        ),
        up.addr,
    );
    let raw = raw_request(run.addr, WS_HANDSHAKE).await;
    assert_eq!(raw_status(&raw), 403, "{raw}");
    assert_eq!(raw_header(&raw, "upgrade"), None, "{raw}");
    assert_eq!(raw_header(&raw, "sec-websocket-accept"), None, "{raw}");
    assert_ne!(
        raw_header(&raw, "connection").map(|v| v.to_ascii_lowercase()),
        Some("upgrade".into()),
        "{raw}"
    );
}

/// A server that answers any request with `answer` (a `101` head) and sends on the
/// returned channel when the proxy closes its end of a connection.
async fn switching_server(
    answer: String,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (answer, closed) = (answer.clone(), closed.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if !matches!(s.read(&mut byte).await, Ok(1)) {
                        return;
                    }
                    head.push(byte[0]);
                }
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed.send(());
            });
        }
    });
    (addr, closes)
}

/// RFC 9110 7.8: a server must not switch to a protocol the request did not list in
/// its `Upgrade`. Such a `101` (or one naming no protocol) is a 502, and its
/// connection is closed rather than tunnelled. Names match whatever their case; a
/// version matters only when the request named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_protocol_not_asked_for_is_502_and_not_tunnelled() {
    for (asked, answered) in [
        ("websocket", Some("h2c")),
        ("websocket", Some("foo")),
        ("websocket", None),
        ("websocket", Some("")),
        ("websocket", Some("websocket, h2c")),
        ("foo/2", Some("foo/3")),
        ("foo/2", Some("foo")),
    ] {
        let upgrade = answered.map_or_else(String::new, |p| format!("Upgrade: {p}\r\n"));
        let (up, mut closes) = switching_server(format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n{upgrade}\r\n"
        ))
        .await;
        let px = ws_proxy(up, "");
        let got = raw_request(
            px.addr,
            format!(
                "GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: {asked}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&got), 502, "{asked} -> {answered:?}: {got}");
        assert!(
            timeout(CLIENT_TIMEOUT, closes.recv()).await.is_ok(),
            "{asked} -> {answered:?}: the upstream connection was closed"
        );
    }
    for (asked, answered) in [
        ("websocket", "WebSocket"),
        ("foo/2, bar", "foo/2"),
        ("foo/2, bar", "BAR/3"),
        ("foo/2, bar", "bar, foo/2"),
    ] {
        let (up, _closes) = switching_server(format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {answered}\r\n\r\n"
        ))
        .await;
        let px = ws_proxy(up, "");
        let mut s = TcpStream::connect(px.addr).await.expect("connect");
        s.write_all(
            format!(
                "GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: {asked}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = timeout(CLIENT_TIMEOUT, s.read(&mut byte))
                .await
                .expect("in time")
                .expect("read");
            assert_eq!(n, 1, "{asked} -> {answered}: closed mid-head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert_eq!(raw_status(&head), 101, "{asked} -> {answered}: {head}");
        assert_eq!(raw_header(&head, "upgrade").as_deref(), Some(answered));
    }
}

/// A site whose route goes to a plain echo upstream, with a Lua module that sends
/// upgrade requests to `[upstreams.ws]` itself, with `std.proxy.forward`.
fn lua_forward_site(ws: SocketAddr, app: &Upstream) -> (Site, Running) {
    let site = Site::new("ws-lua");
    site.write_mod(
        "ws_lua",
        r#"
mod ws_lua {
  lua """
function on_request(req, ctx)
  if req:header("upgrade") then
    local resp = std.proxy.forward("ws")
    resp:set_header("x-picked", req.upstream .. " " .. resp.status)
    if req.path == "/refuse" then resp:set_status(403) end
    return resp
  end
end

function on_response(req, resp, ctx)
  resp:set_header("x-seen", tostring(resp.status))
end
"""
}
"#,
    );
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n[upstreams.ws]\nservers = [\"{ws}\"]\n\n\
         [[routes]]\nupstream = \"app\"\n",
        app.authority()
    ));
    let run = Running::start(&site);
    (site, run)
}

/// `std.proxy.forward` of a WebSocket handshake does the upgrade: the hook gets the
/// `101`, and the client gets it with a tunnel (it was sent as a plain `GET`, and the
/// client got the upstream's refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_forwarded_by_std_proxy_forward_tunnels() {
    let up = WsEcho::start().await;
    let app = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = lua_forward_site(up.addr, &app);
    let url = format!("ws://{}/chat", run.addr);
    let exchange = async {
        let stream = TcpStream::connect(run.addr).await.expect("connect");
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("websocket handshake through the Lua forward");
        assert_eq!(resp.status(), 101);
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(header("x-picked").as_deref(), Some("ws 101"));
        assert_eq!(header("x-seen").as_deref(), Some("101"));
        let welcome = ws.next().await.expect("a first frame").expect("frame");
        assert_eq!(welcome, Message::text("welcome"));
        ws.send(Message::text("hello")).await.expect("send");
        let back = ws.next().await.expect("echo").expect("frame");
        assert_eq!(back, Message::text("hello"));
        ws.close(None).await.expect("close");
    };
    timeout(CLIENT_TIMEOUT, exchange)
        .await
        .expect("the exchange in time");
    let h = up.last_handshake();
    assert_eq!(
        h.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(app.requests(), 0, "the route's upstream was not asked");

    // A hook that turns the 101 into another status: no switch, no upgrade headers.
    let mut refused = WS_HANDSHAKE.to_vec();
    refused.splice(4..7, b"/refuse".iter().copied());
    let raw = raw_request(run.addr, &refused).await;
    assert_eq!(raw_status(&raw), 403, "{raw}");
    assert_eq!(raw_header(&raw, "x-seen").as_deref(), Some("403"), "{raw}");
    assert_eq!(raw_header(&raw, "upgrade"), None, "{raw}");
    assert_eq!(raw_header(&raw, "sec-websocket-accept"), None, "{raw}");
}

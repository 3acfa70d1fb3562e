//! The access log as a user reads it: the binary with `[log] format = "json"`, its
//! stderr parsed line by line, one line per request with method, path, status, bytes,
//! upstream, server and request id, whatever protocol the client spoke, and for a
//! failed exchange too.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use serde_json::Value;

/// SIGTERM to the process, then waits (up to 8 s) for the drain to end and it to exit.
async fn terminate_and_wait(child: &mut Killed, log: &std::path::Path) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let exited = wait_until(Duration::from_secs(8), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    })
    .await;
    assert!(
        exited,
        "the drain ended: {:?}",
        std::fs::read_to_string(log)
    );
}

/// The access lines of the log written so far, parsed.
fn access_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "proxycache::access")
        .collect()
}

/// Runs the binary with the JSON access log on, one worker, and `rest` (upstreams and
/// routes) after `[scripts]`; waits until it listens. Returns it (killed on drop),
/// its address and the file its stderr goes to.
async fn run_logging(tag: &str, rest: &str) -> (Killed, SocketAddr, std::path::PathBuf, Site) {
    run_logging_as(tag, "json", "", rest).await
}

/// [`run_logging`] with `log.format = FORMAT` and `admin.listen = ADMIN`.
async fn run_logging_as(
    tag: &str,
    format: &str,
    admin: &str,
    rest: &str,
) -> (Killed, SocketAddr, std::path::PathBuf, Site) {
    run_logging_at(tag, format, admin, "info", rest).await
}

/// [`run_logging_as`] with `log.level = LEVEL`.
async fn run_logging_at(
    tag: &str,
    format: &str,
    admin: &str,
    level: &str,
    rest: &str,
) -> (Killed, SocketAddr, std::path::PathBuf, Site) {
    let port = free_port();
    let site = Site::new(tag);
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [log]\nformat = \"{format}\"\naccess = true\nlevel = \"{level}\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{rest}"
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (child, log) = spawn_logging(&site, addr).await;
    (child, addr, log, site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_json_line_with_an_origin_form_path() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let dead = dead_addr();
    let (_child, addr, log, _site) = run_logging(
        "access-log",
        &format!(
            "[upstreams.dead]\nservers = [\"{dead}\"]\n\n[[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n{}",
            app(&[&up], "")
        ),
    )
    .await;
    let port = addr.port();

    assert_eq!(get(addr, "/h1path?q=1").await.status, 200);
    let h2 = http::Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{port}/h2path?q=2"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send_h2(addr, h2).await.status, 200);

    assert_eq!(get(addr, "/dead/x").await.status, 502);
    // A head that cannot be parsed is answered, counted and logged too (it left no
    // trace).
    assert_eq!(
        raw_status(&raw_request(addr, b"GARBAGE\r\n\r\n").await),
        400
    );

    let found = wait_until(Duration::from_secs(5), || access_lines(&log).len() >= 4).await;
    assert!(
        found,
        "four access lines: {:?}",
        std::fs::read_to_string(&log)
    );
    let lines = access_lines(&log);
    let fields: Vec<&Value> = lines.iter().collect();
    // An HTTP/2 request's URI is absolute (scheme, authority): the path is logged
    // as an HTTP/1.1 request line has it.
    assert_eq!(fields[0]["path"], "/h1path?q=1", "{lines:#?}");
    assert_eq!(fields[1]["path"], "/h2path?q=2", "{lines:#?}");
    // The version as the request line spells it (nginx's `$server_protocol`).
    assert_eq!(fields[0]["protocol"], "HTTP/1.1", "{lines:#?}");
    assert_eq!(fields[1]["protocol"], "HTTP/2.0", "{lines:#?}");
    // A failed exchange names the server it failed with (it said "-").
    assert_eq!(fields[2]["status"], 502, "{lines:#?}");
    assert_eq!(fields[2]["upstream"], "dead");
    assert_eq!(fields[2]["server"], dead.to_string(), "{lines:#?}");
    // How long the upstream took (nginx's `$upstream_header_time`): to the failure
    // here; a head no upstream saw has none.
    assert!(fields[2]["upstream_ms"].as_f64().is_some(), "{lines:#?}");
    assert!(fields[3].get("upstream_ms").is_none(), "{lines:#?}");
    assert_eq!(fields[3]["status"], 400, "{lines:#?}");
    assert_eq!(fields[3]["method"], "-");
    assert_eq!(fields[3]["protocol"], "-");
    assert!(fields[3]["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    for f in &fields[..2] {
        assert_eq!(f["server"], up.addr.to_string());
        assert_eq!(f["method"], "GET");
        assert_eq!(f["status"], 200);
        assert_eq!(f["upstream"], "app");
        assert!(f["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        let (up_ms, all_ms) = (f["upstream_ms"].as_f64(), f["duration_ms"].as_f64());
        assert!(
            up_ms.zip(all_ms).is_some_and(|(u, d)| u <= d),
            "upstream_ms within duration_ms: {f:#}"
        );
    }
}

/// The value written after `field` in a log line (`field=V` in text, `"field":V` in
/// JSON), up to the next separator.
fn field_value<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let text = format!("{field}=");
    let json = format!("\"{field}\":");
    let start = line
        .find(&text)
        .map(|i| i + text.len())
        .or_else(|| line.find(&json).map(|i| i + json.len()))?;
    let rest = &line[start..];
    let end = rest.find([' ', ',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Log lines say what a person would write: the start-up line's admin address or
/// `off` (it said `admin=Some(127.0.0.1:9901)` / `admin=None`), and `duration_ms` to
/// the microsecond (it said `duration_ms=1.2472130000000001`), in text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_show_the_admin_address_and_durations_to_the_microsecond() {
    let up = Upstream::start("a", Behavior::echo()).await;
    for (format, admin) in [("json", ""), ("text", "127.0.0.1:0")] {
        let (_child, addr, log, _site) =
            run_logging_as(&format!("log-{format}"), format, admin, &app(&[&up], "")).await;
        for _ in 0..5 {
            assert_eq!(get(addr, "/d").await.status, 200);
        }
        let access = |text: &str| {
            text.lines()
                .filter(|l| l.contains("proxycache::access"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let found = wait_until(Duration::from_secs(5), || {
            access(&std::fs::read_to_string(&log).unwrap_or_default()).len() >= 5
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(found, "{format}: five access lines:\n{text}");
        for line in access(&text) {
            let ms = field_value(&line, "duration_ms")
                .unwrap_or_else(|| panic!("{format}: no duration_ms in {line}"));
            assert!(ms.parse::<f64>().is_ok_and(|v| v >= 0.0), "{line}");
            let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(
                decimals <= 3,
                "{format}: {ms} is not to the microsecond: {line}"
            );
        }
        let serving = text
            .lines()
            .find(|l| l.contains("proxycache serving"))
            .unwrap_or_else(|| panic!("{format}: no start-up line:\n{text}"));
        let admin_shown = field_value(serving, "admin")
            .unwrap_or_else(|| panic!("{format}: no admin field: {serving}"));
        assert!(
            !serving.contains("Some(") && !serving.contains("None"),
            "{serving}"
        );
        if admin.is_empty() {
            assert_eq!(admin_shown, "\"off\"", "{serving}");
        } else {
            let addr: Result<SocketAddr, _> = admin_shown.parse();
            assert!(addr.is_ok_and(|a| a.port() != 0), "{serving}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_while_the_server_thinks_names_the_server() {
    // The client leaves while the proxy waits for the response head: a 499 that said
    // server "-", though the line names the server on a 502 or a 504.
    let up = Upstream::start("a", Behavior::slow(3000)).await;
    let (_child, addr, log, _site) = run_logging("access-log-499", &app(&[&up], "")).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET /given-up HTTP/1.1\r\nhost: {TEST_HOST}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let asked = wait_until(Duration::from_secs(5), || up.requests() >= 1).await;
    assert!(asked, "the request reached the server");
    drop(stream);
    let found = wait_until(Duration::from_secs(5), || !access_lines(&log).is_empty()).await;
    assert!(found, "an access line: {:?}", std::fs::read_to_string(&log));
    let lines = access_lines(&log);
    assert_eq!(lines[0]["status"], 499, "{lines:#?}");
    assert_eq!(lines[0]["path"], "/given-up", "{lines:#?}");
    assert_eq!(lines[0]["upstream"], "app", "{lines:#?}");
    assert_eq!(lines[0]["server"], up.addr.to_string(), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_drain_cuts_is_a_503_for_shutdown_not_a_499() {
    // The proxy closed it when `shutdown_drain` ran out; the client did not leave.
    let up = Upstream::start("a", Behavior::slow(10_000)).await;
    let (mut child, addr, log, _site) = run_logging(
        "access-log-cut",
        &format!(
            "[server.timeouts]\nshutdown_drain = \"300ms\"\n\n{}",
            app(&[&up], "")
        ),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET /cut HTTP/1.1\r\nhost: {TEST_HOST}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let asked = wait_until(Duration::from_secs(5), || up.requests() >= 1).await;
    assert!(asked, "the request reached the server");
    terminate_and_wait(&mut child, &log).await;
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["path"], "/cut", "{lines:#?}");
    assert_eq!(lines[0]["status"], 503, "{lines:#?}");
    assert_eq!(lines[0]["reason"], "shutdown", "{lines:#?}");
    assert_eq!(lines[0]["server"], up.addr.to_string(), "{lines:#?}");
    drop(stream);
}

// ---- [[tcp]] sessions ---------------------------------------------------------------

/// A TCP server on 127.0.0.1:0 that echoes, and after the client's EOF sends `bye`
/// and closes.
async fn tcp_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The TCP session lines of the log so far.
fn tcp_lines(log: &std::path::Path) -> Vec<Value> {
    access_lines(log)
        .into_iter()
        .filter(|l| l["message"] == "tcp session")
        .collect()
}

/// Waits for the TCP session line of the client at `client`.
async fn tcp_line(log: &std::path::Path, client: SocketAddr) -> Value {
    let find = || {
        tcp_lines(log)
            .into_iter()
            .find(|l| l["client_port"] == client.port())
    };
    let found = wait_until(Duration::from_secs(5), || find().is_some()).await;
    assert!(
        found,
        "a tcp session line for {client}: {:?}",
        std::fs::read_to_string(log)
    );
    find().unwrap_or_default()
}

/// Starts the binary with `[[tcp]]` frontends on fixed free ports (`frontends`: the
/// rest of each table after `listen`); returns their addresses too.
async fn run_tcp_logging(
    tag: &str,
    sets: &str,
    frontends: &[&str],
) -> (Killed, std::path::PathBuf, Site, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = frontends
        .iter()
        .map(|_| ([127, 0, 0, 1], free_port()).into())
        .collect();
    let tables: String = addrs
        .iter()
        .zip(frontends)
        .map(|(a, rest)| format!("[[tcp]]\nlisten = \"{a}\"\n{rest}\n\n"))
        .collect();
    let (child, _http, log, site) = run_logging(tag, &format!("{sets}\n{tables}")).await;
    for a in &addrs {
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(a).is_ok()
        })
        .await;
        assert!(up, "the frontend {a} listens");
    }
    (child, log, site, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tcp_session_is_one_access_line_however_it_ends() {
    // Sessions were only a debug line, without frontend, upstream or duration, and
    // the byte counts were lost when one ended idle or on an error.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let dead = dead_addr();
    let (_child, log, _site, fronts) = run_tcp_logging(
        "access-log-tcp",
        &format!(
            "[upstreams.db]\nservers = [\"{echo}\"]\n\n\
             [upstreams.dead]\nservers = [\"{dead}\"]\n\
             circuit_breaker = {{ failures = 1, open_for = \"60s\" }}\n"
        ),
        &[
            "upstream = \"db\"",
            "upstream = \"db\"\nidle_timeout = \"300ms\"",
            "upstream = \"dead\"",
        ],
    )
    .await;
    // Closed by both sides. (The probes above made lines with no client bytes.)
    let mut s = tokio::net::TcpStream::connect(fronts[0])
        .await
        .expect("connect");
    let closed = s.local_addr().expect("client addr");
    s.write_all(b"hello").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"hellobye");
    let l = tcp_line(&log, closed).await;
    assert_eq!(l["end"], "closed", "{l:#}");
    assert_eq!(l["listen"], fronts[0].to_string(), "{l:#}");
    assert_eq!(l["client"], "127.0.0.1", "{l:#}");
    assert_eq!(l["upstream"], "db", "{l:#}");
    assert_eq!(l["server"], echo.to_string(), "{l:#}");
    assert_eq!(l["bytes_received"], 5, "{l:#}");
    assert_eq!(l["bytes_sent"], 8, "{l:#}");
    assert!(l["duration_ms"].as_f64().is_some(), "{l:#}");
    assert!(l.get("error").is_none(), "{l:#}");

    // Idle: the bytes moved before the silence are still counted.
    let mut s = tokio::net::TcpStream::connect(fronts[1])
        .await
        .expect("connect");
    let idle = s.local_addr().expect("client addr");
    s.write_all(b"abc").await.expect("write");
    let mut three = [0u8; 3];
    s.read_exact(&mut three).await.expect("echo");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let l = tcp_line(&log, idle).await;
    assert_eq!(l["end"], "idle_timeout", "{l:#}");
    assert_eq!(l["bytes_received"], 3, "{l:#}");
    assert_eq!(l["bytes_sent"], 3, "{l:#}");
    assert!(
        l["duration_ms"].as_f64().is_some_and(|ms| ms >= 300.0),
        "{l:#}"
    );

    // Reset by the client: an error, with what moved before it.
    let s = tokio::net::TcpStream::connect(fronts[0])
        .await
        .expect("connect");
    let reset = s.local_addr().expect("client addr");
    let mut s = s;
    s.write_all(b"xy").await.expect("write");
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.expect("echo");
    // A reset, not a FIN, on close.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(s);
    let l = tcp_line(&log, reset).await;
    assert_eq!(l["end"], "error", "{l:#}");
    assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l:#}");
    assert_eq!(l["bytes_received"], 2, "{l:#}");

    // The dead set: the readiness probe's session failed to connect and opened the
    // breaker; this one finds no server.
    let mut s = tokio::net::TcpStream::connect(fronts[2])
        .await
        .expect("connect");
    let none = s.local_addr().expect("client addr");
    let _ = s.read_to_end(&mut Vec::new()).await;
    let l = tcp_line(&log, none).await;
    assert_eq!(l["end"], "no_server", "{l:#}");
    assert_eq!(l["upstream"], "dead", "{l:#}");
    assert_eq!(l["server"], "-", "{l:#}");
    assert!(
        l["error"]
            .as_str()
            .is_some_and(|e| e.contains("circuit breaker is open")),
        "{l:#}"
    );
    let failed = tcp_lines(&log)
        .into_iter()
        .find(|l| l["end"] == "connect_failed");
    let failed = failed.unwrap_or_default();
    assert_eq!(failed["upstream"], "dead", "{failed:#}");
    assert_eq!(failed["server"], dead.to_string(), "{failed:#}");
    assert_eq!(failed["listen"], fronts[2].to_string(), "{failed:#}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("connect to {dead}"))),
        "{failed:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_session_the_drain_cuts_is_logged_as_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let (mut child, log, _site, fronts) = run_tcp_logging(
        "access-log-tcp-cut",
        &format!(
            "[server.timeouts]\nshutdown_drain = \"300ms\"\n\n[upstreams.db]\nservers = [\"{echo}\"]\n"
        ),
        &["upstream = \"db\""],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(fronts[0])
        .await
        .expect("connect");
    let open = s.local_addr().expect("client addr");
    s.write_all(b"1234").await.expect("write");
    let mut four = [0u8; 4];
    s.read_exact(&mut four).await.expect("echo");
    terminate_and_wait(&mut child, &log).await;
    let l = tcp_line(&log, open).await;
    assert_eq!(l["end"], "shutdown", "{l:#}");
    assert_eq!(l["bytes_received"], 4, "{l:#}");
    assert_eq!(l["bytes_sent"], 4, "{l:#}");
    drop(s);
}

/// A head refused before it could be read (400) or that never finished (408) is logged
/// with the bytes of its answer and the time since its head began (it said `bytes=0
/// duration_ms=0.0`), and counted in the route counter and latency histogram as any
/// other response (route and upstream `none`; they were missing there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_are_logged_and_counted_as_answered_requests() {
    let admin_port = free_port();
    let (_child, addr, log, _site) = run_logging_as(
        "refused-heads",
        "json",
        &format!("127.0.0.1:{admin_port}"),
        "[server.timeouts]\nheader = \"300ms\"\n\n[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n",
    )
    .await;
    let garbage = raw_request(addr, b"GARBAGE\r\n\r\n").await;
    assert_eq!(raw_status(&garbage), 400, "{garbage}");
    let stalled = raw_request(addr, b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    assert_eq!(raw_status(&stalled), 408, "{stalled}");

    let found = wait_until(Duration::from_secs(5), || access_lines(&log).len() >= 2).await;
    assert!(
        found,
        "two access lines: {:?}",
        std::fs::read_to_string(&log)
    );
    let lines = access_lines(&log);
    for (line, raw) in lines.iter().zip([&garbage, &stalled]) {
        assert_eq!(
            line["bytes"].as_u64(),
            Some(raw_body(raw).len() as u64),
            "{line}"
        );
    }
    let waited = lines[1]["duration_ms"].as_f64().unwrap_or_default();
    assert!(
        waited >= 300.0,
        "the 408 waited the header timeout: {}",
        lines[1]
    );

    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let m = common::prometheus::parse(&get(admin, "/metrics").await.text());
    let none = [("route", "none"), ("upstream", "none"), ("class", "4xx")];
    assert_eq!(m.value("proxycache_route_requests_total", &none), 2.0);
    assert_eq!(
        m.value(
            "proxycache_request_duration_seconds_count",
            &[("upstream", "none")]
        ),
        2.0
    );
}

// ---- response bodies that end early -------------------------------------------------

/// A server that answers `200` with `content-length: 2000` and 1000 bytes of it, then
/// by the request's path: `/reset` resets the connection, `/closed` closes it, and
/// anything else holds it open for 5 s.
async fn breaks_off() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n".to_vec();
                answer.extend(std::iter::repeat_n(b'x', 1000));
                if s.write_all(&answer).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if head.starts_with("GET /reset ") {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                } else if !head.starts_with("GET /closed ") {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
    });
    addr
}

/// An upstream whose response body fails partway (a reset, a close short of its
/// `content-length`, a stall past `response_timeout`) is a WARN at the default level
/// with the request id, upstream and server, as nginx's "upstream prematurely closed
/// connection while reading upstream"; it was one DEBUG line, outside the request,
/// that called it a failed write. The access line says `reason = "upstream_body"`
/// and the bytes the client was sent. A client that goes away mid-body is no WARN:
/// a DEBUG line that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_fails_is_a_warning_and_a_client_that_leaves_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = breaks_off().await;
    let (_child, addr, log, _site) = run_logging_at(
        "body-fails",
        "json",
        "",
        "debug",
        &format!(
            "[upstreams.app]\nservers = [\"{server}\"]\nresponse_timeout = \"1s\"\n\n\
             [[routes]]\nupstream = \"app\"\n"
        ),
    )
    .await;
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    };
    for path in ["/reset", "/closed", "/stall"] {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {TEST_HOST}\r\n\r\n");
        let raw = raw_request(addr, head.as_bytes()).await;
        assert_eq!(raw_status(&raw), 200, "{path}: {raw}");
        let line = access_line_of(&log, path).await;
        let id = line["request_id"].as_str().unwrap_or_default().to_owned();
        let warned = wait_until(Duration::from_secs(5), || {
            lines()
                .iter()
                .any(|l| l["level"] == "WARN" && l["request_id"] == id.as_str())
        })
        .await;
        let all = lines();
        assert!(warned, "{path}: a WARN for request {id}: {all:#?}");
        let warn = all
            .iter()
            .find(|l| l["level"] == "WARN" && l["request_id"] == id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(warn["upstream"], "app", "{warn}");
        assert_eq!(warn["server"], server.to_string(), "{warn}");
        let message = warn["message"].as_str().unwrap_or_default();
        assert!(message.contains("upstream"), "{warn}");
        assert!(!message.contains("writing"), "{warn}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes"], 1000, "{line}");
        assert_eq!(line["reason"], "upstream_body", "{line}");
    }

    // The client leaves mid-body: the upstream did nothing wrong.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET /leaves HTTP/1.1\r\nhost: {TEST_HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < 1000 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("the start of the body: {other:?}"),
        }
    }
    drop(stream);
    let line = access_line_of(&log, "/leaves").await;
    let id = line["request_id"].as_str().unwrap_or_default().to_owned();
    assert!(line.get("reason").is_none_or(Value::is_null), "{line}");
    let all = lines();
    assert!(
        !all.iter()
            .any(|l| l["level"] == "WARN" && l["request_id"] == id.as_str()),
        "{all:#?}"
    );
    assert!(
        all.iter().any(|l| l["level"] == "DEBUG"
            && l["request_id"] == id.as_str()
            && l["message"].as_str().is_some_and(|m| m.contains("client"))),
        "a DEBUG line says the client left: {all:#?}"
    );
}

/// Waits for the access line of the request to `path`.
async fn access_line_of(log: &std::path::Path, path: &str) -> Value {
    let find = || access_lines(log).into_iter().find(|l| l["path"] == path);
    let found = wait_until(Duration::from_secs(10), || find().is_some()).await;
    assert!(
        found,
        "an access line for {path}: {:?}",
        std::fs::read_to_string(log)
    );
    find().unwrap_or_default()
}

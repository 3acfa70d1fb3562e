//! The log phase for requests that end without a finished response, over real
//! sockets: a client that gives up (499) while the upstream is slow, while a Lua
//! hook waits, or while the response body streams; and a request a module fails.
//! pcmod and Lua log phases count what they saw in script metrics, read back from the
//! admin `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::prometheus::{parse, Exposition};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the slow upstream takes: well past the moment the clients leave.
const SLOW_MS: u64 = 800;
/// When the clients leave.
const GIVE_UP: Duration = Duration::from_millis(300);

/// Scrapes the admin `/metrics` until `ready` says so, or fails after a while.
async fn scrape_until(admin: SocketAddr, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(admin, "/metrics").await.text();
        let e = parse(&text);
        if ready(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "the log phase never counted it:\n{}",
            text.lines()
                .filter(|l| l.contains("proxycache_script_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `GET path` on a new connection and closes it after `after`, unanswered.
async fn give_up(addr: SocketAddr, path: &str, id: &str, after: Duration) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let head = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nx-request-id: {id}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(after).await;
    drop(stream);
}

/// An upstream that sends a head promising a large body, then the body a few bytes at
/// a time, for as long as the proxy takes it.
async fn trickling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\nfirst bytes";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..400 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    if stream.write_all(b"more bytes").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads from `stream` until `want` has arrived.
async fn read_until(stream: &mut TcpStream, want: &str) {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let found = tokio::time::timeout(CLIENT_TIMEOUT, async {
        while !String::from_utf8_lossy(&seen).contains(want) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "{want:?} arrived: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// A site with `mods` (name, `.pcmod` text) and `files` under mods/, one worker, the
/// slow upstream on `/slow` and the trickling one on `/stream`.
fn site(
    mods: &[(&str, &str)],
    files: &[(&str, &str)],
    slow: &Upstream,
    trickle: SocketAddr,
) -> Site {
    let site = Site::new("log-phase");
    for (name, text) in mods {
        site.write_mod(name, text);
    }
    for (path, text) in files {
        std::fs::write(site.mods_dir().join(path), text).expect("write a file under mods/");
    }
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.slow]\nservers = [\"{}\"]\n\n\
         [upstreams.trickle]\nservers = [\"{trickle}\"]\n\n\
         [[routes]]\npath_prefix = \"/stream\"\nupstream = \"trickle\"\n\n\
         [[routes]]\nupstream = \"slow\"\n",
        slow.addr
    ));
    site
}

/// First in the request phase, so its log phase runs for every request: counts the
/// 499s and 500s it sees, with what the request phase left in `ctx`.
const WATCH: &str = r#"mod watch {
  priority 0
  on request {
    set ctx.tag = "seen"
  }
  on log {
    if $status == 499 and $ctx.tag == "seen" and $path == "/slow" {
      std.metrics.inc(name: "gave_up")
    }
    if $status == 499 and $resp.header["content-type"] == nil {
      std.metrics.inc(name: "no_response_head")
    }
    if $status == 500 and $ctx.tag == "seen" and $path == "/boom" {
      std.metrics.inc(name: "failed")
    }
  }
}
"#;

/// Fails the request phase on `/boom`.
const BOOM: &str = r#"mod boom {
  priority 50
  on request {
    if $path == "/boom" {
      let x = lower(int("5"))
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmod_log_phase_runs_for_a_request_the_client_gave_up_and_for_a_failed_one() {
    let slow = Upstream::start("slow", Behavior::slow(SLOW_MS)).await;
    let trickle = trickling_upstream().await;
    let site = site(&[("watch", WATCH), ("boom", BOOM)], &[], &slow, trickle);
    let run = Running::start(&site);

    give_up(run.addr, "/slow", "gave-up-1", GIVE_UP).await;
    // Both counters: the admin thread may scrape between the log phase's two `inc`s.
    let e = scrape_until(run.admin, |e| {
        e.sum("proxycache_script_gave_up_total", &[]) >= 1.0
            && e.sum("proxycache_script_no_response_head_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(e.sum("proxycache_script_gave_up_total", &[]), 1.0);
    assert_eq!(e.sum("proxycache_script_no_response_head_total", &[]), 1.0);

    // A module's fault in the request phase: the log phase still sees the 500.
    let r = get(run.addr, "/boom").await;
    assert_eq!(r.status, 500, "{}", r.text());
    let e = scrape_until(run.admin, |e| {
        e.sum("proxycache_script_failed_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(e.sum("proxycache_script_failed_total", &[]), 1.0);
}

/// Counts each log phase by the status, path, request id and `ctx` value it saw, and
/// whether it had a response header. On `/wait`, the request phase waits on the slow
/// upstream itself, after setting `ctx.before`.
const LUA_WATCH: &str = r#"
function on_request(req, ctx)
  ctx.before = "set"
  if req.path == "/wait" then
    std.http.request{ url = "http://" .. config.slow .. "/", timeout = 5 }
    ctx.after = "set"
  end
end

function on_log(req, resp, ctx)
  std.metrics.inc("lua_log", {
    status = tostring(resp.status),
    path = req.path,
    id = req.id,
    before = tostring(ctx.before),
    after = tostring(ctx.after),
    ct = tostring(resp:header("content-type")),
  })
end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_log_phase_runs_for_a_client_that_leaves_in_any_phase() {
    let slow = Upstream::start("slow", Behavior::slow(SLOW_MS)).await;
    let trickle = trickling_upstream().await;
    let watch = format!(
        "mod luawatch {{\n  priority 0\n  config {{\n    slow: string = \"{}\"\n  }}\n  lua \"luawatch.lua\"\n}}\n",
        slow.addr
    );
    let site = site(
        &[("luawatch", &watch)],
        &[("luawatch.lua", LUA_WATCH)],
        &slow,
        trickle,
    );
    let run = Running::start(&site);
    let seen =
        |e: &Exposition, labels: &[(&str, &str)]| e.sum("proxycache_script_lua_log_total", labels);

    // 1. While the upstream is slow to answer.
    give_up(run.addr, "/slow", "lua-upstream", GIVE_UP).await;
    let want = [
        ("status", "499"),
        ("path", "/slow"),
        ("id", "lua-upstream"),
        ("before", "set"),
        ("ct", "nil"),
    ];
    scrape_until(run.admin, |e| seen(e, &want) >= 1.0).await;

    // 2. While the request hook waits (its call out to the slow upstream): the log
    //    phase has the request, its id and `ctx` as the hook left them.
    give_up(run.addr, "/wait", "lua-hook", GIVE_UP).await;
    let want = [
        ("status", "499"),
        ("path", "/wait"),
        ("id", "lua-hook"),
        ("before", "set"),
        ("after", "nil"),
        ("ct", "nil"),
    ];
    scrape_until(run.admin, |e| seen(e, &want) >= 1.0).await;

    // 3. While the response body streams: the status sent.
    let mut stream = TcpStream::connect(run.addr).await.expect("connect");
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: test.local\r\nx-request-id: lua-body\r\n\r\n")
        .await
        .expect("send");
    read_until(&mut stream, "first bytes").await;
    drop(stream);
    let want = [
        ("status", "200"),
        ("path", "/stream"),
        ("id", "lua-body"),
        ("ct", "text/plain"),
    ];
    let e = scrape_until(run.admin, |e| seen(e, &want) >= 1.0).await;
    // Each request's log phase ran once.
    assert_eq!(seen(&e, &[]), 3.0);
}

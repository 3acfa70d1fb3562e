//! A connect that fails for a reason of the proxy's own machine — out of file
//! descriptors — is not the server's fault: it must not open the server's breaker.
//! (It did: one such failure with `failures = 1` cut off a healthy server for
//! `open_for`, for `[[tcp]]` and HTTP alike.)
//!
//! The binary runs as a child with a low `RLIMIT_NOFILE` (`ulimit -n` in `sh`; its own
//! process: the limit must not touch the test's). Unix only (`sh`, `ulimit`).

#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The child's descriptor limit.
const NOFILE: u64 = 64;

/// An upstream that answers every connection's first bytes with the same bytes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A tunnel through the frontend that echoed `hi`, held open; `None`: it failed.
async fn tunnel(addr: SocketAddr) -> Option<TcpStream> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"hi").await.ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"hi").then_some(s)
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// An HTTP connection that got an answer, held open; `None`: no answer (the proxy
/// could not accept it).
async fn http_answered(port: u16) -> Option<TcpStream> {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.ok()?;
        buf.starts_with(b"HTTP/1.1").then_some(s)
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_open_the_breaker() {
    let echo = echo_server().await;
    let (http, tcp) = (common::free_port(), common::free_port());
    let site = common::Site::new("local-failures");
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:{http}\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [log]\naccess = false\nlevel = \"error\"\n\n[scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.db]\nservers = [\"{echo}\"]\ncircuit_breaker = {{ failures = 1, open_for = \"60s\" }}\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:{tcp}\"\nupstream = \"db\"\n"
    ));
    // `ulimit` in a shell that then becomes proxycache (same pid).
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_proxycache"))
        .args(["run", "--config"])
        .arg(site.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _child = common::Killed(command.spawn().expect("spawn proxycache"));
    let frontend: SocketAddr = ([127, 0, 0, 1], tcp).into();
    let up = common::wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(frontend).is_ok()
    })
    .await;
    assert!(up, "proxycache did not start");
    assert!(tunnel(frontend).await.is_some(), "a first tunnel works");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Fill the child's descriptors with idle HTTP connections (one each) until one
    // is not accepted; then free exactly one. The next tunnel's accept takes it, and
    // its connect to the server fails with EMFILE.
    let mut fillers = Vec::new();
    loop {
        assert!(fillers.len() < NOFILE as usize, "descriptors never ran out");
        match http_answered(http).await {
            Some(s) => fillers.push(s),
            None => break,
        }
    }
    fillers.pop();
    // (The connection left waiting in the backlog is accepted now, and closed.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tunnel(frontend).await.is_none(),
        "with one descriptor free a tunnel cannot work: the test did not test"
    );
    drop(fillers);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Descriptors free again: the server was never at fault, so it takes tunnels at
    // once (its breaker, at one failure, had opened for 60s).
    for i in 0..5 {
        assert!(
            tunnel(frontend).await.is_some(),
            "tunnel {i} after the descriptors came back"
        );
    }
}

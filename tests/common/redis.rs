//! A real `redis-server` on a free loopback port, for tests of cluster-scoped state.
//! `.ci/run` installs Debian's `redis-server`; on a machine without it the helper tries
//! `apt-get install -y redis-server` once (as root), and otherwise fails with what to
//! install.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
}

fn find_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")]);
    candidates
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

fn binary() -> PathBuf {
    if let Some(p) = find_binary() {
        return p;
    }
    // A fresh machine: install it the way .ci/run does.
    let apt = |args: &[&str]| {
        let _ = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    apt(&["install", "-y", "-q", "redis-server"]);
    if find_binary().is_none() {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", "redis-server"]);
    }
    find_binary().unwrap_or_else(|| {
        panic!(
            "these tests need redis-server: install Debian's `redis-server` package (.ci/run does)"
        )
    })
}

/// Whether `addr` answers PING.
fn pong(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts redis-server on a free port (no persistence) and waits for PING.
    pub fn start() -> RedisServer {
        let port = super::free_port();
        let child = Command::new(binary())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = RedisServer {
            child: Some(child),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(addr) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server now (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

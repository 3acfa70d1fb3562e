//! A real `redis-server` on a free loopback port, for tests of cluster-scoped state.
//! `.ci/run` installs Debian's `redis-server`; on a machine without it the helper tries
//! `apt-get install -y redis-server` once (as root), and otherwise fails with what to
//! install.
//!
//! Also a scripted fake Redis ([`FakeRedis`]) for what a real one will not do on cue:
//! answer late, or dribble a reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

    /// Sends one command (a RESP array) on a new connection and returns the raw reply.
    pub fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to redis-server: {e}"));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(&encode(args))
            .unwrap_or_else(|e| panic!("write to redis-server: {e}"));
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        read_reply(&mut r, &mut out);
        out
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

/// `args` as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    match r.read_until(b'\n', &mut line) {
        Ok(n) if n > 0 => {}
        _ => return None,
    }
    out.extend_from_slice(&line);
    Some(line)
}

fn number(line: &[u8]) -> i64 {
    std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(-1)
}

/// Reads one whole reply into `out` (raw bytes).
fn read_reply(r: &mut impl BufRead, out: &mut Vec<u8>) {
    let Some(line) = read_line(r, out) else {
        return;
    };
    match line.first() {
        Some(b'$') if number(&line) >= 0 => {
            let mut body = vec![0; number(&line) as usize + 2];
            if r.read_exact(&mut body).is_ok() {
                out.extend_from_slice(&body);
            }
        }
        Some(b'*') => {
            for _ in 0..number(&line).max(0) {
                read_reply(r, out);
            }
        }
        _ => {}
    }
}

/// Reads one command (a RESP array of bulk strings); `None` at the end of the stream.
fn read_command(r: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut sink = Vec::new();
    let head = read_line(r, &mut sink)?;
    let mut args = Vec::new();
    for _ in 0..number(&head).max(0) {
        let len = read_line(r, &mut sink)?;
        let mut body = vec![0; number(&len).max(0) as usize + 2];
        r.read_exact(&mut body).ok()?;
        body.truncate(body.len() - 2);
        args.push(body);
    }
    Some(args)
}

/// How a [`FakeRedis`] answers.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Waited before answering `AUTH` and `GET`.
    pub delay: Duration,
    /// `GET` is answered with this bulk string, one byte at a time with this pause
    /// between bytes (none: `GET` answers nil at once, after `delay`).
    pub trickle: Option<(Vec<u8>, Duration)>,
}

/// A fake Redis on a free loopback port: `AUTH`, `CLIENT`, `SELECT`, `SET`, `DEL` and
/// `PING` are answered at once (`AUTH` and `GET` after [`Script::delay`]), anything
/// else with an error. Stops accepting on drop.
pub struct FakeRedis {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl FakeRedis {
    pub fn start(script: Script) -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (Arc::clone(&stop), Arc::clone(&accepted));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::Relaxed);
                let script = script.clone();
                std::thread::spawn(move || serve(conn, &script));
            }
        });
        FakeRedis {
            addr,
            stop,
            accepted,
        }
    }
}

fn serve(conn: TcpStream, script: &Script) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while let Some(args) = read_command(&mut r) {
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        let reply: Vec<u8> = match name.as_str() {
            "AUTH" => {
                std::thread::sleep(script.delay);
                b"+OK\r\n".to_vec()
            }
            "GET" => {
                std::thread::sleep(script.delay);
                match &script.trickle {
                    None => b"$-1\r\n".to_vec(),
                    Some((value, pause)) => {
                        let mut all = format!("${}\r\n", value.len()).into_bytes();
                        all.extend_from_slice(value);
                        all.extend_from_slice(b"\r\n");
                        for b in all {
                            if w.write_all(&[b]).is_err() {
                                return;
                            }
                            std::thread::sleep(*pause);
                        }
                        continue;
                    }
                }
            }
            "CLIENT" | "SELECT" | "SET" => b"+OK\r\n".to_vec(),
            "DEL" => b":1\r\n".to_vec(),
            "PING" => b"+PONG\r\n".to_vec(),
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

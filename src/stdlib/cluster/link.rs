//! One worker's connection to Redis, each call under one deadline.
//!
//! The redis crate's sync `Connection` bounds each socket read and write by its own
//! timeout: a new connection could spend `redis.timeout` connecting and again on the
//! command, and a large value that keeps arriving (or leaving) a little at a time was
//! never cut off. So the socket is ours: the crate encodes commands and parses replies
//! (it sees a [`redis::ConnectionLike`]), and before every read and write the socket's
//! timeout is set to what is left of the call's deadline.
//!
//! Owns the socket, the reply parser and what went wrong on the socket ([`Fault`]).
//! Must not touch: what the commands mean, resting and logging (the cluster link).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, ConnectionLike, RedisResult, Value};

use super::ClusterError;

/// What went wrong on the socket itself (as opposed to a reply Redis sent).
#[derive(Debug)]
pub enum Fault {
    /// The call's deadline passed.
    TimedOut,
    /// Redis closed the connection (the reply ended early).
    Closed,
    /// Any other socket error (refused, reset, broken pipe).
    Io(io::Error),
}

impl Fault {
    fn of(e: io::Error) -> Fault {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fault::TimedOut,
            io::ErrorKind::UnexpectedEof => Fault::Closed,
            _ => Fault::Io(e),
        }
    }

    /// As the error of a call that had `timeout`.
    pub fn into_error(self, timeout: Duration) -> ClusterError {
        match self {
            Fault::TimedOut => ClusterError::TimedOut(timeout),
            Fault::Closed => ClusterError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            )),
            Fault::Io(e) => ClusterError::Io(e),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    /// One read that waits at most `left`.
    fn read_within(&mut self, buf: &mut [u8], left: Duration) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.read(buf)
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_read_timeout(Some(left))?;
                s.read(buf)
            }
        }
    }

    /// Whether the peer has closed this idle connection (or sent bytes nobody asked
    /// for): looked at without waiting, before a command is written on it. A command
    /// is never sent twice (a rate-limit script that ran but whose reply was lost
    /// would take a second token), so a dead connection must be found before sending.
    fn closed_while_idle(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let (looked, restored) = match self {
            Stream::Tcp(s) => (
                s.set_nonblocking(true).and_then(|()| s.peek(&mut byte)),
                s.set_nonblocking(false),
            ),
            // (`UnixStream::peek` is not stable: a byte read here makes the
            // connection unusable anyway.)
            #[cfg(unix)]
            Stream::Unix(s) => (
                s.set_nonblocking(true).and_then(|()| s.read(&mut byte)),
                s.set_nonblocking(false),
            ),
        };
        restored.is_err() || !matches!(looked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// One write that waits at most `left`.
    fn write_within(&mut self, buf: &[u8], left: Duration) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                s.set_write_timeout(Some(left))?;
                s.write(buf)
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_write_timeout(Some(left))?;
                s.write(buf)
            }
        }
    }
}

/// What is left until `deadline`; a `TimedOut` error once nothing is.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// The socket seen through the deadline; the first fault is kept.
struct Timed<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
    fault: &'a mut Option<Fault>,
}

impl Timed<'_> {
    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::Interrupted && self.fault.is_none() {
                *self.fault = Some(Fault::of(io::Error::new(e.kind(), e.to_string())));
            }
        }
        r
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = left(self.deadline).and_then(|left| self.stream.read_within(buf, left));
        if matches!(r, Ok(0)) && !buf.is_empty() && self.fault.is_none() {
            *self.fault = Some(Fault::Closed);
        }
        self.note(r)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = left(self.deadline).and_then(|left| self.stream.write_within(buf, left));
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection to Redis (RESP2, authenticated, on its database).
pub struct Link {
    stream: Stream,
    parser: redis::Parser,
    db: i64,
    /// When the call in progress must end.
    deadline: Instant,
    /// What went wrong on the socket; a link with a fault is not used again.
    fault: Option<Fault>,
}

impl Link {
    /// Connects to `info`, authenticates and selects its database, all before
    /// `deadline` (a host name is resolved first, by the system resolver, which no
    /// deadline bounds).
    pub fn open(
        info: &ConnectionInfo,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Link, ClusterError> {
        let io_err = |e: io::Error| Fault::of(e).into_error(timeout);
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs().map_err(io_err)? {
                    match TcpStream::connect_timeout(&addr, left(deadline).map_err(io_err)?) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last).map_err(io_err)?;
                // A command is one write; Nagle would only delay its last segment.
                s.set_nodelay(true).map_err(io_err)?;
                Stream::Tcp(s)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(io_err)?),
            _ => return Err(ClusterError::Io(io::Error::other("TLS is not supported"))),
        };
        let settings = info.redis_settings();
        let mut link = Link {
            stream,
            parser: redis::Parser::new(),
            db: settings.db(),
            deadline,
            fault: None,
        };
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query::<()>(&mut link)
                .map_err(|e| link.error(e, timeout))
                .map_err(ClusterError::into_auth)?;
        }
        if link.db != 0 {
            let db = link.db;
            redis::cmd("SELECT")
                .arg(db)
                .query::<()>(&mut link)
                .map_err(|e| match link.error(e, timeout) {
                    ClusterError::Redis(source) => ClusterError::Select { db, source },
                    other => other,
                })?;
        }
        Ok(link)
    }

    /// Whether Redis closed this pooled connection while it was idle (its idle
    /// `timeout`, a restart, `CLIENT KILL`): then it is replaced before a command is
    /// written on it.
    pub fn closed_while_idle(&mut self) -> bool {
        self.stream.closed_while_idle()
    }

    /// Starts a call that must end by `deadline`.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// What `e`, the error of a call that had `timeout`, was: a fault on the socket
    /// when there was one, else what Redis answered.
    pub fn error(&mut self, e: redis::RedisError, timeout: Duration) -> ClusterError {
        match self.fault.take() {
            Some(fault) => fault.into_error(timeout),
            None => ClusterError::from_reply(e),
        }
    }

    fn timed(&mut self) -> (Timed<'_>, &mut redis::Parser) {
        (
            Timed {
                stream: &mut self.stream,
                deadline: self.deadline,
                fault: &mut self.fault,
            },
            &mut self.parser,
        )
    }

    fn read_value(&mut self) -> RedisResult<Value> {
        let (mut io, parser) = self.timed();
        loop {
            match parser.parse_value(&mut io)? {
                Value::Push { .. } => continue,
                v => return Ok(v),
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.timed().0.write_all(cmd)?;
        self.read_value()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.timed().0.write_all(cmd)?;
        let mut out = Vec::with_capacity(count);
        for i in 0..offset + count {
            let v = self.read_value()?;
            if i >= offset {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.fault.is_none()
    }
}

//! One `[[tcp]]` session's access-log line, as nginx's `stream` `access_log` and
//! HAProxy's `option tcplog` write: when the session ends, however it ends (closed,
//! idle, a connect that failed, no server, an error, or its task dropped when the
//! shutdown drain ran out), one line on the `proxycache::access` target that the
//! HTTP access log uses, so `log.access` and `log.format` (text or JSON) apply alike.
//!
//! Owns: the line's fields and when it is written (on drop). Must not touch: the
//! relay or connection setup, which only fill the record in.

use std::net::SocketAddr;
use std::time::Instant;

use super::connect::TcpError;
use crate::server::relay::{RelayError, Traffic};

/// How a session ended, as the line's `end` field says it.
#[derive(Debug)]
pub(super) enum End {
    /// Both sides closed.
    Closed,
    /// Nothing moved either way for the frontend's `idle_timeout`.
    IdleTimeout,
    /// Every server tried failed to connect (the error is the last one's).
    ConnectFailed(String),
    /// No server to try: all unhealthy or held off by their breakers, or the set gone.
    NoServer(String),
    /// A read or write failed, or the PROXY header could not be sent.
    Error(String),
}

impl End {
    /// How a session whose setup failed with `e` ended.
    pub(super) fn setup_failed(e: &TcpError) -> End {
        match e {
            TcpError::NoUpstream { .. } | TcpError::NoServer(_) => End::NoServer(e.to_string()),
            TcpError::Connect { .. } | TcpError::ConnectTimeout { .. } => {
                End::ConnectFailed(e.to_string())
            }
            TcpError::ProxyHeader { .. } => End::Error(e.to_string()),
        }
    }

    /// How a session whose relay returned `result` ended.
    pub(super) fn relayed<T>(result: &Result<T, RelayError>) -> End {
        match result {
            Ok(_) => End::Closed,
            Err(RelayError::Idle(_)) => End::IdleTimeout,
            Err(RelayError::Io(e)) => End::Error(e.to_string()),
        }
    }

    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            End::Closed => ("closed", None),
            End::IdleTimeout => ("idle_timeout", None),
            End::ConnectFailed(e) => ("connect_failed", Some(e)),
            End::NoServer(e) => ("no_server", Some(e)),
            End::Error(e) => ("error", Some(e)),
        }
    }
}

/// A session's record, filled in as it goes; writes its line when dropped.
#[derive(Debug)]
pub(super) struct Session {
    /// Whether to write the line (`log.access` when the session began).
    log: bool,
    /// The frontend's bound address.
    listen: SocketAddr,
    client: SocketAddr,
    start: Instant,
    pub upstream: Option<String>,
    /// The server connected to, or the last one a failed connect tried.
    pub server: Option<String>,
    /// Bytes from and to the client, counted by the relay.
    pub traffic: Traffic,
    /// `None` when dropped before the end was known: the task was dropped (the
    /// shutdown drain ran out).
    pub end: Option<End>,
}

impl Session {
    /// A session accepted now; `log`: whether the access log is on.
    pub(super) fn new(log: bool, listen: SocketAddr, client: SocketAddr) -> Session {
        Session {
            log,
            listen,
            client,
            start: Instant::now(),
            upstream: None,
            server: None,
            traffic: Traffic::default(),
            end: None,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.log {
            return;
        }
        let (end, error) = match &self.end {
            Some(end) => end.parts(),
            // Only the worker's runtime going away drops a session unfinished.
            None => ("shutdown", None),
        };
        tracing::info!(
            target: "proxycache::access",
            listen = %self.listen,
            client = %self.client.ip(),
            client_port = self.client.port(),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            server = self.server.as_deref().unwrap_or("-"),
            bytes_received = self.traffic.from_a(),
            bytes_sent = self.traffic.to_a(),
            duration_ms = crate::observe::to_microseconds(self.start.elapsed().as_secs_f64() * 1000.0),
            end,
            error,
            "tcp session"
        );
    }
}

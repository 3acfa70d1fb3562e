//! Opening one upstream connection: TCP, then TLS when the set asks for it. An
//! HTTP/1.1 set's connection is then driven by the request's task (`h1`); an
//! `http2 = true` set's gets hyper's handshake — HTTP/2 with prior knowledge on plain
//! TCP, HTTP/2 over TLS when ALPN picked `h2`, hyper's HTTP/1.1 otherwise. The whole of
//! it must finish within `connect_timeout`.
//!
//! Owns: [`Endpoint`] (everything needed to reach one server) and the connection
//! tasks. Must not touch: pooling (the caller decides what to keep) or requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::Stream;
use super::pool::{PoolKey, Sender};
use super::tls::{self, TlsTarget};
use crate::config::{PoolConfig, UpstreamConfig};

/// How to reach one server, resolved when a generation is built.
#[derive(Debug)]
pub struct Endpoint {
    /// The upstream set it is a server of (`std.http` for a script's outbound call),
    /// for the log lines a response body writes.
    pub upstream: String,
    pub addr: SocketAddr,
    /// The address as written (`host:port`): the `:authority` of HTTP/2 requests that
    /// arrive without a host.
    pub authority: String,
    pub key: PoolKey,
    pub tls: Option<TlsTarget>,
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
}

impl Endpoint {
    /// The endpoint of server `addr` (written `authority`) of set `cfg`; `tls` is the
    /// set's client config when `tls = true`.
    pub fn new(
        cfg: &UpstreamConfig,
        addr: SocketAddr,
        authority: &str,
        tls: Option<&tls::SetTls>,
    ) -> Result<Endpoint, tls::TlsError> {
        let tls = match tls {
            Some(set) => Some(set.target(cfg.sni.as_deref(), authority)?),
            None => None,
        };
        Ok(Endpoint {
            upstream: cfg.name.clone(),
            addr,
            authority: authority.to_owned(),
            key: PoolKey {
                addr,
                tls: tls.as_ref().map(|t| Arc::clone(&t.identity)),
                http2: cfg.http2,
            },
            tls,
            connect_timeout: cfg.connect_timeout,
            pool: cfg.pool.clone(),
        })
    }

    /// A plain HTTP/1.1 endpoint (outbound calls from scripts).
    pub fn plain(addr: SocketAddr, connect_timeout: Duration, pool: PoolConfig) -> Endpoint {
        Endpoint {
            upstream: "std.http".to_owned(),
            addr,
            authority: addr.to_string(),
            key: PoolKey::plain(addr),
            tls: None,
            connect_timeout,
            pool,
        }
    }

    /// The URI scheme requests to it use.
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }
}

/// Whether a failed connect is this machine's trouble, not the server's: out of file
/// descriptors, buffers, memory or local ports. Such a failure says nothing about the
/// server, so it must not count against it (breaker, passive health), and trying
/// another server will not help.
pub fn is_local_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Why a connection could not be made.
pub enum ConnectFailure {
    Io(std::io::Error),
    /// `connect_timeout` ran out during this step.
    Timeout(ConnectStage),
    /// The TLS handshake failed; the reason in words.
    Tls(String),
    /// The TLS server refused every protocol offered in ALPN (an `h2`-only server
    /// asked for `http/1.1`); the reason in words.
    NoCommonProtocol(String),
}

impl ConnectFailure {
    /// What went wrong, in words, as [`super::client::SendError::describe`] says it.
    pub fn describe(&self) -> String {
        match self {
            ConnectFailure::Io(e) => format!("connect failed: {e}"),
            ConnectFailure::Timeout(stage) => format!("{} timed out", stage.step()),
            ConnectFailure::Tls(reason) | ConnectFailure::NoCommonProtocol(reason) => {
                reason.clone()
            }
        }
    }
}

/// The step of opening a connection that `connect_timeout` ran out in: a server that
/// takes the TCP connection and then never answers the TLS ClientHello is told from
/// one that does not accept at all (nginx: "upstream timed out ... while SSL
/// handshaking to upstream").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStage {
    Tcp,
    Tls,
    /// hyper's HTTP/2 (or, a TLS server not picking `h2`, HTTP/1.1) handshake.
    Http,
}

impl ConnectStage {
    /// The step in words: `connect`, `TLS handshake`, `HTTP handshake`.
    pub fn step(self) -> &'static str {
        match self {
            ConnectStage::Tcp => "connect",
            ConnectStage::Tls => "TLS handshake",
            ConnectStage::Http => "HTTP handshake",
        }
    }

    /// What timed out, toward `server`: `connect to 10.0.0.5:443`, `TLS handshake
    /// with 10.0.0.5:443`.
    pub fn describe(self, server: SocketAddr) -> String {
        match self {
            ConnectStage::Tcp => format!("connect to {server}"),
            ConnectStage::Tls => format!("TLS handshake with {server}"),
            ConnectStage::Http => format!("HTTP handshake with {server}"),
        }
    }
}

/// Opens a connection to `ep` and spawns its hyper connection task (HTTP/2 sets).
pub async fn connect(ep: &Endpoint) -> Result<Sender, ConnectFailure> {
    let deadline = Instant::now() + ep.connect_timeout;
    let stream = stream(ep, false, deadline).await?;
    // ALPN decides: a server that does not pick `h2` gets HTTP/1.1 even when asked
    // for HTTP/2 (what browsers and curl do too).
    let h2 = match &stream {
        Stream::Tcp(_) => ep.key.http2,
        Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    };
    within(
        deadline,
        ConnectStage::Http,
        handshake(TokioIo::new(stream), h2, ep.addr),
    )
    .await
}

/// Opens the byte stream to `ep` (TCP, then TLS when the set asks for it, offering
/// only `http/1.1`) for an HTTP/1.1 connection the request's task drives itself (see
/// `h1`) or an upgrade.
pub async fn open_stream(ep: &Endpoint) -> Result<Stream, ConnectFailure> {
    stream(ep, true, Instant::now() + ep.connect_timeout).await
}

/// `step`, failing as a timeout of `stage` if it has not finished by `deadline` (the
/// whole connect shares one `connect_timeout`).
async fn within<T>(
    deadline: Instant,
    stage: ConnectStage,
    step: impl std::future::Future<Output = Result<T, ConnectFailure>>,
) -> Result<T, ConnectFailure> {
    match tokio::time::timeout_at(deadline, step).await {
        Err(_) => Err(ConnectFailure::Timeout(stage)),
        Ok(result) => result,
    }
}

async fn stream(ep: &Endpoint, h1_only: bool, deadline: Instant) -> Result<Stream, ConnectFailure> {
    let tcp = within(deadline, ConnectStage::Tcp, async {
        TcpStream::connect(ep.addr)
            .await
            .map_err(ConnectFailure::Io)
    })
    .await?;
    // Small requests and responses must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let Some(target) = &ep.tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let config = if h1_only {
        &target.h1_config
    } else {
        &target.config
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let handshake = async {
        connector
            .connect(target.identity.name.clone(), tcp)
            .await
            .map_err(|e| {
                let reason = tls::describe_failure(&e, target);
                if tls::no_common_protocol(&e) {
                    ConnectFailure::NoCommonProtocol(reason)
                } else {
                    ConnectFailure::Tls(reason)
                }
            })
    };
    let tls = within(deadline, ConnectStage::Tls, handshake).await?;
    Ok(Stream::Tls(Box::new(tls)))
}

async fn handshake<T>(io: TokioIo<T>, h2: bool, addr: SocketAddr) -> Result<Sender, ConnectFailure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| ConnectFailure::Io(std::io::Error::other(e));
    if h2 {
        // Response heads as large as an HTTP/1.1 upstream may send (h2's default
        // list size is 16 KiB: a larger head reset the stream).
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(super::h1::MAX_HEAD_BYTES as u32)
            .handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "proxycache::upstream", %addr, error = %e, "upstream h2 connection ended");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "proxycache::upstream", %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(sender))
}

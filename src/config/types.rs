//! The validated runtime configuration: what the rest of the proxy reads.
//!
//! Everything here has already been checked (addresses parse, sizes and durations are
//! numbers, routes name real upstreams). Nothing in this file touches TOML; the file
//! structs and the validation that produces these types live in `file.rs` and
//! `validate.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::http::path::{EscapedSlashes, PathRules};
use http::{HeaderName, Method};
use ipnet::IpNet;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; `None` for the embedded default.
    pub source: Option<PathBuf>,
    /// Directory that relative paths are resolved against.
    pub base_dir: PathBuf,
    /// The TOML text this was parsed from (kept for `[mods.*]` diagnostics and repair).
    pub source_text: String,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub scripts: ScriptsConfig,
    /// `[cache]`.
    pub cache: crate::stdlib::cache::store::CacheSettings,
    /// `[redis]`, when present.
    pub redis: Option<crate::stdlib::cluster::RedisSettings>,
    /// Upstream sets in name order; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub tcp: Vec<TcpConfig>,
    /// Raw `[mods.NAME]` tables; checked against each module's `config {}` block later.
    pub mods: BTreeMap<String, toml::Table>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Resolved worker count (never 0: `workers = 0` becomes the number of cores).
    pub workers: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.merge_slashes`: runs of `/` in request paths become one.
    pub merge_slashes: bool,
    /// `server.escaped_slashes`: what `%2F` and `%5C` in request paths become.
    pub escaped_slashes: EscapedSlashes,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub tls: Vec<TlsListenerConfig>,
}

impl ServerConfig {
    /// How request paths are normalised (`http::path`).
    pub fn path_rules(&self) -> PathRules {
        PathRules {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// `[server.limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body: u64,
    pub max_connections: usize,
}

/// `[server.timeouts]`.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub shutdown_drain: Duration,
}

/// One `[[server.tls]]` listener.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    pub certs: Vec<CertPair>,
    pub alpn: Vec<String>,
    /// CA bundle for client-certificate verification (mTLS), if any.
    pub client_ca: Option<PathBuf>,
    /// Where the listener's table and its `client_ca` value are in the config text
    /// (byte ranges): the files are read after validation, and their errors point
    /// here.
    pub at: Range<usize>,
    pub client_ca_at: Option<Range<usize>>,
}

/// A certificate chain and its key, both resolved paths.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the `cert` and `key` values are in the config text (byte ranges).
    pub cert_at: Range<usize>,
    pub key_at: Range<usize>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `listen = ""` (admin API off).
    pub listen: Option<SocketAddr>,
    pub api_key: String,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter directive such as `info` or `proxycache=debug`.
    pub level: String,
    pub format: LogFormat,
    pub access: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[scripts]`.
#[derive(Debug, Clone)]
pub struct ScriptsConfig {
    /// Resolved against the config file's directory.
    pub dir: PathBuf,
    pub watch: bool,
    pub lua_memory_limit: usize,
    pub lua_instruction_budget: u64,
}

/// One `[upstreams.NAME]` set.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub tls: bool,
    pub tls_ca: Option<PathBuf>,
    pub sni: Option<String>,
    pub http2: bool,
    pub pool: PoolConfig,
    pub health: Option<HealthConfig>,
    pub circuit_breaker: BreakerConfig,
    /// Where the set and its TLS keys are in the config text.
    pub at: UpstreamAt,
}

/// Where a set and its TLS keys are in the config text (byte ranges): its `tls_ca` is
/// read and its server names checked when a generation is built, after validation,
/// and those errors point here. Left out of `Debug`: a reload reports a set whose
/// `Debug` text differs as changed, and a set that only moved in the file is not.
#[derive(Clone, Default)]
pub struct UpstreamAt {
    /// The dotted key of the set as errors name it: `upstreams.app`.
    pub key: String,
    /// The `[upstreams.NAME]` table.
    pub table: Range<usize>,
    pub tls: Option<Range<usize>>,
    pub tls_ca: Option<Range<usize>>,
    pub sni: Option<Range<usize>>,
    pub servers: Option<Range<usize>>,
}

impl std::fmt::Debug for UpstreamAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamAt")
    }
}

/// One server of an upstream set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub target: ServerTarget,
    pub weight: u32,
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerTarget {
    /// A network address; `authority` is the text as written (`127.0.0.1:3000`,
    /// `app.internal:80`), used for logs and the default SNI.
    Addr { addr: SocketAddr, authority: String },
    /// `builtin:echo`: answers in-process with a JSON echo of the request.
    Echo,
}

/// Balancing strategy of an upstream set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastConn,
    IpHash,
    ConsistentHash,
    P2c,
}

impl Balance {
    /// The name as written in config.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::ConsistentHash => "consistent_hash",
            Balance::P2c => "p2c",
        }
    }
}

/// What `consistent_hash` hashes (`hash_key` in the upstream table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
}

/// `pool = { ... }`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
}

/// `health = { ... }`: active health checks.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// What a check does.
    pub kind: HealthKind,
    /// Whether `type` was written (else it follows the set's use).
    pub kind_given: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

/// `health.type`: how a server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// `GET path` answered with 2xx or 3xx.
    Http,
    /// A TCP connect (TLS handshake too with `tls = true`) that succeeds.
    Tcp,
}

/// `circuit_breaker = { ... }`.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failures: u32,
    pub open_for: Duration,
    /// Response statuses that count as the server's failures (empty: only transport
    /// failures count, as with nginx's default `proxy_next_upstream error timeout`).
    pub statuses: Vec<http::StatusCode>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-cased host without port.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Header name and exact value that must be present.
    pub headers: Vec<(HeaderName, String)>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
}

/// One `[[tcp]]` L4 frontend.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub proxy_protocol: Option<u8>,
    /// No byte moving either way for this long closes a connection.
    pub idle_timeout: Duration,
}

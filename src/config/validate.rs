//! From file structs to the validated [`Config`]: every check, every default.
//!
//! Checks never stop at the first problem: each one records a [`ConfigError`] and
//! carries on with the default, so a single run reports everything wrong in the file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use toml::Spanned;

use super::file::{self, key_segment, DurationValue, FileConfig, Quantity, SizeValue};
use super::types::*;
use super::units::{parse_duration, parse_size};
use super::{ConfigError, ConfigErrors};
use crate::stdlib::cache::store::CacheSettings;
use crate::stdlib::cluster::RedisSettings;
use defaults::*;

mod route;
mod server;
mod stdlib;
mod upstream;
mod values;

/// The default of every key of `config.toml`, re-exported as `config::DEFAULT_*`.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    use super::{Balance, EscapedSlashes, LogFormat};

    /// `server.listen`: loopback only, so a fresh checkout is not reachable from outside.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    /// `server.workers`: 0 means one worker per core.
    pub const DEFAULT_WORKERS: usize = 0;
    /// `server.merge_slashes`: `//a///b` is `/a/b` to routing, modules and upstreams,
    /// as with nginx's `merge_slashes on`.
    pub const DEFAULT_MERGE_SLASHES: bool = true;
    /// `server.limits.max_header_bytes` (64 KiB); larger request heads get 431.
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
    /// `server.limits.max_body` (16 MiB); larger request bodies get 413.
    pub const DEFAULT_MAX_BODY: u64 = 16 * 1024 * 1024;
    /// `server.limits.max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
    /// `server.timeouts.header`: time to receive a request head before 408.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `server.timeouts.idle`: keep-alive connections idle this long are closed.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `server.timeouts.shutdown_drain`: how long shutdown waits for requests in flight.
    pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
    /// `server.tls[].alpn`.
    pub const DEFAULT_ALPN: &[&str] = &["h2", "http/1.1"];
    /// `admin.listen`: loopback, so no API key is needed.
    pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
    /// `log.level`.
    pub const DEFAULT_LOG_LEVEL: &str = "info";
    /// `server.escaped_slashes`: `%2F` is data to many APIs.
    pub const DEFAULT_ESCAPED_SLASHES: EscapedSlashes = EscapedSlashes::Keep;
    /// `log.format`.
    pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
    /// `log.access`: one line per request.
    pub const DEFAULT_ACCESS_LOG: bool = true;
    /// `scripts.dir`, relative to the config file's directory.
    pub const DEFAULT_SCRIPTS_DIR: &str = "mods";
    /// `scripts.watch`: reload modules when their files change.
    pub const DEFAULT_SCRIPTS_WATCH: bool = true;
    /// `scripts.lua_memory_limit` (64 MiB per worker VM).
    pub const DEFAULT_LUA_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
    /// `scripts.lua_instruction_budget`, per hook call.
    pub const DEFAULT_LUA_INSTRUCTION_BUDGET: u64 = 1_000_000;
    /// `upstreams.NAME.balance`.
    pub const DEFAULT_BALANCE: Balance = Balance::RoundRobin;
    /// `upstreams.NAME.servers[].weight`.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// `upstreams.NAME.connect_timeout`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// `upstreams.NAME.response_timeout`: until the response head arrives.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `upstreams.NAME.tls`: plain HTTP to upstreams unless asked.
    pub const DEFAULT_UPSTREAM_TLS: bool = false;
    /// `upstreams.NAME.http2`: HTTP/1.1 to upstreams unless asked.
    pub const DEFAULT_UPSTREAM_HTTP2: bool = false;
    /// `upstreams.NAME.pool.max_idle_per_server`.
    pub const DEFAULT_POOL_MAX_IDLE: usize = 64;
    /// `upstreams.NAME.pool.idle_timeout`.
    pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    /// `upstreams.NAME.health.path` (health checks run only when `health` is present).
    pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
    /// `upstreams.NAME.health.interval`.
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// `upstreams.NAME.health.timeout`.
    pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    /// `upstreams.NAME.health.healthy_after`: passes in a row to mark a server up.
    pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
    /// `upstreams.NAME.health.unhealthy_after`: failures in a row to mark it down.
    pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
    /// `upstreams.NAME.circuit_breaker.failures`: failures in a row that open it.
    pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
    /// `upstreams.NAME.circuit_breaker.open_for`.
    pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
    /// `tcp[].idle_timeout`: a `[[tcp]]` connection with no byte moving either way
    /// this long is closed. Ten minutes, as nginx's `proxy_timeout`: pooled database
    /// and Redis connections sit idle far longer than an HTTP keep-alive.
    pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
}

/// Bounds on values of `config.toml`, re-exported as `config::MAX_*`.
pub mod bounds {
    use std::time::Duration;

    /// The longest duration any key accepts (365 days). Timers add durations to the
    /// clock; a bound far past any sensible timeout keeps every such sum in range.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
    /// `MAX_DURATION` as written in errors and docs.
    pub const MAX_DURATION_TEXT: &str = "365d";
    /// The largest `upstreams.NAME.servers[].weight`: a share of a thousand to one is
    /// finer than any set needs, and keeps balancing arithmetic and the
    /// `consistent_hash` ring small.
    pub const MAX_WEIGHT: u32 = 1_000;
    /// The largest `server.workers`: each worker is an OS thread with its own event
    /// loop, pool and sockets, and far more than the cores of any machine only costs
    /// memory (a huge count would exhaust it before serving anything).
    pub const MAX_WORKERS: usize = 1_024;
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
const BALANCES: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("weighted", Balance::Weighted),
    ("least_conn", Balance::LeastConn),
    ("ip_hash", Balance::IpHash),
    ("consistent_hash", Balance::ConsistentHash),
    ("p2c", Balance::P2c),
];
const ESCAPED_SLASHES: &[(&str, EscapedSlashes)] = &[
    ("keep", EscapedSlashes::Keep),
    ("reject", EscapedSlashes::Reject),
    ("decode", EscapedSlashes::Decode),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const ALPN_PROTOCOLS: &[&str] = &["h2", "http/1.1"];

/// Reads and validates `text`; `file_name` is what errors call the file.
pub(super) fn load(text: &str, file_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let read = file::read(text);
    let mut check = Checker::new(file_name, text, base_dir, read.pruned);
    for error in read.errors {
        check.push(error.key, error.span, error.message);
    }
    let config = read.file.map(|file| check.config(file, text));
    match config {
        Some(config) if check.errors.is_empty() => Ok(config),
        _ => Err(check.finish()),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Collects errors while the config is being built.
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    base_dir: &'a Path,
    /// Keys already reported as malformed and removed before validation.
    pruned: Vec<String>,
    errors: Vec<ConfigError>,
    /// Every listening address with the key that asked for it, to catch clashes.
    listeners: Vec<(SocketAddr, String)>,
}

impl<'a> Checker<'a> {
    fn new(file: &'a str, text: &'a str, base_dir: &'a Path, pruned: Vec<String>) -> Self {
        Checker {
            file,
            text,
            base_dir,
            pruned,
            errors: Vec::new(),
            listeners: Vec::new(),
        }
    }

    fn push(&mut self, key: String, span: Option<Range<usize>>, message: String) {
        let (line, col) = span.map_or((0, 0), |span| line_col(self.text, span.start));
        let file = self.file.to_owned();
        self.errors.push(ConfigError {
            file,
            key,
            line,
            col,
            message,
        });
    }

    /// Records a validation error, unless it is about a key already reported as
    /// malformed (its value was dropped, so anything said about it would be noise).
    fn error(&mut self, key: &str, span: Range<usize>, message: impl Into<String>) {
        if !self.pruned.iter().any(|pruned| related_keys(key, pruned)) {
            self.push(key.to_owned(), Some(span), message.into());
        }
    }

    /// Whether `key` itself, or a table holding it, was reported as malformed and
    /// removed: what stands in its place (a default, nothing) is no basis for further
    /// errors (a clash with a default it never asked for, an unknown name).
    fn was_pruned(&self, key: &str) -> bool {
        self.pruned.iter().any(|pruned| {
            key.strip_prefix(pruned.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line == 0, e.line, e.col));
        self.errors.dedup();
        ConfigErrors(self.errors)
    }

    fn config(&mut self, file: FileConfig, text: &str) -> Config {
        // Listeners first, in file order, so a clash names the earlier one. The default
        // admin address is taken before any: a listener on it clashes, naming its key.
        if file.admin.listen.is_none() && !self.was_pruned("admin.listen") {
            self.listeners.push((
                DEFAULT_ADMIN_LISTEN,
                "admin.listen (its default)".to_owned(),
            ));
        }
        let server = self.server(&file.server, !file.tcp.is_empty());
        let admin = self.admin(&file.admin);
        let mut upstreams = self.upstreams(&file.upstreams);
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let routes = self.routes(&file.routes, &names);
        let tcp = self.tcp(&file.tcp, &names, &upstreams);
        // A set that only `[[tcp]]` frontends use is checked by connecting, unless
        // its `health` says otherwise: its servers need not speak HTTP.
        for (i, u) in upstreams.iter_mut().enumerate() {
            if let Some(h) = u.health.as_mut().filter(|h| !h.kind_given) {
                let by_tcp = tcp.iter().any(|t| t.upstream == i);
                let by_route = routes.iter().any(|r| r.upstream == i);
                if by_tcp && !by_route {
                    h.kind = HealthKind::Tcp;
                }
            }
        }
        Config {
            source: None,
            base_dir: self.base_dir.to_path_buf(),
            source_text: text.to_owned(),
            log: self.log(&file.log),
            scripts: self.scripts(&file.scripts),
            cache: self.cache(&file.cache, file.redis.is_some()),
            redis: file.redis.as_ref().and_then(|r| self.redis(r)),
            server,
            admin,
            upstreams,
            routes,
            tcp,
            mods: file.mods,
        }
    }
}

/// True when `key` is `pruned`, inside it, or one of its parents.
fn related_keys(key: &str, pruned: &str) -> bool {
    let within = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    within(pruned, key) || within(key, pruned)
}

/// `"10.0.0.0/8"`, or a bare address meaning just that host.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid CIDR {text:?}: expected e.g. \"10.0.0.0/8\" or \"192.168.1.10\"")
        })
}

/// Accepts what `tracing_subscriber`'s `EnvFilter` accepts (`EnvFilter::new` would
/// silently drop what it cannot parse): a level (`trace`..`error`, `off`), or
/// directives like `info,proxycache=off` or `proxycache` (a target at every level).
/// A lone word that is no level is taken as a target only when it is one of the
/// proxy's own roots or a path (`hyper::proto`): any other (`loud`, `warning`) is
/// far more likely a misspelt level, and as a target it would silence every line.
/// Returns the directives with the spaces around each taken out (`EnvFilter` would
/// take `info, proxycache=debug` for a target named " proxycache").
fn check_log_level(text: &str) -> Result<String, String> {
    use tracing_subscriber::filter::LevelFilter;
    let unknown = |level: &str| {
        format!(
            "unknown log level {level:?}, expected one of {}, off (or target=level directives)",
            LOG_LEVELS.join(", ")
        )
    };
    for directive in text.split(',').map(str::trim) {
        match directive.rsplit_once('=') {
            Some((_, level)) => {
                level
                    .trim()
                    .parse::<LevelFilter>()
                    .map_err(|_| unknown(level.trim()))?;
            }
            None if directive.is_empty() || directive.parse::<LevelFilter>().is_ok() => {}
            None => {
                let own = |root: &str| {
                    directive == root
                        || directive
                            .strip_prefix(root)
                            .is_some_and(|rest| rest.starts_with("::"))
                };
                if !own("proxycache") && !own("admin_audit") && !directive.contains("::") {
                    return Err(unknown(directive));
                }
            }
        }
    }
    let directives = text.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    tracing_subscriber::EnvFilter::builder()
        .parse(&directives)
        .map(|_| directives)
        .map_err(|e| format!("invalid log directives {text:?}: {e}"))
}

/// `builtin:echo`, an `IP:port`, or a `host:port` resolved now (first address wins).
fn server_target(text: &str) -> Result<ServerTarget, String> {
    if let Some(name) = text.strip_prefix("builtin:") {
        return match name {
            "echo" => Ok(ServerTarget::Echo),
            _ => Err(format!(
                "unknown built-in server {text:?} (known: builtin:echo)"
            )),
        };
    }
    let authority = text.to_owned();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ServerTarget::Addr { addr, authority });
    }
    let has_port = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(format!(
            "invalid server address {text:?}: expected host:port, e.g. \"127.0.0.1:3000\""
        ));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {text:?}: {err}"))?;
    match addrs.next() {
        Some(addr) => Ok(ServerTarget::Addr { addr, authority }),
        None => Err(format!("cannot resolve {text:?}: no addresses")),
    }
}

/// Lower-cases a route host and drops a `:port` suffix (`[::1]:8080` -> `[::1]`).
fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host[..=end].to_owned(),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name.to_owned()
        }
        _ => host,
    }
}

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

/// The default of every key of `config.toml`, re-exported as `config::DEFAULT_*`.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    use super::{Balance, LogFormat};

    /// `server.listen`: loopback only, so a fresh checkout is not reachable from outside.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    /// `server.workers`: 0 means one worker per core.
    pub const DEFAULT_WORKERS: usize = 0;
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

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line == 0, e.line, e.col));
        self.errors.dedup();
        ConfigErrors(self.errors)
    }

    fn config(&mut self, file: FileConfig, text: &str) -> Config {
        // Listeners first, in file order, so a clash names the earlier one.
        let server = self.server(&file.server, !file.tcp.is_empty());
        let admin = self.admin(&file.admin);
        let upstreams = self.upstreams(&file.upstreams);
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let routes = self.routes(&file.routes, &names);
        let tcp = self.tcp(&file.tcp, &names);
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

    // ---- [server] -------------------------------------------------------------------

    fn server(&mut self, file: &file::ServerFile, has_tcp: bool) -> ServerConfig {
        let listen = self.listen_list(file.listen.as_ref());
        let tls: Vec<_> = file
            .tls
            .iter()
            .enumerate()
            .map(|(i, t)| self.tls_listener(i, t))
            .collect();
        if let Some(spanned) = &file.listen {
            if spanned.get_ref().is_empty() && tls.is_empty() && !has_tcp {
                let message = "nothing to serve: server.listen is empty and there are no [[server.tls]] or [[tcp]] listeners";
                self.error("server.listen", spanned.span(), message);
            }
        }
        let limits = &file.limits;
        let timeouts = &file.timeouts;
        ServerConfig {
            listen,
            workers: self.workers(&file.workers),
            trusted_proxies: self.trusted_proxies(&file.trusted_proxies),
            limits: Limits {
                max_header_bytes: self.size_usize(
                    "server.limits.max_header_bytes",
                    &limits.max_header_bytes,
                    DEFAULT_MAX_HEADER_BYTES,
                ),
                max_body: self.size("server.limits.max_body", &limits.max_body, DEFAULT_MAX_BODY),
                max_connections: self.count(
                    "server.limits.max_connections",
                    &limits.max_connections,
                    DEFAULT_MAX_CONNECTIONS,
                    1,
                ),
            },
            timeouts: Timeouts {
                header: self.duration(
                    "server.timeouts.header",
                    &timeouts.header,
                    DEFAULT_HEADER_TIMEOUT,
                ),
                idle: self.duration("server.timeouts.idle", &timeouts.idle, DEFAULT_IDLE_TIMEOUT),
                shutdown_drain: self.duration(
                    "server.timeouts.shutdown_drain",
                    &timeouts.shutdown_drain,
                    DEFAULT_SHUTDOWN_DRAIN,
                ),
            },
            tls,
        }
    }

    fn listen_list(&mut self, listen: Option<&Spanned<Vec<file::Text>>>) -> Vec<SocketAddr> {
        let Some(listen) = listen else {
            self.listeners
                .push((DEFAULT_LISTEN, "server.listen".to_owned()));
            return vec![DEFAULT_LISTEN];
        };
        let mut addrs = Vec::new();
        for (i, text) in listen.get_ref().iter().enumerate() {
            addrs.extend(self.listen_addr(&format!("server.listen[{i}]"), text));
        }
        addrs
    }

    fn workers(&mut self, workers: &Option<file::Int>) -> usize {
        let workers = self.count("server.workers", workers, DEFAULT_WORKERS, 0);
        if workers > 0 {
            return workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn trusted_proxies(&mut self, cidrs: &[file::Text]) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in cidrs.iter().enumerate() {
            match parse_cidr(text.get_ref()) {
                Ok(net) => nets.push(net),
                Err(message) => self.error(
                    &format!("server.trusted_proxies[{i}]"),
                    text.span(),
                    message,
                ),
            }
        }
        nets
    }

    fn tls_listener(&mut self, index: usize, tls: &Spanned<file::TlsFile>) -> TlsListenerConfig {
        let key = format!("server.tls[{index}]");
        let file = tls.get_ref();
        let listen = match &file.listen {
            Some(text) => self.listen_addr(&format!("{key}.listen"), text),
            None => {
                self.error(
                    &format!("{key}.listen"),
                    tls.span(),
                    "a TLS listener needs `listen`",
                );
                None
            }
        };
        TlsListenerConfig {
            listen: listen.unwrap_or(DEFAULT_LISTEN),
            certs: self.certs(&key, tls),
            alpn: self.alpn(&key, file.alpn.as_deref()),
            client_ca: self.optional_path(file.client_ca.as_ref()),
        }
    }

    fn certs(&mut self, key: &str, tls: &Spanned<file::TlsFile>) -> Vec<CertPair> {
        let key = format!("{key}.certs");
        let Some(certs) = &tls.get_ref().certs else {
            self.error(
                &key,
                tls.span(),
                "a TLS listener needs `certs = [{ cert = \"...\", key = \"...\" }]`",
            );
            return Vec::new();
        };
        if certs.get_ref().is_empty() {
            self.error(
                &key,
                certs.span(),
                "a TLS listener needs at least one certificate",
            );
        }
        let mut pairs = Vec::new();
        for (i, pair) in certs.get_ref().iter().enumerate() {
            let cert = self.required_path(
                &format!("{key}[{i}].cert"),
                pair.get_ref().cert.as_ref(),
                pair.span(),
            );
            let private = self.required_path(
                &format!("{key}[{i}].key"),
                pair.get_ref().key.as_ref(),
                pair.span(),
            );
            if let (Some(cert), Some(key)) = (cert, private) {
                pairs.push(CertPair { cert, key });
            }
        }
        pairs
    }

    fn alpn(&mut self, key: &str, alpn: Option<&[file::Text]>) -> Vec<String> {
        let Some(alpn) = alpn else {
            return DEFAULT_ALPN.iter().map(|p| (*p).to_owned()).collect();
        };
        let mut protocols = Vec::new();
        for (i, text) in alpn.iter().enumerate() {
            if ALPN_PROTOCOLS.contains(&text.get_ref().as_str()) {
                protocols.push(text.get_ref().clone());
            } else {
                let message = format!(
                    "unsupported ALPN protocol {:?}, expected one of {}",
                    text.get_ref(),
                    ALPN_PROTOCOLS.join(", ")
                );
                self.error(&format!("{key}.alpn[{i}]"), text.span(), message);
            }
        }
        protocols
    }

    // ---- [admin] [log] [scripts] ----------------------------------------------------

    fn admin(&mut self, file: &file::AdminFile) -> AdminConfig {
        let api_key = file.api_key.clone().unwrap_or_default();
        let listen = match &file.listen {
            None => Some(DEFAULT_ADMIN_LISTEN),
            Some(text) if text.get_ref().is_empty() => None,
            Some(text) => self.listen_addr("admin.listen", text),
        };
        if let (Some(addr), Some(text)) = (listen, &file.listen) {
            if !addr.ip().is_loopback() && api_key.is_empty() {
                let message = "an admin listener on a non-loopback address needs admin.api_key";
                self.error("admin.listen", text.span(), message);
            }
        }
        if file.listen.is_none() {
            self.listeners
                .push((DEFAULT_ADMIN_LISTEN, "admin.listen".to_owned()));
        }
        AdminConfig { listen, api_key }
    }

    fn log(&mut self, file: &file::LogFile) -> LogConfig {
        let level = match &file.level {
            Some(text) => match check_log_level(text.get_ref()) {
                Ok(()) => text.get_ref().clone(),
                Err(message) => {
                    self.error("log.level", text.span(), message);
                    DEFAULT_LOG_LEVEL.to_owned()
                }
            },
            None => DEFAULT_LOG_LEVEL.to_owned(),
        };
        let format = file
            .format
            .as_ref()
            .and_then(|text| self.one_of("log.format", text, LOG_FORMATS));
        LogConfig {
            level,
            format: format.unwrap_or(DEFAULT_LOG_FORMAT),
            access: file.access.unwrap_or(DEFAULT_ACCESS_LOG),
        }
    }

    fn scripts(&mut self, file: &file::ScriptsFile) -> ScriptsConfig {
        let dir = match &file.dir {
            Some(text) => self.required_path("scripts.dir", Some(text), text.span()),
            None => None,
        };
        ScriptsConfig {
            dir: dir.unwrap_or_else(|| self.base_dir.join(DEFAULT_SCRIPTS_DIR)),
            watch: file.watch.unwrap_or(DEFAULT_SCRIPTS_WATCH),
            lua_memory_limit: self.size_usize(
                "scripts.lua_memory_limit",
                &file.lua_memory_limit,
                DEFAULT_LUA_MEMORY_LIMIT,
            ),
            lua_instruction_budget: self.count(
                "scripts.lua_instruction_budget",
                &file.lua_instruction_budget,
                DEFAULT_LUA_INSTRUCTION_BUDGET,
                1,
            ),
        }
    }

    fn redis(&mut self, file: &Spanned<file::RedisFile>) -> Option<RedisSettings> {
        let span = file.span();
        let file = file.get_ref();
        let timeout = self.nonzero_duration(
            "redis.timeout",
            &file.timeout,
            crate::stdlib::cluster::DEFAULT_TIMEOUT,
        );
        let key_prefix = file.key_prefix.as_ref().map_or_else(
            || crate::stdlib::cluster::DEFAULT_KEY_PREFIX.to_owned(),
            |t| t.get_ref().clone(),
        );
        let Some(url) = &file.url else {
            self.error(
                "redis.url",
                span,
                "is required in [redis] (e.g. \"redis://127.0.0.1:6379\")",
            );
            return None;
        };
        let text = url.get_ref();
        if !(text.starts_with("redis://") || text.starts_with("unix://")) {
            self.error(
                "redis.url",
                url.span(),
                format!("must start with redis:// or unix://, got {text:?}"),
            );
            return None;
        }
        if let Err(e) = redis::Client::open(text.as_str()) {
            self.error(
                "redis.url",
                url.span(),
                format!("is not a valid Redis URL: {e}"),
            );
            return None;
        }
        Some(RedisSettings {
            url: text.clone(),
            timeout,
            key_prefix,
        })
    }

    fn cache(&mut self, file: &file::CacheFile, has_redis: bool) -> CacheSettings {
        let d = CacheSettings::default();
        let settings = CacheSettings {
            max_size: self.size("cache.max_size", &file.max_size, d.max_size),
            max_entry_size: self.size(
                "cache.max_entry_size",
                &file.max_entry_size,
                d.max_entry_size,
            ),
            lock_timeout: self.duration("cache.lock_timeout", &file.lock_timeout, d.lock_timeout),
            shared: file.shared.as_ref().is_some_and(|b| *b.get_ref()),
        };
        if let Some(v) = file.shared.as_ref().filter(|b| *b.get_ref()) {
            if !has_redis {
                self.error(
                    "cache.shared",
                    v.span(),
                    "needs a [redis] section (the shared tier lives in Redis)",
                );
            }
        }
        if let Some(v) = &file.max_entry_size {
            if settings.max_entry_size > settings.max_size {
                self.error(
                    "cache.max_entry_size",
                    v.span(),
                    "must not be larger than cache.max_size",
                );
            }
        }
        settings
    }

    // ---- [upstreams.NAME] -----------------------------------------------------------

    fn upstreams(
        &mut self,
        files: &BTreeMap<file::Text, Spanned<file::UpstreamFile>>,
    ) -> Vec<UpstreamConfig> {
        files
            .iter()
            .map(|(name, file)| self.upstream(name, file))
            .collect()
    }

    fn upstream(
        &mut self,
        name: &file::Text,
        file: &Spanned<file::UpstreamFile>,
    ) -> UpstreamConfig {
        let key = format!("upstreams.{}", key_segment(name.get_ref()));
        let up = file.get_ref();
        let balance = up
            .balance
            .as_ref()
            .and_then(|text| self.one_of(&format!("{key}.balance"), text, BALANCES));
        let hash_key = up
            .hash_key
            .as_ref()
            .and_then(|text| self.hash_key(&format!("{key}.hash_key"), text));
        UpstreamConfig {
            name: name.get_ref().clone(),
            servers: self.servers(&key, file),
            balance: balance.unwrap_or(DEFAULT_BALANCE),
            hash_key: hash_key.unwrap_or(HashKey::ClientIp),
            connect_timeout: self.duration(
                &format!("{key}.connect_timeout"),
                &up.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            response_timeout: self.duration(
                &format!("{key}.response_timeout"),
                &up.response_timeout,
                DEFAULT_RESPONSE_TIMEOUT,
            ),
            tls: up.tls.unwrap_or(DEFAULT_UPSTREAM_TLS),
            tls_ca: self.optional_path(up.tls_ca.as_ref()),
            sni: up.sni.clone().filter(|sni| !sni.is_empty()),
            http2: up.http2.unwrap_or(DEFAULT_UPSTREAM_HTTP2),
            pool: PoolConfig {
                max_idle_per_server: self.count(
                    &format!("{key}.pool.max_idle_per_server"),
                    &up.pool.max_idle_per_server,
                    DEFAULT_POOL_MAX_IDLE,
                    0,
                ),
                idle_timeout: self.duration(
                    &format!("{key}.pool.idle_timeout"),
                    &up.pool.idle_timeout,
                    DEFAULT_POOL_IDLE_TIMEOUT,
                ),
            },
            health: up
                .health
                .as_ref()
                .map(|health| self.health(&format!("{key}.health"), health)),
            circuit_breaker: BreakerConfig {
                failures: self.count(
                    &format!("{key}.circuit_breaker.failures"),
                    &up.circuit_breaker.failures,
                    DEFAULT_BREAKER_FAILURES,
                    1,
                ),
                open_for: self.duration(
                    &format!("{key}.circuit_breaker.open_for"),
                    &up.circuit_breaker.open_for,
                    DEFAULT_BREAKER_OPEN_FOR,
                ),
            },
        }
    }

    fn servers(&mut self, key: &str, file: &Spanned<file::UpstreamFile>) -> Vec<ServerSpec> {
        let key = format!("{key}.servers");
        let Some(servers) = &file.get_ref().servers else {
            self.error(
                &key,
                file.span(),
                "an upstream needs `servers`, e.g. servers = [\"127.0.0.1:3000\"]",
            );
            return Vec::new();
        };
        if servers.get_ref().is_empty() {
            self.error(
                &key,
                servers.span(),
                "an upstream needs at least one server",
            );
        }
        let mut specs = Vec::new();
        for (i, entry) in servers.get_ref().iter().enumerate() {
            specs.extend(self.server_entry(&format!("{key}[{i}]"), entry));
        }
        specs
    }

    fn server_entry(
        &mut self,
        key: &str,
        entry: &Spanned<file::ServerEntry>,
    ) -> Option<ServerSpec> {
        let (addr, addr_key, span, weight) = match entry.get_ref() {
            file::ServerEntry::Addr(addr) => {
                (addr.as_str(), key.to_owned(), entry.span(), DEFAULT_WEIGHT)
            }
            file::ServerEntry::Table(table) => {
                let weight = self.count(&format!("{key}.weight"), &table.weight, DEFAULT_WEIGHT, 1);
                let Some(addr) = &table.addr else {
                    self.error(
                        &format!("{key}.addr"),
                        entry.span(),
                        "a server table needs `addr`",
                    );
                    return None;
                };
                (
                    addr.get_ref().as_str(),
                    format!("{key}.addr"),
                    addr.span(),
                    weight,
                )
            }
        };
        match server_target(addr) {
            Ok(target) => Some(ServerSpec { target, weight }),
            Err(message) => {
                self.error(&addr_key, span, message);
                None
            }
        }
    }

    fn hash_key(&mut self, key: &str, text: &file::Text) -> Option<HashKey> {
        let value = text.get_ref().as_str();
        let parsed = match value {
            "client_ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => match value.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(HashKey::Header)
                    .map_err(|_| format!("invalid header name {name:?} in hash_key")),
                None => Err(format!(
                    "unknown hash_key {value:?}, expected client_ip, path or header:NAME"
                )),
            },
        };
        parsed
            .map_err(|message| self.error(key, text.span(), message))
            .ok()
    }

    fn health(&mut self, key: &str, file: &file::HealthFile) -> HealthConfig {
        let path = match &file.path {
            Some(text) if !text.get_ref().starts_with('/') => {
                self.error(
                    &format!("{key}.path"),
                    text.span(),
                    format!("health path {:?} must start with '/'", text.get_ref()),
                );
                DEFAULT_HEALTH_PATH.to_owned()
            }
            Some(text) => text.get_ref().clone(),
            None => DEFAULT_HEALTH_PATH.to_owned(),
        };
        HealthConfig {
            path,
            interval: self.nonzero_duration(
                &format!("{key}.interval"),
                &file.interval,
                DEFAULT_HEALTH_INTERVAL,
            ),
            timeout: self.nonzero_duration(
                &format!("{key}.timeout"),
                &file.timeout,
                DEFAULT_HEALTH_TIMEOUT,
            ),
            healthy_after: self.count(
                &format!("{key}.healthy_after"),
                &file.healthy_after,
                DEFAULT_HEALTHY_AFTER,
                1,
            ),
            unhealthy_after: self.count(
                &format!("{key}.unhealthy_after"),
                &file.unhealthy_after,
                DEFAULT_UNHEALTHY_AFTER,
                1,
            ),
        }
    }

    // ---- [[routes]] [[tcp]] ---------------------------------------------------------

    fn routes(&mut self, files: &[Spanned<file::RouteFile>], names: &[&str]) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        for (i, file) in files.iter().enumerate() {
            routes.extend(self.route(&format!("routes[{i}]"), file, names));
        }
        routes
    }

    fn route(
        &mut self,
        key: &str,
        file: &Spanned<file::RouteFile>,
        names: &[&str],
    ) -> Option<RouteConfig> {
        let route = file.get_ref();
        let host = route
            .host
            .as_ref()
            .and_then(|text| self.route_host(&format!("{key}.host"), text));
        let path_prefix = route.path_prefix.as_ref().and_then(|text| {
            if text.get_ref().starts_with('/') {
                return Some(text.get_ref().clone());
            }
            self.error(
                &format!("{key}.path_prefix"),
                text.span(),
                format!("path_prefix {:?} must start with '/'", text.get_ref()),
            );
            None
        });
        let methods = self.methods(key, &route.methods);
        let headers = self.match_headers(key, &route.headers);
        let upstream = self.upstream_ref(key, route.upstream.as_ref(), file.span(), names)?;
        Some(RouteConfig {
            host,
            path_prefix,
            methods,
            headers,
            upstream,
        })
    }

    fn route_host(&mut self, key: &str, text: &file::Text) -> Option<String> {
        let host = normalize_host(text.get_ref());
        if host.is_empty() {
            self.error(
                key,
                text.span(),
                "host must not be empty (leave it out to match any host)",
            );
            return None;
        }
        Some(host)
    }

    fn methods(&mut self, key: &str, methods: &[file::Text]) -> Vec<Method> {
        let mut parsed = Vec::new();
        for (i, text) in methods.iter().enumerate() {
            match Method::from_bytes(text.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => parsed.push(method),
                Err(_) => self.error(
                    &format!("{key}.methods[{i}]"),
                    text.span(),
                    format!("invalid HTTP method {:?}", text.get_ref()),
                ),
            }
        }
        parsed
    }

    fn match_headers(
        &mut self,
        key: &str,
        headers: &BTreeMap<file::Text, file::Text>,
    ) -> Vec<(HeaderName, String)> {
        let mut parsed = Vec::new();
        for (name, value) in headers {
            let entry_key = format!("{key}.headers.{}", key_segment(name.get_ref()));
            let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                self.error(
                    &entry_key,
                    name.span(),
                    format!("invalid header name {:?}", name.get_ref()),
                );
                continue;
            };
            if HeaderValue::from_str(value.get_ref()).is_err() {
                self.error(
                    &entry_key,
                    value.span(),
                    format!("invalid header value {:?}", value.get_ref()),
                );
                continue;
            }
            parsed.push((header, value.get_ref().clone()));
        }
        parsed
    }

    /// Resolves `upstream = "NAME"` of a route or tcp frontend to an index.
    fn upstream_ref(
        &mut self,
        key: &str,
        name: Option<&file::Text>,
        table: Range<usize>,
        names: &[&str],
    ) -> Option<usize> {
        let key = format!("{key}.upstream");
        let Some(name) = name else {
            self.error(&key, table, "missing `upstream = \"NAME\"`");
            return None;
        };
        let found = names.iter().position(|known| *known == name.get_ref());
        if found.is_none() {
            let known = if names.is_empty() {
                "none are defined".to_owned()
            } else {
                format!("known: {}", names.join(", "))
            };
            self.error(
                &key,
                name.span(),
                format!("unknown upstream {:?} ({known})", name.get_ref()),
            );
        }
        found
    }

    fn tcp(&mut self, files: &[Spanned<file::TcpFile>], names: &[&str]) -> Vec<TcpConfig> {
        let mut frontends = Vec::new();
        for (i, file) in files.iter().enumerate() {
            frontends.extend(self.tcp_frontend(&format!("tcp[{i}]"), file, names));
        }
        frontends
    }

    fn tcp_frontend(
        &mut self,
        key: &str,
        file: &Spanned<file::TcpFile>,
        names: &[&str],
    ) -> Option<TcpConfig> {
        let tcp = file.get_ref();
        let listen = match &tcp.listen {
            Some(text) => self.listen_addr(&format!("{key}.listen"), text),
            None => {
                self.error(
                    &format!("{key}.listen"),
                    file.span(),
                    "a [[tcp]] frontend needs `listen`",
                );
                None
            }
        };
        let proxy_protocol =
            tcp.proxy_protocol
                .as_ref()
                .and_then(|version| match version.get_ref() {
                    1 => Some(1),
                    2 => Some(2),
                    other => {
                        self.error(
                            &format!("{key}.proxy_protocol"),
                            version.span(),
                            format!("proxy_protocol must be 1 or 2, not {other}"),
                        );
                        None
                    }
                });
        let upstream = self.upstream_ref(key, tcp.upstream.as_ref(), file.span(), names);
        Some(TcpConfig {
            listen: listen?,
            upstream: upstream?,
            proxy_protocol,
        })
    }

    // ---- values ---------------------------------------------------------------------

    /// A listening address; also checks no other listener already uses it.
    fn listen_addr(&mut self, key: &str, text: &file::Text) -> Option<SocketAddr> {
        let Ok(addr) = text.get_ref().parse::<SocketAddr>() else {
            let message = format!(
                "invalid address {:?}: expected IP:port, e.g. \"127.0.0.1:8080\"",
                text.get_ref()
            );
            self.error(key, text.span(), message);
            return None;
        };
        let clash = self
            .listeners
            .iter()
            .find(|(seen, _)| *seen == addr && addr.port() != 0);
        if let Some((_, other)) = clash {
            let message = format!("address {addr} is also used by {other}");
            self.error(key, text.span(), message);
        }
        self.listeners.push((addr, key.to_owned()));
        Some(addr)
    }

    fn size(&mut self, key: &str, value: &Option<Spanned<SizeValue>>, default: u64) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let parsed = match &value.get_ref().0 {
            Quantity::Int(n) => {
                u64::try_from(*n).map_err(|_| format!("size must not be negative, got {n}"))
            }
            Quantity::Text(text) => parse_size(text),
        };
        parsed
            .map_err(|message| self.error(key, value.span(), message))
            .unwrap_or(default)
    }

    /// A size that must fit in memory and be at least one byte.
    fn size_usize(
        &mut self,
        key: &str,
        value: &Option<Spanned<SizeValue>>,
        default: usize,
    ) -> usize {
        let bytes = self.size(key, value, default as u64);
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(bytes) {
            Ok(0) => self.error(key, value.span(), "must be at least 1 byte"),
            Ok(bytes) => return bytes,
            Err(_) => self.error(key, value.span(), "is too large for this machine"),
        }
        default
    }

    fn duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let parsed = match &value.get_ref().0 {
            Quantity::Int(n) => u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| format!("duration must not be negative, got {n}")),
            Quantity::Text(text) => parse_duration(text),
        };
        parsed
            .map_err(|message| self.error(key, value.span(), message))
            .unwrap_or(default)
    }

    fn nonzero_duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let duration = self.duration(key, value, default);
        match value {
            Some(value) if duration.is_zero() => {
                self.error(key, value.span(), "must be longer than zero");
                default
            }
            _ => duration,
        }
    }

    /// An integer of at least `min` that fits in `T`.
    fn count<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &str,
        value: &Option<file::Int>,
        default: T,
        min: i64,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        if number < min {
            self.error(
                key,
                value.span(),
                format!("must be at least {min}, got {number}"),
            );
            return default;
        }
        T::try_from(number)
            .map_err(|_| self.error(key, value.span(), format!("{number} is too large")))
            .unwrap_or(default)
    }

    /// One of a closed set of words; the error lists them.
    fn one_of<T: Copy>(
        &mut self,
        key: &str,
        text: &file::Text,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == text.get_ref())
            .map(|(_, value)| *value);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            let message = format!(
                "unknown value {:?}, expected one of {}",
                text.get_ref(),
                names.join(", ")
            );
            self.error(key, text.span(), message);
        }
        found
    }

    /// A path that must be given and non-empty, resolved against the base directory.
    fn required_path(
        &mut self,
        key: &str,
        text: Option<&file::Text>,
        table: Range<usize>,
    ) -> Option<PathBuf> {
        match text {
            Some(text) if !text.get_ref().is_empty() => Some(self.resolve(text.get_ref())),
            Some(text) => {
                self.error(key, text.span(), "path must not be empty");
                None
            }
            None => {
                let name = key.rsplit('.').next().unwrap_or(key);
                self.error(key, table, format!("missing `{name}`"));
                None
            }
        }
    }

    /// A path where `""` means none.
    fn optional_path(&self, text: Option<&file::Text>) -> Option<PathBuf> {
        text.filter(|text| !text.get_ref().is_empty())
            .map(|text| self.resolve(text.get_ref()))
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
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

/// Accepts `trace`..`error`, or tracing directives like `info,proxycache=debug`.
fn check_log_level(text: &str) -> Result<(), String> {
    for directive in text.split(',') {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level)
            .trim();
        if !LOG_LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level))
        {
            return Err(format!(
                "unknown log level {level:?}, expected one of {} (or target=level directives)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
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

//! Upstream sets: their servers, balancing, health and breakers, the per-worker
//! connection pools and the client that sends requests to a server.
//!
//! Owns: everything about reaching a server. Must not touch: routing, header policy,
//! the pipeline (the request path in `proxy` decides *what* to send; this decides
//! *where* and *how*).

pub mod balance;
pub mod breaker;
pub mod client;
pub mod connect;
pub mod h1;
pub mod health;
pub mod pool;
pub mod progress;
pub mod server;
pub mod tls;
pub mod upgrade;

use std::ops::Range;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::{Config, ServerTarget, UpstreamConfig};
use crate::script::Diagnostic;

use balance::{Balancer, PickKey};
use connect::Endpoint;
pub use server::{InflightGuard, ServerState};

/// An upstream set that cannot be built (its TLS settings do not work), naming the
/// key to fix: `upstreams.app.tls_ca: cannot read /etc/ca.pem: ...`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct UpstreamError {
    pub upstream: String,
    /// The dotted key: `upstreams.app.tls_ca`, `upstreams.app.sni`, ...
    pub key: String,
    /// Where that key's value (or the set, for a key not written) is in the config
    /// text.
    pub at: Range<usize>,
    #[source]
    pub source: tls::TlsError,
}

impl UpstreamError {
    /// `source` as an error of the key of `config` it comes from; `server` is the
    /// index of the server whose host was the name (no `sni`).
    fn new(config: &UpstreamConfig, source: tls::TlsError, server: Option<usize>) -> Self {
        use tls::TlsError as E;
        let at = &config.at;
        let (key, span) = match (&source, server) {
            (E::ReadCa { .. } | E::EmptyCa { .. } | E::UnusableCa { .. }, _) => {
                ("tls_ca".to_owned(), at.tls_ca.clone())
            }
            (E::BadServerName { .. }, Some(i)) if config.sni.is_none() => {
                (format!("servers[{i}]"), at.servers.clone())
            }
            (E::BadServerName { .. }, _) => ("sni".to_owned(), at.sni.clone()),
            (E::NoSystemRoots(_) | E::Rustls(_), _) => ("tls".to_owned(), at.tls.clone()),
        };
        UpstreamError {
            upstream: config.name.clone(),
            key: format!("{}.{key}", at.key),
            at: span.unwrap_or_else(|| at.table.clone()),
            source,
        }
    }
}

/// Upstream TLS errors as diagnostics of the config file, at the value of the key each
/// names (`c.toml:7:10: upstreams.app.tls_ca: cannot read ...`), as
/// `server::tls::diagnostics` places a listener's.
pub fn diagnostics(config: &Config, errors: &[UpstreamError]) -> Vec<Diagnostic> {
    let file = config.source.as_ref().map_or_else(
        || crate::config::EMBEDDED_NAME.to_owned(),
        |p| p.display().to_string(),
    );
    errors
        .iter()
        .map(|e| Diagnostic::at_range(&file, &config.source_text, e.at.clone(), e.to_string()))
        .collect()
}

/// Builds every set as a start or reload would (each `tls = true` set's roots read,
/// its server names checked), for `check` and `/config/verify`: every error, as
/// diagnostics.
pub fn check_tls(config: &Config) -> Vec<Diagnostic> {
    match Upstreams::new(&config.upstreams, None) {
        Ok(_) => Vec::new(),
        Err(errors) => diagnostics(config, &errors),
    }
}

/// A set had no server to offer (HTTP answers `503`, a `[[tcp]]` connection is
/// closed): the one wording of why, for both, naming the key that explains it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {upstream}: {}", .why.describe(.upstream))]
pub struct NoServer {
    pub upstream: String,
    pub why: Unavailable,
}

/// Why no server of a set was available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every server fails its active health checks.
    Unhealthy,
    /// Health checks pass (or there are none), but every server's circuit breaker
    /// holds it off: open, or half-open with its one probe in flight.
    BreakersOpen,
    /// Each server is one or the other.
    UnhealthyOrBreakerOpen,
}

impl Unavailable {
    fn describe(self, upstream: &str) -> String {
        match self {
            Unavailable::Unhealthy => format!(
                "no healthy server: every server fails its health checks (upstreams.{upstream}.health)"
            ),
            Unavailable::BreakersOpen => format!(
                "no server available: every server's circuit breaker is open \
                 (upstreams.{upstream}.circuit_breaker)"
            ),
            Unavailable::UnhealthyOrBreakerOpen => format!(
                "no server available: each server fails its health checks \
                 (upstreams.{upstream}.health) or has its circuit breaker open \
                 (upstreams.{upstream}.circuit_breaker)"
            ),
        }
    }
}

/// One `[upstreams.NAME]` set at run time.
#[derive(Debug)]
pub struct UpstreamSet {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<ServerState>>,
    /// How to reach each server (`None`: a built-in one), indexed like `servers`.
    pub endpoints: Vec<Option<Arc<Endpoint>>>,
    balancer: Balancer,
    /// Balancers of the other strategies, made on first use (`std.load_balance` with
    /// a `strategy`): a consistent-hash ring is built once, not per call.
    others: [std::sync::OnceLock<Balancer>; 6],
    /// The set's name, shared: requests and Lua hooks keep it without a copy.
    name: Arc<str>,
    /// See [`UpstreamSet::tls_id`].
    tls_id: Option<tls::ConfigId>,
}

/// The client config of a `tls = true` set, its server names checked too (even when
/// the roots fail, so one report has both).
fn set_tls(config: &UpstreamConfig) -> Result<tls::SetTls, Vec<UpstreamError>> {
    let built = tls::SetTls::new(config);
    let mut errors = Vec::new();
    for (i, spec) in config.servers.iter().enumerate() {
        if let ServerTarget::Addr { authority, .. } = &spec.target {
            if let Err(source) = tls::server_name(config.sni.as_deref(), authority) {
                errors.push(UpstreamError::new(config, source, Some(i)));
                if config.sni.is_some() {
                    break; // one `sni`, one error
                }
            }
        }
    }
    match built {
        Ok(set_tls) if errors.is_empty() => Ok(set_tls),
        Ok(_) => Err(errors),
        Err(source) => {
            errors.insert(0, UpstreamError::new(config, source, None));
            Err(errors)
        }
    }
}

impl UpstreamSet {
    /// Builds the set, carrying server state (health, breaker, in-flight counts) over
    /// from `previous` by address (see [`ServerState::carried`]). Fails when `tls = true`
    /// and its roots or server names do not work (read once here, not per connection),
    /// with every such error.
    pub fn new(
        config: UpstreamConfig,
        previous: Option<&UpstreamSet>,
    ) -> Result<Self, Vec<UpstreamError>> {
        let set_tls = if config.tls {
            Some(set_tls(&config)?)
        } else {
            None
        };
        let mut endpoints = Vec::with_capacity(config.servers.len());
        for (i, spec) in config.servers.iter().enumerate() {
            endpoints.push(match &spec.target {
                ServerTarget::Addr { addr, authority } => Some(Arc::new(
                    Endpoint::new(&config, *addr, authority, set_tls.as_ref())
                        .map_err(|e| vec![UpstreamError::new(&config, e, Some(i))])?,
                )),
                ServerTarget::Echo => None,
            });
        }
        let servers = carry_servers(&config, previous);
        let balancer = Balancer::new(config.balance, &servers);
        Ok(UpstreamSet {
            name: Arc::from(config.name.as_str()),
            tls_id: set_tls.as_ref().map(tls::SetTls::config_id),
            config,
            servers,
            endpoints,
            balancer,
            others: Default::default(),
        })
    }

    /// What the set's TLS connections are verified with (`None`: plain): another id
    /// after a reload that loaded other roots.
    pub fn tls_id(&self) -> Option<tls::ConfigId> {
        self.tls_id
    }

    /// The balancer of strategy `b` over this set's servers (the set's own for its
    /// own strategy; another made once and kept with the set).
    pub fn balancer_for(&self, b: crate::config::Balance) -> &Balancer {
        if b == self.config.balance {
            return &self.balancer;
        }
        use crate::config::Balance as B;
        let slot = match b {
            B::RoundRobin => 0,
            B::Weighted => 1,
            B::LeastConn => 2,
            B::IpHash => 3,
            B::ConsistentHash => 4,
            B::P2c => 5,
        };
        self.others[slot].get_or_init(|| Balancer::new(b, &self.servers))
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The set's name, to keep (a reference count, no copy).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The server the balancer would pick now among available ones, without taking
    /// it (nothing counted in flight, no breaker probe, the rotation not moved on).
    pub fn peek(&self, key: &PickKey) -> Option<usize> {
        self.balancer
            .peek(&self.servers, key, |i| self.servers[i].is_available())
    }

    /// Picks an available server (healthy, breaker letting it through) not in
    /// `tried` (for retries), and counts the request in flight on it. `None`: nothing
    /// available.
    pub fn pick(&self, key: &PickKey, tried: &Tried) -> Option<(usize, InflightGuard)> {
        // Copied only when a server turns the request away (rare).
        let mut refused: Option<Tried> = None;
        for _ in 0..self.servers.len() {
            let skip = refused.as_ref().unwrap_or(tried);
            let available = |i: usize| !skip.contains(i) && self.servers[i].is_available();
            let i = self.balancer.pick(&self.servers, key, available)?;
            if let Some(guard) = self.servers[i].try_begin() {
                return Some((i, guard));
            }
            // Its breaker let another request probe first: try the others.
            refused.get_or_insert_with(|| tried.clone()).insert(i);
        }
        None
    }

    /// Why [`pick`](Self::pick) found nothing, read after the fact. A pick that
    /// failed with every server healthy lost to its breakers (a probe taken by
    /// another request in between counts as that).
    pub fn no_server(&self) -> NoServer {
        let unhealthy = self.servers.iter().filter(|s| !s.is_healthy()).count();
        let why = if unhealthy == 0 {
            Unavailable::BreakersOpen
        } else if unhealthy == self.servers.len() {
            Unavailable::Unhealthy
        } else {
            Unavailable::UnhealthyOrBreakerOpen
        };
        NoServer {
            upstream: self.name().to_owned(),
            why,
        }
    }
}

/// The servers of a set one request has tried already (a retry skips them), by
/// index: a bit set that grows with the set (one word inline, for up to 64 servers).
#[derive(Debug, Clone, Default)]
pub struct Tried(SmallVec<[u64; 1]>);

impl Tried {
    /// Nothing tried yet.
    pub fn new() -> Self {
        Tried::default()
    }

    /// Marks server `index` as tried.
    pub fn insert(&mut self, index: usize) {
        let (word, bit) = (index / 64, index % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    /// Whether server `index` was tried.
    pub fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }
}

/// The servers of `config`, each carried over from the server of `previous` at the
/// same address (the n-th listing of an address from the n-th one), or new.
fn carry_servers(config: &UpstreamConfig, previous: Option<&UpstreamSet>) -> Vec<Arc<ServerState>> {
    let old = previous.map_or(&[][..], |p| p.servers.as_slice());
    let mut taken = vec![false; old.len()];
    let mut servers = Vec::with_capacity(config.servers.len());
    for spec in &config.servers {
        let found = (0..old.len()).find(|&i| !taken[i] && old[i].target == spec.target);
        servers.push(match found {
            Some(i) => {
                taken[i] = true;
                old[i].carried(spec.weight, &config.circuit_breaker)
            }
            None => Arc::new(ServerState::new(
                spec.target.clone(),
                spec.weight,
                &config.circuit_breaker,
            )),
        });
    }
    servers
}

/// All upstream sets of a generation, indexed like `Config::upstreams`.
#[derive(Debug, Default)]
pub struct Upstreams {
    pub sets: Vec<Arc<UpstreamSet>>,
}

impl Upstreams {
    /// Builds every set, carrying state over from `previous` where possible; every
    /// set that cannot be built is reported.
    pub fn new(
        configs: &[UpstreamConfig],
        previous: Option<&Upstreams>,
    ) -> Result<Self, Vec<UpstreamError>> {
        let mut sets = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for c in configs {
            let prev = previous.and_then(|p| p.by_name(&c.name));
            match UpstreamSet::new(c.clone(), prev.map(|a| a.as_ref())) {
                Ok(set) => sets.push(Arc::new(set)),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(Upstreams { sets })
        } else {
            Err(errors)
        }
    }

    /// The set called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<UpstreamSet>> {
        self.sets.iter().find(|s| s.name() == name)
    }

    /// The index of the set called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.sets.iter().position(|s| s.name() == name)
    }

    /// The sets with a server at `addr` (a pooled connection's address), in order.
    pub fn serving(&self, addr: std::net::SocketAddr) -> impl Iterator<Item = &Arc<UpstreamSet>> {
        self.sets.iter().filter(move |s| {
            s.servers
                .iter()
                .any(|srv| matches!(&srv.target, ServerTarget::Addr { addr: a, .. } if *a == addr))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Tried, Unavailable, UpstreamSet};
    use crate::config::Config;
    use crate::upstream::balance::PickKey;

    fn set(servers: &str) -> UpstreamSet {
        let text = format!(
            "[upstreams.db]\nservers = [{servers}]\ncircuit_breaker = {{ failures = 1 }}\n"
        );
        let config = match Config::from_toml_str(&text, None, std::path::Path::new(".")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        match UpstreamSet::new(config.upstreams[0].clone(), None) {
            Ok(set) => set,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn open_breaker(set: &UpstreamSet, i: usize) {
        match set.servers[i].try_begin() {
            Some(guard) => guard.record_outcome(false, "db"),
            None => panic!("the breaker was open already"),
        }
    }

    #[test]
    fn no_server_tells_open_breakers_from_failed_health_checks() {
        let key = PickKey {
            client_ip: [127, 0, 0, 1].into(),
            hash: 0,
        };
        let s = set("\"127.0.0.1:1\", \"127.0.0.1:2\"");
        open_breaker(&s, 0);
        open_breaker(&s, 1);
        assert!(s.pick(&key, &Tried::new()).is_none());
        let e = s.no_server();
        assert_eq!(e.why, Unavailable::BreakersOpen);
        assert_eq!(
            e.to_string(),
            "upstream db: no server available: every server's circuit breaker is open \
             (upstreams.db.circuit_breaker)"
        );

        let s = set("\"127.0.0.1:1\", \"127.0.0.1:2\"");
        for server in &s.servers {
            server.record_check(false, 1, 1);
        }
        assert!(s.pick(&key, &Tried::new()).is_none());
        let e = s.no_server();
        assert_eq!(e.why, Unavailable::Unhealthy);
        assert_eq!(
            e.to_string(),
            "upstream db: no healthy server: every server fails its health checks \
             (upstreams.db.health)"
        );

        let s = set("\"127.0.0.1:1\", \"127.0.0.1:2\"");
        s.servers[0].record_check(false, 1, 1);
        open_breaker(&s, 1);
        assert!(s.pick(&key, &Tried::new()).is_none());
        assert_eq!(s.no_server().why, Unavailable::UnhealthyOrBreakerOpen);
        assert!(s
            .no_server()
            .to_string()
            .contains("upstreams.db.circuit_breaker"));
    }

    #[test]
    fn tried_holds_any_index() {
        let mut tried = Tried::new();
        for i in [0, 63, 64, 200] {
            assert!(!tried.contains(i));
            tried.insert(i);
            assert!(tried.contains(i));
        }
        assert!(!tried.contains(1) && !tried.contains(65) && !tried.contains(10_000));
    }
}

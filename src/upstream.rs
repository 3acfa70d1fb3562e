//! Upstream sets: their servers, balancing, health and breakers, the per-worker
//! connection pools and the client that sends requests to a server.
//!
//! Owns: everything about reaching a server. Must not touch: routing, header policy,
//! the pipeline (the request path in `proxy` decides *what* to send; this decides
//! *where* and *how*).

pub mod balance;
pub mod breaker;
pub mod client;
pub mod health;
pub mod pool;
pub mod server;
pub mod upgrade;

use std::sync::Arc;

use crate::config::UpstreamConfig;

use balance::{Balancer, PickKey};
pub use server::{InflightGuard, ServerState};

/// One `[upstreams.NAME]` set at run time.
#[derive(Debug)]
pub struct UpstreamSet {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<ServerState>>,
    balancer: Balancer,
}

impl UpstreamSet {
    /// Builds the set, reusing server state (health, breaker, in-flight counts) from
    /// `previous` for servers whose settings did not change.
    pub fn new(config: UpstreamConfig, previous: Option<&UpstreamSet>) -> Self {
        let servers: Vec<Arc<ServerState>> = config
            .servers
            .iter()
            .map(|spec| {
                previous
                    .and_then(|p| {
                        p.servers.iter().find(|s| {
                            s.same_settings(&spec.target, spec.weight, &config.circuit_breaker)
                        })
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(ServerState::new(
                            spec.target.clone(),
                            spec.weight,
                            &config.circuit_breaker,
                        ))
                    })
            })
            .collect();
        let balancer = Balancer::new(config.balance, &servers);
        UpstreamSet {
            config,
            servers,
            balancer,
        }
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The server the balancer would pick now among available ones, without taking
    /// it (nothing counted in flight, no breaker probe; round robin does advance).
    pub fn peek(&self, key: &PickKey) -> Option<usize> {
        self.balancer
            .pick(&self.servers, key, |i| self.servers[i].is_available())
    }

    /// Picks an available server (healthy, breaker letting it through) not in
    /// `tried` (a bit set of server indexes, for retries), and counts the request in
    /// flight on it. `None`: nothing available.
    pub fn pick(&self, key: &PickKey, tried: u64) -> Option<(usize, InflightGuard)> {
        let mut skip = tried;
        for _ in 0..self.servers.len() {
            let available =
                |i: usize| (i >= 64 || skip & (1 << i) == 0) && self.servers[i].is_available();
            let i = self.balancer.pick(&self.servers, key, available)?;
            if self.servers[i].breaker.try_acquire() {
                return Some((i, self.servers[i].begin()));
            }
            // Its breaker let another request probe first: try the others.
            if i < 64 {
                skip |= 1 << i;
            }
        }
        None
    }
}

/// All upstream sets of a generation, indexed like `Config::upstreams`.
#[derive(Debug, Default)]
pub struct Upstreams {
    pub sets: Vec<Arc<UpstreamSet>>,
}

impl Upstreams {
    /// Builds every set, carrying state over from `previous` where possible.
    pub fn new(configs: &[UpstreamConfig], previous: Option<&Upstreams>) -> Self {
        let sets = configs
            .iter()
            .map(|c| {
                let prev = previous.and_then(|p| p.by_name(&c.name));
                Arc::new(UpstreamSet::new(c.clone(), prev.map(|a| a.as_ref())))
            })
            .collect();
        Upstreams { sets }
    }

    /// The set called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<UpstreamSet>> {
        self.sets.iter().find(|s| s.name() == name)
    }
}

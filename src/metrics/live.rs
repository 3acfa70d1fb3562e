//! What the registry reads from the running server at scrape time instead of counting
//! itself: responses by class ([`crate::stats`]), open connections, the workers'
//! upstream pools, each upstream server's health, breaker, requests and failures, and
//! the generation. Those already have their own counters; copying them into the
//! registry on every request would be paying twice.
//!
//! Must not touch: anything but reading (a scrape changes no state).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::server::Shared;
use crate::upstream::breaker::BreakerState;
use crate::upstream::ServerState;

/// The collector: the server it reads, once one is attached.
#[derive(Debug)]
pub struct Live(pub Arc<OnceLock<Weak<Shared>>>);

/// `{class}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.0.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let e = &mut encoder;
        {
            let mut m = e.encode_descriptor(
                "proxycache_requests",
                "Responses sent, by status class.",
                None,
                MetricType::Counter,
            )?;
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
                ConstCounter::new(shared.stats.class(i + 1))
                    .encode(m.encode_family(&ClassLabels { class })?)?;
            }
        }
        gauge(
            e,
            "proxycache_connections",
            "Open client connections.",
            shared.connections.load(Ordering::Relaxed) as i64,
        )?;
        let (handshakes, failed) = shared.stats.tls_handshakes();
        counter(
            e,
            "proxycache_tls_handshakes",
            "TLS handshakes clients completed on the TLS listeners.",
            handshakes,
        )?;
        counter(
            e,
            "proxycache_tls_handshake_failures",
            "TLS handshakes on the TLS listeners that failed or timed out (see debug logs).",
            failed,
        )?;
        let (opened, reused) = shared.pool_totals();
        counter(
            e,
            "proxycache_upstream_pool_hits",
            "Upstream requests sent on a pooled (kept-alive) connection.",
            reused,
        )?;
        counter(
            e,
            "proxycache_upstream_pool_misses",
            "Upstream requests that found no pooled connection and opened one.",
            opened,
        )?;
        // The names before the pool counters had hits and misses, kept for dashboards.
        counter(
            e,
            "proxycache_upstream_connections_opened",
            "Upstream connections opened (= pool misses).",
            opened,
        )?;
        counter(
            e,
            "proxycache_upstream_pool_reuses",
            "Requests sent on a pooled upstream connection (= pool hits).",
            reused,
        )?;
        let g = shared.generation();
        let servers: Vec<(&str, &ServerState)> = g
            .upstreams
            .sets
            .iter()
            .flat_map(|set| set.servers.iter().map(move |s| (set.name(), s.as_ref())))
            .collect();
        per_server(
            e,
            &servers,
            ("proxycache_upstream_server_healthy", MetricType::Gauge),
            "Whether a server passes its health checks (1) or not (0).",
            |s| u64::from(s.is_healthy()),
        )?;
        per_server(
            e,
            &servers,
            ("proxycache_upstream_breaker_state", MetricType::Gauge),
            "Circuit breaker state (0 closed, 1 open, 2 half-open).",
            |s| match s.breaker.state() {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            },
        )?;
        per_server(
            e,
            &servers,
            ("proxycache_upstream_requests", MetricType::Counter),
            "Requests sent to a server.",
            |s| s.requests(),
        )?;
        per_server(
            e,
            &servers,
            ("proxycache_upstream_failures", MetricType::Counter),
            "Failures talking to a server: transport failures, and answers with a status in its set's circuit_breaker.statuses.",
            |s| s.failures(),
        )?;
        gauge(
            e,
            "proxycache_generation",
            "The generation serving.",
            g.number as i64,
        )
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn per_server(
    e: &mut DescriptorEncoder,
    servers: &[(&str, &ServerState)],
    (name, kind): (&str, MetricType),
    help: &str,
    value: impl Fn(&ServerState) -> u64,
) -> Result<(), std::fmt::Error> {
    if servers.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (upstream, s) in servers {
        let labels = [("upstream", *upstream), ("server", s.label())];
        let v = value(s);
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(sample)?,
            _ => ConstGauge::new(v as i64).encode(sample)?,
        }
    }
    Ok(())
}

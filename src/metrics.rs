//! The process's metrics: one `prometheus-client` registry that outlives generations
//! (it lives in [`StdState`](crate::pipeline::StdState)), the proxy's own counters and
//! histograms, the handles a generation resolves once so the request path does no
//! lookups, and the Prometheus text (0.0.4) behind `GET /metrics` and
//! `std.metrics.prometheus()`.
//!
//! What is counted where:
//! - requests by route, upstream and status class, and latency by upstream: once per
//!   request, when its response is finished ([`crate::proxy::completion`]);
//! - time and errors per module and phase: around each phase ([`crate::pipeline`]);
//! - rate-limit rejections: `std.rate_limit` when it says no;
//! - reloads by result: [`crate::reload`];
//! - cache hits, misses, stores and rejections: the cache counts into counters shared with the
//!   registry ([`Metrics::cache_counts`]);
//! - what other parts already count (responses by class, connections, pools, upstream
//!   servers' health and breakers, the generation): read at scrape time ([`live`]);
//! - script metrics (`std.metrics.inc/observe`): [`script`], bounded.
//!
//! Must not touch: sockets, the request itself (a metric never changes what a request
//! does).

pub mod live;
pub mod script;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::pipeline::Module;
use crate::script::ast::PhaseKind;
use crate::server::Shared;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets, in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value for "no route" and "no upstream" (a module answered, or a 404).
const NONE: &str = "none";

/// Status classes as label values, by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A counter of seconds (a float, lock-free).
pub type SecondsCounter = Counter<f64, AtomicU64>;

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// `{route, upstream, class}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<str>,
    pub upstream: Arc<str>,
    pub class: &'static str,
}

/// `{upstream}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

/// `{module, phase}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub module: Arc<str>,
    pub phase: &'static str,
}

/// `{module}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleOnly {
    pub module: String,
}

/// `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric of the process, and the registry that exposes them. (Help texts given
/// to `registry.register` have no final period: prometheus-client adds one.)
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<UpstreamLabels>,
    module_seconds: Family<ModuleLabels, SecondsCounter>,
    module_errors: Family<ModuleLabels, Counter>,
    rate_limited: Family<ModuleOnly, Counter>,
    reloads: Family<ResultLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_stores: Counter,
    cache_rejected: Counter,
    cluster_fallbacks: Family<ModuleOnly, Counter>,
    /// Metrics scripts define.
    pub script: Arc<script::ScriptMetrics>,
    /// The server, for what is read at scrape time (unset without one).
    live: Arc<OnceLock<Weak<Shared>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(script::DEFAULT_MAX_SERIES)
    }
}

impl Metrics {
    /// A registry with every proxy metric, holding at most `max_script_series` series
    /// of script metrics.
    pub fn new(max_script_series: usize) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "proxycache_route_requests",
            "Responses, by route (position in [[routes]], or none), upstream (or none) and status class",
            requests.clone(),
        );
        let latency: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "proxycache_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by upstream (or none)",
            latency.clone(),
        );
        let module_seconds = Family::<ModuleLabels, SecondsCounter>::default();
        registry.register(
            "proxycache_module_seconds",
            "Wall time spent in each module's phases (Lua hooks include their waits)",
            module_seconds.clone(),
        );
        let module_errors = Family::<ModuleLabels, Counter>::default();
        registry.register(
            "proxycache_module_errors",
            "Module phases that failed (run-time faults)",
            module_errors.clone(),
        );
        let rate_limited = Family::<ModuleOnly, Counter>::default();
        registry.register(
            "proxycache_rate_limit_rejections",
            "std.rate_limit calls that answered not allowed, by module",
            rate_limited.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("proxycache_reloads", "Reloads, by result", reloads.clone());
        for result in ["ok", "failed"] {
            // Both results show from the start (at 0), so a rate over them works.
            let _ = reloads.get_or_create_owned(&ResultLabels { result });
        }
        let cache_hits = Counter::default();
        registry.register(
            "proxycache_cache_hits",
            "Cache lookups that found a fresh entry",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "proxycache_cache_misses",
            "Cache lookups that found nothing usable",
            cache_misses.clone(),
        );
        let cache_stores = Counter::default();
        registry.register(
            "proxycache_cache_stores",
            "Responses stored in the cache (and kept by its admission policy)",
            cache_stores.clone(),
        );
        let cache_rejected = Counter::default();
        registry.register(
            "proxycache_cache_rejected",
            "Responses the cache's admission policy (TinyLFU) did not keep",
            cache_rejected.clone(),
        );
        let cluster_fallbacks = Family::<ModuleOnly, Counter>::default();
        registry.register(
            "proxycache_cluster_fallbacks",
            "Cluster-scoped calls answered from local state because Redis was not reachable (or [redis] is not configured), by module",
            cluster_fallbacks.clone(),
        );
        let script = Arc::new(script::ScriptMetrics::new(max_script_series));
        registry.register_collector(Box::new(Arc::clone(&script)));
        let live = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(live::Live(Arc::clone(&live))));
        Metrics {
            registry,
            requests,
            latency,
            module_seconds,
            module_errors,
            rate_limited,
            reloads,
            cache_hits,
            cache_misses,
            cache_stores,
            cache_rejected,
            cluster_fallbacks,
            script,
            live,
        }
    }

    /// Lets scrapes read the server's own counters (connections, pools, upstream
    /// servers, the generation). The first server wins; later calls change nothing.
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.live.set(Arc::downgrade(shared));
    }

    /// The Prometheus text exposition (0.0.4) of every metric.
    pub fn prometheus(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The cache's counters, shared with the registry (the cache counts itself).
    pub fn cache_counts(&self) -> crate::stdlib::cache::store::CacheCounts {
        crate::stdlib::cache::store::CacheCounts {
            hits: self.cache_hits.clone(),
            misses: self.cache_misses.clone(),
            stores: self.cache_stores.clone(),
            rejected: self.cache_rejected.clone(),
        }
    }

    /// A cluster-scoped call in `module` fell back to local state.
    pub fn cluster_fallback(&self, module: &str) {
        self.cluster_fallback_counter(module).inc();
    }

    /// The counter [`Metrics::cluster_fallback`] adds to, for a call made later, away
    /// from the module (a shared-tier write when a response body ends).
    pub fn cluster_fallback_counter(&self, module: &str) -> Counter {
        self.cluster_fallbacks
            .get_or_create(&ModuleOnly {
                module: module.to_owned(),
            })
            .clone()
    }

    /// `std.rate_limit` said no in `module`.
    pub fn rate_limited(&self, module: &str) {
        // Allocates, but only on a rejection.
        self.rate_limited
            .get_or_create(&ModuleOnly {
                module: module.to_owned(),
            })
            .inc();
    }

    /// A reload finished.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The handles of each module of a pipeline, in its order.
    pub fn module_meters(&self, modules: &[Arc<dyn Module>]) -> Vec<ModuleMeter> {
        modules
            .iter()
            .map(|m| {
                let module: Arc<str> = Arc::from(m.name());
                let pair = |phase: PhaseKind| {
                    let labels = ModuleLabels {
                        module: Arc::clone(&module),
                        phase: phase.as_str(),
                    };
                    (
                        self.module_seconds.get_or_create_owned(&labels),
                        self.module_errors.get_or_create_owned(&labels),
                    )
                };
                let phases = [PhaseKind::Request, PhaseKind::Response, PhaseKind::Log].map(pair);
                ModuleMeter { phases }
            })
            .collect()
    }

    /// The handles a generation built from `config` uses on every request.
    pub fn generation_meters(&self, config: &Config) -> GenerationMeters {
        let upstream_labels: Vec<Arc<str>> = config
            .upstreams
            .iter()
            .map(|u| Arc::from(u.name.as_str()))
            .collect();
        let none: Arc<str> = Arc::from(NONE);
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let route: Arc<str> = Arc::from(i.to_string());
                let upstream = upstream_labels
                    .get(r.upstream)
                    .cloned()
                    .unwrap_or_else(|| Arc::clone(&none));
                let by_class = CLASSES.map(|class| {
                    self.requests.get_or_create_owned(&RequestLabels {
                        route: Arc::clone(&route),
                        upstream: Arc::clone(&upstream),
                        class,
                    })
                });
                RouteMeter {
                    label: route,
                    upstream: r.upstream,
                    by_class,
                }
            })
            .collect();
        let latency = |label: &Arc<str>| {
            self.latency.get_or_create_owned(&UpstreamLabels {
                upstream: Arc::clone(label),
            })
        };
        GenerationMeters {
            routes,
            upstreams: upstream_labels
                .iter()
                .map(|label| UpstreamMeter {
                    label: Arc::clone(label),
                    latency: latency(label),
                })
                .collect(),
            unrouted_latency: latency(&none),
            none,
        }
    }

    fn count_request(&self, route: Arc<str>, upstream: Arc<str>, class: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                upstream,
                class,
            })
            .inc();
    }
}

/// One module's handles: seconds and errors for its request, response and log phases.
#[derive(Debug, Clone)]
pub struct ModuleMeter {
    phases: [(SecondsCounter, Counter); 3],
}

impl ModuleMeter {
    /// Counts one run of `phase` that took `took`, failed or not.
    pub fn record(&self, phase: PhaseKind, took: Duration, failed: bool) {
        let (seconds, errors) = &self.phases[match phase {
            PhaseKind::Request => 0,
            PhaseKind::Response => 1,
            PhaseKind::Log => 2,
        }];
        seconds.inc_by(took.as_secs_f64());
        if failed {
            errors.inc();
        }
    }
}

#[derive(Debug)]
struct RouteMeter {
    label: Arc<str>,
    /// The route's own upstream: the common case, counted without a lookup.
    upstream: usize,
    by_class: [Counter; 5],
}

#[derive(Debug)]
struct UpstreamMeter {
    label: Arc<str>,
    latency: Histogram,
}

/// A generation's request handles, resolved when it is built: a request through a
/// route to the route's own upstream touches two atomics and one histogram, with no
/// lookup and no allocation.
#[derive(Debug)]
pub struct GenerationMeters {
    routes: Vec<RouteMeter>,
    upstreams: Vec<UpstreamMeter>,
    unrouted_latency: Histogram,
    none: Arc<str>,
}

impl GenerationMeters {
    /// Counts one finished request: `route` and `upstream` are indexes into the
    /// generation's routes and upstream sets.
    pub fn record(
        &self,
        metrics: &Metrics,
        route: Option<usize>,
        upstream: Option<usize>,
        status: StatusCode,
        took: Duration,
    ) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let route_meter = route.and_then(|r| self.routes.get(r));
        let upstream_meter = upstream.and_then(|u| self.upstreams.get(u));
        match (route_meter, upstream) {
            (Some(r), Some(u)) if r.upstream == u => {
                r.by_class[class].inc();
            }
            _ => metrics.count_request(
                route_meter.map_or_else(|| Arc::clone(&self.none), |r| Arc::clone(&r.label)),
                upstream_meter.map_or_else(|| Arc::clone(&self.none), |u| Arc::clone(&u.label)),
                CLASSES[class],
            ),
        }
        upstream_meter
            .map_or(&self.unrouted_latency, |u| &u.latency)
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests;

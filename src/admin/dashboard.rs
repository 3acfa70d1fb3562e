//! `GET /` (a small HTML dashboard) and the Prometheus text behind `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};

use super::handlers::Call;
use super::{text, AdminBody};
use crate::server::Shared;
use crate::upstream::breaker::BreakerState;
use crate::upstream::ServerState;

/// The dashboard: status, modules and upstreams, rendered on the server.
pub fn page(c: &Call<'_>) -> Response<AdminBody> {
    let g = c.shared.generation();
    let s = &c.shared.stats;
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>proxycache</title><style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00}</style></head><body>");
    let _ = write!(
        html,
        "<h1>proxycache {}</h1><p>generation {} &middot; up {} s &middot; {} connections &middot; requests 2xx {} 4xx {} 5xx {}</p>",
        crate::VERSION,
        g.number,
        c.shared.started.elapsed().as_secs(),
        c.shared.connections.load(Ordering::Relaxed),
        s.class(2),
        s.class(4),
        s.class(5)
    );
    if let Some(r) = c.shared.reloads.last().filter(|r| !r.ok) {
        let _ = write!(
            html,
            "<h2 class=\"bad\">Last reload failed</h2><pre>{}</pre>",
            escape(
                &r.errors
                    .iter()
                    .map(|e| e.rendered.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        );
    }
    html.push_str("<h2>Modules</h2><table><tr><th>name</th><th>priority</th><th>enabled</th><th>phases</th></tr>");
    for m in &g.modules {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            m.priority,
            m.enabled,
            m.phases.join(", ")
        );
    }
    html.push_str("</table><h2>Upstreams</h2><table><tr><th>upstream</th><th>server</th><th>healthy</th><th>breaker</th><th>in flight</th><th>requests</th><th>failures</th></tr>");
    for set in &g.upstreams.sets {
        for srv in &set.servers {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(set.name()),
                escape(srv.label()),
                srv.is_healthy(),
                srv.breaker.state().as_str(),
                srv.inflight(),
                srv.requests.load(Ordering::Relaxed),
                srv.failures.load(Ordering::Relaxed)
            );
        }
    }
    html.push_str("</table><p>JSON: <a href=\"/status\">/status</a> <a href=\"/stats\">/stats</a> <a href=\"/mods\">/mods</a> <a href=\"/upstreams\">/upstreams</a> <a href=\"/metrics\">/metrics</a></p></body></html>");
    text(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Prometheus text exposition of the proxy's own metrics.
pub fn prometheus(shared: &Shared) -> String {
    let mut out = String::new();
    let s = &shared.stats;
    let g = shared.generation();
    out.push_str("# HELP proxycache_requests_total Responses sent, by status class.\n# TYPE proxycache_requests_total counter\n");
    for class in 1..=5 {
        let _ = writeln!(
            out,
            "proxycache_requests_total{{class=\"{class}xx\"}} {}",
            s.class(class)
        );
    }
    let _ = writeln!(out, "# HELP proxycache_connections Open client connections.\n# TYPE proxycache_connections gauge\nproxycache_connections {}", shared.connections.load(Ordering::Relaxed));
    let (opened, reused) = shared.pool_totals();
    let _ = writeln!(out, "# HELP proxycache_upstream_connections_opened_total Upstream connections opened.\n# TYPE proxycache_upstream_connections_opened_total counter\nproxycache_upstream_connections_opened_total {opened}");
    let _ = writeln!(out, "# HELP proxycache_upstream_pool_reuses_total Requests sent on a pooled upstream connection.\n# TYPE proxycache_upstream_pool_reuses_total counter\nproxycache_upstream_pool_reuses_total {reused}");
    let per_server = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      value: &dyn Fn(&ServerState) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for set in &g.upstreams.sets {
            for srv in &set.servers {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",server=\"{}\"}} {}",
                    set.name(),
                    srv.label(),
                    value(srv)
                );
            }
        }
    };
    per_server(
        &mut out,
        "proxycache_upstream_server_healthy",
        "gauge",
        "Whether a server passes its health checks.",
        &|s| u64::from(s.is_healthy()),
    );
    per_server(
        &mut out,
        "proxycache_upstream_breaker_state",
        "gauge",
        "Circuit breaker state (0 closed, 1 open, 2 half-open).",
        &|s| match s.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        },
    );
    per_server(
        &mut out,
        "proxycache_upstream_requests_total",
        "counter",
        "Requests sent to a server.",
        &|s| s.requests.load(Ordering::Relaxed),
    );
    per_server(
        &mut out,
        "proxycache_upstream_failures_total",
        "counter",
        "Transport failures talking to a server.",
        &|s| s.failures.load(Ordering::Relaxed),
    );
    let (ok, failed) = *shared.reloads.counts.lock();
    let _ = writeln!(out, "# HELP proxycache_reloads_total Reloads, by result.\n# TYPE proxycache_reloads_total counter\nproxycache_reloads_total{{result=\"ok\"}} {ok}\nproxycache_reloads_total{{result=\"failed\"}} {failed}");
    let _ = writeln!(out, "# HELP proxycache_generation The generation serving.\n# TYPE proxycache_generation gauge\nproxycache_generation {}", g.number);
    out
}

//! `GET /` (a small HTML dashboard). The Prometheus text behind `GET /metrics` is
//! [`crate::metrics`]'s.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};

use super::handlers::Call;
use super::{text, AdminBody};

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
                srv.requests(),
                srv.failures()
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

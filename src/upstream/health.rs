//! Active health checks: for every upstream with a `health` table, each network server
//! gets `GET <path>` (or, with `type = "tcp"`, just a connect) every `interval` on a
//! fresh connection; `unhealthy_after`
//! consecutive failures take it out of rotation, `healthy_after` successes bring it
//! back. Runs on the control thread, never on a worker. A check speaks what requests
//! speak (TLS, HTTP/2) over a connection of its own, never a worker's pooled one.
//! Owns the health of servers: in a set without `health`, every server is healthy.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};
use tokio::task::JoinHandle;

use crate::config::{HealthConfig, HealthKind};
use crate::http::ProxyBody;

use super::connect::Endpoint;
use super::pool::Pool;
use super::{client, ServerState, Upstreams};

/// Starts one checking task per checked server; abort the handles to stop them
/// (a reload replaces them with the new generation's). Call it as `upstreams` goes
/// live: the servers of a set without checks are marked healthy, since their state
/// may come from a generation whose checks marked them down and nothing would mark
/// them up again.
pub fn spawn_checks(upstreams: &Upstreams) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for set in &upstreams.sets {
        let Some(health) = set.config.health.clone() else {
            for server in &set.servers {
                server.reset_health();
            }
            continue;
        };
        for (server, endpoint) in set.servers.iter().zip(&set.endpoints) {
            if let Some(endpoint) = endpoint {
                let (server, endpoint, health, name) = (
                    Arc::clone(server),
                    Arc::clone(endpoint),
                    health.clone(),
                    set.name().to_owned(),
                );
                tasks.push(tokio::spawn(check_loop(name, server, endpoint, health)));
            }
        }
    }
    tasks
}

async fn check_loop(
    upstream: String,
    server: Arc<ServerState>,
    endpoint: Arc<Endpoint>,
    health: HealthConfig,
) {
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checked = probe(&endpoint, &health).await;
        let turned = server.record_check(
            checked.is_ok(),
            health.healthy_after,
            health.unhealthy_after,
        );
        match (turned, checked) {
            (Some(true), _) => {
                tracing::info!(target: "proxycache::upstream", %upstream, server = server.label(), "server is healthy again")
            }
            // The check that took it out says why (the ones before it most often failed
            // the same way).
            (Some(false), Err(why)) => match health.kind {
                HealthKind::Http => {
                    tracing::warn!(target: "proxycache::upstream", %upstream, server = server.label(), path = %health.path, reason = %why, "server failed its health checks")
                }
                HealthKind::Tcp => {
                    tracing::warn!(target: "proxycache::upstream", %upstream, server = server.label(), reason = %why, "server failed its health checks (connect)")
                }
            },
            _ => {}
        }
    }
}

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    /// The server answered with a status that is not 2xx or 3xx.
    #[error("status {0}")]
    Status(u16),
    /// No connection, or no answer: the reason in words.
    #[error("{0}")]
    Exchange(String),
    /// The check's `timeout` ran out (connect and answer together).
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

async fn probe(endpoint: &Arc<Endpoint>, health: &HealthConfig) -> Result<(), CheckFailed> {
    let timeout = health.timeout.max(Duration::from_millis(1));
    if health.kind == HealthKind::Tcp {
        // Connect (and the TLS handshake with `tls = true`), then hang up.
        let connected = tokio::time::timeout(timeout, super::connect::open_stream(endpoint));
        return match connected.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(failure)) => Err(CheckFailed::Exchange(failure.describe())),
            Err(_) => Err(CheckFailed::TimedOut(timeout)),
        };
    }
    let attempt = async {
        let req = Request::get(health.path.as_str())
            .header(header::HOST, endpoint.authority.as_str())
            .header(header::USER_AGENT, "proxycache-health")
            .body(ProxyBody::Empty)
            .map_err(|e| CheckFailed::Exchange(format!("cannot make the request: {e}")))?;
        // A pool of its own: every check opens (and then drops) a fresh connection.
        let pool = Arc::new(Pool::default());
        let resp = client::send(&pool, endpoint, timeout, Box::new(req), None)
            .await
            .map_err(|e| CheckFailed::Exchange(e.describe(timeout)))?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(CheckFailed::Status(status.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(checked) => checked,
        Err(_) => Err(CheckFailed::TimedOut(timeout)),
    }
}

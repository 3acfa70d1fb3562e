//! Active health checks: for every upstream with a `health` table, each network server
//! gets `GET <path>` every `interval` on a fresh connection; `unhealthy_after`
//! consecutive failures take it out of rotation, `healthy_after` successes bring it
//! back. Runs on the control thread, never on a worker.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::{HealthConfig, ServerTarget};

use super::{ServerState, Upstreams};

/// Starts one checking task per checked server; abort the handles to stop them
/// (a reload replaces them with the new generation's).
pub fn spawn_checks(upstreams: &Upstreams) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for set in &upstreams.sets {
        let Some(health) = set.config.health.clone() else {
            continue;
        };
        for server in &set.servers {
            if matches!(server.target, ServerTarget::Addr { .. }) {
                let (server, health, name) =
                    (Arc::clone(server), health.clone(), set.name().to_owned());
                tasks.push(tokio::spawn(check_loop(name, server, health)));
            }
        }
    }
    tasks
}

async fn check_loop(upstream: String, server: Arc<ServerState>, health: HealthConfig) {
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = probe(&server, &health).await;
        if let Some(healthy) = server.record_check(ok, health.healthy_after, health.unhealthy_after)
        {
            if healthy {
                tracing::info!(target: "proxycache::upstream", %upstream, server = server.label(), "server is healthy again");
            } else {
                tracing::warn!(target: "proxycache::upstream", %upstream, server = server.label(), path = %health.path, "server failed its health checks");
            }
        }
    }
}

async fn probe(server: &ServerState, health: &HealthConfig) -> bool {
    let ServerTarget::Addr { addr, authority } = &server.target else {
        return true;
    };
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(health.path.as_str())
            .header(header::HOST, authority.as_str())
            .header(header::USER_AGENT, "proxycache-health")
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().is_success() || resp.status().is_redirection())
    };
    let timeout = health.timeout.max(Duration::from_millis(1));
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

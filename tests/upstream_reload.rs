//! Server state across reloads: a set whose `health` is removed has every server
//! healthy again (no check is left to bring a down one back).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A site serving `upstreams` (TOML of `[upstreams.app]`) on a catch-all route; two
/// workers, the admin API on a free port, no file watching.
fn site_config(upstreams: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{upstreams}\n\n[[routes]]\nupstream = \"app\"\n"
    )
}

/// Rewrites the site's config and reloads; the reload must succeed.
async fn reload(site: &Site, run: &Running, upstreams: &str) {
    site.write_config(&site_config(upstreams));
    let shared = Arc::clone(run.shared());
    let report = tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload thread");
    assert!(report.ok, "{report:?}");
}

/// The admin API's view of server `addr` of set `app`.
async fn server_view(run: &Running, addr: &str) -> Value {
    let body = get(run.admin, "/upstreams").await.json();
    let servers = body["upstreams"][0]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    servers
        .into_iter()
        .find(|s| s["server"] == addr)
        .unwrap_or_else(|| panic!("no server {addr} in {body:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_health_checks_brings_down_servers_back() {
    let a = Upstream::start("a", Behavior::echo()).await;
    a.set_healthy(false);
    let site = Site::new("health-removed");
    let with_health = format!(
        "[upstreams.app]\nservers = [\"{}\"]\nhealth = {{ interval = \"100ms\", unhealthy_after = 1 }}\n",
        a.addr
    );
    site.write_config(&site_config(&with_health));
    let run = Running::start(&site);
    assert!(
        wait_until_async(Duration::from_secs(5), || async {
            get(run.addr, "/").await.status == 503
        })
        .await,
        "the only server is marked down"
    );

    reload(
        &site,
        &run,
        &format!("[upstreams.app]\nservers = [\"{}\"]\n", a.addr),
    )
    .await;

    // No check is left to mark it up again: the reload does.
    assert!(
        wait_until_async(Duration::from_secs(3), || async {
            get(run.addr, "/").await.status == 200
        })
        .await,
        "the server stays down after its health checks were removed"
    );
    assert_eq!(server_view(&run, &a.authority()).await["healthy"], true);
}

/// Polls the async `cond` every 25 ms until it holds or `limit` passes.
async fn wait_until_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

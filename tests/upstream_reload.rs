//! Server state across reloads: a server is known by its address, so its health and
//! breaker survive a change of its weight; its breaker is new when the breaker's
//! settings change; a set whose `health` is removed has every server healthy again
//! (no check is left to bring a down one back).

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

/// Health checks that take a server down after two failures a second apart and bring
/// it back after one pass.
const HEALTH: &str =
    "health = { interval = \"1s\", timeout = \"500ms\", unhealthy_after = 2, healthy_after = 1 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_only_changes_a_weight_keeps_a_down_server_down() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    a.set_healthy(false);
    let set = |weight_a: u32| {
        format!(
            "[upstreams.app]\nservers = [{{ addr = \"{}\", weight = {weight_a} }}, \"{}\"]\n{HEALTH}\n",
            a.addr, b.addr
        )
    };
    let site = Site::new("weight-keeps-health");
    site.write_config(&site_config(&set(1)));
    let run = Running::start(&site);
    let down = wait_until(Duration::from_secs(5), || {
        a.state
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    })
    .await;
    assert!(down, "a failed two health checks");
    assert!(
        wait_until_async(Duration::from_secs(3), || async {
            server_view(&run, &a.authority()).await["healthy"] == false
        })
        .await,
        "a is marked down"
    );

    reload(&site, &run, &set(3)).await;

    // A fresh state would be healthy until two more checks failed (a second or more).
    let view = server_view(&run, &a.authority()).await;
    assert_eq!(view["weight"], 3);
    assert_eq!(view["healthy"], false);
    for i in 0..6 {
        let resp = get(run.addr, &format!("/r/{i}")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.server(), "b", "request {i} went to the down server");
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_survives_a_weight_change_and_is_new_when_its_settings_change() {
    let dead = dead_addr();
    let b = Upstream::start("b", Behavior::echo()).await;
    let set = |weight_dead: u32, failures: u32| {
        format!(
            "[upstreams.app]\nservers = [{{ addr = \"{dead}\", weight = {weight_dead} }}, \"{}\"]\n\
             circuit_breaker = {{ failures = {failures}, open_for = \"60s\" }}\n",
            b.addr
        )
    };
    let site = Site::new("weight-keeps-breaker");
    site.write_config(&site_config(&set(1, 1)));
    let run = Running::start(&site);
    // Round robin tries the dead server within two requests; its connect failure
    // opens its breaker (and the request is retried on b).
    for i in 0..2 {
        assert_eq!(get(run.addr, &format!("/r/{i}")).await.status, 200);
    }
    let dead = dead.to_string();
    assert_eq!(server_view(&run, &dead).await["breaker"], "open");

    reload(&site, &run, &set(2, 1)).await;
    let view = server_view(&run, &dead).await;
    assert_eq!(view["weight"], 2);
    assert_eq!(view["breaker"], "open", "a weight change reset the breaker");
    assert_eq!(view["failures"], 1);

    reload(&site, &run, &set(2, 3)).await;
    let view = server_view(&run, &dead).await;
    assert_eq!(
        view["breaker"], "closed",
        "new breaker settings, a new breaker"
    );
    assert_eq!(view["failures"], 1, "the counts stay with the address");
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

//! Metrics over real sockets (issue 5): proxycache in-process with a real upstream, a
//! pcmod module (script metrics with labels, `std.rate_limit`, a run-time fault, and
//! `std.metrics.prometheus()` served on the main listener) and a Lua module (script
//! counter and histogram, the exposition through `std.respond`). The admin
//! `/metrics` and the main-listener routes are parsed strictly
//! (`common::prometheus`) and every family is checked by value.

mod common;

use std::time::{Duration, Instant};

use common::prometheus::{parse, Exposition};
use common::*;

const PROM_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// pcmod: counts every request by path (labels from the module's own Lua helper, as
/// pcmod has no map literal), serves `/metrics`, limits `/limited`, faults on `/boom`.
const GATE: &str = r#"mod gate {
  priority 10
  on request {
    std.metrics.inc(name: "hits", labels: lua.labels($path))
    if $path == "/metrics" {
      respond 200 std.metrics.prometheus() { "content-type": "text/plain; version=0.0.4; charset=utf-8" }
    }
    if $path starts_with "/limited" {
      let rl = std.rate_limit(key: "fixed", rate: 1, burst: 2, per: 1h)
      if not rl.allowed {
        respond 429 "slow down\n"
      }
    }
    if $path == "/boom" {
      let x = lower(int("5"))
    }
  }
  lua """
function labels(path)
  return { path = path, kind = "pcmod \"quoted\", with comma" }
end
"""
}
"#;

/// Lua: a counter and a histogram in the log phase; `/lua-metrics` answers with the
/// exposition.
const LUAMOD: &str = r#"mod luamod {
  priority 20
  lua """
function on_request(req, ctx)
  if req.path == "/lua-metrics" then
    return std.respond(200, std.metrics.prometheus(), { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" })
  end
end

function on_log(req, resp, ctx)
  std.metrics.inc("lua_requests", { source = "lua" })
  std.metrics.observe{ name = "lua_seconds", value = 0.2, labels = { source = "lua" } }
end
"""
}
"#;

fn config_text(upstream: &Upstream) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = false\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\n\
         [[routes]]\nupstream = \"app\"\n",
        upstream.addr
    )
}

/// Scrapes the admin `/metrics` until `ready` says so (responses are counted when
/// their body is finished, which may be just after the client has read it).
async fn scrape_until(
    admin: std::net::SocketAddr,
    ready: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = get(admin, "/metrics").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type").as_deref(), Some(PROM_TYPE));
        let text = resp.text();
        let e = parse(&text);
        if ready(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "never ready:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests(e: &Exposition) -> f64 {
    e.sum("proxycache_route_requests_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_exposed_with_the_right_values() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("metrics");
    site.write_mod("gate", GATE);
    site.write_mod("luamod", LUAMOD);
    site.write_config(&config_text(&up));
    let px = Running::start(&site);

    // Traffic: 3 through route 0, 2 allowed + 1 limited on route 1, 1 module fault.
    for _ in 0..3 {
        assert_eq!(get(px.addr, "/api/x").await.status, 200);
    }
    let limited: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(px.addr, "/limited").await.status.as_u16());
        }
        v
    };
    assert_eq!(limited, [200, 200, 429]);
    assert_eq!(get(px.addr, "/boom").await.status, 500);
    scrape_until(px.admin, |e| requests(e) == 7.0).await;

    // Reloads: one that changes nothing (ok), one with a broken module (failed).
    let shared = px.shared().clone();
    let ok = tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload");
    assert!(ok.ok);
    site.write_mod(
        "broken",
        "mod broken {\n  on request {\n    let x = nope\n  }\n}\n",
    );
    let shared = px.shared().clone();
    let failed = tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload");
    assert!(!failed.ok);
    site.remove_mod("broken");

    // std.metrics.prometheus() on the main listener, from pcmod and from Lua.
    let main = get(px.addr, "/metrics").await;
    assert_eq!(main.status, 200);
    assert_eq!(main.header("content-type").as_deref(), Some(PROM_TYPE));
    let from_pcmod = parse(&main.text());
    assert_eq!(
        from_pcmod.value(
            "proxycache_script_hits_total",
            &[("path", "/api/x"), ("kind", "pcmod \"quoted\", with comma")]
        ),
        3.0
    );
    assert!(from_pcmod
        .types
        .contains_key("proxycache_upstream_server_healthy"));
    let lua = get(px.addr, "/lua-metrics").await;
    assert_eq!(lua.status, 200);
    assert_eq!(lua.header("content-type").as_deref(), Some(PROM_TYPE));
    let from_lua = parse(&lua.text());
    assert_eq!(
        from_lua.value("proxycache_script_lua_requests_total", &[("source", "lua")]),
        5.0,
        "the log phase ran for the 5 requests that reached luamod"
    );

    // 7 + /metrics + /lua-metrics.
    let e = scrape_until(px.admin, |e| requests(e) == 9.0).await;
    let route = |route: &str, upstream: &str, class: &str| {
        e.sum(
            "proxycache_route_requests_total",
            &[("route", route), ("upstream", upstream), ("class", class)],
        )
    };
    assert_eq!(route("0", "app", "2xx"), 3.0);
    assert_eq!(route("1", "app", "2xx"), 2.0);
    assert_eq!(route("1", "none", "4xx"), 1.0, "the 429 a module answered");
    assert_eq!(route("1", "none", "5xx"), 1.0, "the module fault");
    assert_eq!(route("1", "none", "2xx"), 2.0, "the two metrics routes");
    assert_eq!(e.types["proxycache_route_requests_total"], "counter");

    assert_eq!(e.types["proxycache_request_duration_seconds"], "histogram");
    let latency = |upstream: &str| {
        e.value(
            "proxycache_request_duration_seconds_count",
            &[("upstream", upstream)],
        )
    };
    assert_eq!(latency("app"), 5.0);
    assert_eq!(latency("none"), 4.0);
    let app_sum = e.value(
        "proxycache_request_duration_seconds_sum",
        &[("upstream", "app")],
    );
    assert!(app_sum > 0.0 && app_sum < 50.0, "{app_sum}");

    assert_eq!(e.types["proxycache_upstream_pool_hits_total"], "counter");
    let hits = e.value("proxycache_upstream_pool_hits_total", &[]);
    let misses = e.value("proxycache_upstream_pool_misses_total", &[]);
    assert!(misses >= 1.0, "the first request opened a connection");
    assert!(
        hits >= 1.0,
        "one worker, a keep-alive upstream: later requests reuse"
    );
    assert!(hits + misses >= 5.0, "hits {hits} misses {misses}");

    let server = [("upstream", "app"), ("server", &*up.authority())];
    assert_eq!(e.types["proxycache_upstream_server_healthy"], "gauge");
    assert_eq!(e.value("proxycache_upstream_server_healthy", &server), 1.0);
    assert_eq!(e.types["proxycache_upstream_breaker_state"], "gauge");
    assert_eq!(e.value("proxycache_upstream_breaker_state", &server), 0.0);
    assert_eq!(e.value("proxycache_upstream_requests_total", &server), 5.0);

    let gate_request = [("module", "gate"), ("phase", "request")];
    assert!(e.value("proxycache_module_seconds_total", &gate_request) > 0.0);
    assert_eq!(
        e.value("proxycache_module_errors_total", &gate_request),
        1.0
    );
    assert_eq!(
        e.value(
            "proxycache_module_errors_total",
            &[("module", "luamod"), ("phase", "log")]
        ),
        0.0
    );
    assert!(
        e.value(
            "proxycache_module_seconds_total",
            &[("module", "luamod"), ("phase", "log")]
        ) > 0.0
    );

    assert_eq!(
        e.value(
            "proxycache_rate_limit_rejections_total",
            &[("module", "gate")]
        ),
        1.0
    );

    // No module here uses the cache (tests/cache.rs counts real hits and misses).
    for family in [
        "proxycache_cache_hits_total",
        "proxycache_cache_misses_total",
        "proxycache_cache_stores_total",
        "proxycache_cache_rejected_total",
    ] {
        assert_eq!(e.types[family], "counter");
        assert_eq!(e.value(family, &[]), 0.0);
    }

    assert_eq!(
        e.value("proxycache_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        e.value("proxycache_reloads_total", &[("result", "failed")]),
        1.0
    );

    // Script metrics: the pcmod counter by label set, the Lua counter and histogram.
    let kind = ("kind", "pcmod \"quoted\", with comma");
    assert_eq!(e.types["proxycache_script_hits_total"], "counter");
    assert_eq!(
        e.value("proxycache_script_hits_total", &[("path", "/api/x"), kind]),
        3.0
    );
    assert_eq!(
        e.value(
            "proxycache_script_hits_total",
            &[("path", "/limited"), kind]
        ),
        3.0
    );
    assert_eq!(
        e.value("proxycache_script_hits_total", &[("path", "/boom"), kind]),
        1.0
    );
    assert_eq!(e.sum("proxycache_script_hits_total", &[]), 9.0);
    assert_eq!(
        e.value("proxycache_script_lua_requests_total", &[("source", "lua")]),
        6.0,
        "5 before, and /lua-metrics itself"
    );
    assert_eq!(e.types["proxycache_script_lua_seconds"], "histogram");
    assert_eq!(
        e.value("proxycache_script_lua_seconds_count", &[("source", "lua")]),
        6.0
    );
    assert!(
        (e.value("proxycache_script_lua_seconds_sum", &[("source", "lua")]) - 1.2).abs() < 1e-9
    );
    assert_eq!(
        e.value(
            "proxycache_script_lua_seconds_bucket",
            &[("source", "lua"), ("le", "0.1")]
        ),
        0.0
    );
    assert_eq!(
        e.value(
            "proxycache_script_lua_seconds_bucket",
            &[("source", "lua"), ("le", "0.25")]
        ),
        6.0
    );
    assert_eq!(e.value("proxycache_script_metrics_dropped_total", &[]), 0.0);

    // What was there before prometheus-client stays.
    assert_eq!(
        e.value("proxycache_requests_total", &[("class", "2xx")]),
        7.0
    );
    assert_eq!(e.value("proxycache_generation", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_script_metric_names_are_load_errors_or_faults() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("metrics-bad");
    // A literal name is checked when the module loads.
    site.write_mod(
        "bad",
        "mod bad {\n  on request {\n    std.metrics.inc(name: \"has-dash\")\n  }\n}\n",
    );
    site.write_config(&config_text(&up));
    let config = proxycache::Config::load(Some(&site.config_path())).expect("config");
    let err = match proxycache::start(config) {
        Ok(_) => panic!("a bad literal metric name must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("invalid metric name"), "{err}");

    // A name made per request is checked per request: a run-time fault (500).
    site.write_mod(
        "bad",
        "mod bad {\n  on request {\n    std.metrics.inc(name: \"x-$method\")\n  }\n}\n",
    );
    let px = Running::start(&site);
    assert_eq!(get(px.addr, "/").await.status, 500);
    let e = scrape_until(px.admin, |e| requests(e) == 1.0).await;
    assert_eq!(
        e.value(
            "proxycache_module_errors_total",
            &[("module", "bad"), ("phase", "request")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_is_counted_in_stats_as_in_the_route_metric() {
    // A 499 (the client left before the answer) was in
    // proxycache_route_requests_total but not in /stats nor
    // proxycache_requests_total: the two sets of figures drifted apart.
    let mut slow = Behavior::echo();
    slow.delay = Some(Duration::from_millis(800));
    let up = Upstream::start("app", slow).await;
    let site = Site::new("metrics-499");
    site.write_config(&config_text(&up));
    let px = Running::start(&site);
    let gone = tokio::time::timeout(Duration::from_millis(200), get(px.addr, "/api/slow")).await;
    assert!(gone.is_err(), "the client gave up first");
    let e = scrape_until(px.admin, |e| requests(e) == 1.0).await;
    assert_eq!(e.sum("proxycache_requests_total", &[]), 1.0);
    let stats = get(px.admin, "/stats").await.json();
    assert_eq!(stats["requests"]["4xx"], 1, "{stats:#}");
    assert_eq!(stats["requests"]["total"], 1, "{stats:#}");
}

//! The admin API over real sockets (issue 6, acceptance 5, and the JSON shapes of
//! CONFIG.md "Admin API"): every endpoint's answer, `PUT`/`DELETE /mods/{name}` and what
//! they do on disk, `/config/verify`, `/config/repair`, the API key, module-name
//! validation, the body limit, and the `admin_audit` log lines (through the binary,
//! whose stderr the test can read).
//!
//! Each test writes `config.toml` and `mods/` into a fresh temp folder, loads it with
//! `Config::load` and starts proxycache in-process with the admin API on 127.0.0.1:0
//! and the file watcher off, so every reload is one the test asked for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use proxycache::Config;
use serde_json::{json, Value};

/// Anything that has to happen eventually (a process starting, a log line landing).
const EVENTUALLY: Duration = Duration::from_secs(20);

// ---- sites --------------------------------------------------------------------------------

/// A whole `config.toml`: the proxy and the admin API on port 0, the watcher off.
fn config_text(api_key: &str, rest: &str) -> String {
    format!(
        "# admin test config\n[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\napi_key = \"{api_key}\"\n\n[log]\naccess = false\n\n\
         [scripts]\ndir = \"mods\"   # next to this file\nwatch = false\n\n{rest}\n"
    )
}

/// Everything to the built-in echo upstream.
const ECHO: &str =
    "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n";

/// A valid module that tags responses.
fn tagger(name: &str, value: &str) -> String {
    format!(
        "mod {name} {{\n  version \"1.2.3\"\n  priority 300\n  description \"tags responses\"\n  \
         on response {{\n    set resp.header[\"x-{name}\"] = \"{value}\"\n  }}\n}}\n"
    )
}

/// `greeter` with a `config {}` block (for `/config/repair`).
const GREETER: &str = r##"mod greeter {
  config {
    greeting: string = "hello"
    times:    int    = 2
  }
  on request {
    if $path == "/greet" {
      respond 200 "$config.greeting x${$config.times}\n"
    }
  }
}
"##;

/// A module with an unknown name on line 3, column 30.
const BROKEN: &str = "mod broken {\n  on response {\n    set resp.header[\"x-b\"] = nope\n  }\n}\n";

// ---- proxycache in-process ------------------------------------------------------------------

/// A site with `mods` and `rest`, and proxycache serving it.
fn start(tag: &str, mods: &[(&str, &str)], api_key: &str, rest: &str) -> (Site, Running) {
    let site = Site::new(tag);
    for (name, source) in mods {
        site.write_mod(name, source);
    }
    site.write_config(&config_text(api_key, rest));
    let running = Running::start(&site);
    (site, running)
}

// ---- clients --------------------------------------------------------------------------------

/// `METHOD path` with `body` and optional `Authorization` to the admin API.
async fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8], auth: Option<&str>) -> Resp {
    let mut builder = req(method, path);
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request builds");
    send(addr, request).await
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    call(addr, method, path, body.as_bytes(), None).await
}

/// `GET path` as JSON, asserting 200 and a JSON content type.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let resp = admin(addr, "GET", path, "").await;
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json"),
        "GET {path}"
    );
    resp.json()
}

fn is_uint(v: &Value) -> bool {
    v.as_u64().is_some()
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v:#}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Checks a `POST /reload`-style report: `{generation, ok, at, trigger, applied,
/// requires_restart, errors}`.
fn assert_report_shape(r: &Value) {
    assert_eq!(
        keys(r),
        [
            "applied",
            "at",
            "errors",
            "generation",
            "ok",
            "requires_restart",
            "trigger"
        ],
        "{r:#}"
    );
    assert!(is_uint(&r["generation"]) && is_uint(&r["at"]), "{r:#}");
    assert!(r["ok"].is_boolean() && r["trigger"].is_string(), "{r:#}");
    for list in ["applied", "requires_restart", "errors"] {
        assert!(r[list].is_array(), "{list}: {r:#}");
    }
}

/// Checks one diagnostic: `{file, line, col, message, rendered}` (and `key` for config).
fn assert_error_shape(e: &Value) {
    for key in ["file", "message", "rendered"] {
        assert!(e[key].is_string(), "{key}: {e:#}");
    }
    assert!(is_uint(&e["line"]) && is_uint(&e["col"]), "{e:#}");
}

// ---- read-only endpoints ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_has_the_documented_shape() {
    let (site, px) = start("status", &[], "", ECHO);
    let status = get_json(px.admin, "/status").await;
    assert_eq!(
        keys(&status),
        [
            "connections",
            "generation",
            "last_reload",
            "requires_restart",
            "status",
            "uptime_s",
            "version",
            "workers"
        ],
        "{status:#}"
    );
    assert_eq!(status["status"], "ok");
    assert_eq!(status["version"], proxycache::VERSION);
    assert!(is_uint(&status["uptime_s"]) && is_uint(&status["connections"]));
    assert_eq!(status["generation"], 1);
    assert_eq!(status["workers"], 2);
    assert_eq!(status["last_reload"], Value::Null, "no reload yet");
    assert_eq!(
        status["requires_restart"],
        serde_json::json!([]),
        "nothing waits"
    );

    site.write_mod("tag", &tagger("tag", "1"));
    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let status = get_json(px.admin, "/status").await;
    let last = &status["last_reload"];
    assert_eq!(
        keys(last),
        ["at", "errors", "generation", "ok", "trigger"],
        "{status:#}"
    );
    assert_eq!(last["ok"], true);
    assert_eq!(last["generation"], 2);
    assert_eq!(last["trigger"], "admin:reload -");
    assert_eq!(last["errors"], json!([]));
    assert_eq!(status["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_has_the_documented_shape() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let rest = format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
        up.addr
    );
    let (_site, px) = start("stats", &[("tag", &tagger("tag", "1"))], "", &rest);
    assert_eq!(get(px.addr, "/one").await.status, 200);

    // Counters are updated as the response completes: poll.
    let deadline = Instant::now() + EVENTUALLY;
    let stats = loop {
        let stats = get_json(px.admin, "/stats").await;
        if stats["requests"]["2xx"].as_u64().unwrap_or(0) >= 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "2xx never counted: {stats:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        keys(&stats),
        [
            "connections",
            "modules",
            "reloads",
            "requests",
            "upstream_connections",
            "upstreams"
        ],
        "{stats:#}"
    );
    assert_eq!(
        keys(&stats["requests"]),
        ["1xx", "2xx", "3xx", "4xx", "5xx", "total"]
    );
    assert!(stats["requests"]["total"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(
        keys(&stats["upstream_connections"]),
        ["opened", "reused_requests"]
    );
    assert!(
        stats["upstream_connections"]["opened"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(stats["modules"], json!([{"name": "tag", "enabled": true}]));
    assert_eq!(stats["reloads"], json!({"ok": 0, "failed": 0}));
    let upstreams = stats["upstreams"].as_array().expect("upstreams list");
    assert_eq!(upstreams.len(), 1, "{stats:#}");
    assert_eq!(upstreams[0]["name"], "app");
    assert_eq!(upstreams[0]["servers"][0]["server"], up.authority());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_lists_servers_with_health_breaker_and_pool() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let rest = format!(
        "[upstreams.app]\nservers = [\"{}\", {{ addr = \"builtin:echo\", weight = 3 }}]\n\
         balance = \"weighted\"\nhealth = {{ interval = \"1s\" }}\n\n[[routes]]\nupstream = \"app\"\n",
        up.addr
    );
    let (_site, px) = start("upstreams", &[], "", &rest);
    for _ in 0..4 {
        assert_eq!(get(px.addr, "/").await.status, 200);
    }
    let body = get_json(px.admin, "/upstreams").await;
    assert_eq!(keys(&body), ["pool", "upstreams"], "{body:#}");
    assert_eq!(
        keys(&body["pool"]),
        ["idle", "opened", "reused_requests"],
        "{body:#}"
    );
    let set = &body["upstreams"][0];
    assert_eq!(
        keys(set),
        ["balance", "health_checks", "name", "servers"],
        "{body:#}"
    );
    assert_eq!(set["name"], "app");
    // The balance is named as in config.toml; case and underscores aside (it is the
    // Rust variant name today).
    let balance = set["balance"].as_str().unwrap_or("").to_lowercase();
    assert_eq!(balance.replace('_', ""), "weighted", "{body:#}");
    assert_eq!(set["health_checks"], true);
    let servers = set["servers"].as_array().expect("servers list");
    assert_eq!(servers.len(), 2, "{body:#}");
    for s in servers {
        assert_eq!(
            keys(s),
            ["breaker", "failures", "healthy", "inflight", "requests", "server", "weight"],
            "{body:#}"
        );
        assert_eq!(s["healthy"], true);
        assert_eq!(s["breaker"], "closed");
        assert_eq!(s["failures"], 0);
    }
    assert_eq!(servers[0]["server"], up.authority());
    assert_eq!(servers[1]["server"], "builtin:echo");
    assert_eq!(servers[1]["weight"], 3);
    let sent: u64 = servers
        .iter()
        .map(|s| s["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sent, 4, "{body:#}");
}

/// Parses the Prometheus text format (0.0.4) strictly (see `common::prometheus`).
/// Returns the declared types and the samples.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<common::prometheus::Sample>) {
    let e = common::prometheus::parse(text);
    (e.types, e.samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_is_prometheus_text_with_every_family() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let rest = format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
        up.addr
    );
    let (_site, px) = start("metrics", &[], "", &rest);
    assert_eq!(get(px.addr, "/").await.status, 200);

    let deadline = Instant::now() + EVENTUALLY;
    let (types, samples) = loop {
        let resp = admin(px.admin, "GET", "/metrics", "").await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let (types, samples) = parse_prometheus(&resp.text());
        let counted = samples.iter().any(|s| {
            s.name == "proxycache_requests_total"
                && s.labels.get("class").map(String::as_str) == Some("2xx")
                && s.value >= 1.0
        });
        if counted {
            break (types, samples);
        }
        assert!(
            Instant::now() < deadline,
            "2xx never counted:\n{}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let expected = [
        ("proxycache_requests_total", "counter"),
        ("proxycache_connections", "gauge"),
        ("proxycache_upstream_connections_opened_total", "counter"),
        ("proxycache_upstream_pool_reuses_total", "counter"),
        ("proxycache_upstream_server_healthy", "gauge"),
        ("proxycache_upstream_breaker_state", "gauge"),
        ("proxycache_upstream_requests_total", "counter"),
        ("proxycache_upstream_failures_total", "counter"),
        ("proxycache_reloads_total", "counter"),
        ("proxycache_generation", "gauge"),
    ];
    for (family, ty) in expected {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}");
        assert!(
            samples.iter().any(|s| s.name == family),
            "{family} has no sample"
        );
    }
    let one = |name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
            .value
    };
    let classes: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "proxycache_requests_total")
        .filter_map(|s| s.labels.get("class").map(String::as_str))
        .collect();
    assert_eq!(classes, BTreeSet::from(["1xx", "2xx", "3xx", "4xx", "5xx"]));
    assert_eq!(one("proxycache_generation", None), 1.0);
    assert_eq!(one("proxycache_reloads_total", Some(("result", "ok"))), 0.0);
    assert_eq!(
        one("proxycache_reloads_total", Some(("result", "failed"))),
        0.0
    );
    let server = up.authority();
    let labelled = |name: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.get("upstream").map(String::as_str) == Some("app")
                    && s.labels.get("server") == Some(&server)
            })
            .unwrap_or_else(|| panic!("{name} for app/{server}"))
            .value
    };
    assert_eq!(labelled("proxycache_upstream_server_healthy"), 1.0);
    assert_eq!(labelled("proxycache_upstream_breaker_state"), 0.0);
    assert_eq!(labelled("proxycache_upstream_requests_total"), 1.0);
    assert_eq!(labelled("proxycache_upstream_failures_total"), 0.0);
    assert!(one("proxycache_upstream_connections_opened_total", None) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_html() {
    let (_site, px) = start("dashboard", &[("tag", &tagger("tag", "1"))], "", ECHO);
    let resp = admin(px.admin, "GET", "/", "").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let html = resp.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<h1>proxycache"), "{html}");
    assert!(html.contains("<td>tag</td>"), "modules are listed: {html}");
    assert!(
        html.contains("builtin:echo"),
        "upstreams are listed: {html}"
    );
    assert!(html.trim_end().ends_with("</html>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods_are_refused() {
    let (_site, px) = start("routes", &[], "", ECHO);
    let resp = admin(px.admin, "GET", "/nope", "").await;
    assert_eq!(resp.status, 404);
    assert!(resp.json()["error"].is_string());
    for (method, path) in [
        ("POST", "/status"),
        ("GET", "/reload"),
        ("DELETE", "/mods"),
        ("GET", "/config/verify"),
        ("PUT", "/upstreams"),
    ] {
        let resp = admin(px.admin, method, path, "").await;
        assert_eq!(resp.status, 405, "{method} {path}: {}", resp.text());
    }
    // A 405 says what is allowed (RFC 9110, section 15.5.6).
    for (method, path, allow) in [
        ("POST", "/status", "GET, HEAD"),
        ("POST", "/mods/x", "GET, HEAD, PUT, DELETE"),
        ("GET", "/reload", "POST"),
        ("DELETE", "/config/repair", "POST"),
    ] {
        let resp = admin(px.admin, method, path, "").await;
        assert_eq!(resp.status, 405, "{method} {path}");
        assert_eq!(
            resp.header("allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
    }
    // Paths under a known one that name nothing are not found, whatever the method.
    for (method, path) in [
        ("GET", "/status/x"),
        ("GET", "/mods/hello/x"),
        ("GET", "/config"),
        ("PUT", "/mods/a/b"),
        ("POST", "/reload/now"),
    ] {
        let resp = admin(px.admin, method, path, "").await;
        assert_eq!(resp.status, 404, "{method} {path}: {}", resp.text());
    }
    // HEAD is GET without a body.
    for path in ["/status", "/metrics", "/mods", "/"] {
        let resp = admin(px.admin, "HEAD", path, "").await;
        assert_eq!(resp.status, 200, "HEAD {path}");
        assert!(resp.body.is_empty(), "HEAD {path} has no body");
    }
}

/// A failed reload's errors are listed under the module whose file (or Lua chunk) they
/// are in, matched by path: not by a file stem that happens to equal a module's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_errors_are_listed_under_the_module_that_owns_the_file() {
    let site = Site::new("owners");
    site.write_mod("config", &tagger("config", "1"));
    site.write_mod("luamod", "mod luamod {\n  lua \"sub/g.lua\"\n}\n");
    let sub = site.mods_dir().join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(sub.join("g.lua"), "function on_request(req, ctx)\nend\n").expect("write");
    site.write_config(&config_text("", ECHO));
    let px = Running::start(&site);
    let by_name = |list: &Value, name: &str| -> Value {
        list["mods"]
            .as_array()
            .and_then(|mods| mods.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no module {name} in {list:#}"))
    };

    // A syntax error in the chunk belongs to the module that names it.
    std::fs::write(sub.join("g.lua"), "function on_request(req, ctx\nend\n").expect("write");
    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let list = get_json(px.admin, "/mods").await;
    let luamod = by_name(&list, "luamod");
    assert_eq!(luamod["status"], "error", "{list:#}");
    assert!(
        luamod["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{list:#}"
    );
    assert_eq!(list["errors"], json!([]), "{list:#}");

    // A config.toml error belongs to no module, not to the module called `config`.
    std::fs::write(sub.join("g.lua"), "function on_request(req, ctx)\nend\n").expect("write");
    site.write_config(&(config_text("", ECHO) + "bogus = 1\n"));
    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let list = get_json(px.admin, "/mods").await;
    let config = by_name(&list, "config");
    assert_eq!(config["errors"], json!([]), "{list:#}");
    assert_eq!(config["status"], "loaded", "{list:#}");
    assert!(
        list["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{list:#}"
    );
}

/// A malformed chunked body is 400 (it was 413 "body over 1048576 bytes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_bad_request_not_too_large() {
    let (site, px) = start("bad-chunks", &[], "", ECHO);
    let before = site.snapshot();
    let raw = raw_request(
        px.admin,
        b"PUT /mods/tag HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nmod\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    assert_eq!(site.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (site, px) = start("big-declared", &[], "", ECHO);
    let before = site.snapshot();
    let mut conn = tokio::net::TcpStream::connect(px.admin)
        .await
        .expect("connect");
    conn.write_all(b"PUT /mods/big HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5000000\r\n\r\n")
        .await
        .expect("write");
    // No body follows: the answer must come from the header alone.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "no answer without the body: {text:?}");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(site.snapshot(), before);
}

// ---- modules ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mods_lists_every_module_and_one_module_comes_with_its_source() {
    let source = tagger("tag", "1");
    let (site, px) = start(
        "mods",
        &[("tag", &source), ("greeter", GREETER)],
        "",
        &format!("{ECHO}\n[mods.greeter]\ngreeting = \"hi\"\n"),
    );
    let body = get_json(px.admin, "/mods").await;
    assert_eq!(keys(&body), ["errors", "generation", "mods"], "{body:#}");
    assert_eq!(
        body["errors"],
        serde_json::json!([]),
        "no failed reload yet"
    );
    assert_eq!(body["generation"], 1);
    let mods = body["mods"].as_array().expect("mods list");
    let names: Vec<&str> = mods.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["greeter", "tag"], "in file name order: {body:#}");
    for m in mods {
        assert_eq!(
            keys(m),
            [
                "config",
                "description",
                "enabled",
                "errors",
                "file",
                "kind",
                "name",
                "phases",
                "priority",
                "status",
                "version"
            ],
            "{body:#}"
        );
        assert_eq!(m["kind"], "pcmod");
        assert_eq!(m["status"], "loaded");
        assert_eq!(m["errors"], json!([]));
        assert_eq!(m["enabled"], true);
        assert!(m.get("source").is_none(), "the list carries no source text");
    }
    let tag = &mods[1];
    assert_eq!(tag["version"], "1.2.3");
    assert_eq!(tag["priority"], 300);
    assert_eq!(tag["description"], "tags responses");
    assert_eq!(tag["phases"], json!(["response"]));
    assert_eq!(tag["config"], json!({}));
    assert_eq!(tag["file"], site.mod_path("tag").display().to_string());
    let greeter = &mods[0];
    assert_eq!(greeter["priority"], 500, "the default priority");
    assert_eq!(greeter["version"], Value::Null);
    assert_eq!(greeter["phases"], json!(["request"]));
    assert_eq!(
        greeter["config"],
        json!({"greeting": "\"hi\"", "times": "2"}),
        "the resolved config as TOML literals, [mods.greeter] applied"
    );

    let one = get_json(px.admin, "/mods/tag").await;
    assert_eq!(one["name"], "tag");
    assert_eq!(one["source"], source.as_str(), "the file's text");
    assert_eq!(one["status"], "loaded");

    let missing = admin(px.admin, "GET", "/mods/nothere", "").await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(missing.json()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_a_valid_module_writes_it_and_reloads() {
    let (site, px) = start("put", &[], "", ECHO);
    assert_eq!(get(px.addr, "/").await.header("x-fresh"), None);

    let source = tagger("fresh", "yes");
    let resp = admin(px.admin, "PUT", "/mods/fresh", &source).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let report = resp.json();
    assert_report_shape(&report);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["generation"], 2, "{report:#}");
    assert_eq!(report["trigger"], "admin:put_mod fresh", "{report:#}");
    let applied = report["applied"].to_string();
    assert!(applied.contains("module fresh loaded"), "{report:#}");
    assert_eq!(px.generation(), 2);
    assert_eq!(
        std::fs::read(site.mod_path("fresh")).expect("the file was written"),
        source.as_bytes()
    );
    assert_eq!(
        site.temp_files(),
        Vec::<String>::new(),
        "no temp files left"
    );
    // Swapped before the answer: the next request runs it.
    assert_eq!(
        get(px.addr, "/").await.header("x-fresh").as_deref(),
        Some("yes")
    );

    // Replacing it: the same, with the new text.
    let source = tagger("fresh", "again");
    let resp = admin(px.admin, "PUT", "/mods/fresh", &source).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["generation"], 3);
    assert_eq!(
        std::fs::read(site.mod_path("fresh")).expect("the file"),
        source.as_bytes()
    );
    assert_eq!(
        get(px.addr, "/").await.header("x-fresh").as_deref(),
        Some("again")
    );
    let one = get_json(px.admin, "/mods/fresh").await;
    assert_eq!(one["source"], source.as_str());
}

/// A module that compiles, put while config.toml has a problem only a reload sees (a
/// certificate file that is not there): the reload fails, so the answer is 400 and
/// the module is not left on disk to go live at the next good reload. The same for a
/// DELETE: the file comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_or_delete_whose_reload_fails_changes_nothing_on_disk() {
    let (site, px) = start(
        "put-reload-fails",
        &[("tag", &tagger("tag", "1"))],
        "",
        ECHO,
    );
    let broken_tls = format!(
        "{}\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"nope.pem\", key = \"nope.key\" }}]\n",
        config_text("", ECHO)
    );
    std::fs::write(site.config_path(), broken_tls).expect("write config.toml");
    let before = site.snapshot();
    let resp = admin(px.admin, "PUT", "/mods/tag2", &tagger("tag2", "2")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["ok"], false);
    let resp = admin(px.admin, "DELETE", "/mods/tag", "").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(site.snapshot(), before, "nothing on disk changed");
    assert_eq!(site.temp_files(), Vec::<String>::new());
    assert_eq!(px.generation(), 1, "the old generation keeps serving");
    assert_eq!(
        get(px.addr, "/").await.header("x-tag").as_deref(),
        Some("1")
    );
}

/// A repair whose result would not load (`mods = { }` is an inline table: no
/// `[mods.NAME]` section can follow it) is refused with 409 and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_would_break_config_toml_is_refused() {
    let site = Site::new("repair-inline");
    site.write_mod("tag", &tagger("tag", "1"));
    site.write_config(&format!("mods = {{ }}\n{}", config_text("", ECHO)));
    let px = Running::start(&site);
    let before = site.snapshot();
    let resp = admin(px.admin, "POST", "/config/repair", "").await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(site.snapshot(), before, "config.toml is as it was");
    assert!(Config::load(Some(&site.config_path())).is_ok());
}

/// `/config/verify` reads only regular files: a FIFO named as a certificate would
/// block the reading thread (the admin API's, reloads' and health checks') for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_certificate_paths_that_are_not_regular_files() {
    let (site, px) = start("verify-fifo", &[], "", ECHO);
    let fifo = site.config_path().with_file_name("fifo.pem");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !matches!(made, Ok(s) if s.success()) {
        eprintln!("skipped: no mkfifo on this machine");
        return;
    }
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{0}\", key = \"{0}\" }}]\n",
        fifo.display()
    );
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        admin(px.admin, "POST", "/config/verify", &body),
    )
    .await
    .expect("verify answers instead of blocking on the FIFO");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["valid"], false, "{v:#}");
    assert!(v.to_string().contains("not a regular file"), "{v:#}");
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        admin(px.admin, "GET", "/status", ""),
    )
    .await
    .expect("the admin API still answers");
    assert_eq!(status.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_an_invalid_module_answers_400_and_changes_nothing_on_disk() {
    let original = tagger("tag", "1");
    let (site, px) = start("put-bad", &[("tag", &original)], "", ECHO);
    let before = site.snapshot();

    // Replacing a loaded module with a broken one.
    let broken_tag = BROKEN.replace("mod broken", "mod tag");
    let resp = admin(px.admin, "PUT", "/mods/tag", &broken_tag).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let body = resp.json();
    assert_eq!(keys(&body), ["errors", "ok"], "{body:#}");
    assert_eq!(body["ok"], false);
    let error = &body["errors"][0];
    assert_error_shape(error);
    assert_eq!(error["file"], site.mod_path("tag").display().to_string());
    assert_eq!(error["line"], 3, "{body:#}");
    assert_eq!(error["col"], 30, "{body:#}");
    assert!(error["message"].as_str().unwrap_or("").contains("nope"));
    assert_eq!(
        error["hint"], "declare it with `let` first",
        "the hint as data, as docs/pcmod.md says: {body:#}"
    );

    // An empty body: what is missing is the module, not a closing bracket.
    let resp = admin(px.admin, "PUT", "/mods/empty", "").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let body = resp.json();
    assert_eq!(
        body["errors"][0]["message"], "expected `mod NAME { ... }`, found end of file",
        "{body:#}"
    );

    // A new module that does not compile.
    let resp = admin(px.admin, "PUT", "/mods/broken", BROKEN).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["errors"][0]["line"], 3);

    // A module whose name does not match its file.
    let resp = admin(px.admin, "PUT", "/mods/other", &tagger("tag", "2")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    // Not UTF-8.
    let resp = call(px.admin, "PUT", "/mods/bytes", &[0xff, 0xfe, 0x00], None).await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    assert_eq!(site.snapshot(), before, "nothing on disk changed");
    assert_eq!(
        site.temp_files(),
        Vec::<String>::new(),
        "no temp files left"
    );
    assert_eq!(px.generation(), 1, "nothing was reloaded");
    assert_eq!(
        get(px.addr, "/").await.header("x-tag").as_deref(),
        Some("1"),
        "the old module keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_delete_round_trips() {
    let (site, px) = start("round-trip", &[("keep", &tagger("keep", "1"))], "", ECHO);
    let before = site.snapshot();

    let resp = admin(px.admin, "PUT", "/mods/temp", &tagger("temp", "1")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(site.mod_path("temp").is_file());
    assert_eq!(
        get(px.addr, "/").await.header("x-temp").as_deref(),
        Some("1")
    );

    let resp = admin(px.admin, "DELETE", "/mods/temp", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let report = resp.json();
    assert_report_shape(&report);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["generation"], 3, "{report:#}");
    assert_eq!(report["trigger"], "admin:delete_mod temp", "{report:#}");
    assert!(
        report["applied"]
            .to_string()
            .contains("module temp unloaded"),
        "{report:#}"
    );
    assert!(!site.mod_path("temp").exists(), "the file is gone");
    assert_eq!(site.snapshot(), before, "back to where it started");
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.header("x-temp"), None, "the module is unloaded");
    assert_eq!(resp.header("x-keep").as_deref(), Some("1"));
    let mods = get_json(px.admin, "/mods").await;
    assert_eq!(mods["mods"].as_array().map(Vec::len), Some(1), "{mods:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_an_unknown_module_answers_404() {
    let (site, px) = start("delete-404", &[("keep", &tagger("keep", "1"))], "", ECHO);
    let before = site.snapshot();
    let resp = admin(px.admin, "DELETE", "/mods/nothere", "").await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert!(resp.json()["error"].is_string());
    assert_eq!(site.snapshot(), before);
    assert_eq!(px.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_module_names_are_refused_and_nothing_is_written() {
    let (site, px) = start("names", &[("keep", &tagger("keep", "1"))], "", ECHO);
    let before = site.snapshot();
    let long = "a".repeat(65);
    let names = [
        "..%2Fx",
        "%2E%2E%2Fx",
        "..%2F..%2Fetc%2Fpasswd",
        "Upper",
        "a%20b",
        "9lives",
        "_x",
        "a-b",
        "a.b",
        "x%00",
        long.as_str(),
    ];
    for name in names {
        let source = tagger("x", "1");
        for (method, body) in [("PUT", source.as_str()), ("GET", ""), ("DELETE", "")] {
            let resp = admin(px.admin, method, &format!("/mods/{name}"), body).await;
            assert_eq!(resp.status, 400, "{method} /mods/{name}: {}", resp.text());
            assert!(
                resp.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("invalid module name")),
                "{}",
                resp.text()
            );
        }
    }
    // A literal `..` segment never reaches a handler with a name.
    let resp = admin(px.admin, "PUT", "/mods/../x", &tagger("x", "1")).await;
    assert!(
        resp.status.is_client_error(),
        "PUT /mods/../x: {} {}",
        resp.status,
        resp.text()
    );
    assert_eq!(site.snapshot(), before, "nothing was written anywhere");
    assert!(!site.dir.join("x.pcmod").exists());
    assert_eq!(px.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_answers_413_and_writes_nothing() {
    let (site, px) = start("too-big", &[], "", ECHO);
    let before = site.snapshot();
    let mut body = format!(
        "mod big {{\n}}\n# {}",
        "x".repeat(proxycache::admin::MAX_BODY)
    );
    body.truncate(proxycache::admin::MAX_BODY + 1);
    let resp = admin(px.admin, "PUT", "/mods/big", &body).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.json()["error"].is_string());
    let resp = admin(px.admin, "POST", "/config/verify", &body).await;
    assert_eq!(resp.status, 413);
    assert_eq!(site.snapshot(), before);
    assert_eq!(site.temp_files(), Vec::<String>::new());

    // Exactly at the limit is accepted (and checked).
    let mut body = String::from("mod big {\n}\n#");
    body.push_str(&"x".repeat(proxycache::admin::MAX_BODY - body.len()));
    let resp = admin(px.admin, "PUT", "/mods/big", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_admin_clients_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeouts = "[server.timeouts]\nheader = \"300ms\"\nidle = \"500ms\"\n\n";
    let (_site, px) = start("slow", &[], "", &format!("{timeouts}{ECHO}"));

    // Sends `bytes` and reads until the server closes; `None` if it has not in 5s.
    let until_closed = |bytes: &'static [u8]| async move {
        let mut conn = tokio::net::TcpStream::connect(px.admin)
            .await
            .expect("connect");
        conn.write_all(bytes).await.expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        read.ok()
            .map(|_| String::from_utf8_lossy(&buf).into_owned())
    };

    // Half a request head: closed after `header` (it stayed open for good).
    let closed = until_closed(b"GET /status HTTP/1.1\r\nhost: a\r\n").await;
    assert!(
        closed.is_some(),
        "a half-sent head kept its admin connection open"
    );

    // A body that never completes: 408 after `idle` (the handler waited for good).
    let put = b"PUT /mods/slow HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nmod";
    let Some(text) = until_closed(put).await else {
        panic!("a stalled body kept its admin connection open");
    };
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // The API still answers.
    let resp = admin(px.admin, "GET", "/status", "").await;
    assert_eq!(resp.status, 200);
}

// ---- config -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_verify_reports_errors_with_key_line_and_col() {
    let (site, px) = start("verify", &[("greeter", GREETER)], "", ECHO);

    // A valid file in the body.
    let resp = admin(px.admin, "POST", "/config/verify", &config_text("", ECHO)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"valid": true, "errors": []}));

    // An unknown key, and a route to an unknown upstream.
    let bad =
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncolour = 1\n\n[[routes]]\nupstream = \"nowhere\"\n";
    let resp = admin(px.admin, "POST", "/config/verify", bad).await;
    assert_eq!(resp.status, 200);
    let body = resp.json();
    assert_eq!(body["valid"], false, "{body:#}");
    let errors = body["errors"].as_array().expect("errors list");
    let colour = errors
        .iter()
        .find(|e| e["key"] == "server.colour")
        .unwrap_or_else(|| panic!("server.colour: {body:#}"));
    assert_eq!(colour["line"], 3, "{body:#}");
    assert_eq!(colour["col"], 1, "{body:#}");
    assert!(colour["message"].as_str().unwrap_or("").contains("colour"));
    for e in errors {
        for key in ["key", "line", "col", "message"] {
            assert!(e.get(key).is_some(), "{key} in {e:#}");
        }
    }

    // A TOML syntax error.
    let resp = admin(px.admin, "POST", "/config/verify", "[server\nlisten = 1\n").await;
    let body = resp.json();
    assert_eq!(body["valid"], false, "{body:#}");
    assert_eq!(body["errors"][0]["line"], 1, "{body:#}");
    assert_eq!(body["errors"][0]["col"], 8, "{body:#}");

    // A [mods.NAME] value of the wrong type is checked against the modules on disk.
    let resp = admin(
        px.admin,
        "POST",
        "/config/verify",
        &format!("{ECHO}\n[mods.greeter]\ntimes = \"many\"\n"),
    )
    .await;
    let body = resp.json();
    assert_eq!(body["valid"], false, "{body:#}");
    assert!(
        body["errors"].to_string().contains("mods.greeter.times"),
        "{body:#}"
    );

    // An empty body verifies the file on disk.
    let resp = admin(px.admin, "POST", "/config/verify", "").await;
    assert_eq!(resp.json(), json!({"valid": true, "errors": []}));
    site.write_config(&format!(
        "{}\n[log]\nlevel = \"loud\"\n",
        config_text("", ECHO)
    ));
    let body = admin(px.admin, "POST", "/config/verify", "").await.json();
    assert_eq!(body["valid"], false, "{body:#}");
    // Nothing is reloaded by verifying.
    assert_eq!(px.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_repair_adds_missing_mods_sections_and_keeps_comments() {
    let (site, px) = start(
        "repair",
        &[("greeter", GREETER), ("tag", &tagger("tag", "1"))],
        "",
        &format!("{ECHO}\n# tag is configured already\n[mods.tag]\npriority = 100 # keep me\n"),
    );
    let original = std::fs::read_to_string(site.config_path()).expect("config.toml");

    let resp = admin(px.admin, "POST", "/config/repair", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["added"], json!(["greeter"]), "{body:#}");
    assert_eq!(body["file"], site.config_path().display().to_string());

    let repaired = std::fs::read_to_string(site.config_path()).expect("config.toml");
    assert!(
        repaired.starts_with(&original),
        "the original text, comments included, is kept as it was:\n{repaired}"
    );
    let added = &repaired[original.len()..];
    assert!(added.contains("[mods.greeter]"), "{added}");
    assert!(added.contains("greeting = \"hello\""), "{added}");
    assert!(added.contains("times = 2"), "{added}");
    assert!(
        !added.contains("[mods.tag]"),
        "tag had its section: {added}"
    );
    assert_eq!(site.temp_files(), Vec::<String>::new());
    let config = Config::load(Some(&site.config_path()))
        .unwrap_or_else(|e| panic!("the repaired file loads:\n{e}\n{repaired}"));
    assert!(config.mods.contains_key("greeter"));

    // The repaired file reloads, with the same behaviour (the defaults).
    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(get(px.addr, "/greet").await.text(), "hello x2\n");
    // Now nothing is missing.
    let body = admin(px.admin, "POST", "/config/repair", "").await.json();
    assert_eq!(body["added"], json!([]), "{body:#}");
    let again = std::fs::read_to_string(site.config_path()).expect("config.toml");
    assert_eq!(again, repaired, "nothing more was written");
}

/// `/config/repair` decides what is missing from the *running* generation's config, not
/// from the file it appends to: a second call before a reload (or with the watcher off)
/// appends the same `[mods.NAME]` table again and leaves config.toml broken
/// ("duplicate key").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_repair_twice_without_a_reload_keeps_the_file_valid() {
    let (site, px) = start("repair-twice", &[("greeter", GREETER)], "", ECHO);
    let first = admin(px.admin, "POST", "/config/repair", "").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = admin(px.admin, "POST", "/config/repair", "").await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["added"], json!([]), "{}", second.text());
    let text = std::fs::read_to_string(site.config_path()).expect("config.toml");
    assert!(
        Config::load(Some(&site.config_path())).is_ok(),
        "config.toml no longer loads:\n{text}"
    );
}

/// The shipped modules, as `(name, source)`.
fn shipped_mods() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mods");
    let mut mods: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("list the shipped mods/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcmod"))
        .map(|p| {
            let name = p
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                std::fs::read_to_string(&p).expect("read a shipped module"),
            )
        })
        .collect();
    mods.sort();
    mods
}

/// With the shipped `mods/`, a repair used to write `enabled` twice for `rate_limit`
/// (the reserved key, then its own `enabled` field: "duplicate key", nothing written);
/// and the reserved `enabled = true` would have switched the limit on. Now the file
/// is written, loads, and serves as before: the limit stays off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_repair_with_the_shipped_mods_keeps_the_rate_limit_off() {
    let shipped = shipped_mods();
    let names: Vec<&str> = shipped.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"rate_limit"), "{names:?}");
    let mods: Vec<(&str, &str)> = shipped
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let (site, px) = start("repair-shipped", &mods, "", ECHO);
    let before = get(px.addr, "/").await;
    assert_eq!(before.status, 200);
    assert_eq!(before.header("x-ratelimit-limit"), None, "off as shipped");

    let resp = admin(px.admin, "POST", "/config/repair", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut added: Vec<String> = serde_json::from_value(resp.json()["added"].clone())
        .unwrap_or_else(|e| panic!("{e}: {}", resp.text()));
    added.sort();
    assert_eq!(added, names, "{}", resp.text());
    let repaired = std::fs::read_to_string(site.config_path()).expect("config.toml");
    let table: toml::Table = repaired.parse().expect("the repaired file parses");
    let rate_limit = &table["mods"]["rate_limit"];
    assert_eq!(
        rate_limit["enabled"],
        toml::Value::Boolean(false),
        "{repaired}"
    );
    assert_eq!(
        repaired.matches("\nenabled ").count(),
        names.len(),
        "one `enabled` per module:\n{repaired}"
    );
    Config::load(Some(&site.config_path()))
        .unwrap_or_else(|e| panic!("the repaired file loads:\n{e}\n{repaired}"));

    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(px.generation(), 2, "{}", resp.text());
    // The limit is still off however many requests come (burst 40), and the other
    // shipped modules still run.
    for _ in 0..50 {
        let r = get(px.addr, "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), None);
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert!(r.request_id().is_some());
    }
}

// ---- security -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_when_set() {
    let (site, px) = start("api-key", &[], "s3cret-key", ECHO);
    let before = site.snapshot();
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some("Bearer s3cret-ke"),
        Some("Bearer s3cret-key2"),
        Some("s3cret-key"),
        Some("Basic s3cret-key"),
        Some("Bearer: s3cret-key"),
    ] {
        for (method, path) in [
            ("GET", "/status"),
            ("GET", "/"),
            ("GET", "/metrics"),
            ("POST", "/reload"),
            ("PUT", "/mods/sneaky"),
            ("DELETE", "/mods/sneaky"),
            ("POST", "/config/repair"),
        ] {
            let body = tagger("sneaky", "1");
            let resp = call(px.admin, method, path, body.as_bytes(), auth).await;
            assert_eq!(resp.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(
                resp.header("www-authenticate").as_deref(),
                Some("Bearer"),
                "{method} {path}"
            );
            assert!(resp.json()["error"].is_string());
        }
    }
    assert_eq!(
        site.snapshot(),
        before,
        "nothing was written without the key"
    );
    assert_eq!(px.generation(), 1, "nothing was reloaded without the key");

    let good = Some("Bearer s3cret-key");
    let resp = call(px.admin, "GET", "/status", b"", good).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The scheme is case-insensitive, and one or more spaces follow it (RFC 9110, 11.1).
    for auth in [
        "bearer s3cret-key",
        "BEARER s3cret-key",
        "Bearer  s3cret-key",
    ] {
        let resp = call(px.admin, "GET", "/status", b"", Some(auth)).await;
        assert_eq!(resp.status, 200, "{auth}: {}", resp.text());
    }
    let resp = call(
        px.admin,
        "PUT",
        "/mods/ok",
        tagger("ok", "1").as_bytes(),
        good,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The proxy itself does not want the admin key.
    assert_eq!(get(px.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_api_key_applies_on_reload() {
    let (site, px) = start("api-key-reload", &[], "", ECHO);
    assert_eq!(admin(px.admin, "GET", "/status", "").await.status, 200);

    site.write_config(&config_text("new-key", ECHO));
    let resp = admin(px.admin, "POST", "/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["applied"].to_string().contains("admin.api_key"));
    assert_eq!(admin(px.admin, "GET", "/status", "").await.status, 401);
    let resp = call(px.admin, "GET", "/status", b"", Some("Bearer new-key")).await;
    assert_eq!(resp.status, 200);
}

/// A web page cannot drive a keyless admin API on loopback: a call with another
/// site's `Origin` (a simple cross-site POST needs no preflight) or a rebinding DNS
/// name in `Host` is refused, and nothing is written (it answered 200 and installed
/// the module).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_web_pages_on_other_sites_are_refused() {
    let (site, px) = start("admin-browser", &[], "", ECHO);
    let port = px.admin.port();
    let put = |host: String, origin: &str| {
        let body = "mod evil {\n  on request {\n    respond 200 \"pwned\"\n  }\n}\n";
        let origin = if origin.is_empty() {
            String::new()
        } else {
            format!("Origin: {origin}\r\n")
        };
        format!(
            "PUT /mods/evil HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for raw in [
        put(format!("rebind.attacker.example:{port}"), ""),
        put(format!("127.0.0.1:{port}"), "http://attacker.example"),
        put(format!("127.0.0.1:{port}"), "null"),
    ] {
        let answer = raw_request(px.admin, raw.as_bytes()).await;
        assert_eq!(raw_status(&answer), 403, "{raw}\n{answer}");
    }
    assert!(!site.mods_dir().join("evil.pcmod").exists());
    assert_eq!(get(px.addr, "/").await.status, 200);
    // The admin API's own origin, and tools that send no Origin, are served.
    let same = put(
        format!("localhost:{port}"),
        &format!("http://localhost:{port}"),
    );
    assert_eq!(
        raw_status(&raw_request(px.admin, same.as_bytes()).await),
        200
    );
    assert!(site.mods_dir().join("evil.pcmod").exists());
}

/// `admin.listen` needs a restart but `admin.api_key` is live: a reload that drops the
/// key while the running listener is on a non-loopback address fails, even when the
/// new file also moves the listener to loopback (it left the admin API open on the
/// network with no key until the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_drop_the_key_of_a_non_loopback_admin_listener() {
    let keyed = |key: &str| {
        config_text(key, ECHO).replace("\"127.0.0.1:0\"\napi_key", "\"0.0.0.0:0\"\napi_key")
    };
    let site = Site::new("open-admin-reload");
    site.write_config(&keyed("k"));
    let px = Running::start(&site);
    let with_key = |method, path| call(px.admin, method, path, b"", Some("Bearer k"));
    assert_eq!(with_key("GET", "/status").await.status, 200);

    for next in [config_text("", ECHO), keyed("")] {
        site.write_config(&next);
        let resp = with_key("POST", "/reload").await;
        let report = resp.json();
        assert_eq!(report["ok"], false, "{}", resp.text());
        assert!(
            report["errors"].to_string().contains("admin.api_key"),
            "{report}"
        );
        assert_eq!(admin(px.admin, "GET", "/status", "").await.status, 401);
        assert_eq!(with_key("GET", "/status").await.status, 200);
    }
    // A new key is fine.
    site.write_config(&config_text("k2", ECHO));
    let resp = with_key("POST", "/reload").await;
    assert_eq!(resp.json()["ok"], true, "{}", resp.text());
    let resp = call(px.admin, "GET", "/status", b"", Some("Bearer k2")).await;
    assert_eq!(resp.status, 200);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_key() {
    let site = Site::new("non-loopback");
    let open = config_text("", ECHO).replace(
        "listen = \"127.0.0.1:0\"\napi_key",
        "listen = \"0.0.0.0:0\"\napi_key",
    );
    site.write_config(&open);
    let errors = match Config::load(Some(&site.config_path())) {
        Ok(_) => panic!("an open admin listener without a key was accepted"),
        Err(errors) => errors.to_string(),
    };
    assert!(
        errors.contains("admin.listen") && errors.contains("needs admin.api_key"),
        "{errors}"
    );
    let line = open
        .lines()
        .position(|l| l.contains("0.0.0.0:0"))
        .map(|i| i + 1)
        .expect("the line");
    assert!(
        errors.contains(&format!(":{line}:")),
        "names the line {line}: {errors}"
    );

    site.write_config(
        &config_text("k", ECHO).replace("\"127.0.0.1:0\"\napi_key", "\"0.0.0.0:0\"\napi_key"),
    );
    assert!(
        Config::load(Some(&site.config_path())).is_ok(),
        "with a key it loads"
    );
}

// ---- audit ------------------------------------------------------------------------------------

/// `proxycache run` on a site, killed by its pid on drop.
struct Binary {
    child: Child,
    stderr_path: PathBuf,
    admin: SocketAddr,
}

impl Binary {
    async fn spawn(site: &Site, rest: &str) -> Binary {
        let port = free_port();
        let mut admin_port = free_port();
        while admin_port == port {
            admin_port = free_port();
        }
        let text = config_text("", rest)
            .replace(
                "listen = [\"127.0.0.1:0\"]",
                &format!("listen = [\"127.0.0.1:{port}\"]"),
            )
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{admin_port}\""),
            );
        site.write_config(&text);
        let (child, stderr_path) = site.spawn_run();
        let mut bin = Binary {
            child,
            stderr_path,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        };
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            if let Some(status) = bin.child.try_wait().expect("try_wait") {
                panic!("proxycache exited early with {status}:\n{}", bin.stderr());
            }
            if try_send(bin.admin, empty(req("GET", "/status")))
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return bin;
            }
            assert!(
                Instant::now() < deadline,
                "the admin API did not answer within {EVENTUALLY:?}:\n{}",
                bin.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The `admin_audit` lines logged so far.
    fn audit_lines(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains("admin_audit"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_are_audited_in_the_log() {
    let site = Site::new("audit");
    site.write_mod("greeter", GREETER);
    let bin = Binary::spawn(&site, ECHO).await;

    let expect = [
        ("PUT", "/mods/audited", tagger("audited", "1"), 200),
        (
            "PUT",
            "/mods/refused",
            BROKEN.replace("mod broken", "mod refused"),
            400,
        ),
        ("DELETE", "/mods/audited", String::new(), 200),
        ("DELETE", "/mods/audited", String::new(), 404),
        ("POST", "/reload", String::new(), 200),
        ("POST", "/config/repair", String::new(), 200),
        ("GET", "/status", String::new(), 200),
        ("GET", "/mods", String::new(), 200),
    ];
    for (method, path, body, status) in &expect {
        let resp = admin(bin.admin, method, path, body).await;
        assert_eq!(resp.status, *status, "{method} {path}: {}", resp.text());
    }

    let wanted = [
        ("put_mod", "audited", "ok"),
        ("put_mod", "refused", "rejected: diagnostics"),
        ("delete_mod", "audited", "ok"),
        ("delete_mod", "audited", "rejected: no such module"),
        ("reload", "-", "ok"),
        ("config_repair", "config.toml", "ok"),
    ];
    let deadline = Instant::now() + EVENTUALLY;
    let lines = loop {
        let lines = bin.audit_lines();
        if lines.len() >= wanted.len() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "audit lines missing; stderr:\n{}",
            bin.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lines.len(),
        wanted.len(),
        "one line per mutating call, none for reads:\n{lines:#?}"
    );
    for ((action, target, result), line) in wanted.iter().zip(&lines) {
        for part in [
            format!("action=\"{action}\""),
            format!("object=\"{target}\""),
            format!("result=\"{result}\""),
            "caller=127.0.0.1:".to_owned(),
            "generation=".to_owned(),
        ] {
            assert!(line.contains(&part), "{part} in {line}");
        }
    }
}

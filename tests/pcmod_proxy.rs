//! pcmod over real sockets (issue 3, acceptance 2 and 3): what modules do to requests
//! and responses as the upstream and the client see them — headers, `respond`,
//! `forward`, `ctx` across modules in priority order, the operators, interpolation,
//! `[mods.NAME]` overrides, the stdlib calls — and what a module fault or a broken
//! module does. Also: the shipped `mods/` load with the shipped `config.toml`, and every
//! `examples/*/config.toml` passes `proxycache check` and does what its comments say.
//!
//! Each test writes its modules into a fresh temp folder, points `scripts.dir` at it and
//! starts proxycache in-process on 127.0.0.1:0; the CLI tests run the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use proxycache::server::{ServerError, ServerHandle};
use proxycache::Config;

// ---- helpers ------------------------------------------------------------------------

/// A catch-all route to the built-in echo upstream.
const ECHO: &str =
    "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n";

/// How long a spawned `proxycache` may take to start, answer or exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A temp folder holding `config.toml` and `mods/`; removed on drop.
struct Site {
    dir: PathBuf,
}

impl Site {
    /// A fresh folder with `mods/NAME.pcmod` for every `(NAME, source)`.
    fn new(mods: &[(&str, &str)]) -> Site {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pcmod-proxy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mods")).expect("create the mods folder");
        for (name, source) in mods {
            std::fs::write(dir.join("mods").join(format!("{name}.pcmod")), source)
                .expect("write a module");
        }
        Site { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join("mods").join(format!("{name}.pcmod"))
    }

    /// A whole config: port 0, one worker, admin off, no file watching, modules from this site, and
    /// `rest` (upstreams, routes, `[mods.NAME]`). Also written to `config.toml`.
    fn config_text(&self, rest: &str) -> String {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
             [scripts]\ndir = '{}'\nwatch = false\n\n{rest}\n",
            self.dir.join("mods").display()
        );
        std::fs::write(self.config_path(), &text).expect("write config.toml");
        text
    }

    fn config(&self, rest: &str) -> Config {
        let text = self.config_text(rest);
        match Config::from_toml_str(&text, Some(&self.config_path()), &self.dir) {
            Ok(config) => config,
            Err(errors) => panic!("test config does not load:\n{errors}\n--- config ---\n{text}"),
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// proxycache running in-process; shutdown begins on drop.
struct Px {
    addr: std::net::SocketAddr,
    handle: Option<ServerHandle>,
    _site: Option<Site>,
}

impl Drop for Px {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.begin_shutdown();
        }
    }
}

fn start_config(config: Config, site: Option<Site>) -> Px {
    match proxycache::start(config) {
        Ok(handle) => Px {
            addr: handle.local_addr(),
            handle: Some(handle),
            _site: site,
        },
        Err(e) => panic!("proxycache does not start: {e}"),
    }
}

/// Starts proxycache with `mods` and the rest of the config.
fn start(mods: &[(&str, &str)], rest: &str) -> Px {
    let site = Site::new(mods);
    let config = site.config(rest);
    start_config(config, Some(site))
}

/// Starts proxycache expecting the modules to fail; returns the diagnostics.
fn start_fails(mods: &[(&str, &str)], rest: &str) -> (Site, Vec<proxycache::script::Diagnostic>) {
    let site = Site::new(mods);
    let config = site.config(rest);
    match proxycache::start(config) {
        Err(ServerError::Modules(diags)) => (site, diags),
        Err(other) => panic!("expected module errors, got: {other}"),
        Ok(handle) => {
            handle.begin_shutdown();
            panic!("proxycache started although a module is broken");
        }
    }
}

/// Every value of a response header, in order.
fn all(resp: &Resp, name: &str) -> Vec<String> {
    resp.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Every value of a header the upstream received, in order.
fn all_seen(got: &Recorded, name: &str) -> Vec<String> {
    got.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A header as the built-in echo reports the upstream got it (`None` when absent).
fn echoed(resp: &Resp, name: &str) -> Option<String> {
    let json = resp.json();
    match &json["headers"][name] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut builder = req("GET", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, empty(builder)).await
}

fn assert_request_id(resp: &Resp) -> String {
    let id = resp
        .request_id()
        .unwrap_or_else(|| panic!("x-request-id missing on {} {:?}", resp.status, resp.text()));
    assert!(!id.is_empty(), "x-request-id is empty");
    // `-` is what stands in while the pipeline holds the request's id: it must never
    // reach a client.
    assert_ne!(id, "-", "the stand-in id reached the client");
    id
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `proxycache` binary to completion (killed after `PROCESS_TIMEOUT`).
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxycache"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxycache");
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        match child.try_wait().expect("wait for proxycache") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("proxycache {args:?} still running after {PROCESS_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().expect("collect proxycache output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- headers --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_set_add_remove_are_what_the_upstream_sees() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let module = r##"
mod headers {
  on request {
    set req.header["x-set"] = "one"
    set req.header["x-replaced"] = "new"
    add req.header["x-multi"] = "second"
    add req.header["x-added"] = "only"
    remove req.header["x-secret"]
  }
}
"##;
    let px = start(
        &[("headers", module)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    let resp = get_with(
        px.addr,
        "/h",
        &[
            ("x-replaced", "old"),
            ("x-multi", "first"),
            ("x-secret", "s3cr3t"),
            ("x-kept", "k"),
        ],
    )
    .await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let got = up.last().expect("the upstream saw the request");
    assert_eq!(all_seen(&got, "x-set"), ["one"]);
    assert_eq!(
        all_seen(&got, "x-replaced"),
        ["new"],
        "set replaces every value"
    );
    assert_eq!(
        all_seen(&got, "x-multi"),
        ["first", "second"],
        "add appends"
    );
    assert_eq!(all_seen(&got, "x-added"), ["only"]);
    assert!(got.header("x-secret").is_none(), "remove drops the header");
    assert_eq!(
        got.header("x-kept").as_deref(),
        Some("k"),
        "other headers pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_set_add_remove_are_what_the_client_sees() {
    let up = Upstream::start(
        "app",
        Behavior::echo()
            .with_header("x-powered-by", "php/5")
            .with_header("x-up", "a")
            .with_header("x-frame-options", "SAMEORIGIN"),
    )
    .await;
    let module = r##"
mod headers {
  on response {
    set resp.header["x-frame-options"] = "DENY"
    add resp.header["x-up"] = "b"
    remove resp.header["x-powered-by"]
    set resp.header["x-seen-status"] = "$status"
    set resp.header["x-seen-upstream-header"] = "${$resp.header["x-up"]}"
  }
}
"##;
    let px = start(
        &[("headers", module)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    let resp = get(px.addr, "/r").await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(all(&resp, "x-frame-options"), ["DENY"], "set replaces");
    assert_eq!(all(&resp, "x-up"), ["a", "b"], "add appends");
    assert!(resp.header("x-powered-by").is_none(), "remove drops it");
    assert_eq!(resp.header("x-seen-status").as_deref(), Some("200"));
    assert_eq!(resp.header("x-seen-upstream-header").as_deref(), Some("a"));
    assert_eq!(resp.server(), "app", "the body is the upstream's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_go_through_the_response_phase() {
    // As nginx's `add_header ... always`: a security header or CORS module's headers
    // are on a 502 from a dead upstream, a 504, and a 404 with no route, too (they went
    // out without them).
    let slow = Upstream::start("slow", Behavior::slow(2_000)).await;
    let module = r##"
mod headers {
  on response {
    set resp.header["x-frame-options"] = "DENY"
    set resp.header["x-seen-status"] = "$status"
  }
}
"##;
    let px = start(
        &[("headers", module)],
        &format!(
            "[upstreams.dead]\nservers = [\"{}\"]\n\n\
             [upstreams.slow]\nservers = [\"{}\"]\nresponse_timeout = \"300ms\"\n\n\
             [[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
             [[routes]]\npath_prefix = \"/slow\"\nupstream = \"slow\"\n",
            dead_addr(),
            slow.addr
        ),
    );

    for (path, status) in [("/dead/x", 502), ("/slow/x", 504), ("/nowhere", 404)] {
        let resp = get(px.addr, path).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        assert_eq!(
            resp.header("x-frame-options").as_deref(),
            Some("DENY"),
            "{path}"
        );
        let seen = status.to_string();
        assert_eq!(
            resp.header("x-seen-status").as_deref(),
            Some(seen.as_str()),
            "{path}"
        );
        assert_request_id(&resp);
        assert!(
            resp.text().contains("request id:"),
            "{path}: the error's own body"
        );
    }
}

// ---- respond and forward ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_answers_without_the_upstream_and_stops_later_modules() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let gate = r##"
mod gate {
  priority 10
  on request {
    if $path starts_with "/blocked" {
      respond 403 "no entry for $path\n" {
        "x-reason": "policy",
        "cache-control": "no-store",
      }
    }
    if $path == "/empty" {
      respond 204
    }
  }
}
"##;
    // Would answer 418 to everything if its request phase ever ran after `gate`'s respond.
    let teapot = r##"
mod teapot {
  priority 20
  on request {
    if $path starts_with "/blocked" or $path == "/empty" {
      respond 418 "late\n"
    }
  }
}
"##;
    let px = start(
        &[("gate", gate), ("teapot", teapot)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    let resp = get(px.addr, "/blocked/x").await;
    assert_eq!(resp.status, 403, "body: {}", resp.text());
    assert_eq!(resp.text(), "no entry for /blocked/x\n");
    assert_eq!(resp.header("x-reason").as_deref(), Some("policy"));
    assert_eq!(resp.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8"),
        "a body without a content-type is text"
    );
    assert_eq!(resp.header("content-length").as_deref(), Some("24"));
    assert_request_id(&resp);

    let resp = get_with(px.addr, "/empty", &[("x-request-id", "client-id-123")]).await;
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
    assert_eq!(
        resp.request_id().as_deref(),
        Some("client-id-123"),
        "a valid incoming id is kept"
    );

    assert_eq!(
        up.requests(),
        0,
        "the upstream never saw an answered request"
    );
    let resp = get(px.addr, "/open").await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests(), 1, "other requests still reach it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_sends_the_request_to_another_upstream() {
    let main = Upstream::start("main", Behavior::echo()).await;
    let other = Upstream::start("other", Behavior::echo()).await;
    let module = r##"
mod router {
  on request {
    if $req.header["x-to"] == "other" {
      set req.header["x-forwarded-by-module"] = "router"
      forward "other" { timeout: 10s, retries: 0 }
    }
  }
  on response {
    set resp.header["x-upstream"] = "$upstream"
  }
}
"##;
    let rest = format!(
        "[upstreams.main]\nservers = [\"{}\"]\n\n[upstreams.other]\nservers = [\"{}\"]\n\n\
         [[routes]]\nupstream = \"main\"\n",
        main.addr, other.addr
    );
    let px = start(&[("router", module)], &rest);

    let resp = get(px.addr, "/a").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.server(), "main");
    assert_eq!(resp.header("x-upstream").as_deref(), Some("main"));

    let resp = get_with(px.addr, "/b?q=1", &[("x-to", "other")]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.server(), "other");
    assert_eq!(resp.header("x-upstream").as_deref(), Some("other"));
    let got = other.last().expect("the other upstream saw the request");
    assert_eq!(got.uri, "/b?q=1");
    assert_eq!(
        got.header("x-forwarded-by-module").as_deref(),
        Some("router")
    );
    assert_eq!((main.requests(), other.requests()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_an_unknown_literal_upstream_is_a_load_error() {
    let module = "mod router {\n  on request {\n    forward \"nowhere\"\n  }\n}\n";
    let (site, diags) = start_fails(&[("router", module)], ECHO);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!(d.file, site.module_path("router").display().to_string());
    assert_eq!((d.line, d.col), (3, 13));
    assert!(
        d.message.contains("unknown upstream \"nowhere\""),
        "{}",
        d.message
    );
}

// ---- ctx and order ------------------------------------------------------------------------

/// `zeta` runs before `alpha` by priority (not by name); each records itself in `ctx`.
const ZETA: &str = r##"
mod zeta {
  priority 10
  on request {
    set ctx.x = "from-zeta"
    set ctx.order = "${$ctx.order}zeta,"
  }
  on response {
    set ctx.back = "${$ctx.back}zeta,"
    set resp.header["x-response-order"] = $ctx.back
  }
}
"##;
const ALPHA: &str = r##"
mod alpha {
  priority 20
  on request {
    set ctx.order = "${$ctx.order}alpha,"
    set req.header["x-from-ctx"] = "x=$ctx.x"
    set req.header["x-request-order"] = $ctx.order
  }
  on response {
    set ctx.back = "${$ctx.back}alpha,"
    set resp.header["x-response-order"] = $ctx.back
  }
}
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_carries_values_in_priority_order_and_responses_run_in_reverse() {
    let px = start(&[("alpha", ALPHA), ("zeta", ZETA)], ECHO);

    let resp = get(px.addr, "/").await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(echoed(&resp, "x-from-ctx").as_deref(), Some("x=from-zeta"));
    assert_eq!(
        echoed(&resp, "x-request-order").as_deref(),
        Some("zeta,alpha,")
    );
    assert_eq!(
        resp.header("x-response-order").as_deref(),
        Some("alpha,zeta,"),
        "the response phase runs in reverse priority order"
    );

    // ctx is per request: a second request starts empty.
    let resp = get(px.addr, "/").await;
    assert_eq!(
        echoed(&resp, "x-request-order").as_deref(),
        Some("zeta,alpha,")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_override_in_config_toml_reorders_modules() {
    let rest = format!("{ECHO}\n[mods.zeta]\npriority = 30\n");
    let px = start(&[("alpha", ALPHA), ("zeta", ZETA)], &rest);

    let resp = get(px.addr, "/").await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(echoed(&resp, "x-request-order").as_deref(), Some("alpha,"));
    assert_eq!(
        echoed(&resp, "x-from-ctx").as_deref(),
        Some("x="),
        "zeta had not run yet"
    );
    assert_eq!(
        resp.header("x-response-order").as_deref(),
        Some("zeta,alpha,")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priorities_run_by_name() {
    let module = |name: &str| {
        format!(
            "mod {name} {{\n  on request {{\n    set ctx.order = \"${{$ctx.order}}{name},\"\n    \
             set req.header[\"x-order\"] = $ctx.order\n  }}\n}}\n"
        )
    };
    let (b, a) = (module("m_b"), module("m_a"));
    let px = start(&[("m_b", &b), ("m_a", &a)], ECHO);

    let resp = get(px.addr, "/").await;

    assert_eq!(echoed(&resp, "x-order").as_deref(), Some("m_a,m_b,"));
}

// ---- operators and interpolation -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_in_starts_with_and_interpolation() {
    let module = r##"
mod ops {
  config {
    methods: list<string> = ["GET", "HEAD"]
  }
  on request {
    if $req.header["user-agent"] contains "bot" {
      respond 403 "no bots\n"
    }
    # In a plain string `$` starts a variable: a regex's end anchor is written `\$`.
    if $path ~ "^/items/[0-9]+\$" {
      set req.header["x-regex"] = "match"
    } else {
      set req.header["x-regex"] = "no-match"
    }
    if $method in $config.methods {
      set req.header["x-in"] = "listed"
    } else if $method in ["PUT", "DELETE"] {
      set req.header["x-in"] = "literal-list"
    } else {
      set req.header["x-in"] = "unlisted"
    }
    if $path ~ """^/ITEMS/""" or $path ~ """(?i)^/items/\w+/$""" {
      set req.header["x-raw-regex"] = "match"
    }
    # Literal patterns (matched without the regex engine) mean what the regex means.
    if $path ~ "4x2/\$" and $path ~ "^/items/" and $path ~ "x" {
      set req.header["x-literal"] = "match"
    }
    if $path starts_with "/items/" and not ($path ends_with "/") {
      set req.header["x-prefix"] = "items"
    }
    let id = $req.query["id"]
    set req.header["x-interp"] = "path=$path id=$req.query["id"] len+1=${len(id) + 1} up=${upper($method)} nil=[$req.header["x-absent"]] cookie=$req.cookie["c"] esc=\$path"
  }
}
"##;
    let px = start(&[("ops", module)], ECHO);

    let resp = get_with(px.addr, "/items/42?id=abc", &[("cookie", "a=1; c=choc")]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(echoed(&resp, "x-regex").as_deref(), Some("match"));
    assert_eq!(echoed(&resp, "x-in").as_deref(), Some("listed"));
    assert_eq!(echoed(&resp, "x-prefix").as_deref(), Some("items"));
    assert_eq!(echoed(&resp, "x-raw-regex"), None);
    assert_eq!(echoed(&resp, "x-literal"), None);
    assert_eq!(
        echoed(&resp, "x-interp").as_deref(),
        Some("path=/items/42 id=abc len+1=4 up=GET nil=[] cookie=choc esc=$path")
    );

    let resp = send(px.addr, empty(req("DELETE", "/items/4x2/"))).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(echoed(&resp, "x-regex").as_deref(), Some("no-match"));
    assert_eq!(echoed(&resp, "x-in").as_deref(), Some("literal-list"));
    assert_eq!(echoed(&resp, "x-prefix"), None, "ends_with `/` excluded it");
    assert_eq!(echoed(&resp, "x-raw-regex").as_deref(), Some("match"));
    assert_eq!(echoed(&resp, "x-literal").as_deref(), Some("match"));

    let resp = send(px.addr, empty(req("POST", "/other"))).await;
    assert_eq!(echoed(&resp, "x-in").as_deref(), Some("unlisted"));
    assert_eq!(echoed(&resp, "x-prefix"), None);

    let resp = get_with(px.addr, "/items/1", &[("user-agent", "searchbot/2")]).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(), "no bots\n");
}

/// One byte that is not ASCII in a `Cookie` hid every cookie in it (the header was
/// read as text or skipped), so `$req.cookie["sid"]` was nil beside a `Jürgen`. Now
/// cookies are read byte-wise; a value that is not UTF-8 is text by the rule header
/// values are (`\xNN`), as is a decoded query parameter (unchanged: see docs/pcmod.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_that_is_not_utf8_hides_no_other() {
    let module = r#"mod cookies {
  on request {
    respond 200 "sid=$req.cookie["sid"] name=$req.cookie["name"] latin=$req.cookie["latin"] c=$req.query["c"]\n"
  }
}
"#;
    let px = start(&[("cookies", module)], ECHO);
    let raw = b"GET /?c=%ff%fe HTTP/1.1\r\nhost: localhost\r\n\
                cookie: sid=abc; name=J\xc3\xbcrgen; latin=J\xfcrgen\r\nconnection: close\r\n\r\n";
    let resp = raw_request(px.addr, raw).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(
        raw_body(&resp),
        "sid=abc name=J\u{fc}rgen latin=J\\xfcrgen c=\\xff\\xfe\n"
    );
}

// ---- config.toml overrides ---------------------------------------------------------------

const GREETER: &str = r##"
mod greeter {
  config {
    greeting: string       = "hello"
    times:    int          = 1
    paths:    list<string> = ["/greet"]
    wait:     duration     = 2s
  }
  on request {
    if $path in $config.paths {
      respond 200 "$config.greeting x${$config.times} wait=${$config.wait}\n"
    }
  }
}
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_defaults_apply_without_overrides() {
    let px = start(&[("greeter", GREETER)], ECHO);
    let resp = get(px.addr, "/greet").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello x1 wait=2s\n");
    assert_eq!(get(px.addr, "/hi").await.json()["upstream"], "builtin:echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_overrides_from_config_toml_change_behaviour() {
    let rest = format!(
        "{ECHO}\n[mods.greeter]\ngreeting = \"bonjour\"\ntimes = 3\npaths = [\"/hi\"]\nwait = \"250ms\"\n"
    );
    let px = start(&[("greeter", GREETER)], &rest);

    let resp = get(px.addr, "/hi").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "bonjour x3 wait=250ms\n");
    let resp = get(px.addr, "/greet").await;
    assert_eq!(
        resp.json()["path"],
        "/greet",
        "no longer one of `paths`: proxied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_false_in_config_toml_disables_a_module() {
    let rest = format!("{ECHO}\n[mods.greeter]\nenabled = false\n");
    let px = start(&[("greeter", GREETER)], &rest);

    let resp = get(px.addr, "/greet").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/greet", "the module did not answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_overrides_are_load_errors_naming_the_toml_key() {
    let rest = format!("{ECHO}\n[mods.greeter]\ntimes = \"three\"\nnope = 1\npriority = 2000\n");
    let (site, diags) = start_fails(&[("greeter", GREETER)], &rest);

    let text = std::fs::read_to_string(site.config_path()).expect("read config.toml");
    let line_of = |key: &str| {
        text.lines()
            .position(|l| l.starts_with(key))
            .map(|i| i as u32 + 1)
            .expect("key in config")
    };
    let config_file = site.config_path().display().to_string();
    let find = |key: &str| {
        diags
            .iter()
            .find(|d| d.message.starts_with(&format!("mods.greeter.{key}:")))
            .unwrap_or_else(|| panic!("no diagnostic for {key}: {diags:#?}"))
    };
    let times = find("times");
    assert_eq!(times.file, config_file);
    assert_eq!(times.line, line_of("times ="));
    assert!(
        times.message.contains("expected int, found string"),
        "{}",
        times.message
    );
    let nope = find("nope");
    assert_eq!(nope.line, line_of("nope ="));
    assert!(
        nope.message.contains("has no config field `nope`"),
        "{}",
        nope.message
    );
    let hint = nope.hint.as_deref().unwrap_or("");
    assert!(
        hint.contains("greeting") && hint.contains("enabled, priority"),
        "{hint}"
    );
    let priority = find("priority");
    assert!(
        priority.message.contains("0..=1000"),
        "{}",
        priority.message
    );
    let in_config: Vec<_> = diags.iter().filter(|d| d.file == config_file).collect();
    assert_eq!(in_config.len(), 3, "{diags:#?}");
}

/// A bad `[mods.NAME]` value is one error about that key; the module's own uses of its
/// (declared) fields must not turn into "unknown config field" errors as well.
#[test]
fn bad_overrides_do_not_cascade_into_unknown_field_errors() {
    let rest = format!("{ECHO}\n[mods.greeter]\ntimes = \"three\"\n");
    let (site, diags) = start_fails(&[("greeter", GREETER)], &rest);
    let module = site.module_path("greeter").display().to_string();
    let spurious: Vec<String> = diags
        .iter()
        .filter(|d| d.file == module)
        .map(|d| d.to_string())
        .collect();
    assert!(
        spurious.is_empty(),
        "errors blamed on the module, whose fields are all declared:\n{}",
        spurious.join("\n")
    );
    assert_eq!(diags.len(), 1, "{diags:#?}");
}

// ---- stdlib ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_after_the_burst() {
    let up = Upstream::start("app", Behavior::echo()).await;
    // One token a minute: nothing refills while the test runs, however slow the machine.
    let module = r##"
mod limiter {
  on request {
    let rl = std.rate_limit(key: "user:${$req.header["x-user"]}", rate: 1, burst: 3, per: 1m)
    if not rl.allowed {
      respond 429 "slow down\n" { "retry-after": "${rl.retry_after}" }
    }
    set req.header["x-remaining"] = "${rl.remaining}"
  }
}
"##;
    let px = start(
        &[("limiter", module)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    for expected in ["2", "1", "0"] {
        let resp = get_with(px.addr, "/", &[("x-user", "ann")]).await;
        assert_eq!(resp.status, 200, "within the burst: {}", resp.text());
        let got = up.last().expect("the upstream saw it");
        assert_eq!(got.header("x-remaining").as_deref(), Some(expected));
    }
    let resp = get_with(px.addr, "/", &[("x-user", "ann")]).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.text(), "slow down\n");
    let retry: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a numeric retry-after");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_request_id(&resp);
    assert_eq!(
        up.requests(),
        3,
        "the refused request never reached the upstream"
    );

    let resp = get_with(px.addr, "/", &[("x-user", "bob")]).await;
    assert_eq!(resp.status, 200, "another key has its own bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_with_captures_changes_the_path_the_upstream_sees() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let module = r##"
mod rewrite {
  on request {
    let from = $path
    if std.url_rewrite(pattern: """^/v1/users/([0-9]+)$""", replacement: "/users/\$1") {
      set req.header["x-rewritten"] = "numbered from $path"
      set req.header["x-original"] = from
      next
    }
    if std.url_rewrite(pattern: "^/v1/(?P<rest>.*)\$", replacement: """/${rest}""") {
      set req.header["x-rewritten"] = "named"
    }
  }
}
"##;
    let px = start(
        &[("rewrite", module)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    get(px.addr, "/v1/users/42?fields=name").await;
    let got = up.last().expect("the upstream saw it");
    assert_eq!(got.uri, "/users/42?fields=name", "rewritten, query kept");
    assert_eq!(
        got.header("x-rewritten").as_deref(),
        Some("numbered from /users/42")
    );
    assert_eq!(got.header("x-original").as_deref(), Some("/v1/users/42"));

    get(px.addr, "/v1/orders/7/items").await;
    let got = up.last().expect("the upstream saw it");
    assert_eq!(got.uri, "/orders/7/items");
    assert_eq!(got.header("x-rewritten").as_deref(), Some("named"));

    get(px.addr, "/v2/users/42").await;
    let got = up.last().expect("the upstream saw it");
    assert_eq!(got.uri, "/v2/users/42", "no match: unchanged");
    assert!(got.header("x-rewritten").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_inject_sets_the_id_upstream_and_on_the_response() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let module = "mod rid {\n  on request {\n    std.request_id.inject()\n  }\n}\n";
    let px = start(
        &[("rid", module)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    let resp = get(px.addr, "/").await;
    let id = assert_request_id(&resp);
    assert_eq!(id.len(), 36, "a fresh UUID: {id}");
    let got = up.last().expect("the upstream saw it");
    assert_eq!(
        got.header("x-request-id"),
        Some(id.clone()),
        "the same id upstream"
    );

    let resp = get(px.addr, "/").await;
    assert_ne!(assert_request_id(&resp), id, "every request has its own id");

    let resp = get_with(px.addr, "/", &[("x-request-id", "lb-7f3a.1")]).await;
    assert_eq!(
        resp.request_id().as_deref(),
        Some("lb-7f3a.1"),
        "a valid incoming id is kept"
    );
    let got = up.last().expect("the upstream saw it");
    assert_eq!(all_seen(&got, "x-request-id"), ["lb-7f3a.1"]);

    let resp = get_with(px.addr, "/", &[("x-request-id", "bad id with spaces")]).await;
    let fresh = assert_request_id(&resp);
    assert_eq!(
        fresh.len(),
        36,
        "an invalid incoming id is replaced: {fresh}"
    );
    let got = up.last().expect("the upstream saw it");
    assert_eq!(all_seen(&got, "x-request-id"), [fresh]);
}

/// docs/pcmod.md's `ip_allow` (nginx's `allow ...; deny all;`), the allow-list from
/// `[mods.ip_allow]`: a request from 127.0.0.1 passes when a range holds it and gets 403
/// when none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_in_lets_in_or_refuses_the_client_by_the_ranges_in_config_toml() {
    let module = include_str!("fixtures/pcmod/ok/ip_allow.pcmod");
    let with_allow = |list: &str| format!("{ECHO}\n[mods.ip_allow]\nallow = {list}\n");

    // The default, 127.0.0.1/32.
    let px = start(&[("ip_allow", module)], ECHO);
    let resp = get(px.addr, "/in").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["path"], "/in");

    for allowed in [
        r#"["10.0.0.0/8", "127.0.0.0/8"]"#,
        r#"["::1", "127.0.0.1"]"#,
        r#"["::ffff:127.0.0.0/104"]"#,
        r#"["0.0.0.0/0"]"#,
    ] {
        let px = start(&[("ip_allow", module)], &with_allow(allowed));
        let resp = get(px.addr, "/in").await;
        assert_eq!(resp.status, 200, "allow = {allowed}: {}", resp.text());
    }
    for refused in [
        r#"["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]"#,
        r#"["127.0.0.2", "::1", "::/0"]"#,
        "[]",
    ] {
        let px = start(&[("ip_allow", module)], &with_allow(refused));
        let resp = get(px.addr, "/in").await;
        assert_eq!(resp.status, 403, "allow = {refused}");
        assert_eq!(resp.text(), "forbidden\n");
    }
}

/// A range in `[mods.NAME]` that does not parse stops the load (it would otherwise
/// refuse, or let in, every request), naming the range; the proxy does not start.
#[test]
fn ip_in_with_a_bad_range_from_config_toml_is_a_load_error() {
    let module = include_str!("fixtures/pcmod/ok/ip_allow.pcmod");
    let rest = format!("{ECHO}\n[mods.ip_allow]\nallow = [\"10.0.0.0/8\", \"127.0.0.1/33\"]\n");
    let (site, diags) = start_fails(&[("ip_allow", module)], &rest);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!(d.file, site.module_path("ip_allow").display().to_string());
    assert!(
        d.message.starts_with(
            "argument `ranges` of `ip_in`: \"127.0.0.1/33\" is not an IP address or CIDR range"
        ),
        "{}",
        d.message
    );
    assert!(
        d.hint.as_deref().unwrap_or("").contains("`[mods.NAME]`"),
        "{:?}",
        d.hint
    );
}

/// A list made per request is parsed per call: a bad range in it is a fault of that
/// request (500), a good one works; an `ip` that is nil or no address is in no range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_in_with_a_list_made_per_request_faults_on_a_bad_range() {
    let module = r#"mod nets {
  on request {
    if $path == "/real-ip" {
      respond 200 "${ip_in($req.header["x-real-ip"], ["0.0.0.0/0", "::/0"])}"
    }
    respond 200 "${ip_in($client_ip, ["10.0.0.0/8", $req.header["x-net"]])}"
  }
}
"#;
    let px = start(&[("nets", module)], ECHO);
    let resp = get_with(px.addr, "/", &[("x-net", "127.0.0.0/8")]).await;
    assert_eq!((resp.status.as_u16(), resp.text().as_str()), (200, "true"));
    let resp = get_with(px.addr, "/", &[("x-net", "192.168.0.0/16")]).await;
    assert_eq!((resp.status.as_u16(), resp.text().as_str()), (200, "false"));
    let resp = get_with(px.addr, "/", &[("x-net", "127.0.0.0/99")]).await;
    assert_eq!(resp.status, 500, "{}", resp.text());
    assert_request_id(&resp);
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 500, "a nil range is no range: {}", resp.text());

    for (value, want) in [
        (None, "false"),
        (Some("10.1.2.3"), "true"),
        (Some("10.1.2.3:80"), "false"),
    ] {
        let headers: Vec<(&str, &str)> = value.map(|v| ("x-real-ip", v)).into_iter().collect();
        let resp = get_with(px.addr, "/real-ip", &headers).await;
        assert_eq!(
            (resp.status.as_u16(), resp.text().as_str()),
            (200, want),
            "{value:?}"
        );
    }
}

// ---- runtime faults --------------------------------------------------------------------------

const FAULTY: &str = r##"
mod faulty {
  on request {
    if $path == "/arith" {
      let n = int($req.header["x-n"]) + 1
      set req.header["x-n-plus-one"] = "${n}"
    }
    if $path == "/limit" {
      let rl = std.rate_limit(key: $req.header["x-key"], rate: 100)
      set req.header["x-remaining"] = "${rl.remaining}"
    }
    if $path == "/forward" {
      forward $req.header["x-to"]
    }
    if $path == "/echo" {
      set req.header["x-said"] = "said: ${$req.query["q"]}"
    }
    if $path == "/setpath" {
      set req.path = $req.header["x-p"]
    }
  }
  on response {
    if $req.header["x-status"] != nil {
      set resp.status = int($req.header["x-status"])
    }
  }
}
"##;

/// A `float` field whose default is written as an int is a float at run time, as the
/// same value from config.toml is: `2 / 4` was an int division giving 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_field_with_an_int_default_divides_as_a_float() {
    let module = "mod half {\n  config {\n    f: float = 2\n    l: list<float> = [1]\n  }\n  on request {\n    respond 200 \"${$config.f / 4} ${$config.f / 4 == 0.5}\"\n  }\n}\n";
    let px = start(&[("half", module)], ECHO);
    let resp = get_with(px.addr, "/", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "0.5 true", "the default");
    let px = start(
        &[("half", module)],
        &format!("{ECHO}\n[mods.half]\nf = 2\n"),
    );
    let resp = get_with(px.addr, "/", &[]).await;
    assert_eq!(resp.text(), "0.5 true", "the same value from config.toml");
}

/// `==` agrees with `<` and `>`: numbers of any kind are equal when neither is less
/// (sizes as bytes, durations as seconds), and lists item by item by the same rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equality_agrees_with_ordering() {
    let module = r##"
mod eq {
  on request {
    let size = "${1KiB == 1024} ${1KiB < 2000} ${1KiB != 1024} ${1KiB == 1KB}"
    let time = "${1500ms == 1.5} ${2s == 2} ${1m == 60s}"
    let lists = "${[1, 2] == [1, 2.0]} ${[1, 2] == [1, 2, 3]} ${[[1KiB]] == [[1024]]} ${[1] == ["1"]}"
    let member = "${2.0 in [1, 2]} ${[1, 2.0] contains 1.0} ${1 == "1"}"
    respond 200 "${size}|${time}|${lists}|${member}"
  }
}
"##;
    let px = start(&[("eq", module)], ECHO);
    let resp = get_with(px.addr, "/", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        "true true false false|true true true|true false true false|true true false"
    );
}

/// An `or` chain longer than the old limit of 64 operands loads (it is built as a
/// balanced tree) and still tests its operands left to right, stopping at the first
/// true one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_or_chain_runs_left_to_right_and_stops_early() {
    let mut conditions: Vec<String> = (0..200).map(|i| format!("$path == \"/p{i}\"")).collect();
    // A fault after a true operand is never reached; one before it would be.
    conditions.insert(150, "$ctx.n + 1 > 0".to_owned());
    let module = format!(
        "mod chain {{\n  on request {{\n    if {} {{\n      respond 200 \"listed\"\n    }}\n  }}\n}}\n",
        conditions.join(" or ")
    );
    let all_and = format!(
        "mod chain2 {{\n  priority 1\n  on request {{\n    if {} {{\n      respond 200 \"all\"\n    }}\n  }}\n}}\n",
        (0..100).map(|_| "$method == \"PUT\"").collect::<Vec<_>>().join(" and ")
    );
    let px = start(&[("chain", &module), ("chain2", &all_and)], ECHO);
    let resp = get_with(px.addr, "/p7", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "listed");
    let resp = get_with(px.addr, "/p149", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "listed");
    let resp = get_with(px.addr, "/p150", &[]).await;
    assert_eq!(
        resp.status,
        500,
        "`$ctx.n + 1` (nil + 1) ran: {}",
        resp.text()
    );
    let resp = send(px.addr, empty(req("PUT", "/p1"))).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "all");
}

/// Adding durations that overflow (`[mods.NAME]` allows a bare number of seconds, up
/// to u64::MAX) is a fault like integer overflow: 500, not a panic that drops the
/// connection without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_durations_add_without_a_fault() {
    // `Duration + Duration` once panicked on overflow with a `[mods.NAME]` duration
    // of u64::MAX seconds. Such a value is now refused at load (at most a year: see
    // the golden fixture err/override_long_duration), and the largest one accepted
    // adds up fine.
    let module = "mod sum {\n  config {\n    d: duration = 1s\n  }\n  on request {\n    respond 200 \"${$config.d + $config.d}\"\n  }\n}\n";
    let px = start(
        &[("sum", module)],
        &format!("{ECHO}\n[mods.sum]\nd = \"365d\"\n"),
    );
    let resp = get_with(px.addr, "/", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "63072000s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_fault_answers_500_with_a_request_id_and_the_next_request_is_served() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let px = start(
        &[("faulty", FAULTY)],
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    );

    // Request phase faults: the upstream never sees these requests.
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("/arith", &[("x-n", "not a number")]),
        ("/arith", &[]),
        ("/limit", &[]),
        ("/forward", &[("x-to", "nowhere")]),
        // A decoded newline cannot go into a header value.
        ("/echo?q=a%0Ab", &[]),
        // A path with a query in it would make two queries.
        ("/setpath?c=2", &[("x-p", "/a?b=1")]),
    ];
    for (path, headers) in cases {
        let resp = get_with(px.addr, path, headers).await;
        assert_eq!(resp.status, 500, "{path} {headers:?}: {}", resp.text());
        let id = assert_request_id(&resp);
        assert!(
            resp.text().contains(&id),
            "the body names the request id: {}",
            resp.text()
        );
        assert!(
            !resp.text().contains("faulty.pcmod"),
            "no internals in the body"
        );
    }
    assert_eq!(up.requests(), 0);

    // The same paths, given what they need, are served normally.
    let resp = get_with(px.addr, "/arith", &[("x-n", "41")]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let got = up.last().expect("the upstream saw it");
    assert_eq!(got.header("x-n-plus-one").as_deref(), Some("42"));
    let resp = get_with(px.addr, "/limit", &[("x-key", "k")]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let resp = get_with(px.addr, "/echo?q=a%20b", &[]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let got = up.last().expect("the upstream saw it");
    assert_eq!(got.header("x-said").as_deref(), Some("said: a b"));
    assert_eq!(up.requests(), 3);
    // `%` decodes only before two hex digits (`%+a` once became a control byte).
    for (query, said) in [
        ("q=%+a", "said: % a"),
        ("q=%-1", "said: %-1"),
        ("q=%4a%4A", "said: JJ"),
    ] {
        let resp = get_with(px.addr, &format!("/echo?{query}"), &[]).await;
        assert_eq!(resp.status, 200, "{query}: {}", resp.text());
        let got = up.last().expect("the upstream saw it");
        assert_eq!(got.header("x-said").as_deref(), Some(said), "{query}");
    }
    let resp = get_with(px.addr, "/setpath?c=2", &[("x-p", "/a")]).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(up.last().expect("seen").uri, "/a?c=2");

    // Response phase faults: a status out of range or not a number.
    for bad in ["42", "teapot"] {
        let resp = get_with(px.addr, "/x", &[("x-status", bad)]).await;
        assert_eq!(resp.status, 500, "x-status {bad}: {}", resp.text());
        assert_request_id(&resp);
    }
    let resp = get_with(px.addr, "/x", &[("x-status", "201")]).await;
    assert_eq!(resp.status, 201, "a valid status is applied");
    let resp = get(px.addr, "/x").await;
    assert_eq!(resp.status, 200);
}

/// The 500 of a fault is logged with the module, its file and the statement's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_fault_is_logged_with_module_file_and_line() {
    let site = Site::new(&[("faulty", FAULTY)]);
    site.config_text(&format!("[log]\naccess = false\n\n{ECHO}"));
    let config = site.config_path().display().to_string();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_proxycache"))
            .args(["run", "--config", &config])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxycache"),
    );
    let stderr = child.0.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The line `pred` picks, and the lines before it since the last call.
    let wait_for_after = |what: &str, pred: &dyn Fn(&str) -> bool| -> (String, Vec<String>) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return (line, seen),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no log line with {what}; saw:\n{}", seen.join("\n"));
    };
    let wait_for = |what: &str, pred: &dyn Fn(&str) -> bool| wait_for_after(what, pred).0;

    let serving = wait_for("`proxycache serving`", &|l| {
        l.contains("proxycache serving")
    });
    let port: u16 = serving
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {serving:?}"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let resp = get_with(addr, "/arith", &[("x-n", "zzz")]).await;
    assert_eq!(resp.status, 500);
    let id = assert_request_id(&resp);

    let line = wait_for("`module failed`", &|l| l.contains("module failed"));
    let file = site.module_path("faulty").display().to_string();
    assert!(line.contains("module=faulty"), "names the module: {line}");
    assert!(line.contains(&file), "names the file: {line}");
    assert!(
        line.contains("line=5"),
        "names the line of the `let`: {line}"
    );
    assert!(
        line.contains("cannot use `+` on nil and int"),
        "says what failed: {line}"
    );
    assert!(line.contains(&id), "carries the request id: {line}");

    let resp = get_with(addr, "/arith", &[("x-n", "1")]).await;
    assert_eq!(resp.status, 200, "the next request is served");

    // One fault, one line: the proxy's `request failed` WARN repeated the ERROR above
    // for every fault. A second fault's line ends the first one's lines.
    let resp = get_with(addr, "/arith", &[("x-n", "zzz")]).await;
    assert_eq!(resp.status, 500);
    let (_, between) = wait_for_after("a second `module failed`", &|l| l.contains("module failed"));
    assert!(
        !between
            .iter()
            .any(|l| l.contains(&id) || l.contains("request failed")),
        "no second line for the first fault: {between:?}"
    );
}

/// A child process killed (and reaped) when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- broken modules ------------------------------------------------------------------------

const BROKEN: &str = "mod broken {\n  on request {\n    set req.header[\"x\"] = $nope\n  }\n}\n";

#[test]
fn a_broken_module_stops_start_with_positioned_diagnostics() {
    let (site, diags) = start_fails(&[("broken", BROKEN)], ECHO);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(
        diags[0].file,
        site.module_path("broken").display().to_string()
    );
    assert_eq!((diags[0].line, diags[0].col), (3, 27));
    assert!(
        diags[0].message.contains("unknown variable `$nope`"),
        "{}",
        diags[0].message
    );
}

#[test]
fn proxycache_run_refuses_to_start_on_a_broken_module() {
    let site = Site::new(&[("broken", BROKEN)]);
    site.config_text(ECHO);
    let config = site.config_path().display().to_string();

    let (code, _, stderr) = run_binary(&["run", "--config", &config]);

    assert_ne!(code, Some(0), "run must fail; stderr:\n{stderr}");
    assert!(code.is_some(), "exited by itself, not by a signal");
    let at = format!(
        "{}:3:27: unknown variable `$nope`",
        site.module_path("broken").display()
    );
    assert!(
        stderr.contains(&at),
        "stderr names file:line:col:\n{stderr}"
    );
    assert!(
        stderr.contains("^^^^^"),
        "with a caret under the text:\n{stderr}"
    );
}

#[test]
fn proxycache_check_exits_1_with_the_module_diagnostics() {
    let site = Site::new(&[("broken", BROKEN)]);
    site.config_text(ECHO);
    let config = site.config_path().display().to_string();

    let (code, stdout, stderr) = run_binary(&["check", "--config", &config]);

    let at = format!(
        "{}:3:27: unknown variable `$nope`",
        site.module_path("broken").display()
    );
    assert_eq!(
        code,
        Some(1),
        "check must exit 1 on a broken module; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&at) || stdout.contains(&at),
        "check prints file:line:col; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

// ---- shipped mods/ and examples/ -----------------------------------------------------------

/// A shipped config file, loaded as `proxycache run --config PATH` would, then moved to
/// port 0 with one worker and the admin API off so tests never clash.
fn shipped_config(path: &Path, extra: &str) -> Config {
    let text = std::fs::read_to_string(path).expect("read the shipped config");
    let text = format!("{text}\n{extra}");
    let base = path.parent().expect("config has a folder");
    let mut config = match Config::from_toml_str(&text, Some(path), base) {
        Ok(config) => config,
        Err(errors) => panic!("{} does not load:\n{errors}", path.display()),
    };
    config.server.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    config.server.workers = 1;
    config.admin.listen = None;
    // Nothing may reload these from disk mid-test (a reload re-reads the file, ports
    // and overrides included).
    config.scripts.watch = false;
    config
}

#[test]
fn shipped_mods_load_with_the_shipped_config() {
    let config = shipped_config(&repo().join("config.toml"), "");
    assert_eq!(config.scripts.dir, repo().join("mods"));
    let loaded = match proxycache::script::load(&config) {
        Ok(loaded) => loaded,
        Err(diags) => panic!("{}", proxycache::script::diag::render_all(&diags)),
    };
    let names: Vec<&str> = loaded.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["security_headers", "request_id", "rate_limit"],
        "in run order"
    );

    let (code, stdout, stderr) = run_binary(&["check"]);
    assert_eq!(
        code,
        Some(0),
        "`proxycache check` in the repo:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_mods_add_request_id_and_security_headers_and_do_not_limit() {
    let px = start_config(shipped_config(&repo().join("config.toml"), ""), None);

    for _ in 0..50 {
        let resp = get(px.addr, "/hello?x=1").await;
        assert_eq!(
            resp.status,
            200,
            "rate_limit is off as shipped: {}",
            resp.text()
        );
        let id = assert_request_id(&resp);
        assert_eq!(
            echoed(&resp, "x-request-id"),
            Some(id),
            "the same id went upstream"
        );
        assert_eq!(
            resp.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(resp.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(
            resp.header("referrer-policy").as_deref(),
            Some("strict-origin-when-cross-origin")
        );
        assert!(
            resp.header("strict-transport-security").is_none(),
            "no HSTS over http"
        );
        assert!(resp.header("x-ratelimit-limit").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rate_limit_switched_on_in_config_toml_answers_429() {
    let extra = "[mods.rate_limit]\nenabled = true\nrate = 1\nburst = 2\nper = \"1h\"\n\n\
                 [mods.security_headers]\nframe_options = \"SAMEORIGIN\"\nreferrer_policy = \"\"\n\
                 hsts = \"max-age=60\"\n";
    let px = start_config(shipped_config(&repo().join("config.toml"), extra), None);

    for remaining in ["1", "0"] {
        let resp = get(px.addr, "/").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(resp.header("x-ratelimit-limit").as_deref(), Some("2"));
    }
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert!(resp
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_request_id(&resp);
    assert_eq!(
        resp.header("x-frame-options").as_deref(),
        Some("SAMEORIGIN"),
        "security headers also cover a module's own answer, as configured"
    );
    assert!(
        resp.header("referrer-policy").is_none(),
        "\"\" turns a header off"
    );
    assert!(
        resp.header("strict-transport-security").is_none(),
        "not over http"
    );

    let resp = get_with(px.addr, "/", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(
        resp.header("strict-transport-security").as_deref(),
        Some("max-age=60"),
        "HSTS for requests that came in over https"
    );
}

fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("read examples/")
        .filter_map(Result::ok)
        .map(|e| e.path().join("config.toml"))
        .filter(|p| p.is_file())
        .collect();
    configs.sort();
    assert!(configs.len() >= 4, "examples found: {configs:?}");
    configs
}

#[test]
fn every_example_passes_check_and_says_how_to_run_it() {
    let readme =
        std::fs::read_to_string(repo().join("examples/README.md")).expect("examples/README.md");
    for path in example_configs() {
        let name = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .expect("example folder name");
        let text = std::fs::read_to_string(&path).expect("read example config");
        let run_line = format!("# Run with: cargo run -- run --config examples/{name}/config.toml");
        assert_eq!(
            text.lines().next(),
            Some(run_line.as_str()),
            "{}",
            path.display()
        );
        assert!(
            readme.contains(&format!("[{name}]({name}/)")),
            "examples/README.md lists {name}"
        );

        let rel = format!("examples/{name}/config.toml");
        let (code, stdout, stderr) = run_binary(&["check", "--config", &rel]);
        assert_eq!(code, Some(0), "check {rel}:\n{stdout}\n{stderr}");

        // In-process too, so a failure shows every rendered diagnostic.
        let config = shipped_config(&path, "");
        assert_eq!(
            config.scripts.dir,
            path.with_file_name("mods"),
            "{rel}: mods/ beside it"
        );
        if let Err(diags) = proxycache::script::load(&config) {
            panic!("{rel}: {}", proxycache::script::diag::render_all(&diags));
        }
        let modules = std::fs::read_dir(path.with_file_name("mods"))
            .expect("example mods/")
            .count();
        assert!(modules > 0, "{rel} has modules");
    }
}

fn example(name: &str, extra: &str) -> Px {
    let mut config = shipped_config(&repo().join("examples").join(name).join("config.toml"), "");
    if !extra.is_empty() {
        let table: toml::Table = extra.parse().expect("override table");
        let entry = config.mods.entry(name.to_owned()).or_default();
        entry.extend(table);
    }
    start_config(config, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_api_key_gate() {
    // A long window, so no token comes back while the test runs.
    let px = example("api_key_gate", "per = \"1h\"");

    let resp = get(px.addr, "/api/items").await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("www-authenticate").as_deref(), Some("ApiKey"));
    let resp = get_with(px.addr, "/api/items", &[("x-api-key", "wrong")]).await;
    assert_eq!(resp.status, 401);

    // The commands of the example's comment, in its order: one request with the first
    // key, then the loop of eight with the second (200 x5, then 429 x3).
    let resp = get_with(px.addr, "/api/items", &[("x-api-key", "demo-key-1")]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp, "x-api-client").as_deref(), Some("demo-key-1"));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = get_with(px.addr, "/api/items", &[("x-api-key", "demo-key-2")]).await;
        statuses.push(resp.status);
        if resp.status == 200 {
            assert_eq!(echoed(&resp, "x-api-client").as_deref(), Some("demo-key-2"));
            assert!(resp.header("x-ratelimit-remaining").is_some());
        } else {
            assert!(resp
                .header("retry-after")
                .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    let resp = get_with(px.addr, "/api/items", &[("x-api-key", "demo-key-1")]).await;
    assert_eq!(resp.status, 200, "each key has its own bucket");
    assert_eq!(
        get(px.addr, "/public").await.status,
        200,
        "outside /api/ is not gated"
    );
}

/// What examples/cache_and_metrics/config.toml's comment shows, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_cache_and_metrics() {
    let px = example("cache_and_metrics", "");
    let resp = get(px.addr, "/static/app.js").await;
    assert_eq!(resp.header("x-cache").as_deref(), Some("MISS"));
    let resp = get(px.addr, "/static/app.js").await;
    assert_eq!(resp.header("x-cache").as_deref(), Some("HIT"));
    assert!(resp.header("age").is_some_and(|a| a.parse::<u64>().is_ok()));
    let resp = get_with(px.addr, "/static/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(resp.header("content-encoding").as_deref(), Some("gzip"));
    let metrics = get(px.addr, "/metrics").await.text();
    assert!(metrics.contains("proxycache_cache_hits_total"), "{metrics}");
    assert!(metrics.contains("proxycache_script_"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_canary() {
    let px = example("canary", "");

    let resp = get(px.addr, "/").await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("stable"));
    assert_eq!(echoed(&resp, "x-canary"), None);
    let resp = get_with(px.addr, "/", &[("x-canary", "1")]).await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("canary"));
    let resp = get_with(px.addr, "/", &[("cookie", "theme=dark; canary=1")]).await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("canary"));
    assert_eq!(echoed(&resp, "x-canary").as_deref(), Some("1"));
    let resp = get_with(px.addr, "/", &[("x-canary", "0")]).await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_maintenance() {
    let px = example("maintenance", "");
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("Down for maintenance"),
        "{}",
        resp.text()
    );
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("retry-after").as_deref(), Some("600"));
    assert_request_id(&resp);
    assert_eq!(
        get(px.addr, "/healthz").await.status,
        200,
        "health checks pass"
    );
    drop(px);

    let px = example("maintenance", "allow = [\"127.0.0.1\"]");
    assert_eq!(
        get(px.addr, "/").await.status,
        200,
        "an allowed client IP passes"
    );
    drop(px);

    let px = example("maintenance", "on = false");
    assert_eq!(get(px.addr, "/").await.status, 200, "off: everyone passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_path_rewrite() {
    let px = example("path_rewrite", "");

    let resp = get(px.addr, "/v1/users/42?fields=name").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/users/42");
    assert_eq!(resp.json()["query"], "fields=name");
    assert_eq!(
        echoed(&resp, "x-original-path").as_deref(),
        Some("/v1/users/42")
    );
    let resp = get(px.addr, "/v1/orders/7/items").await;
    assert_eq!(resp.json()["path"], "/orders/7/items");
    let resp = get(px.addr, "/v2/users/42").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), "API version not served: /v2/users/42\n");
    let resp = get(px.addr, "/health").await;
    assert_eq!(resp.json()["path"], "/health", "other paths pass unchanged");
}

/// The id a module made (`std.request_id.inject`) is the one on every answer the proxy
/// makes afterwards: a module's own `respond`, a fault in the response phase of that
/// answer, and a 502 from a dead upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_a_module_made_is_on_the_proxys_own_answers() {
    let module = r#"
mod ids {
  on request {
    std.request_id.inject()
    if $path == "/answer" {
      respond 200 "id=${$request_id}\n"
    }
  }
  on response {
    if $req.header["x-status"] != nil {
      set resp.status = int($req.header["x-status"])
    }
  }
}
"#;
    let px = start(
        &[("ids", module)],
        &format!(
            "[upstreams.dead]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"dead\"\n",
            dead_addr()
        ),
    );
    let resp = get(px.addr, "/answer").await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let id = assert_request_id(&resp);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(resp.text(), format!("id={id}\n"), "one id, read and sent");

    // A fault in the response phase of a module's own answer.
    let resp = get_with(px.addr, "/answer", &[("x-status", "teapot")]).await;
    assert_eq!(resp.status, 500, "body: {}", resp.text());
    let id = assert_request_id(&resp);
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let resp = get(px.addr, "/upstream").await;
    assert_eq!(resp.status, 502, "body: {}", resp.text());
    let id = assert_request_id(&resp);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert!(resp.text().contains(&id), "body: {}", resp.text());
}

// ---- the Lua examples: what their comments say -----------------------------------------

/// Example `name` with `[mods.MODULE]` overrides (TOML tables), and the listener on
/// `port` (0: any).
fn lua_example(name: &str, port: u16, overrides: &[(&str, &str)]) -> Px {
    lua_example_with(name, "", port, overrides)
}

/// `lua_example` with `extra` TOML added to the example's config.toml.
fn lua_example_with(name: &str, extra: &str, port: u16, overrides: &[(&str, &str)]) -> Px {
    let path = repo().join("examples").join(name).join("config.toml");
    let mut config = shipped_config(&path, extra);
    config.server.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    for (module, extra) in overrides {
        let table: toml::Table = extra.parse().expect("override table");
        config
            .mods
            .entry((*module).to_owned())
            .or_default()
            .extend(table);
    }
    start_config(config, None)
}

/// examples/lua_header_check/config.toml's commands, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_lua_header_check() {
    let px = lua_example("lua_header_check", 0, &[]);
    let valid = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2ln";
    let expired =
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJleHAiOjEwMDAwMDAwMDB9.c2ln";

    let resp = get(px.addr, "/api/items").await;
    assert_eq!(resp.status, 401, "no token: {}", resp.text());
    let resp = get_with(
        px.addr,
        "/api/items",
        &[("authorization", "Bearer nonsense")],
    )
    .await;
    assert_eq!(resp.status, 401, "not a JWT: {}", resp.text());
    let resp = get_with(px.addr, "/api/items", &[("authorization", valid)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp, "x-token-sub").as_deref(), Some("alice"));
    let resp = get_with(px.addr, "/api/items", &[("authorization", expired)]).await;
    assert_eq!(resp.status, 401, "expired in 2001: {}", resp.text());
    let resp = get_with(
        px.addr,
        "/api/items",
        &[("authorization", valid), ("x-token-sub", "mallory")],
    )
    .await;
    assert_eq!(
        echoed(&resp, "x-token-sub").as_deref(),
        Some("alice"),
        "a forged x-token-sub is replaced"
    );
    let resp = get_with(px.addr, "/public", &[("x-token-sub", "mallory")]).await;
    assert_eq!(resp.status, 200, "not checked outside /api/");

    // A `sub` with a CR in it (the client's text) cannot be a header value: 401, not
    // the 500 of a failed set_header. Payload: {"sub":"a\rb","exp":4102444800}.
    let cr =
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhDWIiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln";
    let resp = get_with(px.addr, "/api/items", &[("authorization", cr)]).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
}

/// examples/lua_ab_routing/config.toml's commands, in its order, and the split's
/// two ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_lua_ab_routing() {
    let px = lua_example("lua_ab_routing", 0, &[]);
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let group = resp
        .header("x-ab-group")
        .expect("x-ab-group on a new client");
    assert!(group == "a" || group == "b", "{group}");
    let cookie = resp
        .header("set-cookie")
        .expect("a new client gets a cookie");
    assert!(
        cookie.starts_with(&format!("ab={group}; Path=/; Max-Age=2592000")),
        "{cookie}"
    );
    let served = if group == "a" { "blue" } else { "green" };
    assert_eq!(resp.header("x-served-by").as_deref(), Some(served));

    let resp = get_with(px.addr, "/", &[("cookie", "ab=b")]).await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("green"));
    assert_eq!(
        resp.header("set-cookie"),
        None,
        "a known client: no new cookie"
    );
    let resp = get_with(px.addr, "/", &[("x-ab-group", "a")]).await;
    assert_eq!(resp.header("x-served-by").as_deref(), Some("blue"));
    let resp = get_with(px.addr, "/", &[("cookie", "ab=a")]).await;
    assert_eq!(echoed(&resp, "x-ab-group").as_deref(), Some("a"));
    // A header that names no group falls back to the cookie: the client stays.
    for bad in ["c", "A"] {
        let resp = get_with(px.addr, "/", &[("x-ab-group", bad), ("cookie", "ab=b")]).await;
        assert_eq!(
            resp.header("x-served-by").as_deref(),
            Some("green"),
            "{bad}"
        );
        assert_eq!(resp.header("set-cookie"), None, "{bad}");
    }
    drop(px);

    // The group's upstream is down: 502, as for any dead upstream (uncaught, the
    // failed forward was a 500).
    let dead = format!("[upstreams.dead]\nservers = [\"{}\"]\n", dead_addr());
    let px = lua_example_with(
        "lua_ab_routing",
        &dead,
        0,
        &[("lua_ab_routing", "b_upstream = \"dead\"")],
    );
    let resp = get_with(px.addr, "/", &[("cookie", "ab=b")]).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_request_id(&resp);
    let resp = get_with(px.addr, "/", &[("cookie", "ab=a")]).await;
    assert_eq!(resp.status, 200, "the other group is served");
    drop(px);

    for (percent, group, served) in [("0", "a", "blue"), ("100", "b", "green")] {
        let px = lua_example(
            "lua_ab_routing",
            0,
            &[("lua_ab_routing", &format!("b_percent = {percent}"))],
        );
        for _ in 0..5 {
            let resp = get_with(px.addr, "/", &[("cookie", "ab=unknown")]).await;
            assert_eq!(
                resp.header("x-ab-group").as_deref(),
                Some(group),
                "{percent}%"
            );
            assert_eq!(resp.header("x-served-by").as_deref(), Some(served));
            assert!(resp.header("set-cookie").is_some());
        }
    }
}

/// examples/lua_response_rewrite/config.toml's commands, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_lua_response_rewrite() {
    let px = lua_example("lua_response_rewrite", 0, &[]);
    let resp = get_with(px.addr, "/", &[("x-link", "http://app.internal:8000/docs")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        echoed(&resp, "x-link").as_deref(),
        Some("https://www.example.com/docs"),
        "{}",
        resp.text()
    );
    assert!(!resp.text().contains("app.internal"), "{}", resp.text());
    assert_eq!(resp.header("x-rewritten").as_deref(), Some("1"));
    let length = resp.header("content-length").expect("content-length");
    assert_eq!(
        length,
        resp.body.len().to_string(),
        "it follows the new body"
    );

    let resp = get(px.addr, "/").await;
    assert_eq!(resp.header("x-rewritten").as_deref(), Some("0"));

    // A body near max_bytes (1 MiB): the gsub over it stays within the default
    // instruction budget (it ran out at ~985 KB).
    let mut big = "x".repeat(1000 * 1000);
    big.push_str(" http://app.internal:8000/end");
    let resp = send(
        px.addr,
        req("POST", "/")
            .body(http_body_util::Full::new(bytes::Bytes::from(big)))
            .expect("request"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-rewritten").as_deref(), Some("1"));
    assert!(resp.text().contains("https://www.example.com/end"));

    let resp = send(
        px.addr,
        empty(req("HEAD", "/").header("x-link", "http://app.internal:8000/docs")),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-rewritten"), None, "HEAD: no body to rewrite");
    assert_eq!(
        resp.header("content-length"),
        None,
        "not the upstream's length: a GET's rewritten body may have another"
    );
}

/// examples/lua_auth_callout/config.toml's commands, in its order, then the auth
/// service gone: 503, failing closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_lua_auth_callout() {
    let port = free_port();
    let auth_url = format!("auth_url = \"http://127.0.0.1:{port}/_auth/check\"");
    let px = lua_example("lua_auth_callout", port, &[("lua_auth_callout", &auth_url)]);
    let resp = get(px.addr, "/orders").await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let resp = get_with(px.addr, "/orders", &[("authorization", "Bearer let-me-in")]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp, "x-auth-user").as_deref(), Some("alice"));
    let resp = get_with(
        px.addr,
        "/orders",
        &[
            ("authorization", "Bearer open-sesame"),
            ("x-auth-user", "root"),
        ],
    )
    .await;
    assert_eq!(echoed(&resp, "x-auth-user").as_deref(), Some("bob"));
    let resp = get_with(
        px.addr,
        "/admin/x",
        &[("authorization", "Bearer let-me-in")],
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    let resp = get_with(
        px.addr,
        "/admin/x",
        &[("authorization", "Bearer open-sesame")],
    )
    .await;
    assert_eq!(resp.status, 200, "bob is an admin: {}", resp.text());
    drop(px);

    // The stand-in switched off and nothing listening at auth_url.
    let dead = format!("auth_url = \"http://{}/_auth/check\"", dead_addr());
    let px = lua_example(
        "lua_auth_callout",
        0,
        &[
            ("lua_auth_callout", &dead),
            ("fake_auth", "enabled = false"),
        ],
    );
    let resp = get_with(px.addr, "/orders", &[("authorization", "Bearer let-me-in")]).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_request_id(&resp);
}

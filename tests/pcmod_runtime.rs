//! Run-time edges of module code over real sockets, pcmod and Lua side by side: what a
//! module puts into the request target (`url_encode`, `set req.query`/`set req.path`,
//! `req:set_query`/`req:set_path`), the log lines it writes with a client's text in
//! them, the host it sees over HTTP/2, `add` of a `Host`, `contains` with a missing
//! right side, and float division by zero.
//!
//! Each test writes its modules into a fresh site, starts proxycache in-process on
//! 127.0.0.1:0 in front of a recording upstream, and looks at what the upstream got.

mod common;

use common::*;

/// Starts proxycache with `mods` (inline Lua where a module has it) in front of `up`.
fn start(site: &Site, mods: &[(&str, &str)], up: &Upstream) -> Proxy {
    for (name, source) in mods {
        site.write_mod(name, source);
    }
    proxy_with(
        "workers = 1",
        &format!(
            "[scripts]\ndir = '{}'\nwatch = false\n\n{}",
            site.mods_dir().display(),
            app(&[up], "")
        ),
    )
}

/// The target the upstream got for the last request.
fn target(up: &Upstream) -> String {
    up.last().expect("the upstream saw the request").uri
}

// ---- what modules put into the target ---------------------------------------------

/// `$req.query` values are decoded; put back without `url_encode` they once changed
/// the query's meaning (a second parameter from `%26`), were cut at a `#`, or failed
/// the request (a space).
const ENCODE: &str = r#"
mod encode {
  on request {
    set req.query = "q=${url_encode($req.query["q"])}"
  }
}
"#;

/// The same without `url_encode`: the module's own `&` and `=` keep their meaning.
const TARGETS: &str = r#"
mod targets {
  on request {
    if $path == "/raw" {
      set req.query = "q=${$req.query["q"]}"
    } else if $path starts_with "/setpath" {
      set req.path = "/p/${$req.query["p"]}"
      set req.query = ""
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_encode_keeps_a_decoded_parameter_one_parameter() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("encode");
    let px = start(&site, &[("encode", ENCODE)], &up);
    for (sent, want) in [
        ("q=hello+world", "q=hello%20world"),
        ("q=a%26admin%3D1", "q=a%26admin%3D1"),
        ("q=x%23y", "q=x%23y"),
        ("q=caf%C3%A9%2F%3F%25", "q=caf%C3%A9%2F%3F%25"),
        ("q=plain-._~", "q=plain-._~"),
    ] {
        let resp = get(px.addr, &format!("/enc?{sent}")).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(target(&up), format!("/enc?{want}"), "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_query_and_set_path_encode_what_a_target_cannot_carry() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("targets");
    let px = start(&site, &[("targets", TARGETS)], &up);
    // Without `url_encode`, `&` and `=` keep their meaning (the module wrote them),
    // but nothing is cut short and nothing fails.
    for (sent, want) in [
        ("q=hello+world", "q=hello%20world"),
        ("q=x%23y", "q=x%23y"),
        ("q=a%0Ab%22%3C%3E", "q=a%0Ab%22%3C%3E"),
        ("q=caf%C3%A9", "q=caf%C3%A9"),
    ] {
        let resp = get(px.addr, &format!("/raw?{sent}")).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(target(&up), format!("/raw?{want}"), "{sent}");
    }
    for (sent, want) in [
        ("p=a%20b", "/p/a%20b"),
        ("p=caf%C3%A9", "/p/caf%C3%A9"),
        ("p=%7Bx%7D%0A", "/p/%7Bx%7D%0A"),
        ("p=a/./b", "/p/a/b"),
    ] {
        let resp = get(px.addr, &format!("/setpath?{sent}")).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(target(&up), want, "{sent}");
    }
    // `?` and `#` in a path are still a fault, not data.
    for sent in ["p=a%3Fb", "p=a%23b"] {
        let resp = get(px.addr, &format!("/setpath?{sent}")).await;
        assert_eq!(resp.status, 500, "{sent}: {}", resp.text());
    }
}

/// The docs' and fixtures' `path_rewrite` example builds its query with `url_encode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_rewrite_example_encodes_the_query_it_builds() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pcmod/ok/path_rewrite.pcmod"),
    )
    .expect("read the fixture");
    let site = Site::new("path-rewrite");
    let px = start(&site, &[("path_rewrite", &source)], &up);
    for (sent, want) in [
        ("q=Hello+World", "q=hello%20world"),
        ("q=a%26admin%3D1", "q=a%26admin%3D1"),
        ("q=x%23y", "q=x%23y"),
    ] {
        let resp = get(px.addr, &format!("/search/x?{sent}")).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(target(&up), format!("/search/x?{want}"), "{sent}");
    }
}

const LUA_TARGETS: &str = r#"
mod lua_targets {
  lua """
function on_request(req, ctx)
  if req.path == "/q" then
    req:set_query("q=" .. req:query_param("q"))
  elseif req.path == "/p" then
    req:set_path("/p/" .. req:query_param("p"))
  elseif req.path == "/qe" then
    -- docs/stdlib.md's Lua stand-in for url_encode
    local v = req:query_param("q")
    req:set_query("q=" .. (v:gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end)))
  end
end
"""
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_set_query_and_set_path_encode_what_a_target_cannot_carry() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("lua-targets");
    let px = start(&site, &[("lua_targets", LUA_TARGETS)], &up);
    for (sent, want) in [
        ("/q?q=hello+world", "/q?q=hello%20world"),
        ("/q?q=x%23y", "/q?q=x%23y"),
        ("/q?q=caf%C3%A9", "/q?q=caf%C3%A9"),
        ("/p?p=a%20b%C3%A9", "/p/a%20b%C3%A9?p=a%20b%C3%A9"),
        ("/qe?q=a%26admin%3D1+x%23y", "/qe?q=a%26admin%3D1%20x%23y"),
    ] {
        let resp = get(px.addr, sent).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(target(&up), want, "{sent}");
    }
    let resp = get(px.addr, "/p?p=a%23b").await;
    assert_eq!(resp.status, 500, "a `#` in a path is an error");
}

// ---- log lines --------------------------------------------------------------------

const SAYS: &str = r#"
mod says {
  on request {
    if $path == "/pcmod" {
      log warn "pcmod user said ${$req.query["q"]}"
    }
  }
}
"#;

const LUA_SAYS: &str = r#"
mod lua_says {
  lua """
function on_request(req, ctx)
  if req.path == "/lua" then
    log.warn("lua user said " .. req:query_param("q"))
  end
end
"""
}
"#;

/// A newline the client sent (decoded from `%0A`) is `\n` in the module's log line,
/// not the start of a line of the client's making; other controls likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_newline_cannot_forge_a_log_line() {
    log::capture();
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("says");
    let px = start(&site, &[("says", SAYS), ("lua_says", LUA_SAYS)], &up);
    let forged = "x%0AWARN%20forged-by-client%0D%1B%5B31m";
    for who in ["pcmod", "lua"] {
        let resp = get(px.addr, &format!("/{who}?q={forged}")).await;
        assert_eq!(resp.status, 200, "{who}: {}", resp.text());
        let lines = log::lines_with("forged-by-client");
        let said = format!("{who} user said x\\nWARN forged-by-client\\r\\x1b[31m");
        assert!(
            lines.iter().any(|l| l.contains(&said)),
            "{who}: one line with the newline escaped: {lines:?}"
        );
        assert!(
            lines.iter().all(|l| !l.starts_with("WARN forged")),
            "{who}: no line of the client's: {lines:?}"
        );
    }
}

// ---- the host modules see -------------------------------------------------------------

const HOSTS: &str = r#"
mod hosts {
  on request {
    set req.header["x-pcmod-host"] = "$host"
    set req.header["x-pcmod-host-header"] = "${$req.header["host"]}"
  }
}
"#;

const LUA_HOSTS: &str = r#"
mod lua_hosts {
  lua """
function on_request(req, ctx)
  req:set_header("x-lua-host", req.host or "nil")
  req:set_header("x-lua-host-header", req:header("host") or "nil")
end
"""
}
"#;

/// Over HTTP/2 modules see `:authority` with its port as `$host` and as the `Host`
/// header, as they see `Host` over HTTP/1.1 (they saw the host without its port, and
/// no `Host` header at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_see_the_same_host_over_http2_as_over_http1() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("hosts");
    let px = start(&site, &[("hosts", HOSTS), ("lua_hosts", LUA_HOSTS)], &up);
    let authority = format!("localhost:{}", px.addr.port());
    let h1 = empty(
        http::Request::builder()
            .uri("/host")
            .header("host", authority.as_str()),
    );
    let resp = send(px.addr, h1).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let h2 = empty(http::Request::builder().uri(format!("http://{authority}/host")));
    let resp = send_h2(px.addr, h2).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for (version, got) in up.all().iter().enumerate() {
        for name in [
            "x-pcmod-host",
            "x-pcmod-host-header",
            "x-lua-host",
            "x-lua-host-header",
            "host",
        ] {
            assert_eq!(
                got.header(name).as_deref(),
                Some(authority.as_str()),
                "{name} (request {version}: 0 is HTTP/1.1, 1 HTTP/2)"
            );
        }
        assert_eq!(got.headers.get_all("host").iter().count(), 1);
    }
}

// ---- add of a Host --------------------------------------------------------------------

/// `add` of `host` replaces it: two `Host` fields are a request an upstream may read
/// either way (RFC 9112 3.2 answers 400 to one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_of_host_never_sends_two_hosts() {
    let module = r#"
mod add_host {
  on request {
    if $path == "/pcmod" {
      add req.header["host"] = "pcmod.example"
    }
  }
}
"#;
    let lua_module = r#"
mod lua_add_host {
  lua """
function on_request(req, ctx)
  if req.path == "/lua" then
    req:add_header("Host", "lua.example")
  end
end
"""
}
"#;
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("add-host");
    let px = start(
        &site,
        &[("add_host", module), ("lua_add_host", lua_module)],
        &up,
    );
    for who in ["pcmod", "lua"] {
        let resp = get(px.addr, &format!("/{who}")).await;
        assert_eq!(resp.status, 200, "{who}: {}", resp.text());
        let got = up.last().expect("the upstream saw it");
        let hosts: Vec<_> = got.headers.get_all("host").iter().collect();
        assert_eq!(hosts.len(), 1, "{who}: one Host: {hosts:?}");
        assert_eq!(hosts[0], format!("{who}.example").as_str(), "{who}");
    }
}

// ---- operators --------------------------------------------------------------------

const CONTAINS: &str = r#"
mod contains_gate {
  on request {
    if $path == "/int" {
      if $req.header["x-s"] contains int($req.header["x-n"]) {
        respond 403 "int"
      }
    } else if $path contains $req.header["x-needle"] {
      respond 403 "needle"
    }
  }
}
"#;

/// A missing right side is false, as for `starts_with`: it once became `""`, which
/// every string contains, so the gate refused every request without the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contains_with_nil_on_the_right_is_false() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("contains");
    let px = start(&site, &[("contains_gate", CONTAINS)], &up);
    let resp = get(px.addr, "/admin").await;
    assert_eq!(resp.status, 200, "no needle: {}", resp.text());
    let resp = get_h(px.addr, "/admin", &[("x-needle", "adm")]).await;
    assert_eq!(resp.status, 403, "a needle that is there");
    let resp = get_h(px.addr, "/admin", &[("x-needle", "zzz")]).await;
    assert_eq!(resp.status, 200, "a needle that is not");
    // A number on the right of a string is a fault, not its text (`"a5" contains 5`
    // was true).
    let resp = get_h(px.addr, "/int", &[("x-s", "a5"), ("x-n", "5")]).await;
    assert_eq!(resp.status, 500, "{}", resp.text());
}

/// `1.0 / 0` and `10 % 0.0` are faults, as for ints: they once made `inf` and `NaN`
/// that went into a header as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_division_by_zero_is_a_fault() {
    let module = r#"
mod divide {
  on request {
    let d = int($req.header["x-d"])
    if $path == "/div" {
      set req.header["x-r"] = "${1.0 / d}"
    } else if $path == "/rem" {
      set req.header["x-r"] = "${10 % (d * 1.0)}"
    }
  }
}
"#;
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("divide");
    let px = start(&site, &[("divide", module)], &up);
    for path in ["/div", "/rem"] {
        let resp = get_h(px.addr, path, &[("x-d", "0")]).await;
        assert_eq!(resp.status, 500, "{path}: {}", resp.text());
        let resp = get_h(px.addr, path, &[("x-d", "4")]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    assert_eq!(
        up.requests(),
        2,
        "only the requests without a fault went on"
    );
    let r: Vec<_> = up.all().iter().filter_map(|g| g.header("x-r")).collect();
    assert_eq!(r, ["0.25", "2"]);
}

async fn get_h(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut builder = req("GET", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, empty(builder)).await
}

const LUA_OBS: &str = r#"
mod lua_obs {
  lua """
function on_request(req, ctx)
  log.warn("obs header", req:header("x-q"))
end
"""
}
"#;

/// A Lua string that is not UTF-8 (a header with an obs-text byte) is logged with what
/// it holds, not as the word `string` (the whole value was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_logs_bytes_that_are_not_utf8_instead_of_their_type() {
    log::capture();
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("obs");
    let px = start(&site, &[("lua_obs", LUA_OBS)], &up);
    let raw = raw_request(
        px.addr,
        b"GET /obs HTTP/1.1\r\nHost: a\r\nx-q: head\xfftail-obs-marker\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let lines = log::lines_with("obs header");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("head") && l.contains("tail-obs-marker")),
        "{lines:?}"
    );
}

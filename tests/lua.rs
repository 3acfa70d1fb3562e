//! Lua handlers over real sockets (issue 4's acceptance): a Lua module and pcmod
//! modules sharing `ctx` in priority order with `[mods.NAME]` config; `std.respond`,
//! `std.proxy.forward`, `std.http.request`, `req:body()` and `require`; the sandbox;
//! budgets, memory limits and errors ending only their own request; `std.shared`
//! across workers.
//!
//! Each test writes a site (config.toml + mods/) to a temp folder and starts proxycache
//! in-process; the log test runs the real binary to read what it prints.

mod common;

use std::time::Duration;

use common::*;

/// A site with `mods` (`NAME.pcmod` text) and `files` (other files under mods/, e.g.
/// `gate.lua`, `lib/util.lua`), serving `rest` (upstreams, routes, `[mods.*]`).
fn site(mods: &[(&str, &str)], files: &[(&str, &str)], server: &str, rest: &str) -> Site {
    let site = Site::new("lua");
    for (name, text) in mods {
        site.write_mod(name, text);
    }
    for (path, text) in files {
        let full = site.mods_dir().join(path);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir).expect("create a folder under mods/");
        }
        std::fs::write(full, text).expect("write a file under mods/");
    }
    let workers = if server.contains("workers") {
        ""
    } else {
        "workers = 1"
    };
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{workers}\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n{rest}\n"
    ));
    site
}

/// A module whose phases are all in `file` (`NAME.lua` next to it).
fn lua_mod(name: &str, priority: u32, config: &str) -> String {
    format!("mod {name} {{\n  priority {priority}\n  config {{\n{config}\n  }}\n  lua \"{name}.lua\"\n}}\n")
}

const ECHO_APP: &str =
    "[upstreams.app]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"app\"\n";

// ---- 1. ctx shared with pcmod in priority order; config overrides ---------------------

#[tokio::test]
async fn lua_and_pcmod_share_ctx_in_priority_order_and_config_carries_overrides() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let first = r#"mod first {
  priority 10
  on request {
    set ctx.user = "alice"
    set ctx.trail = "first"
  }
  on response {
    set resp.header["x-trail"] = "$ctx.trail,first"
  }
}
"#;
    let third = r#"mod third {
  priority 30
  on request {
    set req.header["x-seen"] = $ctx.seen
    set ctx.trail = "$ctx.trail,third"
  }
  on response {
    set ctx.trail = "$ctx.trail,third-resp"
  }
}
"#;
    let second_lua = r#"
function on_request(req, ctx)
  ctx.seen = config.greeting .. " " .. ctx.user
  ctx.trail = ctx.trail .. ",second"
  ctx.count = config.times
end

function on_response(req, resp, ctx)
  ctx.trail = ctx.trail .. ",second-resp"
  resp:set_header("x-count", ctx.count)
end
"#;
    let s = site(
        &[
            ("first", first),
            (
                "second",
                &lua_mod(
                    "second",
                    20,
                    "    greeting: string = \"hello\"\n    times: int = 1",
                ),
            ),
            ("third", third),
        ],
        &[("second.lua", second_lua)],
        "",
        &format!(
            "{}\n[mods.second]\ngreeting = \"hola\"\ntimes = 3\n",
            app(&[&up], "")
        ),
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("the upstream got the request");
    // pcmod (10) -> Lua (20) -> pcmod (30) in the request phase, with [mods.second].
    assert_eq!(seen.header("x-seen").as_deref(), Some("hola alice"));
    // Response phase in reverse: third, second, first.
    assert_eq!(
        r.header("x-trail").as_deref(),
        Some("first,second,third,third-resp,second-resp,first")
    );
    assert_eq!(r.header("x-count").as_deref(), Some("3"));
}

/// The request id a hook sees, the one sent upstream and the one on the response are
/// one id, whichever hook reads it first; request headers are there for a later
/// phase's hook; a module with only an empty hook makes no id and changes nothing.
#[tokio::test]
async fn one_request_id_across_hooks_and_request_headers_in_later_phases() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let empty_lua = "function on_request(req, ctx) end\n";
    let later = r#"
function on_request(req, ctx)
  std.request_id.inject()
end

function on_response(req, resp, ctx)
  resp:set_header("x-in-seen", req:header("x-in") or "none")
  resp:set_header("x-id-seen", req.id)
end

function on_log(req, resp, ctx)
  log.info("log phase saw x-in=" .. tostring(req:header("x-in")))
end
"#;
    let s = site(
        &[
            ("empty", &lua_mod("empty", 10, "")),
            ("later", &lua_mod("later", 20, "")),
        ],
        &[("empty.lua", empty_lua), ("later.lua", later)],
        "",
        &app(&[&up], ""),
    );
    let run = Running::start(&s);
    let r = send(run.addr, empty(req("GET", "/ids").header("x-in", "v1"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-in-seen").as_deref(), Some("v1"));
    let id = r.request_id().expect("inject puts the id on the response");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(r.header("x-id-seen").as_deref(), Some(id.as_str()));
    let seen = up.last().expect("the upstream got the request");
    assert_eq!(seen.header("x-request-id").as_deref(), Some(id.as_str()));

    // A client's id is kept through both hooks.
    let r = send(
        run.addr,
        empty(req("GET", "/ids").header("x-request-id", "client-id-7")),
    )
    .await;
    assert_eq!(r.request_id().as_deref(), Some("client-id-7"));
    assert_eq!(r.header("x-id-seen").as_deref(), Some("client-id-7"));
    assert_eq!(r.header("x-in-seen").as_deref(), Some("none"));
    let seen = up.last().expect("the upstream got the request");
    assert_eq!(seen.header("x-request-id").as_deref(), Some("client-id-7"));
}

// ---- 2. respond, forward, http.request, body, require ----------------------------------

#[tokio::test]
async fn std_respond_short_circuits_without_touching_the_upstream() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let gate = r#"
function on_request(req, ctx)
  if req:header("x-key") ~= "secret" then
    std.respond(403, "no key\n", { ["content-type"] = "text/plain", ["x-gate"] = "lua" })
    return
  end
  if req.path == "/teapot" then
    return std.respond{ status = 418, body = "short and stout\n" }
  end
  if req.path == "/bare" then
    return 204
  end
end
"#;
    let s = site(
        &[("gate", &lua_mod("gate", 10, ""))],
        &[("gate.lua", gate)],
        "",
        &app(&[&up], ""),
    );
    let run = Running::start(&s);

    let r = get(run.addr, "/x").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "no key\n");
    assert_eq!(r.header("x-gate").as_deref(), Some("lua"));
    assert_eq!(r.header("content-length").as_deref(), Some("7"));
    assert!(
        r.request_id().is_some(),
        "a module's response carries x-request-id"
    );

    let r = send(
        run.addr,
        empty(req("GET", "/teapot").header("x-key", "secret")),
    )
    .await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout\n");
    let r = send(
        run.addr,
        empty(req("GET", "/bare").header("x-key", "secret")),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(up.requests(), 0, "no response above reached the upstream");

    let r = send(
        run.addr,
        empty(req("GET", "/pass").header("x-key", "secret")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests(), 1);
}

/// One Lua module `f` (`hook`), the route to the echo `app`, and `dead`: a set whose
/// one server refuses connections.
fn dead_forward_site(hook: &str) -> Site {
    let rest = format!(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\n\n[upstreams.dead]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
        dead_addr()
    );
    site(
        &[("f", &lua_mod("f", 10, ""))],
        &[("f.lua", hook)],
        "",
        &rest,
    )
}

/// A forward that gets no response, uncaught, answers as the upstream's failure does
/// anywhere else (502 for a dead server), not as a script fault (500); an error the
/// script raises itself after catching one is the script's.
#[tokio::test]
async fn an_uncaught_failed_forward_answers_502_not_500() {
    let hook = r#"
function on_request(req, ctx)
  if req.path == "/own" then
    local ok, err = pcall(std.proxy.forward, "dead")
    error("gave up: " .. tostring(ok))
  elseif req.path == "/again" then
    local ok, err = pcall(std.proxy.forward, "dead")
    error(err, 0)
  elseif req.path == "/quote" then
    -- The script's own error, quoting the forward's: the script's.
    local ok, err = pcall(std.proxy.forward, "dead")
    error("my own failure after: " .. tostring(err))
  elseif req.path == "/fallback" then
    -- A forward that names no upstream goes to the route's, whatever failed before.
    local ok, err = pcall(std.proxy.forward, "dead")
    return std.proxy.forward()
  elseif req.path == "/seen" then
    return std.respond(200, tostring(std.shared.get("seen")))
  end
  return std.proxy.forward("dead")
end

function on_log(req, resp, ctx)
  if req.path == "/" then std.shared.set("seen", resp.status .. " from " .. tostring(req.upstream)) end
end
"#;
    let s = dead_forward_site(hook);
    let run = Running::start(&s);
    for path in ["/", "/again"] {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(r.text().starts_with("502 Bad Gateway"), "{}", r.text());
        assert!(r.request_id().is_some());
    }
    // Not the module's fault: its error counter stays at 0 after the 502s.
    let metrics = send(run.admin, empty(req("GET", "/metrics"))).await.text();
    let faults: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("proxycache_module_errors_total{"))
        .collect();
    assert!(faults.iter().all(|l| l.ends_with(" 0")), "{faults:?}");
    for path in ["/own", "/quote"] {
        let r = get(run.addr, path).await;
        assert_eq!(
            r.status,
            500,
            "{path}: the script's own error: {}",
            r.text()
        );
    }
    let r = get(run.addr, "/seen").await;
    assert_eq!(
        r.text(),
        "502 from dead",
        "the log phase sees the set that failed"
    );
    let r = get(run.addr, "/fallback").await;
    assert_eq!(r.status, 200, "the route's upstream: {}", r.text());
    assert_eq!(r.json()["upstream"], "builtin:echo");
}

/// After a forward that failed, `req.upstream` names the set it tried (a log hook
/// reporting the failure named the route's set).
#[tokio::test]
async fn a_failed_forward_leaves_req_upstream_naming_the_set_it_tried() {
    let hook = r#"
function on_request(req, ctx)
  local before = req.upstream
  local ok, err = pcall(std.proxy.forward, "dead")
  return std.respond(502, before .. " -> " .. tostring(req.upstream) .. " " .. tostring(ok))
end
"#;
    let s = dead_forward_site(hook);
    let run = Running::start(&s);
    let r = get(run.addr, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (502, "app -> dead false".into())
    );
}

#[tokio::test]
async fn std_proxy_forward_returns_a_response_the_handler_changes() {
    let main = Upstream::start("main", Behavior::echo()).await;
    let other = Upstream::start(
        "other",
        Behavior::fixed_body("from other\n", false).with_header("x-up", "other"),
    )
    .await;
    let canary = r#"
function on_request(req, ctx)
  if req:header("x-canary") == "1" then
    local r = std.proxy.forward("other")
    r:set_header("x-via", "lua")
    r:set_status(201)
    ctx.from = "other:" .. r.status
    return r
  end
end

function on_response(req, resp, ctx)
  if ctx.from then resp:set_header("x-from", ctx.from) end
end
"#;
    let rest = format!(
        "[upstreams.app]\nservers = {}\n\n[upstreams.other]\nservers = {}\n\n[[routes]]\nupstream = \"app\"\n",
        servers(&[&main]),
        servers(&[&other])
    );
    let s = site(
        &[("canary", &lua_mod("canary", 10, ""))],
        &[("canary.lua", canary)],
        "",
        &rest,
    );
    let run = Running::start(&s);

    let r = send(run.addr, empty(req("GET", "/a").header("x-canary", "1"))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.text(), "from other\n");
    assert_eq!(r.header("x-up").as_deref(), Some("other"));
    assert_eq!(r.header("x-via").as_deref(), Some("lua"));
    // The response phase ran over the module that answered.
    assert_eq!(r.header("x-from").as_deref(), Some("other:201"));
    assert_eq!((main.requests(), other.requests()), (0, 1));
    let seen = other.last().expect("other got the request");
    assert_eq!(seen.uri, "/a");
    assert!(
        seen.header("x-forwarded-for").is_some(),
        "forward adds the usual forwarding headers"
    );

    let r = get(run.addr, "/b").await;
    assert_eq!(r.status, 200);
    assert_eq!((main.requests(), other.requests()), (1, 1));
}

#[tokio::test]
async fn std_http_request_calls_a_service_and_req_body_is_readable() {
    let app_up = Upstream::start("app", Behavior::echo()).await;
    let auth = Upstream::start(
        "auth",
        Behavior::fixed_body("user=alice", false).with_header("x-auth", "ok"),
    )
    .await;
    let dead = dead_addr();
    let callout = r#"
function on_request(req, ctx)
  if req.path == "/dead" then
    local ok, err = pcall(std.http.request, { url = "http://" .. config.dead .. "/", timeout = 2 })
    return std.respond(502, tostring(ok) .. ":" .. (err and "failed" or ""))
  end
  local body = req:body()
  local r = std.http.request{
    url = "http://" .. config.auth .. "/check?x=1",
    method = "POST",
    headers = { ["x-token"] = req:header("x-token") or "", ["content-type"] = "text/plain" },
    body = body,
    timeout = "2s",
  }
  if r.status ~= 200 then
    return std.respond(401, "denied\n")
  end
  req:set_header("x-user", r.body)
  req:set_header("x-auth-header", r.headers["x-auth"])
  req:set_header("x-body-len", #body)
end
"#;
    let cfg = format!(
        "    auth: string = \"{}\"\n    dead: string = \"{dead}\"",
        auth.authority()
    );
    let s = site(
        &[("callout", &lua_mod("callout", 10, &cfg))],
        &[("callout.lua", callout)],
        "",
        &app(&[&app_up], ""),
    );
    let run = Running::start(&s);

    let post = req("POST", "/api")
        .header("x-token", "t0k")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello body",
        )))
        .expect("request builds");
    let r = send(run.addr, post).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let called = auth.last().expect("the auth service was called");
    assert_eq!(called.method, "POST");
    assert_eq!(called.uri, "/check?x=1");
    assert_eq!(called.header("x-token").as_deref(), Some("t0k"));
    assert_eq!(&called.body[..], b"hello body");
    let upstream_saw = app_up.last().expect("the app got the request");
    assert_eq!(upstream_saw.header("x-user").as_deref(), Some("user=alice"));
    assert_eq!(upstream_saw.header("x-auth-header").as_deref(), Some("ok"));
    assert_eq!(upstream_saw.header("x-body-len").as_deref(), Some("10"));
    assert_eq!(
        &upstream_saw.body[..],
        b"hello body",
        "req:body() leaves the body for the upstream"
    );

    let r = get(run.addr, "/dead").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.text(),
        "false:failed",
        "a failed call raises a catchable error"
    );
}

#[tokio::test]
async fn require_loads_libraries_from_mods_lib_only() {
    let lib = r#"
local M = {}
function M.shout(s) return string.upper(s) .. "!" end
return M
"#;
    let user = r#"
local util = require("util")

function on_request(req, ctx)
  if req.path == "/escape" then
    local ok, err = pcall(require, "../config")
    local ok2 = pcall(require, "os")
    return std.respond(200, tostring(ok) .. " " .. tostring(ok2))
  end
  return std.respond(200, util.shout(req:query_param("w") or "hi"))
end
"#;
    let s = site(
        &[("user", &lua_mod("user", 10, ""))],
        &[("user.lua", user), ("lib/util.lua", lib)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    assert_eq!(get(run.addr, "/?w=hey").await.text(), "HEY!");
    assert_eq!(get(run.addr, "/escape").await.text(), "false false");
}

// ---- 3. the sandbox ------------------------------------------------------------------

const PROBES: &str = r#"
local probes = {
  io = function() return type(io) end,
  os_execute = function() return type(os.execute) end,
  os_getenv = function() return type(os.getenv) end,
  os_time = function() return type(os.time) end,
  debug = function() return type(debug) end,
  package = function() return type(package) end,
  loadlib = function() return tostring(pcall(function() return package.loadlib end)) end,
  dofile = function() return type(dofile) end,
  loadfile = function() return type(loadfile) end,
  dump = function() return type(string.dump) end,
  binary = function()
    local f, err = load("\27Lua\84\0\25\147\13\10\26\10\4\8\8xV\0\0\0\0\0\0\0\0\0\0\0(w@")
    return tostring(f) .. " " .. tostring(err and err:find("binary", 1, true) ~= nil)
  end,
  text_load = function() return tostring(load("return 1 + 1")()) end,
  set_global = function() leaked = "yes"; return tostring(leaked) end,
  get_global = function() return tostring(leaked) end,
  string_meta = function() getmetatable("").__index = { upper = function() return "pwned" end } end,
  string_lib = function() string.upper = function() return "pwned" end end,
  upper = function() return ("abc"):upper() .. string.upper("d") end,
  rawset_env = function() rawset(_G, "sneaky", 1) end,
  rawset_std = function() rawset(std.request_id, "inject", function() end) end,
  assign_std = function() std.rate_limit = nil end,
  inject = function() return type(std.request_id.inject) end,
  -- pairs() on a library view must not hand out the table behind it.
  pairs_string = function() local _, s = pairs(string); s.upper = function() return "pwned" end end,
  pairs_std = function() local _, s = pairs(std.request_id); s.inject = "pwned" end,
  pairs_table = function() local _, t = pairs(table); t.concat = function() return "pwned" end end,
  concat = function() return table.concat({ "a", "b" }) end,
  require_escape = function()
    local _, s = pcall(function() local _, s = pairs(string); return s end)
    pcall(function() s.match = function(x) return x end end)
    return tostring(pcall(require, "../probe"))
  end,
  tables = function()
    local t = { 1, 2, 3 }
    table.insert(t, 4); table.insert(t, 1, 0); local r = table.remove(t, 2)
    local m = table.move({ 7, 8, 9 }, 1, 3, 2, { 6 })
    return table.concat(t, ",") .. "|" .. r .. "|" .. table.concat(m, ",") .. "|" .. tostring(table.remove({}))
      .. "|" .. string.rep("ab", 3, "-") .. "|" .. string.rep("", 5)
  end,
  gc = function() return tostring(pcall(setmetatable, {}, { __gc = function() end })) end,
}

function on_request(req, ctx)
  local name = req:query_param("p")
  local result = probes[name]()
  return std.respond(200, tostring(result))
end
"#;

#[tokio::test]
async fn the_sandbox_has_no_io_os_debug_package_dump_or_binary_chunks() {
    let s = site(
        &[("probe", &lua_mod("probe", 10, ""))],
        &[("probe.lua", PROBES)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let probe = |p: &'static str| {
        let addr = run.addr;
        async move {
            let r = get(addr, &format!("/?p={p}")).await;
            (r.status.as_u16(), r.text())
        }
    };
    for name in [
        "io",
        "os_execute",
        "os_getenv",
        "debug",
        "package",
        "dofile",
        "loadfile",
        "dump",
    ] {
        assert_eq!(
            probe(name).await,
            (200, "nil".into()),
            "{name} must not exist"
        );
    }
    assert_eq!(probe("os_time").await, (200, "function".into()));
    assert_eq!(
        probe("loadlib").await,
        (200, "false".into()),
        "package.loadlib is unreachable"
    );
    assert_eq!(
        probe("binary").await,
        (200, "nil true".into()),
        "binary chunks are refused"
    );
    assert_eq!(probe("text_load").await, (200, "2".into()));
    assert_eq!(
        probe("gc").await,
        (200, "false".into()),
        "__gc metamethods are refused"
    );
}

#[tokio::test]
async fn a_request_cannot_leave_state_for_the_next_one() {
    let s = site(
        &[("probe", &lua_mod("probe", 10, ""))],
        &[("probe.lua", PROBES)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/?p=set_global").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "yes".into()),
        "a global works within its hook call"
    );
    let r = get(run.addr, "/?p=get_global").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "nil".into()),
        "and is gone for the next request"
    );

    for attack in [
        "string_meta",
        "string_lib",
        "rawset_env",
        "rawset_std",
        "assign_std",
        "pairs_string",
        "pairs_std",
        "pairs_table",
    ] {
        let r = get(run.addr, &format!("/?p={attack}")).await;
        assert_eq!(r.status, 500, "{attack} must fail");
        let r = get(run.addr, "/?p=inject").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "function".into()),
            "std intact after {attack}"
        );
        let r = get(run.addr, "/?p=upper").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "ABCD".into()),
            "after {attack}"
        );
        let r = get(run.addr, "/?p=concat").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "ab".into()),
            "after {attack}"
        );
    }
    // `require` takes names, not paths, even if `string.match` could be replaced.
    let r = get(run.addr, "/?p=require_escape").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "false".into()));
    // The Lua versions of table.insert/remove/move and string.rep behave as Lua's.
    let r = get(run.addr, "/?p=tables").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "0,2,3,4|1|6,7,8,9|nil|ab-ab-ab|".into())
    );
}

// ---- 4. budgets, memory, errors ---------------------------------------------------------

const RUNAWAY: &str = r#"
function on_request(req, ctx)
  local p = req.path
  if p == "/loop" then
    while true do end
  elseif p == "/pcall-loop" then
    while true do pcall(function() while true do end end) end
  elseif p == "/xpcall-loop" then
    while true do xpcall(function() while true do end end, function(e) return e end) end
  elseif p == "/coroutine-loop" then
    while true do
      local co = coroutine.create(function() while true do end end)
      coroutine.resume(co)
    end
  elseif p == "/sort-loop" then
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b) while true do pcall(function() while true do end end) end end)
  elseif p == "/memory" then
    local t = {}
    for i = 1, 100000000 do t[i] = string.rep("x", 1000) .. i end
  elseif p == "/memory-pcall" then
    local ok = pcall(function()
      local t = {}
      for i = 1, 100000000 do t[i] = string.rep("x", 1000) .. i end
    end)
    return std.respond(200, "survived:" .. tostring(ok))
  elseif p == "/error" then
    local function inner() error("boom in inner") end
    inner()
  elseif p == "/bad-arg" then
    std.rate_limit{ key = 5, rate = 1 }
  elseif p == "/rep-empty" then
    -- One C call that would loop ~9e18 times without allocating.
    local s = string.rep("", math.maxinteger)
    while true do end
  elseif p == "/backtrack" then
    -- Lua's C matcher would backtrack here for hours in one call.
    local s = string.rep("a", 3000)
    return std.respond(200, tostring(s:find(string.rep("a*", 12) .. "b")))
  elseif p == "/backtrack-number" then
    -- A number is matched as its string: it went to the C matcher unmeasured.
    return std.respond(200, tostring(string.find(1234567890123456789, string.rep("%d*", 30) .. "x")))
  elseif p == "/gsub-blowup" then
    -- Each of 2,000 empty matches adds 400 KiB: the result was built outside the
    -- memory limit and the budget.
    local s = string.gsub(string.rep("x", 2000), "x?", string.rep("y", 400 * 1024))
    return std.respond(200, tostring(#s))
  elseif p == "/backtrack-pcall" then
    local s = string.rep("a", 3000)
    while true do pcall(string.gsub, s, string.rep("a-", 10) .. "b", "") end
  elseif p == "/patterns" then
    -- Both matchers, with the same results: long subjects go to the Rust port.
    local long = string.rep("k=v; ", 2000)
    local n = 0
    for k, v in long:gmatch("(%w+)=(%w+)") do n = n + 1 end
    local trimmed = ("  " .. long .. "  "):match("^%s*(.-)%s*$")
    local swapped, count = long:gsub("(%w)=(%w)", "%2=%1")
    return std.respond(200, table.concat({ n, #trimmed, count, swapped:sub(1, 9),
      ("x=1"):match("(%w+)=(%w+)"), tostring(("abc"):find("b", 1, true)) }, ","))
  elseif p == "/move-loop" then
    table.move({}, 1, math.maxinteger - 1, 2)
  elseif p == "/insert-loop" then
    table.insert(setmetatable({}, { __len = function() return math.maxinteger - 1 end }), 1, "x")
  elseif p == "/close-loop" then
    local x <close> = setmetatable({}, { __close = function() while true do end end })
    while true do end
  elseif p == "/close-leak" then
    local x <close> = setmetatable({}, { __close = function() leaked = "yes" end })
    while true do end
  elseif p == "/leaked" then
    return std.respond(200, tostring(leaked))
  end
  return std.respond(200, "ok " .. p)
end
"#;

fn runaway_site(server: &str) -> Site {
    site(
        &[("runaway", &lua_mod("runaway", 10, ""))],
        &[("runaway.lua", RUNAWAY)],
        server,
        ECHO_APP,
    )
}

#[tokio::test]
async fn runaway_hooks_are_stopped_by_the_budget_even_inside_pcall() {
    let s = runaway_site("");
    let run = Running::start(&s);
    for path in [
        "/loop",
        "/pcall-loop",
        "/xpcall-loop",
        "/coroutine-loop",
        "/sort-loop",
        "/rep-empty",
        "/move-loop",
        "/insert-loop",
        "/backtrack",
        "/backtrack-number",
        "/gsub-blowup",
        "/backtrack-pcall",
        "/close-loop",
        "/close-leak",
    ] {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(r.request_id().is_some());
        let ok = get(run.addr, "/fine").await;
        assert_eq!(
            (ok.status.as_u16(), ok.text()),
            (200, "ok /fine".into()),
            "the VM still works after {path}"
        );
        // A `__close` handler that runs as the spent hook is closed sets nothing
        // the next request sees.
        let r = get(run.addr, "/leaked").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "nil".into()),
            "after {path}"
        );
    }
}

#[tokio::test]
async fn patterns_over_long_subjects_give_lua_results() {
    let s = runaway_site("");
    let run = Running::start(&s);
    let r = get(run.addr, "/patterns").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "2000,9999,2000,v=k; v=k;,x,2".into())
    );
}

#[tokio::test]
async fn a_runaway_hook_does_not_hold_up_other_requests_on_its_worker() {
    let s = runaway_site("");
    let run = Running::start(&s);
    let addr = run.addr;
    let looping = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(get(addr, "/pcall-loop").await.status.as_u16());
        }
        statuses
    });
    // One worker: these interleave with the runaway hooks on the same thread.
    for i in 0..20 {
        let r = get(addr, &format!("/n{i}")).await;
        assert_eq!(r.status, 200);
    }
    let statuses = looping.await.expect("the looping client");
    assert_eq!(statuses, vec![500; 5]);
}

#[tokio::test]
async fn memory_bombs_and_errors_end_only_their_request() {
    let s = runaway_site("");
    // Tighter limits: 16 MiB per VM, and a budget the memory bomb cannot outrun.
    let text = std::fs::read_to_string(s.config_path()).expect("read config.toml");
    s.write_config(&text.replace(
        "watch = false",
        "watch = false\nlua_memory_limit = \"16MiB\"\nlua_instruction_budget = 100000000",
    ));
    let run = Running::start(&s);
    for path in ["/memory", "/error", "/bad-arg"] {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        let ok = get(run.addr, "/fine").await;
        assert_eq!(ok.status, 200, "the VM still works after {path}");
    }
    // Out of memory inside pcall is the script's to handle; the VM recovers.
    let r = get(run.addr, "/memory-pcall").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "survived:false".into())
    );
    assert_eq!(get(run.addr, "/fine").await.status, 200);
}

#[tokio::test]
async fn lua_errors_are_logged_with_module_file_line_and_traceback() {
    let port = free_port();
    let s = site(
        &[("runaway", &lua_mod("runaway", 10, ""))],
        &[("runaway.lua", RUNAWAY)],
        "",
        ECHO_APP,
    );
    let text = std::fs::read_to_string(s.config_path()).expect("read config.toml");
    s.write_config(&text.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]")));
    let (mut child, stderr_path) = s.spawn_run();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(
        up,
        "proxycache did not start:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let r = get(addr, "/error").await;
    assert_eq!(r.status, 500);
    let r = get(addr, "/loop").await;
    assert_eq!(r.status, 500);
    let log = wait_for_log(&stderr_path, "instruction budget exceeded").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("runaway"), "the module is named:\n{log}");
    assert!(log.contains("runaway.lua"), "the file is named:\n{log}");
    assert!(
        log.contains("boom in inner"),
        "the message is there:\n{log}"
    );
    assert!(log.contains("stack traceback"), "with a traceback:\n{log}");
    assert!(
        log.contains("runaway.lua:28"),
        "with the line of the error:\n{log}"
    );
}

async fn wait_for_log(path: &std::path::Path, needle: &str) -> String {
    let mut text = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(needle)
    })
    .await;
    assert!(found, "{needle:?} never appeared in the log:\n{text}");
    text
}

// Each fault names the line the script was running, not the line its hook starts on
// (line 2 here); what cannot be placed says so.
const FAULTS: &str = r#"local spin = require("spin")
function on_request(req, ctx)
  local p = req.path
  if p == "/loop" then
    local n = 0
    while true do n = n + 1 end
  elseif p == "/lib-loop" then
    spin.forever()
  elseif p == "/insert-loop" then
    table.insert(setmetatable({}, { __len = function() return math.maxinteger - 1 end }), 1, "x")
  elseif p == "/memory" then
    local s = "x"
    while true do s = s .. s end
  elseif p == "/table" then
    error({ code = 1 })
  elseif p == "/tostring" then
    error(setmetatable({}, { __tostring = function() return "custom failure" end }))
  elseif p == "/nil" then
    error()
  elseif p == "/backtrack" then
    return std.respond(200, tostring(string.rep("a", 3000):find(string.rep("a*", 12) .. "b")))
  end
end
"#;

const SPIN: &str = "local M = {}\nfunction M.forever()\n  local i = 0\n  while true do i = i + 1 end\nend\nreturn M\n";

/// The `module failed` log line of the request that got `r`.
async fn failure_line(r: &Resp) -> String {
    let id = r.request_id().expect("an x-request-id");
    let find = || {
        log::lines_with(&id)
            .into_iter()
            .find(|l| l.contains("module failed"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || find().is_some()).await,
        "no `module failed` line for {id}"
    );
    find().unwrap_or_default()
}

#[tokio::test]
async fn faults_are_logged_at_the_line_the_script_was_running() {
    log::capture();
    let s = site(
        &[("faults", &lua_mod("faults", 10, ""))],
        &[("faults.lua", FAULTS), ("lib/spin.lua", SPIN)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let cases: &[(&str, &str, u32, &str)] = &[
        ("/loop", "faults.lua", 6, "instruction budget exceeded"),
        // The innermost line of the script's own files: the library's loop.
        (
            "/lib-loop",
            "lib/spin.lua",
            4,
            "instruction budget exceeded",
        ),
        // The loop is the sandbox's `table.insert`: the script's call is where it ran.
        (
            "/insert-loop",
            "faults.lua",
            10,
            "instruction budget exceeded",
        ),
        (
            "/table",
            "faults.lua",
            15,
            "error=(error object is a table value)",
        ),
        ("/tostring", "faults.lua", 17, "error=custom failure"),
        (
            "/nil",
            "faults.lua",
            19,
            "error=(error object is a nil value)",
        ),
        // Spent by the Rust pattern matcher's charge: its error has the position.
        (
            "/backtrack",
            "faults.lua",
            21,
            "instruction budget exceeded",
        ),
    ];
    for (path, file, line, says) in cases {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        let logged = failure_line(&r).await;
        assert!(
            logged.contains(&format!("{file} line={line} ")),
            "{path}: at {file}:{line}: {logged}"
        );
        assert!(logged.contains(says), "{path}: says {says:?}: {logged}");
        assert!(
            !logged.contains(": 0x"),
            "{path}: no heap address: {logged}"
        );
    }
    // A memory error has no position: the message says where the hook is, rather
    // than passing that off as the line that failed.
    let r = get(run.addr, "/memory").await;
    assert_eq!(r.status, 500, "{}", r.text());
    let logged = failure_line(&r).await;
    assert!(
        logged.contains("out of memory") && logged.contains("in the hook defined at line 2"),
        "{logged}"
    );
    assert_eq!(get(run.addr, "/fine").await.status, 200);
}

// ---- 5. std.shared across workers -------------------------------------------------------

#[tokio::test]
async fn std_shared_counts_exactly_across_workers() {
    let counter = r#"
function on_request(req, ctx)
  local n = std.shared.incr("hits")
  std.shared.set{ key = "last", value = n, ttl = 60 }
  return std.respond(200, tostring(n))
end
"#;
    let s = site(
        &[("counter", &lua_mod("counter", 10, ""))],
        &[("counter.lua", counter)],
        "workers = 2",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let addr = run.addr;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                let r = get(addr, "/").await;
                assert_eq!(r.status, 200);
                seen.push(r.text().parse::<u64>().expect("a count"));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a client task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=400).collect::<Vec<u64>>(),
        "every increment counted once"
    );
    assert_eq!(get(addr, "/").await.text(), "401");
}

#[tokio::test]
async fn std_shared_keeps_binary_strings_byte_for_byte() {
    // OpenResty's ngx.shared.DICT stores any Lua string; so does std.shared.
    let store = r#"
local BIN = "\0\255\254bin\128"
local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
function on_request(req, ctx)
  if req.path == "/set" then
    std.shared.set("bin", BIN)
    std.shared.set{ key = "text", value = "caf\195\169" }
    return std.respond(204)
  end
  local v = std.shared.get("bin")
  local t = std.shared.get("text")
  local ok = pcall(std.shared.incr, "bin")
  return std.respond(200, hex(v) .. " " .. tostring(v == BIN) .. " " .. t .. " " .. tostring(ok))
end
"#;
    let s = site(
        &[("store", &lua_mod("store", 10, ""))],
        &[("store.lua", store)],
        "workers = 2",
        ECHO_APP,
    );
    let run = Running::start(&s);
    assert_eq!(get(run.addr, "/set").await.status, 204);
    let r = get(run.addr, "/get").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "00fffe62696e80 true café false");
}

// ---- lua.NAME(...) from pcmod -------------------------------------------------------------

#[tokio::test]
async fn pcmod_calls_functions_of_its_own_lua_chunk() {
    let module = r#"mod tiers {
  priority 10
  config {
    default_tier: string = "bronze"
  }
  on request {
    if $path == "/wait" {
      let x = lua.waits()
    }
    if $path == "/spin" {
      let y = lua.spin()
    }
    let tier = lua.tier_for($req.header["x-api-key"], $config.default_tier)
    set req.header["x-tier"] = tier
    set ctx.calls = lua.count()
  }
  on response {
    set resp.header["x-calls"] = "$ctx.calls"
  }
  lua """
local tiers = { k1 = "gold", k2 = "silver" }

function tier_for(key, default)
  return tiers[key or ""] or default
end

function count()
  return std.shared.incr("tier-calls")
end

function waits()
  return std.http.request("http://127.0.0.1:9/")
end

function spin()
  local n = 0
  while true do n = n + 1 end
end
"""
}
"#;
    log::capture();
    let up = Upstream::start("app", Behavior::echo()).await;
    let s = site(&[("tiers", module)], &[], "", &app(&[&up], ""));
    let run = Running::start(&s);
    let r = send(run.addr, empty(req("GET", "/a").header("x-api-key", "k1"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().expect("sent").header("x-tier").as_deref(),
        Some("gold")
    );
    assert_eq!(r.header("x-calls").as_deref(), Some("1"));
    let r = get(run.addr, "/b").await;
    assert_eq!(
        up.last().expect("sent").header("x-tier").as_deref(),
        Some("bronze")
    );
    assert_eq!(r.header("x-calls").as_deref(), Some("2"));
    // A function called from pcmod may not wait: that request fails, others go on.
    assert_eq!(get(run.addr, "/wait").await.status, 500);
    assert_eq!(get(run.addr, "/c").await.status, 200);
    // One that runs out of budget names the Lua line it was running.
    let r = get(run.addr, "/spin").await;
    assert_eq!(r.status, 500);
    let spinning = module
        .lines()
        .position(|l| l.contains("while true do"))
        .map_or(0, |i| i + 1);
    let logged = failure_line(&r).await;
    assert!(
        logged.contains(&format!(
            "lua.spin: instruction budget exceeded at {}:{spinning}",
            s.mod_path("tiers").display()
        )),
        "{logged}"
    );
}

// ---- reload ---------------------------------------------------------------------------

#[tokio::test]
async fn editing_lua_files_and_libraries_reloads_and_a_broken_chunk_keeps_the_old_one() {
    let gate = |v: &str| {
        format!(
            "local util = require(\"util\")\nfunction on_request(req, ctx)\n  return std.respond(200, util.tag(\"{v}\"))\nend\n"
        )
    };
    let lib =
        |prefix: &str| format!("return {{ tag = function(s) return \"{prefix}\" .. s end }}\n");
    let gate_v1 = gate("v1");
    let lib_a = lib("a:");
    let s = site(
        &[("gate", &lua_mod("gate", 10, ""))],
        &[("gate.lua", &gate_v1), ("lib/util.lua", &lib_a)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let reload = |admin| async move {
        let r = send(
            admin,
            req("POST", "/reload")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request builds"),
        )
        .await;
        (r.status.as_u16(), r.text())
    };
    assert_eq!(get(run.addr, "/").await.text(), "a:v1");

    std::fs::write(s.mods_dir().join("gate.lua"), gate("v2")).expect("edit gate.lua");
    assert_eq!(reload(run.admin).await.0, 200);
    assert_eq!(
        get(run.addr, "/").await.text(),
        "a:v2",
        "an edited chunk serves after reload"
    );

    std::fs::write(s.mods_dir().join("lib/util.lua"), lib("b:")).expect("edit lib/util.lua");
    assert_eq!(reload(run.admin).await.0, 200);
    assert_eq!(
        get(run.addr, "/").await.text(),
        "b:v2",
        "an edited library serves after reload"
    );

    std::fs::write(
        s.mods_dir().join("gate.lua"),
        "function on_request(req, ctx)\n  if then\nend\n",
    )
    .expect("break gate.lua");
    let (status, report) = reload(run.admin).await;
    assert_eq!(status, 400, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).expect("a JSON report");
    let error = &report["errors"][0];
    assert!(
        error["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("gate.lua")),
        "{report:#}"
    );
    assert_eq!(error["line"], 2, "{report:#}");
    assert_eq!(
        get(run.addr, "/").await.text(),
        "b:v2",
        "the previous generation keeps serving"
    );
}

// ---- I/O in response and log hooks; check ------------------------------------------------

#[tokio::test]
async fn response_and_log_hooks_may_wait_on_the_network() {
    let app_up = Upstream::start("app", Behavior::fixed_body("hello\n", false)).await;
    let collector = Upstream::start("collector", Behavior::status(204)).await;
    let hooks = r#"
function on_response(req, resp, ctx)
  local r = std.http.request{ url = "http://" .. config.collector .. "/seen", headers = { ["x-status"] = resp.status } }
  resp:set_header("x-collector", r.status)
  local body = resp:body()
  resp:set_body(body:upper())
end

function on_log(req, resp, ctx)
  std.http.request{ url = "http://" .. config.collector .. "/log?path=" .. req.path, method = "POST", body = tostring(resp.status) }
end
"#;
    let cfg = format!("    collector: string = \"{}\"", collector.authority());
    let s = site(
        &[("hooks", &lua_mod("hooks", 10, &cfg))],
        &[("hooks.lua", hooks)],
        "",
        &app(&[&app_up], ""),
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/page").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "HELLO\n",
        "on_response read and replaced the body"
    );
    assert_eq!(r.header("x-collector").as_deref(), Some("204"));
    assert_eq!(r.header("content-length").as_deref(), Some("6"));
    let logged = wait_until(Duration::from_secs(10), || collector.requests() >= 2).await;
    assert!(logged, "the log hook's call arrived");
    let calls = collector.all();
    assert_eq!(calls[0].uri, "/seen");
    assert_eq!(calls[0].header("x-status").as_deref(), Some("200"));
    assert_eq!(calls[1].uri, "/log?path=/page");
    assert_eq!(&calls[1].body[..], b"200");
}

#[tokio::test]
async fn config_tables_keep_their_contents_when_stored() {
    // `config.*` tables are read-only views (raw, empty): stored in ctx they kept
    // nothing, and the next module read an empty list.
    let hooks = r#"
function on_request(req, ctx)
  ctx.hosts = config.hosts
end
"#;
    let reader = r#"mod reader {
  priority 20
  on request {
    respond 200 "${len($ctx.hosts)} ${$ctx.hosts}"
  }
}
"#;
    let cfg = "    hosts: list<string> = [\"a\", \"b\"]";
    let s = site(
        &[("m", &lua_mod("m", 10, cfg)), ("reader", reader)],
        &[("m.lua", hooks)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("2 "), "{}", r.text());
}

#[tokio::test]
async fn on_response_makes_an_error_page_of_the_proxys_own_502() {
    // nginx's `error_page 502 /50x.json`: the proxy's answer for a dead upstream goes
    // through on_response, which may replace it (it went out untouched before).
    let hooks = r#"
function on_response(req, resp, ctx)
  if resp.status >= 502 and resp.status <= 504 then
    resp:set_header("content-type", "application/json")
    resp:set_body('{"error":"upstream unavailable","status":' .. resp.status .. '}')
  end
end
"#;
    let s = site(
        &[("pages", &lua_mod("pages", 10, ""))],
        &[("pages.lua", hooks)],
        "",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
            common::dead_addr()
        ),
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.text(), r#"{"error":"upstream unavailable","status":502}"#);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn check_reports_a_lua_syntax_error_with_the_lua_file_and_line() {
    let s = site(
        &[("broken", &lua_mod("broken", 10, ""))],
        &[(
            "broken.lua",
            "function on_request(req, ctx)\n  local x = = 1\nend\n",
        )],
        "",
        ECHO_APP,
    );
    let out = s.run_check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(
        text.contains("broken.lua:2:"),
        "file:line of the Lua error:\n{text}"
    );
    assert!(
        text.contains("unexpected symbol"),
        "Lua's own message:\n{text}"
    );
}

// ---- details: read-only std/config under pairs(), records in ctx, error strings ------------

#[tokio::test]
async fn pairs_cannot_reach_behind_read_only_tables_and_errors_are_strings() {
    let attacker = r#"
function on_request(req, ctx)
  if req.path == "/attack" then
    local tried, refused = 0, 0
    for _, v in pairs(std) do
      if type(v) == "table" then
        tried = tried + 1
        if not pcall(function() v.get = function() return "pwned" end end) then refused = refused + 1 end
      end
    end
    for _, v in pairs(config) do
      if type(v) == "table" then
        tried = tried + 1
        if not pcall(function() v[1] = "pwned" end) then refused = refused + 1 end
      end
    end
    return std.respond(200, refused .. "/" .. tried)
  end
end
"#;
    let victim = r#"
function on_request(req, ctx)
  if req.path == "/victim" then
    std.shared.set("k", "v")
    return std.respond(200, tostring(std.shared.get("k")) .. " " .. config.hosts[1])
  end
  if req.path == "/error" then
    local ok, err = pcall(function()
      local rl = std.rate_limit{ key = 5, rate = 1 }
      return rl
    end)
    return std.respond(200, type(err) .. "|" .. err)
  end
  if req.path == "/record" then
    return std.respond(200, tostring(ctx.rl.allowed) .. " " .. tostring(ctx.rl.limit))
  end
  if req.path == "/unknown-arg" then
    local ok, err = pcall(function()
      local rl = std.rate_limit{ key = "k", rate = 1, bogus = 2 }
      return rl
    end)
    return std.respond(200, tostring(ok) .. "|" .. tostring(err))
  end
  if req.path == "/unknown-respond-arg" then
    local ok, err = pcall(std.respond, { status = 200, bogus = 2 })
    return std.respond(200, tostring(ok) .. "|" .. tostring(err))
  end
  if req.path == "/named-and-positional" then
    local a = std.rate_limit{ key = "np", rate = 2, burst = 2 }
    local b = std.rate_limit("np", 2, 2)
    local c = std.rate_limit("np", 2, 2)
    return std.respond(200, table.concat({ tostring(a.allowed), tostring(a.remaining),
      tostring(b.allowed), tostring(c.allowed), tostring(c.retry_after), tostring(c.limit) }, " "))
  end
end
"#;
    let recorder = "mod recorder {\n  priority 1\n  on request {\n    set ctx.rl = std.rate_limit(key: \"r\", rate: 5)\n  }\n}\n";
    let s = site(
        &[
            (
                "attacker",
                &lua_mod("attacker", 10, "    hosts: list<string> = [\"a\", \"b\"]"),
            ),
            (
                "victim",
                &lua_mod("victim", 20, "    hosts: list<string> = [\"a\", \"b\"]"),
            ),
            ("recorder", recorder),
        ],
        &[("attacker.lua", attacker), ("victim.lua", victim)],
        "",
        ECHO_APP,
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/attack").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (refused, tried) = r
        .text()
        .split_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("n/m");
    assert!(
        tried.parse::<u32>().expect("a count") >= 3,
        "std.proxy, std.http, std.shared... and the config list: {tried}"
    );
    assert_eq!(
        refused, tried,
        "every write through a pairs() value is refused"
    );
    assert_eq!(
        get(run.addr, "/victim").await.text(),
        "v a",
        "other modules are untouched"
    );

    let r = get(run.addr, "/error").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("string|")
            && r.text().contains("victim.lua:")
            && r.text()
                .contains("std.rate_limit: argument `key` must be a string"),
        "a std error is a plain string with the caller's position: {}",
        r.text()
    );
    assert_eq!(
        get(run.addr, "/record").await.text(),
        "true 5",
        "a pcmod record in ctx keeps its field names"
    );
    let r = get(run.addr, "/unknown-arg").await.text();
    assert!(
        r.starts_with("false|")
            && r.contains("victim.lua:")
            && r.contains(
                "std.rate_limit: unknown argument `bogus` (arguments: key, rate, burst, per, scope)"
            ),
        "an unknown named argument is refused at the caller's line: {r}"
    );
    // std.respond binds its arguments apart from the other functions: the same words.
    let r = get(run.addr, "/unknown-respond-arg").await.text();
    assert!(
        r.starts_with("false|")
            && r.contains(
                "std.respond: unknown argument `bogus` (arguments: status, body, headers)"
            ),
        "{r}"
    );
    assert_eq!(
        get(run.addr, "/named-and-positional").await.text(),
        "true 1 true false 1 2",
        "named and positional calls reach the same bucket; the record has every field"
    );
    let r = get(run.addr, "/victim").await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

// ---- durations, statuses and Host from Lua arguments ------------------------------------

/// A site with one Lua module `m` (its chunk `lua`), `config.app` the address of `up`,
/// and a catch-all route to `up`.
fn one_lua_site(lua: &str, up: &Upstream, server: &str, scripts: &str) -> Site {
    let cfg = format!("    app: string = \"{}\"", up.authority());
    site(
        &[("m", &lua_mod("m", 10, &cfg))],
        &[("m.lua", lua)],
        server,
        &format!("{scripts}\n{}", app(&[up], "")),
    )
}

/// `std.http.request` shares pooled connections with an upstream set on the same
/// address, and its smaller idle cap (16) evicted the set's connections: every
/// callout closed one of the app's 64 until 16 were left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_to_an_upstreams_address_do_not_shrink_its_pool() {
    let up = Upstream::start("app", Behavior::slow_on("/slow", 200)).await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/callout" then
    return std.respond(200, tostring(std.http.request{ url = "http://" .. config.app .. "/check" }.status))
  end
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let fill = || async {
        let all = (0..30).map(|_| get(run.addr, "/slow"));
        for r in futures_util::future::join_all(all).await {
            assert_eq!(r.status, 200);
        }
    };
    fill().await;
    let opened = up.accepts();
    assert!(opened >= 30, "30 at once opened {opened}");
    for _ in 0..20 {
        let r = get(run.addr, "/callout").await;
        assert_eq!(r.text(), "200");
    }
    fill().await;
    assert_eq!(
        up.accepts(),
        opened,
        "the 30 kept connections served 30 at once again"
    );
}

/// A callout's connection to an address of no upstream set is kept between callouts
/// (the pool's sweep, every second, dropped it: its idle time there was zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_connections_outlive_the_pool_sweep() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let other = Upstream::start("other", Behavior::echo()).await;
    let lua = format!(
        r#"
function on_request(req, ctx)
  return std.respond(200, tostring(std.http.request{{ url = "http://{}/check" }}.status))
end
"#,
        other.authority()
    );
    let s = one_lua_site(&lua, &up, "", "");
    let run = Running::start(&s);
    for _ in 0..2 {
        let r = get(run.addr, "/").await;
        assert_eq!(r.text(), "200");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert_eq!(
        other.accepts(),
        1,
        "the second callout reused the first's connection"
    );
}

/// A `content-length` a hook sets by hand that the body does not have: the client
/// gets the body with its real length, over HTTP/1.1 as over HTTP/2, and the
/// connection goes on (HTTP/1.1 sent the first 3 bytes and closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_the_body_does_not_have_is_corrected() {
    let up = Upstream::start("app", Behavior::fixed_body("0123456789", false)).await;
    let lua = r#"
function on_response(req, resp, ctx)
  resp:set_header("content-length", "3")
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let answers = send_on_one_connection(
        run.addr,
        vec![empty(req("GET", "/a")), empty(req("GET", "/b"))],
    )
    .await;
    assert_eq!(answers.len(), 2, "the connection went on: {answers:?}");
    for a in &answers {
        assert_eq!(a.text(), "0123456789");
        assert_eq!(a.header("content-length").as_deref(), Some("10"));
    }
    let r = send_h2(
        run.addr,
        empty(req("GET", &format!("http://{TEST_HOST}/h2"))),
    )
    .await;
    assert_eq!(r.text(), "0123456789");
}

#[tokio::test]
async fn huge_durations_from_lua_are_refused_or_capped_and_never_panic() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
local function url() return "http://" .. config.app .. "/x" end
function on_request(req, ctx)
  local p = req.path
  if p == "/refused" then
    local out = {}
    for _, t in ipairs({ 1e20, -1, -0.5, 0/0 }) do
      local ok, e = pcall(std.http.request, { url = url(), timeout = t })
      out[#out + 1] = tostring(ok) .. ":" .. tostring(e)
    end
    local ok, e = pcall(std.shared.set, "k", 1, 1e20)
    out[#out + 1] = tostring(ok) .. ":" .. tostring(e)
    ok, e = pcall(std.proxy.forward, { timeout = 1e300 })
    out[#out + 1] = tostring(ok) .. ":" .. tostring(e)
    -- Zero: every call would fail, or race the answer.
    ok, e = pcall(std.proxy.forward, { timeout = "0s" })
    out[#out + 1] = tostring(ok) .. ":" .. tostring(e)
    ok, e = pcall(std.http.request, { url = url(), timeout = 0 })
    out[#out + 1] = tostring(ok) .. ":" .. tostring(e)
    return std.respond(200, table.concat(out, "\n"))
  end
  if p == "/capped" then
    local a = std.http.request{ url = url(), timeout = 1e19 }
    local b = std.http.request{ url = url(), timeout = math.maxinteger }
    std.shared.set("long", "v", math.maxinteger)
    std.shared.incr("n", 1, 1e19)
    return std.respond(200, a.status .. " " .. b.status .. " " .. std.shared.get("long") .. " " .. std.shared.get("n"))
  end
  if p == "/forward-float" then
    return std.proxy.forward{ timeout = 1e19 }
  end
  if p == "/forward-int" then
    return std.proxy.forward{ timeout = math.maxinteger }
  end
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);

    let r = get(run.addr, "/refused").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<String> = r.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("false:"), "refused: {line}");
        assert!(
            line.contains("argument `timeout`") || line.contains("argument `ttl`"),
            "an argument error naming the argument: {line}"
        );
        assert!(!line.contains("panic"), "{line}");
    }
    assert!(lines[0].contains("from 0 to 1.8e19"), "{}", lines[0]);
    assert!(lines[1].contains(">= 0"), "{}", lines[1]);
    for line in &lines[6..] {
        assert!(line.contains("must be longer than zero"), "{line}");
    }

    let r = try_send(run.addr, empty(req("GET", "/capped")))
        .await
        .expect("the proxy answers /capped");
    assert_eq!((r.status.as_u16(), r.text()), (200, "200 200 v 1".into()));
    for path in ["/forward-float", "/forward-int"] {
        let r = try_send(run.addr, empty(req("GET", path)))
            .await
            .unwrap_or_else(|e| panic!("the proxy answers {path}: {e}"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.server(), "app");
    }
    assert_eq!(get(run.addr, "/other").await.status, 200);
}

#[tokio::test]
async fn std_http_request_sends_host_from_host_and_port_and_refuses_credentials() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/creds" then
    local ok, e = pcall(std.http.request, { url = "http://user:secret@" .. config.app .. "/ok" })
    return std.respond(200, tostring(ok) .. "|" .. tostring(e))
  end
  if req.path == "/plain" then
    local r = std.http.request{ url = "http://" .. config.app .. "/ok" }
    return std.respond(200, tostring(r.status))
  end
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let r = get(run.addr, "/creds").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("false|") && r.text().contains("credentials"),
        "a URL with credentials is refused: {}",
        r.text()
    );
    assert_eq!(up.requests(), 0, "nothing went out with the credentials");
    let r = get(run.addr, "/plain").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "200".into()));
    let seen = up.last().expect("the call arrived");
    assert_eq!(seen.header("host"), Some(up.authority()));
}

#[tokio::test]
async fn a_1xx_status_is_refused_as_a_final_response_from_lua_and_pcmod() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  local s = tonumber(req:query_param("s") or "")
  if req.path == "/respond" then
    return std.respond(s, "x")
  end
  if req.path == "/return" then
    return s
  end
  if req.path == "/object" then
    local r = std.respond(200, "x")
    r:set_status(s)
    return r
  end
  if req.path == "/caught" then
    local ok, e = pcall(std.respond, s, "x")
    return std.respond(200, tostring(ok) .. "|" .. tostring(e))
  end
end

function on_response(req, resp, ctx)
  if req.path == "/set" then
    resp:set_status(tonumber(req:query_param("s")))
  end
end
"#;
    let pcmod = r#"mod p {
  priority 5
  on request {
    if $path == "/pcmod" {
      respond int($req.header["x-s"]) "pcmod\n"
    }
  }
}
"#;
    let cfg = format!("    app: string = \"{}\"", up.authority());
    let s = site(
        &[("m", &lua_mod("m", 10, &cfg)), ("p", pcmod)],
        &[("m.lua", lua)],
        "",
        &app(&[&up], ""),
    );
    let run = Running::start(&s);
    let answer = |r: http::Request<http_body_util::Full<bytes::Bytes>>| {
        let addr = run.addr;
        async move {
            match tokio::time::timeout(Duration::from_secs(3), try_send(addr, r)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => panic!("no answer: {e}"),
                Err(_) => panic!("the client was left waiting (a 1xx sent as the answer?)"),
            }
        }
    };
    for path in ["/respond", "/return", "/object", "/set"] {
        for s in [100, 101, 103, 199] {
            let r = answer(empty(req("GET", &format!("{path}?s={s}")))).await;
            assert_eq!(r.status, 500, "{path}?s={s}: {}", r.text());
        }
        let r = answer(empty(req("GET", &format!("{path}?s=200")))).await;
        assert_eq!(r.status, 200, "{path}?s=200");
    }
    let r = answer(empty(req("GET", "/caught?s=100"))).await;
    assert!(
        r.text().starts_with("false|") && r.text().contains("outside 200..=599"),
        "{}",
        r.text()
    );
    for (s, want) in [("100", 500), ("102", 500), ("204", 204)] {
        let r = answer(empty(req("GET", "/pcmod").header("x-s", s))).await;
        assert_eq!(r.status, want, "pcmod respond {s}");
    }
}

// ---- hooks abandoned while they wait ------------------------------------------------------

/// A server that reads requests and never answers: what a hook waits on for good.
/// Counts the connections it accepted and the ones its peer closed.
struct Stall {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Stall {
    async fn start() -> Stall {
        Self::answering(None).await
    }

    /// With `reply`, written once the request arrives (a head, say, and part of a
    /// body), before it stalls.
    async fn answering(reply: Option<&'static [u8]>) -> Stall {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stalling server");
        let addr = listener.local_addr().expect("its address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let mut replied = reply.is_none();
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        if !replied {
                            replied = true;
                            let _ = stream.write_all(reply.unwrap_or_default()).await;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Stall {
            addr,
            accepted,
            closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `GET path` on a new connection, waits until `started` holds (the hook is
/// waiting), then closes the connection without reading an answer.
async fn abandon(addr: std::net::SocketAddr, path: &str, started: impl FnMut() -> bool) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test.local\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    assert!(
        wait_until(Duration::from_secs(5), started).await,
        "the hook started waiting"
    );
    drop(stream);
}

#[tokio::test]
async fn a_hook_abandoned_while_it_waits_leaves_no_globals_behind() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let stall = Stall::start().await;
    let lua = format!(
        r#"
function on_request(req, ctx)
  if req.path == "/leak" then
    junk = string.rep("x", 8 * 1024 * 1024)
    local ok, r = pcall(std.http.request, {{ url = "http://{}/stall", timeout = 30 }})
    return std.respond(200, "done " .. #junk)
  end
  if req.path == "/alloc" then
    local s = string.rep("z", 8 * 1024 * 1024)
    return std.respond(200, "alloc " .. #s .. " junk " .. tostring(junk))
  end
end
"#,
        stall.addr
    );
    // 44 MiB: room for three leaked 8 MiB globals and a fourth hook's 16 MiB peak
    // (string.rep's buffer and its result), but not for /alloc after four leaks.
    let s = one_lua_site(&lua, &up, "", "lua_memory_limit = \"44MiB\"");
    let run = Running::start(&s);
    for i in 1..=4 {
        abandon(run.addr, "/leak", || stall.accepted() >= i).await;
        assert!(
            wait_until(Duration::from_secs(5), || stall.closed() >= i).await,
            "the abandoned hook's call was closed"
        );
    }
    for _ in 0..3 {
        let r = get(run.addr, "/alloc").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "alloc 8388608 junk nil".into()),
            "the abandoned hooks' globals are gone"
        );
    }
}

// ---- responses from std.proxy.forward that a hook does not answer with --------------------

/// The in-flight count of every server of upstream set `name`, as `least_conn` and
/// the admin API see it.
fn inflight_of(run: &Running, name: &str) -> usize {
    let g = run.shared().generation();
    g.upstreams
        .sets
        .iter()
        .filter(|s| s.name() == name)
        .flat_map(|s| s.servers.iter())
        .map(|s| s.inflight())
        .sum()
}

const FORWARDS: &str = r#"
function on_request(req, ctx)
  local p = req.path
  if p == "/dropped" then
    local r = std.proxy.forward()
    return std.respond(200, "dropped " .. r.status)
  end
  if p == "/twice" then
    local r1 = std.proxy.forward()
    local r2 = std.proxy.forward()
    r2:set_header("x-first", r1.status)
    return r2
  end
  if p == "/not-returned" then
    local r = std.proxy.forward()
    r:set_header("x-seen", "lua")
    return
  end
  if p == "/again" then
    local r = std.proxy.forward()
    local ok, e = pcall(std.proxy.forward)
    return std.respond(200, tostring(ok) .. "|" .. tostring(e))
  end
  if p == "/read-first" then
    local b = req:body()
    local r1 = std.proxy.forward()
    local r2 = std.proxy.forward()
    r2:set_header("x-read", #b .. "," .. #req:body())
    return r2
  end
end
"#;

#[tokio::test]
async fn forward_responses_not_answered_with_are_closed_when_the_hook_ends() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let s = one_lua_site(FORWARDS, &up, "", "");
    let s_text = std::fs::read_to_string(s.config_path()).expect("read config.toml");
    s.write_config(&s_text.replace(
        "[upstreams.app]\n",
        "[upstreams.app]\nbalance = \"least_conn\"\n",
    ));
    let run = Running::start(&s);
    for i in 0..10 {
        let r = get(run.addr, "/dropped").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "dropped 200".into()),
            "{i}"
        );
        let r = get(run.addr, "/twice").await;
        assert_eq!(r.status, 200, "{i}: {}", r.text());
        assert_eq!(r.header("x-first").as_deref(), Some("200"));
        assert_eq!(r.server(), "app");
    }
    assert_eq!(up.requests(), 30);
    assert!(
        wait_until(Duration::from_secs(3), || inflight_of(&run, "app") == 0).await,
        "the forwarded responses were let go: {} still in flight",
        inflight_of(&run, "app")
    );
}

#[tokio::test]
async fn a_forwarded_request_is_not_sent_again_by_the_pipeline() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let s = one_lua_site(FORWARDS, &up, "", "");
    let run = Running::start(&s);
    let post = |path: &str| {
        req("POST", path)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"hello body",
            )))
            .expect("request builds")
    };

    // Not returned: the forward's response answers, and the body went up once.
    let r = send(run.addr, post("/not-returned")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-seen").as_deref(), Some("lua"));
    assert_eq!(r.json()["body_len"], 10);
    assert_eq!(up.requests(), 1, "the request went upstream once");
    assert_eq!(&up.last().expect("a request").body[..], b"hello body");

    // A second forward of a body that already went is an error, not an empty body.
    let r = send(run.addr, post("/again")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("false|") && r.text().contains("earlier std.proxy.forward"),
        "{}",
        r.text()
    );
    assert_eq!(up.requests(), 2);

    // A body read with req:body() first goes with every forward.
    let r = send(run.addr, post("/read-first")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-read").as_deref(), Some("10,10"));
    assert_eq!(r.json()["body_len"], 10);
    let all = up.all();
    assert_eq!(all.len(), 4);
    assert_eq!(&all[2].body[..], b"hello body");
    assert_eq!(&all[3].body[..], b"hello body");
}

// ---- a request body that cannot be read ---------------------------------------------------

/// `POST path` with a chunked body of `len` bytes, written raw; the answer as text.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, len: usize) -> String {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nhost: test.local\r\ntransfer-encoding: chunked\r\n\r\n")
            .into_bytes();
    let piece = vec![b'a'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len());
        raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        raw.extend_from_slice(&piece[..n]);
        raw.extend_from_slice(b"\r\n");
        left -= n;
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw_request(addr, &raw).await
}

#[tokio::test]
async fn a_request_body_over_the_limit_fails_the_request_even_when_the_error_is_caught() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/caught" then
    local ok, b = pcall(req.body, req)
    req:set_header("x-body-ok", tostring(ok))
    return
  end
  if req.path == "/caught-respond" then
    local ok = pcall(req.body, req)
    return std.respond(200, "fine " .. tostring(ok))
  end
  if req.path == "/caught-forward" then
    pcall(req.body, req)
    local ok, r = pcall(std.proxy.forward)
    return std.respond(200, "forwarded " .. tostring(ok))
  end
  if req.path == "/uncaught" then
    req:body()
  end
  if req.path == "/small" then
    req:set_header("x-len", #req:body())
  end
end
"#;
    let s = one_lua_site(lua, &up, "\n[server.limits]\nmax_body = \"1MiB\"", "");
    let run = Running::start(&s);
    for path in ["/caught", "/caught-respond", "/caught-forward", "/uncaught"] {
        let raw = post_chunked(run.addr, path, 1_300_000).await;
        assert_eq!(raw_status(&raw), 413, "{path}: {raw}");
    }
    assert_eq!(up.requests(), 0, "nothing went upstream");
    let raw = post_chunked(run.addr, "/small", 1000).await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert_eq!(
        up.last().and_then(|r| r.header("x-len")).as_deref(),
        Some("1000")
    );
}

// ---- bodies that stall --------------------------------------------------------------------

#[tokio::test]
async fn reading_a_body_that_stalls_ends_in_an_error_within_the_response_timeout() {
    let stall = Stall::answering(Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: text/plain\r\n\r\nabc",
    ))
    .await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/forward" then
    local r = std.proxy.forward{ timeout = 0.3 }
    local ok, e = pcall(r.body, r)
    return std.respond(200, "forward " .. tostring(ok) .. " " .. tostring(e))
  end
  if req.path == "/forward-default" then
    local r = std.proxy.forward()
    local ok, e = pcall(r.body, r)
    return std.respond(200, "default " .. tostring(ok) .. " " .. tostring(e))
  end
end

function on_response(req, resp, ctx)
  if req.path == "/caught" then
    local ok, e = pcall(resp.body, resp)
    resp:set_header("x-error", tostring(e))
    resp:set_body("fallback\n")
  elseif req.path == "/uncaught" then
    resp:body()
  elseif req.path == "/cut" then
    pcall(resp.body, resp)
  end
end
"#;
    let s = site(
        &[("m", &lua_mod("m", 10, ""))],
        &[("m.lua", lua)],
        "",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\nresponse_timeout = \"1s\"\n\n[[routes]]\nupstream = \"app\"\n",
            stall.addr
        ),
    );
    let run = Running::start(&s);
    let within = |path: &'static str| {
        let addr = run.addr;
        async move {
            let started = std::time::Instant::now();
            let raw = tokio::time::timeout(
                Duration::from_secs(5),
                raw_request(
                    addr,
                    format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes(),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer: the body read has no deadline"));
            (raw, started.elapsed())
        }
    };

    let (raw, took) = within("/caught").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert_eq!(raw_body(&raw), "fallback\n");
    let error = raw_header(&raw, "x-error").unwrap_or_default();
    assert!(error.contains("within 1s"), "{error}");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    let (raw, _) = within("/uncaught").await;
    assert_eq!(raw_status(&raw), 500, "{raw}");

    let (raw, took) = within("/forward").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(
        raw_body(&raw).starts_with("forward false") && raw_body(&raw).contains("within 300ms"),
        "{raw}"
    );
    assert!(
        took < Duration::from_millis(900),
        "the forward's own timeout: {took:?}"
    );

    let (raw, _) = within("/forward-default").await;
    assert!(raw_body(&raw).contains("within 1s"), "{raw}");

    // Caught, with no new body: the proxy's own 502 (what was read is lost), not an
    // empty 200 and not a connection closed with no answer.
    let (raw, _) = within("/cut").await;
    assert!(
        raw.is_empty() || raw_body(&raw).len() < 100,
        "the answer is not complete: {raw}"
    );
    assert_ne!(
        raw_header(&raw, "content-length").as_deref(),
        Some("0"),
        "not an empty answer: {raw}"
    );
    assert_eq!(raw_status(&raw), 502, "{raw}");
}

/// A failed `body()` whose error the hook catches, with no `set_body` after it: the
/// body is lost, and the client gets the proxy's 502 (with its `x-request-id`), which
/// `on_log` sees too; before, the client got no bytes at all while the logs said 200.
#[tokio::test]
async fn a_lost_body_after_a_caught_body_error_answers_502_and_logs_it() {
    let up = Upstream::start("app", Behavior::fixed_body(vec![b'x'; 2000], false)).await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/status" then
    return std.respond(200, tostring(std.shared.get("status:" .. req:query_param("p"))))
  end
  if req.path == "/object" then
    local r = std.proxy.forward()
    local ok = pcall(r.body, r)
    r:set_header("x-read", tostring(ok))
    return r
  end
end

function on_response(req, resp, ctx)
  if req.path == "/caught" or req.path == "/status-set" then
    local ok, e = pcall(resp.body, resp)
    resp:set_header("x-read", tostring(ok))
    if req.path == "/status-set" then resp:set_status(503) end
  elseif req.path == "/replaced" then
    pcall(resp.body, resp)
    resp:set_body("replaced\n")
  end
end

function on_log(req, resp, ctx)
  std.shared.set("status:" .. req.path, resp.status)
end
"#;
    let s = one_lua_site(lua, &up, "\n[server.limits]\nmax_body = \"1KiB\"", "");
    let run = Running::start(&s);
    for path in ["/caught", "/status-set", "/object"] {
        let raw = raw_request(
            run.addr,
            format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&raw), 502, "{path}: {raw:?}");
        assert!(
            raw_body(&raw).starts_with("502 Bad Gateway\n"),
            "{path}: {raw}"
        );
        let id = raw_header(&raw, "x-request-id").unwrap_or_default();
        assert!(!id.is_empty(), "{path}: {raw}");
        assert!(raw_body(&raw).contains(&id), "{path}: {raw}");
        assert_eq!(
            raw_header(&raw, "x-read"),
            None,
            "the hook's headers went with the body: {raw}"
        );
        let mut seen = String::new();
        for _ in 0..50 {
            seen = get(run.addr, &format!("/status?p={path}")).await.text();
            if seen != "nil" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, "502", "{path}: on_log saw what the client got");
    }
    // A new body after the failure is what the client gets.
    let r = get(run.addr, "/replaced").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "replaced\n");
}

/// `std.http.request`'s timeout error says how long it waited, whether the head
/// never came (`no response within 300ms`, before: `no response in time`) or the
/// body did not finish (`no complete answer within 300ms`), as docs/stdlib.md quotes.
#[tokio::test]
async fn http_request_timeouts_say_what_did_not_arrive_in_time() {
    let silent = Stall::start().await;
    let trickle =
        Stall::answering(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")).await;
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = format!(
        r#"
function on_request(req, ctx)
  local out = {{}}
  for _, addr in ipairs({{ "{}", "{}" }}) do
    local ok, e = pcall(std.http.request, {{ url = "http://" .. addr .. "/", timeout = 0.3 }})
    out[#out + 1] = tostring(e)
  end
  return std.respond(200, table.concat(out, "\n"))
end
"#,
        silent.addr, trickle.addr
    );
    let s = one_lua_site(&lua, &up, "", "");
    let run = Running::start(&s);
    let text = get(run.addr, "/").await.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with(&format!(
            "std.http.request http://{}/: no response within 300ms",
            silent.addr
        )),
        "{text}"
    );
    assert!(
        lines[1].ends_with(&format!(
            "std.http.request http://{}/: no complete answer within 300ms (the head came, not all of the body)",
            trickle.addr
        )),
        "{text}"
    );
}

// ---- std.cache.store, then a new body ------------------------------------------------------

/// `std.cache.store` stores the body the client gets, even when a module sets a new
/// one after it (in the same hook, after reading the body, or in a later module):
/// before, `set_body` dropped the store (nothing was stored though `store` said it
/// would be), or the entry kept the old body while the client got the new one.
#[tokio::test]
async fn cache_store_keeps_the_body_a_later_set_body_makes() {
    let up = Upstream::start(
        "app",
        Behavior::fixed_body("orig", false).with_header("cache-control", "max-age=60"),
    )
    .await;
    let cache_lua = r#"
function on_request(req, ctx)
  std.cache.check()
end

function on_response(req, resp, ctx)
  local stored = std.cache.store()
  resp:set_header("x-stored", tostring(stored))
  -- (A hit's body is the stored one: left alone.)
  if stored and req.path == "/after" then
    resp:set_body("changed after store")
  elseif stored and req.path == "/read-after" then
    local b = resp:body()
    resp:set_body(b:upper() .. "!")
  end
end
"#;
    // Priority 5: its response phase runs after the cache module's (in reverse).
    let rewrite_lua = r#"
function on_response(req, resp, ctx)
  -- (A hit is the stored response: left alone.)
  if req.path == "/later-module" and resp:header("x-cache") ~= "HIT" then
    resp:set_body("from a later module")
    -- The body's description goes into the entry with it.
    resp:set_header("content-type", "text/html")
  end
end
"#;
    let s = site(
        &[
            ("rewrite", &lua_mod("rewrite", 5, "")),
            ("cache", &lua_mod("cache", 10, "")),
        ],
        &[("cache.lua", cache_lua), ("rewrite.lua", rewrite_lua)],
        "",
        &app(&[&up], ""),
    );
    let run = Running::start(&s);
    for (path, body) in [
        ("/after", "changed after store"),
        ("/read-after", "ORIG!"),
        ("/later-module", "from a later module"),
    ] {
        let first = get(run.addr, path).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(first.header("x-stored").as_deref(), Some("true"), "{path}");
        assert_eq!(first.text(), body, "{path}");
        let mut second = get(run.addr, path).await;
        for _ in 0..50 {
            if second.header("x-cache").as_deref() == Some("HIT") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            second = get(run.addr, path).await;
        }
        assert_eq!(
            second.header("x-cache").as_deref(),
            Some("HIT"),
            "{path}: stored"
        );
        assert_eq!(second.text(), body, "{path}: the body the client got");
        assert_eq!(
            second.header("content-length"),
            Some(body.len().to_string()),
            "{path}"
        );
        assert_eq!(
            second.header("content-type"),
            first.header("content-type"),
            "{path}: the type of the body the client got"
        );
    }
}

// ---- small API points -----------------------------------------------------------------------

/// `std.respond`'s status error is named like every std error; `return 200.0` is a
/// status, as std arguments take an integral float for an integer.
#[tokio::test]
async fn respond_status_errors_are_named_and_an_integral_float_is_a_status() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/respond-100" then
    local ok, e = pcall(std.respond, 100)
    return std.respond(200, tostring(e))
  end
  if req.path == "/float" then
    return 204.0
  end
  if req.path == "/fraction" then
    return 204.5
  end
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let r = get(run.addr, "/respond-100").await;
    assert!(
        r.text()
            .starts_with("std.respond: status 100 is outside 200..=599"),
        "{}",
        r.text()
    );
    assert_eq!(get(run.addr, "/float").await.status, 204);
    assert_eq!(get(run.addr, "/fraction").await.status, 500);
}

/// An error a method of `req` or `resp` raises, caught with `pcall`, is a plain
/// string like a std function's: the script's position, the method's name, the
/// message; wrong argument types are named in Lua's terms. (Before: mlua's error
/// object, `runtime error: ...` plus a traceback, or `bad argument #2 to
/// ReqHandle.header: error converting Lua nil to String`.)
#[tokio::test]
async fn caught_handle_method_errors_read_like_std_errors() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  local out = {}
  local function try(f, ...)
    local ok, e = pcall(f, ...)
    out[#out + 1] = type(e) .. "|" .. tostring(e)
  end
  try(function() req:set_header("bad name", "x") end)
  try(function() return req:header(nil) end)
  try(function() req:set_path("/a?b") end)
  try(req.set_header, "x", "y")
  local _, e = xpcall(function() req:add_header("x", {}) end, function(m) return "handled " .. tostring(m) end)
  out[#out + 1] = e
  return std.respond(200, table.concat(out, "\n"))
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let r = get(run.addr, "/").await;
    let text = r.text();
    // The module's file as Lua names it (a long path shortened to `...tail`): `m.lua`.
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.find("m.lua:") {
            Some(b) => {
                let a = l[..b].rfind(['|', ' ']).map_or(0, |i| i + 1);
                format!("{}{}", &l[..a], &l[b..])
            }
            None => l.to_owned(),
        })
        .collect();
    assert_eq!(
        lines,
        [
            "string|m.lua:8: req:set_header: \"bad name\" is not a valid header name",
            "string|m.lua:9: req:header: bad argument #1 (string expected, got nil)",
            "string|m.lua:10: req:set_path: \"/a?b\": a path has no '?' or '#': use req:set_query for the query",
            "string|m.lua:5: req:set_header: called without its object: write req:set_header(...), with a colon",
            "handled m.lua:12: req:add_header: a header value must be a string, not table",
        ],
        "{text}"
    );
}

// ---- binary strings ------------------------------------------------------------------------

#[tokio::test]
async fn bodies_keep_their_bytes_and_text_arguments_escape_binary_strings() {
    let up = Upstream::start(
        "app",
        Behavior::fixed_body(&b"\x00\xff\xfe up"[..], false).with_header("x-up", "v"),
    )
    .await;
    let lua = r#"
local GIF = "GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff"
function on_request(req, ctx)
  local p = req.path
  if p == "/respond" then
    return std.respond(200, GIF, { ["content-type"] = "image/gif" })
  end
  if p == "/respond-named" then
    return std.respond{ status = 200, body = GIF }
  end
  if p == "/post" then
    local r = std.http.request{ url = "http://" .. config.app .. "/in", method = "POST", body = "\x1f\x8b\x08\x00\xff\xfe" }
    return std.respond(200, r.body)
  end
  if p == "/post-positional" then
    local r = std.http.request("http://" .. config.app .. "/in2", "PUT", nil, "\xfe\x00\xff")
    return std.respond(200, r.body)
  end
  if p == "/header" then
    return std.respond(200, req:header("x-bin"))
  end
  if p == "/text" then
    local out = {}
    local function try(name, f, ...)
      local ok, e = pcall(f, ...)
      out[#out + 1] = name .. "=" .. tostring(ok) .. ":" .. tostring(e):match("^[^\n]*")
    end
    try("shared-key", function()
      std.shared.set("k\xff", "v")
      return std.shared.get("k\\xff")
    end)
    try("respond-header", function()
      return std.respond(200, "x", { ["x-bin"] = "\xff" }):header("x-bin")
    end)
    try("respond-name", std.respond, 200, "x", { ["x\xff"] = "v" })
    try("http-header", function()
      return std.http.request{ url = "http://" .. config.app .. "/h", headers = { ["x-bin"] = "a\xffb" } }.status
    end)
    try("ctx", function() ctx.bin = "\xff"; return ctx.bin end)
    try("ctx-table", function() ctx.bin = { ["k\xff"] = 1 }; return next(ctx.bin) end)
    return std.respond(200, table.concat(out, "\n"))
  end
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let gif: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff";
    for path in ["/respond", "/respond-named"] {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            &r.body[..],
            gif,
            "{path}: the bytes as the script wrote them"
        );
    }

    let r = get(run.addr, "/post").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        &r.body[..],
        b"\x00\xff\xfe up",
        "the call's answer, byte for byte"
    );
    let sent = up.last().expect("the call arrived");
    assert_eq!(&sent.body[..], b"\x1f\x8b\x08\x00\xff\xfe");
    assert_eq!(sent.header("content-length").as_deref(), Some("6"));
    let r = get(run.addr, "/post-positional").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        &up.last().expect("the call arrived").body[..],
        b"\xfe\x00\xff"
    );

    let obs_text = http::HeaderValue::from_bytes(b"a\xffb").expect("obs-text is a valid value");
    let r = send(
        run.addr,
        empty(req("GET", "/header").header("x-bin", obs_text)),
    )
    .await;
    assert_eq!(&r.body[..], b"a\xffb", "req:header gives the value's bytes");

    // Text arguments and `ctx` values that are not UTF-8 were refused (an error, so a
    // 500 for a key built from a client's header); now they are escaped by the rule
    // pcmod reads header values by: `\xNN` per invalid byte. (A binary value for
    // std.shared is stored as it is, like a body: see
    // `std_shared_keeps_binary_strings_byte_for_byte`.)
    let r = get(run.addr, "/text").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<String> = r.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], "shared-key=true:v", "the key is the text k\\xff");
    assert_eq!(lines[1], r"respond-header=true:\xff");
    assert!(
        lines[2].starts_with("respond-name=false:") && lines[2].contains("header name"),
        "x\\xff is still no header name: {}",
        lines[2]
    );
    assert_eq!(lines[3], "http-header=true:200");
    assert_eq!(
        up.last().and_then(|r| r.header("x-bin")).as_deref(),
        Some(r"a\xffb"),
        "the call went out with the escaped text"
    );
    assert_eq!(lines[4], r"ctx=true:\xff");
    assert_eq!(lines[5], r"ctx-table=true:k\xff");
}

// ---- cookies and query parameters ------------------------------------------------------

/// One byte that is not ASCII in a `Cookie` hid every cookie in it
/// (`req:cookie("sid")` was nil beside a `Jürgen`). Cookies are read byte-wise now,
/// and Lua, whose strings are bytes, gets a value's bytes as sent (as OpenResty).
#[tokio::test]
async fn lua_reads_a_cookie_beside_one_that_is_not_ascii_and_gets_cookies_as_bytes() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  local out = {}
  for i, name in ipairs({ "sid", "name", "latin", "nope" }) do
    out[i] = req:cookie(name) or "nil"
  end
  return std.respond(200, table.concat(out, "|"))
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let cookie = http::HeaderValue::from_bytes(b"sid=abc; name=J\xc3\xbcrgen; latin=J\xfcrgen")
        .expect("obs-text is a valid header value");
    let r = send(run.addr, empty(req("GET", "/").header("cookie", cookie))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        &r.body[..],
        &b"abc|J\xc3\xbcrgen|J\xfcrgen|nil"[..],
        "{:?}",
        r.text()
    );
}

/// `req:query_param` made text of what `%ff%fe` decodes to: the 8 characters
/// `\xff\xfe`, the same as `%5Cxff%5Cxfe` gives. Lua strings are bytes: it now gives
/// the 2 bytes (as OpenResty's `get_uri_args`), and a name may be any bytes too.
#[tokio::test]
async fn lua_query_param_gives_the_bytes_a_parameter_decodes_to() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
function on_request(req, ctx)
  local out = {}
  for i, name in ipairs({ "c", "d", "\xff", "nope" }) do
    local ok, v = pcall(req.query_param, req, name)
    out[i] = ok and (v or "nil") or "error"
  end
  return std.respond(200, table.concat(out, "|"))
end
"#;
    let s = one_lua_site(lua, &up, "", "");
    let run = Running::start(&s);
    let r = get(run.addr, "/?c=%ff%fe&d=%5Cxff%5Cxfe&%ff=k").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        &r.body[..],
        &b"\xff\xfe|\\xff\\xfe|k|nil"[..],
        "{:?}",
        r.text()
    );
}

/// An HTTP/2 client (a browser) sends each cookie as a field of its own. They were
/// joined only on the way to an HTTP/1.1 upstream: a route on `cookie` missed, pcmod's
/// `$req.header["cookie"]` and Lua's `req:header("cookie")` read the first crumb, and
/// `req:headers().cookie` joined them with ", ". Now they are one `cookie` from intake
/// (RFC 9113 8.2.3), as the one line an HTTP/1.1 client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_modules_see_an_http2_clients_cookie_crumbs_as_one_cookie() {
    let pc = r#"mod pc {
  priority 10
  on request {
    set req.header["x-pc"] = "pcmod=$req.header["cookie"] c=$req.cookie["c"] up=$upstream"
  }
}
"#;
    let lua = r#"
function on_request(req, ctx)
  return std.respond(200, table.concat({
    req:header("x-pc"), "lua=" .. tostring(req:header("cookie")),
    "table=" .. tostring(req:headers().cookie), "c=" .. tostring(req:cookie("c")),
  }, "\n") .. "\n")
end
"#;
    let s = site(
        &[("pc", pc), ("lu", &lua_mod("lu", 20, ""))],
        &[("lu.lua", lua)],
        "",
        "[upstreams.app]\nservers = [\"builtin:echo\"]\n\n\
         [upstreams.crumbs]\nservers = [\"builtin:echo\"]\n\n\
         [[routes]]\nheaders = { cookie = \"a=1; b=2; c=3\" }\nupstream = \"crumbs\"\n\n\
         [[routes]]\nupstream = \"app\"\n",
    );
    let run = Running::start(&s);
    let want = "pcmod=a=1; b=2; c=3 c=3 up=crumbs\nlua=a=1; b=2; c=3\n\
                table=a=1; b=2; c=3\nc=3\n";

    let h1 = send(
        run.addr,
        empty(req("GET", "/").header("cookie", "a=1; b=2; c=3")),
    )
    .await;
    assert_eq!(h1.status, 200, "{}", h1.text());
    assert_eq!(h1.text(), want, "HTTP/1.1, one line");

    let h2 = send_h2(
        run.addr,
        empty(
            http::Request::builder()
                .method("GET")
                .uri(format!("http://{TEST_HOST}/"))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("cookie", "c=3"),
        ),
    )
    .await;
    assert_eq!(h2.status, 200, "{}", h2.text());
    assert_eq!(h2.text(), want, "HTTP/2, three crumbs: the same");
}

/// `std.ip_in` from Lua: a table of ranges, or the module's `config` list (a read-only
/// view, read through `#` and indexing) with its `[mods.NAME]` value; nil and what is
/// not an address are in no range; a bad range or a table that is no list is an error
/// naming it.
#[tokio::test]
async fn std_ip_in_tests_an_address_against_a_table_or_the_config_list() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let lua = r#"
local function answer(v) return std.respond(200, tostring(v)) end

function on_request(req, ctx)
  local p = req.path
  if p == "/config" then return answer(std.ip_in(req.client_ip, config.allow)) end
  if p == "/table" then
    return answer(std.ip_in{ ip = req.client_ip, ranges = { "10.0.0.0/8", "127.0.0.0/8" } })
  end
  if p == "/other" then return answer(std.ip_in(req.client_ip, { "10.0.0.0/8", "::1" })) end
  if p == "/mapped" then return answer(std.ip_in("::ffff:10.1.2.3", { "10.0.0.0/8" })) end
  if p == "/nil" then return answer(std.ip_in(req:header("x-real-ip"), { "0.0.0.0/0" })) end
  if p == "/junk" then return answer(std.ip_in("localhost", { "0.0.0.0/0", "::/0" })) end
  local ranges = ({
    ["/bad"] = { "10.0.0.0/8", "10.0.0/8" },
    ["/number"] = { "10.0.0.0/8", 7 },
    ["/map"] = { allow = "127.0.0.1" },
  })[p]
  local ok, e = pcall(std.ip_in, req.client_ip, ranges or "10.0.0.0/8")
  return answer(e)
end
"#;
    let s = site(
        &[(
            "m",
            &lua_mod("m", 10, "    allow: list<string> = [\"10.0.0.0/8\"]"),
        )],
        &[("m.lua", lua)],
        "",
        &format!(
            "{}\n[mods.m]\nallow = [\"192.168.0.0/16\", \"127.0.0.1\"]\n",
            app(&[&up], "")
        ),
    );
    let run = Running::start(&s);
    for (path, want) in [
        ("/config", "true"),
        ("/table", "true"),
        ("/other", "false"),
        ("/mapped", "true"),
        ("/nil", "false"),
        ("/junk", "false"),
    ] {
        let r = get(run.addr, path).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, want),
            "{path}"
        );
    }
    for (path, want) in [
        (
            "/bad",
            "std.ip_in: argument `ranges`: \"10.0.0/8\" is not an IP address or CIDR range",
        ),
        ("/number", "std.ip_in: argument `ranges`[2] must be a string, not integer"),
        (
            "/map",
            "std.ip_in: argument `ranges` must be a list of strings (keys 1..n), not a table with other keys",
        ),
        (
            "/string",
            "std.ip_in: argument `ranges` must be a list of strings, not string",
        ),
    ] {
        let r = get(run.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.text().contains(want), "{path}: {}", r.text());
    }
}

//! The Lua sandbox against a hostile script, over real sockets: a request cannot
//! resume or close another request's hook coroutine; library functions that loop in
//! C over a large input are charged to the instruction budget, and a slice that ran
//! over its wall-clock limit fails; short coroutines cannot get around the budget;
//! a library from `mods/lib` is one instance per module, so one module cannot change
//! what another gets from `require`; errors from the sandbox's own versions of
//! library functions carry the script's position and the public name.

mod common;

use std::time::Duration;

use common::*;

/// A site with `mods` (`NAME.pcmod` text) and `files` (other files under mods/),
/// one worker, serving `rest`.
fn site(mods: &[(&str, &str)], files: &[(&str, &str)], rest: &str) -> Site {
    let site = Site::new("luasb");
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
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n{rest}\n"
    ));
    site
}

/// A module whose phases are all in `NAME.lua`.
fn lua_mod(name: &str, priority: u32, config: &str) -> String {
    format!("mod {name} {{\n  priority {priority}\n  config {{\n{config}\n  }}\n  lua \"{name}.lua\"\n}}\n")
}

const ECHO_APP: &str =
    "[upstreams.app]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"app\"\n";

// ---- 1. hook coroutines belong to the driver ----------------------------------------------

const ATTACKER: &str = r#"
local saved = {}
function on_request(req, ctx)
  if req.path == "/save" then
    saved.co = coroutine.running()
    return std.respond(200, "saved " .. type(saved.co))
  end
  if req.path == "/steal" then
    local ok, a = coroutine.resume(saved.co, true, { status = 200, body = "allow", headers = {} })
    return std.respond(200, "stolen " .. tostring(ok) .. " " .. tostring(a))
  end
  if req.path == "/kill" then
    local ok, e = coroutine.close(saved.co)
    return std.respond(200, "killed " .. tostring(ok) .. " " .. tostring(e))
  end
  if req.path == "/wrap" then
    -- Coroutines the script makes itself still work.
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
    local _, x = coroutine.resume(co, 1)
    local _, y = coroutine.resume(co, 5)
    local closed = coroutine.close(coroutine.create(function() end))
    return std.respond(200, gen() .. gen() .. gen() .. " " .. x .. " " .. y .. " " .. tostring(closed))
  end
end
"#;

const VICTIM: &str = r#"
function on_request(req, ctx)
  if req.path == "/victim" then
    local r = std.http.request{ url = "http://" .. config.slow .. "/slow" }
    return std.respond(200, "victim " .. r.status .. " " .. #r.body .. " secret=" .. req:header("x-secret"))
  end
end
"#;

/// Starts the victim's request, waits until its hook waits on the slow upstream, and
/// then runs the attacker's `path`; returns (attacker, victim).
async fn attack(
    addr: std::net::SocketAddr,
    slow: &Upstream,
    path: &str,
    seen: usize,
) -> (Resp, Resp) {
    let victim = tokio::spawn(async move {
        send(
            addr,
            empty(req("GET", "/victim").header("x-secret", "s3cret")),
        )
        .await
    });
    assert!(
        wait_until(Duration::from_secs(5), || slow.requests() >= seen).await,
        "the victim's hook waits on the slow upstream"
    );
    let attacker = get(addr, path).await;
    let victim = victim.await.expect("the victim's request");
    (attacker, victim)
}

#[tokio::test]
async fn a_request_cannot_resume_or_close_another_requests_hook_coroutine() {
    let slow = Upstream::start("slow", Behavior::slow(2000)).await;
    let s = site(
        &[
            ("attacker", &lua_mod("attacker", 10, "")),
            (
                "victim",
                &lua_mod(
                    "victim",
                    20,
                    &format!("    slow: string = \"{}\"", slow.authority()),
                ),
            ),
        ],
        &[("attacker.lua", ATTACKER), ("victim.lua", VICTIM)],
        ECHO_APP,
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/save").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "saved thread".into()));

    let (attacker, victim) = attack(run.addr, &slow, "/steal", 1).await;
    assert!(
        victim.status == 200
            && victim.text().starts_with("victim 200 ")
            && victim.text().ends_with(" secret=s3cret"),
        "the victim gets its real answer: {} {}",
        victim.status,
        victim.text()
    );
    assert_eq!(
        attacker.status,
        500,
        "resuming another request's hook is refused: {}",
        attacker.text()
    );

    let (attacker, victim) = attack(run.addr, &slow, "/kill", 2).await;
    assert!(
        victim.status == 200
            && victim.text().starts_with("victim 200 ")
            && victim.text().ends_with(" secret=s3cret"),
        "the victim's hook is not closed under it: {} {}",
        victim.status,
        victim.text()
    );
    assert_eq!(
        attacker.status,
        500,
        "closing another request's hook is refused: {}",
        attacker.text()
    );

    let r = get(run.addr, "/wrap").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "123 2 10 true".into()));
}

// ---- 2. C functions over large inputs, and the slice's wall-clock limit -------------------

const HEAVY: &str = r##"
function on_request(req, ctx)
  local p = req.path
  if p == "/utf8-len" then
    local s = ("x"):rep(2.5e7)
    for i = 1, 10 do utf8.len(s) end
    return std.respond(200, "ran")
  end
  if p == "/upper" then
    local s = ("x"):rep(1e7)
    for i = 1, 10 do s:upper() end
    return std.respond(200, "ran")
  end
  if p == "/bytes" then
    local s = ("x"):rep(3e5)
    for i = 1, 5 do local t = { s:byte(1, -1) } end
    return std.respond(200, "ran")
  end
  if p == "/sort-big" then
    local t = {}
    for i = 1, 2000 do t[i] = (i * 7919) % 2003 end
    for i = 1, 200 do table.sort(t) end
    return std.respond(200, "ran")
  end
  if p == "/concat" then
    local t = {}
    for i = 1, 100 do t[i] = ("y"):rep(1e5) end
    for i = 1, 20 do table.concat(t) end
    return std.respond(200, "ran")
  end
  if p == "/slow-slice" then
    -- tonumber is not charged: only the clock stops this slice.
    local s = (" "):rep(2e7)
    local n = tonumber
    for i = 1, 100 do n(s) end
    return std.respond(200, "ran")
  end
  if p == "/slow-few" then
    -- Fewer instructions than one tick's worth: only the check at the slice's end
    -- sees the time.
    local s, n = (" "):rep(2e7), tonumber
    n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s)
    n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s) n(s)
    return std.respond(200, "ran")
  end
  if p == "/fine" then
    local s = ("x"):rep(5000)
    local u = s:upper():lower():reverse():sub(2, 10)
    local t = { 3, 1, 2 }
    table.sort(t)
    return std.respond(200, u .. " " .. utf8.len("héllo") .. " " .. table.concat(t, ",")
      .. " " .. select("#", table.unpack({ 1, 2, 3 })) .. " " .. string.format("%5.1f", 2.25)
      .. " " .. #("ab"):rep(3, "-") .. " " .. utf8.char(72, 105) .. " " .. utf8.offset("héllo", 3)
      .. " " .. s:byte(1))
  end
end
"##;

#[tokio::test]
async fn c_functions_over_large_inputs_are_charged_and_a_slow_slice_fails() {
    let s = site(
        &[("heavy", &lua_mod("heavy", 10, ""))],
        &[("heavy.lua", HEAVY)],
        ECHO_APP,
    );
    let run = Running::start(&s);
    let mut statuses = Vec::new();
    for path in [
        "/utf8-len",
        "/upper",
        "/bytes",
        "/sort-big",
        "/concat",
        "/slow-slice",
        "/slow-few",
    ] {
        let r = get(run.addr, path).await;
        statuses.push((path, r.status.as_u16()));
    }
    assert!(
        statuses.iter().all(|(_, status)| *status == 500),
        "every one ends in 500: {statuses:?}"
    );
    let r = get(run.addr, "/fine").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "xxxxxxxxx 5 1,2,3 3   2.2 8 Hi 4 120".into())
    );
}

// ---- 3. short coroutines are charged ------------------------------------------------------

const COROUTINES: &str = r#"
local function work()
  local x = 0
  for i = 1, 300 do x = x + i end
  return x
end
function on_request(req, ctx)
  if req.path == "/coroutines" then
    for j = 1, 20000 do coroutine.resume(coroutine.create(work)) end
    return std.respond(200, "ran")
  end
  if req.path == "/wraps" then
    for j = 1, 20000 do coroutine.wrap(work)() end
    return std.respond(200, "ran")
  end
  if req.path == "/generator" then
    local sum = 0
    for i = 1, 20 do
      for v in coroutine.wrap(function() for k = 1, 100 do coroutine.yield(k) end end) do sum = sum + v end
    end
    return std.respond(200, "sum " .. sum)
  end
end
"#;

#[tokio::test]
async fn short_coroutines_cannot_get_around_the_budget() {
    let s = site(
        &[("co", &lua_mod("co", 10, ""))],
        &[("co.lua", COROUTINES)],
        ECHO_APP,
    );
    let run = Running::start(&s);
    let mut statuses = Vec::new();
    for path in ["/coroutines", "/wraps"] {
        statuses.push((path, get(run.addr, path).await.status.as_u16()));
    }
    assert_eq!(statuses, vec![("/coroutines", 500), ("/wraps", 500)]);
    let r = get(run.addr, "/generator").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "sum 101000".into()));
}

// ---- 4. one instance of a library per module ----------------------------------------------

const STRINGS_LIB: &str = r#"
local M = {}
function M.is_admin_path(p) return p:sub(1, 7) == "/admin/" end
return M
"#;

const TAMPER: &str = r#"
function on_request(req, ctx)
  if req.path == "/tamper" then
    require("strings").is_admin_path = function() return false end
    return std.respond(200, "tampered " .. tostring(require("strings").is_admin_path("/admin/x")))
  end
end
"#;

const GUARD: &str = r#"
local strings = require("strings")
function on_request(req, ctx)
  if strings.is_admin_path(req.path) or require("strings").is_admin_path(req.path) then
    return std.respond(403, "admin only")
  end
end
"#;

#[tokio::test]
async fn a_module_cannot_change_the_library_another_module_requires() {
    let s = site(
        &[
            ("tamper", &lua_mod("tamper", 10, "")),
            ("guard", &lua_mod("guard", 20, "")),
        ],
        &[
            ("tamper.lua", TAMPER),
            ("guard.lua", GUARD),
            ("lib/strings.lua", STRINGS_LIB),
        ],
        ECHO_APP,
    );
    let run = Running::start(&s);
    assert_eq!(get(run.addr, "/admin/x").await.status, 403);
    let r = get(run.addr, "/tamper").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "tampered false".into()),
        "a module may change its own copy"
    );
    let r = get(run.addr, "/admin/x").await;
    assert_eq!(r.status, 403, "the guard still works: {}", r.text());
}

// ---- 5. errors from the sandbox's versions of library functions ---------------------------

const ERRORS: &str = r#"
local function try(out, f)
  local ok, e = pcall(f)
  out[#out + 1] = tostring(e)
end
function on_request(req, ctx)
  if req.path == "/errors" then
    local out = {}
    try(out, function() local r = ("x"):rep(2^40) return r end)
    try(out, function() local r = string.find("abc", "[a") return r end)
    try(out, function() local r = rawset(1, 2, 3) return r end)
    try(out, function() local r = string.gsub("abc", "b", "x", {}) return r end)
    try(out, function() local r = coroutine.resume(42) return r end)
    try(out, function() local r = utf8.len(("x"):rep(2000), {}) return r end)
    return std.respond(200, table.concat(out, "\n"))
  end
end
"#;

#[tokio::test]
async fn errors_from_wrapped_library_functions_carry_the_scripts_position() {
    let s = site(
        &[("errs", &lua_mod("errs", 10, ""))],
        &[("errs.lua", ERRORS)],
        ECHO_APP,
    );
    let run = Running::start(&s);
    let r = get(run.addr, "/errors").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let expected = [
        (9, "resulting string too large"),
        (10, "malformed pattern"),
        (
            11,
            "bad argument #1 to 'rawset' (table expected, got number)",
        ),
        (12, "bad argument #4 to 'gsub' (number expected, got table)"),
        (
            13,
            "bad argument #1 to 'resume' (coroutine expected, got number)",
        ),
        (14, "bad argument #2 to 'len' (number expected, got table)"),
    ];
    for (line, (at, message)) in lines.iter().zip(expected) {
        assert!(
            line.contains(&format!("errs.lua:{at}: ")) && line.contains(message),
            "{line:?} should be at errs.lua:{at} and say {message:?}"
        );
        assert!(!line.contains("sandbox"), "{line}");
    }
}

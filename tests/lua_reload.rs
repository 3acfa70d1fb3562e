//! Lua chunks and libraries across a generation's life, over real sockets: a
//! generation's workers load `require`d libraries from what its check read (never the
//! disk again), a worker's VM build that fails is retried and answered with the
//! request's id and the module's name, load errors name the file and line Lua named
//! (a library, a chunk without `.lua`), hidden files in the scripts folder are not
//! modules or libraries, and `lua "FILE"` stays inside the scripts folder.
//!
//! Each test writes a site (config.toml + mods/) to a temp folder and runs proxycache
//! in-process, except the `check` test, which runs the binary.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::prometheus::parse;
use common::*;
use http_body_util::Full;
use serde_json::Value;

const ECHO_APP: &str =
    "[upstreams.app]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"app\"\n";

/// A site with `mods` (`NAME.pcmod` text) and `files` (other files under mods/),
/// `workers` workers, the watcher off.
fn site(mods: &[(&str, &str)], files: &[(&str, &[u8])], workers: usize) -> Site {
    let site = Site::new("lua-reload");
    for (name, text) in mods {
        site.write_mod(name, text);
    }
    for (path, bytes) in files {
        write(&site, path, bytes);
    }
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = false\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{ECHO_APP}"
    ));
    site
}

/// Writes `bytes` to `path` under the site's mods/ (in place, as `cp` does).
fn write(site: &Site, path: &str, bytes: &[u8]) {
    let full = site.mods_dir().join(path);
    if let Some(dir) = full.parent() {
        std::fs::create_dir_all(dir).expect("create a folder under mods/");
    }
    std::fs::write(full, bytes).expect("write a file under mods/");
}

async fn admin(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let request = req(method, path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request builds");
    send(addr, request).await
}

/// `POST /reload`: the status and the JSON report.
async fn reload(addr: std::net::SocketAddr) -> (u16, Value) {
    let resp = admin(addr, "POST", "/reload", "").await;
    (resp.status.as_u16(), resp.json())
}

/// The answers to `n` requests, each on a connection of its own (so both workers of
/// two get some), as `status body`.
async fn answers(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(addr, "/").await;
        out.push(format!("{} {}", r.status.as_u16(), r.text()));
    }
    out
}

/// Asserts every answer is `200 want`.
fn all_are(answers: &[String], want: &str, what: &str) {
    let expected = format!("200 {want}");
    assert!(
        answers.iter().all(|a| *a == expected),
        "{what}: expected every answer to be {expected:?}, got {answers:?}"
    );
}

const GATE_PCMOD: &str = "mod gate {\n  lua \"gate.lua\"\n}\n";

const GATE_LUA: &str = "local util = require(\"util\")\n\
function on_request(req, ctx)\n  return std.respond(200, util.tag(\"v1\"))\nend\n";

/// `lib/util.lua`, seven lines, whose tag starts with `prefix`.
fn util(prefix: &str) -> String {
    format!(
        "-- util: tags\nlocal M = {{}}\n\nfunction M.tag(s)\n  return \"{prefix}\" .. s\nend\nM.version = 1\nreturn M\n"
    )
}

/// The same library broken on line 7.
fn broken_util() -> String {
    util("a:").replace("M.version = 1", "M.version = = 1")
}

/// A library changed after the generation was checked reaches none of its workers;
/// broken, it fails the reload (named at its own file and line, in the report,
/// `/status` and `/mods`) while every worker goes on serving the old code; put back
/// byte for byte, "nothing changed" still serves it; a reload that takes a good new
/// version serves that on every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_serves_the_libraries_it_was_checked_with() {
    let original = util("a:");
    let s = site(
        &[("gate", GATE_PCMOD)],
        &[
            ("gate.lua", GATE_LUA.as_bytes()),
            ("lib/util.lua", original.as_bytes()),
        ],
        2,
    );
    let run = Running::start(&s);

    // Changed on disk before any worker built its VM: no worker reads it.
    write(&s, "lib/util.lua", util("b:").as_bytes());
    all_are(
        &answers(run.addr, 16).await,
        "a:v1",
        "a library edited without a reload",
    );

    // Broken: the reload fails at the library's line; the old code keeps serving.
    write(&s, "lib/util.lua", broken_util().as_bytes());
    let (status, report) = reload(run.admin).await;
    assert_eq!(status, 400, "{report:#}");
    let error = &report["errors"][0];
    assert!(
        error["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("mods/lib/util.lua")),
        "{report:#}"
    );
    assert_eq!(error["line"], 7, "{report:#}");
    assert_eq!(
        error["message"], "Lua: unexpected symbol near '='",
        "{report:#}"
    );
    assert_eq!(error["module"], "gate", "{report:#}");
    let rendered = error["rendered"].as_str().unwrap_or_default();
    assert!(
        rendered.contains("lib/util.lua:7:1: Lua: unexpected symbol near '='")
            && rendered.contains("7 | M.version = = 1"),
        "{rendered}"
    );
    all_are(
        &answers(run.addr, 16).await,
        "a:v1",
        "after a failed reload",
    );
    let status = admin(run.admin, "GET", "/status", "").await.json();
    assert_eq!(status["last_reload"]["ok"], false, "{status:#}");
    assert!(
        status["last_reload"]["errors"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("lib/util.lua")),
        "{status:#}"
    );
    let mods = admin(run.admin, "GET", "/mods", "").await.json();
    let gate = &mods["mods"][0];
    assert_eq!(gate["name"], "gate", "{mods:#}");
    assert_eq!(gate["status"], "error", "{mods:#}");
    assert_eq!(gate["errors"][0]["line"], 7, "{mods:#}");

    // Put back byte for byte: nothing changed, and the old code still serves.
    write(&s, "lib/util.lua", original.as_bytes());
    let (status, report) = reload(run.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["applied"][0], "nothing changed", "{report:#}");
    all_are(
        &answers(run.addr, 16).await,
        "a:v1",
        "after the file is put back",
    );

    // A good new version, reloaded: every worker serves it.
    write(&s, "lib/util.lua", util("b:").as_bytes());
    let (status, report) = reload(run.admin).await;
    assert_eq!(status, 200, "{report:#}");
    all_are(&answers(run.addr, 16).await, "b:v1", "after a reload");
}

/// Seconds since the Unix epoch, as Lua's `os.time()`.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps until the clock reads at least `secs` (and a little more).
async fn sleep_until_secs(secs: u64) {
    while now_secs() < secs {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A chunk whose top level fails only between two instants loads at check time and
/// fails in the worker: that request gets a 500 with its own request id, counted as
/// the module's error; once the failure is over (and the backoff), a later request
/// builds the VM and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vm_build_is_retried_and_its_500_carries_the_request_id() {
    let from = now_secs() + 3;
    let until = from + 2;
    let chunk = format!(
        "local now = os.time()\nif now >= {from} and now < {until} then error(\"the clock says no\") end\n\
         function on_request(req, ctx)\n  return std.respond(200, \"served\")\nend\n"
    );
    let s = site(
        &[("clock", "mod clock {\n  lua \"clock.lua\"\n}\n")],
        &[("clock.lua", chunk.as_bytes())],
        1,
    );
    let run = Running::start(&s);
    assert!(
        now_secs() < from,
        "the start took too long for this test's clock"
    );

    sleep_until_secs(from).await;
    for _ in 0..2 {
        let r = get(run.addr, "/").await;
        assert_eq!(r.status, 500, "{}", r.text());
        let id = r.request_id().unwrap_or_default();
        assert!(!id.is_empty() && id != "-", "x-request-id: {id:?}");
        assert!(
            r.text().contains(&format!("request id: {id}")),
            "{}",
            r.text()
        );
    }
    let e = parse(&get(run.admin, "/metrics").await.text());
    assert_eq!(
        e.value(
            "proxycache_module_errors_total",
            &[("module", "clock"), ("phase", "request")]
        ),
        2.0
    );

    sleep_until_secs(until).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(run.addr, "/").await;
        if r.status == 200 {
            assert_eq!(r.text(), "served");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM was never built again: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `proxycache check` on the site: its exit code and everything it printed.
fn check(site: &Site) -> (Option<i32>, String) {
    let out = site.run_check();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A load error in a library is at the library's file and line (not the chunk's
/// file with the library's line), with the library's line shown; in a chunk file
/// without `.lua`, at the line Lua gave.
#[test]
fn load_errors_name_the_file_and_line_lua_named() {
    let s = site(
        &[("gate", GATE_PCMOD)],
        &[
            ("gate.lua", GATE_LUA.as_bytes()),
            ("lib/util.lua", broken_util().as_bytes()),
        ],
        1,
    );
    let (code, out) = check(&s);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("mods/lib/util.lua:7:1: Lua: unexpected symbol near '='"),
        "{out}"
    );
    assert!(out.contains("7 | M.version = = 1"), "{out}");
    assert!(!out.contains("gate.lua:7"), "{out}");

    let s = site(
        &[("hooks", "mod hooks {\n  lua \"hooks\"\n}\n")],
        &[(
            "hooks",
            b"function on_request(req, ctx)\n  if then\nend\n".as_slice(),
        )],
        1,
    );
    let (code, out) = check(&s);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("mods/hooks:2:1: Lua: unexpected symbol near 'then'"),
        "{out}"
    );
    assert!(out.contains("2 |   if then"), "{out}");
}

/// Files whose name starts with `.` (a copy such as `.gate.pcmod`, macOS's
/// `._gate.pcmod`) are not modules or libraries: the proxy starts, reloads and lists
/// only the real ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_files_are_neither_modules_nor_libraries() {
    let apple_double: &[u8] = &[0, 5, 22, 7, 0, 2, 0, 0, b'M', b'a', b'c', 0xff, 0xfe];
    let s = site(
        &[("gate", GATE_PCMOD)],
        &[
            ("gate.lua", GATE_LUA.as_bytes()),
            ("lib/util.lua", util("a:").as_bytes()),
            (".gate.pcmod", GATE_PCMOD.as_bytes()),
            ("._gate.pcmod", apple_double),
            ("lib/._util.lua", apple_double),
            ("lib/.util.lua", b"return nil +"),
        ],
        1,
    );
    let run = Running::start(&s);
    all_are(
        &answers(run.addr, 2).await,
        "a:v1",
        "with hidden files around",
    );
    let (status, report) = reload(run.admin).await;
    assert_eq!(status, 200, "{report:#}");
    let mods = admin(run.admin, "GET", "/mods", "").await.json();
    let names: Vec<&str> = mods["mods"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["gate"], "{mods:#}");
    let (code, out) = check(&s);
    assert_eq!(code, Some(0), "{out}");
}

/// `lua "FILE"` reads only inside the scripts folder: a module naming an absolute
/// path or one with `..` is refused at its `lua` item, and the answer shows nothing
/// of the file it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lua_file_outside_the_scripts_folder_is_refused() {
    let s = site(&[], &[], 1);
    std::fs::write(s.dir.join("secret.lua"), "top secret(\n").expect("write");
    let run = Running::start(&s);
    for (path, why) in [
        ("/etc/passwd", "is absolute"),
        ("../secret.lua", "climbs out with `..`"),
    ] {
        let module = format!("mod evil {{\n  priority 1\n  lua \"{path}\"\n}}\n");
        let resp = admin(run.admin, "PUT", "/mods/evil", &module).await;
        assert_eq!(resp.status, 400, "{}", resp.text());
        let body = resp.json();
        let error = &body["errors"][0];
        assert_eq!(
            error["message"],
            format!("the Lua file path `{path}` {why}"),
            "{body:#}"
        );
        assert_eq!(
            (&error["line"], &error["col"]),
            (&3.into(), &3.into()),
            "{body:#}"
        );
        let text = resp.text();
        assert!(
            !text.contains("root:") && !text.contains("secret("),
            "{text}"
        );
    }
    assert!(!s.mod_path("evil").exists());
}

/// Chunks that each load in a VM of their own but not all in one (together over
/// `scripts.lua_memory_limit`) fail the check: a worker could never build its VM.
#[test]
fn chunks_that_do_not_fit_in_one_vm_together_fail_the_check() {
    let chunk = "big = string.rep(\"x\", 3 * 1024 * 1024)\nfunction on_request(req, ctx) end\n";
    let s = site(
        &[
            ("one", "mod one {\n  lua \"one.lua\"\n}\n"),
            ("two", "mod two {\n  lua \"two.lua\"\n}\n"),
        ],
        &[("one.lua", chunk.as_bytes()), ("two.lua", chunk.as_bytes())],
        1,
    );
    let config = std::fs::read_to_string(s.config_path()).expect("read config.toml");
    s.write_config(&config.replace(
        "watch = false",
        "watch = false\nlua_memory_limit = \"8MiB\"\nlua_instruction_budget = 100000000",
    ));
    let (code, out) = check(&s);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("loads on its own but not in one VM with the other Lua modules"),
        "{out}"
    );
}

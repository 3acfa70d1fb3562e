//! Hot reload over real sockets (issue 6, acceptance 1 to 4 and the listener part of 5):
//! editing, adding and deleting module files, editing `config.toml`, SIGHUP and
//! `POST /reload` change what is served; a broken module or config keeps the previous
//! generation serving and is reported with `file:line:col`; 20 reloads under load from
//! 4 clients fail no request; rate-limit buckets survive a reload; listeners are opened
//! and closed live, and what cannot be applied live is reported as `requires_restart`.
//!
//! Every test writes `config.toml` and `mods/` into a fresh temp folder and loads it
//! with `Config::load`, so reloads re-read the same files. Most run proxycache
//! in-process on 127.0.0.1:0; the SIGHUP tests run the real binary (a SIGHUP to the
//! test process would reach every test in it).
//!
//! Timing: the issue's target from a settled change to the new behaviour is 2 s. On a
//! loaded shared machine the tests allow 5 s, and print every measured time.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// The issue's target: a settled change serves within this.
const TARGET: Duration = Duration::from_secs(2);

/// What the tests allow for it on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(5);

/// Anything else that has to happen eventually (a process starting, a reload landing
/// under load).
const EVENTUALLY: Duration = Duration::from_secs(20);

/// The load tests, and the tests that measure how fast a change serves, run one at a
/// time so that one's load does not skew another's timing.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything to the built-in echo upstream.
const ECHO: &str =
    "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n";

// ---- sites: config.toml and mods/ in a temp folder ------------------------------------

/// The parts of `config.toml` the tests change.
#[derive(Clone)]
struct Conf {
    listen: Vec<String>,
    workers: usize,
    /// Extra lines in `[server]`.
    server_extra: String,
    admin: String,
    watch: bool,
    /// Upstreams, routes, `[mods.NAME]`.
    rest: String,
}

impl Conf {
    fn new(watch: bool, rest: &str) -> Conf {
        Conf {
            listen: vec!["127.0.0.1:0".into()],
            workers: 2,
            server_extra: String::new(),
            admin: "127.0.0.1:0".into(),
            watch,
            rest: rest.into(),
        }
    }

    fn text(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "# written by tests/reload.rs\n[server]\nlisten = [{}]\nworkers = {}\n{}\n\n\
             [admin]\nlisten = \"{}\"\n\n[log]\naccess = false\n\n\
             [scripts]\ndir = \"mods\"\nwatch = {}\n\n{}\n",
            listen.join(", "),
            self.workers,
            self.server_extra,
            self.admin,
            self.watch,
            self.rest
        )
    }
}

/// `[upstreams.NAME]` for each test upstream and a catch-all route to `to`.
fn route_to(upstreams: &[&Upstream], to: &str) -> String {
    let mut text = String::new();
    for u in upstreams {
        text.push_str(&format!(
            "[upstreams.{}]\nservers = [\"{}\"]\n\n",
            u.state.name, u.addr
        ));
    }
    text.push_str(&format!("[[routes]]\nupstream = \"{to}\"\n"));
    text
}

/// A module that answers every request itself with `body`.
fn responder(name: &str, body: &str) -> String {
    format!("mod {name} {{\n  on request {{\n    respond 200 \"{body}\\n\"\n  }}\n}}\n")
}

/// A module that sets response header `header` to `value`.
fn header_mod(name: &str, header: &str, value: &str) -> String {
    format!(
        "mod {name} {{\n  on response {{\n    set resp.header[\"{header}\"] = \"{value}\"\n  }}\n}}\n"
    )
}

// ---- proxycache in-process ------------------------------------------------------------

impl Running {
    /// Waits until the file watcher reacts: rewrites `config.toml` unchanged until a
    /// reload triggered by the watcher is recorded (it changes nothing). Separates the
    /// watcher's start-up from the times the tests measure.
    async fn wait_watching(&self, site: &Site) {
        let text = std::fs::read_to_string(site.config_path()).expect("read config.toml");
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            site.write_config(&text);
            let seen = wait_until(Duration::from_secs(1), || {
                self.last_reload().is_some_and(|r| r.trigger == "watch")
            })
            .await;
            if seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the file watcher never reacted to config.toml being rewritten"
            );
        }
    }

    /// Waits until the serving generation is at least `n`.
    async fn wait_generation(&self, n: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        let reached = wait_until(limit, || self.generation() >= n).await;
        assert!(
            reached,
            "generation {n} did not serve within {limit:?} (still {}; last reload: {:?})",
            self.generation(),
            self.last_reload()
        );
        start.elapsed()
    }
}

// ---- proxycache as a process ------------------------------------------------------------

/// `proxycache run --config SITE/config.toml`, killed by its pid on drop.
struct Binary {
    child: Child,
    stderr_path: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Binary {
    /// Starts the binary on `conf` with `port` and `admin_port` (picked free by the
    /// caller) and waits until the proxy, the admin API and the SIGHUP handler are up.
    async fn spawn(site: &Site, conf: &mut Conf) -> Binary {
        let mut bin = Binary::launch(site, conf);
        bin.wait_ready().await;
        bin
    }

    /// Like [`Binary::spawn`], but returns as soon as the proxy answers (not waiting
    /// for the admin API or the SIGHUP handler).
    async fn spawn_until_answering(site: &Site, conf: &mut Conf) -> Binary {
        let mut bin = Binary::launch(site, conf);
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            bin.assert_running();
            if try_send(bin.addr, empty(req("GET", "/"))).await.is_ok() {
                return bin;
            }
            assert!(
                Instant::now() < deadline,
                "proxycache did not answer within {EVENTUALLY:?}; stderr:\n{}",
                bin.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts the binary on `conf` with a free port and admin port.
    fn launch(site: &Site, conf: &mut Conf) -> Binary {
        let addrs = Binary::pick_ports(conf);
        site.write_config(&conf.text());
        let (child, stderr_path) = site.spawn_run();
        Binary {
            child,
            stderr_path,
            addr: addrs.0,
            admin: addrs.1,
        }
    }

    /// Picks a free port and admin port for `conf`.
    fn pick_ports(conf: &mut Conf) -> (SocketAddr, SocketAddr) {
        let port = free_port();
        let mut admin_port = free_port();
        while admin_port == port {
            admin_port = free_port();
        }
        conf.listen = vec![format!("127.0.0.1:{port}")];
        conf.admin = format!("127.0.0.1:{admin_port}");
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
        )
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Panics, with its stderr, when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "proxycache exited early with {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            self.assert_running();
            let admin_up = try_send(self.admin, empty(req("GET", "/status")))
                .await
                .is_ok_and(|r| r.status == 200);
            let proxy_up = admin_up
                && try_send(self.addr, empty(req("GET", "/ready")))
                    .await
                    .is_ok();
            let hup_caught = catches_sighup(self.child.id()).unwrap_or(true);
            if admin_up && proxy_up && hup_caught {
                if catches_sighup(self.child.id()).is_none() {
                    // No /proc to ask: give the control thread a moment more.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxycache was not ready within {EVENTUALLY:?} (admin {admin_up}, proxy {proxy_up}, SIGHUP handler {hup_caught}); stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "kill -HUP failed: {status}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` has a handler for SIGHUP (`SigCgt` bit 0 in /proc); `None`
/// when /proc cannot tell. Sending SIGHUP before the handler is installed would kill
/// the process.
fn catches_sighup(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    Some(mask & 1 == 1)
}

// ---- clients ----------------------------------------------------------------------------

/// `METHOD path` with `body` to the admin API.
async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let request = req(method, path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request builds");
    send(addr, request).await
}

/// `GET path` to the admin API, as JSON (asserting 200).
async fn admin_get(addr: SocketAddr, path: &str) -> Value {
    let resp = admin(addr, "GET", path, "").await;
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp.json()
}

/// Polls `GET /status` until `cond` holds; returns that status.
async fn wait_status(addr: SocketAddr, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = admin_get(addr, "/status").await;
        if cond(&status) {
            return status;
        }
        assert!(
            start.elapsed() < LIMIT,
            "/status did not get there within {LIMIT:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /reload`: the status and the JSON report.
async fn post_reload(addr: SocketAddr) -> (u16, Value) {
    let resp = admin(addr, "POST", "/reload", "").await;
    (resp.status.as_u16(), resp.json())
}

/// The body of a 200 answer to `GET path`; `Err` for anything else.
async fn body_of(addr: SocketAddr, path: &str) -> Result<String, String> {
    let resp = try_send(addr, empty(req("GET", path))).await?;
    if resp.status == 200 {
        Ok(resp.text())
    } else {
        Err(format!("{} {}", resp.status, resp.text()))
    }
}

/// Polls `GET path` until the body is `want`; returns how long it took (panics after
/// `limit`).
async fn wait_body(addr: SocketAddr, path: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = body_of(addr, path).await;
        if got.as_deref() == Ok(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "GET {path} did not answer {want:?} within {limit:?}; last answer: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET path` until response header `name` is `want` (`None`: absent).
async fn wait_header(
    addr: SocketAddr,
    path: &str,
    name: &str,
    want: Option<&str>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let resp = try_send(addr, empty(req("GET", path))).await;
        if let Ok(r) = &resp {
            if r.status == 200 && r.header(name).as_deref() == want {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < limit,
            "GET {path}: header {name} was not {want:?} within {limit:?}; last answer: {:?}",
            resp.map(|r| (r.status, r.header(name)))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /` until the named test upstream answers it.
async fn wait_server(addr: SocketAddr, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let resp = try_send(addr, empty(req("GET", "/"))).await;
        if let Ok(r) = &resp {
            if r.status == 200 && r.server() == want {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < limit,
            "GET / did not reach upstream {want} within {limit:?}; last answer: {:?}",
            resp.map(|r| (r.status, r.text()))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a measured reload time next to the target.
fn report_time(what: &str, took: Duration) {
    let note = if took <= TARGET {
        "within"
    } else {
        "OVER (allowed on this machine up to 5 s)"
    };
    eprintln!("[reload timing] {what}: {took:?} — {note} the {TARGET:?} target");
}

// ---- 1. triggers change behaviour -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_module_file_changes_behaviour_within_the_target() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("edit");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));
    px.wait_watching(&site).await;

    site.write_mod("marker", &responder("marker", "v2"));
    let took = wait_body(px.addr, "/", "v2\n", LIMIT).await;
    report_time("module file edited", took);
    assert_eq!(px.generation(), 2, "one edit, one new generation");
    let recorded = wait_until(LIMIT, || {
        px.last_reload().is_some_and(|r| r.ok && r.generation == 2)
    })
    .await;
    assert!(recorded, "{:?}", px.last_reload());

    // A second edit works as well as the first.
    site.write_mod("marker", &responder("marker", "v3"));
    let took = wait_body(px.addr, "/", "v3\n", LIMIT).await;
    report_time("module file edited again", took);
    assert_eq!(px.generation(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_a_changed_module_and_changed_module_settings() {
    // Both were reported as nothing but "generation N -> N+1".
    let site = Site::new("report-modules");
    site.write_mod("marker", &responder("marker", "v1"));
    let mut conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);
    site.write_mod("marker", &responder("marker", "v2"));
    let (_, report) = post_reload(px.admin).await;
    let applied = report["applied"].to_string();
    assert!(applied.contains("module marker changed"), "{report:#}");
    conf.rest = format!("{ECHO}\n[mods.marker]\npriority = 7\n");
    site.write_config(&conf.text());
    let (_, report) = post_reload(px.admin).await;
    let applied = report["applied"].to_string();
    assert!(
        applied.contains("module marker settings changed"),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_over_and_over_reloads_within_the_longest_settle() {
    // Each event put the reload off by another 250 ms: a tool that kept writing (a
    // log-like file in mods/, a sync client) delayed it for as long as it wrote.
    let _heavy = HEAVY.lock().await;
    let site = Site::new("settle-cap");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;
    let writer = {
        let mods = site.mods_dir();
        tokio::spawn(async move {
            for i in 0..60 {
                let text = format!("{}# write {i}\n", responder("marker", "v2"));
                let _ = std::fs::write(mods.join("marker.pcmod"), text);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The writes go on for 6 s; the reload must not wait for them to stop.
    let took = wait_body(px.addr, "/", "v2\n", Duration::from_millis(4_000)).await;
    report_time("module rewritten every 100 ms", took);
    assert!(!writer.is_finished(), "the writes were still going on");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_folder_replaced_by_a_rename_is_watched_where_it_is_now() {
    // `mv mods mods.old && mv mods.new mods`: the watch followed the old folder, so
    // the new modules were never loaded and later edits went unseen.
    let _heavy = HEAVY.lock().await;
    let site = Site::new("dir-swap");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));
    px.wait_watching(&site).await;

    let fresh = site.dir.join("mods.new");
    std::fs::create_dir(&fresh).expect("mkdir");
    std::fs::write(fresh.join("marker.pcmod"), responder("marker", "v2")).expect("write");
    std::fs::rename(site.mods_dir(), site.dir.join("mods.old")).expect("rename");
    std::fs::rename(&fresh, site.mods_dir()).expect("rename");
    let took = wait_body(px.addr, "/", "v2\n", LIMIT).await;
    report_time("scripts folder swapped", took);

    site.write_mod("marker", &responder("marker", "v3"));
    let took = wait_body(px.addr, "/", "v3\n", LIMIT).await;
    report_time("module edited in the swapped-in folder", took);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchers_poll_enters_no_symlinked_folder_and_ignores_other_files() {
    // The poll followed symlinked folders: `mods/usr -> /usr` (which has loops) froze
    // the control thread, admin API included. And the folder's own mtime counted, so
    // any file written in mods/ made a reload.
    let _heavy = HEAVY.lock().await;
    let site = Site::new("poll-walk");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;
    std::os::unix::fs::symlink("/usr", site.mods_dir().join("usr")).expect("symlink");
    std::fs::write(site.mods_dir().join("notes.txt"), "not a module").expect("write");
    let reloads = || px.shared().reloads.counts.lock().0;
    // (Whatever wait_watching's own writes still set off has settled.)
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = reloads();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let status = tokio::time::timeout(Duration::from_secs(2), get(px.admin, "/status")).await;
    assert!(
        status.is_ok(),
        "the admin API (control thread) does not answer"
    );
    assert_eq!(
        reloads(),
        before,
        "a file that is no module made a reload: {:?}",
        px.last_reload()
    );
    // Edits are still seen.
    site.write_mod("marker", &responder("marker", "v2"));
    wait_body(px.addr, "/", "v2\n", LIMIT).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_toml_behind_a_swapped_symlink_reloads() {
    // A Kubernetes ConfigMap: config.toml -> ..data/config.toml, ..data -> ..v1; an
    // update makes ..v2 and renames a new ..data link over the old. No event names
    // config.toml in its folder, and the change went unseen.
    use std::os::unix::fs::symlink;
    let _heavy = HEAVY.lock().await;
    let site = Site::new("configmap");
    let word = "mod marker {\n  config {\n    word: string = \"zero\"\n  }\n  on request {\n    respond 200 \"${$config.word}\\n\"\n  }\n}\n";
    site.write_mod("marker", word);
    let conf = Conf::new(true, ECHO);
    let version = |name: &str, w: &str| {
        let dir = site.dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let text = format!("{}\n[mods.marker]\nword = \"{w}\"\n", conf.text());
        std::fs::write(dir.join("config.toml"), text).expect("write");
    };
    version("..v1", "one");
    symlink("..v1", site.dir.join("..data")).expect("symlink");
    let _ = std::fs::remove_file(site.config_path());
    symlink("..data/config.toml", site.config_path()).expect("symlink");
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("one\n"));

    version("..v2", "two");
    symlink("..v2", site.dir.join("..data_tmp")).expect("symlink");
    std::fs::rename(site.dir.join("..data_tmp"), site.dir.join("..data")).expect("swap");
    let took = wait_body(px.addr, "/", "two\n", LIMIT).await;
    report_time("config.toml symlink swapped", took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_deleting_module_files_change_behaviour() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("add-delete");
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    let first = get(px.addr, "/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-extra"), None);
    px.wait_watching(&site).await;

    site.write_mod("extra", &header_mod("extra", "x-extra", "yes"));
    let took = wait_header(px.addr, "/", "x-extra", Some("yes"), LIMIT).await;
    report_time("module file added", took);
    assert_eq!(px.generation(), 2);

    // A second module next to it: both run.
    site.write_mod("more", &header_mod("more", "x-more", "also"));
    let took = wait_header(px.addr, "/", "x-more", Some("also"), LIMIT).await;
    report_time("second module file added", took);
    assert_eq!(
        get(px.addr, "/").await.header("x-extra").as_deref(),
        Some("yes")
    );

    site.remove_mod("extra");
    let took = wait_header(px.addr, "/", "x-extra", None, LIMIT).await;
    report_time("module file deleted", took);
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-more").as_deref(),
        Some("also"),
        "the other module stays"
    );
    let (names, mods) = mod_names(px.admin).await;
    assert_eq!(names, ["more"], "{mods:#}");
}

/// The module names admin `/mods` lists, and the whole answer (for messages).
async fn mod_names(admin: std::net::SocketAddr) -> (Vec<String>, serde_json::Value) {
    let mods = admin_get(admin, "/mods").await;
    let names = mods["mods"]
        .as_array()
        .expect("mods is a list")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    (names, mods)
}

/// Files whose name starts with `.` — a copy such as `.gate.pcmod`, macOS's
/// AppleDouble `._gate.pcmod` — are not modules: the proxy starts and reloads with
/// them there, and lists only the real module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_files_in_the_scripts_folder_are_not_modules() {
    let site = Site::new("hidden");
    site.write_mod("gate", &responder("gate", "v1"));
    let mods = site.mods_dir();
    std::fs::copy(site.mod_path("gate"), mods.join(".gate.pcmod")).expect("cp");
    let apple_double: &[u8] = &[0, 5, 22, 7, 0, 2, 0, 0, b'M', b'a', b'c', 0xff, 0xfe];
    std::fs::write(mods.join("._gate.pcmod"), apple_double).expect("write");
    site.write_config(&Conf::new(false, ECHO).text());
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));

    site.write_mod("gate", &responder("gate", "v2"));
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v2\n"));
    let (names, mods) = mod_names(px.admin).await;
    assert_eq!(names, ["gate"], "{mods:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_config_toml_reroutes() {
    let _heavy = HEAVY.lock().await;
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let site = Site::new("reroute");
    let mut conf = Conf::new(true, &route_to(&[&a, &b], "a"));
    site.write_config(&conf.text());
    let px = Running::start(&site);
    assert_eq!(get(px.addr, "/").await.server(), "a");
    px.wait_watching(&site).await;

    conf.rest = route_to(&[&a, &b], "b");
    site.write_config(&conf.text());
    let took = wait_server(px.addr, "b", LIMIT).await;
    report_time("config.toml edited (route to another upstream)", took);
    assert_eq!(px.generation(), 2);
    let recorded = wait_until(LIMIT, || {
        px.last_reload().is_some_and(|r| r.ok && r.generation == 2)
    })
    .await;
    assert!(recorded, "{:?}", px.last_reload());
    let before = a.requests();
    for _ in 0..5 {
        assert_eq!(get(px.addr, "/").await.server(), "b");
    }
    assert_eq!(a.requests(), before, "nothing goes to the old upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_reloads_and_reports() {
    let site = Site::new("post-reload");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(false, ECHO).text());
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));

    // The watcher is off: the edit alone changes nothing.
    site.write_mod("marker", &responder("marker", "v2"));
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));

    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["generation"], 2, "{report:#}");
    assert_eq!(report["trigger"], "admin:reload -", "{report:#}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        report["requires_restart"],
        serde_json::json!([]),
        "{report:#}"
    );
    let applied = report["applied"].as_array().expect("applied is a list");
    assert!(
        applied.iter().any(|a| a == "generation 1 -> 2"),
        "{report:#}"
    );
    assert!(report["at"].as_u64().is_some_and(|at| at > 0), "{report:#}");
    // The swap happened before the answer: the next request sees it.
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v2\n"));

    // Nothing changed: no new generation.
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["generation"], 2, "{report:#}");
    assert_eq!(
        report["applied"],
        serde_json::json!(["nothing changed"]),
        "{report:#}"
    );

    // /status shows the last reload.
    let status = admin_get(px.admin, "/status").await;
    assert_eq!(status["generation"], 2, "{status:#}");
    assert_eq!(status["last_reload"]["ok"], true, "{status:#}");
    assert_eq!(
        status["last_reload"]["trigger"], "admin:reload -",
        "{status:#}"
    );
}

/// A module's Lua chunk in a subfolder (or anywhere the module names it) is part of
/// what a reload compares: editing it alone is a change, not "nothing changed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_lua_chunk_in_a_subfolder_reloads() {
    let site = Site::new("lua-subfolder");
    let sub = site.mods_dir().join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let chunk = |v: &str| {
        format!("function on_request(req, ctx)\n  return std.respond(200, \"{v}\\n\")\nend\n")
    };
    std::fs::write(sub.join("g.lua"), chunk("v1")).expect("write");
    site.write_mod("luamod", "mod luamod {\n  lua \"sub/g.lua\"\n}\n");
    site.write_config(&Conf::new(false, ECHO).text());
    let px = Running::start(&site);
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));

    std::fs::write(sub.join("g.lua"), chunk("v2")).expect("write");
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["generation"], 2, "{report:#}");
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v2\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("sighup");
    site.write_mod("marker", &responder("marker", "v1"));
    let mut conf = Conf::new(false, ECHO);
    let bin = Binary::spawn(&site, &mut conf).await;
    assert_eq!(body_of(bin.addr, "/").await.as_deref(), Ok("v1\n"));

    site.write_mod("marker", &responder("marker", "v2"));
    assert_eq!(
        body_of(bin.addr, "/").await.as_deref(),
        Ok("v1\n"),
        "the watcher is off: only the signal reloads"
    );
    let sent = Instant::now();
    bin.sighup();
    wait_body(bin.addr, "/", "v2\n", LIMIT).await;
    report_time("SIGHUP", sent.elapsed());
    // The report is recorded just after the swap: poll for it.
    let status = wait_status(bin.admin, |s| s["last_reload"]["trigger"] == "sighup").await;
    assert_eq!(status["generation"], 2, "{status:#}");
    assert_eq!(status["last_reload"]["ok"], true, "{status:#}");
    assert_eq!(status["last_reload"]["generation"], 2, "{status:#}");

    // The process is still there and a second signal works as well.
    site.write_mod("marker", &responder("marker", "v3"));
    bin.sighup();
    wait_body(bin.addr, "/", "v3\n", LIMIT).await;
    let log = bin.stderr();
    assert!(
        log.contains("trigger=sighup"),
        "the reload is logged with its trigger; stderr:\n{log}"
    );
}

/// The SIGHUP listener exists before the proxy accepts: a reload signal sent the moment
/// it answers reloads it (before, the signal could arrive before the control thread
/// listened, and its default action ended the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_the_moment_the_proxy_answers_reloads_it() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("sighup-early");
    site.write_mod("marker", &responder("marker", "v1"));
    let mut conf = Conf::new(false, ECHO);
    let mut bin = Binary::spawn_until_answering(&site, &mut conf).await;
    site.write_mod("marker", &responder("marker", "v2"));
    bin.sighup();
    wait_body(bin.addr, "/", "v2\n", LIMIT).await;
    bin.assert_running();
}

// ---- 2. broken files keep the previous generation -----------------------------------------

/// `marker` with an unknown name on line 6, column 30.
const BROKEN_MARKER: &str = "mod marker {\n  on request {\n    respond 200 \"v1\\n\"\n  }\n  on response {\n    set resp.header[\"x-v\"] = nope\n  }\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_module_keeps_the_previous_generation_and_is_reported() {
    let site = Site::new("broken-mod");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;

    site.write_mod("marker", BROKEN_MARKER);
    let failed = wait_until(LIMIT, || px.last_reload().is_some_and(|r| !r.ok)).await;
    assert!(failed, "no failed reload recorded: {:?}", px.last_reload());
    assert_eq!(px.generation(), 1, "nothing was swapped in");
    for _ in 0..3 {
        assert_eq!(
            body_of(px.addr, "/").await.as_deref(),
            Ok("v1\n"),
            "the previous generation keeps serving"
        );
    }

    let file = site.mod_path("marker").display().to_string();
    let status = admin_get(px.admin, "/status").await;
    let last = &status["last_reload"];
    assert_eq!(last["ok"], false, "{status:#}");
    assert_eq!(last["generation"], 1, "{status:#}");
    let error = &last["errors"][0];
    assert_eq!(error["file"], file.as_str(), "{status:#}");
    assert_eq!(error["line"], 6, "{status:#}");
    assert_eq!(error["col"], 30, "{status:#}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("nope"), "{status:#}");
    let rendered = error["rendered"].as_str().unwrap_or_default();
    assert!(
        rendered.contains(&format!("{file}:6:30")),
        "file:line:col in the rendered error: {rendered}"
    );

    let mods = admin_get(px.admin, "/mods").await;
    let marker = mods["mods"]
        .as_array()
        .expect("mods is a list")
        .iter()
        .find(|m| m["name"] == "marker")
        .cloned()
        .unwrap_or_else(|| panic!("marker in /mods: {mods:#}"));
    assert_eq!(marker["status"], "error", "{mods:#}");
    assert_eq!(marker["errors"][0]["line"], 6, "{mods:#}");
    assert_eq!(marker["errors"][0]["col"], 30, "{mods:#}");
    assert_eq!(marker["errors"][0]["file"], file.as_str(), "{mods:#}");

    // Fixing the file recovers.
    site.write_mod("marker", &responder("marker", "v2"));
    let took = wait_body(px.addr, "/", "v2\n", LIMIT).await;
    report_time("fixed module serves", took);
    let ok = wait_until(LIMIT, || px.last_reload().is_some_and(|r| r.ok)).await;
    assert!(ok, "{:?}", px.last_reload());
    let status = admin_get(px.admin, "/status").await;
    assert_eq!(status["last_reload"]["ok"], true, "{status:#}");
    assert_eq!(status["last_reload"]["errors"], serde_json::json!([]));
    let mods = admin_get(px.admin, "/mods").await;
    assert_eq!(mods["mods"][0]["status"], "loaded", "{mods:#}");
    assert_eq!(mods["mods"][0]["errors"], serde_json::json!([]), "{mods:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_keeps_the_previous_generation_and_is_reported() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let site = Site::new("broken-config");
    site.write_mod("extra", &header_mod("extra", "x-extra", "1"));
    let mut conf = Conf::new(true, &route_to(&[&a, &b], "a"));
    site.write_config(&conf.text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;

    // An unknown key, also routed to b: none of it may apply.
    let mut broken = conf.clone();
    broken.server_extra = "colour = \"blue\"".into();
    broken.rest = route_to(&[&a, &b], "b");
    let text = broken.text();
    let line = text
        .lines()
        .position(|l| l.starts_with("colour"))
        .expect("the broken line")
        + 1;
    site.write_config(&text);
    let failed = wait_until(LIMIT, || px.last_reload().is_some_and(|r| !r.ok)).await;
    assert!(failed, "no failed reload recorded: {:?}", px.last_reload());
    assert_eq!(px.generation(), 1);
    for _ in 0..3 {
        let resp = get(px.addr, "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.server(), "a", "the previous routes keep serving");
        assert_eq!(resp.header("x-extra").as_deref(), Some("1"));
    }
    let file = site.config_path().display().to_string();
    let status = admin_get(px.admin, "/status").await;
    let error = &status["last_reload"]["errors"][0];
    assert_eq!(status["last_reload"]["ok"], false, "{status:#}");
    assert_eq!(error["file"], file.as_str(), "{status:#}");
    assert_eq!(error["key"], "server.colour", "{status:#}");
    assert_eq!(error["line"], line, "{status:#}");
    assert_eq!(error["col"], 1, "{status:#}");
    let rendered = error["rendered"].as_str().unwrap_or_default();
    assert!(
        rendered.contains(&format!("{file}:{line}:1")),
        "file:line:col in the rendered error: {rendered}"
    );

    // Half a file (a TOML syntax error) is no better.
    site.write_config("[server]\nlisten = [\"127.0.0.1:0\"\n");
    let syntax = wait_until(LIMIT, || {
        px.last_reload()
            .is_some_and(|r| !r.ok && r.errors.iter().any(|e| e.line == 2))
    })
    .await;
    assert!(syntax, "{:?}", px.last_reload());
    assert_eq!(get(px.addr, "/").await.server(), "a");

    // Fixing the file recovers, with the new route.
    conf.rest = route_to(&[&a, &b], "b");
    site.write_config(&conf.text());
    let took = wait_server(px.addr, "b", LIMIT).await;
    report_time("fixed config.toml serves", took);
    assert_eq!(px.generation(), 2);
    let ok = wait_until(LIMIT, || px.last_reload().is_some_and(|r| r.ok)).await;
    assert!(ok, "{:?}", px.last_reload());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_reload_answers_400_and_keeps_serving() {
    let site = Site::new("post-broken");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(false, ECHO).text());
    let px = Running::start(&site);

    site.write_mod("marker", BROKEN_MARKER);
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 400, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(report["generation"], 1, "{report:#}");
    assert_eq!(report["errors"][0]["line"], 6, "{report:#}");
    assert_eq!(report["errors"][0]["col"], 30, "{report:#}");
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v1\n"));
    let stats = admin_get(px.admin, "/stats").await;
    assert_eq!(stats["reloads"]["failed"], 1, "{stats:#}");

    site.write_mod("marker", &responder("marker", "v2"));
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["generation"], 2, "{report:#}");
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v2\n"));
}

// ---- 3. reloads under load ----------------------------------------------------------------

/// Every answer the load clients got.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    per_client: [AtomicUsize; 4],
    errors: Mutex<Vec<String>>,
    versions: Mutex<BTreeSet<String>>,
}

impl Tally {
    fn record(&self, client: usize, result: Result<Resp, String>) -> bool {
        self.per_client[client].fetch_add(1, Ordering::SeqCst);
        let error = match result {
            Ok(resp) if resp.status.is_success() => {
                self.ok.fetch_add(1, Ordering::SeqCst);
                if let Some(v) = resp.header("x-version") {
                    self.versions.lock().expect("versions lock").insert(v);
                }
                return true;
            }
            Ok(resp) => format!("client {client}: {} {}", resp.status, resp.text()),
            Err(e) => format!("client {client}: {e}"),
        };
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < 20 {
            errors.push(error);
        }
        false
    }
}

fn load_path(n: usize) -> &'static str {
    if n.is_multiple_of(4) {
        "/slow/x"
    } else {
        "/fast/x"
    }
}

/// Sends requests on keep-alive connections (50 per connection, then a new one) until
/// `stop`.
async fn keepalive_client(addr: SocketAddr, client: usize, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok::<_, String>(sender)
        };
        let mut sender = match tokio::time::timeout(CLIENT_TIMEOUT, connect).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(e)) => {
                t.record(client, Err(e));
                continue;
            }
            Err(_) => {
                t.record(client, Err("connect timed out".into()));
                continue;
            }
        };
        for _ in 0..50 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            n += 1;
            let exchange = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("keep-alive connection not ready: {e}"))?;
                let resp = sender
                    .send_request(empty(req("GET", load_path(n))))
                    .await
                    .map_err(|e| format!("keep-alive send: {e}"))?;
                read_resp(resp).await
            };
            let result = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| Err("keep-alive request timed out".into()));
            if !t.record(client, result) {
                break;
            }
        }
    }
}

/// Sends every request on a new connection until `stop`.
async fn fresh_client(addr: SocketAddr, client: usize, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let result = try_send(addr, empty(req("GET", load_path(n)))).await;
        t.record(client, result);
    }
}

/// `marker` at version `v`: tags every response with `x-version` and its `label`.
fn versioned(v: usize) -> String {
    format!(
        "mod marker {{\n  config {{\n    label: string = \"none\"\n  }}\n  on response {{\n    \
         set resp.header[\"x-version\"] = \"v{v}\"\n    set resp.header[\"x-label\"] = $config.label\n  }}\n}}\n"
    )
}

/// How the load test reaches the proxy and makes it reload.
struct LoadTarget<'a> {
    addr: SocketAddr,
    admin: SocketAddr,
    site: &'a Site,
    conf: Conf,
    /// The upstream and route part of `config.toml`.
    app_toml: String,
    /// The binary to signal; `None` in-process (the file watcher is on instead).
    binary: Option<&'a Binary>,
}

async fn served_generation(admin: SocketAddr) -> u64 {
    admin_get(admin, "/status").await["generation"]
        .as_u64()
        .expect("a generation number")
}

/// Runs 4 clients (2 keep-alive, 2 with a new connection per request) while making 20
/// reloads of mixed kinds, waiting for each to serve; every answer must be 2xx.
async fn twenty_reloads_under_load(mut target: LoadTarget<'_>) {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
        clients.push(if client % 2 == 0 {
            tokio::spawn(keepalive_client(target.addr, client, stop, tally))
        } else {
            tokio::spawn(fresh_client(target.addr, client, stop, tally))
        });
    }
    // Load is flowing before the first reload.
    let flowing = wait_until(EVENTUALLY, || tally.ok.load(Ordering::SeqCst) >= 20).await;
    assert!(
        flowing,
        "no load: {:?}",
        tally.errors.lock().map(|e| e.clone())
    );

    let started = Instant::now();
    let mut kinds = Vec::new();
    let reloads = async {
        for i in 1..=20usize {
            let before = served_generation(target.admin).await;
            let kind = match (i % 4, target.binary) {
                (1, None) => {
                    target.site.write_mod("marker", &versioned(i));
                    "module edit (watcher)"
                }
                (1, Some(bin)) => {
                    target.site.write_mod("marker", &versioned(i));
                    bin.sighup();
                    "module edit + SIGHUP"
                }
                (2, _) => {
                    let resp = admin(target.admin, "PUT", "/mods/marker", &versioned(i)).await;
                    assert_eq!(resp.status, 200, "PUT /mods/marker: {}", resp.text());
                    assert_eq!(resp.json()["generation"], before + 1, "{}", resp.text());
                    "PUT /mods/marker"
                }
                (3, _) => {
                    target.site.write_mod("marker", &versioned(i));
                    let (status, report) = post_reload(target.admin).await;
                    assert_eq!(status, 200, "{report:#}");
                    assert_eq!(report["ok"], true, "{report:#}");
                    "module edit + POST /reload"
                }
                (_, binary) => {
                    target.conf.rest =
                        format!("{}\n[mods.marker]\nlabel = \"L{i}\"\n", target.app_toml);
                    target.site.write_config(&target.conf.text());
                    match binary {
                        Some(bin) => {
                            bin.sighup();
                            "config.toml edit + SIGHUP"
                        }
                        None => "config.toml edit (watcher)",
                    }
                }
            };
            kinds.push(kind);
            let deadline = Instant::now() + EVENTUALLY;
            loop {
                let now = served_generation(target.admin).await;
                if now > before {
                    assert_eq!(now, before + 1, "reload {i} ({kind}) made one generation");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "reload {i} ({kind}) did not serve within {EVENTUALLY:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Traffic on the new generation before the next reload: at most 4 answers
            // (one per client) were in flight at the swap, so 8 more include requests
            // that started on it.
            let at = tally.ok.load(Ordering::SeqCst);
            let served = wait_until(EVENTUALLY, || tally.ok.load(Ordering::SeqCst) >= at + 8).await;
            assert!(served, "no traffic after reload {i} ({kind})");
        }
    };
    let bounded = tokio::time::timeout(Duration::from_secs(30), reloads).await;
    let reload_time = started.elapsed();
    // A little more load on the last generation, then stop.
    let at = tally.ok.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(5), || {
        tally.ok.load(Ordering::SeqCst) >= at + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(EVENTUALLY, c).await;
    }
    assert!(
        bounded.is_ok(),
        "20 reloads did not finish within 30 s (done: {kinds:?})"
    );

    let ok = tally.ok.load(Ordering::SeqCst);
    let failed = tally.failed.load(Ordering::SeqCst);
    let versions = tally.versions.lock().expect("versions").clone();
    eprintln!(
        "[reload load] 20 reloads in {reload_time:?}; {ok} answers 2xx, {failed} failed; per client {:?}; {} versions seen",
        tally
            .per_client
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>(),
        versions.len()
    );
    let errors = tally.errors.lock().expect("errors").clone();
    assert_eq!(
        failed, 0,
        "failed or reset requests during reloads: {errors:#?}"
    );
    for (client, count) in tally.per_client.iter().enumerate() {
        assert!(
            count.load(Ordering::SeqCst) > 0,
            "client {client} sent nothing"
        );
    }
    assert_eq!(
        served_generation(target.admin).await,
        21,
        "kinds: {kinds:?}"
    );
    // The last module version and the last label serve.
    let resp = get(target.addr, "/fast/after").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-version").as_deref(), Some("v19"));
    assert_eq!(resp.header("x-label").as_deref(), Some("L20"));
    let expected: BTreeSet<String> = std::iter::once(0)
        .chain((1..=20).filter(|i| i % 4 != 0))
        .map(|i| format!("v{i}"))
        .collect();
    assert_eq!(versions, expected, "the clients saw every module version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let _heavy = HEAVY.lock().await;
    let app = Upstream::start("app", Behavior::slow_on("/slow", 30)).await;
    let site = Site::new("load");
    let app_toml = route_to(&[&app], "app");
    site.write_mod("marker", &versioned(0));
    let conf = Conf::new(true, &app_toml);
    site.write_config(&conf.text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;
    // Watch the reload reports, to say what any failed reload was about.
    let failures = Arc::new(Mutex::new(BTreeSet::new()));
    let monitor = {
        let (shared, failures) = (Arc::clone(px.shared()), Arc::clone(&failures));
        tokio::spawn(async move {
            loop {
                if let Some(r) = shared.reloads.last().filter(|r| !r.ok) {
                    let errors: Vec<String> = r.errors.iter().map(|e| e.rendered.clone()).collect();
                    failures.lock().expect("failures").insert(errors.join("; "));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    twenty_reloads_under_load(LoadTarget {
        addr: px.addr,
        admin: px.admin,
        site: &site,
        conf,
        app_toml,
        binary: None,
    })
    .await;
    monitor.abort();
    let (_, failed) = *px.shared().reloads.counts.lock();
    let seen = failures.lock().expect("failures").clone();
    eprintln!("[reload load] failed reloads along the way: {failed} {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_with_sighup_under_load_fail_no_request() {
    let _heavy = HEAVY.lock().await;
    let app = Upstream::start("app", Behavior::slow_on("/slow", 30)).await;
    let site = Site::new("load-bin");
    let app_toml = route_to(&[&app], "app");
    site.write_mod("marker", &versioned(0));
    let mut conf = Conf::new(false, &app_toml);
    let bin = Binary::spawn(&site, &mut conf).await;
    twenty_reloads_under_load(LoadTarget {
        addr: bin.addr,
        admin: bin.admin,
        site: &site,
        conf,
        app_toml,
        binary: Some(&bin),
    })
    .await;
    let log = bin.stderr();
    assert!(
        !log.contains("reload failed"),
        "no reload failed; stderr:\n{log}"
    );
    assert!(log.contains("trigger=sighup"), "stderr:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_generation_they_started_with() {
    let a = Upstream::start("a", Behavior::slow_on("/slow", 1500)).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let site = Site::new("in-flight");
    site.write_mod("marker", &versioned(1));
    let mut conf = Conf::new(false, &route_to(&[&a], "a"));
    site.write_config(&conf.text());
    let px = Running::start(&site);

    let addr = px.addr;
    let slow = tokio::spawn(async move { try_send(addr, empty(req("GET", "/slow/pinned"))).await });
    let started = wait_until(EVENTUALLY, || a.inflight() == 1).await;
    assert!(started, "the slow request never reached upstream a");

    // Upstream a disappears from the config, the module changes, routes go to b.
    site.write_mod("marker", &versioned(2));
    conf.rest = route_to(&[&b], "b");
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert!(
        report["applied"].to_string().contains("upstream a removed"),
        "{report:#}"
    );
    assert_eq!(a.inflight(), 1, "the slow request is still in flight");

    let fresh = get(px.addr, "/fast").await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.server(), "b");
    assert_eq!(fresh.header("x-version").as_deref(), Some("v2"));

    let pinned = tokio::time::timeout(EVENTUALLY, slow)
        .await
        .expect("the slow request finishes")
        .expect("the slow request task")
        .unwrap_or_else(|e| panic!("the in-flight request failed across the reload: {e}"));
    assert_eq!(pinned.status, 200, "{}", pinned.text());
    assert_eq!(pinned.server(), "a", "it finished where it started");
    assert_eq!(
        pinned.header("x-version").as_deref(),
        Some("v1"),
        "its response phase ran the generation it started with"
    );
}

// ---- 4. state survives a reload -------------------------------------------------------------

const LIMITER: &str = r##"
mod limiter {
  priority 10
  on request {
    let rl = std.rate_limit(key: "user:${$req.header["x-user"]}", rate: 1, burst: 2, per: 1m)
    if not rl.allowed {
      respond 429 "limited\n" { "retry-after": "${rl.retry_after}" }
    }
  }
}
"##;

async fn as_user(addr: SocketAddr, user: &str) -> Resp {
    send(addr, empty(req("GET", "/").header("x-user", user))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_rate_limit_stays_exhausted_across_reloads() {
    let site = Site::new("rate-limit");
    site.write_mod("limiter", LIMITER);
    site.write_mod("other", &header_mod("other", "x-other", "1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;

    for _ in 0..2 {
        assert_eq!(
            as_user(px.addr, "ann").await.status,
            200,
            "within the burst"
        );
    }
    let refused = as_user(px.addr, "ann").await;
    assert_eq!(refused.status, 429, "{}", refused.text());

    // Reload by editing another module (the watcher).
    site.write_mod("other", &header_mod("other", "x-other", "2"));
    px.wait_generation(2, LIMIT).await;
    let resp = as_user(px.addr, "ann").await;
    assert_eq!(
        resp.status,
        429,
        "exhausted before the reload, still after: {}",
        resp.text()
    );
    let bob = as_user(px.addr, "bob").await;
    assert_eq!(bob.status, 200, "another key is served");
    assert_eq!(
        bob.header("x-other").as_deref(),
        Some("2"),
        "by the new generation"
    );

    // Reload through the admin API, rewriting the limiter itself with the same settings.
    let put = admin(
        px.admin,
        "PUT",
        "/mods/limiter",
        &format!("# same settings, new text\n{LIMITER}"),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["generation"], 3, "{}", put.text());
    let resp = as_user(px.addr, "ann").await;
    assert_eq!(resp.status, 429, "still exhausted: {}", resp.text());

    // And a config.toml change with POST /reload.
    let mut conf = Conf::new(true, ECHO);
    conf.server_extra = "trusted_proxies = [\"10.0.0.0/8\"]".into();
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    px.wait_generation(4, LIMIT).await;
    assert_eq!(as_user(px.addr, "ann").await.status, 429, "still exhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_worker_count_keeps_every_running_worker_on_its_own_vm() {
    // `workers` needs a restart, but the new generation sized its Lua VMs by it: with
    // 2 running and 1 written, worker 1 built a fresh VM per request (module state
    // lost, every answer `1`), and /status said 1.
    let site = Site::new("workers-lua");
    let counter = "mod counter {\n  lua \"\"\"\nlocal n = 0\n\
                   function on_response(req, resp, ctx)\n  n = n + 1\n  resp:set_header(\"x-n\", tostring(n))\nend\n\"\"\"\n}\n";
    site.write_mod("counter", counter);
    let mut conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);
    conf.workers = 1;
    site.write_config(&conf.text());
    let (_, report) = post_reload(px.admin).await;
    assert_eq!(report["ok"], true, "{report:#}");
    let mut ones = 0;
    for i in 0..12 {
        let r = get(px.addr, &format!("/n{i}")).await;
        if r.header("x-n").as_deref() == Some("1") {
            ones += 1;
        }
    }
    assert!(ones <= 2, "{ones} answers were a fresh VM's first");
    let status = get(px.admin, "/status").await.json();
    assert_eq!(status["workers"], 2, "{status:#}");
}

// ---- 5. listeners -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_that_cannot_be_bound_fails_the_reload_and_keeps_the_old() {
    // It answered ok, closed the removed address, reported "could not listen" among
    // what was applied, and left the proxy listening on nothing.
    let site = Site::new("listen-busy");
    let mut conf = Conf::new(false, ECHO);
    let port = free_port();
    conf.listen = vec![format!("127.0.0.1:{port}")];
    site.write_config(&conf.text());
    let px = Running::start(&site);
    let ours = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(ours, "/before").await.status, 200);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    conf.listen = vec![busy_addr.to_string()];
    site.write_config(&conf.text());
    let (_, report) = post_reload(px.admin).await;
    assert_eq!(report["ok"], false, "{report:#}");
    assert!(
        report["errors"].to_string().contains("server.listen[0]"),
        "{report:#}"
    );
    // At the address in the file, as every other config error (it said line 0, col 0).
    let error = &report["errors"][0];
    assert_eq!(
        (&error["line"], &error["col"]),
        (&3.into(), &11.into()),
        "{report:#}"
    );
    assert!(
        error["rendered"]
            .as_str()
            .is_some_and(|r| r.contains("config.toml:3:11: server.listen[0]: cannot listen on")),
        "{report:#}"
    );
    assert_eq!(
        get(ours, "/still").await.status,
        200,
        "the old listener stays"
    );

    // Another process on the same port, another address, with SO_REUSEPORT: still
    // "in use" (the probe was skipped for any address on a port of ours, and the
    // reload joined the other process's group).
    let other =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    other.set_reuse_port(true).expect("reuseport");
    other
        .bind(&SocketAddr::from(([127, 0, 0, 2], port)).into())
        .expect("bind 127.0.0.2");
    other.listen(8).expect("listen");
    conf.listen = vec![format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")];
    site.write_config(&conf.text());
    let (_, report) = post_reload(px.admin).await;
    assert_eq!(report["ok"], false, "{report:#}");
    drop(other);

    // The same port on another address of ours moves (the busy-address probe must
    // not meet our own socket).
    drop(busy);
    conf.listen = vec![format!("0.0.0.0:{port}")];
    site.write_config(&conf.text());
    let (_, report) = post_reload(px.admin).await;
    assert_eq!(report["ok"], true, "{report:#}");
    // A connection that reaches the old socket just as it closes is reset (closing a
    // listening socket resets what the kernel queued after the last accept; the
    // workers take what was queued before it): a client retries, as here once.
    let mut moved = try_send(ours, empty(req("GET", "/moved"))).await;
    if moved.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        moved = try_send(ours, empty(req("GET", "/moved"))).await;
    }
    assert_eq!(moved.map(|r| r.status.as_u16()), Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_are_opened_and_closed_live() {
    let site = Site::new("listeners");
    let mut conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);

    let port = free_port();
    let extra = SocketAddr::from(([127, 0, 0, 1], port));
    conf.listen.push(extra.to_string());
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    let applied = report["applied"].to_string();
    assert!(
        applied.contains(&format!("listening on {extra}")),
        "{report:#}"
    );
    let mut served = false;
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if try_send(extra, empty(req("GET", "/new")))
            .await
            .is_ok_and(|r| r.status == 200)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "nothing serves on the added address {extra}");
    assert_eq!(
        get(px.addr, "/old").await.status,
        200,
        "the first listener stays"
    );

    conf.listen.pop();
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert!(
        report["applied"]
            .to_string()
            .contains(&format!("stopped listening on {extra}")),
        "{report:#}"
    );
    let closed = {
        let start = Instant::now();
        loop {
            if TcpStream::connect(extra).await.is_err() {
                break true;
            }
            if start.elapsed() > LIMIT {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        closed,
        "{extra} still accepts connections after its removal"
    );
    assert_eq!(
        get(px.addr, "/old").await.status,
        200,
        "the first listener stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_follow_config_edits_through_the_watcher() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("listeners-watch");
    let mut conf = Conf::new(true, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;

    let extra = SocketAddr::from(([127, 0, 0, 1], free_port()));
    conf.listen.push(extra.to_string());
    site.write_config(&conf.text());
    let start = Instant::now();
    loop {
        if try_send(extra, empty(req("GET", "/new")))
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "nothing serves on {extra} after config.toml added it ({:?})",
            px.last_reload()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report_time("listen address added in config.toml", start.elapsed());

    conf.listen.pop();
    site.write_config(&conf.text());
    let start = Instant::now();
    while TcpStream::connect(extra).await.is_ok() {
        assert!(
            start.elapsed() < LIMIT,
            "{extra} still accepts connections after config.toml removed it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report_time("listen address removed from config.toml", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_change_live_is_reported_as_requires_restart() {
    let site = Site::new("restart");
    site.write_mod("marker", &responder("marker", "v1"));
    let mut conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);

    let new_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    conf.admin = new_admin.to_string();
    site.write_mod("marker", &responder("marker", "v2"));
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["generation"], 2, "the rest is applied: {report:#}");
    let restart = report["requires_restart"]
        .as_array()
        .expect("requires_restart is a list");
    assert!(
        restart
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("admin.listen"))),
        "{report:#}"
    );
    assert_eq!(body_of(px.addr, "/").await.as_deref(), Ok("v2\n"));
    // Not applied: the admin API stays where it was, nothing listens on the new address.
    assert_eq!(admin(px.admin, "GET", "/status", "").await.status, 200);
    assert!(
        TcpStream::connect(new_admin).await.is_err(),
        "the admin listener moved although that needs a restart"
    );

    conf.workers = 3;
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(status, 200, "{report:#}");
    assert!(
        report["requires_restart"]
            .to_string()
            .contains("server.workers: 2 -> 3"),
        "{report:#}"
    );
}

/// `scripts.watch` was read only when the watcher was installed at start-up: turning it
/// on (or off) in a reload changed nothing and said nothing — `requires_restart` was
/// empty and no warning was logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_scripts_watch_is_reported_as_requires_restart() {
    let site = Site::new("restart-watch");
    let mut conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);

    conf.watch = true;
    site.write_config(&conf.text());
    let (status, report) = post_reload(px.admin).await;
    assert_eq!(
        (status, &report["ok"]),
        (200, &Value::Bool(true)),
        "{report:#}"
    );
    assert_eq!(
        report["requires_restart"],
        serde_json::json!(["scripts.watch: false -> true"]),
        "{report:#}"
    );
    let status = get(px.admin, "/status").await.json();
    assert_eq!(
        status["requires_restart"],
        serde_json::json!(["scripts.watch: false -> true"]),
        "{status:#}"
    );

    conf.watch = false;
    site.write_config(&conf.text());
    let (_, back) = post_reload(px.admin).await;
    assert_eq!(back["requires_restart"], serde_json::json!([]), "{back:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_change_is_reported_until_it_is_put_back() {
    // Reports compared with the previous generation: the reload after a changed
    // `workers` said nothing was pending, and the one that put it back said
    // `server.workers: 3 -> 2` needed a restart although 2 workers ran all along.
    let site = Site::new("restart-pending");
    let conf = Conf::new(false, ECHO);
    site.write_config(&conf.text());
    let px = Running::start(&site);

    let mut changed = conf.clone();
    changed.workers = 3;
    changed.admin = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    changed.rest = format!("{ECHO}\n[cache]\nmax_size = \"8MiB\"\n");
    site.write_config(&changed.text());
    let pending = |report: &Value| -> Vec<String> {
        let list = report["requires_restart"].as_array().cloned();
        let list = list.unwrap_or_else(|| panic!("requires_restart is a list: {report:#}"));
        list.iter()
            .map(|r| r.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (_, first) = post_reload(px.admin).await;
    assert_eq!(first["ok"], true, "{first:#}");
    let listed = pending(&first);
    assert!(
        listed.contains(&"server.workers: 2 -> 3".to_owned()),
        "{first:#}"
    );
    assert!(
        listed.contains(&format!("admin.listen: 127.0.0.1:0 -> {}", changed.admin)),
        "{first:#}"
    );
    assert!(listed.iter().any(|r| r.starts_with("cache")), "{first:#}");
    let (_, second) = post_reload(px.admin).await;
    assert_eq!(
        second["applied"],
        serde_json::json!(["nothing changed"]),
        "{second:#}"
    );
    assert_eq!(pending(&second), listed, "still pending: {second:#}");
    let status = get(px.admin, "/status").await.json();
    assert_eq!(pending(&status), listed, "/status says so too: {status:#}");
    // A failed reload changes nothing that runs, and still says what waits.
    site.write_config(&format!("{}\n[server\n", changed.text()));
    let (status, failed) = post_reload(px.admin).await;
    assert_eq!(
        (status, &failed["ok"]),
        (400, &Value::Bool(false)),
        "{failed:#}"
    );
    assert_eq!(pending(&failed), listed, "{failed:#}");

    site.write_config(&conf.text());
    let (_, back) = post_reload(px.admin).await;
    assert_eq!(back["ok"], true, "{back:#}");
    assert_eq!(back["requires_restart"], serde_json::json!([]), "{back:#}");
    let status = get(px.admin, "/status").await.json();
    assert_eq!(status["workers"], 2, "{status:#}");
    assert_eq!(
        status["requires_restart"],
        serde_json::json!([]),
        "{status:#}"
    );
}

// ---- known bugs -----------------------------------------------------------------------------

/// After any reload the watcher keeps reloading by itself: notify reports the files a
/// reload opens (inotify `IN_OPEN`, an `Access` event) and `watch.rs` treats every event
/// kind as a change, so each reload schedules the next one, every ~250 ms, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watcher_does_not_reload_by_itself() {
    let site = Site::new("idle-watch");
    site.write_mod("marker", &responder("marker", "v1"));
    site.write_config(&Conf::new(true, ECHO).text());
    let px = Running::start(&site);
    px.wait_watching(&site).await;
    // Let the last burst settle, then count reloads over a quiet second and a half.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = *px.shared().reloads.counts.lock();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = *px.shared().reloads.counts.lock();
    assert_eq!(
        before, after,
        "nothing changed on disk, yet the watcher reloaded (ok, failed) {before:?} -> {after:?}"
    );
}

// ---- start-up and a config named without a folder ----------------------------------------

impl Binary {
    /// `proxycache run ARGS` in the site folder (the caller has written, or will
    /// write, the config they name), serving `addrs` from [`Binary::pick_ports`].
    fn launch_with(site: &Site, addrs: (SocketAddr, SocketAddr), args: &[&str]) -> Binary {
        let (child, stderr_path) = site.spawn_run_with(args);
        Binary {
            child,
            stderr_path,
            addr: addrs.0,
            admin: addrs.1,
        }
    }
}

/// A SIGHUP while the binary is still starting (here: still reading its config, a
/// FIFO nobody has written yet) neither ends it nor keeps it from serving. Before the
/// fix, the signal's default action ended the process (exit 129) until the control
/// thread listened, after the config, the modules and the certificates had loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_up_does_not_end_the_process() {
    for round in 0..3 {
        let site = Site::new("sighup-startup");
        site.write_mod("marker", &responder("marker", "v1"));
        let fifo = site.dir.join("fifo.toml");
        let made = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed: {made}");
        let mut conf = Conf::new(false, ECHO);
        let addrs = Binary::pick_ports(&mut conf);
        let text = conf.text();
        let mut bin = Binary::launch_with(&site, addrs, &["--config", "fifo.toml"]);
        // Signals sent before the process has any handler at all (between exec and
        // the first line of main) would end any program: wait for one, a bounded
        // time (without one, the signals below show the failure).
        let deadline = Instant::now() + Duration::from_secs(3);
        while catches_sighup(bin.child.id()) == Some(false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..3 {
            bin.sighup();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(status) = bin.child.try_wait().expect("try_wait") {
            panic!(
                "round {round}: a SIGHUP during start-up ended proxycache with {status}; stderr:\n{}",
                bin.stderr()
            );
        }
        // Now the config: opening the FIFO for writing meets the reader waiting in it.
        std::thread::spawn(move || std::fs::write(&fifo, text))
            .join()
            .expect("the writer thread")
            .expect("write the config into the FIFO");
        bin.wait_ready().await;
        assert_eq!(body_of(bin.addr, "/").await.as_deref(), Ok("v1\n"));
        bin.assert_running();
    }
}

/// `-c config.toml` (a bare name, whose folder is the empty path): an edit is seen by
/// the file watcher's events, not only by its poll. Before the fix the events never
/// matched the config file (the empty folder could not be resolved), so only the
/// poll, every 2 s and without waiting for the write to settle, reloaded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_named_without_a_folder_reloads_on_its_file_events() {
    let _heavy = HEAVY.lock().await;
    let site = Site::new("bare-name");
    site.write_mod("marker", &responder("marker", "v1"));
    let mut conf = Conf::new(true, ECHO);
    let addrs = Binary::pick_ports(&mut conf);
    let with_debug = |c: &Conf| {
        c.text().replace(
            "[log]\naccess = false",
            "[log]\naccess = false\nlevel = \"info,proxycache::reload=debug\"",
        )
    };
    site.write_config(&with_debug(&conf));
    let mut bin = Binary::launch_with(&site, addrs, &["-c", "config.toml"]);
    bin.wait_ready().await;
    assert_eq!(body_of(bin.addr, "/").await.as_deref(), Ok("v1\n"));

    // A change only the config file carries: a module turned off.
    conf.rest = format!("{ECHO}\n[mods.marker]\nenabled = false\n");
    site.write_config(&with_debug(&conf));
    let status = wait_status(bin.admin, |s| s["generation"] == 2).await;
    assert_eq!(status["last_reload"]["ok"], true, "{status:#}");
    assert_eq!(status["last_reload"]["trigger"], "watch", "{status:#}");
    let log = bin.stderr();
    assert!(
        !log.contains("files changed without an event"),
        "the edit was found by the poll, not by its file events; stderr:\n{log}"
    );
}

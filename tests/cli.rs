//! Acceptance 7 and 8, through the `proxycache` binary: `check` exits 1 naming the bad
//! key, `run` refuses a bad config, `version` prints the version, the embedded default
//! serves `builtin:echo`, and SIGTERM during a slow request lets it finish with 200,
//! refuses new connections and exits 0.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_proxycache");

/// A fresh, empty directory under the system temp dir; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "proxycache-cli-{}-{name}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to completion (for `check` and `version`), in `dir`.
fn run_to_end(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run proxycache")
}

/// A `proxycache run` child process, killed (by its pid) if the test ends early.
struct Server {
    child: Child,
    stderr_path: PathBuf,
}

impl Server {
    fn spawn(dir: &TempDir, config: &Path) -> Server {
        let mut command = Command::new(BIN);
        command.args(["run", "--config"]).arg(config);
        Server::spawn_command(dir, command)
    }

    /// `proxycache run --config CONFIG` started by `sh` after `ulimit ULIMIT_ARGS`
    /// (the binary replaces the shell: the pid is the proxy's).
    fn spawn_with_ulimit(dir: &TempDir, config: &Path, ulimit_args: &str) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit {ulimit_args} && exec \"$0\" run --config \"$1\""
            ))
            .arg(BIN)
            .arg(config);
        Server::spawn_command(dir, command)
    }

    fn spawn_command(dir: &TempDir, mut command: Command) -> Server {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create stderr log");
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn proxycache run");
        Server { child, stderr_path }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process exits, at most `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `GET /` through the proxy at `port` answers 200.
    async fn wait_ready(&mut self, port: u16) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "proxycache exited early with {status}; stderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(resp) = try_send(addr, empty(req("GET", "/ready"))).await {
                assert_eq!(resp.status, 200, "readiness request: {}", resp.text());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxycache did not serve within 15s; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`TERM`, `INT`...) to the process.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const BAD_KEY: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus_key = 1\n\n[upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"e\"\n";

fn good_config(port: u16) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n[upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"e\"\n"
    )
}

#[test]
fn check_with_a_bad_key_exits_1_and_names_the_key_and_line() {
    let dir = TempDir::new("bad-key");
    let path = dir.write("bad.toml", BAD_KEY);
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("bogus_key"),
        "stderr names the key: {stderr}"
    );
    assert!(
        stderr.contains("server.bogus_key"),
        "stderr names the dotted key: {stderr}"
    );
    assert!(
        stderr.contains(":3:"),
        "stderr names the line (3): {stderr}"
    );
}

#[test]
fn check_with_bad_values_exits_1_and_names_every_key() {
    let dir = TempDir::new("bad-values");
    let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[server.limits]\nmax_body = \"12 parsecs\"\n\n[server.timeouts]\nheader = \"soon\"\n\n[upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"nope\"\n";
    let path = dir.write("bad.toml", text);
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for key in [
        "server.limits.max_body",
        "server.timeouts.header",
        "routes[0].upstream",
    ] {
        assert!(stderr.contains(key), "stderr names {key}: {stderr}");
    }
}

/// Errors about the whole file have no key, and an unreadable file no position: the
/// message leaves both out rather than printing `:0:0: : `.
#[test]
fn whole_file_errors_print_no_empty_key_or_position() {
    let dir = TempDir::new("whole-file");
    let syntax = dir.write("bad.toml", "[server\nworkers = 1\n");
    let missing = dir.path().join("nothere.toml");
    for (path, expected) in [
        (syntax, "bad.toml:1:8: unclosed table, expected `]`"),
        (missing, "nothere.toml: cannot read the config file: "),
    ] {
        let out = run_to_end(
            dir.path(),
            &["check", "--config", path.to_str().expect("utf-8 path")],
        );
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(expected), "{expected:?} in {text}");
        assert!(!text.contains(": : "), "{text}");
    }
}

/// A certificate file that cannot be read is found after the config validates, but
/// it is still said as every other error is, `file:line:col: key: message`, pointing at
/// the value that names the file (it was `missing.toml: server.tls...`, no position).
#[test]
fn check_puts_a_missing_certificate_at_its_key_in_the_config() {
    let dir = TempDir::new("missing-cert");
    let text = "[server]\nlisten = []\n\n[admin]\nlisten = \"\"\n\n\
                [[server.tls]]\nlisten = \"127.0.0.1:0\"\n\
                certs = [{ cert = \"nothere.pem\", key = \"nothere.key\" }]\n\
                client_ca = \"noca.pem\"\n\n\
                [upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"e\"\n";
    let path = dir.write("missing.toml", text);
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:9:19: server.tls[0].certs[0].cert: cannot read "),
        format!("{file}:10:13: server.tls[0].client_ca: cannot read "),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} in:\n{stderr}");
    }
    // With the line and a caret under the value, as other errors are shown.
    assert!(
        stderr.contains("9 | certs = [{ cert = \"nothere.pem\""),
        "{stderr}"
    );
}

/// `check` counts its modules in English: `1 module`, `2 modules` (it said `1 modules`).
#[test]
fn check_says_1_module_not_1_modules() {
    let dir = TempDir::new("one-module");
    let path = dir.write("config.toml", &good_config(0));
    std::fs::create_dir_all(dir.path().join("mods")).expect("mods/");
    let tag = |name: &str| {
        format!("mod {name} {{\n  on response {{\n    set resp.header[\"x-{name}\"] = \"1\"\n  }}\n}}\n")
    };
    for (name, expected) in [("one", "(1 module from "), ("two", "(2 modules from ")] {
        dir.write(&format!("mods/{name}.pcmod"), &tag(name));
        let out = run_to_end(
            dir.path(),
            &["check", "--config", path.to_str().expect("utf-8 path")],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
}

/// A `[mods.NAME]` naming no module is not an error, but `check` says so (docs/config.md).
#[test]
fn check_warns_about_a_mods_table_that_names_no_module() {
    let text = format!("{}\n[mods.nothere]\nrate = 1\n", good_config(0));
    let dir = TempDir::new("mods-nothere");
    let path = dir.write("config.toml", &text);
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("[mods.nothere] names no module in "),
        "{stderr}"
    );
}

/// A certificate that cannot be read and a module that does not parse: `check` prints
/// both and counts both (it printed them and said `1 error(s)`, and with only the
/// certificate's error, no count at all).
#[test]
fn check_counts_certificate_and_module_errors_together() {
    let dir = TempDir::new("tls-and-module");
    let text = "[server]\nlisten = []\n\n[admin]\nlisten = \"\"\n\n\
                [[server.tls]]\nlisten = \"127.0.0.1:0\"\n\
                certs = [{ cert = \"nothere.pem\", key = \"nothere.key\" }]\n\n\
                [upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"e\"\n";
    let path = dir.write("config.toml", text);
    std::fs::create_dir_all(dir.path().join("mods")).expect("mods/");
    let config = path.to_str().expect("utf-8 path");

    let out = run_to_end(dir.path(), &["check", "--config", config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothere.pem"), "{stderr}");
    assert!(
        stderr.contains("1 error; nothing would be loaded"),
        "{stderr}"
    );

    dir.write(
        "mods/broken.pcmod",
        "mod broken {\n  on request {\n    set req.header[\"x\"] = \n  }\n}\n",
    );
    let out = run_to_end(dir.path(), &["check", "--config", config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothere.pem"), "{stderr}");
    assert!(stderr.contains("broken.pcmod:"), "{stderr}");
    assert!(
        stderr.contains("2 errors; nothing would be loaded"),
        "{stderr}"
    );
}

/// With errors in config.toml, `check` cannot check the modules or the certificate
/// files against it: it says so, with the count, rather than leaving them unmentioned.
#[test]
fn check_says_the_modules_were_not_checked_when_the_config_has_errors() {
    let dir = TempDir::new("config-and-module");
    let path = dir.write("config.toml", BAD_KEY);
    std::fs::create_dir_all(dir.path().join("mods")).expect("mods/");
    dir.write("mods/broken.pcmod", "mod broken {\n");
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.bogus_key"), "{stderr}");
    assert!(
        stderr.contains("1 error; the modules and the certificate files were not checked"),
        "{stderr}"
    );
}

#[test]
fn check_on_a_good_config_exits_0() {
    let dir = TempDir::new("good");
    let path = dir.write("good.toml", &good_config(0));
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_prints_the_version() {
    let dir = TempDir::new("version");
    let out = run_to_end(dir.path(), &["version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "stdout: {stdout}"
    );
    assert!(stdout.contains("proxycache"), "stdout: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_on_a_bad_config() {
    let dir = TempDir::new("run-bad");
    let path = dir.write("bad.toml", BAD_KEY);
    let mut server = Server::spawn(&dir, &path);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("run exits on a bad config");
    assert_eq!(status.code(), Some(1), "stderr: {}", server.stderr());
    assert!(
        server.stderr().contains("server.bogus_key"),
        "stderr: {}",
        server.stderr()
    );
}

#[test]
fn the_embedded_default_routes_everything_to_builtin_echo() {
    let config = proxycache::Config::embedded_default();
    assert_eq!(
        config.server.listen,
        vec!["127.0.0.1:8080".parse().expect("addr")]
    );
    assert_eq!(
        config.admin.listen,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    assert!(config.source.is_none());
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert!(
        route.host.is_none()
            && route.path_prefix.is_none()
            && route.methods.is_empty()
            && route.headers.is_empty()
    );
    let upstream = &config.upstreams[route.upstream];
    assert_eq!(upstream.servers.len(), 1);
    assert_eq!(
        upstream.servers[0].target,
        proxycache::config::ServerTarget::Echo
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_in_process() {
    let mut config = proxycache::Config::embedded_default();
    // Same config, but on a free port and without the admin listener.
    config.server.listen = vec!["127.0.0.1:0".parse().expect("addr")];
    config.admin.listen = None;
    let handle = proxycache::start(config).expect("the embedded default starts");
    let addr = handle.local_addr();

    let resp = get(addr, "/").await;

    assert_eq!(resp.status, 200);
    let echo = resp.json();
    assert_eq!(echo["upstream"], "builtin:echo");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/");
    tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_embedded_default_config() {
    let dir = TempDir::new("default");
    let port = free_port();
    let admin_port = free_port();
    let text = proxycache::config::DEFAULT_CONFIG_TOML
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin_port}"));
    assert_ne!(
        text,
        proxycache::config::DEFAULT_CONFIG_TOML,
        "the default listens where CONFIG.md says"
    );
    let path = dir.write("default-copy.toml", &text);
    let mut server = Server::spawn(&dir, &path);
    server.wait_ready(port).await;

    let resp = get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["upstream"], "builtin:echo");

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM; stderr:\n{}",
        server.stderr()
    );
}

/// SIGUSR1 and SIGUSR2 (nginx's log reopen and binary upgrade, sent by scripts written
/// for it) are logged and ignored, not the end of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_and_sigusr2_are_logged_not_fatal() {
    let dir = TempDir::new("sigusr");
    let port = free_port();
    let path = dir.write("config.toml", &good_config(port));
    let mut server = Server::spawn(&dir, &path);
    server.wait_ready(port).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for sig in ["USR1", "USR2"] {
        server.signal(sig);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resp = try_send(addr, empty(req("GET", "/")))
            .await
            .unwrap_or_else(|e| panic!("after SIG{sig}: {e}"));
        assert_eq!(resp.status, 200, "after SIG{sig}");
    }
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        server.stderr()
    );
    let log = server.stderr();
    assert!(log.contains("SIGUSR1 ignored"), "{log}");
    assert!(log.contains("SIGUSR2 ignored"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_slow_request_finish_refuses_new_connections_and_exits_0() {
    let up = Upstream::start("slow", Behavior::slow_on("/slow", 2_000)).await;
    let dir = TempDir::new("sigterm");
    let port = free_port();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[server.timeouts]\nshutdown_drain = \"10s\"\n\n[admin]\nlisten = \"\"\n\n{}",
        app(&[&up], "")
    );
    let path = dir.write("config.toml", &text);
    let mut server = Server::spawn(&dir, &path);
    server.wait_ready(port).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let slow = tokio::spawn(async move { try_send(addr, empty(req("GET", "/slow"))).await });
    assert!(
        wait_until(Duration::from_secs(5), || up.inflight() == 1).await,
        "the slow request reached the upstream"
    );
    server.sigterm();

    // New connections are refused while the slow request is still in flight.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            // A connect that races the listener's close can be accepted into the
            // backlog or reset while the socket goes away: keep trying until the
            // port itself refuses.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => break e,
            Ok(stream) => drop(stream),
        }
        assert!(
            Instant::now() < deadline,
            "new connections still accepted 1.5s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(
        !slow.is_finished(),
        "connections were refused while the slow request was in flight"
    );

    let resp = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow request finishes")
        .expect("slow task")
        .unwrap_or_else(|e| {
            panic!(
                "the in-flight request failed: {e}; stderr:\n{}",
                server.stderr()
            )
        });
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.server(), "slow");

    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM; stderr:\n{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_forces_the_exit() {
    let up = Upstream::start("slow", Behavior::slow_on("/slow", 30_000)).await;
    let dir = TempDir::new("forced");
    let port = free_port();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[server.timeouts]\nshutdown_drain = \"5m\"\n\n[admin]\nlisten = \"\"\n\n{}",
        app(&[&up], "")
    );
    let path = dir.write("config.toml", &text);
    let mut server = Server::spawn(&dir, &path);
    server.wait_ready(port).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let _slow = tokio::spawn(async move { try_send(addr, empty(req("GET", "/slow"))).await });
    assert!(
        wait_until(Duration::from_secs(5), || up.inflight() == 1).await,
        "the slow request reached the upstream"
    );
    server.sigterm();
    // Draining: the slow request holds the process.
    assert_eq!(server.wait_exit(Duration::from_millis(500)).await, None);
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "a second signal ends the drain; stderr:\n{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("forced shutdown"),
        "stderr:\n{}",
        server.stderr()
    );
}

/// `check` on `text` (written as `config.toml`): its exit code and stderr.
fn check_text(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new(name);
    let path = dir.write("config.toml", text);
    let out = run_to_end(
        dir.path(),
        &["check", "--config", path.to_str().expect("utf-8 path")],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `good_config` with `workers = WORKERS`.
fn with_workers(workers: &str) -> String {
    good_config(0).replace("workers = 1", &format!("workers = {workers}"))
}

#[test]
fn check_bounds_server_workers() {
    let (code, stderr) = check_text("workers-many", &with_workers("99999999999"));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("server.workers: must be at most 1024, got 99999999999"),
        "stderr: {stderr}"
    );
    let (code, stderr) = check_text("workers-max", &with_workers("1024"));
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

#[test]
fn check_calls_an_integer_past_i64_too_large() {
    let (code, stderr) = check_text("workers-huge", &with_workers("99999999999999999999"));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("server.workers") && stderr.contains("99999999999999999999 is too large"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("i128"), "stderr: {stderr}");
}

const ROUTES: &str =
    "[upstreams.e]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"e\"\n";

/// A listener on the default admin address, with no `[admin]` to move it, is refused
/// by `check`, naming the key (`run` could not bind both).
#[test]
fn check_refuses_a_listener_on_the_default_admin_address() {
    let on_admin = format!("[server]\nlisten = [\"127.0.0.1:9901\"]\n\n{ROUTES}");
    let (code, stderr) = check_text("on-admin", &on_admin);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("server.listen[0]") && stderr.contains("admin.listen"),
        "stderr: {stderr}"
    );
}

/// The same port on a wildcard and on an address it covers is refused by `check`,
/// naming the key (`run` could not bind both).
#[test]
fn check_refuses_a_port_on_a_wildcard_and_on_an_address_it_covers() {
    let routes = ROUTES;
    let port = free_port();
    for (a, b) in [
        (format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")),
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
        (format!("[::]:{port}"), format!("127.0.0.1:{port}")),
    ] {
        let text =
            format!("[server]\nlisten = [\"{a}\", \"{b}\"]\n\n[admin]\nlisten = \"\"\n\n{routes}");
        let (code, stderr) = check_text("wildcard", &text);
        assert_eq!(code, Some(1), "{a} and {b}: stderr: {stderr}");
        assert!(
            stderr.contains("server.listen[1]") && stderr.contains("also used by server.listen[0]"),
            "{a} and {b}: stderr: {stderr}"
        );
    }
    // Different ports, or a specific IPv6 address beside the IPv4 wildcard, are fine.
    let text = format!(
        "[server]\nlisten = [\"0.0.0.0:{port}\", \"[::1]:{port}\", \"127.0.0.1:0\", \"0.0.0.0:0\"]\n\n[admin]\nlisten = \"\"\n\n{routes}"
    );
    let (code, stderr) = check_text("no-clash", &text);
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

/// A listener that cannot be bound at start-up: exit 1, and the OS error said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_error_at_start_up_says_the_os_error_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port();
    let dir = TempDir::new("bind-error");
    let path = dir.write("config.toml", &good_config(port));
    let mut server = Server::spawn(&dir, &path);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("run exits when it cannot bind");
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "stderr: {stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "stderr: {stderr}"
    );
}

// ---- the open-file limit ---------------------------------------------------------------

/// The soft and hard open-file limits of process `pid` (`/proc/PID/limits`).
fn nofile_limits(pid: u32) -> (String, String) {
    let limits =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap_or_default().to_owned(),
        fields.next().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn run_raises_the_soft_open_file_limit_to_the_hard_one() {
    // A soft limit of 256 under a higher hard one (the machine's): the proxy takes the
    // hard one, which needs no privilege. It kept 256 (then 1024, the usual default),
    // and accepts failed with EMFILE far below max_connections.
    let dir = TempDir::new("nofile");
    let port = free_port();
    let path = dir.write(
        "config.toml",
        &good_config(port).replace(
            "workers = 1",
            "workers = 1\n\n[server.limits]\nmax_connections = 100",
        ),
    );
    let mut server = Server::spawn_with_ulimit(&dir, &path, "-S -n 256");
    server.wait_ready(port).await;
    let (soft, hard) = nofile_limits(server.pid());
    assert_ne!(hard, "256", "the test needs a hard limit above 256");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    assert!(
        !server.stderr().contains("open-file limit"),
        "max_connections = 100 fits: {}",
        server.stderr()
    );
}

#[tokio::test]
async fn run_warns_when_the_open_file_limit_is_short_of_max_connections() {
    // Soft and hard at 1024 and the default max_connections (20000): nothing can
    // raise it, so the start says so.
    let dir = TempDir::new("nofile-short");
    let port = free_port();
    let path = dir.write("config.toml", &good_config(port));
    let mut server = Server::spawn_with_ulimit(&dir, &path, "-n 1024");
    server.wait_ready(port).await;
    let stderr = server.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no warning about the open-file limit:\n{stderr}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("1024") && warning.contains("40256"),
        "{warning}"
    );
    assert!(warning.contains("max_connections"), "{warning}");
}

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::validate::line_col;
use super::*;

const BASE: &str = "/etc/proxycache";
const FILE: &str = "/etc/proxycache/config.toml";

/// A minimal valid prefix: one upstream `echo` and one `app`.
const UPSTREAMS: &str = r#"
[upstreams.echo]
servers = ["builtin:echo"]

[upstreams.app]
servers = ["127.0.0.1:3000", { addr = "127.0.0.1:3001", weight = 3 }]
"#;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, Some(Path::new(FILE)), Path::new(BASE))
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty());
            errors
        }
    }
}

/// Asserts `text` fails with exactly one error, at `key` on `line`, whose message
/// contains `needle`.
fn assert_error(text: &str, key: &str, line: usize, needle: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let error = &errors[0];
    assert_eq!(error.key, key, "{error}");
    assert_eq!(error.line, line, "{error}");
    assert!(error.col >= 1, "{error}");
    assert!(
        error.message.contains(needle),
        "{error} should mention {needle:?}"
    );
    assert_eq!(error.file, FILE);
}

// ---- the embedded default and the shipped config.toml -------------------------------

#[test]
fn embedded_default_parses() {
    let config = Config::from_toml_str(DEFAULT_CONFIG_TOML, None, Path::new(BASE)).unwrap();
    assert_eq!(config.source, None);
    assert_eq!(config.server.listen, vec![DEFAULT_LISTEN]);
    assert_eq!(config.admin.listen, Some(DEFAULT_ADMIN_LISTEN));
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "echo");
    let echo = ServerSpec {
        target: ServerTarget::Echo,
        weight: 1,
    };
    assert_eq!(config.upstreams[0].servers, vec![echo]);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].upstream, 0);
    assert!(config.routes[0].host.is_none() && config.routes[0].path_prefix.is_none());
    assert_eq!(config.scripts.dir, Path::new(BASE).join("mods"));
    assert!(config.server.workers >= 1);
    assert!(Config::embedded_default().server.listen == vec![DEFAULT_LISTEN]);
}

#[test]
fn embedded_default_errors_name_the_default_file() {
    let errors = Config::from_toml_str("nope = 1", None, Path::new(BASE)).unwrap_err();
    assert_eq!(errors.0[0].file, "<default>");
}

#[test]
fn shipped_config_behaves_like_the_embedded_default() {
    let shipped = include_str!("../../config.toml");
    let base = Path::new(BASE);
    let shipped = Config::from_toml_str(shipped, Some(Path::new(FILE)), base).unwrap();
    let default = Config::from_toml_str(DEFAULT_CONFIG_TOML, None, base).unwrap();
    assert_eq!(shipped.server.listen, default.server.listen);
    assert_eq!(shipped.server.workers, default.server.workers);
    assert_eq!(
        shipped.server.trusted_proxies,
        default.server.trusted_proxies
    );
    assert_eq!(
        shipped.server.limits.max_body,
        default.server.limits.max_body
    );
    assert_eq!(
        shipped.server.timeouts.header,
        default.server.timeouts.header
    );
    assert!(shipped.server.tls.is_empty());
    assert_eq!(shipped.admin.listen, default.admin.listen);
    assert_eq!(shipped.admin.api_key, default.admin.api_key);
    assert_eq!(shipped.log.level, default.log.level);
    assert_eq!(shipped.log.format, default.log.format);
    assert_eq!(shipped.scripts.dir, default.scripts.dir);
    assert_eq!(shipped.scripts.watch, default.scripts.watch);
    assert_eq!(shipped.server.merge_slashes, default.server.merge_slashes);
    let names = |c: &Config| {
        c.upstreams
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&shipped), names(&default));
    assert_eq!(shipped.upstreams[0].servers, default.upstreams[0].servers);
    assert!(shipped.upstreams[0].health.is_none());
    assert_eq!(shipped.routes.len(), 1);
    assert!(shipped.routes[0].host.is_none() && shipped.routes[0].methods.is_empty());
    assert!(shipped.tcp.is_empty());
    assert!(shipped.mods.is_empty());
}

// ---- defaults and values ---------------------------------------------------------------

#[test]
fn empty_file_gets_every_default() {
    let config = ok("");
    assert_eq!(config.server.listen, vec![DEFAULT_LISTEN]);
    assert_eq!(config.server.limits.max_header_bytes, 64 * 1024);
    assert_eq!(config.server.limits.max_body, 16 * 1024 * 1024);
    assert_eq!(config.server.limits.max_connections, 20_000);
    assert_eq!(config.server.timeouts.header, Duration::from_secs(10));
    assert_eq!(config.server.timeouts.idle, Duration::from_secs(60));
    assert_eq!(
        config.server.timeouts.shutdown_drain,
        Duration::from_secs(10)
    );
    assert_eq!(config.admin.listen, Some(DEFAULT_ADMIN_LISTEN));
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.log.access);
    assert!(config.server.merge_slashes);
    assert!(config.scripts.watch);
    assert_eq!(config.scripts.lua_memory_limit, 64 * 1024 * 1024);
    assert_eq!(config.scripts.lua_instruction_budget, 1_000_000);
    assert!(config.upstreams.is_empty() && config.routes.is_empty());
}

#[test]
fn upstream_defaults_and_options() {
    let config = ok(&format!(
        "{UPSTREAMS}\n[upstreams.hashed]\nservers = [\"localhost:3000\"]\n\
         balance = \"consistent_hash\"\nhash_key = \"header:X-User\"\nhealth = {{}}\n"
    ));
    let app = &config.upstreams[0];
    assert_eq!(app.name, "app");
    assert_eq!(app.balance, Balance::RoundRobin);
    assert_eq!(app.hash_key, HashKey::ClientIp);
    assert_eq!(app.servers[1].weight, 3);
    assert_eq!(app.connect_timeout, Duration::from_secs(2));
    assert_eq!(app.response_timeout, Duration::from_secs(30));
    assert_eq!(app.pool.max_idle_per_server, 64);
    assert_eq!(app.pool.idle_timeout, Duration::from_secs(90));
    assert!(
        app.health.is_none(),
        "health checks are off unless `health` is present"
    );
    assert_eq!(app.circuit_breaker.failures, 5);
    assert_eq!(app.circuit_breaker.open_for, Duration::from_secs(10));
    assert!(!app.tls && !app.http2 && app.tls_ca.is_none() && app.sni.is_none());

    let hashed = config
        .upstreams
        .iter()
        .find(|u| u.name == "hashed")
        .unwrap();
    assert_eq!(hashed.balance, Balance::ConsistentHash);
    assert_eq!(
        hashed.hash_key,
        HashKey::Header(http::HeaderName::from_static("x-user"))
    );
    let health = hashed.health.as_ref().unwrap();
    assert_eq!(health.path, "/healthz");
    assert_eq!(health.interval, Duration::from_secs(5));
    assert_eq!(health.timeout, Duration::from_secs(1));
    assert_eq!((health.healthy_after, health.unhealthy_after), (2, 3));
    let ServerTarget::Addr { addr, authority } = &hashed.servers[0].target else {
        panic!("localhost should resolve to an address");
    };
    assert!(addr.ip().is_loopback() && addr.port() == 3000);
    assert_eq!(authority, "localhost:3000");
}

#[test]
fn sizes_and_durations_in_the_file() {
    let config = ok(r#"
[server.limits]
max_header_bytes = "2KB"
max_body = 1024
[server.timeouts]
header = "250ms"
idle = 90
shutdown_drain = "1m30s"
[scripts]
lua_memory_limit = "1GiB"
"#);
    assert_eq!(config.server.limits.max_header_bytes, 2_000);
    assert_eq!(config.server.limits.max_body, 1_024);
    assert_eq!(config.server.timeouts.header, Duration::from_millis(250));
    assert_eq!(config.server.timeouts.idle, Duration::from_secs(90));
    assert_eq!(
        config.server.timeouts.shutdown_drain,
        Duration::from_secs(90)
    );
    assert_eq!(config.scripts.lua_memory_limit, 1 << 30);
}

#[test]
fn workers_zero_means_one_per_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(ok("[server]\nworkers = 0").server.workers, cores);
    assert_eq!(ok("[server]\nworkers = 3").server.workers, 3);
}

#[test]
fn merge_slashes_can_be_turned_off() {
    assert!(!ok("[server]\nmerge_slashes = false").server.merge_slashes);
}

#[test]
fn escaped_slashes_are_kept_unless_set() {
    assert_eq!(ok("").server.escaped_slashes, EscapedSlashes::Keep);
    for (text, want) in [
        ("keep", EscapedSlashes::Keep),
        ("reject", EscapedSlashes::Reject),
        ("decode", EscapedSlashes::Decode),
    ] {
        let config = ok(&format!("[server]\nescaped_slashes = \"{text}\""));
        assert_eq!(config.server.escaped_slashes, want);
    }
    assert_error(
        "[server]\nescaped_slashes = \"unescape\"\n",
        "server.escaped_slashes",
        2,
        "unknown value \"unescape\", expected one of keep, reject, decode",
    );
}

#[test]
fn trusted_proxies_accept_cidrs_and_bare_addresses() {
    let config = ok(r#"[server]
trusted_proxies = ["10.0.0.0/8", "192.168.1.10", "::1"]"#);
    let nets: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.10/32", "::1/128"]);
}

#[test]
fn admin_listen_empty_turns_it_off() {
    assert_eq!(ok("[admin]\nlisten = \"\"").admin.listen, None);
    let config = ok("[admin]\nlisten = \"0.0.0.0:9901\"\napi_key = \"secret\"");
    assert_eq!(config.admin.listen, Some("0.0.0.0:9901".parse().unwrap()));
}

#[test]
fn routes_are_normalised() {
    let config = ok(&format!(
        r#"{UPSTREAMS}
[[routes]]
host = "API.Example.com:8443"
path_prefix = "/api/"
methods = ["get", "POST"]
headers = {{ "X-Canary" = "1" }}
upstream = "app"

[[routes]]
host = "[::1]:8080"
upstream = "echo"
"#
    ));
    let route = &config.routes[0];
    assert_eq!(route.host.as_deref(), Some("api.example.com"));
    assert_eq!(route.path_prefix.as_deref(), Some("/api/"));
    assert_eq!(route.methods, vec![http::Method::GET, http::Method::POST]);
    assert_eq!(
        route.headers,
        vec![(http::HeaderName::from_static("x-canary"), "1".to_owned())]
    );
    assert_eq!(config.upstreams[route.upstream].name, "app");
    assert_eq!(config.routes[1].host.as_deref(), Some("[::1]"));
    assert_eq!(config.upstreams[config.routes[1].upstream].name, "echo");
}

#[test]
fn tcp_and_tls_listeners() {
    let config = ok(&format!(
        r#"{UPSTREAMS}
[[server.tls]]
listen = "127.0.0.1:8443"
certs = [{{ cert = "certs/site.pem", key = "/abs/site.key" }}]
client_ca = "certs/ca.pem"

[[tcp]]
listen = "127.0.0.1:5433"
upstream = "app"
proxy_protocol = 2
"#
    ));
    let tls = &config.server.tls[0];
    assert_eq!(tls.listen, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(config.tcp[0].proxy_protocol, Some(2));
    assert_eq!(config.tcp[0].idle_timeout, DEFAULT_TCP_IDLE_TIMEOUT);
    assert_eq!(DEFAULT_TCP_IDLE_TIMEOUT, Duration::from_secs(600));
    assert_eq!(config.upstreams[config.tcp[0].upstream].name, "app");
    assert_eq!(tls.certs[0].key, PathBuf::from("/abs/site.key"));
}

/// `tls_ca` or `sni` on a set without `tls = true` would have the set send plain HTTP
/// to a server its writer meant to reach over verified TLS: an error, not ignored.
#[test]
fn tls_ca_and_sni_without_tls_true_are_errors_naming_the_key() {
    assert_error(
        &format!("{UPSTREAMS}tls_ca = \"ca.pem\"\n"),
        "upstreams.app.tls_ca",
        7,
        "tls_ca has no effect without tls = true",
    );
    assert_error(
        &format!("{UPSTREAMS}tls = false\nsni = \"api.internal\"\n"),
        "upstreams.app.sni",
        8,
        "sni has no effect without tls = true",
    );
    // Empty values are the defaults (as the shipped tour writes them), and with
    // `tls = true` both are what they are for.
    ok(&format!("{UPSTREAMS}tls_ca = \"\"\nsni = \"\"\n"));
    ok(&format!(
        "{UPSTREAMS}tls = true\ntls_ca = \"ca.pem\"\nsni = \"api.internal\"\n"
    ));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let config = ok(&format!(
        r#"[scripts]
dir = "scripts"
{UPSTREAMS}
tls = true
tls_ca = "ca/bundle.pem"
[[server.tls]]
listen = "127.0.0.1:8443"
certs = [{{ cert = "certs/site.pem", key = "/abs/site.key" }}]
client_ca = "certs/ca.pem"
"#
    ));
    let base = Path::new(BASE);
    assert_eq!(config.base_dir, base);
    assert_eq!(config.scripts.dir, base.join("scripts"));
    let app = &config.upstreams[0];
    assert_eq!(
        app.tls_ca.as_deref(),
        Some(base.join("ca/bundle.pem").as_path())
    );
    let tls = &config.server.tls[0];
    assert_eq!(tls.certs[0].cert, base.join("certs/site.pem"));
    assert_eq!(tls.certs[0].key, Path::new("/abs/site.key"));
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(base.join("certs/ca.pem").as_path())
    );
    assert_eq!(
        ok("[scripts]\ndir = \"/srv/mods\"").scripts.dir,
        Path::new("/srv/mods")
    );
}

// ---- one error of each kind --------------------------------------------------------------

#[test]
fn syntax_error() {
    let errors = errors("[server]\nlisten = [\"127.0.0.1:8080\"\n");
    assert!(errors.iter().all(|e| e.line >= 2), "{errors:#?}");
    assert!(errors[0].message.contains("expected"), "{errors:#?}");
}

#[test]
fn unknown_keys() {
    assert_error(
        "[server]\nlistn = []\n",
        "server.listn",
        2,
        "unknown key `listn`, expected",
    );
    assert_error("nope = 1\n", "nope", 1, "unknown key `nope`");
    assert_error(
        &format!("{UPSTREAMS}pool = {{ max_idle = 3 }}\n"),
        "upstreams.app.pool.max_idle",
        7,
        "unknown key `max_idle`",
    );
    // A misspelt required key is both unknown and missing; both are worth saying.
    let errors = errors("[upstreams.app]\nservers = [{ adr = \"127.0.0.1:1\" }]\n");
    let found: Vec<(&str, usize)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    let expected = [
        ("upstreams.app.servers[0].addr", 2),
        ("upstreams.app.servers[0].adr", 2),
    ];
    assert_eq!(found, expected);
    assert!(errors[1]
        .message
        .starts_with("unknown key `adr`, expected `addr`"));
}

#[test]
fn wrong_types() {
    assert_error(
        "[server]\nworkers = \"many\"\n",
        "server.workers",
        2,
        "expected an integer",
    );
    assert_error(
        "[server]\nlisten = \"127.0.0.1:80\"\n",
        "server.listen",
        2,
        "expected an array",
    );
    assert_error("server = 3\n", "server", 1, "expected a table");
    assert_error(
        "[log]\naccess = \"yes\"\n",
        "log.access",
        2,
        "expected a boolean",
    );
    assert_error(
        "[server]\nmerge_slashes = \"off\"\n",
        "server.merge_slashes",
        2,
        "expected a boolean",
    );
    assert_error(
        "[upstreams.app]\nservers = [3]\n",
        "upstreams.app.servers[0]",
        2,
        "an address",
    );
    assert_error(
        "[server.limits]\nmax_body = true\n",
        "server.limits.max_body",
        2,
        "a size",
    );
}

#[test]
fn bad_sizes_and_durations() {
    assert_error(
        "[server.limits]\nmax_body = \"10XB\"\n",
        "server.limits.max_body",
        2,
        "invalid size \"10XB\"",
    );
    assert_error(
        "[server.limits]\nmax_body = -1\n",
        "server.limits.max_body",
        2,
        "negative",
    );
    assert_error(
        &format!("{UPSTREAMS}connect_timeout = \"2 sec\"\n"),
        "upstreams.app.connect_timeout",
        7,
        "invalid duration \"2 sec\"",
    );
    assert_error(
        "[server.limits]\nmax_header_bytes = 0\n",
        "server.limits.max_header_bytes",
        2,
        "at least 1",
    );
}

#[test]
fn health_type_follows_the_sets_use_unless_given() {
    let with = |health: &str, tail: &str| {
        ok(&format!(
            "[upstreams.db]\nservers = [\"127.0.0.1:5432\"]\nhealth = {health}\n\n{tail}"
        ))
        .upstreams[0]
            .health
            .clone()
            .unwrap()
            .kind
    };
    let tcp_only = "[[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"db\"\n";
    let routed = "[[routes]]\nupstream = \"db\"\n";
    assert_eq!(with("{}", tcp_only), HealthKind::Tcp);
    assert_eq!(with("{}", routed), HealthKind::Http);
    assert_eq!(
        with("{}", &format!("{tcp_only}\n{routed}")),
        HealthKind::Http
    );
    assert_eq!(with("{ path = \"/up\" }", tcp_only), HealthKind::Http);
    assert_eq!(with("{ type = \"http\" }", tcp_only), HealthKind::Http);
    assert_eq!(with("{ type = \"tcp\" }", routed), HealthKind::Tcp);
    assert_error(
        &format!("{UPSTREAMS}health = {{ type = \"udp\" }}\n"),
        "upstreams.app.health.type",
        7,
        "must be \"http\" or \"tcp\"",
    );
    assert_error(
        &format!("{UPSTREAMS}health = {{ type = \"tcp\", path = \"/x\" }}\n"),
        "upstreams.app.health.path",
        7,
        "a path is for HTTP checks",
    );
}

#[test]
fn zero_header_and_idle_timeouts_are_refused() {
    // `idle = "0s"` passed `check`, then cut every response the first time a write
    // to the client had to wait (the send timeout is `idle`).
    assert_error(
        "[server.timeouts]\nidle = \"0s\"\n",
        "server.timeouts.idle",
        2,
        "longer than zero",
    );
    assert_error(
        "[server.timeouts]\nheader = \"0s\"\n",
        "server.timeouts.header",
        2,
        "longer than zero",
    );
    assert_eq!(
        ok("[server.timeouts]\nshutdown_drain = \"0s\"\n")
            .server
            .timeouts
            .shutdown_drain,
        Duration::ZERO
    );
}

#[test]
fn durations_past_a_year_are_refused() {
    // Timers add these to the clock: i64::MAX seconds once passed `check` and then
    // panicked every request ("overflow when adding duration to instant").
    assert_error(
        &format!("{UPSTREAMS}response_timeout = 9223372036854775807\n"),
        "upstreams.app.response_timeout",
        7,
        "at most 365d",
    );
    assert_error(
        &format!("{UPSTREAMS}health = {{ timeout = 9223372036854775807 }}\n"),
        "upstreams.app.health.timeout",
        7,
        "at most 365d",
    );
    assert_error(
        "[server.timeouts]\nidle = \"366d\"\n",
        "server.timeouts.idle",
        2,
        "at most 365d (one year), got \"366d\"",
    );
    let config = ok(&format!(
        "{UPSTREAMS}response_timeout = \"365d\"\n\n[[routes]]\nupstream = \"app\"\n"
    ));
    let app = config.upstreams.iter().find(|u| u.name == "app").unwrap();
    assert_eq!(app.response_timeout, Duration::from_secs(365 * 86_400));
}

#[test]
fn bad_addresses() {
    assert_error(
        "[server]\nlisten = [\"127.0.0.1:8080\", \"localhost:8081\"]\n",
        "server.listen[1]",
        2,
        "invalid address \"localhost:8081\"",
    );
    assert_error(
        "[admin]\nlisten = \"9901\"\n",
        "admin.listen",
        2,
        "invalid address",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"127.0.0.1\"]\n",
        "upstreams.app.servers[0]",
        2,
        "expected host:port",
    );
    assert_error(
        "[upstreams.app]\n\nservers = [{ addr = \"no-such-host.invalid:80\" }]\n",
        "upstreams.app.servers[0].addr",
        3,
        "cannot resolve",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:nope\"]\n",
        "upstreams.app.servers[0]",
        2,
        "builtin:echo",
    );
}

#[test]
fn listener_clash() {
    assert_error(
        "[admin]\nlisten = \"127.0.0.1:8080\"\n",
        "admin.listen",
        2,
        "also used by server.listen",
    );
    // Port 0 asks the OS for a fresh port each time, so it never clashes.
    ok("[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"");
}

#[test]
fn route_upstreams() {
    let text =
        format!("{UPSTREAMS}\n[[routes]]\nupstream = \"app\"\n\n[[routes]]\nupstream = \"foo\"\n");
    assert_error(
        &text,
        "routes[1].upstream",
        12,
        r#"unknown upstream "foo" (known: app, echo)"#,
    );
    assert_error(
        "[[routes]]\npath_prefix = \"/\"\n",
        "routes[0].upstream",
        1,
        "missing `upstream",
    );
    assert_error(
        "[[routes]]\nupstream = \"x\"\n",
        "routes[0].upstream",
        2,
        "none are defined",
    );
    assert_error(
        &format!("{UPSTREAMS}[[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"db\"\n"),
        "tcp[0].upstream",
        9,
        "unknown upstream \"db\"",
    );
}

#[test]
fn bad_upstreams() {
    assert_error(
        "[upstreams.app]\nbalance = \"random\"\nservers = [\"builtin:echo\"]\n",
        "upstreams.app.balance",
        2,
        "round_robin, weighted",
    );
    assert_error(
        "[upstreams.app]\nservers = []\n",
        "upstreams.app.servers",
        2,
        "at least one server",
    );
    assert_error(
        "[upstreams.app]\nbalance = \"p2c\"\n",
        "upstreams.app.servers",
        1,
        "needs `servers`",
    );
    assert_error(
        "[upstreams.app]\nservers = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n",
        "upstreams.app.servers[0].weight",
        2,
        "at least 1",
    );
    // 10 000 000 once passed `check`, then aborted the process building a
    // consistent_hash ring of 1.6 billion points.
    assert_error(
        "[upstreams.app]\nbalance = \"consistent_hash\"\nservers = [\"127.0.0.1:1\", { addr = \"127.0.0.1:2\", weight = 10000000 }]\n",
        "upstreams.app.servers[1].weight",
        3,
        "must be at most 1000, got 10000000",
    );
    assert_error(
        "[upstreams.app]\nservers = [{ addr = \"127.0.0.1:1\", weight = 99999999999 }]\n",
        "upstreams.app.servers[0].weight",
        2,
        "must be at most 1000",
    );
    let config = ok(
        "[upstreams.app]\nservers = [{ addr = \"127.0.0.1:1\", weight = 1000 }]\n\n[[routes]]\nupstream = \"app\"\n",
    );
    assert_eq!(config.upstreams[0].servers[0].weight, 1_000);
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\nhash_key = \"cookie\"\n",
        "upstreams.app.hash_key",
        3,
        "client_ip, path or header:NAME",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\nhealth = { healthy_after = 0 }\n",
        "upstreams.app.health.healthy_after",
        3,
        "at least 1",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\n[upstreams.app.health]\nunhealthy_after = -2\n",
        "upstreams.app.health.unhealthy_after",
        4,
        "at least 1",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\ncircuit_breaker = { failures = 0 }\n",
        "upstreams.app.circuit_breaker.failures",
        3,
        "at least 1",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\n[upstreams.app.circuit_breaker]\nstatuses = [503, 200]\n",
        "upstreams.app.circuit_breaker.statuses[1]",
        4,
        "must be an error status from 400 to 599, got 200",
    );
    assert_error(
        "[upstreams.app]\nservers = [\"builtin:echo\"]\ncircuit_breaker = { statuses = [503, 503] }\n",
        "upstreams.app.circuit_breaker.statuses[1]",
        3,
        "503 is listed twice",
    );
    let statuses = ok("[upstreams.app]\nservers = [\"builtin:echo\"]\ncircuit_breaker = { statuses = [502, 503] }\n[[routes]]\nupstream = \"app\"\n")
        .upstreams[0]
        .circuit_breaker
        .statuses
        .clone();
    assert_eq!(
        statuses,
        [
            http::StatusCode::BAD_GATEWAY,
            http::StatusCode::SERVICE_UNAVAILABLE
        ]
    );
}

#[test]
fn bad_log_settings() {
    assert_error(
        "[log]\nlevel = \"verbose\"\n",
        "log.level",
        2,
        "trace, debug, info, warn, error",
    );
    assert_error("[log]\nformat = \"xml\"\n", "log.format", 2, "text, json");
    assert_eq!(
        ok("[log]\nlevel = \"info,proxycache=debug\"").log.level,
        "info,proxycache=debug"
    );
    assert_eq!(ok("[log]\nformat = \"json\"").log.format, LogFormat::Json);
}

#[test]
fn bad_trusted_proxies() {
    assert_error(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n",
        "server.trusted_proxies[1]",
        2,
        "invalid CIDR",
    );
}

#[test]
fn bad_route_matchers() {
    let route = |body: &str| format!("{UPSTREAMS}\n[[routes]]\nupstream = \"app\"\n{body}\n");
    assert_error(
        &route("methods = [\"GET\", \"GE T\"]"),
        "routes[0].methods[1]",
        10,
        "invalid HTTP method",
    );
    assert_error(
        &route("headers = { \"x canary\" = \"1\" }"),
        "routes[0].headers.\"x canary\"",
        10,
        "invalid header name",
    );
    assert_error(
        &route("path_prefix = \"api\""),
        "routes[0].path_prefix",
        10,
        "must start with '/'",
    );
}

#[test]
fn admin_on_a_public_address_needs_a_key() {
    assert_error(
        "[admin]\nlisten = \"0.0.0.0:9901\"\n",
        "admin.listen",
        2,
        "an admin listener on a non-loopback address needs admin.api_key",
    );
}

#[test]
fn tcp_checks() {
    assert_error(
        &format!("{UPSTREAMS}[[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"app\"\nproxy_protocol = 3\n"),
        "tcp[0].proxy_protocol",
        10,
        "1 or 2",
    );
    assert_error(
        &format!("{UPSTREAMS}[[tcp]]\nupstream = \"app\"\n"),
        "tcp[0].listen",
        7,
        "needs `listen`",
    );
}

#[test]
fn tcp_idle_timeout() {
    let frontend = "[[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"app\"\n";
    let config = ok(&format!("{UPSTREAMS}{frontend}idle_timeout = \"30m\"\n"));
    assert_eq!(config.tcp[0].idle_timeout, Duration::from_secs(1800));
    let config = ok(&format!("{UPSTREAMS}{frontend}idle_timeout = 5\n"));
    assert_eq!(config.tcp[0].idle_timeout, Duration::from_secs(5));
    assert_error(
        &format!("{UPSTREAMS}{frontend}idle_timeout = \"0s\"\n"),
        "tcp[0].idle_timeout",
        10,
        "must be longer than zero",
    );
    assert_error(
        &format!("{UPSTREAMS}{frontend}idle_timeout = \"ten minutes\"\n"),
        "tcp[0].idle_timeout",
        10,
        "invalid duration \"ten minutes\"",
    );
}

#[test]
fn a_tcp_frontend_over_builtin_echo_is_an_error() {
    // It passed `check`, then every connection was refused at run time.
    assert_error(
        &format!("{UPSTREAMS}[[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"echo\"\n"),
        "tcp[0].upstream",
        9,
        "upstream \"echo\" has only builtin:echo servers: builtin:echo cannot serve raw TCP",
    );
    // Mixed with network servers, the echo's share of connections was skipped.
    assert_error(
        "[upstreams.mix]\nservers = [\"127.0.0.1:3000\", \"builtin:echo\"]\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"mix\"\n",
        "tcp[0].upstream",
        6,
        "upstream \"mix\" lists builtin:echo (servers[1]): builtin:echo cannot serve raw TCP",
    );
    // A TLS set: the relay sent the client's bytes to it in plain text, silently.
    assert_error(
        "[upstreams.secure]\nservers = [\"127.0.0.1:3000\"]\ntls = true\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"secure\"\n",
        "tcp[0].upstream",
        7,
        "upstream \"secure\" has tls = true, but a [[tcp]] frontend relays raw bytes",
    );
    // Routes may still use an echo set next to a [[tcp]] frontend over real servers.
    let config = ok(&format!(
        "{UPSTREAMS}[[routes]]\nupstream = \"echo\"\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"app\"\n"
    ));
    assert_eq!(config.tcp.len(), 1);
}

#[test]
fn tls_checks() {
    assert_error(
        "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\n",
        "server.tls[0].certs",
        1,
        "certs",
    );
    assert_error(
        "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncerts = [{ cert = \"a.pem\" }]\n",
        "server.tls[0].certs[0].key",
        3,
        "missing `key`",
    );
    assert_error(
        "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncerts = [{ cert = \"a.pem\", key = \"a.key\" }]\nalpn = [\"spdy\"]\n",
        "server.tls[0].alpn[0]",
        4,
        "unsupported ALPN",
    );
}

#[test]
fn nothing_to_serve() {
    assert_error(
        "[server]\nlisten = []\n",
        "server.listen",
        2,
        "nothing to serve",
    );
}

// ---- many errors at once -----------------------------------------------------------------

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"[server]
listn = ["127.0.0.1:8080"]
workers = "four"

[server.limits]
max_body = "lots"

[log]
level = "loud"

[upstreams.app]
servers = []
balance = "random"

[[routes]]
upstream = "nope"
"#;
    let errors = errors(text);
    let found: Vec<(&str, usize)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("server.listn", 2),
            ("server.workers", 3),
            ("server.limits.max_body", 6),
            ("log.level", 9),
            ("upstreams.app.servers", 12),
            ("upstreams.app.balance", 13),
            ("routes[0].upstream", 16),
        ]
    );
}

#[test]
fn a_malformed_key_is_reported_once() {
    // `upstream = 3` is the error; "missing upstream" would only repeat it.
    let errors = errors(&format!("{UPSTREAMS}[[routes]]\nupstream = 3\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "routes[0].upstream");
    assert_eq!(errors[0].line, 8);
}

// ---- error values ------------------------------------------------------------------------

#[test]
fn error_display() {
    let errors = errors("[log]\nformat = \"xml\"\nlevel = \"loud\"\n");
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(ConfigErrors(errors.clone()).to_string(), text);
    assert!(
        text.starts_with("/etc/proxycache/config.toml:2:10: log.format: unknown value \"xml\""),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn columns_count_characters() {
    assert_eq!(line_col("a = 1\nbé = 2\n", 9), (2, 3));
    assert_eq!(line_col("x", 0), (1, 1));
    assert_eq!(line_col("x", 99), (1, 2));
}

#[test]
fn load_reports_an_unreadable_file() {
    let path = Path::new("/nonexistent/proxycache/config.toml");
    let errors = Config::load(Some(path)).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line, errors[0].col),
        ("", 0, 0)
    );
    assert_eq!(errors[0].file, path.display().to_string());
}

#[test]
fn load_resolves_paths_next_to_the_file() {
    let dir = std::env::temp_dir().join(format!("proxycache-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, "[scripts]\ndir = \"mods\"\n").unwrap();
    let config = Config::load(Some(&path)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    assert_eq!(config.scripts.dir, dir.join("mods"));
    assert_eq!(config.source_text, "[scripts]\ndir = \"mods\"\n");
}

#[test]
fn mods_tables_pass_through() {
    let config = ok("[mods.api_gate]\nenabled = true\nrps = 100\n\n[redis]\nurl = \"redis://x\"\n");
    let gate = &config.mods["api_gate"];
    assert_eq!(gate["enabled"].as_bool(), Some(true));
    assert_eq!(gate["rps"].as_integer(), Some(100));
}

#[test]
fn cache_and_redis_sections() {
    let config = ok("[cache]\nmax_size = \"1MiB\"\nmax_entry_size = \"64KiB\"\nlock_timeout = \"2s\"\n\n\
                     [redis]\nurl = \"redis://127.0.0.1:6380/2\"\ntimeout = \"20ms\"\nkey_prefix = \"pc1:\"\n");
    assert_eq!(config.cache.max_size, 1 << 20);
    assert_eq!(config.cache.max_entry_size, 64 << 10);
    assert_eq!(config.cache.lock_timeout, Duration::from_secs(2));
    let redis = config
        .redis
        .as_ref()
        .map(|r| (r.url.as_str(), r.timeout, r.key_prefix.as_str()));
    assert_eq!(
        redis,
        Some((
            "redis://127.0.0.1:6380/2",
            Duration::from_millis(20),
            "pc1:"
        ))
    );
    assert!(ok("").redis.is_none());
    assert_error("[redis]\ntimeout = \"1s\"\n", "redis.url", 1, "is required");
    assert_error(
        "[redis]\nurl = \"http://x\"\n",
        "redis.url",
        2,
        "must start with redis://",
    );
    for url in ["http://:s3cret@x", "redis://:s3cret@h:port"] {
        let errors = errors(&format!("[redis]\nurl = \"{url}\"\n"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let shown = errors[0].to_string();
        assert!(!shown.contains("s3cret"), "the password is shown: {shown}");
    }
    assert_error(
        "[redis]\nurl = \"http://:s3cret@x\"\n",
        "redis.url",
        2,
        "got \"http://:***@x\"",
    );
    assert_error(
        "[cache]\nshared = true\n",
        "cache.shared",
        2,
        "needs a [redis] section",
    );
    assert!(
        ok("[cache]\nshared = true\n[redis]\nurl = \"redis://h\"\n")
            .cache
            .shared
    );
    assert_error(
        "[cache]\nmax_size = \"1KiB\"\nmax_entry_size = \"2KiB\"\n",
        "cache.max_entry_size",
        3,
        "must not be larger than cache.max_size",
    );
}

#[test]
fn an_api_key_with_outer_spaces_is_an_error() {
    // A header value is read without them: every admin call was 401.
    for key in ["  ", " k", "k "] {
        assert_error(
            &format!("[admin]\napi_key = \"{key}\"\n"),
            "admin.api_key",
            2,
            "must not start or end with spaces",
        );
    }
    assert_eq!(ok("[admin]\napi_key = \"k\"\n").admin.api_key, "k");
}

// ---- from the configuration reference review ---------------------------------------------

#[test]
fn a_zero_upstream_timeout_is_an_error() {
    // Both passed `check`; then every request failed at once with 504, counted against
    // the breaker.
    for name in ["connect_timeout", "response_timeout"] {
        for zero in ["0", "\"0s\"", "\"0ms\""] {
            assert_error(
                &format!("{UPSTREAMS}{name} = {zero}\n"),
                &format!("upstreams.app.{name}"),
                7,
                "must be longer than zero",
            );
        }
        let config = ok(&format!("{UPSTREAMS}{name} = \"1ms\"\n"));
        assert!(config
            .upstreams
            .iter()
            .all(|u| !u.connect_timeout.is_zero()));
    }
}

#[test]
fn a_malformed_key_causes_no_follow_on_errors() {
    // A malformed set: the route to it was also "unknown upstream (none are defined)".
    assert_error(
        "[upstreams]\napp = 1\n\n[[routes]]\nupstream = \"app\"\n",
        "upstreams.app",
        2,
        "expected a table",
    );
    assert_error(
        "[upstreams]\napp = 1\n\n[[tcp]]\nlisten = \"127.0.0.1:5433\"\nupstream = \"app\"\n",
        "upstreams.app",
        2,
        "expected a table",
    );
    // The default put in place of a malformed `server.listen` clashed with a [[tcp]].
    assert_error(
        &format!(
            "[server]\nlisten = \"127.0.0.1:19400\"\n{UPSTREAMS}\
             [[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n"
        ),
        "server.listen",
        2,
        "expected an array",
    );
    // So did the default of a malformed `admin.listen`.
    assert_error(
        &format!(
            "[admin]\nlisten = 5\n{UPSTREAMS}\
             [[tcp]]\nlisten = \"127.0.0.1:9901\"\nupstream = \"app\"\n"
        ),
        "admin.listen",
        2,
        "expected a string",
    );
    // A malformed `tls` made `tls_ca` "no effect without tls = true".
    assert_error(
        "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\ntls = \"yes\"\ntls_ca = \"x.pem\"\n",
        "upstreams.app.tls",
        3,
        "expected a boolean",
    );
    // Still said when the key is well-formed.
    assert_error(
        "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\ntls_ca = \"x.pem\"\n",
        "upstreams.app.tls_ca",
        3,
        "no effect without tls = true",
    );
    assert_error(
        &format!("{UPSTREAMS}[[routes]]\nupstream = \"nope\"\n"),
        "routes[0].upstream",
        8,
        "unknown upstream \"nope\"",
    );
}

#[test]
fn an_integer_past_i64_in_a_size_or_duration_says_how_far_integers_go() {
    // Serde's "invalid type: integer `...` as i128, expected a size like ..." before;
    // between i64::MAX and u64::MAX, its wording without "as i128".
    for huge in [
        "99999999999999999999",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        for (text, key) in [
            (
                format!("[server.limits]\nmax_header_bytes = {huge}\n"),
                "server.limits.max_header_bytes",
            ),
            (
                format!("[server.timeouts]\nidle = {huge}\n"),
                "server.timeouts.idle",
            ),
            (format!("[server]\nworkers = {huge}\n"), "server.workers"),
        ] {
            assert_error(
                &text,
                key,
                2,
                &format!("{huge} is too large (integers go to 9223372036854775807)"),
            );
        }
    }
    // Below i64::MIN too (the range check above once let them through to serde).
    for tiny in ["-99999999999999999999", "-9223372036854775809"] {
        assert_error(
            &format!("[server]\nworkers = {tiny}\n"),
            "server.workers",
            2,
            &format!("{tiny} is too small (integers go to -9223372036854775808)"),
        );
    }
    // A key of another type still says which type it takes.
    let huge = "99999999999999999999";
    assert_error(
        &format!("[server]\nmerge_slashes = {huge}\n"),
        "server.merge_slashes",
        2,
        "expected a boolean",
    );
}

#[test]
fn log_level_takes_tracing_directives() {
    // `off` and a target without a level were refused, though EnvFilter takes them.
    for level in [
        "info,proxycache=off",
        "off",
        "proxycache",
        "info,proxycache::script",
        "warn,admin_audit=info",
        "INFO",
        "hyper::proto=trace",
    ] {
        assert_eq!(
            ok(&format!("[log]\nlevel = \"{level}\"\n")).log.level,
            level,
            "{level}"
        );
    }
    // Spaces after the commas, which EnvFilter would read into the target name.
    assert_eq!(
        ok("[log]\nlevel = \"info, proxycache=debug\"\n").log.level,
        "info,proxycache=debug"
    );
    for (level, needle) in [
        ("loud", "unknown log level \"loud\""),
        ("warning", "unknown log level \"warning\""),
        ("info,proxycache=loud", "unknown log level \"loud\""),
        ("proxycache[=info", "invalid log directives"),
    ] {
        assert_error(
            &format!("[log]\nlevel = \"{level}\"\n"),
            "log.level",
            2,
            needle,
        );
    }
}

#[test]
fn a_duplicate_key_is_named_with_its_table() {
    // It said `workers: duplicate key`, without the section.
    assert_error(
        "[server]\nworkers = 2\nworkers = 3\n",
        "server.workers",
        3,
        "duplicate key",
    );
    assert_error(
        "[mods.rate_limit]\nenabled = true\nenabled = false\n",
        "mods.rate_limit.enabled",
        3,
        "duplicate key",
    );
    assert_error("workers = 2\nworkers = 3\n", "workers", 2, "duplicate key");
    assert_error(
        "[[routes]]\nupstream = \"a\"\n[[routes]]\nupstream = \"a\"\nupstream = \"b\"\n",
        "routes[1].upstream",
        5,
        "duplicate key",
    );
}

#[test]
fn an_unclosed_array_is_one_error_at_its_bracket() {
    // It gave a cascade about later lines (`servers[1]: string values must be quoted`,
    // `missing comma`), none naming line 2 or saying the array was not closed.
    let text =
        "[upstreams.app]\nservers = [\n  \"127.0.0.1:3000\",\n\nbalance = \"round_robin\"\n\n\
                [[routes]]\nupstream = \"app\"\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].line, 2, "{errors:#?}");
    assert!(errors[0].message.contains("unclosed"), "{errors:#?}");
}

#[test]
fn an_unclosed_inline_table_is_one_error_at_its_brace() {
    // The parser says nothing of the brace: it read the lines after it as the table's
    // items (`upstreams.upstream: missing comma between key-value pairs`...).
    // (One inside an array, `servers = [{ addr = ...`, still gives the parser's two
    // errors on the lines after it.)
    let text = "[upstreams]\napp = { servers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"app\"\n[log]\nlevel = \"info\"\n";
    let first = errors(text);
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].line, 2, "{first:#?}");
    assert!(
        first[0].message.contains("unclosed inline table"),
        "{first:#?}"
    );
    // A closed inline table further on, read as part of the open one's run, is not
    // reported on its own.
    let text = "[upstreams]\napp = { servers = [\"127.0.0.1:2\"]\n[server]\nworkers = 2\n\
                [upstreams.c]\nservers = [\"127.0.0.1:3\"]\nopts = { a = 1, b = 2 }\n";
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].line, 2, "{found:#?}");
}

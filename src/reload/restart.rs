//! What only a restart changes: compares a config's restart-only keys with what the
//! process actually runs — the config it started with, whose workers, log setup,
//! cache, Redis client, file watcher (on or off) and admin, TLS and `[[tcp]]` sockets
//! stay until it exits.
//!
//! Not with the previous generation: a pending change is then listed by every reload
//! until the config puts the key back (which ends the warning) or the process
//! restarts, and reordering listeners, which the accept loops follow by address, is no
//! change at all.
//!
//! Owns: the `requires_restart` list of a reload report. Must not touch: anything it
//! compares.

use std::net::SocketAddr;

use crate::config::{Config, LogFormat};
use crate::server::listener::serving_entry;

/// Every restart-only key on which `configured` differs from `running` (the config
/// the process started with), each naming what runs and what is configured.
pub fn pending(running: &Config, configured: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (r, c) = (running, configured);
    if r.admin.listen != c.admin.listen {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        out.push(format!(
            "admin.listen: {} -> {}",
            show(r.admin.listen),
            show(c.admin.listen)
        ));
    }
    if r.server.workers != c.server.workers {
        out.push(format!(
            "server.workers: {} -> {}",
            r.server.workers, c.server.workers
        ));
    }
    if r.log.level != c.log.level {
        out.push(format!("log.level: {:?} -> {:?}", r.log.level, c.log.level));
    }
    if r.log.format != c.log.format {
        let name = |f: LogFormat| match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        out.push(format!(
            "log.format: {} -> {}",
            name(r.log.format),
            name(c.log.format)
        ));
    }
    // The watcher is installed (or not) at start-up: turning it on later would need
    // watches the process never made, and turning it off would leave them running.
    if r.scripts.watch != c.scripts.watch {
        out.push(format!(
            "scripts.watch: {} -> {}",
            r.scripts.watch, c.scripts.watch
        ));
    }
    if r.redis != c.redis {
        out.push("redis (the Redis client keeps its settings until a restart)".into());
    }
    if r.cache != c.cache {
        out.push("cache (the cache keeps its size and entries until a restart)".into());
    }
    let tls = |c: &Config| c.server.tls.iter().map(|t| t.listen).collect::<Vec<_>>();
    if let Some(change) = listeners(&tls(r), &tls(c)) {
        out.push(format!("server.tls listeners: {change}"));
    }
    let tcp = |c: &Config| c.tcp.iter().map(|t| t.listen).collect::<Vec<_>>();
    if let Some(change) = listeners(&tcp(r), &tcp(c)) {
        out.push(format!("tcp listeners: {change}"));
    }
    out
}

/// `added A, removed B`: the `configured` listeners no start-up socket serves (not
/// listening until a restart) and the start-up sockets (`running`, in their order
/// then) no configured listener is served by (serving on as before until a restart);
/// `None` when every socket and every listener is matched, whatever their order.
fn listeners(running: &[SocketAddr], configured: &[SocketAddr]) -> Option<String> {
    let mut served = vec![false; configured.len()];
    let mut removed = Vec::new();
    for (index, &listen) in running.iter().enumerate() {
        match serving_entry(configured, |&a| a, index, listen) {
            Some(i) => served[i] = true,
            None => removed.push(listen),
        }
    }
    let added = configured
        .iter()
        .zip(&served)
        .filter(|(_, served)| !**served)
        .map(|(a, _)| format!("added {a}"));
    let changes: Vec<String> = added
        .chain(removed.iter().map(|a| format!("removed {a}")))
        .collect();
    (!changes.is_empty()).then(|| changes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::{listeners, pending};
    use crate::config::Config;
    use std::net::SocketAddr;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, None, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_restart_only_key_names_what_runs_and_what_is_configured() {
        let running = config("[admin]\nlisten = \"127.0.0.1:9901\"\n[log]\nlevel = \"info\"\n");
        let next = config(
            "[admin]\nlisten = \"\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n\
             [scripts]\nwatch = false\n[cache]\nmax_size = \"8MiB\"\n",
        );
        assert_eq!(
            pending(&running, &next),
            [
                "admin.listen: 127.0.0.1:9901 -> off",
                "log.level: \"info\" -> \"debug\"",
                "log.format: text -> json",
                "scripts.watch: true -> false",
                "cache (the cache keeps its size and entries until a restart)",
            ]
        );
        assert!(pending(&next, &next).is_empty());
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
            .collect()
    }

    #[test]
    fn listeners_are_matched_by_address_whatever_their_order() {
        let running = addrs(&["127.0.0.1:5432", "127.0.0.1:5433"]);
        let swapped = addrs(&["127.0.0.1:5433", "127.0.0.1:5432"]);
        assert_eq!(listeners(&running, &swapped), None);
        assert_eq!(listeners(&running, &running), None);
    }

    #[test]
    fn added_and_removed_listeners_are_named() {
        let running = addrs(&["127.0.0.1:5432", "127.0.0.1:5433"]);
        let next = addrs(&["127.0.0.1:5434", "127.0.0.1:5432"]);
        assert_eq!(
            listeners(&running, &next).as_deref(),
            Some("added 127.0.0.1:5434, removed 127.0.0.1:5433")
        );
    }

    #[test]
    fn port_zero_listeners_are_known_by_position() {
        let running = addrs(&["127.0.0.1:0"]);
        assert_eq!(
            listeners(&running, &addrs(&["127.0.0.1:0", "127.0.0.1:0"])).as_deref(),
            Some("added 127.0.0.1:0")
        );
        assert_eq!(
            listeners(&running, &addrs(&["127.0.0.2:0"])).as_deref(),
            Some("added 127.0.0.2:0, removed 127.0.0.1:0")
        );
    }
}

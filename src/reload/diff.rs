//! What a reload applies: compares two generations and lists what changed that is
//! now in effect. What would need a restart is not compared here but against what the
//! process runs (`restart`), so it is never silently ignored nor reported after it was
//! undone.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, TlsListenerConfig};
use crate::generation::Generation;
use crate::server::listener::serving_entry;

/// The changes from `old` to `new` now in effect; `running` is the config the process
/// started with (its TLS and `[[tcp]]` sockets are the ones that serve).
pub fn applied(running: &Config, old: &Generation, new: &Generation) -> Vec<String> {
    let mut c = Vec::new();
    let (a, b) = (&old.config, &new.config);
    if a.admin.api_key != b.admin.api_key {
        c.push("admin.api_key".into());
    }
    if a.server.merge_slashes != b.server.merge_slashes {
        c.push(format!(
            "server.merge_slashes: {} -> {}",
            a.server.merge_slashes, b.server.merge_slashes
        ));
    }
    if a.server.escaped_slashes != b.server.escaped_slashes {
        c.push(format!(
            "server.escaped_slashes: {:?} -> {:?}",
            a.server.escaped_slashes, b.server.escaped_slashes
        ));
    }
    if a.scripts.dir != b.scripts.dir {
        // The watcher moves to the new folder after the reload (reload::watch).
        c.push("scripts.dir: the modules of the new folder are loaded and watched".into());
    }
    tls(running, old, new, &mut c);
    tcp(running, old, new, &mut c);
    if a.routes.len() != b.routes.len() || format!("{:?}", a.routes) != format!("{:?}", b.routes) {
        c.push("routes".into());
    }
    for u in &b.upstreams {
        match a.upstreams.iter().find(|x| x.name == u.name) {
            None => c.push(format!("upstream {} added", u.name)),
            Some(x) if format!("{x:?}") != format!("{u:?}") => {
                c.push(format!("upstream {} changed", u.name))
            }
            Some(_) if roots_changed(old, new, &u.name) => c.push(format!(
                "upstream {}: tls_ca certificates (new connections)",
                u.name
            )),
            Some(_) => {}
        }
    }
    for u in &a.upstreams {
        if !b.upstreams.iter().any(|x| x.name == u.name) {
            c.push(format!("upstream {} removed", u.name));
        }
    }
    for m in &new.modules {
        if !old.modules.iter().any(|x| x.name == m.name) {
            c.push(format!("module {} loaded", m.name));
        }
    }
    for m in &old.modules {
        match new.modules.iter().find(|x| x.name == m.name) {
            None => c.push(format!("module {} unloaded", m.name)),
            Some(x) if x.source_hash != m.source_hash => {
                c.push(format!("module {} changed", m.name))
            }
            Some(x) if (x.priority, x.enabled, &x.config) != (m.priority, m.enabled, &m.config) => {
                c.push(format!("module {} settings changed", m.name))
            }
            Some(_) => {}
        }
    }
    if format!("{:?}", a.server.limits) != format!("{:?}", b.server.limits)
        || format!("{:?}", a.server.timeouts) != format!("{:?}", b.server.timeouts)
    {
        c.push("server.limits / server.timeouts (new connections)".into());
    }
    c.push(format!("generation {} -> {}", old.number, new.number));
    c
}

/// Whether set `name`'s TLS roots differ between `old` and `new` with its settings
/// the same: its `tls_ca` file changed.
fn roots_changed(old: &Generation, new: &Generation, name: &str) -> bool {
    let id = |g: &Generation| g.upstreams.by_name(name).and_then(|s| s.tls_id());
    id(old) != id(new)
}

/// What changed for the TLS sockets opened at start-up: the settings of the listener
/// each serves in `old` against those in `new` (a listener no socket serves is not
/// listening, which `restart` reports).
fn tls(running: &Config, old: &Generation, new: &Generation, c: &mut Vec<String>) {
    let changed_files = new.tls.changed_since(&old.tls);
    for (index, socket) in running.server.tls.iter().enumerate() {
        let (Some(o), Some(n)) = (
            tls_entry(old, index, socket.listen),
            tls_entry(new, index, socket.listen),
        ) else {
            continue;
        };
        if changed_files.contains(&n.listen) {
            c.push(format!(
                "server.tls {}: certificates (new connections)",
                n.listen
            ));
        } else if tls_paths(o) != tls_paths(n) {
            c.push(format!(
                "server.tls {}: certificate or client_ca files (new connections)",
                n.listen
            ));
        }
        if o.alpn != n.alpn {
            c.push(format!(
                "server.tls {}: alpn {:?} (new connections)",
                n.listen, n.alpn
            ));
        }
    }
}

/// The `[[server.tls]]` listener the start-up socket `index` on `listen` serves in `g`.
fn tls_entry(g: &Generation, index: usize, listen: SocketAddr) -> Option<&TlsListenerConfig> {
    let list = &g.config.server.tls;
    serving_entry(list, |t| t.listen, index, listen).and_then(|i| list.get(i))
}

/// A TLS listener's certificate, key and client-CA paths.
fn tls_paths(t: &TlsListenerConfig) -> (Vec<(&Path, &Path)>, Option<&Path>) {
    let certs = t.certs.iter().map(|p| (&*p.cert, &*p.key)).collect();
    (certs, t.client_ca.as_deref())
}

/// What changed for the `[[tcp]]` sockets opened at start-up: the upstream and PROXY
/// version each resolves to (as `server::tcp` does per connection) in `old` and `new`.
fn tcp(running: &Config, old: &Generation, new: &Generation, c: &mut Vec<String>) {
    for (index, socket) in running.tcp.iter().enumerate() {
        let Some(now) = tcp_settings(new, index, socket.listen) else {
            continue;
        };
        if tcp_settings(old, index, socket.listen) != Some(now) {
            let (upstream, proxy, idle) = now;
            let proxy = proxy.map_or_else(|| "off".to_owned(), |v| format!("v{v}"));
            c.push(format!(
                "tcp frontends: {}: upstream {upstream}, proxy_protocol {proxy}, idle_timeout {idle:?} (new connections)",
                socket.listen
            ));
        }
    }
}

/// The upstream name, PROXY version and idle timeout the start-up `[[tcp]]` socket
/// `index` on `listen` uses in `g`.
fn tcp_settings(
    g: &Generation,
    index: usize,
    listen: SocketAddr,
) -> Option<(&str, Option<u8>, std::time::Duration)> {
    let list = &g.config.tcp;
    let t = serving_entry(list, |t| t.listen, index, listen).and_then(|i| list.get(i))?;
    let upstream = g.config.upstreams.get(t.upstream)?;
    Some((upstream.name.as_str(), t.proxy_protocol, t.idle_timeout))
}

//! What a reload changes: compares two generations and lists what was applied and
//! what would need a restart (never silently ignored).

use crate::generation::Generation;

/// The changes between two generations.
#[derive(Debug, Default)]
pub struct Changes {
    pub applied: Vec<String>,
    pub requires_restart: Vec<String>,
}

/// Lists the differences between `old` and `new`.
pub fn diff(old: &Generation, new: &Generation) -> Changes {
    let mut c = Changes::default();
    let (a, b) = (&old.config, &new.config);
    if a.admin.listen != b.admin.listen {
        c.requires_restart.push(format!(
            "admin.listen: {:?} -> {:?}",
            a.admin.listen, b.admin.listen
        ));
    }
    if a.admin.api_key != b.admin.api_key {
        c.applied.push("admin.api_key".into());
    }
    if a.server.workers != b.server.workers {
        c.requires_restart.push(format!(
            "server.workers: {} -> {}",
            a.server.workers, b.server.workers
        ));
    }
    if a.server.merge_slashes != b.server.merge_slashes {
        c.applied.push(format!(
            "server.merge_slashes: {} -> {}",
            a.server.merge_slashes, b.server.merge_slashes
        ));
    }
    if a.log.level != b.log.level || a.log.format != b.log.format {
        c.requires_restart.push("log.level / log.format".into());
    }
    if a.redis != b.redis {
        c.requires_restart.push("redis".into());
    }
    if a.cache != b.cache {
        c.requires_restart
            .push("cache (the cache keeps its size and entries until a restart)".into());
    }
    if a.scripts.dir != b.scripts.dir {
        // The watcher moves to the new folder after the reload (reload::watch).
        c.applied
            .push("scripts.dir: the modules of the new folder are loaded and watched".into());
    }
    let tls = |g: &Generation| {
        g.config
            .server
            .tls
            .iter()
            .map(|t| t.listen)
            .collect::<Vec<_>>()
    };
    // TLS sockets are opened at start-up only; a removed or moved listener keeps
    // serving as before. Reported when this reload changed them and what is open
    // differs from what the config asks for (not after a change is undone).
    let open = new.tls.open();
    if tls(old) != tls(new) && open != tls(new) {
        c.requires_restart.push(format!(
            "server.tls listeners: open {open:?}, configured {:?}",
            tls(new)
        ));
    }
    let changed_files = new.tls.changed_since(&old.tls);
    for addr in &changed_files {
        c.applied
            .push(format!("server.tls {addr}: certificates (new connections)"));
    }
    // Settings of a listener that stays where it is (its files' contents are above).
    for n in &new.config.server.tls {
        let Some(o) = old.config.server.tls.iter().find(|o| o.listen == n.listen) else {
            continue;
        };
        if o.alpn != n.alpn {
            c.applied.push(format!(
                "server.tls {}: alpn {:?} (new connections)",
                n.listen, n.alpn
            ));
        }
        fn paths(
            t: &crate::config::TlsListenerConfig,
        ) -> (
            Vec<(&std::path::Path, &std::path::Path)>,
            Option<&std::path::Path>,
        ) {
            let certs = t.certs.iter().map(|p| (&*p.cert, &*p.key)).collect();
            (certs, t.client_ca.as_deref())
        }
        if paths(o) != paths(n) && !changed_files.contains(&n.listen) {
            c.applied.push(format!(
                "server.tls {}: certificate or client_ca files (new connections)",
                n.listen
            ));
        }
    }
    let tcp = |g: &Generation| g.config.tcp.iter().map(|t| t.listen).collect::<Vec<_>>();
    if tcp(old) != tcp(new) {
        c.requires_restart.push("tcp listeners".into());
    }
    let frontends = |g: &Generation| {
        g.config
            .tcp
            .iter()
            .map(|t| {
                let upstream = g.config.upstreams.get(t.upstream).map(|u| u.name.clone());
                (t.listen, upstream, t.proxy_protocol)
            })
            .collect::<Vec<_>>()
    };
    if frontends(old) != frontends(new) {
        c.applied
            .push("tcp frontends: upstream / proxy_protocol (new connections)".into());
    }
    if a.routes.len() != b.routes.len() || format!("{:?}", a.routes) != format!("{:?}", b.routes) {
        c.applied.push("routes".into());
    }
    for u in &b.upstreams {
        match a.upstreams.iter().find(|x| x.name == u.name) {
            None => c.applied.push(format!("upstream {} added", u.name)),
            Some(x) if format!("{x:?}") != format!("{u:?}") => {
                c.applied.push(format!("upstream {} changed", u.name))
            }
            Some(_) => {}
        }
    }
    for u in &a.upstreams {
        if !b.upstreams.iter().any(|x| x.name == u.name) {
            c.applied.push(format!("upstream {} removed", u.name));
        }
    }
    for m in &new.modules {
        if !old.modules.iter().any(|x| x.name == m.name) {
            c.applied.push(format!("module {} loaded", m.name));
        }
    }
    for m in &old.modules {
        match new.modules.iter().find(|x| x.name == m.name) {
            None => c.applied.push(format!("module {} unloaded", m.name)),
            Some(x) if x.source_hash != m.source_hash => {
                c.applied.push(format!("module {} changed", m.name))
            }
            Some(x) if (x.priority, x.enabled, &x.config) != (m.priority, m.enabled, &m.config) => {
                c.applied
                    .push(format!("module {} settings changed", m.name))
            }
            Some(_) => {}
        }
    }
    if format!("{:?}", a.server.limits) != format!("{:?}", b.server.limits)
        || format!("{:?}", a.server.timeouts) != format!("{:?}", b.server.timeouts)
    {
        c.applied
            .push("server.limits / server.timeouts (new connections)".into());
    }
    c.applied
        .push(format!("generation {} -> {}", old.number, new.number));
    c
}

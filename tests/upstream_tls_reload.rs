//! Upstream TLS trust across reloads: a changed `tls_ca` file is a change (a reload
//! with the same config text applies it), and no pooled connection verified under
//! the old roots is used after a reload that loaded other ones.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::pki::*;
use common::*;

/// A site whose one route goes to the TLS set `app` at `server`, trusting `tls_ca`
/// (relative to the site); one worker (one pool), the admin API on a free port,
/// `extra` appended.
fn site_config(server: SocketAddr, tls_ca: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{server}\"]\ntls = true\ntls_ca = \"{tls_ca}\"\n\n\
         [[routes]]\nupstream = \"app\"\n{extra}"
    )
}

async fn reload(run: &Running) -> proxycache::reload::ReloadReport {
    let shared = Arc::clone(run.shared());
    tokio::task::spawn_blocking(move || proxycache::reload::reload(&shared, "test"))
        .await
        .expect("reload thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_loads_another_ca_does_not_reuse_connections_verified_under_the_old() {
    let trusted = pki(&["127.0.0.1"]);
    let other = pki(&["127.0.0.1"]);
    let (addr, handshakes) = tls_ok_upstream(&trusted).await;
    let site = Site::new("uptls-ca-swap");
    std::fs::write(site.dir.join("ca.pem"), &trusted.ca_pem).expect("write ca.pem");
    site.write_config(&site_config(addr, "ca.pem", ""));
    let run = Running::start(&site);
    let resp = get(run.addr, "/before").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The same path now holds a CA that did not sign the server's certificate. The
    // config text changes too, so a new generation is built however the files count.
    std::fs::write(site.dir.join("ca.pem"), &other.ca_pem).expect("rewrite ca.pem");
    site.write_config(&site_config(addr, "ca.pem", "# the CA was replaced\n"));
    let report = reload(&run).await;
    assert!(report.ok, "{report:?}");

    let resp = get(run.addr, "/after").await;
    assert_eq!(
        resp.status,
        502,
        "a connection verified under the CA no longer trusted was reused: {}",
        resp.text()
    );
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_config_text_applies_a_changed_tls_ca_file() {
    let trusted = pki(&["127.0.0.1"]);
    let other = pki(&["127.0.0.1"]);
    let (addr, _) = tls_ok_upstream(&trusted).await;
    let site = Site::new("uptls-ca-file");
    std::fs::write(site.dir.join("ca.pem"), &other.ca_pem).expect("write ca.pem");
    site.write_config(&site_config(addr, "ca.pem", ""));
    let run = Running::start(&site);
    let resp = get(run.addr, "/wrong-ca").await;
    assert_eq!(resp.status, 502, "{}", resp.text());

    // Only the file changes (an operator fixing the bundle, then `POST /reload`).
    std::fs::write(site.dir.join("ca.pem"), &trusted.ca_pem).expect("rewrite ca.pem");
    let before = run.generation();
    let report = reload(&run).await;
    assert!(report.ok, "{report:?}");
    assert!(
        report
            .applied
            .iter()
            .any(|a| a == "upstream app: tls_ca certificates (new connections)"),
        "the new CA is applied and said so: {:?}",
        report.applied
    );
    assert_eq!(run.generation(), before + 1);
    let resp = get(run.addr, "/right-ca").await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // And nothing changed is nothing changed.
    let report = reload(&run).await;
    assert_eq!(report.applied, ["nothing changed"], "{report:?}");
}

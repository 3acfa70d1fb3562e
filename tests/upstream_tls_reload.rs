//! Upstream TLS trust across reloads and its errors: a changed `tls_ca` file is a
//! change (a reload with the same config text applies it), no pooled connection
//! verified under the old roots is used after a reload that loaded other ones, and
//! `tls_ca` / `sni` errors are positioned at their key, reported with every other
//! error by `check`, start-up and reload.

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

/// The 1-based line and column where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (u32, u32) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the config"));
    let before = &text[..at];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    (line, col)
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

/// Two sets with bad TLS settings (a `tls_ca` that does not exist, an `sni` that is
/// no name) and, with `listener`, a TLS listener with a missing certificate.
fn broken_config(site: &Site, listener: bool) -> String {
    let missing = site.dir.join("missing.pem");
    let listener = if listener {
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"no-cert.pem\", key = \"no-key.pem\" }]\n\n"
    } else {
        ""
    };
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{listener}\
         [upstreams.app]\nservers = [\"127.0.0.1:1\"]\ntls = true\ntls_ca = \"{}\"\n\n\
         [upstreams.named]\nservers = [\"127.0.0.1:2\"]\ntls = true\ntls_ca = \"ca.pem\"\nsni = \"bad name!\"\n\n\
         [[routes]]\nupstream = \"app\"\n",
        toml_path(&missing)
    )
}

#[test]
fn check_reports_tls_ca_and_sni_errors_at_their_keys_with_the_listener_errors() {
    let site = Site::new("uptls-check");
    std::fs::write(site.dir.join("ca.pem"), pki(&["x.test"]).ca_pem).expect("write ca.pem");
    let text = broken_config(&site, true);
    site.write_config(&text);
    let out = site.run_check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let file = site.config_path().display().to_string();
    let (line, col) = position(&text, "\"/");
    let want = format!("{file}:{line}:{col}: upstreams.app.tls_ca: cannot read ");
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    let (line, col) = position(&text, "\"bad name!\"");
    let want =
        format!("{file}:{line}:{col}: upstreams.named.sni: \"bad name!\" is not a valid DNS name");
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    assert!(
        stderr.contains("server.tls[0].certs[0].cert: cannot read"),
        "the listener's error is reported too:\n{stderr}"
    );
}

#[test]
fn start_up_names_the_tls_ca_key_and_its_position() {
    let site = Site::new("uptls-start");
    std::fs::write(site.dir.join("ca.pem"), pki(&["x.test"]).ca_pem).expect("write ca.pem");
    let text = broken_config(&site, false);
    site.write_config(&text);
    let config = proxycache::Config::load(Some(&site.config_path()))
        .unwrap_or_else(|e| panic!("the config validates:\n{e}"));
    let err = match proxycache::start(config) {
        Ok(handle) => {
            handle.begin_shutdown();
            panic!("a config whose tls_ca cannot be read started");
        }
        Err(e) => e.to_string(),
    };
    let (line, col) = position(&text, "\"/");
    let want = format!(
        "{}:{line}:{col}: upstreams.app.tls_ca: cannot read ",
        site.config_path().display()
    );
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
    assert!(err.contains("upstreams.named.sni"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_lists_each_upstream_tls_error_with_its_line_and_column() {
    let (addr, _) = tls_ok_upstream(&pki(&["127.0.0.1"])).await;
    let trusted = pki(&["127.0.0.1"]);
    let site = Site::new("uptls-reload-errors");
    std::fs::write(site.dir.join("ca.pem"), &trusted.ca_pem).expect("write ca.pem");
    site.write_config(&site_config(addr, "ca.pem", ""));
    let run = Running::start(&site);

    // (No TLS listener: a new one needs a restart, which is not what is tested.)
    let text = broken_config(&site, false);
    site.write_config(&text);
    let report = reload(&run).await;
    assert!(!report.ok, "{report:?}");

    let status = get(run.admin, "/status").await.json();
    let errors = status["last_reload"]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(errors.len(), 2, "one entry per error: {status:#}");
    let (line, col) = position(&text, "\"/");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["col"].as_u64()),
        (Some(line.into()), Some(col.into())),
        "{status:#}"
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upstreams.app.tls_ca: cannot read ")),
        "{status:#}"
    );
    let (line, col) = position(&text, "\"bad name!\"");
    assert_eq!(
        (errors[1]["line"].as_u64(), errors[1]["col"].as_u64()),
        (Some(line.into()), Some(col.into())),
        "{status:#}"
    );
    assert!(
        errors[1]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upstreams.named.sni: ")),
        "{status:#}"
    );
}

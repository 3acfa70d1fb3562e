//! The shipped `config.toml` as a tour a new user follows: every commented-out block,
//! uncommented on its own, and all of them at once, passes `proxycache check` (a block
//! naming an upstream nobody defines, a host that does not resolve or a module that is
//! not shipped fails here), and the tour names every key docs/config.md lists.
//!
//! A block is a run of `#` lines (indented comment lines among them stay as they are)
//! from its first line that is TOML on its own — a `[table]` header or a
//! `key = value` — to the end of the run; the prose lines before that stay comments.
//! Certificate files the TLS block names are made in the test, as a user would bring
//! their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> String {
    std::fs::read_to_string(repo().join("config.toml")).expect("read the shipped config.toml")
}

/// A `#` line without its `#` and one space.
fn uncomment(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Whether uncommented text is TOML by itself (a header or a key/value), not prose.
fn is_toml_line(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && !t.starts_with('#')
        && t.parse::<toml::Table>()
            .is_ok_and(|table| !table.is_empty())
}

/// Each block: the indexes of the lines to uncomment.
fn blocks(lines: &[&str]) -> Vec<Vec<usize>> {
    let indented_comment =
        |l: &str| l.starts_with(char::is_whitespace) && l.trim_start().starts_with('#');
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with('#') {
            i += 1;
            continue;
        }
        let mut run = Vec::new();
        while i < lines.len() && (lines[i].starts_with('#') || indented_comment(lines[i])) {
            if lines[i].starts_with('#') {
                run.push(i);
            }
            i += 1;
        }
        if let Some(start) = run
            .iter()
            .position(|&n| uncomment(lines[n]).is_some_and(is_toml_line))
        {
            blocks.push(run[start..].to_vec());
        }
    }
    blocks
}

/// The shipped text with the lines `uncommented`.
fn with_uncommented(lines: &[&str], uncommented: &[usize]) -> String {
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let line = if uncommented.contains(&n) {
            uncomment(line).unwrap_or(line)
        } else {
            line
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A temp folder with the shipped `mods/` and the certificate files the TLS block
/// names; removed on drop.
struct Site(PathBuf);

impl Site {
    fn new() -> Site {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("proxycache-tour-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("mods")).expect("mods/");
        std::fs::create_dir_all(dir.join("certs")).expect("certs/");
        for entry in std::fs::read_dir(repo().join("mods")).expect("the shipped mods/") {
            let path = entry.expect("a mods/ entry").path();
            if path.extension().is_some_and(|x| x == "pcmod") {
                let name = path.file_name().expect("a file name");
                std::fs::copy(&path, dir.join("mods").join(name)).expect("copy a module");
            }
        }
        let key = KeyPair::generate().expect("a key");
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("leaf params")
            .self_signed(&key)
            .expect("a certificate");
        std::fs::write(dir.join("certs/site.pem"), cert.pem()).expect("site.pem");
        std::fs::write(dir.join("certs/site.key"), key.serialize_pem()).expect("site.key");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("a CA certificate");
        std::fs::write(dir.join("certs/clients.pem"), ca.pem()).expect("clients.pem");
        Site(dir)
    }

    /// `proxycache check` on `text` as this site's config.toml: success, and what it said.
    fn check(&self, text: &str) -> (bool, String) {
        let path = self.0.join("config.toml");
        std::fs::write(&path, text).expect("write config.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_proxycache"))
            .args(["check", "--config"])
            .arg(&path)
            .current_dir(&self.0)
            .output()
            .expect("run proxycache check");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn each_commented_block_of_the_shipped_config_passes_check_on_its_own() {
    let text = shipped();
    let lines: Vec<&str> = text.lines().collect();
    let blocks = blocks(&lines);
    // The tour's sections, each found as (the start of) a block.
    let starts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| uncomment(lines[b[0]]))
        .map(str::trim)
        .collect();
    for header in [
        "[server.limits]",
        "[server.timeouts]",
        "[[server.tls]]",
        "[log]",
        "[cache]",
        "[redis]",
        "[upstreams.app]",
        "[[routes]]",
        "[upstreams.db]",
        "[mods.rate_limit]",
    ] {
        assert!(
            starts.contains(&header),
            "no block starts with {header}: {starts:?}"
        );
    }
    let site = Site::new();
    let (ok, said) = site.check(&text);
    assert!(ok, "the shipped config.toml:\n{said}");
    let mut failed = Vec::new();
    for block in &blocks {
        let (ok, said) = site.check(&with_uncommented(&lines, block));
        if !ok {
            failed.push(format!(
                "uncommenting lines {}..={} ({}):\n{said}",
                block[0] + 1,
                block[block.len() - 1] + 1,
                lines[block[0]]
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let all: Vec<usize> = blocks.concat();
    let (ok, said) = site.check(&with_uncommented(&lines, &all));
    assert!(ok, "every block uncommented at once:\n{said}");
}

#[test]
fn the_tour_names_every_key_of_docs_config_md() {
    let doc = std::fs::read_to_string(repo().join("docs/config.md")).expect("docs/config.md");
    let tour = shipped();
    let mut missing = Vec::new();
    // Only the tables of keys (`| key | type | default | meaning |`): the others list
    // log fields, value types or what this build serves.
    let mut in_key_table = false;
    for row in doc.lines() {
        if !row.starts_with('|') {
            in_key_table = false;
            continue;
        }
        if row.starts_with("| key |") {
            in_key_table = true;
            continue;
        }
        if !in_key_table || !row.starts_with("| `") {
            continue;
        }
        let Some(key) = row.split('`').nth(1) else {
            continue;
        };
        if key.starts_with('[') || key.contains(' ') {
            continue;
        }
        let last = key.rsplit('.').next().unwrap_or(key).replace("[]", "");
        let last = last.rsplit('.').next().unwrap_or(&last);
        if !sets(&tour, last) {
            missing.push(key.to_owned());
        }
    }
    assert!(missing.is_empty(), "config.toml does not show {missing:?}");
}

/// Whether `text` has `key = ...` (any spaces before the `=`), the key a whole word.
fn sets(text: &str, key: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(key).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].trim_start_matches(' ');
        !before.is_some_and(word) && after.starts_with('=')
    })
}

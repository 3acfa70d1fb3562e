//! The log as a person reads it, through the binary, in both formats: one event per
//! line (a reload's errors, a Lua traceback, a client's newline included), every line
//! of a request with its id under one key, `request_id`, and lists written as lists,
//! not as Rust's `["..."]`. Text is escaped once, by the format that writes it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs the binary on `site` with `log.format = FORMAT`, one worker, no watcher, no
/// admin API, and `rest` after `[scripts]`; waits until it listens.
async fn run_site(
    site: &Site,
    format: &str,
    rest: &str,
) -> (Killed, SocketAddr, std::path::PathBuf) {
    let port = free_port();
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [log]\nformat = \"{format}\"\nlevel = \"info\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{rest}"
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (child, log) = spawn_logging(site, addr).await;
    (child, addr, log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Every line of the log is one event: a JSON object, or a text line that starts with
/// its timestamp (a continuation line starts with anything else).
fn assert_one_event_per_line(format: &str, text: &str) {
    for line in text.lines() {
        let whole = match format {
            "json" => serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            _ => line.starts_with(|c: char| c.is_ascii_digit()) && line.contains('Z'),
        };
        assert!(
            whole,
            "{format}: not a line of its own: {line:?} in\n{text}"
        );
    }
}

/// The lines whose message is `message`, parsed (JSON) or as written (text, as a
/// string value).
fn events(format: &str, text: &str, message: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| match format {
            "json" => serde_json::from_str::<Value>(line)
                .ok()
                .filter(|v| v["message"] == message),
            _ => line
                .contains(&format!(": {message}"))
                .then(|| Value::String(line.to_owned())),
        })
        .collect()
}

/// Waits (up to 10 s) for a line with `message`; returns the first.
async fn event(format: &str, log: &Path, message: &str) -> Value {
    let found = wait_until(Duration::from_secs(10), || {
        !events(format, &read(log), message).is_empty()
    })
    .await;
    assert!(found, "{format}: no {message:?} line in\n{}", read(log));
    events(format, &read(log), message).remove(0)
}

/// `name`'s value in an event: the JSON value, or in a text line what follows
/// `name=` (a field's, or the request span's `request{name=...}`) up to the next space
/// or `}` (a string value is quoted).
fn field(event: &Value, name: &str) -> String {
    match event {
        Value::String(line) => {
            let at = [format!(" {name}="), format!("{{{name}=")]
                .iter()
                .find_map(|key| line.find(key.as_str()).map(|at| at + key.len()));
            let Some(at) = at else {
                return String::new();
            };
            let rest = &line[at..];
            if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or_default().to_owned()
            } else {
                rest.split([' ', '}']).next().unwrap_or_default().to_owned()
            }
        }
        other => match &other[name] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        },
    }
}

/// Fails in its log phase on `/logfail` (`int(nil) + 1`); logs the client's `q` on
/// `/say`; sends every response's request id back.
const LOGFAIL: &str = r#"mod logfail {
  on request {
    std.request_id.inject()
    if $path == "/say" {
      log warn "said ${$req.query["q"]}"
    }
  }
  on log {
    if $path == "/logfail" {
      let n = int($req.header["x-n"]) + 1
      log info "n=${n}"
    }
  }
}
"#;

/// A Lua error on `/lua-boom`: a message with a traceback of several lines.
const LUABOOM: &str = r#"mod luaboom {
  lua """
function on_request(req, ctx)
  if req.path == "/lua-boom" then
    error("boom")
  end
end
"""
}
"#;

/// The log-phase failure (outside the request's span), an upstream failure and a Lua
/// error (inside it), and a module's `log` line each carry the id the client got as
/// `request_id`; a traceback and a client's newline are escaped once, by the format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_request_carries_its_request_id_and_is_one_line() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let dead = dead_addr();
    for format in ["json", "text"] {
        let site = Site::new(&format!("log-lines-{format}"));
        site.write_mod("logfail", LOGFAIL);
        site.write_mod("luaboom", LUABOOM);
        let (_child, addr, log) = run_site(
            &site,
            format,
            &format!(
                "[upstreams.dead]\nservers = [\"{dead}\"]\n\n[[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n{}",
                app(&[&up], "")
            ),
        )
        .await;
        let id_of = |resp: &Resp| resp.request_id().unwrap_or_default();

        let logfail = get(addr, "/logfail").await;
        assert_eq!(logfail.status, 200, "{format}");
        let failed = event(format, &log, "log phase failed").await;
        assert_eq!(
            field(&failed, "request_id"),
            id_of(&logfail),
            "{format}: {failed}"
        );
        assert_eq!(field(&failed, "module"), "logfail", "{format}: {failed}");

        let dead_resp = get(addr, "/dead/x").await;
        assert_eq!(dead_resp.status, 502, "{format}");
        let failed = event(format, &log, "request failed").await;
        assert_eq!(
            field(&failed, "request_id"),
            id_of(&dead_resp),
            "{format}: {failed}"
        );

        let boom = get(addr, "/lua-boom").await;
        assert_eq!(boom.status, 500, "{format}");
        let failed = event(format, &log, "module failed").await;
        assert_eq!(
            field(&failed, "request_id"),
            id_of(&boom),
            "{format}: {failed}"
        );
        if format == "json" {
            // Escaped once: the string holds the traceback's line breaks.
            let error = field(&failed, "error");
            assert!(error.contains("boom\nstack traceback:\n"), "{failed}");
            assert!(!error.contains("\\n"), "{failed}");
        } else {
            let line = failed.as_str().unwrap_or_default();
            assert!(line.contains("boom\\nstack traceback:\\n"), "{line}");
        }

        let said = get(addr, "/say?q=a%0AWARN%20forged").await;
        assert_eq!(said.status, 200, "{format}");
        let message = "said a\nWARN forged";
        let line = match format {
            "json" => event(format, &log, message).await,
            _ => event(format, &log, "said a\\nWARN forged").await,
        };
        assert_eq!(field(&line, "request_id"), id_of(&said), "{format}: {line}");

        assert_one_event_per_line(format, &read(&log));
    }
}

/// The mods table of a module with a syntax error: no "names no module" warning.
const BROKEN: &str = "mod broken {\n  on request {\n    set req.header[\"x\"] = \n  }\n}\n";

/// A module with an unknown name on line 3 (and a hint).
const UNKNOWN: &str = "mod unknown {\n  on request {\n    set req.header[\"x\"] = nope\n  }\n}\n";

/// The start-up line lists its addresses, a reload what it applied, as a person
/// writes them; a failed reload is one line and one line per error, with the error's
/// position as fields; a `[mods.NAME]` whose module does not parse is not said to name
/// no module (one that names no file still is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_and_reload_lines_are_one_line_per_event_with_plain_lists() {
    let up = Upstream::start("a", Behavior::echo()).await;
    for format in ["json", "text"] {
        let site = Site::new(&format!("log-reload-{format}"));
        let (child, addr, log) = run_site(
            &site,
            format,
            &format!("[mods.broken]\npriority = 10\n\n{}", app(&[&up], "")),
        )
        .await;

        let serving = event(format, &log, "proxycache serving").await;
        assert_eq!(
            field(&serving, "listen"),
            addr.to_string(),
            "{format}: {serving}"
        );
        assert_eq!(field(&serving, "tls"), "", "none: no field: {serving}");
        let absent = "[mods.broken] in config.toml names no module in the scripts folder";
        event(format, &log, absent).await;

        child.signal("HUP");
        let reloaded = event(format, &log, "reloaded").await;
        let applied = field(&reloaded, "applied");
        assert!(
            !applied.is_empty() && !applied.contains('[') && !applied.contains('"'),
            "{format}: {reloaded}"
        );

        site.write_mod("broken", BROKEN);
        site.write_mod("unknown", UNKNOWN);
        child.signal("HUP");
        let failed = event(
            format,
            &log,
            "reload failed; the previous generation keeps serving",
        )
        .await;
        assert_eq!(field(&failed, "errors"), "2", "{format}: {failed}");
        let found = wait_until(Duration::from_secs(5), || {
            events(format, &read(&log), "reload error").len() >= 2
        })
        .await;
        assert!(found, "{format}: two error lines:\n{}", read(&log));
        let errors = events(format, &read(&log), "reload error");
        let broken = site.mod_path("broken").display().to_string();
        let unknown = site.mod_path("unknown").display().to_string();
        let of = |file: &str| {
            errors
                .iter()
                .find(|e| field(e, "file") == file)
                .unwrap_or_else(|| panic!("{format}: no error line for {file}: {errors:?}"))
        };
        assert!(
            field(of(&broken), "line")
                .parse::<u32>()
                .is_ok_and(|l| l >= 3),
            "{errors:?}"
        );
        assert!(!field(of(&broken), "col").is_empty(), "{errors:?}");
        let col = UNKNOWN
            .lines()
            .nth(2)
            .and_then(|l| l.find("nope"))
            .unwrap_or(0)
            + 1;
        assert_eq!(field(of(&unknown), "line"), "3", "{errors:?}");
        assert_eq!(field(of(&unknown), "col"), col.to_string(), "{errors:?}");
        assert!(of(&unknown).to_string().contains("nope"), "{errors:?}");

        assert_eq!(
            get(addr, "/").await.status,
            200,
            "the old generation serves"
        );
        let text = read(&log);
        assert_eq!(
            text.matches("names no module").count(),
            1,
            "{format}: `broken` is in the folder now:\n{text}"
        );
        assert_one_event_per_line(format, &text);
    }
}

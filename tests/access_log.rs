//! The access log as a user reads it: the binary with `[log] format = "json"`, its
//! stderr parsed line by line, one line per request with method, path, status, bytes,
//! upstream, server and request id, whatever protocol the client spoke, and for a
//! failed exchange too.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The access lines of the log written so far, parsed.
fn access_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "proxycache::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_json_line_with_an_origin_form_path() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let dead = dead_addr();
    let port = free_port();
    let site = Site::new("access-log");
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [log]\nformat = \"json\"\naccess = true\nlevel = \"info\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.dead]\nservers = [\"{dead}\"]\n\n[[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n{}",
        app(&[&up], "")
    ));
    let log = site.dir.join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_proxycache"))
        .args(["run", "--config"])
        .arg(site.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn proxycache");
    let _child = Killed(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let up_now = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(up_now, "proxycache did not start");

    assert_eq!(get(addr, "/h1path?q=1").await.status, 200);
    let h2 = http::Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{port}/h2path?q=2"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send_h2(addr, h2).await.status, 200);

    assert_eq!(get(addr, "/dead/x").await.status, 502);
    // A head that cannot be parsed is answered, counted and logged too (it left no
    // trace).
    assert_eq!(
        raw_status(&raw_request(addr, b"GARBAGE\r\n\r\n").await),
        400
    );

    let found = wait_until(Duration::from_secs(5), || access_lines(&log).len() >= 4).await;
    assert!(
        found,
        "four access lines: {:?}",
        std::fs::read_to_string(&log)
    );
    let lines = access_lines(&log);
    let fields: Vec<&Value> = lines.iter().collect();
    // An HTTP/2 request's URI is absolute (scheme, authority): the path is logged
    // as an HTTP/1.1 request line has it.
    assert_eq!(fields[0]["path"], "/h1path?q=1", "{lines:#?}");
    assert_eq!(fields[1]["path"], "/h2path?q=2", "{lines:#?}");
    // A failed exchange names the server it failed with (it said "-").
    assert_eq!(fields[2]["status"], 502, "{lines:#?}");
    assert_eq!(fields[2]["upstream"], "dead");
    assert_eq!(fields[2]["server"], dead.to_string(), "{lines:#?}");
    assert_eq!(fields[3]["status"], 400, "{lines:#?}");
    assert_eq!(fields[3]["method"], "-");
    assert!(fields[3]["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    for f in &fields[..2] {
        assert_eq!(f["server"], up.addr.to_string());
        assert_eq!(f["method"], "GET");
        assert_eq!(f["status"], 200);
        assert_eq!(f["upstream"], "app");
        assert!(f["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}

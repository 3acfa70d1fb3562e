//! Acceptance 6: dead upstream -> 502, slow upstream -> 504, all servers unhealthy
//! -> 503, each with `x-request-id`; active health checks take a server out of rotation
//! and bring it back; the circuit breaker opens after N failures and half-opens after
//! `open_for`; a connect failure is retried on another server.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn assert_request_id(resp: &Resp) {
    assert!(
        resp.request_id().is_some_and(|id| !id.is_empty()),
        "a {} made by the proxy carries x-request-id: {:?}",
        resp.status,
        resp.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_502_with_a_request_id() {
    let dead = dead_addr();
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{dead}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));

    let resp = get(px.addr, "/").await;

    assert_eq!(resp.status, 502, "body: {}", resp.text());
    assert_request_id(&resp);
    assert!(
        !resp.text().contains(&dead.port().to_string()),
        "the body does not leak the upstream address: {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_incoming_request_id_is_kept_on_proxy_made_errors() {
    let dead = dead_addr();
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{dead}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));

    let resp = send(
        px.addr,
        empty(req("GET", "/").header("x-request-id", "it-test-42")),
    )
    .await;

    assert_eq!(resp.status, 502);
    assert_eq!(resp.request_id().as_deref(), Some("it-test-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_504_with_a_request_id() {
    let up = Upstream::start("slow", Behavior::slow(3_000)).await;
    let px = proxy(&app(&[&up], "response_timeout = \"200ms\""));

    let start = Instant::now();
    let resp = get(px.addr, "/").await;
    let elapsed = start.elapsed();

    assert_eq!(resp.status, 504, "body: {}", resp.text());
    assert_request_id(&resp);
    assert!(
        elapsed < Duration::from_millis(2_500),
        "504 came after {elapsed:?}, not after the 200ms response timeout"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_unhealthy_is_503_with_a_request_id() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    a.set_healthy(false);
    b.set_healthy(false);
    let health = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", unhealthy_after = 1, healthy_after = 1 }";
    let px = proxy(&app(&[&a, &b], health));

    // The first checks run at once; poll until both servers are out of rotation.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first_503 = loop {
        let resp = get(px.addr, "/").await;
        if resp.status == 503 {
            break resp;
        }
        assert_eq!(
            resp.status, 200,
            "before the checks mark them, servers answer"
        );
        assert!(
            Instant::now() < deadline,
            "no 503 within 5s of both servers failing their checks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_request_id(&first_503);
    assert!(
        a.state
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    let before = a.requests() + b.requests();
    for _ in 0..5 {
        let resp = get(px.addr, "/").await;
        assert_eq!(resp.status, 503);
        assert_request_id(&resp);
    }
    assert_eq!(
        a.requests() + b.requests(),
        before,
        "unhealthy servers get no traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_health_check_loses_traffic_and_gets_it_back() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let health = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", unhealthy_after = 1, healthy_after = 1 }";
    let px = proxy(&app(&[&a, &b], health));

    // Both healthy: both get traffic.
    let mut seen_a = false;
    let mut seen_b = false;
    for _ in 0..6 {
        let server = get(px.addr, "/").await.server();
        seen_a |= server == "a";
        seen_b |= server == "b";
    }
    assert!(seen_a && seen_b, "both healthy servers get traffic");

    // `a` fails its checks: soon every request goes to `b`.
    a.set_healthy(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut streak = 0;
    while streak < 10 {
        assert!(
            Instant::now() < deadline,
            "traffic still reaches the unhealthy server after 5s"
        );
        let resp = get(px.addr, "/").await;
        assert_eq!(resp.status, 200, "one healthy server is enough");
        streak = if resp.server() == "b" { streak + 1 } else { 0 };
    }
    let a_requests = a.requests();
    for _ in 0..6 {
        assert_eq!(get(px.addr, "/").await.server(), "b");
    }
    assert_eq!(
        a.requests(),
        a_requests,
        "the unhealthy server gets nothing"
    );

    // `a` passes again: it gets traffic back.
    a.set_healthy(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the recovered server got no traffic within 5s"
        );
        if get(px.addr, "/").await.server() == "a" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_n_failures_and_half_opens_after_open_for() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(
        &[&up],
        "circuit_breaker = { failures = 2, open_for = \"500ms\" }",
    ));
    up.set_fail(true);

    // Two failures (the upstream drops the connection without answering) open it.
    for i in 0..2 {
        let resp = get(px.addr, "/").await;
        assert_eq!(resp.status, 502, "failure {i}: {}", resp.text());
    }
    assert_eq!(up.requests(), 2);

    // Open: refused without touching the upstream.
    let accepts = up.accepts();
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 503, "an open breaker refuses: {}", resp.text());
    assert_request_id(&resp);
    assert_eq!(
        up.requests(),
        2,
        "an open breaker does not touch the upstream"
    );
    assert_eq!(up.accepts(), accepts, "an open breaker opens no connection");

    // After open_for, one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 502, "the half-open probe reaches the upstream");
    assert_eq!(up.requests(), 3);
    let resp = get(px.addr, "/").await;
    assert_eq!(resp.status, 503, "a failed probe opens the breaker again");
    assert_eq!(up.requests(), 3);

    // After open_for again, a successful probe closes it.
    up.set_fail(false);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..3 {
        let resp = get(px.addr, "/").await;
        assert_eq!(
            resp.status,
            200,
            "request {i} after recovery: {}",
            resp.text()
        );
    }
    assert_eq!(up.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_another_server() {
    let live = Upstream::start("live", Behavior::echo()).await;
    let dead = dead_addr();
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{dead}\", \"{}\"]\nbalance = \"round_robin\"\n\n[[routes]]\nupstream = \"app\"\n",
        live.addr
    ));

    for i in 0..6 {
        let resp = get(px.addr, &format!("/get/{i}")).await;
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.text());
        assert_eq!(resp.server(), "live");
    }
    // Nothing was sent to the dead server, so a POST body is retried intact too.
    for i in 0..2 {
        let body = payload(10_000);
        let request = req("POST", &format!("/post/{i}"))
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request builds");
        let resp = send(px.addr, request).await;
        assert_eq!(resp.status, 200, "POST {i}: {}", resp.text());
        let got = live.last().expect("live got the POST");
        assert!(
            got.body.as_ref() == body.as_slice(),
            "the retried body is intact"
        );
    }
    assert_eq!(live.requests(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_timeout_past_what_the_clock_holds_does_not_panic() {
    // `config.toml` bounds its durations, a script's `timeout` is any number of
    // seconds: the response deadline must not overflow the clock.
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("huge-timeout");
    site.write_mod("huge", "mod huge {\n  priority 10\n  lua \"huge.lua\"\n}\n");
    std::fs::write(
        site.mods_dir().join("huge.lua"),
        "function on_request(req, ctx)\n  return std.proxy.forward{ timeout = 9223372036854775807 }\nend\n",
    )
    .expect("write huge.lua");
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{}",
        app(&[&up], "")
    ));
    let run = Running::start(&site);

    for i in 0..2 {
        let resp = try_send(run.addr, empty(req("GET", &format!("/r/{i}")))).await;
        let resp = resp.unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(up.requests(), 2);
}

/// Requests 1..=n to `addr`: how many came back 503 and how many 200.
async fn tally(addr: std::net::SocketAddr, n: usize) -> (usize, usize) {
    let (mut bad, mut good) = (0, 0);
    for i in 0..n {
        match get(addr, &format!("/r{i}")).await.status.as_u16() {
            503 => bad += 1,
            200 => good += 1,
            other => panic!("request {i}: unexpected {other}"),
        }
    }
    (bad, good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_statuses_count_answers_as_failures() {
    let sick = Upstream::start("sick", Behavior::status(503)).await;
    let well = Upstream::start("well", Behavior::echo()).await;
    let site = Site::new("breaker-statuses");
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        app(
            &[&sick, &well],
            "circuit_breaker = { failures = 2, open_for = \"60s\", statuses = [502, 503] }",
        )
    ));
    let run = Running::start(&site);
    // Round robin: the sick server's two 503s open its breaker; then the well one
    // takes everything.
    let (bad, good) = tally(run.addr, 12).await;
    assert_eq!(
        bad, 2,
        "the client still gets the 503s that opened the breaker"
    );
    assert_eq!(good, 10);
    assert_eq!(
        sick.requests(),
        2,
        "an open breaker keeps requests off the server"
    );
    let metrics = get(run.admin, "/metrics").await.text();
    let sick_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("proxycache_upstream_failures_total{") && l.contains(&sick.authority())
        })
        .unwrap_or_else(|| panic!("no failures line for the sick server:\n{metrics}"));
    assert!(
        sick_line.ends_with(" 2"),
        "the 503s are counted as the server's failures: {sick_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_breaker_statuses_answers_are_not_failures() {
    let sick = Upstream::start("sick", Behavior::status(503)).await;
    let well = Upstream::start("well", Behavior::echo()).await;
    let px = proxy(&app(
        &[&sick, &well],
        "circuit_breaker = { failures = 2, open_for = \"60s\" }",
    ));
    let (bad, good) = tally(px.addr, 12).await;
    assert_eq!((bad, good), (6, 6), "a server that answers is not failing");
    assert_eq!(sick.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_breaker_opened_does_not_close_it() {
    let up = Upstream::start("a", Behavior::slow_on("/slow", 1_500)).await;
    let px = proxy(&app(
        &[&up],
        "circuit_breaker = { failures = 1, open_for = \"60s\" }",
    ));
    let addr = px.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    assert!(
        wait_until(Duration::from_secs(5), || up.inflight() == 1).await,
        "the slow request reached the upstream"
    );

    // A failure opens the breaker while the slow request is still in flight.
    up.set_fail(true);
    let resp = get(px.addr, "/fail").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    up.set_fail(false);
    assert_eq!(get(px.addr, "/").await.status, 503, "the breaker is open");

    // The slow request ends well; it was let through before the breaker opened, so
    // it is no probe and the breaker stays open for the rest of open_for.
    let resp = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow request finishes")
        .expect("slow task");
    assert_eq!(resp.status, 200);
    for i in 0..3 {
        let resp = get(px.addr, &format!("/after/{i}")).await;
        assert_eq!(resp.status, 503, "request {i}: the breaker closed early");
    }
    assert_eq!(
        up.requests(),
        2,
        "only the slow and the failing request got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_retries_than_servers_still_answer_the_connect_error() {
    let (dead_a, dead_b) = (dead_addr(), dead_addr());
    let site = Site::new("retries-past-servers");
    site.write_mod(
        "retry",
        "mod retry {\n  on request {\n    forward \"app\" { retries: 5 }\n  }\n}\n",
    );
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{dead_a}\", \"{dead_b}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));
    let run = Running::start(&site);

    // Both servers refuse: the answer is about them (502), not about a set with no
    // healthy server (503) just because retries were left over.
    let resp = get(run.addr, "/").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_request_id(&resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_skips_the_server_it_tried_in_a_set_of_more_than_64() {
    // ip_hash sends this client to one server; find a set size that puts it past
    // index 63, make that server dead and every other one live.
    let home_of =
        |n: u64| (proxycache::upstream::balance::hash_bytes(&[127, 0, 0, 1]) % n) as usize;
    let n = (65..400).find(|&n| home_of(n) >= 64).expect("a set size");
    let home = home_of(n);
    let live = Upstream::start("live", Behavior::echo()).await;
    let dead = dead_addr();
    let list: Vec<String> = (0..n as usize)
        .map(|i| {
            let addr = if i == home { dead } else { live.addr };
            format!("\"{addr}\"")
        })
        .collect();
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [{}]\nbalance = \"ip_hash\"\n\n[[routes]]\nupstream = \"app\"\n",
        list.join(", ")
    ));

    for i in 0..3 {
        let resp = get(px.addr, &format!("/r/{i}")).await;
        assert_eq!(
            resp.status,
            200,
            "request {i}: the retry went to server {home} again: {}",
            resp.text()
        );
    }
    assert_eq!(live.requests(), 3);
}

/// A server taken out of rotation is logged with why its checks failed: the status
/// it answered, the connect's error, or the time it kept the check waiting (the line
/// said only "server failed its health checks").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_health_checks_is_logged_with_the_reason() {
    log::capture();
    let failing = Upstream::start("a", Behavior::echo()).await;
    failing.set_healthy(false);
    let refused = dead_addr();
    // Takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let check = |kind: &str| {
        format!(
            "health = {{ {kind}interval = \"100ms\", timeout = \"300ms\", unhealthy_after = 1 }}"
        )
    };
    let _px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n{}\n\n\
         [upstreams.db]\nservers = [\"{refused}\"]\n{}\n\n\
         [upstreams.quiet]\nservers = [\"{silent_addr}\"]\n{}\n\n\
         [[routes]]\nupstream = \"app\"\n",
        failing.addr,
        check("path = \"/healthz\", "),
        check("type = \"tcp\", "),
        check(""),
    ));
    let line_for = |server: String| {
        log::lines_with("server failed its health checks")
            .into_iter()
            .find(|l| l.contains(&server))
    };
    let logged = wait_until(Duration::from_secs(10), || {
        [failing.addr, refused, silent_addr]
            .iter()
            .all(|a| line_for(a.to_string()).is_some())
    })
    .await;
    assert!(
        logged,
        "{:#?}",
        log::lines_with("server failed its health checks")
    );
    let line = line_for(failing.addr.to_string()).unwrap_or_default();
    assert!(line.contains("reason=status 500"), "{line}");
    let line = line_for(refused.to_string()).unwrap_or_default();
    assert!(
        line.contains("reason=connect failed: Connection refused"),
        "{line}"
    );
    let line = line_for(silent_addr.to_string()).unwrap_or_default();
    assert!(line.contains("reason=") && line.contains("300ms"), "{line}");
}

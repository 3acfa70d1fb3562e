//! The smaller stdlib functions over real sockets (issue 5, acceptance 4 except the
//! Prometheus part): request ids kept when valid and replaced when not; a named
//! circuit breaker opened, half-opened and closed by a script; `std.url_rewrite` with
//! numbered and named captures; `std.load_balance` and `std.active_health` following
//! the upstream layer's health.

mod common;

use std::time::Duration;

use common::*;

/// Request ids (the shipped module's call), a named breaker around `/pay/`, a rewrite
/// for `/old/`, and the upstream view under `/lb`.
const STD: &str = r#"mod std_demo {
  on request {
    std.request_id.inject()
    if $path starts_with "/pay/" {
      let b = std.circuit_breaker.check(name: "payments", failures: 2, open_for: 300ms)
      if not b.allowed {
        respond 503 "breaker ${b.state}\n"
      }
      set ctx.guarded = true
      set ctx.state = b.state
    }
    if $path starts_with "/old/" {
      let moved = std.url_rewrite(pattern: """^/old/(\d+)/(?P<slug>[a-z]+)$""", replacement: """/new/${slug}/$1""")
      set req.header["x-rewritten"] = "${moved}"
    }
    if $path starts_with "/s/" {
      let searched = std.url_rewrite(pattern: """^/s/([a-z]+)$""", replacement: """/search?q=$1""")
    }
    if $path starts_with "/api" {
      let stripped = std.url_rewrite(pattern: """^/api(.*)$""", replacement: """$1""")
    }
    if $path == "/lb-rr" {
      let other = std.load_balance(upstream: "pool", strategy: "least_conn")
      respond 200 "${other.addr}\n"
    }
    if $path == "/lb" {
      let pick = std.load_balance(upstream: "pool")
      let h = std.active_health(upstream: "pool")
      respond 200 "${pick.addr} ${pick.healthy} ${h.healthy}/${h.available}/${h.total}\n"
    }
  }
  on response {
    if $ctx.guarded {
      std.circuit_breaker.record(ok: $status < 500)
      set resp.header["x-breaker"] = "$ctx.state"
    }
  }
}
"#;

/// One worker, the demo module, every path to one echoing upstream.
async fn echo_site() -> RouteSite {
    route_site(
        "stdlib",
        1,
        ("std_demo", STD),
        vec![("/", Behavior::echo())],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_valid_and_replaced_when_not() {
    let s = echo_site().await;
    let addr = s.run.addr;
    let kept = send(
        addr,
        empty(req("GET", "/a").header("x-request-id", "lb-123.abc:9")),
    )
    .await;
    assert_eq!(kept.header("x-request-id").as_deref(), Some("lb-123.abc:9"));
    let seen = s.ups[0].last().and_then(|r| r.header("x-request-id"));
    assert_eq!(
        seen.as_deref(),
        Some("lb-123.abc:9"),
        "the upstream got the same id"
    );

    for bad in ["has space", "<script>", &"x".repeat(129)] {
        let r = send(addr, empty(req("GET", "/a").header("x-request-id", bad))).await;
        let id = r.header("x-request-id").unwrap_or_default();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a fresh UUID: {id}");
        let seen = s.ups[0].last().and_then(|r| r.header("x-request-id"));
        assert_eq!(seen.as_deref(), Some(id.as_str()));
    }
    let none = get(addr, "/a").await;
    assert_eq!(none.header("x-request-id").map(|v| v.len()), Some(36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_breaker_opens_half_opens_and_closes_from_a_script() {
    let s = route_site(
        "stdlib",
        1,
        ("std_demo", STD),
        vec![
            ("/pay/fail", Behavior::status(500)),
            ("/", Behavior::echo()),
        ],
        "",
    )
    .await;
    let addr = s.run.addr;
    for _ in 0..2 {
        let r = get(addr, "/pay/fail").await;
        assert_eq!(r.status, 500);
        assert_eq!(r.header("x-breaker").as_deref(), Some("closed"));
    }
    // Two failures in a row: open. Nothing reaches any upstream.
    let before = s.ups[0].requests() + s.ups[1].requests();
    for _ in 0..3 {
        let r = get(addr, "/pay/ok").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "breaker open\n");
    }
    assert_eq!(s.ups[0].requests() + s.ups[1].requests(), before);

    // After open_for: one probe goes through (half-open); its success closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = get(addr, "/pay/ok").await;
    assert_eq!(probe.status, 200);
    assert_eq!(probe.header("x-breaker").as_deref(), Some("half_open"));
    let after = get(addr, "/pay/ok").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-breaker").as_deref(), Some("closed"));

    // A failed probe opens it again.
    for _ in 0..2 {
        get(addr, "/pay/fail").await;
    }
    assert_eq!(get(addr, "/pay/ok").await.status, 503);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = get(addr, "/pay/fail").await;
    assert_eq!(probe.status, 500);
    assert_eq!(probe.header("x-breaker").as_deref(), Some("half_open"));
    assert_eq!(get(addr, "/pay/ok").await.text(), "breaker open\n");
}

/// A named breaker around every request, fed with each one's status.
const GUARD: &str = r#"mod guard {
  on request {
    let b = std.circuit_breaker.check(name: "svc", failures: 1, open_for: 60s)
    if not b.allowed {
      respond 503 "breaker ${b.state}\n"
    }
    set ctx.guarded = true
  }
  on response {
    if $ctx.guarded {
      std.circuit_breaker.record(ok: $status < 500)
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_breaker_is_not_closed_by_a_call_in_flight_when_it_opened() {
    let s = route_site(
        "stdlib",
        1,
        ("guard", GUARD),
        vec![
            ("/slow", Behavior::slow(1_000)),
            ("/fail", Behavior::status(500)),
            ("/", Behavior::echo()),
        ],
        "",
    )
    .await;
    let addr = s.run.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    assert!(
        wait_until(Duration::from_secs(5), || s.ups[0].inflight() == 1).await,
        "the slow call reached its upstream"
    );
    assert_eq!(get(addr, "/fail").await.status, 500);
    assert_eq!(get(addr, "/ok").await.text(), "breaker open\n");

    // The slow call was checked while closed: its success is no probe's.
    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow call finishes")
        .expect("slow task");
    assert_eq!(r.status, 200);
    assert_eq!(get(addr, "/ok").await.text(), "breaker open\n");
    assert_eq!(s.ups[2].requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_uses_numbered_and_named_captures() {
    let s = echo_site().await;
    let addr = s.run.addr;
    let r = get(addr, "/old/42/widgets?color=red").await;
    assert_eq!(r.status, 200);
    let seen = s.ups[0].last().expect("the upstream got the request");
    assert_eq!(seen.uri, "/new/widgets/42?color=red");
    assert_eq!(seen.header("x-rewritten").as_deref(), Some("true"));

    get(addr, "/old/not-a-number/x").await;
    let seen = s.ups[0].last().expect("the upstream got the request");
    assert_eq!(seen.uri, "/old/not-a-number/x", "no match, no change");
    assert_eq!(seen.header("x-rewritten").as_deref(), Some("false"));

    // A replacement with arguments of its own keeps the old query after them (it
    // was `/search?q=shoes?page=2`); a prefix stripped to nothing is `/` (it was a
    // request target of `?x=1`, or a 500).
    assert_eq!(get(addr, "/s/shoes?page=2").await.status, 200);
    let seen = s.ups[0].last().expect("the upstream got the request");
    assert_eq!(seen.uri, "/search?q=shoes&page=2");
    assert_eq!(get(addr, "/api?x=1").await.status, 200);
    assert_eq!(s.ups[0].last().map(|r| r.uri), Some("/?x=1".into()));
    assert_eq!(get(addr, "/api").await.status, 200);
    assert_eq!(s.ups[0].last().map(|r| r.uri), Some("/".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balance_and_active_health_follow_the_upstream_layer() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let health = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", unhealthy_after = 1, healthy_after = 1 }";
    let pool = format!(
        "[upstreams.pool]\nservers = {}\n{health}\n\n[[routes]]\npath_prefix = \"/pool/\"\nupstream = \"pool\"\n",
        servers(&[&a, &b])
    );
    let s = route_site(
        "stdlib",
        1,
        ("std_demo", STD),
        vec![("/", Behavior::echo())],
        &pool,
    )
    .await;
    let addr = s.run.addr;
    let (a_addr, b_addr) = (a.authority(), b.authority());

    // A look moves no rotation: the same server until a request goes to the set,
    // and then the request goes to the server the look named.
    let mut picked = std::collections::HashSet::new();
    for round in 0..2 {
        let mut looks = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = get(addr, "/lb").await;
            assert_eq!(r.status, 200);
            let text = r.text();
            let parts: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "{text}");
            assert!(parts[0] == a_addr || parts[0] == b_addr, "{text}");
            assert_eq!(&parts[1..], ["true", "2/2/2"], "{text}");
            looks.insert(parts[0].to_owned());
        }
        assert_eq!(
            looks.len(),
            1,
            "round {round}: looks moved the rotation: {looks:?}"
        );
        let looked = looks.into_iter().next().unwrap_or_default();
        let went = get(addr, &format!("/pool/{round}")).await.server();
        let went_addr = if went == "a" { &a_addr } else { &b_addr };
        assert_eq!(
            *went_addr, looked,
            "round {round}: the request went elsewhere"
        );
        picked.insert(looked);
    }
    assert_eq!(picked.len(), 2, "round robin alternates: {picked:?}");

    b.set_healthy(false);
    let seen_down = wait_until(Duration::from_secs(5), || {
        s.run.shared().generation().upstreams.sets[0]
            .servers
            .iter()
            .filter(|x| x.is_healthy())
            .count()
            == 1
    })
    .await;
    assert!(seen_down, "the health check marks b down");
    for _ in 0..4 {
        let text = get(addr, "/lb").await.text();
        assert_eq!(text, format!("{a_addr} true 1/1/2\n"));
    }
}

/// A tight bucket (burst 1, 2 a second) and a Lua flood of distinct keys.
const LIMITS: &str = r#"mod limits {
  lua """
function on_request(req, ctx)
  if req.path == "/flood" then
    -- 5,000 keys a request keeps each call under the instruction budget and the
    -- 500 ms slice even in a debug build.
    local part = req.query or "0"
    for i = 1, 5000 do
      std.rate_limit{ key = "k" .. part .. ":" .. i, rate = 1, per = "1m" }
    end
    return std.respond(200, "flooded\n")
  end
  local rl = std.rate_limit{ key = "one", rate = 2, burst = 1, per = "1s" }
  if not rl.allowed then
    return std.respond(429, "slow down\n", { ["retry-after"] = tostring(rl.retry_after) })
  end
end
"""
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refills_over_time_and_a_key_flood_stays_bounded() {
    let s = route_site(
        "stdlib",
        1,
        ("limits", LIMITS),
        vec![("/", Behavior::echo())],
        "",
    )
    .await;
    let addr = s.run.addr;
    assert_eq!(get(addr, "/a").await.status, 200);
    let refused = get(addr, "/a").await;
    assert_eq!(refused.status, 429, "burst of 1");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(addr, "/a").await.status,
        200,
        "a token came back after 500 ms"
    );
    assert_eq!(get(addr, "/a").await.status, 429);

    let limiter = &s.run.shared().generation().std_state.rate_limits;
    for part in 0..24 {
        let flood = get(addr, &format!("/flood?part={part}")).await;
        assert_eq!(flood.status, 200, "{}", flood.text());
    }
    let held = limiter.len();
    assert!(
        (50_000..=proxycache::stdlib::rate_limit::DEFAULT_MAX_KEYS).contains(&held),
        "120,000 distinct keys, at most {} held: {held}",
        proxycache::stdlib::rate_limit::DEFAULT_MAX_KEYS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balance_with_another_strategy_keeps_that_strategys_state() {
    // A strategy other than the set's own got a new balancer on every call:
    // least_conn broke its ties from the first server every time (and a
    // consistent-hash ring was built per request).
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let pool = format!(
        "[upstreams.pool]\nservers = {}\nbalance = \"ip_hash\"\n",
        servers(&[&a, &b])
    );
    let s = route_site(
        "stdlib-lb",
        1,
        ("std_demo", STD),
        vec![("/", Behavior::echo())],
        &pool,
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get(s.run.addr, "/lb-rr").await.text());
    }
    assert_eq!(seen.len(), 2, "idle servers take turns: {seen:?}");
}

// ---- header bytes that are not UTF-8 ------------------------------------------------------

/// pcmod: a bucket per `x-key` (as the review's `std.rate_limit(key: $req.header[...])`),
/// answering with the text the header reads as and what Lua stored under it.
const BYTES_PC: &str = r#"mod bytes_pc {
  on request {
    if $path == "/pc" {
      let key = $req.header["x-key"]
      let rl = std.rate_limit(key: key, rate: 1, burst: 1, per: 1m)
      if not rl.allowed {
        respond 429 "limited\n"
      }
      let seen = std.shared.get(key: "lua:${key}")
      respond 200 "${key} ${seen}\n"
    }
  }
}
"#;

/// Lua: docs/stdlib.md's `"key:" .. req:header(...)`, and a shared key made the same
/// way for pcmod to find, holding the header's bytes (kept as they are).
const BYTES_LUA: &str = r#"mod bytes_lua {
  lua """
function on_request(req, ctx)
  if req.path == "/lua" then
    local rl = std.rate_limit{ key = "key:" .. req:header("x-key"), rate = 1, burst = 1, per = "1m" }
    std.shared.set("lua:" .. req:header("x-key"), req:header("x-key"))
    if not rl.allowed then
      return std.respond(429, "limited\n")
    end
    return std.respond(200, "ok\n")
  end
end
"""
}
"#;

/// `GET path` on a raw socket with `x-key` set to `value`'s bytes, as sent.
async fn with_key(addr: std::net::SocketAddr, path: &str, value: &[u8]) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {TEST_HOST}\r\nx-key: ").into_bytes();
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    raw_request(addr, &head).await
}

/// Header bytes that are not UTF-8 were read as U+FFFD by pcmod (`\xff`, `\xfe` and
/// `\xe9` shared one bucket: the first client 200, the others 429) and refused by
/// Lua's text arguments (the docs' `"key:" .. req:header(...)` answered 500 with an
/// ERROR line, for any client that sent such a byte). Now one rule in both: distinct
/// bytes, distinct buckets, the same text in pcmod and Lua.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_that_are_not_utf8_give_distinct_keys_in_pcmod_and_lua() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("bytes");
    site.write_mod("bytes_pc", BYTES_PC);
    site.write_mod("bytes_lua", BYTES_LUA);
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{}",
        app(&[&up], "")
    ));
    let run = Running::start(&site);
    let addr = run.addr;
    // (bytes sent, the text pcmod reads)
    let keys: [(&[u8], &str); 5] = [
        (b"\xff", r"\xff"),
        (b"\xfe", r"\xfe"),
        (b"caf\xe9", r"caf\xe9"),
        (b"ab\xffc", r"ab\xffc"),
        ("caf\u{e9}".as_bytes(), "caf\u{e9}"),
    ];

    for (bytes, _) in keys {
        let first = with_key(addr, "/lua", bytes).await;
        assert_eq!(raw_status(&first), 200, "Lua, {bytes:?}, first: {first}");
        let second = with_key(addr, "/lua", bytes).await;
        assert_eq!(raw_status(&second), 429, "Lua, {bytes:?}, again: {second}");
    }

    for (bytes, text) in keys {
        let first = with_key(addr, "/pc", bytes).await;
        assert_eq!(raw_status(&first), 200, "pcmod, {bytes:?}, first: {first}");
        assert_eq!(
            raw_body(&first),
            format!("{text} {text}\n"),
            "pcmod reads {bytes:?} as Lua's text argument did, and the stored bytes alike"
        );
        let second = with_key(addr, "/pc", bytes).await;
        assert_eq!(
            raw_status(&second),
            429,
            "pcmod, {bytes:?}, again: {second}"
        );
    }

    // A key Lua never stored reads as nothing: the texts are not all one.
    let other = with_key(addr, "/pc", b"\xfd").await;
    assert_eq!(raw_body(&other), "\\xfd \n", "{other}");
}

//! `std.cache` over real sockets (issue 5, acceptance 2): a cacheable GET reaches the
//! upstream once and is then served from the cache (the upstream's request count
//! proves it); `no-store`, `private`, `Set-Cookie` and POST responses are not cached;
//! `Vary` keeps variants apart; 20 concurrent misses for one key make one upstream
//! request; a large chunked body is stored whole while it streams; the same from Lua.
//!
//! Each test writes a site (config.toml + mods/), one upstream per route prefix, and
//! starts proxycache in-process on port 0.

mod common;

use common::*;

/// The pcmod module under test: look up every request, store every response;
/// `/ttl/...` responses say nothing about freshness and get 30s from `check`.
const CACHE: &str = r#"mod cache {
  on request {
    if $path starts_with "/ttl" {
      let hit = std.cache.check(ttl: 30s)
      set ctx.hit = hit
    } else {
      let hit = std.cache.check()
      set ctx.hit = hit
    }
  }
  on response {
    let stored = std.cache.store()
    set resp.header["x-stored"] = "${stored}"
  }
}
"#;

/// The same from a Lua hook.
const LUA_CACHE: &str = r#"mod luacache {
  lua """
function on_request(req, ctx)
  ctx.hit = std.cache.check()
end
function on_response(req, resp, ctx)
  resp:set_header("x-stored", tostring(std.cache.store()))
end
"""
}
"#;

/// Two workers, so hits and fills cross worker threads; a small cache.
async fn setup(module: (&str, &str), routes: Vec<(&str, Behavior)>) -> RouteSite {
    let cache = "[cache]\nmax_size = \"8MiB\"\nmax_entry_size = \"2MiB\"";
    route_site("cache", 2, module, routes, cache).await
}

fn cacheable() -> Behavior {
    Behavior::echo().with_header("cache-control", "public, max-age=60")
}

async fn get_h(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req("GET", path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(addr, empty(b)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_are_never_stored() {
    // They go through the response phase (for its headers), where `store` saw a
    // 404 for a path no route takes as a storable answer: a route added later would
    // have been hidden behind it.
    let s = setup(("cache", CACHE), vec![("/app", cacheable())]).await;
    for _ in 0..3 {
        let r = get(s.run.addr, "/ttl/nowhere").await;
        assert_eq!(r.status, 404);
        assert_eq!(
            r.header("x-stored").as_deref(),
            Some("false"),
            "{:?}",
            r.headers
        );
        assert_ne!(r.header("x-cache").as_deref(), Some("HIT"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacheable_get_is_fetched_once_then_served_from_the_cache() {
    let s = setup(("cache", CACHE), vec![("/", cacheable())]).await;
    let addr = s.run.addr;
    let first = get(addr, "/page?q=1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(first.header("x-stored").as_deref(), Some("true"));
    assert_eq!(s.ups[0].requests(), 1);

    for _ in 0..5 {
        let again = get(addr, "/page?q=1").await;
        assert_eq!(again.status, 200);
        assert_eq!(
            again.header("x-cache").as_deref(),
            Some("HIT"),
            "{:?}",
            again.headers
        );
        assert_eq!(again.body, first.body, "a hit serves the stored body");
        assert!(again.header("age").is_some(), "a hit says its age");
        assert_eq!(
            again.header("x-stored").as_deref(),
            Some("false"),
            "a hit is not stored again"
        );
        assert_eq!(
            again.header("cache-control").as_deref(),
            Some("public, max-age=60")
        );
    }
    assert_eq!(s.ups[0].requests(), 1, "hits never reach the upstream");

    // Another query string is another key; HEAD shares GET's entry.
    let other = get(addr, "/page?q=2").await;
    assert_eq!(other.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(s.ups[0].requests(), 2);
    let head = send(addr, empty(req("HEAD", "/page?q=1"))).await;
    assert_eq!(head.header("x-cache").as_deref(), Some("HIT"));
    assert!(head.body.is_empty());
    assert_eq!(s.ups[0].requests(), 2);

    // A client asking for a fresh answer goes to the upstream (and refreshes the entry).
    let fresh = get_h(addr, "/page?q=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(s.ups[0].requests(), 3);

    // The metrics count what happened: hits 6 (5 GET + 1 HEAD), misses 3, stores 3
    // (the no-cache refresh stored again).
    let m = common::prometheus::parse(&get(s.run.admin, "/metrics").await.text());
    assert_eq!(m.value("proxycache_cache_hits_total", &[]), 6.0);
    assert_eq!(m.value("proxycache_cache_misses_total", &[]), 3.0);
    assert_eq!(m.value("proxycache_cache_stores_total", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_cached_is_not() {
    let s = setup(
        ("cache", CACHE),
        vec![
            (
                "/nostore",
                Behavior::echo().with_header("cache-control", "no-store"),
            ),
            (
                "/private",
                Behavior::echo().with_header("cache-control", "private, max-age=60"),
            ),
            (
                "/cookie",
                cacheable().with_header("set-cookie", "session=abc"),
            ),
            ("/plain", Behavior::echo()),
            (
                "/error",
                Behavior::status(500).with_header("cache-control", "max-age=60"),
            ),
            ("/", cacheable()),
        ],
    )
    .await;
    let addr = s.run.addr;
    for (i, path) in ["/nostore", "/private", "/cookie", "/plain", "/error"]
        .iter()
        .enumerate()
    {
        for round in 1..=3 {
            let r = get(addr, path).await;
            assert_eq!(r.header("x-cache").as_deref(), Some("MISS"), "{path}");
            assert_eq!(r.header("x-stored").as_deref(), Some("false"), "{path}");
            assert_eq!(
                s.ups[i].requests(),
                round,
                "{path} reaches the upstream every time"
            );
        }
    }
    // POST is never looked up nor stored, even on a cacheable route.
    for round in 1..=3 {
        let r = send(addr, empty(req("POST", "/form"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache").as_deref(), Some("BYPASS"));
        assert_eq!(s.ups[5].requests(), round);
    }
    // A request with credentials bypasses the cache.
    let r = get_h(addr, "/form", &[("authorization", "Bearer x")]).await;
    assert_eq!(r.header("x-cache").as_deref(), Some("BYPASS"));
    assert_eq!(s.ups[5].requests(), 4);
    // ...and the POSTs did not poison the GET.
    assert_eq!(
        get(addr, "/form").await.header("x-cache").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        get(addr, "/form").await.header("x-cache").as_deref(),
        Some("HIT")
    );
    assert_eq!(s.ups[5].requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let s = setup(
        ("cache", CACHE),
        vec![("/", cacheable().with_header("vary", "x-lang"))],
    )
    .await;
    let addr = s.run.addr;
    let en = get_h(addr, "/v", &[("x-lang", "en")]).await;
    let fr = get_h(addr, "/v", &[("x-lang", "fr")]).await;
    let none = get(addr, "/v").await;
    for r in [&en, &fr, &none] {
        assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
    }
    assert_eq!(s.ups[0].requests(), 3, "each variant is fetched");
    let en2 = get_h(addr, "/v", &[("x-lang", "en")]).await;
    let fr2 = get_h(addr, "/v", &[("x-lang", "fr")]).await;
    let none2 = get(addr, "/v").await;
    for r in [&en2, &fr2, &none2] {
        assert_eq!(r.header("x-cache").as_deref(), Some("HIT"));
    }
    assert_eq!(s.ups[0].requests(), 3);
    // Each variant got its own body: the echo names the x-lang it saw.
    assert!(en2.text().contains("\"x-lang\":\"en\""), "{}", en2.text());
    assert!(fr2.text().contains("\"x-lang\":\"fr\""), "{}", fr2.text());
    assert!(!none2.text().contains("x-lang"), "{}", none2.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let slow = Behavior::slow(300).with_header("cache-control", "max-age=60");
    let s = setup(("cache", CACHE), vec![("/", slow)]).await;
    let addr = s.run.addr;
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/hot").await }))
        .collect();
    let mut statuses = Vec::new();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("request task");
        statuses.push((r.status, r.header("x-cache")));
        bodies.insert(r.body.clone());
    }
    assert_eq!(
        s.ups[0].requests(),
        1,
        "20 concurrent misses, one upstream request"
    );
    assert!(statuses.iter().all(|(st, _)| *st == 200), "{statuses:?}");
    let misses = statuses
        .iter()
        .filter(|(_, x)| x.as_deref() == Some("MISS"))
        .count();
    assert_eq!(
        misses, 1,
        "one request filled, the others were served the fill: {statuses:?}"
    );
    assert_eq!(bodies.len(), 1, "everyone got the same body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_chunked_body_is_stored_whole_and_a_too_large_one_not_at_all() {
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let huge: Vec<u8> = vec![b'x'; 3 * 1024 * 1024];
    let s = setup(
        ("cache", CACHE),
        vec![
            (
                "/huge",
                Behavior::fixed_body(huge.clone(), true).with_header("cache-control", "max-age=60"),
            ),
            (
                "/ttl",
                Behavior::fixed_body(big.clone(), true)
                    .with_header("content-type", "application/octet-stream"),
            ),
        ],
    )
    .await;
    let addr = s.run.addr;
    let first = get(addr, "/ttl/big").await;
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(first.body.as_ref(), big.as_slice());
    let hit = get(addr, "/ttl/big").await;
    assert_eq!(
        hit.header("x-cache").as_deref(),
        Some("HIT"),
        "check(ttl: 30s) made it storable"
    );
    assert_eq!(
        hit.body.as_ref(),
        big.as_slice(),
        "the stored body is the whole body"
    );
    assert_eq!(s.ups[1].requests(), 1);

    for round in 1..=2 {
        let r = get(addr, "/huge").await;
        assert_eq!(r.body.len(), huge.len(), "the client gets all of it");
        assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
        assert_eq!(
            s.ups[0].requests(),
            round,
            "over cache.max_entry_size: not stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_from_a_lua_hook() {
    let s = setup(("luacache", LUA_CACHE), vec![("/", cacheable())]).await;
    let addr = s.run.addr;
    let first = get(addr, "/lua").await;
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(first.header("x-stored").as_deref(), Some("true"));
    let second = get(addr, "/lua").await;
    assert_eq!(second.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(s.ups[0].requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_the_old_copy_while_one_request_refreshes() {
    let slow =
        Behavior::slow(300).with_header("cache-control", "max-age=1, stale-while-revalidate=30");
    let s = setup(("cache", CACHE), vec![("/", slow)]).await;
    let addr = s.run.addr;
    assert_eq!(
        get(addr, "/swr").await.header("x-cache").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        get(addr, "/swr").await.header("x-cache").as_deref(),
        Some("HIT")
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Stale now: one request goes to the upstream, the other is not made to wait.
    let a = tokio::spawn(async move { get(addr, "/swr").await });
    let b = tokio::spawn(async move { get(addr, "/swr").await });
    let mut seen = vec![
        a.await.expect("a").header("x-cache"),
        b.await.expect("b").header("x-cache"),
    ];
    assert_eq!(s.ups[0].requests(), 2, "one refresh: {seen:?}");
    let miss = seen.iter().position(|x| x.as_deref() == Some("MISS"));
    let Some(miss) = miss else {
        panic!("one request refreshes the entry: {seen:?}")
    };
    seen.remove(miss);
    assert!(
        matches!(seen[0].as_deref(), Some("STALE" | "HIT")),
        "the other request is served from the cache: {seen:?}"
    );
    // The refresh is stored: fresh again.
    assert_eq!(
        get(addr, "/swr").await.header("x-cache").as_deref(),
        Some("HIT")
    );
    assert_eq!(s.ups[0].requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_names_the_upstream_the_request_is_routed_to() {
    // A header route picks u1 for `x-version: 2`; without the header u0 answers. The
    // key once left the upstream out, so u1's answer was served to u0's requests.
    let by_header = "[[routes]]\nheaders = { \"x-version\" = \"2\" }\nupstream = \"u1\"\n";
    let s = route_site(
        "cache-upstream",
        2,
        ("cache", CACHE),
        vec![
            ("/", cacheable().with_header("x-from", "u0")),
            ("/only-by-header", cacheable().with_header("x-from", "u1")),
        ],
        &format!("[cache]\nmax_size = \"8MiB\"\n\n{by_header}"),
    )
    .await;
    let addr = s.run.addr;
    let v2 = get_h(addr, "/k", &[("x-version", "2")]).await;
    assert_eq!(v2.header("x-from").as_deref(), Some("u1"));
    let plain = get(addr, "/k").await;
    assert_eq!(plain.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(plain.header("x-from").as_deref(), Some("u0"));
    assert_eq!((s.ups[0].requests(), s.ups[1].requests()), (1, 1));
    let again = get(addr, "/k").await;
    assert_eq!(again.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(again.header("x-from").as_deref(), Some("u0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_freshness_values_neither_panic_nor_break_the_entry() {
    // stale-while-revalidate of u64::MAX seconds overflowed `fresh + stale`: the worker
    // panicked on the store, and on every lookup of the entry once it was stale.
    let swr = Behavior::echo().with_header(
        "cache-control",
        "max-age=1, stale-while-revalidate=18446744073709551615",
    );
    let s = setup(("cache", CACHE), vec![("/", swr)]).await;
    let addr = s.run.addr;
    assert_eq!(get(addr, "/swr").await.status, 200);
    assert_eq!(
        get(addr, "/swr").await.header("x-cache").as_deref(),
        Some("HIT")
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let r = get(addr, "/swr").await;
        assert_eq!(r.status, 200);
        assert!(
            matches!(
                r.header("x-cache").as_deref(),
                Some("STALE" | "MISS" | "HIT")
            ),
            "{:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_counts_the_age_the_response_arrived_with() {
    let aged = cacheable().with_header("age", "50");
    let s = setup(("cache", CACHE), vec![("/", aged)]).await;
    let addr = s.run.addr;
    assert_eq!(
        get(addr, "/aged").await.header("x-stored").as_deref(),
        Some("true")
    );
    let hit = get(addr, "/aged").await;
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    let age: u64 = hit
        .header("age")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("age: {:?}", hit.headers));
    assert!((50..60).contains(&age), "age {age}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_and_ranges_are_answered_from_the_cache_and_a_fill_fetches_the_whole() {
    let tagged = cacheable().with_header("etag", "\"v1\"");
    let s = setup(("cache", CACHE), vec![("/", tagged)]).await;
    let addr = s.run.addr;

    // The first request is conditional and partial: it fills the key, so the upstream
    // is asked for the whole response, which is stored; its client gets its part.
    let fill = get_h(
        addr,
        "/doc",
        &[("if-none-match", "\"v0\""), ("range", "bytes=0-3")],
    )
    .await;
    assert_eq!(fill.status, 206, "a fill answers the range it was asked");
    assert_eq!(fill.header("x-stored").as_deref(), Some("true"));
    let first = get(addr, "/doc").await;
    assert_eq!(first.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(fill.body, first.body.slice(0..4));
    let seen = s.ups[0].last().expect("the upstream saw the fill");
    assert!(
        seen.headers.get("if-none-match").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen.headers.get("range").is_none(), "{:?}", seen.headers);

    // Hits answer validators and one range themselves.
    let nm = get_h(addr, "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert_eq!(nm.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(nm.header("etag").as_deref(), Some("\"v1\""));
    assert!(nm.body.is_empty());
    let part = get_h(addr, "/doc", &[("range", "bytes=0-3")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, first.body.slice(0..4));
    let total = first.body.len();
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 0-3/{total}"))
    );
    let past = get_h(addr, "/doc", &[("range", &format!("bytes={total}-"))]).await;
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{total}"))
    );
    let other = get_h(addr, "/doc", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body);
    assert_eq!(s.ups[0].requests(), 1, "all of them hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_unsafe_request_drops_the_entry() {
    let s = setup(("cache", CACHE), vec![("/", cacheable())]).await;
    let addr = s.run.addr;
    assert_eq!(
        get(addr, "/item").await.header("x-cache").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        get(addr, "/item").await.header("x-cache").as_deref(),
        Some("HIT")
    );
    let post = send(addr, empty(req("POST", "/item"))).await;
    assert_eq!(post.status, 200);
    assert_eq!(post.header("x-cache").as_deref(), Some("BYPASS"));
    assert_eq!(
        get(addr, "/item").await.header("x-cache").as_deref(),
        Some("MISS"),
        "the POST changed the resource"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_the_admission_policy_turns_away_is_counted_as_rejected() {
    // Room for two of these entries (about 1.4 KiB each), not three.
    let s = route_site(
        "cache-admit",
        2,
        ("cache", CACHE),
        vec![(
            "/",
            Behavior::fixed_body("x".repeat(1000), false)
                .with_header("cache-control", "public, max-age=60"),
        )],
        "[cache]\nmax_size = \"3500B\"\nmax_entry_size = \"2KiB\"",
    )
    .await;
    let addr = s.run.addr;
    // Two entries asked for often: TinyLFU keeps them over a newcomer asked for once
    // (moka counts uses once the cache is half full: after both are in).
    for path in ["/a", "/b"] {
        assert_eq!(
            get(addr, path).await.header("x-cache").as_deref(),
            Some("MISS")
        );
    }
    for path in ["/a", "/b"] {
        for _ in 0..10 {
            assert_eq!(
                get(addr, path).await.header("x-cache").as_deref(),
                Some("HIT")
            );
        }
    }
    let c = get(addr, "/c").await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("x-cache").as_deref(), Some("MISS"));
    let m = common::prometheus::parse(&get(s.run.admin, "/metrics").await.text());
    assert_eq!(m.value("proxycache_cache_stores_total", &[]), 2.0);
    assert_eq!(m.value("proxycache_cache_rejected_total", &[]), 1.0);
    // Not stored indeed: the next request for it is another miss.
    let again = get(addr, "/c").await;
    assert_eq!(again.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(
        get(addr, "/a").await.header("x-cache").as_deref(),
        Some("HIT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_that_fills_gets_the_range_or_304_it_asked_for() {
    let body = || Behavior::fixed_body("0123456789", false).with_header("etag", "\"v1\"");
    let s = setup(
        ("cache", CACHE),
        vec![
            (
                "/kept",
                body().with_header("cache-control", "public, max-age=60"),
            ),
            ("/nostore", body().with_header("cache-control", "no-store")),
            (
                "/big",
                Behavior::fixed_body(payload(1 << 20), false)
                    .with_header("cache-control", "public, max-age=60"),
            ),
        ],
    )
    .await;
    let addr = s.run.addr;

    // A part at the start of a large body: the rest is still read, and stored.
    let part = get_h(addr, "/big", &[("range", "bytes=0-9")]).await;
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.body, payload(1 << 20)[..10]);
    let whole = get(addr, "/big").await;
    assert_eq!(whole.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(whole.body.len(), 1 << 20);
    assert_eq!(s.ups[2].requests(), 1);

    // Storable: the fill's client gets its part; the whole response is stored.
    let part = get_h(addr, "/kept/a", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(part.text(), "2345");
    assert_eq!(
        part.header("content-range").as_deref(),
        Some("bytes 2-5/10")
    );
    assert_eq!(s.ups[0].last().and_then(|r| r.header("range")), None);
    let whole = get(addr, "/kept/a").await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(whole.text(), "0123456789");
    assert_eq!(s.ups[0].requests(), 1);

    let not_modified = get_h(addr, "/kept/b", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("x-cache").as_deref(), Some("MISS"));
    assert!(not_modified.body.is_empty());
    let past_end = get_h(addr, "/kept/c", &[("range", "bytes=50-")]).await;
    assert_eq!(past_end.status, 416);
    assert_eq!(
        past_end.header("content-range").as_deref(),
        Some("bytes */10")
    );
    // Both were stored whole all the same.
    for path in ["/kept/b", "/kept/c"] {
        let hit = get(addr, path).await;
        assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"), "{path}");
        assert_eq!(hit.text(), "0123456789");
    }
    assert_eq!(s.ups[0].requests(), 3);

    // Not storable: the same answers, from a response that is not kept.
    let part = get_h(addr, "/nostore/a", &[("range", "bytes=-3")]).await;
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.text(), "789");
    assert_eq!(
        part.header("content-range").as_deref(),
        Some("bytes 7-9/10")
    );
    let not_modified = get_h(addr, "/nostore/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    let other = get_h(addr, "/nostore/a", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "0123456789");
    assert_eq!(s.ups[1].requests(), 3);
}

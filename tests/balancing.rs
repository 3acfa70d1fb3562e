//! Acceptance 2: round robin spreads requests evenly, weighted follows weights,
//! ip_hash and consistent_hash are stable for one key, least_conn prefers an idle
//! server; `std.load_balance` only looks and moves no rotation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

/// Sends `n` sequential GETs (each on a new connection) and counts answers per server.
async fn spread(addr: std::net::SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let resp = get(addr, &format!("/r/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        *counts.entry(resp.server()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_ten_requests_five_and_five() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let px = proxy(&app(&[&a, &b], "balance = \"round_robin\""));

    let counts = spread(px.addr, 10).await;

    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_one_to_three_gives_ten_and_thirty_of_forty() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\nbalance = \"weighted\"\n\n[[routes]]\nupstream = \"app\"\n",
        a.addr, b.addr
    ));

    let counts = spread(px.addr, 40).await;

    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&30), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sends_one_client_to_one_server() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let c = Upstream::start("c", Behavior::echo()).await;
    let px = proxy(&app(&[&a, &b, &c], "balance = \"ip_hash\""));

    let counts = spread(px.addr, 20).await;

    assert_eq!(counts.len(), 1, "one client IP, one server: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_uses_the_forwarded_client_ip_from_a_trusted_proxy() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let c = Upstream::start("c", Behavior::echo()).await;
    let px = proxy_with(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &app(&[&a, &b, &c], "balance = \"ip_hash\""),
    );

    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for n in 1..=20 {
            let client = format!("10.1.2.{n}");
            let resp = send(
                px.addr,
                empty(req("GET", "/").header("x-forwarded-for", client.as_str())),
            )
            .await;
            assert_eq!(resp.status, 200);
            let server = resp.server();
            match chosen.get(&client) {
                Some(first) => assert_eq!(*first, server, "client {client} moved in round {round}"),
                None => {
                    chosen.insert(client, server);
                }
            }
        }
    }
    let used: BTreeSet<&String> = chosen.values().collect();
    assert!(
        used.len() > 1,
        "20 client IPs behind a trusted proxy all hashed to one server: {chosen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_stable_per_key() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let c = Upstream::start("c", Behavior::echo()).await;
    let px = proxy(&app(
        &[&a, &b, &c],
        "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
    ));

    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for n in 0..20 {
            let user = format!("user-{n}");
            let resp = send(
                px.addr,
                empty(req("GET", &format!("/p/{round}")).header("x-user", user.as_str())),
            )
            .await;
            assert_eq!(resp.status, 200);
            let server = resp.server();
            match chosen.get(&user) {
                Some(first) => assert_eq!(*first, server, "{user} moved in round {round}"),
                None => {
                    chosen.insert(user, server);
                }
            }
        }
    }
    let used: BTreeSet<&String> = chosen.values().collect();
    assert!(
        used.len() > 1,
        "20 keys all hashed to one server: {chosen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_prefers_the_idle_server() {
    let a = Upstream::start("a", Behavior::slow_on("/slow", 2_000)).await;
    let b = Upstream::start("b", Behavior::slow_on("/slow", 2_000)).await;
    let px = proxy(&app(&[&a, &b], "balance = \"least_conn\""));

    let addr = px.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    assert!(
        wait_until(Duration::from_secs(5), || a.inflight() + b.inflight() == 1).await,
        "the slow request reached an upstream"
    );
    let (busy, idle) = if a.inflight() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };

    for i in 0..6 {
        let resp = get(px.addr, &format!("/quick/{i}")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.server(),
            idle,
            "request {i} went to the busy server {busy}"
        );
        // Let the finished request's in-flight count drop before the next pick.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let resp = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow request finishes")
        .expect("slow task");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.server(), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_load_balance_names_the_next_server_without_moving_round_robin() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let site = Site::new("lb-peek");
    site.write_mod(
        "peek",
        "mod peek {\n  on request {\n    let pick = std.load_balance(upstream: \"app\")\n    set req.header[\"x-peek\"] = \"${pick.addr}\"\n  }\n}\n",
    );
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{}",
        app(&[&a, &b], "balance = \"round_robin\"")
    ));
    let run = Running::start(&site);

    let counts = spread(run.addr, 10).await;

    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    for up in [&a, &b] {
        for seen in up.all() {
            assert_eq!(
                seen.header("x-peek"),
                Some(up.authority()),
                "the peek named the server the request then went to"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_shares_a_down_servers_turns_evenly() {
    let x = Upstream::start("x", Behavior::echo()).await;
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    x.set_healthy(false);
    let px = proxy(&app(
        &[&x, &a, &b],
        "balance = \"round_robin\"\nhealth = { interval = \"100ms\", unhealthy_after = 1 }",
    ));
    let down = wait_until(Duration::from_secs(5), || {
        let generation = px.handle().shared().generation();
        !generation.upstreams.sets[0].servers[0].is_healthy()
    })
    .await;
    assert!(down, "x fails its health check");

    let counts = spread(px.addr, 30).await;

    // Handing x's turns to the next server in the list gave a 20 and b 10.
    assert_eq!(counts.get("a"), Some(&15), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&15), "{counts:?}");
    assert_eq!(x.requests(), 0);
}

//! Acceptance 3: upstream connections are pooled across client connections, and a
//! pooled connection the upstream has closed is never used again (no 502 from a stale
//! connection).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_client_connections_reuse_a_handful_of_upstream_connections() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    for i in 0..60 {
        // `get` opens a new client connection every time.
        let resp = get(px.addr, &format!("/n/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }

    assert_eq!(up.requests(), 60);
    let accepts = up.accepts();
    assert!(
        accepts <= 4,
        "60 requests opened {accepts} upstream connections (expected <= 4)"
    );
    let (opened, reused) = px.pool_totals();
    assert!(opened <= 4, "pool says {opened} connections were opened");
    assert!(
        reused >= 56,
        "pool says only {reused} requests reused a connection"
    );
}

/// Sends `n` GETs `gap` apart and asserts every one is a 200.
async fn all_ok(px: &Proxy, n: usize, gap: Duration) {
    for i in 0..n {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let resp = get(px.addr, &format!("/s/{i}")).await;
        assert_eq!(
            resp.status,
            200,
            "request {i} got {}: {}",
            resp.status,
            resp.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_each_response_never_causes_a_502() {
    let up = Upstream::start("a", Behavior::close_after_response()).await;
    let px = proxy(&app(&[&up], ""));

    all_ok(&px, 20, Duration::from_millis(150)).await;

    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.accepts(),
        20,
        "a connection the upstream closed is never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_each_response_back_to_back_never_causes_a_502() {
    let up = Upstream::start("a", Behavior::close_after_response()).await;
    let px = proxy(&app(&[&up], ""));

    all_ok(&px, 30, Duration::ZERO).await;

    assert_eq!(up.requests(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_never_causes_a_502() {
    let up = Upstream::start("a", Behavior::idle_close(100)).await;
    let px = proxy(&app(&[&up], ""));

    all_ok(&px, 20, Duration::from_millis(150)).await;

    assert_eq!(up.requests(), 20);
    assert!(
        up.accepts() >= 2,
        "the upstream did close idle connections ({} accepted)",
        up.accepts()
    );
}

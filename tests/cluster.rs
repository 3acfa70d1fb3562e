//! Cluster scope over real processes (issue 5, acceptance 5): two proxycache binaries
//! share one `std.rate_limit(..., scope: "cluster")` bucket through a real
//! redis-server, so together they allow the configured total, not twice it; when
//! Redis is killed mid-test both carry on with local buckets, no request fails, and
//! the fallback is counted in /metrics.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;

const LIMIT: &str = r#"mod shared_limit {
  on request {
    let rl = std.rate_limit(key: "everyone", rate: 5, burst: 5, per: 1h, scope: "cluster")
    if not rl.allowed {
      respond 429 "limited, retry in ${rl.retry_after}s\n" { "retry-after": "${rl.retry_after}" }
    }
  }
}
"#;

/// One proxycache process of the pair.
struct Node {
    child: std::process::Child,
    stderr: std::path::PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    _site: Site,
}

impl Node {
    async fn start(redis_url: &str) -> Node {
        let echo =
            "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n";
        Node::start_with(redis_url, ("shared_limit", LIMIT), echo).await
    }

    /// A node with `module` and `tail` (upstreams, routes, [cache]) in its config.
    async fn start_with(redis_url: &str, module: (&str, &str), tail: &str) -> Node {
        let site = Site::new("cluster");
        site.write_mod(module.0, module.1);
        let (port, admin_port) = (free_port(), free_port());
        site.write_config(&format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 2\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [scripts]\ndir = \"mods\"\nwatch = false\n\n\
             [redis]\nurl = \"{redis_url}\"\ntimeout = \"200ms\"\n\n{tail}"
        ));
        let (child, stderr) = site.spawn_run();
        let mut node = Node {
            child,
            stderr,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            _site: site,
        };
        // Ready when the admin API answers (asking the proxy would spend a token).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("proxycache exited with {status}: {}", node.stderr_text());
            }
            let up = try_send(node.admin, empty(req("GET", "/status")))
                .await
                .is_ok_and(|r| r.status == 200)
                && tokio::net::TcpStream::connect(node.addr).await.is_ok();
            if up {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "not ready: {}",
                node.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (up to 5s) for `needle` in the log.
    async fn log_shows(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stderr_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    async fn fallbacks(&self) -> f64 {
        self.fallbacks_of("shared_limit").await
    }

    async fn fallbacks_of(&self, module: &str) -> f64 {
        let text = get(self.admin, "/metrics").await.text();
        prometheus::parse(&text).sum("proxycache_cluster_fallbacks_total", &[("module", module)])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_limit_and_fall_back_to_local_when_redis_dies() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis.url()).await;
    let b = Node::start(&redis.url()).await;

    // 8 requests, alternating: the shared bucket of 5 allows 5 in all.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = get(node.addr, "/").await;
        if r.status == 429 {
            let retry: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(retry > 0 && retry <= 3600, "retry-after {retry}");
        }
        statuses.push(r.status.as_u16());
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(allowed, 5, "two processes, one bucket of 5: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(a.fallbacks().await, 0.0, "{}", a.stderr_text());
    assert_eq!(b.fallbacks().await, 0.0, "{}", b.stderr_text());
    // The bucket's key is the one docs/config.md and docs/stdlib.md give: prefix, `rl:`,
    // module, NUL, key, NUL, rate `/` per in ms `ms`, NUL, burst.
    let keys = redis.command(&[b"KEYS", b"proxycache:rl:*"]);
    let want = b"proxycache:rl:shared_limit\0everyone\x005/3600000ms\x005";
    assert!(
        keys.windows(want.len()).any(|w| w == want),
        "{}",
        String::from_utf8_lossy(&keys)
    );

    // Redis dies: each process falls back to its own bucket of 5, nothing fails.
    redis.kill();
    let mut after = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        after.push(get(node.addr, "/").await.status.as_u16());
    }
    assert!(
        after.iter().all(|s| *s == 200),
        "local buckets (5 each) allow 4 each: {after:?}"
    );
    assert!(a.fallbacks().await >= 4.0);
    assert!(b.fallbacks().await >= 4.0);
    // ...and still limit: 2 more on A make 6 > 5.
    let extra = [get(a.addr, "/").await.status, get(a.addr, "/").await.status];
    assert_eq!(extra.map(|s| s.as_u16()), [200, 429]);
    assert!(
        a.stderr_text().contains("redis unreachable"),
        "the fallback is logged: {}",
        a.stderr_text()
    );
}

const SHARED_CACHE: &str = r#"mod shared_cache {
  on request {
    std.cache.check()
  }
  on response {
    std.cache.store()
  }
}
"#;

/// An upstream whose answers may be cached for a minute, and the config tail that
/// routes to it through the shared cache tier.
async fn cached_app() -> (Upstream, String) {
    let up = Upstream::start(
        "app",
        Behavior::echo().with_header("cache-control", "max-age=60"),
    )
    .await;
    let tail = format!(
        "[cache]\nshared = true\n\n[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\nupstream = \"app\"\n",
        up.authority()
    );
    (up, tail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fill_one_shared_cache_tier() {
    let mut redis = RedisServer::start();
    let (up, tail) = cached_app().await;
    let a = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;
    let b = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;

    let first = get(a.addr, "/page").await;
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(up.requests(), 1);
    // B has never seen /page: its local miss finds A's entry in Redis.
    let from_b = get(b.addr, "/page").await;
    assert_eq!(
        from_b.header("x-cache").as_deref(),
        Some("HIT"),
        "{}",
        b.stderr_text()
    );
    assert_eq!(from_b.body, first.body, "the same stored body");
    assert_eq!(
        up.requests(),
        1,
        "the upstream was asked once for both processes"
    );
    // ...and now keeps it locally too.
    assert_eq!(
        get(b.addr, "/page").await.header("x-cache").as_deref(),
        Some("HIT")
    );

    // Redis dies: both keep serving, new keys are local misses, nothing fails.
    redis.kill();
    for (node, round) in [(&a, 2), (&b, 3)] {
        let r = get(node.addr, "/other").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
        assert_eq!(up.requests(), round);
    }
    assert_eq!(
        get(a.addr, "/page").await.header("x-cache").as_deref(),
        Some("HIT"),
        "local copies still serve"
    );
    assert!(b.fallbacks_of("shared_cache").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_logged_as_such_and_never_shown() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.command(&[b"CONFIG", b"SET", b"requirepass", b"right"]),
        b"+OK\r\n"
    );
    let url = format!("redis://admin:s3cret@{}/2", redis.addr);
    let a = Node::start(&url).await;
    assert_eq!(get(a.addr, "/").await.status, 200, "a local bucket decides");
    assert!(
        a.log_shows("redis authentication failed").await,
        "{}",
        a.stderr_text()
    );
    let log = a.stderr_text();
    assert!(!log.contains("s3cret"), "the password is in the log: {log}");
    assert!(
        log.contains(&format!("redis://admin:***@{}/2", redis.addr)),
        "the URL is shown masked: {log}"
    );
    assert!(!log.contains("redis unreachable"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_is_warned_about_and_counted() {
    let mut redis = RedisServer::start();
    let (_up, tail) = cached_app().await;
    let a = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;
    assert_eq!(
        get(a.addr, "/page").await.header("x-cache").as_deref(),
        Some("MISS")
    );
    redis.kill();
    let before = a.fallbacks_of("shared_cache").await;
    let post = send(a.addr, empty(req("POST", "/page"))).await;
    assert_eq!(post.status, 200);
    assert!(
        a.log_shows("shared cache entry not removed").await,
        "{}",
        a.stderr_text()
    );
    let log = a.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("shared cache entry not removed"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert!(a.fallbacks_of("shared_cache").await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tier_writes_that_fail_are_counted() {
    let mut redis = RedisServer::start();
    let (_up, tail) = cached_app().await;
    let a = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;
    redis.kill();
    let before = a.fallbacks_of("shared_cache").await;
    let r = get(a.addr, "/new").await;
    assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
    // The read from Redis failed, and so did the write of what the upstream sent.
    assert_eq!(
        a.fallbacks_of("shared_cache").await - before,
        2.0,
        "{}",
        a.stderr_text()
    );
    // The local copy serves.
    assert_eq!(
        get(a.addr, "/new").await.header("x-cache").as_deref(),
        Some("HIT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_the_shared_tier() {
    let redis = RedisServer::start();
    let (up, tail) = cached_app().await;
    let a = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;
    let b = Node::start_with(&redis.url(), ("shared_cache", SHARED_CACHE), &tail).await;
    let first = get(a.addr, "/page").await;
    assert_eq!(up.requests(), 1);
    let head = send(b.addr, empty(req("HEAD", "/page"))).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-cache").as_deref(), Some("HIT"));
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string())
    );
    assert_eq!(up.requests(), 1, "B's HEAD did not go to the upstream");
}

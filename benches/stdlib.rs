//! Hot paths of the stdlib (issue 5): `std.rate_limit` uncontended and with a second
//! thread hammering the same key, a cache lookup that hits, compression throughput per
//! algorithm, and — when `PROXYCACHE_BENCH_REDIS=redis://...` names a Redis — one
//! cluster-scoped rate-limit call (a round trip).
//!
//! Run: `cargo bench --bench stdlib`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use proxycache::http::ProxyBody;
use proxycache::stdlib::cache::store::{CacheSettings, Cached, HttpCache, Lookup};
use proxycache::stdlib::cluster::{Cluster, RedisSettings};
use proxycache::stdlib::compress::{compressed_body, Coding};
use proxycache::stdlib::rate_limit::RateLimiter;

/// The binary's allocator (src/main.rs), so the benches measure what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rate_limit(c: &mut Criterion) {
    let rl = RateLimiter::default();
    let per = Duration::from_secs(1);
    c.bench_function("std.rate_limit uncontended", |b| {
        b.iter(|| black_box(rl.check("module", "key", 1e9, 1_000_000_000, per)))
    });
    c.bench_function("std.rate_limit, 2 threads on one key", |b| {
        b.iter_custom(|iters| {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        black_box(rl.check("module", "hot", 1e9, 1_000_000_000, per));
                    }
                });
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(rl.check("module", "hot", 1e9, 1_000_000_000, per));
                }
                let elapsed = start.elapsed();
                stop.store(true, Ordering::Relaxed);
                elapsed
            })
        })
    });
    if let Ok(url) = std::env::var("PROXYCACHE_BENCH_REDIS") {
        let cluster = Cluster::new(Some(RedisSettings {
            url,
            timeout: Duration::from_millis(200),
            key_prefix: "bench:".into(),
        }));
        c.bench_function("std.rate_limit scope cluster (Redis round trip)", |b| {
            b.iter(|| {
                black_box(
                    cluster
                        .rate_limit("module\0key", 1e9, 1_000_000_000, per)
                        .is_ok(),
                )
            })
        });
    }
}

fn cache(c: &mut Criterion) {
    let cache = std::sync::Arc::new(HttpCache::new(CacheSettings::default()));
    let mut headers = HeaderMap::new();
    for (n, v) in [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "public, max-age=600"),
        ("etag", "\"abc123\""),
        ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ] {
        headers.insert(n, HeaderValue::from_static(v));
    }
    let req = HeaderMap::new();
    let key: std::sync::Arc<str> = std::sync::Arc::from("example.com/products/42?view=full");
    cache.insert(
        &key,
        &[],
        &req,
        Cached {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(vec![b'x'; 4096]),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(3600),
            stale_for: Duration::ZERO,
        },
    );
    c.bench_function("cache lookup, hit (4 KiB entry)", |b| {
        b.iter(|| match cache.lookup(&key, &req, Instant::now()) {
            Lookup::Fresh(c) => black_box(c.body.len()),
            _ => 0,
        })
    });
}

/// About `n` bytes of text that compresses well but not to nothing.
fn text(n: usize) -> Bytes {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"item {}\",\"tags\":[\"a\",\"b\"]}}\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    Bytes::from(out)
}

fn compress(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let body = text(256 * 1024);
    let mut group = c.benchmark_group("compress 256 KiB JSON lines");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
        group.bench_function(coding.name(), |b| {
            b.iter(|| {
                let out = rt.block_on(async {
                    compressed_body(coding, ProxyBody::full(body.clone()))
                        .collect()
                        .await
                        .map(|c| c.to_bytes().len())
                        .unwrap_or(0)
                });
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group!(stdlib, rate_limit, cache, compress);
criterion_main!(stdlib);

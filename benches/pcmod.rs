//! pcmod hot paths: loading a large module, running a typical module per request, a
//! five-module pipeline, and `std.rate_limit`. Also the request path's normal form,
//! which every request pays for before the modules see `$path`.
//!
//! Run with: cargo bench --bench pcmod

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderValue, Request};
use proxycache::http::RequestId;
use proxycache::pipeline::{Exchange, Pipeline, ReqParts, RequestInfo, RespParts, StdState};
use proxycache::script::ast::PhaseKind;
use proxycache::Config;

/// The binary's allocator (src/main.rs), so the benches measure what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = ""
[upstreams.app]
servers = ["builtin:echo"]
[[routes]]
upstream = "app"
"#;

/// The benchmark policy plus a few more typical statements: ten in all.
const TYPICAL: &str = r#"
mod typical {
  priority 10
  config { rps: int = 10000000 }
  on request {
    let key = $req.header["x-api-key"]
    if key == nil or key == "" {
      respond 401 "missing x-api-key\n"
    }
    if $path ~ "^/admin" { respond 403 "no\n" }
    let rl = std.rate_limit(key: key, rate: $config.rps, burst: $config.rps, per: 1s)
    if not rl.allowed {
      respond 429 "rate limited\n"
    }
    std.request_id.inject()
    set req.header["x-client"] = "key:${key}"
    set ctx.remaining = rl.remaining
  }
  on response {
    set resp.header["x-proxy"] = "bench"
  }
}
"#;

fn config() -> Config {
    Config::from_toml_str(CONFIG, None, Path::new("."))
        .unwrap_or_else(|e| panic!("bench config: {e}"))
}

fn pipeline(modules: &[(&str, String)]) -> Pipeline {
    let sources: Vec<(PathBuf, String)> = modules
        .iter()
        .map(|(name, src)| (PathBuf::from(format!("{name}.pcmod")), src.clone()))
        .collect();
    match proxycache::script::load_sources(&config(), &sources) {
        Ok(loaded) => loaded.pipeline,
        Err(d) => panic!(
            "bench modules: {}",
            proxycache::script::diag::render_all(&d)
        ),
    }
}

fn large_module(lines: usize) -> String {
    let mut s = String::from("mod large {\n  on request {\n");
    let mut n = 0;
    while s.lines().count() < lines - 3 {
        s.push_str(&format!("    if $path starts_with \"/p{n}/\" {{\n      set req.header[\"x-n\"] = \"${{len($path) + {n}}}\"\n    }}\n"));
        n += 1;
    }
    s.push_str("  }\n}\n");
    s
}

/// The upstream sets the stdlib calls see (none: the benches call no upstream).
static NO_UPSTREAMS: std::sync::LazyLock<proxycache::upstream::Upstreams> =
    std::sync::LazyLock::new(proxycache::upstream::Upstreams::default);

/// A request as the proxy hands it to the pipeline: parsed, with its id and context.
struct Fresh {
    parts: http::request::Parts,
    info: RequestInfo,
    ctx: proxycache::pipeline::Ctx,
    response_headers: proxycache::pipeline::ResponseHeaders,
    upstream: Arc<str>,
    /// The upstream's response head, as the proxy has it when the response phase runs
    /// (parsed into a map sized for its headers, see `upstream::h1`).
    resp_headers: http::HeaderMap,
}

fn fresh(p: &Pipeline) -> Fresh {
    let mut req = Request::get("/api/items?x=1").body(()).unwrap_or_default();
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("k1"));
    req.headers_mut()
        .insert("host", HeaderValue::from_static("example.com"));
    let (parts, _) = req.into_parts();
    Fresh {
        parts,
        info: RequestInfo {
            id: RequestId::generate(),
            client_ip: [127, 0, 0, 1].into(),
            scheme: "http",
            path_rules: proxycache::http::path::PathRules {
                merge_slashes: true,
                escaped_slashes: proxycache::http::path::EscapedSlashes::Keep,
            },
        },
        ctx: p.new_ctx(),
        response_headers: Default::default(),
        upstream: Arc::from("app"),
        resp_headers: upstream_head(),
    }
}

/// What a small upstream response carries (nginx's `return 200`): four headers.
fn upstream_head() -> http::HeaderMap {
    let mut h = http::HeaderMap::with_capacity(4);
    h.append("server", HeaderValue::from_static("nginx/1.22.1"));
    h.append(
        "date",
        HeaderValue::from_static("Mon, 07 Dec 2026 02:00:00 GMT"),
    );
    h.append("content-type", HeaderValue::from_static("text/plain"));
    h.append("content-length", HeaderValue::from_static("6"));
    h
}

/// The pipeline's request phase, then its response phase over a 200.
fn run_phases(p: &Pipeline, state: &StdState, f: &mut Fresh) {
    let mut ex = Exchange {
        module: "",
        phase: PhaseKind::Request,
        req: ReqParts {
            method: &f.parts.method,
            uri: &mut f.parts.uri,
            headers: &mut f.parts.headers,
        },
        resp: None,
        info: &mut f.info,
        ctx: &mut f.ctx,
        state,
        upstreams: &NO_UPSTREAMS,
        upstream: Some(&f.upstream),
        response_headers: &mut f.response_headers,
        body: None,
        lua: None,
    };
    let mut ran = 0;
    let flow = ready(p.run_request(&mut ex, &mut ran));
    black_box(&flow);
    let mut status = http::StatusCode::OK;
    ex.resp = Some(RespParts {
        status: &mut status,
        headers: &mut f.resp_headers,
        body: None,
    });
    let _ = ready(p.run_response(ran, &mut ex));
    black_box(&f.resp_headers);
}

/// Making the request and running the phases, as one measurement.
fn run_request(p: &Pipeline, state: &StdState) {
    let mut f = fresh(p);
    run_phases(p, state, &mut f);
}

/// Runs a future that never waits (a pcmod-only pipeline) to its end.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn benches(c: &mut Criterion) {
    let big = large_module(1000);
    c.bench_function("load 1,000-line module (parse + check + compile)", |b| {
        let cfg = config();
        let sources = vec![(PathBuf::from("large.pcmod"), big.clone())];
        b.iter(|| black_box(proxycache::script::load_sources(&cfg, &sources).is_ok()))
    });

    let state = StdState::default();
    let typical = pipeline(&[("typical", TYPICAL.to_owned())]);
    // The module's work alone: the request is made (parsed head, id) outside the
    // timing, as the proxy has done that before the pipeline runs.
    c.bench_function(
        "typical 10-statement module, one request (request + response phase)",
        |b| {
            b.iter_batched_ref(
                || fresh(&typical),
                |f| run_phases(&typical, &state, f),
                BatchSize::SmallInput,
            )
        },
    );
    c.bench_function(
        "typical 10-statement module, making the request included",
        |b| b.iter(|| run_request(&typical, &state)),
    );

    let five: Vec<(&str, String)> = ["m1", "m2", "m3", "m4", "m5"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                *name,
                TYPICAL
                    .replace("mod typical", &format!("mod {name}"))
                    .replace("priority 10", &format!("priority {}", 10 + i)),
            )
        })
        .collect();
    let five = pipeline(&five);
    c.bench_function("pipeline of 5 typical modules, one request", |b| {
        b.iter_batched_ref(
            || fresh(&five),
            |f| run_phases(&five, &state, f),
            BatchSize::SmallInput,
        )
    });

    let rl = Arc::new(StdState::default());
    c.bench_function("std.rate_limit uncontended (one key)", |b| {
        b.iter(|| {
            black_box(rl.rate_limits.check(
                "module",
                "key",
                1e7,
                10_000_000,
                Duration::from_secs(1),
            ))
        })
    });
}

/// `http::path::normalize`: a path already normal (the fast path: one scan, no
/// allocation) and one with every rule to apply.
fn paths(c: &mut Criterion) {
    use proxycache::http::path::{normalize, PathRules};
    let rules = PathRules {
        merge_slashes: true,
        escaped_slashes: proxycache::http::path::EscapedSlashes::Keep,
    };
    let normal = "/api/v1/users/42/orders/.well-known";
    c.bench_function("request path, already normal", |b| {
        b.iter(|| {
            let p = normalize(black_box(normal), rules);
            black_box(matches!(p, Ok(std::borrow::Cow::Borrowed(_))))
        })
    });
    c.bench_function("request path, /n/%2e%2e//api/./v1/%61", |b| {
        b.iter(|| black_box(normalize(black_box("/n/%2e%2e//api/./v1/%61"), rules).is_ok()))
    });
}

criterion_group!(pcmod, benches, paths);
criterion_main!(pcmod);

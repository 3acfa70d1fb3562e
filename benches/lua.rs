//! Lua hook hot paths, per request, through the real pipeline and hook driver (the
//! `req`/`ctx` handles, the turn moved in and out, the pooled coroutine, the budget
//! hook): an empty hook, a hook that reads two headers and sets one, a
//! `std.rate_limit` call from Lua, and the same header work in pcmod for comparison.
//!
//! Run with: cargo bench --bench lua

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request};
use proxycache::generation::Generation;
use proxycache::http::RequestId;
use proxycache::lua::LuaCall;
use proxycache::pipeline::{Exchange, ReqParts, RequestInfo, StdState};
use proxycache::script::ast::PhaseKind;
use proxycache::server::conn::ConnInfo;
use proxycache::server::worker::WorkerCtx;
use proxycache::server::Shared;
use proxycache::Config;

/// The binary's allocator (src/main.rs), so the benches measure what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
[admin]
listen = ""
[upstreams.app]
servers = ["builtin:echo"]
[[routes]]
upstream = "app"
"#;

const EMPTY: &str = r#"mod hook {
  lua """
function on_request(req, ctx) end
"""
}
"#;

const HEADERS: &str = r#"mod hook {
  lua """
function on_request(req, ctx)
  local key = req:header("x-api-key")
  local host = req:header("host")
  if key ~= nil and host ~= nil then
    req:set_header("x-client", key)
  end
end
"""
}
"#;

const RATE_LIMIT: &str = r#"mod hook {
  lua """
function on_request(req, ctx)
  local rl = std.rate_limit{ key = req:header("x-api-key"), rate = 10000000, burst = 10000000 }
  if not rl.allowed then return 429 end
end
"""
}
"#;

const PCMOD_HEADERS: &str = r#"mod hook {
  on request {
    let key = $req.header["x-api-key"]
    let host = $req.header["host"]
    if key != nil and host != nil {
      set req.header["x-client"] = key
    }
  }
}
"#;

/// A generation with `module` loaded, and the per-request Lua context a worker makes.
fn setup(module: &str) -> (Arc<Generation>, Option<Arc<LuaCall>>) {
    let config = Config::from_toml_str(CONFIG, None, Path::new("."))
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let sources = vec![(PathBuf::from("hook.pcmod"), module.to_owned())];
    let generation =
        match Generation::build_from(1, config, &sources, None, Arc::new(StdState::default())) {
            Ok(g) => Arc::new(g),
            Err(d) => panic!("bench module: {}", proxycache::script::diag::render_all(&d)),
        };
    let call = generation.pipeline.lua.as_ref().map(|rt| {
        let vm = rt.vm(0).unwrap_or_else(|e| panic!("bench VM: {e}"));
        let worker = Arc::new(WorkerCtx {
            id: 0,
            shared: Arc::new(Shared::detached(Arc::clone(&generation))),
            pool: Arc::new(Default::default()),
        });
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 80));
        Arc::new(LuaCall {
            vm,
            generation: Arc::clone(&generation),
            worker,
            conn: Arc::new(ConnInfo::new(addr, addr, "http", Arc::default())),
            client_upgrade: false,
        })
    });
    (generation, call)
}

/// One request's request phase, as the proxy runs it.
fn one_request(generation: &Generation, call: Option<&Arc<LuaCall>>) {
    let mut req = Request::get("/api/items?id=7").body(()).unwrap_or_default();
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("k1"));
    req.headers_mut()
        .insert("host", HeaderValue::from_static("example.com"));
    let (mut parts, _) = req.into_parts();
    let mut info = RequestInfo {
        id: RequestId::generate(),
        client_ip: [127, 0, 0, 1].into(),
        scheme: "http",
        path_rules: proxycache::http::path::PathRules {
            merge_slashes: true,
            escaped_slashes: proxycache::http::path::EscapedSlashes::Keep,
        },
    };
    let p = &generation.pipeline;
    let mut ctx = p.new_ctx();
    let mut response_headers = Default::default();
    let mut ex = Exchange {
        module: "",
        phase: PhaseKind::Request,
        req: ReqParts {
            method: &parts.method,
            uri: &mut parts.uri,
            headers: &mut parts.headers,
        },
        resp: None,
        info: &mut info,
        ctx: &mut ctx,
        state: &generation.std_state,
        upstreams: &generation.upstreams,
        upstream: generation.upstreams.sets.first().map(|s| s.shared_name()),
        response_headers: &mut response_headers,
        body: None,
        lua: call,
    };
    let flow = ready(p.run_request(&mut ex, &mut 0));
    black_box(&flow);
    black_box(&parts.headers);
}

/// Runs a future that never waits (no hook here waits on the network) to its end.
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
    let cases = [
        ("lua: empty on_request hook", EMPTY),
        ("lua: hook reads two headers and sets one", HEADERS),
        ("lua: std.rate_limit from a hook", RATE_LIMIT),
        (
            "pcmod: reads two headers and sets one (for comparison)",
            PCMOD_HEADERS,
        ),
    ];
    for (name, module) in cases {
        let (generation, call) = setup(module);
        c.bench_function(name, |b| b.iter(|| one_request(&generation, call.as_ref())));
    }
    // The request outside the hook (request, ids, context): subtract from the above.
    let (generation, _) = setup("mod hook {\n  on request {\n    next\n  }\n}\n");
    c.bench_function(
        "baseline: a request with a one-statement pcmod module",
        |b| b.iter(|| one_request(&generation, None)),
    );
}

criterion_group!(lua, benches);
criterion_main!(lua);

//! proxycache: a scriptable, programmable reverse proxy runtime.
//!
//! # Layout
//!
//! - [`config`]     — `config.toml`: file structs, validation, defaults, the embedded default.
//! - [`server`]     — listeners, worker threads, connection lifecycle, limits, shutdown;
//!   its own HTTP/1.1 loop (`server::h1`), hyper for HTTP/2 and upgrades.
//! - [`proxy`]      — the request path, top to bottom: checks, route, upstream, response.
//! - [`http`]       — body type, proxy errors and their statuses, header hygiene,
//!   framing checks, request path normalisation (`http::path`), percent-encoding of
//!   what modules put into a request target (`http::percent`), request ids, upstream
//!   response heads passed as received (`http::RawHead`), the built-in echo upstream.
//! - [`upstream`]   — upstream sets, balancing, health checks, breakers, pools, client.
//! - [`generation`] — the immutable snapshot a request pins (config, routes, upstreams,
//!   pipeline).
//! - [`pipeline`]   — the `Module` trait, phases, per-request context, run order.
//! - [`script`]     — pcmod: parser (pest), AST, checker + diagnostics, compiler, executor.
//! - [`lua`]        — Lua hooks: sandboxed per-worker VMs, `req`/`resp`/`ctx` handles,
//!   the hook driver (budgets, waiting on the network).
//! - [`stdlib`]     — the Rust stdlib scripts call, and its signature table.
//! - [`control`]    — the control thread: health checks, file watching, SIGHUP, admin API.
//! - [`reload`]     — building, checking and swapping generations; the file watcher.
//! - [`admin`]      — the admin API and dashboard.
//! - [`stats`]      — process-wide request counters.
//! - [`metrics`]    — the Prometheus registry: the proxy's metrics, script metrics,
//!   the text exposition.
//! - [`observe`]    — logging: the text and JSON formats (one line per event, a
//!   request's id on each of its lines), the access log.
//!
//! The binary (`main.rs`) is only the CLI over [`run`] and [`check`].

pub mod admin;
pub mod config;
pub mod control;
pub mod generation;
pub mod http;
pub mod lua;
pub mod metrics;
pub mod observe;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod script;
pub mod server;
pub mod stats;
pub mod stdlib;
pub mod upstream;

pub use config::{Config, ConfigError, ConfigErrors};
pub use server::{start, ServerHandle};

/// The crate version, as `proxycache version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

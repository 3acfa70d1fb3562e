//! The Rust standard library that scripts call, and its signature table.
//!
//! One table ([`SIGNATURES`]) describes every function: its name, named arguments with
//! types and defaults, its result, and the phases it may be called in. The pcmod
//! checker, the compiler, the docs (and later the Lua binding) all read it, so adding
//! a function is one entry in its area's file plus its Rust code.
//!
//! Each area is one file with its entries and its implementation (STYLE rule 12).
//! Must not touch: sockets, the pipeline's order of modules.

pub mod breaker;
pub mod cache;
pub mod cluster;
pub mod compress;
pub mod dict;
pub mod flow;
pub mod helpers;
pub mod ip;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod shared;
pub mod upstreams;
pub mod url_rewrite;

use std::sync::Arc;

use crate::script::ast::PhaseKind;
use crate::script::value::Value;

/// Argument and field types as the table states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    Any,
    Bool,
    Int,
    /// An int or a float.
    Number,
    Str,
    Duration,
    /// A map of strings (Lua: a table with string keys).
    Map,
    /// A list of strings (Lua: a table with keys 1..n).
    StrList,
    /// A response object (Lua only: `std.respond`, `std.proxy.forward`).
    Response,
}

impl ArgType {
    /// The name used in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ArgType::Any => "any",
            ArgType::Bool => "bool",
            ArgType::Int => "int",
            ArgType::Number => "number",
            ArgType::Str => "string",
            ArgType::Duration => "duration",
            ArgType::Map => "map",
            ArgType::StrList => "list of strings",
            ArgType::Response => "response",
        }
    }
}

/// A default value in the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgDefault {
    /// The argument is required.
    Required,
    /// Absent means nil; the function decides.
    Nil,
    Int(i64),
    Str(&'static str),
    DurationMs(u64),
}

impl ArgDefault {
    /// The value passed when the argument is absent (`Required` never reaches here).
    pub fn value(self) -> Value {
        match self {
            ArgDefault::Required | ArgDefault::Nil => Value::Nil,
            ArgDefault::Int(i) => Value::Int(i),
            ArgDefault::Str(s) => Value::str(s),
            ArgDefault::DurationMs(ms) => Value::Duration(std::time::Duration::from_millis(ms)),
        }
    }
}

/// Checks a literal argument at load time; `Err` is the message.
pub type LiteralCheck = fn(&Value) -> Result<(), String>;

/// One named argument.
#[derive(Debug)]
pub struct ArgSig {
    pub name: &'static str,
    pub ty: ArgType,
    pub default: ArgDefault,
    /// Must be a literal (e.g. a regex compiled at load time).
    pub literal: bool,
    /// Checks a literal value at load time (a bad literal is a load error, not a
    /// failure of every request).
    pub check: Option<LiteralCheck>,
    pub doc: &'static str,
}

/// What a call returns.
#[derive(Debug)]
pub enum Returns {
    Nothing,
    Value(ArgType),
    /// A record with these fields, addressed by index.
    Record(&'static RecordSig),
}

/// The fields of a result record.
#[derive(Debug)]
pub struct RecordSig {
    pub name: &'static str,
    pub fields: &'static [(&'static str, ArgType)],
}

impl PartialEq for RecordSig {
    /// Records are the same kind when they have the same name.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Which function a signature binds to: one closed set, dispatched in [`call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdFn {
    RateLimit,
    RequestIdInject,
    CacheCheck,
    CacheStore,
    BreakerCheck,
    BreakerRecord,
    LoadBalance,
    ActiveHealth,
    UrlRewrite,
    CompressCheck,
    CompressApply,
    Len,
    Lower,
    Upper,
    Trim,
    ToInt,
    ToStr,
    UrlEncode,
    IpIn,
    SharedGet,
    SharedSet,
    SharedIncr,
    Respond,
    ProxyForward,
    HttpRequest,
    MetricsInc,
    MetricsObserve,
    MetricsPrometheus,
}

impl StdFn {
    /// Whether only a Lua hook can call it: it waits on the network or makes a
    /// response object (pcmod has `respond` and `forward` statements instead).
    pub fn lua_only(self) -> bool {
        matches!(
            self,
            StdFn::Respond | StdFn::ProxyForward | StdFn::HttpRequest
        )
    }

    /// Whether it reads the request's headers (then a pipeline calling it after the
    /// request phase keeps them).
    pub fn reads_request_headers(self) -> bool {
        matches!(
            self,
            StdFn::CompressCheck | StdFn::CompressApply | StdFn::CacheStore
        )
    }
}

/// One function's signature.
#[derive(Debug)]
pub struct FnSig {
    pub name: &'static str,
    pub id: StdFn,
    pub args: &'static [ArgSig],
    pub returns: Returns,
    pub phases: &'static [PhaseKind],
    pub doc: &'static str,
}

/// Phases where a call that reads or changes the request may run.
pub const ALL_PHASES: &[PhaseKind] = &[PhaseKind::Request, PhaseKind::Response, PhaseKind::Log];

/// Every function, from every area.
pub static SIGNATURES: &[&[FnSig]] = &[
    rate_limit::SIGS,
    request_id::SIGS,
    url_rewrite::SIGS,
    cache::SIGS,
    breaker::SIGS,
    upstreams::SIGS,
    compress::SIGS,
    dict::SIGS,
    metrics::SIGS,
    flow::SIGS,
    helpers::SIGS,
    ip::SIGS,
];

/// The signature called `name` (`std.rate_limit`, `len`).
pub fn lookup(name: &str) -> Option<&'static FnSig> {
    SIGNATURES
        .iter()
        .flat_map(|area| area.iter())
        .find(|s| s.name == name)
}

/// Every function name, for "did you mean" hints.
pub fn names() -> impl Iterator<Item = &'static str> {
    SIGNATURES
        .iter()
        .flat_map(|area| area.iter())
        .map(|s| s.name)
}

/// A run-time failure of a stdlib call; ends the request with 500.
#[derive(Debug, thiserror::Error)]
#[error("{function}: {message}")]
pub struct StdError {
    pub function: &'static str,
    pub message: String,
}

/// What a stdlib call can see and change about the request in flight.
pub use crate::pipeline::Exchange;

/// What an argument was made into before the call, once rather than per request: at
/// load for a pcmod literal, or by the Lua binding (which caches regexes).
#[derive(Debug)]
pub enum Prepared {
    /// `std.url_rewrite`'s `pattern`, compiled.
    Regex(Arc<regex::Regex>),
    /// `ip_in`'s `ranges`, parsed.
    Ranges(ip::Ranges),
}

/// Calls `id` with arguments in signature order (defaults already filled).
pub fn call(
    id: StdFn,
    args: &[Value],
    prepared: Option<&Prepared>,
    ex: &mut Exchange<'_>,
) -> Result<Value, StdError> {
    match id {
        StdFn::RateLimit => rate_limit::call(args, ex),
        StdFn::RequestIdInject => request_id::inject(args, ex),
        StdFn::UrlRewrite => {
            let regex = match prepared {
                Some(Prepared::Regex(re)) => Some(&**re),
                _ => None,
            };
            url_rewrite::call(args, regex, ex)
        }
        StdFn::IpIn => ip::call(args, prepared),
        StdFn::CacheCheck => cache::check(args, ex),
        StdFn::CacheStore => cache::store(args, ex),
        StdFn::BreakerCheck => breaker::check(args, ex),
        StdFn::BreakerRecord => breaker::record_outcome(args, ex),
        StdFn::LoadBalance => upstreams::load_balance(args, ex),
        StdFn::ActiveHealth => upstreams::active_health(args, ex),
        StdFn::CompressCheck => compress::check(args, ex),
        StdFn::CompressApply => compress::apply(args, ex),
        StdFn::Len
        | StdFn::Lower
        | StdFn::Upper
        | StdFn::Trim
        | StdFn::ToInt
        | StdFn::ToStr
        | StdFn::UrlEncode => helpers::call(id, args),
        StdFn::SharedGet | StdFn::SharedSet | StdFn::SharedIncr => dict::call(id, args, ex),
        StdFn::MetricsInc | StdFn::MetricsObserve | StdFn::MetricsPrometheus => {
            metrics::call(id, args, ex)
        }
        StdFn::Respond | StdFn::ProxyForward | StdFn::HttpRequest => Err(StdError {
            function: "std",
            message: "this function can only be called from a Lua hook".into(),
        }),
    }
}

/// [`call`] for a call whose result nobody reads (a pcmod call statement): the
/// functions that would build a result only to drop it skip that.
pub fn call_for_effect(
    id: StdFn,
    args: &[Value],
    prepared: Option<&Prepared>,
    ex: &mut Exchange<'_>,
) -> Result<(), StdError> {
    match id {
        StdFn::RequestIdInject => request_id::set(args, ex),
        _ => call(id, args, prepared, ex).map(drop),
    }
}

/// A literal that must be a valid header name.
pub fn valid_header_name(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if http::HeaderName::from_bytes(s.as_bytes()).is_ok() => Ok(()),
        _ => Err(format!("{:?} is not a valid header name", v.to_string())),
    }
}

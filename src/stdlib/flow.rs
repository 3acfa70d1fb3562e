//! The Lua-only entries: `std.respond`, `std.proxy.forward`, `std.http.request`.
//! They make response objects or wait on the network, so they are run by the Lua
//! binding (`crate::lua::ops`), not by [`super::call`]; pcmod has the `respond` and
//! `forward` statements instead. Their signatures live here so that the checker, the
//! Lua binding and the editor definitions read them from the one table.

use super::{ArgDefault, ArgSig, ArgType, FnSig, PhaseKind, RecordSig, Returns, StdFn, ALL_PHASES};

/// `{status, headers, body}` of `std.http.request`.
pub static HTTP_RESULT: RecordSig = RecordSig {
    name: "http_response",
    fields: &[
        ("status", ArgType::Int),
        ("headers", ArgType::Map),
        ("body", ArgType::Str),
    ],
};

const fn arg(name: &'static str, ty: ArgType, default: ArgDefault, doc: &'static str) -> ArgSig {
    ArgSig {
        name,
        ty,
        default,
        literal: false,
        check: None,
        doc,
    }
}

/// A timeout of zero fails every call (or races the answer): refused, as the config
/// refuses an upstream's `response_timeout = 0`.
fn longer_than_zero(v: &super::Value) -> Result<(), String> {
    match v {
        super::Value::Duration(d) if d.is_zero() => {
            Err(format!("must be longer than zero, not {v}"))
        }
        _ => Ok(()),
    }
}

/// A `timeout` argument: a duration, longer than zero.
const fn timeout_arg(default: ArgDefault, doc: &'static str) -> ArgSig {
    ArgSig {
        name: "timeout",
        ty: ArgType::Duration,
        default,
        literal: false,
        check: Some(longer_than_zero),
        doc,
    }
}

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.respond",
        id: StdFn::Respond,
        args: &[
            arg("status", ArgType::Int, ArgDefault::Required, "the status code (200..=599)"),
            arg("body", ArgType::Str, ArgDefault::Nil, "the body"),
            arg("headers", ArgType::Map, ArgDefault::Nil, "response headers"),
        ],
        returns: Returns::Value(ArgType::Response),
        phases: &[PhaseKind::Request],
        doc: "A local response. Returned from `on_request` (or just called there), it answers the request; the upstream never sees it.",
    },
    FnSig {
        name: "std.proxy.forward",
        id: StdFn::ProxyForward,
        args: &[
            arg("upstream", ArgType::Str, ArgDefault::Nil, "the upstream to send to; the route's when absent"),
            timeout_arg(ArgDefault::Nil, "response timeout; the upstream's when absent"),
            arg("retries", ArgType::Int, ArgDefault::Nil, "connect retries on other servers, 0..=10 (default 1)"),
        ],
        returns: Returns::Value(ArgType::Response),
        phases: &[PhaseKind::Request],
        doc: "Sends the request upstream now and waits for the response head; returns the response, which the hook may change and return (it answers even if not returned). Consumes the request body, unless `req:body()` read it.",
    },
    FnSig {
        name: "std.http.request",
        id: StdFn::HttpRequest,
        args: &[
            arg("url", ArgType::Str, ArgDefault::Required, "`http://host[:port]/path?query`"),
            arg("method", ArgType::Str, ArgDefault::Str("GET"), "the method"),
            arg("headers", ArgType::Map, ArgDefault::Nil, "request headers"),
            arg("body", ArgType::Str, ArgDefault::Nil, "the request body"),
            timeout_arg(ArgDefault::DurationMs(5000), "for the whole call, connect to last byte"),
        ],
        returns: Returns::Record(&HTTP_RESULT),
        phases: ALL_PHASES,
        doc: "An outbound HTTP/1.1 call (auth callouts, webhooks) over the worker's connection pool; the body is read whole, up to `server.limits.max_body`. Raises an error on connect failure or timeout.",
    },
];

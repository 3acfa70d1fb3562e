//! `std.load_balance` and `std.active_health`: what the upstream layer would choose,
//! and how healthy an upstream set is, for scripts that route by it.
//!
//! Must not touch: balancing or health state (a pick here counts nothing in flight and
//! moves no rotation).

use std::sync::Arc;

use super::{ArgDefault, ArgSig, ArgType, FnSig, RecordSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::config::Balance;
use crate::script::value::Value;
use crate::upstream::balance::{hash_bytes, PickKey};
use crate::upstream::UpstreamSet;

/// `{addr, healthy}`.
pub static PICK: RecordSig = RecordSig {
    name: "load_balance",
    fields: &[("addr", ArgType::Str), ("healthy", ArgType::Bool)],
};

/// `{healthy, available, total}`.
pub static HEALTH: RecordSig = RecordSig {
    name: "active_health",
    fields: &[
        ("healthy", ArgType::Int),
        ("available", ArgType::Int),
        ("total", ArgType::Int),
    ],
};

const UPSTREAM_ARG: ArgSig = ArgSig {
    name: "upstream",
    ty: ArgType::Str,
    default: ArgDefault::Required,
    literal: false,
    check: None,
    doc: "an `[upstreams.NAME]` set",
};

/// Strategies a call may ask for besides the set's own (those that need no state
/// carried between requests).
const STRATEGIES: &[(&str, Balance)] = &[
    ("least_conn", Balance::LeastConn),
    ("ip_hash", Balance::IpHash),
    ("consistent_hash", Balance::ConsistentHash),
    ("p2c", Balance::P2c),
];

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.load_balance",
        id: StdFn::LoadBalance,
        args: &[
            UPSTREAM_ARG,
            ArgSig { name: "strategy", ty: ArgType::Str, default: ArgDefault::Nil, literal: true, check: Some(check_strategy), doc: "`least_conn`, `ip_hash`, `consistent_hash` (on the client IP) or `p2c`; the set's own `balance` when absent" },
        ],
        returns: Returns::Record(&PICK),
        phases: ALL_PHASES,
        doc: "The server the upstream layer would pick now among available ones: `addr` (as configured), `healthy`. `addr` is `\"\"` and `healthy` false when none is available.",
    },
    FnSig {
        name: "std.active_health",
        id: StdFn::ActiveHealth,
        args: &[UPSTREAM_ARG],
        returns: Returns::Record(&HEALTH),
        phases: ALL_PHASES,
        doc: "How many servers of the upstream are `healthy` (active and passive checks), `available` (healthy and their breaker lets requests through) and in `total`.",
    },
];

fn check_strategy(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if STRATEGIES.iter().any(|(n, _)| *n == s) => Ok(()),
        _ => Err(format!(
            "must be one of least_conn, ip_hash, consistent_hash, p2c, not {v}"
        )),
    }
}

fn set<'a>(
    args: &[Value],
    ex: &super::Exchange<'a>,
    function: &'static str,
) -> Result<&'a Arc<UpstreamSet>, StdError> {
    let name = args.first().and_then(Value::as_str).unwrap_or("");
    ex.upstreams.by_name(name).ok_or_else(|| StdError {
        function,
        message: format!("no upstream named {name:?}"),
    })
}

/// `std.load_balance(upstream, strategy?)`.
pub fn load_balance(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let set = set(args, ex, "std.load_balance")?;
    let ip = ex.info.client_ip;
    let key = PickKey {
        client_ip: ip,
        hash: match ip {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        },
    };
    let strategy = args
        .get(1)
        .and_then(Value::as_str)
        .and_then(|s| STRATEGIES.iter().find(|(n, _)| *n == s))
        .map(|(_, b)| *b);
    let available = |i: usize| set.servers[i].is_available();
    let index = match strategy {
        Some(b) if b != set.config.balance => {
            set.balancer_for(b).pick(&set.servers, &key, available)
        }
        _ => set.peek(&key),
    };
    let (addr, healthy) = match index.and_then(|i| set.servers.get(i)) {
        Some(s) => (Value::str(s.label()), s.is_healthy()),
        None => (Value::str(""), false),
    };
    Ok(Value::Record(
        &PICK,
        Arc::from([addr, Value::Bool(healthy)]),
    ))
}

/// `std.active_health(upstream)`.
pub fn active_health(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let set = set(args, ex, "std.active_health")?;
    let healthy = set.servers.iter().filter(|s| s.is_healthy()).count();
    let available = set.servers.iter().filter(|s| s.is_available()).count();
    let n = |x: usize| Value::Int(i64::try_from(x).unwrap_or(i64::MAX));
    Ok(Value::Record(
        &HEALTH,
        Arc::from([n(healthy), n(available), n(set.servers.len())]),
    ))
}

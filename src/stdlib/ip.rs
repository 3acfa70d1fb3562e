//! IP ranges: pcmod's helper `ip_in(ip, ranges)` and Lua's `std.ip_in(ip, ranges)`,
//! one function under two names — whether an address is in any of a list of CIDR
//! ranges (nginx's `allow 10.0.0.0/8; deny all;`).
//!
//! A list known when the module loads (a literal, a `$config` field) is parsed there
//! (`compile/call.rs`, a bad range is a load error); from Lua, and for a list computed
//! per request, it is parsed on each call. Must not touch: the request.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::{ArgDefault, ArgSig, ArgType, FnSig, Prepared, Returns, StdError, StdFn, ALL_PHASES};
use crate::script::value::Value;

const ARGS: &[ArgSig] = &[
    ArgSig {
        name: "ip",
        ty: ArgType::Str,
        // nil (an absent header) is an answer, false, not a missing argument.
        default: ArgDefault::Nil,
        literal: false,
        check: None,
        doc: "the address, e.g. the client's IP; nil or not an IP address gives false",
    },
    ArgSig {
        name: "ranges",
        ty: ArgType::StrList,
        default: ArgDefault::Required,
        literal: false,
        check: None,
        doc: "CIDR ranges (`\"10.0.0.0/8\"`, `\"2001:db8::/32\"`) or single addresses",
    },
];

const DOC: &str = "Whether `ip` is in any of `ranges` (an IPv4 address written as IPv6, `::ffff:10.1.2.3`, is in the IPv4 ones).";

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "ip_in",
        id: StdFn::IpIn,
        args: ARGS,
        returns: Returns::Value(ArgType::Bool),
        phases: ALL_PHASES,
        doc: DOC,
    },
    FnSig {
        name: "std.ip_in",
        id: StdFn::IpIn,
        args: ARGS,
        returns: Returns::Value(ArgType::Bool),
        phases: ALL_PHASES,
        doc: DOC,
    },
];

/// Parsed ranges. An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) is kept as the
/// IPv4 range it stands for.
#[derive(Debug, Default)]
pub struct Ranges {
    nets: Box<[IpNet]>,
}

/// A range that does not parse: which item (0-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRange {
    pub index: usize,
    pub message: String,
}

impl Ranges {
    /// The ranges of a list of strings.
    pub fn parse(items: &[Value]) -> Result<Ranges, BadRange> {
        let nets = items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let message = match item {
                    Value::Str(s) => match parse_range(s) {
                        Some(net) => return Ok(net),
                        None => format!(
                            "{s:?} is not an IP address or CIDR range (expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.168.1.10\")"
                        ),
                    },
                    other => format!("item {} is {}, not a string", index + 1, a(other)),
                };
                Err(BadRange { index, message })
            })
            .collect::<Result<_, _>>()?;
        Ok(Ranges { nets })
    }

    /// The ranges of a script value, which must be a list of strings.
    pub fn from_value(v: &Value) -> Result<Ranges, String> {
        match v {
            Value::List(items) => Ranges::parse(items).map_err(|bad| bad.message),
            other => Err(format!(
                "must be a list of strings, not {}",
                other.type_name()
            )),
        }
    }

    /// Whether `ip` is in any of the ranges. An IPv4-mapped IPv6 address is tested as
    /// the IPv4 address it is, and as itself.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(&canonical) || (canonical != ip && net.contains(&ip)))
    }
}

/// `"10.0.0.0/8"`, or a bare address meaning just that host (as `server.trusted_proxies`
/// reads them).
fn parse_range(text: &str) -> Option<IpNet> {
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()?;
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
            None => net,
        },
        _ => net,
    })
}

/// "an int", "a list", "nil".
fn a(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        other => crate::script::compile::with_article_pub(other.type_name()),
    }
}

/// `ip_in(ip, ranges)`: `prepared` holds the ranges when they were parsed before the
/// call (at load, or by the Lua binding); otherwise they are parsed now.
pub fn call(args: &[Value], prepared: Option<&Prepared>) -> Result<Value, StdError> {
    let parsed;
    let ranges = match prepared {
        Some(Prepared::Ranges(r)) => r,
        _ => {
            let v = args.get(1).unwrap_or(&Value::Nil);
            parsed = Ranges::from_value(v).map_err(|m| StdError {
                function: "ip_in",
                message: format!("argument `ranges`: {m}"),
            })?;
            &parsed
        }
    };
    let ip = args
        .first()
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok());
    Ok(Value::Bool(ip.is_some_and(|ip| ranges.contains(ip))))
}

#[cfg(test)]
mod tests;

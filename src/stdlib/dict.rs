//! `std.shared.get/set/incr`: the script side of [`SharedDict`](super::shared::SharedDict),
//! the dictionary every worker shares (like OpenResty's `lua_shared_dict`).

use std::time::{Duration, Instant};

use super::shared::{SharedError, SharedValue};
use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::pipeline::Exchange;
use crate::script::value::{text_from_bytes, Value};

const KEY: ArgSig = ArgSig {
    name: "key",
    ty: ArgType::Str,
    default: ArgDefault::Required,
    literal: false,
    check: None,
    doc: "the entry's key (at most 1 KiB)",
};
const TTL: ArgSig = ArgSig {
    name: "ttl",
    ty: ArgType::Duration,
    default: ArgDefault::Nil,
    literal: false,
    check: None,
    doc: "how long the entry lives; none = until evicted",
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.shared.get",
        id: StdFn::SharedGet,
        args: &[KEY],
        returns: Returns::Value(ArgType::Any),
        phases: ALL_PHASES,
        doc: "The value stored under `key` (a bool, number or string), or nil when absent or expired.",
    },
    FnSig {
        name: "std.shared.set",
        id: StdFn::SharedSet,
        args: &[
            KEY,
            ArgSig {
                name: "value",
                ty: ArgType::Any,
                default: ArgDefault::Nil,
                literal: false,
                check: None,
                doc: "a bool, number or string; nil deletes the entry",
            },
            TTL,
        ],
        returns: Returns::Nothing,
        phases: ALL_PHASES,
        doc: "Stores `value` under `key` for every worker. When the dictionary is full, the least recently used entries make room (a set never fails for lack of space).",
    },
    FnSig {
        name: "std.shared.incr",
        id: StdFn::SharedIncr,
        args: &[
            KEY,
            ArgSig {
                name: "by",
                ty: ArgType::Number,
                default: ArgDefault::Int(1),
                literal: false,
                check: None,
                doc: "the amount to add",
            },
            TTL,
        ],
        returns: Returns::Value(ArgType::Number),
        phases: ALL_PHASES,
        doc: "Adds `by` to the number under `key` atomically (an absent key counts from 0 and gets `ttl`) and returns the new value.",
    },
];

/// Runs one of this area's functions; `args` are in signature order.
pub fn call(id: StdFn, args: &[Value], ex: &mut Exchange<'_>) -> Result<Value, StdError> {
    match id {
        StdFn::SharedGet => Ok(get(args, ex).map_or(Value::Nil, from_shared)),
        StdFn::SharedSet => {
            let value = match args.get(1) {
                None | Some(Value::Nil) => None,
                Some(v) => Some(to_shared(v).map_err(|m| fail(id, m))?),
            };
            set(args, value, ex)?;
            Ok(Value::Nil)
        }
        _ => incr(args, ex),
    }
}

/// `std.shared.get`: the value under the key (`args[0]`) as stored. The Lua binding
/// takes it from here, so a binary string reaches Lua byte for byte.
pub fn get(args: &[Value], ex: &Exchange<'_>) -> Option<SharedValue> {
    let key = args.first().and_then(Value::as_str).unwrap_or("");
    ex.state.shared.get(key, Instant::now())
}

/// `std.shared.set` with its value already converted (`None` deletes): the Lua
/// binding passes a string as its bytes ([`SharedValue::from_bytes`]). `args` are
/// the call's, in signature order (key, value, ttl).
pub fn set(args: &[Value], value: Option<SharedValue>, ex: &Exchange<'_>) -> Result<(), StdError> {
    let key = args.first().and_then(Value::as_str).unwrap_or("");
    let ttl = ttl(StdFn::SharedSet, args.get(2))?;
    ex.state
        .shared
        .set(key, value, ttl, Instant::now())
        .map_err(|e| fail(StdFn::SharedSet, e.to_string()))
}

fn incr(args: &[Value], ex: &Exchange<'_>) -> Result<Value, StdError> {
    let id = StdFn::SharedIncr;
    let key = args.first().and_then(Value::as_str).unwrap_or("");
    let by = match args.get(1) {
        Some(Value::Int(i)) => SharedValue::Int(*i),
        Some(Value::Float(f)) => SharedValue::Float(*f),
        None | Some(Value::Nil) => SharedValue::Int(1),
        Some(other) => {
            return Err(fail(
                id,
                format!("by must be a number, not {}", other.type_name()),
            ))
        }
    };
    ex.state
        .shared
        .incr(key, by, ttl(id, args.get(2))?, Instant::now())
        .map(from_shared)
        .map_err(|e: SharedError| fail(id, e.to_string()))
}

fn fail(id: StdFn, message: String) -> StdError {
    let function = match id {
        StdFn::SharedGet => "std.shared.get",
        StdFn::SharedSet => "std.shared.set",
        _ => "std.shared.incr",
    };
    StdError { function, message }
}

fn ttl(id: StdFn, v: Option<&Value>) -> Result<Option<Duration>, StdError> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Duration(d)) => Ok(Some(*d)),
        Some(other) => Err(fail(
            id,
            format!("ttl must be a duration, not {}", other.type_name()),
        )),
    }
}

/// A script value to store (a string as text).
pub fn to_shared(v: &Value) -> Result<SharedValue, String> {
    Ok(match v {
        Value::Bool(b) => SharedValue::Bool(*b),
        Value::Int(i) => SharedValue::Int(*i),
        Value::Float(f) => SharedValue::Float(*f),
        Value::Str(s) => SharedValue::Str(s.clone()),
        Value::Size(n) => SharedValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
        Value::Duration(d) => SharedValue::Float(d.as_secs_f64()),
        other => {
            return Err(format!(
                "value must be a bool, number or string, not {}",
                other.type_name()
            ))
        }
    })
}

/// A stored value as a script value. pcmod strings are text: a binary string (stored
/// from Lua) reaches pcmod as [`text_from_bytes`] writes it (`\xNN` for each invalid
/// byte).
pub fn from_shared(v: SharedValue) -> Value {
    match v {
        SharedValue::Bool(b) => Value::Bool(b),
        SharedValue::Int(i) => Value::Int(i),
        SharedValue::Float(f) => Value::Float(f),
        SharedValue::Str(s) => Value::Str(s),
        SharedValue::Bytes(b) => Value::str(text_from_bytes(&b)),
    }
}

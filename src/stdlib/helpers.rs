//! The pure helpers: `len lower upper trim int str url_encode`.

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::script::value::Value;

const ONE_ARG: &[ArgSig] = &[ArgSig {
    name: "value",
    ty: ArgType::Any,
    default: ArgDefault::Required,
    literal: false,
    check: None,
    doc: "the input",
}];
const ONE_STR: &[ArgSig] = &[ArgSig {
    name: "value",
    ty: ArgType::Str,
    default: ArgDefault::Required,
    literal: false,
    check: None,
    doc: "the input",
}];

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "len",
        id: StdFn::Len,
        args: ONE_ARG,
        returns: Returns::Value(ArgType::Int),
        phases: ALL_PHASES,
        doc: "Length of a string (bytes), list or map; 0 for nil.",
    },
    FnSig {
        name: "lower",
        id: StdFn::Lower,
        args: ONE_STR,
        returns: Returns::Value(ArgType::Str),
        phases: ALL_PHASES,
        doc: "Lower-cased string.",
    },
    FnSig {
        name: "upper",
        id: StdFn::Upper,
        args: ONE_STR,
        returns: Returns::Value(ArgType::Str),
        phases: ALL_PHASES,
        doc: "Upper-cased string.",
    },
    FnSig {
        name: "trim",
        id: StdFn::Trim,
        args: ONE_STR,
        returns: Returns::Value(ArgType::Str),
        phases: ALL_PHASES,
        doc: "String without leading and trailing whitespace.",
    },
    FnSig {
        name: "int",
        id: StdFn::ToInt,
        args: ONE_ARG,
        returns: Returns::Value(ArgType::Any),
        phases: ALL_PHASES,
        doc: "Integer from a string or number; nil when it does not parse.",
    },
    FnSig {
        name: "str",
        id: StdFn::ToStr,
        args: ONE_ARG,
        returns: Returns::Value(ArgType::Str),
        phases: ALL_PHASES,
        doc: "The value as it would interpolate.",
    },
    FnSig {
        name: "url_encode",
        id: StdFn::UrlEncode,
        args: ONE_ARG,
        returns: Returns::Value(ArgType::Str),
        phases: ALL_PHASES,
        doc: "The value's string form with every byte but A-Z a-z 0-9 - . _ ~ percent-encoded.",
    },
];

/// Runs one helper.
pub fn call(id: StdFn, args: &[Value]) -> Result<Value, StdError> {
    let v = args.first().cloned().unwrap_or_default();
    let text = |name: &'static str| match &v {
        Value::Str(s) => Ok(s.clone()),
        Value::Nil => Ok("".into()),
        other => Err(StdError {
            function: name,
            message: format!("expects a string, got {}", other.type_name()),
        }),
    };
    Ok(match id {
        StdFn::Len => Value::Int(match &v {
            Value::Str(s) => s.len() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            _ => 0,
        }),
        StdFn::Lower => Value::str(text("lower")?.to_lowercase()),
        StdFn::Upper => Value::str(text("upper")?.to_uppercase()),
        StdFn::Trim => Value::str(text("trim")?.trim()),
        StdFn::ToInt => match &v {
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Int(*f as i64),
            Value::Str(s) => s.trim().parse::<i64>().map_or(Value::Nil, Value::Int),
            _ => Value::Nil,
        },
        StdFn::ToStr => Value::str(v.to_string()),
        // A value decoded from the client's query (`$req.query["q"]`) put back into a
        // query or path: `&`, `=`, `#`, `/` in it stay data.
        StdFn::UrlEncode => match &v {
            Value::Str(s) => Value::str(crate::http::percent::component(s)),
            other => Value::str(crate::http::percent::component(&other.to_string())),
        },
        _ => {
            return Err(StdError {
                function: "helpers",
                message: "not a helper".into(),
            })
        }
    })
}

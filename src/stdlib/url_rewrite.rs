//! `std.url_rewrite(pattern, replacement)`: a regex over the request path, compiled
//! once at load; on a match the path becomes the replacement (`$1`, `${name}` refer to
//! captures) and the query string is kept.

use http::uri::PathAndQuery;

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn};
use crate::script::ast::PhaseKind;
use crate::script::value::Value;

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[FnSig {
    name: "std.url_rewrite",
    id: StdFn::UrlRewrite,
    args: &[
        ArgSig {
            name: "pattern",
            ty: ArgType::Str,
            default: ArgDefault::Required,
            literal: true,
            check: None,
            doc: "regex matched against the path",
        },
        ArgSig {
            name: "replacement",
            ty: ArgType::Str,
            default: ArgDefault::Required,
            literal: false,
            check: None,
            doc: "the new path; `$1`, `${name}` insert captures",
        },
    ],
    returns: Returns::Value(ArgType::Bool),
    phases: &[PhaseKind::Request],
    doc: "Rewrites the request path when the pattern matches; returns whether it did.",
}];

/// `std.url_rewrite(pattern, replacement)`; `regex` is `pattern`, compiled at load.
pub fn call(
    args: &[Value],
    regex: Option<&regex::Regex>,
    ex: &mut super::Exchange<'_>,
) -> Result<Value, StdError> {
    let err = |message: String| StdError {
        function: "std.url_rewrite",
        message,
    };
    let regex = regex.ok_or_else(|| err("pattern was not compiled".into()))?;
    let replacement = args
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| err("replacement must be a string".into()))?;
    let path = ex.req.uri.path();
    if !regex.is_match(path) {
        return Ok(Value::Bool(false));
    }
    let new_path = regex.replace(path, replacement).into_owned();
    let pq = match ex.req.uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let pq: PathAndQuery = pq
        .parse()
        .map_err(|_| err(format!("rewritten path is not a valid URI path: {pq:?}")))?;
    crate::pipeline::set_path_and_query(ex.req.uri, pq);
    Ok(Value::Bool(true))
}

//! `std.url_rewrite(pattern, replacement)`: a regex over the request path, compiled
//! once at load; on a match the path becomes the replacement (`$1`, `${name}` refer to
//! captures) and the query string is kept — after the replacement's own arguments,
//! as nginx's `rewrite` does. The new path is put in normal form (`http::path`), as
//! an arriving request's is.

use http::uri::PathAndQuery;

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn};
use crate::http::path::PathRules;
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
    let new_path = regex.replace(path, replacement);
    let pq = join(&new_path, ex.req.uri.query()).map_err(err)?;
    // The rewritten path in normal form, as an arriving one: a capture cannot carry
    // `..` out of the replacement's prefix (`/api/public/../../admin`).
    let pq = normal_target(&pq, ex.info.path_rules).map_err(err)?;
    let pq: PathAndQuery = pq
        .parse()
        .map_err(|_| err(format!("rewritten path is not a valid URI path: {pq:?}")))?;
    crate::pipeline::set_path_and_query(ex.req.uri, pq);
    Ok(Value::Bool(true))
}

/// The new target from a rewritten path and the request's query. An empty path is
/// `/`; any other must start with `/` and have no fragment. A path with arguments of
/// its own (`/search?q=1`) gets the old query after them with `&`, one that ends in
/// `?` drops it (nginx's rule).
fn join(new_path: &str, query: Option<&str>) -> Result<String, String> {
    let new_path = if new_path.is_empty() { "/" } else { new_path };
    if !new_path.starts_with('/') {
        return Err(format!("rewritten path must start with '/': {new_path:?}"));
    }
    if new_path.contains('#') {
        return Err(format!(
            "rewritten path may not have a fragment ('#'): {new_path:?}"
        ));
    }
    if let Some(own) = new_path.strip_suffix('?') {
        return Ok(own.to_owned());
    }
    Ok(match query.filter(|q| !q.is_empty()) {
        None => new_path.to_owned(),
        Some(q) if new_path.contains('?') => format!("{new_path}&{q}"),
        Some(q) => format!("{new_path}?{q}"),
    })
}

/// `target` (a path and perhaps a query) with its path in normal form.
fn normal_target(target: &str, rules: PathRules) -> Result<String, String> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let path =
        crate::pipeline::normal_script_path(path, rules).map_err(|e| format!("rewritten {e}"))?;
    Ok(match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::{join, normal_target};
    use crate::http::path::PathRules;

    #[test]
    fn targets_join_as_nginx_does() {
        assert_eq!(join("/a", Some("x=1")), Ok("/a?x=1".into()));
        assert_eq!(join("/a", None), Ok("/a".into()));
        assert_eq!(
            join("/search?q=shoes", Some("x=1")),
            Ok("/search?q=shoes&x=1".into())
        );
        assert_eq!(join("/search?q=shoes", None), Ok("/search?q=shoes".into()));
        assert_eq!(join("/only?", Some("x=1")), Ok("/only".into()));
        assert_eq!(join("/only?q=1?", Some("x=1")), Ok("/only?q=1".into()));
        assert_eq!(join("", Some("x=1")), Ok("/?x=1".into()));
        assert!(join("users", Some("x=1")).is_err());
        assert!(join("/x#frag", None).is_err());
    }

    #[test]
    fn rewritten_paths_are_normal() {
        let rules = PathRules {
            merge_slashes: true,
            escaped_slashes: crate::http::path::EscapedSlashes::Keep,
        };
        assert_eq!(
            normal_target("/api/public/../x//y?q=/../", rules),
            Ok("/api/x/y?q=/../".into())
        );
        assert!(normal_target("/api/public/../../../admin", rules)
            .is_err_and(|e| e.contains("climbs above the root")));
    }
}

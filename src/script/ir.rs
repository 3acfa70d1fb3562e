//! The compiled form a module runs as: names resolved to slots, header names and
//! regexes built, interpolations pre-split, stdlib calls bound with their arguments in
//! signature order. Nothing here is looked up by name at request time.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use regex::Regex;

use super::ast::{BinOp, LogLevel};
use super::value::Value;
use crate::stdlib::{FnSig, Prepared};

/// A compiled expression.
#[derive(Debug)]
pub enum CExpr {
    Const(Value),
    Local(u16),
    Var(VarRef),
    Ctx(u16),
    Interp(Box<[CPart]>),
    Not(Box<CExpr>),
    Neg(Box<CExpr>),
    And(Box<CExpr>, Box<CExpr>),
    Or(Box<CExpr>, Box<CExpr>),
    Bin(BinOp, Box<CExpr>, Box<CExpr>),
    Match(Box<CExpr>, Pattern),
    Field(Box<CExpr>, usize),
    Call(Box<BoundCall>),
    List(Box<[CExpr]>),
}

/// The right side of `~`. A regex that is only a literal, anchored or not
/// (`^/admin`, `^/health$`, `beta`), is matched as the string test it means: the
/// regex engine's set-up for each search costs more than the comparison itself
/// (`$path ~ "^/admin"`: ~190 instructions fewer, and more in time, as the search
/// takes a cache from a pool). Anything with a metacharacter (`\.`, a class, a flag)
/// stays a regex.
#[derive(Debug)]
pub enum Pattern {
    /// `^text`.
    Prefix(Box<str>),
    /// `text$`.
    Suffix(Box<str>),
    /// `^text$`.
    Exact(Box<str>),
    /// `text`.
    Contains(Box<str>),
    Regex(Regex),
}

impl Pattern {
    /// The pattern of regex source `source` (already known to compile as `re`).
    pub fn new(source: &str, re: Regex) -> Self {
        let (anchored_start, rest) = match source.strip_prefix('^') {
            Some(r) => (true, r),
            None => (false, source),
        };
        let (anchored_end, text) = match rest.strip_suffix('$') {
            Some(t) => (true, t),
            None => (false, rest),
        };
        // Outside a class and without flags (which start with `(`), these are the
        // only characters the regex syntax gives a meaning; `#` and spaces only in
        // the `x` mode, which needs a flag.
        if text.contains(|c| "\\.+*?()|[]{}^$".contains(c)) {
            return Pattern::Regex(re);
        }
        let text: Box<str> = text.into();
        match (anchored_start, anchored_end) {
            (true, true) => Pattern::Exact(text),
            (true, false) => Pattern::Prefix(text),
            (false, true) => Pattern::Suffix(text),
            (false, false) => Pattern::Contains(text),
        }
    }

    /// Whether `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Prefix(t) => s.starts_with(&**t),
            Pattern::Suffix(t) => s.ends_with(&**t),
            Pattern::Exact(t) => s == &**t,
            Pattern::Contains(t) => s.contains(&**t),
            Pattern::Regex(re) => re.is_match(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shortcut answers what the regex answers.
    #[test]
    fn literal_patterns_match_as_their_regex_does() {
        let sources = [
            "^/admin",
            "/admin$",
            "^/health$",
            "beta",
            "^",
            "$",
            "^$",
            "",
            "^/a.b",
            "^/a\\.b",
            "/x\\$",
            "(?i)^/admin",
            "^/v[12]/",
            "a|b",
            "^/caf\u{e9}",
            "^ /x",
            "x#y",
        ];
        let inputs = [
            "",
            "/admin",
            "/admin/x",
            "/x/admin",
            "/health",
            "/health/",
            "beta",
            "alphabetagamma",
            "/a.b",
            "/axb",
            "/x$",
            "/ADMIN",
            "/v1/",
            "a",
            "/caf\u{e9}",
            " /x",
            "x#y",
        ];
        for source in sources {
            let re = Regex::new(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            let pattern = Pattern::new(source, re.clone());
            for input in inputs {
                assert_eq!(
                    pattern.is_match(input),
                    re.is_match(input),
                    "{source:?} on {input:?} ({pattern:?})"
                );
            }
        }
        let kind = |source: &str| match Regex::new(source) {
            Ok(re) => Pattern::new(source, re),
            Err(e) => panic!("{source}: {e}"),
        };
        assert!(matches!(kind("^/admin"), Pattern::Prefix(_)));
        assert!(matches!(kind("^/health$"), Pattern::Exact(_)));
        assert!(matches!(kind("^/a.b"), Pattern::Regex(_)));
    }
}

/// Request and response variables.
#[derive(Debug)]
pub enum VarRef {
    Method,
    Path,
    Query,
    Host,
    Scheme,
    ClientIp,
    RequestId,
    Upstream,
    Status,
    ReqHeader(HeaderName),
    ReqQuery(Box<str>),
    ReqCookie(Box<str>),
    RespHeader(HeaderName),
}

/// A piece of an interpolated string.
#[derive(Debug)]
pub enum CPart {
    Text(Box<str>),
    Expr(CExpr),
}

/// A stdlib call with its arguments matched to the signature.
#[derive(Debug)]
pub struct BoundCall {
    pub target: CallTarget,
    /// One per signature argument, defaults filled in.
    pub args: Box<[CExpr]>,
    /// A literal argument made ready at load: a regex compiled, IP ranges parsed.
    pub prepared: Option<Prepared>,
}

/// What a call calls.
#[derive(Debug)]
pub enum CallTarget {
    /// A stdlib function.
    Std(&'static FnSig),
    /// A global function of the module's own Lua chunk (`lua.NAME(...)`).
    Lua(Arc<str>),
}

/// Where `forward` sends.
#[derive(Debug)]
pub enum CForward {
    /// Known at load time.
    Index(usize),
    /// A name computed per request.
    Dynamic(CExpr),
}

/// A compiled statement; `line` is where it is, for run-time errors.
#[derive(Debug)]
pub struct CStmt {
    pub kind: CStmtKind,
    pub line: u32,
}

/// The compiled statements.
#[derive(Debug)]
pub enum CStmtKind {
    Let(u16, CExpr),
    If(Box<[(CExpr, Box<[CStmt]>)]>, Box<[CStmt]>),
    Respond {
        status: CExpr,
        body: Option<CExpr>,
        headers: Box<[(HeaderName, CExpr)]>,
    },
    Forward {
        upstream: CForward,
        timeout: Option<Duration>,
        retries: Option<u32>,
    },
    SetHeader {
        resp: bool,
        name: HeaderName,
        value: CExpr,
        append: bool,
        /// `value` made once when it is a constant that is a valid header value.
        constant: Option<http::HeaderValue>,
    },
    RemoveHeader {
        resp: bool,
        name: HeaderName,
    },
    SetPath(CExpr),
    SetQuery(CExpr),
    SetStatus(CExpr),
    SetCtx(u16, CExpr),
    Log(LogLevel, CExpr),
    Next,
    Call(BoundCall),
}

/// One compiled phase: its statements and how many local slots it needs.
#[derive(Debug)]
pub struct CPhase {
    pub body: Box<[CStmt]>,
    pub locals: usize,
}

impl CPhase {
    /// Whether this phase can run over a response whose upstream head was kept as
    /// received (see `http::RawHead`): it reads no response header and changes them
    /// only by `set`, which the client's writer honours by leaving out the received
    /// lines of a name the map has. `add` and `remove` on the response, `$resp.header`
    /// anywhere, and any call (a stdlib function or Lua may read the response) say no.
    pub fn blind_to_response_head(&self) -> bool {
        stmts_blind(&self.body)
    }
}

fn stmts_blind(stmts: &[CStmt]) -> bool {
    stmts.iter().all(|s| stmt_blind(&s.kind))
}

fn stmt_blind(kind: &CStmtKind) -> bool {
    match kind {
        CStmtKind::Let(_, e)
        | CStmtKind::SetCtx(_, e)
        | CStmtKind::Log(_, e)
        | CStmtKind::SetPath(e)
        | CStmtKind::SetQuery(e)
        | CStmtKind::SetStatus(e) => expr_blind(e),
        CStmtKind::If(branches, otherwise) => {
            branches
                .iter()
                .all(|(cond, body)| expr_blind(cond) && stmts_blind(body))
                && stmts_blind(otherwise)
        }
        CStmtKind::SetHeader {
            resp,
            value,
            append,
            ..
        } => !(*resp && *append) && expr_blind(value),
        CStmtKind::RemoveHeader { resp, .. } => !*resp,
        CStmtKind::Next => true,
        CStmtKind::Respond { .. } | CStmtKind::Forward { .. } | CStmtKind::Call(_) => false,
    }
}

fn expr_blind(e: &CExpr) -> bool {
    match e {
        CExpr::Const(_) | CExpr::Local(_) | CExpr::Ctx(_) => true,
        CExpr::Var(v) => !matches!(v, VarRef::RespHeader(_)),
        CExpr::Interp(parts) => parts.iter().all(|p| match p {
            CPart::Text(_) => true,
            CPart::Expr(e) => expr_blind(e),
        }),
        CExpr::Not(e) | CExpr::Neg(e) | CExpr::Field(e, _) | CExpr::Match(e, _) => expr_blind(e),
        CExpr::And(a, b) | CExpr::Or(a, b) | CExpr::Bin(_, a, b) => expr_blind(a) && expr_blind(b),
        CExpr::Call(_) => false,
        CExpr::List(items) => items.iter().all(expr_blind),
    }
}

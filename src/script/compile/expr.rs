//! Checking and compiling expressions and variables (calls: `call.rs`).

use std::sync::Arc;

use super::super::ast::*;
use super::super::ir::*;
use super::super::regexes;
use super::super::value::Value;
use super::{closest, Compiler};
use crate::stdlib::{self, ArgType, Returns};

/// The request variables and their types, for lookups and "did you mean".
const SIMPLE_VARS: &[&str] = &[
    "method",
    "path",
    "query",
    "host",
    "scheme",
    "client_ip",
    "request_id",
    "upstream",
    "status",
];
const ALL_VARS: &[&str] = &[
    "method",
    "path",
    "query",
    "host",
    "scheme",
    "client_ip",
    "request_id",
    "upstream",
    "status",
    "req.header",
    "req.query",
    "req.cookie",
    "resp.header",
    "ctx",
    "config",
];

impl Compiler<'_> {
    /// Compiles `e`, returning its code and static type (`Any` when unknown).
    pub(super) fn expr(&mut self, e: &Expr) -> (CExpr, Type) {
        match &e.kind {
            ExprKind::Lit(lit) => literal(lit),
            ExprKind::Interp(parts) => {
                self.in_string += 1;
                let parts = parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => CPart::Text(t.as_str().into()),
                        Part::Expr(x) => CPart::Expr(self.expr(x).0),
                    })
                    .collect();
                self.in_string -= 1;
                (CExpr::Interp(parts), Type::Str)
            }
            ExprKind::Var { path, index } => self.variable(e.span, path, index.as_deref()),
            ExprKind::Local(name) => match self.lookup_local(name) {
                Some((slot, ty)) => (CExpr::Local(slot), ty),
                None => {
                    let hint = if ALL_VARS
                        .iter()
                        .any(|v| v.split('.').next() == Some(name.as_str()))
                    {
                        format!("request variables start with `$`: `${name}`")
                    } else {
                        "declare it with `let` first".to_owned()
                    };
                    self.hint(e.span, format!("unknown name `{name}`"), hint);
                    (CExpr::Const(Value::Nil), Type::Any)
                }
            },
            ExprKind::Unary(op, inner) => {
                let (c, ty) = self.expr(inner);
                match op {
                    UnOp::Not => (CExpr::Not(Box::new(c)), Type::Bool),
                    UnOp::Neg => {
                        if !numeric(&ty) {
                            self.error(e.span, format!("cannot negate a {ty}"));
                        }
                        (CExpr::Neg(Box::new(c)), ty)
                    }
                }
            }
            ExprKind::Binary(op, l, r) => self.binary(e.span, *op, l, r),
            ExprKind::Field(inner, field) => {
                let (c, ty) = self.expr(inner);
                match ty {
                    Type::Record(name) => {
                        let sig = record_sig(name);
                        match sig.and_then(|s| s.fields.iter().position(|(f, _)| *f == field.node))
                        {
                            Some(i) => {
                                let fty = sig.map_or(Type::Any, |s| arg_type(s.fields[i].1));
                                (CExpr::Field(Box::new(c), i), fty)
                            }
                            None => {
                                let fields: Vec<&str> = sig
                                    .map(|s| s.fields.iter().map(|(f, _)| *f).collect())
                                    .unwrap_or_default();
                                self.hint(
                                    field.span,
                                    format!("unknown field `{}` of the {name} result", field.node),
                                    format!("fields: {}", fields.join(", ")),
                                );
                                (CExpr::Const(Value::Nil), Type::Any)
                            }
                        }
                    }
                    other => {
                        self.hint(
                            field.span,
                            format!("`.{}` on a {other}", field.node),
                            "fields exist only on stdlib results, like `rl.allowed`",
                        );
                        (CExpr::Const(Value::Nil), Type::Any)
                    }
                }
            }
            ExprKind::Call(call) => match self.call(call) {
                Some((bound, ty)) => (CExpr::Call(Box::new(bound)), ty),
                None => (CExpr::Const(Value::Nil), Type::Any),
            },
            ExprKind::List(items) => {
                let mut elem: Option<Type> = None;
                let items: Box<[CExpr]> = items
                    .iter()
                    .map(|i| {
                        let (c, ty) = self.expr(i);
                        elem = Some(match &elem {
                            None => ty,
                            Some(t) if *t == ty => ty,
                            Some(_) => Type::Any,
                        });
                        c
                    })
                    .collect();
                (
                    fold_list(items),
                    Type::List(Box::new(elem.unwrap_or(Type::Any))),
                )
            }
        }
    }

    fn variable(&mut self, span: Span, path: &[String], index: Option<&str>) -> (CExpr, Type) {
        let first = path.first().map(String::as_str).unwrap_or("");
        let response_only = matches!(first, "status" | "resp");
        if response_only && self.phase == PhaseKind::Request {
            self.hint(
                span,
                format!("`${}` does not exist in the request phase", path.join(".")),
                "the response is known from `on response` on",
            );
            return (CExpr::Const(Value::Nil), Type::Any);
        }
        match (path, index) {
            ([name], None) if SIMPLE_VARS.contains(&name.as_str()) => {
                let (var, ty) = match name.as_str() {
                    "method" => (VarRef::Method, Type::Str),
                    "path" => (VarRef::Path, Type::Str),
                    "query" => (VarRef::Query, Type::Str),
                    "host" => (VarRef::Host, Type::Str),
                    "scheme" => (VarRef::Scheme, Type::Str),
                    "client_ip" => (VarRef::ClientIp, Type::Str),
                    "request_id" => (VarRef::RequestId, Type::Str),
                    "upstream" => (VarRef::Upstream, Type::Any),
                    _ => (VarRef::Status, Type::Int),
                };
                (CExpr::Var(var), ty)
            }
            ([owner, kind], Some(key))
                if matches!(
                    (owner.as_str(), kind.as_str()),
                    ("req" | "resp", "header") | ("req", "query" | "cookie")
                ) =>
            {
                if owner == "req" && self.phase != PhaseKind::Request {
                    self.reads_request = true;
                }
                let var = match (owner.as_str(), kind.as_str()) {
                    ("req", "query") => VarRef::ReqQuery(key.into()),
                    ("req", "cookie") => VarRef::ReqCookie(key.into()),
                    (o, _) => match self.header_name(span, key) {
                        Some(h) if o == "req" => VarRef::ReqHeader(h),
                        Some(h) => VarRef::RespHeader(h),
                        None => return (CExpr::Const(Value::Nil), Type::Any),
                    },
                };
                // A string or nil, like `$host`: comparing one with a number or doing
                // arithmetic on it can never work, so the checker refuses it.
                (CExpr::Var(var), Type::Str)
            }
            ([root, name], None) if root == "ctx" => (CExpr::Ctx(self.ctx_slot(name)), Type::Any),
            ([root, name], None) if root == "config" => match self.config.get(name.as_str()) {
                Some((ty, value)) => (CExpr::Const(value.clone()), ty.clone()),
                None => {
                    let fields: Vec<&str> = self.config.keys().map(String::as_str).collect();
                    let hint = match closest(name, fields.iter().copied()) {
                        Some(c) => format!("did you mean `$config.{c}`?"),
                        None if fields.is_empty() => {
                            "declare it in the module's `config { }` block".to_owned()
                        }
                        None => format!("config fields: {}", fields.join(", ")),
                    };
                    self.hint(span, format!("unknown config field `{name}`"), hint);
                    (CExpr::Const(Value::Nil), Type::Any)
                }
            },
            _ => {
                let written = format!(
                    "{}{}",
                    path.join("."),
                    index.map_or(String::new(), |i| format!("[{i:?}]"))
                );
                let local = match (path, index) {
                    ([name], None) => self.lookup_local(name).map(|_| name),
                    _ => None,
                };
                let hint = match (local, closest(&path.join("."), ALL_VARS.iter().copied())) {
                    (Some(name), _) if self.in_string > 0 => {
                        format!("`{name}` is a local: write `${{{name}}}`")
                    }
                    (Some(name), _) => format!("`{name}` is a local: write `{name}`, without `$`"),
                    (None, Some(c)) => format!("did you mean `${c}`?"),
                    (None, None) => "variables: $method $path $query $host $scheme $client_ip $request_id $upstream $status $req.header[\"..\"] $req.query[\"..\"] $req.cookie[\"..\"] $resp.header[\"..\"] $ctx.NAME $config.NAME".to_owned(),
                };
                self.hint(span, format!("unknown variable `${written}`"), hint);
                (CExpr::Const(Value::Nil), Type::Any)
            }
        }
    }

    fn binary(&mut self, span: Span, op: BinOp, l: &Expr, r: &Expr) -> (CExpr, Type) {
        if op == BinOp::Match {
            let (lc, _) = self.expr(l);
            let ExprKind::Lit(Literal::Str(pattern)) = &r.kind else {
                self.hint(
                    r.span,
                    "the right side of `~` must be a string literal",
                    "the regex is compiled when the module loads",
                );
                return (CExpr::Const(Value::Bool(false)), Type::Bool);
            };
            return match regexes::compile(pattern, self.regex_budget) {
                Ok(re) => (
                    CExpr::Match(Box::new(lc), Pattern::new(pattern, re)),
                    Type::Bool,
                ),
                Err(refused) => {
                    self.hint(r.span, refused.message, refused.hint);
                    (CExpr::Const(Value::Bool(false)), Type::Bool)
                }
            };
        }
        let (lc, lt) = self.expr(l);
        let (rc, rt) = self.expr(r);
        let (lb, rb) = (Box::new(lc), Box::new(rc));
        match op {
            BinOp::And => (CExpr::And(lb, rb), Type::Bool),
            BinOp::Or => (CExpr::Or(lb, rb), Type::Bool),
            BinOp::Eq | BinOp::Ne => (CExpr::Bin(op, lb, rb), Type::Bool),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if !(comparable(&lt) && comparable(&rt)) {
                    self.error(
                        span,
                        format!("cannot compare {lt} with {rt} using `{}`", op.as_str()),
                    );
                } else if string_with_number(&lt, &rt) {
                    self.hint(
                        span,
                        format!("cannot compare {lt} with {rt} using `{}`", op.as_str()),
                        COMPARE_HINT,
                    );
                }
                (CExpr::Bin(op, lb, rb), Type::Bool)
            }
            BinOp::In => {
                if !matches!(rt, Type::List(_) | Type::Map(_) | Type::Any) {
                    self.hint(
                        r.span,
                        format!("`in` needs a list or a map on the right, found {rt}"),
                        "for substrings use `contains`",
                    );
                }
                (CExpr::Bin(op, lb, rb), Type::Bool)
            }
            BinOp::StartsWith | BinOp::EndsWith => {
                for (ty, side) in [(&lt, l), (&rt, r)] {
                    if !matches!(ty, Type::Str | Type::Any) {
                        self.error(
                            side.span,
                            format!("`{}` works on strings, found {ty}", op.as_str()),
                        );
                    }
                }
                (CExpr::Bin(op, lb, rb), Type::Bool)
            }
            BinOp::Contains => {
                if !matches!(lt, Type::Str | Type::List(_) | Type::Map(_) | Type::Any) {
                    self.error(
                        l.span,
                        format!("`contains` works on strings, lists and maps, found {lt}"),
                    );
                } else if lt == Type::Str && !matches!(rt, Type::Str | Type::Any) {
                    self.hint(
                        r.span,
                        format!("`contains` on a string looks for a string, found {rt}"),
                        "convert it with `str(...)`, or write it in quotes",
                    );
                }
                (CExpr::Bin(op, lb, rb), Type::Bool)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                let ty = match (&lt, &rt) {
                    (Type::Int, Type::Int) => Type::Int,
                    (Type::Duration, Type::Duration) if matches!(op, BinOp::Add | BinOp::Sub) => {
                        Type::Duration
                    }
                    (a, b)
                        if numeric(a)
                            && numeric(b)
                            && !matches!(a, Type::Any)
                            && !matches!(b, Type::Any) =>
                    {
                        Type::Float
                    }
                    (a, b)
                        if (numeric(a) || *a == Type::Any) && (numeric(b) || *b == Type::Any) =>
                    {
                        Type::Any
                    }
                    (a, b) => {
                        let hint = if string_with_number(a, b) {
                            ARITHMETIC_HINT
                        } else if *a == Type::Str || *b == Type::Str {
                            "join strings with interpolation: \"${a}${b}\""
                        } else {
                            "arithmetic works on numbers"
                        };
                        self.hint(
                            span,
                            format!("cannot use `{}` on {a} and {b}", op.as_str()),
                            hint,
                        );
                        Type::Any
                    }
                };
                (CExpr::Bin(op, lb, rb), ty)
            }
            BinOp::Match => (CExpr::Const(Value::Bool(false)), Type::Bool),
        }
    }
}

fn literal(lit: &Literal) -> (CExpr, Type) {
    let (v, t) = match lit {
        Literal::Nil => (Value::Nil, Type::Nil),
        Literal::Bool(b) => (Value::Bool(*b), Type::Bool),
        Literal::Int(i) => (Value::Int(*i), Type::Int),
        Literal::Float(f) => (Value::Float(*f), Type::Float),
        Literal::Str(s) => (Value::str(s.as_str()), Type::Str),
        Literal::Duration(d) => (Value::Duration(*d), Type::Duration),
        Literal::Size(s) => (Value::Size(*s), Type::Size),
    };
    (CExpr::Const(v), t)
}

/// A list of constants is itself a constant (built once, not per request).
fn fold_list(items: Box<[CExpr]>) -> CExpr {
    if items.iter().all(|i| matches!(i, CExpr::Const(_))) {
        let values: Vec<Value> = items
            .into_vec()
            .into_iter()
            .map(|i| match i {
                CExpr::Const(v) => v,
                _ => Value::Nil,
            })
            .collect();
        CExpr::Const(Value::List(Arc::from(values)))
    } else {
        CExpr::List(items)
    }
}

fn numeric(t: &Type) -> bool {
    matches!(
        t,
        Type::Int | Type::Float | Type::Duration | Type::Size | Type::Any
    )
}

fn comparable(t: &Type) -> bool {
    numeric(t) || matches!(t, Type::Str)
}

/// A string on one side and a number, duration or size on the other, both known at
/// load: such a comparison or arithmetic fails on every request.
fn string_with_number(a: &Type, b: &Type) -> bool {
    let number = |t: &Type| matches!(t, Type::Int | Type::Float | Type::Duration | Type::Size);
    (*a == Type::Str && number(b)) || (number(a) && *b == Type::Str)
}

/// The hints for a string where a number is needed.
const COMPARE_HINT: &str = "a string compares only with a string: make a number of it with `int(...)`, e.g. `int($req.header[\"x-n\"]) > 3` (headers, query parameters and cookies are strings)";
const ARITHMETIC_HINT: &str = "to compute, make a number of the string with `int(...)` (headers, query parameters and cookies are strings); to join text, interpolate: \"${a}${b}\"";

pub(super) fn arg_type(t: ArgType) -> Type {
    match t {
        ArgType::Any | ArgType::Number | ArgType::Response => Type::Any,
        ArgType::Map => Type::Map(Box::new(Type::Str)),
        ArgType::StrList => Type::List(Box::new(Type::Str)),
        ArgType::Bool => Type::Bool,
        ArgType::Int => Type::Int,
        ArgType::Str => Type::Str,
        ArgType::Duration => Type::Duration,
    }
}

fn record_sig(name: &str) -> Option<&'static stdlib::RecordSig> {
    stdlib::SIGNATURES
        .iter()
        .flat_map(|a| a.iter())
        .find_map(|s| match &s.returns {
            Returns::Record(r) if r.name == name => Some(*r),
            _ => None,
        })
}

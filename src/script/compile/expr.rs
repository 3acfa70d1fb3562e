//! Checking and compiling expressions, variables and calls.

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
                let parts = parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => CPart::Text(t.as_str().into()),
                        Part::Expr(x) => CPart::Expr(self.expr(x).0),
                    })
                    .collect();
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
                (CExpr::Var(var), Type::Any)
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
                let hint = match closest(&path.join("."), ALL_VARS.iter().copied()) {
                    Some(c) => format!("did you mean `${c}`?"),
                    None => "variables: $method $path $query $host $scheme $client_ip $request_id $upstream $status $req.header[\"..\"] $req.query[\"..\"] $req.cookie[\"..\"] $resp.header[\"..\"] $ctx.NAME $config.NAME".to_owned(),
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
                        let hint = if *a == Type::Str || *b == Type::Str {
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

    /// `lua.NAME(args)`: a global function of the module's own Lua chunk, called with
    /// positional arguments; its result is untyped.
    fn lua_call(&mut self, call: &Call, function: &str) -> Option<(BoundCall, Type)> {
        let name = call.path.node.as_str();
        let Some(functions) = self.lua_functions else {
            self.hint(
                call.path.span,
                format!("`{name}`: this module has no Lua chunk"),
                "add `lua \"file.lua\"` (or an inline `lua \"\"\"...\"\"\"`) that defines it",
            );
            return None;
        };
        if !functions.iter().any(|f| f == function) {
            let hint = match closest(function, functions.iter().map(String::as_str)) {
                Some(c) => format!("did you mean `lua.{c}`?"),
                None if functions.is_empty() => "the chunk defines no global functions".into(),
                None => format!("the chunk defines: {}", functions.join(", ")),
            };
            self.hint(
                call.path.span,
                format!("the module's Lua chunk has no global function `{function}`"),
                hint,
            );
            return None;
        }
        let mut args = Vec::with_capacity(call.args.len());
        let mut ok = true;
        for arg in &call.args {
            if let Some(n) = &arg.name {
                self.hint(
                    n.span,
                    format!("`{name}` takes positional arguments"),
                    "drop the `name:`",
                );
                ok = false;
                continue;
            }
            let (e, _) = self.expr(&arg.value);
            args.push(e);
        }
        ok.then(|| {
            (
                BoundCall {
                    target: CallTarget::Lua(Arc::from(function)),
                    args: args.into(),
                    regex: None,
                },
                Type::Any,
            )
        })
    }

    /// Checks a call against the signature table and binds it.
    pub(super) fn call(&mut self, call: &Call) -> Option<(BoundCall, Type)> {
        let name = call.path.node.as_str();
        if let Some(function) = name.strip_prefix("lua.") {
            return self.lua_call(call, function);
        }
        let sig = stdlib::lookup(name).filter(|s| !s.id.lua_only());
        if let Some(lua_only) = stdlib::lookup(name).filter(|s| s.id.lua_only()) {
            let hint = match lua_only.id {
                stdlib::StdFn::Respond => "use the `respond` statement",
                stdlib::StdFn::ProxyForward => "use the `forward` statement",
                _ => "call it from a Lua hook (`lua \"file.lua\"`)",
            };
            self.hint(
                call.path.span,
                format!("`{name}` can only be called from Lua"),
                hint,
            );
            return None;
        }
        let Some(sig) = sig else {
            let hint = match closest(name, stdlib::names()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!(
                    "functions: {}",
                    stdlib::names().collect::<Vec<_>>().join(", ")
                ),
            };
            self.hint(call.path.span, format!("unknown function `{name}`"), hint);
            return None;
        };
        if !sig.phases.contains(&self.phase) {
            let phases: Vec<&str> = sig.phases.iter().map(|p| p.as_str()).collect();
            self.hint(
                call.span,
                format!(
                    "`{name}` cannot be called in the {} phase",
                    self.phase.as_str()
                ),
                format!("it works in: {}", phases.join(", ")),
            );
        }
        if sig.id.reads_request_headers() && self.phase != PhaseKind::Request {
            self.reads_request = true;
        }
        let mut slots: Vec<Option<(&Expr, CExpr, Type)>> =
            (0..sig.args.len()).map(|_| None).collect();
        let mut ok = true;
        for (pos, arg) in call.args.iter().enumerate() {
            let index = match &arg.name {
                Some(n) => match sig.args.iter().position(|a| a.name == n.node) {
                    Some(i) => i,
                    None => {
                        let names: Vec<&str> = sig.args.iter().map(|a| a.name).collect();
                        let hint = match closest(&n.node, names.iter().copied()) {
                            Some(c) => format!("did you mean `{c}`?"),
                            None => format!("`{name}` takes: {}", names.join(", ")),
                        };
                        self.hint(
                            n.span,
                            format!("unknown argument `{}` for `{name}`", n.node),
                            hint,
                        );
                        ok = false;
                        continue;
                    }
                },
                None if pos < sig.args.len()
                    && call.args[..pos].iter().all(|a| a.name.is_none()) =>
                {
                    pos
                }
                None if call.args[..pos].iter().any(|a| a.name.is_some()) => {
                    self.hint(
                        arg.value.span,
                        format!("a positional argument after a named one in `{name}`"),
                        "name this argument too: `name: value`",
                    );
                    ok = false;
                    continue;
                }
                None => {
                    self.hint(
                        arg.value.span,
                        format!("too many arguments for `{name}`"),
                        "name the arguments: `name: value`",
                    );
                    ok = false;
                    continue;
                }
            };
            if slots[index].is_some() {
                self.error(
                    arg.value.span,
                    format!("argument `{}` given twice", sig.args[index].name),
                );
                ok = false;
                continue;
            }
            let (c, ty) = self.expr(&arg.value);
            slots[index] = Some((&arg.value, c, ty));
        }
        let mut args = Vec::with_capacity(sig.args.len());
        let mut regex = None;
        // After a misplaced or unknown argument, "missing" would only repeat it.
        let arguments_ok = ok;
        for (spec, slot) in sig.args.iter().zip(slots) {
            match slot {
                None if spec.default == stdlib::ArgDefault::Required && !arguments_ok => {}
                None if spec.default == stdlib::ArgDefault::Required => {
                    self.hint(
                        call.span,
                        format!("missing argument `{}` for `{name}`", spec.name),
                        format!("`{}`: {}", spec.name, spec.doc),
                    );
                    ok = false;
                }
                None => args.push(CExpr::Const(spec.default.value())),
                Some((expr, c, ty)) => {
                    if !accepts(spec.ty, &ty) {
                        self.error(
                            expr.span,
                            format!(
                                "argument `{}` of `{name}` must be {}, found {ty}",
                                spec.name,
                                with_article(spec.ty.name())
                            ),
                        );
                        ok = false;
                    }
                    if spec.literal && !matches!(c, CExpr::Const(_)) {
                        self.hint(
                            expr.span,
                            format!("argument `{}` of `{name}` must be a literal", spec.name),
                            "it is prepared when the module loads",
                        );
                        ok = false;
                    }
                    if let (Some(check), CExpr::Const(v), true) =
                        (spec.check, &c, accepts(spec.ty, &ty))
                    {
                        if let Err(msg) = check(v) {
                            self.error(
                                expr.span,
                                format!("argument `{}` of `{name}`: {msg}", spec.name),
                            );
                            ok = false;
                        }
                    }
                    if spec.name == "pattern" {
                        if let CExpr::Const(Value::Str(p)) = &c {
                            match regexes::compile(p, self.regex_budget) {
                                Ok(re) => regex = Some(re),
                                Err(refused) => {
                                    self.hint(expr.span, refused.message, refused.hint);
                                    ok = false;
                                }
                            }
                        }
                    }
                    args.push(c);
                }
            }
        }
        let ty = match &sig.returns {
            Returns::Nothing => Type::Nil,
            Returns::Value(t) => arg_type(*t),
            Returns::Record(r) => Type::Record(r.name),
        };
        ok.then(|| {
            (
                BoundCall {
                    target: CallTarget::Std(sig),
                    args: args.into(),
                    regex,
                },
                ty,
            )
        })
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

fn accepts(want: ArgType, got: &Type) -> bool {
    matches!(
        (want, got),
        (_, Type::Any)
            | (ArgType::Any, _)
            | (ArgType::Bool, Type::Bool)
            | (ArgType::Int, Type::Int | Type::Size)
            | (ArgType::Duration, Type::Duration)
            | (ArgType::Number, Type::Int | Type::Float)
            | (ArgType::Str, Type::Str)
            | (ArgType::Map, Type::Map(_))
    )
}

fn arg_type(t: ArgType) -> Type {
    match t {
        ArgType::Any | ArgType::Number | ArgType::Response => Type::Any,
        ArgType::Map => Type::Map(Box::new(Type::Str)),
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

/// "an int", "a string".
pub(crate) fn with_article(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word}")
}

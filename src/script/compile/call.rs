//! Checking and binding calls: stdlib functions against their signature table
//! (names, arguments, types, literal-only arguments, phases) and `lua.NAME(...)`
//! against the module's Lua chunk.

use std::sync::Arc;

use super::super::ast::*;
use super::super::ir::*;
use super::super::regexes;
use super::super::value::Value;
use super::expr::arg_type;
use super::{closest, Compiler};
use crate::stdlib::ip::Ranges;
use crate::stdlib::{self, ArgType, Prepared, Returns, StdFn};

impl Compiler<'_> {
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
                    prepared: None,
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
                StdFn::Respond => "use the `respond` statement",
                StdFn::ProxyForward => "use the `forward` statement",
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
        let mut prepared = None;
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
                    if let (Some(Prepared::Regex(re)), "replacement", CExpr::Const(Value::Str(r))) =
                        (&prepared, spec.name, &c)
                    {
                        if let Some((group, hint)) = regexes::missing_group(re, r) {
                            self.hint(
                                expr.span,
                                format!(
                                    "the replacement names group `{group}`, which the pattern does not have"
                                ),
                                hint,
                            );
                            ok = false;
                        }
                    }
                    if spec.name == "pattern" {
                        if let CExpr::Const(Value::Str(p)) = &c {
                            match regexes::compile(p, self.regex_budget) {
                                Ok(re) => prepared = Some(Prepared::Regex(Arc::new(re))),
                                Err(refused) => {
                                    self.hint(expr.span, refused.message, refused.hint);
                                    ok = false;
                                }
                            }
                        }
                    }
                    if let (StdFn::IpIn, "ranges", CExpr::Const(v), true) =
                        (sig.id, spec.name, &c, accepts(spec.ty, &ty))
                    {
                        match self.ranges(name, expr, v) {
                            Ok(r) => prepared = r.map(Prepared::Ranges),
                            Err(()) => ok = false,
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
                    prepared,
                },
                ty,
            )
        })
    }

    /// `ip_in`'s ranges known at load (`v`, written as `expr`), parsed once. A bad one
    /// is an error at the item of a literal list, or at the `$config` field the list
    /// came from; `Err` once it is reported. A value that is no list is left to the call.
    fn ranges(&mut self, name: &str, expr: &Expr, v: &Value) -> Result<Option<Ranges>, ()> {
        let Value::List(items) = v else {
            return Ok(None);
        };
        let bad = match Ranges::parse(items) {
            Ok(r) => return Ok(Some(r)),
            Err(bad) => bad,
        };
        let span = match &expr.kind {
            ExprKind::List(written) => written.get(bad.index).map_or(expr.span, |e| e.span),
            _ => expr.span,
        };
        let message = format!("argument `ranges` of `{name}`: {}", bad.message);
        match &expr.kind {
            // A value from config.toml is not where the caret is: say where it is.
            ExprKind::Var { path, .. } if path.first().is_some_and(|p| p == "config") => {
                let hint = format!(
                    "`${}` is the field's default, or its value in config.toml's `[mods.NAME]`",
                    path.join(".")
                );
                self.hint(span, message, hint);
            }
            _ => {
                self.error(span, message);
            }
        }
        Err(())
    }
}

fn accepts(want: ArgType, got: &Type) -> bool {
    if let (ArgType::StrList, Type::List(item)) = (want, got) {
        return matches!(**item, Type::Str | Type::Any);
    }
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

/// "an int", "a string".
pub(crate) fn with_article(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word}")
}

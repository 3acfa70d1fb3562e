//! Checking and compiling in one walk over the AST: every static check of the language
//! runs here and all errors are collected (not just the first); when there are none,
//! the same walk has produced the executable form ([`ir`](super::ir)).
//!
//! Statements are handled here, expressions in `compile/expr.rs`, calls in
//! `compile/call.rs`.

mod call;
mod expr;

pub(crate) use call::with_article as with_article_pub;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

use super::ast::*;
use super::diag::Diagnostic;
use super::ir::*;
use super::value::Value;

/// What a module is compiled against: the rest of the generation.
pub struct Env<'a> {
    /// Upstream names, indexed like the generation's upstream sets.
    pub upstreams: &'a [String],
    /// `$ctx.NAME` slots shared by the whole pipeline (grows as names are met).
    pub ctx_names: &'a mut Vec<Arc<str>>,
    /// Memory left for the regexes of the generation's modules.
    pub regex_budget: &'a mut super::regexes::Budget,
    /// The global functions of the module's Lua chunk (`None`: it has no chunk).
    pub lua_functions: Option<&'a [String]>,
}

/// The module's resolved config: each field's type and value (defaults merged with
/// `[mods.NAME]`).
pub type ResolvedConfig = HashMap<String, (Type, Value)>;

/// A compiled module's phases.
#[derive(Debug, Default)]
pub struct Compiled {
    pub request: Option<CPhase>,
    pub response: Option<CPhase>,
    pub log: Option<CPhase>,
    /// Whether its response or log phase reads request headers.
    pub reads_request_later: bool,
}

impl Compiled {
    /// Whether its response and log phases (if any) are blind to the response head
    /// (see [`CPhase::blind_to_response_head`]). The request phase cannot read a
    /// response; what it starts for later (`std.cache.check`) is checked per request.
    pub fn blind_to_response_head(&self) -> bool {
        [&self.response, &self.log]
            .into_iter()
            .flatten()
            .all(CPhase::blind_to_response_head)
    }
}

/// Checks and compiles the phases of `module`.
pub fn compile(
    module: &Module,
    source: &str,
    config: &ResolvedConfig,
    env: Env<'_>,
) -> Result<Compiled, Vec<Diagnostic>> {
    let mut c = Compiler {
        file: &module.file,
        source,
        config,
        upstreams: env.upstreams,
        ctx_names: env.ctx_names,
        regex_budget: env.regex_budget,
        lua_functions: env.lua_functions,
        diags: Vec::new(),
        phase: PhaseKind::Request,
        scopes: Vec::new(),
        next_slot: 0,
        max_slot: 0,
        reads_request: false,
        in_string: 0,
    };
    let mut out = Compiled::default();
    for phase in &module.phases {
        let compiled = c.phase(phase);
        match phase.kind {
            PhaseKind::Request => out.request = Some(compiled),
            PhaseKind::Response => out.response = Some(compiled),
            PhaseKind::Log => out.log = Some(compiled),
        }
    }
    out.reads_request_later = c.reads_request;
    if c.diags.is_empty() {
        Ok(out)
    } else {
        Err(c.diags)
    }
}

struct Compiler<'a> {
    file: &'a str,
    source: &'a str,
    config: &'a ResolvedConfig,
    upstreams: &'a [String],
    ctx_names: &'a mut Vec<Arc<str>>,
    regex_budget: &'a mut super::regexes::Budget,
    lua_functions: Option<&'a [String]>,
    diags: Vec<Diagnostic>,
    phase: PhaseKind,
    /// Locals in scope, innermost last: (name, slot, type).
    scopes: Vec<Vec<(String, u16, Type)>>,
    next_slot: u16,
    max_slot: u16,
    /// A response or log phase reads `$req.header/query/cookie`.
    reads_request: bool,
    /// How many interpolating strings the expression being checked is inside.
    in_string: u32,
}

impl Compiler<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::new(self.file, self.source, span, message));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    fn hint(&mut self, span: Span, message: impl Into<String>, hint: impl Into<String>) {
        let d = self.error(span, message);
        d.hint = Some(hint.into());
    }

    fn phase(&mut self, phase: &Phase) -> CPhase {
        self.phase = phase.kind;
        self.next_slot = 0;
        self.max_slot = 0;
        let body = self.block(&phase.body);
        CPhase {
            body,
            locals: usize::from(self.max_slot),
        }
    }

    fn block(&mut self, stmts: &[Stmt]) -> Box<[CStmt]> {
        self.scopes.push(Vec::new());
        let saved_slot = self.next_slot;
        let out = stmts.iter().filter_map(|s| self.stmt(s)).collect();
        self.scopes.pop();
        self.next_slot = saved_slot;
        out
    }

    fn declare(&mut self, name: &str, ty: Type) -> u16 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.max_slot = self.max_slot.max(self.next_slot);
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((name.to_owned(), slot, ty));
        }
        slot
    }

    fn lookup_local(&self, name: &str) -> Option<(u16, Type)> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _, _)| n == name)
            .map(|(_, slot, ty)| (*slot, ty.clone()))
    }

    fn ctx_slot(&mut self, name: &str) -> u16 {
        if let Some(i) = self.ctx_names.iter().position(|n| &**n == name) {
            return i as u16;
        }
        self.ctx_names.push(Arc::from(name));
        (self.ctx_names.len() - 1) as u16
    }

    fn only_in(&mut self, span: Span, what: &str, allowed: &[PhaseKind]) -> bool {
        if allowed.contains(&self.phase) {
            return true;
        }
        let names: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
        self.hint(
            span,
            format!(
                "`{what}` is not allowed in the {} phase",
                self.phase.as_str()
            ),
            format!("use it in `on {}`", names.join("` or `on ")),
        );
        false
    }

    fn header_name(&mut self, span: Span, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.hint(
                    span,
                    format!("invalid header name {name:?}"),
                    "header names are letters, digits and `-`",
                );
                None
            }
        }
    }

    /// A header value known at load: built once here, and an invalid one (a line
    /// break, say) is an error now rather than a fault on every request.
    fn constant_header_value(&mut self, span: Span, value: &CExpr) -> Option<http::HeaderValue> {
        let CExpr::Const(v) = value else { return None };
        match super::exec::header_value(v) {
            Ok(h) => Some(h),
            Err(message) => {
                self.hint(
                    span,
                    message,
                    "a header value may not hold line breaks or other control characters (a tab is fine)",
                );
                None
            }
        }
    }

    fn stmt(&mut self, stmt: &Stmt) -> Option<CStmt> {
        let line = stmt.span.line;
        let kind = match &stmt.kind {
            StmtKind::Let { name, value } => {
                let (value, ty) = self.expr(value);
                let slot = self.declare(&name.node, ty);
                CStmtKind::Let(slot, value)
            }
            StmtKind::If {
                branches,
                otherwise,
            } => {
                let branches = branches
                    .iter()
                    .map(|(cond, body)| (self.expr(cond).0, self.block(body)))
                    .collect();
                let otherwise = otherwise
                    .as_ref()
                    .map_or_else(Box::default, |b| self.block(b));
                CStmtKind::If(branches, otherwise)
            }
            StmtKind::Respond {
                status,
                body,
                headers,
            } => self.respond(stmt.span, status, body.as_ref(), headers)?,
            StmtKind::Forward { upstream, options } => {
                self.forward(stmt.span, upstream, options)?
            }
            StmtKind::Set { target, value } => self.set(target, value, false)?,
            StmtKind::Add { target, value } => self.set(target, value, true)?,
            StmtKind::Remove { target } => self.remove(target)?,
            StmtKind::Log { level, message } => CStmtKind::Log(*level, self.expr(message).0),
            StmtKind::Next => CStmtKind::Next,
            StmtKind::Call(call) => CStmtKind::Call(self.call(call)?.0),
        };
        Some(CStmt { kind, line })
    }

    fn respond(
        &mut self,
        span: Span,
        status: &Expr,
        body: Option<&Expr>,
        headers: &[(Spanned<String>, Expr)],
    ) -> Option<CStmtKind> {
        let allowed = self.only_in(span, "respond", &[PhaseKind::Request]);
        let status_c = self.status(status);
        let body = body.map(|b| self.expr(b).0);
        let mut hs = Vec::new();
        for (name, value) in headers {
            let value_c = self.expr(value).0;
            self.constant_header_value(value.span, &value_c);
            if let Some(h) = self.header_name(name.span, &name.node) {
                hs.push((h, value_c));
            }
        }
        allowed.then_some(CStmtKind::Respond {
            status: status_c,
            body,
            headers: hs.into(),
        })
    }

    /// A status expression: literals are checked for 200..=599 here.
    fn status(&mut self, status: &Expr) -> CExpr {
        if let ExprKind::Lit(Literal::Int(n)) = status.kind {
            if !(200..=599).contains(&n) {
                self.hint(
                    status.span,
                    format!("status {n} is outside 200..=599"),
                    "use an HTTP status code",
                );
            }
        }
        let (c, ty) = self.expr(status);
        if !matches!(ty, Type::Int | Type::Any) {
            self.error(status.span, format!("status must be an int, found {ty}"));
        }
        c
    }

    fn forward(
        &mut self,
        span: Span,
        upstream: &Expr,
        options: &[(Spanned<String>, Expr)],
    ) -> Option<CStmtKind> {
        let allowed = self.only_in(span, "forward", &[PhaseKind::Request]);
        let target = match &upstream.kind {
            ExprKind::Lit(Literal::Str(name)) => {
                match self.upstreams.iter().position(|u| u == name) {
                    Some(i) => CForward::Index(i),
                    None => {
                        let hint = if self.upstreams.is_empty() {
                            "config.toml declares no upstreams: add an `[upstreams.NAME]` table"
                                .to_owned()
                        } else {
                            format!("known upstreams: {}", self.upstreams.join(", "))
                        };
                        self.hint(upstream.span, format!("unknown upstream {name:?}"), hint);
                        CForward::Index(0)
                    }
                }
            }
            _ => {
                let (c, ty) = self.expr(upstream);
                if !matches!(ty, Type::Str | Type::Any) {
                    self.error(
                        upstream.span,
                        format!("forward needs an upstream name (a string), found {ty}"),
                    );
                }
                CForward::Dynamic(c)
            }
        };
        let mut timeout = None;
        let mut retries = None;
        for (name, value) in options {
            match (name.node.as_str(), &value.kind) {
                ("timeout", ExprKind::Lit(Literal::Duration(d))) => timeout = Some(*d),
                ("retries", ExprKind::Lit(Literal::Int(n))) if (0..=10).contains(n) => {
                    retries = Some(*n as u32)
                }
                ("timeout", _) => self.hint(
                    value.span,
                    "`timeout` must be a duration literal",
                    "like `timeout: 5s`",
                ),
                ("retries", _) => self.hint(
                    value.span,
                    "`retries` must be an int literal in 0..=10",
                    "like `retries: 1`",
                ),
                (other, _) => self.hint(
                    name.span,
                    format!("unknown forward option `{other}`"),
                    "options are `timeout` and `retries`",
                ),
            }
        }
        allowed.then_some(CStmtKind::Forward {
            upstream: target,
            timeout,
            retries,
        })
    }

    fn set(&mut self, target: &Spanned<Target>, value: &Expr, append: bool) -> Option<CStmtKind> {
        let span = target.span;
        let (value_c, ty) = self.expr(value);
        let verb = if append { "add" } else { "set" };
        match &target.node {
            Target::ReqHeader(name) | Target::RespHeader(name) => {
                let resp = matches!(target.node, Target::RespHeader(_));
                let phases: &[PhaseKind] = if resp {
                    &[PhaseKind::Response]
                } else {
                    &[PhaseKind::Request]
                };
                let what = if resp {
                    format!("{verb} resp.header")
                } else {
                    format!("{verb} req.header")
                };
                let ok = self.only_in(span, &what, phases);
                let h = self.header_name(span, name)?;
                let constant = self.constant_header_value(value.span, &value_c);
                ok.then_some(CStmtKind::SetHeader {
                    resp,
                    name: h,
                    value: value_c,
                    append,
                    constant,
                })
            }
            Target::Field { .. } if append => {
                self.hint(span, "`add` works on headers only", "use `set` for fields");
                None
            }
            Target::Field { root, field } => match (root.as_str(), field.as_str()) {
                ("req", "path") => self
                    .only_in(span, "set req.path", &[PhaseKind::Request])
                    .then_some(CStmtKind::SetPath(value_c)),
                ("req", "query") => self
                    .only_in(span, "set req.query", &[PhaseKind::Request])
                    .then_some(CStmtKind::SetQuery(value_c)),
                ("resp", "status") => {
                    let ok = self.only_in(span, "set resp.status", &[PhaseKind::Response]);
                    if let ExprKind::Lit(Literal::Int(n)) = value.kind {
                        if !(200..=599).contains(&n) {
                            self.hint(
                                value.span,
                                format!("status {n} is outside 200..=599"),
                                "use an HTTP status code",
                            );
                        }
                    } else if !matches!(ty, Type::Int | Type::Any) {
                        self.error(value.span, format!("status must be an int, found {ty}"));
                    }
                    ok.then_some(CStmtKind::SetStatus(value_c))
                }
                ("ctx", name) => {
                    let ok =
                        self.only_in(span, "set ctx", &[PhaseKind::Request, PhaseKind::Response]);
                    let slot = self.ctx_slot(name);
                    ok.then_some(CStmtKind::SetCtx(slot, value_c))
                }
                (root, field) => {
                    self.hint(span, format!("cannot set `{root}.{field}`"), "settable: req.header[..], resp.header[..], req.path, req.query, resp.status, ctx.NAME");
                    None
                }
            },
        }
    }

    fn remove(&mut self, target: &Spanned<Target>) -> Option<CStmtKind> {
        let span = target.span;
        match &target.node {
            Target::ReqHeader(name) | Target::RespHeader(name) => {
                let resp = matches!(target.node, Target::RespHeader(_));
                let phases: &[PhaseKind] = if resp {
                    &[PhaseKind::Response]
                } else {
                    &[PhaseKind::Request]
                };
                let ok = self.only_in(
                    span,
                    if resp {
                        "remove resp.header"
                    } else {
                        "remove req.header"
                    },
                    phases,
                );
                let h = self.header_name(span, name)?;
                ok.then_some(CStmtKind::RemoveHeader { resp, name: h })
            }
            Target::Field { .. } => {
                self.error(span, "`remove` works on headers only");
                None
            }
        }
    }
}

/// "did you mean" over `candidates`: the closest within two edits.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.min(c.len().saturating_sub(1)).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

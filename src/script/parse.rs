//! Parsing: source text -> [`ast::Module`] with pest (`grammar/pcmod.pest`). Syntax
//! errors come back as one [`Diagnostic`] whose message names what was expected in
//! words ("expected a string or `$variable`"), never grammar rule names
//! (`parse/syntax_error.rs`).

use std::sync::Arc;

use pest::iterators::Pair;
use pest::Parser as _;

use super::ast::*;
use super::diag::Diagnostic;

mod syntax_error;

use syntax_error::syntax_error;

/// Longest module accepted, in lines.
pub const MAX_LINES: usize = 10_000;
/// Deepest nesting of brackets, braces and parentheses accepted.
pub const MAX_NESTING: usize = 32;
/// Most operands in one chain of arithmetic or comparison operators (`a + b + ...`):
/// such a chain is a tree as deep as it is long, which checking and running walk
/// recursively.
pub const MAX_CHAIN: usize = 64;
/// Most operands in one chain of `and` or of `or` (`$path == "/a" or $path == "/b" or
/// ...`): such a chain is built as a balanced tree (both are associative, and the
/// operands still run left to right), so it is only `log2` of this deep.
pub const MAX_LOGIC_CHAIN: usize = 1024;
/// Most prefix operators (`not`, `-`) or `.field` accesses in a row.
pub const MAX_PREFIX: usize = 8;
/// Longest string literal accepted, in bytes.
pub const MAX_STRING: usize = 64 * 1024;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/pcmod.pest"]
struct Grammar;

/// Parses one module. `file` is only used in messages.
pub fn parse(file: &str, source: &str) -> Result<Module, Diagnostic> {
    check_limits(file, source)?;
    let mut pairs =
        Grammar::parse(Rule::file, source).map_err(|e| syntax_error(file, source, &e))?;
    let file_pair = pairs
        .next()
        .ok_or_else(|| Diagnostic::file_level(file, "empty module"))?;
    let module = file_pair
        .into_inner()
        .find(|p| p.as_rule() == Rule::module)
        .ok_or_else(|| Diagnostic::file_level(file, "no `mod NAME { ... }` in file"))?;
    let line_starts = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let b = Builder {
        file: Arc::from(file),
        source,
        line_starts,
        depth: std::cell::Cell::new(0),
    };
    b.module(module)
}

fn check_limits(file: &str, source: &str) -> Result<(), Diagnostic> {
    let lines = source.lines().count();
    if lines > MAX_LINES {
        return Err(Diagnostic::file_level(
            file,
            format!("module has {lines} lines; the limit is {MAX_LINES}"),
        )
        .with_hint("split it into several modules"));
    }
    // Checked before pest runs: its parser is recursive, and nesting is what makes it
    // deep. Brackets in comments and strings do not count.
    let mut depth = 0usize;
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let (offset, byte) = (i, bytes[i]);
        i += 1;
        match byte {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if source[offset..].starts_with("\"\"\"") => {
                i = source[offset + 3..]
                    .find("\"\"\"")
                    .map_or(bytes.len(), |end| offset + 3 + end + 3);
            }
            b'"' => {
                // Interpolations `${...}` inside strings are expressions, but they are
                // bounded by the string-size limit; skip to the closing quote.
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    let span = span_at(source, offset, offset + 1);
                    return Err(Diagnostic::new(
                        file,
                        source,
                        span,
                        format!("nesting deeper than {MAX_NESTING} levels"),
                    )
                    .with_hint("flatten the expression with `let`, or split the block"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn span_at(source: &str, start: usize, end: usize) -> Span {
    let before = &source[..start.min(source.len())];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    Span {
        start,
        end,
        line,
        col,
    }
}

/// Builds AST nodes from pest pairs.
struct Builder<'s> {
    file: Arc<str>,
    source: &'s str,
    /// Byte offset of each line's start: spans are found by binary search, not by
    /// rescanning the file for every node.
    line_starts: Vec<usize>,
    /// How deep `expr` is now: building recurses through every grammar level, and
    /// `check_limits` cannot see every nesting (inside `${...}`, say).
    depth: std::cell::Cell<usize>,
}

/// Deepest `expr` recursion while building: far above what `MAX_NESTING` levels of
/// brackets make (each level is a handful of grammar rules), far below a stack's end.
const MAX_EXPR_DEPTH: usize = 16 * MAX_NESTING;

fn is_keyword_token(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_mod
            | Rule::kw_version
            | Rule::kw_priority
            | Rule::kw_description
            | Rule::kw_lua
            | Rule::kw_config
            | Rule::kw_on
            | Rule::kw_let
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_respond
            | Rule::kw_forward
            | Rule::kw_set
            | Rule::kw_add
            | Rule::kw_remove
            | Rule::kw_log
    )
}

/// The children of a pair that carry meaning (keyword tokens dropped).
fn children(pair: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    pair.into_inner().filter(|p| !is_keyword_token(p.as_rule()))
}

impl<'s> Builder<'s> {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        let line = self
            .line_starts
            .partition_point(|&start| start <= s.start())
            .max(1);
        let line_start = self.line_starts[line - 1];
        let col = self
            .source
            .get(line_start..s.start())
            .map_or(0, |t| t.chars().count())
            + 1;
        Span {
            start: s.start(),
            end: s.end(),
            line: line as u32,
            col: col as u32,
        }
    }

    fn err(&self, pair: &Pair<'_, Rule>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.file, self.source, self.span(pair), message)
    }

    fn spanned_str(&self, pair: &Pair<'_, Rule>) -> Spanned<String> {
        Spanned {
            node: pair.as_str().to_owned(),
            span: self.span(pair),
        }
    }

    fn module(&self, pair: Pair<'_, Rule>) -> Result<Module, Diagnostic> {
        let mut it = children(pair);
        let name = it
            .next()
            .map(|p| self.spanned_str(&p))
            .ok_or_else(|| Diagnostic::file_level(&self.file, "module has no name"))?;
        let mut m = Module {
            file: Arc::clone(&self.file),
            name,
            version: None,
            priority: None,
            description: None,
            config: Vec::new(),
            phases: Vec::new(),
            lua: None,
        };
        for item in it {
            self.item(&mut m, item)?;
        }
        Ok(m)
    }

    fn item(&self, m: &mut Module, item: Pair<'_, Rule>) -> Result<(), Diagnostic> {
        let span = self.span(&item);
        let twice = |what: &str| {
            Err(self
                .err(&item, format!("`{what}` is given twice"))
                .with_hint("keep one"))
        };
        match item.as_rule() {
            Rule::version_item if m.version.is_some() => return twice("version"),
            Rule::description_item if m.description.is_some() => return twice("description"),
            Rule::priority_item if m.priority.is_some() => return twice("priority"),
            Rule::lua_item if m.lua.is_some() => return twice("lua"),
            Rule::version_item => m.version = Some(self.plain_string(first(item)?)?),
            Rule::description_item => m.description = Some(self.plain_string(first(item)?)?),
            Rule::priority_item => {
                let p = first(item)?;
                let n = p
                    .as_str()
                    .parse::<i64>()
                    .map_err(|_| self.err(&p, "priority is not a number"))?;
                m.priority = Some(Spanned {
                    node: n,
                    span: self.span(&p),
                });
            }
            Rule::config_block => {
                for field in children(item) {
                    m.config.push(self.config_field(field)?);
                }
            }
            Rule::phase => m.phases.push(self.phase(item)?),
            Rule::lua_item => {
                let p = first(item)?;
                let source = if p.as_rule() == Rule::raw_string {
                    LuaSource::Inline(raw_text(&p))
                } else {
                    LuaSource::File(self.plain_string(p)?.node)
                };
                m.lua = Some(Spanned { node: source, span });
            }
            _ => return Err(self.err(&item, "unexpected item in module")),
        }
        Ok(())
    }

    fn config_field(&self, pair: Pair<'_, Rule>) -> Result<ConfigField, Diagnostic> {
        let mut it = children(pair);
        let name = next(&mut it).map(|p| self.spanned_str(&p))?;
        let ty_pair = next(&mut it)?;
        // `<` appears in a type only as a bracket: `check_limits` cannot count it (it
        // is also less-than), so types are bounded here.
        if ty_pair.as_str().matches('<').count() > MAX_NESTING {
            return Err(self.err(
                &ty_pair,
                format!("nesting deeper than {MAX_NESTING} levels"),
            ));
        }
        let ty = Spanned {
            node: type_of(ty_pair.clone()),
            span: self.span(&ty_pair),
        };
        let default = self.expr(next(&mut it)?)?;
        Ok(ConfigField { name, ty, default })
    }

    fn phase(&self, pair: Pair<'_, Rule>) -> Result<Phase, Diagnostic> {
        let span = self.span(&pair);
        let mut it = children(pair);
        let kind = match next(&mut it)?.as_str() {
            "request" => PhaseKind::Request,
            "response" => PhaseKind::Response,
            _ => PhaseKind::Log,
        };
        let body = self.block(next(&mut it)?)?;
        Ok(Phase { kind, body, span })
    }

    fn block(&self, pair: Pair<'_, Rule>) -> Result<Vec<Stmt>, Diagnostic> {
        children(pair).map(|p| self.stmt(p)).collect()
    }

    fn stmt(&self, pair: Pair<'_, Rule>) -> Result<Stmt, Diagnostic> {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let kind = match rule {
            Rule::next_stmt => StmtKind::Next,
            Rule::call_stmt => StmtKind::Call(self.call(first(pair)?)?),
            Rule::let_stmt => {
                let mut it = children(pair);
                let name = self.spanned_str(&next(&mut it)?);
                StmtKind::Let {
                    name,
                    value: self.expr(next(&mut it)?)?,
                }
            }
            Rule::if_stmt => self.if_stmt(pair)?,
            Rule::respond_stmt => self.respond(pair)?,
            Rule::forward_stmt => {
                let mut it = children(pair);
                let upstream = self.expr(next(&mut it)?)?;
                let options = match it.next() {
                    Some(map) => children(map)
                        .map(|p| self.option_pair(p))
                        .collect::<Result<_, _>>()?,
                    None => Vec::new(),
                };
                StmtKind::Forward { upstream, options }
            }
            Rule::set_stmt | Rule::add_stmt => {
                let mut it = children(pair);
                let target = self.target(next(&mut it)?)?;
                let value = self.expr(next(&mut it)?)?;
                if rule == Rule::set_stmt {
                    StmtKind::Set { target, value }
                } else {
                    StmtKind::Add { target, value }
                }
            }
            Rule::remove_stmt => StmtKind::Remove {
                target: self.target(first(pair)?)?,
            },
            Rule::log_stmt => {
                let mut it = children(pair);
                let level = match next(&mut it)?.as_str() {
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warn" => LogLevel::Warn,
                    _ => LogLevel::Error,
                };
                StmtKind::Log {
                    level,
                    message: self.expr(next(&mut it)?)?,
                }
            }
            _ => return Err(self.err(&pair, "unexpected statement")),
        };
        Ok(Stmt { kind, span })
    }

    fn if_stmt(&self, pair: Pair<'_, Rule>) -> Result<StmtKind, Diagnostic> {
        let mut branches = Vec::new();
        let mut otherwise = None;
        let mut it = children(pair).peekable();
        while let Some(p) = it.next() {
            if p.as_rule() == Rule::else_block {
                otherwise = Some(self.block(first(p)?)?);
                break;
            }
            let cond = self.expr(p)?;
            let body = self.block(next(&mut it)?)?;
            branches.push((cond, body));
        }
        Ok(StmtKind::If {
            branches,
            otherwise,
        })
    }

    fn respond(&self, pair: Pair<'_, Rule>) -> Result<StmtKind, Diagnostic> {
        let line = self.span(&pair).line;
        let mut status = None;
        let mut body = None;
        let mut headers = Vec::new();
        for p in children(pair) {
            match p.as_rule() {
                Rule::header_map => {
                    for hp in children(p) {
                        let mut it = children(hp);
                        let name_pair = next(&mut it)?;
                        let name = self.plain_string(name_pair)?;
                        headers.push((name, self.expr(next(&mut it)?)?));
                    }
                }
                _ if status.is_none() => status = Some(self.expr(p)?),
                _ => {
                    let e = self.expr(p)?;
                    if e.span.line != line {
                        // Otherwise a call on the next line silently becomes the body.
                        return Err(Diagnostic::new(&self.file, self.source, e.span, "the body of `respond` must start on the same line as `respond`")
                            .with_hint("a statement after `respond` never runs; to send a body, put it after the status"));
                    }
                    body = Some(e);
                }
            }
        }
        let status =
            status.ok_or_else(|| Diagnostic::file_level(&self.file, "respond without a status"))?;
        Ok(StmtKind::Respond {
            status,
            body,
            headers,
        })
    }

    fn option_pair(&self, pair: Pair<'_, Rule>) -> Result<(Spanned<String>, Expr), Diagnostic> {
        let mut it = children(pair);
        let name = self.spanned_str(&next(&mut it)?);
        Ok((name, self.expr(next(&mut it)?)?))
    }

    fn target(&self, pair: Pair<'_, Rule>) -> Result<Spanned<Target>, Diagnostic> {
        let span = self.span(&pair);
        let inner = if pair.as_rule() == Rule::target {
            first(pair)?
        } else {
            pair
        };
        let node = match inner.as_rule() {
            Rule::header_target => {
                let mut it = children(inner);
                let owner = next(&mut it)?.as_str().to_owned();
                let name = self.plain_string(next(&mut it)?)?.node;
                if owner == "req" {
                    Target::ReqHeader(name)
                } else {
                    Target::RespHeader(name)
                }
            }
            _ => {
                let mut it = children(inner);
                let root = next(&mut it)?.as_str().to_owned();
                let field = next(&mut it)?.as_str().to_owned();
                Target::Field { root, field }
            }
        };
        Ok(Spanned { node, span })
    }

    fn call(&self, pair: Pair<'_, Rule>) -> Result<Call, Diagnostic> {
        let span = self.span(&pair);
        let mut it = children(pair);
        let path = self.spanned_str(&next(&mut it)?);
        let mut args = Vec::new();
        for arg in it {
            let parts: Vec<_> = children(arg).collect();
            match parts.as_slice() {
                [name, value] => args.push(Arg {
                    name: Some(self.spanned_str(name)),
                    value: self.expr(value.clone())?,
                }),
                [value] => args.push(Arg {
                    name: None,
                    value: self.expr(value.clone())?,
                }),
                _ => return Err(Diagnostic::file_level(&self.file, "malformed argument")),
            }
        }
        Ok(Call { path, args, span })
    }

    fn expr(&self, pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
        let depth = self.depth.get() + 1;
        if depth > MAX_EXPR_DEPTH {
            return Err(self
                .err(&pair, format!("nesting deeper than {MAX_NESTING} levels"))
                .with_hint("flatten the expression with `let`, or split the block"));
        }
        self.depth.set(depth);
        let built = self.expr_at(pair);
        self.depth.set(depth - 1);
        built
    }

    fn expr_at(&self, pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::expr => self.expr(first(pair)?),
            Rule::or_expr | Rule::and_expr | Rule::add_expr | Rule::mul_expr | Rule::cmp_expr => {
                self.binary_chain(pair)
            }
            Rule::not_expr | Rule::neg_expr => {
                let parts: Vec<_> = children(pair.clone()).collect();
                if parts.len() > MAX_PREFIX + 1 {
                    return Err(self.err(
                        &pair,
                        format!("more than {MAX_PREFIX} prefix operators in a row"),
                    ));
                }
                let (ops, operand) = parts.split_at(parts.len().saturating_sub(1));
                let mut e = self.expr(
                    operand
                        .first()
                        .cloned()
                        .ok_or_else(|| Diagnostic::file_level(&self.file, "missing operand"))?,
                )?;
                for op in ops.iter().rev() {
                    let op_kind = if op.as_rule() == Rule::not_op {
                        UnOp::Not
                    } else {
                        UnOp::Neg
                    };
                    e = Expr {
                        kind: ExprKind::Unary(op_kind, Box::new(e)),
                        span,
                    };
                }
                Ok(e)
            }
            Rule::postfix => {
                if pair.clone().into_inner().count() > MAX_PREFIX + 1 {
                    return Err(self.err(
                        &pair,
                        format!("more than {MAX_PREFIX} `.field` accesses in a row"),
                    ));
                }
                let mut it = children(pair);
                let mut e = self.expr(next(&mut it)?)?;
                for field in it {
                    e = Expr {
                        kind: ExprKind::Field(Box::new(e), self.spanned_str(&field)),
                        span,
                    };
                }
                Ok(e)
            }
            Rule::call => Ok(Expr {
                kind: ExprKind::Call(self.call(pair)?),
                span,
            }),
            Rule::variable => self.variable(pair),
            Rule::name => Ok(Expr {
                kind: ExprKind::Local(pair.as_str().to_owned()),
                span,
            }),
            Rule::list => {
                let items = children(pair)
                    .map(|p| self.expr(p))
                    .collect::<Result<_, _>>()?;
                Ok(Expr {
                    kind: ExprKind::List(items),
                    span,
                })
            }
            Rule::string => self.string(pair),
            Rule::raw_string => {
                if pair.as_str().len() > MAX_STRING + 6 {
                    return Err(self.err(&pair, format!("string longer than {MAX_STRING} bytes")));
                }
                Ok(Expr {
                    kind: ExprKind::Lit(Literal::Str(raw_text(&pair))),
                    span,
                })
            }
            _ => Ok(Expr {
                kind: ExprKind::Lit(self.literal(&pair)?),
                span,
            }),
        }
    }

    fn binary_chain(&self, pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
        let logic = matches!(pair.as_rule(), Rule::or_expr | Rule::and_expr);
        // Arithmetic and comparison chains become left-deep trees that checking and
        // running walk recursively: bound them so no input can exhaust a stack. `and`
        // and `or` chains are balanced (below), so they may be much longer.
        let limit = if logic { MAX_LOGIC_CHAIN } else { MAX_CHAIN };
        if pair.clone().into_inner().count() > 2 * limit {
            let message = if logic {
                let op = if pair.as_rule() == Rule::or_expr {
                    "or"
                } else {
                    "and"
                };
                format!("more than {limit} operands joined by `{op}`")
            } else {
                format!("more than {limit} operands in one expression")
            };
            return Err(self.err(&pair, message).with_hint("split it with `let`"));
        }
        let mut it = children(pair);
        let mut left = self.expr(next(&mut it)?)?;
        if logic {
            let mut operands = vec![left];
            let mut op = BinOp::Or;
            while let Some(o) = it.next() {
                op = bin_op(o.as_str());
                operands.push(self.expr(next(&mut it)?)?);
            }
            return Ok(balanced(op, operands));
        }
        while let Some(op) = it.next() {
            let right = self.expr(next(&mut it)?)?;
            let op = bin_op(op.as_str());
            let span = Span {
                end: right.span.end,
                ..left.span
            };
            left = Expr {
                kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn variable(&self, pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
        let span = self.span(&pair);
        let var_path = first(pair)?;
        let mut path = Vec::new();
        let mut index = None;
        let text = var_path.as_str();
        let mut it = var_path.into_inner();
        let idx = it.find(|p| p.as_rule() == Rule::var_index);
        let names_end = idx
            .as_ref()
            .map_or(text.len(), |p| p.as_span().start() - span.start - 1);
        for part in text[..names_end.min(text.len())].split('.') {
            path.push(part.to_owned());
        }
        if let Some(idx) = idx {
            index = Some(self.plain_string(first(idx)?)?.node);
        }
        Ok(Expr {
            kind: ExprKind::Var { path, index },
            span,
        })
    }

    fn string(&self, pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
        let span = self.span(&pair);
        if pair.as_str().len() > MAX_STRING + 2 {
            return Err(self.err(&pair, format!("string longer than {MAX_STRING} bytes")));
        }
        let mut parts: Vec<Part> = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::string_text => push_text(&mut parts, p.as_str()),
                Rule::escape => push_text(&mut parts, unescape(p.as_str())),
                Rule::interp_expr => parts.push(Part::Expr(self.expr(first(p)?)?)),
                Rule::interp_var => {
                    let var_span = self.span(&p);
                    let mut e = self.variable(p)?;
                    e.span = var_span;
                    parts.push(Part::Expr(e));
                }
                _ => {}
            }
        }
        let kind = match parts.as_slice() {
            [] => ExprKind::Lit(Literal::Str(String::new())),
            [Part::Text(t)] => ExprKind::Lit(Literal::Str(t.clone())),
            _ => ExprKind::Interp(parts),
        };
        Ok(Expr { kind, span })
    }

    /// A string that must not interpolate (header names, versions, Lua file names).
    fn plain_string(&self, pair: Pair<'_, Rule>) -> Result<Spanned<String>, Diagnostic> {
        let span = self.span(&pair);
        match self.string(pair.clone())?.kind {
            ExprKind::Lit(Literal::Str(s)) => Ok(Spanned { node: s, span }),
            _ => Err(self
                .err(&pair, "interpolation is not allowed here")
                .with_hint("use a plain string")),
        }
    }

    fn literal(&self, pair: &Pair<'_, Rule>) -> Result<Literal, Diagnostic> {
        let text = pair.as_str();
        Ok(match pair.as_rule() {
            Rule::nil => Literal::Nil,
            Rule::boolean => Literal::Bool(text == "true"),
            Rule::int => Literal::Int(
                text.parse()
                    .map_err(|_| self.err(pair, "integer out of range"))?,
            ),
            Rule::float => Literal::Float(text.parse().map_err(|_| self.err(pair, "bad number"))?),
            Rule::duration => Literal::Duration(
                crate::config::parse_duration(text).map_err(|e| self.err(pair, e))?,
            ),
            Rule::size => {
                Literal::Size(crate::config::parse_size(text).map_err(|e| self.err(pair, e))?)
            }
            _ => return Err(self.err(pair, "unexpected expression")),
        })
    }
}

/// `a op b op c ...` for an associative `op` (`and`, `or`) as a balanced tree: the
/// operands keep their order (and so their left-to-right, stop-early evaluation), and
/// the tree is `log2(n)` deep rather than `n`.
fn balanced(op: BinOp, mut operands: Vec<Expr>) -> Expr {
    if operands.len() <= 1 {
        // Never empty: a chain has a first operand.
        return operands.pop().unwrap_or(Expr {
            kind: ExprKind::Lit(Literal::Nil),
            span: Span::default(),
        });
    }
    let right = operands.split_off(operands.len() / 2);
    let (left, right) = (balanced(op, operands), balanced(op, right));
    let span = Span {
        end: right.span.end,
        ..left.span
    };
    Expr {
        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
        span,
    }
}

fn first(pair: Pair<'_, Rule>) -> Result<Pair<'_, Rule>, Diagnostic> {
    let text = pair.as_str().to_owned();
    children(pair)
        .next()
        .ok_or_else(|| Diagnostic::file_level("", format!("incomplete syntax near `{text}`")))
}

fn next<'a>(it: &mut impl Iterator<Item = Pair<'a, Rule>>) -> Result<Pair<'a, Rule>, Diagnostic> {
    it.next()
        .ok_or_else(|| Diagnostic::file_level("", "incomplete syntax"))
}

fn raw_text(pair: &Pair<'_, Rule>) -> String {
    let s = pair.as_str();
    s.get(3..s.len().saturating_sub(3)).unwrap_or("").to_owned()
}

fn push_text(parts: &mut Vec<Part>, text: &str) {
    if let Some(Part::Text(t)) = parts.last_mut() {
        t.push_str(text);
    } else {
        parts.push(Part::Text(text.to_owned()));
    }
}

fn unescape(esc: &str) -> &'static str {
    match esc {
        "\\n" => "\n",
        "\\t" => "\t",
        "\\r" => "\r",
        "\\0" => "\0",
        "\\\"" => "\"",
        "\\$" => "$",
        _ => "\\",
    }
}

fn bin_op(op: &str) -> BinOp {
    match op {
        "or" => BinOp::Or,
        "and" => BinOp::And,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "in" => BinOp::In,
        "~" => BinOp::Match,
        "starts_with" => BinOp::StartsWith,
        "ends_with" => BinOp::EndsWith,
        "contains" => BinOp::Contains,
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        _ => BinOp::Rem,
    }
}

fn type_of(pair: Pair<'_, Rule>) -> Type {
    let inner = match pair.as_rule() {
        Rule::type_name => match pair.into_inner().next() {
            Some(p) => p,
            None => return Type::Any,
        },
        _ => pair,
    };
    match inner.as_rule() {
        Rule::list_type => Type::List(Box::new(
            inner.into_inner().next().map_or(Type::Any, type_of),
        )),
        Rule::map_type => Type::Map(Box::new(
            inner.into_inner().next().map_or(Type::Any, type_of),
        )),
        _ => match inner.as_str() {
            "bool" => Type::Bool,
            "int" => Type::Int,
            "float" => Type::Float,
            "string" => Type::Str,
            "duration" => Type::Duration,
            _ => Type::Size,
        },
    }
}

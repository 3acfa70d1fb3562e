//! The typed AST of a `.pcmod` file. Every node carries its [`Span`] so the checker can
//! point at the exact text of any error.

use std::sync::Arc;

/// A region of one source file: byte range plus 1-based line and column of its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub col: u32,
}

/// A value with the span it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

/// One parsed `.pcmod` file.
#[derive(Debug, Clone)]
pub struct Module {
    /// The file (as given to the parser, for messages).
    pub file: Arc<str>,
    pub name: Spanned<String>,
    pub version: Option<Spanned<String>>,
    pub priority: Option<Spanned<i64>>,
    pub description: Option<Spanned<String>>,
    pub config: Vec<ConfigField>,
    pub phases: Vec<Phase>,
    pub lua: Option<Spanned<LuaSource>>,
}

/// Where a module's Lua chunk is.
#[derive(Debug, Clone, PartialEq)]
pub enum LuaSource {
    File(String),
    Inline(String),
}

/// `name: type = default` in a `config {}` block.
#[derive(Debug, Clone)]
pub struct ConfigField {
    pub name: Spanned<String>,
    pub ty: Spanned<Type>,
    pub default: Expr,
}

/// The types of the language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Duration,
    Size,
    List(Box<Type>),
    Map(Box<Type>),
    /// A record returned by a stdlib call (its fields are in the signature table).
    Record(&'static str),
    /// Not known until run time (`$ctx.*`, headers may be nil).
    Any,
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Type::Nil => f.write_str("nil"),
            Type::Bool => f.write_str("bool"),
            Type::Int => f.write_str("int"),
            Type::Float => f.write_str("float"),
            Type::Str => f.write_str("string"),
            Type::Duration => f.write_str("duration"),
            Type::Size => f.write_str("size"),
            Type::List(t) => write!(f, "list<{t}>"),
            Type::Map(t) => write!(f, "map<{t}>"),
            Type::Record(name) => write!(f, "{name} result"),
            Type::Any => f.write_str("any"),
        }
    }
}

/// `on request|response|log { ... }`.
#[derive(Debug, Clone)]
pub struct Phase {
    pub kind: PhaseKind,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// The three phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseKind {
    Request,
    Response,
    Log,
}

impl PhaseKind {
    /// The keyword after `on`.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Request => "request",
            PhaseKind::Response => "response",
            PhaseKind::Log => "log",
        }
    }
}

/// A statement.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

/// The statements of the language.
#[derive(Debug, Clone)]
pub enum StmtKind {
    Let {
        name: Spanned<String>,
        value: Expr,
    },
    If {
        branches: Vec<(Expr, Vec<Stmt>)>,
        otherwise: Option<Vec<Stmt>>,
    },
    Respond {
        status: Expr,
        body: Option<Expr>,
        headers: Vec<(Spanned<String>, Expr)>,
    },
    Forward {
        upstream: Expr,
        options: Vec<(Spanned<String>, Expr)>,
    },
    Set {
        target: Spanned<Target>,
        value: Expr,
    },
    Add {
        target: Spanned<Target>,
        value: Expr,
    },
    Remove {
        target: Spanned<Target>,
    },
    Log {
        level: LogLevel,
        message: Expr,
    },
    Next,
    Call(Call),
}

/// What `set`, `add` and `remove` change.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    ReqHeader(String),
    RespHeader(String),
    /// `req.FIELD`, `resp.FIELD` or `ctx.FIELD` (checked by the checker).
    Field {
        root: String,
        field: String,
    },
}

/// `log` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// An expression.
#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// The expressions of the language.
#[derive(Debug, Clone)]
pub enum ExprKind {
    Lit(Literal),
    /// A string with interpolations.
    Interp(Vec<Part>),
    /// `$name.path["index"]`, resolved by the checker.
    Var {
        path: Vec<String>,
        index: Option<String>,
    },
    /// A `let` binding.
    Local(String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Field(Box<Expr>, Spanned<String>),
    Call(Call),
    List(Vec<Expr>),
}

/// A piece of an interpolated string.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Duration(std::time::Duration),
    Size(u64),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Match,
    StartsWith,
    EndsWith,
    Contains,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::Match => "~",
            BinOp::StartsWith => "starts_with",
            BinOp::EndsWith => "ends_with",
            BinOp::Contains => "contains",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// A call: `std.rate_limit(key: k)`, `len(x)`, `lua.fn(a)`.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: Spanned<String>,
    pub args: Vec<Arg>,
    pub span: Span,
}

/// One argument; named (`key: expr`) or positional.
#[derive(Debug, Clone)]
pub struct Arg {
    pub name: Option<Spanned<String>>,
    pub value: Expr,
}

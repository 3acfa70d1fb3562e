//! The compiled form a module runs as: names resolved to slots, header names and
//! regexes built, interpolations pre-split, stdlib calls bound with their arguments in
//! signature order. Nothing here is looked up by name at request time.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use regex::Regex;

use super::ast::{BinOp, LogLevel};
use super::value::Value;
use crate::stdlib::FnSig;

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
    Match(Box<CExpr>, Arc<Regex>),
    Field(Box<CExpr>, usize),
    Call(Box<BoundCall>),
    List(Box<[CExpr]>),
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
    /// A literal regex argument, compiled at load.
    pub regex: Option<Regex>,
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

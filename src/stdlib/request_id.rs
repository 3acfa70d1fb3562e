//! `std.request_id.inject(header?)`: sends the request's id upstream and back to the
//! client. The id itself is chosen when the request arrives: a valid incoming
//! `x-request-id` is kept (1..=128 of `[A-Za-z0-9._:-]`), anything else is replaced by a
//! fresh UUIDv7 — see `http::request_id`.

use http::HeaderName;

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn};
use crate::script::ast::PhaseKind;
use crate::script::value::Value;

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[FnSig {
    name: "std.request_id.inject",
    id: StdFn::RequestIdInject,
    args: &[ArgSig {
        name: "header",
        ty: ArgType::Str,
        default: ArgDefault::Str("x-request-id"),
        literal: true,
        check: Some(super::valid_header_name),
        doc: "the header to carry the id",
    }],
    returns: Returns::Value(ArgType::Str),
    phases: &[PhaseKind::Request],
    doc: "Sets the request id on the upstream request and on the response; returns it.",
}];

/// `std.request_id.inject(header?)`.
pub fn inject(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    set(args, ex)?;
    Ok(Value::str(ex.info.id.as_str()))
}

/// What `inject` does, without making its result.
pub fn set(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<(), StdError> {
    let name = match args.first() {
        Some(Value::Str(s)) if &**s == crate::http::request_id::HEADER => {
            crate::http::request_id::HEADER_NAME
        }
        Some(Value::Str(s)) => HeaderName::from_bytes(s.as_bytes()).map_err(|_| StdError {
            function: "std.request_id.inject",
            message: format!("invalid header name {s:?}"),
        })?,
        _ => crate::http::request_id::HEADER_NAME,
    };
    let value = ex.info.id.header_value().clone();
    ex.req.headers.insert(name.clone(), value.clone());
    ex.response_headers.push((name, value));
    Ok(())
}

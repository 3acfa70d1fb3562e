//! `std.compress.check` and `std.compress.apply`: response compression (gzip, brotli,
//! zstd) chosen by the request's `Accept-Encoding` q-values.
//!
//! Owns the negotiation, the rules for which responses are worth compressing, the
//! header changes compression implies (`Content-Encoding`, no `Content-Length`,
//! `Vary: Accept-Encoding`, a weak `ETag`) and the streaming encoder body: the
//! response body is read and compressed frame by frame as the client reads it, never
//! buffered whole. Must not touch: anything but the response it is given.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn};
use crate::http::body::{BoxError, ProxyBody};
use crate::script::ast::PhaseKind;
use crate::script::value::Value;

/// Bodies smaller than this are not compressed unless `min_size` says otherwise:
/// below about a kilobyte the encoding overhead eats most of the gain.
pub const DEFAULT_MIN_SIZE: i64 = 1024;

/// The algorithms offered when a call names none, best first (ties in the client's
/// q-values go to the earlier one).
pub const DEFAULT_ALGORITHMS: &str = "br,zstd,gzip";

/// Brotli's own default (11) is meant for static files and is far too slow per
/// request; 4 compresses better than gzip's default at about its speed.
const BROTLI_QUALITY: i32 = 4;

/// How much compressed output one body frame carries at most.
const FRAME: usize = 16 * 1024;

const ALGORITHMS_ARG: ArgSig = ArgSig {
    name: "algorithms",
    ty: ArgType::Str,
    default: ArgDefault::Str(DEFAULT_ALGORITHMS),
    literal: false,
    check: Some(check_algorithms),
    doc: "the encodings offered, comma-separated, best first: `br`, `zstd`, `gzip`",
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.compress.check",
        id: StdFn::CompressCheck,
        args: &[ALGORITHMS_ARG],
        returns: Returns::Value(ArgType::Any),
        phases: &[PhaseKind::Request, PhaseKind::Response],
        doc: "The encoding the client accepts best among `algorithms` (`\"br\"`, `\"zstd\"`, `\"gzip\"`), or nil.",
    },
    FnSig {
        name: "std.compress.apply",
        id: StdFn::CompressApply,
        args: &[
            ArgSig {
                name: "min_size",
                ty: ArgType::Int,
                default: ArgDefault::Int(DEFAULT_MIN_SIZE),
                literal: false,
                check: Some(check_min_size),
                doc: "smallest body compressed, in bytes (a size like `1KiB` in pcmod)",
            },
            ALGORITHMS_ARG,
        ],
        returns: Returns::Value(ArgType::Bool),
        phases: &[PhaseKind::Response],
        doc: "Compresses the response body while it streams, when the client accepts one of `algorithms` and the response is worth it (a compressible type, not already encoded, not under `min_size`); returns whether it did.",
    },
];

/// A content coding this module can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    fn parse(token: &str) -> Option<Coding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// `algorithms` as codings, in order; `Err` names what is wrong.
pub fn parse_algorithms(list: &str) -> Result<Vec<Coding>, String> {
    let mut out = Vec::new();
    for token in list.split(',').filter(|t| !t.trim().is_empty()) {
        let coding = Coding::parse(token).ok_or_else(|| {
            format!(
                "unknown encoding {:?} (known: br, zstd, gzip)",
                token.trim()
            )
        })?;
        if !out.contains(&coding) {
            out.push(coding);
        }
    }
    if out.is_empty() {
        return Err("names no encoding (known: br, zstd, gzip)".into());
    }
    Ok(out)
}

fn check_algorithms(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) => parse_algorithms(s).map(|_| ()),
        None => Err(format!("must be a string like \"br,gzip\", not {v}")),
    }
}

fn check_min_size(v: &Value) -> Result<(), String> {
    size_bytes(v)
        .map(|_| ())
        .ok_or_else(|| format!("must be a size or a number of bytes >= 0, not {v}"))
}

fn size_bytes(v: &Value) -> Option<u64> {
    match v {
        Value::Size(n) => Some(*n),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

// ---- negotiation ------------------------------------------------------------------------

/// The coding among `offered` the client prefers, from its `Accept-Encoding` values.
///
/// q-values count in thousandths; `q=0` (or a coding absent when there is no `*`)
/// refuses a coding; `*` stands for every coding not named; ties go to the earlier
/// entry of `offered`. An explicit `identity` with a higher q than the best coding
/// means the client would rather have the body as it is. A missing or empty header
/// accepts nothing. Entries with a malformed q-value are ignored.
pub fn negotiate<'a>(
    accept_encoding: impl IntoIterator<Item = &'a str>,
    offered: &[Coding],
) -> Option<Coding> {
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star = None;
    let mut identity = None;
    for item in accept_encoding.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if token.is_empty() {
            continue;
        }
        let Some(q) = qvalue(parts) else { continue };
        let slot = match token.as_str() {
            "*" => &mut star,
            "identity" => &mut identity,
            "x-gzip" => &mut named[Coding::Gzip as usize],
            other => match Coding::parse(other) {
                Some(c) => &mut named[c as usize],
                None => continue,
            },
        };
        *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
    }
    let mut best: Option<(Coding, u16)> = None;
    for &coding in offered {
        let q = named[coding as usize].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    let (coding, q) = best?;
    match identity {
        Some(iq) if iq > q => None,
        _ => Some(coding),
    }
}

/// The `q` parameter in thousandths (1000 when absent); `None` when malformed.
fn qvalue<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    for p in params {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (int, frac) = value.split_once('.').unwrap_or((value, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        return match int {
            "0" => Some(thousandths),
            "1" if thousandths == 0 => Some(1000),
            _ => None,
        };
    }
    Some(1000)
}

/// The `Accept-Encoding` values of `headers`, as text.
fn accept_encoding(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

// ---- what is worth compressing ------------------------------------------------------------

/// Whether a body of this `Content-Type` compresses well: text (but not event
/// streams, which must reach the client event by event), JSON, XML, JavaScript, SVG and
/// a few uncompressed binary formats. Images, video, archives and fonts that are
/// already compressed do not.
pub fn compressible_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    if sub.ends_with("+json") || sub.ends_with("+xml") {
        return true;
    }
    match top {
        "text" => sub != "event-stream" && !sub.is_empty(),
        "application" => matches!(
            sub,
            "json"
                | "javascript"
                | "x-javascript"
                | "ecmascript"
                | "xml"
                | "wasm"
                | "graphql"
                | "x-www-form-urlencoded"
                | "vnd.ms-fontobject"
                | "x-font-ttf"
                | "x-font-otf"
        ),
        "font" => matches!(sub, "ttf" | "otf" | "collection"),
        "image" => matches!(sub, "x-icon" | "vnd.microsoft.icon" | "bmp"),
        _ => false,
    }
}

/// Why a response must go out as it is, judged from its head alone; `None` when it
/// may be compressed.
fn skip_reason(
    method: &Method,
    status: StatusCode,
    h: &HeaderMap,
    min_size: u64,
) -> Option<&'static str> {
    if *method == Method::HEAD {
        return Some("a HEAD response has no body");
    }
    status_skip(status, h).or_else(|| header_skip(h, Some(min_size), false))
}

/// Why a response of this status has no body to compress.
fn status_skip(status: StatusCode, h: &HeaderMap) -> Option<&'static str> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || h.contains_key(header::CONTENT_RANGE)
    {
        return Some("no body, or a range of one");
    }
    None
}

/// Why the representation these headers describe is not to be compressed: already
/// encoded, a type that does not compress (or, unless `type_optional`, no type),
/// `no-transform`, or a `Content-Length` under `min_size` (not looked at when `None`).
fn header_skip(h: &HeaderMap, min_size: Option<u64>, type_optional: bool) -> Option<&'static str> {
    if h.contains_key(header::CONTENT_ENCODING) {
        return Some("already encoded");
    }
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let type_ok = match text(header::CONTENT_TYPE) {
        Some(t) => compressible_type(t),
        None => type_optional && !h.contains_key(header::CONTENT_TYPE),
    };
    if !type_ok {
        return Some("a content type that does not compress");
    }
    let no_transform = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    if no_transform {
        return Some("Cache-Control: no-transform");
    }
    let length = text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(n), Some(min)) = (length, min_size) {
        if n == 0 || n < min {
            return Some("smaller than min_size");
        }
    }
    None
}

/// Whether a response without a body stands for one `apply` would compress, and so
/// must say `Vary: Accept-Encoding` as that one does: a 304 (RFC 9110 §15.4.5: it
/// carries the `Vary` the 200 would) and the answer to a HEAD (its other headers stay
/// as they are, as nginx's gzip filter leaves header-only responses). `None` for any
/// other response. A 304 need not repeat `Content-Type` and may give no length, or
/// an upstream's `Content-Length: 0`: only a type that does not compress, an
/// encoding or `no-transform` count against it.
fn bodiless_varies(
    method: &Method,
    status: StatusCode,
    h: &HeaderMap,
    min_size: u64,
) -> Option<bool> {
    if status == StatusCode::NOT_MODIFIED {
        return Some(header_skip(h, None, true).is_none());
    }
    if *method != Method::HEAD {
        return None;
    }
    Some(status_skip(status, h).is_none() && header_skip(h, Some(min_size), false).is_none())
}

// ---- the calls ----------------------------------------------------------------------------

/// `std.compress.check(algorithms?)`.
pub fn check(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let offered = algorithms(args.first(), "std.compress.check")?;
    Ok(match negotiate(accept_encoding(ex.req.headers), &offered) {
        Some(coding) => Value::str(coding.name()),
        None => Value::Nil,
    })
}

/// `std.compress.apply(min_size?, algorithms?)`.
pub fn apply(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    const NAME: &str = "std.compress.apply";
    let min_size = match args.first() {
        None | Some(Value::Nil) => DEFAULT_MIN_SIZE as u64,
        Some(v) => size_bytes(v).ok_or_else(|| StdError {
            function: NAME,
            message: format!("min_size must be a size or a number of bytes >= 0, got {v}"),
        })?,
    };
    let offered = algorithms(args.get(1), NAME)?;
    let Some(resp) = ex.resp.as_mut() else {
        return Ok(Value::Bool(false));
    };
    if let Some(vary) = bodiless_varies(ex.req.method, *resp.status, resp.headers, min_size) {
        if vary {
            add_vary(resp.headers);
        }
        return Ok(Value::Bool(false));
    }
    if let Some(why) = skip_reason(ex.req.method, *resp.status, resp.headers, min_size) {
        tracing::trace!(target: "proxycache::stdlib", reason = why, "not compressed");
        return Ok(Value::Bool(false));
    }
    let Some(body) = resp.body.as_deref_mut() else {
        return Ok(Value::Bool(false));
    };
    let exact = body.size_hint().exact();
    if exact.is_some_and(|n| n == 0 || n < min_size) {
        return Ok(Value::Bool(false));
    }
    // The response could be compressed: whatever this client gets, a cache must key
    // it by Accept-Encoding.
    add_vary(resp.headers);
    let Some(coding) = negotiate(accept_encoding(ex.req.headers), &offered) else {
        return Ok(Value::Bool(false));
    };
    // A `std.cache.store` before this stores the body as it is now, uncompressed (any
    // client gets it compressed as it asks).
    super::cache::tee_pending(
        ex.ctx.cache.as_deref_mut(),
        *resp.status,
        resp.headers,
        body,
    );
    let inner = std::mem::replace(body, ProxyBody::Empty);
    *body = ProxyBody::Boxed(BoxBody::new(Compressed::new(coding, inner)));
    let h = &mut *resp.headers;
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.name()),
    );
    h.remove(header::CONTENT_LENGTH);
    // Byte ranges of the encoded body are not ranges of the resource any more.
    h.remove(header::ACCEPT_RANGES);
    weaken_etag(h);
    Ok(Value::Bool(true))
}

fn algorithms(arg: Option<&Value>, function: &'static str) -> Result<Vec<Coding>, StdError> {
    let list = match arg {
        Some(Value::Str(s)) => s,
        _ => DEFAULT_ALGORITHMS,
    };
    parse_algorithms(list).map_err(|m| StdError {
        function,
        message: format!("algorithms {m}"),
    })
}

/// Adds `accept-encoding` to `Vary` unless it (or `*`) is there already.
fn add_vary(h: &mut HeaderMap) {
    let present = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding"));
    if !present {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A strong `ETag` names exact bytes, which the encoded body no longer has.
fn weaken_etag(h: &mut HeaderMap) {
    let Some(etag) = h.get(header::ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let mut weak = Vec::with_capacity(bytes.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(bytes);
    if let Ok(v) = HeaderValue::from_bytes(&weak) {
        h.insert(header::ETAG, v);
    }
}

// ---- the streaming body -------------------------------------------------------------------

/// The data frames of a body as the byte stream the encoders read (trailers are
/// dropped: an encoded body cannot carry the original's).
struct DataFrames(ProxyBody);

impl futures_core::Stream for DataFrames {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let body = &mut self.get_mut().0;
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Poll::Ready(Some(Ok(data))),
                    _ => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                None => return Poll::Ready(None),
            }
        }
    }
}

type Source = StreamReader<DataFrames, Bytes>;

/// One encoder per coding. Brotli's state is some 6 KiB, boxed so the others do not
/// pay for it.
enum Encoder {
    Br(Box<BrotliEncoder<Source>>),
    Zstd(ZstdEncoder<Source>),
    Gzip(GzipEncoder<Source>),
}

impl AsyncRead for Encoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::Br(e) => Pin::new(e).poll_read(cx, buf),
            Encoder::Zstd(e) => Pin::new(e).poll_read(cx, buf),
            Encoder::Gzip(e) => Pin::new(e).poll_read(cx, buf),
        }
    }
}

/// `body` compressed with `coding` as it is read (what `std.compress.apply` installs;
/// public for benchmarks).
pub fn compressed_body(coding: Coding, body: ProxyBody) -> ProxyBody {
    ProxyBody::Boxed(BoxBody::new(Compressed::new(coding, body)))
}

/// A response body compressed as it is read. The encoder flushes whenever the
/// upstream has nothing more for the moment, so a slow stream is not held back.
struct Compressed {
    encoder: Encoder,
    buf: BytesMut,
    done: bool,
}

impl Compressed {
    fn new(coding: Coding, body: ProxyBody) -> Self {
        let source = StreamReader::new(DataFrames(body));
        let encoder = match coding {
            Coding::Br => Encoder::Br(Box::new(BrotliEncoder::with_quality(
                source,
                Level::Precise(BROTLI_QUALITY),
            ))),
            Coding::Zstd => Encoder::Zstd(ZstdEncoder::with_quality(source, Level::Default)),
            Coding::Gzip => Encoder::Gzip(GzipEncoder::with_quality(source, Level::Default)),
        };
        Compressed {
            encoder,
            buf: BytesMut::new(),
            done: false,
        }
    }
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.buf.capacity() < FRAME {
            this.buf.reserve(FRAME);
        }
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.encoder),
            cx,
            &mut this.buf
        )) {
            Ok(0) => {
                this.done = true;
                Poll::Ready(None)
            }
            Ok(_) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;

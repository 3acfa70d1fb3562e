//! Request path normalisation: the one form of a path that routing, modules and the
//! upstream all see, so a policy on `/admin` cannot be walked around with
//! `/x/../admin`, `/%61dmin` or `//admin` that the upstream resolves to `/admin`.
//!
//! Rules, in order, on the path only (the query is never touched):
//! 1. percent-encoded unreserved characters (RFC 3986 2.3: `A-Z a-z 0-9 - . _ ~`) are
//!    decoded (RFC 3986 6.2.2.2); encoded slashes (`%2F`, `%5C`) are kept, refused or
//!    decoded as the rules say; every other escape is kept as sent;
//! 2. dot-segments are removed (RFC 3986 5.2.4); a path that climbs above the root, or
//!    a `.`/`..` beside an encoded slash (`..%2F`: servers that decode `%2F`, nginx
//!    among them, resolve it as a dot-segment), is an error;
//! 3. runs of `/` become one (nginx's `merge_slashes on`) unless the rules say not.
//!
//! A path that needs none of this comes back borrowed, after one scan: this runs on
//! every request. Owns: the rules. Must not touch: where they are applied (`proxy`
//! for requests as they arrive, the pipeline for paths modules set).

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

use super::percent::is_unreserved;

/// How paths are normalised (`server.merge_slashes`, `server.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Runs of `/` become one.
    pub merge_slashes: bool,
    /// What an encoded slash (`%2F`, `%5C`, any case) becomes.
    pub escaped_slashes: EscapedSlashes,
}

/// `server.escaped_slashes` (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Kept as sent: to many APIs an encoded slash is data (`/projects/a%2Fb`).
    Keep,
    /// The request is answered 400.
    Reject,
    /// Decoded to `/` (`%2F`, and `%5C` and a bare `\`, which servers such as IIS
    /// read as `/`) before dot-segments are removed and slashes merged: policy and
    /// upstream see the separator an upstream that decodes them would see.
    Decode,
}

/// A path that has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// More `..` segments than there are segments above them (`/a/../../x`).
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A `.` or `..` next to an encoded slash (`/x/..%2Fadmin`).
    #[error("the path has a dot-segment beside an encoded slash")]
    DotBesideEncodedSlash,
    /// A `%` not followed by two hex digits (`/%%36%31dmin`: decoding what follows it
    /// would make a new escape, `%61`, that the upstream decodes once more; nginx
    /// refuses these too).
    #[error("the path has a `%` that is not followed by two hex digits")]
    BadEscape,
    /// An encoded slash (`%2F` or `%5C`) with `escaped_slashes = "reject"`.
    #[error("the path has an encoded slash (`%2F` or `%5C`)")]
    EscapedSlash,
    /// The normalised path is not a valid request target (cannot happen: the rules
    /// only drop characters and decode unreserved ones).
    #[error("malformed request target")]
    Malformed,
}

impl PathError {
    /// The reason a `400` gives in the log (`ProxyError::BadRequest`).
    pub fn reason(self) -> &'static str {
        match self {
            PathError::AboveRoot => "the path climbs above the root",
            PathError::DotBesideEncodedSlash => {
                "the path has a dot-segment beside an encoded slash"
            }
            PathError::BadEscape => "the path has a `%` that is not followed by two hex digits",
            PathError::EscapedSlash => "the path has an encoded slash (`%2F` or `%5C`)",
            PathError::Malformed => "malformed request target",
        }
    }
}

/// `path` in normal form. A path that does not start with `/` is not a path this
/// applies to (`*`, an authority) and comes back as it is.
pub fn normalize(path: &str, rules: PathRules) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || !needs_work(path.as_bytes(), rules) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = decode_unreserved(path, rules)?;
    if rules.escaped_slashes == EscapedSlashes::Decode && decoded.contains('\\') {
        // A bare backslash too: what `decode` is for is an upstream that reads it as `/`.
        decoded = decoded.replace('\\', "/");
    }
    let normal = remove_dot_segments(&decoded, rules)?;
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Puts the path of `uri` (origin-form or absolute-form) in normal form, keeping its
/// query byte for byte. Other targets (`*`, CONNECT's authority) are left alone.
pub fn normalize_uri(uri: &mut Uri, rules: PathRules) -> Result<(), PathError> {
    let path = match normalize(uri.path(), rules)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| PathError::Malformed)?);
    *uri = Uri::from_parts(parts).map_err(|_| PathError::Malformed)?;
    Ok(())
}

/// Whether any rule could change `path`: an escape of an unreserved character, a
/// `.`/`..` segment, `//` (when merging), or a dot beside an encoded slash. Exact for
/// every path but the last case, which the slow path then settles.
fn needs_work(p: &[u8], rules: PathRules) -> bool {
    let at = |i: usize| p.get(i).copied();
    let ends_segment = |b: Option<u8>| matches!(b, None | Some(b'/'));
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'/' => match at(i + 1) {
                Some(b'/') if rules.merge_slashes => return true,
                Some(b'.')
                    if ends_segment(at(i + 2))
                        || (at(i + 2) == Some(b'.') && ends_segment(at(i + 3))) =>
                {
                    return true
                }
                _ => {}
            },
            b'\\' if rules.escaped_slashes == EscapedSlashes::Decode => return true,
            b'%' => match escaped(at(i + 1), at(i + 2)) {
                Some(c) => {
                    let dot_beside = (i > 0 && p[i - 1] == b'.') || at(i + 3) == Some(b'.');
                    if is_unreserved(c) || (c == b'/' && dot_beside) {
                        return true;
                    }
                    if is_slash(c) && rules.escaped_slashes != EscapedSlashes::Keep {
                        return true;
                    }
                }
                // A bad escape: the slow path refuses it.
                None => return true,
            },
            _ => {}
        }
    }
    false
}

/// The byte `%HL` stands for, if `h` and `l` are hex digits.
fn escaped(h: Option<u8>, l: Option<u8>) -> Option<u8> {
    let digit = |b: Option<u8>| char::from(b?).to_digit(16);
    let (h, l) = (digit(h)?, digit(l)?);
    u8::try_from(h << 4 | l).ok()
}

/// The bytes `escaped_slashes` is about: `/` and `\` (a separator to IIS).
fn is_slash(c: u8) -> bool {
    matches!(c, b'/' | b'\\')
}

/// `path` with escapes of unreserved characters decoded, encoded slashes as the rules
/// say, other escapes as they were. A `%` without two hex digits after it is
/// refused: decoding what follows it could make a new escape (`%%36%31` -> `%61`),
/// and the result would not be normal.
fn decode_unreserved(path: &str, rules: PathRules) -> Result<String, PathError> {
    let p = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' {
            let c = escaped(p.get(i + 1).copied(), p.get(i + 2).copied())
                .ok_or(PathError::BadEscape)?;
            let decode = match rules.escaped_slashes {
                _ if is_unreserved(c) => true,
                EscapedSlashes::Reject if is_slash(c) => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => is_slash(c),
                _ => false,
            };
            if decode {
                // An encoded backslash is a separator too (IIS, and a WHATWG URL
                // parser on an http URL, read `\` as `/`): left a bare `\`, no later
                // rule would see it.
                out.push(if c == b'\\' { '/' } else { char::from(c) });
                i += 3;
                continue;
            }
        }
        // Up to the next `%` in one piece (`%` is ASCII: the cut is a char boundary).
        let end = p[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(p.len(), |n| i + 1 + n);
        out.push_str(&path[i..end]);
        i = end;
    }
    Ok(out)
}

/// RFC 3986 5.2.4 over a path that starts with `/`, refusing what climbs above the
/// root, and merging empty segments when the rules say so.
fn remove_dot_segments(path: &str, rules: PathRules) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if dot_beside_encoded_slash(segment) {
            return Err(PathError::DotBesideEncodedSlash);
        }
        match segment {
            "." => {}
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(parent);
            }
            "" if rules.merge_slashes && !last => {}
            // (`out` never ends in `/` here when merging: a trailing empty segment is
            // the last one.)
            segment => {
                out.push('/');
                out.push_str(segment);
                continue;
            }
        }
        // A path ending in a dot-segment names a directory: `/a/b/..` is `/a/`.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `segment`, split at encoded slashes, has a `.` or `..` piece.
fn dot_beside_encoded_slash(segment: &str) -> bool {
    let mut rest = segment;
    let mut split = false;
    loop {
        let cut = rest
            .as_bytes()
            .windows(3)
            .position(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'));
        let piece = cut.map_or(rest, |at| &rest[..at]);
        if matches!(piece, "." | "..") && (split || cut.is_some()) {
            return true;
        }
        match cut {
            Some(at) => {
                split = true;
                rest = &rest[at + 3..];
            }
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests;

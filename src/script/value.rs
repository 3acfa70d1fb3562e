//! Run-time values of the language, and the one rule by which bytes that are not
//! UTF-8 (a client's header value, a Lua string) become their text
//! ([`text_from_bytes`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// A value. Cheap to clone: strings and collections are reference-counted.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Duration(Duration),
    Size(u64),
    List(Arc<[Value]>),
    Map(Arc<BTreeMap<String, Value>>),
    /// A stdlib result; fields are addressed by index (resolved at compile time).
    Record(&'static crate::stdlib::RecordSig, Arc<[Value]>),
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<Arc<str>>) -> Self {
        Value::Str(s.into())
    }

    /// `nil` and `false` are false; everything else is true.
    pub fn truthy(&self) -> bool {
        !matches!(self, Value::Nil | Value::Bool(false))
    }

    /// The type's name, for run-time error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Duration(_) => "duration",
            Value::Size(_) => "size",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Record(..) => "record",
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Numeric view for arithmetic and comparisons.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Size(s) => Some(*s as f64),
            Value::Duration(d) => Some(d.as_secs_f64()),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// How a value interpolates into a string: `nil` is empty, durations and sizes in
    /// their literal units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Duration(d) => {
                let ms = d.as_millis();
                if ms % 1000 == 0 {
                    write!(f, "{}s", ms / 1000)
                } else {
                    write!(f, "{ms}ms")
                }
            }
            Value::Size(s) => write!(f, "{s}B"),
            Value::List(items) | Value::Record(_, items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Bytes as script text: the one rule by which bytes that may not be UTF-8 become a
/// string of pcmod or a text argument of `std` (a header value read in pcmod, a Lua
/// string passed where text is wanted). UTF-8 is taken as it is. Otherwise each byte
/// that is not part of a valid UTF-8 sequence is written `\xNN` (two lowercase hex
/// digits) and each backslash `\\`, so the text can be read back to the exact bytes:
/// distinct byte strings that are not UTF-8 give distinct texts (replacing invalid
/// bytes with U+FFFD made every Latin-1 `é` the same key). Such a text can equal
/// only a UTF-8 string spelled the same way, which whoever sends it could as well have
/// sent as the bytes themselves.
pub fn text_from_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        for b in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// A value as a TOML literal (for `/config/repair` and the admin API).
pub fn toml_literal(v: &Value) -> String {
    match v {
        Value::Nil => "\"\"".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => toml::Value::String(s.to_string()).to_string(),
        Value::Duration(_) | Value::Size(_) => format!("\"{v}\""),
        Value::List(items) | Value::Record(_, items) => format!(
            "[{}]",
            items
                .iter()
                .map(toml_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Map(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{} = {}", toml::Value::String(k.clone()), toml_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::text_from_bytes;

    #[test]
    fn utf8_is_taken_as_it_is() {
        for s in ["", "plain", "caf\u{e9}", "a\\xffb", "\u{fffd}"] {
            assert!(
                matches!(text_from_bytes(s.as_bytes()), std::borrow::Cow::Borrowed(t) if t == s)
            );
        }
    }

    #[test]
    fn invalid_bytes_are_escaped_and_backslashes_doubled() {
        assert_eq!(text_from_bytes(b"\xff"), "\\xff");
        assert_eq!(text_from_bytes(b"ab\xffc"), "ab\\xffc");
        assert_eq!(text_from_bytes(b"caf\xe9"), "caf\\xe9");
        // A truncated sequence: each of its bytes.
        assert_eq!(text_from_bytes(b"\xe2\x82!"), "\\xe2\\x82!");
        assert_eq!(text_from_bytes(b"a\\b\xfe"), "a\\\\b\\xfe");
        assert_eq!(text_from_bytes(b"\xc3\xa9\xff"), "\u{e9}\\xff");
    }

    #[test]
    fn distinct_byte_strings_that_are_not_utf8_give_distinct_texts() {
        // Every string of up to four bytes over an alphabet that mixes escapes,
        // backslashes, hex digits and bytes that are invalid alone or together.
        let alphabet: &[u8] = &[b'\\', b'x', b'f', b'e', 0xff, 0xfe, 0xe9, 0xc3, 0xa9, b'a'];
        let mut seen = std::collections::HashMap::new();
        let mut all: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = all
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |b| {
                        let mut t = s.clone();
                        t.push(*b);
                        t
                    })
                })
                .collect();
            all.extend(longer);
            all.sort();
            all.dedup();
        }
        for bytes in all.iter().filter(|b| std::str::from_utf8(b).is_err()) {
            let text = text_from_bytes(bytes).into_owned();
            if let Some(other) = seen.insert(text.clone(), bytes.clone()) {
                panic!("{other:?} and {bytes:?} both give {text:?}");
            }
        }
        assert!(seen.len() > 1000, "{}", seen.len());
    }
}

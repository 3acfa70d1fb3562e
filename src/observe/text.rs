//! The text format's fields: `name=value` separated by spaces, the message first and
//! bare, with control characters escaped in values and messages alike, so that one
//! event is one line whatever it carries (a client's text in a module's `log`, a Lua
//! traceback, a multi-line error). Must not touch: the JSON format, whose encoder
//! escapes for itself.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Formats the fields of events and spans for the text format.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes one field: `name=value`, or the message alone.
    fn field(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        if self.name(field)? {
            write!(TextEscape(&mut self.writer), "{value:?}")?;
        }
        Ok(())
    }

    /// Writes the separator and `name=` of a field (nothing for the message); `false`:
    /// a field not written at all.
    fn name(&mut self, field: &Field) -> Result<bool, fmt::Error> {
        let name = field.name();
        // A `log` crate record's origin, already in the line's target.
        if name.starts_with("log.") {
            return Ok(false);
        }
        if !self.first {
            self.writer.write_char(' ')?;
        }
        self.first = false;
        if name != "message" {
            self.writer
                .write_str(name.strip_prefix("r#").unwrap_or(name))?;
            self.writer.write_char('=')?;
        }
        Ok(true)
    }

    /// A value with nothing to escape or quote, written as it is (every access line
    /// has a dozen: this skips `fmt`'s machinery and the escaping loop for them).
    fn plain(&mut self, field: &Field, value: &str) -> fmt::Result {
        if self.name(field)? {
            self.writer.write_str(value)?;
        }
        Ok(())
    }
}

/// Whether `text` is printable ASCII: nothing in it is escaped, by `Debug` or here.
fn printable(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Visit for Visitor<'_> {
    /// A string is quoted (`path="/a b"`), as the default format does; the message is
    /// not.
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = if field.name() == "message" {
                if printable(value) {
                    self.plain(field, value)
                } else {
                    self.field(field, &format_args!("{value}"))
                }
            } else if printable(value) && !value.contains(['"', '\\']) {
                // As `Debug` quotes it.
                self.name(field).and_then(|written| {
                    if written {
                        self.writer.write_char('"')?;
                        self.writer.write_str(value)?;
                        self.writer.write_char('"')?;
                    }
                    Ok(())
                })
            } else {
                self.field(field, &value)
            };
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.plain(field, itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.plain(field, itoa::Buffer::new().format(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.field(field, value);
        }
    }
}

/// Writes text through to `W` with its control characters escaped: `\n`, `\r`, `\t`,
/// other ASCII controls as `\x1b`, other Unicode controls and line separators as
/// `\u{85}`. A module's message often carries what a client sent
/// (`$req.query["q"]`); raw, a newline in it started a line of the client's making, and
/// an escape sequence drove the terminal of whoever read the log. Backslashes stay as
/// they are: a line is for reading, not a value to decode.
pub struct TextEscape<W>(pub W);

impl<W: fmt::Write> fmt::Write for TextEscape<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if printable(text) {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            if !escaped(c) {
                continue;
            }
            self.0.write_str(&text[plain..at])?;
            plain = at + c.len_utf8();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_ascii_control() => write!(self.0, "\\x{:02x}", u32::from(c))?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
        }
        self.0.write_str(&text[plain..])
    }
}

fn escaped(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::TextEscape;

    fn escape(text: &str) -> String {
        let mut out = String::new();
        let _ = write!(TextEscape(&mut out), "{text}");
        out
    }

    /// The fields of one event as the text format writes them.
    fn line(event: impl FnOnce()) -> String {
        let buf = crate::observe::TestBuffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(super::TextFields)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        out.text().trim_end().to_owned()
    }

    #[test]
    fn plain_values_are_written_as_debug_would() {
        // The fast paths (printable ASCII, integers) and the general one agree.
        let got = line(|| {
            tracing::info!(
                path = "/a b?x=1",
                quoted = "a\"b",
                slash = "a\\b",
                ctl = "a\nb",
                n = 42u64,
                neg = -3i64,
                f = 1.5f64,
                whole = 2.0f64,
                yes = true,
                shown = %"x y",
                "done in caf\u{e9}\n"
            )
        });
        assert_eq!(
            got,
            "done in caf\u{e9}\\n path=\"/a b?x=1\" quoted=\"a\\\"b\" slash=\"a\\\\b\" \
             ctl=\"a\\nb\" n=42 neg=-3 f=1.5 whole=2.0 yes=true shown=x y"
        );
    }

    #[test]
    fn escapes_controls_and_keeps_the_rest() {
        assert_eq!(
            escape("plain caf\u{e9} \\ \"q\""),
            "plain caf\u{e9} \\ \"q\""
        );
        assert_eq!(escape("a\nWARN forged\r\tb"), "a\\nWARN forged\\r\\tb");
        assert_eq!(escape("\x1b[31mred\0\x7f"), "\\x1b[31mred\\x00\\x7f");
        assert_eq!(
            escape("\u{85}\u{2028}\u{2029}"),
            "\\u{85}\\u{2028}\\u{2029}"
        );
    }
}

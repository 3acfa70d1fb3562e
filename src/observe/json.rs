//! The JSON format: one object per line with `timestamp`, `level`, the event's fields
//! (`message` among them), the fields of the spans it happened in, and `target`. The
//! spans' fields sit beside the event's, not in a `span` object of their own: the
//! request id is `request_id` on every line of a request, a warning's as an access
//! line's (an event's own field wins over a span's of the same name). Must not touch:
//! the text format's escaping; text is escaped here once, as JSON.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use smallvec::SmallVec;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines (the spans' fields are formatted by [`JsonFields`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = Line {
            out: &mut writer,
            started: false,
            names: SmallVec::new(),
            log_target: None,
            result: Ok(()),
        };
        line.out.write_char('{')?;
        line.string("timestamp", &timestamp)?;
        line.string("level", meta.level().as_str())?;
        event.record(&mut line);
        line.result?;
        if let Some(scope) = ctx.event_scope() {
            let mut from_spans: Vec<String> = Vec::new();
            for span in scope {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                let Ok(fields) = serde_json::from_str::<Map<String, Value>>(fields) else {
                    continue;
                };
                for (name, value) in fields {
                    let taken = line.names.iter().any(|n| *n == name) || from_spans.contains(&name);
                    if !taken {
                        line.key(&name)?;
                        write!(line.out, "{value}")?;
                        from_spans.push(name);
                    }
                }
            }
        }
        // A `log` crate record (a dependency's) says its own target in a field.
        let target = line.log_target.take();
        line.string("target", target.as_deref().unwrap_or(meta.target()))?;
        writer.write_str("}\n")
    }
}

/// One line being written: the names of the event's fields written so far, a `log`
/// record's target, the first error.
struct Line<'a, 'w> {
    out: &'a mut Writer<'w>,
    started: bool,
    /// (Inline: an access line has a dozen fields, and a `Vec` grew three times for them.)
    names: SmallVec<[&'static str; 16]>,
    log_target: Option<String>,
    result: fmt::Result,
}

impl Line<'_, '_> {
    /// `"name":`, after a comma unless it is the first.
    fn key(&mut self, name: &str) -> fmt::Result {
        if self.started {
            self.out.write_char(',')?;
        }
        self.started = true;
        write_string(self.out, format_args!("{name}"))?;
        self.out.write_char(':')
    }

    fn string(&mut self, name: &str, value: &str) -> fmt::Result {
        self.key(name)?;
        write_string(self.out, format_args!("{value}"))
    }

    /// Writes an event field (the first of a name only), its value by `value`.
    fn field(&mut self, field: &Field, value: &dyn Fn(&mut Writer<'_>) -> fmt::Result) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        // A `log` crate record's origin (`log.file`, `log.line`...): not the event's.
        if self.result.is_err() || self.names.contains(&name) || name.starts_with("log.") {
            return;
        }
        self.names.push(name);
        self.result = self.key(name).and_then(|()| value(self.out));
    }
}

impl Visit for Line<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        }
        self.field(field, &|out| write_string(out, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, &|out| write_string(out, format_args!("{value:?}")));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, &|out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, &|out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, &|out| write!(out, "{value}"));
    }

    /// As serde_json writes it: `1.5`, `2.0`, `null` for what JSON has no number for.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, &|out| write!(out, "{}", Value::from(value)));
    }
}

/// `text` as a JSON string. Besides what JSON must escape (`"`, `\`, controls below
/// U+0020), DEL, the C1 controls and the line separators are written as `\u` escapes
/// too: a terminal showing the log reads none of them.
fn write_string(out: &mut dyn fmt::Write, text: fmt::Arguments<'_>) -> fmt::Result {
    out.write_char('"')?;
    JsonEscape(&mut *out).write_fmt(text)?;
    out.write_char('"')
}

struct JsonEscape<W>(W);

impl<W: fmt::Write> fmt::Write for JsonEscape<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            plain = at + c.len_utf8();
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", u32::from(c))?;
            } else {
                self.0.write_str(escape)?;
            }
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::{write_string, JsonLines};
    use crate::observe::TestBuffer;

    /// The lines `log` writes, parsed.
    fn logged(log: impl FnOnce()) -> Vec<Value> {
        let buffer = TestBuffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        buffer
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn a_span_s_fields_sit_beside_the_event_s() {
        let lines = logged(|| {
            let span = tracing::info_span!("request", request_id = "r-1");
            let _entered = span.enter();
            tracing::warn!(target: "t", error = %"boom\nline 2", n = 3, ok = true, "failed");
            tracing::info!(request_id = "own", "its own wins");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["request_id"], "r-1", "{first}");
        assert_eq!(first["message"], "failed", "{first}");
        assert_eq!(first["error"], "boom\nline 2", "{first}");
        assert_eq!(first["n"], 3, "{first}");
        assert_eq!(first["ok"], true, "{first}");
        assert_eq!(first["level"], "WARN", "{first}");
        assert_eq!(first["target"], "t", "{first}");
        assert!(first["timestamp"].is_string(), "{first}");
        assert!(first.get("span").is_none() && first.get("spans").is_none());
        assert_eq!(lines[1]["request_id"], "own", "{}", lines[1]);
    }

    fn string(text: &str) -> String {
        let mut out = String::new();
        let _ = write_string(&mut out, format_args!("{text}"));
        out
    }

    #[test]
    fn strings_are_json_escaped_once() {
        for text in [
            "plain",
            "boom\nstack traceback:\n\t[C]: in function 'error'",
            "quote \" backslash \\ nul \0 esc \x1b del \x7f c1 \u{85} ls \u{2028} caf\u{e9}",
        ] {
            let json = string(text);
            assert_eq!(
                serde_json::from_str::<String>(&json).ok().as_deref(),
                Some(text),
                "{json}"
            );
            assert!(!json.chars().any(|c| c.is_control()), "{json}");
        }
        assert_eq!(string("a\nb"), "\"a\\nb\"");
    }
}

//! Logging: tracing to stderr as text or JSON per `[log]`. The access log is the
//! `proxycache::access` target, switched by `log.access`. Also: the escaping of text
//! scripts log ([`log_text`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A duration in milliseconds rounded to the microsecond, for log fields: `1.247`, not
/// the `1.2472130000000001` an `f64` prints (an integer count of microseconds divided
/// by 1000 is the double nearest that decimal, which prints as written).
pub fn to_microseconds(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Text a module logs (pcmod `log`, Lua `log.*` and `print`, a fault's message) with
/// its control characters escaped: `\n`, `\r`, `\t`, other ASCII controls as `\x1b`,
/// other Unicode controls and line separators as `\u{85}`. A module's message often
/// carries what a client sent (`$req.query["q"]`); raw, a newline in it started a
/// line of the client's making in a text log, and an escape sequence drove the
/// terminal of whoever read it. Backslashes stay as they are: a message is one line
/// to read, not a value to decode. Borrowed when there is nothing to escape.
pub fn log_text(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Writing to a String cannot fail.
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Installs the global subscriber (once; later calls are ignored, which lets tests
/// start several servers in one process). `RUST_LOG`, when set, overrides `level`.
pub fn init(log: &LogConfig) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // Access lines always pass the filter; `log.access` (checked per request) decides,
    // so a reload can switch the access log on or off.
    if let Ok(directive) = "proxycache::access=info".parse() {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::log_text;

    #[test]
    fn log_text_escapes_controls_and_keeps_the_rest() {
        assert!(matches!(
            log_text("plain caf\u{e9} \\ \"q\""),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(log_text("a\nWARN forged\r\tb"), "a\\nWARN forged\\r\\tb");
        assert_eq!(log_text("\x1b[31mred\0\x7f"), "\\x1b[31mred\\x00\\x7f");
        assert_eq!(
            log_text("\u{85}\u{2028}\u{2029}"),
            "\\u{85}\\u{2028}\\u{2029}"
        );
    }
}

//! Logging: tracing to stderr as text or JSON per `[log]`, one line per event. The
//! access log is the `proxycache::access` target, switched by `log.access`.
//!
//! - `text.rs`: the text format's fields, with control characters escaped.
//! - `json.rs`: the JSON format, one object per event, with the fields of the spans
//!   the event is in (the request's `request_id`) beside its own.
//!
//! Every line of a request carries its id as `request_id`: a field of the access line
//! and of a module's `log` line, and of the request's span (`request{request_id=...}`
//! in text, a top-level key in JSON) for everything else logged while it runs.
//!
//! Call sites log text as it is (a module's message, a Lua traceback): each format
//! escapes it once, its own way. Escaping at the call site escaped it twice in JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

mod json;
mod text;

pub use json::JsonLines;
pub use text::TextFields;

/// A duration in milliseconds rounded to the microsecond, for log fields: `1.247`, not
/// the `1.2472130000000001` an `f64` prints (an integer count of microseconds divided
/// by 1000 is the double nearest that decimal, which prints as written).
pub fn to_microseconds(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A list for one log field, as a person writes it: `a; b`, not Rust's `["a", "b"]`.
/// `None` for an empty list, which leaves the field out.
pub fn list<T: std::fmt::Display>(items: &[T], separator: &str) -> Option<String> {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(&item.to_string());
    }
    (!items.is_empty()).then_some(out)
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
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
        LogFormat::Text => builder.fmt_fields(TextFields).try_init(),
    };
}

/// What the formatters' tests log into: the bytes written, shared with the test.
#[cfg(test)]
#[derive(Clone, Default)]
struct TestBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl TestBuffer {
    /// What was written so far.
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for TestBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buf) = self.0.lock() {
            buf.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! Logging: tracing to stderr as text or JSON per `[log]`. The access log is the
//! `proxycache::access` target, switched by `log.access`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A duration in milliseconds rounded to the microsecond, for log fields: `1.247`, not
/// the `1.2472130000000001` an `f64` prints (an integer count of microseconds divided
/// by 1000 is the double nearest that decimal, which prints as written).
pub fn to_microseconds(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
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

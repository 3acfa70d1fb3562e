//! What proxycache logs in an in-process test: one global subscriber per test binary,
//! at info and above, writing text (no colours, fields as `log.format = "text"` writes
//! them) into a buffer the test reads.

use std::sync::{Arc, Mutex, OnceLock};

/// Installs the capturing subscriber (once per test binary; later calls only return
/// the buffer). Call it before starting the proxy whose lines a test reads.
pub fn capture() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(Arc::clone(&buf));
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .fmt_fields(proxycache::observe::TextFields)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
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

/// The log lines so far that mention `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    let buf = capture().lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The access-log line of the request to `path` (which each test makes unique), once
/// it is written (up to 10 s).
pub async fn access_line_for(path: &str) -> String {
    let needle = format!("path={path} ");
    let quoted = format!("path=\"{path}\"");
    let found = || {
        lines_with("proxycache::access")
            .into_iter()
            .find(|l| l.contains(&needle) || l.contains(&quoted))
    };
    assert!(
        super::wait_until(std::time::Duration::from_secs(10), || found().is_some()).await,
        "no access line for {path}"
    );
    found().unwrap_or_default()
}

//! Diagnostics: one error at one place, printable as `file:line:col: message` followed
//! by the source line, a caret under the offending text and a hint, and serialisable as
//! data for the admin API.
//!
//! Rendered here rather than with a diagnostics crate because the exact shape
//! (`file:line:col: message` first, no colour codes) is what `proxycache check`, the
//! logs and the golden tests promise, and it is thirty lines.

use std::fmt;

use serde::Serialize;

use super::ast::Span;

/// One error in a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For an error in a file that is not a module's own (a library its Lua chunk
    /// `require`s): the module whose loading found it.
    /// (Behind one thin pointer: the diagnostic is the error type of many functions
    /// and stays within 128 bytes.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Box<String>>,
    /// The text of the line the error is on.
    #[serde(skip)]
    pub source_line: String,
    /// How many characters to underline (at least 1).
    #[serde(skip)]
    pub width: usize,
}

impl Diagnostic {
    /// An error at `span` of `source` (the whole file's text).
    pub fn new(file: &str, source: &str, span: Span, message: impl Into<String>) -> Self {
        let line_text = source
            .lines()
            .nth(span.line.saturating_sub(1) as usize)
            .unwrap_or("");
        let col0 = span.col.saturating_sub(1) as usize;
        let rest = line_text.chars().count().saturating_sub(col0);
        let width = source
            .get(span.start..span.end)
            .map_or(1, |t| t.lines().next().unwrap_or("").chars().count())
            .clamp(1, rest.max(1));
        Diagnostic {
            file: file.to_owned(),
            line: span.line.max(1),
            col: span.col.max(1),
            message: message.into(),
            hint: None,
            module: None,
            source_line: line_text.to_owned(),
            width,
        }
    }

    /// An error at the byte range `at` of `source` (a value in config.toml, say).
    pub fn at_range(
        file: &str,
        source: &str,
        at: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let mut start = at.start.min(source.len());
        while !source.is_char_boundary(start) {
            start -= 1;
        }
        let before = &source[..start];
        let span = Span {
            start,
            end: at.end.max(start),
            line: before.matches('\n').count() as u32 + 1,
            col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1,
        };
        Diagnostic::new(file, source, span, message)
    }

    /// An error about the whole file (no position in it).
    pub fn file_level(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line: 1,
            col: 1,
            message: message.into(),
            hint: None,
            module: None,
            source_line: String::new(),
            width: 1,
        }
    }

    /// An error about a file as a whole, with no position to point at (a certificate
    /// file that cannot be read, say): printed as `file: message`.
    pub fn unpositioned(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            line: 0,
            col: 0,
            ..Diagnostic::file_level(file, message)
        }
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The full form: header line, source line, caret, hint.
    pub fn render(&self) -> String {
        let mut out = format!("{self}\n");
        if !self.source_line.is_empty() {
            let gutter = self.line.to_string().len();
            let pad: String = self
                .source_line
                .chars()
                .take(self.col as usize - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{:gutter$} |\n", ""));
            out.push_str(&format!("{} | {}\n", self.line, self.source_line));
            out.push_str(&format!(
                "{:gutter$} | {}{}\n",
                "",
                pad,
                "^".repeat(self.width)
            ));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("  = hint: {hint}\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Several diagnostics, rendered one after another.
pub fn render_all(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(Diagnostic::render)
        .collect::<Vec<_>>()
        .join("\n")
}

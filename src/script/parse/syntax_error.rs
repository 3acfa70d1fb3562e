//! Syntax errors in words: what pest reports (a position and the rules it expected
//! there) becomes one [`Diagnostic`] naming what was expected ("expected a string or
//! `$variable`"), never grammar rule names, with the cases that need more than that
//! told apart (a file that ends too early, a string never closed, a chained
//! comparison).

use super::{span_at, Rule};
use crate::script::diag::Diagnostic;

/// The diagnostic for pest's error `e` on `source`.
pub(super) fn syntax_error(file: &str, source: &str, e: &pest::error::Error<Rule>) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let end = source[pos..]
        .chars()
        .next()
        .map_or(pos, |c| pos + c.len_utf8());
    let found = found_at(&source[pos..]);
    let positives: &[Rule] = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => positives,
        pest::error::ErrorVariant::CustomError { .. } => &[],
    };
    if pos >= source.len() {
        return end_of_file(file, source, positives);
    }
    // A string opened here and never closed (an unclosed `\"\"\"` reads as `\"\"` and a
    // `\"` that fails two bytes on).
    if source[pos..].starts_with('"') {
        let here = |(s, _): &(usize, bool)| *s <= pos && pos - *s <= 2;
        if let Some((start, raw)) = unclosed_string(source).filter(here) {
            return unclosed(file, source, start, raw);
        }
    }
    if let Some(op) = comparison_at(&source[pos..]) {
        if positives.contains(&Rule::or_op) || positives.contains(&Rule::and_op) {
            return Diagnostic::new(
                file,
                source,
                span_at(source, pos, pos + op.len()),
                format!("comparisons do not chain: `{op}` follows a comparison"),
            )
            .with_hint("join two comparisons with `and`: `a < b and b < c`");
        }
    }
    // `[$config.name]`: a name in brackets is a string written out.
    if positives.contains(&Rule::string) && source[..pos].trim_end().ends_with('[') {
        return Diagnostic::new(
            file,
            source,
            span_at(source, pos, end),
            format!("a name in `[...]` must be a string written out, found {found}"),
        )
        .with_hint("header, cookie and query names are fixed when the module loads: `$req.header[\"x-api-key\"]`");
    }
    // A `(` or `[` still open where the expression could not go on: say it may be
    // what is missing, and where it was opened.
    let open = open_bracket(&source[..pos]);
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            let closer = open.map(|(_, c)| if c == '(' { "`)`" } else { "`]`" });
            if let Some(closer) = closer.filter(|_| !names.is_empty()) {
                names.push(closer);
            }
            if names.is_empty() {
                format!("syntax error near {found}")
            } else {
                format!("expected {}, found {found}", join_or(&names))
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let diag = Diagnostic::new(file, source, span_at(source, pos, end), message);
    match (hint_for(source, pos), open) {
        (Some(h), _) => diag.with_hint(h),
        (None, Some((at, c))) => {
            let at = span_at(source, at, at + 1);
            diag.with_hint(format!(
                "the `{c}` at line {}, column {} is not closed",
                at.line, at.col
            ))
        }
        (None, None) => diag,
    }
}

/// What the source has at the error: the word there, cut before a closing bracket or
/// a comma that ends it (`$config.name` of `$config.name]`).
fn found_at(rest: &str) -> String {
    let Some(word) = rest
        .split(char::is_whitespace)
        .next()
        .filter(|t| !t.is_empty())
    else {
        return "end of file".to_owned();
    };
    let word = match word.find([']', ')', '}', ',']) {
        Some(0) => &word[..1],
        Some(i) => &word[..i],
        None => word,
    };
    format!("`{}`", truncate(word, 20))
}

/// The innermost `(` or `[` that `before` leaves open in the statement being parsed
/// (its offset and the bracket), skipping strings and comments. A `{` or `}` ends the
/// search: brackets do not span blocks.
fn open_bracket(before: &str) -> Option<(usize, char)> {
    let bytes = before.as_bytes();
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if before[i..].starts_with("\"\"\"") => match before[i + 3..].find("\"\"\"") {
                Some(len) => i += 3 + len + 2,
                None => return None,
            },
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => stack.push((i, '(')),
            b'[' => stack.push((i, '[')),
            b')' | b']' => {
                stack.pop();
            }
            b'{' | b'}' => stack.clear(),
            _ => {}
        }
        i += 1;
    }
    stack.pop()
}

/// The string starting at `start` (`raw`: `\"\"\"`) that is never closed.
fn unclosed(file: &str, source: &str, start: usize, raw: bool) -> Diagnostic {
    let (quote, span) = if raw {
        ("\"\"\"", span_at(source, start, start + 3))
    } else {
        ("\"", span_at(source, start, start + 1))
    };
    let hint = if raw {
        "a raw string ends at the next `\"\"\"`; it may span lines, so it ran to the end of the file"
    } else {
        "a string ends at the next `\"` (write `\\\"` for a quote inside); it may span lines, so it ran to the end of the file"
    };
    Diagnostic::new(
        file,
        source,
        span,
        format!("this string has no closing `{quote}`"),
    )
    .with_hint(hint)
}

/// The syntax error of a file that ends too early.
fn end_of_file(file: &str, source: &str, positives: &[Rule]) -> Diagnostic {
    // Nothing but comments and blanks (also an empty `PUT /mods/NAME` body).
    if positives
        .iter()
        .any(|r| matches!(r, Rule::module | Rule::kw_mod))
    {
        return Diagnostic::file_level(file, "expected `mod NAME { ... }`, found end of file")
            .with_hint("a module file holds one `mod NAME { ... }`, NAME being the file's name");
    }
    if let Some((start, raw)) = unclosed_string(source) {
        return unclosed(file, source, start, raw);
    }
    // Say what is likely missing, and point at the last line with text rather than
    // at nothing.
    // (The last character, whole: the file may end in `é`.)
    let text = source.trim_end();
    let (last, ch) = text.char_indices().next_back().unwrap_or((0, ' '));
    let end = if text.is_empty() {
        0
    } else {
        last + ch.len_utf8()
    };
    let span = span_at(source, last, end);
    Diagnostic::new(
        file,
        source,
        span,
        "unexpected end of file: a `}`, `)` or `]` is missing",
    )
    .with_hint("every `{` needs a `}`, every `(` a `)` and every `[` a `]`")
}

/// Where the string that runs to the end of `source` starts, if one does, and whether
/// it is a raw string. Follows strings into `${...}` interpolations (which may hold
/// strings of their own) and skips comments.
fn unclosed_string(source: &str) -> Option<(usize, bool)> {
    /// What the scan is inside: code (at the top, or in an interpolation, with the
    /// depth of `{` met in it) or a string (where it starts).
    enum In {
        Code { interpolation: bool, braces: usize },
        Str(usize),
    }
    let bytes = source.as_bytes();
    let mut stack = vec![In::Code {
        interpolation: false,
        braces: 0,
    }];
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match stack.last_mut() {
            Some(In::Str(_)) => match b {
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'$' if bytes.get(i + 1) == Some(&b'{') => {
                    stack.push(In::Code {
                        interpolation: true,
                        braces: 0,
                    });
                    i += 1;
                }
                _ => {}
            },
            Some(In::Code {
                interpolation,
                braces,
            }) => match b {
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'"' if source[i..].starts_with("\"\"\"") => match source[i + 3..].find("\"\"\"") {
                    Some(len) => i += 3 + len + 2,
                    None => return Some((i, true)),
                },
                b'"' => stack.push(In::Str(i)),
                b'{' => *braces += 1,
                b'}' if *interpolation && *braces == 0 => {
                    stack.pop();
                }
                b'}' => *braces = braces.saturating_sub(1),
                _ => {}
            },
            None => return None,
        }
        i += 1;
    }
    stack.into_iter().rev().find_map(|s| match s {
        In::Str(start) => Some((start, false)),
        In::Code { .. } => None,
    })
}

/// The comparison operator `rest` starts with, if any.
fn comparison_at(rest: &str) -> Option<&str> {
    for op in ["==", "!=", "<=", ">=", "<", ">", "~"] {
        if rest.starts_with(op) {
            return Some(op);
        }
    }
    ["in", "starts_with", "ends_with", "contains"]
        .into_iter()
        .find(|word| {
            rest.strip_prefix(word).is_some_and(|after| {
                !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            })
        })
}

fn hint_for(source: &str, pos: usize) -> Option<&'static str> {
    let rest = &source[pos..];
    // pest stops just after a `$` that starts no variable.
    let after_dollar = source[..pos].ends_with('$')
        && !rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '{');
    if after_dollar
        || (rest.starts_with('$')
            && !rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '{'))
    {
        return Some("a `$` in a string starts a variable; write `\\$` for a dollar sign");
    }
    if rest.starts_with('\'') {
        return Some("strings use double quotes");
    }
    None
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Grammar rules in words, for error messages. `None`: not worth naming.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::module | Rule::kw_mod => "`mod NAME { ... }`",
        Rule::ident | Rule::name => "a name",
        Rule::version_item | Rule::kw_version => "`version`",
        Rule::priority_item | Rule::kw_priority => "`priority`",
        Rule::description_item | Rule::kw_description => "`description`",
        Rule::lua_item | Rule::kw_lua => "`lua`",
        Rule::config_block | Rule::kw_config => "`config { ... }`",
        Rule::config_field => "a config field (`name: type = default`)",
        Rule::type_name | Rule::scalar_type | Rule::list_type | Rule::map_type => {
            "a type (bool, int, float, string, duration, size, list<T>, map<T>)"
        }
        Rule::phase | Rule::kw_on => "`on request|response|log { ... }`",
        Rule::phase_name => "`request`, `response` or `log`",
        Rule::block => "`{`",
        Rule::let_stmt | Rule::kw_let => "`let`",
        Rule::if_stmt | Rule::kw_if => "`if`",
        Rule::else_block | Rule::kw_else => "`else`",
        Rule::respond_stmt | Rule::kw_respond => "`respond`",
        Rule::forward_stmt | Rule::kw_forward => "`forward`",
        Rule::set_stmt | Rule::kw_set => "`set`",
        Rule::add_stmt | Rule::kw_add => "`add`",
        Rule::remove_stmt | Rule::kw_remove => "`remove`",
        Rule::log_stmt | Rule::kw_log => "`log`",
        Rule::next_stmt => "`next`",
        Rule::call_stmt | Rule::call => "a call",
        Rule::header_map => "`{ \"header\": value }`",
        Rule::header_pair => "`\"header\": value`",
        Rule::option_map => "`{ option: value }`",
        Rule::option_pair => "`option: value`",
        Rule::target | Rule::field_target | Rule::target_root => "`req.…`, `resp.…` or `ctx.…`",
        Rule::header_target | Rule::header_owner => {
            "`req.header[\"name\"]` or `resp.header[\"name\"]`"
        }
        Rule::log_level => "a log level (debug, info, warn, error)",
        Rule::expr | Rule::or_expr | Rule::and_expr | Rule::not_expr | Rule::cmp_expr => {
            "an expression"
        }
        Rule::add_expr | Rule::mul_expr | Rule::neg_expr | Rule::postfix => "an expression",
        Rule::or_op => "`or`",
        Rule::and_op => "`and`",
        Rule::cmp_op => "a comparison",
        Rule::add_op | Rule::mul_op | Rule::neg_op => "an operator",
        Rule::not_op => "`not`",
        Rule::argument => "an argument",
        Rule::list => "a list",
        Rule::variable | Rule::var_path | Rule::interp_var => "a `$variable`",
        Rule::var_index => "`[\"name\"]`",
        Rule::string | Rule::raw_string => "a string",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::duration => "a duration (like 250ms, 5s)",
        Rule::size => "a size (like 512B, 64KiB)",
        Rule::boolean => "`true` or `false`",
        Rule::nil => "`nil`",
        Rule::interp_expr => "`${expression}`",
        Rule::escape => "an escape (\\\" \\\\ \\n \\t \\r \\$ \\0)",
        _ => return None,
    })
}

//! Making sense of what the TOML parser reports about a broken file: where a key
//! given twice belongs, and which of its recovery's errors are follow-ons of one
//! array or inline table left open. Must not touch: the file structs.

use super::*;

/// The path of the last key written before `offset` whose dotted name ends with
/// `token` (`workers`, `a.b`): for a duplicate key, its first occurrence.
pub(super) fn first_occurrence(root: &DeTable, token: &str, offset: usize) -> Option<Vec<Segment>> {
    if token.is_empty() {
        return None;
    }
    let tail: Vec<Segment> = token
        .split('.')
        .map(|k| Segment::Key(k.to_owned()))
        .collect();
    let mut best: Option<(usize, Vec<Segment>)> = None;
    let mut path = Vec::new();
    visit_keys(root, &mut path, &mut |path, start| {
        let better = best.as_ref().is_none_or(|(at, _)| start > *at);
        if start < offset && path.ends_with(&tail) && better {
            best = Some((start, path.to_vec()));
        }
    });
    best.map(|(_, path)| path)
}

/// Calls `found` with the path and key position of every key under `table`.
fn visit_keys(table: &DeTable, path: &mut Vec<Segment>, found: &mut dyn FnMut(&[Segment], usize)) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        found(path, key.span().start);
        visit_value(value.get_ref(), path, found);
        path.pop();
    }
}

fn visit_value(value: &DeValue, path: &mut Vec<Segment>, found: &mut dyn FnMut(&[Segment], usize)) {
    match value {
        DeValue::Table(table) => visit_keys(table, path, found),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                visit_value(item.get_ref(), path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// An array or inline table left open runs on over the lines after it, and the
/// parser's recovery reads them as its items: every later key is "string values must
/// be quoted", every line end "missing comma", and the one error that says what is
/// wrong ("unclosed array", at the end of the run) is not on the line with the
/// mistake. Each such run becomes one error at its opening bracket; the errors inside
/// it are dropped (errors before and after it stay).
pub(super) fn unclosed(text: &str, root: &DeTable, mut errors: Vec<ShapeError>) -> Vec<ShapeError> {
    let runs: Vec<(Range<usize>, ShapeError)> = errors
        .iter()
        .filter(|e| {
            e.message.starts_with("unclosed array")
                || e.message.starts_with("unclosed inline table")
        })
        .filter_map(|e| {
            let end = e.span.as_ref()?.start;
            let (path, span) = opened_run(text, root, end)?;
            let (what, close) = match text.get(span.start..)?.starts_with('[') {
                true => ("array", ']'),
                false => ("inline table", '}'),
            };
            // Said where the bracket is: the parser says it where the run ends.
            let inside = errors.iter().filter(|e| in_run(e, &span)).count();
            let mut message = format!("unclosed {what}, expected `{close}`");
            if inside > 1 {
                message.push_str(" (the lines after it were read as its items)");
            }
            let error = ShapeError {
                key: render_path(&path),
                span: Some(span.start..span.start + 1),
                message,
            };
            Some((span, error))
        })
        .collect();
    // An inline table left open says nothing about it where it opens: the parser reads
    // the lines after it as keys of the table around it ("missing key for inline
    // table element", "missing comma between key-value pairs"). One whose text does
    // not end with its brace was not closed: it and that cascade after it are one
    // error (the first: one that opens inside another's run is part of it).
    let mut runs = runs;
    let cascade = |e: &ShapeError| {
        e.message
            .starts_with("missing key for inline table element")
            || e.message
                .starts_with("missing comma between key-value pairs")
            || e.message.starts_with("unclosed inline table")
    };
    let mut open = Vec::new();
    unclosed_inline_tables(text, root, &mut Vec::new(), &mut open);
    for (path, span) in open {
        if runs.iter().any(|(run, _)| run.contains(&span.start)) {
            continue;
        }
        let end = errors
            .iter()
            .filter(|e| cascade(e))
            .filter_map(|e| e.span.as_ref().map(|s| s.start))
            .filter(|&at| at >= span.start)
            .max();
        let Some(end) = end else { continue };
        let error = ShapeError {
            key: render_path(&path),
            span: Some(span.start..span.start + 1),
            message:
                "unclosed inline table, expected `}` (the lines after it were read as its items)"
                    .to_owned(),
        };
        runs.push((span.start..end, error));
    }
    if runs.is_empty() {
        return errors;
    }
    // A run that opens inside another (its brace was read as the other's items) is
    // part of that one.
    runs.sort_by_key(|(run, _)| run.start);
    let mut outer: Vec<(Range<usize>, ShapeError)> = Vec::with_capacity(runs.len());
    for (run, error) in runs {
        if !outer
            .iter()
            .any(|(o, _)| o.start <= run.start && run.start <= o.end)
        {
            outer.push((run, error));
        }
    }
    let runs = outer;
    errors.retain(|e| !runs.iter().any(|(run, _)| in_run(e, run)));
    errors.extend(runs.into_iter().map(|(_, error)| error));
    errors.sort_by_key(|e| e.span.as_ref().map_or(usize::MAX, |span| span.start));
    errors
}

/// Whether `error` is at a place inside `run` (its brackets included).
fn in_run(error: &ShapeError, run: &Range<usize>) -> bool {
    error
        .span
        .as_ref()
        .is_some_and(|span| run.start <= span.start && span.start <= run.end)
}

/// The outermost array or inline table whose recovered value ends at `end`, with its
/// path and span.
fn opened_run(text: &str, table: &DeTable, end: usize) -> Option<(Vec<Segment>, Range<usize>)> {
    let mut path = Vec::new();
    let mut found = None;
    find_run_in_table(text, table, end, &mut path, &mut found);
    found
}

fn find_run_in_table(
    text: &str,
    table: &DeTable,
    end: usize,
    path: &mut Vec<Segment>,
    found: &mut Option<(Vec<Segment>, Range<usize>)>,
) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        find_run_in_value(text, value, end, path, found);
        path.pop();
    }
}

fn find_run_in_value(
    text: &str,
    value: &Spanned<DeValue>,
    end: usize,
    path: &mut Vec<Segment>,
    found: &mut Option<(Vec<Segment>, Range<usize>)>,
) {
    if found.is_some() {
        return;
    }
    let span = value.span();
    // Not a `[header]` table, whose span starts with a bracket too.
    let opens = match value.get_ref() {
        DeValue::Array(_) => '[',
        DeValue::Table(_) => '{',
        _ => '\0',
    };
    if span.end == end
        && text
            .get(span.start..)
            .is_some_and(|rest| rest.starts_with(opens))
    {
        *found = Some((path.clone(), span));
        return;
    }
    match value.get_ref() {
        DeValue::Table(table) => find_run_in_table(text, table, end, path, found),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                find_run_in_value(text, item, end, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Every inline table (`{`) whose text does not end with its closing brace, with
/// its path and span.
fn unclosed_inline_tables(
    text: &str,
    table: &DeTable,
    path: &mut Vec<Segment>,
    out: &mut Vec<(Vec<Segment>, Range<usize>)>,
) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        unclosed_in_value(text, value, path, out);
        path.pop();
    }
}

fn unclosed_in_value(
    text: &str,
    value: &Spanned<DeValue>,
    path: &mut Vec<Segment>,
    out: &mut Vec<(Vec<Segment>, Range<usize>)>,
) {
    let span = value.span();
    match value.get_ref() {
        DeValue::Table(table) => {
            let body = text.get(span.clone()).unwrap_or("");
            if body.starts_with('{') && !body.trim_end().ends_with('}') {
                out.push((path.clone(), span));
                return;
            }
            unclosed_inline_tables(text, table, path, out);
        }
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                unclosed_in_value(text, item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

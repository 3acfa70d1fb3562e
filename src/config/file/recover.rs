//! Making sense of what the TOML parser reports about a broken file: where a key
//! given twice belongs. Must not touch: the file structs.

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

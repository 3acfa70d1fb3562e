//! Keeps `docs/stdlib.md`, the users' reference of the standard library, honest
//! against the signature table (`proxycache::stdlib::SIGNATURES`):
//!
//! - every function has exactly one `###` section whose heading names it; each of its
//!   arguments has a row `| `NAME` | TYPE | DEFAULT | ... |` there with the table's
//!   type (`, *literal*` when it must be a literal) and `required` exactly when it is;
//!   each field of its result record has a row with the field's type;
//! - the summary table lists every function with its arguments, phases and whether
//!   pcmod can call it;
//! - every ```` ```pcmod ```` block that is a whole module (`mod NAME {`) builds into a
//!   generation, and when it has Lua, a worker VM is built too (the chunk compiled and
//!   its top level run); module names are unique across the page;
//! - each function section has a pcmod-only example and one with inline Lua (Lua-only
//!   functions: the Lua one; the helpers: a pcmod one), and each example in a
//!   function section calls one of that section's functions.
//!
//! Failures name the doc line of the heading or the code block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proxycache::generation::Generation;
use proxycache::pipeline::StdState;
use proxycache::script::ast::PhaseKind;
use proxycache::stdlib::{ArgDefault, FnSig, Returns, ALL_PHASES, SIGNATURES};
use proxycache::Config;

const DOC: &str = "docs/stdlib.md";

/// The config every example is built with: the upstreams the examples name.
const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1

[admin]
listen = ""

[upstreams.app]
servers = ["builtin:echo"]

[upstreams.api]
servers = ["builtin:echo"]

[upstreams.auth]
servers = ["builtin:echo"]

[upstreams.pool]
servers = ["builtin:echo", "builtin:echo"]

[[routes]]
upstream = "app"
"#;

/// A fenced code block.
struct Block {
    lang: String,
    /// 1-based doc line of the opening fence.
    line: usize,
    text: String,
    /// The module's name, when the block is a whole module.
    module: Option<String>,
}

impl Block {
    fn has_lua(&self) -> bool {
        self.text
            .lines()
            .any(|l| l.trim_start().starts_with("lua \"\"\""))
    }

    fn is_module(&self) -> bool {
        self.lang == "pcmod" && self.module.is_some()
    }
}

/// A `###` section: from its heading to the next heading of level 3 or less.
struct Section {
    heading: String,
    /// 1-based doc line of the heading.
    line: usize,
    /// Its lines, the heading included (code blocks too).
    text: String,
    /// Indexes into [`Doc::blocks`].
    blocks: Vec<usize>,
}

struct Doc {
    lines: Vec<String>,
    blocks: Vec<Block>,
    sections: Vec<Section>,
}

fn read_doc() -> Doc {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();

    let mut blocks = Vec::new();
    // (level, heading text, 0-based line) of every heading outside code blocks.
    let mut headings = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            Some(block) => {
                if trimmed.trim_end() == "```" {
                    if let Some(b) = open.take() {
                        blocks.push(b);
                    }
                } else {
                    if block.module.is_none() {
                        block.module = module_name(line);
                    }
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
            None if trimmed.starts_with("```") => {
                open = Some(Block {
                    lang: trimmed.trim_start_matches('`').trim().to_owned(),
                    line: i + 1,
                    text: String::new(),
                    module: None,
                });
            }
            None if line.starts_with('#') => {
                let level = line.chars().take_while(|c| *c == '#').count();
                headings.push((level, line[level..].trim().to_owned(), i));
            }
            None => {}
        }
    }
    if let Some(b) = open {
        panic!("{DOC}:{}: code block never closed", b.line);
    }

    let mut sections = Vec::new();
    for (n, (level, heading, start)) in headings.iter().enumerate() {
        if *level != 3 {
            continue;
        }
        let end = headings[n + 1..]
            .iter()
            .find(|(l, _, _)| *l <= 3)
            .map_or(lines.len(), |(_, _, i)| *i);
        let section_blocks = blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.line > *start && b.line <= end)
            .map(|(i, _)| i)
            .collect();
        sections.push(Section {
            heading: heading.clone(),
            line: start + 1,
            text: lines[*start..end].join("\n"),
            blocks: section_blocks,
        });
    }
    Doc {
        lines,
        blocks,
        sections,
    }
}

/// `NAME` of a line `mod NAME {`.
fn module_name(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("mod ")?;
    let name = rest.strip_suffix('{')?.trim();
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| name.to_owned())
}

fn all_sigs() -> impl Iterator<Item = &'static FnSig> {
    SIGNATURES.iter().flat_map(|area| area.iter())
}

fn is_helper(sig: &FnSig) -> bool {
    !sig.name.starts_with("std.")
}

/// The words of a heading: runs of `[A-Za-z0-9_.]`, without a trailing dot.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `word` occurs in `text` not as part of a longer name.
fn has_word(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(name_char) && !after.is_some_and(name_char)
    })
}

/// The sections whose heading names `sig`.
fn sections_of<'d>(doc: &'d Doc, sig: &FnSig) -> Vec<&'d Section> {
    doc.sections
        .iter()
        .filter(|s| words(&s.heading).contains(&sig.name))
        .collect()
}

/// The cells of a table row `| a | b | c |`, trimmed.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

fn phases_text(phases: &[PhaseKind]) -> String {
    if phases == ALL_PHASES {
        return "all".into();
    }
    phases
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn every_function_argument_and_field_is_documented() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for sig in all_sigs() {
        let found = sections_of(&doc, sig);
        let section = match found.as_slice() {
            [one] => *one,
            [] => {
                problems.push(format!("{DOC}: no `###` heading names `{}`", sig.name));
                continue;
            }
            many => {
                let lines: Vec<String> = many.iter().map(|s| s.line.to_string()).collect();
                problems.push(format!(
                    "{DOC}: `{}` is named by several `###` headings (lines {})",
                    sig.name,
                    lines.join(", ")
                ));
                continue;
            }
        };
        let rows: Vec<Vec<&str>> = section.text.lines().filter_map(cells).collect();
        for arg in sig.args {
            if !has_word(&section.text, arg.name) {
                problems.push(format!(
                    "{DOC}:{}: section `{}` does not mention argument `{}` of `{}`",
                    section.line, section.heading, arg.name, sig.name
                ));
                continue;
            }
            if is_helper(sig) {
                continue; // one table for all helpers, by function
            }
            let ty = if arg.literal {
                format!("{}, *literal*", arg.ty.name())
            } else {
                arg.ty.name().to_owned()
            };
            let required = arg.default == ArgDefault::Required;
            let code = format!("`{}`", arg.name);
            let row_ok = rows.iter().any(|r| {
                r.len() >= 4 && r[0] == code && r[1] == ty && (r[2] == "required") == required
            });
            if !row_ok {
                problems.push(format!(
                    "{DOC}:{}: section `{}` has no argument row `| {code} | {ty} | {} | ... |` for `{}`",
                    section.line,
                    section.heading,
                    if required { "required" } else { "DEFAULT" },
                    sig.name
                ));
            }
        }
        if let Returns::Record(record) = &sig.returns {
            for (field, ty) in record.fields {
                let code = format!("`{field}`");
                if !rows
                    .iter()
                    .any(|r| r.len() >= 3 && r[0] == code && r[1] == ty.name())
                {
                    problems.push(format!(
                        "{DOC}:{}: section `{}` has no result row `| {code} | {} | ... |` for `{}`",
                        section.line,
                        section.heading,
                        ty.name(),
                        sig.name
                    ));
                }
            }
        }
    }
    // Every section under "## Functions" is about some function (a typo in a heading
    // would otherwise leave the function undocumented and the section orphaned).
    let functions_at = doc
        .lines
        .iter()
        .position(|l| l == "## Functions")
        .unwrap_or_else(|| panic!("{DOC} has no `## Functions` heading"));
    let next_part = doc.lines[functions_at + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(doc.lines.len(), |i| functions_at + 1 + i);
    for section in &doc.sections {
        let inside = section.line > functions_at && section.line <= next_part;
        if inside && !all_sigs().any(|s| words(&section.heading).contains(&s.name)) {
            problems.push(format!(
                "{DOC}:{}: heading `{}` names no function of the signature table",
                section.line, section.heading
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_summary_table_matches_the_signatures() {
    let doc = read_doc();
    let start = doc
        .lines
        .iter()
        .position(|l| l == "## Summary")
        .unwrap_or_else(|| panic!("{DOC} has no `## Summary` heading"));
    let rows: Vec<(usize, Vec<&str>)> = doc.lines[start + 1..]
        .iter()
        .enumerate()
        .take_while(|(_, l)| !l.starts_with("## "))
        .filter_map(|(i, l)| cells(l).map(|c| (start + 2 + i, c)))
        .collect();
    let mut problems = Vec::new();
    for sig in all_sigs() {
        let code = format!("`{}`", sig.name);
        let Some((line, row)) = rows
            .iter()
            .find(|(_, r)| r.len() == 5 && r[0].contains(&code))
        else {
            problems.push(format!("{DOC}: the summary table has no row for {code}"));
            continue;
        };
        let args = if sig.args.is_empty() {
            "none".to_owned()
        } else {
            let list: Vec<String> = sig
                .args
                .iter()
                .map(|a| match a.default {
                    ArgDefault::Required => a.name.to_owned(),
                    _ => format!("{}?", a.name),
                })
                .collect();
            format!("`{}`", list.join(", "))
        };
        let phases = phases_text(sig.phases);
        let from = if sig.id.lua_only() {
            "Lua only"
        } else if is_helper(sig) {
            "pcmod only"
        } else {
            "yes"
        };
        for (what, want, got) in [
            ("arguments", args.as_str(), row[1]),
            ("phases", phases.as_str(), row[3]),
            ("pcmod", from, row[4]),
        ] {
            if want != got {
                problems.push(format!(
                    "{DOC}:{line}: summary row of {code}: {what} are `{got}`, the signature says `{want}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_module_example_builds() {
    let doc = read_doc();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    let mut built = 0;
    for block in doc.blocks.iter().filter(|b| b.is_module()) {
        let Some(name) = block.module.as_deref() else {
            continue;
        };
        if let Some(first) = seen.insert(name.to_owned(), block.line) {
            problems.push(format!(
                "{DOC}:{}: module `{name}` is also the example at line {first}; names must be unique",
                block.line
            ));
            continue;
        }
        if let Err(e) = build(name, &block.text) {
            problems.push(format!(
                "{DOC}:{}: example `{name}` (its line 1 is doc line {}) does not build:\n{e}",
                block.line,
                block.line + 1
            ));
        }
        built += 1;
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n\n"));
    assert!(built >= 20, "only {built} module examples found in {DOC}");
}

/// Builds a generation with the one module `name`, and its worker VM when it has Lua.
fn build(name: &str, source: &str) -> Result<(), String> {
    let config = Config::from_toml_str(CONFIG, None, Path::new("."))
        .unwrap_or_else(|e| panic!("the test's config: {e}"));
    let sources = vec![(PathBuf::from(format!("{name}.pcmod")), source.to_owned())];
    let generation =
        Generation::build_from(1, config, &sources, None, Arc::new(StdState::default()))
            .map_err(|d| proxycache::script::diag::render_all(&d))?;
    if let Some(rt) = generation.pipeline.lua.as_ref() {
        rt.vm(0).map_err(|e| format!("worker VM: {e}"))?;
    }
    Ok(())
}

#[test]
fn every_function_section_has_its_examples() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for section in &doc.sections {
        let sigs: Vec<&FnSig> = all_sigs()
            .filter(|s| words(&section.heading).contains(&s.name))
            .collect();
        if sigs.is_empty() {
            continue;
        }
        let examples: Vec<&Block> = section
            .blocks
            .iter()
            .map(|i| &doc.blocks[*i])
            .filter(|b| b.is_module())
            .collect();
        let pcmod_only = examples.iter().filter(|b| !b.has_lua()).count();
        let with_lua = examples.iter().filter(|b| b.has_lua()).count();
        let where_ = format!("{DOC}:{}: section `{}`", section.line, section.heading);
        if sigs.iter().all(|s| s.id.lua_only()) {
            if with_lua == 0 {
                problems.push(format!("{where_} has no example module with inline Lua"));
            }
        } else if sigs.iter().all(|s| is_helper(s)) {
            if pcmod_only == 0 {
                problems.push(format!("{where_} has no pcmod example module"));
            }
        } else {
            if pcmod_only == 0 {
                problems.push(format!("{where_} has no pcmod-only example module"));
            }
            if with_lua == 0 {
                problems.push(format!("{where_} has no example module with inline Lua"));
            }
        }
        for block in examples {
            let calls_one = sigs.iter().any(|s| {
                if is_helper(s) {
                    block.text.contains(&format!("{}(", s.name))
                } else {
                    block.text.contains(s.name)
                }
            });
            if !calls_one {
                problems.push(format!(
                    "{DOC}:{}: the example in section `{}` calls none of its functions",
                    block.line, section.heading
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

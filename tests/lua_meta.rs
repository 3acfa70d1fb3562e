//! Editor support (LUA.md): `stdlib/proxycache.lua`, the LuaLS definitions, is exactly
//! what `proxycache::lua::meta::render` makes from the signature table; it defines every
//! `std.*` function; and its `Request` and `Response` classes document every field and
//! method `src/lua/handles.rs` registers, and nothing else. No `lua-language-server` is
//! run; the file is only compiled as Lua, to catch broken syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proxycache::lua::meta;

fn crate_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn committed() -> String {
    std::fs::read_to_string(crate_file(meta::PATH)).unwrap_or_default()
}

#[test]
fn committed_file_is_the_rendered_one() {
    let rendered = meta::render();
    let on_disk = committed();
    if on_disk == rendered {
        return;
    }
    if std::env::var("UPDATE_LUA_META").as_deref() == Ok("1") {
        let path = crate_file(meta::PATH);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create stdlib/");
        }
        std::fs::write(&path, &rendered).expect("write stdlib/proxycache.lua");
        eprintln!("UPDATE_LUA_META=1: rewrote {}", meta::PATH);
        return;
    }
    let line = on_disk
        .lines()
        .zip(rendered.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| on_disk.lines().count().min(rendered.lines().count()));
    panic!(
        "{} differs from proxycache::lua::meta::render() (first at line {}: {:?} vs {:?}).\n\
         It is generated: run `UPDATE_LUA_META=1 cargo test --test lua_meta` to rewrite it, \
         then commit it.",
        meta::PATH,
        line + 1,
        on_disk.lines().nth(line).unwrap_or("<end of file>"),
        rendered.lines().nth(line).unwrap_or("<end of file>"),
    );
}

#[test]
fn rendered_file_is_valid_lua() {
    let lua = mlua::Lua::new();
    if let Err(e) = lua
        .load(meta::render())
        .set_name("=proxycache.lua")
        .into_function()
    {
        panic!("the rendered definitions do not compile as Lua: {e}");
    }
}

/// The annotation block (the `---` lines) right above `function NAME(`.
fn block_above<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let lines: Vec<&str> = text.lines().collect();
    let head = format!("function {name}(");
    let at = lines.iter().position(|l| l.starts_with(&head))?;
    let start = lines[..at]
        .iter()
        .rposition(|l| !l.starts_with("---"))
        .map_or(0, |i| i + 1);
    Some(lines[start..at].to_vec())
}

#[test]
fn every_std_function_is_defined_with_its_arguments() {
    // The committed file is the rendered one (checked above); reading the rendered text
    // keeps this test independent of an UPDATE_LUA_META=1 rewrite running beside it.
    let text = meta::render();
    let sigs: Vec<_> = proxycache::stdlib::SIGNATURES
        .iter()
        .flat_map(|area| area.iter())
        .filter(|s| s.name.starts_with("std."))
        .collect();
    assert!(!sigs.is_empty(), "no std.* entries in SIGNATURES");
    for sig in &sigs {
        let Some(block) = block_above(&text, sig.name) else {
            panic!("{} is not defined in {}", sig.name, meta::PATH);
        };
        for arg in sig.args {
            let documented = block.iter().any(|l| {
                l.strip_prefix("---@param ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|n| n.trim_end_matches('?') == arg.name)
            });
            assert!(documented, "{}: no ---@param for `{}`", sig.name, arg.name);
        }
        let named = sig.args.is_empty()
            || block
                .iter()
                .any(|l| l.starts_with("---@overload fun(args: {"));
        assert!(named, "{}: no overload for named arguments", sig.name);
    }
    let known: BTreeSet<&str> = sigs.iter().map(|s| s.name).collect();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("function std.") {
            let name = format!("std.{}", rest.split('(').next().unwrap_or(""));
            assert!(
                known.contains(name.as_str()),
                "{name} is defined but not in SIGNATURES"
            );
        }
    }
}

/// Which handle a piece of `handles.rs` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Request,
    Response,
    /// `ctx` takes any key; its names are not checked.
    Ctx,
    /// Helpers of both `req` and `resp` (e.g. a function that gives either a `body`).
    Shared,
}

/// The scope of the item a top-level line starts: `fn req_table`, `impl UserData for
/// ReqHandle` -> Request; `fn add_object_methods<M: UserDataMethods<LuaResponse>>`,
/// `const RESP_METHODS` -> Response; `CtxHandle` -> Ctx; anything else -> Shared.
fn item_scope(line: &str) -> Scope {
    let lower = line.to_lowercase();
    if lower.contains("ctx") {
        return Scope::Ctx;
    }
    match (lower.contains("req"), lower.contains("resp")) {
        (true, false) => Scope::Request,
        (false, true) => Scope::Response,
        _ => Scope::Shared,
    }
}

fn is_lua_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with("__")
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A string literal that is a Lua name, at the start of `s` (after blanks and newlines).
fn leading_name(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    let name = &s[..s.find('"')?];
    is_lua_name(name).then_some(name)
}

/// The string literals of `line`, each with the text before and after it.
fn literals(line: &str) -> Vec<(&str, &str, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = line[from..].find('"').map(|i| from + i) {
        let Some(close) = line[open + 1..].find('"').map(|i| open + 1 + i) else {
            break;
        };
        out.push((&line[..open], &line[open + 1..close], &line[close + 1..]));
        from = close + 1;
    }
    out
}

/// The names Lua sees on `req` and on responses, scanned out of `handles.rs` whichever
/// way they are registered: UserData methods and fields (`add_method("NAME"`,
/// `add_method_mut("NAME"`, `add_field_method_get("NAME"`), method tables
/// (`raw_set("NAME"`, `for (method, _) in [("NAME", _), ...]`), fields served by an
/// `__index` function (match arms `"NAME" =>` / `b"NAME" =>`, tests `key == "NAME"`),
/// and `const` lists of names.
fn registered_names(src: &str) -> BTreeMap<Scope, BTreeSet<String>> {
    const CALLS: [&str; 6] = [
        "add_method(",
        "add_method_mut(",
        "add_field_method_get(",
        "add_field_method_set(",
        "add_function(",
        "raw_set(",
    ];
    let mut found: BTreeMap<Scope, BTreeSet<String>> = BTreeMap::new();
    let mut scope = Scope::Shared;
    let mut in_list = false;
    let mut offset = 0;
    for with_newline in src.split_inclusive('\n') {
        let line = with_newline.trim_end();
        let rest_of_file = &src[offset..];
        offset += with_newline.len();
        if line.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            scope = item_scope(line);
            in_list = line.contains("const ") && line.contains("&[&str]");
        }
        let mut names: Vec<&str> = Vec::new();
        for call in CALLS {
            for (i, _) in line.match_indices(call) {
                names.extend(leading_name(&rest_of_file[i + call.len()..]));
            }
        }
        let every = in_list || (line.trim_start().starts_with("for ") && line.contains(" in ["));
        for (before, text, after) in literals(line) {
            let before = before.trim_end().trim_end_matches('b').trim_end();
            let key = after.trim_start().starts_with("=>")
                || before.ends_with("==")
                || before.ends_with("!=");
            if (every || key) && is_lua_name(text) {
                names.push(text);
            }
        }
        if in_list {
            in_list = !line.contains("];");
        }
        let targets: &[Scope] = match scope {
            Scope::Ctx => &[],
            Scope::Shared => &[Scope::Request, Scope::Response],
            Scope::Request => &[Scope::Request],
            Scope::Response => &[Scope::Response],
        };
        for target in targets {
            let set = found.entry(*target).or_default();
            set.extend(names.iter().map(|n| (*n).to_owned()));
        }
    }
    found
}

/// The fields (`---@field NAME`) and methods (`function CLASS:NAME(`) documented for
/// `class` in the definitions.
fn documented(text: &str, class: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_class = false;
    let method = format!("function {class}:");
    for line in text.lines() {
        if line.starts_with("---@class ") {
            in_class = line.trim_end() == format!("---@class {class}");
            continue;
        }
        if in_class {
            match line.strip_prefix("---@field ") {
                Some(rest) => {
                    let name = rest.split_whitespace().next().unwrap_or("");
                    out.insert(name.trim_end_matches('?').to_owned());
                }
                None => in_class = false,
            }
        }
        if let Some(rest) = line.strip_prefix(&method) {
            out.insert(rest.split('(').next().unwrap_or("").to_owned());
        }
    }
    out
}

#[test]
fn request_and_response_classes_match_handles() {
    let src =
        std::fs::read_to_string(crate_file("src/lua/handles.rs")).expect("read src/lua/handles.rs");
    let text = meta::render();
    let registered = registered_names(&src);
    for (scope, name) in [(Scope::Request, "Request"), (Scope::Response, "Response")] {
        let names = registered.get(&scope).cloned().unwrap_or_default();
        assert!(
            names.len() >= 5,
            "the scan of src/lua/handles.rs found only {names:?} for {name}: did the way \
             methods are registered change? Teach registered_names() in tests/lua_meta.rs"
        );
        let docs = documented(&text, name);
        let missing: Vec<_> = names.difference(&docs).collect();
        assert!(
            missing.is_empty(),
            "{name} in src/lua/handles.rs has {missing:?}, which the `{name}` class in \
             src/lua/meta.rs does not document"
        );
        let extra: Vec<_> = docs.difference(&names).collect();
        assert!(
            extra.is_empty(),
            "the `{name}` class in src/lua/meta.rs documents {extra:?}, which \
             src/lua/handles.rs does not register"
        );
    }
}

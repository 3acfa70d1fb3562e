//! Golden tests of the `.pcmod` language: every module under
//! `tests/fixtures/pcmod/ok/` loads; every module under `tests/fixtures/pcmod/err/`
//! fails with exactly the diagnostics in its snapshot (`tests/snapshots/`).
//!
//! Fixture conventions:
//! - `DIR/NAME.pcmod` is loaded as `DIR/NAME.pcmod` (so messages name it that way) and
//!   its module is called `NAME`, except where the stem mismatch itself is the error.
//! - `DIR/NAME.toml`, when present, is the whole `config.toml` the module is loaded
//!   with (its `[mods.NAME]` overrides are under test); otherwise [`BASE_CONFIG`].
//! - `DIR/NAME/*.pcmod`, when present, are loaded after `NAME.pcmod` in the same
//!   generation (two modules with the same name).
//! - `known_bad/` holds inputs the loader gets wrong today (each file's first line says
//!   `# KNOWN BUG (currently: loads|fails)` and what is expected). Their diagnostics are
//!   not snapshotted; a change in whether they load fails the test, so a fix is noticed
//!   and the fixture can move to `ok/` or `err/`.
//!
//! Also here: a parser fuzz test (random bytes, token soups, mutated fixtures; never a
//! panic), the size and nesting limits, and a check that every full-module example in
//! `docs/pcmod.md` is a fixture, so the docs are tested too.
//!
//! Regenerate snapshots with `INSTA_UPDATE=always cargo test --test pcmod_golden`, then
//! read every changed `.snap` before keeping it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngAlgorithm, TestRng, TestRunner};
use proxycache::script::diag::render_all;
use proxycache::script::parse::{
    parse, MAX_CHAIN, MAX_LINES, MAX_LOGIC_CHAIN, MAX_NESTING, MAX_PREFIX, MAX_STRING,
};
use proxycache::script::{load_sources, Diagnostic, Loaded};
use proxycache::Config;

/// The config every fixture without a sidecar `NAME.toml` is loaded with: two
/// upstreams (`app`, `other`) so `forward` can be checked, and a route.
const BASE_CONFIG: &str = r#"[upstreams.app]
servers = ["builtin:echo"]

[upstreams.other]
servers = ["builtin:echo"]

[[routes]]
upstream = "app"
"#;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/pcmod")
}

/// `path` relative to the fixtures folder, as the loader is told it (`err/x.pcmod`).
fn display_path(path: &Path) -> PathBuf {
    path.strip_prefix(fixtures_dir())
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

fn config_from(text: &str, name: &str) -> Config {
    match Config::from_toml_str(text, Some(Path::new(name)), Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("{name} is not a valid config:\n{e}"),
    }
}

fn base_config() -> Config {
    config_from(BASE_CONFIG, "config.toml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The config for fixture `path`: its sidecar `NAME.toml`, or the base config.
fn config_for(path: &Path) -> Config {
    let sidecar = path.with_extension("toml");
    if sidecar.is_file() {
        config_from(
            &read(&sidecar),
            &display_path(&sidecar).display().to_string(),
        )
    } else {
        base_config()
    }
}

/// The sources for fixture `path`: the file itself, then those of its sidecar folder.
fn sources_for(path: &Path) -> Vec<(PathBuf, String)> {
    let mut sources = vec![(display_path(path), read(path))];
    let dir = path.with_extension("");
    if dir.is_dir() {
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pcmod"))
            .collect();
        extra.sort();
        for p in extra {
            let text = read(&p);
            sources.push((display_path(&p), text));
        }
    }
    sources
}

fn load_fixture(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    load_sources(&config_for(path), &sources_for(path))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ golden tests

#[test]
fn ok_fixtures_load() {
    insta::glob!("fixtures/pcmod/ok/*.pcmod", |path| {
        let loaded = match load_fixture(path) {
            Ok(l) => l,
            Err(diags) => panic!(
                "{} should load, but:\n{}",
                path.display(),
                render_all(&diags)
            ),
        };
        let name = stem(path);
        assert!(
            loaded.modules.iter().any(|m| m.name == name),
            "{}: module `{name}` is not among the loaded modules",
            path.display()
        );
    });
}

#[test]
fn ok_fixtures_load_together() {
    let dir = fixtures_dir().join("ok");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("ok fixtures folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcmod"))
        .collect();
    files.sort();
    let sources: Vec<(PathBuf, String)> =
        files.iter().map(|p| (display_path(p), read(p))).collect();
    match load_sources(&base_config(), &sources) {
        Ok(loaded) => assert_eq!(loaded.modules.len(), files.len()),
        Err(diags) => panic!("ok fixtures fail together:\n{}", render_all(&diags)),
    }
}

#[test]
fn err_fixtures_give_exactly_the_expected_diagnostics() {
    insta::glob!("fixtures/pcmod/err/*.pcmod", |path| {
        let diags = match load_fixture(path) {
            Ok(_) => panic!("{} should fail to load", path.display()),
            Err(d) => d,
        };
        let rendered = render_all(&diags);
        insta::assert_snapshot!(rendered);
    });
}

/// Inputs the loader gets wrong today (see each file's `# KNOWN BUG` header). They are
/// not snapshotted, because their diagnostics are wrong; this test only pins whether they
/// load, so a fix shows up here: then move the fixture to `ok/` or `err/` (and snapshot it).
#[test]
fn known_bad_fixtures_are_still_known_bad() {
    insta::glob!("fixtures/pcmod/known_bad/*.pcmod", |path| {
        let text = read(path);
        let first = text.lines().next().unwrap_or("");
        let expect_load = if first.contains("(currently: loads)") {
            true
        } else if first.contains("(currently: fails)") {
            false
        } else {
            panic!(
                "{}: first line must be `# KNOWN BUG (currently: loads|fails): ...`",
                path.display()
            )
        };
        let result = load_fixture(path);
        assert_eq!(
            result.is_ok(),
            expect_load,
            "{} changed behaviour (fixed?): {}",
            path.display(),
            match &result {
                Ok(_) => "it loads now".to_owned(),
                Err(d) => render_all(d),
            }
        );
    });
}

// ------------------------------------------------------------------ config overrides

/// `[mods.NAME]` in a sidecar config changes `enabled` and `priority` as documented.
#[test]
fn overrides_reach_module_info() {
    let path = fixtures_dir().join("ok/config_types.pcmod");
    let loaded = load_fixture(&path).unwrap_or_else(|d| panic!("{}", render_all(&d)));
    let info = loaded
        .modules
        .iter()
        .find(|m| m.name == "config_types")
        .expect("config_types loaded");
    assert_eq!(info.priority, 7, "priority from [mods.config_types]");
    assert!(info.enabled);
    // Without the sidecar, the module's own priority applies.
    let loaded = load_sources(&base_config(), &sources_for(&path))
        .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(loaded.modules[0].priority, 120);
}

#[test]
fn a_duration_override_may_be_seconds() {
    let path = fixtures_dir().join("ok/toml_duration_seconds.pcmod");
    let loaded = load_fixture(&path).unwrap_or_else(|d| panic!("{}", render_all(&d)));
    let window = loaded.modules[0].config.get("window").map(String::as_str);
    assert_eq!(
        window,
        Some("\"30s\""),
        "window = 30 in toml_duration_seconds.toml"
    );
}

#[test]
fn a_disabled_module_is_listed_but_not_run() {
    let path = fixtures_dir().join("ok/maintenance.pcmod");
    let loaded = load_fixture(&path).unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(loaded.modules.len(), 1);
    assert!(
        !loaded.modules[0].enabled,
        "enabled = false in maintenance.toml"
    );
    assert!(
        loaded.pipeline.is_empty(),
        "a disabled module is not in the pipeline"
    );
}

// ------------------------------------------------------------------ limits

fn module_with_lines(name: &str, lines: usize) -> String {
    let mut s = format!("mod {name} {{\n");
    for i in 0..lines.saturating_sub(2) {
        let _ = writeln!(s, "  # line {}", i + 2);
    }
    s.push_str("}\n");
    s
}

#[test]
fn the_line_limit_is_exact() {
    let at_limit = module_with_lines("big", MAX_LINES);
    assert_eq!(at_limit.lines().count(), MAX_LINES);
    if let Err(d) = parse("big.pcmod", &at_limit) {
        panic!("{MAX_LINES} lines must parse:\n{}", d.render());
    }
    let over = module_with_lines("big", MAX_LINES + 1);
    let d = parse("big.pcmod", &over).expect_err("one line too many");
    assert_eq!(
        d.message,
        format!(
            "module has {} lines; the limit is {MAX_LINES}",
            MAX_LINES + 1
        )
    );
    assert!(d.hint.is_some(), "the limit error has a hint");
}

fn nested_parens(depth: usize) -> String {
    format!(
        "mod deep {{\n  on request {{\n    let x = {}1{}\n  }}\n}}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    )
}

#[test]
fn the_string_limit_is_clear() {
    let source = format!(
        "mod long {{ on request {{ let s = \"{}\" }} }}",
        "a".repeat(MAX_STRING + 1)
    );
    let d = parse("long.pcmod", &source).expect_err("string too long");
    assert_eq!(d.message, format!("string longer than {MAX_STRING} bytes"));
    assert_eq!((d.line, d.col), (1, 33));
    let ok = format!(
        "mod long {{ on request {{ let s = \"{}\" }} }}",
        "a".repeat(MAX_STRING)
    );
    if let Err(d) = parse("long.pcmod", &ok) {
        panic!("{MAX_STRING} bytes must parse:\n{}", d.render());
    }
}

/// Raw strings are held to the same limit as other strings (they had none).
#[test]
fn the_string_limit_holds_for_raw_strings() {
    let source = format!(
        "mod long {{ on request {{ let s = \"\"\"{}\"\"\" }} }}",
        "a".repeat(MAX_STRING + 1)
    );
    let d = parse("long.pcmod", &source).expect_err("raw string too long");
    assert_eq!(d.message, format!("string longer than {MAX_STRING} bytes"));
    assert_eq!((d.line, d.col), (1, 33));
    let ok = format!(
        "mod long {{ on request {{ let s = \"\"\"{}\"\"\" }} }}",
        "a".repeat(MAX_STRING)
    );
    if let Err(d) = parse("long.pcmod", &ok) {
        panic!("{MAX_STRING} bytes must parse:\n{}", d.render());
    }
}

fn chain(op: &str, operand: &str, n: usize) -> String {
    format!(
        "mod chain {{ on request {{ let x = {} }} }}",
        vec![operand; n].join(&format!(" {op} "))
    )
}

/// The operand limits are exact and say which limit it is: `and`/`or` chains (built
/// balanced) allow many more operands than arithmetic chains (built left-deep).
#[test]
fn the_chain_limits_are_exact() {
    for (op, operand, limit, message) in [
        (
            "or",
            "$path == \"/\"",
            MAX_LOGIC_CHAIN,
            format!("more than {MAX_LOGIC_CHAIN} operands joined by `or`"),
        ),
        (
            "and",
            "true",
            MAX_LOGIC_CHAIN,
            format!("more than {MAX_LOGIC_CHAIN} operands joined by `and`"),
        ),
        (
            "+",
            "1",
            MAX_CHAIN,
            format!("more than {MAX_CHAIN} operands in one expression"),
        ),
    ] {
        let at_limit = chain(op, operand, limit);
        if let Err(d) = load_sources(&base_config(), &[(PathBuf::from("chain.pcmod"), at_limit)]) {
            panic!("{limit} operands of `{op}` must load:\n{}", render_all(&d));
        }
        let d = parse("chain.pcmod", &chain(op, operand, limit + 1)).expect_err("one too many");
        assert_eq!(d.message, message);
    }
    let prefix = |n: usize| {
        format!(
            "mod p {{ on request {{ let x = {}true }} }}",
            "not ".repeat(n)
        )
    };
    if let Err(d) = parse("p.pcmod", &prefix(MAX_PREFIX)) {
        panic!("{MAX_PREFIX} prefix operators must parse:\n{}", d.render());
    }
    let d = parse("p.pcmod", &prefix(MAX_PREFIX + 1)).expect_err("one too many");
    assert_eq!(
        d.message,
        format!("more than {MAX_PREFIX} prefix operators in a row")
    );
}

/// Runs `f` on a thread with `stack` bytes of stack; `None` if it panicked.
fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .expect("spawn")
        .join()
        .ok()
}

/// The stack `proxycache run` loads modules on (the main thread's).
const MAIN_STACK: usize = 8 << 20;

#[test]
fn the_nesting_limit_is_exact_and_clear() {
    // `mod {` and `on request {` are two levels already. Parsed on a main-thread-sized
    // stack: see `known_bug_deep_input_overflows_small_stacks` for 2 MiB.
    let ok = nested_parens(MAX_NESTING - 2);
    let parsed = on_stack(MAIN_STACK, move || {
        parse("deep.pcmod", &ok).map(|_| ()).map_err(|d| d.render())
    });
    match parsed {
        Some(Ok(())) => {}
        Some(Err(d)) => panic!("{MAX_NESTING} levels must parse:\n{d}"),
        None => panic!("parsing {MAX_NESTING} levels panicked"),
    }
    let over = nested_parens(MAX_NESTING - 1);
    let d = parse("deep.pcmod", &over).expect_err("one level too deep");
    assert_eq!(
        d.message,
        format!("nesting deeper than {MAX_NESTING} levels")
    );
    assert_eq!((d.line, d.col), (3, 13 + MAX_NESTING as u32 - 2));
    assert!(d.hint.is_some());
}

/// Deeply bracketed input of every kind is refused with the nesting error before the
/// parser recurses: no stack overflow even on a small (2 MiB) stack.
#[test]
fn deep_brackets_are_an_error_not_a_stack_overflow() {
    let cases: Vec<(&str, String)> = vec![
        ("parens", nested_parens(100_000)),
        (
            "lists",
            format!(
                "mod deep {{ config {{ x: list<int> = {}1{} }} }}",
                "[".repeat(50_000),
                "]".repeat(50_000)
            ),
        ),
        (
            "blocks",
            format!(
                "mod deep {{ on request {{ {}{} }} }}",
                "if true { ".repeat(10_000),
                "} ".repeat(10_000)
            ),
        ),
        (
            "interpolation",
            format!(
                "mod deep {{ on request {{ log info {}1{} }} }}",
                "\"${".repeat(10_000),
                "}\"".repeat(10_000)
            ),
        ),
        (
            "calls",
            format!(
                "mod deep {{ on request {{ let x = {}1{} }} }}",
                "len(".repeat(10_000),
                ")".repeat(10_000)
            ),
        ),
        // Brackets the scan before the parser cannot see: inside an interpolation,
        // after a string with a line break in it, and in types (`<` is also less-than).
        // The builder bounds those (they overflowed the loader's stack: the process
        // aborted, at load, `check` or a reload).
        (
            "parens in an interpolation",
            format!(
                "mod deep {{ on request {{ respond 200 \"${{{}1{}}}\" }} }}",
                "(".repeat(700),
                ")".repeat(700)
            ),
        ),
        (
            "parens after a string with a line break",
            format!(
                "mod deep {{ on request {{ let x = \"a\nb\" + {}1{} }} }}",
                "(".repeat(700),
                ")".repeat(700)
            ),
        ),
        (
            "types",
            format!(
                "mod deep {{ config {{ x: {}int{} = [] }} }}",
                "list<".repeat(40),
                ">".repeat(40)
            ),
        ),
    ];
    for (what, source) in cases {
        let result = on_stack(2 << 20, move || {
            load_sources(&base_config(), &[(PathBuf::from("deep.pcmod"), source)]).err()
        });
        match result {
            Some(Some(diags)) => {
                assert_eq!(diags.len(), 1, "{what}: {}", render_all(&diags));
                assert_eq!(
                    diags[0].message,
                    format!("nesting deeper than {MAX_NESTING} levels"),
                    "{what}"
                );
            }
            Some(None) => panic!("{what}: deep input loaded"),
            None => panic!("{what}: the loader panicked"),
        }
    }
}

/// Deep input without brackets (long operator chains, prefix and field chains, nested
/// types) is refused with a clear error and never overflows a stack, even when the
/// caller runs on a 2 MiB stack (the loader uses its own thread).
#[test]
fn deep_input_gets_a_clear_error_even_on_small_stacks() {
    let cases: Vec<(&str, String)> = vec![
        (
            "sums",
            format!(
                "mod deep {{ on request {{ let x = 1{} }} }}",
                " + 1".repeat(10_000)
            ),
        ),
        (
            "ands",
            format!(
                "mod deep {{ on request {{ let x = true{} }} }}",
                " and true".repeat(10_000)
            ),
        ),
        (
            "nots",
            format!(
                "mod deep {{ on request {{ let x = {}true }} }}",
                "not ".repeat(10_000)
            ),
        ),
        (
            "negations",
            format!(
                "mod deep {{ on request {{ let x = {}1 }} }}",
                "- ".repeat(10_000)
            ),
        ),
        (
            "fields",
            format!(
                "mod deep {{ on request {{ let x = std.rate_limit(key: \"k\", rate: 1){} }} }}",
                ".allowed".repeat(10_000)
            ),
        ),
        (
            "types",
            format!(
                "mod deep {{ config {{ x: {}int{} = [] }} }}",
                "list<".repeat(10_000),
                ">".repeat(10_000)
            ),
        ),
        ("nesting at the limit", nested_parens(MAX_NESTING - 2)),
    ];
    for (what, source) in cases {
        let result = on_stack(2 << 20, move || {
            load_sources(&base_config(), &[(PathBuf::from("deep.pcmod"), source)])
                .err()
                .map(|d| d[0].message.clone())
        });
        match result {
            Some(Some(message)) => assert!(
                message.contains("nesting")
                    || message.contains("too long")
                    || message.contains("more than"),
                "{what}: unclear error {message:?}"
            ),
            Some(None) => {}
            None => panic!("{what}: the loader panicked"),
        }
    }
}

// ------------------------------------------------------------------ fuzzing

/// Keywords, punctuation and literals of the grammar, for token soups.
const TOKENS: &[&str] = &[
    "mod",
    "version",
    "priority",
    "description",
    "config",
    "on",
    "lua",
    "let",
    "if",
    "else",
    "respond",
    "forward",
    "set",
    "add",
    "remove",
    "log",
    "next",
    "and",
    "or",
    "not",
    "in",
    "starts_with",
    "ends_with",
    "contains",
    "true",
    "false",
    "nil",
    "request",
    "response",
    "debug",
    "info",
    "warn",
    "error",
    "bool",
    "int",
    "float",
    "string",
    "duration",
    "size",
    "list",
    "map",
    "req",
    "resp",
    "ctx",
    "header",
    "path",
    "query",
    "status",
    "std",
    "rate_limit",
    "url_rewrite",
    "request_id",
    "inject",
    "len",
    "lower",
    "x",
    "api_gate",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "<",
    ">",
    "<=",
    ">=",
    "==",
    "!=",
    "=",
    "~",
    "+",
    "-",
    "*",
    "/",
    "%",
    ".",
    ",",
    ":",
    "$",
    "${",
    "\"",
    "\"\"\"",
    "\\",
    "\\n",
    "\\$",
    "#",
    "\n",
    " ",
    "\t",
    "0",
    "1",
    "42",
    "1.5",
    "250ms",
    "5s",
    "1m",
    "2h",
    "1d",
    "512B",
    "64KiB",
    "10MiB",
    "\"x\"",
    "\"a $path b\"",
    "\"${1 + 2}\"",
    "$path",
    "$ctx.user",
    "$req.header[\"x\"]",
    "$config.rps",
    "'",
    "é",
    "\u{0}",
    "\r\n",
];

fn fuzz_runner(cases: u32) -> TestRunner {
    let config = PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Parses `source`; any panic fails the test with the input that caused it.
fn parse_never_panics(source: &str) -> Result<(), TestCaseError> {
    let result = std::panic::catch_unwind(|| {
        let _ = parse("fuzz.pcmod", source).map_err(|d| d.render());
    });
    prop_assert!(result.is_ok(), "parse panicked on {source:?}");
    Ok(())
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut runner = fuzz_runner(2_000);
    let strategy = proptest::collection::vec(any::<u8>(), 0..400)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    runner
        .run(&strategy, |s| parse_never_panics(&s))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fuzz_token_soups_never_panic() {
    let mut runner = fuzz_runner(2_000);
    let token = proptest::sample::select(TOKENS);
    let strategy = proptest::collection::vec(token, 0..120).prop_map(|tokens| {
        let mut s = String::new();
        for (i, t) in tokens.iter().enumerate() {
            if i % 3 == 0 {
                s.push(' ');
            }
            s.push_str(t);
        }
        s
    });
    runner
        .run(&strategy, |s| parse_never_panics(&s))
        .unwrap_or_else(|e| panic!("{e}"));
    // Soups inside a module frame reach further into the grammar.
    let framed = proptest::collection::vec(proptest::sample::select(TOKENS), 0..60)
        .prop_map(|tokens| format!("mod x {{ on request {{ {} }} }}", tokens.join(" ")));
    runner
        .run(&framed, |s| parse_never_panics(&s))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Valid modules with a few random edits go through the whole loader (parse, config,
/// every check): errors are fine, panics are not.
#[test]
fn fuzz_mutated_fixtures_never_panic_the_loader() {
    let dir = fixtures_dir().join("ok");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .expect("ok fixtures folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcmod"))
        .map(|p| read(&p))
        .collect();
    seeds.sort();
    let config = base_config();
    let mut runner = fuzz_runner(1_000);
    let edit = (0usize..10_000, 0usize..8, proptest::sample::select(TOKENS));
    let strategy = (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit, 1..6),
    );
    runner
        .run(&strategy, |(seed, edits)| {
            let mut s = seed;
            for (at, len, token) in edits {
                let mut start = at % (s.len() + 1);
                while !s.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = (start + len).min(s.len());
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.replace_range(start..end, token);
            }
            let result = std::panic::catch_unwind(|| {
                let name = PathBuf::from("fuzz.pcmod");
                match load_sources(&config, &[(name, s.clone())]) {
                    Ok(_) => String::new(),
                    Err(d) => render_all(&d),
                }
            });
            prop_assert!(result.is_ok(), "the loader panicked on {s:?}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------ docs

/// Every fenced `pcmod` block in docs/pcmod.md that is a whole module (it has a
/// `mod NAME {` line) is, byte for byte, `tests/fixtures/pcmod/ok/NAME.pcmod`.
#[test]
fn docs_examples_are_fixtures() {
    let doc = read(&manifest_dir().join("docs/pcmod.md"));
    let mut in_block = false;
    let mut block = String::new();
    let mut checked = 0;
    for line in doc.lines() {
        if !in_block && line.trim_start().starts_with("```pcmod") {
            in_block = true;
            block.clear();
            continue;
        }
        if in_block && line.trim_start().starts_with("```") {
            in_block = false;
            let name = block.lines().find_map(|l| {
                l.strip_prefix("mod ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            });
            if let Some(name) = name {
                let path = fixtures_dir().join(format!("ok/{name}.pcmod"));
                assert!(
                    path.is_file(),
                    "docs/pcmod.md shows module `{name}` but {} does not exist",
                    path.display()
                );
                assert_eq!(
                    read(&path),
                    block,
                    "docs/pcmod.md's `{name}` differs from its fixture"
                );
                checked += 1;
            }
            continue;
        }
        if in_block {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert!(!in_block, "unclosed code block in docs/pcmod.md");
    assert!(
        checked >= 5,
        "only {checked} module examples found in docs/pcmod.md"
    );
}

/// docs/pcmod.md's maintenance page is the module of examples/maintenance, whose
/// config.toml is what the page tells the reader to look at (it described a shipped
/// config with `enabled = false` that does not exist, and another module).
#[test]
fn docs_maintenance_example_is_the_runnable_example() {
    let shown = read(&fixtures_dir().join("ok/maintenance.pcmod"));
    let example = read(&manifest_dir().join("examples/maintenance/mods/maintenance.pcmod"));
    assert_eq!(shown, example);
}

/// Every example message in docs/pcmod.md's error table (written `` like this ``) is
/// what the checker prints: it occurs in an `err/` snapshot (a message ending in `…` is
/// a prefix), or is one of the few checked by the limit tests above.
#[test]
fn docs_error_messages_are_real() {
    let doc = read(&manifest_dir().join("docs/pcmod.md"));
    let section = doc
        .split("## Errors found at load")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/pcmod.md has an `## Errors found at load` section");
    let mut snapshots = String::new();
    let dir = manifest_dir().join("tests/snapshots");
    for entry in std::fs::read_dir(&dir)
        .expect("snapshots folder")
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("pcmod_golden__err") && name.ends_with(".snap") {
            snapshots.push_str(&read(&entry.path()));
        }
    }
    let checked_elsewhere = [format!("string longer than {MAX_STRING} bytes")];
    let mut count = 0;
    let mut rest = section;
    while let Some(start) = rest.find("`` ") {
        let after = &rest[start + 3..];
        let Some(end) = after.find(" ``") else { break };
        let message = after[..end].replace("\\|", "|");
        rest = &after[end + 3..];
        let message = message.trim_end_matches('…');
        assert!(
            snapshots.contains(message) || checked_elsewhere.iter().any(|m| m == message),
            "docs/pcmod.md quotes a message no snapshot has: {message:?}"
        );
        count += 1;
    }
    assert!(
        count >= 40,
        "only {count} messages found in the error table"
    );
}

/// Which pipelines let an upstream's response head pass as received: only those whose
/// response and log phases neither read response headers nor change them other than
/// by `set`, with no Lua hook after the request phase. The request phase may do
/// anything.
#[test]
fn response_head_blindness_is_decided_per_pipeline() {
    let cases: &[(&str, bool)] = &[
        // No late phase at all.
        ("on request {\n    std.request_id.inject()\n  }", true),
        // `set` with constants, interpolations of request facts, status and ctx.
        (
            "on request {\n    set ctx.k = \"v\"\n  }\n  on response {\n    set resp.header[\"x-a\"] = \"1\"\n    if $status >= 500 {\n      set resp.header[\"x-b\"] = \"${$method} ${$path}\"\n    }\n  }",
            true,
        ),
        ("on response {\n    add resp.header[\"x-a\"] = \"1\"\n  }", false),
        ("on response {\n    remove resp.header[\"server\"]\n  }", false),
        (
            "on response {\n    if $resp.header[\"x-a\"] == \"1\" {\n      set resp.header[\"x-b\"] = \"1\"\n    }\n  }",
            false,
        ),
        (
            "on response {\n    set resp.header[\"x-b\"] = $resp.header[\"x-a\"]\n  }",
            false,
        ),
        ("on response {\n    std.compress.apply()\n  }", false),
        ("on log {\n    log info \"${$resp.header[\"x-a\"]}\"\n  }", false),
        // Lua in the request phase only; then with a response or log hook.
        ("lua \"\"\"\nfunction on_request(req, ctx) end\n\"\"\"", true),
        (
            "lua \"\"\"\nfunction on_request(req, ctx) end\nfunction on_response(req, resp, ctx) end\n\"\"\"",
            false,
        ),
        ("lua \"\"\"\nfunction on_log(req, resp, ctx) end\n\"\"\"", false),
    ];
    for (body, blind) in cases {
        let source = format!("mod m {{\n  {body}\n}}\n");
        let loaded = load_sources(
            &base_config(),
            &[(PathBuf::from("m.pcmod"), source.clone())],
        )
        .unwrap_or_else(|d| panic!("{source}\ndoes not load:\n{}", render_all(&d)));
        assert_eq!(
            loaded.pipeline.response_head_unread, *blind,
            "module:\n{source}"
        );
    }
}

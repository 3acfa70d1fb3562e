//! The shape of `config.toml`: file structs that mirror it key for key, and the reading
//! step that turns TOML text into them.
//!
//! Every struct denies unknown keys and every key is optional; values that `validate.rs`
//! still has to check are kept as `Spanned` so its errors can point at them. Reading
//! reports every shape error (syntax, unknown key, wrong type), not just the first: after
//! an error the offending key is pruned from the parsed tree and the rest is read again.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

mod recover;

/// Shape errors reported at most per file, so a pathological file cannot loop long.
const MAX_SHAPE_ERRORS: usize = 100;

/// A spanned string value.
pub type Text = Spanned<String>;
/// A spanned integer value (checked for range in validation).
pub type Int = Spanned<i64>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerFile,
    pub admin: AdminFile,
    pub log: LogFile,
    pub scripts: ScriptsFile,
    pub upstreams: BTreeMap<Text, Spanned<UpstreamFile>>,
    pub routes: Vec<Spanned<RouteFile>>,
    pub tcp: Vec<Spanned<TcpFile>>,
    pub mods: BTreeMap<String, toml::Table>,
    pub cache: CacheFile,
    pub redis: Option<Spanned<RedisFile>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub listen: Option<Spanned<Vec<Text>>>,
    pub workers: Option<Int>,
    pub trusted_proxies: Vec<Text>,
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<Text>,
    pub limits: LimitsFile,
    pub timeouts: TimeoutsFile,
    pub tls: Vec<Spanned<TlsFile>>,
}

/// `[server.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_header_bytes: Option<Spanned<SizeValue>>,
    pub max_body: Option<Spanned<SizeValue>>,
    pub max_connections: Option<Int>,
}

/// `[server.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsFile {
    pub header: Option<Spanned<DurationValue>>,
    pub idle: Option<Spanned<DurationValue>>,
    pub shutdown_drain: Option<Spanned<DurationValue>>,
}

/// One `[[server.tls]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub listen: Option<Text>,
    pub certs: Option<Spanned<Vec<Spanned<CertFile>>>>,
    pub alpn: Option<Vec<Text>>,
    pub client_ca: Option<Text>,
}

/// `{ cert = "...", key = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertFile {
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub listen: Option<Text>,
    pub api_key: Option<Text>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    pub level: Option<Text>,
    pub format: Option<Text>,
    pub access: Option<bool>,
}

/// `[scripts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsFile {
    pub dir: Option<Text>,
    pub watch: Option<bool>,
    pub lua_memory_limit: Option<Spanned<SizeValue>>,
    pub lua_instruction_budget: Option<Int>,
}

/// `[redis]`: the Redis that cluster-scoped stdlib state lives in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisFile {
    pub url: Option<Text>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub key_prefix: Option<Text>,
}

/// `[cache]`: the in-memory HTTP cache of `std.cache.*`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    pub max_size: Option<Spanned<SizeValue>>,
    pub max_entry_size: Option<Spanned<SizeValue>>,
    pub lock_timeout: Option<Spanned<DurationValue>>,
    pub shared: Option<Spanned<bool>>,
}

/// One `[upstreams.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub servers: Option<Spanned<Vec<Spanned<ServerEntry>>>>,
    pub balance: Option<Text>,
    pub hash_key: Option<Text>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub response_timeout: Option<Spanned<DurationValue>>,
    pub tls: Option<Spanned<bool>>,
    pub tls_ca: Option<Text>,
    pub sni: Option<Text>,
    pub http2: Option<bool>,
    pub pool: PoolFile,
    pub health: Option<HealthFile>,
    pub circuit_breaker: BreakerFile,
}

/// A server of an upstream: `"host:port"` or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug)]
pub enum ServerEntry {
    Addr(String),
    Table(ServerTable),
}

/// The table form of a server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTable {
    pub addr: Option<Text>,
    pub weight: Option<Int>,
}

/// `pool = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolFile {
    pub max_idle_per_server: Option<Int>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
}

/// `health = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    pub path: Option<Text>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub healthy_after: Option<Int>,
    pub unhealthy_after: Option<Int>,
}

/// `circuit_breaker = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerFile {
    pub failures: Option<Int>,
    pub open_for: Option<Spanned<DurationValue>>,
    pub statuses: Option<Spanned<Vec<Int>>>,
}

/// One `[[routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteFile {
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub methods: Vec<Text>,
    pub headers: BTreeMap<Text, Text>,
    pub upstream: Option<Text>,
}

/// One `[[tcp]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpFile {
    pub listen: Option<Text>,
    pub upstream: Option<Text>,
    pub proxy_protocol: Option<Int>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
}

/// A value written either as a TOML integer or as a string with a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    Int(i64),
    Text(String),
}

/// A size: bytes as an integer, or a string like `"64KiB"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeValue(pub Quantity);

/// A duration: seconds as an integer, or a string like `"250ms"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationValue(pub Quantity);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = "a size like \"64KiB\" or a number of bytes";
        d.deserialize_any(QuantityVisitor(expecting)).map(SizeValue)
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = "a duration like \"5s\" or a number of seconds";
        d.deserialize_any(QuantityVisitor(expecting))
            .map(DurationValue)
    }
}

/// Accepts an integer or a string; the argument is what the error says was expected.
struct QuantityVisitor(&'static str);

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::Int(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Ok(Quantity::Text(v.to_owned()))
    }
}

impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ServerEntryVisitor)
    }
}

/// A string or an inline table; an untagged enum would lose the inner spans.
struct ServerEntryVisitor;

impl<'de> Visitor<'de> for ServerEntryVisitor {
    type Value = ServerEntry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "an address like \"127.0.0.1:3000\" or a table like { addr = \"...\", weight = 3 }",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ServerEntry, E> {
        Ok(ServerEntry::Addr(v.to_owned()))
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<ServerEntry, M::Error> {
        let inner = de::value::MapAccessDeserializer::new(map);
        ServerTable::deserialize(inner).map(ServerEntry::Table)
    }
}

/// A syntax or shape error, before it is given a file position.
#[derive(Debug, Clone)]
pub struct ShapeError {
    /// Dotted TOML path of the offending key (`""` when it cannot be told).
    pub key: String,
    /// Byte range in the source text, when known.
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// What reading produced.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// The file structs, read from what was left after pruning the bad keys; `None`
    /// when the text is not TOML at all or the errors could not be pruned.
    pub file: Option<FileConfig>,
    pub errors: Vec<ShapeError>,
    /// Dotted paths of the keys removed because they were wrong; validation errors at
    /// or around them would only repeat the same mistake.
    pub pruned: Vec<String>,
}

/// Reads `text` into the file structs, collecting every shape error.
pub fn read(text: &str) -> ReadOutcome {
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        return ReadOutcome {
            file: None,
            errors: syntax(text, root.get_ref(), &syntax_errors),
            pruned: Vec::new(),
        };
    }
    let root_span = root.span();
    let mut root = root.into_inner();
    let mut outcome = ReadOutcome::default();
    while outcome.errors.len() < MAX_SHAPE_ERRORS {
        let de = Deserializer::from(Spanned::new(root_span.clone(), root.clone()));
        let err = match FileConfig::deserialize(de) {
            Ok(file) => {
                outcome.file = Some(file);
                break;
            }
            Err(err) => err,
        };
        outcome.errors.push(shape_error(text, &root, &err));
        // Drop the offending key and read again, to find the next error.
        let path = err.span().map(|span| path_at(&root, span.start));
        match path.and_then(|path| prune(&mut root, &path)) {
            Some(pruned) => outcome.pruned.push(pruned),
            None => break,
        }
    }
    outcome
}

/// Syntax errors in file order, the first of each line only: the parser's recovery
/// tends to report several follow-on errors for one mistake.
fn syntax(text: &str, root: &DeTable, errors: &[toml::de::Error]) -> Vec<ShapeError> {
    let mut errors: Vec<ShapeError> = errors
        .iter()
        .map(|err| shape_error(text, root, err))
        .collect();
    let start = |e: &ShapeError| e.span.as_ref().map_or(usize::MAX, |span| span.start);
    errors.sort_by_key(start);
    let line_of = |e: &ShapeError| text.get(..start(e)).map(|t| t.matches('\n').count());
    let mut errors = recover::unclosed(text, root, errors);
    errors
        .dedup_by(|later, earlier| line_of(later).is_some() && line_of(later) == line_of(earlier));
    errors
}

/// Turns a `toml` error into a `ShapeError` with its key path and a readable message.
fn shape_error(text: &str, root: &DeTable, err: &toml::de::Error) -> ShapeError {
    let key = err.span().map_or_else(String::new, |span| {
        let path = path_at(root, span.start);
        if !path.is_empty() {
            return render_path(&path);
        }
        let token = key_token_at(text, span.start);
        // A key given twice is not in the tree where it is written; its first
        // occurrence is, and names the table both are in.
        match recover::first_occurrence(root, &token, span.start) {
            Some(path) => render_path(&path),
            None => token,
        }
    });
    ShapeError {
        key,
        span: err.span(),
        message: readable(err.message()),
    }
}

/// The bare key written at `offset`, for errors the parsed tree cannot place (e.g. the
/// second of two duplicate keys); `""` when there is none.
fn key_token_at(text: &str, offset: usize) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    text.get(offset..)
        .map(|rest| rest.chars().take_while(|c| is_key_char(*c)).collect())
        .unwrap_or_default()
}

/// Rewrites serde's Rust-flavoured wording into TOML terms.
fn readable(message: &str) -> String {
    const REWRITES: &[(&str, &str)] = &[
        ("unknown field", "unknown key"),
        ("expected i64", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
    ];
    let text = REWRITES
        .iter()
        .fold(message.to_owned(), |text, (from, to)| {
            text.replace(from, to)
        });
    if let Some(number) = out_of_range(&text) {
        let (which, bound) = if number.starts_with('-') {
            ("small", i64::MIN)
        } else {
            ("large", i64::MAX)
        };
        return format!("{number} is too {which} (integers go to {bound})");
    }
    match text.find("expected struct ") {
        Some(at) => format!("{}expected a table", &text[..at]),
        None => text,
    }
}

/// The number of an integer too large for an `i64` (serde's "invalid type: integer
/// `N` as i128, expected ...") where the key takes an integer: an integer, a size or
/// a duration (a key of another type says it expected that type instead).
fn out_of_range(text: &str) -> Option<&str> {
    const TAKE_INTEGERS: &[&str] = &["an integer", "a size like", "a duration like"];
    // Past u64 serde says "invalid type: integer `N` as i128, expected ..."; between
    // i64::MAX and u64::MAX, "invalid type: integer `N`, expected ..." (or "invalid
    // value" for a key that takes integers).
    let rest = text
        .split_once("invalid type: integer `")
        .or_else(|| text.split_once("invalid value: integer `"))?
        .1;
    let (number, rest) = rest.split_once('`')?;
    let expected = rest
        .strip_prefix(" as i128, expected ")
        .or_else(|| rest.strip_prefix(", expected "))?;
    let past_i64 = number.parse::<i128>().map_or(true, |n| {
        n > i128::from(i64::MAX) || n < i128::from(i64::MIN)
    });
    (past_i64 && TAKE_INTEGERS.iter().any(|what| expected.starts_with(what))).then_some(number)
}

/// The byte range of the value at a dotted path of bare keys and indices
/// (`server.listen[1]`) in `text`, for errors found after loading (a reload that
/// cannot bind an address); `None` when the text has no such value.
pub fn span_of(text: &str, key: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, indices) = part.split_once('[').unwrap_or((part, ""));
        path.push(Segment::Key(name.to_owned()));
        for index in indices.split('[') {
            let index = index.trim_end_matches(']');
            if !index.is_empty() {
                path.push(Segment::Index(index.parse().ok()?));
            }
        }
    }
    let (first, rest) = path.split_first()?;
    let Segment::Key(first) = first else {
        return None;
    };
    let mut value = root.get_ref().get(first.as_str())?;
    for seg in rest {
        value = match (seg, value.get_ref()) {
            (Segment::Key(k), DeValue::Table(t)) => t.get(k.as_str())?,
            (Segment::Index(i), DeValue::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(value.span())
}

/// One step of a TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The path of the innermost key or value whose span holds `offset`.
fn path_at(root: &DeTable, offset: usize) -> Vec<Segment> {
    let mut path = Vec::new();
    find_in_table(root, offset, &mut path);
    path
}

fn find_in_table(table: &DeTable, offset: usize, path: &mut Vec<Segment>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        if span_holds(&key.span(), offset) || find_in_value(value, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Spanned<DeValue>, offset: usize, path: &mut Vec<Segment>) -> bool {
    // Children first: a `[header]` table's span is only its header line.
    match value.get_ref() {
        DeValue::Table(table) if find_in_table(table, offset, path) => return true,
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                if find_in_value(item, offset, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    span_holds(&value.span(), offset)
}

fn span_holds(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Removes the table entry that holds `path` (the innermost key on it, so array indices
/// of later entries do not shift) and returns that entry's rendered path.
fn prune(root: &mut DeTable, path: &[Segment]) -> Option<String> {
    let last_key = path
        .iter()
        .rposition(|seg| matches!(seg, Segment::Key(_)))?;
    let Segment::Key(key) = &path[last_key] else {
        return None;
    };
    let parent = table_at_mut(root, &path[..last_key])?;
    parent.remove(key.as_str())?;
    Some(render_path(&path[..=last_key]))
}

fn table_at_mut<'a, 'i>(
    table: &'a mut DeTable<'i>,
    path: &[Segment],
) -> Option<&'a mut DeTable<'i>> {
    let Some((first, rest)) = path.split_first() else {
        return Some(table);
    };
    let Segment::Key(key) = first else {
        return None;
    };
    let mut value = table.get_mut(key.as_str())?.get_mut();
    let mut rest = rest;
    while let Some((Segment::Index(index), tail)) = rest.split_first() {
        let DeValue::Array(items) = value else {
            return None;
        };
        value = items.get_mut(*index)?.get_mut();
        rest = tail;
    }
    match value {
        DeValue::Table(inner) => table_at_mut(inner, rest),
        _ => None,
    }
}

/// `server.listen[0]`, `upstreams."my.app".servers`.
fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(key));
            }
        }
    }
    out
}

/// A key as it would be written in a dotted path: bare when it can be, quoted otherwise.
pub fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

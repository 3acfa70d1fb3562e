//! Module config: a module's `config { }` defaults merged with `[mods.NAME]` from
//! config.toml, plus the reserved keys `enabled` and `priority`. Unknown keys and
//! wrong types are load errors that name the TOML key and its line.

use std::sync::Arc;

use super::ast::{ConfigField, ExprKind, Literal, Module, Type};
use super::compile::ResolvedConfig;
use super::diag::Diagnostic;
use super::value::Value;

/// The merged settings of one module.
#[derive(Debug)]
pub struct Settings {
    pub enabled: bool,
    pub priority: i64,
    pub fields: ResolvedConfig,
}

/// Where `[mods.NAME]` overrides come from.
pub struct Overrides<'a> {
    /// config.toml's path as shown in messages.
    pub file: &'a str,
    /// config.toml's text (for line numbers).
    pub text: &'a str,
    pub table: Option<&'a toml::Table>,
}

/// Default priority of a module without `priority`.
pub const DEFAULT_PRIORITY: i64 = 500;

/// Merges defaults and overrides; all problems are returned together.
pub fn resolve(
    module: &Module,
    source: &str,
    ov: &Overrides<'_>,
) -> Result<Settings, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut fields = ResolvedConfig::new();
    for field in &module.config {
        if fields.contains_key(&field.name.node) {
            diags.push(Diagnostic::new(
                &module.file,
                source,
                field.name.span,
                format!("config field `{}` declared twice", field.name.node),
            ));
            continue;
        }
        match default_value(field) {
            Ok(v) => {
                fields.insert(field.name.node.clone(), (field.ty.node.clone(), v));
            }
            Err(msg) => diags.push(
                Diagnostic::new(&module.file, source, field.default.span, msg).with_hint(format!(
                    "the default must be {} literal",
                    super::compile::with_article_pub(&field.ty.node.to_string())
                )),
            ),
        }
    }
    let mut enabled = true;
    let mut priority = module
        .priority
        .as_ref()
        .map_or(DEFAULT_PRIORITY, |p| p.node);
    let name = &module.name.node;
    for (key, value) in ov.table.into_iter().flatten() {
        let toml_key = format!("mods.{name}.{key}");
        let at = |msg: String| {
            let (line, col) = key_position(ov.text, name, key);
            Diagnostic {
                file: ov.file.to_owned(),
                line,
                col,
                message: format!("{toml_key}: {msg}"),
                hint: None,
                module: None,
                source_line: ov
                    .text
                    .lines()
                    .nth(line as usize - 1)
                    .unwrap_or("")
                    .to_owned(),
                width: key.len().max(1),
            }
        };
        match key.as_str() {
            "enabled" => match value.as_bool() {
                Some(b) => {
                    enabled = b;
                    if let Some((Type::Bool, v)) = fields.get_mut("enabled") {
                        *v = Value::Bool(b);
                    }
                }
                None => diags.push(at(format!("expected bool, found {}", value.type_str()))),
            },
            "priority" => match value.as_integer() {
                Some(p) if (0..=1000).contains(&p) => priority = p,
                _ => diags.push(at(format!("expected an int in 0..=1000, found {value}"))),
            },
            _ => match fields.get_mut(key) {
                Some((ty, slot)) => match from_toml(ty, value) {
                    Ok(v) => *slot = v,
                    Err(msg) => diags.push(at(msg)),
                },
                None => {
                    let known: Vec<&str> = module
                        .config
                        .iter()
                        .map(|f| f.name.node.as_str())
                        .filter(|f| !matches!(*f, "enabled" | "priority"))
                        .collect();
                    let mut d = at(format!("module `{name}` has no config field `{key}`"));
                    d.hint = Some(if known.is_empty() {
                        "its `config { }` block is empty; allowed: enabled, priority".to_owned()
                    } else {
                        format!("fields: {}, enabled, priority", known.join(", "))
                    });
                    diags.push(d);
                }
            },
        }
    }
    if diags.is_empty() {
        Ok(Settings {
            enabled,
            priority,
            fields,
        })
    } else {
        Err(diags)
    }
}

fn default_value(field: &ConfigField) -> Result<Value, String> {
    let v = literal_value(&field.default.kind)
        .ok_or_else(|| format!("default of `{}` is not a literal", field.name.node))?;
    if fits(&field.ty.node, &v) {
        Ok(v)
    } else {
        Err(format!(
            "default of `{}` is a {}, but its type is {}",
            field.name.node,
            v.type_name(),
            field.ty.node
        ))
    }
}

fn literal_value(e: &ExprKind) -> Option<Value> {
    Some(match e {
        ExprKind::Unary(super::ast::UnOp::Neg, inner) => match literal_value(&inner.kind)? {
            Value::Int(i) => Value::Int(i.checked_neg()?),
            Value::Float(f) => Value::Float(-f),
            _ => return None,
        },
        ExprKind::Lit(Literal::Nil) => Value::Nil,
        ExprKind::Lit(Literal::Bool(b)) => Value::Bool(*b),
        ExprKind::Lit(Literal::Int(i)) => Value::Int(*i),
        ExprKind::Lit(Literal::Float(f)) => Value::Float(*f),
        ExprKind::Lit(Literal::Str(s)) => Value::str(s.as_str()),
        ExprKind::Lit(Literal::Duration(d)) => Value::Duration(*d),
        ExprKind::Lit(Literal::Size(s)) => Value::Size(*s),
        ExprKind::List(items) => Value::List(
            items
                .iter()
                .map(|i| literal_value(&i.kind))
                .collect::<Option<Arc<[Value]>>>()?,
        ),
        _ => return None,
    })
}

fn fits(ty: &Type, v: &Value) -> bool {
    match (ty, v) {
        (Type::Bool, Value::Bool(_)) | (Type::Int, Value::Int(_)) | (Type::Str, Value::Str(_)) => {
            true
        }
        (Type::Float, Value::Float(_) | Value::Int(_)) => true,
        (Type::Duration, Value::Duration(_)) | (Type::Size, Value::Size(_)) => true,
        (Type::List(t), Value::List(items)) => items.iter().all(|i| fits(t, i)),
        (Type::Map(t), Value::Map(m)) => m.values().all(|i| fits(t, i)),
        _ => false,
    }
}

fn from_toml(ty: &Type, v: &toml::Value) -> Result<Value, String> {
    let wrong = || format!("expected {ty}, found {}", v.type_str());
    Ok(match (ty, v) {
        (Type::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (Type::Int, toml::Value::Integer(i)) => Value::Int(*i),
        (Type::Float, toml::Value::Float(f)) => Value::Float(*f),
        (Type::Float, toml::Value::Integer(i)) => Value::Float(*i as f64),
        (Type::Str, toml::Value::String(s)) => Value::str(s.as_str()),
        (Type::Duration, toml::Value::String(s)) => Value::Duration(bounded(
            crate::config::parse_duration(s).map_err(|e| format!("expected a duration: {e}"))?,
            || format!("{s:?}"),
        )?),
        (Type::Size, toml::Value::String(s)) => {
            Value::Size(crate::config::parse_size(s).map_err(|e| format!("expected a size: {e}"))?)
        }
        (Type::Size, toml::Value::Integer(i)) if *i >= 0 => Value::Size(*i as u64),
        // As everywhere in config.toml, a bare integer duration is seconds.
        (Type::Duration, toml::Value::Integer(i)) if *i >= 0 => {
            Value::Duration(bounded(std::time::Duration::from_secs(*i as u64), || {
                format!("{i} seconds")
            })?)
        }
        (Type::List(t), toml::Value::Array(items)) => Value::List(
            items
                .iter()
                .map(|i| from_toml(t, i))
                .collect::<Result<Arc<[Value]>, _>>()?,
        ),
        (Type::Map(t), toml::Value::Table(m)) => Value::Map(Arc::new(
            m.iter()
                .map(|(k, i)| Ok((k.clone(), from_toml(t, i)?)))
                .collect::<Result<_, String>>()?,
        )),
        _ => return Err(wrong()),
    })
}

/// Line and column of `key` inside `[mods.NAME]` (1-based), or of the table header,
/// found in the text: toml tables do not keep positions.
/// `d`, unless it is past the bound every duration of config.toml keeps to.
fn bounded(
    d: std::time::Duration,
    written: impl Fn() -> String,
) -> Result<std::time::Duration, String> {
    if d > crate::config::MAX_DURATION {
        return Err(format!(
            "expected a duration: duration must be at most {} (one year), got {}",
            crate::config::MAX_DURATION_TEXT,
            written()
        ));
    }
    Ok(d)
}

fn key_position(text: &str, module: &str, key: &str) -> (u32, u32) {
    let header = format!("[mods.{module}]");
    let mut in_table = false;
    let mut header_line = 1;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = trimmed.replace(' ', "") == header;
            if in_table {
                header_line = i as u32 + 1;
            }
            continue;
        }
        if in_table {
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    let col = line.len() - line.trim_start().len() + 1;
                    return (i as u32 + 1, col as u32);
                }
            }
        }
    }
    (header_line, 1)
}

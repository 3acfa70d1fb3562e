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
        let at_inside = |inside: &str, msg: String| {
            let (line, col) = key_position(ov.text, name, key);
            Diagnostic {
                file: ov.file.to_owned(),
                line,
                col,
                message: format!("{toml_key}{inside}: {msg}"),
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
        let at = |msg: String| at_inside("", msg);
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
                    Err(misfit) => diags.push(at_inside(&misfit.at, misfit.message)),
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
    coerce(&field.ty.node, &v).ok_or_else(|| {
        format!(
            "default of `{}` is a {}, but its type is {}",
            field.name.node,
            v.type_name(),
            field.ty.node
        )
    })
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

/// `v` as a value of type `ty`, if it is one. An int is a `float` too, and becomes one
/// here: a `float` field must hold a float at run time (`$config.f / 4` is 0.5 for
/// `f: float = 2`, as for `f = 2` in config.toml), also inside lists and maps.
fn coerce(ty: &Type, v: &Value) -> Option<Value> {
    Some(match (ty, v) {
        (Type::Float, Value::Int(i)) => Value::Float(*i as f64),
        (Type::Bool, Value::Bool(_))
        | (Type::Int, Value::Int(_))
        | (Type::Str, Value::Str(_))
        | (Type::Float, Value::Float(_))
        | (Type::Duration, Value::Duration(_))
        | (Type::Size, Value::Size(_)) => v.clone(),
        (Type::List(t), Value::List(items)) => Value::List(
            items
                .iter()
                .map(|i| coerce(t, i))
                .collect::<Option<Arc<[Value]>>>()?,
        ),
        (Type::Map(t), Value::Map(m)) => Value::Map(Arc::new(
            m.iter()
                .map(|(k, i)| Some((k.clone(), coerce(t, i)?)))
                .collect::<Option<_>>()?,
        )),
        _ => return None,
    })
}

/// A value of `[mods.NAME]` that does not fit its field: where inside the value
/// (`[2]` for a list's third item, `.k` for a map's key `k`; empty for the value
/// itself) and what is wrong.
struct Misfit {
    at: String,
    message: String,
}

impl From<String> for Misfit {
    fn from(message: String) -> Self {
        Misfit {
            at: String::new(),
            message,
        }
    }
}

impl Misfit {
    /// The same misfit seen from the list or map holding it, under `step`.
    fn inside(mut self, step: String) -> Self {
        self.at.insert_str(0, &step);
        self
    }
}

fn from_toml(ty: &Type, v: &toml::Value) -> Result<Value, Misfit> {
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
        (Type::Size, toml::Value::Integer(i)) => {
            return Err(
                format!("expected a size: a number of bytes must not be negative, got {i}").into(),
            )
        }
        // As everywhere in config.toml, a bare integer duration is seconds.
        (Type::Duration, toml::Value::Integer(i)) if *i >= 0 => {
            Value::Duration(bounded(std::time::Duration::from_secs(*i as u64), || {
                format!("{i} seconds")
            })?)
        }
        (Type::Duration, toml::Value::Integer(i)) => {
            return Err(format!(
                "expected a duration: a number of seconds must not be negative, got {i}"
            )
            .into())
        }
        (Type::List(t), toml::Value::Array(items)) => Value::List(
            items
                .iter()
                .enumerate()
                .map(|(n, i)| from_toml(t, i).map_err(|e| e.inside(format!("[{n}]"))))
                .collect::<Result<Arc<[Value]>, _>>()?,
        ),
        (Type::Map(t), toml::Value::Table(m)) => Value::Map(Arc::new(
            m.iter()
                .map(|(k, i)| {
                    let v = from_toml(t, i).map_err(|e| e.inside(format!(".{}", toml_key(k))))?;
                    Ok((k.clone(), v))
                })
                .collect::<Result<_, Misfit>>()?,
        )),
        _ => return Err(wrong().into()),
    })
}

/// `key` as written in a dotted TOML key: bare when it may be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

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

/// Line and column of `key` inside `[mods.NAME]` (1-based), or of the table header,
/// found in the text: toml tables do not keep positions.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An int default of a `float` field (or of a `list<float>` item) is stored as a
    /// float, as the same value from config.toml is.
    #[test]
    fn int_defaults_of_float_fields_become_floats() {
        let source = "mod m {\n  config {\n    f: float = 2\n    n: float = -3\n    l: list<float> = [1, 2.5]\n    i: int = 2\n  }\n}\n";
        let module = match super::super::parse::parse("m.pcmod", source) {
            Ok(m) => m,
            Err(d) => panic!("{}", d.render()),
        };
        let none = Overrides {
            file: "config.toml",
            text: "",
            table: None,
        };
        let settings = match resolve(&module, source, &none) {
            Ok(s) => s,
            Err(d) => panic!("{d:?}"),
        };
        let value = |name: &str| settings.fields.get(name).map(|(_, v)| v.clone());
        assert_eq!(value("f"), Some(Value::Float(2.0)));
        assert_eq!(value("n"), Some(Value::Float(-3.0)));
        assert_eq!(
            value("l"),
            Some(Value::List(Arc::from(vec![
                Value::Float(1.0),
                Value::Float(2.5)
            ])))
        );
        assert_eq!(value("i"), Some(Value::Int(2)), "an int field stays an int");
    }
}

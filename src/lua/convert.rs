//! Script values ([`Value`]) to Lua values and back: what crosses between pcmod's
//! `$ctx`, module config, stdlib results and Lua.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, Table};

use crate::script::value::{text_from_bytes, Value};
use crate::stdlib::{ArgType, RecordSig};

/// A value as Lua sees it: durations are seconds (a float), sizes are bytes, lists and
/// maps are fresh tables, records are tables with their field names.
pub fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Nil => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Int(i) => mlua::Value::Integer(*i),
        Value::Float(f) => mlua::Value::Number(*f),
        Value::Str(s) => mlua::Value::String(lua.create_string(s.as_bytes())?),
        Value::Duration(d) => mlua::Value::Number(d.as_secs_f64()),
        Value::Size(n) => mlua::Value::Integer(i64::try_from(*n).unwrap_or(i64::MAX)),
        Value::List(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
        Value::Map(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map.iter() {
                t.raw_set(k.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
        Value::Record(sig, fields) => record_to_lua(lua, fields, sig)?,
    })
}

/// A stdlib record as a table with its field names.
pub fn record_to_lua(lua: &Lua, fields: &[Value], sig: &RecordSig) -> mlua::Result<mlua::Value> {
    let t = lua.create_table_with_capacity(0, sig.fields.len())?;
    for ((name, _), v) in sig.fields.iter().zip(fields) {
        t.raw_set(*name, to_lua(lua, v)?)?;
    }
    Ok(mlua::Value::Table(t))
}

/// A Lua string as text. Lua strings are bytes; a script value's string is text, so a
/// string that is not UTF-8 is written by [`text_from_bytes`]'s rule, the one pcmod
/// reads header values by: `"key:" .. req:header("x-key")` in Lua and
/// `"key:${$req.header["x-key"]}"` in pcmod name the same key, whatever bytes the
/// client sent, and a client's bytes never make a call fail. Bodies, which keep their
/// bytes, do not come through here.
pub fn text(s: &mlua::LuaString) -> String {
    text_from_bytes(&s.as_bytes()).into_owned()
}

/// Nesting beyond which a table is refused (it is probably cyclic).
const MAX_DEPTH: usize = 16;

/// A Lua value as a script value. Tables with keys 1..n become lists, tables with
/// string keys maps; functions, userdata and threads are refused (`what` names the
/// place in the message).
pub fn from_lua(v: &mlua::Value, what: &str) -> Result<Value, String> {
    from_lua_at(v, what, 0)
}

fn from_lua_at(v: &mlua::Value, what: &str, depth: usize) -> Result<Value, String> {
    Ok(match v {
        mlua::Value::Nil => Value::Nil,
        mlua::Value::Boolean(b) => Value::Bool(*b),
        mlua::Value::Integer(i) => Value::Int(*i),
        mlua::Value::Number(f) => Value::Float(*f),
        mlua::Value::String(s) => Value::Str(Arc::from(text(s))),
        mlua::Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "{what}: tables nest too deep (or refer to themselves)"
                ));
            }
            table_value(t, what, depth)?
        }
        other => {
            return Err(format!(
                "{what}: a {} cannot be stored (use strings, numbers, booleans and tables of them)",
                other.type_name()
            ))
        }
    })
}

fn table_value(t: &Table, what: &str, depth: usize) -> Result<Value, String> {
    let lua_err = |e: mlua::Error| format!("{what}: {e}");
    // A read-only view (`config.allow`, a library table) is an empty table whose
    // metatable reads the real one: read it as a script would, through `__pairs` and
    // `#` (raw, it is empty: `ctx.allow = config.allow` kept an empty list).
    let viewed = viewed_pairs(t).map_err(lua_err)?;
    let len = match &viewed {
        Some(_) => usize::try_from(t.len().map_err(lua_err)?).unwrap_or(0),
        None => t.raw_len(),
    };
    let pairs: Vec<(mlua::Value, mlua::Value)> = match viewed {
        Some(pairs) => pairs,
        None => t.pairs().collect::<mlua::Result<_>>().map_err(lua_err)?,
    };
    let mut count = 0usize;
    let mut map = BTreeMap::new();
    let mut all_string_keys = true;
    for (k, v) in &pairs {
        count += 1;
        match k {
            mlua::Value::String(s) => {
                map.insert(text(s), from_lua_at(v, what, depth + 1)?);
            }
            _ => all_string_keys = false,
        }
    }
    if count == len && (len > 0 || map.is_empty()) {
        let mut items = Vec::with_capacity(len);
        for i in 1..=len {
            let v: mlua::Value = t.get(i).map_err(lua_err)?;
            items.push(from_lua_at(&v, what, depth + 1)?);
        }
        return Ok(Value::List(items.into()));
    }
    if all_string_keys {
        return Ok(Value::Map(Arc::new(map)));
    }
    Err(format!(
        "{what}: a table must be a list (keys 1..n) or have only string keys"
    ))
}

/// The pairs of a table whose metatable has `__pairs` (a read-only view), as `pairs`
/// in a script walks them; `None` for a plain table.
fn viewed_pairs(t: &Table) -> mlua::Result<Option<Vec<(mlua::Value, mlua::Value)>>> {
    let Some(meta) = t.metatable() else {
        return Ok(None);
    };
    let Some(pairs) = meta.raw_get::<Option<mlua::Function>>("__pairs")? else {
        return Ok(None);
    };
    let (next, state, mut key): (mlua::Function, mlua::Value, mlua::Value) =
        pairs.call(t.clone())?;
    let mut out = Vec::new();
    loop {
        let (k, v): (mlua::Value, mlua::Value) = next.call((state.clone(), key))?;
        if k.is_nil() {
            return Ok(Some(out));
        }
        key = k.clone();
        out.push((k, v));
    }
}

/// The longest duration a Lua argument stands for: longer ones (a `timeout` of
/// `math.maxinteger`, a `ttl` of `1e15`) mean "practically forever" and are cut to
/// this, so that no deadline made from one (`Instant::now() + timeout`) can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration argument: seconds (an integer or a float) or a duration string; at most
/// [`MAX_DURATION`]. `what` names the argument in the message.
pub fn duration_from_lua(v: &mlua::Value, what: &dyn Fn() -> String) -> Result<Duration, String> {
    let d = match v {
        mlua::Value::Integer(i) => u64::try_from(*i)
            .map(Duration::from_secs)
            .map_err(|_| format!("{} must be seconds >= 0, not {i}", what()))?,
        mlua::Value::Number(f) => Duration::try_from_secs_f64(*f).map_err(|_| {
            // 1e20, not twenty-one digits.
            let shown = if f.abs() >= 1e15 {
                format!("{f:e}")
            } else {
                f.to_string()
            };
            format!(
                "{} must be a number of seconds from 0 to 1.8e19, not {shown}",
                what()
            )
        })?,
        mlua::Value::String(s) => {
            let text = s
                .to_str()
                .map_err(|_| format!("{} must be a duration string, not binary data", what()))?;
            crate::config::parse_duration(&text).map_err(|e| format!("{}: {e}", what()))?
        }
        other => {
            return Err(format!(
                "{} must be seconds (a number) or a duration string like \"250ms\", not {}",
                what(),
                other.type_name()
            ))
        }
    };
    Ok(d.min(MAX_DURATION))
}

/// Converts Lua argument `name` to the type a signature asks for; `Err` is the
/// message.
pub fn arg_from_lua(v: &mlua::Value, ty: ArgType, name: &str) -> Result<Value, String> {
    let what = || format!("argument `{name}`");
    let wrong = |want: &str| format!("{} must be {want}, not {}", what(), v.type_name());
    Ok(match ty {
        ArgType::Any => from_lua(v, &what())?,
        ArgType::Bool => match v {
            mlua::Value::Boolean(b) => Value::Bool(*b),
            _ => return Err(wrong("a boolean")),
        },
        ArgType::Int => match v {
            mlua::Value::Integer(i) => Value::Int(*i),
            mlua::Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(*f as i64),
            _ => return Err(wrong("an integer")),
        },
        ArgType::Number => match v {
            mlua::Value::Integer(i) => Value::Int(*i),
            mlua::Value::Number(f) => Value::Float(*f),
            _ => return Err(wrong("a number")),
        },
        ArgType::Str => match v {
            // Borrowed when UTF-8 (one allocation, for the Arc).
            mlua::Value::String(s) => Value::Str(Arc::from(text_from_bytes(&s.as_bytes()))),
            _ => return Err(wrong("a string")),
        },
        ArgType::Duration => Value::Duration(duration_from_lua(v, &what)?),
        ArgType::Map => match v {
            mlua::Value::Table(t) => {
                let mut map = BTreeMap::new();
                for pair in t.pairs::<mlua::Value, mlua::Value>() {
                    let (k, item) = pair.map_err(|e| format!("{}: {e}", what()))?;
                    let key = match k {
                        mlua::Value::String(s) => text(&s),
                        other => {
                            return Err(format!(
                                "{}: keys must be strings, not {}",
                                what(),
                                other.type_name()
                            ))
                        }
                    };
                    let value = match item {
                        mlua::Value::String(s) => text(&s),
                        mlua::Value::Integer(i) => i.to_string(),
                        mlua::Value::Number(f) => f.to_string(),
                        mlua::Value::Boolean(b) => b.to_string(),
                        other => {
                            return Err(format!(
                                "{}[{key:?}] must be a string, not {}",
                                what(),
                                other.type_name()
                            ))
                        }
                    };
                    map.insert(key, Value::str(value));
                }
                Value::Map(Arc::new(map))
            }
            _ => return Err(wrong("a table of strings")),
        },
        ArgType::StrList => match v {
            mlua::Value::Table(t) => str_list(t, &what)?,
            _ => return Err(wrong("a list of strings")),
        },
        ArgType::Response => return Err(wrong("a response")),
    })
}

/// A table with keys 1..n, each a string, as a list (an empty table is an empty list).
/// A table with a metatable — `config.allow` is a read-only view, whose raw length is 0
/// — is read through `#` and indexing, as a script reads it.
fn str_list(t: &Table, what: &dyn Fn() -> String) -> Result<Value, String> {
    let lua_err = |e: mlua::Error| format!("{}: {e}", what());
    let viewed = t.metatable().is_some();
    let len = if viewed {
        usize::try_from(t.len().map_err(lua_err)?).unwrap_or(0)
    } else {
        t.raw_len()
    };
    let mut items = Vec::with_capacity(len.min(1024));
    for i in 1..=len {
        let item = if viewed { t.get(i) } else { t.raw_get(i) };
        match item.map_err(lua_err)? {
            mlua::Value::String(s) => items.push(Value::Str(Arc::from(text(&s)))),
            other => {
                return Err(format!(
                    "{}[{i}] must be a string, not {}",
                    what(),
                    other.type_name()
                ))
            }
        }
    }
    // Other keys (`{ x = "10.0.0.0/8" }`, `{ [5] = "::1" }`) would be dropped unread.
    if !viewed && t.pairs::<mlua::Value, mlua::Value>().count() != len {
        return Err(format!(
            "{} must be a list of strings (keys 1..n), not a table with other keys",
            what()
        ));
    }
    Ok(Value::List(items.into()))
}

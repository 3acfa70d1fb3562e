//! What a script's `pcall` gets for an error a Rust function raised. Such an error
//! reaches Lua as mlua's error object, whose `tostring` is `runtime error: MESSAGE`
//! plus a stack traceback; the sandbox's `pcall` and `xpcall` hand the script a plain
//! string instead, `FILE:LINE: MESSAGE`, as the errors std functions raise. Only a
//! failed call pays for this: the methods of `req` and `resp` are called bare (no
//! wrapper per call), and the text is made when `pcall` returns the error.

/// The string `pcall` returns for error `e`: its message (the first line of the root
/// cause), after the position of the script's call when it has none.
pub fn caught_message(e: &mlua::Error) -> String {
    let mut traceback = None;
    let mut cause = e;
    while let mlua::Error::CallbackError {
        traceback: t,
        cause: c,
    } = cause
    {
        traceback = Some(t.as_str());
        cause = c;
    }
    let text = root_text(cause);
    let message = text.lines().next().unwrap_or("");
    if has_position(message) {
        return message.to_owned();
    }
    match traceback.and_then(script_position) {
        Some(at) => format!("{at}: {message}"),
        None => message.to_owned(),
    }
}

fn root_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", root_text(cause)),
        mlua::Error::CallbackError { cause, .. } => root_text(cause),
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => bad_argument_text(to.as_deref(), *pos, name.as_deref(), cause),
        other => other.to_string(),
    }
}

/// A method called with arguments of the wrong type, in the script's words:
/// `req:header: bad argument #1 (string expected, got nil)` rather than mlua's
/// `bad argument #2 to ReqHandle.header: error converting Lua nil to String`
/// (which counts the object and names Rust types).
pub fn bad_argument_text(
    to: Option<&str>,
    pos: usize,
    name: Option<&str>,
    cause: &mlua::Error,
) -> String {
    let method = to.map(script_name);
    if name == Some("self") {
        if let Some(m) = &method {
            return format!("{m}: called without its object: write {m}(...), with a colon");
        }
    }
    let why = match cause {
        mlua::Error::FromLuaConversionError { from, to, message } => {
            let expected = match to.as_str() {
                "String" | "string" | "LuaString" | "BString" => "string",
                "i64" | "i32" | "u16" | "u32" | "u64" | "usize" | "integer" => "integer",
                "f64" | "number" => "number",
                other => other,
            };
            // ("expected string or number" says again what `expected` says.)
            match message {
                Some(m) if !m.starts_with("expected ") => {
                    format!("{expected} expected, got {from}: {m}")
                }
                _ => format!("{expected} expected, got {from}"),
            }
        }
        other => root_text(other),
    };
    // mlua counts the object as argument #1 of a method; Lua's own messages do not.
    let pos = if method.as_deref().is_some_and(|m| m.contains(':')) {
        pos.saturating_sub(1)
    } else {
        pos
    };
    match method {
        Some(m) => format!("{m}: bad argument #{pos} ({why})"),
        None => format!("bad argument #{pos} ({why})"),
    }
}

/// `ReqHandle.set_header` as scripts write it: `req:set_header`.
fn script_name(to: &str) -> String {
    let Some((ty, method)) = to.split_once('.') else {
        return to.to_owned();
    };
    let object = match ty {
        "ReqHandle" => "req",
        "RespHandle" => "resp",
        "LuaResponse" => "response",
        "CtxHandle" => "ctx",
        other => other,
    };
    format!("{object}:{method}")
}

/// Whether `message` starts with `FILE:LINE: `.
fn has_position(message: &str) -> bool {
    let Some((head, _)) = message.split_once(": ") else {
        return false;
    };
    head.rsplit_once(':').is_some_and(|(file, line)| {
        !file.is_empty() && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The first place in `traceback` that is a script's (`FILE:LINE`): not a C
/// function, nor the sandbox's own `pcall`.
fn script_position(traceback: &str) -> Option<&str> {
    traceback.lines().find_map(|l| {
        let l = l.trim_start();
        if l.starts_with("[C]") || l.starts_with("sandbox:") {
            return None;
        }
        let (at, _) = l.split_once(": in ")?;
        let (_, line) = at.rsplit_once(':')?;
        (!line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())).then_some(at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_gets_the_position_of_the_scripts_call() {
        let e = mlua::Error::CallbackError {
            traceback: "stack traceback:\n\t[C]: in function 'pcall'\n\tmods/m.lua:4: in function <mods/m.lua:2>".into(),
            cause: std::sync::Arc::new(mlua::Error::runtime("req:set_header: \"bad name\" is not a valid header name")),
        };
        assert_eq!(
            caught_message(&e),
            "mods/m.lua:4: req:set_header: \"bad name\" is not a valid header name"
        );
    }

    #[test]
    fn wrong_argument_types_are_named_in_lua_terms() {
        let e = mlua::Error::BadArgument {
            to: Some("ReqHandle.header".into()),
            pos: 2,
            name: None,
            cause: std::sync::Arc::new(mlua::Error::FromLuaConversionError {
                from: "nil",
                to: "String".into(),
                message: None,
            }),
        };
        assert_eq!(
            caught_message(&e),
            "req:header: bad argument #1 (string expected, got nil)"
        );
    }
}

//! A module's Lua chunk at load time: where `lua "FILE"` may point (inside the
//! scripts folder), reading it, checking it by loading it into a VM of its own (with
//! the generation's snapshot of `mods/lib/`), and turning a Lua load error into a
//! diagnostic at the file and line Lua named — the chunk's, or a library's.
//!
//! Must not touch: how VMs are built (`lua::vm`), what the pipeline runs.

use std::path::{Component, Path};
use std::sync::Arc;

use super::ast;
use super::value;
use super::Diagnostic;
use crate::lua::{Libraries, Limits, LuaSpec, VmError};

/// What loading a chunk found out.
pub(super) struct ChunkFacts {
    /// Which hooks it defines (request, response, log).
    pub hooks: [bool; 3],
    /// Its other global functions (callable from pcmod as `lua.NAME(...)`).
    pub functions: Vec<String>,
}

/// Why `lua "FILE"` names a file outside the scripts folder, if it does: the path
/// must be relative and must not climb out (`..`), so that a module — which the admin
/// API can upload — reads no other file of the host.
pub(super) fn outside_scripts(rel: &str) -> Option<&'static str> {
    let path = Path::new(rel);
    if path.has_root() {
        return Some("is absolute");
    }
    path.components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        .then_some("climbs out with `..`")
}

/// Reads and checks a module's Lua chunk (by loading it into a VM of its own).
pub(super) fn lua_chunk(
    module: &ast::Module,
    item: &ast::Spanned<ast::LuaSource>,
    path: &Path,
    source: &str,
    config: Vec<(String, value::Value)>,
    libs: &Arc<Libraries>,
    limits: Limits,
) -> Result<(LuaSpec, ChunkFacts), Diagnostic> {
    let (file, text) = match &item.node {
        ast::LuaSource::File(rel) => {
            if let Some(why) = outside_scripts(rel) {
                return Err(Diagnostic::new(
                    &module.file,
                    source,
                    item.span,
                    format!("the Lua file path `{rel}` {why}"),
                )
                .with_hint("name a file in the scripts folder or a folder under it, e.g. `lua \"gate.lua\"`"));
            }
            let lua_path = path.parent().unwrap_or(Path::new(".")).join(rel);
            match std::fs::read_to_string(&lua_path) {
                Ok(text) => (lua_path.display().to_string(), text),
                Err(e) => {
                    return Err(Diagnostic::new(
                        &module.file,
                        source,
                        item.span,
                        format!("cannot read the Lua file {}: {e}", lua_path.display()),
                    )
                    .with_hint("the path is relative to the .pcmod file"))
                }
            }
        }
        ast::LuaSource::Inline(text) => {
            // Pad so Lua's line numbers are the .pcmod file's.
            let pad = "\n".repeat(item.span.line.saturating_sub(1) as usize);
            (module.file.to_string(), format!("{pad}{text}"))
        }
    };
    let spec = LuaSpec {
        module: Arc::from(module.name.node.as_str()),
        file: Arc::from(file.as_str()),
        source: Arc::from(text.as_str()),
        config,
    };
    let vm = crate::lua::Vm::build_with(
        Arc::from(vec![spec.clone()]),
        limits.memory,
        limits.budget,
        Arc::clone(libs),
        Arc::new(std::collections::HashMap::new()),
    );
    match vm {
        Ok(vm) => {
            let hooks = vm
                .hooks
                .first()
                .map_or([false; 3], |h| h.each_ref().map(Option::is_some));
            let mut functions: Vec<String> = vm
                .functions
                .first()
                .map(|f| f.keys().cloned().collect())
                .unwrap_or_default();
            functions.sort();
            Ok((spec, ChunkFacts { hooks, functions }))
        }
        Err(e) => Err(load_diagnostic(
            &spec.module,
            &e.file,
            e.line,
            &e.message,
            std::slice::from_ref(&spec),
            libs,
        )),
    }
}

/// A chunk that did not load in the VM of all modules (checked once per generation,
/// as a worker builds it).
pub(super) fn vm_diagnostic(e: &VmError, specs: &[LuaSpec], libs: &Libraries) -> Diagnostic {
    let mut d = load_diagnostic(&e.module, &e.file, e.line, &e.message, specs, libs);
    d.hint = Some(format!(
        "module `{}` loads on its own but not in one VM with the other Lua modules",
        e.module
    ));
    d
}

/// A Lua load error of `module` at `file:line` as a diagnostic, with the line's text
/// from the chunk or library it is in. One in a library also names the module.
fn load_diagnostic(
    module: &str,
    file: &str,
    line: u32,
    message: &str,
    specs: &[LuaSpec],
    libs: &Libraries,
) -> Diagnostic {
    let chunk = specs.iter().find(|s| &*s.file == file).map(|s| &*s.source);
    let library = chunk.is_none().then(|| libs.text_of(file)).flatten();
    let text = chunk.or(library).unwrap_or("");
    let line_text = text
        .lines()
        .nth(line.saturating_sub(1) as usize)
        .unwrap_or("");
    Diagnostic {
        file: file.to_owned(),
        line: line.max(1),
        col: 1,
        message: format!("Lua: {}", message.lines().next().unwrap_or("")),
        hint: library.map(|_| format!("a library module `{module}` loads with `require`")),
        module: library.map(|_| Box::new(module.to_owned())),
        source_line: if line == 0 {
            String::new()
        } else {
            line_text.to_owned()
        },
        width: line_text.chars().count().max(1),
    }
}

/// A phase both as a pcmod block and as a Lua hook is an error.
pub(super) fn twice_defined(
    module: &ast::Module,
    source: &str,
    hooks: [bool; 3],
) -> Vec<Diagnostic> {
    module
        .phases
        .iter()
        .filter(|p| hooks[crate::lua::vm::phase_index(p.kind)])
        .map(|p| {
            Diagnostic::new(
                &module.file,
                source,
                p.span,
                format!(
                    "phase `on {}` is defined here and as `{}` in the module's Lua chunk",
                    p.kind.as_str(),
                    crate::lua::vm::HOOK_NAMES[crate::lua::vm::phase_index(p.kind)]
                ),
            )
            .with_hint("a phase is either a pcmod block or a Lua hook")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::outside_scripts;

    #[test]
    fn only_paths_inside_the_scripts_folder_are_chunks() {
        assert_eq!(outside_scripts("gate.lua"), None);
        assert_eq!(outside_scripts("sub/g.lua"), None);
        assert_eq!(outside_scripts("./g.lua"), None);
        assert_eq!(outside_scripts("/etc/passwd"), Some("is absolute"));
        assert_eq!(
            outside_scripts("../config.lua"),
            Some("climbs out with `..`")
        );
        assert_eq!(outside_scripts("sub/../../x"), Some("climbs out with `..`"));
    }
}

//! The libraries `require` loads (`scripts.dir/lib/NAME.lua`), read once per
//! generation: when its modules are loaded and checked. Every VM of that generation —
//! the check's and each worker's, built later on its first request — reads this
//! snapshot, never the disk, so a library edited or broken after the check cannot
//! reach a generation that is serving, and all workers run the same version.
//!
//! Hidden files (a name starting with `.`, such as an editor's backup or macOS's
//! `._util.lua`) are not libraries.
//!
//! Must not touch: which names `require` accepts (the sandbox's prelude and
//! [`Libraries::require`] check them).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One library as read.
#[derive(Debug, Clone)]
struct LibFile {
    /// Where it was read from, as messages name it (`mods/lib/util.lua`).
    path: Arc<str>,
    /// Its text, or why it could not be read.
    text: Result<Arc<str>, String>,
}

/// The library files of one generation, by name.
#[derive(Debug, Clone, Default)]
pub struct Libraries {
    /// The folder they were read from, for messages about a missing one.
    dir: String,
    files: BTreeMap<String, LibFile>,
}

impl Libraries {
    /// Reads every `*.lua` file directly in `dir` that is not hidden (none when the
    /// folder does not exist). A file that cannot be read is kept as its error: only
    /// a `require` of it fails.
    pub fn read(dir: &Path) -> Libraries {
        let mut libs = Libraries {
            dir: dir.display().to_string(),
            files: BTreeMap::new(),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return libs;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let lua = path.extension().is_some_and(|x| x == "lua");
            if name.starts_with('.') || !lua || !path.is_file() {
                continue;
            }
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map(Arc::from)
                .map_err(|e| format!("cannot read {shown}: {e}"));
            libs.files.insert(
                name.to_owned(),
                LibFile {
                    path: Arc::from(shown.as_str()),
                    text,
                },
            );
        }
        libs
    }

    /// What `require(name)` loads: the library's text and its path (the chunk name
    /// Lua's messages give), or the message of the error `require` raises.
    pub fn require(&self, name: &str) -> Result<(String, String), String> {
        // The prelude checks the name too; this check is the one a script cannot
        // reach: a name is letters, digits and `_`.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "require {name:?}: a library name is letters, digits and _ (mods/lib/NAME.lua)"
            ));
        }
        match self.files.get(name) {
            Some(LibFile {
                path,
                text: Ok(text),
            }) => Ok((text.to_string(), path.to_string())),
            Some(LibFile { text: Err(e), .. }) => Err(format!("require {name:?}: {e}")),
            None => Err(format!(
                "require {name:?}: there is no {}/{name}.lua (libraries are read when the modules load)",
                self.dir
            )),
        }
    }

    /// The paths of the libraries, as Lua's messages name them.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.values().map(|f| &*f.path)
    }

    /// The text of the library read from `path`, if it is one of these.
    pub fn text_of(&self, path: &str) -> Option<&str> {
        self.files
            .values()
            .find(|f| &*f.path == path)
            .and_then(|f| f.text.as_deref().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::Libraries;

    #[test]
    fn the_snapshot_is_what_the_folder_held_when_read_and_hidden_files_are_not_in_it() {
        let dir = std::env::temp_dir().join(format!("proxycache-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("util.lua"), "return 1\n").expect("write");
        std::fs::write(dir.join(".util.lua"), "garbage(").expect("write");
        std::fs::write(dir.join("._util.lua"), [0u8, 159, 146, 150]).expect("write");
        std::fs::write(dir.join("notes.txt"), "x").expect("write");
        let libs = Libraries::read(&dir);
        std::fs::write(dir.join("util.lua"), "return 2\n").expect("write");
        let (text, path) = libs.require("util").expect("util is there");
        assert_eq!(text, "return 1\n");
        assert!(path.ends_with("util.lua"), "{path}");
        assert_eq!(libs.paths().count(), 1);
        assert!(libs.require("notes").is_err());
        assert!(libs.require("../util").is_err());
        assert_eq!(libs.text_of(&path), Some("return 1\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Configuration: reading `config.toml` and turning it into a validated [`Config`].
//!
//! This module owns the path `TOML text -> file structs -> validated Config`:
//! - `file.rs`: the file structs, mirroring `config.toml` key for key, and the reading
//!   step that reports every syntax, unknown-key and wrong-type error;
//! - `validate.rs`: the checks and the named defaults that produce [`Config`];
//! - `units.rs`: sizes (`"64KiB"`) and durations (`"250ms"`);
//! - `types.rs`: the validated runtime types the rest of the proxy reads.
//!
//! It must not touch sockets, files other than the config file itself, or modules:
//! `[mods.NAME]` tables are passed through untouched for the module loader to check.
//! Every error names the file, the dotted key and the line and column, and loading
//! reports all of them at once rather than stopping at the first.

use std::fmt;
use std::path::Path;

mod file;
#[cfg(test)]
mod tests;
mod types;
mod units;
mod validate;

pub use types::*;
pub use units::{parse_duration, parse_size};
pub use validate::bounds::*;
pub use validate::defaults::*;

/// The file name used in errors about the embedded default configuration.
pub const EMBEDDED_NAME: &str = "<default>";

/// The configuration used when there is no `--config` and no `./config.toml`:
/// the proxy on 127.0.0.1:8080, the admin API on 127.0.0.1:9901, every request to the
/// built-in echo upstream, modules from `./mods`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# proxycache embedded default configuration
[server]
listen = ["127.0.0.1:8080"]

[admin]
listen = "127.0.0.1:9901"

[scripts]
dir = "mods"

[upstreams.echo]
servers = ["builtin:echo"]

[[routes]]
upstream = "echo"
"#;

/// One configuration error, positioned in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct ConfigError {
    /// The config file as given, or `<default>` for the embedded configuration.
    pub file: String,
    /// Dotted TOML path of the offending key, e.g. `routes[2].upstream`; `""` when the
    /// error is about the whole file.
    pub key: String,
    /// 1-based line; 0 when the error has no position (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based column in characters; 0 when the error has no position.
    pub col: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// `file:line:col: key: message`, leaving out the position when there is none (an
/// unreadable file) and the key when the error is about the whole file.
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found while loading a configuration (never empty).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates `text`. `source` is the file it came from (`None` for the
    /// embedded default); relative paths are resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        source: Option<&Path>,
        base_dir: &Path,
    ) -> Result<Config, ConfigErrors> {
        let file_name =
            source.map_or_else(|| EMBEDDED_NAME.to_owned(), |p| p.display().to_string());
        let mut config = validate::load(text, &file_name, base_dir)?;
        config.source = source.map(Path::to_path_buf);
        Ok(config)
    }

    /// Loads the configuration from `path`; with `None`, from `./config.toml` if it
    /// exists, else the embedded default (relative paths then resolve against the
    /// current directory).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let default_path = Path::new("config.toml");
        let path = match path {
            Some(path) => path,
            None if default_path.exists() => default_path,
            None => return Self::embedded_default_in(&current_dir()),
        };
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                key: String::new(),
                line: 0,
                col: 0,
                message: format!("cannot read the config file: {err}"),
            }])
        })?;
        // Absolute, so paths stay right if the working directory changes later.
        let base_dir = current_dir().join(path.parent().unwrap_or(Path::new("")));
        Self::from_toml_str(&text, Some(path), &base_dir)
    }

    /// Line and column (1-based) of the value at a dotted key of this configuration's
    /// text (`server.listen[1]`), for errors found after loading; `None` when the
    /// text does not hold it (a default).
    pub fn position_of(&self, key: &str) -> Option<(usize, usize)> {
        file::span_of(&self.source_text, key)
            .map(|span| validate::line_col(&self.source_text, span.start))
    }

    /// The embedded default configuration, with paths relative to the current directory.
    pub fn embedded_default() -> Config {
        // The text is a constant, checked by `tests::embedded_default_parses`.
        #[allow(clippy::expect_used)]
        Self::embedded_default_in(&current_dir()).expect("the embedded default config is valid")
    }

    fn embedded_default_in(base_dir: &Path) -> Result<Config, ConfigErrors> {
        Self::from_toml_str(DEFAULT_CONFIG_TOML, None, base_dir)
    }
}

/// The working directory, or `.` when it cannot be read (e.g. it was deleted).
fn current_dir() -> std::path::PathBuf {
    std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("."))
}

//! `Generation`: an immutable snapshot of everything a request needs — the validated
//! config, the routes, the upstream sets (and, with the pipeline, the compiled
//! modules). Requests pin the generation they start with; a reload builds a new one
//! off the hot path and swaps it in atomically.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::GenerationMeters;
use crate::pipeline::{Pipeline, StdState};
use crate::proxy::route::Router;
use crate::script::{self, Diagnostic, ModuleInfo};
use crate::server::tls::{self, TlsListeners};
use crate::upstream::Upstreams;

/// One immutable snapshot of the proxy's configuration.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one with every successful reload; the first is 1.
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Upstreams,
    /// The rustls side of each `[[server.tls]]` listener, with its certificates.
    pub tls: TlsListeners,
    /// The compiled modules, in run order.
    pub pipeline: Pipeline,
    /// What was loaded, for `check` and the admin API.
    pub modules: Vec<ModuleInfo>,
    /// Stdlib state shared by every generation (rate-limit buckets, metrics, ...).
    pub std_state: Arc<StdState>,
    /// The request counters and latency histograms of this generation's routes and
    /// upstreams, resolved once.
    pub meters: GenerationMeters,
    /// Hash of everything it was built from (config text, module files): a reload
    /// whose inputs hash the same changes nothing.
    pub fingerprint: u64,
}

impl Generation {
    /// Builds generation `number` from `config` and the modules in its scripts folder,
    /// carrying upstream state (health, breakers) over from `previous` where the
    /// settings did not change. Any module error, a certificate or key file that
    /// cannot be read or used, or an upstream set whose `tls_ca` or server names do not
    /// load, fails the whole build.
    pub fn build(
        number: u64,
        config: Config,
        previous: Option<&Generation>,
        std_state: Arc<StdState>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let sources = script::read_sources(&config.scripts.dir).map_err(|d| vec![d])?;
        Self::build_from(number, config, &sources, previous, std_state)
    }

    /// Like [`Generation::build`], with the module sources already read.
    pub fn build_from(
        number: u64,
        config: Config,
        sources: &[(PathBuf, String)],
        previous: Option<&Generation>,
        std_state: Arc<StdState>,
    ) -> Result<Self, Vec<Diagnostic>> {
        // Hashed before loading: a Lua file changed meanwhile then differs from the
        // hash and the next reload picks it up (hashed after, it could be missed).
        let fingerprint = fingerprint(&config, sources);
        // Modules, certificates and upstream TLS settings all load before failing, so
        // one report has every error.
        let modules = script::load_sources(&config, sources);
        let tls = TlsListeners::build(&config, previous.map(|p| &p.tls));
        let upstreams = Upstreams::new(&config.upstreams, previous.map(|p| &p.upstreams));
        let (mut loaded, tls, upstreams) = match (modules, tls, upstreams) {
            (Ok(loaded), Ok(tls), Ok(upstreams)) => (loaded, tls, upstreams),
            (modules, tls, upstreams) => {
                let mut diags = modules.err().unwrap_or_default();
                if let Err(errors) = tls {
                    diags.extend(tls::diagnostics(&config, &errors));
                }
                if let Err(errors) = upstreams {
                    diags.extend(crate::upstream::diagnostics(&config, &errors));
                }
                return Err(diags);
            }
        };
        let metrics = &std_state.metrics;
        loaded.pipeline.meters = metrics.module_meters(&loaded.pipeline.modules);
        Ok(Generation {
            number,
            router: Router::new(config.routes.clone()),
            tls,
            upstreams,
            meters: metrics.generation_meters(&config),
            pipeline: loaded.pipeline,
            modules: loaded.modules,
            std_state,
            fingerprint,
            config: Arc::new(config),
        })
    }
}

/// Hash of a generation's inputs: the config text, the module sources, every
/// `.lua` file in the scripts folder and its `lib/` (chunks and `require`d libraries),
/// the Lua files modules name in subfolders (`lua "sub/x.lua"`), and every
/// [`certificate_files`] file.
pub fn fingerprint(config: &Config, sources: &[(PathBuf, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.source_text.hash(&mut h);
    config.source.hash(&mut h);
    sources.hash(&mut h);
    for dir in [config.scripts.dir.clone(), config.scripts.dir.join("lib")] {
        lua_files(&dir).hash(&mut h);
    }
    for (path, source) in sources {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        // Only what a module may name (a path inside the scripts folder): another
        // path is a load error, and reading it here would read any file.
        for chunk in lua_chunk_names(source).filter(|c| crate::script::chunk_path_allowed(c)) {
            let file = dir.join(chunk);
            std::fs::read(&file).ok().hash(&mut h);
            file.hash(&mut h);
        }
    }
    for path in certificate_files(config) {
        path.hash(&mut h);
        std::fs::read(&path).ok().hash(&mut h);
    }
    // Server names are resolved as the config loads: a reload with the same files but
    // another DNS answer builds a generation with the new addresses (as nginx's
    // reload re-resolves).
    for u in &config.upstreams {
        for s in &u.servers {
            if let crate::config::ServerTarget::Addr { addr, .. } = &s.target {
                addr.hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Every certificate file a generation reads: the TLS listeners' certificates, keys
/// and client CAs, and the upstream sets' `tls_ca` bundles. The watcher watches them
/// and [`fingerprint`] hashes their bytes, so a changed file is a change: it reloads,
/// and a `POST /reload` or SIGHUP with the config text unchanged applies it.
pub fn certificate_files(config: &Config) -> Vec<PathBuf> {
    let mut files = tls::files(config);
    files.extend(config.upstreams.iter().filter_map(|u| u.tls_ca.clone()));
    files.sort();
    files.dedup();
    files
}

/// The files named by `lua "FILE"` items in a module's source (a cheap scan: a
/// mention in a comment is read too, which only costs a read).
pub(crate) fn lua_chunk_names(source: &str) -> impl Iterator<Item = &str> {
    source.match_indices("lua").filter_map(|(at, _)| {
        let after = &source[at + 3..];
        let rest = after.trim_start_matches([' ', '\t']);
        if rest.len() == after.len() {
            return None; // `luax`, `lua.f()`: not an item
        }
        let quoted = rest.strip_prefix('"')?;
        if quoted.starts_with('"') {
            return None; // inline `lua """..."""`: in the source already
        }
        let end = quoted.find(['"', '\n'])?;
        (end > 0 && quoted[end..].starts_with('"')).then(|| &quoted[..end])
    })
}

/// `(path, bytes)` of every `.lua` file directly in `dir` but hidden ones, sorted
/// (none when the folder does not exist).
fn lua_files(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua") && !crate::script::is_hidden(p))
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::{certificate_files, fingerprint, lua_chunk_names};
    use crate::config::{Config, ServerTarget};

    #[test]
    fn lua_items_are_found_and_inline_chunks_are_not() {
        let src = "mod m {\n  lua \"sub/g.lua\"\n}\nmod n { lua \"\"\"x = 1\"\"\" }\n# lua.f() luax \"no.lua\"\n";
        assert_eq!(lua_chunk_names(src).collect::<Vec<_>>(), ["sub/g.lua"]);
    }

    /// The same files with another DNS answer are another generation (a reload that
    /// found "nothing changed" never picked up a server's new address).
    #[test]
    fn resolved_addresses_are_part_of_the_fingerprint() {
        let text =
            "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\n\n[[routes]]\nupstream = \"app\"\n";
        let load = || {
            Config::from_toml_str(text, None, std::path::Path::new("."))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (a, mut b) = (load(), load());
        assert_eq!(fingerprint(&a, &[]), fingerprint(&b, &[]));
        if let ServerTarget::Addr { addr, .. } = &mut b.upstreams[0].servers[0].target {
            addr.set_ip([127, 0, 0, 2].into());
        }
        assert_ne!(fingerprint(&a, &[]), fingerprint(&b, &[]));
    }

    /// An upstream set's `tls_ca` is watched and its bytes are part of the
    /// fingerprint: a reload with the same config text and a changed bundle is a
    /// change (it once answered "nothing changed" and kept the old roots).
    #[test]
    fn a_tls_ca_file_is_watched_and_its_bytes_are_fingerprinted() {
        let dir = std::env::temp_dir().join(format!("pc-gen-ca-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let ca = dir.join("ca.pem");
        let _ = std::fs::write(&ca, "first");
        let text = format!(
            "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\ntls = true\ntls_ca = {:?}\n\n\
             [[routes]]\nupstream = \"app\"\n",
            ca.display().to_string()
        );
        let config = Config::from_toml_str(&text, None, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(certificate_files(&config).contains(&ca));
        let before = fingerprint(&config, &[]);
        let _ = std::fs::write(&ca, "second");
        let after = fingerprint(&config, &[]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(before, after);
    }
}

//! `Generation`: an immutable snapshot of everything a request needs — the validated
//! config, the routes, the upstream sets (and, with the pipeline, the compiled
//! modules). Requests pin the generation they start with; a reload builds a new one
//! off the hot path and swaps it in atomically.

use std::sync::Arc;

use crate::config::Config;
use crate::pipeline::{Pipeline, StdState};
use crate::proxy::route::Router;
use crate::script::{self, Diagnostic, ModuleInfo};
use crate::upstream::Upstreams;

/// One immutable snapshot of the proxy's configuration.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one with every successful reload; the first is 1.
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Upstreams,
    /// The compiled modules, in run order.
    pub pipeline: Pipeline,
    /// What was loaded, for `check` and the admin API.
    pub modules: Vec<ModuleInfo>,
    /// Stdlib state shared by every generation (rate-limit buckets, ...).
    pub std_state: Arc<StdState>,
}

impl Generation {
    /// Builds generation `number` from `config` and the modules in its scripts folder,
    /// carrying upstream state (health, breakers) over from `previous` where the
    /// settings did not change. Any module error fails the whole build.
    pub fn build(
        number: u64,
        config: Config,
        previous: Option<&Generation>,
        std_state: Arc<StdState>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let loaded = script::load(&config)?;
        let upstreams = Upstreams::new(&config.upstreams, previous.map(|p| &p.upstreams));
        Ok(Generation {
            number,
            router: Router::new(config.routes.clone()),
            upstreams,
            pipeline: loaded.pipeline,
            modules: loaded.modules,
            std_state,
            config: Arc::new(config),
        })
    }
}

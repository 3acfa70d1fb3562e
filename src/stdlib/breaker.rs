//! `std.circuit_breaker.check` and `.record`: the upstream breakers of the proxy,
//! readable from scripts, and named breakers for a script's own purposes (an auth
//! callout, a payment API) with the same closed -> open -> half-open cycle.
//!
//! Named breakers live outside generations (a reload keeps them while their settings
//! stay the same) and are capped in number. Must not touch: the upstream breakers'
//! state (the proxy's own requests feed those).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{ArgDefault, ArgSig, ArgType, FnSig, RecordSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::script::value::Value;
use crate::upstream::breaker::{Breaker, BreakerState};
use crate::upstream::UpstreamSet;

/// `{allowed, state}`.
pub static RESULT: RecordSig = RecordSig {
    name: "circuit_breaker",
    fields: &[("allowed", ArgType::Bool), ("state", ArgType::Str)],
};

/// Named breakers held at most; past it a new name is refused (a run-time fault).
pub const MAX_NAMED: usize = 10_000;

const NAME_ARG: ArgSig = ArgSig {
    name: "name",
    ty: ArgType::Str,
    default: ArgDefault::Nil,
    literal: false,
    check: None,
    doc: "an upstream's name (its servers' breakers), or any other name for a breaker of your own; the request's upstream when absent",
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.circuit_breaker.check",
        id: StdFn::BreakerCheck,
        args: &[
            NAME_ARG,
            ArgSig { name: "failures", ty: ArgType::Int, default: ArgDefault::Int(5), literal: false, check: Some(positive_int), doc: "consecutive failures that open a named breaker" },
            ArgSig { name: "open_for", ty: ArgType::Duration, default: ArgDefault::DurationMs(10_000), literal: false, check: None, doc: "how long a named breaker stays open before it lets one probe through" },
        ],
        returns: Returns::Record(&RESULT),
        phases: ALL_PHASES,
        doc: "Whether a request may go ahead: `allowed` is false while the breaker is open (and, half-open, for all but the one probe); `state` is `closed`, `open` or `half_open`. For an upstream: allowed when some server would be picked; the state of its best server.",
    },
    FnSig {
        name: "std.circuit_breaker.record",
        id: StdFn::BreakerRecord,
        args: &[
            ArgSig { name: "ok", ty: ArgType::Bool, default: ArgDefault::Required, literal: false, check: None, doc: "whether the guarded work succeeded" },
            ArgSig { name: "name", ty: ArgType::Str, default: ArgDefault::Nil, literal: false, check: None, doc: "the named breaker; the one this request checked last when absent" },
        ],
        returns: Returns::Nothing,
        phases: ALL_PHASES,
        doc: "Feeds a named breaker: failures in a row open it; a success closes a half-open one. (Upstream breakers are fed by the proxy's own requests.)",
    },
];

/// The named breakers of the process.
#[derive(Debug, Default)]
pub struct NamedBreakers {
    map: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
}

impl NamedBreakers {
    /// The breaker `name` with these settings (made, or remade when they changed).
    pub fn get(
        &self,
        name: &str,
        failures: u32,
        open_for: Duration,
    ) -> Result<Arc<Breaker>, String> {
        let mut map = self.map.lock();
        if let Some(b) = map.get(name) {
            if b.settings() == (failures.max(1), open_for) {
                return Ok(Arc::clone(b));
            }
        } else if map.len() >= MAX_NAMED {
            return Err(format!("more than {MAX_NAMED} named breakers"));
        }
        let b = Arc::new(Breaker::new(failures, open_for));
        map.insert(Arc::from(name), Arc::clone(&b));
        Ok(b)
    }

    /// The breaker `name`, if it exists.
    pub fn find(&self, name: &str) -> Option<Arc<Breaker>> {
        self.map.lock().get(name).cloned()
    }
}

fn record(allowed: bool, state: BreakerState) -> Value {
    Value::Record(
        &RESULT,
        Arc::from([Value::Bool(allowed), Value::str(state.as_str())]),
    )
}

/// An upstream's breakers seen as one: allowed when a server is available; the state
/// of its best server.
fn upstream_view(set: &UpstreamSet) -> Value {
    let allowed = set.servers.iter().any(|s| s.is_available());
    let states = set.servers.iter().map(|s| s.breaker.state());
    let state = states
        .min_by_key(|s| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        })
        .unwrap_or(BreakerState::Open);
    record(allowed, state)
}

/// `std.circuit_breaker.check(name?, failures?, open_for?)`.
pub fn check(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    const F: &str = "std.circuit_breaker.check";
    let fail = |message: String| StdError {
        function: F,
        message,
    };
    let name = match args.first() {
        Some(Value::Str(s)) => s.to_string(),
        Some(Value::Nil) | None => match ex.upstream {
            Some(u) => u.to_string(),
            None => return Err(fail("no name given and the request has no upstream".into())),
        },
        Some(other) => other.to_string(),
    };
    if let Some(set) = ex.upstreams.by_name(&name) {
        return Ok(upstream_view(set));
    }
    let failures = match args.get(1) {
        Some(Value::Int(n)) if *n > 0 => u32::try_from(*n).unwrap_or(u32::MAX),
        None | Some(Value::Nil) => 5,
        Some(other) => {
            return Err(fail(format!(
                "failures must be a positive int, got {other}"
            )))
        }
    };
    let open_for = match args.get(2) {
        Some(Value::Duration(d)) => *d,
        None | Some(Value::Nil) => Duration::from_secs(10),
        Some(other) => return Err(fail(format!("open_for must be a duration, got {other}"))),
    };
    let breaker = ex
        .state
        .breakers
        .get(&name, failures, open_for)
        .map_err(fail)?;
    let permit = breaker.try_acquire();
    let allowed = permit.is_some();
    // One entry per name, moved last; a refused check keeps a permit this request
    // already holds (it may be the probe).
    let held = match ex.ctx.breakers.iter().position(|(n, _)| **n == *name) {
        Some(i) => ex.ctx.breakers.remove(i).1,
        None => None,
    };
    ex.ctx.breakers.push((Arc::from(name), permit.or(held)));
    Ok(record(allowed, breaker.state()))
}

/// `std.circuit_breaker.record(ok, name?)`.
pub fn record_outcome(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    const F: &str = "std.circuit_breaker.record";
    let fail = |message: String| StdError {
        function: F,
        message,
    };
    let ok = match args.first() {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(fail(format!("ok must be a bool, got {other}"))),
        None => return Err(fail("ok is required".into())),
    };
    let name: Arc<str> = match args.get(1) {
        Some(Value::Str(s)) => Arc::clone(s),
        Some(Value::Nil) | None => match ex.ctx.breakers.last() {
            Some((n, _)) => Arc::clone(n),
            None => {
                return Err(fail(
                    "no name given and this request checked no named breaker".into(),
                ))
            }
        },
        Some(other) => Arc::from(other.to_string()),
    };
    if ex.upstreams.by_name(&name).is_some() {
        return Err(fail(format!(
            "`{name}` is an upstream: its breakers are fed by the proxy's own requests"
        )));
    }
    match ex.state.breakers.find(&name) {
        Some(b) => {
            let opened = match ex.ctx.breakers.iter().find(|(n, _)| *n == name) {
                Some((_, Some(permit))) => b.record(*permit, ok),
                // Its check was refused: the work did not go ahead on its word.
                Some((_, None)) => false,
                None => b.record_unchecked(ok),
            };
            if opened {
                tracing::warn!(target: "proxycache::stdlib", breaker = %name, "circuit breaker opened");
            }
            Ok(Value::Nil)
        }
        None => Err(fail(format!(
            "no breaker named `{name}`: call std.circuit_breaker.check first"
        ))),
    }
}

fn positive_int(v: &Value) -> Result<(), String> {
    match v {
        Value::Int(i) if *i > 0 => Ok(()),
        _ => Err(format!("must be a positive int, not {v}")),
    }
}

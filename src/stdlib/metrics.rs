//! `std.metrics.inc`, `std.metrics.observe` and `std.metrics.prometheus`: script
//! metrics, and the exposition for a metrics route on the main listener. The series
//! themselves, their names' rules and their bound live in
//! [`crate::metrics::script`]; this file converts script values at the edge.

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::metrics::script::{check_name, Labels};
use crate::pipeline::Exchange;
use crate::script::ast::PhaseKind;
use crate::script::value::Value;

const NAME: ArgSig = ArgSig {
    name: "name",
    ty: ArgType::Str,
    default: ArgDefault::Required,
    literal: false,
    check: Some(metric_name),
    doc: "the metric's name, `[a-zA-Z0-9_]`, up to 100 bytes; exposed as `proxycache_script_NAME`",
};
const LABELS: ArgSig = ArgSig {
    name: "labels",
    ty: ArgType::Map,
    default: ArgDefault::Nil,
    literal: false,
    check: None,
    doc: "label names to string values (at most 8; values up to 256 bytes)",
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.metrics.inc",
        id: StdFn::MetricsInc,
        args: &[
            NAME,
            LABELS,
            ArgSig {
                name: "by",
                ty: ArgType::Number,
                default: ArgDefault::Int(1),
                literal: false,
                check: None,
                doc: "how much to add (not negative; rounded to a whole number; the counter stops at 2^64-1)",
            },
        ],
        returns: Returns::Nothing,
        phases: ALL_PHASES,
        doc: "Adds `by` to the counter `proxycache_script_NAME_total` with these labels. At most 10,000 series (name + labels) exist across all scripts; past that, new ones are dropped and counted in `proxycache_script_metrics_dropped_total`.",
    },
    FnSig {
        name: "std.metrics.observe",
        id: StdFn::MetricsObserve,
        args: &[
            NAME,
            ArgSig {
                name: "value",
                ty: ArgType::Number,
                default: ArgDefault::Required,
                literal: false,
                check: None,
                doc: "the observation (seconds, for a duration)",
            },
            LABELS,
        ],
        returns: Returns::Nothing,
        phases: ALL_PHASES,
        doc: "Records `value` in the histogram `proxycache_script_NAME` (buckets 5 ms to 10 s) with these labels; bounded like `std.metrics.inc`.",
    },
    FnSig {
        name: "std.metrics.prometheus",
        id: StdFn::MetricsPrometheus,
        args: &[],
        returns: Returns::Value(ArgType::Str),
        phases: &[PhaseKind::Request],
        doc: "The Prometheus text exposition (0.0.4) of every metric, as `GET /metrics` on the admin listener serves it; answer with it to serve metrics on the main listener.",
    },
];

fn metric_name(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) => check_name(s).map_err(|e| e.to_string()),
        None => Err(format!("must be a string, not {v}")),
    }
}

/// Runs one of this area's functions; `args` are in signature order.
pub fn call(id: StdFn, args: &[Value], ex: &mut Exchange<'_>) -> Result<Value, StdError> {
    let function = match id {
        StdFn::MetricsInc => "std.metrics.inc",
        StdFn::MetricsObserve => "std.metrics.observe",
        _ => "std.metrics.prometheus",
    };
    let fail = |message: String| StdError { function, message };
    let metrics = &ex.state.metrics;
    if id == StdFn::MetricsPrometheus {
        return metrics
            .prometheus()
            .map(Value::str)
            .map_err(|_| fail("the exposition could not be written".into()));
    }
    let name = match args.first() {
        Some(Value::Str(s)) => s,
        other => {
            return Err(fail(format!(
                "name must be a string, not {}",
                other.map_or("nil", Value::type_name)
            )))
        }
    };
    let number = |v: Option<&Value>, what: &str| -> Result<f64, StdError> {
        match v {
            Some(Value::Int(i)) => Ok(*i as f64),
            Some(Value::Float(f)) => Ok(*f),
            Some(Value::Duration(d)) => Ok(d.as_secs_f64()),
            other => Err(fail(format!(
                "{what} must be a number, not {}",
                other.map_or("nil", Value::type_name)
            ))),
        }
    };
    let result = if id == StdFn::MetricsInc {
        let labels = labels(args.get(1)).map_err(fail)?;
        metrics.script.inc(name, labels, number(args.get(2), "by")?)
    } else {
        let value = number(args.get(1), "value")?;
        let labels = labels(args.get(2)).map_err(fail)?;
        metrics.script.observe(name, value, labels)
    };
    // A call dropped by the bound is counted, not an error: the request goes on.
    result.map(|_| Value::Nil).map_err(|e| fail(e.to_string()))
}

/// A map of labels as sorted pairs (nil: no labels).
fn labels(v: Option<&Value>) -> Result<Labels, String> {
    match v {
        None | Some(Value::Nil) => Ok(Vec::new()),
        // A BTreeMap: already sorted by label name, so one series has one key.
        Some(Value::Map(map)) => Ok(map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()),
        Some(other) => Err(format!(
            "labels must be a map of strings, not {}",
            other.type_name()
        )),
    }
}

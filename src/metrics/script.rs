//! Metrics scripts define with `std.metrics.inc` and `std.metrics.observe`: counters
//! and histograms named by the script, exposed as `proxycache_script_NAME`.
//!
//! It owns the names (checked against the Prometheus charset), the kind each name was
//! first used as, and the bound: at most `max_series` distinct name + label sets
//! across all scripts, so a script that labels by client IP cannot exhaust memory.
//! Past the bound new series are dropped and counted
//! (`proxycache_script_metrics_dropped_total`); existing ones keep counting. The bound
//! lives with the registry, outside generations: a reload keeps every series.
//!
//! Must not touch: script values (the stdlib converts at the edge).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;

/// The prefix every script metric gets.
pub const PREFIX: &str = "proxycache_script_";
/// Default bound on distinct series (name + label set) across all scripts.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// The longest name a script may give (before the prefix).
pub const MAX_NAME_LEN: usize = 100;
/// Most labels on one series.
pub const MAX_LABELS: usize = 8;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Buckets of script histograms (Prometheus's defaults, in seconds when timing).
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A series' labels, sorted by name.
pub type Labels = Vec<(String, String)>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Why a script metric call was refused (a run-time fault of the script).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptMetricError {
    #[error("invalid metric name {0:?}: use 1 to 100 of [a-zA-Z0-9_], not starting with a digit")]
    Name(String),
    #[error("invalid label name {0:?}: use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __ (and not `le` on a histogram)")]
    LabelName(String),
    #[error("the value of label {0:?} is longer than 256 bytes")]
    LabelValue(String),
    #[error("at most 8 labels, got {0}")]
    TooManyLabels(usize),
    #[error("metric {name:?} is a {was}, not a {now}")]
    Kind {
        name: String,
        was: &'static str,
        now: &'static str,
    },
    #[error("by must be a finite number, and not negative (a counter only goes up)")]
    By,
    #[error("value must be a finite number (not NaN or infinite)")]
    Value,
    #[error("metric {name:?} would be exposed under a name that {other:?} already uses (a counter `x` is exposed as `x` and `x_total`, a histogram `h` as `h`, `h_bucket`, `h_sum` and `h_count`)")]
    Clash { name: String, other: String },
}

/// One script metric.
#[derive(Debug, Clone)]
enum Series {
    Counter(Family<Labels, Counter>),
    Histogram(Family<Labels, Histogram, fn() -> Histogram>),
}

impl Series {
    fn kind(&self) -> &'static str {
        match self {
            Series::Counter(_) => "counter",
            Series::Histogram(_) => "histogram",
        }
    }
}

/// The families, and the exposed names they take.
#[derive(Debug, Default)]
struct Names {
    /// By the script's name (a counter's without `_total`: `hits` and `hits_total`
    /// are one counter).
    families: HashMap<String, Series>,
    /// Every name the families' samples are exposed under (without the prefix), and
    /// whose they are: no two families may share one.
    taken: HashMap<String, String>,
}

/// The names a family called `key` is exposed under.
fn exposed_names(key: &str, histogram: bool) -> Vec<String> {
    let suffixes: &[&str] = if histogram {
        &["", "_bucket", "_sum", "_count"]
    } else {
        &["", "_total"]
    };
    suffixes.iter().map(|s| format!("{key}{s}")).collect()
}

/// Adds `n` to `counter`, stopping at `u64::MAX`: a counter never goes down, and
/// `Counter::inc_by` would wrap past the top (a `by` of 1e19 twice). A `by` over
/// `u64::MAX` already arrives as `u64::MAX` (`as` saturates).
fn add_saturating(counter: &Counter, n: u64) {
    // `fetch_update` retries on a race; the closure never refuses, so it cannot fail.
    let _ = counter
        .inner()
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_add(n))
        });
}

/// The built-in family among the script ones.
const DROPPED: &str = "metrics_dropped";

/// Every script metric of the process.
#[derive(Debug)]
pub struct ScriptMetrics {
    by_name: RwLock<Names>,
    /// Serialises creating a series, so the bound holds exactly.
    creating: Mutex<()>,
    series: AtomicUsize,
    max_series: usize,
    dropped: Counter,
}

impl ScriptMetrics {
    /// Holding at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        ScriptMetrics {
            by_name: RwLock::new(Names {
                families: HashMap::new(),
                taken: exposed_names(DROPPED, false)
                    .into_iter()
                    .map(|n| (n, DROPPED.to_owned()))
                    .collect(),
            }),
            creating: Mutex::new(()),
            series: AtomicUsize::new(0),
            max_series,
            dropped: Counter::default(),
        }
    }

    /// Series held right now.
    pub fn len(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls that were dropped because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Adds `by` to counter `name` with `labels`. `Ok(false)`: dropped (bound reached).
    pub fn inc(&self, name: &str, labels: Labels, by: f64) -> Result<bool, ScriptMetricError> {
        if !(by.is_finite() && by >= 0.0) {
            return Err(ScriptMetricError::By);
        }
        let family = match self.family(name, "counter", &labels)? {
            Some(Series::Counter(f)) => f,
            Some(other) => return Err(kind_error(name, &other, "counter")),
            None => return Ok(false),
        };
        // Counters count whole events; a fraction is rounded (Counter<u64> is lock-free
        // and prints as an integer, which is what dashboards expect of `_total`).
        Ok(self
            .series_of(&family, &labels)
            .map(|c| add_saturating(&c, by.round() as u64))
            .is_some())
    }

    /// Records `value` in histogram `name` with `labels`. `Ok(false)`: dropped.
    pub fn observe(
        &self,
        name: &str,
        value: f64,
        labels: Labels,
    ) -> Result<bool, ScriptMetricError> {
        if !value.is_finite() {
            return Err(ScriptMetricError::Value);
        }
        let family = match self.family(name, "histogram", &labels)? {
            Some(Series::Histogram(f)) => f,
            Some(other) => return Err(kind_error(name, &other, "histogram")),
            None => return Ok(false),
        };
        Ok(self
            .series_of(&family, &labels)
            .map(|h| h.observe(value))
            .is_some())
    }

    /// The family called `name`, made as `kind` on first use; `None` when it is new
    /// and the bound is reached (names count against it through their series).
    fn family(
        &self,
        name: &str,
        kind: &'static str,
        labels: &Labels,
    ) -> Result<Option<Series>, ScriptMetricError> {
        check_name(name)?;
        let is_histogram = kind == "histogram";
        check_labels(labels, is_histogram)?;
        let key = match is_histogram {
            true => name,
            false => name
                .strip_suffix("_total")
                .filter(|k| !k.is_empty())
                .unwrap_or(name),
        };
        if let Some(s) = self.by_name.read().families.get(key) {
            return Ok(Some(s.clone()));
        }
        let mut names = self.by_name.write();
        if let Some(s) = names.families.get(key) {
            return Ok(Some(s.clone()));
        }
        let exposed = exposed_names(key, is_histogram);
        if let Some(other) = exposed.iter().find_map(|n| names.taken.get(n)) {
            return Err(ScriptMetricError::Clash {
                name: name.to_owned(),
                other: other.clone(),
            });
        }
        if self.series.load(Ordering::Relaxed) >= self.max_series {
            self.dropped.inc();
            return Ok(None);
        }
        let series = match kind {
            "histogram" => Series::Histogram(Family::new_with_constructor(histogram)),
            _ => Series::Counter(Family::default()),
        };
        for n in exposed {
            names.taken.insert(n, key.to_owned());
        }
        names.families.insert(key.to_owned(), series.clone());
        Ok(Some(series))
    }

    /// The series of `family` with `labels`, made if the bound allows.
    fn series_of<M, C>(&self, family: &Family<Labels, M, C>, labels: &Labels) -> Option<M>
    where
        M: Clone,
        C: MetricConstructor<M>,
    {
        if let Some(m) = family.get(labels) {
            return Some(m.clone());
        }
        let _creating = self.creating.lock();
        if family.get(labels).is_none() {
            if self.series.load(Ordering::Relaxed) >= self.max_series {
                self.dropped.inc();
                return None;
            }
            self.series.fetch_add(1, Ordering::Relaxed);
        }
        Some(family.get_or_create_owned(labels))
    }
}

fn kind_error(name: &str, was: &Series, now: &'static str) -> ScriptMetricError {
    ScriptMetricError::Kind {
        name: name.to_owned(),
        was: was.kind(),
        now,
    }
}

/// Checks a metric name as a script gives it (without the prefix).
pub fn check_name(name: &str) -> Result<(), ScriptMetricError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ScriptMetricError::Name(name.to_owned()))
    }
}

fn check_labels(labels: &Labels, histogram: bool) -> Result<(), ScriptMetricError> {
    if labels.len() > MAX_LABELS {
        return Err(ScriptMetricError::TooManyLabels(labels.len()));
    }
    for (k, v) in labels {
        let reserved = k.starts_with("__") || (histogram && k == "le");
        let ok = !k.is_empty()
            && !reserved
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ScriptMetricError::LabelName(k.clone()));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(ScriptMetricError::LabelValue(k.clone()));
        }
    }
    Ok(())
}

/// The exposed name of a script metric (before the `_total` a counter gets; a
/// counter's key has none).
fn exposed_name(key: &str) -> String {
    format!("{PREFIX}{key}")
}

impl Collector for ScriptMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Keys never share an exposed name (see `family`): each family once.
        let families: BTreeMap<String, Series> = self
            .by_name
            .read()
            .families
            .iter()
            .map(|(key, s)| (exposed_name(key), s.clone()))
            .collect();
        for (name, series) in &families {
            match series {
                Series::Counter(f) => f.encode(encoder.encode_descriptor(
                    name,
                    "A counter from std.metrics.inc.",
                    None,
                    MetricType::Counter,
                )?)?,
                Series::Histogram(f) => f.encode(encoder.encode_descriptor(
                    name,
                    "A histogram from std.metrics.observe.",
                    None,
                    MetricType::Histogram,
                )?)?,
            }
        }
        ConstCounter::new(self.dropped.get()).encode(encoder.encode_descriptor(
            "proxycache_script_metrics_dropped",
            "std.metrics calls dropped because scripts reached the bound on distinct series.",
            None,
            MetricType::Counter,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_and_labels_are_checked() {
        let m = ScriptMetrics::new(10);
        assert!(m.inc("ok_name", labels(&[("route", "a")]), 1.0).is_ok());
        for bad in ["", "1abc", "has-dash", "has:colon", "x y", &"a".repeat(101)] {
            assert!(
                matches!(m.inc(bad, Vec::new(), 1.0), Err(ScriptMetricError::Name(_))),
                "{bad:?}"
            );
        }
        for bad in ["__x", "a-b", "9a", ""] {
            assert!(matches!(
                m.inc("x", labels(&[(bad, "v")]), 1.0),
                Err(ScriptMetricError::LabelName(_))
            ));
        }
        assert!(m.observe("h", 1.0, labels(&[("le", "1")])).is_err());
        assert!(m.inc("x", labels(&[("a", &"v".repeat(257))]), 1.0).is_err());
        assert!(m.inc("x", Vec::new(), f64::NAN).is_err());
        assert!(m.inc("x", Vec::new(), -1.0).is_err());
    }

    #[test]
    fn a_name_keeps_its_kind() {
        let m = ScriptMetrics::new(10);
        assert_eq!(m.inc("n", Vec::new(), 1.0), Ok(true));
        assert!(matches!(
            m.observe("n", 1.0, Vec::new()),
            Err(ScriptMetricError::Kind { .. })
        ));
    }

    /// Names that would share an exposed name: `hits` and `hits_total` are one
    /// counter (they were two families printed as one, whichever the map gave
    /// last); a histogram `dup_total` beside a counter `dup`, or a script counter
    /// `metrics_dropped`, is refused (both were printed, each family declared twice).
    #[test]
    fn no_two_families_share_an_exposed_name() {
        let m = ScriptMetrics::new(100);
        assert_eq!(m.inc("hits", Vec::new(), 1.0), Ok(true));
        assert_eq!(m.inc("hits_total", Vec::new(), 5.0), Ok(true));
        assert_eq!(m.inc("dup", Vec::new(), 1.0), Ok(true));
        assert!(matches!(
            m.observe("dup_total", 0.3, Vec::new()),
            Err(ScriptMetricError::Clash { .. })
        ));
        assert!(matches!(
            m.inc("metrics_dropped", Vec::new(), 1.0),
            Err(ScriptMetricError::Clash { .. })
        ));
        assert_eq!(m.observe("lat", 0.3, Vec::new()), Ok(true));
        for clash in ["lat_bucket", "lat_count_total", "lat_sum"] {
            assert!(
                matches!(
                    m.inc(clash, Vec::new(), 1.0),
                    Err(ScriptMetricError::Clash { .. })
                ),
                "{clash}"
            );
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(m));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("encode: {e}"));
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let unique: std::collections::BTreeSet<&str> = types.iter().copied().collect();
        assert_eq!(types.len(), unique.len(), "{text}");
        assert!(text.contains("proxycache_script_hits_total 6"), "{text}");
    }

    fn exposition(m: ScriptMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(m));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("encode: {e}"));
        text
    }

    /// `by.round() as u64` saturates at u64::MAX and `inc_by` wrapped past it: 1e19,
    /// 1e30 then 9.3e18 left 853255926290448384.
    #[test]
    fn a_counter_never_goes_down_it_stops_at_the_top() {
        let m = ScriptMetrics::new(10);
        let mut last = 0u64;
        for by in [1e19, 1e30, 9.3e18, 1.0, 0.0] {
            assert_eq!(m.inc("bigc", Vec::new(), by), Ok(true));
            let now = match m.by_name.read().families.get("bigc") {
                Some(Series::Counter(f)) => f.get(&Vec::new()).map(|c| c.get()),
                _ => None,
            };
            let now = now.unwrap_or_else(|| panic!("no counter bigc"));
            assert!(now >= last, "after by = {by}: {now} < {last}");
            last = now;
        }
        assert_eq!(last, u64::MAX);
        assert!(exposition(m).contains(&format!("proxycache_script_bigc_total {}", u64::MAX)));
    }

    #[test]
    fn observe_takes_negative_values_but_not_nan_or_infinity() {
        let m = ScriptMetrics::new(10);
        assert_eq!(m.observe("delta", -2.5, Vec::new()), Ok(true));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = m.observe("delta", bad, Vec::new());
            assert_eq!(e, Err(ScriptMetricError::Value));
            let message = ScriptMetricError::Value.to_string();
            assert!(!message.contains("negative"), "{message}");
        }
        assert!(exposition(m).contains("proxycache_script_delta_sum -2.5"));
    }

    #[test]
    fn series_past_the_bound_are_dropped_and_counted() {
        let m = ScriptMetrics::new(3);
        for i in 0..10 {
            let _ = m.inc("c", labels(&[("i", &i.to_string())]), 1.0);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.dropped(), 7);
        // Existing series keep counting.
        assert_eq!(m.inc("c", labels(&[("i", "0")]), 1.0), Ok(true));
        assert_eq!(m.observe("h", 1.0, Vec::new()), Ok(false));
    }
}

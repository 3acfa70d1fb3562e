//! A strict parser of the Prometheus text format (0.0.4) for the tests: `# HELP`,
//! `# TYPE` and sample lines, label values with escapes, histogram series checked
//! against their family (buckets cumulative, `+Inf` equal to `_count`). Panics on
//! anything malformed, naming the line.

use std::collections::{BTreeMap, BTreeSet};

/// One sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    /// Family name -> declared type.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Samples called `name` whose labels include every pair of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample called `name` with these labels (panics when absent or not one).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.find(name, labels).collect();
        assert_eq!(found.len(), 1, "samples {name} {labels:?}: {found:?}");
        found[0].value
    }

    /// The sum of samples called `name` with these labels (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: itself, or for `_bucket`/`_sum`/`_count` the
/// histogram it is part of.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses `{a="x",b="y\"z"}` (after the name); returns the labels and the rest.
fn parse_labels(s: &str, at: usize) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return (labels, s);
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("line {at}: label without ="));
        let key = &rest[..eq];
        assert!(valid_name(key), "line {at}: label name {key:?}");
        let mut chars = rest[eq + 1..].char_indices();
        assert_eq!(
            chars.next().map(|(_, c)| c),
            Some('"'),
            "line {at}: label value of {key} unquoted"
        );
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => panic!("line {at}: bad escape {other:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("line {at}: unterminated label value"),
            }
        };
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "line {at}: label {key} twice"
        );
        rest = &rest[eq + 1 + end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses an exposition; panics on anything malformed.
pub fn parse(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("line {at}: {line}"));
            assert!(valid_name(name), "line {at}: metric name {name:?}");
            match kind {
                Some("HELP") => {
                    assert!(tail.is_some_and(|t| !t.is_empty()), "line {at}: empty HELP");
                    assert!(
                        !tail.is_some_and(|t| t.ends_with("..")),
                        "line {at}: HELP ends with two periods (prometheus-client adds one)"
                    );
                    assert!(
                        helps.insert(name.to_owned()),
                        "line {at}: {name} helped twice"
                    );
                }
                Some("TYPE") => {
                    let ty = tail.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                        "line {at}: type {ty:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "line {at}: {name} typed twice"
                    );
                }
                _ => panic!("line {at}: unexpected comment {line:?}"),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("line {at}: no value: {line:?}"));
        let name = &line[..name_end];
        let (labels, rest) = parse_labels(&line[name_end..], at);
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("line {at}: no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {at}: value {v:?} is not a number")),
        };
        assert!(valid_name(name), "line {at}: metric name {name:?}");
        let family = family_of(name, &types);
        assert!(
            types.contains_key(family),
            "line {at}: sample {name} before its # TYPE"
        );
        assert!(
            helps.contains(family),
            "line {at}: sample {name} has no # HELP"
        );
        if types[family] == "counter" {
            assert!(
                name.ends_with("_total"),
                "line {at}: counter {name} without _total"
            );
            assert!(value >= 0.0, "line {at}: negative counter");
        }
        if name.ends_with("_bucket") && family != name {
            assert!(labels.contains_key("le"), "line {at}: bucket without le");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    let exposition = Exposition { types, samples };
    check_histograms(&exposition);
    exposition
}

/// A series' labels without `le`, sorted.
type LabelKey = Vec<(String, String)>;

/// Buckets are cumulative and the `+Inf` bucket equals `_count`, per label set.
fn check_histograms(e: &Exposition) {
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<LabelKey, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.samples.iter().filter(|s| s.name == bucket) {
            let mut key: LabelKey = s
                .labels
                .clone()
                .into_iter()
                .filter(|(k, _)| k != "le")
                .collect();
            key.sort();
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("{family}: le {v:?}")),
            };
            series.entry(key).or_default().push((le, s.value));
        }
        for (key, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {key:?}: buckets not cumulative: {buckets:?}"
            );
            let inf = buckets.last().map(|b| b.1);
            let count = e
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count")
                        && key.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                        && s.labels.len() == key.len()
                })
                .map(|s| s.value);
            assert_eq!(inf, count, "{family} {key:?}: +Inf bucket vs _count");
        }
    }
}

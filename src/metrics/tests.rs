use std::time::Duration;

use http::StatusCode;

use super::*;

fn config() -> Config {
    let text = r#"
[upstreams.app]
servers = ["builtin:echo"]

[upstreams.other]
servers = ["builtin:echo"]

[[routes]]
path_prefix = "/api/"
upstream = "app"

[[routes]]
upstream = "other"
"#;
    match Config::from_toml_str(text, None, std::path::Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("config: {e:?}"),
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn requests_are_counted_by_route_upstream_and_class() {
    let m = Metrics::default();
    let g = m.generation_meters(&config());
    let ms = Duration::from_millis(3);
    g.record(&m, Some(0), Some(0), StatusCode::OK, ms);
    g.record(&m, Some(0), Some(0), StatusCode::OK, ms);
    g.record(&m, Some(0), Some(1), StatusCode::BAD_GATEWAY, ms);
    g.record(&m, None, None, StatusCode::NOT_FOUND, ms);
    let text = m.prometheus().unwrap_or_default();
    let count = |labels: &str| {
        sample(
            &text,
            &format!("proxycache_route_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        count(r#"route="0",upstream="app",class="2xx""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(r#"route="0",upstream="other",class="5xx""#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"route="none",upstream="none",class="4xx""#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"proxycache_request_duration_seconds_count{upstream="app"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"proxycache_request_duration_seconds_bucket{le="0.005",upstream="other"}"#
        )
        .or_else(|| sample(
            &text,
            r#"proxycache_request_duration_seconds_bucket{upstream="other",le="0.005"}"#
        )),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn cache_and_reload_counters_show() {
    let m = Metrics::default();
    let cache = m.cache_counts();
    cache.hits.inc();
    cache.hits.inc();
    cache.misses.inc();
    cache.stores.inc();
    m.reloaded(true);
    m.reloaded(false);
    m.reloaded(false);
    let text = m.prometheus().unwrap_or_default();
    assert_eq!(sample(&text, "proxycache_cache_hits_total"), Some(2.0));
    assert_eq!(sample(&text, "proxycache_cache_misses_total"), Some(1.0));
    assert_eq!(sample(&text, "proxycache_cache_stores_total"), Some(1.0));
    assert_eq!(
        sample(&text, r#"proxycache_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"proxycache_reloads_total{result="failed"}"#),
        Some(2.0)
    );
    assert!(text.contains("# TYPE proxycache_cache_hits_total counter"));
}

//! Human-readable sizes (`"64KiB"`) and durations (`"250ms"`, `"1m30s"`).
//!
//! Pure string parsing; TOML integers (bare bytes / seconds) are handled by the caller.

use std::time::Duration;

/// Size units, longest spelling first so `KiB` is not read as `K` + `iB`.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("b", 1),
];

/// Duration units in milliseconds, `ms` before `m`.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a size: a bare number of bytes (`"512"`) or a number and a unit: `B`, `KB`,
/// `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024). Units are
/// case-insensitive and may be separated from the number by spaces.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size {text:?}: expected a number of bytes or a number followed by \
             B, KB, MB, GB, KiB, MiB or GiB (e.g. \"64KiB\")"
        )
    };
    let (number, rest) = split_number(text.trim()).ok_or_else(invalid)?;
    let unit = rest.trim_start().to_ascii_lowercase();
    let factor = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(invalid)?
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a duration: a bare number of seconds (`"30"`) or one or more number-unit pairs
/// with units `ms`, `s`, `m`, `h`, `d` (`"250ms"`, `"5s"`, `"1m30s"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: expected a number of seconds or a number followed \
             by ms, s, m, h or d (e.g. \"250ms\", \"5s\", \"1m30s\")"
        )
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut rest = trimmed;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest).ok_or_else(invalid)?;
        let after = after.trim_start();
        let (unit, factor) = DURATION_UNITS
            .iter()
            .find(|(name, _)| starts_with_unit(after, name))
            .ok_or_else(invalid)?;
        total_ms = number
            .checked_mul(*factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        rest = after[unit.len()..].trim_start();
    }
    Ok(Duration::from_millis(total_ms))
}

/// Splits leading ASCII digits off `text`; `None` when there are none or they overflow.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..end].parse().ok()?;
    Some((number, &text[end..]))
}

/// True when `text` starts with `unit` (case-insensitively) and the unit is not merely
/// the prefix of a longer word (`m` must not match `ms` or `min`).
fn starts_with_unit(text: &str, unit: &str) -> bool {
    let Some(head) = text.get(..unit.len()) else {
        return false;
    };
    let next = text[unit.len()..].chars().next();
    head.eq_ignore_ascii_case(unit) && !next.is_some_and(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size("2KB").unwrap(), 2_000);
        assert_eq!(parse_size("3MB").unwrap(), 3_000_000);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 64 * 1024);
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size(" 16 mib ").unwrap(), 16 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "",
            "KiB",
            "64k",
            "64 KiBs",
            "1.5MiB",
            "-1",
            "12XB",
            "99999999999GiB",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} should be rejected");
        }
        assert!(parse_size("64x").unwrap_err().contains("\"64x\""));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7_200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1s 500ms").unwrap(),
            Duration::from_millis(1_500)
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations() {
        for text in ["", "s", "5x", "5 min", "1.5s", "-1s", "5s5", "ms5"] {
            assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
        }
        assert!(parse_duration("99999999999999999d").is_err());
    }
}

//! Values shared by every section: addresses, sizes, durations, counts, choices, paths.

use super::*;

/// Whether listeners on `a` and `b` cannot both be bound: the same port (not 0) on the
/// same IP, or with one of them the wildcard of its family (`0.0.0.0` takes every
/// IPv4 address; `[::]` every address, IPv4 too, as Linux binds it by default).
pub(super) fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

impl Checker<'_> {
    /// A listening address; also checks no other listener already uses it.
    pub(super) fn listen_addr(&mut self, key: &str, text: &file::Text) -> Option<SocketAddr> {
        let Ok(addr) = text.get_ref().parse::<SocketAddr>() else {
            let message = format!(
                "invalid address {:?}: expected IP:port, e.g. \"127.0.0.1:8080\"",
                text.get_ref()
            );
            self.error(key, text.span(), message);
            return None;
        };
        let clash = self
            .listeners
            .iter()
            .find(|(seen, _)| listeners_clash(*seen, addr));
        if let Some((_, other)) = clash {
            let message = format!("address {addr} is also used by {other}");
            self.error(key, text.span(), message);
        }
        self.listeners.push((addr, key.to_owned()));
        Some(addr)
    }

    pub(super) fn size(
        &mut self,
        key: &str,
        value: &Option<Spanned<SizeValue>>,
        default: u64,
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let parsed = match &value.get_ref().0 {
            Quantity::Int(n) => {
                u64::try_from(*n).map_err(|_| format!("size must not be negative, got {n}"))
            }
            Quantity::Text(text) => parse_size(text),
        };
        parsed
            .map_err(|message| self.error(key, value.span(), message))
            .unwrap_or(default)
    }

    /// A size that must fit in memory and be at least one byte.
    pub(super) fn size_usize(
        &mut self,
        key: &str,
        value: &Option<Spanned<SizeValue>>,
        default: usize,
    ) -> usize {
        let bytes = self.size(key, value, default as u64);
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(bytes) {
            Ok(0) => self.error(key, value.span(), "must be at least 1 byte"),
            Ok(bytes) => return bytes,
            Err(_) => self.error(key, value.span(), "is too large for this machine"),
        }
        default
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let parsed = match &value.get_ref().0 {
            Quantity::Int(n) => u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| format!("duration must not be negative, got {n}")),
            Quantity::Text(text) => parse_duration(text),
        };
        let parsed = parsed.and_then(|duration| {
            if duration > bounds::MAX_DURATION {
                Err(format!(
                    "duration must be at most {} (one year), got {}",
                    bounds::MAX_DURATION_TEXT,
                    describe(&value.get_ref().0)
                ))
            } else {
                Ok(duration)
            }
        });
        parsed
            .map_err(|message| self.error(key, value.span(), message))
            .unwrap_or(default)
    }

    pub(super) fn nonzero_duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let duration = self.duration(key, value, default);
        match value {
            Some(value) if duration.is_zero() => {
                self.error(key, value.span(), "must be longer than zero");
                default
            }
            _ => duration,
        }
    }

    /// An integer of at least `min` that fits in `T`.
    pub(super) fn count<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &str,
        value: &Option<file::Int>,
        default: T,
        min: i64,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        if number < min {
            self.error(
                key,
                value.span(),
                format!("must be at least {min}, got {number}"),
            );
            return default;
        }
        T::try_from(number)
            .map_err(|_| self.error(key, value.span(), format!("{number} is too large")))
            .unwrap_or(default)
    }

    /// An integer in `min..=max` that fits in `T`.
    pub(super) fn count_in<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &str,
        value: &Option<file::Int>,
        default: T,
        min: i64,
        max: i64,
    ) -> T {
        if let Some(value) = value {
            let number = *value.get_ref();
            if number > max {
                self.error(
                    key,
                    value.span(),
                    format!("must be at most {max}, got {number}"),
                );
                return default;
            }
        }
        self.count(key, value, default, min)
    }

    /// One of a closed set of words; the error lists them.
    pub(super) fn one_of<T: Copy>(
        &mut self,
        key: &str,
        text: &file::Text,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == text.get_ref())
            .map(|(_, value)| *value);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            let message = format!(
                "unknown value {:?}, expected one of {}",
                text.get_ref(),
                names.join(", ")
            );
            self.error(key, text.span(), message);
        }
        found
    }

    /// A path that must be given and non-empty, resolved against the base directory.
    pub(super) fn required_path(
        &mut self,
        key: &str,
        text: Option<&file::Text>,
        table: Range<usize>,
    ) -> Option<PathBuf> {
        match text {
            Some(text) if !text.get_ref().is_empty() => Some(self.resolve(text.get_ref())),
            Some(text) => {
                self.error(key, text.span(), "path must not be empty");
                None
            }
            None => {
                let name = key.rsplit('.').next().unwrap_or(key);
                self.error(key, table, format!("missing `{name}`"));
                None
            }
        }
    }

    /// A path where `""` means none.
    pub(super) fn optional_path(&self, text: Option<&file::Text>) -> Option<PathBuf> {
        text.filter(|text| !text.get_ref().is_empty())
            .map(|text| self.resolve(text.get_ref()))
    }

    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A duration as written: `"400d"`, or seconds for a bare integer.
fn describe(quantity: &Quantity) -> String {
    match quantity {
        Quantity::Int(n) => format!("{n} seconds"),
        Quantity::Text(text) => format!("{text:?}"),
    }
}

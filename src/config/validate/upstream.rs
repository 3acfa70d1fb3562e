//! `[upstreams.NAME]`: servers, balancing, timeouts, pool, health, breaker, TLS keys.

use super::*;

impl Checker<'_> {
    pub(super) fn upstreams(
        &mut self,
        files: &BTreeMap<file::Text, Spanned<file::UpstreamFile>>,
    ) -> Vec<UpstreamConfig> {
        files
            .iter()
            .map(|(name, file)| self.upstream(name, file))
            .collect()
    }

    pub(super) fn upstream(
        &mut self,
        name: &file::Text,
        file: &Spanned<file::UpstreamFile>,
    ) -> UpstreamConfig {
        let key = format!("upstreams.{}", key_segment(name.get_ref()));
        let up = file.get_ref();
        let balance = up
            .balance
            .as_ref()
            .and_then(|text| self.one_of(&format!("{key}.balance"), text, BALANCES));
        let hash_key = up
            .hash_key
            .as_ref()
            .and_then(|text| self.hash_key(&format!("{key}.hash_key"), text));
        let tls = up
            .tls
            .as_ref()
            .map_or(DEFAULT_UPSTREAM_TLS, |t| *t.get_ref());
        let tls_ca = self.optional_path(up.tls_ca.as_ref());
        let sni = up
            .sni
            .as_ref()
            .map(|s| s.get_ref().clone())
            .filter(|s| !s.is_empty());
        // A malformed `tls` was reported already: whether the set meant TLS is unknown.
        if !tls && !self.was_pruned(&format!("{key}.tls")) {
            self.needs_tls(
                &key,
                "tls_ca",
                up.tls_ca.as_ref().filter(|_| tls_ca.is_some()),
            );
            self.needs_tls(&key, "sni", up.sni.as_ref().filter(|_| sni.is_some()));
        }
        let at = UpstreamAt {
            key: key.clone(),
            table: file.span(),
            tls: up.tls.as_ref().map(|t| t.span()),
            tls_ca: up.tls_ca.as_ref().map(|t| t.span()),
            sni: up.sni.as_ref().map(|t| t.span()),
            servers: up.servers.as_ref().map(|s| s.span()),
        };
        UpstreamConfig {
            name: name.get_ref().clone(),
            servers: self.servers(&key, file),
            balance: balance.unwrap_or(DEFAULT_BALANCE),
            hash_key: hash_key.unwrap_or(HashKey::ClientIp),
            // Zero would fail every request at once (504, counted against the breaker).
            connect_timeout: self.nonzero_duration(
                &format!("{key}.connect_timeout"),
                &up.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            response_timeout: self.nonzero_duration(
                &format!("{key}.response_timeout"),
                &up.response_timeout,
                DEFAULT_RESPONSE_TIMEOUT,
            ),
            tls,
            tls_ca,
            sni,
            http2: up.http2.unwrap_or(DEFAULT_UPSTREAM_HTTP2),
            pool: PoolConfig {
                max_idle_per_server: self.count(
                    &format!("{key}.pool.max_idle_per_server"),
                    &up.pool.max_idle_per_server,
                    DEFAULT_POOL_MAX_IDLE,
                    0,
                ),
                idle_timeout: self.duration(
                    &format!("{key}.pool.idle_timeout"),
                    &up.pool.idle_timeout,
                    DEFAULT_POOL_IDLE_TIMEOUT,
                ),
            },
            health: up
                .health
                .as_ref()
                .map(|health| self.health(&format!("{key}.health"), health)),
            circuit_breaker: BreakerConfig {
                failures: self.count(
                    &format!("{key}.circuit_breaker.failures"),
                    &up.circuit_breaker.failures,
                    DEFAULT_BREAKER_FAILURES,
                    1,
                ),
                open_for: self.duration(
                    &format!("{key}.circuit_breaker.open_for"),
                    &up.circuit_breaker.open_for,
                    DEFAULT_BREAKER_OPEN_FOR,
                ),
                statuses: self.failure_statuses(
                    &format!("{key}.circuit_breaker.statuses"),
                    &up.circuit_breaker.statuses,
                ),
            },
            at,
        }
    }

    /// A TLS key (`tls_ca`, `sni`) given to a set without `tls = true`: an error, not
    /// ignored, since the set would then send plain HTTP to a server its writer meant
    /// to reach over verified TLS.
    fn needs_tls(&mut self, key: &str, name: &str, value: Option<&file::Text>) {
        if let Some(value) = value {
            self.error(
                &format!("{key}.{name}"),
                value.span(),
                format!(
                    "{name} has no effect without tls = true (the set would send plain HTTP); \
                     set tls = true, or remove {name}"
                ),
            );
        }
    }

    /// `circuit_breaker.statuses`: error statuses (400 to 599), each once.
    fn failure_statuses(
        &mut self,
        key: &str,
        value: &Option<Spanned<Vec<file::Int>>>,
    ) -> Vec<http::StatusCode> {
        let Some(list) = value else {
            return Vec::new();
        };
        let mut statuses = Vec::with_capacity(list.get_ref().len());
        for (i, item) in list.get_ref().iter().enumerate() {
            let code = *item.get_ref();
            let status = u16::try_from(code)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .and_then(|c| http::StatusCode::from_u16(c).ok());
            match status {
                Some(s) if statuses.contains(&s) => self.error(
                    &format!("{key}[{i}]"),
                    item.span(),
                    format!("{code} is listed twice"),
                ),
                Some(s) => statuses.push(s),
                None => self.error(
                    &format!("{key}[{i}]"),
                    item.span(),
                    format!("must be an error status from 400 to 599, got {code}"),
                ),
            }
        }
        statuses
    }

    pub(super) fn servers(
        &mut self,
        key: &str,
        file: &Spanned<file::UpstreamFile>,
    ) -> Vec<ServerSpec> {
        let key = format!("{key}.servers");
        let Some(servers) = &file.get_ref().servers else {
            self.error(
                &key,
                file.span(),
                "an upstream needs `servers`, e.g. servers = [\"127.0.0.1:3000\"]",
            );
            return Vec::new();
        };
        if servers.get_ref().is_empty() {
            self.error(
                &key,
                servers.span(),
                "an upstream needs at least one server",
            );
        }
        let mut specs = Vec::new();
        for (i, entry) in servers.get_ref().iter().enumerate() {
            specs.extend(self.server_entry(&format!("{key}[{i}]"), entry));
        }
        specs
    }

    pub(super) fn server_entry(
        &mut self,
        key: &str,
        entry: &Spanned<file::ServerEntry>,
    ) -> Option<ServerSpec> {
        let (addr, addr_key, span, weight) = match entry.get_ref() {
            file::ServerEntry::Addr(addr) => {
                (addr.as_str(), key.to_owned(), entry.span(), DEFAULT_WEIGHT)
            }
            file::ServerEntry::Table(table) => {
                let weight = self.count_in(
                    &format!("{key}.weight"),
                    &table.weight,
                    DEFAULT_WEIGHT,
                    1,
                    i64::from(bounds::MAX_WEIGHT),
                );
                let Some(addr) = &table.addr else {
                    self.error(
                        &format!("{key}.addr"),
                        entry.span(),
                        "a server table needs `addr`",
                    );
                    return None;
                };
                (
                    addr.get_ref().as_str(),
                    format!("{key}.addr"),
                    addr.span(),
                    weight,
                )
            }
        };
        match server_target(addr) {
            Ok(target) => Some(ServerSpec { target, weight }),
            Err(message) => {
                self.error(&addr_key, span, message);
                None
            }
        }
    }

    pub(super) fn hash_key(&mut self, key: &str, text: &file::Text) -> Option<HashKey> {
        let value = text.get_ref().as_str();
        let parsed = match value {
            "client_ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => match value.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(HashKey::Header)
                    .map_err(|_| format!("invalid header name {name:?} in hash_key")),
                None => Err(format!(
                    "unknown hash_key {value:?}, expected client_ip, path or header:NAME"
                )),
            },
        };
        parsed
            .map_err(|message| self.error(key, text.span(), message))
            .ok()
    }

    pub(super) fn health(&mut self, key: &str, file: &file::HealthFile) -> HealthConfig {
        let kind = match &file.kind {
            None => None,
            Some(text) => match text.get_ref().as_str() {
                "http" => Some(HealthKind::Http),
                "tcp" => Some(HealthKind::Tcp),
                other => {
                    self.error(
                        &format!("{key}.type"),
                        text.span(),
                        format!("health type must be \"http\" or \"tcp\", not {other:?}"),
                    );
                    None
                }
            },
        };
        if let (Some(HealthKind::Tcp), Some(path)) = (kind, &file.path) {
            self.error(
                &format!("{key}.path"),
                path.span(),
                "a path is for HTTP checks; a \"tcp\" check only connects".to_owned(),
            );
        }
        let path = match &file.path {
            Some(text) if !text.get_ref().starts_with('/') => {
                self.error(
                    &format!("{key}.path"),
                    text.span(),
                    format!("health path {:?} must start with '/'", text.get_ref()),
                );
                DEFAULT_HEALTH_PATH.to_owned()
            }
            Some(text) => text.get_ref().clone(),
            None => DEFAULT_HEALTH_PATH.to_owned(),
        };
        HealthConfig {
            // A path asks for HTTP checks; without `type` or a path, the set's use
            // decides (see `Validator::config`).
            kind: kind.unwrap_or(HealthKind::Http),
            kind_given: kind.is_some() || file.path.is_some(),
            path,
            interval: self.nonzero_duration(
                &format!("{key}.interval"),
                &file.interval,
                DEFAULT_HEALTH_INTERVAL,
            ),
            timeout: self.nonzero_duration(
                &format!("{key}.timeout"),
                &file.timeout,
                DEFAULT_HEALTH_TIMEOUT,
            ),
            healthy_after: self.count(
                &format!("{key}.healthy_after"),
                &file.healthy_after,
                DEFAULT_HEALTHY_AFTER,
                1,
            ),
            unhealthy_after: self.count(
                &format!("{key}.unhealthy_after"),
                &file.unhealthy_after,
                DEFAULT_UNHEALTHY_AFTER,
                1,
            ),
        }
    }
}

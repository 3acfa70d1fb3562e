//! `[server]` (listeners, TLS listeners, trusted proxies), `[admin]`, `[log]` and `[scripts]`.

use super::*;

impl Checker<'_> {
    pub(super) fn server(&mut self, file: &file::ServerFile, has_tcp: bool) -> ServerConfig {
        let listen = self.listen_list(file.listen.as_ref());
        let tls: Vec<_> = file
            .tls
            .iter()
            .enumerate()
            .map(|(i, t)| self.tls_listener(i, t))
            .collect();
        if let Some(spanned) = &file.listen {
            if spanned.get_ref().is_empty() && tls.is_empty() && !has_tcp {
                let message = "nothing to serve: server.listen is empty and there are no [[server.tls]] or [[tcp]] listeners";
                self.error("server.listen", spanned.span(), message);
            }
        }
        let limits = &file.limits;
        let timeouts = &file.timeouts;
        ServerConfig {
            listen,
            workers: self.workers(&file.workers),
            trusted_proxies: self.trusted_proxies(&file.trusted_proxies),
            merge_slashes: file.merge_slashes.unwrap_or(DEFAULT_MERGE_SLASHES),
            escaped_slashes: file
                .escaped_slashes
                .as_ref()
                .and_then(|text| self.one_of("server.escaped_slashes", text, ESCAPED_SLASHES))
                .unwrap_or(DEFAULT_ESCAPED_SLASHES),
            limits: Limits {
                max_header_bytes: self.size_usize(
                    "server.limits.max_header_bytes",
                    &limits.max_header_bytes,
                    DEFAULT_MAX_HEADER_BYTES,
                ),
                max_body: self.size("server.limits.max_body", &limits.max_body, DEFAULT_MAX_BODY),
                max_connections: self.count(
                    "server.limits.max_connections",
                    &limits.max_connections,
                    DEFAULT_MAX_CONNECTIONS,
                    1,
                ),
            },
            timeouts: Timeouts {
                // Zero would cut every connection at once (and every response the
                // first time a write waits).
                header: self.nonzero_duration(
                    "server.timeouts.header",
                    &timeouts.header,
                    DEFAULT_HEADER_TIMEOUT,
                ),
                idle: self.nonzero_duration(
                    "server.timeouts.idle",
                    &timeouts.idle,
                    DEFAULT_IDLE_TIMEOUT,
                ),
                shutdown_drain: self.duration(
                    "server.timeouts.shutdown_drain",
                    &timeouts.shutdown_drain,
                    DEFAULT_SHUTDOWN_DRAIN,
                ),
            },
            tls,
        }
    }

    pub(super) fn listen_list(
        &mut self,
        listen: Option<&Spanned<Vec<file::Text>>>,
    ) -> Vec<SocketAddr> {
        let Some(listen) = listen else {
            if !self.was_pruned("server.listen") {
                self.listeners
                    .push((DEFAULT_LISTEN, "server.listen".to_owned()));
            }
            return vec![DEFAULT_LISTEN];
        };
        let mut addrs = Vec::new();
        for (i, text) in listen.get_ref().iter().enumerate() {
            addrs.extend(self.listen_addr(&format!("server.listen[{i}]"), text));
        }
        addrs
    }

    pub(super) fn workers(&mut self, workers: &Option<file::Int>) -> usize {
        let workers = self.count_in(
            "server.workers",
            workers,
            DEFAULT_WORKERS,
            0,
            bounds::MAX_WORKERS as i64,
        );
        if workers > 0 {
            return workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub(super) fn trusted_proxies(&mut self, cidrs: &[file::Text]) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in cidrs.iter().enumerate() {
            match parse_cidr(text.get_ref()) {
                Ok(net) => nets.push(net),
                Err(message) => self.error(
                    &format!("server.trusted_proxies[{i}]"),
                    text.span(),
                    message,
                ),
            }
        }
        nets
    }

    pub(super) fn tls_listener(
        &mut self,
        index: usize,
        tls: &Spanned<file::TlsFile>,
    ) -> TlsListenerConfig {
        let key = format!("server.tls[{index}]");
        let file = tls.get_ref();
        let listen = match &file.listen {
            Some(text) => self.listen_addr(&format!("{key}.listen"), text),
            None => {
                self.error(
                    &format!("{key}.listen"),
                    tls.span(),
                    "a TLS listener needs `listen`",
                );
                None
            }
        };
        TlsListenerConfig {
            listen: listen.unwrap_or(DEFAULT_LISTEN),
            certs: self.certs(&key, tls),
            alpn: self.alpn(&key, file.alpn.as_deref()),
            client_ca: self.optional_path(file.client_ca.as_ref()),
            at: tls.span(),
            client_ca_at: file.client_ca.as_ref().map(|t| t.span()),
        }
    }

    pub(super) fn certs(&mut self, key: &str, tls: &Spanned<file::TlsFile>) -> Vec<CertPair> {
        let key = format!("{key}.certs");
        let Some(certs) = &tls.get_ref().certs else {
            self.error(
                &key,
                tls.span(),
                "a TLS listener needs `certs = [{ cert = \"...\", key = \"...\" }]`",
            );
            return Vec::new();
        };
        if certs.get_ref().is_empty() {
            self.error(
                &key,
                certs.span(),
                "a TLS listener needs at least one certificate",
            );
        }
        let mut pairs = Vec::new();
        for (i, pair) in certs.get_ref().iter().enumerate() {
            let cert = self.required_path(
                &format!("{key}[{i}].cert"),
                pair.get_ref().cert.as_ref(),
                pair.span(),
            );
            let private = self.required_path(
                &format!("{key}[{i}].key"),
                pair.get_ref().key.as_ref(),
                pair.span(),
            );
            if let (Some(cert), Some(key)) = (cert, private) {
                let file = pair.get_ref();
                let at = |t: Option<&file::Text>| t.map_or_else(|| pair.span(), |t| t.span());
                pairs.push(CertPair {
                    cert,
                    key,
                    cert_at: at(file.cert.as_ref()),
                    key_at: at(file.key.as_ref()),
                });
            }
        }
        pairs
    }

    pub(super) fn alpn(&mut self, key: &str, alpn: Option<&[file::Text]>) -> Vec<String> {
        let Some(alpn) = alpn else {
            return DEFAULT_ALPN.iter().map(|p| (*p).to_owned()).collect();
        };
        let mut protocols = Vec::new();
        for (i, text) in alpn.iter().enumerate() {
            if ALPN_PROTOCOLS.contains(&text.get_ref().as_str()) {
                protocols.push(text.get_ref().clone());
            } else {
                let message = format!(
                    "unsupported ALPN protocol {:?}, expected one of {}",
                    text.get_ref(),
                    ALPN_PROTOCOLS.join(", ")
                );
                self.error(&format!("{key}.alpn[{i}]"), text.span(), message);
            }
        }
        protocols
    }

    // ---- [admin] [log] [scripts] ----------------------------------------------------

    pub(super) fn admin(&mut self, file: &file::AdminFile) -> AdminConfig {
        let api_key = match &file.api_key {
            // A header value is read without its outer spaces: a key with them could
            // never match, and every admin call would be 401.
            Some(key) if key.get_ref().trim() != key.get_ref() => {
                let message = "must not start or end with spaces (an Authorization header is read without them, so no call could match it)";
                self.error("admin.api_key", key.span(), message);
                key.get_ref().trim().to_owned()
            }
            Some(key) => key.get_ref().clone(),
            None => String::new(),
        };
        let listen = match &file.listen {
            None => Some(DEFAULT_ADMIN_LISTEN),
            Some(text) if text.get_ref().is_empty() => None,
            Some(text) => self.listen_addr("admin.listen", text),
        };
        if let (Some(addr), Some(text)) = (listen, &file.listen) {
            if !addr.ip().is_loopback() && api_key.is_empty() {
                let message = "an admin listener on a non-loopback address needs admin.api_key";
                self.error("admin.listen", text.span(), message);
            }
        }
        AdminConfig { listen, api_key }
    }

    pub(super) fn log(&mut self, file: &file::LogFile) -> LogConfig {
        let level = match &file.level {
            Some(text) => match check_log_level(text.get_ref()) {
                Ok(directives) => directives,
                Err(message) => {
                    self.error("log.level", text.span(), message);
                    DEFAULT_LOG_LEVEL.to_owned()
                }
            },
            None => DEFAULT_LOG_LEVEL.to_owned(),
        };
        let format = file
            .format
            .as_ref()
            .and_then(|text| self.one_of("log.format", text, LOG_FORMATS));
        LogConfig {
            level,
            format: format.unwrap_or(DEFAULT_LOG_FORMAT),
            access: file.access.unwrap_or(DEFAULT_ACCESS_LOG),
        }
    }

    pub(super) fn scripts(&mut self, file: &file::ScriptsFile) -> ScriptsConfig {
        let dir = match &file.dir {
            Some(text) => self.required_path("scripts.dir", Some(text), text.span()),
            None => None,
        };
        ScriptsConfig {
            dir: dir.unwrap_or_else(|| self.base_dir.join(DEFAULT_SCRIPTS_DIR)),
            watch: file.watch.unwrap_or(DEFAULT_SCRIPTS_WATCH),
            lua_memory_limit: self.size_usize(
                "scripts.lua_memory_limit",
                &file.lua_memory_limit,
                DEFAULT_LUA_MEMORY_LIMIT,
            ),
            lua_instruction_budget: self.count(
                "scripts.lua_instruction_budget",
                &file.lua_instruction_budget,
                DEFAULT_LUA_INSTRUCTION_BUDGET,
                1,
            ),
        }
    }
}

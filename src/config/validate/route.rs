//! `[[routes]]` and `[[tcp]]`: matchers and the upstreams they name.

use super::*;

impl Checker<'_> {
    pub(super) fn routes(
        &mut self,
        files: &[Spanned<file::RouteFile>],
        names: &[&str],
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        for (i, file) in files.iter().enumerate() {
            routes.extend(self.route(&format!("routes[{i}]"), file, names));
        }
        routes
    }

    pub(super) fn route(
        &mut self,
        key: &str,
        file: &Spanned<file::RouteFile>,
        names: &[&str],
    ) -> Option<RouteConfig> {
        let route = file.get_ref();
        let host = route
            .host
            .as_ref()
            .and_then(|text| self.route_host(&format!("{key}.host"), text));
        let path_prefix = route.path_prefix.as_ref().and_then(|text| {
            if text.get_ref().starts_with('/') {
                return Some(text.get_ref().clone());
            }
            self.error(
                &format!("{key}.path_prefix"),
                text.span(),
                format!("path_prefix {:?} must start with '/'", text.get_ref()),
            );
            None
        });
        let methods = self.methods(key, &route.methods);
        let headers = self.match_headers(key, &route.headers);
        let upstream = self.upstream_ref(key, route.upstream.as_ref(), file.span(), names)?;
        Some(RouteConfig {
            host,
            path_prefix,
            methods,
            headers,
            upstream,
        })
    }

    pub(super) fn route_host(&mut self, key: &str, text: &file::Text) -> Option<String> {
        let host = normalize_host(text.get_ref());
        if host.is_empty() {
            self.error(
                key,
                text.span(),
                "host must not be empty (leave it out to match any host)",
            );
            return None;
        }
        Some(host)
    }

    pub(super) fn methods(&mut self, key: &str, methods: &[file::Text]) -> Vec<Method> {
        let mut parsed = Vec::new();
        for (i, text) in methods.iter().enumerate() {
            match Method::from_bytes(text.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => parsed.push(method),
                Err(_) => self.error(
                    &format!("{key}.methods[{i}]"),
                    text.span(),
                    format!("invalid HTTP method {:?}", text.get_ref()),
                ),
            }
        }
        parsed
    }

    pub(super) fn match_headers(
        &mut self,
        key: &str,
        headers: &BTreeMap<file::Text, file::Text>,
    ) -> Vec<(HeaderName, String)> {
        let mut parsed = Vec::new();
        for (name, value) in headers {
            let entry_key = format!("{key}.headers.{}", key_segment(name.get_ref()));
            let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                self.error(
                    &entry_key,
                    name.span(),
                    format!("invalid header name {:?}", name.get_ref()),
                );
                continue;
            };
            if HeaderValue::from_str(value.get_ref()).is_err() {
                self.error(
                    &entry_key,
                    value.span(),
                    format!("invalid header value {:?}", value.get_ref()),
                );
                continue;
            }
            parsed.push((header, value.get_ref().clone()));
        }
        parsed
    }

    /// Resolves `upstream = "NAME"` of a route or tcp frontend to an index.
    pub(super) fn upstream_ref(
        &mut self,
        key: &str,
        name: Option<&file::Text>,
        table: Range<usize>,
        names: &[&str],
    ) -> Option<usize> {
        let key = format!("{key}.upstream");
        let Some(name) = name else {
            self.error(&key, table, "missing `upstream = \"NAME\"`");
            return None;
        };
        let found = names.iter().position(|known| *known == name.get_ref());
        let malformed = format!("upstreams.{}", key_segment(name.get_ref()));
        if found.is_none() && !self.was_pruned(&malformed) {
            let known = if names.is_empty() {
                "none are defined".to_owned()
            } else {
                format!("known: {}", names.join(", "))
            };
            self.error(
                &key,
                name.span(),
                format!("unknown upstream {:?} ({known})", name.get_ref()),
            );
        }
        found
    }

    /// `sets`: the upstream sets, indexed like `names`.
    pub(super) fn tcp(
        &mut self,
        files: &[Spanned<file::TcpFile>],
        names: &[&str],
        sets: &[UpstreamConfig],
    ) -> Vec<TcpConfig> {
        let mut frontends = Vec::new();
        for (i, file) in files.iter().enumerate() {
            frontends.extend(self.tcp_frontend(&format!("tcp[{i}]"), file, names, sets));
        }
        frontends
    }

    pub(super) fn tcp_frontend(
        &mut self,
        key: &str,
        file: &Spanned<file::TcpFile>,
        names: &[&str],
        sets: &[UpstreamConfig],
    ) -> Option<TcpConfig> {
        let tcp = file.get_ref();
        let listen = match &tcp.listen {
            Some(text) => self.listen_addr(&format!("{key}.listen"), text),
            None => {
                self.error(
                    &format!("{key}.listen"),
                    file.span(),
                    "a [[tcp]] frontend needs `listen`",
                );
                None
            }
        };
        let proxy_protocol =
            tcp.proxy_protocol
                .as_ref()
                .and_then(|version| match version.get_ref() {
                    1 => Some(1),
                    2 => Some(2),
                    other => {
                        self.error(
                            &format!("{key}.proxy_protocol"),
                            version.span(),
                            format!("proxy_protocol must be 1 or 2, not {other}"),
                        );
                        None
                    }
                });
        let upstream = self.upstream_ref(key, tcp.upstream.as_ref(), file.span(), names);
        if let (Some(i), Some(name)) = (upstream, tcp.upstream.as_ref()) {
            if let Some(set) = sets.get(i) {
                self.tcp_servers(&format!("{key}.upstream"), name, set);
            }
        }
        // Zero would close every connection at once.
        let idle_timeout = self.nonzero_duration(
            &format!("{key}.idle_timeout"),
            &tcp.idle_timeout,
            DEFAULT_TCP_IDLE_TIMEOUT,
        );
        Some(TcpConfig {
            listen: listen?,
            upstream: upstream?,
            proxy_protocol,
            idle_timeout,
        })
    }

    /// A `[[tcp]]` frontend relays raw bytes: it opens no TLS to a `tls = true` set's
    /// servers, and `builtin:echo` answers HTTP in-process and has no socket to relay to, so a set listing it would refuse (or, mixed
    /// with network servers, silently skip) the connections picked for it.
    fn tcp_servers(&mut self, key: &str, name: &file::Text, set: &UpstreamConfig) {
        if set.tls {
            // The relay copies bytes as they are: it would send the client's bytes in
            // plain text to servers the set says speak TLS.
            let message = format!(
                "upstream {:?} has tls = true, but a [[tcp]] frontend relays raw bytes and \
                 does not open TLS to its servers (the client's bytes would go in plain \
                 text); use a set without tls, whose servers the client's own TLS reaches",
                set.name
            );
            self.error(key, name.span(), message);
            return;
        }
        let echo: Vec<String> = set
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.target == ServerTarget::Echo)
            .map(|(i, _)| format!("servers[{i}]"))
            .collect();
        if echo.is_empty() {
            return;
        }
        let message = if echo.len() == set.servers.len() {
            format!(
                "upstream {:?} has only builtin:echo servers: builtin:echo cannot serve raw TCP \
                 (it answers HTTP in-process); name a set of network servers",
                set.name
            )
        } else {
            format!(
                "upstream {:?} lists builtin:echo ({}): builtin:echo cannot serve raw TCP \
                 (it answers HTTP in-process); take it out of the set or use another set",
                set.name,
                echo.join(", ")
            )
        };
        self.error(key, name.span(), message);
    }
}

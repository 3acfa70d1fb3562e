//! TLS listeners over real sockets (issue 7): certificates chosen by SNI with the first
//! as the default, HTTP/2 or HTTP/1.1 by ALPN with `X-Forwarded-Proto: https` seen
//! upstream, session resumption, certificates replaced without a restart (file
//! watcher and `POST /reload`) while a corrupt file keeps the old one, mTLS, and a bad
//! certificate file refusing start-up.
//!
//! Certificates are made in the test with rcgen: one CA signs every server and client
//! certificate, and the client (tokio-rustls) trusts only that CA.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a change may take to be served (a settled file change, then a reload).
const EVENTUALLY: Duration = Duration::from_secs(15);

// ---- certificates -------------------------------------------------------------------

/// A test CA that signs server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "proxycache test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(params, key);
        Ca { cert, issuer }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).expect("key DER"),
        }
    }

    fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Writes a server certificate for `names` to `DIR/NAME.pem` and `DIR/NAME.key`.
    fn write_server(&self, dir: &Path, name: &str, names: &[&str]) -> Issued {
        let issued = self.server(names);
        write_atomic(&dir.join(format!("{name}.pem")), &issued.cert_pem);
        write_atomic(&dir.join(format!("{name}.key")), &issued.key_pem);
        issued
    }
}

/// Replaces a file by renaming a complete temp file over it (as certbot and careful
/// editors do).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write a temp file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

// ---- the client ---------------------------------------------------------------------

/// What a client offers and presents.
#[derive(Clone, Default)]
struct ClientOpts {
    alpn: Vec<&'static str>,
    /// `None`: send no SNI (the name is still what the certificate is checked against).
    sni: Option<&'static str>,
    /// Certificate and key to present (mTLS).
    identity: Option<Arc<(CertificateDer<'static>, PrivateKeyDer<'static>)>>,
}

fn client_config(ca: &Ca, opts: &ClientOpts) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("trust the test CA");
    // ring, as the server uses (deprecated only for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match opts.identity.as_deref() {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert.clone()], key.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = opts.sni.is_some();
    Arc::new(config)
}

/// Connects and handshakes; the certificate is checked against `opts.sni`, or
/// `default.test` when no SNI is sent.
async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    opts: &ClientOpts,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(opts.sni.unwrap_or("default.test").to_owned())
        .map_err(|e| e.to_string())?;
    let exchange = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
}

/// The leaf certificate the server presented.
fn peer_leaf(stream: &TlsStream<TcpStream>) -> Option<CertificateDer<'static>> {
    let certs = stream.get_ref().1.peer_certificates()?;
    certs.first().map(|c| c.clone().into_owned())
}

/// Sends a GET over an established TLS stream, as HTTP/2 when ALPN chose it.
async fn get_over(stream: TlsStream<TcpStream>, path: &str) -> Result<Resp, String> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let exchange = async move {
        let io = TokioIo::new(stream);
        let req: Request<Full<Bytes>> = if h2 {
            empty(req("GET", &format!("https://{TEST_HOST}{path}")))
        } else {
            empty(req("GET", path))
        };
        let resp = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        };
        read_resp(resp.map_err(|e| format!("send: {e}"))?).await
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| "no response in time".to_owned())?
}

/// Connects, checks nothing, and returns the certificate served to `sni`.
async fn served_cert(
    addr: SocketAddr,
    ca: &Ca,
    sni: Option<&'static str>,
) -> Result<CertificateDer<'static>, String> {
    let opts = ClientOpts {
        sni,
        ..ClientOpts::default()
    };
    let stream = connect(addr, client_config(ca, &opts), &opts).await?;
    peer_leaf(&stream).ok_or_else(|| "no peer certificate".to_owned())
}

// ---- the proxy ----------------------------------------------------------------------

/// A config with one plain listener, one TLS listener (`tls_keys` inside its table),
/// the admin API on port 0 and everything routed to `upstream`.
fn tls_config(upstream: &str, tls_keys: &str, watch: bool) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n\n\
         [[server.tls]]\nlisten = \"127.0.0.1:0\"\n{tls_keys}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = {watch}\n\n\
         [upstreams.app]\nservers = [{upstream:?}]\n\n[[routes]]\nupstream = \"app\"\n"
    )
}

fn tls_addr(run: &Running) -> SocketAddr {
    run.handle.as_ref().expect("running").tls_addrs()[0]
}

fn cert_entries(dir: &Path, names: &[&str]) -> String {
    let entries: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                path_text(&dir.join(format!("{n}.pem"))),
                path_text(&dir.join(format!("{n}.key")))
            )
        })
        .collect();
    format!("certs = [{}]", entries.join(", "))
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

// ---- tests --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_and_failed_handshakes_are_counted() {
    // Failed handshakes are debug lines only (a scanner must not flood the log), so
    // nothing showed them at all: they are counted in /metrics.
    let ca = Ca::new();
    let site = Site::new("tls-count");
    ca.write_server(&site.dir, "first", &["default.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    site.write_config(&tls_config(
        &up.authority(),
        &cert_entries(&site.dir, &["first"]),
        false,
    ));
    let run = Running::start(&site);
    let addr = tls_addr(&run);
    let opts = ClientOpts::default();
    for _ in 0..2 {
        connect(addr, client_config(&ca, &opts), &opts)
            .await
            .expect("a handshake");
    }
    for _ in 0..3 {
        // Plain HTTP to the TLS port.
        let _ = raw_request(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    }
    let counted = |name: &'static str, want: f64| {
        let admin = run.admin;
        async move {
            let text = get(admin, "/metrics").await.text();
            common::prometheus::parse(&text).value(name, &[]) == want
        }
    };
    let mut done = false;
    for _ in 0..50 {
        if counted("proxycache_tls_handshakes_total", 2.0).await
            && counted("proxycache_tls_handshake_failures_total", 3.0).await
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = get(run.admin, "/metrics").await.text();
    assert!(done, "2 handshakes and 3 failures counted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_the_first_is_the_default() {
    let ca = Ca::new();
    let site = Site::new("tls-sni");
    let first = ca.write_server(&site.dir, "first", &["default.test", "a.test"]);
    let second = ca.write_server(&site.dir, "second", &["b.test", "*.wild.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = cert_entries(&site.dir, &["first", "second"]);
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let addr = tls_addr(&run);

    for (sni, want, which) in [
        (Some("a.test"), &first, "first"),
        (Some("b.test"), &second, "second"),
        (Some("x.wild.test"), &second, "second (wildcard)"),
        (None, &first, "first (no SNI: the default)"),
    ] {
        let got = served_cert(addr, &ca, sni)
            .await
            .unwrap_or_else(|e| panic!("SNI {sni:?}: {e}"));
        assert_eq!(
            got, want.der,
            "SNI {sni:?} should get the {which} certificate"
        );
    }
    // A name no certificate covers gets the default, which the client then rejects.
    let opts = ClientOpts {
        sni: Some("other.test"),
        ..ClientOpts::default()
    };
    let err = connect(addr, client_config(&ca, &opts), &opts).await.err();
    assert!(
        err.is_some_and(|e| e.contains("NotValidForName") || e.contains("not valid for")),
        "an unknown name gets the default certificate"
    );
}

/// docs/tls.md's first check (`curl --http2 -sI`): a HEAD over HTTP/2 chosen by ALPN
/// gets the echo's head and no body, and the connection serves a GET after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_http2_by_alpn_gets_a_head_and_no_body() {
    let ca = Ca::new();
    let site = Site::new("tls-head");
    ca.write_server(&site.dir, "site", &["default.test"]);
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config("builtin:echo", &keys, false));
    let run = Running::start(&site);
    let opts = ClientOpts {
        alpn: vec!["h2"],
        sni: Some("default.test"),
        identity: None,
    };
    let stream = connect(tls_addr(&run), client_config(&ca, &opts), &opts)
        .await
        .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let exchange = async move {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut answers = Vec::new();
        for method in ["HEAD", "GET"] {
            let req = empty(req(method, &format!("https://{TEST_HOST}/")));
            sender.ready().await.map_err(|e| format!("{method}: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            answers.push(
                read_resp(resp)
                    .await
                    .map_err(|e| format!("{method}: {e}"))?,
            );
        }
        Ok::<_, String>(answers)
    };
    let answers = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .expect("answers in time")
        .unwrap_or_else(|e| panic!("HEAD then GET over TLS h2: {e}"));
    let (head, get) = (&answers[0], &answers[1]);
    assert_eq!(head.status, 200);
    assert_eq!(head.version, Version::HTTP_2);
    assert!(
        head.body.is_empty(),
        "no DATA for a HEAD: {:?}",
        head.text()
    );
    assert!(
        head.header("content-length").is_some(),
        "{:?}",
        head.headers
    );
    assert_eq!(get.status, 200);
    assert_eq!(get.json()["method"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_http2_or_http11_and_upstream_sees_https() {
    let ca = Ca::new();
    let site = Site::new("tls-alpn");
    ca.write_server(&site.dir, "site", &["default.test", "a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let addr = tls_addr(&run);

    for (alpn, version) in [
        (vec!["h2", "http/1.1"], Version::HTTP_2),
        (vec!["http/1.1"], Version::HTTP_11),
        (vec![], Version::HTTP_11),
    ] {
        let opts = ClientOpts {
            alpn: alpn.clone(),
            sni: Some("a.test"),
            identity: None,
        };
        let stream = connect(addr, client_config(&ca, &opts), &opts)
            .await
            .unwrap_or_else(|e| panic!("ALPN {alpn:?}: {e}"));
        let resp = get_over(stream, "/hello")
            .await
            .unwrap_or_else(|e| panic!("ALPN {alpn:?}: {e}"));
        assert_eq!(resp.status, 200, "ALPN {alpn:?}: {}", resp.text());
        assert_eq!(resp.version, version, "ALPN {alpn:?}");
        let seen = up.last().expect("the upstream got the request");
        assert_eq!(seen.uri, "/hello");
        assert_eq!(
            seen.header("x-forwarded-proto").as_deref(),
            Some("https"),
            "ALPN {alpn:?}"
        );
    }
    // The plain listener still says http.
    let resp = get(run.addr, "/plain").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        up.last()
            .and_then(|r| r.header("x-forwarded-proto"))
            .as_deref(),
        Some("http")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume() {
    let ca = Ca::new();
    let site = Site::new("tls-resume");
    ca.write_server(&site.dir, "site", &["a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let addr = tls_addr(&run);
    let opts = ClientOpts {
        sni: Some("a.test"),
        ..ClientOpts::default()
    };
    // One client config: its session store carries the ticket to the next connection.
    let config = client_config(&ca, &opts);
    let first = connect(addr, Arc::clone(&config), &opts)
        .await
        .expect("first handshake");
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // Reading a response also reads the tickets sent after the handshake.
    get_over(first, "/one").await.expect("first request");
    let second = connect(addr, config, &opts)
        .await
        .expect("second handshake");
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_serve_without_restart_and_corrupt_ones_keep_the_old() {
    let ca = Ca::new();
    let site = Site::new("tls-reload");
    let certs = site.dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs folder");
    let v1 = ca.write_server(&certs, "site", &["a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    // Relative paths: resolved against the config file's folder.
    let keys = "certs = [{ cert = \"certs/site.pem\", key = \"certs/site.key\" }]";
    site.write_config(&tls_config(&up.authority(), keys, true));
    let run = Running::start(&site);
    let addr = tls_addr(&run);
    assert_eq!(
        served_cert(addr, &ca, Some("a.test")).await.expect("v1"),
        v1.der
    );

    // 1. The file watcher: replacing both files serves the new certificate.
    let v2 = ca.write_server(&certs, "site", &["a.test"]);
    let start = Instant::now();
    loop {
        let got = served_cert(addr, &ca, Some("a.test"))
            .await
            .expect("handshake during reload");
        if got == v2.der {
            break;
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "the watcher did not serve the new certificate: {:?}",
            run.last_reload()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "new certificate served {:?} after the change",
        start.elapsed()
    );
    let report = run.last_reload().expect("a reload ran");
    assert!(report.ok, "{report:?}");
    assert!(
        report.applied.iter().any(|a| a.contains("certificates")),
        "{report:?}"
    );

    // 2. A corrupt certificate: POST /reload fails naming the file; v2 keeps serving.
    write_atomic(
        &certs.join("site.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let resp = send(run.admin, empty(req("POST", "/reload"))).await;
    let body = resp.json();
    assert_eq!(body["ok"], false, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("site.pem") && errors.contains("server.tls[0].certs[0].cert"),
        "{errors}"
    );
    assert_eq!(
        served_cert(addr, &ca, Some("a.test"))
            .await
            .expect("still serving"),
        v2.der
    );
    // `POST /config/verify` reads the certificate files as a reload would.
    let verify = send(run.admin, empty(req("POST", "/config/verify")))
        .await
        .json();
    assert_eq!(verify["valid"], false, "{verify}");
    assert!(
        verify["errors"].to_string().contains("site.pem"),
        "{verify}"
    );

    // 3. Fixed again via POST /reload (the watcher may get there first: either is fine).
    let v3 = ca.write_server(&certs, "site", &["a.test"]);
    let resp = send(run.admin, empty(req("POST", "/reload"))).await;
    assert_eq!(resp.json()["ok"], true, "{}", resp.text());
    assert_eq!(
        served_cert(addr, &ca, Some("a.test")).await.expect("v3"),
        v3.der
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let ca = Ca::new();
    let site = Site::new("tls-mtls");
    ca.write_server(&site.dir, "site", &["a.test"]);
    std::fs::write(site.dir.join("clients.pem"), ca.pem()).expect("write the client CA");
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = format!(
        "{}\nclient_ca = \"clients.pem\"",
        cert_entries(&site.dir, &["site"])
    );
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let addr = tls_addr(&run);

    // Without a certificate: the handshake (or, with TLS 1.3, the first exchange after
    // it) fails.
    let anonymous = ClientOpts {
        sni: Some("a.test"),
        ..ClientOpts::default()
    };
    let result = match connect(addr, client_config(&ca, &anonymous), &anonymous).await {
        Ok(stream) => get_over(stream, "/").await.map(|r| r.status),
        Err(e) => Err(e),
    };
    assert!(
        result.is_err(),
        "a client without a certificate got {result:?}"
    );
    assert_eq!(up.requests(), 0);

    // A certificate from another CA is refused too.
    let other = Ca::new().issue(&["client.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = ClientOpts {
        identity: Some(Arc::new((other.der, other.key_der))),
        ..anonymous.clone()
    };
    let result = match connect(addr, client_config(&ca, &stranger), &stranger).await {
        Ok(stream) => get_over(stream, "/").await.map(|r| r.status),
        Err(e) => Err(e),
    };
    assert!(
        result.is_err(),
        "a client with a foreign certificate got {result:?}"
    );

    let mine = ca.issue(&["client.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let known = ClientOpts {
        identity: Some(Arc::new((mine.der, mine.key_der))),
        ..anonymous
    };
    let stream = connect(addr, client_config(&ca, &known), &known)
        .await
        .expect("handshake with a client certificate");
    let resp = get_over(stream, "/")
        .await
        .expect("request with a client certificate");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_bad_certificate_file_refuses_to_start() {
    let ca = Ca::new();
    let site = Site::new("tls-bad");
    ca.write_server(&site.dir, "site", &["a.test"]);
    std::fs::write(site.dir.join("site.pem"), "garbage").expect("corrupt the certificate");
    let keys = format!(
        "{}\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"missing.pem\", key = \"site.key\" }}]",
        cert_entries(&site.dir, &["site"])
    );
    site.write_config(&tls_config("127.0.0.1:9", &keys, false));
    let config = proxycache::Config::load(Some(&site.config_path())).expect("the config parses");
    let err = match proxycache::start(config) {
        Ok(_) => panic!("started with a corrupt certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("site.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    assert!(
        err.contains("missing.pem") && err.contains("cannot read"),
        "{err}"
    );
    // Said as `check` says it: on the config file, at the value naming the file
    // (it was said with no position at all; a made-up `:1:1:` would be no better).
    let config_file = site.config_path().display().to_string();
    let text = std::fs::read_to_string(site.config_path()).expect("config.toml");
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"missing.pem\"").map(|c| (i + 1, c + 1)))
        .expect("the config names missing.pem");
    assert!(
        err.contains(&format!(
            "{config_file}:{line}:{col}: server.tls[1].certs[0].cert: cannot read"
        )),
        "{err}"
    );
    assert!(!err.contains(":1:1:"), "{err}");
}

#[test]
fn check_reports_a_missing_key_file() {
    let ca = Ca::new();
    let site = Site::new("tls-check");
    ca.write_server(&site.dir, "site", &["a.test"]);
    std::fs::remove_file(site.dir.join("site.key")).expect("remove the key");
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config("127.0.0.1:9", &keys, false));
    let out = site.run_check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check passed without a key file");
    assert!(
        stderr.contains("server.tls[0].certs[0].key") && stderr.contains("site.key"),
        "{stderr}"
    );
}

/// `tls_config` with the TLS listener on `tls_listen`, or none when `None`.
fn tls_config_on(upstream: &str, keys: &str, tls_listen: Option<&str>) -> String {
    let full = tls_config(upstream, keys, false);
    match tls_listen {
        Some(listen) => full.replace(
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"",
            &format!("[[server.tls]]\nlisten = \"{listen}\""),
        ),
        None => full.replace(
            &format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\n{keys}\n"),
            "",
        ),
    }
}

/// `POST /reload`, asserting it succeeded; the report.
async fn reload_ok(run: &Running) -> serde_json::Value {
    let resp = send(run.admin, empty(req("POST", "/reload"))).await;
    let body = resp.json();
    assert_eq!(body["ok"], true, "{body}");
    body
}

/// Fresh connections to `addr` (enough to reach every worker's socket), each of which
/// must be served `want` and answer a request.
async fn every_connection_serves(addr: SocketAddr, ca: &Ca, want: &Issued, what: &str) {
    for i in 0..24 {
        let opts = ClientOpts {
            sni: Some("a.test"),
            ..ClientOpts::default()
        };
        let stream = connect(addr, client_config(ca, &opts), &opts)
            .await
            .unwrap_or_else(|e| panic!("{what}: connection {i}: {e}"));
        assert_eq!(
            peer_leaf(&stream).as_ref(),
            Some(&want.der),
            "{what}: connection {i} got another certificate"
        );
        let resp = get_over(stream, "/")
            .await
            .unwrap_or_else(|e| panic!("{what}: connection {i}: {e}"));
        assert_eq!(resp.status, 200, "{what}: connection {i}: {}", resp.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_or_moves_a_tls_listener_keeps_it_serving_until_restart() {
    let ca = Ca::new();
    let site = Site::new("tls-removed");
    let v1 = ca.write_server(&site.dir, "site", &["default.test", "a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config_on(&up.authority(), &keys, Some("127.0.0.1:0")));
    let run = Running::start(&site);
    let addr = tls_addr(&run);

    // Removed, before any connection reached either worker's socket.
    site.write_config(&tls_config_on(&up.authority(), &keys, None));
    let report = reload_ok(&run).await;
    assert!(
        report["requires_restart"]
            .to_string()
            .contains("server.tls listeners"),
        "{report}"
    );
    // And by the next reload too: still waiting for the restart (it compared with the
    // previous reload's config, which had no listener either).
    let report = reload_ok(&run).await;
    assert_eq!(
        report["requires_restart"],
        serde_json::json!(["server.tls listeners: removed 127.0.0.1:0"]),
        "{report}"
    );
    every_connection_serves(addr, &ca, &v1, "removed").await;

    // Put back: nothing left to restart for, and it still serves.
    site.write_config(&tls_config_on(&up.authority(), &keys, Some("127.0.0.1:0")));
    let report = reload_ok(&run).await;
    assert!(
        !report["requires_restart"]
            .to_string()
            .contains("server.tls"),
        "{report}"
    );
    every_connection_serves(addr, &ca, &v1, "put back").await;

    // Moved to another address: the open socket keeps serving as before.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    site.write_config(&tls_config_on(&up.authority(), &keys, Some(&elsewhere)));
    let report = reload_ok(&run).await;
    assert_eq!(
        report["requires_restart"],
        serde_json::json!([format!(
            "server.tls listeners: added {elsewhere}, removed 127.0.0.1:0"
        )]),
        "{report}"
    );
    every_connection_serves(addr, &ca, &v1, "moved").await;
}

/// A reload that changes only a listener's `alpn` applies it and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_alpn_reports_it() {
    let ca = Ca::new();
    let site = Site::new("tls-alpn-report");
    ca.write_server(&site.dir, "site", &["default.test", "a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = cert_entries(&site.dir, &["site"]);
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let h1_only = format!("{keys}\nalpn = [\"http/1.1\"]");
    site.write_config(&tls_config(&up.authority(), &h1_only, false));
    let report = reload_ok(&run).await;
    assert!(
        report["applied"]
            .to_string()
            .contains("alpn [\\\"http/1.1\\\"]"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_without_h2_refuses_http2_from_a_client_that_offers_no_alpn() {
    let ca = Ca::new();
    let site = Site::new("tls-alpn-h1");
    ca.write_server(&site.dir, "site", &["default.test", "a.test"]);
    let up = Upstream::start("app", Behavior::echo()).await;
    let keys = format!(
        "{}\nalpn = [\"http/1.1\"]",
        cert_entries(&site.dir, &["site"])
    );
    site.write_config(&tls_config(&up.authority(), &keys, false));
    let run = Running::start(&site);
    let addr = tls_addr(&run);
    let opts = ClientOpts {
        sni: Some("a.test"),
        ..ClientOpts::default()
    };

    // HTTP/2 with prior knowledge, no ALPN: refused.
    let stream = connect(addr, client_config(&ca, &opts), &opts)
        .await
        .expect("handshake");
    let h2 = async move {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let request = empty(req("GET", &format!("https://{TEST_HOST}/h2")));
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        read_resp(resp).await
    };
    if let Ok(Ok(resp)) = tokio::time::timeout(CLIENT_TIMEOUT, h2).await {
        panic!(
            "HTTP/2 was served on an http/1.1-only listener: {} {:?}",
            resp.status, resp.version
        );
    }
    assert!(
        up.all().iter().all(|r| r.uri != "/h2"),
        "an HTTP/2 request reached the upstream"
    );

    // HTTP/1.1 with no ALPN is still served.
    let stream = connect(addr, client_config(&ca, &opts), &opts)
        .await
        .expect("handshake");
    let resp = get_over(stream, "/h1").await.expect("HTTP/1.1 request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.version, Version::HTTP_11);
}

/// Key files rustls cannot use are named for what they are: an encrypted PKCS#8 key
/// (with how to decrypt it) and a key of an unsupported type (P-521), not "no PEM
/// private key" or "cannot be used with the certificate".
#[test]
fn check_names_an_encrypted_key_and_an_unsupported_key_type() {
    let ca = Ca::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    for (file, want) in [
        (
            "encrypted.key",
            "encrypted keys are not supported; decrypt with `openssl pkey -in",
        ),
        ("p521.key", "of a type this build cannot use"),
    ] {
        let site = Site::new("tls-key-kind");
        ca.write_server(&site.dir, "site", &["a.test"]);
        std::fs::copy(fixtures.join(file), site.dir.join("site.key")).expect("copy the key");
        let keys = cert_entries(&site.dir, &["site"]);
        site.write_config(&tls_config("127.0.0.1:9", &keys, false));
        let out = site.run_check();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: check passed");
        assert!(
            stderr.contains("server.tls[0].certs[0].key") && stderr.contains("site.key"),
            "{file}: {stderr}"
        );
        assert!(stderr.contains(want), "{file}: {stderr}");
    }
}

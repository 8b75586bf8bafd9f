//! HTTPS and proxy scenarios, each generic over the runtime, and the servers they need.
//!
//! - [`TestCa`]: a locally generated certificate authority (rcgen) issuing leaf certificates.
//! - [`TlsFront`]: a real TLS server (tokio-rustls) on 127.0.0.1 that terminates TLS and
//!   forwards the plaintext to a `haul_origin::Origin`, so HTTPS scenarios get every origin
//!   behaviour and request record.
//! - [`Tinyproxy`]: Debian's tinyproxy started on an ephemeral loopback port (installed by
//!   `.ci/run`); absolute-form requests for http, `CONNECT` tunnels for https, optional Basic
//!   authentication.

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haul_core::{Download, DownloadError, ErrorClass, Event, IoErrorKind, ProxyConfig};
use haul_origin::{Behavior, Origin};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tempfile::TempDir;

use crate::{body, fast_config, sha256_hex, Runtime};

/// A certificate authority made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM (what `--cacert` reads).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A self-signed certificate for 127.0.0.1 that is also a CA (basicConstraints CA:TRUE),
    /// as `openssl req -x509` makes by default, and which trusts itself: its PEM is both the
    /// server's certificate and the root to trust.
    pub fn self_signed_ca_as_server() -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `dns_names` and 127.0.0.1 when `with_loopback_ip`.
    pub fn issue(&self, dns_names: &[&str], with_loopback_ip: bool) -> Leaf {
        let names: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        if with_loopback_ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A TLS server on 127.0.0.1 forwarding plaintext to a backend origin.
pub struct TlsFront {
    port: u16,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    /// Serve `leaf` on an ephemeral port, forwarding to `backend`.
    pub fn start(leaf: &Leaf, backend: &Origin) -> TlsFront {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backend = backend.addr();
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = handshakes.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    // A client that rejects the certificate aborts the handshake here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut back) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                });
            }
        });
        TlsFront {
            port,
            handshakes,
            _runtime: runtime,
        }
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `https://HOST:PORT/PATH`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }
}

/// tinyproxy on 127.0.0.1, stopped when dropped.
pub struct Tinyproxy {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Tinyproxy {
    /// Start tinyproxy; with `auth` it demands those Basic credentials.
    pub fn start(auth: Option<(&str, &str)>) -> Tinyproxy {
        let dir = TempDir::new().expect("temp dir");
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nAllow 127.0.0.1\n\
             LogLevel Info\nLogFile \"{}\"\n",
            dir.path().join("tinyproxy.log").display()
        );
        if let Some((user, pass)) = auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        // As root tinyproxy drops to an unprivileged user.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            conf.push_str("User nobody\nGroup nogroup\n");
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf).expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (Debian package `tinyproxy`; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy {
            child,
            port,
            _dir: dir,
        }
    }

    /// `http://[user:pass@]127.0.0.1:PORT`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

fn https_setup(leaf_names: &[&str], loopback_ip: bool) -> (TestCa, Origin, TlsFront, Vec<u8>) {
    let ca = TestCa::new("haul test CA");
    let leaf = ca.issue(leaf_names, loopback_ip);
    let origin = Origin::start().expect("origin starts");
    let data = body(77, 700_000);
    origin.route("/f.bin", data.clone(), Behavior::Normal);
    let front = TlsFront::start(&leaf, &origin);
    (ca, origin, front, data)
}

fn retries(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Retrying { .. }))
        .count()
}

fn assert_tls_failure(err: &DownloadError, host: &str, events: &[Event]) {
    let DownloadError::Connect { failure, .. } = err else {
        panic!("expected a connect failure, got {err:?}");
    };
    assert_eq!(failure.kind, IoErrorKind::Tls, "{failure}");
    assert!(failure.message.contains(host), "names the host: {failure}");
    assert!(!err.retryable());
    assert_eq!(err.class(), ErrorClass::Network);
    assert_eq!(retries(events), 0, "a certificate error is not retried");
}

/// A certificate from a CA given in the config verifies (SNI and name check against
/// 127.0.0.1), and the body arrives intact.
pub fn https_with_trusted_extra_ca_downloads<R: Runtime>() {
    let (ca, origin, front, data) = https_setup(&["localhost"], true);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("f.bin");
    let mut config = fast_config();
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    let d = Download::new(&front.url("127.0.0.1", "/f.bin"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap();
    let out = R::with_config(config)
        .download(d, &mut Vec::new())
        .expect("trusted certificate works");
    assert_eq!(out.size, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(origin.requests_to("/f.bin").len(), 1);
}

/// Sequential downloads on one client reuse one TLS connection (the next request is written
/// while the previous connection's reader waits for bytes), and a multi-megabyte body spans
/// many TLS records intact.
pub fn https_connection_is_reused_and_large_bodies_arrive_intact<R: Runtime>() {
    let (ca, origin, front, data) = https_setup(&["localhost"], true);
    let big = body(81, 6 * 1024 * 1024 + 5);
    origin.route("/big.bin", big.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let mut config = fast_config();
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    let rt = R::with_config(config);
    for (path, want) in [("/big.bin", &big), ("/f.bin", &data), ("/big.bin", &big)] {
        let dest = dir
            .path()
            .join(format!("{}-{}", path.trim_start_matches('/'), want.len()));
        let _ = std::fs::remove_file(&dest);
        let out = rt
            .download(
                Download::new(&front.url("127.0.0.1", path), &dest).unwrap(),
                &mut Vec::new(),
            )
            .expect("https download");
        assert_eq!(out.sha256_hex(), sha256_hex(want));
        assert_eq!(&std::fs::read(&dest).unwrap(), want);
    }
    assert_eq!(front.handshakes(), 1, "one TLS connection served all three");
}

/// A DNS name works too (SNI carries it; `localhost` resolves to loopback).
pub fn https_by_host_name_uses_sni_and_verifies_the_name<R: Runtime>() {
    let (ca, _origin, front, data) = https_setup(&["localhost"], true);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("f.bin");
    let mut config = fast_config();
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    R::with_config(config)
        .download(
            Download::new(&front.url("localhost", "/f.bin"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .expect("name matches");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

/// A certificate for another host is refused with a TLS error naming the host; no retries,
/// nothing at the destination.
pub fn https_with_wrong_host_name_fails_without_retry<R: Runtime>() {
    let (ca, origin, front, _) = https_setup(&["wrong.test"], false);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("f.bin");
    let mut config = fast_config();
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    let mut events = Vec::new();
    let err = R::with_config(config)
        .download(
            Download::new(&front.url("127.0.0.1", "/f.bin"), &dest).unwrap(),
            &mut events,
        )
        .unwrap_err();
    assert_tls_failure(&err, "127.0.0.1", &events);
    assert!(!dest.exists());
    assert!(origin.requests().is_empty(), "no request left the client");
}

/// A certificate from an unknown CA is refused (only the built-in roots are trusted).
pub fn https_with_unknown_ca_fails_without_retry<R: Runtime>() {
    let (_ca, origin, front, _) = https_setup(&["localhost"], true);
    let dir = TempDir::new().unwrap();
    let mut events = Vec::new();
    let err = R::with_config(fast_config())
        .download(
            Download::new(&front.url("localhost", "/f.bin"), dir.path().join("f")).unwrap(),
            &mut events,
        )
        .unwrap_err();
    assert_tls_failure(&err, "localhost", &events);
    assert!(err.to_string().contains("UnknownIssuer"), "says why: {err}");
    assert!(
        err.to_string().contains("--cacert"),
        "says what to do: {err}"
    );
    assert!(origin.requests().is_empty());
}

/// A self-signed CA certificate serving as the server's own, trusted as an extra root, is
/// refused (webpki does not let a CA certificate identify a server), and the error says what
/// to change rather than only rustls's "CaUsedAsEndEntity".
pub fn https_with_ca_certificate_as_server_certificate_says_how_to_fix_it<R: Runtime>() {
    let leaf = TestCa::self_signed_ca_as_server();
    let origin = Origin::start().expect("origin starts");
    origin.route("/f.bin", body(80, 1000), Behavior::Normal);
    let front = TlsFront::start(&leaf, &origin);
    let dir = TempDir::new().unwrap();
    let mut config = fast_config();
    config.extra_root_certs = vec![leaf.cert_pem.clone().into_bytes()];
    let mut events = Vec::new();
    let err = R::with_config(config)
        .download(
            Download::new(&front.url("127.0.0.1", "/f.bin"), dir.path().join("f")).unwrap(),
            &mut events,
        )
        .unwrap_err();
    assert_tls_failure(&err, "127.0.0.1", &events);
    let text = err.to_string();
    assert!(
        text.contains("CaUsedAsEndEntity"),
        "keeps rustls's word: {text}"
    );
    assert!(text.contains("CA:FALSE"), "says what to change: {text}");
    assert!(origin.requests().is_empty());
}

/// A plain-HTTP download through tinyproxy: the request goes through the proxy (absolute
/// form, which tinyproxy requires), the proxy credentials are accepted by the proxy and never
/// reach the origin.
pub fn http_through_authenticating_proxy_keeps_credentials_at_the_proxy<R: Runtime>() {
    let proxy = Tinyproxy::start(Some(("haul", "s3cret")));
    let origin = Origin::start().expect("origin starts");
    let data = body(78, 300_000);
    origin.route("/p.bin", data.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("p.bin");
    let mut config = fast_config();
    config.proxy = ProxyConfig::from_lookup(|k| {
        (k == "http_proxy").then(|| proxy.url(Some(("haul", "s3cret"))))
    })
    .unwrap();
    R::with_config(config)
        .download(
            Download::new(&origin.url("/p.bin"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .expect("download through the proxy");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let reqs = origin.requests_to("/p.bin");
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0]
            .header("via")
            .is_some_and(|v| v.contains("tinyproxy")),
        "the request came through tinyproxy: {:?}",
        reqs[0]
    );
    assert!(reqs[0].header("proxy-authorization").is_none());
}

/// Wrong proxy credentials: the proxy refuses (tinyproxy answers plain requests with 401,
/// tunnels with 407) and nothing reaches the origin.
pub fn http_through_proxy_with_wrong_credentials_is_refused<R: Runtime>() {
    let proxy = Tinyproxy::start(Some(("haul", "s3cret")));
    let origin = Origin::start().expect("origin starts");
    origin.route("/p.bin", body(79, 1000), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let mut config = fast_config();
    config.proxy.http =
        Some(haul_core::proxy::parse_proxy_url(&proxy.url(Some(("haul", "nope")))).unwrap());
    let err = R::with_config(config)
        .download(
            Download::new(&origin.url("/p.bin"), dir.path().join("p")).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    // tinyproxy refuses plain requests with 401 (an origin's code, told apart from the
    // origin's own answer by nothing); a proxy answering 407 is a proxy refusal.
    let refused = match &err {
        DownloadError::Status { status: 401, .. } => true,
        DownloadError::Connect { failure, .. } => failure.kind == IoErrorKind::ProxyRefused,
        _ => false,
    };
    assert!(refused, "{err:?}");
    assert!(origin.requests().is_empty());
}

/// HTTPS through the proxy: a `CONNECT` tunnel (with the proxy's credentials), then TLS with
/// the origin end to end; the origin never sees the proxy credentials.
pub fn https_through_proxy_tunnels_with_connect<R: Runtime>() {
    let proxy = Tinyproxy::start(Some(("haul", "s3cret")));
    let (ca, origin, front, data) = https_setup(&["localhost"], true);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("t.bin");
    let mut config = fast_config();
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    config.proxy = ProxyConfig::from_lookup(|k| {
        (k == "HTTPS_PROXY").then(|| proxy.url(Some(("haul", "s3cret"))))
    })
    .unwrap();
    R::with_config(config)
        .download(
            Download::new(&front.url("127.0.0.1", "/f.bin"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .expect("download through the tunnel");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let reqs = origin.requests_to("/f.bin");
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].header("proxy-authorization").is_none());
    assert!(
        reqs[0].header("via").is_none(),
        "a tunnel carries TLS the proxy cannot rewrite"
    );
}

/// A tunnel refused by the proxy (wrong credentials) is a final connect failure naming the
/// proxy: not retried (it would refuse again), not held against the origin.
pub fn https_through_proxy_refusing_the_tunnel_fails<R: Runtime>() {
    let proxy = Tinyproxy::start(Some(("haul", "s3cret")));
    let (ca, origin, front, _) = https_setup(&["localhost"], true);
    let dir = TempDir::new().unwrap();
    let mut config = fast_config();
    config.retry.max_attempts = 3;
    config.extra_root_certs = vec![ca.pem().into_bytes()];
    config.proxy.https = Some(haul_core::proxy::parse_proxy_url(&proxy.url(None)).unwrap());
    let mut events = Vec::new();
    let err = R::with_config(config)
        .download(
            Download::new(&front.url("127.0.0.1", "/f.bin"), dir.path().join("t")).unwrap(),
            &mut events,
        )
        .unwrap_err();
    let DownloadError::Connect { failure, .. } = &err else {
        panic!("expected a connect failure, got {err:?}");
    };
    assert_eq!(failure.kind, IoErrorKind::ProxyRefused, "{failure}");
    assert!(failure.message.contains("407"), "{failure}");
    assert!(!err.retryable());
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, haul_core::Event::Retrying { .. })),
        "a refusal is not retried: {events:?}"
    );
    assert!(origin.requests().is_empty());
}

/// `NO_PROXY` sends a matching origin directly even with a proxy configured.
pub fn no_proxy_bypasses_the_proxy<R: Runtime>() {
    let origin = Origin::start().expect("origin starts");
    let data = body(80, 10_000);
    origin.route("/d.bin", data.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("d.bin");
    let mut config = fast_config();
    config.retry.max_attempts = 1;
    // A proxy that does not exist: using it would fail.
    config.proxy = ProxyConfig::from_lookup(|k| match k {
        "HTTP_PROXY" => Some(format!("http://127.0.0.1:{}", free_port())),
        "NO_PROXY" => Some("localhost,127.0.0.1".into()),
        _ => None,
    })
    .unwrap();
    R::with_config(config)
        .download(
            Download::new(&origin.url("/d.bin"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .expect("direct download");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(origin.requests_to("/d.bin")[0].header("via").is_none());
}

/// Instantiate the named scenarios of this module as `#[test]`s for the runtime type `$rt`.
#[macro_export]
macro_rules! secure_scenarios {
    ($rt:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::secure::$name::<$rt>();
            }
        )*
    };
}

/// Instantiate every HTTPS scenario for the runtime type `$rt`.
#[macro_export]
macro_rules! tls_scenarios {
    ($rt:ty) => {
        $crate::secure_scenarios!($rt;
            https_with_trusted_extra_ca_downloads,
            https_by_host_name_uses_sni_and_verifies_the_name,
            https_connection_is_reused_and_large_bodies_arrive_intact,
            https_with_wrong_host_name_fails_without_retry,
            https_with_unknown_ca_fails_without_retry,
            https_with_ca_certificate_as_server_certificate_says_how_to_fix_it,
        );
    };
}

/// Instantiate every proxy scenario for the runtime type `$rt`.
#[macro_export]
macro_rules! proxy_scenarios {
    ($rt:ty) => {
        $crate::secure_scenarios!($rt;
            http_through_authenticating_proxy_keeps_credentials_at_the_proxy,
            http_through_proxy_with_wrong_credentials_is_refused,
            https_through_proxy_tunnels_with_connect,
            https_through_proxy_refusing_the_tunnel_fails,
            no_proxy_bypasses_the_proxy,
        );
    };
}

//! The one TLS and proxy-tunnel integration of haul: a sans-IO byte transform between the
//! engine's plaintext HTTP/1.1 and the bytes on the wire.
//!
//! Owns: the `CONNECT` handshake with a tunnelling proxy (request with `Proxy-Authorization`
//! when the hop has credentials, a 2xx answer required), the rustls client session (SNI and
//! hostname verification for the origin's host, roots from [`TlsSetup`]), and classifying
//! their failures as [`IoFailure`]s (`Tls` names the host and is not retried; a proxy that
//! refuses is `ConnectFailed`). Does not own any socket: a runtime moves bytes between the
//! socket and a [`Transport`] (blocking calls, or async reads and writes), so the blocking,
//! tokio and smol runtimes share this code instead of each integrating TLS.
//!
//! Does not own which proxy to use (the engine picks the [`ProxyHop`]) nor absolute-form
//! requests to plain-HTTP proxies (the engine writes them).

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use haul_core::http::{Origin, Scheme};
use haul_core::{IoErrorKind, IoFailure, ProxyHop};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;

/// Largest proxy answer head accepted for a `CONNECT`.
const MAX_TUNNEL_HEAD: usize = 16 * 1024;

/// The TLS client configuration every connection of a client shares: the webpki roots (not
/// the system's, so results do not depend on the machine) plus extra roots from
/// [`haul_core::Config::extra_root_certs`].
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSetup")
    }
}

/// Extra root certificates that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM or DER blob holds no usable certificate.
    #[error("extra root certificate #{index}: {reason}")]
    BadRoot { index: usize, reason: String },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsSetup {
    /// Roots: webpki's plus each of `extra_roots` (PEM with one or more certificates, or DER).
    pub fn new(extra_roots: &[Vec<u8>]) -> Result<TlsSetup, TlsSetupError> {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (index, blob) in extra_roots.iter().enumerate() {
            let bad = |reason: String| TlsSetupError::BadRoot { index, reason };
            let certs: Vec<CertificateDer<'static>> = if looks_like_pem(blob) {
                CertificateDer::pem_slice_iter(blob)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("bad PEM: {e:?}")))?
            } else {
                vec![CertificateDer::from(blob.clone())]
            };
            if certs.is_empty() {
                return Err(bad("no CERTIFICATE block in the PEM".into()));
            }
            let pem = looks_like_pem(blob);
            for cert in certs {
                roots.add(cert).map_err(|e| match pem {
                    true => bad(format!("a certificate of the PEM is unusable ({e})")),
                    false => bad(format!(
                        "neither PEM with a CERTIFICATE block nor a DER certificate ({e})"
                    )),
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSetup {
            config: Arc::new(config),
        })
    }
}

fn looks_like_pem(blob: &[u8]) -> bool {
    blob.windows(11).any(|w| w == b"-----BEGIN ")
}

/// What [`Transport::read_plain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// This many plaintext bytes were copied into the buffer.
    Data(usize),
    /// The peer closed cleanly (TLS close_notify, or the end of a plain stream).
    Eof,
    /// Nothing to give until more wire bytes arrive ([`Transport::feed_wire`]).
    NeedWire,
}

/// Where a connection is in its setup.
#[derive(Debug)]
enum Stage {
    /// Waiting for the proxy's answer to `CONNECT`.
    Tunnelling {
        /// The proxy, `host:port`.
        proxy: String,
        /// The tunnel's other end, the origin's `host:port`.
        to: String,
    },
    /// TLS handshake in progress.
    Handshaking,
    /// Ready for HTTP.
    Open,
}

/// One connection's transform: optional `CONNECT` tunnel, then optional TLS.
///
/// Driving it: while not [`Transport::is_open`], send [`Transport::take_outgoing`] to the
/// socket, read from the socket into [`Transport::feed_wire`] and call
/// [`Transport::advance`]. Once open, [`Transport::send_plain`] + `take_outgoing` write,
/// [`Transport::read_plain`] reads (asking for wire bytes when it has none).
pub struct Transport {
    stage: Stage,
    /// The origin's host, for messages.
    host: String,
    tls: Option<ClientConnection>,
    /// Wire bytes received and not yet consumed.
    wire_in: BytesMut,
    /// Wire bytes to send.
    wire_out: Vec<u8>,
    /// The socket reached its end.
    wire_eof: bool,
    /// rustls was told about that end.
    eof_given_to_tls: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("stage", &self.stage)
            .field("host", &self.host)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Transport {
    /// The transform a connection to `origin` through `via` needs, or `None` when the
    /// plaintext goes to the socket unchanged (plain HTTP, directly or to an absolute-form
    /// proxy).
    pub fn for_connection(
        origin: &Origin,
        via: Option<&ProxyHop>,
        tls: &TlsSetup,
    ) -> Result<Option<Transport>, IoFailure> {
        let tunnel = via.filter(|h| h.tunnel);
        if origin.scheme == Scheme::Http && tunnel.is_none() {
            return Ok(None);
        }
        let host = origin.host.trim_start_matches('[').trim_end_matches(']');
        let session = match origin.scheme {
            Scheme::Https => {
                let name = ServerName::try_from(host.to_string()).map_err(|e| {
                    IoFailure::new(IoErrorKind::Tls, format!("TLS to {host}: bad name: {e}"))
                })?;
                let mut c = ClientConnection::new(tls.config.clone(), name)
                    .map_err(|e| IoFailure::new(IoErrorKind::Tls, format!("TLS to {host}: {e}")))?;
                c.set_buffer_limit(None);
                Some(c)
            }
            Scheme::Http => None,
        };
        let mut t = Transport {
            stage: Stage::Open,
            host: host.to_string(),
            tls: session,
            wire_in: BytesMut::new(),
            wire_out: Vec::new(),
            wire_eof: false,
            eof_given_to_tls: false,
        };
        if let Some(hop) = tunnel {
            t.wire_out = connect_request(origin, hop);
            t.stage = Stage::Tunnelling {
                proxy: format!("{}:{}", hop.proxy.host, hop.proxy.port),
                to: format!("{}:{}", origin.host, origin.port),
            };
        } else if t.tls.is_some() {
            t.stage = Stage::Handshaking;
        }
        Ok(Some(t))
    }

    /// Whether setup is complete and HTTP may flow.
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Open)
    }

    /// Bytes to write to the socket now, if any.
    pub fn take_outgoing(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.stage, Stage::Tunnelling { .. }) {
            if let Some(tls) = self.tls.as_mut() {
                while tls.wants_write() {
                    if tls.write_tls(&mut self.wire_out).is_err() {
                        break;
                    }
                }
            }
        }
        (!self.wire_out.is_empty()).then(|| std::mem::take(&mut self.wire_out))
    }

    /// Bytes read from the socket (an empty slice: the socket reached its end).
    pub fn feed_wire(&mut self, data: &[u8]) {
        if data.is_empty() {
            self.wire_eof = true;
        } else {
            self.wire_in.extend_from_slice(data);
        }
    }

    /// Move setup forward with the wire bytes fed so far. Errors are final.
    pub fn advance(&mut self) -> Result<(), IoFailure> {
        if let Stage::Tunnelling { proxy, to } = &self.stage {
            let Some(end) = find_head_end(&self.wire_in) else {
                if self.wire_in.len() > MAX_TUNNEL_HEAD {
                    return Err(Self::proxy_failure(proxy, to, "answer head too large"));
                }
                if self.wire_eof {
                    return Err(Self::proxy_failure(proxy, to, "closed the connection"));
                }
                return Ok(());
            };
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.wire_in[..end]) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => {
                    return Err(Self::proxy_failure(
                        proxy,
                        to,
                        "answered with a malformed head",
                    ))
                }
            }
            let code = resp.code.unwrap_or(0);
            if !(200..300).contains(&code) {
                let reason = format!("answered {code} {}", resp.reason.unwrap_or(""));
                let mut failure = Self::proxy_failure(proxy, to, &reason);
                if (400..500).contains(&code) && !matches!(code, 408 | 429) {
                    // Its own refusal (credentials, an allowed-ports rule): final.
                    failure.kind = IoErrorKind::ProxyRefused;
                }
                return Err(failure);
            }
            tracing::debug!(proxy = %proxy, host = %self.host, "tunnel open");
            self.wire_in.advance(end);
            self.stage = if self.tls.is_some() {
                Stage::Handshaking
            } else {
                Stage::Open
            };
        }
        if let Stage::Handshaking = self.stage {
            self.pump_tls()?;
            let tls = self.tls.as_ref().expect("handshaking implies TLS");
            if !tls.is_handshaking() {
                tracing::debug!(host = %self.host, "TLS handshake complete");
                self.stage = Stage::Open;
            } else if self.wire_eof && self.wire_in.is_empty() {
                return Err(IoFailure::new(
                    IoErrorKind::Tls,
                    format!("TLS handshake with {}: connection closed", self.host),
                ));
            }
        }
        Ok(())
    }

    fn proxy_failure(proxy: &str, to: &str, what: &str) -> IoFailure {
        IoFailure::new(
            IoErrorKind::ConnectFailed,
            format!("proxy {proxy} refused a tunnel to {to}: {what}"),
        )
    }

    /// Hand buffered wire bytes to rustls until it has plaintext or needs more; once the
    /// socket ended and everything was handed over, tell rustls about the end.
    fn pump_tls(&mut self) -> Result<(), IoFailure> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while !self.wire_in.is_empty() && tls.wants_read() {
            let mut rd = &self.wire_in[..];
            let n = tls.read_tls(&mut rd).map_err(|e| {
                IoFailure::new(IoErrorKind::Reset, format!("TLS with {}: {e}", self.host))
            })?;
            self.wire_in.advance(n);
            if let Err(e) = tls.process_new_packets() {
                // Queue the alert rustls prepared; the caller may still send it.
                while tls.wants_write() && tls.write_tls(&mut self.wire_out).is_ok() {}
                return Err(tls_failure(&self.host, &e));
            }
        }
        if self.wire_eof && self.wire_in.is_empty() && !self.eof_given_to_tls {
            self.eof_given_to_tls = true;
            let _ = tls.read_tls(&mut &[][..]);
            tls.process_new_packets()
                .map_err(|e| tls_failure(&self.host, &e))?;
        }
        Ok(())
    }

    /// Queue plaintext for the peer; fetch the wire bytes with [`Transport::take_outgoing`].
    pub fn send_plain(&mut self, data: &[u8]) -> Result<(), IoFailure> {
        match self.tls.as_mut() {
            Some(tls) => tls.writer().write_all(data).map_err(|e| {
                IoFailure::new(IoErrorKind::Reset, format!("TLS to {}: {e}", self.host))
            }),
            None => {
                self.wire_out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Copy received plaintext into `buf`: as much as the wire bytes fed so far decrypt to
    /// (many TLS records per call, so the engine sees large buffers, not 16 KiB records).
    pub fn read_plain(&mut self, buf: &mut [u8]) -> Result<Plain, IoFailure> {
        if self.tls.is_none() {
            if !self.wire_in.is_empty() {
                let n = buf.len().min(self.wire_in.len());
                buf[..n].copy_from_slice(&self.wire_in[..n]);
                self.wire_in.advance(n);
                return Ok(Plain::Data(n));
            }
            return Ok(if self.wire_eof {
                Plain::Eof
            } else {
                Plain::NeedWire
            });
        }
        let mut filled = 0;
        // Data already copied goes out first; an end or error is reported on the next call
        // (rustls keeps reporting it).
        let partial = |filled: usize, then: Result<Plain, IoFailure>| {
            if filled > 0 {
                Ok(Plain::Data(filled))
            } else {
                then
            }
        };
        while filled < buf.len() {
            let tls = self.tls.as_mut().expect("checked above");
            match tls.reader().read(&mut buf[filled..]) {
                Ok(0) => return partial(filled, Ok(Plain::Eof)),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.wire_in.is_empty() && !self.wire_eof {
                        return partial(filled, Ok(Plain::NeedWire));
                    }
                    if self.wire_in.is_empty() && self.eof_given_to_tls {
                        // rustls saw the end and still has nothing: not a clean close.
                        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                        return partial(filled, Err(self.closed_failure(&e)));
                    }
                    if let Err(f) = self.pump_tls() {
                        return partial(filled, Err(f));
                    }
                }
                Err(e) => return partial(filled, Err(self.closed_failure(&e))),
            }
        }
        Ok(Plain::Data(filled))
    }

    fn closed_failure(&self, e: &std::io::Error) -> IoFailure {
        let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "closed without TLS close_notify (the data may be truncated)".to_string()
        } else {
            e.to_string()
        };
        IoFailure::new(
            IoErrorKind::Reset,
            format!("TLS with {}: {what}", self.host),
        )
    }
}

/// The `CONNECT` request for a tunnel to `origin`.
fn connect_request(origin: &Origin, hop: &ProxyHop) -> Vec<u8> {
    let authority = format!("{}:{}", origin.host, origin.port);
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = &hop.authorization {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A rustls error as a non-retryable failure that names the host and, for the certificate
/// problems people meet with private servers, says what to do about them.
fn tls_failure(host: &str, e: &rustls::Error) -> IoFailure {
    let msg = match e {
        rustls::Error::InvalidCertificate(c) => match certificate_hint(c) {
            Some(hint) => format!("TLS certificate of {host} rejected: {c}: {hint}"),
            None => format!("TLS certificate of {host} rejected: {c}"),
        },
        other => match handshake_hint(other) {
            Some(hint) => format!("TLS with {host} failed: {other}: {hint}"),
            None => format!("TLS with {host} failed: {other}"),
        },
    };
    IoFailure::new(IoErrorKind::Tls, msg)
}

/// What a failed handshake means, where rustls's words ("received corrupt message of type
/// InvalidContentType", an alert's name) do not say it.
fn handshake_hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Some("the server does not answer in TLS (plain http on this port?)")
        }
        rustls::Error::AlertReceived(A::ProtocolVersion) => {
            Some("the server offers no TLS version haul speaks (it speaks TLS 1.2 and 1.3 only)")
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            Some("the server requires a client certificate, which haul cannot present")
        }
        _ => None,
    }
}

/// What to do about a rejected certificate, where rustls's own words ("UnknownIssuer",
/// "CaUsedAsEndEntity") do not say it.
fn certificate_hint(c: &rustls::CertificateError) -> Option<&'static str> {
    use rustls::CertificateError as C;
    match c {
        C::Expired | C::ExpiredContext { .. } => {
            Some("the certificate has expired (or this machine's clock is wrong)")
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            Some("the certificate is not valid yet (or this machine's clock is wrong)")
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            Some("the certificate names other hosts than the one asked for")
        }
        C::UnknownIssuer => Some(
            "it is not signed by a trusted certificate authority \
             (a private CA's certificate can be added as an extra trusted root: --cacert FILE)",
        ),
        // webpki's CaUsedAsEndEntity reaches rustls as an opaque error: known by its name.
        C::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => Some(
            "the server presents a CA certificate (basicConstraints CA:TRUE) as its own, which \
             cannot identify a server even when it is trusted (--cacert); give the server a \
             certificate without CA:TRUE (openssl req -x509 ... -addext \
             basicConstraints=critical,CA:FALSE) or one signed by that CA",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(u: &str) -> Origin {
        Origin::of(&url::Url::parse(u).unwrap()).unwrap()
    }

    /// Handshake failures whose rustls words say little get a hint in plain words.
    #[test]
    fn tls_failures_say_what_they_mean() {
        use rustls::{AlertDescription, CertificateError, InvalidMessage};
        let cases: [(rustls::Error, &str); 5] = [
            (
                rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
                "does not answer in TLS",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                "TLS 1.2 and 1.3",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "client certificate",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "has expired",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "names other hosts",
            ),
        ];
        for (error, hint) in cases {
            let failure = tls_failure("h.test", &error);
            assert_eq!(failure.kind, IoErrorKind::Tls);
            assert!(failure.message.contains(hint), "{failure}");
            assert!(failure.message.contains("h.test"), "{failure}");
        }
    }

    fn hop(tunnel: bool, auth: Option<&str>) -> ProxyHop {
        ProxyHop {
            proxy: origin("http://127.0.0.1:3128/"),
            tunnel,
            authorization: auth.map(str::to_string),
        }
    }

    #[test]
    fn plain_http_needs_no_transform_even_through_an_absolute_form_proxy() {
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("http://example.com/");
        assert!(Transport::for_connection(&o, None, &tls).unwrap().is_none());
        let via = hop(false, Some("Basic eA=="));
        assert!(Transport::for_connection(&o, Some(&via), &tls)
            .unwrap()
            .is_none());
    }

    #[test]
    fn tunnel_sends_connect_with_proxy_authorization_and_opens_on_2xx() {
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("http://example.com:8080/");
        let via = hop(true, Some("Basic dTpw"));
        let mut t = Transport::for_connection(&o, Some(&via), &tls)
            .unwrap()
            .unwrap();
        let req = String::from_utf8(t.take_outgoing().unwrap()).unwrap();
        assert_eq!(
            req,
            "CONNECT example.com:8080 HTTP/1.1\r\nHost: example.com:8080\r\n\
             Proxy-Authorization: Basic dTpw\r\n\r\n"
        );
        t.feed_wire(b"HTTP/1.1 200 Connection established\r\n");
        t.advance().unwrap();
        assert!(!t.is_open(), "head incomplete");
        t.feed_wire(b"\r\nHTTP/1.1 200 OK\r\n");
        t.advance().unwrap();
        assert!(t.is_open());
        let mut buf = [0u8; 64];
        assert_eq!(t.read_plain(&mut buf).unwrap(), Plain::Data(17));
        assert_eq!(&buf[..17], b"HTTP/1.1 200 OK\r\n");
        assert_eq!(t.read_plain(&mut buf).unwrap(), Plain::NeedWire);
    }

    #[test]
    fn proxy_refusing_the_tunnel_is_a_final_failure_naming_proxy_and_host() {
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("https://secret.example/");
        let mut t = Transport::for_connection(&o, Some(&hop(true, None)), &tls)
            .unwrap()
            .unwrap();
        let req = String::from_utf8(t.take_outgoing().unwrap()).unwrap();
        assert!(req.starts_with("CONNECT secret.example:443 HTTP/1.1\r\n"));
        assert!(!req.contains("Proxy-Authorization"));
        t.feed_wire(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        let err = t.advance().unwrap_err();
        // Its own refusal: not retried, not counted against the origin.
        assert_eq!(err.kind, IoErrorKind::ProxyRefused);
        assert!(err.message.contains("127.0.0.1:3128"), "{}", err.message);
        assert!(
            err.message.contains("secret.example:443"),
            "{}",
            err.message
        );
        assert!(err.message.contains("407"), "{}", err.message);
        // A proxy that could not reach the origin (502) is a connect failure, retried.
        let mut t = Transport::for_connection(&o, Some(&hop(true, None)), &tls)
            .unwrap()
            .unwrap();
        t.take_outgoing();
        t.feed_wire(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        assert_eq!(t.advance().unwrap_err().kind, IoErrorKind::ConnectFailed);
    }

    #[test]
    fn https_starts_with_a_client_hello_only_after_the_tunnel() {
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("https://example.com/");
        let mut t = Transport::for_connection(&o, Some(&hop(true, None)), &tls)
            .unwrap()
            .unwrap();
        let first = t.take_outgoing().unwrap();
        assert!(first.starts_with(b"CONNECT "));
        assert!(
            t.take_outgoing().is_none(),
            "no TLS bytes before the tunnel"
        );
        t.feed_wire(b"HTTP/1.0 200 OK\r\n\r\n");
        t.advance().unwrap();
        let hello = t.take_outgoing().unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert!(!t.is_open());
    }

    #[test]
    fn garbage_instead_of_a_server_hello_is_a_tls_failure_naming_the_host() {
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("https://example.com/");
        let mut t = Transport::for_connection(&o, None, &tls).unwrap().unwrap();
        t.take_outgoing().unwrap();
        t.feed_wire(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let err = t.advance().unwrap_err();
        assert_eq!(err.kind, IoErrorKind::Tls);
        assert!(err.message.contains("example.com"), "{}", err.message);
    }

    #[test]
    fn extra_roots_accept_pem_and_der_and_reject_garbage() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let pem = ca.cert.pem().into_bytes();
        let der = ca.cert.der().to_vec();
        TlsSetup::new(&[pem, der]).unwrap();
        let err = TlsSetup::new(&[b"-----BEGIN NOTHING-----\n".to_vec()]).unwrap_err();
        assert!(
            matches!(err, TlsSetupError::BadRoot { index: 0, .. }),
            "{err}"
        );
        assert!(TlsSetup::new(&[vec![1, 2, 3]]).is_err());
    }
}

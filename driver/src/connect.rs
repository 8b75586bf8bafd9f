//! Connection setup, written once for every runtime: resolve, connect (to the proxy when the
//! engine chose a hop), then drive the [`Transport`] through `CONNECT` and the TLS handshake.
//!
//! Owns: the blocking setup of one [`haul_core::IoOp::Connect`] and the mapping of its
//! failures to [`IoFailure`] classes (`Dns`, `ConnectFailed`, `Tls`). The blocking runtime
//! calls [`establish`] on the connection's own thread; the async runtimes call it through
//! their blocking pool (`spawn_blocking` / `unblock`) and then register the std socket with
//! their reactor, so no async worker ever blocks on DNS, connect or a handshake. Does not own
//! reading and writing after setup (each runtime moves bytes its own way).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use haul_core::http::Origin;
use haul_core::{IoErrorKind, IoFailure, ProxyHop};

use crate::transport::{TlsSetup, Transport};

/// A connection ready for HTTP/1.1.
#[derive(Debug)]
pub struct Established {
    /// The socket, blocking, with no read timeout and Nagle off.
    pub stream: TcpStream,
    /// The byte transform between plaintext and the socket, when one is needed (TLS or a
    /// tunnel); `None`: plaintext goes to the socket unchanged.
    pub transport: Option<Transport>,
}

/// Connect to `origin` (through `via`), finishing any tunnel and TLS handshake within
/// `timeout`.
pub fn establish(
    origin: &Origin,
    via: Option<&ProxyHop>,
    tls: &TlsSetup,
    timeout: Duration,
) -> Result<Established, IoFailure> {
    let deadline = Instant::now() + timeout;
    let mut transport = Transport::for_connection(origin, via, tls)?;
    let target = via.map(|h| &h.proxy).unwrap_or(origin);
    let mut stream = connect_tcp(target, timeout).map_err(|mut failure| {
        if via.is_some() {
            // The proxy is down, not the origin: say so, and keep it off the origin's breaker.
            failure.kind = IoErrorKind::ProxyUnreachable;
            failure.message = format!(
                "proxy {}:{} unreachable: {}",
                target.host, target.port, failure.message
            );
        }
        failure
    })?;
    if let Some(t) = transport.as_mut() {
        handshake(&mut stream, t, deadline, target)?;
        stream
            .set_read_timeout(None)
            .map_err(|e| setup_failure(&e, target))?;
    }
    Ok(Established { stream, transport })
}

/// Resolve `target` and connect to the first address that answers.
fn connect_tcp(target: &Origin, timeout: Duration) -> Result<TcpStream, IoFailure> {
    let host = target.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => (host, target.port)
            .to_socket_addrs()
            .map_err(|e| IoFailure::new(IoErrorKind::Dns, format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let mut last = IoFailure::new(IoErrorKind::Dns, format!("{host} has no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = IoFailure::new(IoErrorKind::ConnectFailed, format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Exchange setup bytes until the transport is open or `deadline` passes.
fn handshake(
    stream: &mut TcpStream,
    t: &mut Transport,
    deadline: Instant,
    target: &Origin,
) -> Result<(), IoFailure> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(out) = t.take_outgoing() {
            stream
                .write_all(&out)
                .map_err(|e| setup_failure(&e, target))?;
        }
        if t.is_open() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(IoFailure::new(
                IoErrorKind::ConnectFailed,
                format!("setup through {}:{} timed out", target.host, target.port),
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| setup_failure(&e, target))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(setup_failure(&e, target)),
        };
        t.feed_wire(&buf[..n]);
        let advanced = t.advance();
        if advanced.is_err() {
            // Best effort: tell the peer why (a TLS alert) before giving up.
            if let Some(out) = t.take_outgoing() {
                let _ = stream.write_all(&out);
            }
        }
        advanced?;
    }
}

/// A socket error after setup, as the engine's failure class.
pub fn net_failure(e: &std::io::Error) -> IoFailure {
    let kind = match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::TimedOut | ErrorKind::AddrNotAvailable => {
            IoErrorKind::ConnectFailed
        }
        _ => IoErrorKind::Reset,
    };
    IoFailure::new(kind, e.to_string())
}

/// The completion of a request on a connection that is closed or was never established.
pub fn connection_closed() -> haul_core::IoResult {
    haul_core::IoResult::Failed(IoFailure::new(
        IoErrorKind::Cancelled,
        "connection is closed",
    ))
}

/// The completion of a `Send` on a connection whose server sent something (bytes, or its
/// end) that no request asked for. Before a request goes out any input can only be stale:
/// a `408` a server sends to an idle connection before closing it, or bytes past the last
/// response's end; read after the request, it would be taken for that request's response
/// (the bytes of another file saved under this one's name). The engine replaces such a
/// reused connection as one the server closed while idle.
pub fn unsolicited_input() -> haul_core::IoResult {
    haul_core::IoResult::Failed(IoFailure::new(
        IoErrorKind::Reset,
        "the server sent data on the connection before the request (a stale answer); not reused",
    ))
}

fn setup_failure(e: &std::io::Error, target: &Origin) -> IoFailure {
    IoFailure::new(
        IoErrorKind::ConnectFailed,
        format!(
            "connection setup with {}:{} failed: {e}",
            target.host, target.port
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(u: &str) -> Origin {
        Origin::of(&url::Url::parse(u).unwrap()).unwrap()
    }

    /// A port on loopback where nothing listens.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn a_proxy_that_cannot_be_reached_is_named_and_not_blamed_on_the_origin() {
        let port = closed_port();
        let tls = TlsSetup::new(&[]).unwrap();
        let o = origin("https://files.example:8443/");
        for tunnel in [true, false] {
            let hop = ProxyHop {
                proxy: origin(&format!("http://127.0.0.1:{port}/")),
                tunnel,
                authorization: None,
            };
            let err = establish(&o, Some(&hop), &tls, Duration::from_secs(5)).unwrap_err();
            assert_eq!(err.kind, IoErrorKind::ProxyUnreachable, "{err}");
            assert!(
                err.message
                    .contains(&format!("proxy 127.0.0.1:{port} unreachable")),
                "{err}"
            );
        }
        // Without a proxy the same refusal is the origin's.
        let direct = origin(&format!("http://127.0.0.1:{port}/"));
        let err = establish(&direct, None, &tls, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind, IoErrorKind::ConnectFailed, "{err}");
    }
}

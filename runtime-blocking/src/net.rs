//! Sockets: set up on a short-lived thread each (shared `haul_driver::establish`: DNS,
//! connect, proxy `CONNECT`, TLS), then driven from the driver thread itself through one
//! `mio` poller (epoll on Linux): non-blocking reads and writes, no thread per connection.
//!
//! A `Recv` reads the socket at once when it may hold bytes (edge-triggered readiness: a
//! connection is readable until a read would block, and becomes readable again with the
//! poller's next event for it); otherwise it waits for that event. A `Send` writes at once
//! and completes when its last byte left; what the socket does not take waits for
//! writability, behind it the later sends of the connection, in the order asked. With TLS
//! (or a tunnel) the connection's [`Transport`] sits between the socket and the engine, on
//! this one thread.
//!
//! Completions made here go straight back to the engine ([`Net::take_done`]), not through
//! the driver's channel. The poller is also where the driver sleeps: other threads (file
//! workers, connection setup, cancel) wake it with a [`Wake`] after sending their message.
//!
//! Closing drops the socket; a `Recv` or `Send` waiting on the connection completes as
//! closed, and so does every later one. Every request gets exactly one completion.
//!
//! This replaced a reader thread per connection and a sender thread: on a small machine
//! (2 cores) their hand-offs, about five thread switches per small download, cost more than
//! the reads and writes themselves.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haul_core::http::Origin;
use haul_core::{Config, ConnId, IoFailure, IoId, IoOp, IoRequest, IoResult, ProxyHop};
use haul_driver::{
    connection_closed, establish, net_failure, unsolicited_input, Established, Plain, ReadSlab,
    TlsSetup, Transport,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::{Msg, Sink};

/// The poller's token for [`Wake`] (connections use their id).
const WAKE: Token = Token(usize::MAX);

/// Wakes the driver thread from its poll when another thread sent it a message.
pub(crate) struct Wake {
    waker: mio::Waker,
    /// Set by the driver just before it polls, cleared by the first waker (or the driver)
    /// after: only the first message of a sleep pays for the wake-up.
    sleeping: AtomicBool,
}

impl Wake {
    /// Call after sending to the driver's channel.
    pub(crate) fn wake(&self) {
        // The message sent before is visible to the driver's check after its announcement,
        // or this sees the announcement (the fences pair with the one in `Net::wait`).
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// A connection being set up, or up.
enum Conn {
    /// `establish` runs on its thread; a `Recv` asked meanwhile waits. (A connection whose
    /// setup failed is forgotten: every read and send finds it closed.)
    Connecting {
        recv: Option<IoId>,
    },
    /// A plain connection to an IP address, connecting without blocking on this thread (see
    /// [`Net::dial`]); its `Connect` (`connect`) completes once the socket is writable. The
    /// engine's connect timeout bounds it (it closes the connection).
    Dialing {
        stream: TcpStream,
        connect: IoId,
        recv: Option<IoId>,
        addr: std::net::SocketAddr,
    },
    Up(Box<Link>),
}

/// An established connection.
struct Link {
    stream: TcpStream,
    transport: Option<Transport>,
    /// The waiting `Recv`, if any.
    recv: Option<IoId>,
    /// The most bytes the waiting `Recv` takes (see `IoOp::Recv`).
    recv_max: usize,
    /// A read may find bytes (no read would-blocked since the last readiness event).
    readable: bool,
    /// A write may make progress (likewise).
    writable: bool,
    /// Wire bytes not written yet, oldest first, with the send each completes and how much
    /// of them has left.
    sends: VecDeque<(IoId, Bytes, usize)>,
    /// The engine got the connection's end (EOF or a failure): later reads are closed.
    finished: bool,
}

pub(crate) struct Net {
    sink: Sink,
    tls: TlsSetup,
    connect_timeout: Duration,
    poll: Poll,
    events: Events,
    wake: Arc<Wake>,
    conns: BTreeMap<ConnId, Conn>,
    /// Completions made on this thread, for the engine.
    done: Vec<(IoId, IoResult)>,
    slab: ReadSlab,
    /// Wire buffer for connections with a transport.
    wire: Vec<u8>,
}

impl Net {
    /// The poller and its waker; the waker goes into the [`Sink`] before [`Net::new`].
    pub(crate) fn poller() -> std::io::Result<(Poll, Arc<Wake>)> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let wake = Arc::new(Wake {
            waker,
            sleeping: AtomicBool::new(false),
        });
        Ok((poll, wake))
    }

    pub(crate) fn new(
        sink: Sink,
        tls: TlsSetup,
        config: &Config,
        poll: Poll,
        wake: Arc<Wake>,
    ) -> Net {
        Net {
            sink,
            tls,
            connect_timeout: config.connect_timeout,
            poll,
            events: Events::with_capacity(256),
            wake,
            conns: BTreeMap::new(),
            done: Vec::new(),
            slab: ReadSlab::default(),
            wire: Vec::new(),
        }
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        match req.op {
            IoOp::Connect { conn, origin, via } => self.connect(req.id, conn, origin, via),
            IoOp::Send { conn, data } => match self.conns.get_mut(&conn) {
                Some(Conn::Up(link)) => {
                    if link.unsolicited_input(&mut self.wire) {
                        self.done.push((req.id, unsolicited_input()));
                    } else {
                        link.queue_send(req.id, data, &mut self.done);
                        link.flush(&mut self.done);
                    }
                }
                _ => self.done.push((req.id, connection_closed())),
            },
            IoOp::Recv { conn, max } => match self.conns.get_mut(&conn) {
                Some(Conn::Connecting { recv } | Conn::Dialing { recv, .. }) => {
                    *recv = Some(req.id)
                }
                Some(Conn::Up(link)) if !link.finished => {
                    link.recv = Some(req.id);
                    link.recv_max = max.max(1);
                    link.read(&mut self.slab, &mut self.wire, &mut self.done);
                }
                _ => self.done.push((req.id, connection_closed())),
            },
            IoOp::Close { conn } => {
                match self.conns.remove(&conn) {
                    Some(Conn::Connecting { recv: Some(id) }) => {
                        self.done.push((id, connection_closed()));
                    }
                    Some(Conn::Dialing {
                        mut stream,
                        connect,
                        recv,
                        ..
                    }) => {
                        let _ = self.poll.registry().deregister(&mut stream);
                        // Like a setup that ends after its close: the connect completes.
                        self.done.push((connect, IoResult::Done));
                        if let Some(id) = recv {
                            self.done.push((id, connection_closed()));
                        }
                    }
                    Some(Conn::Up(mut link)) => {
                        let _ = self.poll.registry().deregister(&mut link.stream);
                        let _ = link.stream.shutdown(std::net::Shutdown::Both);
                        link.fail_all(&mut self.done);
                    }
                    _ => {}
                }
                self.done.push((req.id, IoResult::Done));
            }
            other => unreachable!("not a network operation: {other:?}"),
        }
    }

    /// Completions made since the last call, in the order they were made.
    pub(crate) fn take_done(&mut self) -> std::vec::Drain<'_, (IoId, IoResult)> {
        self.done.drain(..)
    }

    /// Whether completions wait in [`Net::take_done`].
    pub(crate) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Sleep until a socket is ready, another thread woke the driver, or `timeout` passed
    /// (`None`: no limit); then serve the ready sockets. `pending` is asked after the driver
    /// announced its sleep, so that a message sent just before is not slept over.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>, pending: impl FnOnce() -> bool) {
        self.wake.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let timeout = if pending() || self.has_done() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!(error = %e, "poll failed");
            }
        }
        self.wake.sleeping.store(false, Ordering::SeqCst);
        let ready: Vec<(Token, bool, bool)> = self
            .events
            .iter()
            .filter(|e| e.token() != WAKE)
            .map(|e| {
                let failed = e.is_error();
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || failed,
                    e.is_writable() || e.is_write_closed() || failed,
                )
            })
            .collect();
        for (token, readable, writable) in ready {
            let conn = ConnId(token.0 as u64);
            if let (Some(Conn::Dialing { .. }), true) = (self.conns.get(&conn), writable) {
                self.dialed(conn);
                continue;
            }
            let Some(Conn::Up(link)) = self.conns.get_mut(&conn) else {
                continue;
            };
            if writable {
                link.writable = true;
                link.flush(&mut self.done);
            }
            if readable {
                link.readable = true;
                link.read(&mut self.slab, &mut self.wire, &mut self.done);
            }
        }
    }

    /// A connection's setup ended (on its thread).
    pub(crate) fn on_established(
        &mut self,
        conn: ConnId,
        connect: IoId,
        result: Result<Established, IoFailure>,
    ) {
        let recv = match self.conns.get_mut(&conn) {
            Some(Conn::Connecting { recv }) => recv.take(),
            // Closed while connecting: the socket is dropped, the connect still completes.
            _ => {
                self.done.push((connect, IoResult::Done));
                return;
            }
        };
        let established = result.and_then(|e| {
            e.stream
                .set_nonblocking(true)
                .map_err(|err| net_failure(&err))?;
            let mut stream = TcpStream::from_std(e.stream);
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(conn.0 as usize),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|err| net_failure(&err))?;
            Ok((stream, e.transport))
        });
        match established {
            Ok((stream, transport)) => self.up(conn, connect, stream, transport, recv),
            Err(f) => {
                self.conns.remove(&conn);
                self.setup_failed(connect, f, recv);
            }
        }
    }

    /// A connection is up: its `Connect` completes and a waiting `Recv` reads.
    fn up(
        &mut self,
        conn: ConnId,
        connect: IoId,
        stream: TcpStream,
        transport: Option<Transport>,
        recv: Option<IoId>,
    ) {
        self.done.push((connect, IoResult::Done));
        let mut link = Box::new(Link {
            stream,
            transport,
            recv,
            recv_max: usize::MAX,
            readable: true,
            writable: true,
            sends: VecDeque::new(),
            finished: false,
        });
        link.read(&mut self.slab, &mut self.wire, &mut self.done);
        self.conns.insert(conn, Conn::Up(link));
    }

    /// A connection's setup failed: its `Connect` fails and a waiting `Recv` finds it closed.
    fn setup_failed(&mut self, connect: IoId, failure: IoFailure, recv: Option<IoId>) {
        self.done.push((connect, IoResult::Failed(failure)));
        if let Some(id) = recv {
            self.done.push((id, connection_closed()));
        }
    }

    /// Starts a plain connection to an IP address on this thread, without blocking: no DNS,
    /// no proxy, no handshake, so nothing for a setup thread to do (starting one costs more
    /// than the connect). `false` if `origin` needs the setup thread.
    fn dial(&mut self, id: IoId, conn: ConnId, origin: &Origin, via: Option<&ProxyHop>) -> bool {
        if via.is_some() || origin.scheme != haul_core::http::Scheme::Http {
            return false;
        }
        let host = origin.host.trim_start_matches('[').trim_end_matches(']');
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return false;
        };
        let addr = std::net::SocketAddr::new(ip, origin.port);
        let registered = TcpStream::connect(addr).and_then(|mut stream| {
            let _ = stream.set_nodelay(true);
            self.poll.registry().register(
                &mut stream,
                Token(conn.0 as usize),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match registered {
            Ok(stream) => {
                let dialing = Conn::Dialing {
                    stream,
                    connect: id,
                    recv: None,
                    addr,
                };
                self.conns.insert(conn, dialing);
            }
            Err(e) => {
                let failure = IoFailure::new(
                    haul_core::IoErrorKind::ConnectFailed,
                    format!("{addr}: {e}"),
                );
                self.done.push((id, IoResult::Failed(failure)));
            }
        }
        true
    }

    /// A dialing connection's socket became writable: connected, or failed.
    fn dialed(&mut self, conn: ConnId) {
        let Some(Conn::Dialing { stream, .. }) = self.conns.get(&conn) else {
            return;
        };
        let outcome = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                // Not connected yet (a spurious wake-up): wait for the next event.
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => Err(e),
            },
        };
        let Some(Conn::Dialing {
            mut stream,
            connect,
            recv,
            addr,
        }) = self.conns.remove(&conn)
        else {
            return;
        };
        match outcome {
            Ok(()) => self.up(conn, connect, stream, None, recv),
            Err(e) => {
                let _ = self.poll.registry().deregister(&mut stream);
                let failure = IoFailure::new(
                    haul_core::IoErrorKind::ConnectFailed,
                    format!("{addr}: {e}"),
                );
                self.setup_failed(connect, failure, recv);
            }
        }
    }

    fn connect(&mut self, id: IoId, conn: ConnId, origin: Origin, via: Option<ProxyHop>) {
        if self.dial(id, conn, &origin, via.as_ref()) {
            return;
        }
        self.conns.insert(conn, Conn::Connecting { recv: None });
        let sink = self.sink.clone();
        let (tls, timeout) = (self.tls.clone(), self.connect_timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("haul-{conn}"))
            .spawn(move || {
                let result = establish(&origin, via.as_ref(), &tls, timeout);
                sink.send(Msg::Established(conn, id, Box::new(result)));
            });
        if let Err(e) = spawned {
            self.conns.remove(&conn);
            self.done.push((
                id,
                IoResult::Failed(IoFailure::new(
                    haul_core::IoErrorKind::Other,
                    format!("spawn: {e}"),
                )),
            ));
        }
    }
}

impl Link {
    /// Whether the server sent something no request asked for (see
    /// [`unsolicited_input`]): looked at before each request goes out. Plain TCP peeks; with
    /// TLS what arrived goes to the transport (where a record without plaintext, a session
    /// ticket, is nothing), and any plaintext or an end is unsolicited.
    fn unsolicited_input(&mut self, wire: &mut Vec<u8>) -> bool {
        let Some(t) = self.transport.as_mut() else {
            let mut byte = [0u8; 1];
            return loop {
                match self.stream.peek(&mut byte) {
                    // Bytes, or the end (0).
                    Ok(_) => break true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
        };
        if !t.is_open() {
            return false;
        }
        loop {
            if wire.is_empty() {
                *wire = vec![0; haul_driver::READ_CHUNK];
            }
            match (&self.stream).read(wire) {
                Ok(0) => {
                    t.feed_wire(&[]);
                    break;
                }
                Ok(n) => t.feed_wire(&wire[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        let mut probe = [0u8; 1];
        !matches!(t.read_plain(&mut probe), Ok(Plain::NeedWire))
    }

    /// Queue `data` (through the transport, if any) for writing; complete `id` when it left.
    fn queue_send(&mut self, id: IoId, data: Bytes, done: &mut Vec<(IoId, IoResult)>) {
        let wire = match self.transport.as_mut() {
            None => data,
            Some(t) => {
                if let Err(f) = t.send_plain(&data) {
                    return done.push((id, IoResult::Failed(f)));
                }
                t.take_outgoing().map(Bytes::from).unwrap_or_default()
            }
        };
        self.sends.push_back((id, wire, 0));
    }

    /// Write queued bytes until the socket takes no more.
    fn flush(&mut self, done: &mut Vec<(IoId, IoResult)>) {
        while self.writable {
            let Some((id, data, sent)) = self.sends.front_mut() else {
                return;
            };
            if *sent < data.len() {
                match (&self.stream).write(&data[*sent..]) {
                    Ok(0) => {
                        let e = std::io::Error::from(ErrorKind::WriteZero);
                        return self.fail_sends(&net_failure(&e), done);
                    }
                    Ok(n) => {
                        *sent += n;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.writable = false;
                        return;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return self.fail_sends(&net_failure(&e), done),
                }
            }
            done.push((*id, IoResult::Done));
            self.sends.pop_front();
        }
    }

    /// Every queued send fails with `failure`.
    fn fail_sends(&mut self, failure: &IoFailure, done: &mut Vec<(IoId, IoResult)>) {
        for (id, ..) in self.sends.drain(..) {
            done.push((id, IoResult::Failed(failure.clone())));
        }
    }

    /// Answer the waiting `Recv` if the socket (or the transport) has something for it.
    fn read(&mut self, slab: &mut ReadSlab, wire: &mut Vec<u8>, done: &mut Vec<(IoId, IoResult)>) {
        let Some(id) = self.recv else {
            return;
        };
        let Some(result) = self.try_read(slab, wire) else {
            return;
        };
        self.recv = None;
        if !matches!(result, IoResult::Data(_)) {
            self.finished = true;
        }
        done.push((id, result));
    }

    /// The next read, or `None` if it would block.
    fn try_read(&mut self, slab: &mut ReadSlab, wire: &mut Vec<u8>) -> Option<IoResult> {
        let Some(t) = self.transport.as_mut() else {
            while self.readable {
                let chunk = slab.chunk();
                let room = chunk.len().min(self.recv_max);
                match (&self.stream).read(&mut chunk[..room]) {
                    Ok(0) => return Some(IoResult::Eof),
                    Ok(n) => return Some(IoResult::Data(slab.take(n))),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Some(IoResult::Failed(net_failure(&e))),
                }
            }
            return None;
        };
        loop {
            let chunk = slab.chunk();
            let room = chunk.len().min(self.recv_max);
            match t.read_plain(&mut chunk[..room]) {
                Ok(Plain::Data(n)) => return Some(IoResult::Data(slab.take(n))),
                Ok(Plain::Eof) => return Some(IoResult::Eof),
                Err(f) => return Some(IoResult::Failed(f)),
                Ok(Plain::NeedWire) => {}
            }
            if !self.readable {
                return None;
            }
            if wire.is_empty() {
                *wire = vec![0; haul_driver::READ_CHUNK];
            }
            match (&self.stream).read(wire) {
                // Also the end (n = 0): the transport reports it.
                Ok(n) => t.feed_wire(&wire[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Some(IoResult::Failed(net_failure(&e))),
            }
        }
    }

    /// The connection closed: everything waiting on it completes as closed.
    fn fail_all(&mut self, done: &mut Vec<(IoId, IoResult)>) {
        if let Some(id) = self.recv.take() {
            done.push((id, connection_closed()));
        }
        for (id, ..) in self.sends.drain(..) {
            done.push((id, connection_closed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_core::http::Scheme;
    use std::net::TcpListener;
    use std::sync::mpsc::{self, Receiver};
    use std::time::Instant;

    fn net() -> (Net, Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let config = Config::default();
        let tls = haul_driver::tls_setup(&config).unwrap();
        let (poll, wake) = Net::poller().unwrap();
        let sink = Sink {
            tx,
            wake: wake.clone(),
        };
        (Net::new(sink, tls, &config, poll, wake), rx)
    }

    /// Drive `net` as the driver does until a completion arrives; messages from other
    /// threads are handled on the way.
    fn next(net: &mut Net, rx: &Receiver<Msg>) -> (IoId, IoResult) {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = net.done.first().cloned() {
                net.done.remove(0);
                return c;
            }
            assert!(Instant::now() < give_up, "no completion");
            net.wait(Some(Duration::from_millis(100)), || false);
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Established(conn, id, result) => net.on_established(conn, id, *result),
                    Msg::Done(..)
                    | Msg::CancelAll(_)
                    | Msg::Job(..)
                    | Msg::RateSchedule
                    | Msg::Submit { .. } => panic!("not a network message"),
                }
            }
        }
    }

    fn connect(net: &mut Net, rx: &Receiver<Msg>, port: u16) -> ConnId {
        let conn = ConnId(1);
        let origin = Origin {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port,
        };
        net.start(IoRequest {
            id: IoId(1),
            op: IoOp::Connect {
                conn,
                origin,
                via: None,
            },
        });
        assert!(matches!(next(net, rx), (IoId(1), IoResult::Done)));
        conn
    }

    fn request(net: &mut Net, id: u64, op: IoOp) {
        net.start(IoRequest { id: IoId(id), op });
    }

    #[test]
    fn sends_complete_after_their_bytes_left_in_the_order_asked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        for (id, data) in [(2, "first "), (3, "second "), (4, "third")] {
            let data = Bytes::from_static(data.as_bytes());
            request(&mut net, id, IoOp::Send { conn, data });
        }
        let done: Vec<u64> = (0..3)
            .map(|_| match next(&mut net, &rx) {
                (id, IoResult::Done) => id.0,
                other => panic!("a send failed: {other:?}"),
            })
            .collect();
        assert_eq!(done, vec![2, 3, 4]);
        request(&mut net, 5, IoOp::Close { conn });
        assert!(matches!(next(&mut net, &rx), (IoId(5), IoResult::Done)));
        assert_eq!(server.join().unwrap(), b"first second third");
        // A send on a closed connection fails at once.
        let data = Bytes::from_static(b"late");
        request(&mut net, 6, IoOp::Send { conn, data });
        let (id, r) = next(&mut net, &rx);
        assert_eq!(id, IoId(6));
        assert!(matches!(r, IoResult::Failed(_)), "{r:?}");
    }

    #[test]
    fn a_send_the_socket_cannot_take_completes_once_the_peer_reads_it_and_later_sends_follow() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (go, wait_go) = mpsc::channel::<()>();
        let big = vec![5u8; 32 << 20];
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read nothing until told: the client's socket buffers fill up.
            wait_go.recv().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len()
        });
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        let data = Bytes::from(big);
        request(&mut net, 2, IoOp::Send { conn, data });
        let data = Bytes::from_static(b"tail");
        request(&mut net, 3, IoOp::Send { conn, data });
        // Nothing completes while the peer does not read (the poll returns empty-handed).
        for _ in 0..3 {
            net.wait(Some(Duration::from_millis(50)), || false);
        }
        assert!(net.done.is_empty(), "{:?}", net.done);
        go.send(()).unwrap();
        assert!(matches!(next(&mut net, &rx), (IoId(2), IoResult::Done)));
        assert!(matches!(next(&mut net, &rx), (IoId(3), IoResult::Done)));
        request(&mut net, 4, IoOp::Close { conn });
        assert!(matches!(next(&mut net, &rx), (IoId(4), IoResult::Done)));
        assert_eq!(server.join().unwrap(), (32 << 20) + 4);
    }

    #[test]
    fn reads_come_in_order_then_the_end_then_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (go, wait_go) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello").unwrap();
            // The rest only after the client waited on an empty socket.
            wait_go.recv().unwrap();
            s.write_all(b" world").unwrap();
        });
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        let mut got = Vec::new();
        let mut id = 2;
        loop {
            request(
                &mut net,
                id,
                IoOp::Recv {
                    conn,
                    max: usize::MAX,
                },
            );
            let (done, result) = next(&mut net, &rx);
            assert_eq!(done, IoId(id));
            match result {
                IoResult::Data(d) => got.extend_from_slice(&d),
                IoResult::Eof => break,
                other => panic!("{other:?}"),
            }
            if got == b"hello" {
                // The next Recv waits for the poller: nothing is there yet.
                request(
                    &mut net,
                    100,
                    IoOp::Recv {
                        conn,
                        max: usize::MAX,
                    },
                );
                net.wait(Some(Duration::from_millis(50)), || false);
                assert!(net.done.is_empty(), "a read of an empty socket completed");
                go.send(()).unwrap();
                let (done, result) = next(&mut net, &rx);
                assert_eq!(done, IoId(100));
                let IoResult::Data(d) = result else {
                    panic!("{result:?}")
                };
                got.extend_from_slice(&d);
            }
            id += 1;
        }
        server.join().unwrap();
        assert_eq!(got, b"hello world");
        // After the end, every read finds the connection closed.
        request(
            &mut net,
            200,
            IoOp::Recv {
                conn,
                max: usize::MAX,
            },
        );
        assert!(matches!(
            next(&mut net, &rx),
            (IoId(200), IoResult::Failed(_))
        ));
    }

    #[test]
    fn closing_a_connection_completes_its_waiting_read_as_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        let _peer = listener.accept().unwrap();
        request(
            &mut net,
            2,
            IoOp::Recv {
                conn,
                max: usize::MAX,
            },
        );
        net.wait(Some(Duration::from_millis(20)), || false);
        assert!(net.done.is_empty());
        request(&mut net, 3, IoOp::Close { conn });
        let (id, r) = next(&mut net, &rx);
        assert_eq!(id, IoId(2));
        assert!(matches!(r, IoResult::Failed(_)), "{r:?}");
        assert!(matches!(next(&mut net, &rx), (IoId(3), IoResult::Done)));
    }

    /// Plain http to an address is dialed on the driver's thread; by name it is set up on a
    /// thread of its own (it needs DNS).
    const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

    fn connect_to(net: &mut Net, id: u64, conn: ConnId, host: &str, port: u16) {
        let origin = Origin {
            scheme: Scheme::Http,
            host: host.into(),
            port,
        };
        let via = None;
        request(net, id, IoOp::Connect { conn, origin, via });
    }

    #[test]
    fn a_failed_setup_fails_the_connect_and_every_later_read() {
        for host in HOSTS {
            // A port nobody listens on: bind one, learn it, free it.
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let (mut net, rx) = net();
            let conn = ConnId(7);
            connect_to(&mut net, 1, conn, host, port);
            // A Recv asked while connecting waits for the setup, then finds it closed.
            request(
                &mut net,
                2,
                IoOp::Recv {
                    conn,
                    max: usize::MAX,
                },
            );
            let (id, r) = next(&mut net, &rx);
            assert_eq!(id, IoId(1), "{host}");
            match r {
                IoResult::Failed(f) => assert_eq!(f.kind, haul_core::IoErrorKind::ConnectFailed),
                other => panic!("{host}: {other:?}"),
            }
            assert!(matches!(
                next(&mut net, &rx),
                (IoId(2), IoResult::Failed(_))
            ));
            request(
                &mut net,
                3,
                IoOp::Recv {
                    conn,
                    max: usize::MAX,
                },
            );
            assert!(matches!(
                next(&mut net, &rx),
                (IoId(3), IoResult::Failed(_))
            ));
        }
    }

    #[test]
    fn a_connection_by_address_or_by_name_carries_bytes_both_ways() {
        for host in HOSTS {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let (mut net, rx) = net();
            let conn = ConnId(3);
            connect_to(&mut net, 1, conn, host, port);
            // Asked before the connection is up: answered once it is.
            request(
                &mut net,
                2,
                IoOp::Recv {
                    conn,
                    max: usize::MAX,
                },
            );
            let (mut peer, _) = listener.accept().unwrap();
            assert!(matches!(next(&mut net, &rx), (IoId(1), IoResult::Done)));
            peer.write_all(b"hello").unwrap();
            match next(&mut net, &rx) {
                (IoId(2), IoResult::Data(d)) => assert_eq!(&d[..], b"hello", "{host}"),
                other => panic!("{host}: {other:?}"),
            }
            let data = Bytes::from_static(b"ping");
            request(&mut net, 3, IoOp::Send { conn, data });
            assert!(matches!(next(&mut net, &rx), (IoId(3), IoResult::Done)));
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
        }
    }

    #[test]
    fn closing_a_connection_while_it_connects_completes_its_connect_and_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut net, rx) = net();
        let conn = ConnId(4);
        connect_to(&mut net, 1, conn, "127.0.0.1", port);
        // Nothing polled yet: the connection is still dialing when it is closed.
        assert!(matches!(net.conns.get(&conn), Some(Conn::Dialing { .. })));
        request(
            &mut net,
            2,
            IoOp::Recv {
                conn,
                max: usize::MAX,
            },
        );
        request(&mut net, 3, IoOp::Close { conn });
        let mut got: Vec<IoId> = (0..3).map(|_| next(&mut net, &rx).0).collect();
        got.sort();
        assert_eq!(got, vec![IoId(1), IoId(2), IoId(3)]);
        assert!(net.conns.is_empty());
    }

    #[test]
    fn a_message_from_another_thread_wakes_a_sleeping_driver() {
        let (mut net, rx) = net();
        let sink = net.sink.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sink.send(Msg::CancelAll(haul_core::CancelMode::KeepPartial));
        });
        let start = Instant::now();
        // As the driver does: the channel is asked after the sleep is announced. Without
        // the wake each of these polls would sleep the whole minute.
        let mut got = None;
        while got.is_none() {
            net.wait(Some(Duration::from_secs(60)), || {
                got = rx.try_recv().ok();
                got.is_some()
            });
            got = got.or_else(|| rx.try_recv().ok());
        }
        assert!(matches!(got, Some(Msg::CancelAll(_))));
        assert!(start.elapsed() < Duration::from_secs(30));
        sender.join().unwrap();
    }
}

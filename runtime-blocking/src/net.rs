//! Sockets: one thread per connection that sets up (shared `haul_driver::establish`: DNS,
//! connect, proxy `CONNECT`, TLS), then reads ahead of the engine and pushes each read to
//! the driver thread unasked, up to [`READS_AHEAD`] reads not yet taken.
//!
//! The driver thread keeps each connection's pushed reads and answers `Recv` from them, on
//! its own thread when one is there (the common case: the reader got the response while the
//! engine handled the previous one). A read then costs the reader's wake-up by the socket and
//! the driver's by the channel, instead of also a hand-off of the request to the reader and
//! its wake-up for it. The reader takes a credit from a bounded channel before each read, and
//! the driver gives one back per read it hands to the engine: a reader whose reads are not
//! taken waits, so memory stays bounded.
//!
//! Closing shuts the socket down and drops the credits, which ends the reader; a `Recv`
//! waiting on the connection completes as closed, and so does every later one. Every
//! request gets exactly one completion.
//!
//! Requests go out through one sender thread for all connections, in the order asked. With
//! TLS (or a tunnel) the shared [`Transport`] sits between the socket and the engine behind a
//! lock that is never held across a blocking socket call, so the reader can wait for bytes
//! while the sender writes the next request.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_core::http::Origin;
use haul_core::{Config, ConnId, IoFailure, IoId, IoOp, IoRequest, IoResult, ProxyHop};
use haul_driver::{
    connection_closed, establish, net_failure, Completions, Plain, ReadSlab, TlsSetup, Transport,
};

use crate::{Msg, Sink, SEND_TIMEOUT};

/// Reads a connection's reader may push before the engine has taken them.
const READS_AHEAD: usize = 2;

/// An established connection, shared by its reader thread and the driver thread (sends).
struct Link {
    stream: TcpStream,
    transport: Option<Mutex<Transport>>,
    /// Serialises writers so TLS records leave in the order they were sealed.
    writing: Mutex<()>,
}

impl Link {
    fn send(&self, data: &[u8]) -> IoResult {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let out = match &self.transport {
            None => return write(&self.stream, data),
            Some(t) => {
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(f) = t.send_plain(data) {
                    return IoResult::Failed(f);
                }
                t.take_outgoing()
            }
        };
        match out {
            Some(out) => write(&self.stream, &out),
            None => IoResult::Done,
        }
    }

    fn read(&self, slab: &mut ReadSlab, wire: &mut Vec<u8>) -> IoResult {
        let Some(t) = &self.transport else {
            return read_some(&self.stream, slab);
        };
        loop {
            let got = t
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_plain(slab.chunk());
            match got {
                Ok(Plain::Data(n)) => return IoResult::Data(slab.take(n)),
                Ok(Plain::Eof) => return IoResult::Eof,
                Err(f) => return IoResult::Failed(f),
                Ok(Plain::NeedWire) => {}
            }
            if wire.is_empty() {
                *wire = vec![0; haul_driver::READ_CHUNK];
            }
            match (&self.stream).read(wire) {
                Ok(n) => t
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .feed_wire(&wire[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return IoResult::Failed(net_failure(&e)),
            }
        }
    }
}

fn write(mut stream: &TcpStream, data: &[u8]) -> IoResult {
    match stream.write_all(data) {
        Ok(()) => IoResult::Done,
        Err(e) => IoResult::Failed(net_failure(&e)),
    }
}

/// The driver thread's view of a connection.
struct ConnHandle {
    /// One credit per read pushed and not taken yet (see the module docs).
    credits: Receiver<()>,
    /// The established link, for sends and for shutdown on close.
    link: Arc<Mutex<Option<Arc<Link>>>>,
    closed: Arc<AtomicBool>,
    /// Reads pushed by the reader, oldest first.
    ready: VecDeque<IoResult>,
    /// A `Recv` waiting for the next read.
    waiting: Option<IoId>,
    /// The engine got the connection's end (EOF or a failure): later reads are closed.
    finished: bool,
}

impl ConnHandle {
    /// Hand `read` to the engine: take back its credit, note the end of the stream.
    fn take(&mut self, read: IoResult) -> IoResult {
        let _ = self.credits.try_recv();
        if !matches!(read, IoResult::Data(_)) {
            self.finished = true;
        }
        read
    }
}

pub(crate) struct Net {
    sink: Sink,
    tls: TlsSetup,
    conns: BTreeMap<ConnId, ConnHandle>,
    connect_timeout: Duration,
    /// The sender thread's queue, once started (see [`sender`]).
    sends: Option<mpsc::Sender<(IoId, Arc<Link>, bytes::Bytes)>>,
}

impl Net {
    pub(crate) fn new(sink: Sink, tls: TlsSetup, config: &Config) -> Net {
        Net {
            sink,
            tls,
            conns: BTreeMap::new(),
            connect_timeout: config.connect_timeout,
            sends: None,
        }
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        match req.op {
            IoOp::Connect { conn, origin, via } => self.connect(req.id, conn, origin, via),
            IoOp::Send { conn, data } => {
                let Some(link) = self.conns.get(&conn).and_then(|h| current(&h.link)) else {
                    return self.sink.complete(req.id, connection_closed());
                };
                if self.sends.is_none() {
                    let (tx, rx) = mpsc::channel();
                    let sink = self.sink.clone();
                    let started = std::thread::Builder::new()
                        .name("haul-send".into())
                        .spawn(move || sender(rx, sink));
                    if started.is_ok() {
                        self.sends = Some(tx);
                    }
                }
                let unsent = match &self.sends {
                    Some(q) => q.send((req.id, link, data)).err().map(|e| e.0),
                    None => Some((req.id, link, data)),
                };
                // Without a sender thread, send here.
                if let Some((id, link, data)) = unsent {
                    self.sink.complete(id, link.send(&data));
                }
            }
            IoOp::Recv { conn } => {
                let r = match self.conns.get_mut(&conn) {
                    Some(h) if h.finished => connection_closed(),
                    Some(h) => match h.ready.pop_front() {
                        Some(read) => h.take(read),
                        None => {
                            h.waiting = Some(req.id);
                            return;
                        }
                    },
                    None => connection_closed(),
                };
                self.sink.complete(req.id, r);
            }
            IoOp::Close { conn } => {
                if let Some(h) = self.conns.remove(&conn) {
                    h.closed.store(true, Ordering::SeqCst);
                    if let Some(link) = current(&h.link) {
                        let _ = link.stream.shutdown(Shutdown::Both);
                    }
                    if let Some(waiting) = h.waiting {
                        self.sink.complete(waiting, connection_closed());
                    }
                    // Dropping the credits ends the reader at its next read.
                }
                self.sink.complete(req.id, IoResult::Done);
            }
            other => unreachable!("not a network operation: {other:?}"),
        }
    }

    /// A read `conn`'s reader pushed: the completion of the `Recv` waiting for it, if one is.
    pub(crate) fn on_read(&mut self, conn: ConnId, read: IoResult) -> Option<(IoId, IoResult)> {
        // Reads of a connection closed meanwhile are dropped.
        let h = self.conns.get_mut(&conn)?;
        match h.waiting.take() {
            Some(id) => Some((id, h.take(read))),
            None => {
                h.ready.push_back(read);
                None
            }
        }
    }

    fn connect(&mut self, id: IoId, conn: ConnId, origin: Origin, via: Option<ProxyHop>) {
        let (credit, credits) = mpsc::sync_channel(READS_AHEAD);
        let link = Arc::new(Mutex::new(None));
        let closed = Arc::new(AtomicBool::new(false));
        self.conns.insert(
            conn,
            ConnHandle {
                credits,
                link: link.clone(),
                closed: closed.clone(),
                ready: VecDeque::new(),
                waiting: None,
                finished: false,
            },
        );
        let sink = self.sink.clone();
        let (tls, timeout) = (self.tls.clone(), self.connect_timeout);
        let setup = move || establish(&origin, via.as_ref(), &tls, timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("haul-{conn}"))
            .spawn(move || connection_thread(id, conn, setup, link, closed, credit, sink));
        if let Err(e) = spawned {
            self.conns.remove(&conn);
            self.sink.complete(
                id,
                IoResult::Failed(IoFailure::new(
                    haul_core::IoErrorKind::Other,
                    format!("spawn: {e}"),
                )),
            );
        }
    }
}

fn current(slot: &Mutex<Option<Arc<Link>>>) -> Option<Arc<Link>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Writes requests for every connection, in the order they were asked: a send on loopback
/// also runs the receiving side's TCP processing, which would otherwise take about a tenth
/// of the driver thread in a run of many small downloads. Ends when the driver drops its
/// queue.
fn sender(rx: Receiver<(IoId, Arc<Link>, bytes::Bytes)>, sink: Sink) {
    for (id, link, data) in rx {
        let r = link.send(&data);
        sink.complete(id, r);
    }
}

fn connection_thread(
    connect_id: IoId,
    conn: ConnId,
    setup: impl FnOnce() -> Result<haul_driver::Established, IoFailure>,
    slot: Arc<Mutex<Option<Arc<Link>>>>,
    closed: Arc<AtomicBool>,
    credit: SyncSender<()>,
    sink: Sink,
) {
    let link = match setup() {
        Ok(e) => {
            let _ = e.stream.set_write_timeout(Some(SEND_TIMEOUT));
            let link = Arc::new(Link {
                stream: e.stream,
                transport: e.transport.map(Mutex::new),
                writing: Mutex::new(()),
            });
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
            if closed.load(Ordering::SeqCst) {
                // Closed while connecting: the close may have missed the socket.
                let _ = link.stream.shutdown(Shutdown::Both);
            }
            sink.complete(connect_id, IoResult::Done);
            link
        }
        Err(f) => {
            sink.complete(connect_id, IoResult::Failed(f));
            // Any read of a connection that never came up finds it closed.
            let _ = sink.0.send(Msg::Read(conn, connection_closed()));
            return;
        }
    };
    let mut slab = ReadSlab::default();
    let mut wire = Vec::new();
    // A credit per read; none left while READS_AHEAD reads wait to be taken. The send fails
    // once the connection is closed (its credits dropped).
    while credit.send(()).is_ok() {
        let read = link.read(&mut slab, &mut wire);
        let end = !matches!(read, IoResult::Data(_));
        if sink.0.send(Msg::Read(conn, read)).is_err() || end {
            return;
        }
    }
}

fn read_some(mut stream: &TcpStream, slab: &mut ReadSlab) -> IoResult {
    loop {
        match stream.read(slab.chunk()) {
            Ok(0) => return IoResult::Eof,
            Ok(n) => return IoResult::Data(slab.take(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return IoResult::Failed(net_failure(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_core::http::Scheme;
    use std::net::TcpListener;

    fn net() -> (Net, Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let config = Config::default();
        let tls = haul_driver::tls_setup(&config).unwrap();
        (Net::new(Sink(tx), tls, &config), rx)
    }

    fn next(rx: &Receiver<Msg>) -> Msg {
        rx.recv_timeout(Duration::from_secs(10)).expect("a message")
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
        assert!(matches!(next(rx), Msg::Done(IoId(1), IoResult::Done)));
        conn
    }

    fn recv(net: &mut Net, conn: ConnId, id: u64) {
        net.start(IoRequest {
            id: IoId(id),
            op: IoOp::Recv { conn },
        });
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
            net.start(IoRequest {
                id: IoId(id),
                op: IoOp::Send {
                    conn,
                    data: bytes::Bytes::from_static(data.as_bytes()),
                },
            });
        }
        let mut done = Vec::new();
        while done.len() < 3 {
            match next(&rx) {
                Msg::Done(id, IoResult::Done) => done.push(id.0),
                Msg::Read(..) => {}
                _ => panic!("a send failed"),
            }
        }
        assert_eq!(done, vec![2, 3, 4]);
        net.start(IoRequest {
            id: IoId(5),
            op: IoOp::Close { conn },
        });
        assert_eq!(server.join().unwrap(), b"first second third");
        // A send on a closed connection fails at once.
        net.start(IoRequest {
            id: IoId(6),
            op: IoOp::Send {
                conn,
                data: bytes::Bytes::from_static(b"late"),
            },
        });
        loop {
            match next(&rx) {
                Msg::Done(IoId(6), r) => {
                    assert!(matches!(r, IoResult::Failed(_)), "{r:?}");
                    break;
                }
                _ => continue,
            }
        }
    }

    #[test]
    fn a_reader_pushes_at_most_two_reads_until_the_engine_takes_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Far more than two reads' worth; the writes block once the buffers fill.
            let _ = s.write_all(&vec![7u8; 16 * haul_driver::READ_CHUNK]);
        });
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        let mut pushed = 0;
        let mut bytes = 0;
        while pushed < READS_AHEAD {
            let Msg::Read(c, IoResult::Data(d)) = next(&rx) else {
                panic!("not a read")
            };
            assert_eq!(c, conn);
            pushed += 1;
            bytes += d.len();
            assert!(net.on_read(c, IoResult::Data(d)).is_none(), "no Recv waits");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "a third read before any was taken");
        // Taking one (from the kept reads, on this thread) lets the reader read once more.
        recv(&mut net, conn, 2);
        let (mut answered, mut read_again) = (false, false);
        for _ in 0..2 {
            match next(&rx) {
                Msg::Done(IoId(2), IoResult::Data(_)) => answered = true,
                Msg::Read(_, IoResult::Data(_)) => read_again = true,
                _ => panic!("neither the answer nor a new read"),
            }
        }
        assert!(answered && read_again);
        assert!(bytes > 0);
        net.start(IoRequest {
            id: IoId(3),
            op: IoOp::Close { conn },
        });
        assert!(matches!(next(&rx), Msg::Done(IoId(3), IoResult::Done)));
        server.join().unwrap();
    }

    #[test]
    fn reads_are_taken_in_order_then_the_end_then_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello").unwrap();
        });
        let (mut net, rx) = net();
        let conn = connect(&mut net, &rx, port);
        server.join().unwrap();
        // Each Recv is answered from the kept reads or by the next push, in order.
        let mut got = Vec::new();
        let mut id = 2;
        recv(&mut net, conn, id);
        loop {
            let (done, result) = match next(&rx) {
                Msg::Read(c, read) => match net.on_read(c, read) {
                    Some(completion) => completion,
                    None => continue,
                },
                Msg::Done(done, result) => (done, result),
                Msg::CancelAll => panic!("no cancel was sent"),
            };
            assert_eq!(done, IoId(id), "completions come in request order");
            match result {
                IoResult::Data(d) => got.extend_from_slice(&d),
                IoResult::Eof => break,
                other => panic!("{other:?}"),
            }
            id += 1;
            recv(&mut net, conn, id);
        }
        assert_eq!(got, b"hello");
        // After the end, every read finds the connection closed.
        recv(&mut net, conn, 100);
        let Msg::Done(IoId(100), IoResult::Failed(_)) = next(&rx) else {
            panic!("not closed")
        };
    }
}

//! Sockets: one thread per connection that sets up (shared `haul_driver::establish`: DNS,
//! connect, proxy `CONNECT`, TLS), then reads one buffer ahead.
//!
//! Closing shuts the socket down from the driver thread, which unblocks the reader; the
//! reader then completes whatever it was asked and the close itself. Every request gets
//! exactly one completion. With TLS (or a tunnel) the shared [`Transport`] sits between the
//! socket and the engine behind a lock that is never held across a blocking socket call, so
//! the reader can wait for bytes while the driver thread writes the next request.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_core::http::Origin;
use haul_core::{Config, ConnId, IoFailure, IoId, IoOp, IoRequest, IoResult, ProxyHop};
use haul_driver::{
    connection_closed, establish, net_failure, Completions, Plain, ReadSlab, TlsSetup, Transport,
};

use crate::{Sink, SEND_TIMEOUT};

enum Cmd {
    Recv(IoId),
    Close(IoId),
}

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
    cmds: Sender<Cmd>,
    /// The established link, for sends and for shutdown on close.
    link: Arc<Mutex<Option<Arc<Link>>>>,
    closed: Arc<AtomicBool>,
}

pub(crate) struct Net {
    sink: Sink,
    tls: TlsSetup,
    conns: BTreeMap<ConnId, ConnHandle>,
    connect_timeout: Duration,
}

impl Net {
    pub(crate) fn new(sink: Sink, tls: TlsSetup, config: &Config) -> Net {
        Net {
            sink,
            tls,
            conns: BTreeMap::new(),
            connect_timeout: config.connect_timeout,
        }
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        match req.op {
            IoOp::Connect { conn, origin, via } => self.connect(req.id, conn, origin, via),
            IoOp::Send { conn, data } => {
                let link = self.conns.get(&conn).and_then(|h| current(&h.link));
                let r = match link {
                    Some(link) => link.send(&data),
                    None => connection_closed(),
                };
                self.sink.complete(req.id, r);
            }
            IoOp::Recv { conn } => match self.conns.get(&conn) {
                Some(h) => {
                    if let Err(mpsc::SendError(Cmd::Recv(id))) = h.cmds.send(Cmd::Recv(req.id)) {
                        self.sink.complete(id, connection_closed());
                    }
                }
                None => self.sink.complete(req.id, connection_closed()),
            },
            IoOp::Close { conn } => match self.conns.remove(&conn) {
                Some(h) => {
                    h.closed.store(true, Ordering::SeqCst);
                    if let Some(link) = current(&h.link) {
                        let _ = link.stream.shutdown(Shutdown::Both);
                    }
                    if let Err(mpsc::SendError(Cmd::Close(id))) = h.cmds.send(Cmd::Close(req.id)) {
                        self.sink.complete(id, IoResult::Done);
                    }
                }
                None => self.sink.complete(req.id, IoResult::Done),
            },
            other => unreachable!("not a network operation: {other:?}"),
        }
    }

    fn connect(&mut self, id: IoId, conn: ConnId, origin: Origin, via: Option<ProxyHop>) {
        let (cmds, rx) = mpsc::channel();
        let link = Arc::new(Mutex::new(None));
        let closed = Arc::new(AtomicBool::new(false));
        self.conns.insert(
            conn,
            ConnHandle {
                cmds,
                link: link.clone(),
                closed: closed.clone(),
            },
        );
        let sink = self.sink.clone();
        let (tls, timeout) = (self.tls.clone(), self.connect_timeout);
        let setup = move || establish(&origin, via.as_ref(), &tls, timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("haul-{conn}"))
            .spawn(move || connection_thread(id, setup, link, closed, rx, sink));
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

fn connection_thread(
    connect_id: IoId,
    setup: impl FnOnce() -> Result<haul_driver::Established, IoFailure>,
    slot: Arc<Mutex<Option<Arc<Link>>>>,
    closed: Arc<AtomicBool>,
    cmds: Receiver<Cmd>,
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
            Some(link)
        }
        Err(f) => {
            sink.complete(connect_id, IoResult::Failed(f));
            None
        }
    };
    let mut slab = ReadSlab::default();
    let mut wire = Vec::new();
    // One buffer read ahead of the engine's requests.
    let mut ahead: Option<IoResult> = None;
    let mut finished = link.is_none();
    loop {
        if ahead.is_none() && !finished {
            let link = link.as_ref().expect("connected");
            ahead = Some(link.read(&mut slab, &mut wire));
        }
        match cmds.recv() {
            Ok(Cmd::Recv(id)) => {
                let r = if finished {
                    connection_closed()
                } else {
                    ahead.take().expect("read ahead")
                };
                if !matches!(r, IoResult::Data(_)) {
                    finished = true;
                }
                sink.complete(id, r);
            }
            Ok(Cmd::Close(id)) => {
                slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                drop(link);
                sink.complete(id, IoResult::Done);
                return;
            }
            Err(_) => return,
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

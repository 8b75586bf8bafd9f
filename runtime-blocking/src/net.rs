//! Sockets: one thread per connection that connects, then reads one buffer ahead.
//!
//! Closing shuts the socket down from the driver thread, which unblocks the reader; the
//! reader then completes whatever it was asked and the close itself. Every request gets
//! exactly one completion.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use haul_core::http::{Origin, Scheme};
use haul_core::{Config, ConnId, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult};

use crate::{Msg, SEND_TIMEOUT};

/// Size of one socket read.
const READ_CHUNK: usize = 256 * 1024;
/// Size of the slab reads are carved from (amortises allocation).
const SLAB: usize = 4 * 1024 * 1024;

enum Cmd {
    Recv(IoId),
    Close(IoId),
}

struct ConnHandle {
    cmds: Sender<Cmd>,
    /// The connected socket, for sends and for shutdown on close.
    stream: Arc<Mutex<Option<TcpStream>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) struct Net {
    tx: Sender<Msg>,
    conns: BTreeMap<ConnId, ConnHandle>,
    connect_timeout: Duration,
}

impl Net {
    pub(crate) fn new(tx: Sender<Msg>, config: &Config) -> Net {
        Net {
            tx,
            conns: BTreeMap::new(),
            connect_timeout: config.connect_timeout,
        }
    }

    fn done(&self, id: IoId, r: IoResult) {
        let _ = self.tx.send(Msg::Done(id, r));
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        match req.op {
            IoOp::Connect { conn, origin, via } => {
                // Until tunnels land, a plain-HTTP hop means connecting to the proxy.
                let target = via.map(|h| h.proxy).unwrap_or(origin);
                self.connect(req.id, conn, target)
            }
            IoOp::Send { conn, data } => {
                let r = match self.conns.get(&conn) {
                    Some(h) => send(h, &data),
                    None => gone(),
                };
                self.done(req.id, r);
            }
            IoOp::Recv { conn } => match self.conns.get(&conn) {
                Some(h) => {
                    if let Err(mpsc::SendError(Cmd::Recv(id))) = h.cmds.send(Cmd::Recv(req.id)) {
                        self.done(id, gone());
                    }
                }
                None => self.done(req.id, gone()),
            },
            IoOp::Close { conn } => match self.conns.remove(&conn) {
                Some(h) => {
                    h.closed.store(true, std::sync::atomic::Ordering::SeqCst);
                    if let Some(s) = h.stream.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    if let Err(mpsc::SendError(Cmd::Close(id))) = h.cmds.send(Cmd::Close(req.id)) {
                        self.done(id, IoResult::Done);
                    }
                }
                None => self.done(req.id, IoResult::Done),
            },
            other => unreachable!("not a network operation: {other:?}"),
        }
    }

    fn connect(&mut self, id: IoId, conn: ConnId, origin: Origin) {
        let (cmds, rx) = mpsc::channel();
        let stream = Arc::new(Mutex::new(None));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.conns.insert(
            conn,
            ConnHandle {
                cmds,
                stream: stream.clone(),
                closed: closed.clone(),
            },
        );
        let tx = self.tx.clone();
        let timeout = self.connect_timeout;
        let spawned = std::thread::Builder::new()
            .name(format!("haul-{conn}"))
            .spawn(move || connection_thread(id, origin, timeout, stream, closed, rx, tx));
        if let Err(e) = spawned {
            self.conns.remove(&conn);
            self.done(
                id,
                IoResult::Failed(IoFailure::new(IoErrorKind::Other, format!("spawn: {e}"))),
            );
        }
    }
}

fn gone() -> IoResult {
    IoResult::Failed(IoFailure::new(
        IoErrorKind::Cancelled,
        "connection is closed",
    ))
}

fn send(h: &ConnHandle, data: &[u8]) -> IoResult {
    let guard = h.stream.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut s) = guard.as_ref() else {
        return gone();
    };
    match s.write_all(data) {
        Ok(()) => IoResult::Done,
        Err(e) => IoResult::Failed(net_failure(&e)),
    }
}

pub(crate) fn net_failure(e: &std::io::Error) -> IoFailure {
    let kind = match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::TimedOut | ErrorKind::AddrNotAvailable => {
            IoErrorKind::ConnectFailed
        }
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof
        | ErrorKind::NotConnected
        | ErrorKind::WouldBlock => IoErrorKind::Reset,
        _ => IoErrorKind::Reset,
    };
    IoFailure::new(kind, e.to_string())
}

fn establish(origin: &Origin, timeout: Duration) -> Result<TcpStream, IoFailure> {
    if origin.scheme == Scheme::Https {
        return Err(IoFailure::new(
            IoErrorKind::Tls,
            "https is not supported by this runtime build yet",
        ));
    }
    let host = origin.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (host, origin.port)
        .to_socket_addrs()
        .map_err(|e| IoFailure::new(IoErrorKind::Dns, format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(IoFailure::new(
            IoErrorKind::Dns,
            format!("{host} has no address"),
        ));
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(SEND_TIMEOUT));
                return Ok(s);
            }
            Err(e) => {
                last = Some(IoFailure::new(
                    IoErrorKind::ConnectFailed,
                    format!("{addr}: {e}"),
                ))
            }
        }
    }
    Err(last.expect("at least one address tried"))
}

fn connection_thread(
    connect_id: IoId,
    origin: Origin,
    timeout: Duration,
    slot: Arc<Mutex<Option<TcpStream>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    cmds: Receiver<Cmd>,
    tx: Sender<Msg>,
) {
    let done = |id, r| {
        let _ = tx.send(Msg::Done(id, r));
    };
    let mut reader = match establish(&origin, timeout) {
        Ok(s) => {
            let reader = s.try_clone();
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            if closed.load(std::sync::atomic::Ordering::SeqCst) {
                // Closed while connecting: the close may have missed the socket.
                if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            match reader {
                Ok(r) => {
                    done(connect_id, IoResult::Done);
                    Some(r)
                }
                Err(e) => {
                    done(connect_id, IoResult::Failed(net_failure(&e)));
                    None
                }
            }
        }
        Err(f) => {
            done(connect_id, IoResult::Failed(f));
            None
        }
    };
    let mut slab = BytesMut::new();
    // One buffer read ahead of the engine's requests.
    let mut ahead: Option<IoResult> = None;
    let mut finished = reader.is_none();
    loop {
        if ahead.is_none() && !finished {
            let r = reader.as_mut().expect("connected");
            ahead = Some(read_some(r, &mut slab));
        }
        match cmds.recv() {
            Ok(Cmd::Recv(id)) => {
                let r = if finished {
                    gone()
                } else {
                    ahead.take().expect("read ahead")
                };
                if !matches!(r, IoResult::Data(_)) {
                    finished = true;
                }
                done(id, r);
            }
            Ok(Cmd::Close(id)) => {
                drop(reader.take());
                slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                done(id, IoResult::Done);
                return;
            }
            Err(_) => return,
        }
    }
}

fn read_some(r: &mut TcpStream, slab: &mut BytesMut) -> IoResult {
    if slab.len() < READ_CHUNK {
        *slab = BytesMut::zeroed(SLAB);
    }
    loop {
        match r.read(&mut slab[..READ_CHUNK]) {
            Ok(0) => return IoResult::Eof,
            Ok(n) => return IoResult::Data(slab.split_to(n).freeze()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return IoResult::Failed(net_failure(&e)),
        }
    }
}

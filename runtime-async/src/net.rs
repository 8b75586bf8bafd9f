//! Connections: one task per connection that sets up (on the blocking pool), then reads one
//! buffer ahead of the engine and writes its requests.
//!
//! Owns: the table from [`ConnId`] to each connection task's command queue, and moving bytes
//! between the socket and the engine (through the shared [`Transport`] when TLS or a tunnel
//! is in play). Every request gets exactly one completion: a request for a connection that
//! is gone completes with a `Cancelled` failure. Does not own setup itself
//! ([`haul_driver::establish`]) nor any HTTP.

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures_channel::oneshot;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use haul_core::{ConnId, IoFailure, IoId, IoOp, IoRequest, IoResult};
use haul_driver::{
    connection_closed, establish, net_failure, unsolicited_input, Completions, Established, Plain,
    ReadSlab, TlsSetup, Transport,
};

use crate::driver::Sink;
use crate::{AsyncRuntime, AsyncSocket};

enum Cmd {
    Send(IoId, Bytes),
    /// A `Recv` and the most bytes it takes.
    Recv(IoId, usize),
    Close(IoId),
}

pub(crate) struct Net<R: AsyncRuntime> {
    runtime: R,
    sink: Sink,
    tls: TlsSetup,
    connect_timeout: Duration,
    conns: BTreeMap<ConnId, UnboundedSender<Cmd>>,
}

impl<R: AsyncRuntime> Net<R> {
    pub(crate) fn new(runtime: R, sink: Sink, tls: TlsSetup, connect_timeout: Duration) -> Self {
        Net {
            runtime,
            sink,
            tls,
            connect_timeout,
            conns: BTreeMap::new(),
        }
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        let (conn, cmd) = match req.op {
            IoOp::Connect { conn, origin, via } => {
                let (tx, rx) = mpsc::unbounded();
                self.conns.insert(conn, tx);
                let (tls, timeout) = (self.tls.clone(), self.connect_timeout);
                let setup = move || establish(&origin, via.as_ref(), &tls, timeout);
                let task = connection(self.runtime.clone(), req.id, setup, rx, self.sink.clone());
                self.runtime.spawn(task);
                return;
            }
            IoOp::Send { conn, data } => (conn, Cmd::Send(req.id, data)),
            IoOp::Recv { conn, max } => (conn, Cmd::Recv(req.id, max.max(1))),
            IoOp::Close { conn } => match self.conns.remove(&conn) {
                Some(q) => {
                    if q.unbounded_send(Cmd::Close(req.id)).is_err() {
                        self.sink.complete(req.id, IoResult::Done);
                    }
                    return;
                }
                None => return self.sink.complete(req.id, IoResult::Done),
            },
            other => unreachable!("not a network operation: {other:?}"),
        };
        let sent = match self.conns.get(&conn) {
            Some(q) => q.unbounded_send(cmd).map_err(|e| e.into_inner()),
            None => Err(cmd),
        };
        if let Err(Cmd::Send(id, _) | Cmd::Recv(id, _) | Cmd::Close(id)) = sent {
            self.sink.complete(id, connection_closed());
        }
    }
}

/// A connected socket and what it takes to read and write plaintext on it.
struct Link<S> {
    socket: S,
    transport: Option<Transport>,
    slab: ReadSlab,
    /// Wire bytes read for the transport (TLS only).
    wire: Vec<u8>,
}

impl<S: AsyncSocket> Link<S> {
    /// The next plaintext bytes. Dropping the future loses nothing: bytes read from the
    /// socket are in the transport before the next await.
    async fn read(&mut self) -> IoResult {
        let Some(t) = self.transport.as_mut() else {
            return match self.socket.read(self.slab.chunk()).await {
                Ok(0) => IoResult::Eof,
                Ok(n) => IoResult::Data(self.slab.take(n)),
                Err(e) => IoResult::Failed(net_failure(&e)),
            };
        };
        loop {
            match t.read_plain(self.slab.chunk()) {
                Ok(Plain::Data(n)) => return IoResult::Data(self.slab.take(n)),
                Ok(Plain::Eof) => return IoResult::Eof,
                Err(f) => return IoResult::Failed(f),
                Ok(Plain::NeedWire) => {}
            }
            if self.wire.is_empty() {
                self.wire = vec![0; haul_driver::READ_CHUNK];
            }
            match self.socket.read(&mut self.wire).await {
                Ok(n) => t.feed_wire(&self.wire[..n]),
                Err(e) => return IoResult::Failed(net_failure(&e)),
            }
        }
    }

    async fn send(&mut self, data: &[u8]) -> IoResult {
        let Some(t) = self.transport.as_mut() else {
            return match self.socket.write_all(data).await {
                Ok(()) => IoResult::Done,
                Err(e) => IoResult::Failed(net_failure(&e)),
            };
        };
        if let Err(f) = t.send_plain(data) {
            return IoResult::Failed(f);
        }
        match t.take_outgoing() {
            Some(out) => match self.socket.write_all(&out).await {
                Ok(()) => IoResult::Done,
                Err(e) => IoResult::Failed(net_failure(&e)),
            },
            None => IoResult::Done,
        }
    }
}

/// Run `work` on the blocking pool; `None` if the pool dropped it.
async fn unblock<R: AsyncRuntime, T: Send + 'static>(
    runtime: &R,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    runtime.spawn_blocking(Box::new(move || {
        let _ = tx.send(work());
    }));
    rx.await.ok()
}

/// One connection's life: set up, then serve the engine's requests until closed.
async fn connection<R: AsyncRuntime>(
    runtime: R,
    connect_id: IoId,
    setup: impl FnOnce() -> Result<Established, IoFailure> + Send + 'static,
    mut cmds: UnboundedReceiver<Cmd>,
    sink: Sink,
) {
    let setup = {
        let runtime = runtime.clone();
        async move { unblock(&runtime, setup).await }
    };
    // A close while setting up ends the connection at once; setup finishes in the background.
    let established = match select(pin!(setup), cmds.next()).await {
        Either::Left((r, _)) => r,
        Either::Right((cmd, _)) => {
            sink.complete(connect_id, connection_closed());
            if let Some(cmd) = cmd {
                refuse(&sink, cmd);
            }
            return serve_closed(cmds, &sink).await;
        }
    };
    let registered = match established {
        Some(Ok(e)) => e
            .stream
            .set_nonblocking(true)
            .and_then(|()| runtime.socket(e.stream))
            .map(|socket| (socket, e.transport))
            .map_err(|err| net_failure(&err)),
        Some(Err(f)) => Err(f),
        None => Err(IoFailure::new(
            haul_core::IoErrorKind::Other,
            "connection setup was dropped",
        )),
    };
    let (socket, transport) = match registered {
        Ok(x) => x,
        Err(f) => {
            sink.complete(connect_id, IoResult::Failed(f));
            return serve_closed(cmds, &sink).await;
        }
    };
    sink.complete(connect_id, IoResult::Done);
    let mut link = Link {
        socket,
        transport,
        slab: ReadSlab::default(),
        wire: Vec::new(),
    };
    // One read ahead of the engine's requests; `ended` once a read gave no data.
    let mut ahead: Option<IoResult> = None;
    let mut waiting: Option<(IoId, usize)> = None;
    let mut ended = false;
    loop {
        let step = if ahead.is_none() && !ended {
            match select(cmds.next(), pin!(link.read())).await {
                Either::Left((cmd, _)) => Step::Cmd(cmd),
                Either::Right((r, _)) => Step::Read(r),
            }
        } else {
            Step::Cmd(cmds.next().await)
        };
        match step {
            Step::Read(r) => {
                ended = !matches!(r, IoResult::Data(_));
                match waiting.take() {
                    Some((id, max)) => sink.complete(id, at_most(r, max, &mut ahead)),
                    None => ahead = Some(r),
                }
            }
            Step::Cmd(Some(Cmd::Recv(id, max))) => match ahead.take() {
                Some(r) => sink.complete(id, at_most(r, max, &mut ahead)),
                None if ended => sink.complete(id, connection_closed()),
                None => waiting = Some((id, max)),
            },
            Step::Cmd(Some(Cmd::Send(id, data))) => {
                // Input before the request (read ahead already, or there now) can only be
                // stale: see `unsolicited_input`.
                if ahead.is_none() && !ended {
                    if let Some(r) = futures_util::FutureExt::now_or_never(link.read()) {
                        ended = !matches!(r, IoResult::Data(_));
                        ahead = Some(r);
                    }
                }
                if ahead.is_some() || ended {
                    sink.complete(id, unsolicited_input());
                    continue;
                }
                let r = link.send(&data).await;
                sink.complete(id, r);
            }
            Step::Cmd(Some(Cmd::Close(id))) => {
                if let Some((w, _)) = waiting.take() {
                    sink.complete(w, connection_closed());
                }
                sink.complete(id, IoResult::Done);
                return;
            }
            Step::Cmd(None) => return,
        }
    }
}

/// At most `max` bytes of a read for a `Recv`; the rest waits in `ahead` for the next.
fn at_most(read: IoResult, max: usize, ahead: &mut Option<IoResult>) -> IoResult {
    match read {
        IoResult::Data(mut data) if data.len() > max => {
            *ahead = Some(IoResult::Data(data.split_off(max)));
            IoResult::Data(data)
        }
        other => other,
    }
}

enum Step {
    Cmd(Option<Cmd>),
    Read(IoResult),
}

fn refuse(sink: &Sink, cmd: Cmd) {
    match cmd {
        Cmd::Close(id) => sink.complete(id, IoResult::Done),
        Cmd::Send(id, _) | Cmd::Recv(id, _) => sink.complete(id, connection_closed()),
    }
}

/// A connection that failed or closed: complete whatever still arrives, until the close.
async fn serve_closed(mut cmds: UnboundedReceiver<Cmd>, sink: &Sink) {
    while let Some(cmd) = cmds.next().await {
        let closing = matches!(cmd, Cmd::Close(_));
        refuse(sink, cmd);
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_read_longer_than_a_recv_takes_gives_it_max_bytes_and_keeps_the_rest_ahead() {
        let mut ahead = None;
        let read = IoResult::Data(Bytes::from_static(b"0123456789"));
        assert_eq!(
            at_most(read, 4, &mut ahead),
            IoResult::Data(Bytes::from_static(b"0123"))
        );
        assert_eq!(ahead, Some(IoResult::Data(Bytes::from_static(b"456789"))));
        let mut ahead = None;
        assert_eq!(at_most(IoResult::Eof, 4, &mut ahead), IoResult::Eof);
        assert_eq!(ahead, None);
        let short = IoResult::Data(Bytes::from_static(b"01"));
        assert_eq!(at_most(short.clone(), 4, &mut ahead), short);
        assert_eq!(ahead, None);
    }
}

//! haul-driver: the runtime-independent half of every haul runtime.
//!
//! The core engine decides; a runtime executes. Executing has parts that do not depend on
//! how a runtime waits (threads, tokio, smol), and they live here once so that the three
//! runtimes cannot drift apart:
//!
//! - [`host`]: the engine, its clock, and draining its outputs (every driver loop is built
//!   on [`Host`]);
//! - [`transport`]: the single TLS (rustls) and proxy-tunnel integration, a sans-IO byte
//!   transform that any socket can feed;
//! - [`connect`]: connection setup (resolve, connect, `CONNECT`, TLS handshake) as blocking
//!   code that every runtime runs off its async threads;
//! - [`files`]: the std file executor with per-file ordered workers;
//! - [`ReadSlab`]: the receive buffers (256 KiB reads carved from larger slabs).
//!
//! Why a separate crate rather than inside `haul-blocking`: the async runtimes need all of
//! this but none of the blocking runtime's threads-and-channels driver, and the blocking
//! runtime needs none of the async machinery.
#![forbid(unsafe_code)]

pub mod connect;
pub mod digests;
pub mod files;
pub mod host;
pub mod spares;
pub mod transport;

use bytes::{Bytes, BytesMut};

use std::collections::VecDeque;

pub use connect::{connection_closed, establish, net_failure, unsolicited_input, Established};
pub use files::{BlockingSpawner, BlockingWork, Completions, Files, Threads};
pub use host::{event_job, Host};
pub use transport::{Plain, TlsSetup, TlsSetupError, Transport};

/// Size of one socket read.
pub const READ_CHUNK: usize = 256 * 1024;
/// Size of the slab reads are carved from (amortises allocation and zeroing).
const SLAB: usize = 1024 * 1024;
/// Reads of at most this many bytes are copied out of the slab (see [`ReadSlab::take`]).
const COPY_MAX: usize = 2 * 1024;
/// Used-up slabs kept for reuse once every read carved from them is dropped.
const SLABS_KEPT: usize = 4;

/// Receive buffers: each read fills the front of a large zeroed slab and is split off as
/// [`Bytes`] that travel to the engine and on to the file write without another copy.
///
/// A used-up slab is kept, and taken again once every read carved from it has been dropped
/// (written and hashed): its pages are already in memory. A fresh slab faults in a page for
/// every 4 KiB received, and copying each read out instead costs a copy and an allocation
/// per read (together about a tenth of the driver's thread in a load of 500 modules).
#[derive(Debug, Default)]
pub struct ReadSlab {
    slab: BytesMut,
    /// `slab` is a slab (not the empty default).
    has_slab: bool,
    used: VecDeque<BytesMut>,
}

impl ReadSlab {
    /// Room for the next read ([`READ_CHUNK`] bytes).
    pub fn chunk(&mut self) -> &mut [u8] {
        if self.slab.len() < READ_CHUNK {
            let mut old = std::mem::take(&mut self.slab);
            if self.has_slab {
                // Even at no capacity left it holds the slab, to be reclaimed whole.
                old.clear();
                self.used.push_back(old);
            }
            self.has_slab = true;
            self.slab = self.reuse().unwrap_or_else(|| BytesMut::zeroed(SLAB));
            while self.used.len() > SLABS_KEPT {
                // Its memory goes when its last read does.
                self.used.pop_front();
            }
        }
        &mut self.slab[..READ_CHUNK]
    }

    /// A used slab none of whose reads is alive any more, as a whole slab again.
    fn reuse(&mut self) -> Option<BytesMut> {
        let at = self.used.iter_mut().position(|s| s.try_reclaim(SLAB))?;
        let mut slab = self.used.remove(at)?;
        slab.resize(SLAB, 0);
        Some(slab)
    }

    /// The first `n` bytes of the last [`ReadSlab::chunk`], as a buffer of their own.
    ///
    /// A tiny read is copied out, so that it does not keep a whole slab from being reused.
    pub fn take(&mut self, n: usize) -> Bytes {
        if n <= COPY_MAX {
            return Bytes::copy_from_slice(&self.slab[..n]);
        }
        self.slab.split_to(n).freeze()
    }
}

/// Build the TLS setup from an engine configuration, as a configuration error.
pub fn tls_setup(config: &haul_core::Config) -> Result<TlsSetup, haul_core::ConfigError> {
    TlsSetup::new(&config.extra_root_certs).map_err(|e| haul_core::ConfigError {
        field: "extra_root_certs",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reads_are_split_off_without_overlap() {
        let mut slab = ReadSlab::default();
        slab.chunk()[..3].copy_from_slice(b"abc");
        let a = slab.take(3);
        slab.chunk()[..2].copy_from_slice(b"de");
        let b = slab.take(2);
        assert_eq!((&a[..], &b[..]), (&b"abc"[..], &b"de"[..]));
        assert_eq!(slab.chunk().len(), READ_CHUNK);
    }

    #[test]
    fn a_tiny_read_is_copied_out_and_the_slab_front_serves_the_next_read() {
        let mut slab = ReadSlab::default();
        let front = slab.chunk().as_ptr();
        slab.chunk()[..COPY_MAX].fill(1);
        let small = slab.take(COPY_MAX);
        assert_eq!(slab.chunk().as_ptr(), front, "the same front again");
        slab.chunk().fill(2);
        assert!(small.iter().all(|b| *b == 1), "the copy is its own");
        let large = slab.take(COPY_MAX + 1);
        assert_eq!(
            large.as_ptr(),
            front,
            "a larger read is carved off, not copied"
        );
        assert_ne!(slab.chunk().as_ptr(), front);
    }

    #[test]
    fn a_used_up_slab_is_reused_zeroed_once_its_reads_are_dropped_and_not_before() {
        let mut slab = ReadSlab::default();
        let first = slab.chunk().as_ptr();
        let mut held = Vec::new();
        // Use the first slab up; keep its reads alive.
        for _ in 0..SLAB / READ_CHUNK {
            slab.chunk().fill(9);
            held.push(slab.take(READ_CHUNK));
        }
        let second = slab.chunk().as_ptr();
        assert_ne!(second, first, "a slab whose reads live is not reused");
        assert!(
            held.iter().all(|r| r.iter().all(|b| *b == 9)),
            "reads intact"
        );
        drop(held);
        // Use the second one up: the first comes back, zeroed.
        for _ in 0..SLAB / READ_CHUNK {
            slab.chunk();
            drop(slab.take(READ_CHUNK));
        }
        assert_eq!(slab.chunk().as_ptr(), first, "the first slab again");
        assert!(slab.chunk().iter().all(|b| *b == 0));
    }
}

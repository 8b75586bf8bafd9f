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

pub use connect::{connection_closed, establish, net_failure, Established};
pub use files::{BlockingSpawner, BlockingWork, Completions, Files, Threads};
pub use host::{event_job, Host};
pub use transport::{Plain, TlsSetup, TlsSetupError, Transport};

/// Size of one socket read.
pub const READ_CHUNK: usize = 256 * 1024;
/// Size of the slab reads are carved from (amortises allocation and zeroing).
const SLAB: usize = 1024 * 1024;
/// Reads of at most this many bytes are copied out of the slab (see [`ReadSlab::take`]).
const COPY_MAX: usize = 64 * 1024;

/// Receive buffers: each read fills the front of a large zeroed slab and is split off as
/// [`Bytes`] that travel to the engine and on to the file write without another copy.
#[derive(Debug, Default)]
pub struct ReadSlab {
    slab: BytesMut,
}

impl ReadSlab {
    /// Room for the next read ([`READ_CHUNK`] bytes).
    pub fn chunk(&mut self) -> &mut [u8] {
        if self.slab.len() < READ_CHUNK {
            self.slab = BytesMut::zeroed(SLAB);
        }
        &mut self.slab[..READ_CHUNK]
    }

    /// The first `n` bytes of the last [`ReadSlab::chunk`], as a buffer of their own.
    ///
    /// A small read is copied out and the slab's front used again by the next read: a run
    /// of small responses then touches the same few pages of the slab, where carving each
    /// read off would fault in a fresh page every 4 KiB received (8% of a run of 2,000 small
    /// downloads). The copy comes from the allocator's recycled memory and costs less than
    /// those faults. (Reusing a used-up slab does not help: the reads just carved from it
    /// are still on their way to the engine when the next slab is needed.)
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
    fn a_small_read_is_copied_out_and_the_slab_front_serves_the_next_read() {
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
            "a large read is carved off, not copied"
        );
        assert_ne!(slab.chunk().as_ptr(), front);
    }
}

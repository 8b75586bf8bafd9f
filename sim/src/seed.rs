//! Seeds: one root seed per run, split into independent sub-seeds, and a small random
//! helper on top of [`haul_core::rng::SeededRng`].
//!
//! Owns only the derivation of randomness. Every random choice of a run comes from a
//! [`SimRng`] built from a sub-seed of the run's root seed, so a seed replays exactly; no
//! randomness comes from the OS or from hash-map order.

use haul_core::rng::SeededRng;

/// Which part of the world a sub-seed feeds. Separate streams keep a change in one part
/// (say, one more network piece) from reshuffling the choices of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The workload and the fault plan.
    Workload,
    /// Latencies, piece sizes and bandwidth of connections.
    Network,
    /// Origin behaviour: content, chunk sizes, keep-alive, idle closes.
    Origins,
    /// Disk latencies.
    Disk,
    /// The engine's jitter seed.
    Engine,
}

impl Stream {
    fn salt(self) -> u64 {
        match self {
            Stream::Workload => 0x776f_726b,
            Stream::Network => 0x6e65_7477,
            Stream::Origins => 0x6f72_6967,
            Stream::Disk => 0x6469_736b,
            Stream::Engine => 0x656e_6769,
        }
    }
}

/// The sub-seed of `root` for `stream`.
pub fn sub_seed(root: u64, stream: Stream) -> u64 {
    mix(root, stream.salt())
}

/// A well-spread combination of two words.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut r = SeededRng::new(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.next_u64();
    r.next_u64()
}

/// A seeded generator with the helpers the simulator needs.
#[derive(Debug, Clone)]
pub struct SimRng(SeededRng);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(SeededRng::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.0.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// Roughly log-uniform in `lo..=hi` (small values as likely as large ones per decade).
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let lo = lo.max(1);
        let (llo, lhi) = ((lo as f64).ln(), (hi as f64).ln());
        let x = (llo + (lhi - llo) * self.0.next_f64()).exp() as u64;
        x.clamp(lo, hi)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.0.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_seeds_differ_per_stream_and_replay() {
        let a = sub_seed(7, Stream::Network);
        assert_eq!(a, sub_seed(7, Stream::Network));
        assert_ne!(a, sub_seed(7, Stream::Disk));
        assert_ne!(a, sub_seed(8, Stream::Network));
    }

    #[test]
    fn ranges_stay_inside_their_bounds() {
        let mut r = SimRng::new(3);
        for _ in 0..10_000 {
            let x = r.range(5, 9);
            assert!((5..=9).contains(&x));
            let y = r.log_range(1, 300 * 1024);
            assert!((1..=300 * 1024).contains(&y));
        }
        assert_eq!(r.bytes(13).len(), 13);
    }
}

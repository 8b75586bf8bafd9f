//! The event trace of a run: one line per step, simulated times only, so two replays of a
//! seed print byte-identical traces; and its SHA-256 for determinism checks.
//!
//! Owns only recording; what goes into a line is the world's business.

use sha2::{Digest, Sha256};

/// Lines of a run, recorded only when enabled (formatting costs time in swarms).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
}

impl Trace {
    /// A trace that records when `enabled`.
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            lines: Vec::new(),
        }
    }

    /// Whether lines are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Record a line (ignored when disabled).
    pub fn push(&mut self, line: String) {
        if self.enabled {
            self.lines.push(line);
        }
    }

    /// Lowercase hex SHA-256 of the lines, each followed by a newline.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for l in &self.lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// The recorded lines.
    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_trace_records_nothing_and_hashes_like_an_empty_one() {
        let mut t = Trace::new(false);
        t.push("x".into());
        assert_eq!(t.hash(), Trace::new(true).hash());
        let mut a = Trace::new(true);
        a.push("x".into());
        assert_ne!(a.hash(), t.hash());
    }
}

//! A job's other checksum ([`crate::Download::checksum`]): the digest of another algorithm
//! than SHA-256, checked before the commit.
//!
//! Where the engine hashes the file's prefix itself (the body as it streams in order, the
//! parts that arrived out of order as they are read back, a resumed prefix as it is hashed
//! again), the other digest is fed the same bytes beside the SHA-256 ([`Streamed`],
//! [`hash_prefix`]) and the check needs no pass of its own. Otherwise (the executor hashed
//! the file, `Job::executor_hash`) the complete file is read back.
//!
//! The read-back runs once size and SHA-256 passed (`verify_and_commit`), in `Phase::Checksumming`:
//! `ReadAt`s of [`CHECKSUM_CHUNK`] bytes, up to two in flight ([`ReadAhead`]), so memory stays
//! bounded whatever the file's size, and every runtime and the simulator run it with the file
//! operations they already have (named partials and unnamed files alike). A match goes on to
//! the commit; a mismatch is a failed verification like a SHA-256 mismatch
//! (`verification_failed`): retried from zero, then the job fails with
//! [`DownloadError::ChecksumMismatch`] and nothing is committed.
//!
//! The read-back ends early only with the job: a cancel or a failure cleans up once the
//! reads in flight have completed (their bytes are not looked at), and a pause asked for
//! meanwhile waits for the check's result: a file that passes is committed (like one whose
//! destination already held the expected bytes), one that fails stops where its next attempt
//! would start. Each read carries the job's hashing epoch: a read answered after the download
//! started over is ignored.
//!
//! Not here: the SHA-256, which the engine computes as bytes arrive (or the executor does,
//! see `Job::executor_hash`), and deciding what a failed verification does next.

use sha2::Digest;

use super::{unexpected, Engine, FileStep, JobId, Phase, ReadAhead};
use crate::download::ChecksumAlgorithm;
use crate::error::DownloadError;
use crate::io::{IoErrorKind, IoFailure, IoOp, IoResult};

/// Bytes one read-back for the checksum asks for.
pub(super) const CHECKSUM_CHUNK: u64 = 1024 * 1024;

/// The running digest of one of the [`ChecksumAlgorithm`]s.
#[derive(Debug, Clone)]
pub(super) enum ChecksumHasher {
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
    Adler32(adler2::Adler32),
}

impl ChecksumHasher {
    pub(super) fn new(algorithm: ChecksumAlgorithm) -> ChecksumHasher {
        match algorithm {
            ChecksumAlgorithm::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha224 => ChecksumHasher::Sha224(sha2::Sha224::new()),
            ChecksumAlgorithm::Sha384 => ChecksumHasher::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => ChecksumHasher::Sha512(sha2::Sha512::new()),
            ChecksumAlgorithm::Md5 => ChecksumHasher::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Adler32 => ChecksumHasher::Adler32(adler2::Adler32::new()),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            ChecksumHasher::Sha1(h) => h.update(bytes),
            ChecksumHasher::Sha224(h) => h.update(bytes),
            ChecksumHasher::Sha384(h) => h.update(bytes),
            ChecksumHasher::Sha512(h) => h.update(bytes),
            ChecksumHasher::Md5(h) => h.update(bytes),
            ChecksumHasher::Adler32(h) => h.write_slice(bytes),
        }
    }

    /// The digest's bytes (Adler-32: the sum big-endian, as aria2 writes it in hex).
    pub(super) fn finalize(self) -> Vec<u8> {
        match self {
            ChecksumHasher::Sha1(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha224(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha384(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha512(h) => h.finalize().to_vec(),
            ChecksumHasher::Md5(h) => h.finalize().to_vec(),
            ChecksumHasher::Adler32(h) => h.checksum().to_be_bytes().to_vec(),
        }
    }
}

/// The other checksum of the bytes the engine hashed from the start of the file, beside its
/// SHA-256: `len` bytes so far.
#[derive(Debug, Clone)]
pub(super) struct Streamed {
    hasher: ChecksumHasher,
    len: u64,
}

impl Streamed {
    pub(super) fn new(algorithm: ChecksumAlgorithm) -> Streamed {
        Streamed {
            hasher: ChecksumHasher::new(algorithm),
            len: 0,
        }
    }
}

/// Feed the next `bytes` of the file's prefix to the engine's SHA-256 and, when the job has
/// one, its other checksum: the only way the engine hashes the prefix, so both see the same
/// bytes.
pub(super) fn hash_prefix(sha256: &mut sha2::Sha256, other: &mut Option<Streamed>, bytes: &[u8]) {
    sha256.update(bytes);
    if let Some(other) = other {
        other.hasher.update(bytes);
        other.len += bytes.len() as u64;
    }
}

impl Engine {
    /// Size and SHA-256 passed (`digest`): check the job's other checksum, from the digest
    /// streamed beside the SHA-256 when it covers the whole file, else by reading the file
    /// back; the commit follows once it matches.
    pub(super) fn start_checksum(&mut self, id: JobId, digest: [u8; 32]) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let algorithm = j
            .spec
            .checksum
            .as_ref()
            .expect("a job with a checksum")
            .algorithm();
        let (hasher, offset) = match j.checksum_stream.take() {
            Some(streamed) if streamed.len == j.hashed => (streamed.hasher, j.hashed),
            _ => (ChecksumHasher::new(algorithm), 0),
        };
        j.phase = Phase::Checksumming {
            digest,
            hasher,
            offset,
            reads: ReadAhead::default(),
        };
        self.checksum_next(id);
    }

    /// Ask for the next chunks, or compare once every byte was hashed.
    fn checksum_next(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let (end, epoch) = (j.hashed, j.epoch);
        let file = j.file.expect("the verified file is open");
        let Phase::Checksumming { offset, reads, .. } = &mut j.phase else {
            return;
        };
        if *offset >= end {
            return self.finish_checksum(id);
        }
        for (offset, len) in reads.next(*offset, end, CHECKSUM_CHUNK) {
            let op = IoOp::ReadAt { file, offset, len };
            self.file_io(id, FileStep::Checksum { epoch, offset }, op);
        }
    }

    /// A read-back issued at `at` (in the job's current epoch) completed.
    pub(super) fn on_checksum_read(&mut self, id: JobId, at: u64, result: IoResult) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let end = j.hashed;
        let Phase::Checksumming {
            hasher,
            offset,
            reads,
            ..
        } = &mut j.phase
        else {
            return;
        };
        let at_frontier = reads.done(at, *offset);
        match result {
            IoResult::Data(b) if !b.is_empty() && at_frontier => {
                let take = (end - *offset).min(b.len() as u64) as usize;
                hasher.update(&b[..take]);
                *offset += take as u64;
                self.checksum_next(id);
            }
            // Off the frontier after a short read: asked again from the frontier.
            IoResult::Data(b) if !b.is_empty() => self.checksum_next(id),
            IoResult::Data(_) => {
                // Shorter than every byte written to it: changed under us.
                let failure = IoFailure::new(
                    IoErrorKind::Other,
                    format!(
                        "the file ended at byte {at} of {end} while it was read back for its \
                         checksum"
                    ),
                );
                let path = j.part_path.clone();
                self.terminate(id, DownloadError::LocalIo { path, failure }, false);
            }
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    other => unexpected(&other),
                };
                let path = j.part_path.clone();
                self.terminate(id, DownloadError::LocalIo { path, failure }, false);
            }
        }
    }

    /// Every byte was hashed: commit on a match, else fail the verification.
    fn finish_checksum(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Checksumming { digest, hasher, .. } =
            std::mem::replace(&mut j.phase, Phase::Running)
        else {
            return;
        };
        let expected = j.spec.checksum.as_ref().expect("a job with a checksum");
        let actual = hasher.finalize();
        if actual != expected.digest() {
            let error = DownloadError::ChecksumMismatch {
                algorithm: expected.algorithm(),
                url: j.served_by(),
                path: j.dest_path(),
                expected: expected.hex(),
                actual: hex::encode(actual),
            };
            // Back in `Running`, with every byte in and no transfer: a failed verification
            // like a SHA-256 mismatch.
            return self.verification_failed(id, error);
        }
        self.commit_verified(id, digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of b"abc" from the algorithms' published test vectors.
    #[test]
    fn each_hasher_gives_its_algorithms_known_digest_of_abc_fed_in_pieces() {
        let vectors = [
            (
                ChecksumAlgorithm::Sha1,
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (
                ChecksumAlgorithm::Sha224,
                "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
            ),
            (
                ChecksumAlgorithm::Sha384,
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
                 8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                ChecksumAlgorithm::Sha512,
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
            (ChecksumAlgorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (ChecksumAlgorithm::Adler32, "024d0127"),
        ];
        for (algorithm, expected) in vectors {
            let mut hasher = ChecksumHasher::new(algorithm);
            hasher.update(b"a");
            hasher.update(b"");
            hasher.update(b"bc");
            let digest = hasher.finalize();
            assert_eq!(digest.len(), algorithm.digest_len(), "{algorithm}");
            assert_eq!(hex::encode(digest), expected, "{algorithm}");
        }
    }
}

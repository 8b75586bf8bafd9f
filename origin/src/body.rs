//! Response body producers: a stream of pieces from memory or from a file (read with seeks,
//! never loaded whole), optionally paced, followed by filler bytes, and ending normally, with
//! an error (so hyper aborts the connection), or by stalling forever. It does not choose
//! headers or framing (see `respond`).

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;

/// Largest piece read from memory or disk at once.
pub(crate) const MAX_PIECE: usize = 64 * 1024;
/// Before aborting, give hyper this long to flush the bytes already produced.
const FLUSH_BEFORE_ABORT: Duration = Duration::from_millis(50);
/// Byte used by [`BodyPlan::filler`].
pub(crate) const FILLER_BYTE: u8 = b'#';

/// Why a body stream failed (hyper then aborts the connection).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The behaviour asked for the response to be cut short.
    #[error("response deliberately truncated after {sent} body bytes")]
    Truncated { sent: u64 },
    /// The served file could not be opened, seeked or read.
    #[error("reading {path} at offset {offset}: {source}")]
    ReadFile {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    /// The served file ended before the length announced for it.
    #[error("{path} ended at offset {offset}, before the announced length")]
    FileShrank { path: PathBuf, offset: u64 },
}

/// Where body bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Memory(Bytes),
    File(PathBuf),
}

/// What happens after the planned bytes were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The stream ends.
    Complete,
    /// The stream fails, so hyper aborts the connection.
    Abort,
    /// The stream never yields again.
    Stall,
}

/// A body to stream: `len` bytes of `source` from `offset`, then `filler` filler bytes.
#[derive(Debug, Clone)]
pub(crate) struct BodyPlan {
    pub(crate) source: Source,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) filler: u64,
    /// Bytes per yielded piece (at most [`MAX_PIECE`] is sensible; 0 is treated as 1).
    pub(crate) piece: usize,
    /// Pace the whole body (content and filler) at this rate.
    pub(crate) bytes_per_sec: Option<u64>,
    pub(crate) ending: Ending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Content,
    Filler,
    Ending,
    Done,
}

struct Producer {
    plan: BodyPlan,
    stage: Stage,
    /// Content bytes yielded so far.
    sent_content: u64,
    /// Filler bytes yielded so far.
    sent_filler: u64,
    file: Option<tokio::fs::File>,
    started: Instant,
}

impl BodyPlan {
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
        let producer = Producer {
            plan: self,
            stage: Stage::Content,
            sent_content: 0,
            sent_filler: 0,
            file: None,
            started: Instant::now(),
        };
        futures_util::stream::unfold(producer, |mut producer| async move {
            let item = producer.next_item().await?;
            Some((item, producer))
        })
    }
}

impl Producer {
    fn piece_len(&self, remaining: u64) -> usize {
        let piece = self.plan.piece.max(1) as u64;
        usize::try_from(piece.min(remaining)).unwrap_or(usize::MAX)
    }

    /// Waits until the pacing schedule allows the next byte out.
    async fn pace(&self) {
        if let Some(rate) = self.plan.bytes_per_sec {
            let sent = self.sent_content + self.sent_filler;
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(self.started + due).await;
        }
    }

    async fn next_item(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            match self.stage {
                Stage::Content if self.sent_content < self.plan.len => {
                    self.pace().await;
                    let len = self.piece_len(self.plan.len - self.sent_content);
                    return Some(match self.read_content(len).await {
                        Ok(bytes) => {
                            self.sent_content += bytes.len() as u64;
                            Ok(bytes)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "haul-origin body failed");
                            self.stage = Stage::Done;
                            Err(error)
                        }
                    });
                }
                Stage::Content => self.stage = Stage::Filler,
                Stage::Filler if self.sent_filler < self.plan.filler => {
                    self.pace().await;
                    let len = self.piece_len(self.plan.filler - self.sent_filler);
                    self.sent_filler += len as u64;
                    return Some(Ok(Bytes::from(vec![FILLER_BYTE; len])));
                }
                Stage::Filler => self.stage = Stage::Ending,
                Stage::Ending => {
                    self.stage = Stage::Done;
                    match self.plan.ending {
                        Ending::Complete => return None,
                        Ending::Abort => {
                            tokio::time::sleep(FLUSH_BEFORE_ABORT).await;
                            return Some(Err(BodyError::Truncated {
                                sent: self.sent_content + self.sent_filler,
                            }));
                        }
                        Ending::Stall => futures_util::future::pending::<()>().await,
                    }
                }
                Stage::Done => return None,
            }
        }
    }

    async fn read_content(&mut self, len: usize) -> Result<Bytes, BodyError> {
        let position = self.plan.offset + self.sent_content;
        let path = match &self.plan.source {
            Source::Memory(body) => {
                let start = usize::try_from(position).unwrap_or(usize::MAX);
                return Ok(body.slice(start..start + len));
            }
            Source::File(path) => path,
        };
        let read_error = |source| BodyError::ReadFile {
            path: path.clone(),
            offset: position,
            source,
        };
        if self.file.is_none() {
            let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
            file.seek(SeekFrom::Start(position))
                .await
                .map_err(read_error)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            unreachable!("file was opened above");
        };
        let mut buffer = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let read = file.read(&mut buffer[filled..]).await.map_err(read_error)?;
            if read == 0 && filled > 0 {
                // Hand out what was read; the next read reports the early end.
                buffer.truncate(filled);
                break;
            }
            if read == 0 {
                return Err(BodyError::FileShrank {
                    path: path.clone(),
                    offset: position + filled as u64,
                });
            }
            filled += read;
        }
        Ok(Bytes::from(buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn plan(source: Source, offset: u64, len: u64) -> BodyPlan {
        BodyPlan {
            source,
            offset,
            len,
            filler: 0,
            piece: 4,
            bytes_per_sec: None,
            ending: Ending::Complete,
        }
    }

    async fn collect(plan: BodyPlan) -> (Vec<Vec<u8>>, Option<String>) {
        let mut pieces = Vec::new();
        let stream = plan.into_stream();
        futures_util::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => pieces.push(bytes.to_vec()),
                Err(error) => return (pieces, Some(error.to_string())),
            }
        }
        (pieces, None)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn memory_slice_is_yielded_in_pieces() {
        let body = Bytes::from_static(b"0123456789");
        let (pieces, error) = runtime().block_on(collect(plan(Source::Memory(body), 1, 7)));
        assert_eq!(pieces, vec![b"1234".to_vec(), b"567".to_vec()]);
        assert_eq!(error, None);
    }

    #[test]
    fn file_slice_is_read_from_offset() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abcdefghij").unwrap();
        let (pieces, error) = runtime().block_on(collect(plan(Source::File(path), 3, 5)));
        assert_eq!(pieces.concat(), b"defgh");
        assert_eq!(error, None);
    }

    #[test]
    fn file_shorter_than_planned_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (pieces, error) = runtime().block_on(collect(plan(Source::File(path), 0, 10)));
        assert_eq!(pieces.concat(), b"abc");
        assert!(error.unwrap().contains("ended at offset 3"));
    }

    #[test]
    fn filler_follows_content_and_abort_ends_with_error() {
        let mut plan = plan(Source::Memory(Bytes::from_static(b"xy")), 0, 2);
        plan.filler = 5;
        plan.ending = Ending::Abort;
        let (pieces, error) = runtime().block_on(collect(plan));
        assert_eq!(pieces.concat(), b"xy#####");
        assert!(error.unwrap().contains("truncated after 7"));
    }

    #[test]
    fn paced_body_takes_about_len_over_rate() {
        let mut plan = plan(Source::Memory(Bytes::from(vec![7u8; 100])), 0, 100);
        plan.piece = 10;
        plan.bytes_per_sec = Some(500);
        let started = std::time::Instant::now();
        let (pieces, _) = runtime().block_on(collect(plan));
        let elapsed = started.elapsed();
        assert_eq!(pieces.concat().len(), 100);
        // The last piece is due at 90/500 s = 180 ms.
        assert!(elapsed >= Duration::from_millis(170), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    }
}

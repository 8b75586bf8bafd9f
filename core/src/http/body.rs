//! Response body decoding: turns received bytes into payload slices according to the
//! [`Framing`], accepting input split at any byte. Zero-copy: payload is split off the
//! caller's `Bytes`; only chunk-size and trailer lines (tiny, bounded) are buffered.
//! Does not decode content codings and does not expose chunk extensions or trailers.

use bytes::{Buf, Bytes};

use super::{Framing, HttpError};

/// Longest accepted chunk-size line (size, extensions), excluding the line ending.
pub const CHUNK_LINE_LIMIT: usize = 4 * 1024;
/// Largest accepted trailer section (all trailer lines and their line endings).
pub const TRAILERS_LIMIT: usize = 8 * 1024;

/// One step of body decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The next piece of payload (never empty).
    Data(Bytes),
    /// The input is exhausted; feed more bytes.
    NeedMore,
    /// The body is complete; anything left in the input is not body.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line into `line`.
    SizeLine,
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Expecting the CRLF (or bare LF) after chunk data; `saw_cr` once CR has arrived.
    DataEnd { saw_cr: bool },
    /// Reading trailer lines (ignored) until the empty line; `total` bytes so far.
    Trailers { total: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Length {
        total: u64,
    },
    Chunked(ChunkState),
    CloseDelimited,
    Done,
    /// A framing error happened; it is returned again on every call.
    Failed(HttpError),
}

/// Body decoder for one response.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    received: u64,
    /// Partial control line (chunk size or trailer), without its line ending.
    line: Vec<u8>,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(total) => State::Length { total },
            Framing::Chunked => State::Chunked(ChunkState::SizeLine),
            Framing::CloseDelimited => State::CloseDelimited,
        };
        BodyDecoder {
            state,
            received: 0,
            line: Vec::new(),
        }
    }

    /// Consume from the front of `input`.
    ///
    /// Returns `Data(b)` with the next piece of payload (split off `input`, never copied;
    /// for `Length` never more than the remaining length), `NeedMore` when `input` is
    /// exhausted (everything consumed, state kept), or `Done` when the body is complete
    /// (anything left in `input` is not body). Call in a loop until `NeedMore` or `Done`.
    /// After an error the decoder is poisoned and returns the same error again.
    pub fn decode(&mut self, input: &mut Bytes) -> Result<Decoded, HttpError> {
        let result = self.step(input);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    fn step(&mut self, input: &mut Bytes) -> Result<Decoded, HttpError> {
        match &mut self.state {
            State::Done => Ok(Decoded::Done),
            State::Failed(e) => Err(e.clone()),
            State::CloseDelimited => {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let data = std::mem::take(input);
                self.received += data.len() as u64;
                Ok(Decoded::Data(data))
            }
            State::Length { total } => {
                let remaining = *total - self.received;
                if input.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                let data = input.split_to(n);
                self.received += n as u64;
                if self.received == *total {
                    self.state = State::Done;
                }
                Ok(Decoded::Data(data))
            }
            State::Chunked(_) => self.step_chunked(input),
        }
    }

    fn step_chunked(&mut self, input: &mut Bytes) -> Result<Decoded, HttpError> {
        loop {
            let State::Chunked(chunk) = &mut self.state else {
                return Ok(Decoded::Done);
            };
            if input.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            match chunk {
                ChunkState::Data { remaining } => {
                    let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                    let data = input.split_to(n);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *chunk = ChunkState::DataEnd { saw_cr: false };
                    }
                    self.received += n as u64;
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd { saw_cr } => {
                    match (input[0], *saw_cr) {
                        (b'\r', false) => *saw_cr = true,
                        (b'\n', _) => *chunk = ChunkState::SizeLine,
                        (other, _) => {
                            return Err(HttpError::MalformedChunk(format!(
                                "expected CRLF after chunk data, found byte 0x{other:02x}"
                            )))
                        }
                    }
                    input.advance(1);
                }
                ChunkState::SizeLine => {
                    let Some(line) = take_line(&mut self.line, input, CHUNK_LINE_LIMIT).ok_or(
                        HttpError::ChunkLineTooLong {
                            limit: CHUNK_LINE_LIMIT,
                        },
                    )?
                    else {
                        continue;
                    };
                    let size = parse_chunk_size(&line)?;
                    self.line.clear();
                    *chunk = if size == 0 {
                        ChunkState::Trailers { total: 0 }
                    } else {
                        ChunkState::Data { remaining: size }
                    };
                }
                ChunkState::Trailers { total } => {
                    let line = take_line(&mut self.line, input, TRAILERS_LIMIT - *total).ok_or(
                        HttpError::TrailersTooLarge {
                            limit: TRAILERS_LIMIT,
                        },
                    )?;
                    match line {
                        // The whole input went into the partial line.
                        None => {}
                        Some(line) => {
                            let empty = line.is_empty() || line == b"\r";
                            *total += line.len() + 1;
                            self.line.clear();
                            if empty {
                                self.state = State::Done;
                                return Ok(Decoded::Done);
                            }
                            if *total > TRAILERS_LIMIT {
                                return Err(HttpError::TrailersTooLarge {
                                    limit: TRAILERS_LIMIT,
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    /// The peer closed the connection. `Ok(())` if the body is complete, or if it is
    /// close-delimited (then it is complete now); otherwise [`HttpError::Truncated`] with
    /// `expected = Some(total)` for a length-delimited body, `None` for chunked.
    pub fn on_eof(&mut self) -> Result<(), HttpError> {
        match &self.state {
            State::Done => Ok(()),
            State::CloseDelimited => {
                self.state = State::Done;
                Ok(())
            }
            State::Length { total } => Err(HttpError::Truncated {
                expected: Some(*total),
                received: self.received,
            }),
            State::Chunked(_) => Err(HttpError::Truncated {
                expected: None,
                received: self.received,
            }),
            State::Failed(e) => Err(e.clone()),
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes returned so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// Move bytes from `input` into `line` up to and including the next LF. Returns
/// `Some(Some(line))` (without the LF) when a line is complete, `Some(None)` when `input`
/// ran out first (all of it consumed), and `None` when the line would exceed `limit`.
fn take_line(line: &mut Vec<u8>, input: &mut Bytes, limit: usize) -> Option<Option<Vec<u8>>> {
    // Look no further than the limit allows: a line without LF there is too long anyway.
    let searchable = (limit - line.len()).saturating_add(1).min(input.len());
    match input[..searchable].iter().position(|&b| b == b'\n') {
        Some(lf) => {
            if line.len() + lf > limit {
                return None;
            }
            line.extend_from_slice(&input[..lf]);
            input.advance(lf + 1);
            Some(Some(std::mem::take(line)))
        }
        None => {
            if line.len() + input.len() > limit {
                return None;
            }
            line.extend_from_slice(input);
            input.clear();
            Some(None)
        }
    }
}

/// Parse a chunk-size line (without LF): hex size, optional whitespace and `;extensions`
/// (ignored), optional trailing CR.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size_part = match line.iter().position(|&b| b == b';') {
        Some(semi) => &line[..semi],
        None => line,
    };
    // Optional whitespace (BWS) may precede the extensions.
    let digits = size_part.trim_ascii_end();
    let bad = |why: &str| {
        HttpError::MalformedChunk(format!(
            "chunk size line {:?}: {why}",
            String::from_utf8_lossy(line)
        ))
    };
    if digits.is_empty() {
        return Err(bad("missing chunk size"));
    }
    let significant = digits.iter().skip_while(|&&b| b == b'0').count();
    if significant > 16 {
        return Err(bad("chunk size overflows 64 bits"));
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = (b as char)
            .to_digit(16)
            .ok_or_else(|| bad("chunk size is not hexadecimal"))?;
        Ok((acc << 4) | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` split into the given pieces; returns payload and whether Done was seen,
    /// plus what remained after Done.
    fn decode_pieces(
        framing: Framing,
        pieces: &[&[u8]],
    ) -> Result<(Vec<u8>, bool, Vec<u8>), HttpError> {
        let mut decoder = BodyDecoder::new(framing);
        let mut payload = Vec::new();
        for piece in pieces {
            let mut input = Bytes::copy_from_slice(piece);
            loop {
                match decoder.decode(&mut input)? {
                    Decoded::Data(d) => {
                        assert!(!d.is_empty(), "Data is never empty");
                        payload.extend_from_slice(&d);
                    }
                    Decoded::NeedMore => {
                        assert!(input.is_empty(), "NeedMore only when input is exhausted");
                        break;
                    }
                    Decoded::Done => {
                        assert!(decoder.is_done());
                        assert_eq!(decoder.received(), payload.len() as u64);
                        return Ok((payload, true, input.to_vec()));
                    }
                }
            }
        }
        Ok((payload, false, Vec::new()))
    }

    const CHUNKED: &[u8] = b"5;name=value;other\r\nhello\r\nA\r\n, chunked \r\n1b ; ext=\"q;x\"\r\nworld, in three chunks!!!!!\r\n0\r\nTrailer-One: a\r\nTrailer-Two: b\r\n\r\nNEXT";
    const CHUNKED_PAYLOAD: &[u8] = b"hello, chunked world, in three chunks!!!!!";

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let (payload, done, rest) = decode_pieces(Framing::Chunked, &[CHUNKED]).unwrap();
        assert_eq!(payload, CHUNKED_PAYLOAD);
        assert!(done);
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn chunked_every_split_point_gives_the_same_payload() {
        for split in 0..=CHUNKED.len() {
            let (a, b) = CHUNKED.split_at(split);
            let (payload, done, rest) = decode_pieces(Framing::Chunked, &[a, b]).unwrap();
            assert_eq!(payload, CHUNKED_PAYLOAD, "split at {split}");
            assert!(done, "split at {split}");
            if split < CHUNKED.len() - 4 {
                assert_eq!(rest, b"NEXT", "split at {split}");
            }
        }
    }

    #[test]
    fn chunked_one_byte_at_a_time_gives_the_same_payload() {
        let pieces: Vec<&[u8]> = CHUNKED.chunks(1).collect();
        let (payload, done, _) = decode_pieces(Framing::Chunked, &pieces).unwrap();
        assert_eq!(payload, CHUNKED_PAYLOAD);
        assert!(done);
    }

    #[test]
    fn chunked_accepts_bare_lf_and_uppercase_hex() {
        let body = b"A\nabcdefghij\nf\r\n0123456789ABCDE\r\n0\n\n";
        let (payload, done, _) = decode_pieces(Framing::Chunked, &[body]).unwrap();
        assert_eq!(payload, b"abcdefghij0123456789ABCDE");
        assert!(done);
    }

    #[test]
    fn chunk_errors() {
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b" 5\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"10000000000000000\r\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
        ] {
            let err = decode_pieces(Framing::Chunked, &[body]).unwrap_err();
            assert!(
                matches!(err, HttpError::MalformedChunk(_)),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn chunk_size_at_u64_max_and_leading_zeros_are_accepted() {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut input = Bytes::from_static(b"FFFFFFFFFFFFFFFF\r\nab");
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Decoded::Data(Bytes::from_static(b"ab")))
        );
        let (payload, _, _) = decode_pieces(
            Framing::Chunked,
            &[b"00000000000000000003\r\nabc\r\n0\r\n\r\n"],
        )
        .unwrap();
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn chunk_line_limit_is_enforced_even_without_newline() {
        let mut line = vec![b'1'; 1];
        line.push(b';');
        line.extend(std::iter::repeat_n(b'x', CHUNK_LINE_LIMIT));
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut result = Ok(Decoded::NeedMore);
        for piece in line.chunks(100) {
            let mut input = Bytes::copy_from_slice(piece);
            result = decoder.decode(&mut input);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(HttpError::ChunkLineTooLong {
                limit: CHUNK_LINE_LIMIT
            })
        );
        // Poisoned: the same error again.
        assert_eq!(
            decoder.decode(&mut Bytes::from_static(b"\r\n")),
            Err(HttpError::ChunkLineTooLong {
                limit: CHUNK_LINE_LIMIT
            })
        );
    }

    #[test]
    fn trailer_limit_is_enforced() {
        let mut body = b"0\r\n".to_vec();
        for _ in 0..1000 {
            body.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        body.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_pieces(Framing::Chunked, &[&body]).unwrap_err(),
            HttpError::TrailersTooLarge {
                limit: TRAILERS_LIMIT
            }
        );
        let pieces: Vec<&[u8]> = body.chunks(7).collect();
        assert_eq!(
            decode_pieces(Framing::Chunked, &pieces).unwrap_err(),
            HttpError::TrailersTooLarge {
                limit: TRAILERS_LIMIT
            }
        );
    }

    #[test]
    fn length_never_returns_bytes_past_the_length() {
        let mut decoder = BodyDecoder::new(Framing::Length(7));
        let mut input = Bytes::from_static(b"abcd");
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Decoded::Data(Bytes::from_static(b"abcd")))
        );
        assert_eq!(decoder.decode(&mut input), Ok(Decoded::NeedMore));
        let mut input = Bytes::from_static(b"efgHTTP/1.1 200 OK");
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Decoded::Data(Bytes::from_static(b"efg")))
        );
        assert_eq!(decoder.decode(&mut input), Ok(Decoded::Done));
        assert_eq!(&input[..], b"HTTP/1.1 200 OK");
        assert_eq!(decoder.received(), 7);
        assert!(decoder.is_done());
        assert_eq!(decoder.on_eof(), Ok(()));
    }

    #[test]
    fn length_data_is_split_off_without_copying() {
        let backing = Bytes::from(vec![7u8; 1000]);
        let mut input = backing.clone();
        let mut decoder = BodyDecoder::new(Framing::Length(600));
        let Ok(Decoded::Data(data)) = decoder.decode(&mut input) else {
            panic!("expected data");
        };
        assert_eq!(data.len(), 600);
        assert_eq!(data.as_ptr(), backing.as_ptr());
        assert_eq!(input.as_ptr(), backing[600..].as_ptr());
    }

    #[test]
    fn empty_and_zero_length_are_done_immediately() {
        for framing in [Framing::Empty, Framing::Length(0)] {
            let mut decoder = BodyDecoder::new(framing);
            let mut input = Bytes::from_static(b"not body");
            assert_eq!(decoder.decode(&mut input), Ok(Decoded::Done));
            assert_eq!(&input[..], b"not body");
            assert_eq!(decoder.on_eof(), Ok(()));
        }
    }

    #[test]
    fn eof_truncates_length_and_chunked_but_completes_close_delimited() {
        let mut decoder = BodyDecoder::new(Framing::Length(10));
        let _ = decoder.decode(&mut Bytes::from_static(b"abc")).unwrap();
        assert_eq!(
            decoder.on_eof(),
            Err(HttpError::Truncated {
                expected: Some(10),
                received: 3
            })
        );

        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut input = Bytes::from_static(b"3\r\nabc\r\n");
        assert_eq!(
            decoder.decode(&mut input),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut input), Ok(Decoded::NeedMore));
        assert!(!decoder.is_done());
        assert_eq!(
            decoder.on_eof(),
            Err(HttpError::Truncated {
                expected: None,
                received: 3
            })
        );

        let mut decoder = BodyDecoder::new(Framing::CloseDelimited);
        assert_eq!(
            decoder.decode(&mut Bytes::from_static(b"all of it")),
            Ok(Decoded::Data(Bytes::from_static(b"all of it")))
        );
        assert!(!decoder.is_done());
        assert_eq!(decoder.on_eof(), Ok(()));
        assert!(decoder.is_done());
        assert_eq!(decoder.received(), 9);
        assert_eq!(
            decoder.decode(&mut Bytes::from_static(b"x")),
            Ok(Decoded::Done)
        );
    }

    /// Chunk-encode `payload` with chunk sizes drawn from `sizes` (cycled, 1..=64).
    fn chunk_encode(payload: &[u8], sizes: &[u8], upper: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = payload;
        let mut sizes = sizes.iter().map(|&s| usize::from(s) % 64 + 1).cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            let size = if upper {
                format!("{n:X}")
            } else {
                format!("{n:x}")
            };
            out.extend_from_slice(size.as_bytes());
            if n % 3 == 0 {
                out.extend_from_slice(b";ext=1");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
            rest = tail;
        }
        out.extend_from_slice(b"0\r\nT: v\r\n\r\n");
        out
    }

    fn split_by<'a>(data: &'a [u8], splits: &[u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = data;
        let mut sizes = splits.iter().map(|&s| usize::from(s) % 23 + 1).cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }

    quickcheck::quickcheck! {
        fn chunked_round_trip_with_random_chunks_and_splits(
            payload: Vec<u8>, chunk_sizes: Vec<u8>, splits: Vec<u8>, upper: bool
        ) -> bool {
            let encoded = chunk_encode(&payload, &chunk_sizes, upper);
            let pieces = split_by(&encoded, &splits);
            matches!(decode_pieces(Framing::Chunked, &pieces),
                     Ok((decoded, true, _)) if decoded == payload)
        }

        fn chunked_decoder_never_panics_on_arbitrary_bytes(data: Vec<u8>, splits: Vec<u8>) -> bool {
            let pieces = split_by(&data, &splits);
            let _ = decode_pieces(Framing::Chunked, &pieces);
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let _ = decoder.on_eof();
            true
        }

        fn chunk_like_bytes_never_panic(parts: Vec<(u8, Vec<u8>)>) -> bool {
            let mut data = Vec::new();
            for (kind, bytes) in &parts {
                match kind % 5 {
                    0 => data.extend_from_slice(format!("{:x}", bytes.len()).as_bytes()),
                    1 => data.extend_from_slice(b"\r\n"),
                    2 => data.push(b'\n'),
                    3 => data.push(b';'),
                    _ => data.extend_from_slice(bytes),
                }
            }
            let pieces = split_by(&data, &[1, 2, 3]);
            let _ = decode_pieces(Framing::Chunked, &pieces);
            true
        }

        fn length_decoder_returns_exactly_the_length(data: Vec<u8>, len: u8, splits: Vec<u8>) -> bool {
            let len = u64::from(len);
            let mut pieces = split_by(&data, &splits);
            // A final empty read lets a zero-length body report Done too.
            pieces.push(&[]);
            match decode_pieces(Framing::Length(len), &pieces) {
                Ok((payload, done, rest)) => {
                    let expect = data.len().min(len as usize);
                    payload == data[..expect]
                        && done == (data.len() as u64 >= len)
                        && (!done || rest.len() <= data.len() - expect)
                }
                Err(_) => false,
            }
        }
    }
}

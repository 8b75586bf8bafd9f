//! Micro-benchmarks of haul-core's hot paths: response-head parsing, de-chunking, and the
//! engine's cost per received buffer next to the SHA-256 it must compute anyway.
//!
//! Run with `cargo bench -p haul-core` (about a minute); results and their reading are in
//! `core/benches/README.md`. Every group uses few samples and short measurement times: the
//! point is the order of magnitude, not a precise regression gate.

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use sha2::{Digest, Sha256};

use haul_core::http::{BodyDecoder, Decoded, Framing, HeadParser};
use haul_core::io::{ConnId, IoOp, IoRequest, IoResult};
use haul_core::{Config, Download, Engine, Event, Input, Instant, Output};

const MAX_HEAD: usize = 64 * 1024;

/// Deterministic content that does not repeat at short periods.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn quick<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

// ------------------------------------------------------------------------ response heads

/// A 200 as a CDN sends it for a large file.
const HEAD_200: &str = "HTTP/1.1 200 OK\r\n\
Date: Tue, 14 Jan 2025 09:12:44 GMT\r\n\
Server: nginx/1.24.0\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 734003200\r\n\
Last-Modified: Mon, 13 Jan 2025 17:02:11 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"6785467b-2bc00000\"\r\n\
Accept-Ranges: bytes\r\n\
Cache-Control: public, max-age=86400\r\n\
X-Cache: HIT from edge-fra-04\r\n\
Strict-Transport-Security: max-age=63072000\r\n\
\r\n";

/// The 206 answer to a resumed request for the same file.
const HEAD_206: &str = "HTTP/1.1 206 Partial Content\r\n\
Date: Tue, 14 Jan 2025 09:14:02 GMT\r\n\
Server: nginx/1.24.0\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 500170752\r\n\
Content-Range: bytes 233832448-734003199/734003200\r\n\
Last-Modified: Mon, 13 Jan 2025 17:02:11 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"6785467b-2bc00000\"\r\n\
Cache-Control: public, max-age=86400\r\n\
X-Cache: HIT from edge-fra-04\r\n\
Strict-Transport-Security: max-age=63072000\r\n\
\r\n";

fn parse_whole(head: &[u8]) -> u16 {
    let mut parser = HeadParser::new(MAX_HEAD);
    let (parsed, consumed) = parser
        .feed(head)
        .expect("valid head")
        .expect("complete head");
    assert_eq!(consumed, head.len());
    parsed.status
}

fn parse_bytewise(head: &[u8]) -> u16 {
    let mut parser = HeadParser::new(MAX_HEAD);
    for (i, byte) in head.iter().enumerate() {
        if let Some((parsed, consumed)) = parser.feed(std::slice::from_ref(byte)).expect("valid") {
            assert_eq!((i, consumed), (head.len() - 1, 1));
            return parsed.status;
        }
    }
    panic!("head never completed");
}

fn bench_head(c: &mut Criterion) {
    let mut group = c.benchmark_group("head");
    quick(&mut group);
    for (name, head) in [("200", HEAD_200), ("206", HEAD_206)] {
        let head = head.as_bytes();
        let status = parse_whole(head);
        assert_eq!(parse_bytewise(head), status);
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(format!("{name}/whole"), |b| {
            b.iter(|| parse_whole(black_box(head)))
        });
        group.bench_function(format!("{name}/1-byte-splits"), |b| {
            b.iter(|| parse_bytewise(black_box(head)))
        });
    }
    group.finish();
}

// ------------------------------------------------------------------------ de-chunking

/// `payload` framed as chunks of `chunk` bytes, each size line carrying `ext`, then the
/// last chunk and one trailer.
fn chunked(payload: &[u8], chunk: usize, ext: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / chunk * 32 + 64);
    for piece in payload.chunks(chunk) {
        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Checksum: none\r\n\r\n");
    out
}

/// Decode `body` delivered in reads of `read` bytes; returns the payload length.
fn dechunk(body: &Bytes, read: usize) -> u64 {
    let mut decoder = BodyDecoder::new(Framing::Chunked);
    let mut payload = 0u64;
    let mut at = 0;
    while at < body.len() {
        let end = (at + read).min(body.len());
        let mut input = body.slice(at..end);
        at = end;
        loop {
            match decoder.decode(&mut input).expect("valid chunked body") {
                Decoded::Data(d) => payload += black_box(d).len() as u64,
                Decoded::NeedMore => break,
                Decoded::Done => {
                    assert_eq!(at, body.len());
                    return payload;
                }
            }
        }
    }
    panic!("chunked body never ended");
}

fn bench_dechunk(c: &mut Criterion) {
    const PAYLOAD: usize = 1024 * 1024;
    let payload = pattern(PAYLOAD);
    let mut group = c.benchmark_group("dechunk");
    quick(&mut group);
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    let layouts = [
        ("16KiB-chunks-ext", 16 * 1024, ";name=\"value\";q=1"),
        ("100B-chunks", 100, ""),
    ];
    for (name, chunk, ext) in layouts {
        let body = Bytes::from(chunked(&payload, chunk, ext));
        // The whole body in one buffer, and in 64 KiB socket-sized reads that split size
        // lines and chunk data anywhere.
        for (read_name, read) in [("whole", body.len()), ("64KiB-reads", 64 * 1024)] {
            assert_eq!(dechunk(&body, read), PAYLOAD as u64);
            group.bench_function(format!("{name}/{read_name}"), |b| {
                b.iter(|| dechunk(black_box(&body), read))
            });
        }
    }
    group.finish();
}

// ------------------------------------------------------------------------ engine per buffer

const FILE_LEN: usize = 64 * 1024 * 1024;
/// Read sizes: a typical large socket read, and a small one that multiplies the engine's
/// per-buffer work by 16 for the same hashing.
const BUFFERS: [usize; 2] = [256 * 1024, 16 * 1024];
const URL: &str = "http://origin.test/files/image.bin";

/// What one connection answers: the head, then the body range, in `buffer`-sized reads.
struct Reply {
    head: Option<Bytes>,
    body: Bytes,
}

/// An in-memory driver: completes every request in issue order, serves `file` over HTTP
/// (200, or 206 to a `Range` request) without copying it, and pretends every file
/// operation succeeds on an empty disk. The clock advances 1 ms per network read.
struct Driver {
    file: Bytes,
    buffer: usize,
    etag: &'static str,
    replies: BTreeMap<ConnId, Reply>,
    queue: VecDeque<IoRequest>,
    now: Instant,
    /// Network reads completed.
    reads: usize,
    /// Bytes handed to `WriteAt`.
    written: u64,
}

impl Driver {
    fn new(file: Bytes, buffer: usize) -> Self {
        Driver {
            file,
            buffer,
            etag: "\"bench-1\"",
            replies: BTreeMap::new(),
            queue: VecDeque::new(),
            now: Instant::ZERO,
            reads: 0,
            written: 0,
        }
    }

    /// The reply to one request head.
    fn answer(&self, request: &[u8]) -> Reply {
        let text = std::str::from_utf8(request).expect("request head is ASCII");
        let total = self.file.len();
        let range = text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case("range") {
                return None;
            }
            let (from, to) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
            let from: usize = from.parse().ok()?;
            let to: usize = match to {
                "" => total - 1,
                to => to.parse::<usize>().ok()?.min(total - 1),
            };
            Some((from, to))
        });
        let (status, extra, body) = match range {
            Some((from, to)) => (
                "206 Partial Content",
                format!("Content-Range: bytes {from}-{to}/{total}\r\n"),
                self.file.slice(from..to + 1),
            ),
            None => ("200 OK", String::new(), self.file.clone()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\n{extra}ETag: {}\r\nAccept-Ranges: bytes\r\n\r\n",
            body.len(),
            self.etag
        );
        Reply {
            head: Some(Bytes::from(head)),
            body,
        }
    }

    fn complete(&mut self, op: IoOp) -> IoResult {
        match op {
            IoOp::Connect { .. } | IoOp::Close { .. } => IoResult::Done,
            IoOp::Send { conn, data } => {
                let reply = self.answer(&data);
                self.replies.insert(conn, reply);
                IoResult::Done
            }
            IoOp::Recv { conn, .. } => {
                self.reads += 1;
                self.now = Instant::from_nanos(self.now.as_nanos() + 1_000_000);
                let Some(reply) = self.replies.get_mut(&conn) else {
                    return IoResult::Eof;
                };
                if let Some(head) = reply.head.take() {
                    return IoResult::Data(head);
                }
                if reply.body.is_empty() {
                    return IoResult::Eof;
                }
                let n = self.buffer.min(reply.body.len());
                IoResult::Data(reply.body.split_to(n))
            }
            IoOp::ReadFile { .. } | IoOp::OpenRead { .. } => IoResult::NotFound,
            IoOp::Open { .. } | IoOp::OpenUnnamed { .. } => IoResult::Opened { len: 0 },
            // Read-back of bytes written earlier: they are the file's bytes.
            IoOp::ReadAt { offset, len, .. } => {
                let from = (offset as usize).min(self.file.len());
                let to = from.saturating_add(len as usize).min(self.file.len());
                IoResult::Data(self.file.slice(from..to))
            }
            IoOp::WriteAt { data, .. } => {
                self.written += data.len() as u64;
                IoResult::Done
            }
            // The bytes written are the file's bytes.
            IoOp::Digest { len, .. } => {
                use sha2::Digest as _;
                let to = (len as usize).min(self.file.len());
                IoResult::Digest(sha2::Sha256::digest(&self.file[..to]).into())
            }
            IoOp::WriteFileAtomic { .. }
            | IoOp::CopyFile { .. }
            | IoOp::SetLen { .. }
            | IoOp::Sync { .. }
            | IoOp::CloseFile { .. }
            | IoOp::Rename { .. }
            | IoOp::Publish { .. }
            | IoOp::Remove { .. }
            | IoOp::RemoveUnheld { .. } => IoResult::Done,
        }
    }

    /// Runs `spec` to the end; returns the committed file's digest.
    fn run(&mut self, spec: Download) -> [u8; 32] {
        let mut engine = Engine::new(Config::default(), self.now).expect("default config");
        engine.submit(self.now, spec);
        let mut finished = None;
        loop {
            while let Some(output) = engine.poll_output() {
                match output {
                    Output::Io(request) => self.queue.push_back(request),
                    Output::Event(Event::Finished { result, .. }) => finished = Some(result),
                    Output::Event(event) => {
                        black_box(event);
                    }
                }
            }
            if let Some(result) = finished.take() {
                let outcome = result.expect("the download succeeds");
                assert_eq!(outcome.size, self.file.len() as u64);
                return outcome.sha256;
            }
            let request = self
                .queue
                .pop_front()
                .expect("the engine waits for I/O while the job runs");
            let result = self.complete(request.op);
            let input = Input::Io {
                id: request.id,
                result,
            };
            engine.handle_input(self.now, input);
        }
    }
}

fn download(expected: Option<&str>) -> Download {
    let spec = Download::new(URL, "/bench/image.bin").expect("valid download");
    match expected {
        Some(hex) => spec.sha256(hex).expect("valid digest"),
        None => spec,
    }
}

fn bench_engine(c: &mut Criterion) {
    let file = Bytes::from(pattern(FILE_LEN));
    let digest: [u8; 32] = Sha256::digest(&file).into();
    let hex_digest = hex::encode(digest);

    for buffer in BUFFERS {
        // One run up front: the download completes, every byte was written once, and the
        // body came in the expected number of reads (plus the head's and the end's).
        let mut probe = Driver::new(file.clone(), buffer);
        assert_eq!(probe.run(download(Some(&hex_digest))), digest);
        assert_eq!(probe.written, FILE_LEN as u64);
        assert!(
            probe.reads <= FILE_LEN / buffer + 2,
            "reads: {}",
            probe.reads
        );

        let mut group = c.benchmark_group(format!(
            "engine/{}MiB-in-{}KiB-buffers",
            FILE_LEN >> 20,
            buffer >> 10
        ));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sampling_mode(criterion::SamplingMode::Flat)
            .throughput(Throughput::Bytes(FILE_LEN as u64));

        // The floor: SHA-256 over the same buffers, which any verified download pays.
        group.bench_function("sha256-only", |b| {
            b.iter(|| {
                let mut hasher = Sha256::new();
                for piece in file.chunks(buffer) {
                    hasher.update(black_box(piece));
                }
                let out: [u8; 32] = hasher.finalize().into();
                assert_eq!(out, digest);
            })
        });
        // The engine always hashes; an expected digest adds the existing-destination check
        // and the final comparison.
        group.bench_function("engine/no-expected-sha256", |b| {
            b.iter(|| {
                let mut driver = Driver::new(file.clone(), buffer);
                assert_eq!(driver.run(download(None)), digest);
            })
        });
        group.bench_function("engine/expected-sha256", |b| {
            b.iter(|| {
                let mut driver = Driver::new(file.clone(), buffer);
                assert_eq!(driver.run(download(Some(&hex_digest))), digest);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_head, bench_dechunk, bench_engine);
criterion_main!(benches);

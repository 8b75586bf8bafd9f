//! Sans-IO HTTP/1.1 client codec: bytes in, bytes and parsed values out.
//!
//! This module owns the wire format of one HTTP/1.1 client exchange and the header
//! helpers every download path needs:
//!
//! - [`write_request`]: serialise a `GET`/`HEAD` request head (origin form, or absolute
//!   form for plain-HTTP proxies) with a validated header list.
//! - [`HeadParser`]: incremental response-head parser on `httparse`; input may be split at
//!   any byte, 1xx informational responses (except 101) are skipped, the head size is
//!   bounded.
//! - [`framing`] / [`keep_alive`]: RFC 9112 section 6.3 body framing and connection reuse.
//! - [`BodyDecoder`]: zero-copy body decoder (length, chunked, close-delimited) that
//!   accepts input split at any byte.
//! - Header helpers: [`parse_content_range`], [`parse_retry_after`], [`is_strong_etag`],
//!   [`content_disposition_filename`], [`resolve_location`], [`Origin`].
//!
//! Out of scope, by design: any I/O (sockets, TLS, files), clocks and timeouts (the caller
//! supplies time), HTTP/2 and HTTP/3, request pipelining (one request in flight per
//! connection), content codings (no gzip/deflate/br decompression: a `Transfer-Encoding`
//! other than `chunked` is an error, `Content-Encoding` is passed through untouched),
//! request bodies (only `GET` and `HEAD` are written), cookies, authentication schemes,
//! redirect and retry policy (the engine decides; this module only parses), and servers.

mod body;
mod headers;
mod request;
mod response;

pub use body::{BodyDecoder, Decoded, CHUNK_LINE_LIMIT, TRAILERS_LIMIT};
pub use headers::{
    content_disposition_filename, is_strong_etag, parse_content_range, parse_retry_after,
    unrequested_content_coding, ContentRange, Headers, RETRY_AFTER_CAP,
};
pub use request::{resolve_location, write_request, Method, Origin, Scheme};
pub use response::{framing, keep_alive, Framing, HeadParser, ResponseHead};

/// Everything that can go wrong while writing a request or decoding a response.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The response head grew past the configured limit before its end was seen.
    #[error("HTTP response head exceeds the limit of {limit} bytes")]
    HeadTooLarge { limit: usize },
    /// The response head is not valid HTTP/1.x (bad status line, bad header syntax,
    /// obsolete line folding, ...).
    #[error("malformed HTTP response head: {0}")]
    MalformedHead(String),
    /// A request header name is not a token, or its value contains CR, LF or NUL.
    #[error("invalid request header {name:?}: name must be a token and the value must not contain CR, LF or NUL")]
    InvalidHeaderValue { name: String },
    /// Content-Length is unparsable, negative, overflowing or conflicting (in a response
    /// head, which is then malformed: the message says so).
    #[error("malformed HTTP response head: invalid Content-Length: {0}")]
    InvalidContentLength(String),
    /// Transfer-Encoding is anything other than exactly `chunked`.
    #[error("unsupported Transfer-Encoding: {0:?} (only \"chunked\" is supported)")]
    UnsupportedTransferEncoding(String),
    /// The chunked body framing is broken.
    #[error("malformed chunked body: {0}")]
    MalformedChunk(String),
    /// A chunk-size line is longer than the limit.
    #[error("chunk size line exceeds the limit of {limit} bytes")]
    ChunkLineTooLong { limit: usize },
    /// The chunked trailer section is longer than the limit.
    #[error("chunked trailer section exceeds the limit of {limit} bytes")]
    TrailersTooLarge { limit: usize },
    /// The connection closed before the body was complete.
    #[error("connection closed before the body ended: received {received} bytes, expected {}", match .expected { Some(n) => n.to_string(), None => "more (chunked body not terminated)".to_string() })]
    Truncated {
        expected: Option<u64>,
        received: u64,
    },
    /// A 206 body that ended as its framing says (a close, a last chunk) before the end of
    /// the range its own `Content-Range` announced.
    #[error("the body ended after {received} bytes, short of the {expected} its Content-Range announced")]
    ShortRange { expected: u64, received: u64 },
    /// The URL cannot be requested by this client (not http/https, no host, ...).
    #[error("unsupported URL: {0}")]
    UnsupportedUrl(String),
}

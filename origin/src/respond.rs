//! The request handler: records each request, finds its route, and turns the route's
//! [`Behavior`] into a response (status, headers, framing and body plan). It owns the
//! mapping from behaviours to HTTP; range arithmetic lives in `range`, byte production in
//! `body`, connection handling in `server`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Version};
use axum::response::Response;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::body::{BodyError, BodyPlan, Ending, Source, MAX_PIECE};
use crate::range::{self, RangeDecision, Validators};
use crate::state::{Content, RouteHit, Shared};
use crate::{Behavior, RequestRecord};

/// The id of the TCP connection a request arrived on, put into request extensions by
/// `server`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionId(pub(crate) u64);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// How a body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
    /// No length, no chunking; the server closes after the body.
    CloseDelimited,
}

/// Which `Range` requests a behaviour honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSupport {
    /// Every range, as [`Behavior::Normal`] describes.
    All,
    /// Only ranges from byte 0; any other gets the full 200.
    FromZero,
    /// None: always the full 200, and no `Accept-Ranges`.
    Ignored,
}

/// How one behaviour serves its representation.
#[derive(Debug, Clone, Copy)]
struct Serving {
    ranges: RangeSupport,
    /// The most bytes one 206 carries (None: the whole range asked for).
    range_cap: Option<u64>,
    framing: Framing,
    piece: usize,
    bytes_per_sec: Option<u64>,
    /// Body bytes to send before `cut` happens (None: all of them).
    cut_after: Option<u64>,
    cut: Ending,
    filler: u64,
}

impl Serving {
    fn normal() -> Serving {
        Serving {
            ranges: RangeSupport::All,
            range_cap: None,
            framing: Framing::ContentLength,
            piece: MAX_PIECE,
            bytes_per_sec: None,
            cut_after: None,
            cut: Ending::Complete,
            filler: 0,
        }
    }
}

/// One representation at request time.
struct Representation {
    source: Source,
    len: u64,
    etag: String,
    last_modified: SystemTime,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let connection_id = request
        .extensions()
        .get::<ConnectionId>()
        .map_or(0, |id| id.0);
    let record = RequestRecord {
        method: request.method().as_str().to_owned(),
        path: request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |pq| pq.as_str().to_owned(),
        ),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        connection_id,
    };
    tracing::debug!(method = %record.method, path = %record.path, connection_id, "haul-origin request");
    let Some(hit) = shared.record_and_lookup(record, request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "no route at this path");
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (parts, _body) = request.into_parts();
    respond(&parts, hit).await
}

async fn respond(request: &Parts, hit: RouteHit) -> Response {
    let mut serving = Serving::normal();
    let mut extra_headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    match &hit.behavior {
        Behavior::Normal => {}
        Behavior::IgnoreRange => serving.ranges = RangeSupport::Ignored,
        Behavior::RangeFromZeroOnly => serving.ranges = RangeSupport::FromZero,
        Behavior::CapRange { max } => serving.range_cap = Some((*max).max(1)),
        Behavior::Chunked { chunk } => {
            serving.framing = Framing::Chunked;
            serving.piece = (*chunk).max(1);
        }
        Behavior::CloseDelimited => serving.framing = Framing::CloseDelimited,
        Behavior::Truncate { after } => {
            serving.cut_after = Some(*after);
            serving.cut = Ending::Abort;
        }
        Behavior::Stall { after } => {
            serving.cut_after = Some(*after);
            serving.cut = Ending::Stall;
        }
        Behavior::Trickle { bytes_per_sec } => {
            let rate = (*bytes_per_sec).max(1);
            serving.bytes_per_sec = Some(rate);
            serving.piece = usize::try_from(rate / 20)
                .unwrap_or(MAX_PIECE)
                .clamp(1, MAX_PIECE);
        }
        Behavior::Redirect { status, location } => {
            let Ok(location) = HeaderValue::from_str(location) else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "haul-origin: redirect location is not a valid header value",
                );
            };
            let mut response = text(status_code(*status), "redirecting");
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
        Behavior::Status {
            status,
            retry_after,
        } => return failure(*status, retry_after.as_deref()),
        Behavior::FailTimes { times, status } => {
            if hit.earlier_hits < *times {
                return failure(*status, None);
            }
        }
        Behavior::Endless { extra } => {
            serving.ranges = RangeSupport::Ignored;
            serving.framing = Framing::CloseDelimited;
            serving.filler = *extra;
        }
        Behavior::Attachment { filename } => {
            let value = format!("attachment; filename=\"{filename}\"");
            let Ok(value) = HeaderValue::from_str(&value) else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "haul-origin: attachment filename is not a valid header value",
                );
            };
            extra_headers.push((header::CONTENT_DISPOSITION, value));
        }
        Behavior::RequireAuth { expected } => {
            let authorized = request
                .headers
                .get(header::AUTHORIZATION)
                .is_some_and(|value| value.as_bytes() == expected.as_bytes());
            if !authorized {
                let mut response = text(StatusCode::UNAUTHORIZED, "authorization required");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"haul-origin\""),
                );
                return response;
            }
        }
    }
    let representation = match representation(hit.content).await {
        Ok(representation) => representation,
        Err(response) => return response,
    };
    let mut response = serve(request, representation, serving);
    response.headers_mut().extend(extra_headers);
    response
}

/// Resolves the route's content to bytes, length and validators; a vanished file is a 404.
async fn representation(content: Content) -> Result<Representation, Response> {
    match content {
        Content::Memory {
            body,
            etag,
            last_modified,
        } => Ok(Representation {
            len: body.len() as u64,
            source: Source::Memory(body),
            etag,
            last_modified,
        }),
        Content::File(path) => {
            let metadata = match tokio::fs::metadata(&path).await {
                Ok(metadata) if metadata.is_file() => metadata,
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %path.display(), "haul-origin: served file is gone");
                    return Err(text(StatusCode::NOT_FOUND, "file is gone"));
                }
            };
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            Ok(Representation {
                etag: file_etag(&path, metadata.len(), modified),
                len: metadata.len(),
                last_modified: modified,
                source: Source::File(path),
            })
        }
    }
}

/// A strong ETag for a file from its path, length and modification time (hashing the
/// content of a large file per request would be too slow).
fn file_etag(path: &std::path::Path, len: u64, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let mut hasher = Sha256::new();
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(len.to_be_bytes());
    hasher.update(nanos.to_be_bytes());
    format!("\"{}\"", hex::encode(&hasher.finalize()[..8]))
}

fn serve(request: &Parts, representation: Representation, serving: Serving) -> Response {
    let is_head = request.method == Method::HEAD;
    let header_text = |name: HeaderName| {
        request
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let decision = if serving.ranges != RangeSupport::Ignored && !is_head {
        range::decide(
            header_text(header::RANGE),
            header_text(header::IF_RANGE),
            Validators {
                etag: &representation.etag,
                last_modified: representation.last_modified,
            },
            representation.len,
        )
    } else {
        RangeDecision::Full
    };
    let decision = match decision {
        RangeDecision::Partial { first, .. }
            if first > 0 && serving.ranges == RangeSupport::FromZero =>
        {
            RangeDecision::Full
        }
        RangeDecision::Partial { first, last } if serving.range_cap.is_some() => {
            let cap = serving.range_cap.unwrap_or(u64::MAX);
            RangeDecision::Partial {
                first,
                last: last.min(first.saturating_add(cap - 1)),
            }
        }
        decision => decision,
    };

    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&representation.etag));
    headers.insert(
        header::LAST_MODIFIED,
        header_value(&httpdate::fmt_http_date(representation.last_modified)),
    );
    if serving.ranges != RangeSupport::Ignored {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let (status, offset, len) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0, representation.len),
        RangeDecision::Partial { first, last } => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {first}-{last}/{}", representation.len)),
            );
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        RangeDecision::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{}", representation.len)),
            );
            // An empty body of exact size: hyper sends Content-Length: 0.
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            *response.headers_mut() = headers;
            return response;
        }
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let mut version = Version::HTTP_11;
    match serving.framing {
        Framing::ContentLength => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        // hyper chunks a body of unknown size on an HTTP/1.1 response.
        Framing::Chunked => {}
        // hyper delimits a body of unknown size by closing only on an HTTP/1.0 response.
        Framing::CloseDelimited => {
            version = Version::HTTP_10;
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let body = if is_head {
        // A body of unknown size: axum then adds no `Content-Length: 0` (which would
        // misdescribe the GET body) before it drops the body for HEAD.
        Body::from_stream(futures_util::stream::empty::<Result<bytes::Bytes, BodyError>>())
    } else {
        let (send_len, ending) = match serving.cut_after {
            Some(after) if after < len => (after, serving.cut),
            _ => (len, Ending::Complete),
        };
        let plan = BodyPlan {
            source: representation.source,
            offset,
            len: send_len,
            filler: serving.filler,
            piece: serving.piece,
            bytes_per_sec: serving.bytes_per_sec,
            ending,
        };
        Body::from_stream(plan.into_stream())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn failure(status: u16, retry_after: Option<&str>) -> Response {
    let code = status_code(status);
    let mut response = text(
        code,
        &format!(
            "{} {}",
            code.as_u16(),
            code.canonical_reason().unwrap_or("failure")
        ),
    );
    if let Some(retry_after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header_value(retry_after));
    }
    response
}

/// A short plain-text response with an exact Content-Length.
fn text(status: StatusCode, message: &str) -> Response {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

//! The origin's shared state: the route table and the request log. Owns route lookup
//! (including percent-decoding of request paths) and the validators (ETag, Last-Modified)
//! of in-memory content; it does not build responses (see `respond`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{Behavior, OriginError, RequestRecord};

/// What a route serves.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// Bytes held in memory, with validators computed when they were set.
    Memory {
        body: Bytes,
        etag: String,
        last_modified: SystemTime,
    },
    /// A file read from disk per request; validators come from its metadata at request time.
    File(PathBuf),
}

#[derive(Debug)]
struct Route {
    content: Content,
    behavior: Behavior,
    /// Requests answered at this route since it was (re)registered.
    hits: u32,
}

/// A route as seen by one request.
#[derive(Debug, Clone)]
pub(crate) struct RouteHit {
    pub(crate) content: Content,
    pub(crate) behavior: Behavior,
    /// How many requests this route answered before this one.
    pub(crate) earlier_hits: u32,
}

#[derive(Debug)]
struct State {
    routes: HashMap<String, Route>,
    log: Vec<RequestRecord>,
    /// Counts in-memory representations created, so each gets a distinct Last-Modified.
    representations: u64,
}

/// State shared between the [`crate::Origin`] handle and the request handler.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Last-Modified of in-memory content is `epoch_of_content + n seconds` for the n-th
    /// representation: always in the past, and distinct per representation so that an
    /// `If-Range` date never matches replaced content.
    epoch_of_content: SystemTime,
}

/// `"` + the first 16 hex digits of SHA-256(`bytes`) + `"`.
pub(crate) fn strong_etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..8]))
}

/// Whole seconds only, as HTTP dates carry no more.
fn truncate_to_seconds(time: SystemTime) -> SystemTime {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

impl Shared {
    pub(crate) fn new() -> Shared {
        let day = Duration::from_secs(24 * 60 * 60);
        let now = SystemTime::now();
        Shared {
            state: Mutex::new(State {
                routes: HashMap::new(),
                log: Vec::new(),
                representations: 0,
            }),
            epoch_of_content: truncate_to_seconds(now.checked_sub(day).unwrap_or(now)),
        }
    }

    /// A panic in one handler must not take the whole origin down with a poisoned lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn memory_content(&self, state: &mut State, body: Bytes) -> Content {
        state.representations += 1;
        Content::Memory {
            etag: strong_etag(&body),
            last_modified: self.epoch_of_content + Duration::from_secs(state.representations),
            body,
        }
    }

    pub(crate) fn set_route(&self, path: &str, body: Bytes, behavior: Behavior) {
        let mut state = self.lock();
        let content = self.memory_content(&mut state, body);
        state.routes.insert(
            path.to_owned(),
            Route {
                content,
                behavior,
                hits: 0,
            },
        );
    }

    pub(crate) fn replace_body(&self, path: &str, body: Bytes) {
        let mut state = self.lock();
        let content = self.memory_content(&mut state, body);
        match state.routes.get_mut(path) {
            Some(route) => route.content = content,
            None => {
                state.routes.insert(
                    path.to_owned(),
                    Route {
                        content,
                        behavior: Behavior::Normal,
                        hits: 0,
                    },
                );
            }
        }
    }

    pub(crate) fn memory_etag(&self, path: &str) -> Option<String> {
        match &self.lock().routes.get(path)?.content {
            Content::Memory { etag, .. } => Some(etag.clone()),
            Content::File(_) => None,
        }
    }

    pub(crate) fn add_dir(&self, dir: &Path) -> Result<usize, OriginError> {
        let root = dir.canonicalize().map_err(|source| OriginError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        collect_files(&root, "", &mut files)?;
        let count = files.len();
        let mut state = self.lock();
        for (route_path, file) in files {
            state.routes.insert(
                route_path,
                Route {
                    content: Content::File(file),
                    behavior: Behavior::Normal,
                    hits: 0,
                },
            );
        }
        Ok(count)
    }

    /// Records a request and, if a route matches its path, counts the hit and returns it.
    pub(crate) fn record_and_lookup(&self, record: RequestRecord, path: &str) -> Option<RouteHit> {
        let mut state = self.lock();
        state.log.push(record);
        let key = if state.routes.contains_key(path) {
            path.to_owned()
        } else {
            percent_decode(path).filter(|decoded| state.routes.contains_key(decoded))?
        };
        let route = state.routes.get_mut(&key)?;
        let earlier_hits = route.hits;
        route.hits = route.hits.saturating_add(1);
        Some(RouteHit {
            content: route.content.clone(),
            behavior: route.behavior.clone(),
            earlier_hits,
        })
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    pub(crate) fn clear_requests(&self) {
        self.lock().log.clear();
    }
}

/// Walks `dir` (whose route prefix is `prefix`), collecting (route path, file path) for
/// regular files and symlinks to regular files. Symlinked directories are not followed
/// (no loops); names that are not UTF-8 are skipped with a warning.
fn collect_files(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), OriginError> {
    let read_error = |source| OriginError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %entry.path().display(), "haul-origin skips a non-UTF-8 file name");
            continue;
        };
        let route_path = format!("{prefix}/{name}");
        let file_type = entry.file_type().map_err(read_error)?;
        if file_type.is_dir() {
            collect_files(&entry.path(), &route_path, files)?;
        } else if file_type.is_file()
            || (file_type.is_symlink() && entry.path().metadata().is_ok_and(|m| m.is_file()))
        {
            files.push((route_path, entry.path()));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex_digits = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex_digits, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_etag_is_quoted_first_16_hex_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(strong_etag(b"abc"), "\"ba7816bf8f01cfea\"");
    }

    #[test]
    fn percent_decode_decodes_escapes_and_rejects_malformed_ones() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/plain"), None);
        assert_eq!(percent_decode("/bad%2"), None);
        assert_eq!(percent_decode("/bad%zz"), None);
    }

    #[test]
    fn replaced_body_gets_new_etag_and_later_last_modified() {
        let shared = Shared::new();
        shared.set_route("/x", Bytes::from_static(b"one"), Behavior::Normal);
        let first = shared.record_and_lookup(record("/x"), "/x").unwrap();
        shared.replace_body("/x", Bytes::from_static(b"two"));
        let second = shared.record_and_lookup(record("/x"), "/x").unwrap();
        let (
            Content::Memory {
                etag: etag1,
                last_modified: lm1,
                ..
            },
            Content::Memory {
                etag: etag2,
                last_modified: lm2,
                ..
            },
        ) = (first.content, second.content)
        else {
            panic!("expected in-memory content");
        };
        assert_ne!(etag1, etag2);
        assert!(lm2 > lm1);
        assert_eq!(second.earlier_hits, 1);
    }

    fn record(path: &str) -> RequestRecord {
        RequestRecord {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            connection_id: 1,
        }
    }
}

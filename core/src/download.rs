//! What the caller asks for: a [`Download`] (URL, destination, expectations) and what it gets
//! back: an [`Outcome`]. Expectations are a size, a SHA-256 (haul's own digest, computed as
//! bytes arrive) and optionally one more digest of another algorithm ([`ChecksumAlgorithm`],
//! what aria2 lists carry), checked by reading the file back before the commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::DownloadError;
use crate::working_name::{working_stem, MAX_NAME_BYTES};

/// Default smallest segment of a segmented download.
pub const DEFAULT_MIN_SEGMENT: u64 = 1024 * 1024;

/// Where the verified file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Exactly this path.
    File(PathBuf),
    /// This directory; the name comes from `Content-Disposition`, else the URL's last path
    /// segment (else `download`).
    Dir(PathBuf),
}

/// One file to fetch and verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub(crate) url: url::Url,
    /// Other URLs serving the same bytes, in the caller's order of preference.
    pub(crate) mirrors: Vec<url::Url>,
    pub(crate) dest: Destination,
    pub(crate) sha256: Option<[u8; 32]>,
    /// Another digest to check before the commit (see [`Download::checksum`]).
    pub(crate) checksum: Option<ExpectedChecksum>,
    pub(crate) size: Option<u64>,
    pub(crate) max_size: Option<u64>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) priority: crate::sched::Priority,
    pub(crate) depends_on: Vec<crate::engine::JobId>,
    pub(crate) depends_on_index: Vec<usize>,
    pub(crate) segments: u32,
    pub(crate) min_segment: u64,
    pub(crate) rate_limit: Option<u64>,
    /// Sync the file and its directory at commit (see [`Download::defer_sync`]).
    pub(crate) sync: bool,
    /// Nothing of an earlier download is there (see [`Download::fresh`]).
    pub(crate) fresh: bool,
}

/// What a file destination's path says by itself: not empty, not naming a directory (`dir/`,
/// `.`, `..`), a file name that fits file systems and is not one of haul's working files.
/// An existing directory, device, FIFO or socket at the path is for the runtime to refuse:
/// when the download is submitted (see [`crate::Engine::submit_batch_checked`]), and again
/// at the commit (it never replaces one).
fn check_file_dest(dest: &Path) -> Result<(), DownloadError> {
    let raw = dest.as_os_str().as_encoded_bytes();
    if raw.is_empty() {
        return Err(DownloadError::InvalidRequest(
            "the destination path is empty".into(),
        ));
    }
    let last = raw
        .rsplit(|b| *b == b'/' || (cfg!(windows) && *b == b'\\'))
        .next()
        .unwrap_or_default();
    if last.is_empty() || last == b"." || last == b".." {
        return Err(DownloadError::InvalidRequest(format!(
            "destination {} names a directory, not a file",
            dest.display()
        )));
    }
    if let Some(name) = dest.file_name() {
        let len = name.as_encoded_bytes().len();
        if len > MAX_NAME_BYTES {
            return Err(DownloadError::InvalidRequest(format!(
                "destination {} has a file name of {len} bytes; file systems take at \
                 most {MAX_NAME_BYTES}",
                dest.display()
            )));
        }
    }
    if let Some(name) = dest.file_name().and_then(|n| n.to_str()) {
        if is_reserved_name(name) {
            return Err(DownloadError::InvalidRequest(format!(
                "destination {} ends like one of haul's working files ({})",
                dest.display(),
                RESERVED_SUFFIXES.join(", ")
            )));
        }
    }
    Ok(())
}

impl Download {
    /// A download of `url` to the file `dest`.
    pub fn new(url: &str, dest: impl Into<PathBuf>) -> Result<Download, DownloadError> {
        Download::from_url(parse_url(url)?, dest)
    }

    /// [`Download::new`] for a URL parsed already (checked the same way: http or https, with
    /// a host).
    pub fn from_url(url: url::Url, dest: impl Into<PathBuf>) -> Result<Download, DownloadError> {
        let dest = dest.into();
        check_url(&url)?;
        check_file_dest(&dest)?;
        Ok(Download::with_dest(url, Destination::File(dest)))
    }

    /// A download of the checked `url` to `dest`, with every other setting at its default.
    fn with_dest(url: url::Url, dest: Destination) -> Download {
        Download {
            url,
            mirrors: Vec::new(),
            dest,
            sha256: None,
            checksum: None,
            size: None,
            max_size: None,
            headers: Vec::new(),
            priority: crate::sched::Priority::Normal,
            depends_on: Vec::new(),
            depends_on_index: Vec::new(),
            segments: 1,
            min_segment: DEFAULT_MIN_SEGMENT,
            rate_limit: None,
            sync: true,
            fresh: false,
        }
    }

    /// Commit without making the file durable: it is still verified before anything is
    /// committed and still renamed into place atomically, but neither its data nor the rename
    /// is synced. For a caller that makes many files durable at once and records them only
    /// afterwards (haul's module store syncs a load's modules together before its index
    /// marks them stored, and removes unrecorded files after a crash). Until the caller
    /// syncs, a crash may lose the file or leave it empty at its destination.
    pub fn defer_sync(mut self) -> Download {
        self.sync = false;
        self
    }

    /// Start from nothing without looking: the caller guarantees that nothing of an earlier
    /// download of this destination is there to reuse (no file at the destination, no
    /// partial, no state file), so the engine neither hashes an existing destination nor
    /// reads a state file before its first request. For a caller that owns the destination's
    /// directory and has just cleared it (haul's module store, whose recovery removes every
    /// file it has not recorded). If the guarantee is broken the result is still right: a
    /// file at the destination is replaced at commit and a partial is overwritten from byte
    /// 0; only a stale state file stays behind, naming a partial that is gone, which a later
    /// download of the destination finds and starts over from byte 0.
    pub fn fresh(mut self) -> Download {
        self.fresh = true;
        self
    }

    /// Whether [`Download::fresh`] was asked for.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// A download of `url` into the directory `dir`.
    pub fn into_dir(url: &str, dir: impl Into<PathBuf>) -> Result<Download, DownloadError> {
        Ok(Download::with_dest(
            parse_url(url)?,
            Destination::Dir(dir.into()),
        ))
    }

    /// Another URL that serves the same bytes. A download with mirrors fails over to
    /// another one when an attempt fails or an origin's circuit breaker is open, and prefers
    /// the mirror with the best observed throughput and latency (sampling the others now
    /// and then). Credentials set with [`Download::header`] (`Authorization`, `Cookie`) go
    /// only to the first URL's origin. Without an expected sha256, switching mirrors
    /// restarts from zero rather than resuming one server's partial from another.
    pub fn mirror(mut self, url: &str) -> Result<Download, DownloadError> {
        let u = parse_url(url)?;
        if u != self.url && !self.mirrors.contains(&u) {
            self.mirrors.push(u);
        }
        Ok(self)
    }

    /// The mirrors given with [`Download::mirror`].
    pub fn mirrors(&self) -> &[url::Url] {
        &self.mirrors
    }

    /// Expect this SHA-256 (64 hex digits, either case).
    pub fn sha256(mut self, hex_digest: &str) -> Result<Download, DownloadError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).map_err(|_| {
            DownloadError::InvalidRequest(format!(
                "sha256 must be 64 hex digits, got {hex_digest:?}"
            ))
        })?;
        self.sha256 = Some(out);
        Ok(self)
    }

    /// Expect this digest of another algorithm than SHA-256 (`hex_digest`: hex digits,
    /// either case, as many as the algorithm's digest has: 40 for sha-1, 32 for md5, ...).
    /// The engine reads the complete file back (in chunks of 1 MiB) once size and SHA-256
    /// passed, and commits only if this digest matches too; a mismatch is a
    /// [`DownloadError::ChecksumMismatch`] and is handled like a SHA-256 mismatch (retried
    /// from zero, then nothing committed). One checksum per download: a second call replaces
    /// the first. With [`Download::sha256`] too, both are checked. The read-back costs a
    /// second pass over the file, so prefer [`Download::sha256`] when the SHA-256 is known.
    pub fn checksum(
        mut self,
        algorithm: ChecksumAlgorithm,
        hex_digest: &str,
    ) -> Result<Download, DownloadError> {
        self.checksum = Some(ExpectedChecksum::parse(algorithm, hex_digest)?);
        Ok(self)
    }

    /// Expect exactly this many bytes.
    pub fn size(mut self, bytes: u64) -> Download {
        self.size = Some(bytes);
        self
    }

    /// Refuse bodies larger than this (checked as bytes arrive).
    pub fn max_size(mut self, bytes: u64) -> Download {
        self.max_size = Some(bytes);
        self
    }

    /// Send an extra request header (e.g. `Authorization`). `Authorization` and `Cookie`
    /// are dropped when a redirect leaves the origin.
    pub fn header(mut self, name: &str, value: &str) -> Download {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Scheduling class (default Normal).
    pub fn priority(mut self, p: crate::sched::Priority) -> Download {
        self.priority = p;
        self
    }

    /// Start only after `job` succeeded (fail if it fails). `job` is an id of the same
    /// engine (client), given before this download is submitted: a later id, or this
    /// download's own, is refused ([`DownloadError::DependencyUnknown`],
    /// [`DownloadError::InvalidRequest`]), so no cycle can form. Ids are numbers counted per
    /// engine: an id from another client names whatever job of this one has that number.
    ///
    /// [`DownloadError::DependencyUnknown`]: crate::DownloadError::DependencyUnknown
    /// [`DownloadError::InvalidRequest`]: crate::DownloadError::InvalidRequest
    pub fn after(mut self, job: crate::engine::JobId) -> Download {
        self.depends_on.push(job);
        self
    }

    /// Start only after the `index`-th download of the same [`crate::Engine::submit_batch`]
    /// call succeeded (it must come earlier in the batch).
    pub fn after_index(mut self, index: usize) -> Download {
        self.depends_on_index.push(index);
        self
    }

    /// Fetch over up to `n` connections at once when the server honours ranges; `n` is
    /// taken between 1 and [`MAX_SEGMENTS`].
    pub fn segments(mut self, n: u32) -> Download {
        self.segments = n.clamp(1, MAX_SEGMENTS);
        self
    }

    /// Smallest segment worth its own connection (default 1 MiB).
    pub fn min_segment(mut self, bytes: u64) -> Download {
        self.min_segment = bytes.max(1);
        self
    }

    /// Limit this download to `bytes_per_sec`; 0 means no limit of its own (as for
    /// `--limit-rate 0`, curl and aria2; it was 1 byte per second).
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> Download {
        self.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// The expected SHA-256, when given.
    pub fn expected_sha256(&self) -> Option<[u8; 32]> {
        self.sha256
    }

    /// The expected checksum of another algorithm, when given ([`Download::checksum`]).
    pub fn expected_checksum(&self) -> Option<&ExpectedChecksum> {
        self.checksum.as_ref()
    }

    /// The expected size in bytes, when given ([`Download::size`]).
    pub fn expected_size(&self) -> Option<u64> {
        self.size
    }

    /// The URL asked for.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The destination.
    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// Path of the partial file while the download runs (`<dest>.haul-part`, see
    /// [`working_sibling`] for long names).
    pub fn part_path(&self) -> PathBuf {
        working_sibling(&self.provisional_path(), ".haul-part")
    }

    /// Path of the small state file beside the partial (`<dest>.haul-state`, see
    /// [`working_sibling`] for long names).
    pub fn state_path(&self) -> PathBuf {
        working_sibling(&self.provisional_path(), ".haul-state")
    }

    /// The destination path as far as it is known before the response.
    pub fn provisional_path(&self) -> PathBuf {
        match &self.dest {
            Destination::File(p) => p.clone(),
            Destination::Dir(d) => d.join(file_name_from_url(&self.url)),
        }
    }
}

/// A digest algorithm a download may be checked with besides SHA-256 (see
/// [`Download::checksum`]): the other types aria2's `checksum=` option takes. SHA-256 is not
/// among them: it is [`Download::sha256`], which the engine computes as bytes arrive.
/// SHA-1 and MD5 are broken against an adversary and Adler-32 is no cryptographic digest at
/// all: they catch damaged or wrong files, not forged ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha224,
    Sha384,
    Sha512,
    Md5,
    /// Adler-32, written as aria2 writes it: the 32-bit sum in 8 hex digits, big-endian.
    Adler32,
}

impl ChecksumAlgorithm {
    /// Every algorithm, in the order aria2 documents them.
    pub const ALL: [ChecksumAlgorithm; 6] = [
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha224,
        ChecksumAlgorithm::Sha384,
        ChecksumAlgorithm::Sha512,
        ChecksumAlgorithm::Md5,
        ChecksumAlgorithm::Adler32,
    ];

    /// The algorithm an aria2 checksum type names: `sha-1`, `sha-224`, `sha-384`, `sha-512`,
    /// `md5`, `adler32`, in any case, with or without the hyphen (`sha1`, `SHA-512`,
    /// `md-5`). `sha-256` is not one: it is [`Download::sha256`].
    pub fn from_aria2_name(name: &str) -> Option<ChecksumAlgorithm> {
        let name = name.trim().to_ascii_lowercase().replace('-', "");
        Some(match name.as_str() {
            "sha1" => ChecksumAlgorithm::Sha1,
            "sha224" => ChecksumAlgorithm::Sha224,
            "sha384" => ChecksumAlgorithm::Sha384,
            "sha512" => ChecksumAlgorithm::Sha512,
            "md5" => ChecksumAlgorithm::Md5,
            "adler32" => ChecksumAlgorithm::Adler32,
            _ => return None,
        })
    }

    /// aria2's name of the algorithm (`sha-1`, `md5`, `adler32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha1 => "sha-1",
            ChecksumAlgorithm::Sha224 => "sha-224",
            ChecksumAlgorithm::Sha384 => "sha-384",
            ChecksumAlgorithm::Sha512 => "sha-512",
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Adler32 => "adler32",
        }
    }

    /// Bytes in the algorithm's digest (twice as many hex digits).
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
            ChecksumAlgorithm::Md5 => 16,
            ChecksumAlgorithm::Adler32 => 4,
        }
    }
}

impl std::fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ChecksumAlgorithm {
    type Err = String;

    /// [`ChecksumAlgorithm::from_aria2_name`], with a message naming the known types.
    fn from_str(s: &str) -> Result<ChecksumAlgorithm, String> {
        ChecksumAlgorithm::from_aria2_name(s).ok_or_else(|| {
            format!(
                "{s:?} is not a checksum type ({})",
                ChecksumAlgorithm::ALL
                    .map(ChecksumAlgorithm::name)
                    .join(", ")
            )
        })
    }
}

/// A digest a download is expected to have ([`Download::checksum`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedChecksum {
    algorithm: ChecksumAlgorithm,
    digest: Vec<u8>,
}

impl ExpectedChecksum {
    /// `hex_digest` (surrounding white space ignored, either case) as a digest of
    /// `algorithm`: exactly `2 * algorithm.digest_len()` hex digits.
    pub fn parse(
        algorithm: ChecksumAlgorithm,
        hex_digest: &str,
    ) -> Result<ExpectedChecksum, DownloadError> {
        let digits = algorithm.digest_len() * 2;
        let hex_digest = hex_digest.trim();
        let digest = hex::decode(hex_digest)
            .ok()
            .filter(|d| d.len() == algorithm.digest_len())
            .ok_or_else(|| {
                DownloadError::InvalidRequest(format!(
                    "the {algorithm} checksum must be {digits} hex digits, got {hex_digest:?} \
                     ({} characters)",
                    hex_digest.chars().count()
                ))
            })?;
        Ok(ExpectedChecksum { algorithm, digest })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// The expected digest's bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The expected digest in lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(&self.digest)
    }
}

fn parse_url(s: &str) -> Result<url::Url, DownloadError> {
    let url = url::Url::parse(s)
        .map_err(|e| DownloadError::InvalidRequest(format!("bad URL {s:?}: {e}")))?;
    check_url(&url)?;
    Ok(url)
}

/// A URL haul can download: http or https, with a host.
fn check_url(url: &url::Url) -> Result<(), DownloadError> {
    let s = url.as_str();
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(DownloadError::InvalidRequest(format!(
                "unsupported URL scheme {other:?} in {s:?} (http and https only)"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DownloadError::InvalidRequest(format!(
            "URL {s:?} has no host"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not sent (haul has no user-info authentication), and the URL would carry the
        // password into messages, events and state files: refused, without repeating it.
        let host = url.host_str().unwrap_or_default();
        return Err(DownloadError::InvalidRequest(format!(
            "the URL for {host} carries credentials (user:password@); haul does not send \
             them: pass an Authorization header instead (-H)"
        )));
    }
    Ok(())
}

/// The most connections one download is split over: more connections to one file do not
/// make it faster, and the engine's segment bookkeeping grows with their number.
pub const MAX_SEGMENTS: u32 = 64;

/// The working file with `suffix` (one of [`RESERVED_SUFFIXES`]) beside the destination
/// `path`: `path` with `suffix` appended to its file name, unless that could be too long for
/// a file name. All the working files of one destination share one stem (the file name, or
/// for a long name a shortened one, see [`working_stem`]) chosen so that the longest suffix
/// fits: a 255-byte destination has working files too, and each of them, its state file's
/// temporary included (the state file's name with `.tmp`), is found from any other by its
/// suffix. File names of up to 240 bytes keep their plain working names.
pub fn working_sibling(path: &Path, suffix: &str) -> PathBuf {
    debug_assert!(
        suffix.len() <= WORKING_SUFFIX_ROOM,
        "{suffix} is not reserved"
    );
    let name = path.file_name().unwrap_or_default();
    let mut sibling = working_stem(name, WORKING_SUFFIX_ROOM).into_owned();
    sibling.push(suffix);
    path.with_file_name(sibling)
}

/// Bytes the longest of [`RESERVED_SUFFIXES`] adds to a destination's name.
const WORKING_SUFFIX_ROOM: usize = {
    let mut longest = 0;
    let mut i = 0;
    while i < RESERVED_SUFFIXES.len() {
        if RESERVED_SUFFIXES[i].len() > longest {
            longest = RESERVED_SUFFIXES[i].len();
        }
        i += 1;
    }
    longest
};

/// A safe file name from the URL's last non-empty path segment, percent-decoded (kept
/// encoded if the decoded bytes are not UTF-8); [`FALLBACK_NAME`] when it gives none.
pub fn file_name_from_url(url: &url::Url) -> String {
    url_file_name(url).unwrap_or_else(|| FALLBACK_NAME.to_string())
}

/// The name a download into a directory gets when neither its URL ([`url_file_name`]) nor
/// its response gives one. A name haul chose never replaces a file.
pub const FALLBACK_NAME: &str = "download";

/// The URL's own file name: its last non-empty path segment, percent-decoded, if that is a
/// usable name ([`sanitize_file_name`]).
pub fn url_file_name(url: &url::Url) -> Option<String> {
    let seg = url
        .path_segments()
        .and_then(|mut s| s.rfind(|x| !x.is_empty()).map(str::to_string))
        .unwrap_or_default();
    sanitize_file_name(&percent_decode(&seg))
}

/// The endings of the names haul gives its own files beside a destination (partial, state,
/// the state's temporary, a follower's copy). A destination named like that would be
/// another download's working file: such names are refused.
pub const RESERVED_SUFFIXES: [&str; 4] =
    [".haul-part", ".haul-state", ".haul-state.tmp", ".haul-copy"];

/// Whether `name` ends like one of haul's working files ([`RESERVED_SUFFIXES`]).
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_SUFFIXES
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Characters that change the direction text is shown in (the bidirectional overrides,
/// embeddings, isolates and marks): in a name a server or URL chooses they make it display
/// as another (`invoice\u{202E}fdp.exe` reads "invoiceexe.pdf").
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// A name usable as a single path component (at most [`MAX_NAME_BYTES`] long, no control or
/// bidirectional formatting character, and not one of haul's working file names, see
/// [`RESERVED_SUFFIXES`]), or None.
pub fn sanitize_file_name(name: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(|c| c.is_control() || is_bidi_control(c))
        || is_reserved_name(name)
    {
        return None;
    }
    Some(name.to_string())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Bytes that are no UTF-8 would be replaced by U+FFFD: two such names would collide
    // and neither says what the URL said. The segment as written (still encoded) does.
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Whether the engine writes the request header `name` itself (any case): `Host`, the range
/// and encoding headers, the framing and connection headers and `Proxy-Authorization`. A
/// [`Download::header`] of that name is not sent.
pub fn managed_header(name: &str) -> bool {
    const MANAGED: [&str; 8] = [
        "host",
        "range",
        "if-range",
        "accept-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-authorization",
    ];
    MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name.trim()))
}

/// How a finished download's bytes got to its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Fetched by this job (partly from an earlier run's partial, when it resumed).
    Fetched,
    /// The destination already held the expected bytes: nothing was fetched or written.
    AlreadyPresent,
    /// Another job of the engine fetched the same bytes; this job got its file (a copy, or
    /// the same file when both were bound for one destination).
    Duplicate,
}

impl Delivery {
    /// A stable lowercase name (for machine-readable output).
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Fetched => "fetched",
            Delivery::AlreadyPresent => "already_present",
            Delivery::Duplicate => "duplicate",
        }
    }
}

/// A verified, committed download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Where the file is now.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Bytes of a partial file left by an earlier run (or an earlier engine) that were kept
    /// and not fetched again. Bytes this job fetched itself before a retry or a pause are
    /// not counted here but in [`Outcome::bytes_fetched`]: a job paused and resumed in one
    /// engine reports 0.
    pub resumed_from: u64,
    /// Bytes received from the network for this job (all attempts).
    pub bytes_fetched: u64,
    /// Attempts made (1 when the first succeeded); 0 when none was needed: the destination
    /// already held the bytes, or another job of the engine fetched them (a duplicate).
    pub attempts: u32,
    /// How the bytes got to [`Outcome::path`].
    pub delivery: Delivery,
    /// Time from submit to commit.
    pub elapsed: Duration,
    /// The URL the bytes finally came from (after redirects).
    pub final_url: String,
}

impl Outcome {
    /// Lowercase hex SHA-256.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// Average rate in bytes per second over the job's life.
    pub fn average_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes_fetched as f64 / secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that is empty or names a directory (`dir/`, `.`, `..`) is refused when
    /// the download is made: it used to fail only at the commit, after the whole body, with
    /// a message about a rename.
    #[test]
    fn a_destination_that_is_empty_or_names_a_directory_is_refused() {
        for (dest, says) in [
            ("", "empty"),
            ("newdir/", "names a directory"),
            (".", "names a directory"),
            ("a/..", "names a directory"),
            ("/", "names a directory"),
        ] {
            match Download::new("http://h.test/f", dest) {
                Err(DownloadError::InvalidRequest(why)) => {
                    assert!(why.contains(says), "{dest:?}: {why}")
                }
                other => panic!("{dest:?}: {other:?}"),
            }
        }
        for ok in ["f", "./f", "a/b/f", "/tmp/f", "..f", "f."] {
            assert!(Download::new("http://h.test/f", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn managed_headers_are_recognised_in_any_case() {
        for name in [
            "Host",
            "RANGE",
            " if-range ",
            "Accept-Encoding",
            "Connection",
        ] {
            assert!(managed_header(name), "{name}");
        }
        for name in ["Authorization", "Cookie", "User-Agent", "X-Host"] {
            assert!(!managed_header(name), "{name}");
        }
    }

    #[test]
    fn a_segment_count_is_taken_between_one_and_the_maximum() {
        let d = || Download::new("http://h/f", "/dl/f").unwrap();
        assert_eq!(d().segments(0).segments, 1);
        assert_eq!(d().segments(16).segments, 16);
        assert_eq!(d().segments(100_000).segments, MAX_SEGMENTS);
        assert_eq!(d().segments(u32::MAX).segments, MAX_SEGMENTS);
    }

    #[test]
    fn file_name_comes_from_last_segment_and_is_decoded() {
        let u = url::Url::parse("http://h/a/b/my%20file.zip?x=1").unwrap();
        assert_eq!(file_name_from_url(&u), "my file.zip");
        let u = url::Url::parse("http://h/dir/").unwrap();
        assert_eq!(file_name_from_url(&u), "dir");
        let u = url::Url::parse("http://h/").unwrap();
        assert_eq!(file_name_from_url(&u), "download");
        // Encoded bytes that are no UTF-8 stay encoded rather than turn into U+FFFD.
        let u = url::Url::parse("http://h/%FF%FE.bin").unwrap();
        assert_eq!(file_name_from_url(&u), "%FF%FE.bin");
        let u = url::Url::parse("http://h/caf%C3%A9.txt").unwrap();
        assert_eq!(file_name_from_url(&u), "café.txt");
    }

    #[test]
    fn encoded_traversal_in_url_never_becomes_a_path() {
        let u = url::Url::parse("http://h/x/..%2F..%2Fetc%2Fpasswd").unwrap();
        assert_eq!(file_name_from_url(&u), "download");
        let u = url::Url::parse("http://h/%2e%2e").unwrap();
        assert_eq!(file_name_from_url(&u), "download");
    }

    #[test]
    fn a_parsed_url_is_checked_like_a_string_one() {
        let ok = url::Url::parse("https://h/x").unwrap();
        assert_eq!(Download::from_url(ok.clone(), "o").unwrap().url(), &ok);
        for bad in ["ftp://h/x", "file:///etc/passwd"] {
            let url = url::Url::parse(bad).unwrap();
            assert!(
                matches!(
                    Download::from_url(url, "o"),
                    Err(DownloadError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_urls_and_hashes_are_invalid_requests() {
        assert!(matches!(
            Download::new("ftp://h/x", "o"),
            Err(DownloadError::InvalidRequest(_))
        ));
        assert!(matches!(
            Download::new("not a url", "o"),
            Err(DownloadError::InvalidRequest(_))
        ));
        let d = Download::new("http://h/x", "o").unwrap();
        assert!(d.clone().sha256("zz").is_err());
        let upper = "AB".repeat(32);
        assert_eq!(d.sha256(&upper).unwrap().sha256, Some([0xab; 32]));
    }

    #[test]
    fn aria2_checksum_names_parse_in_any_case_with_or_without_the_hyphen() {
        use ChecksumAlgorithm::*;
        for (names, algorithm) in [
            (&["sha-1", "sha1", "SHA-1", "Sha1"][..], Sha1),
            (&["sha-224", "sha224", "SHA-224"][..], Sha224),
            (&["sha-384", "sha384", "SHA384"][..], Sha384),
            (&["sha-512", "sha512", " SHA-512 "][..], Sha512),
            (&["md5", "MD5", "md-5"][..], Md5),
            (&["adler32", "ADLER32", "adler-32"][..], Adler32),
        ] {
            for name in names {
                assert_eq!(
                    ChecksumAlgorithm::from_aria2_name(name),
                    Some(algorithm),
                    "{name}"
                );
                assert_eq!(name.parse::<ChecksumAlgorithm>(), Ok(algorithm), "{name}");
            }
            // aria2's own spelling comes back.
            assert_eq!(
                ChecksumAlgorithm::from_aria2_name(algorithm.name()),
                Some(algorithm)
            );
        }
        // SHA-256 is `Download::sha256`, not one of these; nor is anything else.
        for name in ["sha-256", "sha256", "crc32", "sha3-256", "", "sha"] {
            assert_eq!(ChecksumAlgorithm::from_aria2_name(name), None, "{name}");
        }
        let error = "crc32".parse::<ChecksumAlgorithm>().unwrap_err();
        assert!(error.contains("sha-1") && error.contains("md5"), "{error}");
    }

    #[test]
    fn a_checksum_takes_exactly_its_algorithms_hex_length_and_names_both_otherwise() {
        let d = || Download::new("http://h/x", "o").unwrap();
        for algorithm in ChecksumAlgorithm::ALL {
            let digits = algorithm.digest_len() * 2;
            let good = "aB".repeat(digits / 2);
            let with = d().checksum(algorithm, &format!(" {good}\n")).unwrap();
            let expected = with.expected_checksum().unwrap();
            assert_eq!(expected.algorithm(), algorithm);
            assert_eq!(expected.digest(), vec![0xab; algorithm.digest_len()]);
            assert_eq!(expected.hex(), "ab".repeat(digits / 2));
            for bad in [
                good[..digits - 2].to_string(),
                format!("{good}00"),
                format!("{}zz", &good[..digits - 2]),
                format!("{}a", &good[..digits - 2]),
                String::new(),
            ] {
                let Err(DownloadError::InvalidRequest(message)) = d().checksum(algorithm, &bad)
                else {
                    panic!("{algorithm} took {bad:?}");
                };
                assert!(
                    message.contains(&format!("{algorithm} checksum must be {digits} hex digits")),
                    "{message}"
                );
            }
        }
        assert!(d().expected_checksum().is_none());
    }

    #[test]
    fn a_sha256_and_a_checksum_are_both_expected() {
        let both = Download::new("http://h/x", "o")
            .unwrap()
            .sha256(&"cd".repeat(32))
            .unwrap()
            .checksum(ChecksumAlgorithm::Md5, &"00".repeat(16))
            .unwrap();
        assert_eq!(both.expected_sha256(), Some([0xcd; 32]));
        assert_eq!(
            both.expected_checksum().map(ExpectedChecksum::algorithm),
            Some(ChecksumAlgorithm::Md5)
        );
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_repeating_them() {
        for url in [
            "http://user:secret@h/x",
            "http://user@h/x",
            "https://:secret@h/x",
        ] {
            let Err(DownloadError::InvalidRequest(message)) = Download::new(url, "/dl/x") else {
                panic!("{url} accepted");
            };
            assert!(
                !message.contains("secret") && message.contains("credentials"),
                "{message}"
            );
        }
        assert!(Download::new("http://h/x?user=a", "/dl/x").is_ok());
    }

    #[test]
    fn names_of_haul_working_files_are_no_destination() {
        for name in [
            "a.iso.haul-part",
            "a.iso.haul-state",
            "a.haul-state.tmp",
            "b.haul-copy",
        ] {
            assert!(
                matches!(
                    Download::new("http://h/x", format!("/dl/{name}")),
                    Err(DownloadError::InvalidRequest(_))
                ),
                "{name}"
            );
            // Nor a server's name for one: the URL's name is used instead.
            assert_eq!(sanitize_file_name(name), None, "{name}");
            let url = url::Url::parse(&format!("http://h/{name}")).unwrap();
            assert_eq!(file_name_from_url(&url), "download");
        }
        assert!(Download::new("http://h/x", "/dl/a.haul-partial").is_ok());
        assert!(Download::new("http://h/x", "/dl/notes.tmp").is_ok());
    }

    #[test]
    fn a_rate_limit_of_zero_is_no_limit() {
        let d = Download::new("http://h/x", "/dl/x").unwrap();
        assert_eq!(d.clone().rate_limit(0).rate_limit, None);
        assert_eq!(d.rate_limit(512).rate_limit, Some(512));
    }

    #[test]
    fn names_that_would_display_as_other_names_are_not_used() {
        // A right-to-left override makes "invoice\u{202E}fdp.exe" read "invoiceexe.pdf".
        for name in [
            "invoice\u{202E}fdp.exe",
            "a\u{2067}b",
            "x\u{200F}.txt",
            "\u{061C}y",
        ] {
            assert_eq!(sanitize_file_name(name), None, "{name:?}");
        }
        let url = url::Url::parse("http://h/invoice%E2%80%AEfdp.exe").unwrap();
        assert_eq!(file_name_from_url(&url), "download");
        // Right-to-left text itself is a name like any other.
        assert_eq!(sanitize_file_name("שלום.txt").as_deref(), Some("שלום.txt"));
    }

    #[test]
    fn part_and_state_paths_sit_beside_the_destination() {
        let d = Download::new("http://h/x", "/tmp/out/file.bin").unwrap();
        assert_eq!(d.part_path(), PathBuf::from("/tmp/out/file.bin.haul-part"));
        assert_eq!(
            d.state_path(),
            PathBuf::from("/tmp/out/file.bin.haul-state")
        );
    }

    #[test]
    fn working_files_of_a_name_up_to_240_bytes_are_named_as_always() {
        let name = "n".repeat(240);
        let dest = PathBuf::from("/dl").join(&name);
        for suffix in RESERVED_SUFFIXES {
            assert_eq!(
                working_sibling(&dest, suffix),
                PathBuf::from(format!("/dl/{name}{suffix}"))
            );
        }
    }

    #[test]
    fn working_files_of_a_long_name_fit_in_a_file_name_and_share_one_stem() {
        for len in [241, 246, 250, 255] {
            let name = "é".repeat(len / 2) + &"n".repeat(len % 2);
            assert_eq!(name.len(), len);
            let dest = PathBuf::from("/dl").join(&name);
            let d = Download::new("http://h/x", &dest).unwrap();
            let state = d.state_path();
            let stem = state.file_name().unwrap().to_str().unwrap();
            let stem = stem.strip_suffix(".haul-state").unwrap();
            assert!(name.starts_with(&stem[..stem.len() - 17]), "{len}");
            assert_eq!(
                d.part_path(),
                dest.with_file_name(format!("{stem}.haul-part"))
            );
            for suffix in RESERVED_SUFFIXES {
                let sibling = working_sibling(&dest, suffix);
                let sibling = sibling.file_name().unwrap().to_str().unwrap();
                assert!(sibling.len() <= MAX_NAME_BYTES, "{len} {sibling}");
                assert_eq!(sibling, format!("{stem}{suffix}"));
                // Still recognised as haul's, so never taken for a destination.
                assert!(is_reserved_name(sibling), "{sibling}");
            }
            // The state file's temporary (its name and `.tmp`) fits too.
            assert!(stem.len() + ".haul-state.tmp".len() <= MAX_NAME_BYTES);
            // The same destination, the same working files (a resume finds them).
            assert_eq!(
                Download::new("http://h/y", &dest).unwrap().state_path(),
                state
            );
        }
    }

    #[test]
    fn long_destinations_sharing_their_first_240_bytes_keep_apart() {
        let common = "c".repeat(240);
        let a = Download::new("http://h/x", format!("/dl/{common}-a.bin")).unwrap();
        let b = Download::new("http://h/x", format!("/dl/{common}-b.bin")).unwrap();
        assert_ne!(a.part_path(), b.part_path());
        assert_ne!(a.state_path(), b.state_path());
    }

    #[test]
    fn a_name_longer_than_a_file_name_is_refused_before_anything_starts() {
        let name = "x".repeat(MAX_NAME_BYTES + 1);
        let Err(DownloadError::InvalidRequest(message)) =
            Download::new("http://h/x", format!("/dl/{name}"))
        else {
            panic!("a {}-byte name accepted", name.len());
        };
        assert!(message.contains("256 bytes"), "{message}");
        assert!(Download::new("http://h/x", format!("/dl/{}", &name[1..])).is_ok());
        // A server's name that long is not used either: the URL's, else `download`.
        assert_eq!(sanitize_file_name(&name), None);
        let url = url::Url::parse(&format!("http://h/{name}")).unwrap();
        assert_eq!(file_name_from_url(&url), "download");
    }
}

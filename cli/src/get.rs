//! `haul get`: download one or more URLs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use haul_blocking::Client;
use haul_core::{CancelMode, ChecksumAlgorithm, Config, Download, LowSpeedLimit, Priority};

use crate::exit;
use crate::progress::{Mode, Reporter};
use crate::units::parse_size;

/// Options of `haul get`.
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// URLs to download (http or https).
    #[arg(value_name = "URL", required_unless_present = "input_file")]
    pub urls: Vec<String>,
    /// Another URL serving the same bytes (repeatable; applies to a single URL). haul fails
    /// over between them and prefers the one with the best observed throughput.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// Read downloads from FILE in aria2's input-file format (URI lines, TAB-separated
    /// mirrors, indented out=, dir=, checksum=TYPE=HEX, header=, http-user=, http-passwd=
    /// options; checksum TYPEs as for --checksum); `-` reads stdin.
    #[arg(short = 'i', long = "input-file", value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// Downloads running at once (more wait in the queue).
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 8,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,
    /// Connections per file when the server honours ranges (segmented download), 1 to 64.
    #[arg(short = 's', long = "segments", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=haul_core::MAX_SEGMENTS as i64))]
    pub segments: u32,
    /// Smallest segment worth its own connection, at least 16K.
    #[arg(long = "min-segment", value_name = "SIZE", value_parser = parse_min_segment, default_value = "1M")]
    pub min_segment: u64,
    /// Connections to one origin (scheme, host and port) at once.
    #[arg(
        long = "max-connections-per-host",
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_connections_per_host: usize,
    /// Global rate limit in bytes/s (e.g. 20M); 0 means unlimited, as for curl and aria2.
    #[arg(long = "limit-rate", value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,
    /// Global rate limit by local time of day: `HH:MM=RATE,...`, each entry in force until
    /// the next (wrapping at midnight); RATE is a size per second, or `unlimited` (or 0), e.g.
    /// `08:00=2M,18:00=unlimited`. Replaces --limit-rate.
    #[arg(long = "limit-schedule", value_name = "SPEC", value_parser = parse_schedule, conflicts_with = "limit_rate")]
    pub limit_schedule: Option<haul_core::RateSchedule>,
    /// Scheduling class of this command's downloads: critical, high, normal, low,
    /// background. Within one command they all share it; it orders the queue and the share
    /// of a --limit-rate only against downloads of other classes in the same engine (the
    /// library's callers mix them), not against other processes.
    #[arg(long, value_name = "CLASS", default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,
    /// Write to this path (one URL only; not with -i, whose entries name their files with
    /// out=).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PATH",
        conflicts_with = "dir"
    )]
    pub output: Option<PathBuf>,
    /// Write into this directory; names come from Content-Disposition or the URL. With -i,
    /// the directory of the entries without a dir= of their own.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Expected SHA-256 (64 hex digits); a mismatch leaves nothing at the destination.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Expected digest as aria2 writes it, TYPE=HEX (one URL only): TYPE is sha-1,
    /// sha-224, sha-256, sha-384, sha-512, md5 or adler32 (any case, hyphen optional).
    /// sha-256 is --sha256; the others are checked by reading the file back before it is
    /// committed, and a mismatch leaves nothing at the destination.
    #[arg(long, value_name = "TYPE=HEX", value_parser = parse_checksum)]
    pub checksum: Option<ChecksumArg>,
    /// Expected exact size (e.g. 1048576, 64K, 1.5M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Do not make each file durable before it is named (no fsync of its data or its
    /// directory): files are still verified and renamed into place atomically, but a power
    /// loss or crash of the machine may leave a committed file empty or lose it. Like curl
    /// and aria2, which never sync; for scratch downloads and for timing haul against them.
    #[arg(long = "no-sync")]
    pub no_sync: bool,
    /// Refuse bodies larger than this, checked as bytes arrive; 0 means no limit (as for
    /// --limit-rate 0 and curl's --max-filesize 0).
    #[arg(long = "max-size", value_name = "BYTES", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Extra request header, e.g. -H 'Authorization: Bearer x' (repeatable). Authorization
    /// and Cookie are not forwarded when a redirect leaves the origin. Host, Range,
    /// If-Range, Accept-Encoding, Content-Length, Transfer-Encoding, Connection and
    /// Proxy-Authorization are haul's own: refused.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Seconds to establish a connection.
    #[arg(long = "connect-timeout", value_name = "S", default_value_t = 15.0)]
    pub connect_timeout: f64,
    /// Seconds without receiving a byte of the body before the attempt fails (the wait for
    /// the response's head is --head-timeout's).
    #[arg(long = "idle-timeout", value_name = "S", default_value_t = 30.0)]
    pub idle_timeout: f64,
    /// Seconds from sending a request to the end of the response's head, however it
    /// arrives (a server that thinks long, or sends its head a byte at a time) [default:
    /// 30, or --idle-timeout if longer].
    #[arg(long = "head-timeout", value_name = "S")]
    pub head_timeout: Option<f64>,
    /// Minimum rate in bytes/s over --low-speed-time, else the attempt fails (0 = off).
    /// Time a download is held back by --limit-rate does not count.
    #[arg(long = "low-speed-limit", value_name = "BYTES", value_parser = parse_size, default_value = "1K")]
    pub low_speed_limit: u64,
    /// Window in seconds for --low-speed-limit.
    #[arg(long = "low-speed-time", value_name = "S", default_value_t = 60.0)]
    pub low_speed_time: f64,
    /// Attempts after the first one for retryable failures.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// No retry starts later than this many seconds after the start.
    #[arg(long = "retry-max-time", value_name = "S", default_value_t = 300.0)]
    pub retry_max_time: f64,
    /// Also trust the CA certificate(s) in FILE (PEM or DER) for https, on top of the
    /// built-in web roots (repeatable).
    #[arg(long = "cacert", value_name = "FILE")]
    pub cacert: Vec<PathBuf>,
    /// Send requests through this HTTP proxy (http://[user:pass@]host:port): plain http in
    /// absolute form, https through CONNECT; credentials go only to the proxy. Overrides
    /// HTTP_PROXY / HTTPS_PROXY (NO_PROXY still applies).
    #[arg(long = "proxy", value_name = "URL")]
    pub proxy: Option<String>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print events as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--checksum TYPE=HEX`: the algorithm (`None`: sha-256) and the digest, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumArg {
    algorithm: Option<ChecksumAlgorithm>,
    hex: String,
}

fn parse_checksum(value: &str) -> Result<ChecksumArg, String> {
    let (kind, hex) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: expected TYPE=HEX, e.g. sha-1=<40 hex digits>"))?;
    Ok(ChecksumArg {
        algorithm: crate::inputfile::checksum_type(kind)?,
        hex: hex.trim().to_string(),
    })
}

/// `HH:MM=RATE,...` (RATE: a size per second, or `unlimited`/`off`).
fn parse_schedule(spec: &str) -> Result<haul_core::RateSchedule, String> {
    let mut entries = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (at, rate) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected HH:MM=RATE"))?;
        let (h, m) = at
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{at:?}: expected HH:MM"))?;
        let (h, m) = match (h.trim().parse::<u32>(), m.trim().parse::<u32>()) {
            (Ok(h), Ok(m)) if h < 24 && m < 60 => (h, m),
            _ => return Err(format!("{at:?} is not a time of day (00:00 to 23:59)")),
        };
        // 0 is no limit, as for --limit-rate (and curl and aria2).
        let rate = match rate.trim().to_ascii_lowercase().as_str() {
            "unlimited" | "off" => None,
            r => Some(parse_size(r)?).filter(|&n| n > 0),
        };
        entries.push((h * 3600 + m * 60, rate));
    }
    haul_core::RateSchedule::new(entries).map_err(|e| e.to_string())
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::parse(s)
        .ok_or_else(|| format!("{s:?} is not a priority (critical, high, normal, low, background)"))
}

/// The longest time a timeout option takes: a year. Longer is no limit a user can wait for,
/// and a `Duration` (or a deadline on the clock) cannot hold every number (`1e20`).
const MAX_SECS: u64 = 365 * 24 * 3600;

/// `--NAME S`: a number of seconds (fractions too), from a nanosecond to [`MAX_SECS`]; the
/// error names the option.
pub(crate) fn secs(name: &str, s: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(MAX_SECS) => Ok(d),
        _ => Err(format!(
            "--{name} must be a number of seconds from 0.000000001 to {MAX_SECS} (a year), got {s}"
        )),
    }
}

/// The smallest `--min-segment`: below it a segment's request, head and connection cost
/// more than its bytes (`--min-segment 0` turned a 3 MiB file into some 800 requests,
/// some for one byte).
const MIN_SEGMENT_FLOOR: u64 = 16 * 1024;

/// `--min-segment`: a size of at least [`MIN_SEGMENT_FLOOR`].
fn parse_min_segment(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    let floor = MIN_SEGMENT_FLOOR;
    if size < floor {
        return Err(format!(
            "{s:?} is below {}K: a smaller segment costs more in requests than it saves",
            floor / 1024
        ));
    }
    Ok(size)
}

/// The low-speed limit of `--low-speed-limit` (bytes/s; 0: none) and `--low-speed-time`.
pub(crate) fn low_speed(limit: u64, time: f64) -> Result<Option<LowSpeedLimit>, String> {
    (limit > 0)
        .then(|| {
            secs("low-speed-time", time).map(|window| LowSpeedLimit {
                bytes_per_sec: limit,
                window,
            })
        })
        .transpose()
}

/// A configuration error, an unusable extra root certificate named by its `--cacert` file
/// rather than by its place in the list.
fn name_the_cacert(error: &haul_core::ConfigError, files: &[PathBuf]) -> String {
    let named = (error.field == "extra_root_certs")
        .then(|| error.reason.strip_prefix("extra root certificate #"))
        .flatten()
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(index, reason)| Some((files.get(index.parse::<usize>().ok()?)?, reason)));
    match named {
        Some((file, reason)) => format!("--cacert {}: {reason}", file.display()),
        None => error.to_string(),
    }
}

/// `--head-timeout`, or by default the engine's 30 s, or `--idle-timeout` when that is
/// longer: a user who lets a server be silent for a minute mid-body lets it think for a
/// minute before it answers too.
pub fn head_timeout(head: Option<f64>, idle: f64) -> Result<Duration, String> {
    match head {
        Some(head) => secs("head-timeout", head),
        None => Ok(Config::default()
            .head_timeout
            .max(secs("idle-timeout", idle)?)),
    }
}

impl GetArgs {
    fn config(&self) -> Result<Config, String> {
        let mut c = Config {
            connect_timeout: secs("connect-timeout", self.connect_timeout)?,
            idle_timeout: secs("idle-timeout", self.idle_timeout)?,
            head_timeout: head_timeout(self.head_timeout, self.idle_timeout)?,
            low_speed: low_speed(self.low_speed_limit, self.low_speed_time)?,
            ..Config::default()
        };
        c.retry.max_attempts = self.retries.saturating_add(1);
        c.max_active_jobs = self.jobs.max(1);
        c.max_connections_per_origin = self.max_connections_per_host.max(1);
        c.max_connections = c.max_connections.max(c.max_connections_per_origin);
        c.rate_limit = self.limit_rate.filter(|rate| *rate > 0);
        c.retry.max_elapsed = secs("retry-max-time", self.retry_max_time)?;
        c.proxy = haul_core::ProxyConfig::from_lookup(|k| std::env::var(k).ok())
            .map_err(|e| e.to_string())?;
        if let Some(p) = &self.proxy {
            let url = haul_core::proxy::parse_proxy_url(p).map_err(|e| format!("--proxy: {e}"))?;
            c.proxy.http = Some(url.clone());
            c.proxy.https = Some(url);
            // It overrides the proxy variables, those haul cannot use too.
            c.proxy.unusable.clear();
        }
        for path in &self.cacert {
            let pem =
                std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            c.extra_root_certs.push(pem);
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// The downloads, where each was listed (`list.txt: line 3`; `None` for a URL of the
    /// command line), and the list entries skipped for want of a URI haul can use (each as
    /// the number of downloads listed before it).
    fn downloads(&self) -> Result<Planned, String> {
        // A list's entries name their own files (`out=`, which aria2 lets win over the
        // command line): one `-o` for all of them would override each, or write them all to
        // one file.
        if self.output.is_some() && self.input_file.is_some() {
            return Err(
                "-o names one file and does not go with -i; name each download's file with \
                 out= in the list (and its directory with dir= or -d)"
                    .into(),
            );
        }
        let mut entries: Vec<crate::inputfile::Entry> = self
            .urls
            .iter()
            .map(|u| crate::inputfile::Entry {
                uris: vec![u.clone()],
                ..Default::default()
            })
            .collect();
        if let Some(path) = &self.input_file {
            let bytes = if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
            } else {
                std::fs::read(path)
            }
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                let valid = e.utf8_error().valid_up_to();
                let line = 1 + e.as_bytes()[..valid]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                format!(
                    "{}: line {line} is not UTF-8 (lists are read as UTF-8; convert it, \
                     e.g. with iconv)",
                    path.display()
                )
            })?;
            let name = path.display().to_string();
            // `-q`: nothing but errors.
            let quiet = self.quiet;
            let listed = crate::inputfile::parse(&text, |w| {
                if !quiet {
                    crate::say(format_args!("haul get: {name}: {w}"))
                }
            })
            .map_err(|e| format!("{name}: {e}"))?;
            entries.extend(listed.into_iter().map(|entry| crate::inputfile::Entry {
                list: Some(name.clone()),
                ..entry
            }));
        }
        if entries.is_empty() {
            // A list with no entry (empty, or comments only) has nothing to do, as for aria2:
            // a script whose generated list is sometimes empty goes on.
            if self.input_file.is_some() {
                return Ok(Planned::default());
            }
            return Err("nothing to download".into());
        }
        if self.output.is_some() && entries.len() > 1 {
            return Err("-o names one file; use -d DIR for several URLs".into());
        }
        if let Some(output) = &self.output {
            check_output(output)?;
        }
        if !self.mirrors.is_empty() {
            if entries.len() > 1 {
                return Err(
                    "--mirror applies to one URL; list mirrors TAB-separated in -i FILE".into(),
                );
            }
            entries[0].uris.extend(self.mirrors.iter().cloned());
        }
        if self.sha256.is_some() && entries.len() > 1 {
            return Err("--sha256 applies to one URL; use checksum= lines in -i FILE".into());
        }
        if self.checksum.is_some() && entries.len() > 1 {
            return Err("--checksum applies to one URL; use checksum= lines in -i FILE".into());
        }
        // `--checksum sha-256=HEX` is `--sha256 HEX`; the other types are the checksum.
        let (sha256_arg, checksum_arg) = match &self.checksum {
            Some(ChecksumArg {
                algorithm: None,
                hex,
            }) => {
                if self
                    .sha256
                    .as_ref()
                    .is_some_and(|s| !s.trim().eq_ignore_ascii_case(hex))
                {
                    return Err("--sha256 and --checksum sha-256=... name different digests".into());
                }
                (Some(hex), None)
            }
            Some(ChecksumArg {
                algorithm: Some(algorithm),
                hex,
            }) => (self.sha256.as_ref(), Some((*algorithm, hex.clone()))),
            None => (self.sha256.as_ref(), None),
        };
        if self.size.is_some() && entries.len() > 1 {
            return Err(
                "--size is the exact size of one file; for several, --max-size caps each".into(),
            );
        }
        let mut headers = Vec::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?} must look like 'Name: value'"))?;
            if haul_core::managed_header(name) {
                return Err(format!(
                    "header {h:?}: haul writes {} itself; it cannot be set",
                    name.trim()
                ));
            }
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut out = Vec::new();
        let mut locations = Vec::new();
        let mut skipped = Vec::new();
        for entry in &entries {
            // In a list every URI of a line is equal (as for aria2): one haul cannot use (an
            // ftp:// one) is skipped with a warning, wherever it stands, and the first usable
            // one leads; an entry with none is skipped, and the others go on (the exit
            // status says it was not done). On the command line the URL must be usable.
            let mut uris: Vec<&String> = entry.uris.iter().collect();
            if entry.list.is_some() && !uris.is_empty() {
                let usable = |u: &&String| Download::into_dir(u, ".").is_ok();
                let Some(first) = uris.iter().position(usable) else {
                    let e = Download::into_dir(uris[0], ".").expect_err("unusable");
                    // Not a mere warning: a download asked for is not done (even with -q).
                    crate::say(format_args!(
                        "haul get: {}",
                        entry.locate(format!("entry skipped, no URI haul can use: {e}"))
                    ));
                    skipped.push(out.len());
                    continue;
                };
                for unusable in uris.drain(..first) {
                    if !self.quiet {
                        let e = Download::into_dir(unusable, ".").expect_err("unusable");
                        crate::say(format_args!(
                            "haul get: {}",
                            entry.locate(format!("URI skipped: {e}"))
                        ));
                    }
                }
            }
            let url = *uris.first().ok_or_else(|| entry.locate("no URI"))?;
            let dir = entry
                .dir
                .as_ref()
                .map(PathBuf::from)
                .or_else(|| self.dir.clone())
                .unwrap_or_else(|| PathBuf::from("."));
            let file_dest = self.output.is_some() || entry.out.is_some();
            let d = match (&self.output, &entry.out) {
                (Some(o), _) => Download::new(url, o.clone()),
                (None, Some(name)) => {
                    let path = dir.join(name);
                    check_file_dest(&path).map_err(|why| {
                        entry.locate_out(format!("out={name}: {} {why}", path.display()))
                    })?;
                    Download::new(url, path)
                }
                (None, None) => Download::into_dir(url, dir),
            };
            // A usable URL with an unusable destination (a name too long, a working file's
            // name): the `out=` line's error.
            let mut d = d.map_err(|e| match &entry.out {
                Some(_) if Download::into_dir(url, ".").is_ok() => entry.locate_out(e),
                _ => entry.locate(e),
            })?;
            for m in uris[1..].iter().copied() {
                // A mirror haul cannot use (an ftp:// one) is skipped, as aria2 goes on
                // with the URIs it can use; the entry's own URI must be usable.
                match d.clone().mirror(m) {
                    Ok(with) => d = with,
                    Err(e) if entry.list.is_some() => {
                        if !self.quiet {
                            crate::say(format_args!(
                                "haul get: {}",
                                entry.locate(format!("mirror skipped: {e}"))
                            ));
                        }
                    }
                    Err(e) => return Err(entry.locate(format!("mirror: {e}"))),
                }
            }
            // A digest given both on the command line and in the list's entry is checked if
            // they agree and refused if they do not: neither may silently drop the other.
            if let (Some(listed), Some(given)) = (&entry.sha256, sha256_arg) {
                if !listed.trim().eq_ignore_ascii_case(given.trim()) {
                    // The option the user gave.
                    let option = match self.sha256 {
                        Some(_) => "--sha256",
                        None => "--checksum sha-256=...",
                    };
                    return Err(entry.locate(format!(
                        "its checksum=sha-256 and the command line's {option} name different \
                         digests"
                    )));
                }
            }
            if let (Some((listed, listed_hex)), Some((given, given_hex))) =
                (&entry.checksum, &checksum_arg)
            {
                if listed != given || !listed_hex.trim().eq_ignore_ascii_case(given_hex.trim()) {
                    return Err(entry.locate(
                        "its checksum= and the command line's --checksum name different digests \
                         (one download checks the sha-256 and at most one other)",
                    ));
                }
            }
            if let Some(h) = entry.sha256.as_ref().or(sha256_arg) {
                d = d.sha256(h).map_err(|e| entry.locate(e))?;
            }
            if let Some((algorithm, h)) = entry.checksum.as_ref().or(checksum_arg.as_ref()) {
                d = d.checksum(*algorithm, h).map_err(|e| entry.locate(e))?;
            }
            if let Some(s) = self.size {
                d = d.size(s);
            }
            if let Some(m) = self.max_size.filter(|m| *m > 0) {
                d = d.max_size(m);
            }
            if self.no_sync {
                d = d.defer_sync();
            }
            for (n, v) in headers.iter().chain(&entry.headers) {
                d = d.header(n, v);
            }
            d = d
                .priority(self.priority)
                .segments(self.segments.max(1))
                .min_segment(self.min_segment);
            out.push((d, file_dest));
            locations.push(
                entry
                    .list
                    .as_ref()
                    .map(|list| format!("{list}: line {}", entry.line)),
            );
        }
        Ok(Planned {
            downloads: mark_fresh(out),
            locations,
            skipped,
        })
    }
}

/// What a command line and its list ask for (see [`GetArgs::downloads`]).
#[derive(Default)]
struct Planned {
    downloads: Vec<Download>,
    locations: Vec<Option<String>>,
    /// Each list entry skipped (no URI haul can use), as the number of downloads before it.
    skipped: Vec<usize>,
}

/// `-o PATH` must name a file haul may replace: checked before anything is fetched (a
/// directory would fail only at the final rename; a device such as `/dev/null`, a FIFO or a
/// socket would be replaced by a regular file, or block the open).
fn check_output(output: &Path) -> Result<(), String> {
    check_file_dest(output).map_err(|why| format!("-o {} {why}; use -d DIR", output.display()))
}

/// Why `path` cannot be a file that haul replaces with a download, if it cannot: it ends in
/// `/`, `.` or `..` (a directory by its name), or it is a directory, a device, a FIFO or a
/// socket now. (`Path` drops a final `.`, so the name is looked at as written.)
fn check_file_dest(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let raw = path.as_os_str().as_bytes();
    let last = raw.rsplit(|b| *b == b'/').next().unwrap_or_default();
    if raw.ends_with(b"/") || last == b"." || last == b".." {
        return Err("names a directory, not a file".into());
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err("is a directory".into()),
        Ok(meta) if !meta.is_file() => Err(
            "is not a regular file (a device, FIFO or socket); haul replaces its destination \
             with the verified file"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// From how many downloads a list's destination directories are listed once to spare each
/// download its probes (see [`mark_fresh`]).
const FRESH_LISTING_MIN: usize = 16;

/// Marks [`Download::fresh`] the downloads to a named file whose directory holds nothing of
/// that name (no file, no `.haul-part`, no `.haul-state`), found by listing each directory
/// once instead of probing for every file (a failed open of the state file and a look at the
/// destination per download). A file that appears after the listing is still handled right
/// (see [`Download::fresh`]). Small lists, and downloads into a directory under a name the
/// server chooses, keep their probes.
fn mark_fresh(downloads: Vec<(Download, bool)>) -> Vec<Download> {
    if downloads.len() < FRESH_LISTING_MIN {
        return downloads.into_iter().map(|(d, _)| d).collect();
    }
    let mut listings: std::collections::HashMap<
        PathBuf,
        Option<std::collections::HashSet<std::ffi::OsString>>,
    > = std::collections::HashMap::new();
    downloads
        .into_iter()
        .map(|(d, file_dest)| {
            if !file_dest {
                return d;
            }
            let path = d.provisional_path();
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                return d;
            };
            let (part, state) = (d.part_path(), d.state_path());
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let listing = listings
                .entry(dir.to_path_buf())
                .or_insert_with(|| list_names(dir));
            let Some(names) = listing else {
                return d;
            };
            let taken = [Some(name), part.file_name(), state.file_name()]
                .into_iter()
                .flatten()
                .any(|taken| names.contains(taken));
            if taken {
                d
            } else {
                d.fresh()
            }
        })
        .collect()
}

/// The names in `dir`; empty if it does not exist yet; `None` if it cannot be listed.
fn list_names(dir: &Path) -> Option<std::collections::HashSet<std::ffi::OsString>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .ok(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Some(std::collections::HashSet::new())
        }
        Err(_) => None,
    }
}

/// A command refused before any download (bad options, a bad list): the reason on stderr
/// and, with `--json`, as a JSON line on stdout too, so that a consumer of the lines learns
/// why there are none; exit 2.
fn refuse(args: &GetArgs, msg: &str) -> i32 {
    crate::say(format_args!("haul get: {msg}"));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "error", "error": msg, "exit_code": exit::USAGE})
        );
    }
    exit::USAGE
}

/// How a download is named in its bar and lines: its destination file as given (`out=`,
/// `-o`, without a leading `./`), or for a download into a directory the URL's name
/// (empty: the reporter takes it from the URL).
fn dest_label(download: &Download) -> String {
    match download.destination() {
        haul_core::Destination::File(path) => {
            let shown = path.to_string_lossy();
            let mut shown: &str = &shown;
            while let Some(rest) = shown.strip_prefix("./") {
                shown = rest;
            }
            shown.to_string()
        }
        haul_core::Destination::Dir(_) => String::new(),
    }
}

/// Run `haul get`; returns the exit code.
pub fn run(args: GetArgs) -> i32 {
    let (
        config,
        Planned {
            downloads,
            locations,
            skipped,
        },
    ) = match args.config().and_then(|c| Ok((c, args.downloads()?))) {
        Ok(x) => x,
        Err(msg) => return refuse(&args, &msg),
    };
    // Read the local UTC offset while this process has one thread (the C library's local
    // time is not safe to read once threads run).
    let utc_offset = args.limit_schedule.as_ref().map(|_| {
        time::UtcOffset::current_local_offset()
            .map(|o| o.whole_seconds())
            .unwrap_or_else(|_| {
                crate::say(format_args!(
                    "haul get: local time zone unknown; --limit-schedule reads UTC"
                ));
                0
            })
    });
    let client = match Client::new(config) {
        Ok(c) => c,
        Err(e) => return refuse(&args, &name_the_cacert(&e, &args.cacert)),
    };
    if let (Some(rates), Some(offset)) = (args.limit_schedule.clone(), utc_offset) {
        client.set_rate_schedule(rates, offset);
    }
    let cancel = client.cancel_handle();
    crate::signals::on_interrupt(move || cancel.stop_all(CancelMode::KeepPartial));
    let mode = Mode::choose(args.json, args.quiet);
    if downloads.is_empty() {
        // A summary as for any other run (with --json, its line: jobs 0).
        Reporter::new(mode, 0)
            .with_skipped(skipped.len())
            .summary(0, 0, 0, 0);
        if skipped.is_empty() {
            if !args.quiet && !args.json {
                crate::say(format_args!(
                    "haul get: no files to download (the list has no entry)"
                ));
            }
            return exit::OK;
        }
        return exit::USAGE;
    }
    let mut reporter = Reporter::with_labels(
        mode,
        downloads.len(),
        downloads.iter().map(dest_label).collect(),
    )
    .with_locations(locations)
    .with_skipped(skipped.len());
    // The downloads create their destinations' missing directories; those left empty at the
    // end (every download into them failed, keeping nothing) are removed again.
    let missing = missing_dirs(&downloads);
    let results = client.download_many(downloads, |ev| reporter.event(ev));
    crate::extract::remove_made_dirs(&missing);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // Every body byte received, failed and interrupted downloads' too (a shared transfer
    // once), like curl's and aria2's totals.
    let bytes = client.stats().bytes;
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Err(haul_core::DownloadError::Cancelled)))
        .count();
    reporter.summary(ok, results.len() - ok - cancelled, cancelled, bytes);
    // A skipped entry is a failure (a URI haul cannot use: a usage error) in its place in
    // the list.
    let mut codes = Vec::with_capacity(results.len() + skipped.len());
    let mut skipped = skipped.iter().peekable();
    for (at, r) in results.iter().enumerate() {
        while skipped.next_if(|&&before| before <= at).is_some() {
            codes.push(exit::USAGE);
        }
        codes.push(match r {
            Ok(_) => exit::OK,
            Err(e) => exit::for_download(e),
        });
    }
    codes.extend(skipped.map(|_| exit::USAGE));
    exit::combine(codes)
}

/// The directories that do not exist yet among the downloads' destination directories and
/// their ancestors, outermost first (as `extract::remove_made_dirs` takes them).
fn missing_dirs(downloads: &[Download]) -> Vec<PathBuf> {
    let bases: std::collections::BTreeSet<&Path> = downloads
        .iter()
        .map(|d| match d.destination() {
            haul_core::Destination::File(path) => path.parent().unwrap_or(Path::new("")),
            haul_core::Destination::Dir(dir) => dir.as_path(),
        })
        .collect();
    let mut missing = std::collections::BTreeSet::new();
    for base in bases {
        let mut at = Some(base);
        while let Some(dir) = at.filter(|p| !p.as_os_str().is_empty()) {
            if missing.contains(dir) || std::fs::symlink_metadata(dir).is_ok() {
                break;
            }
            missing.insert(dir.to_path_buf());
            at = dir.parent();
        }
    }
    let mut missing: Vec<PathBuf> = missing.into_iter().collect();
    missing.sort_by_key(|dir| dir.components().count());
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_timeout_is_30_s_or_the_idle_timeout_if_longer_unless_given() {
        let s = Duration::from_secs;
        assert_eq!(head_timeout(None, 10.0), Ok(s(30)));
        assert_eq!(head_timeout(None, 90.0), Ok(s(90)));
        assert_eq!(head_timeout(Some(5.0), 90.0), Ok(s(5)));
        assert!(head_timeout(Some(0.0), 90.0).is_err());
        assert!(head_timeout(None, -1.0).is_err());
    }

    #[test]
    fn a_timeout_is_a_nanosecond_to_a_year_and_anything_else_names_its_option() {
        assert_eq!(secs("idle-timeout", 1e-9), Ok(Duration::from_nanos(1)));
        assert_eq!(
            secs("idle-timeout", MAX_SECS as f64),
            Ok(Duration::from_secs(MAX_SECS))
        );
        for bad in [
            0.0,
            -1.0,
            1e-12,
            1e20,
            f64::INFINITY,
            f64::NAN,
            MAX_SECS as f64 + 1.0,
        ] {
            let error = secs("connect-timeout", bad).expect_err("refused");
            assert!(error.starts_with("--connect-timeout must be "), "{error}");
        }
    }

    #[test]
    fn limit_schedule_parses_times_rates_and_unlimited() {
        let s = parse_schedule("08:00=2M, 18:30=unlimited").unwrap();
        assert_eq!(s.rate_at(9 * 3600), Some(2 * 1024 * 1024));
        assert_eq!(s.rate_at(19 * 3600), None);
        assert_eq!(s.rate_at(3600), None);
        // 0 is no limit, as for --limit-rate; the words in any case.
        let s = parse_schedule("08:00=0,12:00=1M,13:00=UNLIMITED").unwrap();
        assert_eq!(s.rate_at(9 * 3600), None);
        assert_eq!(s.rate_at(12 * 3600), Some(1024 * 1024));
        assert_eq!(s.rate_at(14 * 3600), None);
        for bad in ["", "8=2M", "25:00=1M", "08:60=1M", "08:00", "08:00=fast"] {
            assert!(parse_schedule(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_long_list_marks_fresh_only_named_files_with_nothing_of_theirs_in_the_directory() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("done.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("partial.bin.haul-part"), b"x").unwrap();
        std::fs::write(dir.path().join("stated.bin.haul-state"), b"x").unwrap();
        let named = |name: &str| {
            let d = Download::new("http://127.0.0.1:1/f", dir.path().join(name)).unwrap();
            (d, true)
        };
        // A name too long for `<name>.haul-part`: its partial has a shortened name.
        let long = format!("{}.bin", "l".repeat(246));
        let long_partial = named(&long).0.part_path();
        assert_ne!(long_partial, dir.path().join(format!("{long}.haul-part")));
        std::fs::write(&long_partial, b"x").unwrap();
        let mut list = vec![
            named("done.bin"),
            named("partial.bin"),
            named("stated.bin"),
            named(&long),
            (
                Download::into_dir("http://127.0.0.1:1/f", dir.path()).unwrap(),
                false,
            ),
        ];
        for n in 0..FRESH_LISTING_MIN {
            list.push(named(&format!("new{n}.bin")));
        }
        list.push((
            Download::new("http://127.0.0.1:1/f", dir.path().join("missing/sub.bin")).unwrap(),
            true,
        ));
        let fresh: Vec<bool> = mark_fresh(list).iter().map(Download::is_fresh).collect();
        assert_eq!(&fresh[..5], &[false; 5]);
        assert!(fresh[5..].iter().all(|&f| f), "{fresh:?}");

        // A short list is left to the engine's own probes.
        let short: Vec<bool> = mark_fresh(vec![named("new0.bin")])
            .iter()
            .map(Download::is_fresh)
            .collect();
        assert_eq!(short, vec![false]);
    }
}

//! Virtual origins: HTTP/1.1 servers that hold resources in several representations and
//! answer requests with `ETag`/`Last-Modified`, `Range`/`If-Range`, redirects and the
//! response faults of the plan.
//!
//! Each download of the workload has one resource `/f/d{i}` on its home origin, on each of
//! its mirrors' origins (a [`Host`] each), and a redirect `/r/d{i}` on another origin when
//! the plan says so. Representation 0 is canonical (its SHA-256 is what checked downloads
//! carry). The representations of a resource form one list shared by all its hosts: a
//! mirror serves representation 0 itself (same bytes and validator), a twin of it (same
//! bytes, its own validator) or a stale one (other bytes); an `EtagChange` fault publishes
//! a new representation on the origin it fires on, for a few requests there (or until the
//! heal, which withdraws it: [`Origins::heal`]). Every entry
//! has its own validator unless it is a deliberate lie (a stale mirror that claims the
//! canonical validator). The resource records which representations any host ever sent a
//! success head for: the checker accepts an unchecked committed file only if it equals one
//! of them whole, so a splice of two hosts' representations is caught like any other.
//!
//! This module builds response bytes and says how they end; it does not deliver them
//! (the world cuts them into timed pieces) and it does not decide which fault fires when.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::scenario::{
    BodyFraming, Check, DownloadPlan, FaultKind, MirrorPlan, PlantedBug, ResponseFault,
    ValidatorKind,
};
use crate::seed::SimRng;

/// One representation of a resource.
#[derive(Debug, Clone)]
pub struct Representation {
    /// The body.
    pub body: Bytes,
    /// Its strong entity tag, quotes included.
    pub etag: String,
    /// Its modification time, in seconds since the Unix epoch.
    pub modified: u64,
    /// Who serves it and why, for messages ("home", "mirror o2", "change on o1"...).
    pub note: String,
}

/// One origin that serves a resource at `/f/{name}`, with its own temporary changes.
#[derive(Debug, Clone)]
pub struct Host {
    /// The origin.
    pub origin: u8,
    /// The representation it serves when no change is in effect.
    pub base: usize,
    /// The representation served now.
    current: usize,
    /// Requests left before a temporary representation reverts to `base`.
    change_left: u8,
}

/// A resource and its representations.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `d{i}`.
    pub name: String,
    /// The origin that serves it.
    pub home: u8,
    /// The origin that redirects to it, if any.
    pub redirect_via: Option<u8>,
    /// Whether downloads of it carry a hash.
    pub verifiable: bool,
    /// Its validator kind.
    pub validator: ValidatorKind,
    /// Its body framing.
    pub framing: BodyFraming,
    /// Representation 0 is canonical; the list is shared by every host.
    pub versions: Vec<Representation>,
    /// The home origin first, then the mirrors in plan order.
    pub hosts: Vec<Host>,
    /// Representations a success head was sent for, by any host.
    pub served: BTreeSet<usize>,
}

impl Host {
    fn new(origin: u8, base: usize) -> Host {
        Host {
            origin,
            base,
            current: base,
            change_left: 0,
        }
    }
}

impl Resource {
    /// Append a representation with a validator of its own (an entity tag `"{tag}{k}-{name}"`
    /// and a modification time no other entry has); returns its index `k`.
    fn push_version(&mut self, body: Bytes, tag: &str, note: String) -> usize {
        let k = self.versions.len();
        let rep = Representation {
            body,
            etag: format!("\"{tag}{k}-{}\"", self.name),
            modified: self.versions[0].modified + 100 * k as u64,
            note,
        };
        self.versions.push(rep);
        k
    }

    /// The representation a mirror serves when no change is in effect.
    fn mirror_representation(&mut self, m: &MirrorPlan, rng: &mut SimRng) -> usize {
        let origin = m.origin;
        if !m.stale {
            if m.same_validator {
                return 0;
            }
            // The same bytes under a validator of the mirror's own.
            let body = self.versions[0].body.clone();
            return self.push_version(body, "m", format!("twin on mirror o{origin}"));
        }
        let canonical_len = self.versions[0].body.len() as u64;
        let len = if rng.chance(0.5) {
            canonical_len
        } else {
            rng.range(canonical_len / 2, canonical_len * 3 / 2 + 1)
        };
        let body = content(rng.next_u64(), len as usize);
        let k = self.push_version(body, "s", format!("stale on mirror o{origin}"));
        if m.same_validator {
            // A lying mirror: other bytes under the canonical validator.
            let (etag, modified) = (self.versions[0].etag.clone(), self.versions[0].modified);
            let rep = &mut self.versions[k];
            rep.etag = etag;
            rep.modified = modified;
            rep.note = format!("stale on mirror o{origin}, canonical validator");
        }
        k
    }
}

/// How a response's bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The connection stays open for the next request.
    KeepOpen,
    /// The server closes cleanly.
    Eof,
    /// The server resets the connection.
    Reset,
    /// The server goes silent and never sends again.
    Silent,
}

/// A response as the network should deliver it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// All the bytes the server means to send.
    pub wire: Bytes,
    /// Deliver only this many bytes, then end like this (a fault).
    pub cut: Option<(usize, End)>,
    /// How the bytes end when not cut.
    pub end: End,
    /// Deliver in pieces of this size with this gap (a trickle).
    pub trickle: Option<(usize, Duration)>,
    /// The fault that fired, if any.
    pub fired: Option<FaultKind>,
    /// The resource (workload index) the request was about, if any.
    pub resource: Option<usize>,
    /// A one-line summary for the trace.
    pub summary: String,
}

/// A parsed request, as far as origins care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request target (path and query).
    pub path: String,
    /// `N` of `Range: bytes=N-` or `bytes=N-M`.
    pub range_start: Option<u64>,
    /// `M` of `Range: bytes=N-M` (inclusive).
    pub range_last: Option<u64>,
    /// `If-Range` value.
    pub if_range: Option<String>,
    /// `Host` value.
    pub host: Option<String>,
}

/// Parses one complete request head at the start of `buf`; returns it and its length.
/// `Err` carries why the engine's bytes are not a valid request.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("engine sent an unparsable request: {e}")),
        Ok(httparse::Status::Complete(n)) => {
            if req.method != Some("GET") {
                return Err(format!("engine sent method {:?}", req.method));
            }
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string)
            };
            let (range_start, range_last) = match header("range") {
                None => (None, None),
                Some(v) => {
                    let bad = || format!("engine sent an unexpected Range {v:?}");
                    let (first, last) = v
                        .strip_prefix("bytes=")
                        .and_then(|v| v.split_once('-'))
                        .ok_or_else(bad)?;
                    let first = first.parse::<u64>().map_err(|_| bad())?;
                    let last = match last {
                        "" => None,
                        l => Some(l.parse::<u64>().map_err(|_| bad())?),
                    };
                    if last.is_some_and(|l| l < first) {
                        return Err(bad());
                    }
                    (Some(first), last)
                }
            };
            Ok(Some((
                Request {
                    path: req.path.unwrap_or("/").to_string(),
                    range_start,
                    range_last,
                    if_range: header("if-range"),
                    host: header("host"),
                },
                n,
            )))
        }
    }
}

/// Seconds since the Unix epoch that simulated time zero maps to (for `Date`).
const EPOCH_SECS: u64 = 1_700_000_000;

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Content bytes for a resource representation, from a seed.
pub fn content(seed: u64, len: usize) -> Bytes {
    Bytes::from(SimRng::new(seed).bytes(len))
}

/// All origins of a run and the resources they serve.
#[derive(Debug)]
pub struct Origins {
    /// One resource per workload download, in workload order.
    pub resources: Vec<Resource>,
    rng: SimRng,
    bug: Option<PlantedBug>,
}

/// What a normal (not faulted) success response is made of.
struct Success {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    version: usize,
}

impl Origins {
    /// The origins for a workload. `seed` is the run's origin stream.
    pub fn new(seed: u64, downloads: &[DownloadPlan], bug: Option<PlantedBug>) -> Origins {
        let mut rng = SimRng::new(seed);
        let resources = downloads
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let canonical = Representation {
                    body: content(rng.next_u64(), d.size as usize),
                    etag: format!("\"c-d{i}\""),
                    modified: EPOCH_SECS - 1_000_000 + i as u64,
                    note: "canonical".into(),
                };
                let mut r = Resource {
                    name: format!("d{i}"),
                    home: d.origin,
                    redirect_via: d.redirect_via,
                    verifiable: d.check != Check::Unchecked,
                    validator: d.validator,
                    framing: d.framing,
                    versions: vec![canonical],
                    hosts: vec![Host::new(d.origin, 0)],
                    served: BTreeSet::new(),
                };
                for m in &d.mirrors {
                    let base = r.mirror_representation(m, &mut rng);
                    r.hosts.push(Host::new(m.origin, base));
                }
                r
            })
            .collect();
        Origins {
            resources,
            rng,
            bug,
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.name == name)
    }

    /// The host of `res` on `origin`, or its home host for origins that only redirect.
    fn host_on(&self, res: usize, origin: u8) -> usize {
        self.resources[res]
            .hosts
            .iter()
            .position(|h| h.origin == origin)
            .unwrap_or(0)
    }

    /// Answer `req` received by origin `origin` at simulated `now`, applying `fault` (from
    /// the plan, in the safety phase) when it applies.
    pub fn respond(
        &mut self,
        origin: u8,
        req: &Request,
        fault: Option<ResponseFault>,
        now: Duration,
    ) -> Reply {
        let date = http_date(EPOCH_SECS + now.as_secs());
        let mut fired = None;
        let reply = |wire: Vec<u8>, end: End, resource: Option<usize>, summary: String| Reply {
            wire: Bytes::from(wire),
            cut: None,
            end,
            trickle: None,
            fired: None,
            resource,
            summary,
        };
        // Routing.
        let path = req.path.as_str();
        let (kind, name) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((k, n)) => (k, n),
            None => ("", ""),
        };
        let resource = match kind {
            "f" => self
                .find(name)
                .filter(|&i| self.resources[i].hosts.iter().any(|h| h.origin == origin)),
            "r" => self
                .find(name)
                .filter(|&i| self.resources[i].redirect_via == Some(origin)),
            "loop" => name
                .split_once('/')
                .and_then(|(_, n)| self.find(n).map(|i| (i, n)))
                .map(|(i, _)| i),
            _ => None,
        };
        let Some(res) = resource else {
            let wire = simple(404, &date, &[], b"not found\n");
            return reply(wire, End::KeepOpen, None, format!("404 for {path}"));
        };
        let host = self.host_on(res, origin);

        // Faults that replace the response.
        let mut out = match (kind, fault) {
            (
                _,
                Some(ResponseFault::Status {
                    code,
                    retry_after_s,
                }),
            ) => {
                fired = Some(if code == 429 {
                    FaultKind::Status429
                } else {
                    FaultKind::Status5xx
                });
                let extra: Vec<(String, String)> = retry_after_s
                    .map(|s| vec![("Retry-After".to_string(), s.to_string())])
                    .unwrap_or_default();
                let wire = simple(code, &date, &extra, b"try later\n");
                reply(wire, End::KeepOpen, Some(res), format!("{code} (fault)"))
            }
            ("f" | "r", Some(ResponseFault::RedirectLoop)) => {
                fired = Some(FaultKind::RedirectLoop);
                let loc = vec![("Location".to_string(), format!("/loop/a/{name}"))];
                let wire = simple(302, &date, &loc, b"");
                reply(
                    wire,
                    End::KeepOpen,
                    Some(res),
                    "302 into a loop (fault)".into(),
                )
            }
            ("loop", _) => {
                let next = if name.starts_with("a/") { "b" } else { "a" };
                let n = &name[2.min(name.len())..];
                let loc = vec![("Location".to_string(), format!("/loop/{next}/{n}"))];
                let wire = simple(302, &date, &loc, b"");
                reply(
                    wire,
                    End::KeepOpen,
                    Some(res),
                    format!("302 to /loop/{next}"),
                )
            }
            ("r", _) => {
                let home = self.resources[res].home;
                let loc = vec![(
                    "Location".to_string(),
                    format!("http://o{home}.sim/f/{name}"),
                )];
                let wire = simple(302, &date, &loc, b"moved\n");
                reply(wire, End::KeepOpen, Some(res), format!("302 to o{home}"))
            }
            (_, Some(ResponseFault::Garbage { seed })) => {
                fired = Some(FaultKind::Garbage);
                let valid = self.success(res, host, req, now, &date);
                if matches!(valid.status, 200 | 206 | 416) {
                    // Some garbage replays the valid response after 1xx heads.
                    self.resources[res].served.insert(valid.version);
                }
                let valid_wire = encode(&valid, self.resources[res].framing, &mut self.rng);
                let verifiable = self.resources[res].verifiable;
                let (wire, end) = garbage(seed, &valid_wire, verifiable);
                let summary = format!("{} bytes of garbage (fault)", wire.len());
                reply(wire, end, Some(res), summary)
            }
            _ => {
                if let Some(ResponseFault::EtagChange { lasting }) = fault {
                    self.publish_change(res, host, lasting);
                    fired = Some(FaultKind::EtagChange);
                }
                let mut s = self.success(res, host, req, now, &date);
                let r = &self.resources[res];
                let framing = r.framing;
                // Faults that bend a success response.
                match fault {
                    Some(ResponseFault::IgnoreRange) if req.range_start.is_some() => {
                        s = self.full(res, s.version, &date);
                        fired = Some(FaultKind::IgnoreRange);
                    }
                    Some(ResponseFault::WrongContentRange { shift }) => {
                        if let Some(bent) = self.wrong_range(res, s.version, req, shift, &date) {
                            s = bent;
                            fired = Some(FaultKind::WrongContentRange);
                        }
                    }
                    Some(ResponseFault::Corrupt { at_permille, xor })
                        if r.verifiable && !s.body.is_empty() && s.status != 416 =>
                    {
                        let mut body = s.body.to_vec();
                        let at = body.len() * usize::from(at_permille) / 1000;
                        body[at] ^= xor;
                        s.body = Bytes::from(body);
                        fired = Some(FaultKind::Corrupt);
                    }
                    _ => {}
                }
                if matches!(s.status, 200 | 206 | 416) {
                    // A 416 declares the representation's length and validator: for an
                    // empty one that is all of it.
                    self.resources[res].served.insert(s.version);
                }
                let status = s.status;
                let mut end = End::KeepOpen;
                let wire = match fault {
                    Some(ResponseFault::WrongLength { delta }) => {
                        match wrong_length(&s, framing, delta, self.resources[res].verifiable) {
                            Some((wire, e)) => {
                                fired = Some(FaultKind::WrongLength);
                                end = e;
                                wire
                            }
                            None => encode(&s, framing, &mut self.rng),
                        }
                    }
                    _ => encode(&s, framing, &mut self.rng),
                };
                let close = framing == BodyFraming::CloseDelimited && status != 416
                    || header_says_close(&wire);
                if close {
                    end = End::Eof;
                }
                reply(
                    wire,
                    end,
                    Some(res),
                    format!("{status} v{} of {}", s.version, self.resources[res].name),
                )
            }
        };

        // Faults that bend the delivery.
        let at = |permille: u16, len: usize| len * usize::from(permille) / 1000;
        match fault {
            Some(ResponseFault::Reset { at_permille }) => {
                out.cut = Some((at(at_permille, out.wire.len()), End::Reset));
                fired = Some(FaultKind::Reset);
            }
            Some(ResponseFault::Stall { at_permille }) => {
                out.cut = Some((at(at_permille, out.wire.len()), End::Silent));
                fired = Some(FaultKind::Stall);
            }
            Some(ResponseFault::Truncate { at_permille }) => {
                let framing = self.resources[res].framing;
                let n = at(at_permille, out.wire.len());
                // A clean early close of a close-delimited body is undetectable without
                // the hash; those resources are always checked, so it is allowed.
                let _ = framing;
                out.cut = Some((n, End::Eof));
                fired = Some(FaultKind::Truncate);
            }
            Some(ResponseFault::Trickle { piece, gap_ms }) => {
                out.trickle = Some((
                    usize::from(piece.max(1)),
                    Duration::from_millis(u64::from(gap_ms)),
                ));
                fired = Some(FaultKind::Trickle);
            }
            _ => {}
        }
        out.fired = fired;
        out
    }

    /// A new representation of `res` on its host `host` for this and the next `lasting - 1`
    /// requests there.
    fn publish_change(&mut self, res: usize, host: usize, lasting: u8) {
        let r = &self.resources[res];
        let canonical_len = r.versions[0].body.len();
        let len = if self.rng.chance(0.5) {
            canonical_len
        } else {
            self.rng
                .range(canonical_len as u64 / 2, canonical_len as u64 * 3 / 2 + 1)
                as usize
        };
        let origin = r.hosts[host].origin;
        let body = content(self.rng.next_u64(), len);
        let r = &mut self.resources[res];
        let k = r.push_version(body, "a", format!("change on o{origin}"));
        let h = &mut r.hosts[host];
        h.current = k;
        h.change_left = lasting.max(1);
    }

    /// The heal: every representation change still in effect is withdrawn, each host
    /// serving its own representation again. Returns the (resource, origin) pairs that
    /// changed back.
    pub fn heal(&mut self) -> Vec<(usize, u8)> {
        let mut reverted = Vec::new();
        for (res, r) in self.resources.iter_mut().enumerate() {
            for h in &mut r.hosts {
                if h.current != h.base {
                    reverted.push((res, h.origin));
                }
                h.current = h.base;
                h.change_left = 0;
            }
        }
        reverted
    }

    /// The representation host `host` serves for this request (reverting temporary
    /// changes).
    fn take_current(&mut self, res: usize, host: usize) -> usize {
        let h = &mut self.resources[res].hosts[host];
        if h.change_left == 0 {
            h.current = h.base;
        } else {
            h.change_left -= 1;
        }
        h.current
    }

    fn validator_headers(&self, res: usize, version: usize, date: &str) -> Vec<(String, String)> {
        let r = &self.resources[res];
        let rep = &r.versions[version];
        let mut h = vec![("Date".to_string(), date.to_string())];
        match r.validator {
            ValidatorKind::Etag => h.push(("ETag".into(), rep.etag.clone())),
            ValidatorKind::LastModified => {
                h.push(("Last-Modified".into(), http_date(rep.modified)));
            }
            ValidatorKind::Absent => {}
        }
        if r.validator != ValidatorKind::Absent {
            h.push(("Accept-Ranges".into(), "bytes".into()));
        }
        h
    }

    fn validator_value(&self, res: usize, version: usize) -> Option<String> {
        let r = &self.resources[res];
        let rep = &r.versions[version];
        match r.validator {
            ValidatorKind::Etag => Some(rep.etag.clone()),
            ValidatorKind::LastModified => Some(http_date(rep.modified)),
            ValidatorKind::Absent => None,
        }
    }

    fn full(&self, res: usize, version: usize, date: &str) -> Success {
        Success {
            status: 200,
            headers: self.validator_headers(res, version, date),
            body: self.resources[res].versions[version].body.clone(),
            version,
        }
    }

    /// What a correct server sends: 200, 206 for a satisfiable range whose `If-Range`
    /// matches, or 416.
    fn success(
        &mut self,
        res: usize,
        host: usize,
        req: &Request,
        _now: Duration,
        date: &str,
    ) -> Success {
        let version = self.take_current(res, host);
        let len = self.resources[res].versions[version].body.len() as u64;
        let if_range_ok = match &req.if_range {
            None => true,
            Some(v) => self.validator_value(res, version).as_deref() == Some(v.as_str()),
        };
        match req.range_start {
            Some(start) if if_range_ok && start >= len => {
                let mut headers = self.validator_headers(res, version, date);
                headers.push(("Content-Range".into(), format!("bytes */{len}")));
                Success {
                    status: 416,
                    headers,
                    body: Bytes::new(),
                    version,
                }
            }
            Some(start) if if_range_ok => {
                let last = req.range_last.map_or(len - 1, |l| l.min(len - 1));
                let mut headers = self.validator_headers(res, version, date);
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{last}/{len}"),
                ));
                let range = start as usize..=last as usize;
                let body = match self.bug {
                    Some(PlantedBug::OriginSplicesRanges) if start > 0 => {
                        // The planted bug: the right head, another representation's bytes.
                        let other: Vec<u8> = self.resources[res].versions[version].body[range]
                            .iter()
                            .map(|b| b ^ 0x5a)
                            .collect();
                        Bytes::from(other)
                    }
                    _ => self.resources[res].versions[version].body.slice(range),
                };
                Success {
                    status: 206,
                    headers,
                    body,
                    version,
                }
            }
            _ => self.full(res, version, date),
        }
    }

    /// A 206 whose `Content-Range` does not continue the request, or None when the body is
    /// empty (nothing to misplace).
    fn wrong_range(
        &self,
        res: usize,
        version: usize,
        req: &Request,
        shift: i16,
        date: &str,
    ) -> Option<Success> {
        let body = &self.resources[res].versions[version].body;
        let len = body.len() as i64;
        if len == 0 {
            return None;
        }
        let start = req.range_start.unwrap_or(0) as i64;
        let last = req.range_last.map_or(len - 1, |l| (l as i64).min(len - 1));
        let shifted = (start + i64::from(shift)).clamp(0, len - 1);
        let mut headers = self.validator_headers(res, version, date);
        let (first, value) = if shifted == start || start >= len || shifted > last {
            // Same start: lie about the complete length instead.
            let s = start.min(last);
            (s, format!("bytes {s}-{last}/{}", len + 7))
        } else {
            (shifted, format!("bytes {shifted}-{last}/{len}"))
        };
        headers.push(("Content-Range".into(), value));
        Some(Success {
            status: 206,
            headers,
            body: body.slice(first as usize..=last as usize),
            version,
        })
    }
}

/// A simple response with a `Content-Length` body.
fn simple(status: u16, date: &str, extra: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\nDate: {date}\r\n", reason(status));
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    wire
}

fn header_says_close(wire: &[u8]) -> bool {
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(wire.len());
    wire[..end]
        .windows(17)
        .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
}

/// Frame a success response. Sometimes asks to close after it.
fn encode(s: &Success, framing: BodyFraming, rng: &mut SimRng) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", s.status, reason(s.status));
    for (n, v) in &s.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let framing = if s.status == 416 {
        BodyFraming::Length
    } else {
        framing
    };
    if framing == BodyFraming::CloseDelimited || rng.chance(0.15) {
        head.push_str("Connection: close\r\n");
    }
    match framing {
        BodyFraming::Length => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", s.body.len()));
            let mut wire = head.into_bytes();
            wire.extend_from_slice(&s.body);
            wire
        }
        BodyFraming::CloseDelimited => {
            head.push_str("\r\n");
            let mut wire = head.into_bytes();
            wire.extend_from_slice(&s.body);
            wire
        }
        BodyFraming::Chunked => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let mut wire = head.into_bytes();
            let mut rest: &[u8] = &s.body;
            while !rest.is_empty() {
                let n = (rng.log_range(1, 40_000) as usize).min(rest.len());
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            wire
        }
    }
}

/// A success response with a `Content-Length` off by `delta`, or None when that could not
/// be detected without a hash (a shorter length on an unchecked 200).
fn wrong_length(
    s: &Success,
    framing: BodyFraming,
    delta: i16,
    verifiable: bool,
) -> Option<(Vec<u8>, End)> {
    let len = s.body.len() as i64;
    let claimed = (len + i64::from(delta)).max(0);
    if claimed == len || (claimed < len && s.status == 200 && !verifiable) || s.status == 416 {
        return None;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", s.status, reason(s.status));
    for (n, v) in &s.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut body = s.body.to_vec();
    if framing == BodyFraming::Chunked {
        // Both framings: Transfer-Encoding must win (RFC 9112 section 6.3).
        head.push_str(&format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {claimed}\r\n\r\n"
        ));
        let mut chunked = Vec::new();
        if !body.is_empty() {
            chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            chunked.extend_from_slice(&body);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        body = chunked;
    } else {
        head.push_str(&format!("Content-Length: {claimed}\r\n\r\n"));
    }
    let mut wire = head.into_bytes();
    wire.extend_from_slice(&body);
    // A longer claim leaves the client waiting: close, or go silent.
    let end = if claimed > len && body.len().is_multiple_of(2) {
        End::Silent
    } else {
        End::Eof
    };
    Some((wire, end))
}

/// Hostile bytes instead of a response. Unchecked resources only get bytes that can never
/// be taken for a successful response (the engine could not tell them from the truth).
pub fn garbage(seed: u32, valid: &[u8], verifiable: bool) -> (Vec<u8>, End) {
    let mut r = SimRng::new(u64::from(seed) ^ 0x6761_7262);
    let end = match r.below(3) {
        0 => End::Eof,
        1 => End::Reset,
        _ => End::Silent,
    };
    let modes = if verifiable { 6 } else { 4 };
    let wire = match r.below(modes) {
        0 => {
            let len = r.log_range(1, 4000) as usize;
            r.bytes(len)
        }
        1 => {
            // A head of hostile headers with a non-success status.
            let status = r.pick(&[
                "100", "101", "199", "299", "301", "304", "399", "404", "418", "599", "999", "0",
                "-1", "2000", "20", "abc",
            ]);
            let mut w = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for _ in 0..r.range(0, 8) {
                w.extend_from_slice(r.pick(NASTY_HEADERS));
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"\r\n");
            let junk = r.log_range(1, 3000) as usize;
            w.extend_from_slice(&r.bytes(junk));
            w
        }
        2 => {
            // Informational heads first, then the valid response (must work).
            let mut w = Vec::new();
            for _ in 0..r.range(1, 3) {
                w.extend_from_slice(r.pick(&[
                    &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                    &b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"[..],
                    &b"HTTP/1.1 102 Processing\r\n\r\n"[..],
                ]));
            }
            w.extend_from_slice(valid);
            w
        }
        3 => {
            // Over-long or broken heads.
            let mut w = b"HTTP/1.1 200 OK\r\n".to_vec();
            match r.below(4) {
                0 => w.extend_from_slice(&vec![b'a'; 70_000 + r.below(2000) as usize]),
                1 => w.extend_from_slice(b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
                2 => w.extend_from_slice(b"Transfer-Encoding: gzip\r\n\r\n\x1f\x8b"),
                _ => w.extend_from_slice(b"Content-Length: -1\r\n\r\n"),
            }
            w
        }
        4 => {
            // A mutated valid response (checked resources only).
            let mut w = valid.to_vec();
            for _ in 0..r.range(1, 6) {
                if w.is_empty() {
                    break;
                }
                let head_end = w
                    .windows(4)
                    .position(|x| x == b"\r\n\r\n")
                    .map_or(w.len(), |p| p + 4);
                let at = r.below(head_end.max(1) as u64) as usize;
                match r.below(3) {
                    0 => {
                        let i = at.min(w.len() - 1);
                        w[i] ^= r.range(1, 255) as u8;
                    }
                    1 => {
                        w.insert(at, r.next_u64() as u8);
                    }
                    _ => {
                        w.remove(at.min(w.len() - 1));
                    }
                }
            }
            w
        }
        _ => {
            // A success head with hostile framing and a random body (checked resources).
            let mut w = b"HTTP/1.1 200 OK\r\n".to_vec();
            for _ in 0..r.range(1, 5) {
                w.extend_from_slice(r.pick(NASTY_HEADERS));
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"\r\n");
            match r.below(3) {
                0 => w.extend_from_slice(b"zz\r\nhello\r\n0\r\n\r\n"),
                1 => w.extend_from_slice(b"ffffffffffffffffffff\r\n"),
                _ => {
                    let n = r.log_range(1, 3000) as usize;
                    w.extend_from_slice(&r.bytes(n));
                }
            }
            w
        }
    };
    (wire, end)
}

const NASTY_HEADERS: &[&[u8]] = &[
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: 5, 7",
    b"Content-Length: +3",
    b"Content-Length: 0x10",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding: chunked",
    b"Content-Range: bytes 5-2/1",
    b"Content-Range: bytes */*",
    b"Content-Range: garbage",
    b"Retry-After: -5",
    b"Retry-After: 99999999999999999999",
    b"Location: ",
    b"Location: ftp://elsewhere/x",
    b"Location: //",
    b"Location: http://[::1",
    b"ETag: W/\"weak\"",
    b"ETag: \"unterminated",
    b"no colon here",
    b" folded: continuation",
    b"X-Nul: a\0b",
    b"Connection: close, keep-alive",
    b": empty name",
    b"Content-Disposition: attachment; filename=\"../../etc/passwd\"",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Check;

    fn plan(validator: ValidatorKind, framing: BodyFraming) -> DownloadPlan {
        DownloadPlan {
            origin: 0,
            size: 1000,
            check: Check::Unchecked,
            size_hint: false,
            validator,
            framing,
            redirect_via: None,
            dead_host: false,
            segments: 1,
            mirrors: Vec::new(),
        }
    }

    fn req(path: &str, range: Option<u64>, if_range: Option<&str>) -> Request {
        Request {
            path: path.into(),
            range_start: range,
            range_last: None,
            if_range: if_range.map(str::to_string),
            host: Some("o0.sim".into()),
        }
    }

    fn status_of(wire: &[u8]) -> u16 {
        std::str::from_utf8(&wire[9..12]).unwrap().parse().unwrap()
    }

    #[test]
    fn ranges_are_honoured_only_while_if_range_matches() {
        let mut o = Origins::new(1, &[plan(ValidatorKind::Etag, BodyFraming::Length)], None);
        let r = o.respond(
            0,
            &req("/f/d0", Some(10), Some("\"c-d0\"")),
            None,
            Duration::ZERO,
        );
        assert_eq!(status_of(&r.wire), 206);
        let r = o.respond(
            0,
            &req("/f/d0", Some(10), Some("\"other\"")),
            None,
            Duration::ZERO,
        );
        assert_eq!(status_of(&r.wire), 200);
        let r = o.respond(0, &req("/f/d0", Some(1000), None), None, Duration::ZERO);
        assert_eq!(status_of(&r.wire), 416);
        assert_eq!(o.resources[0].served, BTreeSet::from([0]));
    }

    #[test]
    fn an_etag_change_lasts_its_requests_then_reverts() {
        let mut o = Origins::new(1, &[plan(ValidatorKind::Etag, BodyFraming::Length)], None);
        let change = Some(ResponseFault::EtagChange { lasting: 2 });
        let r = o.respond(0, &req("/f/d0", None, None), change, Duration::ZERO);
        assert_eq!(r.fired, Some(FaultKind::EtagChange));
        o.respond(0, &req("/f/d0", None, None), None, Duration::ZERO);
        o.respond(0, &req("/f/d0", None, None), None, Duration::ZERO);
        assert_eq!(o.resources[0].served, BTreeSet::from([0, 1]));
    }

    #[test]
    fn the_heal_withdraws_a_change_that_would_outlast_it() {
        let mut o = Origins::new(1, &[plan(ValidatorKind::Etag, BodyFraming::Length)], None);
        let change = Some(ResponseFault::EtagChange { lasting: 4 });
        let changed = o.respond(0, &req("/f/d0", None, None), change, Duration::ZERO);
        assert_eq!(etag_of(&changed.wire), "\"a1-d0\"");
        // Three more requests would get the change; the heal ends it at once.
        assert_eq!(o.heal(), vec![(0, 0)]);
        let r = o.respond(0, &req("/f/d0", None, None), None, Duration::ZERO);
        assert_eq!(etag_of(&r.wire), "\"c-d0\"");
        assert_eq!(o.heal(), Vec::new(), "nothing left to withdraw");
    }

    fn etag_of(wire: &[u8]) -> String {
        let text = String::from_utf8_lossy(wire);
        let line = text
            .lines()
            .find(|l| l.starts_with("ETag: "))
            .expect("an ETag header");
        line["ETag: ".len()..].to_string()
    }

    fn body_of(wire: &[u8]) -> &[u8] {
        let at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        &wire[at..]
    }

    #[test]
    fn mirrors_serve_the_same_bytes_a_twin_or_a_stale_representation() {
        let mirror = |origin, same_validator, stale| MirrorPlan {
            origin,
            same_validator,
            stale,
        };
        let mut p = plan(ValidatorKind::Etag, BodyFraming::Length);
        p.check = Check::Sha256;
        p.mirrors = vec![
            mirror(1, true, false),
            mirror(2, false, false),
            mirror(3, true, true),
        ];
        let mut o = Origins::new(5, &[p], None);
        let get = |o: &mut Origins, origin: u8, fault| {
            let mut r = req("/f/d0", None, None);
            r.host = Some(format!("o{origin}.sim"));
            o.respond(origin, &r, fault, Duration::ZERO)
        };
        let home = get(&mut o, 0, None);
        let same = get(&mut o, 1, None);
        let twin = get(&mut o, 2, None);
        let stale = get(&mut o, 3, None);
        assert_eq!(body_of(&same.wire), body_of(&home.wire));
        assert_eq!(etag_of(&same.wire), etag_of(&home.wire));
        assert_eq!(body_of(&twin.wire), body_of(&home.wire));
        assert_ne!(etag_of(&twin.wire), etag_of(&home.wire));
        assert_ne!(body_of(&stale.wire), body_of(&home.wire));
        assert_eq!(etag_of(&stale.wire), etag_of(&home.wire), "a lying mirror");
        assert_eq!(status_of(&get(&mut o, 4, None).wire), 404, "not a host");
        // A change on one mirror stays there and gets a validator nobody else has.
        let change = Some(ResponseFault::EtagChange { lasting: 1 });
        let changed = get(&mut o, 2, change);
        assert_eq!(status_of(&get(&mut o, 1, None).wire), 200);
        assert_eq!(etag_of(&get(&mut o, 1, None).wire), etag_of(&home.wire));
        let etags: BTreeSet<&str> = o.resources[0]
            .versions
            .iter()
            .map(|v| v.etag.as_str())
            .collect();
        assert_eq!(
            etags.len(),
            o.resources[0].versions.len() - 1,
            "only the liar repeats"
        );
        assert_ne!(body_of(&changed.wire), body_of(&home.wire));
        assert_eq!(
            etag_of(&get(&mut o, 2, None).wire),
            etag_of(&twin.wire),
            "reverted"
        );
    }

    #[test]
    fn requests_are_parsed_with_their_range() {
        let raw =
            b"GET /f/d0 HTTP/1.1\r\nHost: o0.sim\r\nRange: bytes=5-\r\nIf-Range: \"x\"\r\n\r\n";
        let (r, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(r.range_start, Some(5));
        assert_eq!(r.if_range.as_deref(), Some("\"x\""));
        assert!(parse_request(b"GET / HT").unwrap().is_none());
    }

    #[test]
    fn garbage_for_unchecked_resources_is_never_a_well_formed_success_with_a_body() {
        let valid = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for seed in 0..2000 {
            let (wire, _) = garbage(seed, valid, false);
            let replays_valid = wire.ends_with(valid);
            let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
            if wire.starts_with(b"HTTP/1.1 200 ") && !replays_valid {
                // Only the deliberately broken success heads.
                assert!(
                    wire.len() > 60_000
                        || contains(b"Content-Length: -1")
                        || contains(b"Transfer-Encoding: gzip")
                        || contains(b"Content-Length: 5\r\nContent-Length: 6"),
                    "seed {seed}: {:?}",
                    String::from_utf8_lossy(&wire[..wire.len().min(200)])
                );
            }
        }
    }
}

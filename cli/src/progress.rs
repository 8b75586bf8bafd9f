//! Showing what the engine does: progress bars on a terminal, JSON lines with `--json`,
//! nothing with `--quiet`, plain lines otherwise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use haul_core::{Delivery, DownloadError, Event, JobId, Outcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::units::{human_bytes, human_rate};

/// How output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars (stderr is a terminal).
    Bars,
    /// One line per finished download (not a terminal).
    Plain,
    /// JSON lines on stdout.
    Json,
    /// Errors only.
    Quiet,
}

impl Mode {
    /// Pick from the flags and whether stderr is a terminal.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

struct JobView {
    label: String,
    /// Its bar, made once it has run for [`BAR_AFTER`] (see [`Reporter::show_bar`]).
    bar: Option<ProgressBar>,
    /// Its length, once a response said.
    total: Option<u64>,
    last_json: Option<Instant>,
    bytes: u64,
    /// Its receive rate (bytes per second) as of its last progress.
    rate: u64,
    /// Whether an attempt of it failed (a retry was announced).
    retried: bool,
    /// Whether the engine writes the download to a named partial that a cancel keeps (as
    /// of its last response; `None` before any).
    resumable: Option<bool>,
    /// When it left the queue: its time and rate on the `saved` line count from here.
    started: Instant,
}

/// Renders events.
pub struct Reporter {
    mode: Mode,
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    jobs: BTreeMap<JobId, JobView>,
    /// The label of each job queued and not started yet: one that fails before it starts
    /// (refused, or its dependency failed) is still named in its error line.
    waiting: BTreeMap<JobId, String>,
    /// With `--json`, each unfinished job's URL, for its `finished` line when it fails.
    urls: BTreeMap<JobId, String>,
    started: Instant,
    total_jobs: usize,
    done_jobs: usize,
    /// Bytes received by the downloads that ended.
    done_bytes: u64,
    /// When the overall bar's bytes and rate were last set.
    overall_set: Option<Instant>,
    /// Each download's label, in the order given, taken as its `Queued` event comes (the
    /// engine queues them in that order); empty: the URL's last segment names it.
    labels: std::collections::VecDeque<String>,
    /// The label of each queued job, until it starts or ends.
    queued_labels: BTreeMap<JobId, String>,
    /// Where each download was listed (`list.txt: line 3`), in the order given, taken as
    /// its `Queued` event comes, like `labels`; `None`: not from a list.
    locations: std::collections::VecDeque<Option<String>>,
    /// The list location of each job, for its line when it fails.
    located: BTreeMap<JobId, String>,
    /// Columns of the terminal the bars are drawn on.
    columns: usize,
    /// List entries skipped before any download (no URI haul can use), for the summary.
    skipped: usize,
}

/// A download gets a bar of its own once it has run this long: a list of small files ends
/// each one sooner, and a bar made and removed for each (the whole display redrawn every
/// time) flooded the terminal: 35 MB of redraws for 3,000 files, a run 20 times slower
/// behind a slow terminal.
const BAR_AFTER: Duration = Duration::from_millis(300);

const JSON_PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// How a download is named on its bar and in its lines: the URL's last path segment.
fn label_of(url: &str) -> String {
    // The path's last segment, without the query or fragment (a signed URL's query would
    // fill the label).
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(path)
        .chars()
        .take(40)
        .collect()
}

impl Reporter {
    /// A reporter for `total_jobs` downloads, each named by its URL's last segment.
    pub fn new(mode: Mode, total_jobs: usize) -> Reporter {
        Reporter::with_labels(mode, total_jobs, Vec::new())
    }

    /// A reporter for downloads named by `labels` (one per download, in the order they are
    /// submitted; the destination's file name, say).
    pub fn with_labels(mode: Mode, total_jobs: usize, labels: Vec<String>) -> Reporter {
        let columns = console::Term::stderr()
            .size_checked()
            .map_or(80, |(_, cols)| cols as usize);
        let (multi, overall) = if mode == Mode::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let overall = (total_jobs > 1).then(|| {
                let b = multi.add(ProgressBar::new(total_jobs as u64));
                let template = if columns >= 70 {
                    "{prefix:>8} [{bar:30}] {pos}/{len} files {wide_msg}"
                } else {
                    "{prefix:>5} [{wide_bar}] {pos}/{len}"
                };
                b.set_style(
                    ProgressStyle::with_template(template)
                        .expect("template")
                        .progress_chars("=> "),
                );
                b.set_prefix("total");
                b
            });
            (Some(multi), overall)
        } else {
            (None, None)
        };
        Reporter {
            mode,
            multi,
            overall,
            jobs: BTreeMap::new(),
            waiting: BTreeMap::new(),
            urls: BTreeMap::new(),
            started: Instant::now(),
            total_jobs,
            done_jobs: 0,
            done_bytes: 0,
            overall_set: None,
            labels: labels.into(),
            queued_labels: BTreeMap::new(),
            locations: Default::default(),
            located: BTreeMap::new(),
            columns,
            skipped: 0,
        }
    }

    /// `skipped` list entries were not downloaded (no URI haul could use): the summary
    /// counts them.
    pub fn with_skipped(mut self, skipped: usize) -> Reporter {
        self.skipped = skipped;
        self
    }

    /// Where each download (in the order given) was listed, for its error line.
    pub fn with_locations(mut self, locations: Vec<Option<String>>) -> Reporter {
        self.locations = locations.into();
        self
    }

    /// The label of a job queued now with this URL: the next given label, else the URL's.
    fn label_queued(&mut self, job: JobId, url: &str) -> String {
        let label = self
            .labels
            .pop_front()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| label_of(url));
        self.queued_labels.insert(job, label.clone());
        label
    }

    /// Give a job that has run for [`BAR_AFTER`] (or any job, `now`) its bar.
    fn show_bar(&mut self, job: JobId, now: bool) {
        let columns = self.columns;
        let (Some(multi), Some(v)) = (&self.multi, self.jobs.get_mut(&job)) else {
            return;
        };
        if v.bar.is_some() || (!now && v.started.elapsed() < BAR_AFTER) {
            return;
        }
        // Made at its position, hidden, before it is shown: its rate counts from here (a
        // bar moved from 0 to the bytes already in showed gigabytes per second).
        let b = match v.total {
            Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::hidden()),
            None => ProgressBar::hidden(),
        }
        .with_position(v.bytes)
        .with_style(bar_style(v.total.is_some(), columns))
        .with_prefix(fit(
            &crate::escape_controls(&v.label),
            prefix_width(columns),
        ));
        b.reset();
        b.set_position(v.bytes);
        b.reset_eta();
        v.bar = Some(multi.add(b));
    }

    /// A job's news: on its bar, or as a line in plain mode (nothing in JSON mode, whose
    /// events say it).
    fn tell(&mut self, job: &JobId, msg: String) {
        // A download with something to say (a retry, a failover) gets its bar now, whatever
        // its age: without one, what it said went nowhere.
        if self.mode == Mode::Bars {
            self.show_bar(*job, true);
        }
        if let Some(v) = self.jobs.get(job) {
            match (&v.bar, self.mode) {
                (Some(b), _) => b.set_message(crate::escape_controls(&msg).into_owned()),
                (None, Mode::Plain) => crate::say(format_args!("{}: {msg}", v.label)),
                _ => {}
            }
        }
    }

    fn emit_json(&self, v: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
    }

    /// Show one event.
    pub fn event(&mut self, ev: &Event) {
        match ev {
            Event::Queued { job, url } => {
                // Each job's URL and list location, for its line when it fails.
                self.urls.insert(*job, url.clone());
                if let Some(Some(at)) = self.locations.pop_front() {
                    self.located.insert(*job, at);
                }
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "queued", "job": job.0, "url": url}));
                    self.label_queued(*job, url);
                } else {
                    let label = self.label_queued(*job, url);
                    self.waiting.insert(*job, label);
                }
            }
            Event::Segmented { job, segments } => {
                if let Some(b) = self.jobs.get(job).and_then(|v| v.bar.as_ref()) {
                    b.set_message(format!("{segments} segments"));
                }
                if self.mode == Mode::Json {
                    self.emit_json(
                        json!({"event": "segmented", "job": job.0, "segments": segments}),
                    );
                }
            }
            Event::SingleConnection { job, reason } => {
                self.tell(
                    job,
                    // The reason says what happened: answers that do not fit together, or
                    // a file made of segments that failed verification (not the segments'
                    // fault when the expected digest was wrong).
                    format!("one connection from now on: {reason}"),
                );
                if self.mode == Mode::Json {
                    self.emit_json(
                        json!({"event": "single_connection", "job": job.0, "reason": reason}),
                    );
                }
            }
            Event::Started { job, url } => {
                self.waiting.remove(job);
                let label = self
                    .queued_labels
                    .remove(job)
                    .unwrap_or_else(|| label_of(url));
                self.jobs.insert(
                    *job,
                    JobView {
                        label,
                        bar: None,
                        total: None,
                        last_json: None,
                        bytes: 0,
                        rate: 0,
                        retried: false,
                        resumable: None,
                        started: Instant::now(),
                    },
                );
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "started", "job": job.0, "url": url}));
                }
            }
            Event::Resuming { job, offset } => {
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "resuming", "job": job.0, "offset": offset}));
                }
            }
            Event::Redirected {
                job,
                status,
                from,
                to,
            } => {
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "redirected", "job": job.0, "status": status, "from": from, "to": to}));
                }
            }
            Event::Response {
                job,
                status,
                total,
                offset,
                resumable,
            } => {
                let columns = self.columns;
                if let Some(v) = self.jobs.get_mut(job) {
                    v.resumable = Some(*resumable);
                    v.total = *total;
                    v.bytes = *offset;
                    if let (Some(b), Some(t)) = (&v.bar, total) {
                        b.set_style(bar_style(true, columns));
                        b.set_length(*t);
                        b.set_position(*offset);
                        b.reset_eta();
                    }
                }
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "response", "job": job.0, "status": status, "total": total, "offset": offset, "resumable": resumable}));
                }
            }
            Event::Progress {
                job,
                bytes,
                total,
                rate,
                eta,
            } => {
                let Some(v) = self.jobs.get_mut(job) else {
                    return;
                };
                v.bytes = *bytes;
                v.rate = *rate;
                self.update_overall(false);
                let Some(v) = self.jobs.get_mut(job) else {
                    return;
                };
                if let Some(b) = &v.bar {
                    b.set_position(*bytes);
                } else if self.mode == Mode::Bars {
                    self.show_bar(*job, false);
                }
                let Some(v) = self.jobs.get_mut(job) else {
                    return;
                };
                if self.mode == Mode::Json {
                    let now = Instant::now();
                    let due = v
                        .last_json
                        .is_none_or(|t| now.duration_since(t) >= JSON_PROGRESS_EVERY);
                    if due {
                        v.last_json = Some(now);
                        let eta_s = eta.map(|e| e.as_secs_f64());
                        self.emit_json(json!({"event": "progress", "job": job.0, "bytes": bytes, "total": total, "rate": rate, "eta_s": eta_s}));
                    }
                }
            }
            Event::Retrying {
                job,
                attempt,
                delay,
                error,
            } => {
                // It receives nothing until its next attempt: its last rate is not a rate
                // the overall bar may go on adding (a download waiting 30 s behind a
                // breaker kept adding what it did before).
                if let Some(v) = self.jobs.get_mut(job) {
                    v.rate = 0;
                    v.retried = true;
                }
                self.update_overall(true);
                self.tell(
                    job,
                    format!("attempt {attempt} in {:.1}s: {error}", delay.as_secs_f64()),
                );
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "retrying", "job": job.0, "attempt": attempt, "delay_ms": delay.as_millis() as u64, "error": error.to_string()}));
                }
            }
            Event::Failover { job, from, to } => {
                // Back to the download's own URL is a failover too, not a mirror. A first
                // attempt that goes elsewhere (the URL's origin behind a breaker, or another
                // that delivered better) has failed nowhere: it said "failing over from" a
                // URL it never asked.
                let retried = self.jobs.get(job).is_some_and(|v| v.retried);
                let text = if retried {
                    format!("failing over from {from} to {to}")
                } else {
                    format!("using {to} rather than {from}")
                };
                self.tell(job, text);
                if self.mode == Mode::Json {
                    self.emit_json(
                        json!({"event": "failover", "job": job.0, "from": from, "to": to}),
                    );
                }
            }
            Event::Spread { job, url } => {
                if self.mode == Mode::Json {
                    self.emit_json(json!({"event": "spread", "job": job.0, "url": url}));
                }
            }
            Event::BreakerOpened { origin, cooldown } => {
                let msg = format!(
                    "{origin} keeps failing: no new request there for {:.0}s",
                    cooldown.as_secs_f64()
                );
                match self.mode {
                    Mode::Json => self.emit_json(json!({"event": "breaker_opened", "origin": origin, "cooldown_ms": cooldown.as_millis() as u64})),
                    Mode::Bars => {
                        if let Some(m) = &self.multi {
                            let _ = m.println(msg);
                        }
                    }
                    Mode::Plain => crate::say(format_args!("{msg}")),
                    Mode::Quiet => {}
                }
            }
            Event::Finished { job, result } => self.finished(*job, result),
        }
    }

    /// The overall bar's bytes and rate: what every download received so far, and the sum
    /// of the running ones' rates (at most ten times a second, unless `now`: a download's
    /// end, when the bytes of the running ones may not have moved since). Its files
    /// count only finished downloads, so without these a list of large files showed
    /// `0/4 files` for minutes, saying nothing of how far it was.
    fn update_overall(&mut self, now: bool) {
        let Some(o) = &self.overall else {
            return;
        };
        let at = Instant::now();
        if !now
            && self
                .overall_set
                .is_some_and(|t| at.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.overall_set = Some(at);
        let running: u64 = self.jobs.values().map(|v| v.bytes).sum();
        let rate: u64 = self.jobs.values().map(|v| v.rate).sum();
        o.set_message(format!(
            "{} {}/s",
            indicatif::HumanBytes(self.done_bytes + running),
            indicatif::HumanBytes(rate)
        ));
    }

    fn finished(&mut self, job: JobId, result: &Result<Outcome, DownloadError>) {
        self.done_jobs += 1;
        if let Some(o) = &self.overall {
            o.set_position(self.done_jobs as u64);
        }
        let view = self.jobs.remove(&job);
        self.done_bytes += view.as_ref().map_or(0, |v| v.bytes);
        self.update_overall(true);
        if let Some(b) = view.as_ref().and_then(|v| v.bar.as_ref()) {
            b.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(b);
            }
        }
        let waiting = self.waiting.remove(&job);
        let queued_label = self.queued_labels.remove(&job);
        let url = self.urls.remove(&job);
        let located = self.located.remove(&job);
        // A file written unnamed (a small one), or served without a validator to resume
        // against, keeps nothing when cancelled; nor does one that got no byte yet. One
        // interrupted before any answer keeps what an earlier run left, if anything.
        let resumable = view.as_ref().and_then(|v| v.resumable);
        let nothing_kept = resumable == Some(false)
            || (resumable == Some(true) && view.as_ref().is_some_and(|v| v.bytes == 0));
        let unanswered = resumable.is_none();
        let (got, total) = view.as_ref().map_or((0, None), |v| (v.bytes, v.total));
        // Never started (still queued): an interruption has nothing to say about it (a list
        // of 2,000 files printed 2,000 "interrupted" lines); the summary counts it.
        let never_started = view.is_none();
        // Time since the download left the queue (the outcome's counts from its submission).
        let active = view.as_ref().map(|v| v.started.elapsed());
        let label = view
            .map(|v| v.label)
            .or(waiting)
            .or(queued_label)
            .unwrap_or_default();
        match (self.mode, result) {
            (Mode::Json, Ok(o)) => self.emit_json(json!({
                "event": "finished", "job": job.0, "ok": true, "path": o.path.to_string_lossy(), "size": o.size,
                "sha256": o.sha256_hex(), "resumed_from": o.resumed_from, "fetched": o.bytes_fetched,
                "attempts": o.attempts, "delivery": o.delivery.as_str(), "seconds": o.elapsed.as_secs_f64(), "rate": o.average_rate(),
                "url": o.final_url,
            })),
            (Mode::Json, Err(e)) => self.emit_json(json!({
                "event": "finished", "job": job.0, "ok": false, "url": url, "label": label, "error": e.to_string(),
                "class": format!("{:?}", e.class()), "retryable": e.retryable(),
                "exit_code": crate::exit::as_exited(crate::exit::for_download(e)),
            })),
            (Mode::Bars | Mode::Plain, Ok(o)) if o.delivery == Delivery::AlreadyPresent => {
                let line = format!(
                    "kept {} ({}, sha256 {}): it already holds these bytes; nothing fetched",
                    o.path.display(),
                    human_bytes(o.size),
                    o.sha256_hex(),
                );
                self.println(&line);
            }
            (Mode::Bars | Mode::Plain, Ok(o)) if o.delivery == Delivery::Duplicate => {
                let line = format!(
                    "saved {} ({}, sha256 {}): the same download as another of this command, \
                     done once",
                    o.path.display(),
                    human_bytes(o.size),
                    o.sha256_hex(),
                );
                self.println(&line);
            }
            (Mode::Bars | Mode::Plain, Ok(o)) => {
                let secs = active.unwrap_or(o.elapsed).as_secs_f64();
                let rate = if secs > 0.0 {
                    o.bytes_fetched as f64 / secs
                } else {
                    0.0
                };
                let line = format!(
                    "saved {} ({}, sha256 {}) in {secs:.2}s at {}{}",
                    o.path.display(),
                    human_bytes(o.size),
                    o.sha256_hex(),
                    human_rate(rate),
                    if o.resumed_from > 0 {
                        format!(", resumed after {}", human_bytes(o.resumed_from))
                    } else {
                        String::new()
                    }
                );
                self.println(&line);
            }
            // Only a signal cancels a command's downloads (their partials kept). Said so
            // with -q too: "cancelled" read as if the partial was thrown away.
            (Mode::Bars | Mode::Plain | Mode::Quiet, Err(DownloadError::Cancelled))
                if never_started => {}
            (Mode::Bars | Mode::Plain | Mode::Quiet, Err(DownloadError::Cancelled))
                if nothing_kept =>
            {
                let small = haul_core::Config::default().unnamed_max;
                let why = if got == 0 {
                    "nothing had arrived".to_string()
                } else if total.is_some_and(|t| t <= small) {
                    format!("a file of {} or less is written whole", human_bytes(small))
                } else {
                    "the server named no ETag or Last-Modified to resume against".to_string()
                };
                self.println(&format!(
                    "haul: {label}: interrupted; nothing of it is kept ({why}): the same command \
                     again fetches it"
                ))
            }
            (Mode::Bars | Mode::Plain | Mode::Quiet, Err(DownloadError::Cancelled))
                if unanswered =>
            {
                self.println(&format!(
                    "haul: {label}: interrupted before the server answered; the same command \
                     again tries it"
                ))
            }
            (Mode::Bars | Mode::Plain | Mode::Quiet, Err(DownloadError::Cancelled)) => {
                self.println(&format!(
                    "haul: {label}: interrupted; the same command again resumes it"
                ))
            }
            (_, Err(e)) => {
                // Named by its destination; its URL too when the error does not say it (two
                // list entries for one destination: which one failed).
                let text = e.to_string();
                let from = match &url {
                    Some(url) if !text.contains(url.as_str()) => format!(" ({url})"),
                    _ => String::new(),
                };
                // A list's download: its file and line too.
                let at = located.map(|at| format!("{at}: ")).unwrap_or_default();
                self.println(&format!("haul: {at}{label}{from}: {text}"))
            }
            (Mode::Quiet, Ok(_)) => {}
        }
    }

    fn println(&self, line: &str) {
        let line = crate::escape_controls(line);
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A closing summary for several downloads.
    /// The line after every download ended: `ok` verified, `failed`, and `cancelled`
    /// (interrupted, their partials kept); `bytes` of bodies received by them all.
    pub fn summary(&self, ok: usize, failed: usize, cancelled: usize, bytes: u64) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        match self.mode {
            Mode::Json => self.emit_json(json!({
                "event": "summary", "ok": ok, "failed": failed, "cancelled": cancelled,
                "bytes": bytes, "seconds": secs, "rate": rate, "jobs": self.total_jobs,
                "skipped": self.skipped,
            })),
            Mode::Bars | Mode::Plain if self.total_jobs > 1 || self.skipped > 0 => {
                crate::say(format_args!(
                    "{ok} of {} downloads verified, {failed} failed{}{}, {} in {secs:.2}s ({})",
                    self.total_jobs,
                    if cancelled > 0 {
                        format!(", {cancelled} interrupted")
                    } else {
                        String::new()
                    },
                    if self.skipped > 0 {
                        format!(", {} skipped (no usable URI)", self.skipped)
                    } else {
                        String::new()
                    },
                    human_bytes(bytes),
                    human_rate(rate)
                ))
            }
            _ => {}
        }
    }
}

/// Columns of a bar's label on a terminal this wide.
fn prefix_width(columns: usize) -> usize {
    (columns / 4).clamp(8, 20)
}

/// `label` cut to `width` columns of the terminal (its end kept: a file name's tail tells
/// most). Counted in display width, not characters: a wide (CJK) character takes two
/// columns, and a label cut by characters wrapped its bar onto a second line.
fn fit(label: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if label.width() <= width {
        return label.to_string();
    }
    // The ellipsis takes one column.
    let mut used = 1;
    let mut tail: Vec<char> = Vec::new();
    for c in label.chars().rev() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        tail.push(c);
    }
    std::iter::once('…').chain(tail.into_iter().rev()).collect()
}

/// A download's bar on a terminal `columns` wide: what fits on one line (a wrapped bar
/// took three lines each on 40 columns).
fn bar_style(known_length: bool, columns: usize) -> ProgressStyle {
    let p = prefix_width(columns);
    let t = match (known_length, columns) {
        (true, c) if c >= 100 => format!(
            "{{prefix:>{p}.cyan}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{wide_msg}}"
        ),
        (true, c) if c >= 60 => {
            format!("{{prefix:>{p}.cyan}} [{{wide_bar}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}")
        }
        (true, _) => format!("{{prefix:>{p}.cyan}} {{percent:>3}}% {{bytes_per_sec}}"),
        (false, c) if c >= 60 => {
            format!("{{prefix:>{p}.cyan}} {{spinner}} {{bytes}} {{bytes_per_sec}} {{wide_msg}}")
        }
        (false, _) => format!("{{prefix:>{p}.cyan}} {{bytes}} {{bytes_per_sec}}"),
    };
    ProgressStyle::with_template(&t)
        .expect("template")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_too_long_for_its_column_keeps_its_end() {
        assert_eq!(prefix_width(40), 10);
        assert_eq!(prefix_width(200), 20);
        assert_eq!(fit("a-very-long-file-name.bin", 10), "…-name.bin");
        assert_eq!(fit("a-very-long-file-name.bin", 10).chars().count(), 10);
        assert_eq!(fit("short.bin", 10), "short.bin");
    }

    #[test]
    fn a_wide_label_is_cut_by_the_columns_it_takes_not_its_characters() {
        use unicode_width::UnicodeWidthStr;
        // Ten CJK characters are twenty columns: cut to ten columns, not ten characters.
        let wide = "日本語のファイル名.bin";
        let cut = fit(wide, 10);
        assert!(cut.width() <= 10, "{cut:?} is {} columns", cut.width());
        assert_eq!(cut, "…ル名.bin", "its end kept, as much as fits");
        // A wide character that would overrun by one column is left out, not split.
        assert_eq!(fit("ああああ", 6), "…ああ");
        assert_eq!(fit("ああああ", 5), "…ああ");
        assert_eq!(fit("ああ", 4), "ああ");
    }

    #[test]
    fn the_overall_bar_says_the_bytes_of_every_download_and_the_running_ones_rate() {
        // It counted finished files only: `0/2 files` while gigabytes arrived.
        let mut r = Reporter::new(Mode::Bars, 2);
        for n in [1, 2] {
            r.event(&Event::Started {
                job: JobId(n),
                url: format!("http://h/f{n}.iso"),
            });
        }
        let progress = |job, bytes, rate| Event::Progress {
            job: JobId(job),
            bytes,
            total: Some(1 << 30),
            rate,
            eta: None,
        };
        r.event(&progress(1, 3_000_000, 1_000_000));
        r.event(&progress(2, 5_000_000, 2_000_000));
        r.update_overall(true);
        let overall = r
            .overall
            .clone()
            .expect("two downloads have an overall bar");
        assert_eq!(overall.message(), "7.63 MiB 2.86 MiB/s");
        // A download that ends keeps its bytes in the total; its rate leaves.
        let failed = DownloadError::Cancelled;
        r.event(&Event::Finished {
            job: JobId(1),
            result: Err(failed),
        });
        assert_eq!(overall.message(), "7.63 MiB 1.91 MiB/s");
        assert_eq!(overall.position(), 1);
        // A download that waits to try again receives nothing meanwhile.
        r.event(&Event::Retrying {
            job: JobId(2),
            attempt: 2,
            delay: Duration::from_secs(30),
            error: DownloadError::Cancelled,
        });
        assert_eq!(overall.message(), "7.63 MiB 0 B/s");
    }

    #[test]
    fn a_first_attempt_on_a_mirror_is_not_called_a_failover() {
        let mut r = Reporter::new(Mode::Bars, 1);
        let job = JobId(1);
        r.event(&Event::Started {
            job,
            url: "http://a/f.iso".into(),
        });
        let failover = Event::Failover {
            job,
            from: "http://a/f.iso".into(),
            to: "http://b/f.iso".into(),
        };
        r.event(&failover);
        let message = |r: &Reporter| r.jobs[&job].bar.as_ref().expect("bar").message();
        assert_eq!(
            message(&r),
            "using http://b/f.iso rather than http://a/f.iso"
        );
        r.event(&Event::Retrying {
            job,
            attempt: 2,
            delay: Duration::ZERO,
            error: DownloadError::Cancelled,
        });
        r.event(&failover);
        assert_eq!(
            message(&r),
            "failing over from http://a/f.iso to http://b/f.iso"
        );
    }

    #[test]
    fn a_label_is_the_urls_last_path_segment_without_its_query() {
        assert_eq!(label_of("http://h/a/two.bin?v=x%3Dc.t&sig=abc"), "two.bin");
        assert_eq!(label_of("http://h/dir/#top"), "dir");
        assert_eq!(label_of("http://h/f.zip"), "f.zip");
    }
}

//! Resilience: which URL an attempt uses (mirrors, circuit breakers), what a failure says
//! about its origin, and whether and when the job tries again (backoff, retry budget,
//! failover, the one retry after a failed verification).

use std::time::Duration;

use super::{Engine, Event, JobId, Phase};
use crate::error::DownloadError;
use crate::http::Origin;
use crate::policy::{choose_mirror, Admission, Breaker, BreakerState, MirrorStats};
use crate::time::Instant;

/// Transfers shorter than this say more about latency than throughput: not sampled.
const MIN_THROUGHPUT_SAMPLE: u64 = 64 * 1024;

/// Progress since the last renewal after which a failure renews the download's retries:
/// its time limit (`RetryPolicy::max_elapsed`) counts from that failure, its tries
/// (`max_attempts`) from that attempt, its backoff from the first. A download that keeps
/// getting somewhere is not out of retries.
pub(super) const PROGRESS_RENEWS_RETRIES: u64 = 1024 * 1024;

/// Origins whose latency, throughput and failures the engine remembers, at most: an engine
/// that lives long and reaches many origins forgets the least informative first (no failure
/// to remember, fewest measured transfers, then key order). Their breakers are kept apart and
/// pruned when closed (see `note_success`).
pub(crate) const ORIGIN_STATS_MAX: usize = 1024;

impl Engine {
    /// The `i`-th URL of a job: 0 is the URL it was created with, then its mirrors.
    pub(super) fn job_url(&self, id: JobId, i: usize) -> &url::Url {
        let j = &self.jobs[&id];
        match i {
            0 => &j.spec.url,
            i => &j.spec.mirrors[i - 1],
        }
    }

    fn breaker(&mut self, origin: &Origin) -> &mut Breaker {
        let config = self.config.breaker;
        self.breakers
            .entry(origin.clone())
            .or_insert_with(|| Breaker::new(config))
    }

    /// When the breaker of `url`'s origin lets a request go: `None` now (also for a URL
    /// without a usable origin, which fails on its own with a clear error).
    pub(super) fn breaker_wait(&mut self, url: &url::Url) -> Option<Instant> {
        let now = self.now;
        let origin = Origin::of(url).ok()?;
        self.breakers.get_mut(&origin)?.not_before(now)
    }

    /// What the breaker of `origin` (a label) holds a job back with, if it is not closed:
    /// whether its probe is out (a job waiting behind it waits for the probe's verdict,
    /// whatever its own limit), and when the outage began (it opened from closed).
    fn breaker_hold(&mut self, origin: &str) -> Option<(bool, Instant)> {
        let now = self.now;
        let (_, b) = self
            .breakers
            .iter_mut()
            .find(|(o, _)| o.to_string() == origin)?;
        let since = b.outage_since(now)?;
        let probing = matches!(b.state(now), BreakerState::HalfOpen { probing: true, .. });
        Some((probing, since))
    }

    /// How many origins have stats (latency, throughput, failures).
    #[cfg(test)]
    pub(crate) fn origin_stats_held(&self) -> usize {
        self.origin_stats.len()
    }

    /// Whether `origin` has stats.
    #[cfg(test)]
    pub(crate) fn has_origin_stats(&self, origin: &Origin) -> bool {
        self.origin_stats.contains_key(origin)
    }

    /// The stats of `origin`, made room for within [`ORIGIN_STATS_MAX`].
    fn origin_stats_mut(&mut self, origin: Origin) -> &mut MirrorStats {
        if self.origin_stats.len() >= ORIGIN_STATS_MAX && !self.origin_stats.contains_key(&origin) {
            let least = self
                .origin_stats
                .iter()
                .min_by_key(|(_, stats)| (stats.failures > 0, stats.samples))
                .map(|(known, _)| known.clone());
            if let Some(least) = least {
                self.origin_stats.remove(&least);
            }
        }
        self.origin_stats.entry(origin).or_default()
    }

    /// How many origins have a breaker (one that remembers failures or is not closed).
    #[cfg(test)]
    pub(crate) fn breakers_held(&self) -> usize {
        self.breakers.len()
    }

    /// The state of an origin's breaker now (closed when the engine has never seen it).
    pub fn breaker_state(&mut self, origin: &Origin) -> BreakerState {
        let now = self.now;
        match self.breakers.get_mut(origin) {
            Some(b) => b.state(now),
            None => BreakerState::Closed { failures: 0 },
        }
    }

    /// Choose the URL of the job's next attempt: among the URLs whose origin's breaker
    /// admits a request, not failed since the last backoff, the best scored (or the last
    /// attempt's URL, when the job is to stay there). Returns when the earliest one may be
    /// tried when none can now (with that origin, for messages).
    pub(super) fn pick_url(&mut self, id: JobId) -> Result<(), (Instant, String)> {
        let now = self.now;
        let j = &self.jobs[&id];
        if j.stay_on_url {
            // The start-over after a mixed download failed verification: that URL did not
            // fail, so it is neither skipped as failed this round nor scored against another.
            let stay = j.mirror;
            let url = self.job_url(id, stay).clone();
            if let Some(at) = self.breaker_wait(&url) {
                return Err((at, crate::engine::origin_label(&url)));
            }
            let j = self.jobs.get_mut(&id).expect("job exists");
            j.stay_on_url = false;
            j.in_stay_attempt = true;
            return self.use_url(id, stay);
        }
        if std::mem::take(&mut self.jobs.get_mut(&id).expect("job exists").prefer_url) {
            // Resumed mid-attempt: on where it was, when that URL may be asked (and has not
            // served wrong bytes or failed this round, which a pause mid-attempt rules out,
            // but cheaply checked).
            let j = &self.jobs[&id];
            let current = j.mirror;
            let usable = !j.bad_urls.contains(&current) && !j.failed_round.contains(&current);
            let url = self.job_url(id, current).clone();
            if usable && self.breaker_wait(&url).is_none() {
                return self.use_url(id, current);
            }
        }
        let j = &self.jobs[&id];
        let count = 1 + j.spec.mirrors.len();
        let failed = j.failed_round.clone();
        let bad = j.bad_urls.clone();
        let previous = j.mirror;
        let mut open: Vec<(usize, MirrorStats)> = Vec::new();
        let mut earliest: Option<(Instant, String)> = None;
        for i in (0..count).filter(|i| !bad.contains(i)) {
            let url = self.job_url(id, i).clone();
            match self.breaker_wait(&url) {
                None => {
                    let stats = Origin::of(&url)
                        .ok()
                        .and_then(|o| self.origin_stats.get(&o).copied())
                        .unwrap_or_default();
                    open.push((i, stats));
                }
                Some(at) => {
                    if earliest.as_ref().is_none_or(|(e, _)| at < *e) {
                        earliest = Some((at, crate::engine::origin_label(&url)));
                    }
                }
            }
        }
        if open.is_empty() {
            // Every URL is behind a breaker (or served wrong bytes, which ends the job
            // before an attempt is picked).
            let fallback = || {
                let label = crate::engine::origin_label(self.job_url(id, previous));
                (now + self.config.retry.base_delay, label)
            };
            return Err(earliest.unwrap_or_else(fallback));
        }
        // Only URLs that have not failed since the last backoff (the round is empty after one).
        let mut candidates: Vec<(usize, MirrorStats)> = open
            .into_iter()
            .filter(|(i, _)| !failed.contains(i))
            .collect();
        // A URL whose server asked for time (`Retry-After`) waits while another may go: it
        // was asked again after the other's backoff, a second after "in an hour".
        let asked = candidates
            .iter()
            .filter_map(|(i, _)| self.retry_after_until(id, *i).map(|until| (until, *i)))
            .min();
        candidates.retain(|(i, _)| !self.retry_after_pending(id, *i));
        // The others would be probes of origins whose breakers opened: a server that said
        // when to come back is waited for rather than spending the download's tries on them.
        let only_probes = candidates.iter().all(|(i, _)| {
            let origin = crate::engine::origin_label(self.job_url(id, *i));
            self.breaker_hold(&origin).is_some()
        });
        // Not when the wait would pass the retries' time limit while a probe may go now.
        let deadline = self.jobs[&id].started + self.config.retry.max_elapsed;
        let asked = asked.filter(|&(until, _)| until <= deadline || candidates.is_empty());
        if let (Some((until, i)), true) = (asked, only_probes) {
            // Every URL that may be asked asked for time, or is behind a breaker: wait for
            // the first to say yes. It was asked again after the backoff of a mirror whose
            // breaker had opened, 20 s before its `Retry-After: 40` ended, and its second 503
            // ended the download.
            return Err((until, crate::engine::origin_label(self.job_url(id, i))));
        }
        if candidates.is_empty() {
            // The URL chosen for a failover became unavailable meanwhile: back off rather
            // than go straight back to one that just failed.
            let until = now + self.config.retry.base_delay;
            let origin = crate::engine::origin_label(self.job_url(id, previous));
            self.jobs
                .get_mut(&id)
                .expect("job exists")
                .failed_round
                .clear();
            return Err((until, origin));
        }
        let choice = choose_mirror(&candidates, &mut self.rng).expect("candidates");
        self.use_url(id, choice)
    }

    /// The job's next attempt uses its `choice`-th URL (admitted by its origin's breaker):
    /// take the breaker's probe when it is half-open, and say so when this is a failover.
    fn use_url(&mut self, id: JobId, choice: usize) -> Result<(), (Instant, String)> {
        let now = self.now;
        let previous = self.jobs[&id].mirror;
        let url = self.job_url(id, choice).clone();
        let mut probe = None;
        if let Ok(origin) = Origin::of(&url) {
            // No breaker is a closed one with no failures: it admits without a probe.
            let admitted = self.breakers.get_mut(&origin).map(|b| b.admit(now));
            if admitted == Some(Admission::Probe) {
                probe = Some(origin);
            }
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.mirror = choice;
        j.probe = probe;
        j.failure_noted = false;
        if choice != previous {
            let from = self.job_url(id, previous).to_string();
            self.event(Event::Failover {
                job: id,
                from,
                to: url.to_string(),
            });
        }
        Ok(())
    }

    /// Whether URL `url` of job `id` asked (with `Retry-After`) not to be asked again yet.
    pub(super) fn retry_after_pending(&self, id: JobId, url: usize) -> bool {
        self.retry_after_until(id, url).is_some()
    }

    /// Until when URL `url` of job `id` asked (with `Retry-After`) not to be asked again,
    /// if that is still ahead.
    fn retry_after_until(&self, id: JobId, url: usize) -> Option<Instant> {
        let now = self.now;
        self.jobs.get(&id).and_then(|j| {
            j.asked_to_wait
                .iter()
                .filter(|&&(i, until)| i == url && until > now)
                .map(|&(_, until)| until)
                .max()
        })
    }

    /// The latest job `id` waits behind open breakers: as long as its own remaining retries
    /// would have taken (the longest backoffs of the retries `--retries` leaves it, see
    /// [`RetryPolicy::backoffs_total`]), or the breaker's first cool-down if that is longer,
    /// counted from when it began to wait behind the outage that holds it now
    /// (`Job::breaker_wait`; kept when `keep`, forgotten when an attempt begins or it
    /// pauses, and not counted from before the outage that began at `outage_since`). A
    /// breaker still open then has had its probe fail after a cool-down, and waiting on
    /// would only outlast what the download was asked to try: with the default retries (1,
    /// 2, 4, 8, 16 s) a list for a dead origin ends after about 31 s (20 URLs to a port
    /// nobody listened on took 421 s when downloads waited through doubling cool-downs up
    /// to their time limit), while `--retries 20` waits out an origin down for minutes (a
    /// fixed limit of 32 s ended it after about 40 s). A probe in flight is waited for
    /// whatever the limit (see [`Engine::breaker_hold`]).
    ///
    /// `drawing`: the job's last backoff (`Job::backoffs` - 1) is the one its retry is being
    /// scheduled with, and counts among those left.
    pub(super) fn breaker_wait_ends(
        &mut self,
        id: JobId,
        drawing: bool,
        outage_since: Instant,
        keep: bool,
    ) -> Instant {
        let policy = self.config.retry;
        let cooldown = self.config.breaker.cooldown;
        let now = self.now;
        let j = self.jobs.get_mut(&id).expect("job exists");
        if let Some((since, ends)) = j.breaker_wait {
            if since >= outage_since {
                return ends;
            }
        }
        // Retries left after the attempt that failed (or is about to begin).
        let retries_left = policy.max_attempts.saturating_sub(j.tries_counted());
        let from = if drawing {
            j.backoffs.saturating_sub(1)
        } else {
            j.backoffs
        };
        // The first cool-down is waited even when the retries left would not last it (a
        // short outage must not fail the download), unless the policy never retries: one
        // try means no waiting.
        let floor = if policy.max_attempts > 1 {
            cooldown
        } else {
            Duration::ZERO
        };
        let ends = now + policy.backoffs_total(from, retries_left).max(floor);
        if keep {
            j.breaker_wait = Some((now, ends));
        }
        ends
    }

    /// `CircuitOpen` for `origin` (a label), naming the last failure its breaker counted.
    fn circuit_open(&self, origin: String, retry_in: Duration) -> DownloadError {
        let last_failure = self
            .breakers
            .iter()
            .find(|(o, _)| o.to_string() == origin)
            .and_then(|(_, b)| b.last_failure())
            .unwrap_or("its last requests failed")
            .to_string();
        DownloadError::CircuitOpen {
            origin,
            retry_in,
            last_failure,
        }
    }

    /// No URL of the job may be tried before `until`: wait in backoff, or give up when that
    /// is beyond the retry policy's time limit or [`Engine::breaker_wait_ends`] (with the
    /// job's last failure at `origin`, else `CircuitOpen`).
    pub(super) fn wait_for_breaker(&mut self, id: JobId, until: Instant, origin: String) {
        // Only an open breaker limits the wait (a job may back off here for other reasons).
        let past_ends = match self.breaker_hold(&origin) {
            Some((false, since)) => until > self.breaker_wait_ends(id, false, since, true),
            _ => false,
        };
        let j = self.jobs.get_mut(&id).expect("job exists");
        let deadline = j.started + self.config.retry.max_elapsed;
        let retry_in = until.saturating_since(self.now);
        if until > deadline || past_ends {
            // A job whose last try failed at the origin that keeps it waiting ends with that
            // failure (its exit code says so); otherwise (it never tried there, or a later
            // answer came), with the breaker's verdict.
            if let Some((_, error)) = j.last_error.clone().filter(|(from, _)| *from == origin) {
                let path = j.dest_path();
                tracing::warn!(job = %id, path = %path.display(), %origin, "not retrying: every URL's origin is behind a circuit breaker for another {retry_in:.1?}");
                return self.terminate(id, error, true);
            }
            let error = self.circuit_open(origin, retry_in);
            return self.terminate(id, error, true);
        }
        tracing::debug!(job = %id, %origin, %until, "every URL's breaker is open; waiting");
        j.phase = Phase::Backoff { until };
        // Its slot is free from now: the scheduler's own loop counts again, and any other
        // caller's input schedules at its end (`slot_freed`).
        j.parked = true;
        self.slot_freed = true;
    }

    /// A request of job `id` to `url` failed with `error`: count it against the origin when
    /// the failure says something about the origin's health, once per attempt (the
    /// connections of a segmented attempt that break together are one failure).
    /// `sent` is the breaker clock when the failing request went out (see
    /// [`Transfer::breaker_clock`](super::transfer::Transfer)).
    pub(super) fn note_failure(
        &mut self,
        id: JobId,
        url: &url::Url,
        error: &DownloadError,
        sent: u64,
    ) {
        if !error.counts_against_origin() || self.jobs.get(&id).is_none_or(|j| j.failure_noted) {
            return;
        }
        // A failure of the same incident as one counted leaves the attempt free to count a
        // later one of its own (a segment sent after it).
        if self.count_origin_failure(id, url, error, sent) {
            self.jobs.get_mut(&id).expect("checked").failure_noted = true;
        }
    }

    /// Count one failure against `url`'s origin: its mirror score, and its breaker when
    /// the failure counts there (see [`DownloadError::counts_toward_breaker`]). Not a
    /// connection that broke (see [`DownloadError::breaks_connection`]) under a request
    /// sent when the breaker clock read `sent`, before a failure counted there since: that
    /// is the same incident (see [`Breaker::on_request_failure`]), and leaves no mark
    /// (returns false).
    pub(super) fn count_origin_failure(
        &mut self,
        id: JobId,
        url: &url::Url,
        error: &DownloadError,
        sent: u64,
    ) -> bool {
        let Ok(origin) = Origin::of(url) else {
            return true;
        };
        let now = self.now;
        // Only a broken connection can belong to another request's incident.
        let sent = if error.breaks_connection() {
            sent
        } else {
            u64::MAX
        };
        let counts = error.counts_toward_breaker();
        if counts
            && self
                .breakers
                .get_mut(&origin)
                .is_some_and(|b| b.same_incident(now, sent))
        {
            self.clear_probe(id, &origin);
            return false;
        }
        self.origin_stats_mut(origin.clone()).record_failure();
        if !counts {
            // No verdict for a probe this attempt holds: it is given up when the attempt
            // ends (`abandon_probe`), and the breaker admits another without reopening.
            return true;
        }
        let mut clock = self.breaker_clock;
        let b = self.breaker(&origin);
        b.note_failure(error.to_string());
        if !b.on_request_failure(now, sent, &mut clock) {
            // Open already.
            self.clear_probe(id, &origin);
            return true;
        }
        self.breaker_clock = clock;
        let b = self.breaker(&origin);
        if let BreakerState::Open { cooldown, .. } = b.state(now) {
            tracing::info!(%origin, ?cooldown, "circuit breaker opened");
            self.event(Event::BreakerOpened {
                origin: origin.to_string(),
                cooldown,
            });
        }
        self.clear_probe(id, &origin);
        true
    }

    /// The origin of `url` answered a request of job `id` with a usable head after
    /// `latency`.
    pub(super) fn note_success(&mut self, id: JobId, url: &url::Url, latency: Duration) {
        let Ok(origin) = Origin::of(url) else {
            return;
        };
        let now = self.now;
        if let Some(b) = self.breakers.get_mut(&origin) {
            b.on_success(now);
            // Closed with no failures is what a missing breaker means: keep only breakers
            // that remember something, so a long-lived engine does not keep one per origin
            // it ever reached.
            if b.state(now) == (BreakerState::Closed { failures: 0 }) {
                self.breakers.remove(&origin);
            }
        }
        self.origin_stats_mut(origin.clone())
            .record_latency(latency);
        self.clear_probe(id, &origin);
    }

    /// A transfer from `url` delivered `bytes` of body over `elapsed`.
    pub(super) fn note_throughput(&mut self, url: &url::Url, bytes: u64, elapsed: Duration) {
        if bytes < MIN_THROUGHPUT_SAMPLE {
            return;
        }
        if let Ok(origin) = Origin::of(url) {
            self.origin_stats_mut(origin)
                .record_transfer(bytes, elapsed);
        }
    }

    fn clear_probe(&mut self, id: JobId, origin: &Origin) {
        if let Some(j) = self.jobs.get_mut(&id) {
            if j.probe.as_ref() == Some(origin) {
                j.probe = None;
            }
        }
    }

    /// The job stops before its probe got a verdict: let another request probe.
    pub(super) fn abandon_probe(&mut self, id: JobId) {
        let Some(origin) = self.jobs.get_mut(&id).and_then(|j| j.probe.take()) else {
            return;
        };
        if let Some(b) = self.breakers.get_mut(&origin) {
            b.on_abandon();
        }
    }

    /// The current attempt failed: retry after a backoff, or end the job.
    /// A failure that belongs to the URL (a 404 on one mirror, its TLS) fails over to
    /// another URL of the job that has not failed that way, where retrying the same one
    /// could not help; the URL is not used again by this job.
    pub(super) fn fail_attempt(&mut self, id: JobId, error: DownloadError) {
        let retry = error.retryable() || (error.another_url_may_serve() && self.drop_url(id));
        self.retry_or_end(id, error, retry);
    }

    /// Stop using the current attempt's URL for this job: whether another one is left.
    fn drop_url(&mut self, id: JobId) -> bool {
        let Some(j) = self.jobs.get_mut(&id) else {
            return false;
        };
        let urls = 1 + j.spec.mirrors.len();
        if urls == 1 {
            return false;
        }
        let url = j.mirror;
        if !j.bad_urls.contains(&url) {
            j.bad_urls.push(url);
        }
        tracing::info!(job = %id, url, "this URL cannot serve the file: failing over");
        j.bad_urls.len() < urls
    }

    /// A response announced or delivered another size than the expected one, before the
    /// body was complete: this server has other bytes than the ones asked for. A mirror
    /// may not; without one, retrying the same server cannot help.
    pub(super) fn wrong_size(&mut self, id: JobId, error: DownloadError) {
        if self.jobs[&id].spec.mirrors.is_empty() {
            return self.terminate(id, error, false);
        }
        self.verification_failed(id, error);
    }

    /// The downloaded bytes failed verification (hash, or size): start over from zero, once
    /// when the job has a single URL, else on another URL that has not served wrong bytes
    /// (a URL that did is not used again by this job); when none is left the job fails.
    /// Bytes assembled from several mirrors blame none: the job starts over once with its
    /// segments kept on one URL.
    pub(super) fn verification_failed(&mut self, id: JobId, error: DownloadError) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if !matches!(j.phase, Phase::Running) {
            return self.terminate(id, error, false);
        }
        let urls = 1 + j.spec.mirrors.len();
        if j.spread_used && !j.spread_off {
            // The bytes came from several mirrors: none can be blamed. Start over with every
            // segment on one URL, after which a failure blames that URL as usual. That URL
            // is the attempt's own, at once: it did not fail (not in this round's failures,
            // nothing held against its origin), and a failover would go to a URL that served
            // some of the bytes, perhaps the wrong ones.
            j.spread_off = true;
            j.stay_on_url = true;
            tracing::info!(job = %id, "a download assembled from several mirrors failed verification; starting over on one: {error}");
            self.stop_transfers(id);
            self.restart_from_zero(id);
            return self.retry_or_end(id, error, true);
        }
        if urls == 1 {
            if j.verify_retry_used {
                return self.terminate(id, error, false);
            }
            j.verify_retry_used = true;
            if j.segmented && j.splitting == super::Splitting::Allowed {
                // Segments of one URL that fit together by validator, range and length,
                // yet make a file of other bytes: nodes that serve different bytes under
                // one validator. The one retry keeps to one connection, which gets one
                // node's file whole.
                j.splitting = super::Splitting::SingleConnection;
                let reason = format!("the segments made a file that failed verification ({error})");
                self.event(Event::SingleConnection { job: id, reason });
            }
        } else {
            let bad = j.mirror;
            if !j.bad_urls.contains(&bad) {
                j.bad_urls.push(bad);
            }
            if j.bad_urls.len() >= urls {
                return self.terminate(id, error, false);
            }
        }
        let url = self.job_url(id, self.jobs[&id].mirror).clone();
        if let Ok(origin) = Origin::of(&url) {
            self.origin_stats_mut(origin).record_failure();
        }
        tracing::info!(job = %id, "verification failed, starting over once: {error}");
        self.stop_transfers(id);
        self.restart_from_zero(id);
        self.retry_or_end(id, error, true);
    }

    /// End the attempt; when `retry` and the policy allows, start another: at once on a URL
    /// that has not failed since the last backoff, else after an exponential backoff with
    /// equal jitter (at least `Retry-After` when the same origin is tried again), and never
    /// before the retry budget has a token.
    fn retry_or_end(&mut self, id: JobId, error: DownloadError, retry: bool) {
        if !self.jobs.contains_key(&id) {
            return;
        }
        self.stop_transfers(id);
        let j = self.jobs.get_mut(&id).expect("job exists");
        if !matches!(j.phase, Phase::Running) {
            return;
        }
        let policy = self.config.retry;
        if !retry {
            return self.terminate(id, error, true);
        }
        // A download that got somewhere since its last failure has its retries renewed:
        // its time limit counted from now, its tries from this one, its backoff from the
        // first. The limits are for a download that gets nowhere: one running longer than
        // the time limit (a large file on a slow link) had no retry at all for a failure
        // after it, and a server cutting every response after 2 MB gave `--retries` + 1 of
        // them, each after a longer pause.
        let present = j.present();
        if present >= j.progress_mark.saturating_add(PROGRESS_RENEWS_RETRIES) {
            j.progress_mark = present;
            j.started = self.now;
            j.renewed = j.attempt.saturating_sub(j.failovers).saturating_sub(1);
            j.backoffs = 0;
        }
        let elapsed = self.now.saturating_since(j.started);
        let stay = j.stay_on_url;
        // The attempt ended: a start-over's hold on its URL with it.
        j.in_stay_attempt = false;
        let failed = j.mirror;
        if !stay && !j.failed_round.contains(&failed) {
            j.failed_round.push(failed);
        }
        if let DownloadError::Status {
            retry_after: Some(wait),
            ..
        } = &error
        {
            let until = self.now + *wait;
            j.asked_to_wait.retain(|&(i, _)| i != failed);
            j.asked_to_wait.push((failed, until));
        }
        let urls = 1 + j.spec.mirrors.len();
        let others: Vec<usize> = (0..urls)
            .filter(|i| !j.failed_round.contains(i) && !j.bad_urls.contains(i))
            .collect();
        // A start-over stays on its URL: a retry, though other URLs are untried. No
        // failover to a URL that asked for time (`Retry-After`): the job backs off instead.
        let others: Vec<usize> = others
            .into_iter()
            .filter(|&i| !self.retry_after_pending(id, i))
            .collect();
        let failover = !stay
            && others.into_iter().any(|i| {
                let url = self.job_url(id, i).clone();
                self.breaker_wait(&url).is_none()
            });
        let untried = stay || failover;
        let j = self.jobs.get_mut(&id).expect("job exists");
        // `max_attempts` bounds the tries of the file, not of its URLs: moving on to a URL
        // not tried in this round (a mirror) is not a retry, so `--retries 0` still tries
        // every mirror once.
        if !failover && j.tries_counted() >= policy.max_attempts {
            return self.terminate(id, error, true);
        }
        let delay = if untried {
            // Fail over now (or start over on a URL that did not fail); the URL's breaker is
            // checked when the attempt starts.
            Duration::ZERO
        } else {
            j.failed_round.clear();
            let exp = policy.delay_cap(j.backoffs);
            j.backoffs += 1;
            // "Equal jitter": at least half the exponential delay, so the backoff still grows.
            let jittered = exp / 2 + exp.mul_f64(self.rng.next_f64() / 2.0);
            match &error {
                DownloadError::Status {
                    retry_after: Some(ra),
                    ..
                } => jittered.max(*ra),
                _ => jittered,
            }
        };
        let delay = delay.max(self.retry_budget.wait(self.now));
        // Every usable URL's breaker open past the backoff: the next attempt waits for the
        // first to close, and the retry says so (it said "in 1.3s" and started 120 s later).
        // Past `breaker_wait_ends` the job ends here; beyond the time limit it is left to
        // the attempt's start (`wait_for_breaker`).
        let j = &self.jobs[&id];
        let usable: Vec<usize> = (0..urls).filter(|i| !j.bad_urls.contains(i)).collect();
        let failed_usable = usable.contains(&failed);
        let mut breakers = Vec::with_capacity(usable.len());
        for i in usable {
            let url = self.job_url(id, i).clone();
            breakers.push(self.breaker_wait(&url).map(|at| (at, url)));
        }
        let mut parked = false;
        let delay = match breakers
            .into_iter()
            .collect::<Option<Vec<(Instant, url::Url)>>>()
        {
            Some(waits) if !stay => {
                let closes = waits
                    .into_iter()
                    .min_by_key(|(at, _)| *at)
                    .map(|(at, url)| (at.saturating_since(self.now), url));
                // The outage of the breaker that closes first, unless its probe is out.
                let outage = match &closes {
                    Some((_, url)) => match self.breaker_hold(&crate::engine::origin_label(url)) {
                        Some((false, since)) => Some(since),
                        _ => None,
                    },
                    None => None,
                };
                let past_ends = match (&closes, outage) {
                    (Some((wait, _)), Some(since)) => {
                        self.now + *wait > self.breaker_wait_ends(id, true, since, false)
                    }
                    _ => false,
                };
                match closes {
                    Some((wait, url)) if past_ends => {
                        // The origin stays down longer than the job's own retries would
                        // have lasted: no retry (see `breaker_wait_ends`). The job ends with
                        // what failed it, if that URL is one the breakers keep it from.
                        tracing::warn!(
                            job = %id,
                            path = %self.jobs[&id].dest_path().display(),
                            "not retrying: every URL's origin is behind a circuit breaker for another {:.1?}",
                            wait
                        );
                        let error = if failed_usable {
                            error
                        } else {
                            self.circuit_open(crate::engine::origin_label(&url), wait)
                        };
                        return self.terminate(id, error, true);
                    }
                    Some((wait, _)) if elapsed + wait <= policy.max_elapsed => {
                        parked = wait > delay;
                        if let (true, Some(since)) = (parked, outage) {
                            // It waits for the breaker, not for its own backoff: its wait
                            // counts from here. (One that backs off for longer than the
                            // breaker stays open keeps no limit from this outage.)
                            self.breaker_wait_ends(id, true, since, true);
                        }
                        delay.max(wait)
                    }
                    _ => delay,
                }
            }
            _ => delay,
        };
        if elapsed + delay > policy.max_elapsed {
            // The error says what failed; this says why it was not tried again.
            tracing::warn!(
                job = %id,
                path = %self.jobs[&id].dest_path().display(),
                "not retrying: the next try, {:.1?} away, would pass the retry time limit of {:?} ({:.1?} used)",
                delay,
                policy.max_elapsed,
                elapsed
            );
            return self.terminate(id, error, true);
        }
        self.retry_budget.take(self.now);
        let failed_origin = crate::engine::origin_label(self.job_url(id, failed));
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.attempt += 1;
        if failover {
            j.failovers += 1;
        }
        let attempt = j.attempt;
        j.phase = Phase::Backoff {
            until: self.now + delay,
        };
        j.last_error = Some((failed_origin, error.clone()));
        j.parked = parked;
        tracing::debug!(job = %id, attempt, ?delay, "retrying after: {error}");
        self.event(Event::Retrying {
            job: id,
            attempt,
            delay,
            error,
        });
        let j = &self.jobs[&id];
        if !j.checkpoint_running
            && j.file.is_some()
            && !j.unnamed
            && j.validator.is_some()
            && j.present() > j.durable
        {
            self.start_checkpoint(id);
        }
        if parked {
            // Its slot goes to the next download while it waits for the breaker.
            self.schedule();
        }
    }
}

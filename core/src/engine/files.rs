//! The job's side of the disk: the existing-destination check, the state file, re-hashing a
//! partial, writes and the hashed frontier, checkpoints, commit and clean-up. The read-back
//! for a download's other checksum before the commit is in `checksum`.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::checksum::hash_prefix;
use super::{
    unexpected, CleanStep, Engine, Event, FileStep, JobId, NameProbe, Phase, ReadAhead,
    ValidatorSource, CATCH_UP_CHUNK, REHASH_CHUNK,
};
use crate::download::{Delivery, Outcome};
use crate::error::DownloadError;
use crate::http::HttpError;
use crate::io::{AfterClose, FileId, IoErrorKind, IoFailure, IoOp, IoResult};
use crate::resume::{PartState, STATE_VERSION};
use crate::sched::RangeSet;

impl Engine {
    pub(super) fn on_file(&mut self, id: JobId, step: FileStep, result: IoResult) {
        self.on_file_step(id, step, result);
        self.maybe_publish(id);
    }

    fn on_file_step(&mut self, id: JobId, step: FileStep, result: IoResult) {
        if let FileStep::Digest { .. } = step {
            // No longer waiting for it, whatever it says.
            self.set_digesting(id, false);
        }
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        j.file_ops = j.file_ops.saturating_sub(1);
        let failure = match &result {
            IoResult::Failed(f) => Some(f.clone()),
            _ => None,
        };
        let cleaning = matches!(j.phase, Phase::CleaningUp { .. });
        let open_step = matches!(
            step,
            FileStep::OpenExisting | FileStep::OpenPartial | FileStep::OpenFresh
        );
        if open_step && !matches!(result, IoResult::Opened { .. }) {
            // The open failed: there is no file handle to use or close.
            j.file = None;
        }
        if let (true, Some(f)) = (open_step, &failure) {
            match f.kind {
                IoErrorKind::Busy => {
                    let error = DownloadError::PartialInUse {
                        path: j.part_path.clone(),
                    };
                    return self.yield_partial(id, error);
                }
                IoErrorKind::SameFile => {
                    let error = DownloadError::SameFileInUse {
                        path: j.dest_path(),
                        detail: f.message.clone(),
                    };
                    return self.yield_partial(id, error);
                }
                _ => {}
            }
        }
        match step {
            FileStep::OpenExisting | FileStep::HashExisting if cleaning => {
                self.cleanup_progress(id)
            }
            FileStep::OpenExisting => match result {
                IoResult::Opened { len } if j.spec.size.is_none_or(|s| s == len) => {
                    if let Phase::CheckingExisting { len: known, .. } = &mut j.phase {
                        *known = len;
                    }
                    self.hash_existing_next(id);
                }
                IoResult::Opened { .. } => self.close_existing(id),
                _ => {
                    // Absent or unreadable: download as usual.
                    j.file = None;
                    self.load_state(id);
                }
            },
            FileStep::HashExisting => {
                let Phase::CheckingExisting {
                    offset,
                    len,
                    checksum,
                } = &mut j.phase
                else {
                    return;
                };
                match result {
                    IoResult::Data(b) if !b.is_empty() => {
                        j.hasher.update(&b);
                        if let Some(checksum) = checksum {
                            checksum.update(&b);
                        }
                        *offset += b.len() as u64;
                        if *offset < *len {
                            self.hash_existing_next(id);
                        } else {
                            self.close_existing(id);
                        }
                    }
                    _ => self.close_existing(id),
                }
            }
            FileStep::CloseExisting => {
                j.file = None;
                if cleaning {
                    return self.cleanup_progress(id);
                }
                let hasher = std::mem::replace(&mut j.hasher, Sha256::new());
                let (offset, len, checksum) =
                    match std::mem::replace(&mut j.phase, Phase::LoadingState) {
                        Phase::CheckingExisting {
                            offset,
                            len,
                            checksum,
                        } => (offset, len, checksum),
                        _ => (0, 1, None),
                    };
                let digest: [u8; 32] = hasher.finalize().into();
                // The download's other checksum, when it has one, must match too.
                let checksum_matches = j.spec.checksum.as_ref().is_none_or(|expected| {
                    checksum.is_some_and(|hasher| hasher.finalize() == expected.digest())
                });
                if offset == len && Some(digest) == j.spec.sha256 && checksum_matches {
                    let path = j.spec.provisional_path();
                    let outcome = Outcome {
                        path,
                        size: len,
                        sha256: digest,
                        resumed_from: len,
                        bytes_fetched: 0,
                        attempts: 0,
                        delivery: Delivery::AlreadyPresent,
                        elapsed: self.now.saturating_since(j.submitted),
                        final_url: j.spec.url.to_string(),
                    };
                    // An interrupted earlier run may have left its partial and state file:
                    // they go (a partial only if nobody holds it), then the job is done.
                    j.phase = Phase::Tidying { outcome };
                    let path = j.part_path.clone();
                    self.file_io(id, FileStep::TidyPart, IoOp::RemoveUnheld { path });
                } else {
                    self.load_state(id);
                }
            }
            FileStep::ReadState | FileStep::OpenPartial if cleaning => self.cleanup_progress(id),
            FileStep::ReadState => {
                // Anything but "not found" may be a state file (even an unreadable one).
                j.state_on_disk = !matches!(result, IoResult::NotFound);
                let state = match &result {
                    IoResult::Data(b) => PartState::decode_for(b, j.spec.url.as_str()),
                    _ => None,
                };
                match state {
                    Some(state) if state.verified > 0 || !state.ranges.is_empty() => {
                        let file = FileId(self.next());
                        let j = self.jobs.get_mut(&id).expect("job exists");
                        j.file = Some(file);
                        // A resumed file is hashed here, its prefix read back first.
                        j.executor_hash = false;
                        j.phase = Phase::OpeningPartial { state };
                        let path = j.part_path.clone();
                        self.file_io(
                            id,
                            FileStep::OpenPartial,
                            IoOp::Open {
                                file,
                                path,
                                truncate: false,
                            },
                        );
                    }
                    _ => self.start_attempt(id),
                }
            }
            FileStep::OpenPartial => {
                let state = match std::mem::replace(&mut j.phase, Phase::LoadingState) {
                    Phase::OpeningPartial { state } => state,
                    other => {
                        j.phase = other;
                        return;
                    }
                };
                let needed = state
                    .ranges
                    .iter()
                    .map(|r| r.1)
                    .max()
                    .unwrap_or(0)
                    .max(state.verified);
                match result {
                    IoResult::Opened { len } if len >= needed => {
                        j.phase = Phase::Rehashing {
                            state,
                            offset: 0,
                            reads: ReadAhead::default(),
                        };
                        self.rehash_next(id);
                    }
                    IoResult::Opened { .. } | IoResult::NotFound => {
                        // The partial is shorter than its state claims: start over.
                        j.touched = true;
                        self.restart_from_zero(id);
                        self.start_attempt(id);
                    }
                    _ => {
                        let f = failure.unwrap_or_else(|| unexpected(&result));
                        j.file = None;
                        let path = j.part_path.clone();
                        self.terminate(id, DownloadError::LocalIo { path, failure: f }, false);
                    }
                }
            }
            FileStep::Rehash { offset: at } => {
                if cleaning {
                    return self.cleanup_progress(id);
                }
                let Phase::Rehashing {
                    state,
                    offset,
                    reads,
                } = &mut j.phase
                else {
                    // Left over from a rehash that ended (the file changed): ignored.
                    return;
                };
                let at_frontier = reads.done(at, *offset);
                match result {
                    IoResult::Data(b) if !b.is_empty() && at_frontier => {
                        let take = (state.verified - *offset).min(b.len() as u64) as usize;
                        hash_prefix(&mut j.hasher, &mut j.checksum_stream, &b[..take]);
                        *offset += take as u64;
                        if *offset < state.verified {
                            self.rehash_next(id);
                        } else {
                            self.finish_rehash(id);
                        }
                    }
                    // Off the frontier after a short read: ignored.
                    IoResult::Data(b) if !b.is_empty() => self.rehash_next(id),
                    IoResult::Data(_) => {
                        // The file ended early (changed under us): start over.
                        self.restart_from_zero(id);
                        self.start_attempt(id);
                    }
                    _ => {
                        let f = failure.unwrap_or_else(|| unexpected(&result));
                        let path = j.part_path.clone();
                        self.terminate(id, DownloadError::LocalIo { path, failure: f }, false);
                    }
                }
            }
            FileStep::EarlySync { epoch } if epoch != j.epoch => {
                // It synced bytes of an earlier try; the commit of this one syncs again.
                self.cleanup_progress(id);
            }
            FileStep::OpenFresh
            | FileStep::SetLen
            | FileStep::FinalSync
            | FileStep::EarlySync { .. } => {
                if let Some(f) = failure {
                    j.write_error
                        .get_or_insert_with(|| (j.part_path.clone(), f));
                    self.on_write_error(id);
                } else {
                    self.cleanup_progress(id);
                }
            }
            FileStep::Write { len } => {
                j.write_backlog -= len;
                if let Some(f) = failure {
                    j.write_error
                        .get_or_insert_with(|| (j.part_path.clone(), f));
                    self.on_write_error(id);
                    return;
                }
                if j.write_backlog <= self.config.max_write_backlog / 2 {
                    let paused: Vec<u64> = j
                        .transfers
                        .iter()
                        .filter(|(_, t)| t.backpressured)
                        .map(|(tid, _)| *tid)
                        .collect();
                    for tid in paused {
                        if let Some(t) = self
                            .jobs
                            .get_mut(&id)
                            .and_then(|j| j.transfers.get_mut(&tid))
                        {
                            t.backpressured = false;
                        }
                        self.recv(id, tid);
                    }
                }
                self.cleanup_progress(id);
            }
            FileStep::Digest { epoch } => {
                if cleaning {
                    return self.cleanup_progress(id);
                }
                if epoch != j.epoch {
                    // Asked before the download started over: not this file's bytes.
                    return;
                }
                j.digest_requested = false;
                match result {
                    IoResult::Digest(digest) => {
                        j.digest = Some(digest);
                        self.maybe_complete(id);
                    }
                    other => {
                        let failure = failure.unwrap_or_else(|| unexpected(&other));
                        j.write_error
                            .get_or_insert_with(|| (j.part_path.clone(), failure));
                        self.on_write_error(id);
                    }
                }
            }
            FileStep::CatchUp { epoch, offset } => {
                if epoch != j.epoch {
                    // Issued before the download started over: not bytes of this hash.
                    if cleaning {
                        self.cleanup_progress(id);
                    }
                    return;
                }
                let at_frontier = j.catch_up.done(offset, j.hashed);
                if cleaning {
                    return self.cleanup_progress(id);
                }
                match result {
                    IoResult::Data(b) if !b.is_empty() && at_frontier => {
                        hash_prefix(&mut j.hasher, &mut j.checksum_stream, &b);
                        j.hashed += b.len() as u64;
                        self.after_progress(id);
                    }
                    // Off the frontier after a short read: ignored.
                    IoResult::Data(b) if !b.is_empty() => self.after_progress(id),
                    _ => {
                        let f = failure.unwrap_or_else(|| unexpected(&result));
                        j.write_error
                            .get_or_insert_with(|| (j.part_path.clone(), f));
                        self.on_write_error(id);
                    }
                }
            }
            FileStep::Checksum { epoch, offset } => {
                if cleaning {
                    return self.cleanup_progress(id);
                }
                if epoch != j.epoch {
                    // Issued before the download started over: not this file's bytes.
                    return;
                }
                self.on_checksum_read(id, offset, result);
            }
            FileStep::CheckpointSync { verified } => {
                if let Some(f) = failure {
                    j.pending_prefix = None;
                    j.write_error
                        .get_or_insert_with(|| (j.part_path.clone(), f));
                    j.checkpoint_awaits = j.checkpoint_awaits.saturating_sub(1);
                    if j.checkpoint_awaits == 0 {
                        j.checkpoint_running = false;
                    }
                    self.on_write_error(id);
                    return;
                }
                if j.write_error.is_some() {
                    // A write issued before this sync failed: the bytes the checkpoint
                    // would name are not all on disk. Record nothing.
                    j.pending_prefix = None;
                }
                self.checkpoint_part_done(id, verified);
            }
            FileStep::CheckpointDigest { epoch, len } => {
                match (&result, &mut j.pending_prefix) {
                    (IoResult::Digest(digest), Some((verified, hex_digest, _)))
                        if epoch == j.epoch && *verified == len =>
                    {
                        *hex_digest = hex::encode(digest);
                    }
                    // Failed, or of bytes the download no longer holds: record nothing.
                    _ => j.pending_prefix = None,
                }
                self.checkpoint_part_done(id, len);
            }
            FileStep::CheckpointState => {
                j.checkpoint_running = false;
                if let Some(f) = failure {
                    tracing::warn!(job = %id, path = %j.dest_path().display(), "state file not written: {f}");
                }
                if matches!(j.phase, Phase::Committing { .. }) && j.file.is_none() {
                    return self.rename_into_place(id);
                }
                self.cleanup_progress(id);
            }
            FileStep::Close => {
                j.file = None;
                if let Phase::Committing { .. } = &j.phase {
                    if let Some((path, f)) = j.write_error.clone() {
                        self.fail_commit(id, path, f);
                        return;
                    }
                    if !j.checkpoint_running {
                        self.rename_into_place(id);
                    }
                } else {
                    self.cleanup_progress(id);
                }
            }
            FileStep::Rename | FileStep::Publish => {
                if step == FileStep::Publish {
                    // Named or not, the file is closed.
                    j.file = None;
                }
                if let Some(f) = failure {
                    let dest = match &j.phase {
                        Phase::Committing { dest, .. } => dest.clone(),
                        _ => j.part_path.clone(),
                    };
                    if step == FileStep::Rename {
                        // The rename may have happened before its directory's sync failed:
                        // the partial's name is then no longer this job's, and whatever is
                        // there now is removed only if nobody holds it.
                        j.touched = false;
                    }
                    self.fail_commit(id, dest, f);
                    return;
                }
                if !j.state_on_disk {
                    // No state file was found and none was written: nothing to remove.
                    return self.removed_after_commit(id);
                }
                let state_path = j.spec.state_path();
                self.file_io(id, FileStep::RemoveState, IoOp::Remove { path: state_path });
            }
            FileStep::RemovePart | FileStep::RemoveState => self.removed_after_commit(id),
            FileStep::ProbeName { file } => {
                let found = !matches!(result, IoResult::NotFound);
                j.name_probe = if found {
                    NameProbe::Taken
                } else {
                    NameProbe::Free
                };
                if let IoResult::Opened { .. } = result {
                    let then = AfterClose::Done;
                    return self.file_io(id, FileStep::CloseProbe, IoOp::CloseFile { file, then });
                }
                if cleaning {
                    return self.cleanup_progress(id);
                }
                self.name_probed(id);
            }
            FileStep::Claim => {
                // An unnamed download has a state file only if one was found or written.
                let state = !j.unnamed || j.state_on_disk;
                if let Phase::CleaningUp {
                    step, untouched, ..
                } = &mut j.phase
                {
                    match &result {
                        // Removed under its lock, or nothing there: the state file goes too.
                        IoResult::Done | IoResult::NotFound if state => {
                            *step = CleanStep::RemoveState
                        }
                        IoResult::Done | IoResult::NotFound => *step = CleanStep::Report,
                        // Another process's download (held), or one that could not be
                        // looked at (another user's, out of descriptors): its partial and
                        // state stay.
                        _ => {
                            *untouched = true;
                            *step = CleanStep::Report;
                        }
                    }
                }
                self.cleanup_progress(id);
            }
            FileStep::TidyPart | FileStep::TidyState if cleaning => self.cleanup_progress(id),
            FileStep::TidyPart => match result {
                // Removed under its lock, or nothing there: its state file goes too.
                IoResult::Done | IoResult::NotFound => {
                    let path = j.spec.state_path();
                    self.file_io(id, FileStep::TidyState, IoOp::Remove { path });
                }
                // Another process's download (held), or one that could not be looked at:
                // its partial and state stay.
                _ => self.tidied(id),
            },
            FileStep::TidyState => self.tidied(id),
            FileStep::CloseProbe => {
                if cleaning {
                    return self.cleanup_progress(id);
                }
                self.name_probed(id);
            }
            FileStep::CopyFromLeader => {
                let Phase::Copying { outcome } = &j.phase else {
                    return;
                };
                let outcome = outcome.clone();
                let result = match failure {
                    None => Ok(outcome),
                    Some(f) => Err(DownloadError::LocalIo {
                        path: outcome.path,
                        failure: f,
                    }),
                };
                self.finish(id, result);
            }
        }
    }

    /// The response named the file (`Content-Disposition`) other than its URL does: ask
    /// whether a file is there already (an open for reading), so that the commit does not
    /// replace it. The answer comes long before the body's end, in practice; a file that
    /// appears at that name after it is still replaced.
    pub(super) fn probe_server_name(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        let path = j.dest_path();
        if path == j.spec.provisional_path() && !j.fallback_named() {
            return;
        }
        let file = FileId(self.next());
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.name_probe = NameProbe::Pending;
        self.file_io(
            id,
            FileStep::ProbeName { file },
            IoOp::OpenRead { file, path },
        );
    }

    /// The probe of a name a response gave has its answer: a taken name ends a download
    /// still fetching (or paused, or waiting to retry) at once (its body would be for
    /// nothing: the commit refuses it), keeping a resumable partial for when the name is
    /// free; else the commit may go on.
    fn name_probed(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        let fetching = matches!(
            j.phase,
            Phase::Running | Phase::Paused | Phase::Backoff { .. }
        );
        if j.name_probe == NameProbe::Taken && fetching {
            let error = j.name_taken();
            return self.terminate(id, error, true);
        }
        self.maybe_complete(id);
    }

    fn hash_existing_next(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        let Phase::CheckingExisting { offset, len, .. } = j.phase else {
            return;
        };
        if offset >= len {
            return self.close_existing(id);
        }
        let op = IoOp::ReadAt {
            file: j.file.expect("existing file is open"),
            offset,
            len: (len - offset).min(REHASH_CHUNK),
        };
        self.file_io(id, FileStep::HashExisting, op);
    }

    fn close_existing(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        let file = j.file.expect("existing file is open");
        let then = AfterClose::Done;
        self.file_io(id, FileStep::CloseExisting, IoOp::CloseFile { file, then });
    }

    fn rehash_next(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let file = j.file.expect("partial is open");
        let Phase::Rehashing {
            state,
            offset,
            reads,
        } = &mut j.phase
        else {
            return;
        };
        if *offset >= state.verified {
            return self.finish_rehash(id);
        }
        for (offset, len) in reads.next(*offset, state.verified, REHASH_CHUNK) {
            let op = IoOp::ReadAt { file, offset, len };
            self.file_io(id, FileStep::Rehash { offset }, op);
        }
    }

    fn finish_rehash(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Rehashing { state, .. } = std::mem::replace(&mut j.phase, Phase::LoadingState)
        else {
            return;
        };
        let digest: [u8; 32] = j.hasher.clone().finalize().into();
        if hex::encode(digest) != state.prefix_sha256 {
            tracing::info!(job = %id, "partial file does not match its state; starting over");
            self.restart_from_zero(id);
            self.start_attempt(id);
            return;
        }
        let mut received = RangeSet::new();
        received.insert(0, state.verified);
        for (s, e) in &state.ranges {
            received.insert(*s, *e);
        }
        let end = received.iter().map(|r| r.1).max().unwrap_or(0);
        j.hashed = state.verified;
        j.durable = state.verified;
        j.resumed_from = received.len();
        // Kept bytes that are one prefix (also a file hashed by the executor, whose state
        // lists its bytes as one received range) resume as one transfer of the tail.
        let prefix_only = received.iter().count() == 1 && received.iter().all(|r| r.0 == 0);
        j.segmented = !state.ranges.is_empty() && !prefix_only;
        j.received = received;
        j.validator = Some(state.validator);
        j.validator_source = ValidatorSource::StateFile;
        j.validator_resource = state.resource;
        // The bytes came from the URL the state names: an attempt on another URL starts
        // over (see `start_attempt`) unless a sha256 proves the result. A URL the download
        // no longer lists matches none of its URLs.
        j.validator_mirror = match &state.source {
            None => 0,
            Some(source) => j
                .spec
                .mirrors
                .iter()
                .position(|m| m.as_str() == source)
                .map_or(super::UNLISTED_SOURCE, |i| i + 1),
        };
        j.unlisted_source = state
            .source
            .clone()
            .filter(|_| j.validator_mirror == super::UNLISTED_SOURCE);
        if state.single_connection {
            j.splitting = super::Splitting::SingleConnection;
        }
        j.total = state.total;
        let file = j.file.expect("partial is open");
        j.touched = true;
        // Drop whatever follows the durable data: it was never vouched for.
        self.file_io(id, FileStep::SetLen, IoOp::SetLen { file, len: end });
        let offset = self.jobs[&id].resumed_from;
        self.event(Event::Resuming { job: id, offset });
        self.start_attempt(id);
    }

    /// Forget every byte: the next response starts the file from zero.
    pub(super) fn restart_from_zero(&mut self, id: JobId) {
        self.set_digesting(id, false);
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.hasher = Sha256::new();
        j.checksum_stream = j
            .spec
            .checksum
            .as_ref()
            .map(|c| super::checksum::Streamed::new(c.algorithm()));
        j.hashed = 0;
        j.digest = None;
        j.digest_requested = false;
        j.received = RangeSet::new();
        j.gaps.clear();
        j.durable = 0;
        j.resumed_from = 0;
        j.validator = None;
        j.validator_source = ValidatorSource::ThisRun;
        j.validator_resource = None;
        j.unlisted_source = None;
        j.total = None;
        j.segmented = false;
        j.pending_prefix = None;
        // Read-backs still in flight belong to the old bytes; they are ignored on completion.
        j.catch_up = ReadAhead::default();
        j.epoch += 1;
        if let Some(file) = j.file {
            j.touched = true;
            self.file_io(id, FileStep::SetLen, IoOp::SetLen { file, len: 0 });
        }
    }

    /// Open the partial fresh (truncated) when the first usable response arrives.
    pub(super) fn ensure_file(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.file.is_some() {
            return;
        }
        self.set_digesting(id, false);
        let file = FileId(self.next());
        let (unnamed_max, executor_digests) =
            (self.config.unnamed_max, self.config.executor_digests);
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.file = Some(file);
        j.touched = true;
        let path = j.part_path.clone();
        // A small file of known length needs no partial name: nothing of it is worth
        // resuming, and naming it only at the commit saves a create and a rename.
        j.unnamed = j.total.is_some_and(|t| t <= unnamed_max);
        // Segments write out of order: the engine hashes those (and reads back what arrived
        // ahead of the frontier).
        j.executor_hash = executor_digests && (j.unnamed || j.spec.segments <= 1);
        j.digest = None;
        j.digest_requested = false;
        let op = if j.unnamed {
            IoOp::OpenUnnamed { file, path }
        } else {
            IoOp::Open {
                file,
                path,
                truncate: true,
            }
        };
        self.file_io(id, FileStep::OpenFresh, op);
    }

    /// A committing job with an unnamed file: once no operation of the file is outstanding
    /// (the writes are done and succeeded), give it its name. The `Publish` itself is such an
    /// operation until it completes, and then the file is gone: it is issued once.
    fn maybe_publish(&mut self, id: JobId) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let Phase::Committing { dest, .. } = &j.phase else {
            return;
        };
        if !j.unnamed || j.file_ops > 0 || j.write_error.is_some() {
            return;
        }
        let Some(file) = j.file else {
            return;
        };
        let op = IoOp::Publish {
            file,
            path: j.part_path.clone(),
            to: dest.clone(),
            sync: j.spec.sync,
        };
        self.file_io(id, FileStep::Publish, op);
    }

    /// Hash (when at the frontier) and write one piece of body at `offset`; enforce the size
    /// limits as bytes arrive.
    pub(super) fn accept_data(
        &mut self,
        id: JobId,
        offset: u64,
        data: Bytes,
    ) -> Result<(), DownloadError> {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let len = data.len() as u64;
        let end = offset + len;
        if let Some(limit) = j.spec.max_size {
            if end > limit {
                return Err(DownloadError::TooLarge {
                    url: j.served_by(),
                    path: j.dest_path(),
                    limit,
                    seen: end,
                });
            }
        }
        if let Some(expected) = j.spec.size {
            if end > expected {
                return Err(DownloadError::SizeMismatch {
                    url: j.served_by(),
                    path: j.dest_path(),
                    expected,
                    actual: end,
                    at_least: true,
                });
            }
        }
        if j.executor_hash {
            // The executor hashes what the file holds; the frontier is what it was given.
            j.received.insert(offset, end);
            j.hashed = j.received.contiguous_end(0);
        } else {
            if offset == j.hashed && j.catch_up.idle() {
                hash_prefix(&mut j.hasher, &mut j.checksum_stream, &data);
                j.hashed = end;
            }
            j.received.insert(offset, end);
        }
        j.fetched += len;
        j.write_backlog += len;
        let file = j.file.expect("body implies an open partial");
        self.file_io(
            id,
            FileStep::Write { len },
            IoOp::WriteAt { file, offset, data },
        );
        self.account(id, len);
        Ok(())
    }

    /// After bytes were hashed or written: catch the frontier up, report progress,
    /// checkpoint, and commit when everything is in.
    pub(super) fn after_progress(&mut self, id: JobId) {
        // Written but not hashed yet (arrived out of order): read it back, the next chunk
        // while this one is hashed. Reads are ordered after the writes on the same file and
        // complete in order.
        let j = self.jobs.get_mut(&id).expect("job exists");
        let end = j.received.contiguous_end(j.hashed);
        let reads = j.catch_up.next(j.hashed, end, CATCH_UP_CHUNK);
        let (epoch, file) = (j.epoch, j.file);
        for (offset, len) in reads {
            let file = file.expect("partial is open");
            let op = IoOp::ReadAt { file, offset, len };
            self.file_io(id, FileStep::CatchUp { epoch, offset }, op);
        }
        let j = self.jobs.get(&id).expect("job exists");
        let (bytes, total) = (j.present(), j.total);
        let rate = j.meter.rate(self.now);
        let eta = total.and_then(|t| super::meter::eta(t.saturating_sub(bytes), rate));
        self.event(Event::Progress {
            job: id,
            bytes,
            total,
            rate: rate.unwrap_or(0.0) as u64,
            eta,
        });
        if self.checkpoint_due(id) {
            self.start_checkpoint(id);
        }
        self.maybe_complete(id);
    }

    fn checkpoint_due(&self, id: JobId) -> bool {
        let j = &self.jobs[&id];
        // Every byte hashed while running: the commit comes next, and its sync covers this.
        let commit_next = matches!(j.phase, Phase::Running) && j.total == Some(j.hashed);
        !j.checkpoint_running
            && !commit_next
            && !j.unnamed
            && matches!(
                j.phase,
                Phase::Running | Phase::Backoff { .. } | Phase::Paused
            )
            && j.validator.is_some()
            && j.file.is_some()
            && j.present() > j.durable
            && (j.present() - j.durable >= self.config.checkpoint_bytes
                || self.now.saturating_since(j.last_checkpoint) >= self.config.checkpoint_interval)
    }

    /// Sync the partial (ordered after every write issued so far), then record what it holds.
    pub(super) fn start_checkpoint(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        debug_assert!(!j.unnamed, "a checkpoint of an unnamed file");
        j.checkpoint_running = true;
        j.last_checkpoint = self.now;
        // Hashed by the executor: it gives the digest of the prefix written so far (asked
        // with the sync, so that it covers exactly those bytes), and the state records it
        // like any verified prefix: a resume re-hashes the prefix and starts over on a
        // mismatch. Recorded as unverified ranges, those bytes were trusted as they were: a
        // partial overwritten by a newer version after a restart from zero, or changed on
        // disk, was spliced onto the old version's tail.
        let verified = j.hashed;
        let digest: Option<[u8; 32]> =
            (!j.executor_hash).then(|| j.hasher.clone().finalize().into());
        let ranges: Vec<(u64, u64)> = j
            .received
            .iter()
            .filter(|r| r.1 > verified)
            .map(|(s, e)| (s.max(verified), e))
            .collect();
        j.pending_prefix = Some((
            verified,
            digest.map(hex::encode).unwrap_or_default(),
            ranges,
        ));
        j.checkpoint_awaits = if digest.is_none() { 2 } else { 1 };
        let (file, epoch) = (j.file.expect("checkpoint needs an open file"), j.epoch);
        self.file_io(
            id,
            FileStep::CheckpointSync { verified },
            IoOp::Sync { file },
        );
        if digest.is_none() {
            let op = IoOp::Digest {
                file,
                len: verified,
                keep: true,
            };
            self.file_io(
                id,
                FileStep::CheckpointDigest {
                    epoch,
                    len: verified,
                },
                op,
            );
        }
    }

    /// One of the completions a checkpoint waits for came; with the last, write the state.
    fn checkpoint_part_done(&mut self, id: JobId, verified: u64) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.checkpoint_awaits = j.checkpoint_awaits.saturating_sub(1);
        if j.checkpoint_awaits > 0 {
            return;
        }
        if !j.checkpoint_running {
            // Ended by a failed sync (see `CheckpointSync`).
            return self.cleanup_progress(id);
        }
        self.write_state(id, verified);
    }

    fn write_state(&mut self, id: JobId, verified: u64) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if matches!(j.phase, Phase::Committing { .. }) {
            // The state file is about to be removed with the commit.
            j.checkpoint_running = false;
            if j.file.is_none() {
                self.rename_into_place(id);
            }
            return;
        }
        let (Some(validator), Some((_, prefix_sha256, ranges))) = (
            j.validator.clone(),
            j.pending_prefix.take().filter(|(v, _, _)| *v == verified),
        ) else {
            j.checkpoint_running = false;
            return self.cleanup_progress(id);
        };
        let state = PartState {
            version: STATE_VERSION,
            url: j.spec.url.to_string(),
            validator,
            resource: j.validator_resource.clone(),
            source: match j.validator_mirror {
                0 => None,
                // Continued from another URL (a sha256 proves the result): the bytes are
                // still the unlisted URL's, for a later run without the sha256.
                super::UNLISTED_SOURCE => j.unlisted_source.clone(),
                i => j.spec.mirrors.get(i - 1).map(|m| m.to_string()),
            },
            total: j.total,
            verified,
            prefix_sha256,
            ranges,
            single_connection: j.splitting == super::Splitting::SingleConnection,
        };
        j.durable = verified + state.ranges.iter().map(|(s, e)| e - s).sum::<u64>();
        j.state_on_disk = true;
        let path = j.spec.state_path();
        self.file_io(
            id,
            FileStep::CheckpointState,
            IoOp::WriteFileAtomic {
                path,
                data: Bytes::from(state.encode()),
            },
        );
    }

    /// Every byte is in and hashed: check size and hash, then sync, close and rename.
    pub(super) fn maybe_complete(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        if !matches!(j.phase, Phase::Running) || !j.transfers.is_empty() || !j.gaps.is_empty() {
            return;
        }
        if !j.catch_up.idle() || j.received.contiguous_end(j.hashed) > j.hashed {
            // Every byte is in; the hash is still reading back what arrived out of order
            // (most of a segmented download). Sync meanwhile, so the commit does not wait for
            // the read-back and then for the disk.
            let fresh = j.early_sync != Some((j.epoch, j.fetched));
            if let (true, true, false, Some(file)) = (j.spec.sync, fresh, j.unnamed, j.file) {
                let epoch = j.epoch;
                let j = self.jobs.get_mut(&id).expect("job exists");
                j.early_sync = Some((epoch, j.fetched));
                self.file_io(id, FileStep::EarlySync { epoch }, IoOp::Sync { file });
            }
            return;
        }
        self.verify_and_commit(id);
    }

    pub(super) fn verify_and_commit(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if let Some(total) = j.total {
            if j.hashed != total {
                let origin = super::origin_label(&j.spec.url);
                let source = HttpError::Truncated {
                    expected: Some(total),
                    received: j.hashed,
                };
                return self.fail_attempt(id, DownloadError::Protocol { origin, source });
            }
        }
        if let Some(expected) = j.spec.size {
            if j.hashed != expected {
                let error = DownloadError::SizeMismatch {
                    url: j.served_by(),
                    path: j.dest_path(),
                    expected,
                    actual: j.hashed,
                    at_least: false,
                };
                return self.verification_failed(id, error);
            }
        }
        let digest: [u8; 32] = if j.executor_hash {
            let Some(digest) = j.digest else {
                // Asked once; its completion comes back here.
                if !j.digest_requested {
                    j.digest_requested = true;
                    let (epoch, len) = (j.epoch, j.hashed);
                    let file = j.file.expect("every byte is in the open file");
                    let op = IoOp::Digest {
                        file,
                        len,
                        keep: false,
                    };
                    self.file_io(id, FileStep::Digest { epoch }, op);
                    // Waiting for its digest, the job no longer holds a download slot.
                    self.set_digesting(id, true);
                    self.schedule();
                }
                return;
            };
            digest
        } else {
            j.hasher.clone().finalize().into()
        };
        if let Some(expected) = j.spec.sha256 {
            if expected != digest {
                let error = DownloadError::HashMismatch {
                    url: j.served_by(),
                    path: j.dest_path(),
                    expected: hex::encode(expected),
                    actual: hex::encode(digest),
                };
                return self.verification_failed(id, error);
            }
        }
        match j.name_probe {
            // Its answer calls this again.
            NameProbe::Pending => return,
            NameProbe::Taken => {
                let error = j.name_taken();
                return self.terminate(id, error, true);
            }
            NameProbe::NotNeeded | NameProbe::Free => {}
        }
        if j.spec.checksum.is_some() {
            // The commit follows once the file read back has the expected checksum too.
            return self.start_checksum(id, digest);
        }
        self.commit_verified(id, digest);
    }

    /// Size and every digest passed (`digest`: the SHA-256): sync, close and rename (or
    /// publish an unnamed file).
    pub(super) fn commit_verified(&mut self, id: JobId, digest: [u8; 32]) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let dest = j.dest_path();
        // An early sync covers every write when none followed it; if it is still running,
        // the close completes after it (the executor's contract) and a failure it reports
        // fails the commit.
        let synced_early = j.early_sync == Some((j.epoch, j.fetched));
        j.phase = Phase::Committing { dest, digest };
        if j.unnamed {
            // Named (data synced first) once its writes are done: see `maybe_publish`.
            self.set_committing(id, true);
            self.maybe_publish(id);
            self.schedule();
            return;
        }
        let file = j.file.expect("commit needs the partial open");
        let sync_now = j.spec.sync && !synced_early;
        self.set_committing(id, true);
        if sync_now {
            self.file_io(id, FileStep::FinalSync, IoOp::Sync { file });
        }
        let then = AfterClose::Renamed;
        self.file_io(id, FileStep::Close, IoOp::CloseFile { file, then });
        // Committing, the job no longer holds a download slot.
        self.schedule();
    }

    /// The state file is gone (or there was none): a committing job is done; a cleaning one
    /// goes on.
    /// A job whose destination held its bytes has tidied what an earlier run left: done.
    fn tidied(&mut self, id: JobId) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Phase::Tidying { outcome } = std::mem::replace(&mut j.phase, Phase::LoadingState) {
            self.finish(id, Ok(outcome));
        }
    }

    fn removed_after_commit(&mut self, id: JobId) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        if let Phase::Committing { dest, digest } = &j.phase {
            let outcome = Outcome {
                path: dest.clone(),
                size: j.hashed,
                sha256: *digest,
                resumed_from: j.resumed_from,
                bytes_fetched: j.fetched,
                attempts: j.attempt,
                delivery: Delivery::Fetched,
                elapsed: self.now.saturating_since(j.submitted),
                final_url: j.last_url.as_ref().unwrap_or(&j.spec.url).to_string(),
            };
            self.finish(id, Ok(outcome));
        } else {
            self.cleanup_progress(id);
        }
    }

    fn rename_into_place(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Committing { dest, .. } = &j.phase else {
            return;
        };
        let op = IoOp::Rename {
            from: j.part_path.clone(),
            to: dest.clone(),
            sync: j.spec.sync,
        };
        self.file_io(id, FileStep::Rename, op);
    }

    pub(super) fn on_write_error(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if let Phase::CleaningUp { .. } = j.phase {
            return self.cleanup_progress(id);
        }
        let (path, failure) = j.write_error.clone().expect("write error recorded");
        if matches!(j.phase, Phase::Committing { .. }) {
            return self.fail_commit(id, path, failure);
        }
        self.terminate(id, DownloadError::LocalIo { path, failure }, false);
    }

    fn fail_commit(&mut self, id: JobId, path: std::path::PathBuf, failure: IoFailure) {
        self.set_committing(id, false);
        let j = self.jobs.get_mut(&id).expect("job exists");
        // Another process downloads to the same destination and holds the partial's name
        // (an unnamed file's publish needs it), or the partial was replaced under this
        // download: what is at its path, and the state file, are not this download's.
        let busy = failure.kind == IoErrorKind::Busy;
        let not_ours = busy || failure.kind == IoErrorKind::Replaced;
        let error = match busy {
            true => DownloadError::PartialInUse {
                path: j.part_path.clone(),
            },
            false => DownloadError::LocalIo { path, failure },
        };
        j.phase = Phase::CleaningUp {
            error,
            keep: false,
            step: CleanStep::Start,
            untouched: not_ours,
        };
        self.cleanup_progress(id);
    }

    /// The partial could not be opened because another download holds it (another process
    /// downloading to the same destination, or another job of this engine writing it under
    /// another spelling of its path): end the job with `error` without touching the partial
    /// or its state, which are the other download's, whatever else this job had started.
    fn yield_partial(&mut self, id: JobId, error: DownloadError) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.file = None;
        match &mut j.phase {
            Phase::CleaningUp { untouched, .. } => {
                *untouched = true;
                self.cleanup_progress(id)
            }
            Phase::Committing { .. } => {
                // Every byte arrived (and was hashed) before the open's answer.
                j.phase = Phase::CleaningUp {
                    error,
                    keep: true,
                    step: CleanStep::Start,
                    untouched: true,
                };
                self.set_committing(id, false);
                self.cleanup_progress(id)
            }
            _ => {
                j.touched = false;
                self.terminate(id, error, true)
            }
        }
    }

    /// End the job with `error`, keeping a resumable partial when `keep` and possible.
    pub(super) fn terminate(&mut self, id: JobId, error: DownloadError, keep: bool) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        match j.phase {
            Phase::CleaningUp { .. } | Phase::Committing { .. } => return,
            Phase::Queued | Phase::Following { .. } | Phase::Copying { .. } => {
                return self.finish(id, Err(error))
            }
            _ => {}
        }
        let untouched = keep && !j.touched;
        self.stop_transfers(id);
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.phase = Phase::CleaningUp {
            error,
            keep,
            step: CleanStep::Start,
            untouched,
        };
        self.cleanup_progress(id);
    }

    /// Drive the clean-up steps; each waits until the job has no file operation pending.
    pub(super) fn cleanup_progress(&mut self, id: JobId) {
        loop {
            let Some(j) = self.jobs.get_mut(&id) else {
                return;
            };
            if j.file_ops > 0 {
                return;
            }
            let resumable = j.validator.is_some()
                && !j.unnamed
                && j.present() > 0
                && j.write_error.is_none()
                && j.file.is_some();
            let (present, durable, file) = (j.present(), j.durable, j.file);
            let Phase::CleaningUp {
                keep,
                step,
                untouched,
                ..
            } = &mut j.phase
            else {
                return;
            };
            match *step {
                CleanStep::Start => {
                    if *untouched {
                        // Nothing of this run reached the disk: leave the partial as it was.
                        *step = CleanStep::Close;
                        continue;
                    }
                    *keep = *keep && resumable;
                    if *keep && durable < present {
                        *step = CleanStep::Checkpoint;
                        self.start_checkpoint(id);
                        return;
                    }
                    *step = CleanStep::Close;
                }
                CleanStep::Checkpoint => *step = CleanStep::Close,
                CleanStep::Close => {
                    *step = CleanStep::Remove;
                    if let Some(file) = file {
                        // The partial, to be removed next: its lock stays until then.
                        let removed = !*keep && !*untouched && j.touched && !j.unnamed;
                        let then = if removed {
                            AfterClose::Removed
                        } else {
                            AfterClose::Done
                        };
                        self.file_io(id, FileStep::Close, IoOp::CloseFile { file, then });
                        return;
                    }
                }
                CleanStep::Remove => {
                    *step = CleanStep::Report;
                    if !*keep && !*untouched {
                        if !j.touched || j.unnamed {
                            // Never opened by this run (it ended while it read the state
                            // file, checked its destination, connected or waited), or never
                            // by that name (an unnamed file, which names it only if the file
                            // system has no unnamed files): whatever is there may be another
                            // process's download. Removed only if nobody holds its lock (the
                            // state file after it).
                            *step = CleanStep::Claim;
                            let path = j.part_path.clone();
                            self.file_io(id, FileStep::Claim, IoOp::RemoveUnheld { path });
                            return;
                        }
                        *step = CleanStep::RemoveBoth;
                        continue;
                    }
                }
                // Its answer moves on (`FileStep::Claim`).
                CleanStep::Claim => *step = CleanStep::Report,
                CleanStep::RemoveBoth => {
                    *step = CleanStep::Report;
                    let (part, state) = (j.part_path.clone(), j.spec.state_path());
                    self.file_io(id, FileStep::RemovePart, IoOp::Remove { path: part });
                    self.file_io(id, FileStep::RemoveState, IoOp::Remove { path: state });
                    return;
                }
                CleanStep::RemoveState => {
                    *step = CleanStep::Report;
                    let state = j.spec.state_path();
                    self.file_io(id, FileStep::RemoveState, IoOp::Remove { path: state });
                    return;
                }
                CleanStep::Report => {
                    let error = match &j.phase {
                        Phase::CleaningUp { error, .. } => error.clone(),
                        _ => unreachable!("checked above"),
                    };
                    self.finish(id, Err(error));
                    return;
                }
            }
        }
    }
}

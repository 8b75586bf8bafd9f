//! Spare unnamed files: files without a name (Linux `O_TMPFILE`) created ahead of need, on a
//! thread of their own, in the directories where downloads are opening unnamed files.
//!
//! Creating a file is the most expensive step of a small download: the file system allocates
//! an inode, and on ext4 without a journal that means scanning the inode bitmap past every
//! inode freed in the last minute (a load that follows a cleared cache pays this for each
//! file). A download of a small file opens its unnamed file only when the response arrives,
//! on the thread that also reads the network; with spares that open is a pop from a list and
//! the allocation happens on another core while the network is read.
//!
//! An unnamed file has no name until the download publishes it, so a spare that is never
//! used leaves nothing behind: it is freed when it is closed (at the latest when the process
//! ends, also by a crash). Spares are made only where a caller said unnamed opens are coming
//! ([`Spares::expect`]), never more than it said and at most [`SPARES_MAX`] at a time; a
//! directory with no open for [`IDLE`] has its spares closed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::files::{lock, open_unnamed, BlockingSpawner};

/// At most this many spares are kept ready in one directory, whatever is expected (each is an
/// open descriptor).
pub const SPARES_MAX: usize = 64;

/// A directory without an unnamed open for this long has its spares closed; the maker thread
/// ends when no directory is left.
pub const IDLE: Duration = Duration::from_millis(500);

/// From how many downloads into one directory [`expected_unnamed`] expects their opens: a
/// few files gain nothing worth a thread.
pub const EXPECT_MIN: usize = 4;

/// The unnamed opens a batch of `downloads` is likely to make, by directory: every download
/// not known to be larger than `unnamed_max` (the engine's [`haul_core::Config::unnamed_max`])
/// opens its file unnamed beside its partial's path once its length is known small. A guess:
/// one of unknown length that turns out large opens a named partial, and its spare is closed
/// unused. Directories with fewer than [`EXPECT_MIN`] are left out.
pub fn expected_unnamed(
    downloads: &[haul_core::Download],
    unnamed_max: u64,
) -> Vec<(PathBuf, usize)> {
    let mut dirs: BTreeMap<&Path, usize> = BTreeMap::new();
    // A long list mostly names one directory after another: counted without a lookup each.
    let mut run: Option<(&Path, usize)> = None;
    for download in downloads {
        if download
            .expected_size()
            .is_some_and(|size| size > unnamed_max)
            || unnamed_max == 0
        {
            continue;
        }
        // The partial's directory: the destination's (the partial is its sibling).
        let dir = match download.destination() {
            haul_core::Destination::File(path) => crate::files::parent_dir(path),
            haul_core::Destination::Dir(dir) if dir.as_os_str().is_empty() => Path::new("."),
            haul_core::Destination::Dir(dir) => dir.as_path(),
        };
        match &mut run {
            Some((current, count)) if current.as_os_str() == dir.as_os_str() => *count += 1,
            _ => {
                if let Some((current, count)) = run.replace((dir, 1)) {
                    *dirs.entry(current).or_default() += count;
                }
            }
        }
    }
    if let Some((current, count)) = run {
        *dirs.entry(current).or_default() += count;
    }
    dirs.into_iter()
        .filter(|(_, n)| *n >= EXPECT_MIN)
        .map(|(dir, n)| (dir.to_path_buf(), n))
        .collect()
}

/// Spare unnamed files by directory, made by a thread started on demand.
#[derive(Clone)]
pub struct Spares {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    dirs: BTreeMap<PathBuf, Dir>,
    /// The maker thread is running (or starting).
    maker: bool,
    /// The maker thread waits for work (only then does a take wake it).
    maker_waiting: bool,
    /// The owner is gone: the maker ends and nothing more is made.
    closed: bool,
}

struct Dir {
    ready: Vec<File>,
    /// Unnamed opens a caller said are coming here and have not come yet.
    expected: usize,
    last_use: Instant,
    /// Creating a file here failed: no more spares until the directory has been idle.
    failed: bool,
}

impl Dir {
    fn new(now: Instant) -> Dir {
        Dir {
            ready: Vec::new(),
            expected: 0,
            last_use: now,
            failed: false,
        }
    }

    /// How many spares to keep ready now: never more than the opens still expected.
    fn keep(&self) -> usize {
        self.expected.min(SPARES_MAX)
    }

    fn wants_more(&self) -> bool {
        !self.failed && self.ready.len() < self.keep()
    }

    /// Few enough left that the maker should be woken: at most half of what is kept, so a
    /// run of takes wakes it once per several files rather than once per file.
    fn runs_low(&self) -> bool {
        self.wants_more() && self.ready.len() <= self.keep() / 2
    }
}

impl Default for Spares {
    fn default() -> Spares {
        Spares {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
        }
    }
}

impl Spares {
    /// A spare unnamed file in `dir`, if one is ready; an open in a directory where opens
    /// are expected counts one of them, and the maker (started with `spawner` if it is not
    /// running) makes the next.
    pub fn take(&self, dir: &Path, spawner: &impl BlockingSpawner) -> Option<File> {
        let mut state = lock(&self.shared.state);
        let entry = state.dirs.get_mut(dir)?;
        entry.last_use = Instant::now();
        entry.expected = entry.expected.saturating_sub(1);
        let spare = entry.ready.pop();
        self.wake_maker(state, spawner);
        spare
    }

    /// `count` more unnamed files are about to be opened in `dir`: make up to that many
    /// ([`SPARES_MAX`] at a time) before they are asked for.
    pub fn expect(&self, dir: &Path, count: usize, spawner: &impl BlockingSpawner) {
        if count == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.closed {
            return;
        }
        let entry = state
            .dirs
            .entry(dir.to_path_buf())
            .or_insert_with(|| Dir::new(now));
        entry.last_use = now;
        entry.expected = entry.expected.saturating_add(count);
        self.wake_maker(state, spawner);
    }

    /// How many spares are ready in `dir`.
    pub fn ready(&self, dir: &Path) -> usize {
        lock(&self.shared.state)
            .dirs
            .get(dir)
            .map_or(0, |d| d.ready.len())
    }

    /// Close every spare and end the maker; later calls make none.
    pub fn close(&self) {
        let dirs = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            std::mem::take(&mut state.dirs)
        };
        self.shared.wake.notify_all();
        drop(dirs);
    }

    fn wake_maker(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        spawner: &impl BlockingSpawner,
    ) {
        if !state.dirs.values().any(Dir::wants_more) {
            return;
        }
        if state.maker {
            // A busy maker finds the work itself; a waiting one is woken when a directory
            // runs low (a directory just expected with none ready does).
            let wake = state.maker_waiting && state.dirs.values().any(Dir::runs_low);
            drop(state);
            if wake {
                self.shared.wake.notify_one();
            }
            return;
        }
        state.maker = true;
        drop(state);
        let shared = Arc::clone(&self.shared);
        let started =
            spawner.spawn_blocking("haul-spares".into(), Box::new(move || make_spares(&shared)));
        if started.is_err() {
            // Without the thread every open is made where it is asked for, as before.
            lock(&self.shared.state).maker = false;
        }
    }
}

/// The maker: creates one spare at a time for a directory that wants more (outside the lock),
/// closes the spares of idle directories, and ends when none is left or the owner closed.
fn make_spares(shared: &Shared) {
    let mut state = lock(&shared.state);
    loop {
        if state.closed {
            state.maker = false;
            return;
        }
        let now = Instant::now();
        let idle: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|(_, d)| now.duration_since(d.last_use) >= IDLE)
            .map(|(p, _)| p.clone())
            .collect();
        let mut dropped = Vec::new();
        for path in idle {
            dropped.extend(state.dirs.remove(&path));
        }
        if !dropped.is_empty() {
            drop(state);
            drop(dropped); // closing frees the files: outside the lock
            state = lock(&shared.state);
            continue;
        }
        if state.dirs.is_empty() {
            state.maker = false;
            return;
        }
        let next = state
            .dirs
            .iter()
            .find(|(_, d)| d.wants_more())
            .map(|(p, _)| p.clone());
        let Some(dir) = next else {
            state.maker_waiting = true;
            let (mut guard, _) = shared
                .wake
                .wait_timeout(state, IDLE)
                .unwrap_or_else(|e| e.into_inner());
            guard.maker_waiting = false;
            state = guard;
            continue;
        };
        drop(state);
        let made = open_unnamed(&dir.join("spare"));
        state = lock(&shared.state);
        let closed = state.closed;
        match (made, state.dirs.get_mut(&dir)) {
            (Ok(file), Some(entry)) if !closed => entry.ready.push(file),
            (Ok(_), _) => {}
            (Err(error), Some(entry)) => {
                tracing::debug!(dir = %dir.display(), %error, "no spare unnamed files here");
                entry.failed = true;
            }
            (Err(_), None) => {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::files::Threads;

    /// Waits for `condition`, failing after a minute: a bound for a hung maker, far above
    /// what a loaded machine takes (one of these waits once passed 10 s under a parallel
    /// test run on two cores).
    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn expected_opens_find_spares_that_leave_no_name_behind_and_none_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::default();
        let threads = Threads::default();
        assert!(
            spares.take(dir.path(), &threads).is_none(),
            "nothing expected"
        );
        assert_eq!(spares.ready(dir.path()), 0, "an unexpected open makes none");
        spares.expect(dir.path(), 2, &threads);
        wait_until("two spares", || spares.ready(dir.path()) == 2);
        let file = spares.take(dir.path(), &threads).expect("a spare");
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "unnamed");
        assert_eq!(
            spares.ready(dir.path()),
            1,
            "no more than the one open still expected"
        );
        spares.close();
        assert_eq!(spares.ready(dir.path()), 0);
        spares.expect(dir.path(), 2, &threads);
        assert!(spares.take(dir.path(), &threads).is_none(), "closed");
    }

    #[test]
    fn an_expected_count_is_made_up_to_the_maximum_and_no_more_than_expected() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::default();
        let threads = Threads::default();
        spares.expect(dir.path(), 3, &threads);
        wait_until("three spares", || spares.ready(dir.path()) == 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(spares.ready(dir.path()), 3, "no more than expected");
        spares.expect(dir.path(), 1000, &threads);
        wait_until("the maximum", || spares.ready(dir.path()) == SPARES_MAX);
        // Taken down to half: the waiting maker is woken and fills up again.
        for _ in 0..=SPARES_MAX / 2 {
            assert!(spares.take(dir.path(), &threads).is_some());
        }
        wait_until("refilled", || spares.ready(dir.path()) == SPARES_MAX);
    }

    #[test]
    fn a_directory_that_cannot_hold_files_gets_no_spares_and_is_dropped_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let spares = Spares::default();
        let threads = Threads::default();
        spares.expect(&missing, 5, &threads);
        assert!(spares.take(&missing, &threads).is_none());
        wait_until("the maker to end", || !lock(&spares.shared.state).maker);
        assert!(lock(&spares.shared.state).dirs.is_empty());
    }

    #[test]
    fn a_batch_expects_unnamed_opens_where_enough_downloads_may_be_small() {
        let root = Path::new("/x");
        let download = |dir: &str, i: usize, size: Option<u64>| {
            let d = haul_core::Download::new(
                &format!("http://127.0.0.1:1/{dir}/{i}"),
                root.join(dir).join(format!("{i}")),
            )
            .unwrap();
            match size {
                Some(size) => d.size(size),
                None => d,
            }
        };
        let mut batch = Vec::new();
        for i in 0..5 {
            batch.push(download("unknown", i, None));
            batch.push(download("small", i, Some(100)));
            batch.push(download("large", i, Some(2_000)));
        }
        for i in 0..EXPECT_MIN - 1 {
            batch.push(download("few", i, None));
        }
        let expected = expected_unnamed(&batch, 1_000);
        assert_eq!(
            expected,
            vec![(root.join("small"), 5), (root.join("unknown"), 5)],
            "larger than the limit or too few: none"
        );
        assert!(
            expected_unnamed(&batch, 0).is_empty(),
            "no unnamed files at all"
        );
    }

    #[test]
    fn an_idle_directory_has_its_spares_closed() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::default();
        let threads = Threads::default();
        spares.expect(dir.path(), 4, &threads);
        wait_until("four spares", || spares.ready(dir.path()) == 4);
        wait_until("the maker to end", || !lock(&spares.shared.state).maker);
        assert_eq!(spares.ready(dir.path()), 0);
    }
}

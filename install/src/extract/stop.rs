//! Stopping an extraction from another thread (a signal handler's thread, a UI).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::InstallError;

/// A request to stop an extraction, shared between the thread that extracts and the ones
/// that may ask it to stop. Clones share one flag.
///
/// The extraction looks at it before it creates its staging directory, before every entry,
/// every [`STOP_CHECK_BYTES`] inside a large entry, and in [`super::Staged::commit`] before
/// the sync and again just before the swap. Once it sees the request it removes its staging
/// directory and returns [`InstallError::Interrupted`]: the destination is left as it was.
/// A request that comes once the swap has begun is too late: the swap is finished, so a
/// stop never leaves a mix of the old tree and the new one.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    /// Tests only: the number of checks still to pass before the flag sets itself.
    #[cfg(test)]
    countdown: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// How many bytes of one entry are copied between two looks at a [`Stop`].
pub const STOP_CHECK_BYTES: u64 = 1024 * 1024;

impl Stop {
    /// A flag nobody has set yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks the extraction to stop (from any thread; setting it again changes nothing).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// The flag itself, for a signal handler to set in the handler (signal-hook's
    /// `flag::register`): an extraction blocked in a sync (a `syncfs` the kernel does not
    /// interrupt) sees the stop as soon as the sync returns, where a flag set later by
    /// another thread lost the race with the check before the swap.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// Whether [`Stop::stop`] has been called on this flag or a clone of it.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// A flag that lets `checks` checks pass, then sets itself: a stop that arrives at a
    /// known point of an extraction without a second thread.
    #[cfg(test)]
    pub(crate) fn after_checks(checks: u64) -> Stop {
        Stop {
            flag: Arc::default(),
            countdown: Some(Arc::new(std::sync::atomic::AtomicU64::new(checks))),
        }
    }

    /// [`InstallError::Interrupted`] once a stop has been asked for.
    pub(crate) fn check(&self) -> Result<(), InstallError> {
        #[cfg(test)]
        if let Some(countdown) = &self.countdown {
            let left = countdown.load(Ordering::SeqCst);
            if left == 0 {
                self.stop();
            } else {
                countdown.store(left - 1, Ordering::SeqCst);
            }
        }
        if self.is_stopped() {
            tracing::debug!("extraction stopped on request");
            return Err(InstallError::Interrupted);
        }
        Ok(())
    }
}

/// Two flags are equal when they are the same flag (clones of one another).
impl PartialEq for Stop {
    fn eq(&self, other: &Stop) -> bool {
        Arc::ptr_eq(&self.flag, &other.flag)
    }
}

impl Eq for Stop {}

/// [`Stop::check`] for an optional flag: no flag never stops.
pub(crate) fn check(stop: Option<&Stop>) -> Result<(), InstallError> {
    stop.map_or(Ok(()), Stop::check)
}

//! Whether one `syncfs` is the way to make a batch of files durable.
//!
//! A runtime that commits many files at once can sync them one by one (each `fdatasync` waits
//! for that file alone, and flushes the device once per file) or call `syncfs` once for their
//! file system (one flush for all of them, but it writes back and waits for every dirty page
//! of that file system: other programs' too). On a quiet machine syncfs wins by far (2,000
//! small downloads: a few dozen device flushes instead of 4,000); on a machine where another
//! program has just written a gigabyte it would wait for all of it. The runtimes read how
//! much the system has waiting ([`pending_writeback`], from `/proc/meminfo`) and ask
//! [`syncfs_pays`]; the decision itself is pure, so it is tested here.
//!
//! The rule: syncfs unless more than a budget of data that is not the batch's own waits
//! for writeback: [`FOREIGN_BUDGET_FLOOR`], or [`FOREIGN_BUDGET_PER_FILE`] per file of the
//! batch if that is more (a sync per file costs about a quarter of a millisecond here, about
//! the time a disk of a few hundred MB/s takes for 64 KiB; the budget leaves syncfs a margin
//! of two). `/proc/meminfo` counts every file system, so data waiting for another disk also
//! counts against syncfs: the file-by-file way is then taken when it was not needed, which
//! is slower, never wrong.

/// Data of others' waiting for writeback that a batch's syncfs accepts whatever its size.
pub const FOREIGN_BUDGET_FLOOR: u64 = 64 * 1024 * 1024;

/// Data of others' waiting for writeback that a batch's syncfs accepts per file of the batch
/// (when that is more than [`FOREIGN_BUDGET_FLOOR`]).
pub const FOREIGN_BUDGET_PER_FILE: u64 = 128 * 1024;

/// Bytes of the system's page cache that are dirty or under writeback (`Dirty` plus
/// `Writeback`), from the text of `/proc/meminfo`; `None` if it has neither line.
pub fn pending_writeback(meminfo: &str) -> Option<u64> {
    let mut total: Option<u64> = None;
    for line in meminfo.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name != "Dirty" && name != "Writeback" {
            continue;
        }
        let mut fields = rest.split_whitespace();
        let (Some(value), unit) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let bytes = match unit {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        total = Some(total.unwrap_or(0).saturating_add(bytes));
    }
    total
}

/// Whether one syncfs should make a batch of `files` files durable, when at most
/// `own_bytes` of what waits for writeback is the batch's own data and `pending` bytes wait
/// system-wide (`None`: unknown, and syncfs is taken as before). See the module's rule.
pub fn syncfs_pays(files: usize, own_bytes: u64, pending: Option<u64>) -> bool {
    let Some(pending) = pending else {
        return true;
    };
    let budget = FOREIGN_BUDGET_FLOOR.max(FOREIGN_BUDGET_PER_FILE.saturating_mul(files as u64));
    pending.saturating_sub(own_bytes) <= budget
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:        1000000 kB\n\
        Dirty:             20480 kB\nWriteback:          1024 kB\n\
        AnonPages:        500000 kB\nWritebackTmp:          0 kB\n";

    #[test]
    fn pending_writeback_adds_dirty_and_writeback_and_nothing_else() {
        assert_eq!(pending_writeback(MEMINFO), Some((20_480 + 1_024) * 1024));
        assert_eq!(pending_writeback("Dirty: 7 kB\n"), Some(7 * 1024));
        assert_eq!(
            pending_writeback("MemFree: 10 kB\nWritebackTmp: 5 kB\n"),
            None
        );
        assert_eq!(pending_writeback(""), None);
        // A line it cannot read is left out, not guessed.
        assert_eq!(pending_writeback("Dirty: lots kB\nWriteback: 2 MB\n"), None);
    }

    #[test]
    fn syncfs_is_taken_unless_others_have_more_waiting_than_the_budget() {
        let mib = 1024 * 1024;
        // Unknown: as before.
        assert!(syncfs_pays(500, 0, None));
        // A quiet machine.
        assert!(syncfs_pays(500, 0, Some(mib)));
        // Exactly the floor still pays; one byte more does not.
        assert!(syncfs_pays(500, 0, Some(FOREIGN_BUDGET_FLOOR)));
        assert!(!syncfs_pays(500, 0, Some(FOREIGN_BUDGET_FLOOR + 1)));
        // The batch's own data does not count against it.
        assert!(syncfs_pays(
            500,
            900 * mib,
            Some(900 * mib + FOREIGN_BUDGET_FLOOR)
        ));
        // A larger batch accepts more: 2,000 files, 250 MiB.
        assert!(syncfs_pays(2_000, 0, Some(250 * mib)));
        assert!(!syncfs_pays(2_000, 0, Some(251 * mib)));
        // A gigabyte written by someone else: file by file.
        assert!(!syncfs_pays(500, 16 * mib, Some(1024 * mib)));
    }
}

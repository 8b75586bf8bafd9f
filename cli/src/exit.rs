//! Exit codes: one per failure class, documented in `haul --help` and the README.

use haul_core::{DownloadError, ErrorClass};

/// Success.
pub const OK: i32 = 0;
/// Bad command line or invalid request.
pub const USAGE: i32 = 2;
/// Network failure after retries (connect, reset, timeout, truncation, protocol: a
/// malformed response head too).
pub const NETWORK: i32 = 3;
/// The server answered with an error status, or with redirects that lead nowhere (a loop,
/// too many).
pub const HTTP_STATUS: i32 = 4;
/// Verification failed: size, hash (sha256 or another checksum) or signature.
pub const VERIFICATION: i32 = 5;
/// Unsafe or invalid archive, manifest or catalog.
pub const UNSAFE_INPUT: i32 = 6;
/// Local I/O failure.
pub const LOCAL_IO: i32 = 7;
/// Interrupted (Ctrl-C); partial downloads are kept for resume. Inside the commands it
/// stands for any interrupting signal; `main` exits with 128 + the signal received
/// (`signals::interrupted_exit_code`).
pub const INTERRUPTED: i32 = 130;

/// The code the process will exit with for `code`: [`INTERRUPTED`] becomes 128 + the signal
/// received, as `main` does; for the `exit_code` of JSON output, which must match.
pub fn as_exited(code: i32) -> i32 {
    if code == INTERRUPTED {
        crate::signals::interrupted_exit_code()
    } else {
        code
    }
}

/// The help text's table.
pub const TABLE: &str = "EXIT CODES:
  0  success
  2  usage error (bad option, bad URL)
  3  network failure after retries (connect, reset, timeout, truncated body,
     malformed response)
  4  HTTP error status (404, 403, 500 after retries, ...), redirect loop or too many
     redirects
  5  verification failed (size, sha256 or another checksum, signature); nothing is
     left at the destination
  6  unsafe or invalid archive, manifest or catalog
  7  local I/O failure (disk full, permissions)
  130 interrupted (Ctrl-C; 143 SIGTERM, 129 SIGHUP); partial downloads are kept and
      the same command resumes them; an interrupted extract changes nothing";

/// The exit code for a download failure.
pub fn for_download(e: &DownloadError) -> i32 {
    match e.class() {
        ErrorClass::Network => NETWORK,
        ErrorClass::HttpStatus => HTTP_STATUS,
        ErrorClass::Verification => VERIFICATION,
        ErrorClass::LocalIo => LOCAL_IO,
        ErrorClass::Usage => USAGE,
        ErrorClass::Cancelled => INTERRUPTED,
    }
}

/// The code of the first failure, in the order the downloads were given; but an
/// interruption wins over every failure: a script that sees 130 knows to run the command
/// again to resume what was cut short, whatever else failed before it.
pub fn combine(codes: impl IntoIterator<Item = i32>) -> i32 {
    let mut first = OK;
    for code in codes {
        if code == INTERRUPTED {
            return INTERRUPTED;
        }
        if first == OK {
            first = code;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_takes_the_first_failure_but_an_interruption_over_any() {
        assert_eq!(combine([OK, OK]), OK);
        assert_eq!(combine([OK, HTTP_STATUS, NETWORK]), HTTP_STATUS);
        assert_eq!(
            combine([HTTP_STATUS, OK, INTERRUPTED, NETWORK]),
            INTERRUPTED
        );
    }
}

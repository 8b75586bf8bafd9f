//! Interruption by signal: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the command the same way
//! (partial downloads kept for resume; an extraction, which cannot be resumed, removes what
//! it wrote), and the exit code says which one it was, as shells
//! do: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).

use std::sync::atomic::{AtomicI32, Ordering};

/// The number of the first signal that interrupted the command; 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Stopped by the first interrupting signal (once [`on_interrupt`] is set up): extractions
/// of the command's installs stop through it.
static EXTRACTIONS: std::sync::OnceLock<haul_install::extract::Stop> = std::sync::OnceLock::new();

/// A handle on the stop the first interrupting signal sets, for an extraction to pass on
/// (see [`haul_install::extract::Stop`]); never set before [`on_interrupt`].
pub fn extraction_stop() -> haul_install::extract::Stop {
    EXTRACTIONS
        .get_or_init(haul_install::extract::Stop::new)
        .clone()
}

/// Call `stop` on the first interrupting signal (from a thread of its own); the same signal
/// again ends the process at once (exit 128 + that signal), for a clean-up that hangs (a
/// sync on a stuck file system). Only the first is remembered for the exit code of a
/// normal end.
#[cfg(unix)]
pub fn on_interrupt(stop: impl Fn() + Send + 'static) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // An extraction's stop is set in the handler itself: the thread below may run only
    // after the extraction, back from a long `syncfs` that held the signal, passed its last
    // check and swapped the trees (Ctrl-C during the sync was lost).
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        let _ = signal_hook::flag::register(signal, extraction_stop().flag());
    }
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("haul-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => {
                        extraction_stop().stop();
                        stop()
                    }
                    // The same signal again (a second Ctrl-C): now. Another kind (a hangup
                    // sends SIGHUP and SIGTERM together) lets the clean stop go on.
                    Err(first) if first == signal => {
                        eprintln!("haul: interrupted again; stopping now");
                        std::process::exit(128 + signal);
                    }
                    Err(_) => {}
                }
            }
        });
    drop(spawned);
}

/// Call `stop` on Ctrl-C (and the console's close), as on Unix: a second one ends the
/// process at once; the exit code is SIGINT's (130).
#[cfg(not(unix))]
pub fn on_interrupt(stop: impl Fn() + Send + 'static) {
    const SIGINT: i32 = 2;
    let _ = ctrlc::set_handler(move || {
        if RECEIVED
            .compare_exchange(0, SIGINT, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            extraction_stop().stop();
            stop();
        } else {
            eprintln!("haul: interrupted again; stopping now");
            std::process::exit(128 + SIGINT);
        }
    });
}

/// The exit code of a command that ended interrupted (`crate::exit::INTERRUPTED` inside the
/// commands): 128 + the signal that interrupted it, 130 (SIGINT) if none is known.
pub fn interrupted_exit_code() -> i32 {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => crate::exit::INTERRUPTED,
        signal => 128 + signal,
    }
}

//! Ctrl-C (SIGINT) or a scheduler's SIGTERM during a training loop: the step under way
//! finishes, a checkpoint of it is written, and the run ends with [`TrainError::Interrupted`]
//! (the command exits 130), so that `--resume` continues from that step rather than from the
//! last periodic checkpoint (with `checkpoint_every = 0`, from the start). A second signal ends
//! the process at once. Outside a loop (reading data, evaluating before the first step) a
//! signal acts as it always does.
//!
//! [`TrainError::Interrupted`]: crate::error::TrainError::Interrupted

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether a signal asked the loop under way to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Asks the loop under way to stop, as a signal does (for tests and embedders).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Signals caught while it lives: the handlers before it are put back when it is dropped.
#[must_use = "signals are caught only while the guard lives"]
pub struct Catch {
    #[cfg(unix)]
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    // Only what is safe in a signal handler: an atomic store and `signal` itself, which puts
    // the default back so that a second signal ends the process.
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: `signal` is async-signal-safe; SIG_DFL is a valid action for these signals.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Catches SIGINT and SIGTERM until the guard is dropped (on other platforms, nothing).
pub fn catch() -> Catch {
    REQUESTED.store(false, Ordering::SeqCst);
    #[cfg(unix)]
    {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let previous = [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            // SAFETY: the handler only stores an atomic and calls `signal`, both
            // async-signal-safe.
            .map(|s| (s, unsafe { libc::signal(s, handler) }))
            .collect();
        Catch { previous }
    }
    #[cfg(not(unix))]
    Catch {}
}

impl Drop for Catch {
    fn drop(&mut self) {
        #[cfg(unix)]
        for &(s, previous) in &self.previous {
            if previous != libc::SIG_ERR {
                // SAFETY: puts back the action `signal` returned for this signal.
                unsafe {
                    libc::signal(s, previous);
                }
            }
        }
    }
}

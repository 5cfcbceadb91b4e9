//! Ctrl-C (SIGINT) or a scheduler's SIGTERM during a training loop: the step under way
//! finishes, a checkpoint of it is written, and the run ends with [`TrainError::Interrupted`]
//! (the command exits 130), so that `--resume` continues from that step rather than from the
//! last periodic checkpoint (with `checkpoint_every = 0`, from the start). A second signal ends
//! the process at once. Outside a loop (reading data, the final evaluation) a signal acts as it
//! always does, and a signal the process was started ignoring (a background job of a script)
//! stays ignored.
//!
//! [`TrainError::Interrupted`]: crate::error::TrainError::Interrupted

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How many [`Catch`] guards live, and the actions they replaced (put back when the last goes).
#[cfg(unix)]
static CAUGHT: Mutex<(usize, Vec<(libc::c_int, libc::sighandler_t)>)> = Mutex::new((0, Vec::new()));
#[cfg(not(unix))]
static CAUGHT: Mutex<(usize, Vec<()>)> = Mutex::new((0, Vec::new()));

/// Whether a signal asked the loop under way to stop; the request is consumed (a run acts on
/// it once).
pub fn take() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

/// Asks the loop under way to stop, as a signal does (for embedders).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Signals caught while it lives (guards may nest or overlap: the last one dropped puts the
/// earlier actions back).
#[must_use = "signals are caught only while the guard lives"]
pub struct Catch(());

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
    let mut caught = CAUGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    #[cfg(unix)]
    if caught.0 == 0 {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        caught.1.clear();
        for s in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores an atomic and calls `signal`, both
            // async-signal-safe.
            let previous = unsafe { libc::signal(s, handler) };
            if previous == libc::SIG_IGN {
                // Ignored by whoever started the process: it stays so.
                // SAFETY: puts back the action `signal` returned.
                unsafe {
                    libc::signal(s, libc::SIG_IGN);
                }
            } else if previous != libc::SIG_ERR {
                caught.1.push((s, previous));
            }
        }
    }
    caught.0 += 1;
    Catch(())
}

impl Drop for Catch {
    fn drop(&mut self) {
        let mut caught = CAUGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        caught.0 = caught.0.saturating_sub(1);
        #[cfg(unix)]
        if caught.0 == 0 {
            for (s, previous) in caught.1.drain(..) {
                // SAFETY: puts back the action `signal` returned for this signal.
                unsafe {
                    libc::signal(s, previous);
                }
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn guards_put_the_earlier_actions_back_when_the_last_goes_and_keep_ignored_signals_ignored() {
        let current = |s| {
            // SAFETY: reads the action by setting it and putting it straight back.
            unsafe {
                let was = libc::signal(s, libc::SIG_DFL);
                libc::signal(s, was);
                was
            }
        };
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: SIG_IGN is a valid action for SIGTERM; this test process sends none.
        let before = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        let (a, b) = (catch(), catch());
        assert_eq!(current(libc::SIGINT), handler);
        assert_eq!(current(libc::SIGTERM), libc::SIG_IGN);
        drop(a);
        assert_eq!(current(libc::SIGINT), handler, "another guard still lives");
        drop(b);
        assert_ne!(current(libc::SIGINT), handler);
        assert_eq!(current(libc::SIGTERM), libc::SIG_IGN);
        // SAFETY: puts back the action this test found.
        unsafe {
            libc::signal(libc::SIGTERM, before);
        }
        request();
        assert!(take());
        assert!(!take(), "a request is acted on once");
    }
}

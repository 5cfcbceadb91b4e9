//! Progress bars that log lines do not break. The bar on the terminal is registered here while
//! it is drawn ([`Shown`]), and [`LogWriter`], the log's writer (set in `main`), takes it off
//! the screen while a line is written: a warning during training gets a line of its own above
//! the bar instead of being glued to its end.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use indicatif::ProgressBar;

/// The bar on the terminal, with the number its [`Shown`] was given.
static SHOWN: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(0);

fn shown() -> MutexGuard<'static, Option<(u64, ProgressBar)>> {
    SHOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A bar registered as the one on the terminal until it is dropped (the latest one shown wins;
/// dropping an earlier one leaves it registered); derefs to the bar.
pub struct Shown(u64, ProgressBar);

impl Shown {
    pub fn new(bar: ProgressBar) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        *shown() = Some((id, bar.clone()));
        Shown(id, bar)
    }
}

impl std::ops::Deref for Shown {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.1
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        let mut shown = shown();
        if shown.as_ref().is_some_and(|(id, _)| *id == self.0) {
            *shown = None;
        }
    }
}

/// Standard error for the log: a line is gathered, then written with the shown bar (if any)
/// cleared around it. `tracing_subscriber` makes one per event and drops it after the line.
#[derive(Default)]
pub struct LogWriter {
    line: Vec<u8>,
}

impl LogWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        // The bar is cloned out so that the lock is not held while it redraws.
        let bar = shown().as_ref().map(|(_, bar)| bar.clone());
        let line = std::mem::take(&mut self.line);
        let write = || {
            let _ = std::io::stderr().lock().write_all(&line);
        };
        match bar {
            Some(bar) if !bar.is_hidden() && !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit();
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_is_registered_while_it_lives_and_lines_pass_without_one() {
        let first = Shown::new(ProgressBar::hidden());
        let second = Shown::new(ProgressBar::hidden());
        // Dropping the earlier bar leaves the later one registered.
        drop(first);
        assert_eq!(shown().as_ref().map(|(id, _)| *id), Some(second.0));
        // A hidden bar is not suspended; the gathered line goes out on flush.
        let mut w = LogWriter::default();
        w.write_all(b"a line\n").unwrap();
        assert_eq!(w.line, b"a line\n");
        w.flush().unwrap();
        assert!(w.line.is_empty());
        drop(second);
        assert!(shown().is_none());
    }
}

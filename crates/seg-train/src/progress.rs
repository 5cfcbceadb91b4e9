//! Progress bars that log lines do not break. The bar on the terminal is registered here while
//! it is drawn ([`Shown`]), and [`LogWriter`], the log's writer (set in `main`), takes it off
//! the screen while a line is written: a warning during training gets a line of its own above
//! the bar instead of being glued to its end.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use indicatif::ProgressBar;

static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn shown() -> MutexGuard<'static, Option<ProgressBar>> {
    SHOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A bar registered as the one on the terminal until it is dropped; derefs to the bar.
pub struct Shown(ProgressBar);

impl Shown {
    pub fn new(bar: ProgressBar) -> Self {
        *shown() = Some(bar.clone());
        Shown(bar)
    }
}

impl std::ops::Deref for Shown {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        *shown() = None;
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
        let bar = shown().clone();
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
        let bar = Shown::new(ProgressBar::hidden());
        assert!(shown().is_some());
        // A hidden bar is not suspended; the line goes straight out.
        let mut w = LogWriter::default();
        w.write_all(b"").unwrap();
        w.flush().unwrap();
        assert!(w.line.is_empty());
        drop(bar);
        assert!(shown().is_none());
    }
}

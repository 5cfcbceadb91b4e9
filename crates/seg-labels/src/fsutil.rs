//! Crash-safe file writing: everything the project writes goes to a temporary file in the
//! destination folder, is synced, and is then renamed over the target, so a reader never sees
//! half a file and an old file survives a failed write.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temporary sibling file + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by a closure writing into the temp file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `std::fs::create_dir_all`, whose error says which part of the path is a file when that is
/// why it failed (the OS says only "File exists").
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match dir.ancestors().find(|a| a.is_file()) {
        Some(file) => std::io::Error::new(e.kind(), format!("{} is a file, not a folder", file.display())),
        None => e,
    })
}

/// An exclusive hold on a folder (`DIR/.lock`, an OS file lock): two processes writing one run
/// folder at once would interleave their metrics and overwrite each other's checkpoints. The
/// OS releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// The name of [`DirLock`]'s file.
pub const LOCK_FILE: &str = ".lock";

/// Takes `dir`'s lock (creating `dir`), or says that another process holds it; every error
/// names `dir`.
pub fn lock_dir(dir: &Path) -> std::io::Result<DirLock> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    create_dir_all(dir).map_err(named)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(named)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "{} is in use by another seg-adapt process (wait for it, or choose another folder)",
                dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(named(e)),
    }
}

/// Whether a file or folder name is hidden (`.name`): macOS's `._*` companions, `.DS_Store`, a
/// `.trash/` folder, the lock and temporary files here. No reader takes one for a sample or for
/// ground truth, as the official scripts' `glob` (whose `*` matches no leading dot) skips them.
pub fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

/// Whether `name` is one of [`write_atomic_with`]'s temporary files: `.NAME.PID.tmp`.
fn is_temp_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    inner
        .rsplit_once('.')
        .is_some_and(|(target, pid)| !target.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files that writes killed midway left under `dir` (recursively, not
/// following links); returns how many. Run before resuming into a folder.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let kind = e.file_type()?;
        if kind.is_dir() {
            removed += remove_stale_temps(&e.path())?;
        } else if kind.is_file() && is_temp_name(&e.file_name().to_string_lossy()) {
            std::fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Appends one line to a log file and syncs it. A line is written with a single `write` call,
/// so a crash leaves at most one trailing partial line, which readers skip.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    f.write_all(buf.as_bytes())?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_folder_is_refused_until_its_lock_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = lock_dir(&run).unwrap();
        let e = lock_dir(&run).unwrap_err().to_string();
        assert!(e.contains("in use by another seg-adapt process"), "{e}");
        drop(held);
        lock_dir(&run).unwrap();
    }

    #[test]
    fn a_file_where_a_folder_is_needed_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, b"mine").unwrap();
        let e = write_atomic(&file.join("eval/report.json"), b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("afile is a file, not a folder"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// A full disk (ENOSPC) mid-write: the reason reaches the caller, the old file survives and
    /// no temp file is left. (The binary-level test mounts a real, tiny tmpfs.)
    #[test]
    fn full_disk_keeps_old_file_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::from_raw_os_error(28))
        })
        .unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("eval/pictures");
        std::fs::create_dir_all(&sub).unwrap();
        for name in [".a.png.123.tmp", "keep.png", ".hidden", "x.tmp", ".b.json.tmp"] {
            std::fs::write(sub.join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join(".checkpoint.safetensors.9.tmp"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        let mut left: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".b.json.tmp", ".hidden", "keep.png", "x.tmp"]);
    }

    #[test]
    fn failed_write_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |_| Err(std::io::Error::other("disk full")));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

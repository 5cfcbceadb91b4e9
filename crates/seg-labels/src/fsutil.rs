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
    // `new/.` is `new` (the OS finds no `new` to look into).
    let dir: std::path::PathBuf = dir.components().collect();
    // The first part of the path that is there and is no folder (a file, or a device such as
    // `/dev/null`), or a link to nothing.
    let blocker = || {
        dir.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .find(|a| (a.exists() && !a.is_dir()) || (!a.exists() && a.symlink_metadata().is_ok()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| match blocker() {
        Some(there) if !there.exists() => std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!(
                "{} is a link to {}, which does not exist",
                there.display(),
                std::fs::read_link(there).unwrap_or_default().display()
            ),
        ),
        Some(there) => not_a_folder(there),
        None => e,
    })
}

/// The error for a part of a path that is there and is no folder, naming it (kind
/// `NotADirectory`, by which callers know the message names the path).
fn not_a_folder(there: &Path) -> std::io::Error {
    let what = if there.is_file() {
        "is a file, not a folder"
    } else {
        "is not a folder"
    };
    std::io::Error::new(std::io::ErrorKind::NotADirectory, format!("{} {what}", there.display()))
}

/// Why a folder a reader needs is not one, for its error: `{what} not found: expected {path}`,
/// or, when something else is there, `{what} {path} is a file, not a folder`.
pub fn missing_folder(what: &str, path: &Path) -> String {
    match path.symlink_metadata() {
        Ok(_) if path.is_dir() => format!("{what} {} cannot be read as a folder", path.display()),
        Ok(_) if path.is_file() => format!("{what} {} is a file, not a folder", path.display()),
        Ok(m) if m.file_type().is_symlink() && !path.exists() => {
            format!("{what} {} is a link that leads nowhere", path.display())
        }
        Ok(_) => format!("{what} {} is not a folder", path.display()),
        Err(_) => format!("{what} not found: expected {}", path.display()),
    }
}

/// Checks, before a long computation, that files can be written into `dir` (created later if
/// missing): the nearest part of the path that is there must be a folder that takes a file.
pub fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    let Some(there) = dir.ancestors().find(|a| a.as_os_str().is_empty() || a.exists()) else {
        return Ok(());
    };
    let there = if there.as_os_str().is_empty() {
        Path::new(".")
    } else {
        there
    };
    if !there.is_dir() {
        return Err(not_a_folder(there));
    }
    let probe = there.join(format!(".probe.txt.{}.tmp", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: cannot write here: {e}", there.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// An exclusive hold on a folder (`DIR/.lock`, an OS file lock): two processes writing one run
/// folder at once would interleave their metrics and overwrite each other's checkpoints. The
/// OS releases it when the process ends, however it ends. Dropped with nothing written beside
/// it (a run refused after taking the lock), it takes its file away, and the folder too if
/// [`lock_dir`] created it: a refused command leaves no trace.
#[derive(Debug)]
pub struct DirLock {
    file: Option<std::fs::File>,
    dir: std::path::PathBuf,
    /// The folders [`lock_dir`] created, `dir` first.
    created: Vec<std::path::PathBuf>,
}

/// The name of [`DirLock`]'s file.
pub const LOCK_FILE: &str = ".lock";

/// Takes `dir`'s lock (creating `dir`), or says that another process holds it; every error
/// names `dir`.
pub fn lock_dir(dir: &Path) -> std::io::Result<DirLock> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    // A holder that ends with an empty folder unlinks the lock file (and the folders it
    // created): a lock won on a file so unlinked holds nothing, and is taken again on the file
    // now at the path.
    let mut created: Vec<std::path::PathBuf> = Vec::new();
    for _ in 0..64 {
        let missing = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists());
        created.extend(missing.map(Path::to_path_buf));
        // A part of the path that is no folder is named by the error itself.
        create_dir_all(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotADirectory {
                e
            } else {
                named(e)
            }
        })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| {
                let lock = dir.join(LOCK_FILE);
                std::io::Error::new(
                    e.kind(),
                    format!("{}: cannot open the run's lock file: {e}", lock.display()),
                )
            })?;
        match try_lock_patiently(&file) {
            Ok(()) if is_linked_at(&file, &dir.join(LOCK_FILE)) => {
                // Deepest first, as they are removed.
                created.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                created.dedup();
                return Ok(DirLock {
                    file: Some(file),
                    dir: dir.to_path_buf(),
                    created,
                });
            }
            Ok(()) => continue,
            Err(std::fs::TryLockError::WouldBlock) => return Err(in_use(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(named(e)),
        }
    }
    Err(std::io::Error::other(format!(
        "{}: its lock file keeps being removed by another process",
        dir.display()
    )))
}

/// `file.try_lock()`, tried again for a moment while another process holds the lock: a
/// [`held_by_another`] probe holds it for an instant, a run for as long as it runs.
fn try_lock_patiently(file: &std::fs::File) -> Result<(), std::fs::TryLockError> {
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if tries < PROBE_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How many times a lock found held is tried again, 20 ms apart.
const PROBE_TRIES: u32 = 25;

fn in_use(dir: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::WouldBlock,
        format!(
            "{} is in use by another seg-adapt process (wait for it, or choose another folder)",
            dir.display()
        ),
    )
}

/// The error [`lock_dir`] gives when another process holds `dir`'s lock, if one does now;
/// creates nothing (a folder without a lock file is held by none).
pub fn held_by_another(dir: &Path) -> Option<std::io::Error> {
    let file = std::fs::File::open(dir.join(LOCK_FILE)).ok()?;
    match try_lock_patiently(&file) {
        Err(std::fs::TryLockError::WouldBlock) => Some(in_use(dir)),
        _ => None,
    }
}

/// Reads a whole file, refusing anything but a regular file (a link to `/dev/zero`, a FIFO or a
/// device would be read without end, or never).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "a device, FIFO or socket"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({what})"),
        ));
    }
    std::fs::read(path)
}

/// Largest text file [`read_text`] reads.
pub const MAX_TEXT: u64 = 64 << 20;

/// A log of lines the project appends to (a run's `metrics.jsonl`), as text: a byte that is
/// not UTF-8 (an edit, a disk error) spoils its own line, not the whole file.
pub fn read_log_lossy(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A config file or split list as UTF-8 text, read up to [`MAX_TEXT`] bytes: a FIFO or
/// `/dev/stdin` (`--config <(…)`) is read to its end, a link to `/dev/zero` is refused at the
/// bound rather than read without end.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    if std::fs::metadata(path)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a folder, not a file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_TEXT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TEXT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {} MiB: not a config or list file", MAX_TEXT >> 20),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {} is not)", e.utf8_error().valid_up_to()),
        )
    })
}

/// Whether the open `file` is the one at `path` (not unlinked, nor replaced).
fn is_linked_at(file: &std::fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let only_the_lock = std::fs::read_dir(&self.dir)
            .is_ok_and(|entries| entries.filter_map(Result::ok).all(|e| e.file_name() == LOCK_FILE));
        let lock = self.dir.join(LOCK_FILE);
        if only_the_lock && self.file.as_ref().is_some_and(|f| is_linked_at(f, &lock)) {
            // Unlinked while still held, so no other process can win it in between.
            let _ = std::fs::remove_file(&lock);
            for d in &self.created {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
            }
        }
        drop(self.file.take());
    }
}

/// `$TMPDIR/{prefix}{this process's id}`, a folder of this process's own, after removing
/// those of the same prefix whose process is gone (one killed before it could remove its own).
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let temp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&temp) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)?.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !process_lives(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    temp.join(format!("{prefix}{}", std::process::id()))
}

/// Whether a process of this id runs (on other platforms than Unix: assumed so).
fn process_lives(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Whether a file or folder name is hidden (`.name`): macOS's `._*` companions, `.DS_Store`, a
/// `.trash/` folder, the lock and temporary files here. No reader takes one for a sample or for
/// ground truth, as the official scripts' `glob` (whose `*` matches no leading dot) skips them.
pub fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

/// FNV-1a (64 bits): the project's digest of file contents and name lists (stable across
/// versions and platforms, unlike `std`'s hasher). Start from [`Fnv::default`], feed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The digest as 16 hex digits.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The kinds of file the project writes through [`write_atomic_with`], by extension.
const WRITTEN: [&str; 11] = [
    "safetensors",
    "toml",
    "json",
    "jsonl",
    "md",
    "html",
    "csv",
    "png",
    "txt",
    "jpg",
    "xml",
];

/// Whether `name` is one of [`write_atomic_with`]'s temporary files: `.NAME.PID.tmp`, NAME a
/// kind of file the project writes (a user's `.bashrc.42.tmp` is not one).
fn is_temp_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    inner.rsplit_once('.').is_some_and(|(target, pid)| {
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && target
                .rsplit_once('.')
                .is_some_and(|(stem, ext)| !stem.is_empty() && WRITTEN.contains(&ext))
    })
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

    /// Another process's probe ([`held_by_another`]) holds the lock for an instant: a run
    /// starting in that instant waits it out instead of calling the folder in use.
    #[test]
    fn a_lock_held_for_an_instant_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join(LOCK_FILE), "").unwrap();
        let probe = std::fs::File::open(run.join(LOCK_FILE)).unwrap();
        probe.try_lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
            drop(probe);
        });
        rx.recv().unwrap();
        lock_dir(&run).unwrap();
        release.join().unwrap();
    }

    #[test]
    fn a_lock_dropped_with_nothing_written_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        // A folder the lock created goes with it.
        let run = dir.path().join("new/run");
        drop(lock_dir(&run).unwrap());
        assert!(!dir.path().join("new").exists());
        // A folder the user made stays, empty.
        let made = dir.path().join("made");
        std::fs::create_dir(&made).unwrap();
        drop(lock_dir(&made).unwrap());
        assert_eq!(std::fs::read_dir(&made).unwrap().count(), 0);
        // Once something is written, the folder and its lock stay.
        let held = lock_dir(&run).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "").unwrap();
        drop(held);
        assert!(run.join(LOCK_FILE).exists() && run.join("metrics.jsonl").exists());
        // A lock whose file was unlinked by its holder is not a lock: the next is taken on the
        // file at the path.
        let gone = dir.path().join("gone");
        let a = lock_dir(&gone).unwrap();
        std::fs::remove_file(gone.join(LOCK_FILE)).unwrap();
        let b = lock_dir(&gone).unwrap();
        assert!(gone.join(LOCK_FILE).exists());
        let e = lock_dir(&gone).unwrap_err().to_string();
        assert!(e.contains("in use by another"), "{e}");
        drop(a);
        assert!(gone.join(LOCK_FILE).exists(), "not the dropped lock's file to remove");
        drop(b);
        assert_eq!(std::fs::read_dir(&gone).unwrap().count(), 0);
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
        let e = create_dir_all(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("/dev/null is not a folder"), "{e}");
        // The same before a long computation, with a folder that takes no file.
        let e = check_writable_dir(&file.join("out")).unwrap_err().to_string();
        assert!(e.contains("afile is a file, not a folder"), "{e}");
        let e = check_writable_dir(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("/dev/null is not a folder"), "{e}");
        check_writable_dir(&dir.path().join("new/out")).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the probe is removed"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
        // A link to nothing is named as one (the OS says only "File exists"), and a folder
        // named with a trailing `/.` is made like any other.
        #[cfg(unix)]
        {
            let link = dir.path().join("dangling");
            std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
            let e = create_dir_all(&link.join("run")).unwrap_err().to_string();
            assert!(
                e.contains("dangling is a link to") && e.contains("gone, which does not exist"),
                "{e}"
            );
        }
        create_dir_all(&dir.path().join("fresh/.")).unwrap();
        assert!(dir.path().join("fresh").is_dir());
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
        for name in [
            ".a.png.123.tmp",
            "keep.png",
            ".hidden",
            "x.tmp",
            ".b.json.tmp",
            ".bashrc.42.tmp",
            ".my.data.1.tmp",
        ] {
            std::fs::write(sub.join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join(".checkpoint.safetensors.9.tmp"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        let mut left: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".b.json.tmp",
                ".bashrc.42.tmp",
                ".hidden",
                ".my.data.1.tmp",
                "keep.png",
                "x.tmp"
            ]
        );
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

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("zero.png");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = super::read_regular(&link).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(super::read_regular(dir.path())
            .unwrap_err()
            .to_string()
            .contains("a folder"));
        std::fs::write(dir.path().join("f"), b"ok").unwrap();
        assert_eq!(super::read_regular(&dir.path().join("f")).unwrap(), b"ok");
        // Text (configs, split lists) is read to a bound, so a FIFO still reads, and text that
        // is not UTF-8 says where it stops.
        let e = super::read_text(&link).unwrap_err().to_string();
        assert!(e.contains("over 64 MiB"), "{e}");
        let e = crate::split_list::read(&link).unwrap_err().to_string();
        assert!(e.contains("over 64 MiB"), "{e}");
        assert!(super::read_text(dir.path())
            .unwrap_err()
            .to_string()
            .contains("a folder"));
        assert_eq!(super::read_text(&dir.path().join("f")).unwrap(), "ok");
        std::fs::write(dir.path().join("latin1"), b"caf\xe9").unwrap();
        let e = super::read_text(&dir.path().join("latin1")).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("byte 3"), "{e}");
        // A FIFO (`<(…)` in a shell) is read to its end.
        let fifo = dir.path().join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let writer = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::write(fifo, "[data]\n").unwrap())
            };
            assert_eq!(super::read_text(&fifo).unwrap(), "[data]\n");
            writer.join().unwrap();
        }
    }
}

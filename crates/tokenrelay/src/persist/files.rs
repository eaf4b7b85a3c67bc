//! The cache directory's file handling: a private directory that is never reached through a
//! symbolic link, files opened without following links and owned by the current user, writes
//! through an exclusively created, randomly named 0600 temporary file and an atomic rename.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::error::{Error, ErrorKind, Result};

use super::ORIGIN;

/// An entry or key file larger than this (64 KiB) is not ours: refused rather than read.
const MAX_FILE: u64 = 64 * 1024;

/// Prefix of the temporary files writes go through (removed by pruning once stale).
pub(super) const TMP_PREFIX: &str = ".tmp-";

pub(super) fn unavailable(msg: String) -> Error {
    Error::new(ORIGIN, ErrorKind::Unavailable(msg))
}

pub(super) fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    unavailable(format!("{what}: {e}"))
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Makes sure `dir` is a private directory of the current user, creating it (0700) when
/// missing. An existing directory is never re-moded: one that is a symbolic link, belongs to
/// someone else, or that group or others may read or write is refused with the fix.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<()> {
    let d = dir.display();
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == IoKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(format!("cannot create {d}"), e))?;
            fs::symlink_metadata(dir).map_err(|e| io_err(format!("cannot stat {d}"), e))?
        }
        Err(e) => return Err(io_err(format!("cannot stat {d}"), e)),
    };
    if meta.file_type().is_symlink() {
        return Err(unavailable(format!(
            "{d} is a symbolic link; refusing to keep tokens behind it (use the real directory as --cache-dir)"
        )));
    }
    if !meta.is_dir() {
        return Err(unavailable(format!("{d} is not a directory")));
    }
    if meta.uid() != euid() {
        return Err(unavailable(format!(
            "{d} belongs to another user (uid {}); refusing to keep tokens there (use a directory of your own as --cache-dir)",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unavailable(format!(
            "{d} is open to other users (mode {mode:o}); refusing to keep tokens there (run chmod 700 {d}, or use another --cache-dir)"
        )));
    }
    Ok(())
}

/// Checks an opened file: a regular file owned by the current user.
fn check_owned(path: &Path, f: &File) -> Result<std::fs::Metadata> {
    let meta = f
        .metadata()
        .map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(unavailable(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.uid() != euid() {
        return Err(unavailable(format!(
            "{} belongs to another user (uid {}); remove it",
            path.display(),
            meta.uid()
        )));
    }
    Ok(meta)
}

fn open_err(path: &Path, e: std::io::Error) -> Error {
    // ELOOP: the last component is a symbolic link and O_NOFOLLOW refused it.
    if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
        return unavailable(format!(
            "{} is a symbolic link; refusing to follow it (remove it)",
            path.display()
        ));
    }
    io_err(format!("cannot open {}", path.display()), e)
}

/// Reads a file of ours without following a symbolic link; `None` when it does not exist.
pub(super) fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) => return Err(open_err(path, e)),
    };
    let meta = check_owned(path, &f)?;
    if meta.len() > MAX_FILE {
        return Err(unavailable(format!(
            "{} is larger than {MAX_FILE} bytes; not a cache file (remove it)",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| io_err(format!("cannot read {}", path.display()), e))?;
    Ok(Some(buf))
}

/// Takes an entry's exclusive lock, waiting for it.
pub(super) fn lock_wait(path: &Path) -> Result<File> {
    let lock = open_lock(path)?;
    lock.lock()
        .map_err(|e| io_err(format!("cannot lock {}", path.display()), e))?;
    Ok(lock)
}

/// Takes an entry's exclusive lock if no one holds it; `None` when someone does.
pub(super) fn lock_try(path: &Path) -> Result<Option<File>> {
    let lock = open_lock(path)?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => {
            Err(io_err(format!("cannot lock {}", path.display()), e))
        }
    }
}

/// Opens (creating, 0600) an entry's lock file without following a symbolic link.
fn open_lock(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| open_err(path, e))?;
    check_owned(path, &f)?;
    Ok(f)
}

/// Writes `bytes` to a new, randomly named 0600 file in `dir` (created exclusively, so a
/// leftover of a crashed process or a planted link is never written through).
pub(super) fn write_tmp(dir: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `path` with `bytes` atomically (a reader sees the old or the new file whole).
pub(super) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let renamed = write_tmp(dir, bytes).and_then(|tmp| {
        fs::rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    });
    renamed.map_err(|e| io_err(format!("cannot write {}", path.display()), e))
}

//! The store's files: atomic writes (a temporary file, fsync, rename, fsync of the folder),
//! folders made durably, the leftovers of killed writers, and listing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pack::sync_dir;

/// The index library takes paths as text: a store path that is not UTF-8 is refused before
/// anything is created.
pub(crate) fn utf8_path(root: &Path) -> Result<()> {
    if root.to_str().is_none() {
        return Err(Error::Usage(format!(
            "{}: a store path must be valid UTF-8 (rename the folder)",
            root.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// As [`write_atomic`], the file made with permissions `mode` (a page others may read: 0644).
///
/// # Errors
/// I/O errors.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durable(dir)?;
    let tmp = tmp_name(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io(&tmp, "creating"))?;
    f.write_all(bytes).map_err(Error::io(&tmp, "writing"))?;
    f.sync_all().map_err(Error::io(&tmp, "syncing"))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path, "renaming into place"))?;
    sync_dir(dir)
}

/// The temporary name [`write_atomic`] writes `path` under before its rename: hidden, and
/// naming the process, so that writers never share one and a leftover of a dead process is
/// known as such ([`remove_stale_tmp`]).
fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether `path` is a temporary file of [`write_atomic`] that no live process is writing (a
/// name of the older form, without a process id, counts as stale).
fn stale_tmp(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(stem) = name.strip_suffix(".tmp") else {
        return false;
    };
    match stem.rsplit_once('.').map(|(_, pid)| pid.parse::<u32>()) {
        Some(Ok(pid)) if stem.starts_with('.') => !crate::lock::process_alive(pid),
        _ => true,
    }
}

/// Removes the temporary files of [`write_atomic`] that killed processes left in `dir` (not
/// below it); returns how many.
///
/// # Errors
/// I/O errors.
pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, "listing a folder")(e)),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "tmp") && path.is_file() && stale_tmp(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, "removing a temporary file")(e)),
            }
        }
    }
    Ok(removed)
}

/// Creates `dir` and any missing parents, syncing the folder each new one is created in, so
/// that a file renamed into it survives a crash with its path.
fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    create_dir_durable(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, "creating a folder")(e)),
    }
}

/// Every file under `dir` (recursively) whose extension is `ext`, sorted; a missing folder has
/// none.
pub(crate) fn files_under(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    each_file_under(dir, ext, &mut |p| out.push(p.to_path_buf()))?;
    out.sort();
    Ok(out)
}

/// Calls `f` with every file under `dir` (recursively) whose extension is `ext`, in the order
/// the folders list them: nothing collected or sorted (a store of 100 000 points has as many
/// root files).
pub(crate) fn each_file_under(dir: &Path, ext: &str, f: &mut dyn FnMut(&Path)) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.map_err(Error::io(&dir, "listing the folder"))?;
            let path = e.path();
            // The folder's own listing says what each entry is (no stat per file: a store of
            // 100 000 points has as many root files); a link is followed as before.
            let is_dir = match e.file_type() {
                Ok(t) if t.is_symlink() => path.is_dir(),
                Ok(t) => t.is_dir(),
                Err(_) => path.is_dir(),
            };
            if is_dir {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == ext) {
                f(&path);
            }
        }
    }
    Ok(())
}

/// The spool folder of the store at `root` (see [`Store::spool_dir`]).
#[must_use]
pub fn spool_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

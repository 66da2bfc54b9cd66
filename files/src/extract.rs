//! Copying files and folders out of a point's file system onto this machine (`cairn extract`).
//!
//! - **Never outside DEST.** Every name comes from the image, so every name is checked: one
//!   that is empty, `.`, `..`, or holds a `/` or a NUL is refused, naming the folder that holds
//!   it. Files are made with `O_CREAT|O_EXCL|O_NOFOLLOW` (a symlink already in DEST, or made by
//!   an earlier entry, is never written through); symlinks are made as symlinks, their targets
//!   as the image holds them, never followed.
//! - **Never over what is there** unless `force`: then an existing file is replaced (removed,
//!   then made afresh, so a symlink in its place is removed, not followed) and existing folders
//!   are filled.
//! - **Bounded**: a folder deeper than [`MAX_DEPTH`] levels (a directory that holds one of its
//!   ancestors, in a damaged or hostile image) is refused, naming it.
//! - **As the image had them, where this machine allows**: permissions, modification times
//!   (folders' after their content), owners when run as root; runs of zeros of whole 4 KiB
//!   blocks are left as holes (a sparse file stays sparse). A file with several names (hard
//!   links, on ext and NTFS) is written once and linked under its other names, inside DEST.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::fs::FileSystem;
use crate::{Entry, EntryKind, Error, MAX_DEPTH, Result};

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files.
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Names linked to a file already written (hard links).
    pub hard_links: u64,
    /// Devices, fifos and sockets left out.
    pub skipped: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Copies the file or folder at `src` (absolute, in `fs`) to `dest` (which must not exist
/// unless `force`).
///
/// # Errors
/// A name from the image that would write outside `dest`, `dest` existing without `force`,
/// the file system's errors, I/O errors naming the path.
pub fn extract(
    fs: &dyn FileSystem,
    src: &str,
    dest: &Path,
    force: bool,
    progress: &dyn Fn(&Extracted),
) -> Result<Extracted> {
    let mut done = Extracted::default();
    let top = fs.entry(src)?;
    let mut w = Written::default();
    put(fs, src, &top, dest, force, &mut done, &mut w, progress)?;
    // Folders' times last (writing into a folder changes its time), deepest first.
    for (path, e) in w.dirs.iter().rev() {
        set_time(path, e.mtime)?;
    }
    Ok(done)
}

/// What an extraction wrote that it comes back to.
#[derive(Default)]
struct Written {
    /// Folders, to set their times last.
    dirs: Vec<(std::path::PathBuf, Entry)>,
    /// The first name each file with an identity was written under (see
    /// [`FileSystem::file_id`]): its other names become hard links to it.
    files: std::collections::HashMap<u64, std::path::PathBuf>,
}

/// Writes entry `e` (at `src` in the image) to `dest`, folders depth first.
#[allow(clippy::too_many_arguments)]
fn put(
    fs: &dyn FileSystem,
    src: &str,
    e: &Entry,
    dest: &Path,
    force: bool,
    done: &mut Extracted,
    w: &mut Written,
    progress: &dyn Fn(&Extracted),
) -> Result<()> {
    match e.kind {
        EntryKind::Dir => {
            if src.matches('/').count() > MAX_DEPTH {
                return Err(Error::Fs {
                    path: src.to_owned(),
                    why: format!(
                        "deeper than {MAX_DEPTH} folders: a loop in the file system? (refused)"
                    ),
                });
            }
            match std::fs::create_dir(dest) {
                Ok(()) => {}
                Err(err) if force && err.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(dest).map_err(io(dest))?.is_dir() {
                        return Err(io(dest)(std::io::Error::other(
                            "exists and is not a folder",
                        )));
                    }
                }
                Err(err) => return Err(io(dest)(err)),
            }
            done.dirs += 1;
            for child in fs.list(src)? {
                check_name(src, &child.name)?;
                let child_src = format!("{}/{}", src.trim_end_matches('/'), child.name);
                put(
                    fs,
                    &child_src,
                    &child,
                    &dest.join(&child.name),
                    force,
                    done,
                    w,
                    progress,
                )?;
            }
            finish(dest, e)?;
            w.dirs.push((dest.to_path_buf(), e.clone()));
        }
        EntryKind::Symlink => {
            make_room(dest, force)?;
            let target = e.link.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&target, dest).map_err(io(dest))?;
            if am_root() {
                let _ = std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid));
            }
            done.symlinks += 1;
        }
        EntryKind::File => {
            make_room(dest, force)?;
            let id = fs.file_id(src)?;
            if let Some(first) = id.and_then(|id| w.files.get(&id)) {
                std::fs::hard_link(first, dest).map_err(io(dest))?;
                done.hard_links += 1;
                progress(done);
                return Ok(());
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .mode(0o600)
                .open(dest)
                .map_err(io(dest))?;
            let mut input = fs.open_file(src)?;
            done.bytes += copy_sparse(&mut *input, &mut out, dest)?;
            drop(out);
            finish(dest, e)?;
            set_time(dest, e.mtime)?;
            if let Some(id) = id {
                w.files.insert(id, dest.to_path_buf());
            }
            done.files += 1;
        }
        EntryKind::Other => done.skipped += 1,
    }
    progress(done);
    Ok(())
}

/// Refuses a name that would leave its folder.
fn check_name(dir: &str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::Fs {
            path: dir.to_owned(),
            why: format!("holds an entry named {name:?}: refused (it would write outside DEST)"),
        });
    }
    Ok(())
}

/// Clears `dest` for a new entry: refused if something is there, unless `force` (then it is
/// removed; a folder is not).
fn make_room(dest: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dest)(e)),
        Ok(m) if force && !m.is_dir() => std::fs::remove_file(dest).map_err(io(dest)),
        Ok(_) => Err(io(dest)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists: nothing is written over without --force",
        ))),
    }
}

/// Copies `input` to `out`, leaving whole 4 KiB blocks of zeros as holes; the bytes copied.
fn copy_sparse(input: &mut dyn Read, out: &mut std::fs::File, dest: &Path) -> Result<u64> {
    use std::io::Seek;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Fs {
                        path: dest.display().to_string(),
                        why: format!("reading its content: {e}"),
                    });
                }
            }
        }
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(4096) {
            if block.iter().all(|&b| b == 0) {
                out.seek(std::io::SeekFrom::Current(block.len() as i64))
                    .map_err(io(dest))?;
            } else {
                out.write_all(block).map_err(io(dest))?;
            }
        }
        total += n as u64;
    }
    // A file ending in a hole: its length set, the hole kept.
    out.set_len(total).map_err(io(dest))?;
    Ok(total)
}

/// Sets `dest`'s permissions, and owner when run as root.
fn finish(dest: &Path, e: &Entry) -> Result<()> {
    std::fs::set_permissions(
        dest,
        std::fs::Permissions::from_mode(u32::from(e.mode & 0o7777)),
    )
    .map_err(io(dest))?;
    if am_root() {
        std::os::unix::fs::chown(dest, Some(e.uid), Some(e.gid)).map_err(io(dest))?;
    }
    Ok(())
}

fn set_time(dest: &Path, mtime: i64) -> Result<()> {
    let t = if mtime >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(mtime.unsigned_abs())
    };
    std::fs::File::open(dest)
        .and_then(|f| f.set_modified(t))
        .map_err(io(dest))
}

fn am_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Fs {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file system whose one folder holds itself (a loop a hostile image can make).
    struct Looping;

    impl FileSystem for Looping {
        fn entry(&self, _: &str) -> Result<Entry> {
            Ok(Entry {
                name: "loop".into(),
                kind: EntryKind::Dir,
                size: 0,
                mode: 0o040_755,
                uid: 0,
                gid: 0,
                mtime: 0,
                link: None,
            })
        }

        fn list(&self, path: &str) -> Result<Vec<Entry>> {
            Ok(vec![self.entry(path)?])
        }

        fn open_file(&self, path: &str) -> Result<Box<dyn crate::fs::FileRead + '_>> {
            Err(Error::Path(format!("{path}: a folder")))
        }
    }

    #[test]
    fn a_folder_that_holds_itself_is_refused_by_extract_and_find() {
        let dir = tempfile::tempdir().expect("tempdir");
        // extract stops at the depth bound, or before it at the system's path length bound
        // (ENAMETOOLONG), whichever comes first: an error naming the path, never a loop.
        let e = extract(&Looping, "/", &dir.path().join("out"), false, &|_| {})
            .expect_err("a loop")
            .to_string();
        assert!(
            e.contains("deeper than 1024 folders") || e.contains("File name too long"),
            "{}",
            &e[e.len().saturating_sub(200)..]
        );
        let mut seen = 0u64;
        let e = crate::find(&Looping, "/", &|_| true, &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .expect_err("a loop")
        .to_string();
        assert!(
            e.contains("deeper than 1024 folders") && seen > 1000,
            "{e} after {seen}"
        );
    }

    #[test]
    fn names_that_would_leave_dest_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "/etc", "a\0b"] {
            let e = check_name("/etc", bad).expect_err(bad).to_string();
            assert!(e.contains("/etc") && e.contains("outside DEST"), "{e}");
        }
        for good in ["...", "..a", "a..", "ünïcode", " ", "-rf"] {
            check_name("/", good).expect(good);
        }
    }
}

//! Where a restore writes, and the rules that keep it from destroying anything.
//!
//! - A regular file is written under a temporary name beside it (`.NAME.cairn-partial-PID`)
//!   and renamed into place only when the whole restore succeeded; a failed restore removes
//!   its temporary file, so nothing that looks like a result is left. An existing file is
//!   never replaced unless the caller says so (`force`); it stays untouched until the rename.
//! - A block device, a pipe or another non-regular file that exists is written in place, every
//!   byte in order (it has no holes and cannot be renamed over). A block device is a disk that
//!   may hold data: as with a file, only with `force`, only for a raw restore, and only when it
//!   is at least as large as the point (checked before the first write).
//! - `-` is standard output.
//! - A VHD chain goes into a folder that is new or empty (unless `force`); its files are written
//!   under temporary names and renamed, in chain order, once all of them are written.
//!
//! The folder a file or chain goes into must exist (a chain's own folder is created): a typo in
//! a path is an error naming the folder, not a new tree of folders.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::direct::{self, Direct, InOrder};
use crate::{Error, Result};

/// What a restore writes to, every rule checked ([`plan`], [`plan_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Standard output.
    Stdout,
    /// A new file.
    NewFile,
    /// An existing file, replaced once the restore has succeeded (`force`).
    ReplaceFile,
    /// A block device, written in place (`force`, raw, large enough).
    Device,
    /// A pipe or another file that is not a regular one, written in place.
    InPlace,
    /// A new folder (a chain).
    NewFolder,
    /// An empty folder (a chain).
    EmptyFolder,
    /// A folder holding files (a chain, `force`).
    FullFolder,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stdout => "standard output",
            Self::NewFile => "a new file",
            Self::ReplaceFile => "the existing file, replaced once the restore has succeeded",
            Self::Device => "the block device, in place",
            Self::InPlace => "the pipe, in order",
            Self::NewFolder => "a new folder",
            Self::EmptyFolder => "the empty folder",
            Self::FullFolder => "the folder, beside the files it holds",
        })
    }
}

/// Checks every rule for writing a raw image or a VHD (`raw_size` `None`) to `out` and says
/// what the restore would write to; creates and changes nothing.
///
/// # Errors
/// An existing regular file or block device without `force`, a block device for a VHD or
/// smaller than `raw_size` (the point's size, for a raw restore), a folder given as a file, a
/// folder that does not exist, I/O errors.
pub(crate) fn plan(out: &Path, force: bool, raw_size: Option<u64>) -> Result<Plan> {
    if out == Path::new("-") {
        return Ok(Plan::Stdout);
    }
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => Err(Error::Refused(format!(
            "{} is a folder: give a file name (a folder is for --format vhd-chain)",
            out.display()
        ))),
        Ok(m) if !m.is_file() => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_block_device() {
                return Ok(Plan::InPlace);
            }
            let f = File::open(out).map_err(io_err(out, "opening"))?;
            check_device(out, &f, force, raw_size)?;
            Ok(Plan::Device)
        }
        Ok(_) if !force => Err(Error::Refused(format!(
            "{} exists; it is left as it is (pass --force to replace it once the restore \
             has succeeded)",
            out.display()
        ))),
        Ok(_) => {
            folder_exists(out)?;
            Ok(Plan::ReplaceFile)
        }
        Err(_) => {
            folder_exists(out)?;
            Ok(Plan::NewFile)
        }
    }
}

/// An output being written.
pub(crate) enum Output {
    /// Standard output.
    Stdout,
    /// An existing non-regular file (block device, pipe), written in place.
    InPlace(File, PathBuf),
    /// A regular file, written under a temporary name.
    Staged(File, Staged),
}

impl Output {
    /// Opens `out` for a restore. `-` is standard output.
    ///
    /// # Errors
    /// As [`plan`]; I/O errors.
    pub(crate) fn open(out: &Path, force: bool, raw_size: Option<u64>) -> Result<Self> {
        match plan(out, force, raw_size)? {
            Plan::Stdout => Ok(Self::Stdout),
            Plan::Device | Plan::InPlace => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(out)
                    .map_err(io_err(out, "opening"))?;
                Ok(Self::InPlace(f, out.to_path_buf()))
            }
            _ => {
                if let Some(dir) = out.parent() {
                    crate::partials::remove_stale(if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    });
                }
                let staged = Staged::new(out);
                let f = staged.create()?;
                Ok(Self::Staged(f, staged))
            }
        }
    }

    /// A writer for the output's bytes in order: a regular file or a block device past the
    /// page cache where it can be (see [`Direct`]).
    ///
    /// # Errors
    /// The file's descriptor cannot be duplicated.
    pub(crate) fn writer(&self) -> Result<Box<dyn Write + '_>> {
        use std::os::unix::fs::FileTypeExt;
        Ok(match self {
            Self::Stdout => Box::new(std::io::stdout().lock()),
            Self::Staged(f, staged) => Box::new(in_order(f, staged.tmp())?),
            Self::InPlace(f, path)
                if f.metadata().is_ok_and(|m| m.file_type().is_block_device()) =>
            {
                Box::new(in_order(f, path)?)
            }
            Self::InPlace(f, _) => Box::new(f),
        })
    }

    /// The output written at offsets when it is a regular file (it may then be written out of
    /// order and keep holes), past the page cache where it can be (see [`Direct`]).
    ///
    /// # Errors
    /// The file's descriptor cannot be duplicated.
    pub(crate) fn at_offsets(&self) -> Result<Option<Direct>> {
        let Self::Staged(f, staged) = self else {
            return Ok(None);
        };
        let direct = direct::reopen(staged.tmp());
        f.try_clone()
            .and_then(|cached| Direct::new(cached, direct))
            .map(Some)
            .map_err(io_err(staged.tmp(), "opening"))
    }

    /// Puts a finished output in place.
    ///
    /// # Errors
    /// The rename failing.
    pub(crate) fn finish(self) -> Result<()> {
        match self {
            Self::Staged(f, staged) => {
                drop(f);
                staged.commit()
            }
            Self::Stdout | Self::InPlace(..) => Ok(()),
        }
    }
}

/// A file being written under a temporary name beside its target; removed when dropped before
/// [`Staged::commit`].
pub(crate) struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    pub(crate) fn new(target: &Path) -> Self {
        let tmp = crate::partials::temp_name(target);
        crate::partials::register(&tmp);
        Self {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        }
    }

    /// Creates the temporary file: a new file only (`O_EXCL`), never through a symbolic link
    /// (`O_NOFOLLOW`): a link planted under its name in a shared folder makes the restore fail,
    /// and is not followed to overwrite what it points at.
    pub(crate) fn create(&self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.tmp)
            .map_err(io_err(
                &self.tmp,
                "creating (a new file, not through a link)",
            ))
    }

    pub(crate) fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Renames the file into place.
    pub(crate) fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(io_err(
            &self.target,
            "renaming the finished restore into place",
        ))?;
        self.committed = true;
        crate::partials::unregister(&self.tmp);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
            crate::partials::unregister(&self.tmp);
        }
    }
}

/// The folder a chain is restored into: created when new (its parent must exist), refused when
/// it holds anything unless `force`. Returns whether it was created.
pub(crate) fn chain_folder(out: &Path, force: bool) -> Result<bool> {
    // What an interrupted restore into it left (its writer gone) does not make it "not empty".
    crate::partials::remove_stale(out);
    if plan_chain(out, force)? == Plan::NewFolder {
        std::fs::create_dir(out).map_err(io_err(out, "creating the folder"))?;
        return Ok(true);
    }
    Ok(false)
}

/// Checks the rules for a chain's folder (new, or empty, or `force`) and says which it is;
/// creates nothing.
///
/// # Errors
/// A folder holding files without `force`, a file, a parent folder that does not exist.
pub(crate) fn plan_chain(out: &Path, force: bool) -> Result<Plan> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            let full = entries.any(|e| {
                e.ok()
                    .is_some_and(|e| !crate::partials::is_stale(&e.path()))
            });
            if full && !force {
                return Err(Error::Refused(format!(
                    "folder {} is not empty: a chain is restored into a new or empty folder, so \
                     that no earlier VHD mixes into it (pass --force to write into it anyway)",
                    out.display()
                )));
            }
            Ok(if full {
                Plan::FullFolder
            } else {
                Plan::EmptyFolder
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            folder_exists(out)?;
            Ok(Plan::NewFolder)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(Error::Refused(format!(
            "{} is a file: --format vhd-chain writes a folder",
            out.display()
        ))),
        Err(e) => Err(io_err(out, "reading the folder")(e)),
    }
}

/// Fails, naming the folder, when the folder `path` goes into does not exist.
fn folder_exists(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "folder {} does not exist (create it first)",
            parent.display()
        )))
    }
}

/// A writer of `f`'s bytes in order from its start (`path`: the same file), past the page
/// cache where it can be.
///
/// # Errors
/// The file's descriptor cannot be duplicated.
pub(crate) fn in_order(f: &File, path: &Path) -> Result<InOrder> {
    let direct = direct::reopen(path);
    f.try_clone()
        .and_then(|cached| Direct::new(cached, direct))
        .map(InOrder::new)
        .map_err(io_err(path, "opening"))
}

pub(crate) fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let (path, what) = (path.to_path_buf(), what.to_owned());
    move |source| Error::Io { path, what, source }
}

/// Refuses a block device a restore may not write: without `force` (it may hold data, as an
/// existing file may), for a VHD (`raw_size` `None`: a VHD file on a disk is nobody's disk), or
/// smaller than the point (the restore could never finish, and would have destroyed what the
/// device held by the time it failed).
fn check_device(out: &Path, f: &File, force: bool, raw_size: Option<u64>) -> Result<()> {
    use std::io::Seek;
    let Some(need) = raw_size else {
        return Err(Error::Refused(format!(
            "{} is a block device: a VHD is a file; restore --format raw onto a device",
            out.display()
        )));
    };
    if !force {
        return Err(Error::Refused(format!(
            "{} is a block device and may hold data; it is left as it is (pass --force to \
             overwrite it with the point)",
            out.display()
        )));
    }
    let have = (&*f)
        .seek(std::io::SeekFrom::End(0))
        .map_err(io_err(out, "finding the device's size"))?;
    (&*f)
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_err(out, "finding the device's size"))?;
    if have < need {
        return Err(Error::Refused(format!(
            "{} holds {have} bytes, the point {need}: nothing was written (a device at least as \
             large as the disk is needed)",
            out.display()
        )));
    }
    Ok(())
}

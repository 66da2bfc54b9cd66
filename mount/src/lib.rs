//! A recovery point mounted read-only through FUSE (`cairn mount POINT DIR`), for the tools
//! people already use (grep, rsync, diff, a file manager):
//!
//! ```text
//! DIR/disk.raw     the whole disk, as a raw image
//! DIR/p1/          a partition whose file system cairn reads (ext2/3/4, FAT, NTFS)
//! DIR/p3.raw       a partition it does not read (XFS, swap...): its raw bytes
//! ```
//!
//! - **Read-only.** A point never changes: an open for writing gets `EROFS`, and there is no
//!   write, create, rename or remove at all. The kernel may cache what it read for the mount's
//!   life.
//! - **Read in place.** Reads go through `cairn-files` to the store's chunks (a store folder,
//!   `cairn serve`, a bucket, an encrypted store with its key): only the chunks touched are
//!   read, each checked against its id. A chunk that is missing or bad fails that read with
//!   `EIO`, named on stderr; the mount stays up.
//! - **Owners and modes as the guest had them**, not enforced (no `default_permissions`): the
//!   mount is reachable by the user who made it only (FUSE's default), who could read every
//!   byte of the point with `cairn cat` anyway.
//! - **Ends cleanly** on [`Mounted::unmount`] (Ctrl-C in `cairn mount`) and on
//!   `fusermount -u DIR` (then [`Mounted::ended`] fires). A mounting process killed with
//!   SIGKILL leaves the folder as "transport endpoint is not connected" until
//!   `fusermount -u DIR`, as any FUSE mount.
//!
//! The file systems live on one thread ([`worker`]); the FUSE session forwards each request
//! to it.

pub mod nodes;
mod worker;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_files::DiskFiles;
use crossbeam_channel::{Receiver, Sender};
use fuser::{
    FileHandle, Filesystem, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use worker::Op;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The mount point is not an empty folder.
    #[error("{}: {why}", dir.display())]
    MountPoint {
        /// The folder.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A partition could not be read.
    #[error("{0}")]
    Files(String),
    /// The kernel or `fusermount3` refused the mount.
    #[error(
        "mounting at {}: {source} (FUSE needs /dev/fuse and, for a user other than root, \
         fusermount3 from the fuse3 package)",
        dir.display()
    )]
    Fuse {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One entry of the mount's root folder, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// Its name (`disk.raw`, `p1/`, `p3.raw`).
    pub name: String,
    /// What it holds.
    pub what: String,
}

/// A mounted point.
pub struct Mounted {
    session: fuser::BackgroundSession,
    ended: Receiver<()>,
    /// Set when the session ended (the kernel unmounted it).
    gone: Arc<AtomicBool>,
    shown: Vec<Shown>,
    dir: PathBuf,
}

impl Mounted {
    /// What the mount's root folder holds.
    #[must_use]
    pub fn shown(&self) -> &[Shown] {
        &self.shown
    }

    /// Where it is mounted.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fires once the mount has ended from outside (`fusermount -u DIR`, `umount DIR`).
    #[must_use]
    pub fn ended(&self) -> &Receiver<()> {
        &self.ended
    }

    /// Unmounts it (if it still is) and waits for its threads.
    ///
    /// # Errors
    /// The kernel refusing the unmount (a process inside the folder: `umount` says busy).
    pub fn unmount(self) -> Result<(), Error> {
        let dir = self.dir.clone();
        let done = if self.gone.load(Ordering::Acquire) {
            self.session.join()
        } else {
            self.session.umount_and_join()
        };
        done.map_err(|source| Error::Fuse { dir, source })
    }
}

/// Asks the kernel to unmount `dir` (through `fusermount3 -u`, as any user may for a mount of
/// theirs); the mount's [`Mounted::ended`] then fires.
///
/// # Errors
/// The kernel refusing (something uses the folder: a shell in it, an open file), said as
/// `fusermount3` says it; `fusermount3` missing.
pub fn ask_unmount(dir: &Path) -> Result<(), Error> {
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(dir)
        .output()
        .map_err(|source| Error::Fuse {
            dir: dir.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::MountPoint {
        dir: dir.to_path_buf(),
        why: format!(
            "not unmounted: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// What a mount says of itself.
#[derive(Debug, Clone)]
pub struct About {
    /// Its name in the system's list of mounts (`cairn:1a2b3c4d5e6f`).
    pub name: String,
    /// The time its made-up entries (the root, the raw files) show, in seconds since 1970.
    pub time: i64,
}

/// Mounts `files` at `dir` (an empty folder), read-only, in the background of this process.
///
/// # Errors
/// `dir` not an empty folder; a partition whose file system does not open; FUSE refusing.
pub fn mount(files: DiskFiles, about: &About, dir: &Path) -> Result<Mounted, Error> {
    let bad = |why: &str| Error::MountPoint {
        dir: dir.to_path_buf(),
        why: why.to_owned(),
    };
    let mut inside = std::fs::read_dir(dir).map_err(|e| bad(&e.to_string()))?;
    if inside.next().is_some() {
        return Err(bad("not empty: a point is mounted on an empty folder only"));
    }
    let (name, time) = (about.name.clone(), about.time);
    let (ops_tx, ops_rx) = crossbeam_channel::bounded::<Op>(64);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("cairn-mount".into())
        .spawn(move || worker::run(files, time, &ops_rx, &ready_tx))
        .map_err(|e| Error::Files(format!("starting the mount's thread: {e}")))?;
    let shown = ready_rx
        .recv()
        .map_err(|_| Error::Files("the mount's thread ended before it began".into()))?
        .map_err(Error::Files)?;
    let (ended_tx, ended) = crossbeam_channel::bounded(1);
    let gone = Arc::new(AtomicBool::new(false));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(name),
        MountOption::Subtype("cairn".into()),
    ];
    let bridge = Bridge {
        ops: ops_tx,
        ended: ended_tx,
        gone: Arc::clone(&gone),
    };
    let session = fuser::spawn_mount(bridge, dir, &config).map_err(|source| Error::Fuse {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(Mounted {
        session,
        ended,
        gone,
        shown,
        dir: dir.to_path_buf(),
    })
}

/// The FUSE session's side: every request is handed to the worker with its reply.
struct Bridge {
    ops: Sender<Op>,
    ended: Sender<()>,
    gone: Arc<AtomicBool>,
}

impl Bridge {
    /// Hands `op` to the worker. If it is gone its reply is dropped, which answers `EIO`.
    fn send(&self, op: Op) {
        let _ = self.ops.send(op);
    }
}

impl Filesystem for Bridge {
    fn destroy(&mut self) {
        self.gone.store(true, Ordering::Release);
        let _ = self.ended.try_send(());
    }

    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.send(Op::Lookup {
            parent: parent.0,
            name: name.to_owned(),
            reply,
        });
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        self.send(Op::GetAttr { ino: ino.0, reply });
    }

    fn readlink(&self, _: &Request, ino: INodeNo, reply: ReplyData) {
        self.send(Op::ReadLink { ino: ino.0, reply });
    }

    fn open(&self, _: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.send(Op::Open {
            ino: ino.0,
            flags,
            reply,
        });
    }

    fn read(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.send(Op::Read {
            fh: fh.0,
            offset,
            size,
            reply,
        });
    }

    fn release(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        _: OpenFlags,
        _: Option<LockOwner>,
        _: bool,
        reply: ReplyEmpty,
    ) {
        self.send(Op::Release { fh: fh.0, reply });
    }

    fn opendir(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        self.send(Op::OpenDir { ino: ino.0, reply });
    }

    fn readdir(&self, _: &Request, _: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        self.send(Op::ReadDir {
            fh: fh.0,
            offset,
            reply,
        });
    }

    fn releasedir(&self, _: &Request, _: INodeNo, fh: FileHandle, _: OpenFlags, reply: ReplyEmpty) {
        self.send(Op::ReleaseDir { fh: fh.0, reply });
    }

    fn statfs(&self, _: &Request, _: INodeNo, reply: ReplyStatfs) {
        self.send(Op::StatFs { reply });
    }
}

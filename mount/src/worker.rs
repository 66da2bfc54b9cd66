//! The thread that owns a mount's file systems and answers the kernel's requests, one at a
//! time, in the order they came.
//!
//! The file systems live on this one thread: `ext4-view`'s are not `Send`, and each keeps one
//! file handle's state. Open files keep their reader (a sequential read goes on where the last
//! one stopped; a read elsewhere seeks); open folders keep their listing until released, so a
//! `readdir` that comes back at an offset sees the listing it started with.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, UNIX_EPOCH};

use cairn_files::{DiskFiles, Entry, EntryKind, FileRead, FileSystem, Slice};
use crossbeam_channel::{Receiver, Sender};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenAccMode, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
};

use crate::Shown;
use crate::nodes::{self, Nodes, Place};

/// How long the kernel may keep what it was told: a point never changes.
const TTL: Duration = Duration::from_secs(3600);

/// A request from the kernel, with its reply.
pub enum Op {
    Lookup {
        parent: u64,
        name: OsString,
        reply: ReplyEntry,
    },
    GetAttr {
        ino: u64,
        reply: ReplyAttr,
    },
    ReadLink {
        ino: u64,
        reply: ReplyData,
    },
    Open {
        ino: u64,
        flags: OpenFlags,
        reply: ReplyOpen,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    },
    Release {
        fh: u64,
        reply: ReplyEmpty,
    },
    OpenDir {
        ino: u64,
        reply: ReplyOpen,
    },
    ReadDir {
        fh: u64,
        offset: u64,
        reply: ReplyDirectory,
    },
    ReleaseDir {
        fh: u64,
        reply: ReplyEmpty,
    },
    StatFs {
        reply: ReplyStatfs,
    },
}

/// An open file: its reader and where it stands.
enum Handle<'s> {
    Raw(Slice),
    File {
        read: Box<dyn FileRead + 's>,
        pos: u64,
        path: String,
    },
}

/// Opens `files`' file systems, says what the mount shows on `ready`, then answers `ops` until
/// the mount ends (the channel closes). Made-up entries are dated `time`.
pub fn run(
    files: DiskFiles,
    time: i64,
    ops: &Receiver<Op>,
    ready: &Sender<Result<Vec<Shown>, String>>,
) {
    let disk = files.whole_disk();
    let mut systems: Vec<Box<dyn FileSystem>> = Vec::new();
    let mut top = vec![(
        Place::Raw(disk.clone()),
        nodes::made_up("disk.raw", EntryKind::File, disk.len(), time),
    )];
    let mut shown = vec![Shown {
        name: "disk.raw".into(),
        what: "the whole disk".into(),
    }];
    for p in files.partitions() {
        let kind = match files.detect(p) {
            Ok(k) => k,
            Err(e) => {
                let _ = ready.send(Err(format!("{}: {e}", p.name)));
                return;
            }
        };
        let opened = kind.readable().then(|| files.open_fs(p));
        match opened {
            Some(Ok(fs)) => {
                let root = match fs.entry("/") {
                    Ok(mut e) => {
                        e.name.clone_from(&p.name);
                        e
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("{}: {e}", p.name)));
                        return;
                    }
                };
                top.push((
                    Place::InFs {
                        sys: systems.len(),
                        path: "/".into(),
                    },
                    root,
                ));
                systems.push(fs);
                shown.push(Shown {
                    name: format!("{}/", p.name),
                    what: format!("{} file system{}", kind.name(), label(p)),
                });
            }
            other => {
                let why = match other {
                    Some(Err(e)) => format!(" (its {} does not open: {e})", kind.name()),
                    _ => format!(" ({})", kind.name()),
                };
                if p.name == "disk" {
                    // The disk itself is already there as `disk.raw`.
                    continue;
                }
                let name = format!("{}.raw", p.name);
                top.push((
                    Place::Raw(files.slice(p)),
                    nodes::made_up(&name, EntryKind::File, p.size, time),
                ));
                shown.push(Shown {
                    name,
                    what: format!("raw bytes of {}{}{why}", p.name, label(p)),
                });
            }
        }
    }
    let mut nodes = Nodes::new(nodes::made_up("/", EntryKind::Dir, 0, time), top);
    if ready.send(Ok(shown)).is_err() {
        return;
    }
    let mut state = State {
        systems: &systems,
        handles: HashMap::new(),
        dirs: HashMap::new(),
        next_fh: 1,
    };
    for op in ops {
        state.answer(&mut nodes, op);
    }
}

fn label(p: &cairn_files::Partition) -> String {
    p.label
        .as_deref()
        .map(|l| format!(", labelled {l:?}"))
        .unwrap_or_default()
}

/// What is open, over the file systems `systems`.
struct State<'s> {
    systems: &'s [Box<dyn FileSystem>],
    handles: HashMap<u64, Handle<'s>>,
    /// Open folders' listings: number, type, name.
    dirs: HashMap<u64, Vec<(u64, FileType, String)>>,
    next_fh: u64,
}

impl<'s> State<'s> {
    fn answer(&mut self, nodes: &mut Nodes, op: Op) {
        match op {
            Op::Lookup {
                parent,
                name,
                reply,
            } => match self.lookup(nodes, parent, &name) {
                Some(ino) => match nodes.get(ino) {
                    Some(n) => reply.entry(&TTL, &attr(ino, &n.entry), Generation(0)),
                    None => reply.error(Errno::ENOENT),
                },
                None => reply.error(Errno::ENOENT),
            },
            Op::GetAttr { ino, reply } => match nodes.get(ino) {
                Some(n) => reply.attr(&TTL, &attr(ino, &n.entry)),
                None => reply.error(Errno::ENOENT),
            },
            Op::ReadLink { ino, reply } => {
                match nodes.get(ino).and_then(|n| n.entry.link.as_deref()) {
                    Some(target) => reply.data(target.as_bytes()),
                    None => reply.error(Errno::EINVAL),
                }
            }
            Op::Open { ino, flags, reply } => {
                if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) {
                    reply.error(Errno::EROFS);
                    return;
                }
                match self.open(nodes, ino) {
                    Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                    Err(e) => reply.error(e),
                }
            }
            Op::Read {
                fh,
                offset,
                size,
                reply,
            } => match self.read(fh, offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(e),
            },
            Op::Release { fh, reply } => {
                self.handles.remove(&fh);
                reply.ok();
            }
            Op::OpenDir { ino, reply } => match self.open_dir(nodes, ino) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            },
            Op::ReadDir {
                fh,
                offset,
                mut reply,
            } => {
                let Some(listing) = self.dirs.get(&fh) else {
                    reply.error(Errno::EBADF);
                    return;
                };
                for (k, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), k as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Op::ReleaseDir { fh, reply } => {
                self.dirs.remove(&fh);
                reply.ok();
            }
            Op::StatFs { reply } => {
                let blocks = nodes
                    .top()
                    .first()
                    .and_then(|&ino| nodes.get(ino))
                    .map_or(0, |n| n.entry.size / 4096);
                reply.statfs(blocks, 0, 0, nodes.len() as u64, 0, 4096, 255, 4096);
            }
        }
    }

    /// The number of `name` in folder `parent`, numbering it now if it was not yet.
    fn lookup(&self, nodes: &mut Nodes, parent: u64, name: &OsString) -> Option<u64> {
        let name = name.to_str()?;
        let (sys, dir) = match &nodes.get(parent)?.place {
            Place::Root => {
                return nodes
                    .top()
                    .iter()
                    .copied()
                    .find(|&ino| nodes.get(ino).is_some_and(|n| n.entry.name == name));
            }
            Place::InFs { sys, path } => (*sys, path.clone()),
            Place::Raw(_) => return None,
        };
        let path = nodes::join(&dir, name);
        let fs = self.systems.get(sys)?;
        // A name the kernel asks about that is not there is the common case (a shell's
        // completion, a tool probing for a file): not worth a word.
        nodes
            .intern(sys, &path, || {
                fs.entry(&path).map(|mut e| {
                    e.name = name.to_owned();
                    e
                })
            })
            .ok()
    }

    fn open(&mut self, nodes: &Nodes, ino: u64) -> Result<u64, Errno> {
        let node = nodes.get(ino).ok_or(Errno::ENOENT)?;
        let handle = match (&node.place, node.entry.kind) {
            (Place::Raw(slice), _) => Handle::Raw(slice.clone()),
            (Place::InFs { sys, path }, EntryKind::File) => {
                let fs = self.systems.get(*sys).ok_or(Errno::EIO)?;
                let read = fs.open_file(path).map_err(|e| said(path, &e))?;
                Handle::File {
                    read,
                    pos: 0,
                    path: path.clone(),
                }
            }
            (_, EntryKind::Dir) => return Err(Errno::EISDIR),
            _ => return Err(Errno::EACCES),
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        Ok(fh)
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match self.handles.get_mut(&fh).ok_or(Errno::EBADF)? {
            Handle::Raw(slice) => {
                let n = slice.len().saturating_sub(offset).min(u64::from(size)) as usize;
                let mut buf = vec![0u8; n];
                slice
                    .read_at(offset, &mut buf)
                    .map_err(|e| said("raw bytes", &e))?;
                Ok(buf)
            }
            Handle::File { read, pos, path } => {
                if *pos != offset {
                    read.seek(SeekFrom::Start(offset))
                        .map_err(|e| said(path, &e))?;
                    *pos = offset;
                }
                let mut buf = vec![0u8; size as usize];
                let mut n = 0;
                while n < buf.len() {
                    match read.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(said(path, &e)),
                    }
                }
                buf.truncate(n);
                *pos += n as u64;
                Ok(buf)
            }
        }
    }

    fn open_dir(&mut self, nodes: &mut Nodes, ino: u64) -> Result<u64, Errno> {
        let node = nodes.get(ino).ok_or(Errno::ENOENT)?;
        let mut listing = vec![
            (ino, FileType::Directory, ".".to_owned()),
            (ino, FileType::Directory, "..".to_owned()),
        ];
        match &node.place {
            Place::Root => {
                for &child in nodes.top() {
                    if let Some(n) = nodes.get(child) {
                        listing.push((child, kind(&n.entry), n.entry.name.clone()));
                    }
                }
            }
            Place::InFs { sys, path } => {
                let (sys, path) = (*sys, path.clone());
                let fs = self.systems.get(sys).ok_or(Errno::EIO)?;
                for e in fs.list(&path).map_err(|e| said(&path, &e))? {
                    let child = nodes::join(&path, &e.name);
                    let t = kind(&e);
                    let name = e.name.clone();
                    let ino = nodes
                        .intern(sys, &child, || Ok(e))
                        .map_err(|e| said(&child, &e))?;
                    listing.push((ino, t, name));
                }
            }
            Place::Raw(_) => return Err(Errno::ENOTDIR),
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, listing);
        Ok(fh)
    }
}

/// Says on stderr why a request failed (the kernel hears only "I/O error"), naming the path.
fn said(path: &str, e: &dyn std::fmt::Display) -> Errno {
    eprintln!("cairn mount: {path}: {e}");
    Errno::EIO
}

fn kind(e: &Entry) -> FileType {
    match e.kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Other => match e.mode & 0o170_000 {
            0o020_000 => FileType::CharDevice,
            0o060_000 => FileType::BlockDevice,
            0o140_000 => FileType::Socket,
            _ => FileType::NamedPipe,
        },
    }
}

fn attr(ino: u64, e: &Entry) -> FileAttr {
    let t = if e.mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(e.mtime.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(e.mtime.unsigned_abs())
    };
    FileAttr {
        ino: INodeNo(ino),
        size: e.size,
        blocks: e.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind(e),
        perm: e.mode & 0o7777,
        nlink: if e.kind == EntryKind::Dir { 2 } else { 1 },
        uid: e.uid,
        gid: e.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

//! What a mount shows, numbered as the kernel wants it (inode numbers): the root folder;
//! `disk.raw`, the whole disk; each partition whose file system cairn reads as a folder named
//! after it (`p1`, `p2`...); each other partition as raw bytes (`p3.raw`, for the system's own
//! tools: `mount -o loop,ro` of an XFS partition, `file -s`); then the file systems' entries,
//! numbered as they are first looked up.
//!
//! A point never changes, so a number names one thing for the mount's whole life and what it
//! names is kept (its entry, read once). The table grows with what was looked at, not with what
//! the disk holds: a mount that lists one folder of a million-file disk numbers that folder.

use std::collections::HashMap;

use cairn_files::{Entry, EntryKind, Slice};

/// The root folder's number (FUSE's).
pub const ROOT: u64 = 1;

/// Where a numbered thing is.
pub enum Place {
    /// The mount's root folder.
    Root,
    /// Raw bytes: the disk, or a partition whose file system cairn does not read.
    Raw(Slice),
    /// A path inside file system number `sys` (see the worker's list of file systems).
    InFs {
        /// Which file system.
        sys: usize,
        /// Its absolute path there.
        path: String,
    },
}

/// One numbered thing.
pub struct Node {
    /// Where it is.
    pub place: Place,
    /// What it is (as `ls -l` shows it).
    pub entry: Entry,
}

/// Every number given so far.
pub struct Nodes {
    /// Node `ino` at index `ino - 1`.
    nodes: Vec<Node>,
    /// The number of each file-system path numbered so far.
    by_path: HashMap<(usize, String), u64>,
    /// The root folder's entries.
    top: Vec<u64>,
}

impl Nodes {
    /// A table holding the root folder (`root`) and its entries (`top`).
    #[must_use]
    pub fn new(root: Entry, top: Vec<(Place, Entry)>) -> Self {
        let mut nodes = Self {
            nodes: vec![Node {
                place: Place::Root,
                entry: root,
            }],
            by_path: HashMap::new(),
            top: Vec::new(),
        };
        for (place, entry) in top {
            let ino = nodes.push(place, entry);
            nodes.top.push(ino);
        }
        nodes
    }

    fn push(&mut self, place: Place, entry: Entry) -> u64 {
        if let Place::InFs { sys, path } = &place {
            self.by_path
                .insert((*sys, path.clone()), self.nodes.len() as u64 + 1);
        }
        self.nodes.push(Node { place, entry });
        self.nodes.len() as u64
    }

    /// Node `ino`, if it was given.
    #[must_use]
    pub fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(usize::try_from(i).ok()?))
    }

    /// The root folder's entries.
    #[must_use]
    pub fn top(&self) -> &[u64] {
        &self.top
    }

    /// How many numbers were given.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none was (never: the root is always there).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The number of `path` in file system `sys`, given now if it has none; `entry` is what
    /// it is, read by the caller when the path was not numbered yet.
    pub fn intern(
        &mut self,
        sys: usize,
        path: &str,
        entry: impl FnOnce() -> cairn_files::Result<Entry>,
    ) -> cairn_files::Result<u64> {
        if let Some(&ino) = self.by_path.get(&(sys, path.to_owned())) {
            return Ok(ino);
        }
        let entry = entry()?;
        Ok(self.push(
            Place::InFs {
                sys,
                path: path.to_owned(),
            },
            entry,
        ))
    }
}

/// The entry of something the mount makes up (its root folder, a raw file): owned by root,
/// readable by all, dated at the point's time.
#[must_use]
pub fn made_up(name: &str, kind: EntryKind, size: u64, mtime: i64) -> Entry {
    let mode = match kind {
        EntryKind::Dir => 0o040_555,
        _ => 0o100_444,
    };
    Entry {
        name: name.to_owned(),
        kind,
        size,
        mode,
        uid: 0,
        gid: 0,
        mtime,
        link: None,
    }
}

/// `name` inside folder `dir` (both absolute paths of one file system).
#[must_use]
pub fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_keeps_its_first_number_and_is_read_once() {
        let root = made_up("/", EntryKind::Dir, 0, 0);
        let mut nodes = Nodes::new(root, Vec::new());
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(made_up("a", EntryKind::File, 3, 0))
        };
        let a = nodes.intern(0, "/a", read).expect("a");
        assert_eq!(nodes.intern(0, "/a", read).expect("a again"), a);
        // The same path in another file system is another thing.
        let other = nodes.intern(1, "/a", read).expect("other a");
        assert_eq!(reads.get(), 2);
        assert_ne!(a, other);
        assert_eq!(nodes.get(a).map(|n| n.entry.size), Some(3));
        assert!(nodes.get(0).is_none() && nodes.get(99).is_none());
        assert_eq!(nodes.get(ROOT).map(|n| n.entry.name.as_str()), Some("/"));
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a/", "x"), "/a/x");
    }
}

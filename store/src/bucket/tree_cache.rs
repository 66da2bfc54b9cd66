//! This machine's copies of the tree chunks of a store in a bucket.

use crate::chunk::{self, ChunkId};
use crate::pack::{self, FRAME_HEADER_SIZE, FrameHeader};

/// Where a store in a bucket keeps copies of its tree chunks (`STORE/cache/trees/ab/ID`).
pub const TREE_CACHE: &str = "cache/trees";

/// Copies of tree chunks' frames on this machine, for a store in a bucket: a walk of a point's
/// tree (every backup reads its parent's, every restore its point's) reads them one after the
/// other, and each would otherwise be a round trip. Only a cache: an entry is checked against
/// its id (decoded and hashed) each time it is read, one that is not what it says is dropped
/// and read from the bucket again, and gc drops the entries of chunks it removes. Entries are
/// written without fsync (a torn one fails its check).
#[derive(Clone, Debug)]
pub struct TreeCache(std::path::PathBuf);

impl TreeCache {
    /// The cache of the store at `root`.
    #[must_use]
    pub fn of(root: &std::path::Path) -> Self {
        Self(root.join(TREE_CACHE))
    }

    fn path(&self, id: &ChunkId) -> std::path::PathBuf {
        let h = id.to_hex();
        self.0.join(&h[..2]).join(h)
    }

    /// The cached frame of `id`: its header, its stored bytes into `stored`.
    pub(crate) fn get(
        &self,
        keys: Option<&crate::Keys>,
        id: &ChunkId,
        stored: &mut Vec<u8>,
    ) -> Option<FrameHeader> {
        let path = self.path(id);
        let bytes = std::fs::read(&path).ok()?;
        let mut plain = Vec::new();
        let good = pack::parse_frame(&bytes, stored)
            .ok()
            .filter(|h| h.id == *id && chunk::check(keys, &h.stored(stored), &mut plain).is_ok());
        if good.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        good
    }

    /// Keeps a copy of a tree chunk's frame (best effort: a cache).
    pub(crate) fn put(&self, header: &FrameHeader, stored: &[u8]) {
        let path = self.path(&header.id);
        if path.exists() {
            return;
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER_SIZE as usize + stored.len());
        frame.extend_from_slice(&header.encode());
        frame.extend_from_slice(stored);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, &frame))
            .and_then(|()| std::fs::rename(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
    }

    /// Drops the entry of `id`, if any.
    pub(crate) fn drop_entry(&self, id: &ChunkId) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

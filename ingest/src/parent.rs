//! The parent point of a delta: which point a differencing VHD applies to, and copying the
//! stretches the delta does not hold from the parent's tree into the new point's, whole leaves
//! and nodes at a time.

use std::sync::Arc;

use cairn_store::tree::span;
use cairn_store::{ChunkRef, ChunkSink, RecoveryPoint, StoreRead, TreeWriter, Walk};

use crate::{Error, Request, Result};

/// The point a differencing VHD applies to: `--parent`, or the disk's latest point when it was
/// read from the VHD the delta names as its parent (`parent_uuid`).
pub(crate) fn choose_parent(
    store: &dyn StoreRead,
    req: &Request,
    shown: &str,
    parent_uuid: &str,
    size: u64,
) -> Result<RecoveryPoint> {
    let parent = match &req.parent {
        Some(p) => p.clone(),
        None => store.latest(&req.vm_key(), &req.disk)?.ok_or_else(|| {
            Error::Refused(format!(
                "{shown} is a differencing VHD, but disk {} of VM {} has no point to apply it to; back up the full disk first or pass --parent",
                req.disk, req.vm
            ))
        })?,
    };
    if req.parent.is_none() && parent.source.vhd_uuid.as_deref() != Some(parent_uuid) {
        return Err(Error::Refused(format!(
            "{shown}: the delta's parent is the VHD with UUID {parent_uuid}, but the latest point {} of {}/{} was read from {}; \
             applying it would give wrong data (pass --parent POINT to apply it anyway)",
            parent.short_id(),
            req.vm,
            req.disk,
            parent.source.vhd_uuid.as_deref().map_or_else(
                || format!("a {} source", parent.source.kind),
                |u| format!("the VHD with UUID {u}")
            )
        )));
    }
    if parent.size != size {
        return Err(Error::Refused(format!(
            "{shown}: the delta's disk is {size} bytes but its parent point {} is {} bytes",
            parent.short_id(),
            parent.size
        )));
    }
    if parent.chunk_size != store.config().chunk_size {
        return Err(Error::Refused(format!(
            "parent point {} has another chunk size",
            parent.short_id()
        )));
    }
    Ok(parent)
}

/// The point that changed blocks (a dirty bitmap, a changed-block list) apply to: `--parent`,
/// or the disk's latest point. Nothing can check that the changes were counted from it: the
/// admin's bitmap must have started at that backup (as Xen Orchestra and Proxmox keep it).
pub(crate) fn latest_or_given(
    store: &dyn StoreRead,
    req: &Request,
    shown: &str,
) -> Result<RecoveryPoint> {
    let parent = match &req.parent {
        Some(p) => p.clone(),
        None => store.latest(&req.vm_key(), &req.disk)?.ok_or_else(|| {
            Error::Refused(format!(
                "{shown}: changed blocks say what changed since the disk's last backup, but disk {} \
                 of VM {} has no point yet; back up the whole disk first (without \
                 --dirty-bitmap or --changed-blocks) or pass --parent",
                req.disk, req.vm
            ))
        })?,
    };
    if parent.chunk_size != store.config().chunk_size {
        return Err(Error::Refused(format!(
            "parent point {} has another chunk size",
            parent.short_id()
        )));
    }
    Ok(parent)
}

/// A parent point's tree, read forward as a delta's runs ask for its chunks: whole leaves and
/// nodes go into the new tree unread; a leaf is read only where a run starts or ends inside it.
pub(crate) struct ParentCopy<'s> {
    walk: Walk<'s>,
    point: String,
    chunk: u64,
    leaf: Option<(u64, Arc<[ChunkRef]>)>,
}

impl<'s> ParentCopy<'s> {
    pub(crate) fn new(store: &'s dyn StoreRead, parent: &RecoveryPoint) -> Result<Self> {
        Ok(Self {
            walk: Walk::new(store, parent)?,
            point: parent.short_id().to_owned(),
            chunk: u64::from(parent.chunk_size),
            leaf: None,
        })
    }

    /// Appends the parent's chunks `from..from + n` to `tree`.
    pub(crate) fn copy(
        &mut self,
        session: &mut dyn ChunkSink,
        tree: &mut TreeWriter,
        from: u64,
        n: u64,
    ) -> Result<()> {
        let end = from + n;
        let mut pos = from;
        while pos < end {
            if let Some((first, refs)) = &self.leaf
                && pos >= *first
                && pos < first + refs.len() as u64
            {
                let stop = end.min(first + refs.len() as u64);
                for r in &refs[(pos - first) as usize..(stop - first) as usize] {
                    tree.push(session, *r)?;
                }
                pos = stop;
                continue;
            }
            let Some(e) = self.walk.peek()? else {
                // Past the parent's end (a disk that grew): zeros.
                tree.push_zeros(session, end - pos)?;
                break;
            };
            if e.first + e.count <= pos {
                self.walk.skip();
                continue;
            }
            let whole = e.first == pos && e.count == span(e.level) && pos + e.count <= end;
            if whole && tree.aligned(e.level) {
                tree.push_subtree(session, e.id, e.level, e.count)?;
                self.walk.skip();
                pos += e.count;
                continue;
            }
            if self.walk.known_zero(&e.id) {
                let stop = end.min(e.first + e.count);
                tree.push_zeros(session, stop - pos)?;
                if stop == e.first + e.count {
                    self.walk.skip();
                }
                pos = stop;
                continue;
            }
            match self.walk.enter() {
                Ok(None) => {}
                Ok(Some((e, refs))) => self.leaf = Some((e.first, refs)),
                Err(err) => {
                    return Err(Error::Refused(format!(
                        "the parent point {} cannot be read at disk offset {}: {err}; nothing \
                         was stored. A key backup (`cairn backup --key`) reads the whole disk \
                         instead",
                        self.point,
                        e.first * self.chunk
                    )));
                }
            }
        }
        Ok(())
    }
}

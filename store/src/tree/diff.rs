//! Comparing two trees: the stretches where they differ, walking only the subtrees they do not
//! share; and looking refs up by position.

use std::sync::Arc;

use super::{Body, Extent, Walk};
use crate::access::StoreRead;
use crate::chunk::ChunkRef;
use crate::error::{Error, Result};

/// Calls `f(first, end)` for the stretches of chunks where the refs of `old` and `new` (points
/// of one chunk size) differ, in disk order: leaves and nodes that the two hold at the same
/// place are skipped unread, so the work follows what changed. Past the shorter point's end
/// every chunk differs. With `tolerate`, a stretch of `new` under a tree chunk that cannot be
/// read compares as zeros.
///
/// # Errors
/// A tree chunk that cannot be read.
pub fn differences(
    store: &dyn StoreRead,
    old: &crate::RecoveryPoint,
    new: &crate::RecoveryPoint,
    tolerate: bool,
    mut f: impl FnMut(u64, u64),
) -> Result<()> {
    let mut walk = Walk::new(store, new)?;
    let mut base = Spans {
        walk: Walk::new(store, old)?,
        held: None,
    };
    let old_total = old.chunk_count();
    let mut last: Option<(u64, u64)> = None;
    let mut emit = |from: u64, to: u64| match &mut last {
        Some((_, end)) if *end == from => *end = to,
        _ => {
            if let Some((a, b)) = last.replace((from, to)) {
                f(a, b);
            }
        }
    };
    loop {
        if let (Some(x), Some(y)) = (walk.peek()?, base.walk.peek()?)
            && x == y
        {
            walk.skip();
            base.walk.skip();
            continue;
        }
        let Some(x) = walk.next_extent()? else {
            break;
        };
        let mine: Option<Arc<[ChunkRef]>> = match x.body {
            Body::Refs(r) => Some(r),
            Body::Zero => None,
            Body::Unreadable(_) if tolerate => None,
            Body::Unreadable(what) => return Err(Error::Point(what)),
        };
        base.spans(x.first, x.count, |start, end, theirs| {
            if mine.is_none() && theirs.is_none() && end <= old_total {
                return;
            }
            for i in start..end {
                let ours = mine
                    .as_ref()
                    .map_or(ChunkRef::Zero, |r| r[(i - x.first) as usize]);
                let t = theirs.map_or(ChunkRef::Zero, |t| t[(i - start) as usize]);
                if i >= old_total || ours != t {
                    emit(i, i + 1);
                }
            }
        })?;
    }
    let new_total = new.chunk_count();
    if old_total > new_total {
        emit(new_total, old_total);
    }
    if let Some((a, b)) = last {
        f(a, b);
    }
    Ok(())
}

/// A point's refs, read forward over the stretches another walk asks about.
struct Spans<'s> {
    walk: Walk<'s>,
    held: Option<Extent>,
}

impl Spans<'_> {
    /// Calls `f(start, end, refs)` over `first..first + count` in order, in spans: `refs` the
    /// point's refs of the span, `None` for zeros (a hole, or past the point's end).
    fn spans(
        &mut self,
        first: u64,
        count: u64,
        mut f: impl FnMut(u64, u64, Option<&[ChunkRef]>),
    ) -> Result<()> {
        let end = first + count;
        let mut i = first;
        while i < end {
            if self.held.as_ref().is_none_or(|h| i >= h.first + h.count) {
                self.held = self.walk.next_extent_from(i)?;
            }
            match &self.held {
                Some(h) if h.first <= i => {
                    let stop = end.min(h.first + h.count);
                    match &h.body {
                        Body::Refs(r) => f(
                            i,
                            stop,
                            Some(&r[(i - h.first) as usize..(stop - h.first) as usize]),
                        ),
                        Body::Zero => f(i, stop, None),
                        Body::Unreadable(what) => return Err(Error::Point(what.clone())),
                    }
                    i = stop;
                }
                Some(h) => {
                    let stop = end.min(h.first);
                    f(i, stop, None);
                    i = stop;
                }
                None => {
                    f(i, end, None);
                    i = end;
                }
            }
        }
        Ok(())
    }
}

/// A point's refs looked up by chunk index, in increasing order, reading only the leaves that
/// hold the chunks asked for.
pub struct RefLookup<'s> {
    walk: Walk<'s>,
    current: Option<Extent>,
}

impl<'s> RefLookup<'s> {
    /// Lookups into the tree `walk` reads.
    #[must_use]
    pub fn new(walk: Walk<'s>) -> Self {
        Self {
            walk,
            current: None,
        }
    }

    /// The ref of chunk `i` (`Zero` past the disk's end).
    ///
    /// # Errors
    /// A chunk asked for before the last one, a leaf that cannot be read.
    pub fn get(&mut self, i: u64) -> Result<ChunkRef> {
        loop {
            if let Some(x) = &self.current {
                if i < x.first {
                    return Err(Error::Usage(format!(
                        "chunk {i} looked up after chunk {}",
                        x.first
                    )));
                }
                if i < x.first + x.count {
                    return match &x.body {
                        Body::Zero => Ok(ChunkRef::Zero),
                        Body::Refs(r) => Ok(r[(i - x.first) as usize]),
                        Body::Unreadable(what) => Err(Error::Point(what.clone())),
                    };
                }
            }
            match self.walk.next_extent_from(i)? {
                Some(x) => self.current = Some(x),
                None => return Ok(ChunkRef::Zero),
            }
        }
    }
}

//! Block status in windows: `base:allocation` (holes) and a dirty bitmap context (what
//! changed), asked a window at a time.

use super::Changes;
use crate::{Error, Result};
use cairn_nbd::{Client, proto};
use std::collections::VecDeque;

/// Bytes of disk asked about per block status request.
pub(super) const STATUS_WINDOW: u64 = 1 << 31;

/// A metadata context read forward from the server, a window at a time.
pub(crate) struct Status {
    pub(super) context: String,
    pub(super) extents: VecDeque<(u64, u64, u32)>,
    pub(super) fetched_to: u64,
    pub(super) size: u64,
}

impl Status {
    pub(super) fn new(context: &str, size: u64) -> Self {
        Self {
            context: context.to_owned(),
            extents: VecDeque::new(),
            fetched_to: 0,
            size,
        }
    }

    pub(super) fn fetch(&mut self, client: &mut Client, shown: &str) -> Result<()> {
        let at = self.fetched_to;
        let len = STATUS_WINDOW.min(self.size - at) as u32;
        let replies = client.block_status(at, len).map_err(|e| Error::Nbd {
            uri: shown.to_owned(),
            offset: at,
            what: format!("asking the server for {} extents: {e}", self.context),
        })?;
        let extents = replies
            .into_iter()
            .find(|(name, _)| *name == self.context)
            .map(|(_, e)| e)
            .unwrap_or_default();
        let mut pos = at;
        for e in extents {
            let end = (pos + u64::from(e.length)).min(self.size);
            if end > pos {
                self.extents.push_back((pos, end, e.flags));
            }
            pos = end;
        }
        if pos == at {
            return Err(Error::Nbd {
                uri: shown.to_owned(),
                offset: at,
                what: format!("the server gave no {} extent", self.context),
            });
        }
        self.fetched_to = pos;
        Ok(())
    }

    /// The flags at byte `at` and where the stretch of those flags ends (merging neighbours).
    /// `at` never goes back between calls.
    pub(super) fn run_at(
        &mut self,
        client: &mut Client,
        at: u64,
        shown: &str,
    ) -> Result<(u32, u64)> {
        while self.extents.front().is_some_and(|e| e.1 <= at) {
            self.extents.pop_front();
        }
        while self.fetched_to <= at && self.fetched_to < self.size {
            self.fetch(client, shown)?;
            while self.extents.front().is_some_and(|e| e.1 <= at) {
                self.extents.pop_front();
            }
        }
        let Some(&(_, mut end, flags)) = self.extents.front() else {
            return Ok((0, self.size));
        };
        let mut i = 1;
        loop {
            if i == self.extents.len() {
                if self.fetched_to >= self.size || end < self.fetched_to {
                    break;
                }
                self.fetch(client, shown)?;
                continue;
            }
            let (_, e, f) = self.extents[i];
            if f != flags {
                break;
            }
            end = e;
            i += 1;
        }
        Ok((flags, end))
    }
}

/// Where the changes since the parent come from.
pub(crate) enum ChangeSource {
    /// The server's dirty bitmap context.
    Context(Box<Status>),
    /// A file.
    Known(Changes),
}

impl ChangeSource {
    /// What changed, for an export of `size` bytes whose server selected the contexts
    /// `selected`: a dirty bitmap the server does not offer, or a file's changes of another
    /// size, is refused.
    pub(super) fn for_export(self, selected: &[String], size: u64, shown: &str) -> Result<Self> {
        match self {
            ChangeSource::Context(s) if !selected.contains(&s.context) => {
                Err(Error::Refused(format!(
                    "{shown}: the server does not offer {} (is the bitmap there, and exported? \
                     `qemu-nbd -B NAME` exports one); nothing was stored",
                    s.context
                )))
            }
            ChangeSource::Context(mut s) => {
                s.size = size;
                Ok(ChangeSource::Context(s))
            }
            ChangeSource::Known(k) => {
                k.check_size(size, shown)?;
                Ok(ChangeSource::Known(k))
            }
        }
    }
    /// The dirty bitmap `name` of the server.
    pub(crate) fn bitmap(name: &str, size: u64) -> Self {
        Self::Context(Box::new(Status::new(
            &format!("{}{name}", proto::CONTEXT_DIRTY_BITMAP_PREFIX),
            size,
        )))
    }
}

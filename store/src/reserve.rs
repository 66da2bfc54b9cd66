//! A little room kept for garbage collection on a full disk.
//!
//! With almost no space left, the index cannot even open for writing (RocksDB writes an
//! options file and a log first), so a collection, the one command that frees space, could not
//! start. Every writer keeps `STORE/reserve` (1 MiB of allocated blocks) while the disk has
//! room; a collection that finds the disk nearly full deletes it first, and gets the room to
//! open the index and delete dead packs. The next writer on a disk with room again makes it
//! anew.

use std::path::Path;

use fs2::FileExt;

use crate::error::{Error, Result};

/// The reserve's file name, in the store's root.
pub const RESERVE_FILE: &str = "reserve";
/// Its size.
pub const RESERVE_BYTES: u64 = 1 << 20;
/// Free space under which a collection gives the reserve up.
pub const NEARLY_FULL: u64 = 4 << 20;
/// Free space over which a writer makes the reserve.
const ROOMY: u64 = 64 << 20;

/// Makes the reserve when it is missing and the disk has room (best effort: a reserve that
/// cannot be made now is made by a later writer).
pub(crate) fn keep(root: &Path) {
    let path = root.join(RESERVE_FILE);
    if path.exists() || fs2::available_space(root).map_or(true, |free| free < ROOMY) {
        return;
    }
    let tmp = root.join(format!(".{RESERVE_FILE}.{}.tmp", std::process::id()));
    let made = std::fs::File::create(&tmp)
        .and_then(|f| f.allocate(RESERVE_BYTES).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Gives the reserve up when the disk holding the store is nearly full; returns whether it
/// did.
///
/// # Errors
/// The reserve cannot be removed.
pub fn give_up_if_full(root: &Path) -> Result<bool> {
    let path = root.join(RESERVE_FILE);
    if !path.exists() || fs2::available_space(root).is_ok_and(|free| free >= NEARLY_FULL) {
        return Ok(false);
    }
    std::fs::remove_file(&path).map_err(Error::io(&path, "giving up the reserve"))?;
    Ok(true)
}

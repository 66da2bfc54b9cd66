//! Finding files by name inside a point's file system (`cairn find`): a walk of a folder and
//! every folder under it, bounded in depth ([`crate::MAX_DEPTH`]: a loop in a damaged image is
//! refused, not followed forever), each entry whose name matches a glob handed to the caller.

use crate::fs::FileSystem;
use crate::{Entry, EntryKind, Error, MAX_DEPTH, Result};

/// Calls `found` with the path (under `from`) and entry of everything under the folder `from`
/// whose name matches `matches`, folders before what they hold, names in order.
///
/// # Errors
/// The file system's errors (naming the path), a walk deeper than [`MAX_DEPTH`].
pub fn find(
    fs: &dyn FileSystem,
    from: &str,
    matches: &dyn Fn(&Entry) -> bool,
    found: &mut dyn FnMut(&str, &Entry) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![(from.trim_end_matches('/').to_owned(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::Fs {
                path: dir,
                why: format!("deeper than {MAX_DEPTH} folders: a loop in the file system?"),
            });
        }
        let shown = if dir.is_empty() { "/" } else { dir.as_str() };
        let entries = fs.list(shown)?;
        let mut below = Vec::new();
        for e in &entries {
            let path = format!("{dir}/{}", e.name);
            if matches(e) {
                found(&path, e)?;
            }
            if e.kind == EntryKind::Dir {
                below.push((path, depth + 1));
            }
        }
        stack.extend(below.into_iter().rev());
    }
    Ok(())
}

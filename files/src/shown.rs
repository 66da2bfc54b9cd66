//! Entries and partition tables as `--json` shows them (`cairn ls`, the server's API): one
//! form wherever they are shown.

use serde_json::{Value, json};

use crate::{DiskFiles, Entry, Result};

/// One entry: name, type, size, mode (octal permissions), owner, group, mtime (seconds since
/// 1970), link target.
#[must_use]
pub fn entry_json(e: &Entry) -> Value {
    json!({
        "name": e.name, "type": e.kind.name(), "size": e.size, "mode": format!("{:o}", e.mode & 0o7777),
        "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "link": e.link,
    })
}

/// A disk's volumes: the scheme, and each volume with the file system found in it and whether
/// it is read.
///
/// # Errors
/// The disk's read errors (each partition's first bytes are read).
pub fn partitions_json(files: &DiskFiles) -> Result<Value> {
    let mut parts = Vec::new();
    for p in files.partitions() {
        let fs = files.detect(p)?;
        parts.push(json!({
            "name": p.name, "label": p.label, "type": p.kind, "start": p.start,
            "size": p.size, "filesystem": fs.name(), "readable": fs.readable(),
        }));
    }
    Ok(json!({
        "scheme": format!("{:?}", files.scheme()).to_lowercase(),
        "partitions": parts,
    }))
}

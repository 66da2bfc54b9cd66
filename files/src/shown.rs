//! Entries and partition tables as `--json` shows them (`cairn ls`, the server's API): one
//! form wherever they are shown.

use serde_json::{Value, json};

use crate::{Entry, PointFiles, Result};

/// One entry: name, type, size, mode (octal permissions), owner, group, mtime (seconds since
/// 1970), link target.
#[must_use]
pub fn entry_json(e: &Entry) -> Value {
    json!({
        "name": e.name, "type": e.kind.name(), "size": e.size, "mode": format!("{:o}", e.mode & 0o7777),
        "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "link": e.link,
    })
}

/// A point's partition table: the point's id, the scheme, and each partition with the file
/// system found in it and whether cairn reads it.
///
/// # Errors
/// The disk's read errors (each partition's first bytes are read).
pub fn partitions_json(files: &PointFiles) -> Result<Value> {
    let mut parts = Vec::new();
    for p in files.partitions() {
        let fs = files.detect(p)?;
        parts.push(json!({
            "name": p.name, "label": p.label, "type": p.kind, "start": p.start,
            "size": p.size, "filesystem": fs.name(), "readable": fs.readable(),
        }));
    }
    Ok(json!({
        "point": files.point().id,
        "scheme": format!("{:?}", files.scheme()).to_lowercase(),
        "partitions": parts,
    }))
}

//! The browse pages `cairn serve` shows beside the report (read-only): a point's partition
//! table, and one folder of one of its file systems, each entry linked (a folder to its own
//! page, a file to its download). Whole pages in the report's style: no script, nothing loaded
//! from anywhere.
//!
//! Links are absolute: `/point/ID/files/PARTITION/PATH/` for a folder,
//! `/point/ID/download/PARTITION/PATH` for a file; every name in them is percent-encoded and
//! every name shown is escaped (a name in an image is anything its maker wanted).

use std::fmt::Write;

use cairn_files::{Entry, EntryKind, FsKind, Partition};
use cairn_store::RecoveryPoint;

use crate::page::{STYLE, esc, human_bytes, url_piece};

/// Rows a folder's page lists at most; the rest are counted (`cairn ls` lists them all).
pub const MAX_ROWS: usize = 20_000;

/// The page of `point`'s partitions, each with the file system found in it.
#[must_use]
pub fn partitions_page(point: &RecoveryPoint, parts: &[(Partition, FsKind)]) -> String {
    let mut h = head(point, "");
    h.push_str(
        "<section><table><thead><tr><th>partition</th><th>label</th><th>file system</th>\
         <th>size</th><th>type</th></tr></thead><tbody>",
    );
    for (p, fs) in parts {
        let name = if fs.readable() {
            format!(
                "<a href=\"/point/{}/files/{}/\">{}</a>",
                point.id,
                url_piece(&p.name),
                esc(&p.name)
            )
        } else {
            esc(&p.name)
        };
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            esc(p.label.as_deref().unwrap_or("")),
            esc(fs.name()),
            if fs.readable() { "" } else { " (not read)" },
            human_bytes(p.size),
            esc(&p.kind)
        );
    }
    h.push_str("</tbody></table></section>");
    foot(h)
}

/// The page of folder `path` (`p2/etc`: a partition, then a path in it) of `point`, listing
/// `entries` (the first [`MAX_ROWS`]).
#[must_use]
pub fn folder_page(point: &RecoveryPoint, path: &str, entries: &[Entry]) -> String {
    let path = path.trim_matches('/');
    let mut h = head(point, path);
    let base: String = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| format!("{}/", url_piece(c)))
        .collect();
    h.push_str(
        "<section><div class=\"scroll\"><table><thead><tr><th>name</th><th>mode</th>\
         <th>owner</th><th>size</th><th>modified</th></tr></thead><tbody>",
    );
    let _ = write!(
        h,
        "<tr><td><a href=\"{}\">..</a></td><td></td><td></td><td></td><td></td></tr>",
        parent_link(point, path)
    );
    for e in entries.iter().take(MAX_ROWS) {
        let name = match e.kind {
            EntryKind::Dir => format!(
                "<a href=\"/point/{}/files/{base}{}/\">{}/</a>",
                point.id,
                url_piece(&e.name),
                esc(&e.name)
            ),
            EntryKind::File => format!(
                "<a href=\"/point/{}/download/{base}{}\" download>{}</a>",
                point.id,
                url_piece(&e.name),
                esc(&e.name)
            ),
            EntryKind::Symlink => format!(
                "{} → {}",
                esc(&e.name),
                esc(e.link.as_deref().unwrap_or(""))
            ),
            EntryKind::Other => esc(&e.name),
        };
        let size = if e.kind == EntryKind::File {
            format!(
                "<span title=\"{} bytes\">{}</span>",
                e.size,
                human_bytes(e.size)
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr><td>{name}</td><td><code>{}</code></td><td>{}:{}</td><td>{size}</td><td>{}</td></tr>",
            e.mode_string(),
            e.uid,
            e.gid,
            chrono::DateTime::from_timestamp(e.mtime, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default()
        );
    }
    h.push_str("</tbody></table></div>");
    if entries.len() > MAX_ROWS {
        let _ = write!(
            h,
            "<p class=\"note\">{} more entries are not listed: <code>cairn ls {}:{}</code> \
             lists them all.</p>",
            entries.len() - MAX_ROWS,
            point.short_id(),
            esc(path)
        );
    }
    h.push_str("</section>");
    foot(h)
}

/// The page's head: the point, and where in it the page is (each step a link).
fn head(point: &RecoveryPoint, path: &str) -> String {
    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} {} — cairn</title><style>{STYLE}</style></head><body>\
         <header><h1>{} {}, {}</h1><p>point {} · read-only</p></header><main><p>\
         <a href=\"/\">report</a> / <a href=\"/point/{}/files/\">partitions</a>",
        esc(&point.vm),
        esc(path),
        esc(&point.vm),
        esc(&point.disk),
        point.time.format("%Y-%m-%d %H:%M:%SZ"),
        point.id,
        point.id
    );
    let mut link = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let _ = write!(link, "{}/", url_piece(c));
        let _ = write!(
            h,
            " / <a href=\"/point/{}/files/{link}\">{}</a>",
            point.id,
            esc(c)
        );
    }
    h.push_str("</p>");
    h
}

fn parent_link(point: &RecoveryPoint, path: &str) -> String {
    let up: String = path
        .rsplit_once('/')
        .map(|(p, _)| p)
        .unwrap_or("")
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| format!("{}/", url_piece(c)))
        .collect();
    format!("/point/{}/files/{up}", point.id)
}

fn foot(mut h: String) -> String {
    h.push_str("</main></body></html>");
    h
}

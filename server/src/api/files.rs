//! Files inside points, for a restore or admin token, of its VMs' points only: listings and
//! contents (the API), and the browse pages the report links each point to.
//!
//! - `GET /api/v1/points/{id}/files?path=P` — the partition table (no `path`), or a folder's
//!   entries (a file: its own entry), as `cairn ls --json` prints them.
//! - `GET /api/v1/points/{id}/content?path=P` — a file's bytes.
//! - `GET /point/{id}/files/[P/]` — the browse page (HTML); `GET /point/{id}/download/P` — a
//!   file as a download.
//!
//! Only the chunks the file system asks for are read, each checked against its id; a file is
//! streamed 1 MiB at a time through a channel of four (its memory is bounded, whatever its
//! size). The server holds no key of an encrypted store: there every one of these is refused
//! (409), and `cairn ls`/`extract`/`mount` on a machine with the key read through the server.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cairn_files::{DiskFiles, EntryKind, FileSystem};
use cairn_restore::{PointDisk, SharedStore};
use cairn_store::RecoveryPoint;
use serde_json::{Value, json};

use cairn_report::page::url_piece;

use super::page::{html, page_token};
use super::points::point_of;
use super::{Answer, ApiError, App, Shared, blocking};
use crate::token::{Role, Token};

/// Bytes of a file sent at once.
const PIECE: usize = 1 << 20;
/// Pieces read ahead of the network.
const PIECES_AHEAD: usize = 4;

#[derive(Debug, serde::Deserialize)]
pub(super) struct PathQuery {
    path: Option<String>,
}

/// `GET /api/v1/points/{id}/files?path=P`.
pub(super) async fn list(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Answer<Json<Value>> {
    let t = app.authorize(
        &headers,
        &[Role::Restore, Role::Admin],
        "read files inside points",
    )?;
    blocking(move || {
        let (point, files) = point_files(&app, &t, &id)?;
        let Some(path) = q.path.filter(|p| !p.trim_matches('/').is_empty()) else {
            let mut table = cairn_files::shown::partitions_json(&files).map_err(bad)?;
            table["point"] = json!(point.id);
            return Ok(Json(table));
        };
        let (part, inner) = files.resolve(&path).map_err(bad)?;
        let fs = files.open_fs(part).map_err(bad)?;
        let entry = fs.entry(&inner).map_err(bad)?;
        let entries = if entry.kind == EntryKind::Dir {
            fs.list(&inner).map_err(bad)?
        } else {
            vec![entry]
        };
        Ok(Json(json!({
            "point": point.id,
            "path": path,
            "entries": entries.iter().map(cairn_files::shown::entry_json).collect::<Vec<_>>(),
        })))
    })
    .await
}

/// `GET /api/v1/points/{id}/content?path=P`.
pub(super) async fn content(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let t = match app.authorize(
        &headers,
        &[Role::Restore, Role::Admin],
        "read files inside points",
    ) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let Some(path) = q.path else {
        return ApiError::bad("?path= names the file").into_response();
    };
    file_answer(app, t, id, path, false).await
}

/// `GET /point/{id}/files/`: the partition table's page.
pub(super) async fn browse_point(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    browse_at(app, headers, id, String::new()).await
}

/// `GET /point/{id}/files/{*path}`: a folder's page (a file's path: its download).
pub(super) async fn browse(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    browse_at(app, headers, id, path).await
}

/// `GET /point/{id}/download/{*path}`.
pub(super) async fn download(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    match page_token(&app, &headers) {
        Ok(t) => file_answer(app, t, id, path, true).await,
        Err(answer) => *answer,
    }
}

async fn browse_at(app: Shared, headers: HeaderMap, id: String, path: String) -> Response {
    let t = match page_token(&app, &headers) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    let made = blocking(move || {
        let (point, files) = point_files(&app, &t, &id)?;
        if path.trim_matches('/').is_empty() {
            let mut parts = Vec::new();
            for p in files.partitions() {
                parts.push((p.clone(), files.detect(p).map_err(bad)?));
            }
            return Ok(Ok(cairn_report::browse::partitions_page(&point, &parts)));
        }
        let (part, inner) = files.resolve(&path).map_err(bad)?;
        let fs = files.open_fs(part).map_err(bad)?;
        if fs.entry(&inner).map_err(bad)?.kind != EntryKind::Dir {
            return Ok(Err(format!(
                "/point/{}/download/{}",
                point.id,
                path.trim_matches('/')
            )));
        }
        let entries = fs.list(&inner).map_err(bad)?;
        Ok(Ok(cairn_report::browse::folder_page(
            &point, &path, &entries,
        )))
    })
    .await;
    match made {
        Ok(Ok(page)) => html(page),
        // The path is a file's: its download. (The path came percent-decoded; a link holds
        // it encoded again.)
        Ok(Err(to)) => Redirect::to(&encode_path(&to)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A point and its files, for a token that reaches its VM, in a store the server can read.
fn point_files(app: &App, t: &Token, id: &str) -> Answer<(RecoveryPoint, DiskFiles)> {
    let point = point_of(app, t, id)?;
    if app.store.chunk_keys().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the store is encrypted and the server holds no key: read its files on a machine \
             that has it (cairn ls, extract or mount, pointed at this server)",
        ));
    }
    let store: SharedStore = Arc::new(app.store);
    let disk = Arc::new(PointDisk::new(store, point.clone())?);
    let files = DiskFiles::open(disk, format!("point {}", point.short_id())).map_err(bad)?;
    Ok((point, files))
}

/// A file's bytes as the answer: streamed from a blocking thread that reads it a piece at a
/// time; its length said first (a download cut short is seen as such).
async fn file_answer(
    app: Shared,
    t: Token,
    id: String,
    path: String,
    attachment: bool,
) -> Response {
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(PIECES_AHEAD);
    tokio::task::spawn_blocking(move || send_file(&app, &t, &id, &path, head_tx, &tx));
    let (size, name) = match head_rx.await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::internal("the file's reader ended early").into_response(),
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let mut answer = Body::from_stream(stream).into_response();
    let h = answer.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let disposition = if attachment { "attachment" } else { "inline" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{disposition}; filename=\"{}\"; filename*=UTF-8''{}",
        ascii_name(&name),
        url_piece(&name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    answer
}

/// Opens the file at `path` of point `id`, says its length and name on `head`, then sends
/// its bytes on `out` until the end, an error (sent as the stream's last item) or the client
/// going away.
fn send_file(
    app: &App,
    t: &Token,
    id: &str,
    path: &str,
    head: tokio::sync::oneshot::Sender<Answer<(u64, String)>>,
    out: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let opened = point_files(app, t, id).and_then(|(_, files)| {
        let (part, inner) = files.resolve(path).map_err(bad)?;
        let fs = files.open_fs(part).map_err(bad)?;
        Ok((inner, fs))
    });
    let (inner, fs) = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = head.send(Err(e));
            return;
        }
    };
    let (entry, mut reader) = match open_file(&*fs, &inner) {
        Ok(o) => o,
        Err(e) => {
            let _ = head.send(Err(e));
            return;
        }
    };
    if head.send(Ok((entry.size, entry.name))).is_err() {
        return;
    }
    let mut left = entry.size;
    while left > 0 {
        let mut piece = vec![0u8; PIECE.min(usize::try_from(left).unwrap_or(PIECE))];
        let sent = match reader.read_exact(&mut piece) {
            Ok(()) => {
                left -= piece.len() as u64;
                out.blocking_send(Ok(Bytes::from(piece)))
            }
            Err(e) => {
                tracing::error!(point = id, path, error = %e, "a file inside a point did not read");
                let _ = out.blocking_send(Err(std::io::Error::other(format!("{path}: {e}"))));
                return;
            }
        };
        if sent.is_err() {
            return; // The client went away.
        }
    }
}

fn open_file<'f>(
    fs: &'f dyn FileSystem,
    inner: &str,
) -> Answer<(cairn_files::Entry, Box<dyn cairn_files::FileRead + 'f>)> {
    let entry = fs.entry(inner).map_err(bad)?;
    if entry.kind != EntryKind::File {
        return Err(ApiError::bad(format!(
            "{inner} is a {}, not a file",
            entry.kind.name()
        )));
    }
    Ok((entry, fs.open_file(inner).map_err(bad)?))
}

/// What a file system's failure answers: a path that is not there 404, a table or file system
/// that does not read 422, the store's own failures as the store's errors answer.
fn bad(e: cairn_files::Error) -> ApiError {
    use cairn_files::Error as E;
    match e {
        E::Read { .. } => ApiError::internal(&e.to_string()),
        E::Path(_) | E::Fs { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

/// `name` with what a quoted header value cannot hold replaced by `_`.
fn ascii_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A path for a URL: each piece percent-encoded, the `/` between them kept.
fn encode_path(p: &str) -> String {
    p.split('/').map(url_piece).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_headers_and_links_cannot_break_out() {
        assert_eq!(ascii_name("a\"b\\c\r\nd é.txt"), "a_b_c__d _.txt");
        assert_eq!(url_piece("a b/é\""), "a%20b%2F%C3%A9%22");
        assert_eq!(encode_path("/point/x/a b/c"), "/point/x/a%20b/c");
        assert!(HeaderValue::from_str(&ascii_name("\r\nSet-Cookie: x")).is_ok());
    }
}

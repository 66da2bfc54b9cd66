//! Request bodies (JSON, chunk ids) and reading chunks: ids in, frames out.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use cairn_store::chunk::ChunkId;
use cairn_store::pack;

use super::{ANY, Answer, ApiError, MAX_READ, READ_FAILED, READ_OK, Shared, blocking};

pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Answer<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the request body is not the JSON expected: {e}")))
}

pub(super) fn ids_body(body: &[u8], max: usize) -> Answer<Vec<ChunkId>> {
    if !body.len().is_multiple_of(32) {
        return Err(ApiError::bad(format!(
            "the body is {} bytes: chunk ids are 32 bytes each",
            body.len()
        )));
    }
    if body.len() / 32 > max {
        return Err(ApiError::bad(format!(
            "{} ids: at most {max} at once",
            body.len() / 32
        )));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            ChunkId(b)
        })
        .collect())
}

/// `POST /api/v1/chunks/read`: ids in, one record each out, in order, as the packs hold them
/// (frames checked, bytes not decoded: the client decodes and checks each against its id, once).
/// Chunk ids are not secret within what a token may read: they are named by the trees of the
/// points it sees.
pub(super) async fn read_chunks(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Response> {
    let t = app.authorize(&headers, ANY, "read chunks")?;
    let ids = ids_body(&body, MAX_READ)?;
    blocking(move || {
        use rayon::prelude::*;
        // A reader like any other: a collection in this process keeps the packs it may still
        // read from (the `readers` module of the store).
        let _reader = cairn_store::readers::register(app.store.root())?;
        // A token that sees only its own chunks reads only those of its live sessions; one
        // limited to some VMs, only their points' chunks. Either is told of another chunk
        // what it is told of a chunk the store lacks: nothing of other VMs is learnt.
        let own = t.lookups == crate::token::Lookups::Own;
        let reachable = app.reach.may_read(app.store, &t, &ids)?;
        let read: Vec<Result<cairn_store::EncodedChunk, String>> = ids
            .par_iter()
            .zip(reachable)
            .map(|(id, reachable)| {
                if !reachable || own && !app.sessions.own_chunk(&t.id, id) {
                    return Err(cairn_store::Error::MissingChunk(*id).to_string());
                }
                app.store.read_stored(id).map_err(|e| e.to_string())
            })
            .collect();
        let mut out = Vec::new();
        for r in read {
            match r {
                Ok(c) => {
                    out.push(READ_OK);
                    pack::encode_frame(&c, &mut out);
                }
                Err(e) => {
                    out.push(READ_FAILED);
                    out.extend_from_slice(&(e.len() as u32).to_be_bytes());
                    out.extend_from_slice(e.as_bytes());
                }
            }
        }
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
    })
    .await
}

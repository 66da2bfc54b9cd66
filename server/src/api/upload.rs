//! Backup sessions: open one, ask what the store lacks, upload frames, commit, abort.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_store::chunk::{self, ChunkId, ChunkKind};
use cairn_store::{RecoveryPoint, pack};

use super::chunks::{ids_body, json_body};
use super::{
    Answer, ApiError, App, Commit, MAX_FRAMES, MAX_IDS, OpenSession, SessionOpened, Shared,
    Uploaded, blocking,
};
use crate::sessions::Refused;
use crate::token::{Role, Token};

pub(super) async fn open_session(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<(StatusCode, Json<SessionOpened>)> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let b: OpenSession = json_body(&body)?;
    cairn_store::point::check_point_name("VM", &b.vm).map_err(ApiError::bad)?;
    if b.disks.is_empty() || b.disks.len() > 64 {
        return Err(ApiError::bad("a session names 1 to 64 disks"));
    }
    for d in &b.disks {
        cairn_store::point::check_point_name("disk", d).map_err(ApiError::bad)?;
    }
    if !t.allows_vm(&b.vm) {
        return Err(ApiError::vm(&t, &b.vm));
    }
    if b.adopt && t.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token cannot adopt another VM's identity (an admin token can)",
                t.role.name()
            ),
        ));
    }
    blocking(move || {
        let opening = crate::sessions::Opening {
            vm: &b.vm,
            disks: &b.disks,
            token: &t.id,
            own_lookups: t.lookups == crate::token::Lookups::Own,
            // Only an admin dates its points (a replica keeps its source's times); every other
            // token's points get the time of their commit.
            clock: t.role != Role::Admin,
            adopt: b.adopt,
        };
        let max = (app.limits.sessions, app.limits.sessions_per_token);
        match app.sessions.open(app.store, &opening, max)? {
            Ok(id) => {
                tracing::info!(session = %id, vm = %b.vm, token = %t.name, "session opened");
                let policies = app.store.policies()?;
                let key_interval =
                    cairn_store::policy::key_interval(&policies, &b.vm, b.vm_uuid.as_deref());
                Ok((
                    StatusCode::CREATED,
                    Json(SessionOpened {
                        session: id,
                        key_interval,
                    }),
                ))
            }
            Err(Refused::Busy(why)) => {
                tracing::info!(vm = %b.vm, token = %t.name, "session refused: {why}");
                Err(ApiError::new(StatusCode::CONFLICT, why))
            }
            Err(Refused::Full(n)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{n} sessions are open, the most this server takes; try again later"),
            )),
            Err(Refused::TokenFull(n)) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "token {:?} has {n} sessions open, the most one token may hold; finish or \
                     abort one first",
                    t.name
                ),
            )),
        }
    })
    .await
}

pub(super) fn session_of<'a>(
    app: &'a App,
    t: &Token,
    id: &str,
) -> Answer<crate::sessions::Taken<'a>> {
    let taken = app.sessions.take(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id} (it ended, or was dropped after being idle)"),
        )
    })?;
    let owner = taken
        .live
        .lock()
        .map_err(|_| ApiError::internal("session poisoned"))?
        .token
        .clone();
    if owner != t.id {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id}"),
        ));
    }
    Ok(taken)
}

pub(super) async fn abort_session(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    blocking(move || {
        drop(session_of(&app, &t, &id)?);
        app.sessions.remove(&id);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// `POST /api/v1/sessions/{id}/missing`: ids in, one byte each out (1: the store lacks it).
pub(super) async fn missing(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Vec<u8>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let ids = ids_body(&body, MAX_IDS)?;
    blocking(move || {
        let (filter, own) = lookups_of(&app, &t, &id)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            // A token that sees only its own chunks is told "missing" for every other one,
            // whatever the store holds.
            let seen = own.as_ref().is_none_or(|o| o.binary_search(id).is_ok());
            out.push(u8::from(!(seen && filter.holds(id)?)));
        }
        Ok(out)
    })
    .await
}

/// The store's filter, and the token's own chunks when it sees only those.
type Lookup = (cairn_store::KnownFilter<'static>, Option<Arc<Vec<ChunkId>>>);

/// What a session's lookups are answered from: the store's filter, and for a token that sees
/// only its own chunks, those (sorted).
pub(super) fn lookups_of(app: &App, t: &Token, id: &str) -> Answer<Lookup> {
    let taken = session_of(app, t, id)?;
    let live = taken
        .live
        .lock()
        .map_err(|_| ApiError::internal("session poisoned"))?;
    Ok((live.filter.clone(), live.own.clone()))
}

/// `POST /api/v1/sessions/{id}/subtrees`: ids in, one byte each out (1: the store holds the
/// whole subtree under it, [`cairn_store::Store::holds_subtrees`]). A token whose lookups see
/// only its own chunks is told 0 for every chunk that is not its own.
pub(super) async fn subtrees(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Vec<u8>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let ids = ids_body(&body, MAX_IDS)?;
    blocking(move || {
        let (_, own) = lookups_of(&app, &t, &id)?;
        let held = app.store.holds_subtrees(&ids)?;
        Ok(ids
            .iter()
            .zip(held)
            .map(|(id, held)| {
                let seen = own.as_ref().is_none_or(|o| o.binary_search(id).is_ok());
                u8::from(seen && held)
            })
            .collect())
    })
    .await
}

/// `POST /api/v1/sessions/{id}/chunks`: frames, each checked against its id before any is
/// stored.
pub(super) async fn upload(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<Uploaded>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    blocking(move || {
        use rayon::prelude::*;
        let frames = pack::frames_in(&body, MAX_FRAMES)
            .map_err(|e| ApiError::bad(format!("the upload's body: {e}")))?;
        let chunk_size = app.store.config().chunk_size;
        let keys = app.store.chunk_keys();
        frames
            .par_iter()
            .enumerate()
            .try_for_each(|(i, (f, bytes))| -> Answer<()> {
                let fail = |what: String| {
                    ApiError::bad(format!(
                        "chunk {i} of the upload ({}): {what}; nothing of it was stored",
                        f.id
                    ))
                };
                if f.kind == ChunkKind::Data && f.plain_len > chunk_size {
                    return Err(fail(format!(
                        "{} bytes, larger than the store's chunks",
                        f.plain_len
                    )));
                }
                // The server checks what it can: with an encrypted store's data chunks, that
                // they are sealed (their frames' CRCs were checked as they were read). Into a
                // buffer each thread keeps: a fresh 256 KiB one per chunk costs an mmap, its
                // page faults and an munmap.
                thread_local! {
                    static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                PLAIN.with_borrow_mut(|plain| {
                    if f.kind == ChunkKind::Tree {
                        // Trees are never sealed: decoded whole (a sealed one is refused,
                        // never taken for checked), then parsed.
                        plain.resize(f.plain_len as usize, 0);
                        chunk::decode_into(keys, &f.stored(bytes), plain)
                            .map_err(|e| fail(e.to_string()))?;
                        cairn_store::tree::decode(plain)
                            .map_err(|e| fail(format!("not a tree chunk: {e}")))?;
                    } else {
                        chunk::check(keys, &f.stored(bytes), plain)
                            .map_err(|e| fail(e.to_string()))?;
                    }
                    Ok(())
                })
            })?;
        let taken = session_of(&app, &t, &id)?;
        let mut live = taken
            .live
            .lock()
            .map_err(|_| ApiError::internal("session poisoned"))?;
        let mut stored = 0u64;
        {
            let session = live
                .session
                .as_mut()
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the session is committing"))?;
            for (f, bytes) in &frames {
                if session.put_frame(f, bytes)? {
                    stored += 1;
                }
            }
        }
        live.received += frames.len() as u64;
        live.stored += stored;
        // What was stored tells which chunks the store held: not said to a token whose
        // lookups see only its own chunks.
        let told = if t.lookups == crate::token::Lookups::Own {
            frames.len() as u64
        } else {
            stored
        };
        Ok(Json(Uploaded {
            received: frames.len() as u64,
            stored: told,
        }))
    })
    .await
}

pub(super) async fn commit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<Vec<RecoveryPoint>>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let b: Commit = json_body(&body)?;
    blocking(move || {
        let taken = session_of(&app, &t, &id)?;
        let mut live = taken.live.lock().map_err(|_| ApiError::internal("session poisoned"))?;
        if b.points.is_empty() {
            return Err(ApiError::bad("a commit names at least one point"));
        }
        for p in &b.points {
            if p.vm != live.vm || !live.disks.contains(&p.disk) {
                return Err(ApiError::bad(format!(
                    "point {} is of {}/{}, the session of VM {:?} disks {:?}",
                    p.id, p.vm, p.disk, live.vm, live.disks
                )));
            }
        }
        let mut session = live.session.take().ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the session is committing"))?;
        // From here the session is spent, whatever happens: its packs go if nothing commits.
        // They are kept from an in-process collection until the commit ends (indexed, or
        // deleted with the failed session).
        let _committing = app.sessions.start_commit(&id, &session);
        session.check_references();
        let mut staged = Vec::new();
        for p in &b.points {
            let mut p = p.clone();
            // Protection is an admin's act: an upload with another token never carries it (a
            // replica sent with an admin token keeps the source's).
            if t.role != Role::Admin {
                p.protected = false;
                p.protected_until = None;
            }
            let mut one = session.stage_copy(&p)?;
            // What the store appended tells which chunks it held: a token whose lookups see
            // only its own chunks keeps the figure it sent (the store's own is in the report).
            if t.lookups == crate::token::Lookups::Own {
                one.set_new_stored(p.stats.new_stored_bytes);
            }
            staged.push(one);
        }
        let done = session.commit_run(staged)?;
        tracing::info!(session = %id, vm = %live.vm, points = done.len(), chunks = live.stored, "committed");
        Ok(Json(done))
    })
    .await
}

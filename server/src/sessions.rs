//! The backup sessions of a running server: one [`Session`] each, with the disks it holds and
//! when it was last used. A disk is in at most one session at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_store::{Body, ChunkId, ChunkRef, KnownFilter, PackId, Session, Store, Walk};

/// One live session.
pub(crate) struct Live {
    pub(crate) vm: String,
    pub(crate) disks: Vec<String>,
    /// The token that opened it (only it may use the session).
    pub(crate) token: String,
    pub(crate) session: Option<Session<'static>>,
    pub(crate) filter: KnownFilter<'static>,
    /// For a token whose lookups see only its own chunks: those of the latest points of the
    /// session's disks, sorted (see [`own_chunks`]).
    pub(crate) own: Option<Arc<Vec<ChunkId>>>,
    pub(crate) received: u64,
    pub(crate) stored: u64,
}

struct Entry {
    /// The token that opened it (kept here too, as the VM and disks are).
    token: String,
    /// The VM and disks it holds (kept here too: checking them never waits for a session
    /// busy committing).
    vm: String,
    disks: Vec<String>,
    started: chrono::DateTime<chrono::Utc>,
    live: Arc<Mutex<Live>>,
    last: Instant,
    /// Requests using it now (never dropped as idle while one runs).
    busy: u32,
}

/// Every live session.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: Mutex<HashMap<String, Entry>>,
    /// The packs of sessions taken out of the table to commit, until their commit ended: a
    /// collection leaves them alone as it leaves a live session's (the commit may wait for the
    /// collection's commit lock with its packs not yet indexed).
    committing: Mutex<HashMap<String, Vec<PackId>>>,
}

/// A session's packs kept from garbage collection while it commits; released on drop (after
/// the commit indexed them, or after the failed session deleted them).
pub(crate) struct Committing<'a> {
    sessions: &'a Sessions,
    id: String,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.sessions.committing.lock() {
            c.remove(&self.id);
        }
    }
}

/// A session taken for one request; given back on drop.
pub(crate) struct Taken<'a> {
    sessions: &'a Sessions,
    id: String,
    pub(crate) live: Arc<Mutex<Live>>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sessions.by_id.lock()
            && let Some(e) = map.get_mut(&self.id)
        {
            e.busy = e.busy.saturating_sub(1);
            e.last = Instant::now();
        }
    }
}

/// Why a session could not be opened.
pub(crate) enum Refused {
    /// A disk is in another session.
    Busy(String),
    /// Too many sessions.
    Full(usize),
    /// Too many sessions of this token.
    TokenFull(usize),
}

/// What a session is opened for, and with which rights.
pub(crate) struct Opening<'r> {
    /// The VM.
    pub(crate) vm: &'r str,
    /// Its disks this session commits points of.
    pub(crate) disks: &'r [String],
    /// The id of the token opening it.
    pub(crate) token: &'r str,
    /// Whether the token's lookups see only its own chunks.
    pub(crate) own_lookups: bool,
    /// Whether the store times the points ([`Session::time_at_commit`]).
    pub(crate) clock: bool,
    /// Whether the points may adopt another VM name's identity ([`Session::allow_adopt`]).
    pub(crate) adopt: bool,
}

impl Sessions {
    /// Opens a session for the disks of a VM, unless one of them is in another session.
    pub(crate) fn open(
        &self,
        store: &'static Store,
        opening: &Opening<'_>,
        max: (usize, usize),
    ) -> Result<Result<String, Refused>, cairn_store::Error> {
        let (max, per_token) = max;
        let (vm, disks, token) = (opening.vm, opening.disks, opening.token);
        // Made before the table is locked (it reads the index): a refused one is dropped
        // before it wrote anything.
        let own = opening
            .own_lookups
            .then(|| own_chunks(store, vm, disks).map(Arc::new))
            .transpose()?;
        let mut session = store.session()?;
        if opening.clock {
            session.time_at_commit();
        }
        if opening.adopt {
            session.allow_adopt();
        }
        // Its commit names, of what the store holds, only its own chunks: no oracle.
        if let Some(own) = &own {
            session.restrict_references(Arc::clone(own));
        }
        let filter = session.known_filter();
        let mut map = self.by_id.lock().map_err(|_| {
            cairn_store::Error::Internal("the session table was poisoned by a panic".into())
        })?;
        if map.len() >= max {
            return Ok(Err(Refused::Full(max)));
        }
        if map.values().filter(|e| e.token == token).count() >= per_token {
            return Ok(Err(Refused::TokenFull(per_token)));
        }
        for e in map.values() {
            if e.vm == vm
                && let Some(d) = disks.iter().find(|d| e.disks.contains(d))
            {
                return Ok(Err(Refused::Busy(format!(
                    "disk {d:?} of VM {vm:?} is being backed up by another session (started {})",
                    e.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))));
            }
        }
        let id = hex::encode(uuid::Uuid::new_v4().as_bytes());
        let started = chrono::Utc::now();
        map.insert(
            id.clone(),
            Entry {
                token: token.to_owned(),
                vm: vm.to_owned(),
                disks: disks.to_vec(),
                started,
                live: Arc::new(Mutex::new(Live {
                    vm: vm.to_owned(),
                    disks: disks.to_vec(),
                    token: token.to_owned(),
                    session: Some(session),
                    filter,
                    own,
                    received: 0,
                    stored: 0,
                })),
                last: Instant::now(),
                busy: 0,
            },
        );
        Ok(Ok(id))
    }

    /// The session `id`, for one request.
    pub(crate) fn take(&self, id: &str) -> Option<Taken<'_>> {
        let mut map = self.by_id.lock().ok()?;
        let e = map.get_mut(id)?;
        e.busy += 1;
        Some(Taken {
            sessions: self,
            id: id.to_owned(),
            live: Arc::clone(&e.live),
        })
    }

    /// Ends session `id` (a commit, an abort): it can no longer be taken.
    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut map) = self.by_id.lock() {
            map.remove(id);
        }
    }

    /// Drops the sessions idle for longer than `idle` (their packs are deleted); returns them.
    pub(crate) fn reap(&self, idle: Duration) -> Vec<String> {
        let Ok(mut map) = self.by_id.lock() else {
            return Vec::new();
        };
        let gone: Vec<String> = map
            .iter()
            .filter(|(_, e)| e.busy == 0 && e.last.elapsed() > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            map.remove(id);
        }
        gone
    }

    /// Takes session `id` out of the table to commit `session`: its packs stay kept from
    /// garbage collection until the returned guard is dropped (once the commit ended). Called
    /// before the session leaves the table, so there is no instant a collection could miss them.
    pub(crate) fn start_commit(&self, id: &str, session: &Session<'_>) -> Committing<'_> {
        if let Ok(mut c) = self.committing.lock() {
            c.insert(id.to_owned(), session.open_packs());
        }
        self.remove(id);
        Committing {
            sessions: self,
            id: id.to_owned(),
        }
    }

    /// The packs every live session has open, and those of sessions committing: a collection
    /// in this process leaves them.
    /// Sessions open now.
    pub(crate) fn count(&self) -> usize {
        self.by_id.lock().map_or(0, |m| m.len())
    }

    pub(crate) fn open_packs(&self) -> Vec<PackId> {
        let mut out: Vec<PackId> = self
            .committing
            .lock()
            .map(|c| c.values().flatten().copied().collect())
            .unwrap_or_default();
        let lives: Vec<Arc<Mutex<Live>>> = match self.by_id.lock() {
            Ok(map) => map.values().map(|e| Arc::clone(&e.live)).collect(),
            Err(_) => return out,
        };
        for l in lives {
            if let Ok(l) = l.lock()
                && let Some(s) = &l.session
            {
                out.extend(s.open_packs());
            }
        }
        out
    }

    /// Whether chunk `id` is among the own chunks of a live session of `token` (what a token
    /// whose lookups see only its own chunks may read).
    pub(crate) fn own_chunk(&self, token: &str, id: &ChunkId) -> bool {
        let lives: Vec<Arc<Mutex<Live>>> = match self.by_id.lock() {
            Ok(map) => map.values().map(|e| Arc::clone(&e.live)).collect(),
            Err(_) => return false,
        };
        lives.iter().any(|l| {
            l.lock().is_ok_and(|l| {
                l.token == token && l.own.as_ref().is_some_and(|o| o.binary_search(id).is_ok())
            })
        })
    }

    /// Drops every session (the server stops): nothing of them was committed, so their packs
    /// are deleted. Returns how many there were.
    pub(crate) fn drop_all(&self) -> usize {
        let all: Vec<Entry> = match self.by_id.lock() {
            Ok(mut map) => map.drain().map(|(_, e)| e).collect(),
            Err(_) => return 0,
        };
        all.len()
    }
}

/// At most this many ids are kept as a session's own chunks (32 MiB: every chunk of a 256 GiB
/// disk at 256 KiB chunks); past it, the rest is answered as missing (sent again, stored once).
const OWN_CHUNKS_MAX: usize = 1 << 20;

/// The chunks (data and tree) of the latest point of each of `disks` of `vm`, sorted.
fn own_chunks(
    store: &Store,
    vm: &str,
    disks: &[String],
) -> Result<Vec<ChunkId>, cairn_store::Error> {
    let points = store.points()?;
    let mut out = Vec::new();
    for d in disks {
        let Some(p) = points
            .iter()
            .filter(|p| p.vm == vm && &p.disk == d)
            .max_by_key(|p| (p.time, p.committed))
        else {
            continue;
        };
        out.extend(cairn_store::tree::top(p)?);
        let mut walk = Walk::new(store, p)?;
        while out.len() < OWN_CHUNKS_MAX {
            let Some(x) = walk.next_extent()? else { break };
            out.push(x.id);
            if let Body::Refs(refs) = x.body {
                out.extend(refs.iter().filter_map(|r| match r {
                    ChunkRef::Data(id) => Some(*id),
                    ChunkRef::Zero => None,
                }));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out.truncate(OWN_CHUNKS_MAX);
    Ok(out)
}

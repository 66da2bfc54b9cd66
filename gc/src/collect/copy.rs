//! Step 2 of a collection, read-only beside backups: the live frames of the packs to rewrite
//! are checked against their ids and appended, as they are, to new packs, which are sealed.

use std::collections::{HashMap, HashSet};

use cairn_store::chunk::EncodedChunk;
use cairn_store::pack::{FRAME_HEADER_SIZE, PackWriter};
use cairn_store::{BadMark, ChunkId, Location, PackId, PackInfo, Store};

use super::GcReport;
use super::plan::{Action, PackFrames, Plan, Quarantine, classify};
use crate::{Error, Result};

/// Frames a collection reads and copies at a time (8 MiB of plain bytes at 256 KiB chunks).
const COPY_GROUP: usize = 32;

/// The packs a collection wrote, removed when it fails before its sweep indexed them (a full
/// disk must not be left fuller by a half-done rewrite), here and from the bucket.
pub(super) struct Created {
    ids: std::cell::RefCell<Vec<PackId>>,
    pub indexed: std::cell::Cell<bool>,
    packs: cairn_store::bucket::Sealer,
}

impl Created {
    pub(super) fn new(store: &Store) -> Self {
        Self {
            ids: std::cell::RefCell::default(),
            indexed: std::cell::Cell::new(false),
            packs: store.sealer(),
        }
    }

    fn add(&self, id: PackId) {
        self.ids.borrow_mut().push(id);
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.indexed.get() {
            for id in self.ids.borrow().iter() {
                let _ = self.packs.remove(*id);
            }
        }
    }
}

/// Copies live frames of packs being rewritten into new packs.
pub(super) struct Copier<'a> {
    store: &'a Store,
    /// Every pack this collection created, until its sweep indexes them (see [`Created`]).
    created: &'a Created,
    writer: Option<PackWriter>,
    /// Packs written: their entry, and the bytes they take where they are kept.
    pub written: Vec<(PackId, PackInfo, u64)>,
    pub moved: HashMap<ChunkId, (Location, Location)>,
    pub bytes: u64,
}

impl<'a> Copier<'a> {
    pub(super) fn new(store: &'a Store, created: &'a Created) -> Self {
        Self {
            store,
            created,
            writer: None,
            written: Vec::new(),
            moved: HashMap::new(),
            bytes: 0,
        }
    }

    /// What the copy holds so far, without the store (which the caller closes before it opens
    /// the store for writing).
    pub(super) fn pause(self) -> Paused {
        Paused {
            writer: self.writer,
            written: self.written,
            moved: self.moved,
            bytes: self.bytes,
        }
    }

    /// The paused copy, going on against `store` (the store the sweep holds for writing).
    pub(super) fn resume(store: &'a Store, created: &'a Created, p: Paused) -> Self {
        Self {
            store,
            created,
            writer: p.writer,
            written: p.written,
            moved: p.moved,
            bytes: p.bytes,
        }
    }

    /// Copies frames, each checked first (decoded and hashed); returns those that are bad and
    /// why. Read a group at a time (from a bucket: adjacent frames in one ranged GET, the GETs
    /// of later groups in flight); the bucket's own failures stop the collection.
    pub(super) fn copy_all(
        &mut self,
        frames: &[(ChunkId, Location)],
    ) -> Result<Vec<(ChunkId, Location, String)>> {
        let mut bad = Vec::new();
        let store = self.store;
        let mut failed: Option<Error> = None;
        store
            .read_encoded_groups(frames, COPY_GROUP, |group, read| {
                for ((id, old), r) in group.iter().zip(read) {
                    match r {
                        Ok(enc) => {
                            if let Err(e) = self.append(enc, *old) {
                                failed = Some(e);
                                return Err(cairn_store::Error::Usage("the copy stopped".into()));
                            }
                        }
                        Err(cairn_store::Error::BadChunk { what, .. }) => {
                            bad.push((*id, *old, what))
                        }
                        Err(e) => bad.push((*id, *old, e.to_string())),
                    }
                }
                Ok(())
            })
            .map_err(|e| match failed.take() {
                Some(own) => own,
                None => e.into(),
            })?;
        Ok(bad)
    }

    /// Appends a checked frame read from `old` to the open new pack.
    fn append(&mut self, enc: EncodedChunk, old: Location) -> Result<()> {
        let target = self.store.config().pack_target_size;
        if self.writer.as_ref().is_some_and(|w| w.len() >= target) {
            self.seal()?;
        }
        if self.writer.is_none() {
            let w = PackWriter::create(&self.store.packs_dir())?;
            self.created.add(w.id());
            self.writer = Some(w);
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(Error::Store(cairn_store::Error::Internal(
                "no open pack".into(),
            )));
        };
        let offset = w.append(&enc)?;
        let new = Location {
            pack: w.id(),
            offset,
            ..old
        };
        self.bytes += FRAME_HEADER_SIZE + u64::from(old.stored_len);
        self.moved.insert(enc.id, (old, new));
        Ok(())
    }

    pub(super) fn seal(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let (id, size) = (w.id(), w.len());
            let info = PackInfo {
                size,
                chunks: self.moved.values().filter(|(_, n)| n.pack == id).count() as u64,
            };
            let kept = self.store.sealer().seal(w)?;
            self.written.push((id, info, kept));
        }
        Ok(())
    }
}

/// A copy between its steps: its open pack, the packs it wrote, the frames it moved.
pub(super) struct Paused {
    writer: Option<PackWriter>,
    written: Vec<(PackId, PackInfo, u64)>,
    moved: HashMap<ChunkId, (Location, Location)>,
    bytes: u64,
}

/// What the copy step did: the copy so far, the packs it must leave (torn, or
/// holding a bad chunk), and the bad chunks to mark.
pub(super) struct Copied {
    pub copy: Paused,
    pub skip: HashSet<PackId>,
    pub bad: Vec<(ChunkId, BadMark)>,
}

/// Copies the live chunks of the packs to rewrite.
pub(super) fn copy_live<'a>(
    store: &'a Store,
    created: &'a Created,
    plan: &Plan,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<Copied> {
    let mut copier = Copier::new(store, created);
    let mut skip: HashSet<PackId> = HashSet::new();
    let mut bad: Vec<(ChunkId, BadMark)> = Vec::new();
    for (pack, action) in &plan.actions {
        if *action != Action::Rewrite {
            continue;
        }
        let PackFrames { live, torn, .. } = classify(store, *pack, quarantine.released(pack))?;
        if torn {
            skip.insert(*pack);
            continue;
        }
        for (id, loc, what) in copier.copy_all(&live)? {
            skip.insert(*pack);
            report
                .bad_chunks
                .push(format!("chunk {id} in pack {}: {what}", pack.to_hex()));
            bad.push((
                id,
                BadMark {
                    what,
                    location: Some(format!("pack {} offset {}", pack.to_hex(), loc.offset)),
                    found: chrono::Utc::now().to_rfc3339(),
                },
            ));
        }
    }
    Ok(Copied {
        copy: copier.pause(),
        skip,
        bad,
    })
}

//! Backing up through a server: a session that asks which chunks the server lacks, sends only
//! those from uploader threads while reading goes on, and commits the points.

use std::sync::{Arc, Mutex};

use cairn_api::{Commit, MAX_IDS, Uploaded};
use cairn_store::chunk::ChunkId;
use cairn_store::{
    ChunkFilter, ChunkSink, EncodedChunk, Error, NewPoint, RecoveryPoint, Result, StagedPoint,
    StoreWrite, TreeWriter, pack,
};

use crate::ids_bytes;
use crate::{Body, Remote, remote_err};

/// Bytes of frames sent per upload request.
const UPLOAD_BYTES: usize = 4 << 20;

/// Upload requests in flight (one per uploader thread).
const UPLOADERS: usize = 2;

/// Tree chunks asked about at once.
const TREE_BATCH: usize = 256;

/// A backup session in a remote store: chunks are batched and sent by uploader threads while
/// the pipeline goes on; the first upload error fails the next call.
pub struct Upload {
    remote: Arc<Remote>,
    session: String,
    buffer: Vec<u8>,
    /// Tree chunks put and not yet asked about.
    trees: Vec<EncodedChunk>,
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    uploaders: Vec<std::thread::JoinHandle<()>>,
    failed: Arc<Mutex<Option<Error>>>,
    /// What the server said of the uploads: chunks received and appended.
    counts: Arc<Mutex<Uploaded>>,
    sent_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of frames put so far (sent or about to be).
    put_bytes: u64,
    /// Of them, those of the points staged so far.
    staged_bytes: u64,
    /// The VM's key backup interval, as the server keeps it.
    pub(crate) key_interval: u32,
    committed: bool,
}

impl Upload {
    pub(crate) fn start(remote: Arc<Remote>, session: String) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(UPLOADERS);
        let failed = Arc::new(Mutex::new(None));
        let counts = Arc::new(Mutex::new(Uploaded {
            received: 0,
            stored: 0,
        }));
        let sent_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let uploaders = (0..UPLOADERS)
            .map(|_| {
                let (rx, remote, session) = (rx.clone(), Arc::clone(&remote), session.clone());
                let (failed, counts, sent) = (
                    Arc::clone(&failed),
                    Arc::clone(&counts),
                    Arc::clone(&sent_bytes),
                );
                std::thread::spawn(move || {
                    for body in rx {
                        let len = body.len() as u64;
                        let r: Result<Uploaded> = remote.json(
                            reqwest::Method::POST,
                            &format!("sessions/{session}/chunks"),
                            Some(Body::Bytes(body)),
                        );
                        match r {
                            Ok(u) => {
                                sent.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                                if let Ok(mut c) = counts.lock() {
                                    c.received += u.received;
                                    c.stored += u.stored;
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failed.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            remote,
            session,
            buffer: Vec::with_capacity(UPLOAD_BYTES + (4 << 20)),
            trees: Vec::new(),
            tx: Some(tx),
            uploaders,
            failed,
            counts,
            sent_bytes,
            put_bytes: 0,
            staged_bytes: 0,
            key_interval: 0,
            committed: false,
        }
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock() {
            Ok(mut f) => match f.take() {
                Some(e) => Err(e),
                None => Ok(()),
            },
            Err(_) => Err(Error::Internal("an uploader panicked".into())),
        }
    }

    fn append(&mut self, chunk: &EncodedChunk) -> Result<bool> {
        let before = self.buffer.len();
        pack::encode_frame(chunk, &mut self.buffer);
        self.put_bytes += (self.buffer.len() - before) as u64;
        if self.buffer.len() >= UPLOAD_BYTES {
            self.send()?;
        }
        Ok(true)
    }

    /// Sends the tree chunks put so far that the store lacks.
    fn send_trees(&mut self) -> Result<()> {
        let trees = std::mem::take(&mut self.trees);
        if trees.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = trees.iter().map(|c| c.id).collect();
        let missing = Missing {
            remote: Arc::clone(&self.remote),
            session: self.session.clone(),
        }
        .missing(&ids)?;
        for (c, m) in trees.iter().zip(missing) {
            if m {
                self.append(c)?;
            }
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        self.check()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let body = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(UPLOAD_BYTES + (4 << 20)),
        );
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(body).is_ok());
        if !sent {
            self.check()?;
            return Err(Error::Usage("the uploaders stopped".into()));
        }
        Ok(())
    }

    /// Sends what is buffered and waits for every upload to be answered.
    fn drain(&mut self) -> Result<()> {
        self.send_trees()?;
        self.send()?;
        self.tx = None;
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
        self.check()
    }

    /// Chunks the server received, and of them appended (not held already), so far.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        self.counts
            .lock()
            .map_or((0, 0), |c| (c.received, c.stored))
    }

    /// For each id, whether the server's store holds the whole subtree under it
    /// ([`cairn_store::Store::holds_subtrees`]; for a token whose lookups see only its own
    /// chunks, only those of its disks' latest points count).
    ///
    /// # Errors
    /// The server's refusal, transport errors.
    pub fn holds_subtrees(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ask_each(&self.remote, &self.session, "subtrees", ids)
    }

    /// Sends what is left and publishes `points` (each with its id: a new one, or a replica's
    /// as the source store has it) together.
    ///
    /// # Errors
    /// An upload that failed; the server's refusal (nothing is published then).
    pub fn commit_points(mut self, points: Vec<RecoveryPoint>) -> Result<Vec<RecoveryPoint>> {
        self.drain()?;
        let body =
            serde_json::to_string(&Commit { points }).map_err(|e| Error::Usage(e.to_string()))?;
        let done: Vec<RecoveryPoint> = self.remote.json(
            reqwest::Method::POST,
            &format!("sessions/{}/commit", self.session),
            Some(Body::Json(body)),
        )?;
        self.committed = true;
        Ok(done)
    }

    /// The VM's policy as the server keeps it: every N-th backup of a disk is a key backup.
    #[must_use]
    pub fn key_interval(&self) -> u32 {
        self.key_interval
    }

    /// Bytes of frames the server accepted so far.
    #[must_use]
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.tx = None;
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
        if !self.committed {
            // Nothing of an uncommitted session is kept; tell the server now rather than
            // leave it to its idle timeout.
            let _ = self.remote.call(
                reqwest::Method::DELETE,
                &format!("sessions/{}", self.session),
                None,
            );
        }
    }
}

impl ChunkSink for Upload {
    fn put(&mut self, chunk: &EncodedChunk) -> Result<bool> {
        // Data chunks come here new (the hashing stage asked); tree chunks are asked about a
        // batch at a time, so that an unchanged stretch's leaves are not sent again.
        if chunk.kind == cairn_store::ChunkKind::Tree {
            self.trees.push(chunk.clone());
            if self.trees.len() >= TREE_BATCH {
                self.send_trees()?;
            }
            return Ok(true);
        }
        self.append(chunk)
    }

    fn zstd_level(&self) -> i32 {
        self.remote.info.config.zstd_level
    }

    fn keys(&self) -> Result<&cairn_store::Keys> {
        self.remote.keys()
    }
}

/// Asks `sessions/{session}/{question}` of every id, [`MAX_IDS`] at a time: one byte an id
/// back, read as a yes (non-zero) or a no.
fn ask_each(remote: &Remote, session: &str, question: &str, ids: &[ChunkId]) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(ids.len());
    for batch in ids.chunks(MAX_IDS) {
        let answer = remote.call(
            reqwest::Method::POST,
            &format!("sessions/{session}/{question}"),
            Some(Body::Bytes(ids_bytes(batch))),
        )?;
        if answer.len() != batch.len() {
            return Err(remote_err(
                format!(
                    "{question}: {} answers for {} ids",
                    answer.len(),
                    batch.len()
                ),
                None,
            ));
        }
        out.extend(answer.iter().map(|b| *b != 0));
    }
    Ok(out)
}

/// Asks the server which ids a session's store lacks.
struct Missing {
    remote: Arc<Remote>,
    session: String,
}

impl ChunkFilter for Missing {
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ask_each(&self.remote, &self.session, "missing", ids)
    }
}

impl<'a> StoreWrite<'a> for Upload {
    fn filter(&self) -> Arc<dyn ChunkFilter + 'a> {
        Arc::new(Missing {
            remote: Arc::clone(&self.remote),
            session: self.session.clone(),
        })
    }

    fn tree_writer(&self) -> TreeWriter {
        TreeWriter::default()
    }

    fn layout(&mut self, _latest: &RecoveryPoint, _percent: u32) -> Result<()> {
        // The server lays out its own packs; a client cannot see where chunks sit.
        Ok(())
    }

    fn stage_tree(&mut self, point: NewPoint, mut tree: TreeWriter) -> Result<StagedPoint> {
        let root = tree_finish(&mut tree, self)?;
        let mut staged = StagedPoint::new(point, &root, self.remote.info.config.chunk_size);
        // Counted as chunks are put (the uploads answer later): what this point adds, its
        // tree chunks asked about first.
        self.send_trees()?;
        staged.set_new_stored(self.put_bytes.saturating_sub(self.staged_bytes));
        self.staged_bytes = self.put_bytes;
        Ok(staged)
    }

    fn commit_run(self: Box<Self>, staged: Vec<StagedPoint>) -> Result<Vec<RecoveryPoint>> {
        self.commit_points(staged.into_iter().map(StagedPoint::into_point).collect())
    }
}

fn tree_finish(tree: &mut TreeWriter, sink: &mut dyn ChunkSink) -> Result<cairn_store::TreeRoot> {
    std::mem::take(tree).finish(sink)
}

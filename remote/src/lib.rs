//! A cairn store reached over HTTPS: the client side of `cairn serve`'s API.
//!
//! [`Remote`] implements [`StoreRead`] (points, chunks fetched in batches and each checked
//! against its id) and opens [`Upload`]s, which implement [`StoreWrite`]: the backup pipeline
//! runs here unchanged, asks the server which chunk ids it lacks a batch at a time, and sends
//! only those, compressed, from two uploader threads while reading goes on. The server checks
//! every chunk and every commit again; nothing here is trusted by it.
//!
//! The server's certificate is checked against a CA file, or pinned by its SHA-256 fingerprint
//! (as PBS clients do), or against the system's roots; it is never silently trusted.

mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::{
    Commit, MAX_IDS, MAX_READ, OpenSession, READ_FAILED, READ_OK, SessionOpened, StoreInfo,
    Uploaded,
};
use cairn_store::chunk::{self, ChunkId};
use cairn_store::{
    ChunkFilter, ChunkSink, EncodedChunk, Error, NewPoint, RecoveryPoint, Result, StagedPoint,
    StoreConfig, StoreRead, StoreWrite, TreeWriter, pack,
};

pub use tls::TlsOptions;

/// Bytes of frames sent per upload request.
const UPLOAD_BYTES: usize = 4 << 20;
/// Upload requests in flight (one per uploader thread).
const UPLOADERS: usize = 2;
/// Bytes a restore asks for at once (its window).
const READ_AHEAD: u64 = 16 << 20;
/// Tree chunks asked about at once.
const TREE_BATCH: usize = 256;
/// Chunks per read request.
const READ_GROUP: usize = 4;
/// Read requests in flight.
const READS_IN_FLIGHT: usize = 8;
const _: () = assert!(
    READ_GROUP <= MAX_READ,
    "a read request takes at most MAX_READ ids"
);

/// Whether `store` names a remote store (`https://HOST:PORT`).
#[must_use]
pub fn is_remote(store: &str) -> bool {
    store.starts_with("https://") || store.starts_with("http://")
}

/// How to reach a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The token's secret (`CAIRN_TOKEN`, `--token-file`).
    pub token: String,
    /// Certificate checks.
    pub tls: TlsOptions,
}

/// A store behind `cairn serve`.
pub struct Remote {
    base: String,
    http: reqwest::blocking::Client,
    token: String,
    info: StoreInfo,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn remote_err(what: String, status: Option<u16>) -> Error {
    Error::Remote { what, status }
}

impl Remote {
    /// Connects to the server at `url` (`https://HOST:PORT`) and reads the store's
    /// configuration with the token.
    ///
    /// # Errors
    /// A plain `http://` URL, a certificate that fails its check, a refused token, a server
    /// that cannot be reached.
    pub fn connect(url: &str, opts: &Options) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(Error::Usage(format!(
                "{url}: cairn talks to a server over HTTPS only (https://HOST:PORT)"
            )));
        }
        if opts.token.is_empty() {
            return Err(Error::Usage(format!(
                "{url}: no token: set CAIRN_TOKEN or pass --token-file FILE"
            )));
        }
        let http = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls::client_config(&opts.tls)?)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| remote_err(format!("{url}: {e}"), None))?;
        let mut remote = Self {
            base,
            http,
            token: opts.token.trim().to_owned(),
            info: StoreInfo {
                config: StoreConfig::new(cairn_store::DEFAULT_CHUNK_SIZE)?,
                server: String::new(),
                token: String::new(),
                role: cairn_api::Role::Restore,
            },
        };
        remote.info = serde_json::from_slice(&remote.call(reqwest::Method::GET, "store", None)?)
            .map_err(|e| remote_err(format!("{url}: not a cairn server: {e}"), None))?;
        Ok(remote)
    }

    /// The server's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.base
    }

    /// What the server said of itself and of the token.
    #[must_use]
    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// One request to `/api/v1/{path}`; a non-2xx answer is an error carrying the server's
    /// message.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Body>) -> Result<Vec<u8>> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        match body {
            Some(Body::Json(j)) => {
                req = req.header("content-type", "application/json").body(j);
            }
            Some(Body::Bytes(b)) => {
                req = req
                    .header("content-type", "application/octet-stream")
                    .body(b);
            }
            None => {}
        }
        let what = format!("{method} {url}");
        let resp = req.send().map_err(|e| {
            let mut text = format!("{what}: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                text.push_str(&format!(": {s}"));
                src = s.source();
            }
            // A certificate refused says how to trust the right one.
            if text.to_ascii_lowercase().contains("certificate") && !text.contains("--fingerprint")
            {
                text.push_str(
                    "; to trust this server, pass --fingerprint with the SHA-256 fingerprint \
                     `cairn serve` prints when it starts (or set CAIRN_FINGERPRINT), or \
                     --server-ca with the CA that signed its certificate",
                );
            }
            remote_err(text, None)
        })?;
        let status = resp.status();
        let bytes = resp.bytes().map_err(|e| {
            remote_err(
                format!("{what}: reading the answer: {e}"),
                Some(status.as_u16()),
            )
        })?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(remote_err(
                format!("{what}: the server answered {status}: {msg}"),
                Some(status.as_u16()),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<T> {
        let bytes = self.call(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            remote_err(
                format!("{path}: the server's answer is not what cairn expects: {e}"),
                None,
            )
        })
    }

    /// Forgets a point, or says what that would free (an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn forget(&self, id: &str, dry_run: bool) -> Result<serde_json::Value> {
        let q = if dry_run { "?dry_run=true" } else { "" };
        self.json(
            reqwest::Method::POST,
            &format!("points/{id}/forget{q}"),
            None,
        )
    }

    /// Protects or unprotects a point (an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn protect(
        &self,
        id: &str,
        protected: bool,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<RecoveryPoint> {
        let body = match until {
            Some(u) => serde_json::json!({ "until": u }),
            None => serde_json::json!({ "protected": protected }),
        }
        .to_string();
        self.json(
            reqwest::Method::POST,
            &format!("points/{id}/protect"),
            Some(Body::Json(body)),
        )
    }

    /// The report document of the server's store (docs/report-json.md; an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn report(&self) -> Result<serde_json::Value> {
        self.json(reqwest::Method::GET, "report", None)
    }

    /// Collects garbage in the server's store (an admin token); `body` as `POST /api/v1/gc`
    /// takes it.
    ///
    /// # Errors
    /// The server's refusal.
    pub fn gc(&self, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.json(
            reqwest::Method::POST,
            "gc",
            Some(Body::Json(body.to_string())),
        )
    }

    /// Prunes by `rules` (an admin token), as `{"rules": {...}, "dry_run": bool}`.
    ///
    /// # Errors
    /// The server's refusal.
    pub fn prune(&self, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.json(
            reqwest::Method::POST,
            "prune",
            Some(Body::Json(body.to_string())),
        )
    }

    /// Opens a backup session for `disks` of `vm`. With `wait`, a disk that another session
    /// holds is waited for (asked again every second, for up to `wait`). With `adopt` (an
    /// admin token), its points may take a VM identity another VM name owns.
    ///
    /// # Errors
    /// The server's refusal (a token for other VMs, a disk in use when not waiting).
    pub fn upload(
        self: &Arc<Self>,
        vm: &str,
        vm_uuid: Option<&str>,
        disks: &[String],
        wait: Option<Duration>,
        adopt: bool,
    ) -> Result<Upload> {
        let body = serde_json::to_string(&OpenSession {
            vm: vm.to_owned(),
            vm_uuid: vm_uuid.map(str::to_owned),
            disks: disks.to_vec(),
            adopt,
        })
        .map_err(|e| Error::Usage(e.to_string()))?;
        let started = std::time::Instant::now();
        let opened: SessionOpened = loop {
            match self.json(
                reqwest::Method::POST,
                "sessions",
                Some(Body::Json(body.clone())),
            ) {
                Err(Error::Remote {
                    status: Some(409), ..
                }) if wait.is_some_and(|w| started.elapsed() < w) => {
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other?,
            }
        };
        let mut upload = Upload::start(Arc::clone(self), opened.session);
        upload.key_interval = opened.key_interval;
        Ok(upload)
    }

    /// The ids of the points forgotten from the server's store: a replica never brings one
    /// back.
    ///
    /// # Errors
    /// The server's refusal.
    pub fn forgotten(&self) -> Result<std::collections::HashSet<String>> {
        self.json(reqwest::Method::GET, "forgotten", None)
    }

    /// The store's time zone and every VM's policy (an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn policies(&self) -> Result<serde_json::Value> {
        self.json(reqwest::Method::GET, "policies", None)
    }

    /// Sets a VM's policy (an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn set_policy(&self, vm: &str, policy: &cairn_store::Policy) -> Result<()> {
        let body = serde_json::to_string(policy).map_err(|e| Error::Usage(e.to_string()))?;
        let _: serde_json::Value = self.json(
            reqwest::Method::PUT,
            &format!("policies/{vm}"),
            Some(Body::Json(body)),
        )?;
        Ok(())
    }
}

enum Body {
    Json(String),
    Bytes(Vec<u8>),
}

fn ids_bytes(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

impl StoreRead for Remote {
    fn config(&self) -> &StoreConfig {
        &self.info.config
    }

    fn read_ahead(&self) -> u64 {
        // Each window is several requests in flight; a bigger one keeps more of them going
        // (a restore holds about four windows).
        READ_AHEAD
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>> {
        self.json(reqwest::Method::GET, "points", None)
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        match self.fetch(std::slice::from_ref(id))?.into_iter().next() {
            Some(Ok(c)) => {
                let mut plain = vec![0u8; c.plain_len as usize];
                check_into(id, &c, &mut plain)?;
                Ok(plain)
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::MissingChunk(*id)),
        }
    }

    fn read_chunks(&self, ids: &[ChunkId], slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        // Groups of a few chunks, several requests in flight, each group decoded and checked
        // by the thread that fetched it: the server reads one group while this side decodes
        // another.
        let mut slots = slots;
        let groups: Vec<_> = ids
            .chunks(READ_GROUP)
            .zip(slots.chunks_mut(READ_GROUP))
            .collect();
        let answers = in_lanes(groups, |(g, s)| self.read_group(g, s))?;
        Ok(answers.into_iter().flatten().collect())
    }

    fn read_encoded(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        let groups: Vec<&[ChunkId]> = ids.chunks(READ_GROUP).collect();
        let answers = in_lanes(groups, |g| {
            let mut plain = Vec::new();
            g.iter()
                .zip(self.fetch(g)?)
                .map(|(id, got)| {
                    let c = got?;
                    plain.resize(c.plain_len as usize, 0);
                    check_into(id, &c, &mut plain)?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Decodes a chunk the server sent into the front of `out` and checks it against its id.
///
/// # Errors
/// [`Error::BadChunk`] when it does not decode or hash to `id`.
fn check_into(id: &ChunkId, c: &EncodedChunk, out: &mut [u8]) -> Result<()> {
    chunk::decode_into(id, c.codec, c.plain_len, &c.bytes, out).map_err(|what| Error::BadChunk {
        id: *id,
        where_: "as the server sent it".into(),
        what,
    })
}

/// Runs `f` on each item, [`READS_IN_FLIGHT`] threads at a time (each a lane of items taken in
/// turn, so that as many requests are in flight), and returns the answers in the items' order.
///
/// # Errors
/// The first error of any item.
fn in_lanes<I: Send, T: Send>(items: Vec<I>, f: impl Fn(I) -> Result<T> + Sync) -> Result<Vec<T>> {
    let mut lanes: Vec<Vec<(usize, I)>> = (0..READS_IN_FLIGHT).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % READS_IN_FLIGHT].push((i, item));
    }
    let f = &f;
    let done: Vec<Result<Vec<(usize, T)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|lane| {
                scope.spawn(move || {
                    lane.into_iter()
                        .map(|(i, item)| Ok((i, f(item)?)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Usage("a reader thread panicked".into())))
            })
            .collect()
    });
    let mut answers = Vec::new();
    for lane in done {
        answers.extend(lane?);
    }
    answers.sort_by_key(|(i, _)| *i);
    Ok(answers.into_iter().map(|(_, t)| t).collect())
}

impl Remote {
    /// Reads a group of chunks into their slots, each decoded and checked against its id.
    fn read_group(&self, ids: &[ChunkId], slots: &mut [&mut [u8]]) -> Result<Vec<Option<Error>>> {
        Ok(ids
            .iter()
            .zip(self.fetch(ids)?)
            .zip(slots.iter_mut())
            .map(|((id, got), slot)| match got {
                Ok(c) => check_into(id, &c, slot).err(),
                Err(e) => Some(e),
            })
            .collect())
    }

    /// The chunks `ids` (at most [`MAX_READ`]) as stored, in order: not yet checked.
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<Result<EncodedChunk>>> {
        let body = self.call(
            reqwest::Method::POST,
            "chunks/read",
            Some(Body::Bytes(ids_bytes(ids))),
        )?;
        parse_read_answer(&body, ids)
    }
}

/// The records of a `chunks/read` answer, one per id asked (see docs/api.md): each a frame (not
/// yet checked against its id beyond its header) or the server's message. The answer is
/// hostile input: every length is checked against what is there, trailing bytes are refused.
///
/// # Errors
/// An answer that is cut short, has an unknown record status or bytes past its last record.
fn parse_read_answer(body: &[u8], ids: &[ChunkId]) -> Result<Vec<Result<EncodedChunk>>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut at = 0usize;
    let short = || remote_err("chunks/read: the server's answer is cut short".into(), None);
    for id in ids {
        let status = *body.get(at).ok_or_else(short)?;
        at += 1;
        match status {
            READ_OK => {
                let hl = pack::FRAME_HEADER_SIZE as usize;
                let head = body.get(at..at + hl).ok_or_else(short)?;
                let stored = u32::from_be_bytes([head[44], head[45], head[46], head[47]]) as usize;
                let frame = body.get(at..at + hl + stored).ok_or_else(short)?;
                let mut c = pack::decode_frames(frame, 1)
                    .map_err(|e| remote_err(format!("chunks/read: {e}"), None))?;
                at += hl + stored;
                match c.pop() {
                    Some(c) if c.id == *id => out.push(Ok(c)),
                    _ => out.push(Err(Error::BadChunk {
                        id: *id,
                        where_: "as the server sent it".into(),
                        what: "the server sent another chunk".into(),
                    })),
                }
            }
            READ_FAILED => {
                let len = body.get(at..at + 4).ok_or_else(short)?;
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let msg = body.get(at + 4..at + 4 + len).ok_or_else(short)?;
                at += 4 + len;
                out.push(Err(remote_err(
                    format!("chunk {id}: {}", String::from_utf8_lossy(msg)),
                    None,
                )));
            }
            s => return Err(remote_err(format!("chunks/read: record status {s}"), None)),
        }
    }
    if at != body.len() {
        return Err(remote_err(
            format!(
                "chunks/read: {} bytes past the last record",
                body.len() - at
            ),
            None,
        ));
    }
    Ok(out)
}

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
    key_interval: u32,
    committed: bool,
}

impl Upload {
    fn start(remote: Arc<Remote>, session: String) -> Self {
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
            Err(_) => Err(Error::Usage("an uploader panicked".into())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(bytes: &[u8]) -> EncodedChunk {
        chunk::encode(bytes, cairn_store::ChunkKind::Data, 1)
    }

    #[test]
    fn read_answers_parse_and_bad_ones_are_refused() {
        let (a, b) = (chunk(&[1u8; 300]), chunk(b"second"));
        let mut body = vec![READ_OK];
        pack::encode_frame(&a, &mut body);
        body.push(READ_FAILED);
        body.extend_from_slice(&4u32.to_be_bytes());
        body.extend_from_slice(b"gone");
        let got = parse_read_answer(&body, &[a.id, b.id]).expect("parses");
        assert!(matches!(&got[0], Ok(c) if c.id == a.id));
        assert!(matches!(&got[1], Err(e) if e.to_string().contains("gone")));
        // Another chunk than the one asked for, a cut, trailing bytes, an unknown status.
        let other = parse_read_answer(&body, &[b.id, b.id]).expect("parses");
        assert!(other[0].is_err());
        assert!(parse_read_answer(&body[..body.len() - 1], &[a.id, b.id]).is_err());
        let mut long = body.clone();
        long.push(0);
        assert!(parse_read_answer(&long, &[a.id, b.id]).is_err());
        assert!(parse_read_answer(&[7], &[a.id]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_parses_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), n in 0usize..4) {
            let ids = vec![ChunkId([3; 32]); n];
            let _ = parse_read_answer(&body, &ids);
        }

        #[test]
        fn mutated_answers_never_panic(at in 0usize..400, byte in proptest::num::u8::ANY) {
            let a = chunk(&[5u8; 200]);
            let mut body = vec![READ_OK];
            pack::encode_frame(&a, &mut body);
            body.push(READ_FAILED);
            body.extend_from_slice(&3u32.to_be_bytes());
            body.extend_from_slice(b"bad");
            let i = at % body.len();
            body[i] = byte;
            let _ = parse_read_answer(&body, &[a.id, a.id]);
        }
    }
}

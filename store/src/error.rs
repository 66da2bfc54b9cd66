//! Errors of the chunk store.

use std::path::PathBuf;

use crate::chunk::ChunkId;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file of the store.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The points are committed (their root files are in place) but the catalogue could not be
    /// updated: they are not listed yet, and the next writer to open the store publishes them.
    #[error(
        "point(s) {} are stored (their root files are written), but the catalogue could not be \
         updated ({source}); the next cairn command that writes to the store lists them: do not \
         back them up again",
        ids.join(", ")
    )]
    Unpublished {
        /// The points (short ids).
        ids: Vec<String>,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A point names chunks that are neither in the store nor sent with it.
    #[error(
        "the point names {missing} chunk(s) the store does not hold ({first}...); nothing was \
         stored (a garbage collection may have removed a chunk the backup reused: run it again)"
    )]
    Incomplete {
        /// How many are missing.
        missing: u64,
        /// The first few, as hex.
        first: String,
    },
    /// A remote store (`cairn serve`) refused a request or could not be reached.
    #[error("{what}")]
    Remote {
        /// The request and what went wrong.
        what: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
    },
    /// A RocksDB error.
    #[error("index {}: {source}{}", path.display(), index_hint(source))]
    Index {
        /// The index folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// The folder is not a cairn store, or its config cannot be read.
    #[error("{}: {what}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Another process holds the store's write lock.
    #[error("store {} is locked by another writer ({holder}); wait for it or pass --wait", path.display())]
    Locked {
        /// The store.
        path: PathBuf,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// A chunk the index names is missing or does not match its id.
    #[error("chunk {id} ({where_}): {what}")]
    BadChunk {
        /// The chunk.
        id: ChunkId,
        /// Where it was looked for (pack and offset).
        where_: String,
        /// What is wrong.
        what: String,
    },
    /// An encrypted store opened without its key, asked for what only the key opens.
    #[error(
        "{}: the store is encrypted and no key was given: this needs its key (`--key-file`, \
         `CAIRN_KEY_FILE`, or the store's key file in ~/.config/cairn/keys; `cairn key recover` \
         with a recovery key); list, prune, gc and verify of the frames need none",
        store.display()
    )]
    NoKey {
        /// The store.
        store: std::path::PathBuf,
    },
    /// A data chunk of an encrypted store, read without its key: its frame's CRCs were checked,
    /// nothing more can be (a verify without the key counts it as checked that far).
    #[error("chunk {0} is sealed and the store's key was not given")]
    Sealed(ChunkId),
    /// A chunk id not in the index.
    #[error("chunk {0} is not in the store")]
    MissingChunk(ChunkId),
    /// An object that is not where packs are kept.
    #[error("{storage}: object {name} is not there")]
    ObjectMissing {
        /// Where the objects are (a folder, `s3://bucket/prefix at endpoint`).
        storage: String,
        /// The object.
        name: String,
    },
    /// Where packs are kept failed or refused (after its retries).
    #[error("{storage}: object {name}: {what}")]
    Objects {
        /// Where the objects are.
        storage: String,
        /// The object (or the prefix listed).
        name: String,
        /// What went wrong.
        what: String,
    },
    /// A pack frame that cannot be parsed.
    #[error("{}: at offset {offset}: {what}", path.display())]
    BadPack {
        /// The pack file.
        path: PathBuf,
        /// Offset of the frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A recovery point that cannot be found or read.
    #[error("recovery point {0}")]
    Point(String),
    /// A point copied in (replication, a server's commit) that the store holds already.
    #[error("point {0} is in this store already")]
    AlreadyHeld(String),
    /// A point claims a VM identity (UUID within a pool) that another VM name owns.
    #[error("{0}")]
    IdentityTaken(Box<IdentityClaim>),
    /// A point the store's minimum retention holds: no forget, prune or gc removes it before
    /// then.
    #[error("{0}")]
    Held(Box<HeldPoint>),
    /// A request the store cannot satisfy (bad argument).
    #[error("{0}")]
    Usage(String),
    /// A failure inside cairn itself, not of the request nor of the store's files: a thread
    /// that panicked, a lock poisoned by one, a state that cannot happen. A server answers it
    /// 500, never 400.
    #[error("internal error: {0}")]
    Internal(String),
    /// An index entry that does not decode. Nothing reads it as a default: writers and garbage
    /// collection stop, and the index must be rebuilt from the packs and root files.
    #[error(
        "index {}: {family} entry {key}: {what}; the index is damaged: run `cairn repair --rebuild-index`",
        path.display()
    )]
    CorruptIndex {
        /// The index folder.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The entry's key, in hex.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    /// A value that cannot be encoded for writing (nothing is written in its place).
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let (path, what) = (path.into(), what.into());
        move |source| Self::Io { path, what, source }
    }
}

/// Result of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A VM name claiming the identity another owns ([`Error::IdentityTaken`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "VM {claimant:?} claims the identity (UUID {uuid}{}) of VM {owner:?}, whose points carry \
     it; nothing was stored. If {owner:?} was renamed to {claimant:?}, back up once with \
     `--adopt` (on the store's machine, or with an admin token)",
    pool.as_deref().map(|p| format!(", pool {p}")).unwrap_or_default()
)]
pub struct IdentityClaim {
    /// The UUID.
    pub uuid: String,
    /// The pool, if any.
    pub pool: Option<String>,
    /// The VM name whose points carry it.
    pub owner: String,
    /// The VM name that claimed it.
    pub claimant: String,
}

/// A point the minimum retention holds ([`Error::Held`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "point {point} of {vm}/{disk} is held by the store's minimum retention until {until}; \
     nothing was removed"
)]
pub struct HeldPoint {
    /// The point (short id).
    pub point: String,
    /// Its VM.
    pub vm: String,
    /// Its disk.
    pub disk: String,
    /// When it may be removed (RFC 3339).
    pub until: String,
}

/// What to do about a RocksDB error that says the index is damaged.
fn index_hint(e: &rocksdb::Error) -> &'static str {
    if e.kind() == rocksdb::ErrorKind::Corruption {
        "; the index is damaged: `cairn repair --rebuild-index` rebuilds it from the packs and \
         root files (the damaged one is kept aside)"
    } else {
        ""
    }
}

//! `cairn serve`: a store as an HTTPS service that many hosts back up into at once.
//!
//! The server holds the store's write lock for as long as it runs (a local writer is refused
//! with a message naming it, as two local writers are) and runs many backup sessions in one
//! process, each with its own packs. What a client does is what a local backup does, split at
//! the store's interface ([`cairn_store::StoreRead`], [`cairn_store::StoreWrite`]): the client
//! reads, chunks, hashes and compresses; it asks which chunk ids the store lacks, uploads only
//! those, and commits points whose trees it built. The server trusts none of it:
//! - every uploaded chunk is decoded and hashed before it is appended: a chunk whose bytes are
//!   not its id is refused, and nothing of that request is stored;
//! - a commit checks that every chunk the points name is in the store or was uploaded in the
//!   session, of the kind its place needs ([`cairn_store::Session::check_references`]);
//! - a point id the store holds is refused: nothing is ever overwritten;
//! - a point's time is the server's for every token but an admin's (the client's claim is kept
//!   as a label), a VM identity (UUID within a pool) is its VM name's, a disk's size is bounded,
//!   and every data chunk is the length its place on the disk holds
//!   ([`cairn_store::claims`]);
//! - no token, admin or not, removes a point the store's minimum retention or a `protect
//!   --until` holds.
//!
//! What each token can and cannot do, and the limits on connections, sessions and requests,
//! are in `docs/security.md`; the API takes tokens only from `Authorization: Bearer` and refuses
//! a foreign `Origin` and a body of another type than its own (a page of another site cannot
//! drive a logged-in browser).
//!
//! # Many writers at once
//! | what | how |
//! |---|---|
//! | sessions | each its own [`cairn_store::Session`] and packs; uploads to different sessions run in parallel |
//! | one disk, two sessions | refused with 409 naming the holder (the client retries when asked to wait) |
//! | commits, forget, protect | one at a time ([`cairn_store::Store::commit_lock`]), each a few synced batches |
//! | garbage collection | plans from a read-only view; its final step takes the commit lock and leaves alone the packs of live sessions and of sessions committing (registered before they leave the session table); a chunk a session reused that the collection removed makes that session's commit fail its reference check (409), never a point naming a missing chunk; the server's own chunk reads register as readers |
//! | a session's client dies | the session is dropped after `idle` seconds without a request; its packs are deleted |
//! | the server is stopped (SIGTERM, SIGINT) | requests in flight finish (30 s at most), open sessions are dropped with their packs, and the lock file says its writer finished |
//! | the server is killed | committed points are durable (commits are synced before they answer); the next start (or any writer) settles what was half-done, and `gc` deletes the dead sessions' packs |
//!
//! The HTTP API is documented in `docs/api.md`.

pub mod api;
mod listen;
mod reach;
mod sessions;
mod slots;
pub mod tls;
pub mod token;

use std::path::{Path, PathBuf};

pub use listen::{Config, Limits, Started, serve};

/// What went wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file or socket.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file, or the address.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// A usage error: what is wrong and what to do.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn io(path: &Path, what: &str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            what: what.to_owned(),
            source,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The NBD protocol, as the NetworkBlockDevice project's `doc/proto.md` specifies it: a client
//! and a server, with no knowledge of any store (like `cairn-vhd`, a library of its own).
//!
//! # What is spoken
//! - The fixed newstyle handshake: `NBD_OPT_GO` (with `NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE`,
//!   `NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`), `NBD_OPT_EXPORT_NAME` for servers that lack
//!   `NBD_OPT_GO` (XAPI's, old ones), `NBD_OPT_LIST`, `NBD_OPT_INFO`,
//!   `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`
//!   (`base:allocation`, and on the client side any context such as qemu's
//!   `qemu:dirty-bitmap:NAME`), `NBD_OPT_ABORT`, `NBD_OPT_STARTTLS` ([`tls`], rustls: the
//!   client checks the server's certificate, a server with a certificate requires TLS). The
//!   oldstyle handshake is refused (it has no export names).
//! - Transmission: `NBD_CMD_READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `BLOCK_STATUS`,
//!   `CACHE`, `DISC`; simple replies and structured replies (`OFFSET_DATA`, `OFFSET_HOLE`,
//!   `BLOCK_STATUS`, `ERROR`, `ERROR_OFFSET`, `NONE`).
//! - URIs ([`uri`]): `nbd://HOST[:PORT]/EXPORT`, `nbds://...` (TLS),
//!   `nbd+unix:///EXPORT?socket=PATH`.
//!
//! # Modules
//! - [`proto`]: every constant of the protocol, named as the spec names it.
//! - [`wire`]: the messages as bytes, read and written; every read checks magic, lengths and
//!   bounds.
//! - [`client`]: [`Client`], one connection to one export, requests pipelined.
//! - [`server`]: [`server::serve`] answers one client against a [`server::Device`].
//!
//! # Hostile peers
//! Both sides treat the other as hostile: every length is checked before anything is
//! allocated (option data, reply chunks, payloads), a read reply must cover exactly the
//! bytes asked, each once, before it is accepted, and the caller's socket timeouts bound every
//! wait. Property tests throw random and mutated bytes at every parser and at both sides of a
//! live session (`tests/hostile.rs`).

pub mod client;
pub mod error;
pub mod proto;
pub mod replay;
pub mod server;
pub mod tls;
pub mod uri;
pub mod wire;

pub use client::{BlockSize, Client, Completion, ExportInfo, Options, Stream, list_exports};
pub use error::{Error, Result};
pub use server::{Config, Device, DeviceError, Exports};
pub use uri::{Address, Uri, is_nbd_uri};
pub use wire::Extent;

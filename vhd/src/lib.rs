//! The Microsoft VHD disk image format (Virtual Hard Disk Image Format Specification v1.0),
//! as XenServer/XCP-ng, Xen Orchestra, Hyper-V and qemu write it.
//!
//! This crate owns the format and nothing else: it parses, validates, reads and writes over
//! `Read`/`Write`/`Seek` and never opens a file itself (the [`Chain`] takes an opener function).
//!
//! # What is on disk
//! - **fixed** (type 2): the disk's bytes, then a 512-byte [`Footer`].
//! - **dynamic** (type 3): a footer copy at offset 0, a 1024-byte [`Header`] (cookie
//!   `cxsparse`), the BAT (one big-endian sector number per block, `0xFFFFFFFF` = unallocated),
//!   blocks (a sector bitmap padded to a sector, then `block_size` bytes), the footer.
//! - **differencing** (type 4): as dynamic, plus the parent's UUID, timestamp, unicode name and
//!   locators in the header; unallocated blocks and sectors whose bitmap bit is clear read from
//!   the parent.
//!
//! See [`format`] for every field and constant.
//!
//! # Invariants
//! - Parse means validate: [`Vhd::open`] checks cookies, checksums (found vs expected), versions,
//!   sizes, BAT bounds and overlaps; every [`Error`] names the offset, and [`Error::InFile`] the
//!   file. No input makes this crate panic (a fuzz target and property tests hold it to that).
//! - The writers ([`write_sparse`], [`write_fixed`]) write front to back, set every bitmap bit
//!   of an allocated block, and write exact sizes with a creator (`crn `) that makes qemu,
//!   vhd-lib and libvhdi agree on the size.
//! - A differencing disk written here holds whole blocks only (Xen Orchestra merges ignore
//!   bitmaps), names its parent by a path relative to its own folder, and carries `W2ru` and
//!   `W2ku` locators.

pub mod chain;
pub mod error;
pub mod format;
pub mod reader;
pub mod stream;
pub mod writer;

pub use chain::{Chain, ContentReader, Level, MAX_CHAIN_DEPTH};
pub use error::{Error, Result, Structure};
pub use format::{DiskType, Footer, Geometry, Header, ParentLocator};
pub use reader::{BlockState, Vhd};
pub use stream::{StreamOpen, StreamVhd};
pub use writer::{DiskSpec, ParentSpec, sparse_size, vhd_timestamp, write_fixed, write_sparse};

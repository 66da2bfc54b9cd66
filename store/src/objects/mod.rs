//! Where packs live: a small storage trait with the few operations an object store has, and
//! its two implementations, a folder ([`Folder`]) and an S3-compatible bucket ([`Bucket`]: S3,
//! Garage, Ceph RGW, MinIO, through the `object_store` crate, which retries with backoff).
//!
//! Objects are written once, whole, and never renamed or changed: a pack is an object. Names
//! are `/`-separated paths relative to the storage's root (`packs/ab/ab12....pack`). Every
//! implementation runs one conformance suite (`tests/src/objects.rs`), which checks each
//! guarantee written below.
//!
//! The two implementations are modules: [`folder`] and [`bucket`]. The trait's shape is
//! object_store's: few methods, each guarantee written in its doc, one conformance suite.

mod bucket;
mod folder;

use std::path::Path;

use crate::error::{Error, Result};

pub use bucket::{Bucket, BucketConfig};
pub use folder::Folder;

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written (for a grace period before an unreferenced object is deleted:
    /// another process may be uploading the packs it will reference).
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// The operations packs need from where they are kept.
pub trait Objects: Send + Sync + std::fmt::Debug {
    /// Where the objects are, for messages (`/backups/store`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Stores the file at `path` as object `name`, whole. When it returns, the object is
    /// durable and reads back whole; a put that fails or is killed leaves no object under
    /// `name`, or (for a name that held one) the old one: never a part. Large files go in parts
    /// (a multipart upload), each retried.
    ///
    /// # Errors
    /// The file cannot be read, or the storage refuses or fails (after its retries).
    fn put_file(&self, name: &str, path: &Path) -> Result<()>;

    /// Stores `bytes` as object `name`, whole (as [`Objects::put_file`]).
    ///
    /// # Errors
    /// The storage refuses or fails (after its retries).
    fn put(&self, name: &str, bytes: &[u8]) -> Result<()>;

    /// `len` bytes of object `name` from `offset`.
    ///
    /// # Errors
    /// [`Error::ObjectMissing`] when there is no such object; a range past its end; the
    /// storage's failures.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// As [`Objects::get_range`], into `buf` (cleared first): a reader that reuses its buffers
    /// allocates nothing per read.
    ///
    /// # Errors
    /// As [`Objects::get_range`].
    fn get_range_into(&self, name: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        *buf = self.get_range(name, offset, len)?;
        Ok(())
    }

    /// The whole of object `name`.
    ///
    /// # Errors
    /// As [`Objects::get_range`].
    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Every object whose name starts with `prefix` (a folder: `packs/`), in no set order. An
    /// object put before the call is listed; one deleted just before may still be listed for a
    /// moment on a distributed store (a collection that deletes what it lists must tolerate
    /// both).
    ///
    /// # Errors
    /// The storage's failures.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Deletes object `name`; deleting one that is not there is not an error.
    ///
    /// # Errors
    /// The storage's failures.
    fn delete(&self, name: &str) -> Result<()>;
}

/// A name is relative, `/`-separated, without `.` or `..` parts.
fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(Error::Usage(format!("{name:?} is not an object name")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_root_are_refused() {
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("packs/ab/ab12.pack").is_ok());
    }

    #[test]
    fn a_plain_http_endpoint_elsewhere_is_refused() {
        let c = BucketConfig {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("http://s3.example.com".into()),
            region: "r".into(),
            key_id: "k".into(),
            secret: "s".into(),
        };
        assert!(matches!(Bucket::open(&c), Err(Error::Usage(_))));
    }
}

//! Reaching a store's bucket: at once, or on first use.

use std::path::Path;
use std::sync::Arc;

use crate::config::PacksConfig;
use crate::error::{Error, Result};
use crate::objects::{Bucket, BucketConfig, ObjectInfo, Objects};

/// Connects to the bucket of `packs` (credentials from the environment).
///
/// # Errors
/// A URL that is not `s3://BUCKET/PREFIX`, credentials missing, a plain-http endpoint off this
/// machine.
pub fn connect(packs: &PacksConfig) -> Result<Arc<dyn Objects>> {
    let config = BucketConfig::from_url(
        &packs.url,
        packs.endpoint.as_deref(),
        packs.region.as_deref(),
    )?;
    Ok(Arc::new(Bucket::open(&config)?))
}

/// The bucket of `packs`, connected on first use: a command that reads only the index (`list`,
/// `report`) needs no credentials, and one that needs the bucket fails at its first request
/// with what [`connect`] says.
#[must_use]
pub fn connect_lazily(packs: &PacksConfig) -> Arc<dyn Objects> {
    Arc::new(Lazy {
        packs: packs.clone(),
        bucket: std::sync::OnceLock::new(),
    })
}

#[derive(Debug)]
struct Lazy {
    packs: PacksConfig,
    bucket: std::sync::OnceLock<std::result::Result<Arc<dyn Objects>, String>>,
}

impl Lazy {
    fn bucket(&self) -> Result<&Arc<dyn Objects>> {
        self.bucket
            .get_or_init(|| connect(&self.packs).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Usage(e.clone()))
    }
}

impl Objects for Lazy {
    fn describe(&self) -> String {
        match &self.packs.endpoint {
            Some(e) => format!("{} at {e}", self.packs.url),
            None => self.packs.url.clone(),
        }
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        self.bucket()?.put_file(name, path)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.bucket()?.put(name, bytes)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.bucket()?.get_range(name, offset, len)
    }

    fn get_range_into(&self, name: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        self.bucket()?.get_range_into(name, offset, len, buf)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.bucket()?.get(name)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.bucket()?.list(prefix)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.bucket()?.delete(name)
    }
}

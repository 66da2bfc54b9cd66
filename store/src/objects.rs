//! Where packs live: a small storage trait with the few operations an object store has, and
//! its two implementations, a folder ([`Folder`]) and an S3-compatible bucket ([`Bucket`]: S3,
//! Garage, Ceph RGW, MinIO, through the `object_store` crate, which retries with backoff).
//!
//! Objects are written once, whole, and never renamed or changed: a pack is an object. Names
//! are `/`-separated paths relative to the storage's root (`packs/ab/ab12....pack`). Every
//! implementation runs one conformance suite (`tests/src/objects.rs`), which checks each
//! guarantee written below.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

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

/// Objects as files under a folder: a put writes a temporary file, syncs it and renames it
/// into place (then syncs the folder), so an object is whole or absent.
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
}

impl Folder {
    /// The objects under `root`.
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
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

impl Objects for Folder {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(Error::io(path, "reading"))?;
        self.put(name, &bytes)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        crate::files::write_atomic_mode(&self.path(name)?, bytes, 0o600)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(name)?;
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ObjectMissing {
                    storage: self.describe(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(&path, "opening")(e)),
        };
        let size = f
            .metadata()
            .map_err(Error::io(&path, "reading the size of"))?
            .len();
        // A range past the end is said as a bucket says it: what of it is there.
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::Objects {
                storage: self.describe(),
                name: name.to_owned(),
                what: format!(
                    "{} bytes read of the {len} asked at {offset}",
                    size.saturating_sub(offset).min(len)
                ),
            });
        }
        let len = usize::try_from(len).map_err(|_| Error::Usage("a range too large".into()))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(Error::io(&path, "reading a range"))?;
        Ok(buf)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::ObjectMissing {
                storage: self.describe(),
                name: name.to_owned(),
            }),
            Err(e) => Err(Error::io(&path, "reading")(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, "listing")(e)),
            };
            for e in entries {
                let e = e.map_err(Error::io(&dir, "listing"))?;
                let path = e.path();
                let meta = e.metadata().map_err(Error::io(&path, "reading metadata"))?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let name = rel.to_string_lossy().replace('\\', "/");
                // A temporary file of a put in progress is not an object.
                if name.ends_with(".tmp") || !name.starts_with(prefix) {
                    continue;
                }
                out.push(ObjectInfo {
                    name,
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .map(chrono::DateTime::<chrono::Utc>::from)
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, "deleting")(e)),
        }
    }
}

/// Where a bucket is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// The bucket.
    pub bucket: String,
    /// The prefix of this store's objects in it (may be empty).
    pub prefix: String,
    /// The S3 endpoint (`https://s3.example`, `http://127.0.0.1:3900` for a cluster on this
    /// machine); `None`: AWS's.
    pub endpoint: Option<String>,
    /// The region (`garage` for Garage's default).
    pub region: String,
    /// The access key id.
    pub key_id: String,
    /// The secret key.
    pub secret: String,
}

impl BucketConfig {
    /// `s3://BUCKET/PREFIX` with the endpoint and region given, credentials from the usual
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    ///
    /// # Errors
    /// A URL that is not `s3://BUCKET[/PREFIX]`, credentials missing.
    pub fn from_url(url: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::Usage(format!(
                "{url}: an object store is named s3://BUCKET/PREFIX"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("{url}: no bucket")));
        }
        let env = |k: &str| {
            std::env::var(k).map_err(|_| {
                Error::Usage(format!(
                    "{url}: {k} is not set (the bucket's credentials come from AWS_ACCESS_KEY_ID \
                     and AWS_SECRET_ACCESS_KEY)"
                ))
            })
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: endpoint.map(str::to_owned),
            region: region
                .map(str::to_owned)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into()),
            key_id: env("AWS_ACCESS_KEY_ID")?,
            secret: env("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    /// `s3://BUCKET/PREFIX`.
    #[must_use]
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Bytes above which a put goes in parts.
const MULTIPART_ABOVE: usize = 16 << 20;
/// The size of each part.
const PART: usize = 6 << 20;
/// Parts of one upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The outcome of one part's request, as [`tokio::task::JoinSet::join_next`] gives it, and
/// its buffer back when nothing else holds it.
fn part_done(
    done: Option<
        std::result::Result<(object_store::Result<()>, bytes::Bytes), tokio::task::JoinError>,
    >,
) -> object_store::Result<Option<Vec<u8>>> {
    match done {
        None => Ok(None),
        Some(Ok((Ok(()), bytes))) => Ok(bytes.try_into_mut().ok().map(Vec::from)),
        Some(Ok((Err(e), _))) => Err(e),
        Some(Err(e)) => Err(object_store::Error::JoinError { source: e }),
    }
}

/// Objects in an S3-compatible bucket, under a prefix. The calls are made on a small runtime of
/// its own and waited for: the store stays synchronous.
pub struct Bucket {
    config: BucketConfig,
    store: Box<dyn object_store::ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.config.url())
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Connects to the bucket `config` names (nothing is sent yet).
    ///
    /// # Errors
    /// A configuration the S3 client refuses; a plain `http://` endpoint that is not on this
    /// machine (credentials and data would cross the network unencrypted).
    pub fn open(config: &BucketConfig) -> Result<Self> {
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.key_id)
            .with_secret_access_key(&config.secret)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 8,
                retry_timeout: Duration::from_secs(120),
            });
        if let Some(e) = &config.endpoint {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| e.starts_with(p));
            if e.starts_with("http://") && !loopback {
                return Err(Error::Usage(format!(
                    "{e}: a bucket is reached over https (plain http only on this machine)"
                )));
            }
            b = b
                .with_endpoint(e)
                .with_allow_http(loopback)
                .with_virtual_hosted_style_request(false);
        }
        let store = b
            .build()
            .map_err(|e| Error::Usage(format!("{}: {e}", config.url())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("starting the S3 client: {e}")))?;
        Ok(Self {
            config: config.clone(),
            store: Box::new(store),
            runtime,
        })
    }

    fn path(&self, name: &str) -> Result<object_store::path::Path> {
        check_name(name)?;
        let full = if self.config.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.config.prefix)
        };
        object_store::path::Path::parse(&full)
            .map_err(|e| Error::Usage(format!("{name:?}: not an object name: {e}")))
    }

    /// Stores what `from` reads (`path` names it in errors) as object `name`, in parts: read a
    /// part at a time, several in flight, so memory stays at a few parts whatever the size and
    /// the round trips overlap. An upload that fails is aborted (its parts dropped): no object
    /// appears.
    fn put_parts(&self, name: &str, from: &mut dyn std::io::Read, path: &Path) -> Result<()> {
        let at = self.path(name)?;
        let fail = |e: object_store::Error| self.failed(name, "putting", &e);
        self.runtime.block_on(async {
            let mut up = self.store.put_multipart(&at).await.map_err(fail)?;
            // Each part read into a buffer that goes to the request as it is (no second copy)
            // and comes back for a later part once sent; PARTS_IN_FLIGHT requests at a time, on
            // the runtime's threads.
            let mut parts = tokio::task::JoinSet::new();
            let mut spare: Vec<Vec<u8>> = Vec::new();
            let sent: Result<()> = async {
                loop {
                    // A part is read once one of those in flight is done: PARTS_IN_FLIGHT
                    // buffers in all.
                    while parts.len() >= PARTS_IN_FLIGHT {
                        spare.extend(part_done(parts.join_next().await).map_err(fail)?);
                    }
                    let mut part = spare.pop().unwrap_or_default();
                    part.resize(PART, 0);
                    let n = read_full(from, &mut part).map_err(Error::io(path, "reading"))?;
                    if n == 0 {
                        break;
                    }
                    part.truncate(n);
                    let bytes = bytes::Bytes::from(part);
                    let request = up.put_part(bytes.clone().into());
                    parts.spawn(async move { (request.await, bytes) });
                    if n < PART {
                        break;
                    }
                }
                while let Some(done) = parts.join_next().await {
                    part_done(Some(done)).map_err(fail)?;
                }
                Ok(())
            }
            .await;
            let completed = match sent {
                Ok(()) => up.complete().await.map(|_| ()).map_err(fail),
                Err(e) => Err(e),
            };
            if completed.is_err() {
                parts.abort_all();
                let _ = up.abort().await;
            }
            completed
        })
    }

    /// A range read whole, or the error saying how much of it came.
    fn check_range(&self, name: &str, offset: u64, len: u64, got: usize) -> Result<()> {
        if got as u64 == len {
            return Ok(());
        }
        Err(Error::Objects {
            storage: self.describe(),
            name: name.to_owned(),
            what: format!("{got} bytes read of the {len} asked at {offset}"),
        })
    }

    fn failed(&self, name: &str, what: &str, e: &object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::ObjectMissing {
                storage: self.describe(),
                name: name.to_owned(),
            },
            e => Error::Objects {
                storage: self.describe(),
                name: name.to_owned(),
                what: format!("{what}: {e}"),
            },
        }
    }
}

impl Objects for Bucket {
    fn describe(&self) -> String {
        match &self.config.endpoint {
            Some(e) => format!("{} at {e}", self.config.url()),
            None => self.config.url(),
        }
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(Error::io(path, "opening"))?;
        let len = file.metadata().map_err(Error::io(path, "reading"))?.len();
        if len <= MULTIPART_ABOVE as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes)
                .map_err(Error::io(path, "reading"))?;
            return self.put(name, &bytes);
        }
        self.put_parts(name, &mut file, path)
    }

    fn put(&self, name: &str, mut bytes: &[u8]) -> Result<()> {
        if bytes.len() > MULTIPART_ABOVE {
            return self.put_parts(name, &mut bytes, Path::new("(memory)"));
        }
        let at = self.path(name)?;
        self.runtime
            .block_on(
                self.store
                    .put(&at, bytes::Bytes::copy_from_slice(bytes).into()),
            )
            .map(|_| ())
            .map_err(|e| self.failed(name, "putting", &e))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let at = self.path(name)?;
        let got = self
            .runtime
            .block_on(self.store.get_range(&at, offset..offset + len))
            .map_err(|e| self.failed(name, "reading a range", &e))?;
        self.check_range(name, offset, len, got.len())?;
        Ok(Vec::from(got))
    }

    fn get_range_into(&self, name: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        use futures::TryStreamExt;
        let at = self.path(name)?;
        buf.clear();
        // The body a piece at a time into `buf`: no buffer of the range's size is allocated
        // (and freed) per read.
        self.runtime
            .block_on(async {
                let options = object_store::GetOptions {
                    range: Some((offset..offset + len).into()),
                    ..Default::default()
                };
                let mut body = self.store.get_opts(&at, options).await?.into_stream();
                while let Some(piece) = body.try_next().await? {
                    buf.extend_from_slice(&piece);
                }
                Ok(())
            })
            .map_err(|e| self.failed(name, "reading a range", &e))?;
        self.check_range(name, offset, len, buf.len())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let at = self.path(name)?;
        self.runtime
            .block_on(async {
                let r = self.store.get(&at).await?;
                r.bytes().await
            })
            .map(Vec::from)
            .map_err(|e| self.failed(name, "reading", &e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        use futures::TryStreamExt;
        let base = if self.config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.config.prefix)
        };
        let under = object_store::path::Path::from(base.trim_end_matches('/'));
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(
                self.store
                    .list((!base.is_empty()).then_some(&under))
                    .try_collect(),
            )
            .map_err(|e| self.failed(prefix, "listing", &e))?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref().strip_prefix(&base)?.to_owned();
                name.starts_with(prefix).then_some(ObjectInfo {
                    name,
                    size: m.size,
                    modified: m.last_modified,
                })
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let at = self.path(name)?;
        match self.runtime.block_on(self.store.delete(&at)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(name, "deleting", &e)),
        }
    }
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

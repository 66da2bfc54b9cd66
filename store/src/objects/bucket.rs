//! Objects in an S3-compatible bucket (S3, Garage, Ceph RGW, MinIO) through the `object_store`
//! crate: large objects in parts, several in flight.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

use super::{ObjectInfo, Objects, check_name};

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

//! A cairn store reached over HTTPS: the client side of `cairn serve`'s API.
//!
//! [`Remote`] implements [`StoreRead`] (points, chunks fetched in batches and each checked
//! against its id; a restore's windows requested ahead of it) and opens [`Upload`]s, which implement [`StoreWrite`]: the backup pipeline
//! runs here unchanged, asks the server which chunk ids it lacks a batch at a time, and sends
//! only those, compressed, from two uploader threads while reading goes on. The server checks
//! every chunk and every commit again; nothing here is trusted by it.
//!
//! The server's certificate is checked against a CA file, or pinned by its SHA-256 fingerprint
//! (as PBS clients do), or against the system's roots; it is never silently trusted.
//!
//! Reading is [`read`] (a restore's windows read ahead in [`ahead`]), backing up [`upload`];
//! this file connects and makes the requests.

mod ahead;
mod read;
mod tls;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use cairn_api::{OpenSession, SessionOpened, StoreInfo};
use cairn_store::chunk::ChunkId;
use cairn_store::{Error, RecoveryPoint, Result, StoreConfig};

pub use tls::TlsOptions;
pub use upload::Upload;

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
    link: Arc<Link>,
    info: StoreInfo,
    /// How the store names and seals chunks; `None`: encrypted, and not given its key.
    keys: Option<cairn_store::Keys>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.link.base)
            .finish_non_exhaustive()
    }
}

/// How requests reach the server: its URL, the connection pool, the token. Shared with the
/// threads that read ahead.
pub(crate) struct Link {
    base: String,
    http: reqwest::blocking::Client,
    token: String,
}

impl Link {
    /// One request to `/api/v1/{path}`, its answer's body into `answer` (cleared first, at most
    /// `limit` bytes); a non-2xx answer is an error carrying the server's message.
    ///
    /// # Errors
    /// The transport's failures, an answer longer than `limit`, the server's refusal.
    pub(crate) fn call_into(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
        wait: Option<Duration>,
        answer: &mut Vec<u8>,
        limit: u64,
    ) -> Result<()> {
        use std::io::Read;
        let url = format!("{}/api/v1/{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(wait) = wait {
            req = req.timeout(wait);
        }
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
        answer.clear();
        let read = resp
            .take(limit.saturating_add(1))
            .read_to_end(answer)
            .map_err(|e| {
                remote_err(
                    format!("{what}: reading the answer: {e}"),
                    Some(status.as_u16()),
                )
            })?;
        if read as u64 > limit {
            return Err(remote_err(
                format!("{what}: the answer is longer than the {limit} bytes it can be"),
                Some(status.as_u16()),
            ));
        }
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(answer)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(answer).into_owned());
            return Err(remote_err(
                format!("{what}: the server answered {status}: {msg}"),
                Some(status.as_u16()),
            ));
        }
        Ok(())
    }
}

pub(crate) fn remote_err(what: String, status: Option<u16>) -> Error {
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
            link: Arc::new(Link {
                base,
                http,
                token: opts.token.trim().to_owned(),
            }),
            info: StoreInfo {
                config: StoreConfig::new(cairn_store::DEFAULT_CHUNK_SIZE)?,
                server: String::new(),
                token: String::new(),
                role: cairn_api::Role::Restore,
            },
            keys: None,
        };
        remote.info = serde_json::from_slice(&remote.call(reqwest::Method::GET, "store", None)?)
            .map_err(|e| remote_err(format!("{url}: not a cairn server: {e}"), None))?;
        if remote.info.config.encryption.is_none() {
            remote.keys = Some(cairn_store::Keys::Clear);
        }
        Ok(remote)
    }

    /// Gives the server's encrypted store its key (this client's: the server never sees it):
    /// refused, before any work, when it is not the store's key.
    ///
    /// # Errors
    /// An unencrypted store, or another store's key.
    pub fn unlock(&mut self, key: cairn_crypt::MasterKey) -> Result<()> {
        let what = format!("the store at {}", self.link.base);
        self.keys = Some(cairn_store::keys::keys_of(&self.info.config, key, &what)?);
        Ok(())
    }

    /// The store's keys, when this client can name and open its chunks.
    #[must_use]
    pub fn chunk_keys(&self) -> Option<&cairn_store::Keys> {
        self.keys.as_ref()
    }

    /// The store's keys, for work that names or opens chunks.
    ///
    /// # Errors
    /// [`cairn_store::Error::NoKey`]: an encrypted store and no key given.
    pub fn keys(&self) -> cairn_store::Result<&cairn_store::Keys> {
        self.keys.as_ref().ok_or_else(|| cairn_store::Error::NoKey {
            store: self.link.base.clone().into(),
        })
    }

    /// The server's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.link.base
    }

    /// What the server said of itself and of the token.
    #[must_use]
    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// One request to `/api/v1/{path}`; a non-2xx answer is an error carrying the server's
    /// message.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Body>) -> Result<Vec<u8>> {
        self.call_within(method, path, body, None)
    }

    /// As [`Remote::call`], waiting up to `wait` for the answer instead of the client's 5
    /// minutes (work the server does while the client waits: a boot check).
    fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
        wait: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let mut answer = Vec::new();
        self.link
            .call_into(method, path, body, wait, &mut answer, u64::MAX)?;
        Ok(answer)
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

    /// Boots point `id` on the server's machine (an admin token; `body` as `POST
    /// /api/v1/points/ID/boot-check` takes it, `timeout_seconds` the guest's time) and answers
    /// the outcome the server recorded.
    ///
    /// # Errors
    /// The server's refusal (an encrypted store, a check already running, no qemu there).
    pub fn boot_check(&self, id: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let guest = body["timeout_seconds"].as_u64().unwrap_or(300);
        // The guest's time, and a margin for qemu's start and end and the screenshot.
        let wait = Duration::from_secs(guest.saturating_add(120));
        let bytes = self.call_within(
            reqwest::Method::POST,
            &format!("points/{id}/boot-check"),
            Some(Body::Json(body.to_string())),
            Some(wait),
        )?;
        serde_json::from_slice(&bytes).map_err(|e| {
            remote_err(
                format!("boot check of {id}: the server's answer is not what cairn expects: {e}"),
                None,
            )
        })
    }

    /// Hands the server the outcome of a boot check run here (`record` as `cairn-check`
    /// records it, and its screenshot), kept as point `id`'s last check (an admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn record_boot_check(
        &self,
        id: &str,
        record: &serde_json::Value,
        png: Option<&[u8]>,
    ) -> Result<serde_json::Value> {
        use base64::Engine;
        let body = serde_json::json!({
            "record": record,
            "screenshot_png": png.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        });
        self.json(
            reqwest::Method::PUT,
            &format!("points/{id}/boot-check"),
            Some(Body::Json(body.to_string())),
        )
    }

    /// Hands the server the record of a job run here against its store (`run`: the record as
    /// `cairn-jobs` writes it), kept with the store's job runs (a backup or admin token).
    ///
    /// # Errors
    /// The server's refusal.
    pub fn record_job_run(&self, run: &serde_json::Value) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "job-runs",
            Some(Body::Json(run.to_string())),
        )
        .map(drop)
    }

    /// The screenshot (PNG) of point `id`'s last boot check.
    ///
    /// # Errors
    /// The server's refusal; 404 when the point has none.
    pub fn boot_check_screenshot(&self, id: &str) -> Result<Vec<u8>> {
        self.call(
            reqwest::Method::GET,
            &format!("points/{id}/boot-check.png"),
            None,
        )
    }

    /// The last boot check of each point the token reaches, by point id.
    ///
    /// # Errors
    /// The server's refusal.
    pub fn boot_checks(&self) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        self.json(reqwest::Method::GET, "boot-checks", None)
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

pub(crate) enum Body {
    Json(String),
    Bytes(Vec<u8>),
}

pub(crate) fn ids_bytes(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

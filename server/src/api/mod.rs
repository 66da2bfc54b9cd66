//! The HTTP API (`/api/v1`), as `docs/api.md` describes it: JSON for metadata, frames (the
//! pack format's) for chunks. Every handler authenticates first, checks the token's role and
//! VMs, bounds what it reads, and does its store work on the blocking pool.
//!
//! The handlers live by resource: [`points`], [`admin`], [`chunks`], [`upload`] (backup
//! sessions), [`files`] (files inside points) and [`page`] (the report); who may ask is [`auth`], and [`error`] maps every
//! failure to its HTTP status in one place.

mod admin;
mod auth;
mod check;
mod chunks;
mod error;
mod files;
pub mod metrics;
mod page;
mod points;
mod upload;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use cairn_store::Store;

use crate::sessions::Sessions;
use crate::token::{Role, Token, Tokens, authenticate};
use auth::{basic_password_of, bearer_of, require_token};

pub use cairn_api::{
    Commit, MAX_IDS, MAX_READ, OpenSession, READ_FAILED, READ_OK, SessionOpened, StoreInfo,
    Uploaded,
};
pub use error::ApiError;

/// Frames one upload may carry.
pub const MAX_FRAMES: usize = 4096;

/// What every handler shares.
pub struct App {
    pub(crate) store: &'static Store,
    tokens: Tokens,
    /// The token file as last read, and what identified its version (modification time,
    /// inode, length: two writes within one tick of the clock still differ in the others).
    cache: Mutex<(Option<FileStamp>, Arc<Vec<Token>>)>,
    pub(crate) sessions: Sessions,
    pub(crate) limits: crate::Limits,
    /// Whether a collection is running (one at a time).
    collecting: Mutex<()>,
    /// Whether a boot check is running (one at a time).
    booting: Mutex<()>,
    /// Each token's requests in flight.
    in_flight: crate::slots::Slots<String>,
    /// What each token limited to some VMs may read.
    reach: crate::reach::Reach,
}

impl App {
    pub(crate) fn new(store: &'static Store, limits: crate::Limits) -> Self {
        let _ = error::STORE_ROOT.set(store.root().display().to_string());
        Self {
            store,
            tokens: Tokens::of_store(store.root()),
            cache: Mutex::new((None, Arc::new(Vec::new()))),
            sessions: Sessions::default(),
            limits,
            collecting: Mutex::new(()),
            booting: Mutex::new(()),
            in_flight: crate::slots::Slots::default(),
            reach: crate::reach::Reach::default(),
        }
    }

    fn tokens(&self) -> Result<Arc<Vec<Token>>, ApiError> {
        let mtime = std::fs::metadata(self.tokens.path())
            .ok()
            .and_then(|m| FileStamp::of(&m));
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| ApiError::internal("token cache poisoned"))?;
        if cache.0 != mtime || mtime.is_none() {
            let tokens = self
                .tokens
                .load()
                .map_err(|e| ApiError::internal(&e.to_string()))?;
            *cache = (mtime, Arc::new(tokens));
        }
        Ok(Arc::clone(&cache.1))
    }

    /// What a collection would free now (gc's own dry run, the live sessions' packs left
    /// alone); unknown (`None`) while a collection runs.
    fn reclaimable(&self) -> Option<cairn_gc::GcReport> {
        self.collecting.try_lock().ok().and_then(|_one| {
            let opts = cairn_gc::GcOptions::reclaimable();
            let live = || self.sessions.open_packs();
            cairn_gc::collect::collect_held(self.store, &opts, &live).ok()
        })
    }

    /// The request's token (`Authorization: Bearer`, the only form the API takes), if it is
    /// live and has one of `roles`.
    fn authorize(
        &self,
        headers: &HeaderMap,
        roles: &[Role],
        what: &str,
    ) -> Result<Token, ApiError> {
        self.authorize_from(&bearer_of(headers), roles, what)
    }

    /// As [`App::authorize`], for the report pages: also the password a browser sends with
    /// `Basic` (the pages are read-only GETs).
    fn authorize_page(&self, headers: &HeaderMap, roles: &[Role]) -> Result<Token, ApiError> {
        let secret = match bearer_of(headers) {
            s if s.is_empty() => basic_password_of(headers),
            s => s,
        };
        self.authorize_from(&secret, roles, "read the report")
    }

    fn authorize_from(&self, secret: &str, roles: &[Role], what: &str) -> Result<Token, ApiError> {
        let tokens = self.tokens()?;
        let token = authenticate(&tokens, secret.trim(), chrono::Utc::now())
            .map_err(|r| ApiError::new(StatusCode::UNAUTHORIZED, r.to_string()))?
            .clone();
        if !roles.contains(&token.role) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a {} token cannot {what}", token.role.name()),
            ));
        }
        Ok(token)
    }
}

/// What identifies one version of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    inode: u64,
    len: u64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        Some(Self {
            modified: m.modified().ok()?,
            inode: m.ino(),
            len: m.len(),
        })
    }
}

type Shared = Arc<App>;

type Answer<T> = Result<T, ApiError>;

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Answer<T> + Send + 'static) -> Answer<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&format!("a request's work failed: {e}")))?
}

const ANY: &[Role] = &[Role::Backup, Role::Restore, Role::Admin];

/// The router of `/api/v1`.
pub fn router(app: Shared) -> axum::Router {
    let body = app.limits.body_bytes;
    axum::Router::new()
        .route("/api/v1/store", get(points::store_info))
        .route("/api/v1/points", get(points::list_points))
        .route("/api/v1/points/{id}", get(points::one_point))
        .route("/api/v1/points/{id}/files", get(files::list))
        .route("/api/v1/points/{id}/content", get(files::content))
        .route("/api/v1/points/{id}/forget", post(admin::forget))
        .route("/api/v1/points/{id}/protect", post(admin::protect))
        .route(
            "/api/v1/points/{id}/boot-check",
            post(check::boot_check).put(check::keep_boot_check),
        )
        .route(
            "/api/v1/points/{id}/boot-check.png",
            get(page::boot_check_png),
        )
        .route("/api/v1/boot-checks", get(check::boot_checks))
        .route("/api/v1/chunks/read", post(chunks::read_chunks))
        .route("/api/v1/sessions", post(upload::open_session))
        .route("/api/v1/sessions/{id}", delete(upload::abort_session))
        .route("/api/v1/sessions/{id}/missing", post(upload::missing))
        .route("/api/v1/sessions/{id}/subtrees", post(upload::subtrees))
        .route("/api/v1/sessions/{id}/chunks", post(upload::upload))
        .route("/api/v1/sessions/{id}/commit", post(upload::commit))
        .route("/api/v1/policies", get(admin::policies))
        .route("/api/v1/forgotten", get(points::forgotten))
        .route("/api/v1/policies/{vm}", put(admin::set_policy))
        .route("/api/v1/prune", post(admin::prune))
        .route("/api/v1/gc", post(admin::gc))
        .route("/api/v1/report", get(page::report))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/job-runs", post(metrics::record_job_run))
        .route("/healthz", get(metrics::healthz))
        .route("/", get(page::page))
        .route("/vm/{vm}", get(page::vm_page))
        .route("/point/{id}/boot-check.png", get(page::boot_check_png))
        .route("/point/{id}/files", get(files::browse_point))
        .route("/point/{id}/files/", get(files::browse_point))
        .route("/point/{id}/files/{*path}", get(files::browse))
        .route("/point/{id}/download/{*path}", get(files::download))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see docs/api.md)")
        })
        .layer(DefaultBodyLimit::max(body))
        // A request without a live token is refused before its body is read.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            require_token,
        ))
        .with_state(app)
}

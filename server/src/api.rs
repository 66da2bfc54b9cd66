//! The HTTP API (`/api/v1`), as `docs/api.md` describes it: JSON for metadata, frames (the
//! pack format's) for chunks. Every handler authenticates first, checks the token's role and
//! VMs, bounds what it reads, and does its store work on the blocking pool.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cairn_store::chunk::{self, ChunkId, ChunkKind};
use cairn_store::{RecoveryPoint, Store, pack};
use serde::Deserialize;

use crate::sessions::{Refused, Sessions};
use crate::token::{Role, Token, Tokens, authenticate};

pub use cairn_api::{
    Commit, MAX_IDS, MAX_READ, OpenSession, READ_FAILED, READ_OK, SessionOpened, StoreInfo,
    Uploaded,
};
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
    /// Each token's requests in flight.
    in_flight: crate::slots::Slots<String>,
    /// What each token limited to some VMs may read.
    reach: crate::reach::Reach,
}

impl App {
    pub(crate) fn new(store: &'static Store, limits: crate::Limits) -> Self {
        let _ = STORE_ROOT.set(store.root().display().to_string());
        Self {
            store,
            tokens: Tokens::of_store(store.root()),
            cache: Mutex::new((None, Arc::new(Vec::new()))),
            sessions: Sessions::default(),
            limits,
            collecting: Mutex::new(()),
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

/// The token's secret of `Authorization: Bearer SECRET` (empty without one). A browser never
/// adds this header by itself, so a page of another site cannot make it send a request that
/// carries a token (cross-site request forgery): the API takes no other form.
fn bearer_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

/// The password of `Authorization: Basic` (a browser asked for credentials by the report
/// page sends the token as the password, any user name); empty without one.
fn basic_password_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .strip_prefix("Basic ")
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| up.split_once(':').map(|(_, pw)| pw.to_owned()))
        .unwrap_or_default()
}

/// An error answer: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: &str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn vm(token: &Token, vm: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} reaches VMs {:?}, not VM {vm:?}",
                token.name, token.vms
            ),
        )
    }
}

impl From<cairn_store::Error> for ApiError {
    fn from(e: cairn_store::Error) -> Self {
        use cairn_store::Error as E;
        let status = match &e {
            E::Usage(_) | E::Point(_) => StatusCode::BAD_REQUEST,
            E::Incomplete { .. } | E::AlreadyHeld(_) => StatusCode::CONFLICT,
            E::MissingChunk(_) => StatusCode::NOT_FOUND,
            E::IdentityTaken(_) | E::Held(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<cairn_gc::Error> for ApiError {
    fn from(e: cairn_gc::Error) -> Self {
        match e {
            cairn_gc::Error::Store(e) => e.into(),
            cairn_gc::Error::Usage(m) => Self::bad(m),
            cairn_gc::Error::Refused(m) => Self::new(StatusCode::CONFLICT, m),
            e => Self::internal(&e.to_string()),
        }
    }
}

/// The store's folder as a server's answers never show it (set once, when it starts).
static STORE_ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.message;
        if self.status.is_server_error() {
            // Logged whole for the admin; answered without the server's own paths.
            tracing::error!(error = %message, "a request failed in the server");
            if let Some(root) = STORE_ROOT.get().filter(|r| !r.is_empty()) {
                message = message.replace(root.as_str(), "STORE");
            }
        }
        (self.status, Json(serde_json::json!({ "error": message }))).into_response()
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

/// The router of `/api/v1`.
pub fn router(app: Shared) -> axum::Router {
    let body = app.limits.body_bytes;
    axum::Router::new()
        .route("/api/v1/store", get(store_info))
        .route("/api/v1/points", get(list_points))
        .route("/api/v1/points/{id}", get(one_point))
        .route("/api/v1/points/{id}/forget", post(forget))
        .route("/api/v1/points/{id}/protect", post(protect))
        .route("/api/v1/chunks/read", post(read_chunks))
        .route("/api/v1/sessions", post(open_session))
        .route("/api/v1/sessions/{id}", delete(abort_session))
        .route("/api/v1/sessions/{id}/missing", post(missing))
        .route("/api/v1/sessions/{id}/subtrees", post(subtrees))
        .route("/api/v1/sessions/{id}/chunks", post(upload))
        .route("/api/v1/sessions/{id}/commit", post(commit))
        .route("/api/v1/policies", get(policies))
        .route("/api/v1/forgotten", get(forgotten))
        .route("/api/v1/policies/{vm}", put(set_policy))
        .route("/api/v1/prune", post(prune))
        .route("/api/v1/gc", post(gc))
        .route("/api/v1/report", get(report))
        .route("/", get(page))
        .route("/vm/{vm}", get(vm_page))
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

/// Refuses (401) a request that carries no live token, before anything of it is read.
async fn require_token(
    State(app): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The report pages ask a browser for the token themselves (a GET has no body to read).
    let page = req.method() == axum::http::Method::GET
        && (req.uri().path() == "/" || req.uri().path().starts_with("/vm/"));
    if page {
        return next.run(req).await;
    }
    let token = match app
        .authorize(req.headers(), ANY, "use this server")
        .and_then(|t| same_origin_json(&req).map(|()| t))
    {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    // One token's requests in flight are bounded (each may hold a body in memory): a stolen
    // token cannot take the server's memory or every worker.
    let Some(_in_flight) = app.in_flight.take(&token.id, app.limits.requests_per_token) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {:?} has {} requests in flight, the most one token may; try again when \
                 one ended",
                token.name, app.limits.requests_per_token
            ),
        )
        .into_response();
    };
    next.run(req).await
}

/// Refuses what a browser sends on behalf of another site (defence in depth beside the
/// Bearer-only tokens): a request whose `Origin` is not this server's own (403), and a request
/// with a body of any type but the API's, `application/json` or `application/octet-stream`
/// (415): the types a page of another site can send without asking the server first
/// (`text/plain`, forms) are never taken.
fn same_origin_json(req: &axum::extract::Request) -> Result<(), ApiError> {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("https://{h}"));
        let origin = origin.to_str().unwrap_or("");
        if own.is_none_or(|o| !o.eq_ignore_ascii_case(origin)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} {}: a request from the page of another site ({origin:?}) is refused",
                    req.method(),
                    req.uri().path()
                ),
            ));
        }
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return Ok(());
    }
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if kind == "application/json" || kind == "application/octet-stream" {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "{} {}: a body of type {kind:?}; the API takes application/json (metadata) or \
             application/octet-stream (chunk ids and frames)",
            req.method(),
            req.uri().path()
        ),
    ))
}

async fn store_info(State(app): State<Shared>, headers: HeaderMap) -> Answer<Json<StoreInfo>> {
    let t = app.authorize(
        &headers,
        &[Role::Backup, Role::Restore, Role::Admin],
        "read the store",
    )?;
    Ok(Json(StoreInfo {
        config: app.store.config().clone(),
        server: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        token: t.name,
        role: t.role,
    }))
}

const ANY: &[Role] = &[Role::Backup, Role::Restore, Role::Admin];

async fn list_points(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<Vec<RecoveryPoint>>> {
    let t = app.authorize(&headers, ANY, "list points")?;
    blocking(move || {
        Ok(Json(
            app.store
                .points()?
                .into_iter()
                .filter(|p| t.allows_vm(&p.vm))
                .collect(),
        ))
    })
    .await
}

fn point_of(app: &App, t: &Token, id: &str) -> Answer<RecoveryPoint> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad(format!(
            "{id:?} is not a point id (32 hex digits)"
        )));
    }
    match app.store.point_by_id(id)? {
        Some(p) if t.allows_vm(&p.vm) => Ok(p),
        // Another VM's point is not there for this token: not even its existence is told.
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no point {id}"),
        )),
    }
}

async fn one_point(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Json<RecoveryPoint>> {
    let t = app.authorize(&headers, ANY, "read points")?;
    blocking(move || Ok(Json(point_of(&app, &t, &id)?))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn forget(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ForgetQuery>,
) -> Answer<Json<serde_json::Value>> {
    let t = app.authorize(&headers, &[Role::Admin], "forget points")?;
    blocking(move || {
        let p = point_of(&app, &t, &id)?;
        if q.dry_run {
            if p.protected_at(chrono::Utc::now()) {
                return Err(ApiError::bad(format!(
                    "point {id} is protected: unprotect it first"
                )));
            }
            let freed = app.store.would_free(std::slice::from_ref(&p))?;
            return Ok(Json(serde_json::json!({
                "dry_run": true, "would_forget": [p.id], "would_free_bytes": freed.stored_bytes,
                "would_free_chunks": freed.chunks,
            })));
        }
        let f = app.store.forget(&[p])?;
        Ok(Json(serde_json::json!({
            "forgotten": f.points.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "chunks_unreferenced": f.chunks_unreferenced,
            "warnings": f.warnings,
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectBody {
    /// Protect or unprotect (an unprotect leaves a protection `until` a later time).
    #[serde(default)]
    protected: Option<bool>,
    /// Protect until then: extended, never shortened; only time lifts it.
    #[serde(default)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

async fn protect(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<RecoveryPoint>> {
    let t = app.authorize(&headers, &[Role::Admin], "protect or unprotect points")?;
    let b: ProtectBody = json_body(&body)?;
    blocking(move || {
        let p = point_of(&app, &t, &id)?;
        let p = match (b.protected, b.until) {
            (None, None) => return Err(ApiError::bad("give protected, until, or both")),
            (Some(on), None) => app.store.set_protected(&p, on)?,
            (on, Some(until)) => {
                let p = app.store.protect_until(&p, until)?;
                match on {
                    Some(on) => app.store.set_protected(&p, on)?,
                    None => p,
                }
            }
        };
        Ok(Json(p))
    })
    .await
}

async fn set_policy(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(vm): Path<String>,
    body: Bytes,
) -> Answer<Json<cairn_store::Policy>> {
    app.authorize(&headers, &[Role::Admin], "set policies")?;
    let policy: cairn_store::Policy = json_body(&body)?;
    blocking(move || {
        cairn_store::point::check_name("VM", &vm).map_err(ApiError::bad)?;
        app.store.set_policy(&vm, policy.clone())?;
        Ok(Json(policy))
    })
    .await
}

/// `GET /api/v1/forgotten`: the ids of the points forgotten from the store (a replica never
/// brings one back). Ids only: they say nothing of what the points held.
async fn forgotten(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<std::collections::HashSet<String>>> {
    app.authorize(&headers, ANY, "read the forgotten points")?;
    blocking(move || Ok(Json(app.store.forgotten_ids()?))).await
}

/// `GET /api/v1/policies`: the store's time zone and every VM's policy.
async fn policies(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<serde_json::Value>> {
    app.authorize(&headers, &[Role::Admin], "read policies")?;
    blocking(move || {
        Ok(Json(serde_json::json!({
            "timezone": app.store.config().timezone,
            "vms": app.store.policies()?,
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    rules: cairn_gc::Rules,
    /// Which points the rules apply to (every point when empty).
    #[serde(default)]
    filter: cairn_store::select::Filter,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/v1/prune`: the plan of `cairn prune` (every chosen point, kept or removed, and
/// why), carried out unless it is a dry run.
async fn prune(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    app.authorize(&headers, &[Role::Admin], "prune")?;
    let b: PruneBody = json_body(&body)?;
    blocking(move || {
        let pruned = cairn_gc::prune(app.store, &b.filter, &b.rules, b.dry_run)?;
        for w in &pruned.warnings {
            tracing::warn!("prune: {w}");
        }
        Ok(Json(pruned.to_json(app.store.config().tz())))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcBody {
    #[serde(default)]
    dry_run: bool,
    /// Rewrite packs with more than this percentage unused (5 by default).
    max_unused: Option<f64>,
    /// Rewrite packs with less than this percentage live instead.
    repack_below: Option<f64>,
    /// Let quarantined packs go.
    #[serde(default)]
    drop_quarantined: bool,
}

async fn gc(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Json<cairn_gc::GcReport>> {
    app.authorize(&headers, &[Role::Admin], "collect garbage")?;
    let b: GcBody = if body.is_empty() {
        GcBody::default()
    } else {
        json_body(&body)?
    };
    let mut opts =
        cairn_gc::GcOptions::from_percent(b.dry_run, b.max_unused.unwrap_or(5.0), b.repack_below)
            .ok_or_else(|| {
            ApiError::bad("max_unused and repack_below are percentages from 0 to 100")
        })?;
    opts.drop_quarantined = b.drop_quarantined;
    blocking(move || {
        let _one = app
            .collecting
            .try_lock()
            .map_err(|_| ApiError::new(StatusCode::CONFLICT, "a garbage collection is running"))?;
        let live = || app.sessions.open_packs();
        let report = cairn_gc::collect::collect_held(app.store, &opts, &live)
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        Ok(Json(report))
    })
    .await
}

/// `GET /api/v1/report`: the report document (docs/report-json.md) of what the token may read,
/// the one the page is drawn from: an admin token's covers the whole store; a restore token's
/// its VMs' rows, without the store-wide figures.
async fn report(State(app): State<Shared>, headers: HeaderMap) -> Answer<Json<serde_json::Value>> {
    let token = app.authorize(&headers, &[Role::Admin, Role::Restore], "read the report")?;
    blocking(move || Ok(Json(report_for(&app, &token, None)?))).await
}

/// The report document a token reads (of one VM, with `vm`): see [`report`].
fn report_for(
    app: &Shared,
    token: &crate::token::Token,
    vm: Option<&str>,
) -> Answer<serde_json::Value> {
    let admin = token.role == Role::Admin;
    let reclaimable = if admin { app.reclaimable() } else { None };
    let shown = |p: &RecoveryPoint| token.allows_vm(&p.vm) && vm.is_none_or(|v| v == p.vm);
    let mut doc = cairn_report::document(app.store, &shown, reclaimable.as_ref())
        .map_err(|e| ApiError::internal(&e.to_string()))?;
    if !admin {
        for f in STORE_WIDE {
            doc[f] = serde_json::Value::Null;
        }
    }
    Ok(doc)
}

/// `GET /`: the report page of what the token may read (an admin token: the whole store; a
/// restore token: its VMs' rows, without the store-wide figures).
async fn page(State(app): State<Shared>, headers: HeaderMap) -> Response {
    page_for(app, headers, None).await
}

/// `GET /vm/{vm}`: one VM's page, every point listed.
async fn vm_page(
    State(app): State<Shared>,
    axum::extract::Path(vm): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    page_for(app, headers, Some(vm)).await
}

/// The fields of the report document about the whole store, which only an admin token reads.
const STORE_WIDE: [&str; 10] = [
    "store",
    "reclaimable_bytes",
    "growth",
    "filesystem",
    "last_verify",
    "garbage_bytes",
    "garbage_frames",
    "orphan_packs",
    "orphan_bytes",
    "damaged_points",
];

async fn page_for(app: Shared, headers: HeaderMap, vm: Option<String>) -> Response {
    let token = match app.authorize_page(&headers, &[Role::Admin, Role::Restore]) {
        Ok(t) => t,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            // A browser asks for the token (as the password) and sends it again.
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"cairn report: a token as the password\", charset=\"UTF-8\"",
                )],
                format!(
                    "{}: give a restore or admin token as the password",
                    e.message
                ),
            )
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let made = blocking(move || {
        let doc = report_for(&app, &token, vm.as_deref())?;
        if let Some(v) = &vm
            && doc["vms"].as_array().is_none_or(Vec::is_empty)
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no VM {v:?} that this token reads"),
            ));
        }
        let options = cairn_report::page::PageOptions {
            points_per_vm: if vm.is_some() {
                usize::MAX
            } else {
                cairn_report::page::PageOptions::default().points_per_vm
            },
            vm_pages: vm.is_none(),
        };
        Ok(cairn_report::page::render(&doc, &options))
    })
    .await;
    match made {
        Ok(page) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // The page is whole in itself: nothing may be loaded from anywhere.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Answer<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the request body is not the JSON expected: {e}")))
}

fn ids_body(body: &[u8], max: usize) -> Answer<Vec<ChunkId>> {
    if !body.len().is_multiple_of(32) {
        return Err(ApiError::bad(format!(
            "the body is {} bytes: chunk ids are 32 bytes each",
            body.len()
        )));
    }
    if body.len() / 32 > max {
        return Err(ApiError::bad(format!(
            "{} ids: at most {max} at once",
            body.len() / 32
        )));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            ChunkId(b)
        })
        .collect())
}

/// `POST /api/v1/chunks/read`: ids in, one record each out, in order, as the packs hold them
/// (frames checked, bytes not decoded: the client decodes and checks each against its id, once).
/// Chunk ids are not secret within what a token may read: they are named by the trees of the
/// points it sees.
async fn read_chunks(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Response> {
    let t = app.authorize(&headers, ANY, "read chunks")?;
    let ids = ids_body(&body, MAX_READ)?;
    blocking(move || {
        use rayon::prelude::*;
        // A reader like any other: a collection in this process keeps the packs it may still
        // read from (the `readers` module of the store).
        let _reader = cairn_store::readers::register(app.store.root())?;
        // A token that sees only its own chunks reads only those of its live sessions; one
        // limited to some VMs, only their points' chunks. Either is told of another chunk
        // what it is told of a chunk the store lacks: nothing of other VMs is learnt.
        let own = t.lookups == crate::token::Lookups::Own;
        let reachable = app.reach.may_read(app.store, &t, &ids)?;
        let read: Vec<Result<cairn_store::EncodedChunk, String>> = ids
            .par_iter()
            .zip(reachable)
            .map(|(id, reachable)| {
                if !reachable || own && !app.sessions.own_chunk(&t.id, id) {
                    return Err(cairn_store::Error::MissingChunk(*id).to_string());
                }
                app.store.read_stored(id).map_err(|e| e.to_string())
            })
            .collect();
        let mut out = Vec::new();
        for r in read {
            match r {
                Ok(c) => {
                    out.push(READ_OK);
                    pack::encode_frame(&c, &mut out);
                }
                Err(e) => {
                    out.push(READ_FAILED);
                    out.extend_from_slice(&(e.len() as u32).to_be_bytes());
                    out.extend_from_slice(e.as_bytes());
                }
            }
        }
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
    })
    .await
}

async fn open_session(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<(StatusCode, Json<SessionOpened>)> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let b: OpenSession = json_body(&body)?;
    cairn_store::point::check_point_name("VM", &b.vm).map_err(ApiError::bad)?;
    if b.disks.is_empty() || b.disks.len() > 64 {
        return Err(ApiError::bad("a session names 1 to 64 disks"));
    }
    for d in &b.disks {
        cairn_store::point::check_point_name("disk", d).map_err(ApiError::bad)?;
    }
    if !t.allows_vm(&b.vm) {
        return Err(ApiError::vm(&t, &b.vm));
    }
    if b.adopt && t.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token cannot adopt another VM's identity (an admin token can)",
                t.role.name()
            ),
        ));
    }
    blocking(move || {
        let opening = crate::sessions::Opening {
            vm: &b.vm,
            disks: &b.disks,
            token: &t.id,
            own_lookups: t.lookups == crate::token::Lookups::Own,
            // Only an admin dates its points (a replica keeps its source's times); every other
            // token's points get the time of their commit.
            clock: t.role != Role::Admin,
            adopt: b.adopt,
        };
        let max = (app.limits.sessions, app.limits.sessions_per_token);
        match app.sessions.open(app.store, &opening, max)? {
            Ok(id) => {
                tracing::info!(session = %id, vm = %b.vm, token = %t.name, "session opened");
                let policies = app.store.policies()?;
                let key_interval =
                    cairn_store::policy::key_interval(&policies, &b.vm, b.vm_uuid.as_deref());
                Ok((
                    StatusCode::CREATED,
                    Json(SessionOpened {
                        session: id,
                        key_interval,
                    }),
                ))
            }
            Err(Refused::Busy(why)) => Err(ApiError::new(StatusCode::CONFLICT, why)),
            Err(Refused::Full(n)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{n} sessions are open, the most this server takes; try again later"),
            )),
            Err(Refused::TokenFull(n)) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "token {:?} has {n} sessions open, the most one token may hold; finish or \
                     abort one first",
                    t.name
                ),
            )),
        }
    })
    .await
}

fn session_of<'a>(app: &'a App, t: &Token, id: &str) -> Answer<crate::sessions::Taken<'a>> {
    let taken = app.sessions.take(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id} (it ended, or was dropped after being idle)"),
        )
    })?;
    let owner = taken
        .live
        .lock()
        .map_err(|_| ApiError::internal("session poisoned"))?
        .token
        .clone();
    if owner != t.id {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id}"),
        ));
    }
    Ok(taken)
}

async fn abort_session(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    blocking(move || {
        drop(session_of(&app, &t, &id)?);
        app.sessions.remove(&id);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// `POST /api/v1/sessions/{id}/missing`: ids in, one byte each out (1: the store lacks it).
async fn missing(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Vec<u8>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let ids = ids_body(&body, MAX_IDS)?;
    blocking(move || {
        let (filter, own) = lookups_of(&app, &t, &id)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            // A token that sees only its own chunks is told "missing" for every other one,
            // whatever the store holds.
            let seen = own.as_ref().is_none_or(|o| o.binary_search(id).is_ok());
            out.push(u8::from(!(seen && filter.holds(id)?)));
        }
        Ok(out)
    })
    .await
}

/// The store's filter, and the token's own chunks when it sees only those.
type Lookup = (cairn_store::KnownFilter<'static>, Option<Arc<Vec<ChunkId>>>);

/// What a session's lookups are answered from: the store's filter, and for a token that sees
/// only its own chunks, those (sorted).
fn lookups_of(app: &App, t: &Token, id: &str) -> Answer<Lookup> {
    let taken = session_of(app, t, id)?;
    let live = taken
        .live
        .lock()
        .map_err(|_| ApiError::internal("session poisoned"))?;
    Ok((live.filter.clone(), live.own.clone()))
}

/// `POST /api/v1/sessions/{id}/subtrees`: ids in, one byte each out (1: the store holds the
/// whole subtree under it, [`cairn_store::Store::holds_subtrees`]). A token whose lookups see
/// only its own chunks is told 0 for every chunk that is not its own.
async fn subtrees(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Vec<u8>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let ids = ids_body(&body, MAX_IDS)?;
    blocking(move || {
        let (_, own) = lookups_of(&app, &t, &id)?;
        let held = app.store.holds_subtrees(&ids)?;
        Ok(ids
            .iter()
            .zip(held)
            .map(|(id, held)| {
                let seen = own.as_ref().is_none_or(|o| o.binary_search(id).is_ok());
                u8::from(seen && held)
            })
            .collect())
    })
    .await
}

/// `POST /api/v1/sessions/{id}/chunks`: frames, each checked against its id before any is
/// stored.
async fn upload(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<Uploaded>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    blocking(move || {
        use rayon::prelude::*;
        let frames = pack::decode_frames(&body, MAX_FRAMES)
            .map_err(|e| ApiError::bad(format!("the upload's body: {e}")))?;
        let chunk_size = app.store.config().chunk_size;
        frames
            .par_iter()
            .enumerate()
            .try_for_each(|(i, f)| -> Answer<()> {
                let fail = |what: String| {
                    ApiError::bad(format!(
                        "chunk {i} of the upload ({}): {what}; nothing of it was stored",
                        f.id
                    ))
                };
                if f.kind == ChunkKind::Data && f.plain_len > chunk_size {
                    return Err(fail(format!(
                        "{} bytes, larger than the store's chunks",
                        f.plain_len
                    )));
                }
                let plain = chunk::decode(&f.id, f.codec, f.plain_len, &f.bytes).map_err(fail)?;
                if f.kind == ChunkKind::Tree {
                    cairn_store::tree::decode(&plain)
                        .map_err(|e| fail(format!("not a tree chunk: {e}")))?;
                }
                Ok(())
            })?;
        let taken = session_of(&app, &t, &id)?;
        let mut live = taken
            .live
            .lock()
            .map_err(|_| ApiError::internal("session poisoned"))?;
        let mut stored = 0u64;
        {
            let session = live
                .session
                .as_mut()
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the session is committing"))?;
            for f in &frames {
                if session.put(f)? {
                    stored += 1;
                }
            }
        }
        live.received += frames.len() as u64;
        live.stored += stored;
        // What was stored tells which chunks the store held: not said to a token whose
        // lookups see only its own chunks.
        let told = if t.lookups == crate::token::Lookups::Own {
            frames.len() as u64
        } else {
            stored
        };
        Ok(Json(Uploaded {
            received: frames.len() as u64,
            stored: told,
        }))
    })
    .await
}

async fn commit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<Vec<RecoveryPoint>>> {
    let t = app.authorize(&headers, &[Role::Backup, Role::Admin], "back up")?;
    let b: Commit = json_body(&body)?;
    blocking(move || {
        let taken = session_of(&app, &t, &id)?;
        let mut live = taken.live.lock().map_err(|_| ApiError::internal("session poisoned"))?;
        if b.points.is_empty() {
            return Err(ApiError::bad("a commit names at least one point"));
        }
        for p in &b.points {
            if p.vm != live.vm || !live.disks.contains(&p.disk) {
                return Err(ApiError::bad(format!(
                    "point {} is of {}/{}, the session of VM {:?} disks {:?}",
                    p.id, p.vm, p.disk, live.vm, live.disks
                )));
            }
        }
        let mut session = live.session.take().ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the session is committing"))?;
        // From here the session is spent, whatever happens: its packs go if nothing commits.
        // They are kept from an in-process collection until the commit ends (indexed, or
        // deleted with the failed session).
        let _committing = app.sessions.start_commit(&id, &session);
        session.check_references();
        let mut staged = Vec::new();
        for p in &b.points {
            let mut p = p.clone();
            // Protection is an admin's act: an upload with another token never carries it (a
            // replica sent with an admin token keeps the source's).
            if t.role != Role::Admin {
                p.protected = false;
                p.protected_until = None;
            }
            let mut one = session.stage_copy(&p)?;
            // What the store appended tells which chunks it held: a token whose lookups see
            // only its own chunks keeps the figure it sent (the store's own is in the report).
            if t.lookups == crate::token::Lookups::Own {
                one.set_new_stored(p.stats.new_stored_bytes);
            }
            staged.push(one);
        }
        let done = session.commit_run(staged)?;
        tracing::info!(session = %id, vm = %live.vm, points = done.len(), chunks = live.stored, "committed");
        Ok(Json(done))
    })
    .await
}

//! What only an admin token does: forget and protect points, set and read policies, prune and
//! collect garbage.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_store::RecoveryPoint;
use serde::Deserialize;

use super::chunks::json_body;
use super::points::point_of;
use super::{Answer, ApiError, Shared, blocking};
use crate::token::Role;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForgetQuery {
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn forget(
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

pub(super) async fn protect(
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

pub(super) async fn set_policy(
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

/// `GET /api/v1/policies`: the store's time zone and every VM's policy.
pub(super) async fn policies(
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
pub(super) async fn prune(
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

pub(super) async fn gc(
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

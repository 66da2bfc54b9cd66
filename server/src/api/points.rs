//! Reading points: the store, the points a token reaches, one point, the forgotten ids.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_store::RecoveryPoint;

use super::{ANY, Answer, ApiError, App, Shared, StoreInfo, blocking};
use crate::token::{Role, Token};

pub(super) async fn store_info(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<StoreInfo>> {
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

pub(super) async fn list_points(
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

pub(super) fn point_of(app: &App, t: &Token, id: &str) -> Answer<RecoveryPoint> {
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

pub(super) async fn one_point(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Json<RecoveryPoint>> {
    let t = app.authorize(&headers, ANY, "read points")?;
    blocking(move || Ok(Json(point_of(&app, &t, &id)?))).await
}

/// `GET /api/v1/forgotten`: the ids of the points forgotten from the store (a replica never
/// brings one back). Ids only: they say nothing of what the points held.
pub(super) async fn forgotten(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<std::collections::HashSet<String>>> {
    app.authorize(&headers, ANY, "read the forgotten points")?;
    blocking(move || Ok(Json(app.store.forgotten_ids()?))).await
}
